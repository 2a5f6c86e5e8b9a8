"""The trust-region radius rule shared by every trust region of gradtx (Nocedal & Wright,
*Numerical Optimization*, 2nd ed., Alg. 4.1): the checks of its arguments, the ratio of the
actual to the predicted decrease, the new radius and the acceptance of the step."""

from __future__ import annotations

import torch

from .._hparams import check, check_order
from ._vector import safe_div


def check_radius_args(init_radius, max_radius, eta, shrink_below, expand_above, shrink_factor,
                      expand_factor) -> None:
    """``ValueError`` naming the argument unless ``0 < init_radius <= max_radius``,
    ``0 <= eta < 1``, ``0 < shrink_below <= expand_above < 1``, ``0 < shrink_factor < 1`` and
    ``expand_factor >= 1``."""
    check("init_radius", init_radius, low=0.0, low_open=True)
    check("max_radius", max_radius, low=0.0, low_open=True)
    check_order("init_radius", init_radius, "max_radius", max_radius)
    check("eta", eta, low=0.0, high=1.0, high_open=True)
    check("shrink_below", shrink_below, low=0.0, high=1.0, low_open=True, high_open=True)
    check("expand_above", expand_above, low=0.0, high=1.0, low_open=True, high_open=True)
    check_order("shrink_below", shrink_below, "expand_above", expand_above)
    check("shrink_factor", shrink_factor, low=0.0, high=1.0, low_open=True, high_open=True)
    check("expand_factor", expand_factor, low=1.0)


def ratio(f0: torch.Tensor, f1: torch.Tensor, predicted: torch.Tensor, roundoff: float | None = None
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rho, informative)``: ``rho = (f0 - f1) / predicted`` with ``informative = predicted > 0``;
    ``rho = 1`` where the model predicts no decrease (nothing to learn: the radius is kept) or,
    with ``roundoff``, where ``predicted <= roundoff ulp(max(|f0|, 1))`` (``f0 - f1`` is round-off
    there, the model all we know); ``rho = -inf`` for a non-finite ``f1``."""
    informative = predicted > 0
    rho, _ = safe_div(f0 - f1, torch.where(informative, predicted, torch.ones_like(predicted)))
    if roundoff is not None:
        noise = roundoff * torch.finfo(predicted.dtype).eps * f0.detach().abs().clamp_min(1.0)
        rho = torch.where(informative & (predicted <= noise), torch.ones_like(rho), rho)
    rho = torch.where(torch.isfinite(f1), rho, torch.full_like(rho, -torch.inf))
    return torch.where(informative, rho, torch.ones_like(rho)), informative


def next_radius(radius: torch.Tensor, rho: torch.Tensor, on_boundary: torch.Tensor, *, max_radius, shrink_below,
                expand_above, shrink_factor, expand_factor) -> torch.Tensor:
    """Alg. 4.1's radius: ``shrink_factor radius`` when ``rho < shrink_below``; ``min(expand_factor
    radius, max_radius)`` when ``rho > expand_above`` and the step reached the boundary; else kept."""
    expanded = torch.minimum(expand_factor * radius, torch.as_tensor(max_radius, dtype=radius.dtype).to(radius.device))
    return torch.where(rho < shrink_below, shrink_factor * radius,
                       torch.where((rho > expand_above) & on_boundary, expanded, radius))


def accepted(rho: torch.Tensor, informative: torch.Tensor, eta) -> torch.Tensor:
    """Alg. 4.1's test: the step is taken when the model predicted a decrease and ``rho > eta``."""
    return informative & (rho > eta)
