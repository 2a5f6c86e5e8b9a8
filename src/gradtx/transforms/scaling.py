"""Scaling: multiply updates by a constant, a learning rate, a schedule, or take the sign."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .. import _foreach as F  # noqa: N812
from .._hparams import ScalarOrSchedule, check, check_schedule, increment, is_schedule, new_count, to_state
from ..base import EmptyState, GradientTransformation, transform
from ._common import leaves, unflatten

__all__ = ["ScaleByLrState", "ScaleByScheduleState", "scale", "scale_by_learning_rate", "scale_by_lr",
           "scale_by_schedule", "scale_by_sign"]


def _scaled(updates, factor, inplace):
    us, treedef = leaves(updates)
    return unflatten(treedef, F.mul(us, factor, inplace=inplace))


@transform(elementwise=True, inplace=True)
def scale(step_size: float | torch.Tensor) -> GradientTransformation:
    """Multiply updates by a constant: ``u <- step_size * u``.

    Example: ``gx.scale(-0.1)`` is plain gradient descent with step 0.1.
    """
    check("step_size", step_size)

    def init(params):
        del params
        return EmptyState()

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del params, extra_args
        return _scaled(updates, step_size, inplace), state

    return GradientTransformation(init, update)


class ScaleByScheduleState(NamedTuple):
    count: torch.Tensor  # int32, steps taken


@transform(elementwise=True, inplace=True)
def scale_by_schedule(step_size_fn) -> GradientTransformation:
    """Multiply updates by a schedule of the step count: ``u <- f(t) * u``, t = 0, 1, ...

    Example: ``gx.scale_by_schedule(gx.linear_schedule(1.0, 0.0, 100))``.
    """
    if not is_schedule(step_size_fn):
        raise ValueError(f"step_size_fn must be a callable step -> value, got {step_size_fn!r}")
    check_schedule("step_size_fn", step_size_fn)
    return _scaled_by_schedule(step_size_fn)


def _scaled_by_schedule(step_size_fn) -> GradientTransformation:
    def init(params):
        del params
        return ScaleByScheduleState(count=new_count())

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del params, extra_args
        factor = step_size_fn(state.count)
        return _scaled(updates, factor, inplace), ScaleByScheduleState(increment(state.count, inplace))

    return GradientTransformation(init, update)


class ScaleByLrState(NamedTuple):
    lr: torch.Tensor  # 0-dim; the adapter exposes it as param_groups[i]['lr']


@transform(elementwise=True, inplace=True)
def scale_by_lr(lr: ScalarOrSchedule) -> GradientTransformation:
    """Scale by the negative learning rate: ``u <- -lr * u``.

    ``lr`` is a float, a 0-dim tensor (kept, with its autograd history, in the state as
    ``lr``) or a schedule ``step -> lr`` (the state is then a step count), called once at
    step 0 when built so that a schedule that cannot work is refused at once.

    Example: ``gx.chain(gx.scale_by_adam(), gx.scale_by_lr(1e-3))``.
    """
    if is_schedule(lr):
        check_schedule("lr", lr)
        return _scaled_by_schedule(lambda count: -lr(count))
    check("lr", lr, low=0.0)

    def init(params):
        del params
        return ScaleByLrState(lr=to_state(lr))

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del params, extra_args
        return _scaled(updates, -state.lr, inplace), state

    return GradientTransformation(init, update)


@transform(elementwise=True, inplace=True)
def scale_by_learning_rate(learning_rate: ScalarOrSchedule, *, flip_sign: bool = True) -> GradientTransformation:
    """optax's spelling of :func:`scale_by_lr`: ``u <- -learning_rate * u``; with ``flip_sign=False``
    ``u <- learning_rate * u`` (:func:`scale`, or :func:`scale_by_schedule` for a schedule).

    A thin alias: the same update and state (``ScaleByLrState(lr)``, so under ``gx.Optimizer``
    the group key is ``lr``); only the name it prints and pickles as differs, and the fused
    fast paths recognise ``scale_by_lr`` by name, so prefer that spelling under ``gx.Optimizer``.

    Example: ``gx.chain(gx.scale_by_adam(), gx.scale_by_learning_rate(1e-3))``.
    """
    if not isinstance(flip_sign, bool):
        raise ValueError(f"flip_sign must be a bool, got {flip_sign!r}")
    if is_schedule(learning_rate):
        check_schedule("learning_rate", learning_rate)
        return _scaled_by_schedule((lambda count: -learning_rate(count)) if flip_sign else learning_rate)
    if flip_sign:
        check("learning_rate", learning_rate, low=0.0)
        return scale_by_lr(learning_rate)
    check("learning_rate", learning_rate)
    return scale(learning_rate)


@transform(elementwise=True, inplace=True)
def scale_by_sign() -> GradientTransformation:
    """Replace updates by their sign: ``u <- sign(u)``."""

    def init(params):
        del params
        return EmptyState()

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del params, extra_args
        us, treedef = leaves(updates)
        rv = F.real_views(us)  # a complex update: the sign of its real and imaginary parts
        out = F.sign(rv.real[0] if rv else us, inplace=inplace)
        return unflatten(treedef, rv.back(out)[0] if rv else out), state

    return GradientTransformation(init, update)
