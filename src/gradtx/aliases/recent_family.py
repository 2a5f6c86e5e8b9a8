"""Recent Adam relatives as optimizers: ADOPT, AdEMAMix (and simplified), LaProp."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .._hparams import ScalarOrSchedule
from ..base import GradientTransformation, transform
from ..combine import chain
from ..transforms.adam_variants import scale_by_radam
from ..transforms.recent import (
    quarter_power,
    scale_by_acprop,
    scale_by_ademamix,
    scale_by_adopt,
    scale_by_laprop,
    scale_by_madgrad,
    scale_by_simplified_ademamix,
)
from ..transforms.regularize import Mask, add_decayed_weights
from ..transforms.scaling import scale_by_lr
from ..wrappers import lookahead

__all__ = ["acprop", "ademamix", "adopt", "laprop", "madgrad", "ranger", "simplified_ademamix"]


@transform
def adopt(lr: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.9999, eps: float = 1e-6, *, nesterov: bool = False,
          use_clipping: bool = True, clip_value_fn: Callable[[torch.Tensor], Any] = quarter_power
          ) -> GradientTransformation:
    """ADOPT (Taniguchi et al., 2024), as ``optax.contrib.adopt``: ``p <- p - lr m`` with the
    clipped, previous-``v``-normalised momentum of :func:`scale_by_adopt`.

    ``chain(scale_by_adopt(b1, b2, eps, ...), scale_by_lr(lr))``.

    Example: ``gx.Optimizer(model.parameters(), gx.adopt(1e-3))``.
    """
    return chain(scale_by_adopt(b1, b2, eps, nesterov=nesterov, use_clipping=use_clipping,
                                clip_value_fn=clip_value_fn), scale_by_lr(lr))


@transform
def ademamix(lr: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999, b3: ScalarOrSchedule = 0.9999,
             alpha: ScalarOrSchedule = 5.0, eps: float = 1e-8, eps_root: float = 0.0, weight_decay: float = 0.0,
             mask: Mask | None = None) -> GradientTransformation:
    """AdEMAMix (Pagliardini et al., 2024), as ``optax.contrib.ademamix``: Adam with a second,
    slow EMA of the gradient added with weight ``alpha`` (rule in :func:`scale_by_ademamix`),
    then decoupled weight decay.

    ``chain(scale_by_ademamix(b1, b2, b3, alpha, eps, eps_root), add_decayed_weights(weight_decay,
    mask), scale_by_lr(lr))``.

    Example: ``gx.Optimizer(model.parameters(), gx.ademamix(1e-3, weight_decay=0.01))``.
    """
    return chain(scale_by_ademamix(b1, b2, b3, alpha, eps, eps_root), add_decayed_weights(weight_decay, mask),
                 scale_by_lr(lr))


@transform
def simplified_ademamix(lr: ScalarOrSchedule, b1: float = 0.99, b2: float = 0.95, alpha: ScalarOrSchedule = 0.0,
                        eps: float = 1e-8, eps_root: float = 0.0, weight_decay: float = 0.0,
                        mask: Mask | None = None) -> GradientTransformation:
    """Simplified AdEMAMix (Morwani et al., 2025), as ``optax.contrib.simplified_ademamix``
    (rule in :func:`scale_by_simplified_ademamix`), then decoupled weight decay.

    ``chain(scale_by_simplified_ademamix(b1, b2, alpha, eps, eps_root),
    add_decayed_weights(weight_decay, mask), scale_by_lr(lr))``.

    Example: ``gx.Optimizer(model.parameters(), gx.simplified_ademamix(1e-4, alpha=2.0))``.
    """
    return chain(scale_by_simplified_ademamix(b1, b2, alpha, eps, eps_root), add_decayed_weights(weight_decay, mask),
                 scale_by_lr(lr))


@transform
def laprop(lr: ScalarOrSchedule = 4e-4, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-15,
           eps_root: float = 1e-15) -> GradientTransformation:
    """LaProp (Ziyin et al., 2020), as ``pytorch_optimizer.LaProp`` without weight decay:
    ``p <- p - lr m / (1 - b1^t)`` with ``m`` the momentum of the RMS-normalised gradient
    (:func:`scale_by_laprop`).

    ``chain(scale_by_laprop(b1, b2, eps, eps_root), scale_by_lr(lr))``.

    Example: ``gx.Optimizer(model.parameters(), gx.laprop(4e-4))``.
    """
    return chain(scale_by_laprop(b1, b2, eps, eps_root), scale_by_lr(lr))


@transform
def acprop(lr: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-16, eps_root: float = 1e-16,
           weight_decay: float = 0.0, mask: Mask | None = None) -> GradientTransformation:
    """AcProp (Zhuang et al., 2021), as ``optax.contrib.acprop`` (rule in :func:`scale_by_acprop`).

    ``chain(scale_by_acprop(b1, b2, eps, eps_root), add_decayed_weights(weight_decay, mask), scale_by_lr(lr))``.

    Example: ``gx.Optimizer(model.parameters(), gx.acprop(1e-3))``.
    """
    return chain(scale_by_acprop(b1, b2, eps, eps_root), add_decayed_weights(weight_decay, mask), scale_by_lr(lr))


@transform
def madgrad(lr: ScalarOrSchedule, momentum: float = 0.9, weight_decay: float = 0.0, eps: float = 1e-6
            ) -> GradientTransformation:
    """MADGRAD (Defazio & Jelassi, 2021), as ``optax.contrib.madgrad``: coupled weight decay,
    then the dual-averaging step of :func:`scale_by_madgrad`.

    ``chain(add_decayed_weights(weight_decay), scale_by_madgrad(lr, momentum, eps))``.

    Example: ``gx.Optimizer(model.parameters(), gx.madgrad(1e-2))``.
    """
    return chain(add_decayed_weights(weight_decay), scale_by_madgrad(lr, momentum, eps))


@transform(leafwise=True, inplace=True)
def ranger(lr: ScalarOrSchedule = 1e-3, b1: float = 0.95, b2: float = 0.999, eps: float = 1e-5,
           weight_decay: float = 0.0, sync_period: int = 6, slow_step_size: float = 0.5
           ) -> GradientTransformation:
    """Ranger (Wright, 2019): RAdam inside Lookahead.

    ``lookahead(chain(scale_by_radam(b1, b2, eps, eps_before_debias=True), add_decayed_weights(weight_decay),
    scale_by_lr(lr)), sync_period, slow_step_size)`` (RAdam as ``torch.optim.RAdam`` and the
    original Ranger: ``eps`` added before the bias correction): every ``sync_period`` steps the slow weights move
    ``slow_step_size`` of the way to the fast ones and the params jump to them (see
    :func:`gradtx.lookahead`). Defaults are the author's (``betas=(0.95, 0.999)``, ``k=6``,
    ``alpha=0.5``, ``eps=1e-5``); Ranger's gradient centralisation is left out (chain
    ``gx.centralize()`` first for it).

    Example: ``gx.Optimizer(model.parameters(), gx.ranger(1e-3))``.
    """
    fast = chain(scale_by_radam(b1, b2, eps, eps_before_debias=True), add_decayed_weights(weight_decay),
                 scale_by_lr(lr))
    return lookahead(fast, sync_period, slow_step_size)
