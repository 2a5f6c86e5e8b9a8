"""Aliases of the Adam family (AMSGrad, AdaBelief, Yogi, RAdam, NAdam, Adan, Lion, ...): documented chains.

The learning rate is ``lr`` everywhere; other argument names and defaults follow optax.
Keyword-only extras (``debias_after_max``, ``eps_before_debias``, ``momentum_decay``) select
``torch.optim``'s form where it differs from optax's.
"""

from __future__ import annotations

import torch

from .._hparams import ScalarOrSchedule
from ..base import GradientTransformation, transform
from ..combine import chain
from ..transforms.adam_variants import (
    scale_by_adamax,
    scale_by_adan,
    scale_by_amsgrad,
    scale_by_belief,
    scale_by_lion,
    scale_by_nadam,
    scale_by_novograd,
    scale_by_radam,
    scale_by_yogi,
)
from ..transforms.adaptive import scale_by_adam
from ..transforms.regularize import Mask, add_decayed_weights
from ..transforms.scaling import scale_by_lr

__all__ = ["adamax", "adamaxw", "amsgrad", "adabelief", "yogi", "radam", "novograd", "lion", "adan", "nadam",
           "nadamw"]


@transform
def adamax(lr: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> GradientTransformation:
    """Adamax (Kingma & Ba, 2015): Adam with an infinity-norm second moment.

    ``m <- b1 m + (1-b1) g``; ``u <- max(b2 u, |g| + eps)``; ``p <- p - lr m / ((1 - b1^t) u)``.
    ``chain(scale_by_adamax(b1, b2, eps), scale_by_lr(lr))``; equals ``torch.optim.Adamax``.
    torch's ``weight_decay`` (an L2 term added to the gradient) is
    ``chain(add_decayed_weights(wd), scale_by_adamax(), scale_by_lr(lr))``; see :func:`adamaxw`
    for the decoupled form.

    Example: ``gx.Optimizer(model.parameters(), gx.adamax(2e-3))``.
    """
    return chain(scale_by_adamax(b1, b2, eps), scale_by_lr(lr))


@transform
def adamaxw(lr: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
            weight_decay: float = 1e-4, mask: Mask | None = None) -> GradientTransformation:
    """Adamax with decoupled weight decay (Loshchilov & Hutter, 2019).

    ``p <- p - lr (m / ((1 - b1^t) u) + weight_decay p)`` (``m``, ``u`` as :func:`adamax`);
    ``chain(scale_by_adamax(...), add_decayed_weights(weight_decay, mask), scale_by_lr(lr))``.
    ``torch.optim.Adamax`` has no decoupled decay (its ``weight_decay`` is L2); this equals
    ``torch.optim.Adamax`` with ``p.mul_(1 - lr * weight_decay)`` before each step.

    Example: ``gx.Optimizer(model.parameters(), gx.adamaxw(2e-3, weight_decay=1e-2))``.
    """
    return chain(scale_by_adamax(b1, b2, eps), add_decayed_weights(weight_decay, mask), scale_by_lr(lr))


@transform
def amsgrad(lr: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, eps_root: float = 0.0,
            mu_dtype: torch.dtype | None = None, *, debias_after_max: bool = False) -> GradientTransformation:
    """AMSGrad (Reddi et al., 2018): Adam whose second moment never decreases.

    optax's form (default): ``v_max <- max(v_max, v_hat)``, ``p <- p - lr m_hat / (sqrt(v_max + eps_root) + eps)``.
    ``debias_after_max=True``: ``v_max <- max(v_max, v)``, ``p <- p - lr m_hat / (sqrt(v_max / (1 - b2^t)) + eps)``,
    which equals ``torch.optim.Adam(amsgrad=True)``; the forms differ once ``v`` decreases.
    ``chain(scale_by_amsgrad(...), scale_by_lr(lr))``.

    Example: ``gx.Optimizer(model.parameters(), gx.amsgrad(1e-3, debias_after_max=True))``.
    """
    return chain(scale_by_amsgrad(b1, b2, eps, eps_root, mu_dtype, debias_after_max=debias_after_max),
                 scale_by_lr(lr))


@transform
def adabelief(lr: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-16, eps_root: float = 1e-16,
              *, nesterov: bool = False) -> GradientTransformation:
    """AdaBelief (Zhuang et al., 2020): Adam with the variance of ``g`` around its mean.

    ``m <- b1 m + (1-b1) g``; ``s <- b2 s + (1-b2) (g - m)^2 + eps_root``;
    ``p <- p - lr m_hat / (sqrt(s_hat) + eps)``; ``chain(scale_by_belief(...), scale_by_lr(lr))``.
    There is no ``torch.optim`` equivalent; checked against the paper's rule.

    Example: ``gx.Optimizer(model.parameters(), gx.adabelief(1e-3))``.
    """
    return chain(scale_by_belief(b1, b2, eps, eps_root, nesterov=nesterov), scale_by_lr(lr))


@transform
def yogi(lr: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-3) -> GradientTransformation:
    """Yogi (Zaheer et al., 2018): Adam with an additive second-moment update.

    ``v <- v - (1-b2) sign(v - g^2) g^2``; ``p <- p - lr m_hat / (sqrt(v_hat) + eps)``, moments
    starting at 1e-6; ``chain(scale_by_yogi(b1, b2, eps), scale_by_lr(lr))``. No ``torch.optim``
    equivalent; checked against the rule above.

    Example: ``gx.Optimizer(model.parameters(), gx.yogi(1e-2))``.
    """
    return chain(scale_by_yogi(b1, b2, eps), scale_by_lr(lr))


@transform
def radam(lr: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, eps_root: float = 0.0,
          threshold: float = 5.0, *, nesterov: bool = False, eps_before_debias: bool = False
          ) -> GradientTransformation:
    """Rectified Adam (Liu et al., 2020).

    ``p <- p - lr r_t m_hat / (sqrt(v_hat + eps_root) + eps)`` once ``rho_t >= threshold``, else
    ``p <- p - lr m_hat`` (see :func:`scale_by_radam`); ``chain(scale_by_radam(...), scale_by_lr(lr))``.
    With ``eps_before_debias=True`` (denominator ``(sqrt(v) + eps) / sqrt(1 - b2^t)``) it equals
    ``torch.optim.RAdam``; the default is optax's form, which puts ``eps`` after the correction.

    Example: ``gx.Optimizer(model.parameters(), gx.radam(1e-3, eps_before_debias=True))``.
    """
    return chain(scale_by_radam(b1, b2, eps, eps_root, threshold, nesterov=nesterov,
                                eps_before_debias=eps_before_debias), scale_by_lr(lr))


@transform
def novograd(lr: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.25, eps: float = 1e-6, eps_root: float = 0.0,
             weight_decay: float = 0.0) -> GradientTransformation:
    """NovoGrad (Ginsburg et al., 2019): layer-wise second moments, weight decay inside the momentum.

    ``n <- b2 n + (1-b2) ||g||^2`` per tensor (``||g||^2`` at first);
    ``m <- b1 m + g / (sqrt(n) + eps) + weight_decay p``; ``p <- p - lr m``;
    ``chain(scale_by_novograd(...), scale_by_lr(lr))``. No ``torch.optim`` equivalent.

    Example: ``gx.Optimizer(model.parameters(), gx.novograd(1e-2, weight_decay=1e-3))``.
    """
    return chain(scale_by_novograd(b1, b2, eps, eps_root, weight_decay), scale_by_lr(lr))


@transform
def lion(lr: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.99, mu_dtype: torch.dtype | None = None,
         weight_decay: float = 1e-3, mask: Mask | None = None) -> GradientTransformation:
    """Lion (Chen et al., 2023): the sign of an interpolated momentum, with decoupled decay.

    ``p <- p - lr (sign(b1 m + (1-b1) g) + weight_decay p)``; ``m <- b2 m + (1-b2) g``;
    ``chain(scale_by_lion(b1, b2, mu_dtype), add_decayed_weights(weight_decay, mask), scale_by_lr(lr))``.
    No ``torch.optim`` equivalent. Take ``lr`` 3-10x smaller than for AdamW.

    Example: ``gx.Optimizer(model.parameters(), gx.lion(1e-4, weight_decay=1e-2))``.
    """
    return chain(scale_by_lion(b1, b2, mu_dtype), add_decayed_weights(weight_decay, mask), scale_by_lr(lr))


@transform
def adan(lr: ScalarOrSchedule, b1: float = 0.98, b2: float = 0.92, b3: float = 0.99, eps: float = 1e-8,
         eps_root: float = 1e-8, weight_decay: float = 0.0, mask: Mask | None = None) -> GradientTransformation:
    """Adan (Xie et al., 2022): Nesterov momentum estimated from gradient differences.

    ``p <- p - lr ((m_hat + b2 v_hat) / (sqrt(n_hat + eps_root) + eps) + weight_decay p)`` (see
    :func:`scale_by_adan`); ``chain(scale_by_adan(...), add_decayed_weights(weight_decay, mask),
    scale_by_lr(lr))``. The weight decay is decoupled, as optax and the authors' ``no_prox=True``;
    the paper's proximal form divides by ``1 + lr weight_decay`` instead. The difference term
    follows the paper, not optax's current code (see :func:`scale_by_adan`).

    Example: ``gx.Optimizer(model.parameters(), gx.adan(1e-3, weight_decay=0.02))``.
    """
    return chain(scale_by_adan(b1, b2, b3, eps, eps_root), add_decayed_weights(weight_decay, mask),
                 scale_by_lr(lr))


def _nadam_scaling(b1, b2, eps, eps_root, mu_dtype, momentum_decay) -> GradientTransformation:
    if momentum_decay is None:
        return scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=True)
    return scale_by_nadam(b1, b2, eps, momentum_decay, eps_root, mu_dtype)


@transform
def nadam(lr: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, eps_root: float = 0.0,
          mu_dtype: torch.dtype | None = None, *, momentum_decay: float | None = None) -> GradientTransformation:
    """NAdam (Dozat, 2016): Adam with Nesterov momentum.

    optax's form (``momentum_decay=None``): ``adam(..., nesterov=True)``,
    ``p <- p - lr (b1 m / (1 - b1^(t+1)) + (1-b1) g / (1 - b1^t)) / (sqrt(v_hat + eps_root) + eps)``.
    ``momentum_decay=psi`` (torch's default is 4e-3) uses Dozat's schedule
    ``mu_t = b1 (1 - 0.5 * 0.96^(t psi))`` through :func:`scale_by_nadam` and equals
    ``torch.optim.NAdam`` (to round-off: torch rounds the product of the ``mu_t`` to its default
    dtype, see :func:`scale_by_nadam`); the constant ``mu_t = b1`` of optax's form is not a
    special case of it.

    Example: ``gx.Optimizer(model.parameters(), gx.nadam(2e-3, momentum_decay=4e-3))``.
    """
    return chain(_nadam_scaling(b1, b2, eps, eps_root, mu_dtype, momentum_decay), scale_by_lr(lr))


@transform
def nadamw(lr: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, eps_root: float = 0.0,
           mu_dtype: torch.dtype | None = None, weight_decay: float = 1e-4, mask: Mask | None = None, *,
           momentum_decay: float | None = None) -> GradientTransformation:
    """NAdamW: :func:`nadam` (Dozat, 2016) with decoupled weight decay (Loshchilov & Hutter, 2019):
    ``p <- p - lr (u + weight_decay p)``.

    ``chain(<nadam scaling>, add_decayed_weights(weight_decay, mask), scale_by_lr(lr))``; optax's
    ``adamw(..., nesterov=True)`` by default. With ``momentum_decay`` set it equals
    ``torch.optim.NAdam(decoupled_weight_decay=True)``.

    Example: ``gx.Optimizer(model.parameters(), gx.nadamw(2e-3, weight_decay=1e-2))``.
    """
    return chain(_nadam_scaling(b1, b2, eps, eps_root, mu_dtype, momentum_decay),
                 add_decayed_weights(weight_decay, mask), scale_by_lr(lr))
