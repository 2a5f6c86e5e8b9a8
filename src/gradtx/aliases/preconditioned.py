"""Matrix-preconditioned optimizers: SOAP and Shampoo, each a documented chain."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .._hparams import ScalarOrSchedule, check_beta, increment, new_count
from ..base import GradientTransformation, describe, transform
from ..combine import chain
from ..precondition.shampoo import START_PRECONDITIONING_STEP, scale_by_shampoo
from ..precondition.soap import scale_by_soap
from ..transforms.momentum import trace
from ..transforms.regularize import AddDecayedWeightsState, Mask, add_decayed_weights
from ..transforms.scaling import scale_by_lr

__all__ = ["shampoo", "soap"]


class _SoapWeightDecayState(NamedTuple):
    weight_decay: torch.Tensor  # 0-dim; param_groups[i]['weight_decay'], as add_decayed_weights'
    count: torch.Tensor  # int32, steps taken


def _decay_after_first_step(weight_decay, mask: Mask | None) -> GradientTransformation:
    """``add_decayed_weights`` from the second call on: SOAP's first call only collects
    statistics (a zero update), and the reference decays nothing then either."""
    inner = add_decayed_weights(weight_decay, mask)

    def init(params):
        return _SoapWeightDecayState(inner.init(params).weight_decay, new_count())

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        if int(state.count) > 0:
            updates, _ = inner.update(updates, AddDecayedWeightsState(state.weight_decay), params, inplace=inplace,
                                      **extra_args)
        return updates, _SoapWeightDecayState(state.weight_decay, increment(state.count, inplace))

    return describe(GradientTransformation(init, update), f"add_decayed_weights({weight_decay!r}) after step 1",
                    leafwise=True, inplace=True)


@transform
def soap(lr: ScalarOrSchedule = 3e-3, b1: float = 0.95, b2: float = 0.95, shampoo_beta: float | None = None,
         eps: float = 1e-8, weight_decay: float = 0.01, precondition_frequency: int = 10,
         max_precond_dim: int = 10000, merge_dims: bool = False, precondition_1d: bool = False,
         normalize_grads: bool = False, correct_bias: bool = True, precond_dtype: torch.dtype | None = None,
         mask: Mask | None = None) -> GradientTransformation:
    """SOAP (Vyas et al., 2024): Adam in the eigenbasis of Shampoo's factors, with decoupled
    weight decay; the authors' defaults.

    ``chain(scale_by_soap(...), add_decayed_weights(weight_decay, mask), scale_by_lr(lr))``:
    ``p <- p - lr * (u_soap + weight_decay * p)``, the decay skipped on the first call (which
    only collects statistics), as the authors' code. That code (and ``pytorch_optimizer.SOAP``)
    decays the already stepped parameter, ``p <- (p - lr u) (1 - lr weight_decay)``; this chain
    decays ``p`` before the step, as ``gx.adamw`` (they differ by ``lr^2 weight_decay u`` per
    step). See :func:`scale_by_soap` for the rest.

    Example: ``gx.Optimizer(model.parameters(), gx.soap(3e-3, weight_decay=0.01))``.
    """
    return chain(scale_by_soap(b1, b2, shampoo_beta, eps, precondition_frequency, max_precond_dim, merge_dims,
                               precondition_1d, normalize_grads, correct_bias, precond_dtype),
                 _decay_after_first_step(weight_decay, mask), scale_by_lr(lr))


@transform
def shampoo(lr: ScalarOrSchedule, eps: float = 1e-6, update_freq: int = 1, beta: float | None = None,
            momentum: float | None = None, weight_decay: float = 0.0, max_precond_dim: int = 10000,
            merge_dims: bool = False, precondition_1d: bool = True, graft: GradientTransformation | str | None = "sgd",
            precond_dtype: torch.dtype | None = None,
            start_preconditioning_step: int = START_PRECONDITIONING_STEP) -> GradientTransformation:
    """Shampoo (Gupta et al., 2018) with L2 weight decay and optional heavy-ball momentum.

    ``chain(add_decayed_weights(weight_decay), scale_by_shampoo(eps, update_freq, beta, ...,
    graft), trace(momentum), scale_by_lr(lr))`` (the ``trace`` only with ``momentum``):
    the decay is added to the gradient before preconditioning, as
    ``pytorch_optimizer.Shampoo``'s default. By default the direction takes the gradient's norm
    per leaf (SGD grafting) and the first 4 steps are SGD steps (``start_preconditioning_step=5``),
    Distributed Shampoo's defaults. With ``graft=None``, ``start_preconditioning_step=1``,
    ``momentum=None`` and ``update_freq=1`` this is
    ``pytorch_optimizer.Shampoo(lr, matrix_eps=eps, weight_decay=weight_decay)``;
    that optimizer's momentum (a lerp of the gradient towards the last preconditioned update)
    is not reproduced, this one is ``torch.optim.SGD``'s on the preconditioned update.
    See :func:`scale_by_shampoo` for grafting and shapes.

    Example: ``gx.Optimizer(model.parameters(), gx.shampoo(0.1, update_freq=10, graft=gx.scale_by_rss()))``.
    """
    if momentum is not None:
        check_beta("momentum", momentum)
    parts = [add_decayed_weights(weight_decay),
             scale_by_shampoo(eps, update_freq, beta, max_precond_dim, merge_dims, precondition_1d, graft,
                              precond_dtype, start_preconditioning_step)]
    if momentum is not None:
        parts.append(trace(momentum))
    parts.append(scale_by_lr(lr))
    return chain(*parts)
