"""gradtx: optax-style gradient transformations for PyTorch.

>>> import gradtx as gx
>>> tx = gx.chain(gx.clip_value(10.0), gx.scale_by_adam(), gx.scale_by_lr(1e-3))

The flat namespace gathers each module's ``__all__``; layers import downwards only:
``_tree``/``_foreach`` < ``base`` < ``authoring``/``foreach`` < ``combine``/``transforms`` < ``wrappers``/``schedules``
< ``aliases/`` < ``optim/`` (the ``torch.optim`` adapter).
"""

from . import _tree, aliases, authoring, base, combine, optim, schedules, wrappers
from ._tree import *  # noqa: F403
from .aliases import *  # noqa: F403
from .authoring import *  # noqa: F403
from .base import *  # noqa: F403
from .combine import *  # noqa: F403
from .optim import *  # noqa: F403
from .schedules import *  # noqa: F403
from .transforms import (
    accumulators,
    adam_variants,
    adaptive,
    clipping,
    constrain,
    factored,
    learning_rate_free,
    momentum,
    momo_stepsize,
    normalize,
    orthogonalize,
    perturb,
    plateau,
    recent,
    regularize,
    scaling,
    schedule_free_core,
    stepsize,
)
from .transforms.accumulators import *  # noqa: F403
from .transforms.adam_variants import *  # noqa: F403
from .transforms.adaptive import *  # noqa: F403
from .transforms.clipping import *  # noqa: F403
from .transforms.constrain import *  # noqa: F403
from .transforms.factored import *  # noqa: F403
from .transforms.learning_rate_free import *  # noqa: F403
from .transforms.momentum import *  # noqa: F403
from .transforms.momo_stepsize import *  # noqa: F403
from .transforms.normalize import *  # noqa: F403
from .transforms.orthogonalize import *  # noqa: F403
from .transforms.perturb import *  # noqa: F403
from .transforms.plateau import *  # noqa: F403
from .transforms.recent import *  # noqa: F403
from .transforms.regularize import *  # noqa: F403
from .transforms.scaling import *  # noqa: F403
from .transforms.schedule_free_core import *  # noqa: F403
from .transforms.stepsize import *  # noqa: F403
from .wrappers import *  # noqa: F403

__version__ = "0.1.0"

_MODULES = (_tree, base, authoring, combine, accumulators, adam_variants, adaptive, clipping, constrain, factored,
            learning_rate_free, momentum, momo_stepsize, normalize, orthogonalize, perturb, plateau, recent, regularize,
            scaling, schedule_free_core, stepsize, wrappers, schedules, aliases, optim)

__all__ = sorted({name for module in _MODULES for name in module.__all__})
