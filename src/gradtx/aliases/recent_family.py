"""Recent Adam relatives as optimizers: ADOPT, AdEMAMix (and simplified), LaProp."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .._hparams import ScalarOrSchedule
from ..base import GradientTransformation, transform
from ..combine import chain
from ..transforms.recent import (
    quarter_power,
    scale_by_ademamix,
    scale_by_adopt,
    scale_by_laprop,
    scale_by_simplified_ademamix,
)
from ..transforms.regularize import Mask, add_decayed_weights
from ..transforms.scaling import scale_by_lr

__all__ = ["ademamix", "adopt", "laprop", "simplified_ademamix"]


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
