"""The ``torch.optim`` adapter, ``gx.Optimizer``, and its fast paths (fused kernels, compiled step)."""

from .optimizer import *  # noqa: F403
from .optimizer import __all__  # noqa: F401
