"""Momentum: traces and exponential moving averages of updates."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Union

import torch

from .. import _foreach as F  # noqa: N812
from .._hparams import check, check_beta, increment, new_count
from .._tree import Tree
from ..base import GradientTransformation, transform
from ._common import leaves, leaves_like, unflatten

__all__ = ["TraceState", "EmaState", "trace", "ema"]

DtypeSpec = Union[torch.dtype, Callable[[torch.dtype], torch.dtype], None]


def at_least_float32(dtype: torch.dtype) -> torch.dtype:
    """An ``accumulator_dtype`` rule: float32 for a lower-precision parameter, the
    parameter's own dtype when wider (a float64 parameter keeps a float64 state)."""
    return torch.promote_types(dtype, torch.float32)


class TraceState(NamedTuple):
    trace: Tree


@transform(elementwise=True, inplace=True)
def trace(decay: float, nesterov: bool = False, accumulator_dtype: DtypeSpec = None) -> GradientTransformation:
    """Heavy-ball momentum, as ``torch.optim.SGD`` (dampening 0).

    ``m <- decay * m + u``; ``u <- m``, or ``u <- u + decay * m`` when ``nesterov``.
    The first step gives ``m = u``, as torch's SGD does. ``m`` is kept in ``accumulator_dtype``
    (a dtype, a rule ``param dtype -> dtype`` such as :func:`at_least_float32`, or ``None``:
    each parameter's dtype).

    Example: ``gx.chain(gx.trace(0.9, nesterov=True), gx.scale_by_lr(0.1))``.
    """
    check("decay", decay, low=0.0)

    def init(params):
        return TraceState(trace=_zeros(params, accumulator_dtype))

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del params, extra_args
        us, treedef = leaves(updates)
        ms = leaves_like(state.trace, treedef)
        ms = F.mul(ms, decay, inplace=inplace)
        F.add(ms, F.cast_like(us, ms), inplace=True)
        if nesterov:
            out = F.add(us, F.cast_like(ms, us), alpha=decay, inplace=inplace)
        elif inplace:
            # The caller may overwrite returned updates; never hand it our state buffer.
            out = F.copy_(us, ms)
        else:
            out = F.cast_like(ms, us)
        return unflatten(treedef, out), TraceState(unflatten(treedef, ms))

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
            out = F.div(ms, _bias_correction(decay, count)) if debias else ms
            out = F.cast_like(out, us)
        return unflatten(treedef, out), EmaState(count, unflatten(treedef, ms))

    return GradientTransformation(init, update)
