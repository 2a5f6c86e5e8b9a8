"""Gaussian homotopy: Gaussian smoothing whose width shrinks step by step."""

from __future__ import annotations

import torch

from .._hparams import check, check_int, check_order
from ..base import GradientTransformation, transform
from .randomized import _checked, randomized_member

__all__ = ["gaussian_homotopy"]


@transform(inplace=True)
def gaussian_homotopy(sigma: float = 1.0, decay: float = 0.95, min_sigma: float = 1e-3, n_samples: int = 20,
                      formula: str = "central", *, seed: int = 0, evaluate_in_place: bool = False
                      ) -> GradientTransformation:
    """Gaussian homotopy continuation (Mobahi & Fisher, 2015), zeroth-order and single-loop
    (Iwakiri et al., 2022): step ``t`` follows the gradient of the smoothed loss
    ``f_{s_t}(x) = E_z f(x + s_t z)``, ``z ~ N(0, I)``, with the width
    ``s_t = max(sigma * decay^t, min_sigma)``: wide smoothing first flattens small local minima,
    and the narrowing width tracks the minimiser back to ``f``. The gradient is
    :func:`gaussian_smoothing`'s estimate with ``h = s_t``
    (``g = (1/n) sum_k z_k (f(x + s_t z_k) - f(x - s_t z_k)) / (2 s_t)`` by default).
    Needs ``value_fn``; hands on its gradient as the other approximators (:mod:`gradtx.handover`).

    Example: ``gx.chain(gx.gaussian_homotopy(1.0, decay=0.9), gx.scale_by_lr(0.05))``.
    """
    check("sigma", sigma, low=0.0, low_open=True)
    check("decay", decay, low=0.0, high=1.0, low_open=True)
    check("min_sigma", min_sigma, low=0.0, low_open=True)
    check_order("min_sigma", min_sigma, "sigma", sigma)
    check_int("n_samples", n_samples, low=1)
    _checked(sigma, n_samples, formula, "gaussian", seed, evaluate_in_place)

    def width(count: torch.Tensor):
        t = count.to(torch.float64)
        return torch.maximum(sigma * torch.as_tensor(decay, dtype=torch.float64) ** t,
                             torch.as_tensor(min_sigma, dtype=torch.float64))

    return randomized_member("gaussian_homotopy", width, n_samples, formula, "gaussian", seed, evaluate_in_place)
