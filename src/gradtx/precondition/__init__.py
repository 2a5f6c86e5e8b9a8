"""Matrix preconditioners: SOAP and Shampoo (one Kronecker factor per axis of each tensor),
full-matrix AdaGrad and GGT (one matrix per flattened tensor), PSGD Kron."""

from . import eigenbasis, full_matrix, psgd, shampoo, soap
from .eigenbasis import *  # noqa: F403
from .full_matrix import *  # noqa: F403
from .psgd import *  # noqa: F403
from .shampoo import *  # noqa: F403
from .soap import *  # noqa: F403

MODULES = (eigenbasis, full_matrix, psgd, shampoo, soap)
__all__ = sorted({name for module in MODULES for name in module.__all__})
