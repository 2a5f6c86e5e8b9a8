"""Cubic regularisation of Newton's method: Nesterov-Polyak's fixed regularisation and
adaptive regularisation with cubics (ARC)."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .._hparams import check, check_order, new_count
from ..base import GradientTransformation, transform
from ..search._vector import wide
from ..transforms._common import first_device, leaves
from ._curvature import Flat, check_hvp_method

__all__ = ["CubicRegularizationState", "scale_by_cubic_regularization"]

_BISECTIONS = 200


class CubicRegularizationState(NamedTuple):
    sigma: torch.Tensor  # 0-dim: the cubic's weight sigma_k, on the params' device
    count: torch.Tensor  # int32 0-dim: updates so far


def cubic_step(g: torch.Tensor, hess: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The global minimiser of ``m(s) = g.s + s.Hs / 2 + sigma |s|^3 / 3``: the ``s`` with
    ``(H + lam I) s = -g``, ``lam = sigma |s|``, ``H + lam I`` positive semi-definite (Nesterov &
    Polyak, 2006, §5; Cartis, Gould & Toint, 2011, Thm. 3.1), on the eigendecomposition of
    ``H``: bisection on ``|s(lam)| - lam / sigma`` (decreasing) over ``lam > max(0, -lambda_1)``,
    and in the hard case (``g`` orthogonal to the lowest eigenvectors) the lowest eigenvector
    added to reach ``|s| = lam / sigma``."""
    lam, q = torch.linalg.eigh(hess)
    a = q.T @ g
    g_norm = torch.linalg.vector_norm(g)
    scale = float(lam.abs().max().clamp_min(1.0))
    eps = torch.finfo(g.dtype).eps
    lo = max(0.0, -float(lam[0]))
    shift = lam + lo
    degenerate = shift <= 1e3 * eps * scale
    if bool(degenerate.any()) and float(a[degenerate].abs().max()) <= 1e3 * eps * max(float(g_norm), 1.0):
        keep = ~degenerate
        s_lo = -q[:, keep] @ (a[keep] / shift[keep])
        radius = lo / float(sigma)
        norm_lo = float(torch.linalg.vector_norm(s_lo))
        if norm_lo <= radius:  # the hard case: along the lowest eigenvector to |s| = lo / sigma
            return s_lo + ((radius ** 2 - norm_lo ** 2) ** 0.5) * q[:, 0]
    low = torch.tensor(lo, dtype=g.dtype, device=g.device)
    high = low + torch.sqrt(sigma * g_norm) + eps * scale
    for _ in range(_BISECTIONS):
        mid = 0.5 * (low + high)
        step_norm = torch.linalg.vector_norm(a / (lam + mid))
        positive = step_norm - mid / sigma > 0
        low = torch.where(positive, mid, low)
        high = torch.where(positive, high, mid)
    return -q @ (a / (lam + high))


@transform(inplace=True)  # writes into nothing it is given; its updates are fresh tensors
def scale_by_cubic_regularization(sigma: float = 1.0, adaptive: bool = True, eta1: float = 0.1, eta2: float = 0.9,
                                  gamma: float = 2.0, min_sigma: float = 1e-8, hvp_method: str = "autograd",
                                  h: float = 1e-3) -> GradientTransformation:
    """Cubic-regularised Newton step (Nesterov & Polyak, 2006; adaptive: ARC, Cartis, Gould &
    Toint, 2011, Alg. 2.1); needs ``params`` and ``hvp_fn`` (or ``value_and_grad_fn`` with
    ``hvp_method="fd_*"``), and with ``adaptive=True`` ``value_fn`` (``value`` saves one
    evaluation). The output is the step itself, to be added: the last member of a chain.

    With ``g`` the update that reaches it and ``H`` the dense Hessian (``n`` Hessian-vector
    products), the step is the global minimiser of the cubic model
    ``m(s) = f + g.s + s.Hs / 2 + sigma_k |s|^3 / 3`` (exactly, by the eigendecomposition of
    ``H``: ``(H + sigma_k |s| I) s = -g`` with ``H + sigma_k |s| I`` positive semi-definite, so
    saddle points are escaped).

    - ``adaptive=False``: Nesterov-Polyak's method, ``sigma_k = sigma`` (``M / 2`` for a Hessian
      ``M``-Lipschitz), every step taken.
    - ``adaptive=True`` (default, ARC): ``rho = (f(x) - f(x + s)) / (f(x) - m(s))``; the step is
      taken when ``rho >= eta1`` (else ``u = 0``); ``rho >= eta2``: ``sigma <- max(sigma /
      gamma, min_sigma)``; ``rho < eta1``: ``sigma <- gamma sigma``; otherwise kept. ``sigma`` is
      the initial weight, in state. A non-finite ``f(x + s)`` counts as ``rho = -inf``; a
      predicted decrease below ``100`` ulps of ``f`` as ``rho = 1`` (round-off).

    Defaults: ``eta1 = 0.1``, ``eta2 = 0.9``, ``gamma = 2`` (Cartis et al.'s experiments).
    Memory ``n^2``: for up to a few thousand parameters. Complex parameters are refused.

    Example::

        tx = gx.scale_by_cubic_regularization(sigma=1.0)
        extra = gx.evaluation_args(loss_fn, params)
        updates, state = tx.update(extra["grad"], state, params, **extra)
    """
    check("sigma", sigma, low=0.0, low_open=True)
    if not isinstance(adaptive, bool):
        raise ValueError(f"adaptive must be a bool, got {adaptive!r}")
    check("eta1", eta1, low=0.0, high=1.0, low_open=True, high_open=True)
    check("eta2", eta2, low=0.0, high=1.0, low_open=True, high_open=True)
    check_order("eta1", eta1, "eta2", eta2)
    check("gamma", gamma, low=1.0, low_open=True)
    check("min_sigma", min_sigma, low=0.0, low_open=True)
    check_hvp_method(hvp_method, h)

    def init(params):
        ps, _ = leaves(params)
        dtype, device = wide(ps), first_device(ps)
        value = torch.as_tensor(sigma, dtype=torch.float64).detach().clone()
        return CubicRegularizationState(value.to(dtype=dtype, device=device), new_count())

    def update(updates, state, params=None, *, inplace=False, value=None, value_fn=None, **extra_args):
        del inplace
        if adaptive and value_fn is None:
            raise ValueError("scale_by_cubic_regularization with adaptive=True needs value_fn (params -> loss): call "
                             "update(grads, state, params, value_fn=...), or gx.Optimizer.step(closure); "
                             "adaptive=False (Nesterov-Polyak) needs none")
        flat = Flat("scale_by_cubic_regularization", updates, params, extra_args, hvp_method, h)
        dtype, device = flat.dtype, flat.device
        hess = flat.hessian()
        weight = state.sigma.to(dtype=dtype, device=device)
        step = cubic_step(flat.g, hess, weight)
        count = state.count + 1
        if not adaptive:
            return flat.tree(step), CubicRegularizationState(state.sigma, count)
        norm = torch.linalg.vector_norm(step)
        predicted = -(torch.dot(flat.g, step) + 0.5 * torch.dot(step, hess @ step) + weight * norm ** 3 / 3)
        f0 = value_fn(flat.params) if value is None else value
        f0 = torch.as_tensor(f0).detach().reshape(()).to(dtype=dtype, device=device)
        f1 = torch.as_tensor(value_fn(flat.at(step))).detach().reshape(()).to(dtype=dtype, device=device)
        if not bool(predicted > 0):  # g = 0 at a minimum: nothing to gain
            return flat.tree(torch.zeros_like(step)), CubicRegularizationState(state.sigma, count)
        rho = (f0 - f1) / predicted if bool(torch.isfinite(f1)) else torch.tensor(-torch.inf, dtype=dtype)
        if bool(torch.isfinite(f1)) and float(predicted) <= 100 * torch.finfo(dtype).eps * max(abs(float(f0)), 1.0):
            rho = torch.ones((), dtype=dtype)  # a decrease below the loss's round-off: trust the model
        if float(rho) >= float(eta2):
            new = torch.clamp(weight / float(gamma), min=float(min_sigma))
        elif float(rho) < float(eta1):
            new = weight * float(gamma)
        else:
            new = weight
        out = step if float(rho) >= float(eta1) else torch.zeros_like(step)
        return flat.tree(out), CubicRegularizationState(new.to(state.sigma.dtype).reshape(()).clone(), count)

    return GradientTransformation(init, update)
