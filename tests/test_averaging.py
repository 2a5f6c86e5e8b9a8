"""Averaging (uniform, windowed, weighted, median), MARS correction and the adaptive heavy ball
against torchzero 0.4.4 (the oracle: its modules run as a torchzero optimizer on the same
problem), and against the rules written out below; float64, rtol 1e-10.
"""

from __future__ import annotations

import pytest
import torch
from conftest import MLPProblem, assert_resume_bit_exact, assert_same

import gradtx as gx

tz = pytest.importorskip("torchzero")

TOL = dict(rtol=1e-10, atol=1e-12)


def _functional(problem, tx, steps, with_value=False):
    params = {k: v.clone() for k, v in problem.params0.items()}
    state = tx.init(params)
    out = []
    for t in range(steps):
        leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        loss = problem.loss(leaves, t)
        grads = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))
        extra = {"value": loss.detach()} if with_value else {}
        updates, state = tx.update(grads, state, params, **extra)
        params = gx.apply_updates(params, updates)
        out.append(params)
    return out


def _torchzero(problem, modules, steps):
    params = problem.leaf_params()
    opt = tz.Optimizer(list(params.values()), *modules)
    out = []
    for t in range(steps):
        def closure(backward=True, t=t):
            loss = problem.loss(params, t)
            if backward:
                opt.zero_grad()
                loss.backward()
            return loss

        opt.step(closure)
        out.append({k: v.detach().clone() for k, v in params.items()})
    return out


def _same(a, b, tol=TOL):
    for t, (x, y) in enumerate(zip(a, b)):
        for k in y:
            torch.testing.assert_close(x[k], y[k], **tol, msg=lambda m, t=t, k=k: f"step {t}, {k}: {m}")


@pytest.fixture(scope="module")
def problem():
    return MLPProblem(torch.float64)


# --- averaging ------------------------------------------------------------------------------------


def test_window_average_matches_torchzero(problem):
    _same(_functional(problem, gx.chain(gx.average(window=3), gx.scale_by_lr(0.05)), 12),
          _torchzero(problem, [tz.m.Averaging(3), tz.m.LR(0.05)], 12))


def test_running_average_is_the_mean_of_all_updates():
    tx = gx.average()
    params = {"w": torch.zeros(3, dtype=torch.float64)}
    state = tx.init(params)
    gen = torch.Generator().manual_seed(0)
    seen = []
    for _ in range(7):
        g = {"w": torch.randn(3, generator=gen, dtype=torch.float64)}
        seen.append(g["w"])
        out, state = tx.update(g, state)
        torch.testing.assert_close(out["w"], torch.stack(seen).mean(0), **TOL)


def test_weighted_average_matches_torchzero(problem):
    weights = [0.5, 0.0, 1.0, 2.0]
    _same(_functional(problem, gx.chain(gx.weighted_average(weights), gx.scale_by_lr(0.05)), 12),
          _torchzero(problem, [tz.m.WeightedAveraging(weights), tz.m.LR(0.05)], 12))


def test_median_average_matches_torchzero(problem):
    for window in (3, 4):
        _same(_functional(problem, gx.chain(gx.median_average(window), gx.scale_by_lr(0.05)), 10),
              _torchzero(problem, [tz.m.MedianAveraging(window), tz.m.LR(0.05)], 10))


def test_averages_in_place_give_the_same_numbers():
    gen = torch.Generator().manual_seed(1)
    grads = [{"w": torch.randn(4, 2, generator=gen, dtype=torch.float64), "s": torch.randn((), generator=gen,
                                                                                        dtype=torch.float64)}
             for _ in range(6)]
    for tx in (gx.average(), gx.average(window=2), gx.weighted_average([1.0, 2.0, 3.0]), gx.median_average(4)):
        params = {k: torch.zeros_like(v) for k, v in grads[0].items()}
        s1, s2 = tx.init(params), tx.init(params)
        for g in grads:
            u1, s1 = tx.update(g, s1, params)
            given = {k: v.clone() for k, v in g.items()}
            u2, s2 = tx.update(given, s2, params, inplace=True)
            for k in g:
                assert torch.equal(u1[k], u2[k])
                assert u2[k] is given[k]


def test_averaging_arguments_are_checked():
    with pytest.raises(ValueError, match="window"):
        gx.average(window=0)
    with pytest.raises(ValueError, match="window"):
        gx.median_average(1.5)
    with pytest.raises(ValueError, match="weights"):
        gx.weighted_average([])
    with pytest.raises(ValueError, match="weights"):
        gx.weighted_average([1.0, float("nan")])


# --- MARS correction ------------------------------------------------------------------------------


def test_mars_adamw_matches_torchzero(problem):
    # eps = 0: torchzero's Adam adds eps to the un-debiased sqrt(v) (Kingma & Ba's "efficient" form)
    tx = gx.chain(gx.mars_correction(beta=0.95), gx.scale_by_adam(b1=0.95, b2=0.99, eps=0.0), gx.scale_by_lr(0.01))
    ref = [tz.m.MARSCorrection(beta=0.95), tz.m.Adam(beta1=0.95, beta2=0.99, eps=0.0), tz.m.LR(0.01)]
    _same(_functional(problem, tx, 20), _torchzero(problem, ref, 20))
    # no clipping
    tx = gx.chain(gx.mars_correction(beta=0.9, scaling=0.5, max_norm=None), gx.scale_by_lr(0.01))
    _same(_functional(problem, tx, 10), _torchzero(problem, [tz.m.MARSCorrection(0.9, 0.5, None), tz.m.LR(0.01)], 10))


def test_mars_correction_rule_written_out():
    """c_t = g_t + s b / (1 - b) (g_t - g_{t-1}), each tensor clipped to norm 1 (tensorwise,
    the authors' per-parameter rule)."""
    beta, scaling = 0.9, 0.3
    tx = gx.mars_correction(beta, scaling, max_norm=1.0, tensorwise=True)
    gen = torch.Generator().manual_seed(2)
    params = {"a": torch.zeros(5, dtype=torch.float64), "b": torch.zeros(2, 2, dtype=torch.float64)}
    state = tx.init(params)
    prev = None
    for _ in range(4):
        g = {k: torch.randn(v.shape, generator=gen, dtype=torch.float64) * 0.4 for k, v in params.items()}
        out, state = tx.update(g, state, params)
        for k in g:
            c = g[k] if prev is None else g[k] + scaling * beta / (1 - beta) * (g[k] - prev[k])
            n = c.norm()
            want = c / n if n > 1 else c
            torch.testing.assert_close(out[k], want, **TOL)
        prev = g


# --- adaptive heavy ball --------------------------------------------------------------------------


class Quadratic:
    """f(x) = 1/2 (x - x*)^T A (x - x*) over the concatenated leaves, f* = 0."""

    def __init__(self):
        gen = torch.Generator().manual_seed(3)
        m = torch.randn(7, 7, generator=gen, dtype=torch.float64)
        self.a = m @ m.T / 7 + 0.1 * torch.eye(7, dtype=torch.float64)
        self.x_star = torch.randn(7, generator=gen, dtype=torch.float64)
        self.params0 = {"v": torch.zeros(4, dtype=torch.float64), "m": torch.zeros(3, dtype=torch.float64)}

    def loss(self, params, step=0):
        x = torch.cat([params["v"], params["m"]]) - self.x_star
        return 0.5 * x @ self.a @ x

    def leaf_params(self):
        return {k: v.clone().requires_grad_(True) for k, v in self.params0.items()}


def test_adaptive_heavy_ball_matches_torchzero_and_solves_the_quadratic():
    problem = Quadratic()
    tx = gx.chain(gx.scale_by_adaptive_heavy_ball(), gx.scale_by_lr(1.0))
    mine = _functional(problem, tx, 6, with_value=True)
    _same(mine, _torchzero(problem, [tz.m.AdaptiveHeavyBall(), tz.m.LR(1.0)], 6), dict(rtol=1e-8, atol=1e-10))
    # conjugate gradient in disguise: 7 steps reach the minimum of a 7-dim quadratic
    final = _functional(problem, tx, 7, with_value=True)[-1]
    assert float(problem.loss(final)) < 1e-12 * float(problem.loss(problem.params0))


def test_adaptive_heavy_ball_needs_value_and_params():
    tx = gx.scale_by_adaptive_heavy_ball()
    params = {"w": torch.ones(2)}
    state = tx.init(params)
    with pytest.raises(ValueError, match="value"):
        tx.update(params, state, params)
    with pytest.raises(ValueError, match="params"):
        tx.update(params, state, value=torch.tensor(1.0))


def test_mars_under_optimizer_matches_functional_and_resumes(problem):
    def build():
        return gx.chain(gx.mars_correction(0.9), gx.scale_by_adam(), gx.scale_by_lr(0.01))

    functional = _functional(problem, build(), 10)
    got = assert_resume_bit_exact(lambda leaves: gx.Optimizer(list(leaves.values()), build()), problem.leaf_params(),
                                  problem.loss, steps=10, split=5)
    assert_same(got, functional)


# --- clipping and normalising by a moving average ------------------------------------------------------


@pytest.mark.parametrize("tensorwise", [True, False])
@pytest.mark.parametrize("growth", [1.5, None])
def test_clip_and_normalize_by_ema_match_torchzero(problem, tensorwise, growth):
    for mine, theirs in ((gx.clip_norm_by_ema, tz.m.ClipNormByEMA), (gx.normalize_by_ema, tz.m.NormalizeByEMA)):
        tx = gx.chain(mine(0.8, tensorwise=tensorwise, max_ema_growth=growth), gx.scale_by_lr(0.05))
        ref = [theirs(0.8, tensorwise=tensorwise, max_ema_growth=growth), tz.m.LR(0.05)]
        _same(_functional(problem, tx, 12), _torchzero(problem, ref, 12))


def test_clip_value_by_ema_and_normalize_per_tensor_match_torchzero(problem):
    for init in (0.0, 1.0):
        _same(_functional(problem, gx.chain(gx.clip_value_by_ema(0.7, init=init), gx.scale_by_lr(0.05)), 10),
              _torchzero(problem, [tz.m.ClipValueByEMA(0.7, init=init), tz.m.LR(0.05)], 10))
    _same(_functional(problem, gx.chain(gx.normalize_per_tensor(2.0), gx.scale_by_lr(0.01)), 10),
          _torchzero(problem, [tz.m.Normalize(2.0), tz.m.LR(0.01)], 10))


def test_ema_clipping_in_place_gives_the_same_numbers():
    gen = torch.Generator().manual_seed(4)
    grads = [{"w": torch.randn(4, 2, generator=gen, dtype=torch.float64) * (t + 1),
              "s": torch.randn((), generator=gen, dtype=torch.float64)} for t in range(5)]
    for tx in (gx.clip_norm_by_ema(0.5), gx.normalize_by_ema(0.5, tensorwise=False), gx.clip_value_by_ema(0.5, 1.0),
               gx.normalize_per_tensor()):
        params = {k: torch.zeros_like(v) for k, v in grads[0].items()}
        s1, s2 = tx.init(params), tx.init(params)
        for g in grads:
            u1, s1 = tx.update(g, s1, params)
            u2, s2 = tx.update({k: v.clone() for k, v in g.items()}, s2, params, inplace=True)
            for k in g:
                torch.testing.assert_close(u1[k], u2[k], rtol=0, atol=0)


# --- growth clipping --------------------------------------------------------------------------------


class Growing(MLPProblem):
    """The MLP loss scaled by 1.6^t: gradients grow past the default bound (1.5 per step)."""

    def loss(self, params, step):
        return super().loss(params, step) * 1.6 ** step


@pytest.mark.parametrize("kwargs", [dict(), dict(add=0.01, mul=None), dict(add=0.02, mul=1.2, max_decay=None),
                                    dict(mul=1.3, min_value=None)])
def test_clip_value_growth_matches_torchzero(kwargs):
    problem = Growing(torch.float64)
    _same(_functional(problem, gx.chain(gx.clip_value_growth(**kwargs), gx.scale_by_lr(0.05)), 10),
          _torchzero(problem, [tz.m.ClipValueGrowth(**kwargs), tz.m.LR(0.05)], 10))


@pytest.mark.parametrize("kwargs", [dict(), dict(add=0.05, mul=None), dict(add=0.1, mul=1.2, max_decay=None),
                                    dict(tensorwise=False), dict(mul=1.1, tensorwise=False, min_value=None)])
def test_clip_norm_growth_matches_torchzero(kwargs):
    problem = Growing(torch.float64)
    _same(_functional(problem, gx.chain(gx.clip_norm_growth(**kwargs), gx.scale_by_lr(0.05)), 10),
          _torchzero(problem, [tz.m.ClipNormGrowth(**kwargs), tz.m.LR(0.05)], 10))


def test_growth_clipping_bounds_the_growth():
    tx = gx.clip_norm_growth(mul=1.5, max_decay=None)
    params = {"w": torch.zeros(3, dtype=torch.float64)}
    state = tx.init(params)
    norms = []
    for t in range(5):
        out, state = tx.update({"w": torch.full((3,), 3.0 ** t, dtype=torch.float64)}, state)
        norms.append(float(out["w"].norm()))
    for a, b in zip(norms, norms[1:]):
        assert b <= 1.5 * a * (1 + 1e-12)
    with pytest.raises(ValueError, match="add and mul"):
        gx.clip_value_growth(add=None, mul=None)
