"""Corrections built from the previous gradient and iterate: MARS's variance-reduced gradient
and the adaptive heavy ball step."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .. import _foreach as F  # noqa: N812
from .._hparams import check, check_beta, increment, new_count
from .._tree import Tree
from ..base import GradientTransformation, transform
from ._common import leaves, leaves_like, need_params, unflatten

__all__ = ["MarsCorrectionState", "AdaptiveHeavyBallState", "mars_correction", "scale_by_adaptive_heavy_ball"]


class MarsCorrectionState(NamedTuple):
    """State of :func:`mars_correction`: steps taken and the previous update."""

    count: torch.Tensor  # int32, steps taken
    prev: Tree  # the previous (uncorrected) update, shaped like params


@transform(leafwise=lambda args: args["max_norm"] is None or args["tensorwise"], inplace=True)
def mars_correction(beta: float = 0.9, scaling: float = 0.025, max_norm: float | None = 1.0,
                    tensorwise: bool = False) -> GradientTransformation:
    """MARS's variance-reduced gradient (Yuan et al., 2024, "MARS: Unleashing the Power of
    Variance Reduction for Training Large Models"), to put before a momentum method.

    ``c_t = g_t + scaling * beta / (1 - beta) * (g_t - g_{t-1})`` (``g_0 := g_1``: no
    correction on the first step), then ``c_t <- c_t * min(1, max_norm / ||c_t||)``
    (``max_norm=None``: no clipping). ``beta`` should be the following momentum's ``b1``.
    MARS-AdamW is ``chain(mars_correction(b), scale_by_adam(b1=b), ...)``.

    The norm is global by default, as torchzero's ``MARSCorrection`` (the reference this is
    tested against); ``tensorwise=True`` clips each tensor by its own norm, as the authors'
    optimizer does per parameter (``scaling`` is their ``gamma``, 0.025 by default, and their
    ``max_norm`` is 1). The authors' MARS keeps the previous gradient from zeros, so their
    first step is corrected by ``g_1`` itself; here (and in torchzero) it is not.

    Example: ``gx.chain(gx.mars_correction(0.95), gx.scale_by_adam(b1=0.95, b2=0.99), gx.scale_by_lr(3e-3))``.
    """
    check_beta("beta", beta)
    check("scaling", scaling)
    if max_norm is not None:
        check("max_norm", max_norm, low=0.0, low_open=True)
    if not isinstance(tensorwise, bool):
        raise ValueError(f"tensorwise must be a bool, got {tensorwise!r}")
    factor = scaling * beta / (1.0 - beta)

    def init(params):
        ps, treedef = leaves(params)
        return MarsCorrectionState(new_count(), unflatten(treedef, [torch.zeros_like(p) for p in ps]))

    def clip(cs):
        if max_norm is None:
            return cs
        if tensorwise:
            norms = F.norms(cs)
            return [c.mul_(torch.where(n > max_norm, max_norm / n, torch.ones_like(n)).to(c.dtype))
                    for c, n in zip(cs, norms)]
        norm = F.global_norm(cs)
        return F.mul(cs, torch.where(norm > max_norm, max_norm / norm, torch.ones_like(norm)), inplace=True)

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del params, extra_args
        us, treedef = leaves(updates)
        prevs = leaves_like(state.prev, treedef)
        olds = us if int(state.count) == 0 else prevs  # the first step: no correction
        # c in the widest of the leaves' precisions (at least float32), rounded once into each
        # update's dtype: the global clipping norm is not that of low-precision rounded c's
        common = F.wide_dtype(*(u.dtype for u in us))
        wide = [u.dtype if u.is_complex() else common for u in us]
        cs = [u.to(w) + (u.to(w) - o.to(w)) * factor for u, o, w in zip(us, olds, wide)]
        cs = clip(cs)
        new_prev = [p.copy_(u) if inplace else u.clone() for p, u in zip(prevs, us)]
        out = [u.copy_(c) if inplace else c.to(u.dtype) for u, c in zip(us, cs)]
        state = MarsCorrectionState(increment(state.count, inplace), unflatten(treedef, new_prev))
        return unflatten(treedef, out), state

    return GradientTransformation(init, update)


class AdaptiveHeavyBallState(NamedTuple):
    """State of :func:`scale_by_adaptive_heavy_ball`: steps taken, the previous loss, params and update."""

    count: torch.Tensor  # int32, steps taken
    f_prev: torch.Tensor  # shape (1,), float64: the loss at the previous step (not 0-dim, which
    # gx.Optimizer would take for a hyperparameter)
    params_prev: Tree  # the params at the previous step
    grad_prev: Tree  # the update (gradient) at the previous step


def _real(x: torch.Tensor) -> torch.Tensor:
    return torch.view_as_real(x) if x.is_complex() else x


def _dot(xs: list[torch.Tensor], ys: list[torch.Tensor]) -> torch.Tensor:
    # the real inner product: a complex tensor counts as its real and imaginary parts
    return sum((torch.sum(_real(x).double() * _real(y).double()) for x, y in zip(xs, ys)),
               torch.zeros((), dtype=torch.float64))


@transform(inplace=True)
def scale_by_adaptive_heavy_ball(f_star: float = 0.0) -> GradientTransformation:
    """Adaptive heavy ball with Polyak step sizes (Goujaud, Taylor & Dieuleveut, 2024,
    "Quadratic minimization: from conjugate gradient to an adaptive heavy-ball method with
    Polyak step-sizes", OJMO 5), as torchzero's ``AdaptiveHeavyBall``; ``update`` needs
    ``value`` (the loss ``f`` at ``params``) and ``params``.

    With ``d = f - f_star`` and global dot products: the first step is ``h g`` with
    ``h = 2 d / <g, g>``; then ``m = -d <g, g'> / ((f' - f_star) <g, g> + d <g, g'>)`` and the
    step is ``(1 + m) h g - m (x - x')`` (primes: the previous step's loss, gradient,
    params); when ``d <= 2 tiny`` (the dtype's smallest normal) the step is ``g``. The
    output is the step to subtract: follow it with ``scale_by_lr(1.0)``, no other learning
    rate (the rule sets its own). The loss and params are read detached (as in
    :func:`scale_by_polyak`). Made for convex quadratics with a known minimum
    ``f_star``; on them it is the conjugate gradient method.

    Example: ``gx.chain(gx.scale_by_adaptive_heavy_ball(f_star=0.0), gx.scale_by_lr(1.0))``.
    """
    check("f_star", f_star)

    def init(params):
        ps, treedef = leaves(params)
        zeros = unflatten(treedef, [torch.zeros_like(p) for p in ps])
        return AdaptiveHeavyBallState(new_count(), torch.zeros(1, dtype=torch.float64), zeros,
                                      unflatten(treedef, [torch.zeros_like(p) for p in ps]))

    def update(updates, state, params=None, *, inplace=False, value=None, **extra_args):
        del extra_args
        need_params("scale_by_adaptive_heavy_ball", params)
        if value is None:
            raise ValueError("scale_by_adaptive_heavy_ball needs value (the loss at params): call "
                             "update(updates, state, params, value=loss), or gx.Optimizer.step(closure)")
        gs, treedef = leaves(updates)
        # params and the loss are read detached (as the loss always is): the step size is a
        # constant of autograd, as in scale_by_polyak
        ps = [p.detach() for p in leaves_like(params, treedef, "params")]
        p_prev = leaves_like(state.params_prev, treedef)
        g_prev = leaves_like(state.grad_prev, treedef)
        f = torch.as_tensor(value).detach().to(torch.float64).reshape(1)
        d = f.reshape(()) - f_star
        gg = _dot(gs, gs)
        h = 2 * d / gg
        tiny = torch.finfo(F.real_dtype(ps[0].dtype)).tiny if ps else 0.0
        if int(state.count) == 0:
            steps = [g * h.to(g.dtype) for g in gs]
        elif float(d.detach()) <= 2 * tiny:  # at the minimum: torchzero's guard (f_star may need grad)
            steps = [g.clone() for g in gs]
        else:
            ggp = _dot(gs, g_prev)
            m = -d * ggp / ((state.f_prev.reshape(()).double() - f_star) * gg + d * ggp)
            steps = [(g * ((1 + m) * h).to(g.dtype) - (p - pp) * m.to(g.dtype)).to(g.dtype)
                     for g, p, pp in zip(gs, ps, p_prev)]
        new_p = [a.copy_(p) if inplace else p.clone() for a, p in zip(p_prev, ps)]
        new_g = [a.copy_(g) if inplace else g.clone() for a, g in zip(g_prev, gs)]
        f_prev = state.f_prev.copy_(f) if inplace else f.clone().to(state.f_prev.device)
        out = [g.copy_(s) if inplace else s for g, s in zip(gs, steps)]
        return unflatten(treedef, out), AdaptiveHeavyBallState(increment(state.count, inplace), f_prev,
                                                               unflatten(treedef, new_p), unflatten(treedef, new_g))

    return GradientTransformation(init, update)
