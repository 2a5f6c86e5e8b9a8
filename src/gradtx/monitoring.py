"""Monitoring: record measurements of the updates in the state, leaving the updates unchanged.

optax's ``snapshot``, ``monitor`` and ``measure_with_ema``. A measurement is a tree of
tensors computed from the updates where the transform sits in a chain (``gx.tree_l2_norm``
before a clip, say); read it back with ``gx.tree_get(state, name)``. The state keeps its
structure from ``init`` on, so a measurement must have the same structure, shapes and dtypes
for the params (at ``init``) as for the updates.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from ._hparams import check_beta
from ._tree import Tree, tensor_leaves, tree_map, tree_zeros_like
from .base import GradientTransformation, transform, updater
from .transforms.momentum import EmaState, ema

__all__ = ["SnapshotState", "MonitorState", "MeasureWithEmaState", "snapshot", "monitor", "measure_with_ema"]

Measure = Callable[[Tree], Tree]


def _measured(measure: Measure, tree: Tree) -> Tree:
    tensor_leaves(tree)  # a None leaf is refused, naming its path
    # numbers become 0-dim tensors, so the state holds tensors only
    return tree_map(lambda x: x if isinstance(x, torch.Tensor) else torch.as_tensor(x), measure(tree))


def _check_measure(argument: str, measure: Any) -> None:
    if not callable(measure) or isinstance(measure, GradientTransformation):
        raise ValueError(f"{argument} must be a callable updates -> tree of tensors, got {measure!r}")


class SnapshotState(NamedTuple):
    """State of :func:`snapshot`: ``{measure_name: measurement}``."""

    measurements: dict


@transform
def snapshot(measure_name: str, measure: Measure) -> GradientTransformation:
    """Store ``measure(updates)`` in the state under ``measure_name``; updates pass unchanged (optax).

    ``u <- u``; ``state.measurements[measure_name] <- measure(u)`` (``measure(params)`` after
    ``init``, as optax). In a chain ``u`` is the update as transformed so far. Read it with
    ``gx.tree_get(state, measure_name)``.

    Example::

        tx = gx.chain(gx.sgd(0.1, momentum=0.9), gx.snapshot("norm_before_clip", gx.tree_l2_norm),
                      gx.clip_by_global_norm(1.0))
        ...
        gx.tree_get(state, "norm_before_clip")
    """
    if not isinstance(measure_name, str):
        raise ValueError(f"measure_name must be a str, got {measure_name!r}")
    _check_measure("measure", measure)

    def init(params):
        return SnapshotState({measure_name: _measured(measure, params)})

    def update(updates, state, params=None, **extra_args):
        del state, params, extra_args
        return updates, SnapshotState({measure_name: _measured(measure, updates)})

    return GradientTransformation(init, update)


class MeasureWithEmaState(NamedTuple):
    """State of :func:`measure_with_ema`: step count and the moving average (a 1-tuple, so a
    0-dim average is not taken for a hyperparameter by ``gx.Optimizer``)."""

    count: torch.Tensor  # int32, steps taken
    ema: tuple  # (moving average of the measurement,)


def _floating(tree: Tree, dtype: torch.dtype | None) -> Tree:
    # a flag (norm > threshold) is averaged as a number: the fraction of steps it held
    return tree_map(lambda x: x if x.is_floating_point() or x.is_complex() else x.to(dtype or torch.float32), tree)


@transform
def measure_with_ema(measure: Measure, decay: float, debias: bool = True,
                     accumulator_dtype: torch.dtype | None = None) -> GradientTransformation:
    """The moving average of ``measure(updates)``, returned as the update (optax).

    ``m_t = measure(u_t)`` (a non-float measurement, e.g. a bool flag, as float32 or
    ``accumulator_dtype``); ``a <- decay a + (1 - decay) m_t``; the output is ``a / (1 - decay^t)``
    when ``debias``, else ``a``: optax's ``chain(stateless(measure), ema(decay, debias))``.
    Meant as a measure of :func:`monitor`, which stores that output and passes the updates
    on; alone it replaces the updates by the average (with ``measure = lambda u: u`` it is
    :func:`gradtx.ema`).

    Example: ``gx.monitor({"clipped": gx.measure_with_ema(lambda u: gx.tree_l2_norm(u) > 1.0, 0.9)})``.
    """
    _check_measure("measure", measure)
    check_beta("decay", decay)
    average = ema(decay, debias, accumulator_dtype)
    run = updater(average)

    def init(params):
        inner = average.init(_floating(_measured(measure, params), accumulator_dtype))
        return MeasureWithEmaState(inner.count, (inner.ema,))

    def update(updates, state, params=None, **extra_args):
        del params, extra_args
        m = _floating(_measured(measure, updates), accumulator_dtype)
        out, inner = run(m, EmaState(state.count, state.ema[0]), None, False, {})
        return out, MeasureWithEmaState(inner.count, (inner.ema,))

    return GradientTransformation(init, update)


class MonitorState(NamedTuple):
    """State of :func:`monitor`: ``{name: measurement}`` and each measuring transform's state."""

    measurements: dict
    measure_states: tuple


def _as_transform(name: str, measure: Any) -> GradientTransformation:
    if isinstance(measure, GradientTransformation):
        return measure
    if not callable(measure):
        raise ValueError(f"measures[{name!r}] must be a callable updates -> tree of tensors or a "
                         f"GradientTransformation, got {measure!r}")

    def init(params):
        return ()

    def update(updates, state, params=None, **extra_args):
        return _measured(measure, updates), state

    return GradientTransformation(init, update)


@transform
def monitor(measures: dict[str, Measure | GradientTransformation]) -> GradientTransformation:
    """Record several measurements of the updates, some with state; updates pass unchanged (optax).

    Each entry is a callable ``updates -> tree`` (as :func:`snapshot`) or a transform whose
    output is the measurement (:func:`measure_with_ema`, or any transform: its state evolves
    on the updates it sees). ``u <- u``; ``state.measurements[name] <- output``. Each
    measuring transform gets ``params`` and the extra arguments.

    Deviation from optax, whose ``init`` leaves ``measurements`` empty: here the state has
    its final structure from ``init`` on (gradtx's contract), so each measurement starts as
    the callable applied to the params, or as zeros shaped like the transform's output on
    zero updates.

    Example::

        tx = gx.chain(gx.sgd(0.1, momentum=0.9),
                      gx.monitor({"norm": gx.tree_l2_norm,
                                  "clipped": gx.measure_with_ema(lambda u: gx.tree_l2_norm(u) > 1.0, 0.9)}),
                      gx.clip_by_global_norm(1.0))
    """
    if not isinstance(measures, dict) or not all(isinstance(k, str) for k in measures):
        raise ValueError(f"measures must be a dict of str names to callables or transforms, got {measures!r}")
    items = tuple((name, _as_transform(name, m)) for name, m in measures.items())
    runs = tuple(updater(tx) for _, tx in items)
    callables = {name: m for name, m in measures.items() if not isinstance(m, GradientTransformation)}

    def init(params):
        measurements, states = {}, []
        for name, tx in items:
            state = tx.init(params)
            states.append(state)
            if name in callables:
                measurements[name] = _measured(callables[name], params)
            else:
                out, _ = updater(tx)(tree_zeros_like(params), state, params, False, {})
                measurements[name] = tree_zeros_like(out)
        return MonitorState(measurements, tuple(states))

    def update(updates, state, params=None, **extra_args):
        measurements, states = {}, []
        for (name, _), run, inner_state in zip(items, runs, state.measure_states):
            out, inner_state = run(updates, inner_state, params, False, extra_args)
            measurements[name] = out
            states.append(inner_state)
        return updates, MonitorState(measurements, tuple(states))

    return GradientTransformation(init, update)
