"""Ready-made optimizers: each a documented chain of transforms.

The learning rate is ``lr`` everywhere (a float, a 0-dim tensor or a schedule); other
argument names and defaults follow optax.
"""

from __future__ import annotations

import torch

from .._hparams import ScalarOrSchedule, check, check_beta
from ..base import GradientTransformation, transform
from ..combine import chain
from ..transforms.adaptive import scale_by_adam
from ..transforms.momentum import trace
from ..transforms.regularize import Mask, add_decayed_weights
from ..transforms.scaling import scale_by_lr

__all__ = ["sgd", "adam", "adamw"]


@transform
def sgd(lr: ScalarOrSchedule, momentum: float | None = None, nesterov: bool = False,
        weight_decay: float = 0.0, dampening: float | None = None) -> GradientTransformation:
    """Stochastic gradient descent, as ``torch.optim.SGD`` (the same arguments).

    ``g <- g + weight_decay * p``; with momentum ``m <- momentum * m + (1 - dampening) * g``
    (``m <- g`` at the first step) and ``g <- m`` (or ``g + momentum * m`` when ``nesterov``,
    which needs ``dampening = 0``); ``p <- p - lr * g``. ``dampening=None`` is 0 (see
    :func:`trace` for the state); without momentum ``dampening`` has no effect, as in torch.

    ``chain(add_decayed_weights(weight_decay), trace(momentum, nesterov, dampening=dampening),
    scale_by_lr(lr))``; the weight decay is always present so a param group may override
    ``weight_decay``.

    Example: ``gx.Optimizer(model.parameters(), gx.sgd(0.1, momentum=0.9, nesterov=True))``.
    """
    if momentum is not None:
        check_beta("momentum", momentum)  # named here: trace would call it decay
    if dampening is not None:
        check("dampening", dampening, low=0.0, high=1.0)
    if nesterov and not momentum:
        raise ValueError("nesterov=True needs a momentum > 0")
    if nesterov and dampening:
        raise ValueError(f"nesterov=True needs dampening=0 (as torch.optim.SGD), got dampening={dampening!r}")
    parts = [add_decayed_weights(weight_decay)]
    if momentum is not None:
        parts.append(trace(momentum, nesterov=nesterov, dampening=dampening))
    parts.append(scale_by_lr(lr))
    return chain(*parts)


@transform
def adam(lr: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, eps_root: float = 0.0,
         mu_dtype: torch.dtype | None = None, *, nesterov: bool = False) -> GradientTransformation:
    """Adam (Kingma & Ba, 2015), as ``torch.optim.Adam`` without weight decay.

    ``chain(scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov), scale_by_lr(lr))``:
    ``p <- p - lr * m_hat / (sqrt(v_hat + eps_root) + eps)``.

    Example: ``gx.Optimizer(model.parameters(), gx.adam(1e-3))``.
    """
    return chain(scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov), scale_by_lr(lr))


@transform
def adamw(lr: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, eps_root: float = 0.0,
          mu_dtype: torch.dtype | None = None, weight_decay: float = 1e-4, mask: Mask | None = None, *,
          nesterov: bool = False) -> GradientTransformation:
    """AdamW: Adam with decoupled weight decay (Loshchilov & Hutter, 2019).

    ``p <- p - lr * (m_hat / (sqrt(v_hat + eps_root) + eps) + weight_decay * p)``, equal to
    ``torch.optim.AdamW``. The default ``weight_decay`` is optax's 1e-4 (torch's is 1e-2).

    ``chain(scale_by_adam(...), add_decayed_weights(weight_decay, mask), scale_by_lr(lr))``.

    Example: ``gx.Optimizer(model.parameters(), gx.adamw(1e-3, weight_decay=0.01))``.
    """
    return chain(scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov),
                 add_decayed_weights(weight_decay, mask), scale_by_lr(lr))
