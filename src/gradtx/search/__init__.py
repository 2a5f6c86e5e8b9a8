from .conjugate_gradient import *  # noqa: F403
from .step_size import *  # noqa: F403
from .trust_region import *  # noqa: F403
