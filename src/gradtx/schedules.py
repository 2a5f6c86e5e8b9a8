"""Schedules: pure functions ``step -> value`` (optax's names, arguments and values).

A schedule accepts an int or an integer tensor and returns a float64 0-dim tensor, computed
with tensor ops only, so it runs unchanged under ``torch.compile`` and ``torch.func``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from ._hparams import check

__all__ = ["constant_schedule", "polynomial_schedule", "linear_schedule", "cosine_decay_schedule",
           "warmup_cosine_decay_schedule", "exponential_decay", "piecewise_constant_schedule", "join_schedules"]

Schedule = Callable[[torch.Tensor | int], torch.Tensor]


def _step(count) -> torch.Tensor:
    return torch.as_tensor(count).to(torch.float64)


def _value(x) -> torch.Tensor:
    return torch.as_tensor(x, dtype=torch.float64)


def constant_schedule(value: float) -> Schedule:
    """``f(t) = value``."""

    def schedule(count):
        return _value(value).expand(torch.as_tensor(count).shape).clone()

    return schedule


def polynomial_schedule(init_value: float, end_value: float, power: float, transition_steps: int,
                        transition_begin: int = 0) -> Schedule:
    """``f(t) = (init - end) * (1 - s / transition_steps)^power + end`` with
    ``s = clip(t - transition_begin, 0, transition_steps)``.

    A non-positive ``transition_steps`` gives the constant ``init_value`` (as optax).
    """
    if transition_steps <= 0:
        return constant_schedule(init_value)
    check("transition_begin", transition_begin, low=0)

    def schedule(count):
        s = torch.clamp(_step(count) - transition_begin, 0.0, float(transition_steps))
        frac = 1.0 - s / transition_steps
        return (init_value - end_value) * frac ** power + end_value

    return schedule


def linear_schedule(init_value: float, end_value: float, transition_steps: int,
                    transition_begin: int = 0) -> Schedule:
    """Linear ramp from ``init_value`` to ``end_value`` over ``transition_steps`` steps,
    starting at ``transition_begin``; constant outside."""
    return polynomial_schedule(init_value, end_value, 1, transition_steps, transition_begin)


def cosine_decay_schedule(init_value: float, decay_steps: int, alpha: float = 0.0,
                          exponent: float = 1.0) -> Schedule:
    """``f(t) = init * ((1 - alpha) * c^exponent + alpha)``,
    ``c = (1 + cos(pi * min(t, decay_steps) / decay_steps)) / 2`` (Loshchilov & Hutter, 2017)."""
    if not decay_steps > 0:
        raise ValueError(f"decay_steps must be > 0, got {decay_steps!r}")

    def schedule(count):
        t = torch.clamp(_step(count), max=float(decay_steps))
        cosine = 0.5 * (1.0 + torch.cos(math.pi * t / decay_steps))
        return init_value * ((1.0 - alpha) * cosine ** exponent + alpha)

    return schedule


def warmup_cosine_decay_schedule(init_value: float, peak_value: float, warmup_steps: int, decay_steps: int,
                                 end_value: float = 0.0, exponent: float = 1.0) -> Schedule:
    """Linear warmup from ``init_value`` to ``peak_value`` over ``warmup_steps``, then cosine
    decay to ``end_value`` reached at step ``decay_steps`` (which includes the warmup)."""
    alpha = 0.0 if peak_value == 0 else end_value / peak_value
    return join_schedules(
        [linear_schedule(init_value, peak_value, warmup_steps),
         cosine_decay_schedule(peak_value, max(decay_steps - warmup_steps, 1), alpha, exponent)],
        [warmup_steps])


def exponential_decay(init_value: float, transition_steps: int, decay_rate: float, transition_begin: int = 0,
                      staircase: bool = False, end_value: float | None = None) -> Schedule:
    """``f(t) = init * decay_rate^(s / transition_steps)``, ``s = t - transition_begin``
    (the exponent floored when ``staircase``); ``init`` for ``s <= 0``; bounded by
    ``end_value`` (below when decaying, above when growing) if given."""
    if transition_steps <= 0:
        return constant_schedule(init_value)
    if decay_rate == 0:
        raise ValueError("decay_rate must not be 0")
    check("transition_begin", transition_begin, low=0)

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


def piecewise_constant_schedule(init_value: float, boundaries_and_scales: dict[int, float] | None = None
                                ) -> Schedule:
    """``f(t) = init * prod(scale_b for boundary b <= t)``."""
    items = sorted((boundaries_and_scales or {}).items())
    for boundary, scale_ in items:
        if scale_ < 0:
            raise ValueError(f"boundaries_and_scales scales must be non-negative, got {scale_} at {boundary}")

    def schedule(count):
        t = _step(count)
        value = _value(init_value) * torch.ones_like(t)
        for boundary, scale_ in items:
            value = torch.where(t < boundary, value, value * scale_)
        return value

    return schedule


def join_schedules(schedules: Sequence[Schedule], boundaries: Sequence[int]) -> Schedule:
    """Run ``schedules[i]`` from ``boundaries[i-1]`` on, each seeing steps counted from its
    own start: ``f(t) = schedules[i](t - boundaries[i-1])``."""
    if len(boundaries) != len(schedules) - 1:
        raise ValueError(f"join_schedules needs len(boundaries) == len(schedules) - 1, "
                         f"got {len(boundaries)} and {len(schedules)}")

    def schedule(count):
        t = torch.as_tensor(count)
        value = _value(schedules[0](t))
        for boundary, later in zip(boundaries, schedules[1:]):
            value = torch.where(t < boundary, value, _value(later(t - boundary)))
        return value

    return schedule
