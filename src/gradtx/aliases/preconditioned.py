"""Matrix-preconditioned optimizers: SOAP and Shampoo, each a documented chain."""

from __future__ import annotations

import torch

from .._hparams import ScalarOrSchedule, check_beta
from ..base import GradientTransformation, transform
from ..combine import chain
from ..precondition.shampoo import scale_by_shampoo
from ..precondition.soap import scale_by_soap
from ..transforms.momentum import trace
from ..transforms.regularize import Mask, add_decayed_weights
from ..transforms.scaling import scale_by_lr

__all__ = ["shampoo", "soap"]


@transform
def soap(lr: ScalarOrSchedule = 3e-3, b1: float = 0.95, b2: float = 0.95, shampoo_beta: float | None = None,
         eps: float = 1e-8, weight_decay: float = 0.01, precondition_frequency: int = 10,
         max_precond_dim: int = 10000, merge_dims: bool = False, precondition_1d: bool = False,
         normalize_grads: bool = False, correct_bias: bool = True, precond_dtype: torch.dtype | None = None,
         mask: Mask | None = None) -> GradientTransformation:
    """SOAP (Vyas et al., 2024): Adam in the eigenbasis of Shampoo's factors, with decoupled
    weight decay; the authors' defaults.

    ``chain(scale_by_soap(...), add_decayed_weights(weight_decay, mask), scale_by_lr(lr))``:
    ``p <- p - lr * (u_soap + weight_decay * p)``. The authors' code (and
    ``pytorch_optimizer.SOAP``) decays the already stepped parameter,
    ``p <- (p - lr u) (1 - lr weight_decay)``, and skips the decay on the first call; this
    chain decays ``p`` before the step on every call, as ``gx.adamw`` (they differ by
    ``lr^2 weight_decay u`` per step). See :func:`scale_by_soap` for the rest.

    Example: ``gx.Optimizer(model.parameters(), gx.soap(3e-3, weight_decay=0.01))``.
    """
    return chain(scale_by_soap(b1, b2, shampoo_beta, eps, precondition_frequency, max_precond_dim, merge_dims,
                               precondition_1d, normalize_grads, correct_bias, precond_dtype),
                 add_decayed_weights(weight_decay, mask), scale_by_lr(lr))


@transform
def shampoo(lr: ScalarOrSchedule, eps: float = 1e-6, update_freq: int = 1, beta: float | None = None,
            momentum: float | None = None, weight_decay: float = 0.0, max_precond_dim: int = 10000,
            merge_dims: bool = False, precondition_1d: bool = True, graft: GradientTransformation | None = None,
            precond_dtype: torch.dtype | None = None) -> GradientTransformation:
    """Shampoo (Gupta et al., 2018) with L2 weight decay and optional heavy-ball momentum.

    ``chain(add_decayed_weights(weight_decay), scale_by_shampoo(eps, update_freq, beta, ...,
    graft), trace(momentum), scale_by_lr(lr))`` (the ``trace`` only with ``momentum``):
    the decay is added to the gradient before preconditioning, as
    ``pytorch_optimizer.Shampoo``'s default. With ``momentum=None`` and ``update_freq=1``
    this is ``pytorch_optimizer.Shampoo(lr, matrix_eps=eps, weight_decay=weight_decay)``;
    that optimizer's momentum (a lerp of the gradient towards the last preconditioned update)
    is not reproduced, this one is ``torch.optim.SGD``'s on the preconditioned update.
    See :func:`scale_by_shampoo` for grafting and shapes.

    Example: ``gx.Optimizer(model.parameters(), gx.shampoo(0.1, update_freq=10, graft=gx.scale_by_rss()))``.
    """
    if momentum is not None:
        check_beta("momentum", momentum)
    parts = [add_decayed_weights(weight_decay),
             scale_by_shampoo(eps, update_freq, beta, max_precond_dim, merge_dims, precondition_1d, graft,
                              precond_dtype)]
    if momentum is not None:
        parts.append(trace(momentum))
    parts.append(scale_by_lr(lr))
    return chain(*parts)
