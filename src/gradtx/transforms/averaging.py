"""Averaging over past updates: uniform (running or over a window), weighted, median."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch

from .._hparams import check_int, increment, new_count
from .._tree import Tree
from ..base import GradientTransformation, transform
from ._common import leaves, leaves_like, unflatten

__all__ = ["RunningAverageState", "WindowAverageState", "average", "median_average", "weighted_average"]


class RunningAverageState(NamedTuple):
    """State of :func:`average` without a window: steps taken and the mean so far."""

    count: torch.Tensor  # int32, steps taken
    mean: Tree  # mean of every update so far, shaped like params


class WindowAverageState(NamedTuple):
    """State of the windowed averages: steps taken and the last ``window`` updates."""

    count: torch.Tensor  # int32, steps taken
    history: Tree  # per parameter, shape (window, *param.shape); slot t % window holds update t


def _history_init(params: Tree, window: int) -> Tree:
    ps, treedef = leaves(params)
    return unflatten(treedef, [torch.zeros((window, *p.shape), dtype=p.dtype, device=p.device) for p in ps])


def _record(updates, state: WindowAverageState, window: int, inplace: bool):
    """Write the updates into their slot; ``(us, histories, n, slots oldest first, treedef, count)``."""
    us, treedef = leaves(updates)
    hs = leaves_like(state.history, treedef)
    t = int(state.count)  # a CPU counter: no device sync
    slot = t % window
    if not inplace:
        hs = [h.clone() for h in hs]
    for h, u in zip(hs, us):
        h[slot].copy_(u)
    n = min(t + 1, window)
    order = [(t + 1 - n + i) % window for i in range(n)]
    return us, hs, n, order, treedef, increment(state.count, inplace)


@transform(leafwise=True, inplace=True)
def average(window: int | None = None) -> GradientTransformation:
    """The mean of past updates: ``u_t <- (1/n) sum_{i=t-n+1..t} u_i``.

    With ``window=None`` the mean of every update so far (``n = t``; a running mean
    ``a <- a + (u - a) / t``, one buffer); with an int, of the last ``window`` updates
    (``n = min(t, window)``; ``window`` buffers per parameter), torchzero's
    ``Averaging(history_size)``. Each output element depends on the same element of past
    updates only.

    Example: ``gx.chain(gx.average(window=4), gx.scale_by_lr(0.1))``.
    """
    if window is not None:
        check_int("window", window, low=1)

    if window is None:
        def init(params):
            ps, treedef = leaves(params)
            return RunningAverageState(new_count(), unflatten(treedef, [torch.zeros_like(p) for p in ps]))

        def update(updates, state, params=None, *, inplace=False, **extra_args):
            del params, extra_args
            us, treedef = leaves(updates)
            ms = leaves_like(state.mean, treedef)
            count = increment(state.count, inplace)
            weight = 1.0 / int(count)
            ms = [m.lerp_(u, weight) if inplace else torch.lerp(m, u, weight) for m, u in zip(ms, us)]
            out = [u.copy_(m) if inplace else m.to(u.dtype, copy=True) for u, m in zip(us, ms)]
            return unflatten(treedef, out), RunningAverageState(count, unflatten(treedef, ms))

        return GradientTransformation(init, update)

    def init(params):
        return WindowAverageState(new_count(), _history_init(params, window))

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del params, extra_args
        us, hs, n, order, treedef, count = _record(updates, state, window, inplace)
        means = [h[:n].sum(0) / n if n < window else h.sum(0) / n for h in hs]
        out = [u.copy_(m) if inplace else m.to(u.dtype) for u, m in zip(us, means)]
        return unflatten(treedef, out), WindowAverageState(count, unflatten(treedef, hs))

    return GradientTransformation(init, update)


@transform(leafwise=True, inplace=True)
def weighted_average(weights: Sequence[float]) -> GradientTransformation:
    """A weighted mean of the last ``len(weights)`` updates, ``weights`` from oldest to newest.

    ``u_t <- (1/n) sum_{k=1..n} w_{W-n+k} u_{t-n+k}`` with ``W = len(weights)`` and
    ``n = min(t, W)``: over the first steps the newest ``n`` weights are used. The sum is
    divided by ``n``, not by the sum of the weights (torchzero's ``WeightedAveraging``, the
    reference): weights ``(1, ..., 1)`` give the plain mean.

    Example: ``gx.chain(gx.weighted_average([0.5, 1.0, 1.5]), gx.scale_by_lr(0.1))``.
    """
    if isinstance(weights, torch.Tensor):
        weights = weights.tolist()
    if isinstance(weights, (str, bytes)) or not isinstance(weights, Sequence) or not weights:
        raise ValueError(f"weights must be a non-empty sequence of numbers (oldest first), got {weights!r}")
    try:
        ws = [float(w) for w in weights]
    except (TypeError, ValueError):
        raise ValueError(f"weights must be a non-empty sequence of numbers (oldest first), got {weights!r}") from None
    if not all(math.isfinite(w) for w in ws):
        raise ValueError(f"weights must be finite numbers, got {weights!r}")
    window = len(ws)

    def init(params):
        return WindowAverageState(new_count(), _history_init(params, window))

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del params, extra_args
        us, hs, n, order, treedef, count = _record(updates, state, window, inplace)
        used = ws[window - n:]
        out = []
        for u, h in zip(us, hs):
            acc = torch.zeros_like(h[0])  # in the history's dtype (the param's), rounded once
            for w, slot in zip(used, order):
                if w != 0.0:
                    acc.add_(h[slot], alpha=w / n)
            out.append(u.copy_(acc) if inplace else acc.to(u.dtype))
        return unflatten(treedef, out), WindowAverageState(count, unflatten(treedef, hs))

    return GradientTransformation(init, update)


def _median(stacked: torch.Tensor) -> torch.Tensor:
    # torch.quantile(q=0.5)'s value (the mean of the two middle ones for an even count),
    # written with a sort so every floating dtype works
    n = stacked.shape[0]
    s = stacked.sort(0).values
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


@transform(leafwise=True, inplace=True)
def median_average(window: int) -> GradientTransformation:
    """The elementwise median of the last ``window`` updates (torchzero's ``MedianAveraging``).

    ``u_t <- median(u_{t-n+1}, ..., u_t)`` per element, ``n = min(t, window)``; for an even
    ``n`` the mean of the two middle values (``torch.quantile(..., 0.5)``). Robust to a few
    outlying gradients. A complex update's real and imaginary parts are taken separately.

    Example: ``gx.chain(gx.median_average(5), gx.scale_by_lr(0.1))``.
    """
    check_int("window", window, low=1)

    def init(params):
        return WindowAverageState(new_count(), _history_init(params, window))

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del params, extra_args
        us, hs, n, order, treedef, count = _record(updates, state, window, inplace)
        out = []
        for u, h in zip(us, hs):
            filled = h[:n]
            med = (torch.view_as_complex(_median(torch.view_as_real(filled)).contiguous()) if filled.is_complex()
                   else _median(filled))
            out.append(u.copy_(med) if inplace else med.to(u.dtype, copy=True))
        return unflatten(treedef, out), WindowAverageState(count, unflatten(treedef, hs))

    return GradientTransformation(init, update)
