from .conjugate_gradient import *  # noqa: F403
