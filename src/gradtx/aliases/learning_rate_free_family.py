"""Learning-rate-free optimizers: Prodigy, D-Adaptation Adam and SGD, as the authors' packages."""

from __future__ import annotations

import math

import torch

from .._hparams import ScalarOrSchedule, check
from ..base import GradientTransformation, identity, transform
from ..combine import chain
from ..transforms.learning_rate_free import (
    scale_by_cocob,
    scale_by_dadapt_adam,
    scale_by_dadapt_sgd,
    scale_by_dowg,
    scale_by_prodigy,
)
from ..transforms.regularize import Mask, add_decayed_weights
from ..transforms.scaling import scale, scale_by_lr

__all__ = ["cocob", "dadapt_adam", "dadapt_sgd", "dowg", "prodigy"]


@transform
def prodigy(lr: float | torch.Tensor = 1.0, b1: float = 0.9, b2: float = 0.999, beta3: float | None = None,
            eps: float = 1e-8, weight_decay: float = 0.0, decouple: bool = True, use_bias_correction: bool = False,
            safeguard_warmup: bool = False, d0: float = 1e-6, d_coef: float = 1.0,
            growth_rate: float = math.inf) -> GradientTransformation:
    """Prodigy (Mishchenko & Defazio, 2024), as ``prodigyopt.Prodigy`` (``betas = (b1, b2)``):
    ``x <- x - dlr m / (sqrt(v) + d eps) - weight_decay dlr x`` with ``d`` estimated from
    the distance travelled (rule in :func:`scale_by_prodigy`). ``lr`` scales the estimate:
    leave it 1.

    ``chain(scale_by_prodigy(lr, ...), scale(-1))``.

    Example: ``opt = gx.Optimizer(model.parameters(), gx.prodigy(weight_decay=0.01))``.
    """
    return chain(scale_by_prodigy(lr, b1, b2, beta3, eps, weight_decay, decouple, use_bias_correction,
                                  safeguard_warmup, d0, d_coef, growth_rate), scale(-1.0))


@transform
def dadapt_adam(lr: float | torch.Tensor = 1.0, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                weight_decay: float = 0.0, decouple: bool = False, use_bias_correction: bool = False,
                d0: float = 1e-6, growth_rate: float = math.inf) -> GradientTransformation:
    """D-Adaptation Adam (Defazio & Mishchenko, 2023), as ``dadaptation.DAdaptAdam``
    (``betas = (b1, b2)``); rule in :func:`scale_by_dadapt_adam`.

    ``chain(scale_by_dadapt_adam(lr, ...), scale(-1))``.

    Example: ``gx.Optimizer(model.parameters(), gx.dadapt_adam(weight_decay=1e-2, decouple=True))``.
    """
    return chain(scale_by_dadapt_adam(lr, b1, b2, eps, weight_decay, decouple, use_bias_correction, d0,
                                      growth_rate), scale(-1.0))


@transform
def dadapt_sgd(lr: float | torch.Tensor = 1.0, momentum: float = 0.0, weight_decay: float = 0.0, d0: float = 1e-6,
               growth_rate: float = math.inf) -> GradientTransformation:
    """D-Adaptation SGD (Defazio & Mishchenko, 2023), as ``dadaptation.DAdaptSGD``; rule in
    :func:`scale_by_dadapt_sgd`.

    ``chain(scale_by_dadapt_sgd(lr, ...), scale(-1))``.

    Example: ``gx.Optimizer(model.parameters(), gx.dadapt_sgd(momentum=0.9))``.
    """
    return chain(scale_by_dadapt_sgd(lr, momentum, weight_decay, d0, growth_rate), scale(-1.0))


@transform
def dowg(lr: ScalarOrSchedule = 1.0, init_estim_sq_dist: float | None = None, eps: float = 1e-4,
         weight_decay: float | None = None, mask: Mask | None = None) -> GradientTransformation:
    """DoWG (Khaled et al., 2023), as ``optax.contrib.dowg``: rule in :func:`scale_by_dowg`.

    ``chain(add_decayed_weights(weight_decay, mask) or identity(), scale_by_dowg(init_estim_sq_dist, eps),
    scale_by_lr(lr))``.

    Example: ``gx.Optimizer(model.parameters(), gx.dowg())``.
    """
    decay = identity() if weight_decay is None else add_decayed_weights(weight_decay, mask)
    return chain(decay, scale_by_dowg(init_estim_sq_dist, eps), scale_by_lr(lr))


@transform
def cocob(lr: float | torch.Tensor = 1.0, alpha: float = 100.0, eps: float = 1e-8, weight_decay: float = 0.0,
          mask: Mask | None = None) -> GradientTransformation:
    """COCOB-Backprop (Orabona & Tommasi, 2017), as ``optax.contrib.cocob``: the gradient
    (plus ``weight_decay x``) scaled by ``lr`` feeds the coin-betting rule of
    :func:`scale_by_cocob`, which returns the whole step.

    ``chain(add_decayed_weights(weight_decay, mask), scale(lr), scale_by_cocob(alpha, eps))``.

    Example: ``gx.Optimizer(model.parameters(), gx.cocob())``.
    """
    check("lr", lr, low=0.0, low_open=True)
    return chain(add_decayed_weights(weight_decay, mask), scale(lr), scale_by_cocob(alpha, eps))
