"""Newton-CG: the Newton system solved by conjugate gradients on Hessian-vector products,
as a line-search direction or inside a trust region (Steihaug's CG)."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .._hparams import check, check_int, new_count
from ..base import GradientTransformation, transform
from ..search._radius import accepted, check_radius_args, next_radius, ratio
from ..search._vector import wide
from ..transforms._common import first_device, leaves
from ._curvature import Flat, boundary_tau, check_hvp_method

__all__ = ["NewtonCGState", "NewtonCGTrustRegionState", "scale_by_newton_cg", "scale_by_newton_cg_trust_region"]


# a predicted decrease below this many ulps of the loss is not measured by f(x) - f(x + p)
_ROUNDOFF = 100.0


class NewtonCGState(NamedTuple):
    iterations: torch.Tensor  # int32 0-dim: CG iterations (Hessian-vector products) of the last solve


def _check_cg(max_iters, tol) -> None:
    if max_iters is not None:
        check_int("max_iters", max_iters, low=1)
    check("tol", tol, low=0.0)


def _iterations() -> torch.Tensor:
    return new_count()


@transform(inplace=True)  # writes into nothing it is given; its updates are fresh tensors
def scale_by_newton_cg(max_iters: int | None = None, tol: float = 1e-5, damping: float = 0.0,
                       hvp_method: str = "autograd", h: float = 1e-3) -> GradientTransformation:
    """Newton-CG direction ``u ~ (H + damping I)^{-1} g`` by conjugate gradients (Nocedal &
    Wright, 2006, Alg. 7.1, line-search Newton-CG; torchzero's ``NewtonCG``); needs ``params``
    and ``hvp_fn`` (``hvp_method="autograd"``, default) or ``value_and_grad_fn``
    (``"fd_forward"`` / ``"fd_central"``, step ``h``; see :func:`gradtx.curvature_fns`).

    CG on ``(H + damping I) x = g`` from ``x = 0`` over all leaves flattened into one vector,
    one Hessian-vector product per iteration: ``r = g, p = r``; ``alpha = r.r / p.Ap``,
    ``x += alpha p``, ``r -= alpha Ap``, ``p = r + (r'.r' / r.r) p``; it stops when
    ``|r| <= tol |g|``, after ``max_iters`` iterations (``None``: ``n``, where exact arithmetic
    solves the system), or at negative curvature ``p.Ap <= 0`` (returning the ``x`` so far,
    or ``g`` itself at the first iteration: the steepest-descent direction, N&W Alg. 7.1).
    ``state.iterations`` counts the last solve's iterations. The output is the preconditioned
    gradient: follow with ``scale_by_lr(1.0)`` or ``scale(-1.0)`` and a line search. Computed in
    the widest dtype of the tree (at least float32); complex parameters are refused.
    Defaults: ``tol=1e-5``, ``damping=0``, ``h=1e-3`` (torchzero's).

    Example::

        tx = gx.chain(gx.scale_by_newton_cg(), gx.scale(-1.0), gx.scale_by_backtracking())
        extra = gx.evaluation_args(loss_fn, params)
        updates, state = tx.update(extra["grad"], state, params, **extra)
    """
    _check_cg(max_iters, tol)
    check("damping", damping, low=0.0)
    check_hvp_method(hvp_method, h)

    def init(params):
        del params
        return NewtonCGState(_iterations())

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del inplace
        flat = Flat("scale_by_newton_cg", updates, params, extra_args, hvp_method, h)
        g = flat.g
        damp = float(damping)
        x = torch.zeros_like(g)
        r = g.clone()
        p = r.clone()
        rr = torch.dot(r, r)
        threshold = float(tol) * float(rr.sqrt())
        limit = flat.n if max_iters is None else max_iters
        done = 0
        if float(rr) > 0:
            for i in range(limit):
                ap = flat.hvp(p) + damp * p
                done = i + 1
                pap = torch.dot(p, ap)
                if not float(pap) > 0:  # negative (or no) curvature along p: stop here
                    if i == 0:
                        x = g.clone()
                    break
                alpha = rr / pap
                x = x + alpha * p
                r = r - alpha * ap
                rr_new = torch.dot(r, r)
                if float(rr_new.sqrt()) <= threshold:
                    break
                p = r + (rr_new / rr) * p
                rr = rr_new
        return flat.tree(x), NewtonCGState(torch.tensor(done, dtype=torch.int32))

    return GradientTransformation(init, update)


class NewtonCGTrustRegionState(NamedTuple):
    radius: torch.Tensor  # 0-dim: Delta_k, on the params' device
    iterations: torch.Tensor  # int32 0-dim: CG iterations of the last solve


def steihaug_cg(flat: Flat, radius: torch.Tensor, tol: float, max_iters: int | None
                ) -> tuple[torch.Tensor, torch.Tensor, bool, int]:
    """Steihaug's CG (N&W Alg. 7.2) on ``min g.p + p.Hp / 2, |p| <= radius``: ``(p, m(p) -
    m(0), on_boundary, iterations)``."""
    g = flat.g
    z = torch.zeros_like(g)
    r = g.clone()
    d = -r
    rr = torch.dot(r, r)
    eps = tol * float(rr.sqrt())
    model = torch.zeros((), dtype=g.dtype, device=g.device)
    if not float(rr.sqrt()) > eps or not float(rr) > 0:
        return z, model, False, 0
    limit = flat.n if max_iters is None else max_iters
    for i in range(limit):
        bd = flat.hvp(d)
        dbd = torch.dot(d, bd)
        rd = torch.dot(r, d)
        if not float(dbd) > 0:  # negative curvature: to the boundary along d
            tau = boundary_tau(z, d, radius)
            return z + tau * d, model + tau * rd + 0.5 * tau * tau * dbd, True, i + 1
        alpha = rr / dbd
        z_next = z + alpha * d
        if float(torch.linalg.vector_norm(z_next)) >= float(radius):
            tau = boundary_tau(z, d, radius)
            return z + tau * d, model + tau * rd + 0.5 * tau * tau * dbd, True, i + 1
        model = model + alpha * rd + 0.5 * alpha * alpha * dbd
        z = z_next
        r = r + alpha * bd
        rr_new = torch.dot(r, r)
        if float(rr_new.sqrt()) < eps:
            return z, model, False, i + 1
        d = -r + (rr_new / rr) * d
        rr = rr_new
    return z, model, False, limit


@transform(inplace=True)  # writes into nothing it is given; its updates are fresh tensors
def scale_by_newton_cg_trust_region(init_radius: float = 1.0, max_radius: float = 1000.0, eta: float = 0.15,
                                    shrink_below: float = 0.25, expand_above: float = 0.75,
                                    shrink_factor: float = 0.25, expand_factor: float = 2.0,
                                    max_iters: int | None = None, tol: float = 1e-5, hvp_method: str = "autograd",
                                    h: float = 1e-3) -> GradientTransformation:
    """Trust-region Newton-CG with Steihaug's CG (Steihaug, 1983; Nocedal & Wright, 2006,
    Alg. 7.2 inside Alg. 4.1; torchzero's ``NewtonCGSteihaug``, scipy's ``trust-ncg``); needs
    ``params``, ``value_fn`` (``value`` saves one evaluation) and ``hvp_fn`` (or
    ``value_and_grad_fn`` with ``hvp_method="fd_*"``). The output is the step itself, to be
    added: the last member of a chain.

    With ``g`` the update that reaches it and ``m(p) = f + g.p + p.Hp / 2``: Steihaug's CG
    from ``p = 0`` minimises ``m`` over ``|p| <= Delta``, stopping at the boundary (a CG
    iterate leaving the region, or negative curvature, followed to the boundary), at
    ``|r| < tol |g|``, or after ``max_iters`` (``None``: ``n``) Hessian-vector products. Then
    ``rho = (f(x) - f(x + p)) / (m(0) - m(p))``; ``rho < shrink_below``: ``Delta <-
    shrink_factor Delta``; ``rho > expand_above`` with ``p`` on the boundary: ``Delta <-
    min(expand_factor Delta, max_radius)``; ``u <- p`` when ``rho > eta``, else ``0``
    (refused). A predicted decrease below ``100`` ulps of ``f`` is taken as ``rho = 1`` (the
    difference of losses is round-off there). Defaults as :func:`gradtx.scale_by_trust_region`
    (N&W Alg. 4.1, scipy).
    Complex parameters are refused.

    Example::

        tx = gx.scale_by_newton_cg_trust_region(init_radius=1.0)
        extra = gx.evaluation_args(loss_fn, params)
        updates, state = tx.update(extra["grad"], state, params, **extra)
    """
    check_radius_args(init_radius, max_radius, eta, shrink_below, expand_above, shrink_factor, expand_factor)
    _check_cg(max_iters, tol)
    check_hvp_method(hvp_method, h)

    def init(params):
        ps, _ = leaves(params)
        dtype, device = wide(ps), first_device(ps)
        radius = torch.as_tensor(init_radius, dtype=torch.float64).detach().clone()
        return NewtonCGTrustRegionState(radius.to(dtype=dtype, device=device), _iterations())

    def update(updates, state, params=None, *, inplace=False, value=None, value_fn=None, **extra_args):
        del inplace
        if value_fn is None:
            raise ValueError("scale_by_newton_cg_trust_region needs value_fn (params -> loss) to evaluate the trial "
                             "point: call update(grads, state, params, value_fn=...), or gx.Optimizer.step(closure)")
        flat = Flat("scale_by_newton_cg_trust_region", updates, params, extra_args, hvp_method, h)
        dtype, device = flat.dtype, flat.device
        radius = state.radius.to(dtype=dtype, device=device)
        step, model, on_boundary, iterations = steihaug_cg(flat, radius, float(tol), max_iters)
        predicted = -model
        f0 = value_fn(flat.params) if value is None else value
        f0 = torch.as_tensor(f0).detach().reshape(()).to(dtype=dtype, device=device)
        f1 = torch.as_tensor(value_fn(flat.at(step))).detach().reshape(()).to(dtype=dtype, device=device)
        # a decrease below the loss's round-off is not measured by f0 - f1: the model is all we know
        rho, informative = ratio(f0, f1, predicted.detach(), roundoff=_ROUNDOFF)
        boundary = informative & torch.tensor(on_boundary, device=device)
        new_radius = next_radius(radius, rho, boundary, max_radius=float(max_radius),
                                 shrink_below=float(shrink_below), expand_above=float(expand_above),
                                 shrink_factor=float(shrink_factor), expand_factor=float(expand_factor))
        out = step if bool(accepted(rho, informative, float(eta))) else torch.zeros_like(step)
        new_state = NewtonCGTrustRegionState(new_radius.to(state.radius.dtype).reshape(()).clone(),
                                             torch.tensor(iterations, dtype=torch.int32))
        return flat.tree(out), new_state

    return GradientTransformation(init, update)


