"""Schedules against their closed forms, written here independently with Python floats.

Each schedule is evaluated at every step of a range covering its boundaries (one before,
on, one after) and at huge steps, called both with a 0-dim int32 tensor (as transforms
call it) and with a Python int.
"""

from __future__ import annotations

import math

import pytest
import torch

import gradtx as gx

INT32_MAX = 2**31 - 1
HUGE = [10**6, 10**9, INT32_MAX]


def _pow(base: float, exponent: float) -> float:
    try:
        return base**exponent
    except OverflowError:
        return math.inf


# --- closed forms ----------------------------------------------------------------------------


def poly(init, end, power, steps, begin=0):
    def f(t):
        if steps <= 0:
            return init
        s = min(max(t - begin, 0), steps)
        return (init - end) * (1 - s / steps) ** power + end
    return f


def cosine(init, steps, alpha=0.0, exponent=1.0):
    def f(t):
        s = min(t, steps)
        c = 0.5 * (1 + math.cos(math.pi * s / steps))
        return init * ((1 - alpha) * c**exponent + alpha)
    return f


def warmup_cosine(init, peak, warmup, decay, end=0.0, exponent=1.0):
    def f(t):
        if t < warmup:
            return init + (peak - init) * t / warmup
        s = min(t - warmup, decay - warmup)
        c = 0.5 * (1 + math.cos(math.pi * s / (decay - warmup)))
        return end + (peak - end) * c**exponent
    return f


def expo(init, steps, rate, begin=0, staircase=False, end=None):
    def f(t):
        s = t - begin
        if steps <= 0 or s <= 0:
            value = init
        else:
            p = s // steps if staircase else s / steps
            value = init * _pow(rate, p)
        if end is not None:
            value = max(value, end) if rate < 1 else min(value, end)
        return value
    return f


def piecewise_constant(init, bs):
    def f(t):
        value = init
        for b, s in sorted(bs.items()):
            if t >= b:
                value *= s
        return value
    return f


def knots_interp(knots, kind):
    """Interpolate through ``[(step, value), ...]`` (first step 0); 0 before, last value after."""
    def f(t):
        if t < knots[0][0]:
            return 0.0
        if t >= knots[-1][0]:
            return knots[-1][1]
        for (b0, v0), (b1, v1) in zip(knots, knots[1:]):
            if b0 <= t < b1:
                pct = (t - b0) / max(b1 - b0, 1)
                if kind == "linear":
                    return v0 + (v1 - v0) * pct
                return v1 + (v0 - v1) * (1 + math.cos(math.pi * pct)) / 2
        raise AssertionError
    return f


def warmup_constant(init, peak, warmup):
    def f(t):
        return init if warmup <= 0 else (init + (peak - init) * min(t, warmup) / warmup)
    return f


def warmup_expo(init, peak, warmup, steps, rate, begin=0, staircase=False, end=None):
    decay = expo(peak, steps, rate, begin, staircase, end)

    def f(t):
        return init + (peak - init) * t / warmup if t < warmup else decay(t - warmup)
    return f


def sgdr(cycles):
    def f(t):
        start = 0
        for i, kw in enumerate(cycles):
            if t < start + kw["decay_steps"] or i == len(cycles) - 1:
                return warmup_cosine(kw["init_value"], kw["peak_value"], kw["warmup_steps"], kw["decay_steps"],
                                     kw.get("end_value", 0.0), kw.get("exponent", 1.0))(t - start)
            start += kw["decay_steps"]
        raise AssertionError
    return f


SGDR_CYCLES = [dict(init_value=0.0, peak_value=1.0, warmup_steps=3, decay_steps=10),
               dict(init_value=0.1, peak_value=0.5, warmup_steps=2, decay_steps=7, end_value=0.05),
               dict(init_value=0.0, peak_value=0.25, warmup_steps=0, decay_steps=5, exponent=2.0)]

CASES = {
    "constant": (lambda: gx.constant_schedule(0.3), lambda t: 0.3, range(5)),
    "polynomial": (lambda: gx.polynomial_schedule(1.0, 0.01, 2, 100, transition_begin=5),
                   poly(1.0, 0.01, 2, 100, 5), [0, 4, 5, 6, 50, 104, 105, 106, 110]),
    "polynomial_no_steps": (lambda: gx.polynomial_schedule(1.0, 0.01, 2, 0), poly(1.0, 0.01, 2, 0), [0, 1, 9]),
    "linear": (lambda: gx.linear_schedule(0.5, 2.5, 8), poly(0.5, 2.5, 1, 8), range(12)),
    "linear_begin": (lambda: gx.linear_schedule(1.0, 0.0, 4, transition_begin=3), poly(1.0, 0.0, 1, 4, 3),
                     range(10)),
    "cosine_decay": (lambda: gx.cosine_decay_schedule(2.0, 10), cosine(2.0, 10), range(14)),
    "cosine_decay_alpha_exponent": (lambda: gx.cosine_decay_schedule(2.0, 10, alpha=0.1, exponent=3.0),
                                    cosine(2.0, 10, 0.1, 3.0), range(14)),
    "warmup_cosine_decay": (lambda: gx.warmup_cosine_decay_schedule(0.1, 1.0, 4, 14, end_value=0.2),
                            warmup_cosine(0.1, 1.0, 4, 14, 0.2), range(18)),
    "warmup_cosine_decay_no_warmup": (lambda: gx.warmup_cosine_decay_schedule(0.1, 1.0, 0, 6, exponent=2.0),
                                      warmup_cosine(0.1, 1.0, 0, 6, 0.0, 2.0), range(9)),
    "exponential_decay": (lambda: gx.exponential_decay(1.0, 5, 0.5), expo(1.0, 5, 0.5), range(13)),
    "exponential_decay_begin_staircase": (lambda: gx.exponential_decay(3.0, 4, 0.5, transition_begin=2,
                                                                       staircase=True),
                                          expo(3.0, 4, 0.5, 2, True), range(16)),
    "exponential_decay_end_value": (lambda: gx.exponential_decay(1.0, 2, 0.5, end_value=0.1),
                                    expo(1.0, 2, 0.5, end=0.1), range(12)),
    "exponential_growth_end_value": (lambda: gx.exponential_decay(1.0, 3, 2.0, transition_begin=1, end_value=5.0),
                                     expo(1.0, 3, 2.0, 1, end=5.0), range(12)),
    "exponential_decay_no_steps": (lambda: gx.exponential_decay(1.0, 0, 0.5), expo(1.0, 0, 0.5), [0, 5]),
    "piecewise_constant": (lambda: gx.piecewise_constant_schedule(0.1, {3: 0.5, 7: 0.1, 5: 2.0}),
                           piecewise_constant(0.1, {3: 0.5, 7: 0.1, 5: 2.0}), range(10)),
    "piecewise_constant_none": (lambda: gx.piecewise_constant_schedule(0.7), lambda t: 0.7, [0, 3]),
    "join_schedules": (lambda: gx.join_schedules([gx.constant_schedule(1.0), gx.linear_schedule(2.0, 0.0, 10),
                                                  gx.constant_schedule(5.0)], [3, 20]),
                       lambda t: 1.0 if t < 3 else (2.0 - 0.2 * min(t - 3, 10) if t < 20 else 5.0), range(24)),
    "piecewise_interpolate_linear": (lambda: gx.piecewise_interpolate_schedule("linear", 1.0, {8: 0.01, 4: 0.1}),
                                     knots_interp([(0, 1.0), (4, 0.1), (8, 0.001)], "linear"), range(-1, 11)),
    "piecewise_interpolate_cosine": (lambda: gx.piecewise_interpolate_schedule("cosine", 2.0, {3: 3.0, 10: 0.5}),
                                     knots_interp([(0, 2.0), (3, 6.0), (10, 3.0)], "cosine"), range(-1, 13)),
    "piecewise_interpolate_none": (lambda: gx.piecewise_interpolate_schedule("linear", 0.4),
                                   lambda t: 0.4 if t >= 0 else 0.0, [-1, 0, 5]),
    "linear_onecycle": (lambda: gx.linear_onecycle_schedule(20, 1.0, pct_start=0.25, pct_final=0.75,
                                                            div_factor=10.0, final_div_factor=100.0),
                        knots_interp([(0, 0.1), (5, 1.0), (15, 0.1), (20, 1e-3)], "linear"), range(24)),
    "cosine_onecycle": (lambda: gx.cosine_onecycle_schedule(30, 2.0),  # pct_start 0.3 -> 9; 25, 1e4
                        knots_interp([(0, 2.0 / 25), (9, 2.0), (30, 2.0 / 25e4)], "cosine"), range(34)),
    "warmup_constant": (lambda: gx.warmup_constant_schedule(0.0, 0.3, 6), warmup_constant(0.0, 0.3, 6), range(9)),
    "warmup_exponential_decay": (lambda: gx.warmup_exponential_decay_schedule(0.0, 1.0, 4, 3, 0.5,
                                                                              transition_begin=2, end_value=0.2),
                                 warmup_expo(0.0, 1.0, 4, 3, 0.5, 2, False, 0.2), range(20)),
    "warmup_exponential_decay_staircase": (lambda: gx.warmup_exponential_decay_schedule(0.5, 1.0, 2, 3, 0.1,
                                                                                        staircase=True),
                                           warmup_expo(0.5, 1.0, 2, 3, 0.1, 0, True), range(14)),
    "sgdr": (lambda: gx.sgdr_schedule(SGDR_CYCLES), sgdr(SGDR_CYCLES), range(26)),
}


def _check(schedule, closed, t, as_tensor):
    count = torch.tensor(t, dtype=torch.int32) if as_tensor else t
    got = schedule(count)
    want = closed(t)
    got_t = torch.as_tensor(got)
    assert got_t.dim() == 0, f"step {t}: not 0-dim"
    assert got_t.dtype == torch.float64, f"step {t}: dtype {got_t.dtype}"
    if math.isinf(want):
        assert float(got_t) == want, f"step {t}: {float(got_t)} != {want}"
    else:
        assert float(got_t) == pytest.approx(want, rel=1e-12, abs=1e-15), f"step {t} ({type(count).__name__})"


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("as_tensor", [True, False], ids=["int32_tensor", "python_int"])
def test_matches_closed_form(name, as_tensor):
    build, closed, steps = CASES[name]
    schedule = build()
    for t in list(steps) + HUGE:
        _check(schedule, closed, t, as_tensor)
    if not as_tensor:  # beyond int32: a Python int is still fine
        _check(schedule, closed, 10**12, as_tensor)


def test_optax_documented_values():
    """Values printed in optax's docstrings (an external reference for the interpolation rule)."""
    sched = gx.piecewise_interpolate_schedule("linear", 1.0, {4: 0.1, 8: 0.01})
    for step, want in [(0, 1.0), (2, 0.55), (4, 0.1), (6, 0.0505), (8, 0.001), (10, 0.001)]:
        assert float(sched(step)) == pytest.approx(want, rel=1e-12)
    poly_ = gx.polynomial_schedule(1.0, 0.01, transition_steps=100, transition_begin=5, power=2)
    for step, want in [(0, 1.0), (5, 1.0), (6, 0.9803), (104, 0.0101), (105, 0.01), (110, 0.01)]:
        assert float(poly_(step)) == pytest.approx(want, abs=5e-5)
    pc = gx.piecewise_constant_schedule(1.0, {100: 0.1, 200: 0.01})
    assert [float(pc(t)) for t in (50, 150, 250)] == pytest.approx([1.0, 0.1, 0.001], rel=1e-12)


def test_schedule_drives_a_transform():
    """scale_by_lr with a schedule uses f(0), f(1), ... at successive steps (int32 counter)."""
    sched = gx.warmup_cosine_decay_schedule(0.0, 1.0, 2, 6)
    closed = warmup_cosine(0.0, 1.0, 2, 6)
    tx = gx.scale_by_lr(sched)
    g = {"w": torch.ones(2, dtype=torch.float64)}
    state = tx.init(g)
    for t in range(8):
        u, state = tx.update(g, state)
        assert float(u["w"][0]) == pytest.approx(-closed(t), rel=1e-12, abs=1e-15)


def test_compiles_and_vmaps():
    sched = gx.warmup_exponential_decay_schedule(0.0, 1.0, 4, 3, 0.5)
    steps = torch.arange(12, dtype=torch.int32)
    closed = warmup_expo(0.0, 1.0, 4, 3, 0.5)
    got = torch.func.vmap(sched)(steps)
    torch.testing.assert_close(got, torch.tensor([closed(t) for t in range(12)], dtype=torch.float64))


BAD = [
    (lambda: gx.cosine_decay_schedule(1.0, 0), "decay_steps"),
    (lambda: gx.cosine_decay_schedule(1.0, "10"), "decay_steps"),
    (lambda: gx.warmup_cosine_decay_schedule(0.0, 1.0, 10, 10), "decay_steps"),
    (lambda: gx.warmup_cosine_decay_schedule(0.0, 1.0, -1, 10), "warmup_steps"),
    (lambda: gx.exponential_decay(1.0, 10, 0.0), "decay_rate"),
    (lambda: gx.exponential_decay(1.0, 10, 0.5, transition_begin=-1), "transition_begin"),
    (lambda: gx.exponential_decay(1.0, None, 0.5), "transition_steps"),
    (lambda: gx.polynomial_schedule(1.0, 0.0, 1, 10, transition_begin=-2), "transition_begin"),
    (lambda: gx.linear_schedule(1.0, 0.0, "10"), "transition_steps"),
    (lambda: gx.piecewise_constant_schedule(1.0, {5: -0.1}), "boundaries_and_scales"),
    (lambda: gx.piecewise_interpolate_schedule("quadratic", 1.0, {5: 0.1}), "interpolate_type"),
    (lambda: gx.piecewise_interpolate_schedule("linear", 1.0, {5: -0.1}), "boundaries_and_scales"),
    (lambda: gx.join_schedules([gx.constant_schedule(1.0), gx.constant_schedule(2.0)], [1, 2]), "boundaries"),
    (lambda: gx.linear_onecycle_schedule(0, 1.0), "transition_steps"),
    (lambda: gx.cosine_onecycle_schedule(-5, 1.0), "transition_steps"),
    (lambda: gx.warmup_constant_schedule(0.0, 1.0, -3), "warmup_steps"),
    (lambda: gx.warmup_exponential_decay_schedule(0.0, 1.0, 5, 10, 0.0), "decay_rate"),
    (lambda: gx.sgdr_schedule([]), "cosine_kwargs"),
    (lambda: gx.sgdr_schedule([dict(init_value=0.0, peak_value=1.0, warmup_steps=1)]), "cosine_kwargs"),
]


@pytest.mark.parametrize("build, argument", BAD, ids=[f"{i}-{a}" for i, (_, a) in enumerate(BAD)])
def test_bad_arguments_raise_naming_the_argument(build, argument):
    with pytest.raises(ValueError, match=argument):
        build()


def test_every_schedule_is_covered():
    names = {n for n in gx.schedules.__all__}
    built = set()
    for build, _, _ in CASES.values():
        code = build.__code__
        built.update(n for n in code.co_names if n in names)
    assert names <= built, f"schedules without a closed-form test: {sorted(names - built)}"
