"""Schedules: pure functions ``step -> value`` (optax's names, arguments and values).

A schedule accepts an int or an integer tensor and returns a float64 0-dim tensor, computed
with tensor ops only, so it runs unchanged under ``torch.compile`` and ``torch.func``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import torch

__all__ = ["constant_schedule", "polynomial_schedule", "linear_schedule", "cosine_decay_schedule",
           "warmup_cosine_decay_schedule", "exponential_decay", "piecewise_constant_schedule", "join_schedules",
           "piecewise_interpolate_schedule", "linear_onecycle_schedule", "cosine_onecycle_schedule",
           "warmup_constant_schedule", "warmup_exponential_decay_schedule", "sgdr_schedule"]

Schedule = Callable[[torch.Tensor | int], torch.Tensor]


def _recorded(make: Callable[..., Schedule]) -> Callable[..., Schedule]:
    """A schedule constructor whose schedules carry ``recipe = (constructor, args, kwargs)``,
    so a chain holding one can be pickled (``gx.Optimizer`` rebuilds it from its recipe)."""

    @functools.wraps(make)
    def build(*args, **kwargs) -> Schedule:
        schedule = make(*args, **kwargs)
        schedule.recipe = (build, args, kwargs)
        return schedule

    return build


def _step(count) -> torch.Tensor:
    return torch.as_tensor(count).to(torch.float64)


def _value(x) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float64)


def _check_int(name: str, value, low: int | None = None) -> None:
    """A step count argument: a number of steps (an int; a float such as 1e4 is accepted,
    as optax does), at least ``low`` if given."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ValueError(f"{name} must be an int (a number of steps), got {value!r}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be >= {low}, got {value!r}")


@_recorded
def constant_schedule(value: float) -> Schedule:
    """``f(t) = value``.

    Example: ``gx.scale_by_lr(gx.constant_schedule(1e-3))``.
    """

    def schedule(count):
        return _value(value).expand(torch.as_tensor(count).shape).clone()

    return schedule


@_recorded
def polynomial_schedule(init_value: float, end_value: float, power: float, transition_steps: int,
                        transition_begin: int = 0) -> Schedule:
    """``f(t) = (init - end) * (1 - s / transition_steps)^power + end`` with
    ``s = clip(t - transition_begin, 0, transition_steps)``.

    A non-positive ``transition_steps`` gives the constant ``init_value`` (as optax); a
    negative ``transition_begin`` raises ``ValueError`` (optax treats it as 0).

    Example: ``gx.polynomial_schedule(1.0, 0.01, power=2, transition_steps=100)``.
    """
    _check_int("transition_steps", transition_steps)
    _check_int("transition_begin", transition_begin, low=0)
    if transition_steps <= 0:
        return constant_schedule(init_value)

    def schedule(count):
        s = torch.clamp(_step(count) - transition_begin, 0.0, float(transition_steps))
        frac = 1.0 - s / transition_steps
        return (init_value - end_value) * frac ** power + end_value

    return schedule


@_recorded
def linear_schedule(init_value: float, end_value: float, transition_steps: int,
                    transition_begin: int = 0) -> Schedule:
    """Linear ramp from ``init_value`` to ``end_value`` over ``transition_steps`` steps,
    starting at ``transition_begin``; constant outside:
    ``f(t) = init + (end - init) * clip(t - transition_begin, 0, transition_steps) / transition_steps``.

    Example: ``gx.adam(gx.linear_schedule(0.0, 1e-3, transition_steps=1000))``.
    """
    return polynomial_schedule(init_value, end_value, 1, transition_steps, transition_begin)


@_recorded
def cosine_decay_schedule(init_value: float, decay_steps: int, alpha: float = 0.0,
                          exponent: float = 1.0) -> Schedule:
    """``f(t) = init * ((1 - alpha) * c^exponent + alpha)``,
    ``c = (1 + cos(pi * min(t, decay_steps) / decay_steps)) / 2`` (Loshchilov & Hutter, 2017).
    ``decay_steps`` must be > 0.

    Example: ``gx.cosine_decay_schedule(1e-3, decay_steps=10_000, alpha=0.1)``.
    """
    _check_int("decay_steps", decay_steps, low=1)

    def schedule(count):
        t = torch.clamp(_step(count), max=float(decay_steps))
        cosine = 0.5 * (1.0 + torch.cos(math.pi * t / decay_steps))
        return init_value * ((1.0 - alpha) * cosine ** exponent + alpha)

    return schedule


@_recorded
def warmup_cosine_decay_schedule(init_value: float, peak_value: float, warmup_steps: int, decay_steps: int,
                                 end_value: float = 0.0, exponent: float = 1.0) -> Schedule:
    """Linear warmup from ``init_value`` to ``peak_value`` over ``warmup_steps``, then cosine
    decay to ``end_value`` reached at step ``decay_steps`` (which includes the warmup):
    :func:`join_schedules` of ``linear_schedule(init, peak, warmup_steps)`` and
    ``cosine_decay_schedule(peak, decay_steps - warmup_steps, alpha=end_value / peak_value)``
    at ``warmup_steps``. ``decay_steps`` must exceed ``warmup_steps``.

    Example: ``gx.warmup_cosine_decay_schedule(0.0, 1e-3, warmup_steps=100, decay_steps=10_000)``.
    """
    _check_int("warmup_steps", warmup_steps, low=0)
    _check_int("decay_steps", decay_steps)
    if not decay_steps > warmup_steps:
        raise ValueError(f"decay_steps must be > warmup_steps (it includes the warmup), got decay_steps="
                         f"{decay_steps!r} and warmup_steps={warmup_steps!r}")
    alpha = 0.0 if peak_value == 0 else end_value / peak_value
    return join_schedules(
        [linear_schedule(init_value, peak_value, warmup_steps),
         cosine_decay_schedule(peak_value, decay_steps - warmup_steps, alpha, exponent)],
        [warmup_steps])


@_recorded
def exponential_decay(init_value: float, transition_steps: int, decay_rate: float, transition_begin: int = 0,
                      staircase: bool = False, end_value: float | None = None) -> Schedule:
    """``f(t) = init * decay_rate^(s / transition_steps)``, ``s = t - transition_begin``
    (the exponent floored when ``staircase``); ``init`` for ``s <= 0``; bounded by
    ``end_value`` (below when decaying, above when growing) if given. A non-positive
    ``transition_steps`` gives the constant ``init_value`` (as optax); ``decay_rate = 0`` or
    a negative ``transition_begin`` raise ``ValueError``.

    Example: ``gx.exponential_decay(1e-2, transition_steps=1000, decay_rate=0.5, staircase=True)``.
    """
    _check_int("transition_steps", transition_steps)
    _check_int("transition_begin", transition_begin, low=0)
    if transition_steps <= 0:
        return constant_schedule(init_value)
    if decay_rate == 0:
        raise ValueError("decay_rate must not be 0 (optax falls back to the constant init_value; pass "
                         "transition_steps=0 for that)")

    def schedule(count):
        s = _step(count) - transition_begin
        p = s / transition_steps
        if staircase:
            p = torch.floor(p)
        value = torch.where(s <= 0, _value(init_value), init_value * _value(decay_rate) ** p)
        if end_value is not None:
            value = torch.clamp(value, min=end_value) if decay_rate < 1 else torch.clamp(value, max=end_value)
        return value

    return schedule


@_recorded
def piecewise_constant_schedule(init_value: float, boundaries_and_scales: dict[int, float] | None = None
                                ) -> Schedule:
    """``f(t) = init * prod(scale_b for boundary b <= t)``; scales must be non-negative.

    Example: ``gx.piecewise_constant_schedule(0.1, {1000: 0.1, 2000: 0.1})`` (0.1, 0.01, 0.001).
    """
    items = sorted((boundaries_and_scales or {}).items())
    for boundary, scale_ in items:
        _check_int("boundaries_and_scales keys", boundary)
        if scale_ < 0:
            raise ValueError(f"boundaries_and_scales scales must be non-negative, got {scale_} at {boundary}")

    def schedule(count):
        t = _step(count)
        value = _value(init_value) * torch.ones_like(t)
        for boundary, scale_ in items:
            value = torch.where(t < boundary, value, value * scale_)
        return value

    return schedule


@_recorded
def join_schedules(schedules: Sequence[Schedule], boundaries: Sequence[int]) -> Schedule:
    """Run ``schedules[i]`` from ``boundaries[i-1]`` on, each seeing steps counted from its
    own start: ``f(t) = schedules[i](t - boundaries[i-1])`` for
    ``boundaries[i-1] <= t < boundaries[i]``; ``len(boundaries) == len(schedules) - 1``.

    Example: ``gx.join_schedules([gx.linear_schedule(0.0, 1.0, 10), gx.constant_schedule(1.0)], [10])``.
    """
    for b in boundaries:
        _check_int("boundaries", b)
    if len(boundaries) != len(schedules) - 1:
        raise ValueError(f"boundaries must hold one step fewer than schedules (len(schedules) - 1 = "
                         f"{len(schedules) - 1}), got {len(boundaries)}")

    def schedule(count):
        t = torch.as_tensor(count)
        value = _value(schedules[0](t))
        for boundary, later in zip(boundaries, schedules[1:]):
            value = torch.where(t < boundary, value, _value(later(t - boundary)))
        return value

    return schedule


@_recorded
def piecewise_interpolate_schedule(interpolate_type: str, init_value: float,
                                   boundaries_and_scales: dict[int, float] | None = None) -> Schedule:
    """Interpolate between the values ``init * prod(scale_b for b <= boundary)`` reached at
    each boundary: linearly (``interpolate_type="linear"``) or along a half cosine
    (``"cosine"``); ``0`` before step 0 and the last value from the last boundary on (optax).

    With boundaries ``0 = b_0 < b_1 < ...`` and ``v_i`` the value at ``b_i``, for
    ``b_i <= t < b_{i+1}``, ``s = (t - b_i) / max(b_{i+1} - b_i, 1)``:
    linear ``v_i + (v_{i+1} - v_i) s``, cosine ``v_{i+1} + (v_i - v_{i+1}) (1 + cos(pi s)) / 2``.

    Example: ``gx.piecewise_interpolate_schedule("linear", 1.0, {4: 0.1, 8: 0.1})``.
    """
    if interpolate_type not in ("linear", "cosine"):
        raise ValueError(f"interpolate_type must be 'linear' or 'cosine', got {interpolate_type!r}")
    items = sorted((boundaries_and_scales or {}).items())
    for boundary, scale_ in items:
        _check_int("boundaries_and_scales keys", boundary)
        if scale_ < 0:
            raise ValueError(f"boundaries_and_scales scales must be non-negative, got {scale_} at {boundary}")
    bounds = [0] + [boundary for boundary, _ in items]
    values = [float(init_value)]
    for _, scale_ in items:
        values.append(values[-1] * scale_)

    def interpolate(start: float, end: float, pct: torch.Tensor) -> torch.Tensor:
        if interpolate_type == "linear":
            return (end - start) * pct + start
        return end + (start - end) / 2.0 * (torch.cos(math.pi * pct) + 1.0)

    def schedule(count):
        t = _step(count)
        zero = torch.zeros_like(t)
        value = torch.where(bounds[-1] <= t, _value(values[-1]), zero)
        for i in range(len(bounds) - 1):
            pct = (t - bounds[i]) / max(bounds[i + 1] - bounds[i], 1)
            inside = (bounds[i] <= t) & (t < bounds[i + 1])
            value = value + torch.where(inside, interpolate(values[i], values[i + 1], pct), zero)
        return value

    return schedule


@_recorded
def linear_onecycle_schedule(transition_steps: int, peak_value: float, pct_start: float = 0.3,
                             pct_final: float = 0.85, div_factor: float = 25.0,
                             final_div_factor: float = 1e4) -> Schedule:
    """One-cycle policy with three linear phases (Smith & Topin, 2017, "Super-Convergence").

    From ``peak / div_factor`` up to ``peak`` at step ``int(pct_start * T)``, back down to
    ``peak / div_factor`` at ``int(pct_final * T)``, then to
    ``peak / (div_factor * final_div_factor)`` at ``T = transition_steps``, constant after:
    :func:`piecewise_interpolate_schedule` ``"linear"`` with those boundaries (optax).

    Example: ``gx.linear_onecycle_schedule(10_000, peak_value=0.1)``.
    """
    _check_int("transition_steps", transition_steps, low=1)
    return piecewise_interpolate_schedule(
        "linear", peak_value / div_factor,
        {int(pct_start * transition_steps): div_factor,
         int(pct_final * transition_steps): 1.0 / div_factor,
         transition_steps: 1.0 / final_div_factor})


@_recorded
def cosine_onecycle_schedule(transition_steps: int, peak_value: float, pct_start: float = 0.3,
                             div_factor: float = 25.0, final_div_factor: float = 1e4) -> Schedule:
    """One-cycle policy with cosine phases (Smith & Topin, 2017, "Super-Convergence").

    From ``peak / div_factor`` up to ``peak`` at step ``int(pct_start * T)``, then down to
    ``peak / (div_factor * final_div_factor)`` at ``T = transition_steps``, constant after:
    :func:`piecewise_interpolate_schedule` ``"cosine"`` with those boundaries (optax).

    Example: ``gx.cosine_onecycle_schedule(10_000, peak_value=0.1)``.
    """
    _check_int("transition_steps", transition_steps, low=1)
    return piecewise_interpolate_schedule(
        "cosine", peak_value / div_factor,
        {int(pct_start * transition_steps): div_factor,
         int(transition_steps): 1.0 / (div_factor * final_div_factor)})


@_recorded
def warmup_constant_schedule(init_value: float, peak_value: float, warmup_steps: int) -> Schedule:
    """Linear warmup from ``init_value`` to ``peak_value`` over ``warmup_steps``, then constant.

    Example: ``gx.warmup_constant_schedule(0.0, 1e-3, warmup_steps=500)``.
    """
    _check_int("warmup_steps", warmup_steps, low=0)
    return linear_schedule(init_value, peak_value, warmup_steps)


@_recorded
def warmup_exponential_decay_schedule(init_value: float, peak_value: float, warmup_steps: int,
                                      transition_steps: int, decay_rate: float, transition_begin: int = 0,
                                      staircase: bool = False, end_value: float | None = None) -> Schedule:
    """Linear warmup from ``init_value`` to ``peak_value`` over ``warmup_steps``, then
    :func:`exponential_decay` from ``peak_value``, its steps counted from the warmup's end.

    Example: ``gx.warmup_exponential_decay_schedule(0.0, 1e-3, 100, 1000, 0.5)``.
    """
    _check_int("warmup_steps", warmup_steps, low=0)
    return join_schedules(
        [linear_schedule(init_value, peak_value, warmup_steps),
         exponential_decay(peak_value, transition_steps, decay_rate, transition_begin, staircase, end_value)],
        [warmup_steps])


@_recorded
def sgdr_schedule(cosine_kwargs: Sequence[dict]) -> Schedule:
    """SGD with warm restarts (Loshchilov & Hutter, 2017): one
    :func:`warmup_cosine_decay_schedule` per dict of ``cosine_kwargs``, each running for its
    ``decay_steps`` and restarting from its own step 0.

    Example: ``gx.sgdr_schedule([dict(init_value=0.0, peak_value=0.1, warmup_steps=10, decay_steps=100)] * 3)``.
    """
    cosine_kwargs = list(cosine_kwargs)
    if not cosine_kwargs:
        raise ValueError("cosine_kwargs must hold at least one dict of warmup_cosine_decay_schedule arguments")
    schedules, boundaries, step = [], [], 0
    for i, kwargs in enumerate(cosine_kwargs):
        if not isinstance(kwargs, dict) or "decay_steps" not in kwargs:
            raise ValueError(f"cosine_kwargs[{i}] must be a dict of warmup_cosine_decay_schedule arguments "
                             f"with decay_steps, got {kwargs!r}")
        schedules.append(warmup_cosine_decay_schedule(**kwargs))
        step += kwargs["decay_steps"]
        boundaries.append(step)
    return join_schedules(schedules, boundaries[:-1])
