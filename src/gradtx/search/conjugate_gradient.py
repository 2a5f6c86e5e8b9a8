"""Nonlinear conjugate gradient: one machinery, one small rule per choice of beta."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from .. import _foreach as F  # noqa: N812
from .._hparams import check, check_int, new_count
from .._tree import Tree
from ..base import GradientTransformation, transform
from ..transforms._common import leaves, leaves_like, unflatten
from ._vector import dot, safe_div, wide

__all__ = ["ConjugateGradientState", "scale_by_conjugate_gradient"]


class ConjugateGradientState(NamedTuple):
    since_restart: torch.Tensor  # int32 0-dim: updates since the last restart (0: none yet)
    prev_grad: Tree  # g_{k-1}, in each param's dtype
    prev_direction: Tree  # p_{k-1} = -d_{k-1}, in each param's dtype


class _Dots(NamedTuple):
    """The inner products every beta is written with, in the descent convention
    ``d_{k-1} = -p_{k-1}`` and ``y = g_k - g_{k-1}``."""

    gg: torch.Tensor  # |g_k|^2
    gy: torch.Tensor  # g_k . y
    yy: torch.Tensor  # |y|^2
    dy: torch.Tensor  # d_{k-1} . y
    dg: torch.Tensor  # d_{k-1} . g_k
    dg_prev: torch.Tensor  # d_{k-1} . g_{k-1}
    gg_prev: torch.Tensor  # |g_{k-1}|^2
    dd: torch.Tensor  # |d_{k-1}|^2


def _fletcher_reeves(v: _Dots):
    return safe_div(v.gg, v.gg_prev)


def _polak_ribiere(v: _Dots):
    return safe_div(v.gy, v.gg_prev)


def _polak_ribiere_plus(v: _Dots):
    beta, ok = _polak_ribiere(v)
    return beta.clamp_min(0.0), ok


def _hestenes_stiefel(v: _Dots):
    return safe_div(v.gy, v.dy)


def _dai_yuan(v: _Dots):
    return safe_div(v.gg, v.dy)


def _liu_storey(v: _Dots):
    return safe_div(-v.gy, v.dg_prev)


def _conjugate_descent(v: _Dots):
    return safe_div(-v.gg, v.dg_prev)


_HZ_ETA = 0.01  # Hager & Zhang (2005), eq. (1.6): the lower bound's constant


def _hager_zhang(v: _Dots):
    hs, ok = safe_div(v.gy, v.dy)
    correction, _ = safe_div(2 * v.yy * v.dg, v.dy * v.dy)
    # truncated from below by eta_k = -1 / (|d_{k-1}| min(eta, |g_{k-1}|)) (CG_DESCENT)
    low, _ = safe_div(-torch.ones_like(v.dd), v.dd.sqrt() * v.gg_prev.sqrt().clamp_max(_HZ_ETA))
    return torch.maximum(hs - correction, low), ok


def _hs_dy(v: _Dots):
    hs, ok_hs = safe_div(v.gy, v.dy)
    dy, ok_dy = safe_div(v.gg, v.dy)
    return torch.minimum(hs, dy).clamp_min(0.0), ok_hs & ok_dy


# beta_k in the descent convention d_k = -g_k + beta_k d_{k-1}; each rule also says whether
# its denominator was usable (a zero one restarts: d_k = -g_k).
_BETAS: dict[str, Callable[[_Dots], tuple[torch.Tensor, torch.Tensor]]] = {
    "fletcher_reeves": _fletcher_reeves,
    "polak_ribiere": _polak_ribiere,
    "polak_ribiere_plus": _polak_ribiere_plus,
    "hestenes_stiefel": _hestenes_stiefel,
    "dai_yuan": _dai_yuan,
    "liu_storey": _liu_storey,
    "conjugate_descent": _conjugate_descent,
    "hager_zhang": _hager_zhang,
    "hs_dy": _hs_dy,
}

CONJUGATE_GRADIENT_BETAS = tuple(_BETAS)
"""The names :func:`scale_by_conjugate_gradient` takes as ``beta``."""


def _math_dtype(g: torch.Tensor, q: torch.Tensor) -> torch.dtype:
    # at least float32 and the wider of gradient and state; a complex leaf stays complex
    dtype = F.wide_dtype(g.dtype, q.dtype)
    return dtype.to_complex() if g.is_complex() else dtype


@transform(inplace=True)
def scale_by_conjugate_gradient(beta: str = "polak_ribiere_plus", restart_every: int | None = None,
                                restart_threshold: float | None = None,
                                restart_on_ascent: bool = True) -> GradientTransformation:
    """Nonlinear conjugate gradient directions (Nocedal & Wright, *Numerical Optimization*,
    2nd ed., ch. 5.2; Hager & Zhang, "A survey of nonlinear conjugate gradient methods", 2006).

    With ``g_k`` the update that reaches it (the gradient), the method's descent direction
    is ``d_k = -g_k + beta_k d_{k-1}`` (``d_0 = -g_0``). Like ``trace`` and optax's
    ``scale_by_lbfgs``, the output is gradient-like, **the negative of the descent
    direction**: ``u <- p_k = -d_k = g_k + beta_k p_{k-1}``. So ``chain(cg, scale_by_lr(lr))``
    descends, and a line search that scales a descent direction by a positive step (optax's
    convention) follows a sign flip, as in ``optax.lbfgs``:
    ``chain(cg, scale(-1.0), line_search)``.

    ``beta`` (``y = g_k - g_{k-1}``, ``d = d_{k-1}``; all dot products over the whole tree):

    - ``"fletcher_reeves"``: ``|g_k|^2 / |g_{k-1}|^2``
    - ``"polak_ribiere"``: ``g_k.y / |g_{k-1}|^2``; ``"polak_ribiere_plus"`` (default, scipy's
      CG): ``max(0, that)``
    - ``"hestenes_stiefel"``: ``g_k.y / d.y``
    - ``"dai_yuan"``: ``|g_k|^2 / d.y``
    - ``"liu_storey"``: ``-g_k.y / d.g_{k-1}``
    - ``"conjugate_descent"`` (Fletcher): ``-|g_k|^2 / d.g_{k-1}``
    - ``"hager_zhang"``: ``(y - 2 d |y|^2 / d.y).g_k / d.y``, bounded below by
      ``-1 / (|d| min(0.01, |g_{k-1}|))`` (CG_DESCENT, Hager & Zhang 2005)
    - ``"hs_dy"`` (hybrid, Dai & Yuan 2001): ``max(0, min(beta_HS, beta_DY))``

    Restarts (``d_k = -g_k``): at the first update; when a denominator is 0; every
    ``restart_every`` updates since the last restart (``None``: never; N&W suggest the
    number of parameters); when ``|g_k.g_{k-1}| >= restart_threshold |g_k|^2`` (Powell 1977
    uses 0.2, N&W eq. 5.52 0.1; ``None``: never); and, with ``restart_on_ascent``, when
    ``d_k`` is not a descent direction (``g_k.d_k >= 0``). ``g_{k-1}`` and ``p_{k-1}`` are
    kept per parameter in its dtype; the betas are computed in the widest dtype of the tree
    (at least float32). A complex parameter counts as its real view. The step length is left
    to what follows: a line search (the classic method; N&W §5.2 advise strong Wolfe with
    ``c2 = 0.1``) or a learning rate (then ``beta`` acts as an adaptive momentum).

    Example::

        tx = gx.chain(gx.scale_by_conjugate_gradient("hestenes_stiefel"), gx.scale_by_lr(0.1))
    """
    if beta not in _BETAS:
        raise ValueError(f"beta must be one of {CONJUGATE_GRADIENT_BETAS}, got {beta!r}")
    rule = _BETAS[beta]
    if restart_every is not None:
        check_int("restart_every", restart_every, low=1)
    if restart_threshold is not None:
        check("restart_threshold", restart_threshold, low=0.0, low_open=True)
    if not isinstance(restart_on_ascent, bool):
        raise ValueError(f"restart_on_ascent must be a bool, got {restart_on_ascent!r}")

    def init(params):
        ps, treedef = leaves(params)
        return ConjugateGradientState(since_restart=new_count(),
                                      prev_grad=unflatten(treedef, F.zeros_like(ps)),
                                      prev_direction=unflatten(treedef, F.zeros_like(ps)))

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del params, extra_args
        gs, treedef = leaves(updates)
        g_prev = leaves_like(state.prev_grad, treedef)
        p_prev = leaves_like(state.prev_direction, treedef)
        if not gs:
            return updates, state
        dtype = wide(gs, g_prev, p_prev)
        # y formed explicitly: g.y as |g|^2 - g.g_prev would cancel as g_k nears g_{k-1}
        ys = [g.to(_math_dtype(g, q)) - q.to(_math_dtype(g, q)) for g, q in zip(gs, g_prev)]
        gg, gy, yy = dot(gs, gs, dtype), dot(gs, ys, dtype), dot(ys, ys, dtype)
        g_p, y_p, gp_p = dot(gs, p_prev, dtype), dot(ys, p_prev, dtype), dot(g_prev, p_prev, dtype)
        # in terms of d = -p: d.y = -p.y, d.g = -g.p, d.g_prev = -g_prev.p
        dots = _Dots(gg=gg, gy=gy, yy=yy, dy=-y_p, dg=-g_p, dg_prev=-gp_p, gg_prev=dot(g_prev, g_prev, dtype),
                     dd=dot(p_prev, p_prev, dtype))
        del ys
        b, ok = rule(dots)
        restart = (state.since_restart == 0).to(b.device) | ~ok
        if restart_every is not None:
            restart = restart | (state.since_restart >= restart_every).to(b.device)
        if restart_threshold is not None:
            restart = restart | (dot(gs, g_prev, dtype).abs() >= restart_threshold * gg)
        if restart_on_ascent:
            # g.d_k = -(|g|^2 + beta g.p_{k-1}) must be < 0
            restart = restart | (gg + b * g_p <= 0)
        b = torch.where(restart, torch.zeros_like(b), b)
        ps = [g.to(_math_dtype(g, q)) + b.to(q.device) * q.to(_math_dtype(g, q)) for g, q in zip(gs, p_prev)]
        try:
            since = torch.where(restart.to(state.since_restart.device), torch.ones_like(state.since_restart),
                                state.since_restart + 1)
        except NotImplementedError:  # a meta restart flag has no value to bring to the count's CPU
            if not F.without_data(restart):
                raise
            since = state.since_restart + 1  # the same shape and dtype either way (a memory estimate)
        if inplace:
            F.copy_(p_prev, ps)
            F.copy_(g_prev, gs)
            out = F.copy_(gs, ps)
            state.since_restart.copy_(since)
            return unflatten(treedef, out), state
        new_state = ConjugateGradientState(since, unflatten(treedef, F.clone_like(gs, g_prev)),
                                           unflatten(treedef, F.clone_like(ps, p_prev)))
        return unflatten(treedef, F.cast_like(ps, gs)), new_state

    return GradientTransformation(init, update)
