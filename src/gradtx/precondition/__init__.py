"""Matrix preconditioners: SOAP, Shampoo (one Kronecker factor per axis of each tensor)."""

from . import shampoo, soap
from .shampoo import *  # noqa: F403
from .soap import *  # noqa: F403

MODULES = (shampoo, soap)
__all__ = sorted({name for module in MODULES for name in module.__all__})
