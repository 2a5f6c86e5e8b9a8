"""Matrix preconditioners: SOAP and Shampoo (one Kronecker factor per axis of each tensor),
full-matrix AdaGrad and GGT (one matrix per flattened tensor), PSGD Kron, and PSGD's dense and
low-rank forms (one preconditioner over all parameters flattened)."""

from . import eigenbasis, full_matrix, psgd, psgd_flat, shampoo, soap
from .eigenbasis import *  # noqa: F403
from .full_matrix import *  # noqa: F403
from .psgd import *  # noqa: F403
from .psgd_flat import *  # noqa: F403
from .shampoo import *  # noqa: F403
from .soap import *  # noqa: F403

MODULES = (eigenbasis, full_matrix, psgd, psgd_flat, shampoo, soap)
__all__ = sorted({name for module in MODULES for name in module.__all__})
