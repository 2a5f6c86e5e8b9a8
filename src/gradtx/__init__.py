"""gradtx: optax-style gradient transformations for PyTorch.

>>> import gradtx as gx
>>> tx = gx.chain(gx.clip_value(10.0), gx.scale_by_adam(), gx.scale_by_lr(1e-3))

The flat namespace gathers each module's ``__all__``; layers import downwards only:
``_tree``/``_foreach`` < ``base`` < ``authoring``/``foreach`` < ``combine``/``transforms`` < ``wrappers``/``schedules``
< ``aliases/`` < ``optim/`` (the ``torch.optim`` adapter).
"""

from . import (
               _tree,
               aliases,
               authoring,
               base,
               branching,
               combine,
               evaluation,
               external,
               handover,
               monitoring,
               optim,
               precondition,
               projected,
               schedules,
               sharpness,
               wrappers,
)
from ._tree import *  # noqa: F403
from .aliases import *  # noqa: F403
from .approx import *  # noqa: F403
from .authoring import *  # noqa: F403
from .base import *  # noqa: F403
from .branching import *  # noqa: F403
from .combine import *  # noqa: F403
from .evaluation import *  # noqa: F403
from .external import *  # noqa: F403
from .handover import *  # noqa: F403
from .monitoring import *  # noqa: F403
from .optim import *  # noqa: F403
from .optim import scipy_minimize
from .optim.scipy_minimize import *  # noqa: F403
from .precondition import *  # noqa: F403
from .projected import *  # noqa: F403
from .schedules import *  # noqa: F403
from .search import conjugate_gradient, diagonal_quasi_newton, line_search, lsr1, quasi_newton, step_size, trust_region
from .search import lbfgs as _lbfgs_module  # the name gx.lbfgs is the alias
from .search.conjugate_gradient import *  # noqa: F403
from .search.diagonal_quasi_newton import *  # noqa: F403
from .search.lbfgs import *  # noqa: F403
from .search.line_search import *  # noqa: F403
from .search.lsr1 import *  # noqa: F403
from .search.quasi_newton import *  # noqa: F403
from .search.step_size import *  # noqa: F403
from .search.trust_region import *  # noqa: F403
from .second_order import adahessian as _adahessian_module  # gx.adahessian is the alias
from .second_order import cubic, gauss_newton, hutchinson, nystrom, optax_second_order
from .second_order import matrix_momentum as _matrix_momentum_module  # gx.matrix_momentum is the transform
from .second_order import newton as _newton_module  # the names gx.newton / gx.newton_cg are aliases
from .second_order import newton_cg as _newton_cg_module
from .second_order import sophia as _sophia_module  # gx.sophia is the alias
from .second_order.adahessian import *  # noqa: F403
from .second_order.cubic import *  # noqa: F403
from .second_order.gauss_newton import *  # noqa: F403
from .second_order.hutchinson import *  # noqa: F403
from .second_order.matrix_momentum import *  # noqa: F403
from .second_order.newton import *  # noqa: F403
from .second_order.newton_cg import *  # noqa: F403
from .second_order.nystrom import *  # noqa: F403
from .second_order.optax_second_order import *  # noqa: F403
from .second_order.sophia import *  # noqa: F403
from .sharpness import *  # noqa: F403
from .transforms import (
               accumulators,
               adam_variants,
               adaptive,
               averaging,
               blocks,
               clipping,
               constrain,
               ema_clipping,
               factored,
               gradient_aware,
               growth_clipping,
               learning_rate_free,
               momentum,
               momentum_corrections,
               momo_stepsize,
               normalize,
               orthogonalize,
               perturb,
               plateau,
               projections,
               recent,
               regularize,
               scaling,
               schedule_free_core,
               stepsize,
               weight_decay,
)
from .transforms.accumulators import *  # noqa: F403
from .transforms.adam_variants import *  # noqa: F403
from .transforms.adaptive import *  # noqa: F403
from .transforms.averaging import *  # noqa: F403
from .transforms.blocks import *  # noqa: F403
from .transforms.clipping import *  # noqa: F403
from .transforms.constrain import *  # noqa: F403
from .transforms.ema_clipping import *  # noqa: F403
from .transforms.factored import *  # noqa: F403
from .transforms.gradient_aware import *  # noqa: F403
from .transforms.growth_clipping import *  # noqa: F403
from .transforms.learning_rate_free import *  # noqa: F403
from .transforms.momentum import *  # noqa: F403
from .transforms.momentum_corrections import *  # noqa: F403
from .transforms.momo_stepsize import *  # noqa: F403
from .transforms.normalize import *  # noqa: F403
from .transforms.orthogonalize import *  # noqa: F403
from .transforms.perturb import *  # noqa: F403
from .transforms.plateau import *  # noqa: F403
from .transforms.projections import *  # noqa: F403
from .transforms.recent import *  # noqa: F403
from .transforms.regularize import *  # noqa: F403
from .transforms.scaling import *  # noqa: F403
from .transforms.schedule_free_core import *  # noqa: F403
from .transforms.stepsize import *  # noqa: F403
from .transforms.weight_decay import *  # noqa: F403
from .wrappers import *  # noqa: F403

__version__ = "0.1.0"

import sys as _sys  # noqa: E402

_approx_modules = tuple(_sys.modules[f"{__name__}.approx.{m}"]
                        for m in ("fdm", "randomized", "mezo", "forward_gradient", "homotopy", "laplacian"))

_MODULES = (
    _tree, base, authoring, evaluation, combine, branching,
    # transforms/
    accumulators, adam_variants, adaptive, averaging, blocks, clipping, constrain, ema_clipping, factored,
    gradient_aware, growth_clipping, learning_rate_free, momentum, momentum_corrections, momo_stepsize, normalize,
    orthogonalize, perturb, plateau, projections, recent, regularize, scaling, schedule_free_core, stepsize,
    weight_decay,
    # precondition/, search/
    precondition,
    line_search, _lbfgs_module, quasi_newton, diagonal_quasi_newton, lsr1, conjugate_gradient, step_size, trust_region,
    # second_order/
    optax_second_order, _newton_module, _newton_cg_module, nystrom, gauss_newton, cubic,
    hutchinson, _sophia_module, _adahessian_module, _matrix_momentum_module,
    wrappers, sharpness, projected, external, monitoring, schedules, aliases, optim, scipy_minimize,
    # approx/
    handover, *_approx_modules,
)

__all__ = sorted({name for module in _MODULES for name in module.__all__})
