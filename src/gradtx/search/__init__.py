"""Methods that evaluate the loss again: line searches, quasi-Newton, conjugate gradient."""

from . import lbfgs, line_search
from .lbfgs import *  # noqa: F403
from .line_search import *  # noqa: F403

MODULES = (lbfgs, line_search)
__all__ = sorted({name for module in MODULES for name in module.__all__})
