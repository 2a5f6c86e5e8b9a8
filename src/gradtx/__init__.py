"""gradtx: optax-style gradient transformations for PyTorch.

>>> import gradtx as gx
>>> tx = gx.chain(gx.clip_value(10.0), gx.scale_by_adam(), gx.scale_by_lr(1e-3))

The flat namespace gathers each module's ``__all__``; layers import downwards only:
``_tree``/``_foreach`` < ``base`` < ``combine``/``transforms`` < ``wrappers``/``schedules``
< ``aliases`` < ``torch_optim``.
"""

from . import (
    _tree,
    aliases,
    aliases_adam_family,
    aliases_misc,
    aliases_rms_family,
    base,
    combine,
    schedules,
    torch_optim,
    wrappers,
)
from ._tree import *  # noqa: F403
from .aliases import *  # noqa: F403
from .aliases_adam_family import *  # noqa: F403
from .aliases_misc import *  # noqa: F403
from .aliases_rms_family import *  # noqa: F403
from .base import *  # noqa: F403
from .combine import *  # noqa: F403
from .schedules import *  # noqa: F403
from .torch_optim import *  # noqa: F403
from .transforms import accumulators, adaptive, clipping, factored, momentum, normalize, regularize, scaling, stepsize
from .transforms.accumulators import *  # noqa: F403
from .transforms.adaptive import *  # noqa: F403
from .transforms.clipping import *  # noqa: F403
from .transforms.factored import *  # noqa: F403
from .transforms.momentum import *  # noqa: F403
from .transforms.normalize import *  # noqa: F403
from .transforms.regularize import *  # noqa: F403
from .transforms.scaling import *  # noqa: F403
from .transforms.stepsize import *  # noqa: F403
from .wrappers import *  # noqa: F403

__version__ = "0.1.0"

__all__ = sorted({
    name
    for module in (_tree, base, combine, accumulators, adaptive, clipping, factored, momentum, normalize, regularize,
                   scaling, stepsize, wrappers, schedules, aliases, aliases_adam_family, aliases_rms_family,
                   aliases_misc, torch_optim)
    for name in module.__all__
})
