"""Limit how fast updates grow from one step to the next, by value or by norm (torchzero's
``ClipValueGrowth`` and ``ClipNormGrowth``)."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .._hparams import check, increment, new_count
from .._tree import Tree
from ..base import GradientTransformation, transform
from ._common import leaves, leaves_like, unflatten

__all__ = ["ClipValueGrowthState", "ClipNormGrowthState", "clip_norm_growth", "clip_value_growth"]


def _real(x: torch.Tensor) -> torch.Tensor:
    return torch.view_as_real(x) if x.is_complex() else x


def _check_growth(add, mul, min_value, max_decay) -> None:
    if add is None and mul is None:
        raise ValueError("add and mul are both None: give at least one bound on the growth")
    if add is not None:
        check("add", add, low=0.0)
    if mul is not None:
        check("mul", mul, low=0.0, low_open=True)
    if min_value is not None:
        check("min_value", min_value, low=0.0)
    if max_decay is not None:
        check("max_decay", max_decay, low=0.0, low_open=True)


class ClipValueGrowthState(NamedTuple):
    """State of :func:`clip_value_growth`: steps taken and the previous (clipped) update."""

    count: torch.Tensor  # int32, steps taken
    prev: Tree  # the reference update for the next step's bound, shaped like params


# leafwise, not declared elementwise: its first step is a Python branch on the step count,
# which compile=True cannot trace
@transform(leafwise=True, inplace=True)
def clip_value_growth(add: float | None = None, mul: float | None = 1.5, min_value: float | None = 1e-4,
                      max_decay: float | None = 2.0) -> GradientTransformation:
    """Bound each element's growth over the previous step's (torchzero's ``ClipValueGrowth``).

    The first update passes and becomes ``p``. Then, elementwise: with ``add``,
    ``|u|`` is cut to ``|p| + add``; with ``mul``, ``r = max(|u| / max(|p|, min_value), 1e-8)``
    and ``u <- u / max(r / mul, 1)``; the next ``p`` is ``u`` (as clipped), or ``p / max_decay``
    where ``r < 1 / max_decay`` (so a sudden drop does not make the bound collapse).

    Example: ``gx.chain(gx.scale_by_adam(), gx.clip_value_growth(mul=1.5), gx.scale_by_lr(1e-3))``.
    """
    _check_growth(add, mul, min_value, max_decay)

    def init(params):
        ps, treedef = leaves(params)
        # a complex parameter's real and imaginary parts are bounded separately
        return ClipValueGrowthState(new_count(), unflatten(treedef, [torch.zeros_like(_real(p)) for p in ps]))

    def ratio(u, p):
        pm = p.abs() if min_value is None else torch.clamp(p.abs(), min=min_value)
        return torch.clamp(u.abs() / pm, min=1e-8)

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del params, extra_args
        given, treedef = leaves(updates)
        us = [_real(u) for u in given]
        prevs = leaves_like(state.prev, treedef)
        first = int(state.count) == 0  # read before an in-place increment
        count = increment(state.count, inplace)
        if first:
            new = [p.copy_(u) if inplace else u.to(p.dtype, copy=True) for p, u in zip(prevs, us)]
            out = given if inplace else [u.clone() for u in given]
            return unflatten(treedef, out), ClipValueGrowthState(count, unflatten(treedef, new))
        out, new = [], []
        for u, p in zip(us, prevs):
            p = p.to(u.dtype)
            if add is not None:
                growth = torch.clamp(u.abs() - p.abs(), min=0)
                u = torch.where(growth > add, u - (growth - add).copysign(u), u)
            r = None
            if mul is not None:
                r = ratio(u, p)
                u = u / torch.where(r > mul, r / mul, torch.ones_like(r))
            if max_decay is not None:
                r = ratio(u, p) if r is None else r
                nxt = torch.where(r < 1.0 / max_decay, p / max_decay, u)
            else:
                nxt = u
            out.append(u)
            new.append(nxt)
        if inplace:
            for r, u in zip(us, out):
                r.copy_(u)
            out = given
            new = [p.copy_(n) for p, n in zip(prevs, new)]
        else:
            out = [torch.view_as_complex(u) if g.is_complex() else u for g, u in zip(given, out)]
            new = [n.to(p.dtype, copy=True) for p, n in zip(prevs, new)]
        return unflatten(treedef, out), ClipValueGrowthState(count, unflatten(treedef, new))

    return GradientTransformation(init, update)


class ClipNormGrowthState(NamedTuple):
    """State of :func:`clip_norm_growth`: steps taken and the reference norm(s)."""

    count: torch.Tensor  # int32, steps taken
    prev_norm: Tree  # per tensor a 0-dim tensor in a tree like params, or one (1,)-shaped tensor (global)


@transform(leafwise=lambda args: args["tensorwise"], inplace=True)
def clip_norm_growth(add: float | None = None, mul: float | None = 1.5, min_value: float | None = 1e-4,
                     max_decay: float | None = 2.0, tensorwise: bool = True) -> GradientTransformation:
    """Bound the growth of each update's l2 norm over the previous step's (torchzero's ``ClipNormGrowth``).

    The first update passes; its norm ``q`` is kept. Then with ``n = ||u||``:
    ``d = max(n / (q + add) if n > q + add, n / (q mul) if n > q mul, 1, min_value)``,
    ``u <- u / d``; the next ``q`` is ``n / d``, or ``q / max_decay`` when ``n / q < 1 / max_decay``,
    and at least ``min_value``. Norms per tensor, or over all leaves with ``tensorwise=False``.

    Example: ``gx.chain(gx.clip_norm_growth(mul=2.0), gx.scale_by_adam(), gx.scale_by_lr(1e-3))``.
    """
    _check_growth(add, mul, min_value, max_decay)
    if not isinstance(tensorwise, bool):
        raise ValueError(f"tensorwise must be a bool, got {tensorwise!r}")

    def init(params):
        ps, treedef = leaves(params)
        if tensorwise:
            return ClipNormGrowthState(new_count(), unflatten(treedef, [
                torch.zeros((), dtype=torch.float64, device=p.device) for p in ps]))
        return ClipNormGrowthState(new_count(), torch.zeros(1, dtype=torch.float64))

    def step(norm, q):
        one = torch.ones_like(norm)
        d = one
        if add is not None:
            d = torch.where(norm > q + add, norm / (q + add), d)
        if mul is not None:
            d = torch.where(norm > q * mul, torch.maximum(d, norm / (q * mul)), d)
        if min_value is not None:
            d = torch.clamp(d, min=min_value)
        nxt = norm / d
        if max_decay is not None:
            nxt = torch.where(norm / q < 1.0 / max_decay, q / max_decay, nxt)
        if min_value is not None:
            nxt = torch.clamp(nxt, min=min_value)
        return d, nxt

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del params, extra_args
        us, treedef = leaves(updates)
        first = int(state.count) == 0  # read before an in-place increment
        count = increment(state.count, inplace)
        norms = [torch.linalg.vector_norm(u).double() for u in us]
        if tensorwise:
            qs = leaves_like(state.prev_norm, treedef)
        else:
            total = torch.linalg.vector_norm(torch.stack(norms)) if us else torch.zeros((), dtype=torch.float64)
            norms, qs = [total], [state.prev_norm.reshape(())]
        if first:
            ds, nxts = [torch.ones_like(n) for n in norms], norms
        else:
            ds, nxts = zip(*(step(n, q) for n, q in zip(norms, qs))) if norms else ((), ())
        if not tensorwise:
            ds = list(ds) * len(us)
        out = [u.div_(d.to(u.real.dtype)) if inplace else u / d.to(u.real.dtype) for u, d in zip(us, ds)]
        if tensorwise:
            new = unflatten(treedef, [q.copy_(n) if inplace else n.to(q.dtype) for q, n in zip(qs, nxts)])
        else:
            q = state.prev_norm
            new = q.copy_(nxts[0].reshape(1)) if inplace else nxts[0].reshape(1).to(q.dtype)
        return unflatten(treedef, out), ClipNormGrowthState(count, new)

    return GradientTransformation(init, update)
