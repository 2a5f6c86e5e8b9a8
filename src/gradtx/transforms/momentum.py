"""Momentum: traces and exponential moving averages of updates."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Union

import torch

from .. import _foreach as F  # noqa: N812
from .._hparams import _as_float, check, check_beta, increment, new_count
from .._tree import Tree
from ..base import GradientTransformation, transform
from ._common import leaves, leaves_like, unflatten

__all__ = ["TraceState", "DampenedTraceState", "EmaState", "trace", "ema"]

DtypeSpec = Union[torch.dtype, Callable[[torch.dtype], torch.dtype], None]


def at_least_float32(dtype: torch.dtype) -> torch.dtype:
    """An ``accumulator_dtype`` rule: float32 for a lower-precision parameter, the
    parameter's own dtype when wider (a float64 parameter keeps a float64 state)."""
    return torch.promote_types(dtype, torch.float32)


class TraceState(NamedTuple):
    trace: Tree


class DampenedTraceState(NamedTuple):
    """State of :func:`trace` with ``dampening``: the step count tells the first step."""

    count: torch.Tensor  # int32, steps taken
    trace: Tree


@transform(elementwise=True, inplace=True)
def trace(decay: float, nesterov: bool = False, accumulator_dtype: DtypeSpec = None,
          dampening: float | None = None) -> GradientTransformation:
    """Heavy-ball momentum, as ``torch.optim.SGD`` (its ``momentum`` is ``decay``).

    ``m <- decay * m + (1 - dampening) * u``; ``u <- m``, or ``u <- u + decay * m`` when
    ``nesterov``. The first step gives ``m = u`` (no dampening), as torch's SGD does;
    ``nesterov`` needs ``dampening = 0``, as torch's. ``dampening=None`` (the default) is 0
    with the plain state :class:`TraceState`; a given ``dampening`` adds a step count to the
    state (:class:`DampenedTraceState`), to know the first step, so the state's structure
    depends on whether it is given, never on its value. ``m`` is kept in ``accumulator_dtype``
    (a dtype, a rule ``param dtype -> dtype`` such as :func:`at_least_float32`, or ``None``:
    each parameter's dtype).

    Example: ``gx.chain(gx.trace(0.9, dampening=0.1), gx.scale_by_lr(0.1))``.
    """
    check_beta("decay", decay)
    dampened = dampening is not None
    if dampened:
        check("dampening", dampening, low=0.0, high=1.0)
        known = _as_float(dampening)  # None: a tensor with autograd history
        if nesterov and (known is None or known != 0):
            raise ValueError(f"nesterov=True needs dampening=0 (as torch.optim.SGD), got dampening={dampening!r}")

    def init(params):
        ms = _zeros(params, accumulator_dtype)
        return DampenedTraceState(new_count(), ms) if dampened else TraceState(trace=ms)

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del params, extra_args
        us, treedef = leaves(updates)
        ms = leaves_like(state.trace, treedef)
        ms = F.mul(ms, decay, inplace=inplace)
        if dampened:
            count = increment(state.count, inplace)
            # torch's first step is m = u: weight 1 then, 1 - dampening after
            weight = torch.where(count == 1, 1.0, 1.0 - torch.as_tensor(dampening, dtype=torch.float64))
            F.add(ms, F.mul(F.cast_like(us, ms), weight), inplace=True)
        else:
            F.add(ms, F.cast_like(us, ms), inplace=True)
        if nesterov:
            out = F.add(us, F.cast_like(ms, us), alpha=decay, inplace=inplace)
        elif inplace:
            # The caller may overwrite returned updates; never hand it our state buffer.
            out = F.copy_(us, ms)
        else:
            # a copy: the caller may write into the updates it gets, never into our state
            out = F.clone_like(ms, us)
        new_ms = unflatten(treedef, ms)
        return unflatten(treedef, out), DampenedTraceState(count, new_ms) if dampened else TraceState(new_ms)

    return GradientTransformation(init, update)


def _zeros(params: Tree, dtype: DtypeSpec) -> Tree:
    """Zeros like each parameter, in ``dtype`` (a dtype, a rule ``param dtype -> dtype``, or
    ``None``: the parameter's)."""
    ps, treedef = leaves(params)
    return unflatten(treedef, [torch.zeros_like(p, dtype=dtype(p.dtype) if callable(dtype) else dtype) for p in ps])


class EmaState(NamedTuple):
    count: torch.Tensor
    ema: Tree


def _bias_correction(decay: float, count: torch.Tensor) -> torch.Tensor:
    """``1 - decay**count`` in float64."""
    return 1.0 - decay ** count.to(torch.float64)


@transform(elementwise=True, inplace=True)
def ema(decay: float, debias: bool = True, accumulator_dtype: DtypeSpec = None) -> GradientTransformation:
    """Exponential moving average of updates.

    ``m <- decay * m + (1 - decay) * u``; ``u <- m / (1 - decay**t)`` when ``debias``
    (t counts steps from 1), else ``u <- m``. ``m`` is kept in ``accumulator_dtype`` (as in
    :func:`trace`).

    Example: ``gx.chain(gx.ema(0.9), gx.scale_by_lr(0.1))``.
    """
    check_beta("decay", decay)

    def init(params):
        return EmaState(count=new_count(), ema=_zeros(params, accumulator_dtype))

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del params, extra_args
        us, treedef = leaves(updates)
        ms = leaves_like(state.ema, treedef)
        ms = F.lerp(ms, us, 1.0 - decay, inplace=inplace)
        count = increment(state.count, inplace)
        if inplace:
            out = F.copy_(us, ms)
            if debias:
                F.div(out, _bias_correction(decay, count), inplace=True)
        else:
            if debias:
                out = F.cast_like(F.div(ms, _bias_correction(decay, count)), us)
            else:  # a copy: the caller may write into the updates it gets, never into our state
                out = F.clone_like(ms, us)
        return unflatten(treedef, out), EmaState(count, unflatten(treedef, ms))

    return GradientTransformation(init, update)
