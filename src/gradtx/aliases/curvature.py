"""Aliases using the Hessian diagonal: Sophia (optax.contrib's and the paper's SophiaH) and
AdaHessian. Each needs Hessian-vector products: the extra argument ``hvp_fn`` (functionally
``gx.make_hvp_fn(loss_fn)``; under ``gx.Optimizer``, ``step(closure)`` builds it)."""

from __future__ import annotations

import torch

from .._hparams import ScalarOrSchedule
from ..base import GradientTransformation, transform
from ..combine import chain
from ..second_order.adahessian import scale_by_adahessian
from ..second_order.sophia import scale_by_sophia, scale_by_sophia_h
from ..transforms.regularize import Mask, add_decayed_weights
from ..transforms.scaling import scale_by_lr

__all__ = ["adahessian", "sophia", "sophia_h"]


@transform
def sophia(lr: ScalarOrSchedule, b1: float = 0.965, b2: float = 0.99, eps: float = 1e-8, weight_decay: float = 1e-4,
           weight_decay_mask: Mask | None = None, gamma: float = 0.01, clip_threshold: float | None = 1.0,
           update_interval: int = 10, hessian_diagonal_fn: GradientTransformation | None = None,
           mu_dtype: torch.dtype | None = None) -> GradientTransformation:
    """Sophia, optax.contrib's ``sophia`` (Liu et al., 2023; levanter's order):
    ``p <- p - lr (clip(m_hat / max(gamma nu, eps), clip_threshold) + weight_decay p)``, ``nu``
    the average of ``hessian_diagonal_fn``'s estimates up to the previous step (Hutchinson's
    by default, through ``hvp_fn``). ``chain(scale_by_sophia(...),
    add_decayed_weights(weight_decay, weight_decay_mask), scale_by_lr(lr))``; optax's defaults.
    The paper's order (the new estimate used at once) is :func:`sophia_h`.

    Example: ``gx.Optimizer(model.parameters(), gx.sophia(1e-3))`` stepped with a closure.
    """
    return chain(scale_by_sophia(b1, b2, eps, gamma, clip_threshold, update_interval, hessian_diagonal_fn, mu_dtype),
                 add_decayed_weights(weight_decay, weight_decay_mask), scale_by_lr(lr))


@transform
def sophia_h(lr: ScalarOrSchedule, b1: float = 0.965, b2: float = 0.99, gamma: float = 0.01, eps: float = 1e-12,
             clip_threshold: float = 1.0, update_interval: int = 10, weight_decay: float = 0.0,
             mask: Mask | None = None, *, n_samples: int = 1, distribution: str = "gaussian", seed: int = 0,
             hvp_method: str = "autograd", h: float = 1e-3) -> GradientTransformation:
    """SophiaH (Liu et al., 2023, Algorithm 3 with Hutchinson's estimator):
    ``p <- p - lr (clip(m / max(gamma h, eps), clip_threshold) + weight_decay p)`` with ``h`` the
    average of ``z*(Hz)`` estimates taken every ``update_interval`` steps (see
    :func:`gradtx.scale_by_sophia_h`). ``chain(scale_by_sophia_h(...),
    add_decayed_weights(weight_decay, mask), scale_by_lr(lr))``. pytorch_optimizer's
    ``SophiaH(lr, p, eps)`` is ``sophia_h(lr * p, gamma=p, eps=eps * p)``; torchzero's
    ``SophiaH`` is ``gamma=precond_scale``.

    Example: ``gx.Optimizer(model.parameters(), gx.sophia_h(1e-3))`` stepped with a closure.
    """
    return chain(scale_by_sophia_h(b1, b2, gamma, eps, clip_threshold, update_interval, n_samples=n_samples,
                                   distribution=distribution, seed=seed, hvp_method=hvp_method, h=h),
                 add_decayed_weights(weight_decay, mask), scale_by_lr(lr))


@transform
def adahessian(lr: ScalarOrSchedule = 0.15, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-4,
               weight_decay: float = 0.0, hessian_power: float = 1.0, update_interval: int = 1,
               mask: Mask | None = None, *, spatial_averaging: bool = True, n_samples: int = 1, seed: int = 0,
               hvp_method: str = "autograd", h: float = 1e-3) -> GradientTransformation:
    """AdaHessian (Yao et al., 2021): Adam with the Hutchinson estimate of the Hessian diagonal
    in place of the gradient in the second moment,
    ``p <- p - lr (m_hat / (v_hat^(hessian_power/2) + eps) + weight_decay p)`` (decoupled decay,
    as the authors' code). ``chain(scale_by_adahessian(...), add_decayed_weights(weight_decay,
    mask), scale_by_lr(lr))``; the authors' defaults (``lr=0.15``, ``eps=1e-4``).

    Example: ``gx.Optimizer(model.parameters(), gx.adahessian(0.15))`` stepped with a closure.
    """
    return chain(scale_by_adahessian(b1, b2, eps, hessian_power, update_interval, spatial_averaging=spatial_averaging,
                                     n_samples=n_samples, seed=seed, hvp_method=hvp_method, h=h),
                 add_decayed_weights(weight_decay, mask), scale_by_lr(lr))
