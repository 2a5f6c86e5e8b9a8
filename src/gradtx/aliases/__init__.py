"""Aliases: named optimizers, each a documented chain of transforms (``gx.adam``, ...)."""

from . import (
    adam_family,
    curvature,
    layerwise,
    learning_rate_free_family,
    orthogonalized,
    preconditioned,
    psgd_family,
    quasi_newton,
    recent_family,
    rms_family,
    schedule_free_family,
    second_order,
    sgd_adam,
    stepsize,
)
from .adam_family import *  # noqa: F403
from .curvature import *  # noqa: F403
from .layerwise import *  # noqa: F403
from .learning_rate_free_family import *  # noqa: F403
from .orthogonalized import *  # noqa: F403
from .preconditioned import *  # noqa: F403
from .psgd_family import *  # noqa: F403
from .quasi_newton import *  # noqa: F403
from .recent_family import *  # noqa: F403
from .rms_family import *  # noqa: F403
from .schedule_free_family import *  # noqa: F403
from .second_order import *  # noqa: F403
from .sgd_adam import *  # noqa: F403
from .stepsize import *  # noqa: F403

MODULES = (adam_family, curvature, layerwise, learning_rate_free_family, orthogonalized, preconditioned, psgd_family,
           quasi_newton, recent_family, rms_family, schedule_free_family, second_order, sgd_adam, stepsize)
__all__ = sorted({name for module in MODULES for name in module.__all__})
