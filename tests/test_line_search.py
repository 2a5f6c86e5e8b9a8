"""Line searches and the evaluation builders.

- optax's two searches against optax in float64 (jax x64): the same iterates to 1e-7 relative
  after a steepest-descent direction: ``scale_by_zoom_linesearch`` (both initial guesses) on a
  logistic regression and 2-d Rosenbrock (not the quadratic: see ZOOM_CASES),
  ``scale_by_backtracking_linesearch`` (with and without ``store_grad``) on an ill-conditioned
  quadratic and the logistic regression.
- The accepted steps of ``scale_by_backtracking`` are the first of ``init beta^k`` meeting the
  Armijo condition (computed here from the loss alone); ``scale_by_strong_wolfe``'s meet both
  strong Wolfe conditions; ``scale_by_adaptive_backtracking`` follows torchzero's rule written
  out here.
- A missing evaluation argument raises naming it; the evaluation builders write no ``.grad``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from search_problems import jax_x64, problems_jax, problems_torch, run_gradtx, run_optax

import gradtx as gx

# Not on the quadratic: there the cubic through three points of the parabola has a leading
# coefficient of pure round-off, and optax's interpolated trial (taken while that coefficient is
# not exactly 0) is round-off noise; gradtx takes the quadratic interpolant when it is exactly 0.
ZOOM_CASES = {"logistic": 10, "rosenbrock2": 30}


def _sd(optax, search):
    return optax.chain(optax.sgd(1.0), search)


@pytest.mark.parametrize("name", [pytest.param("logistic", marks=pytest.mark.slow), "rosenbrock2"])
def test_zoom_linesearch_matches_optax(name):
    jax = jax_x64()
    import optax

    fn, x0 = problems_torch()[name]
    steps = ZOOM_CASES[name]
    for guess in ("keep", "one"):
        want = run_optax(jax, _sd(optax, optax.scale_by_zoom_linesearch(15, initial_guess_strategy=guess)),
                         problems_jax()[name], x0, steps)
        got = run_gradtx(gx.chain(gx.scale(-1.0), gx.scale_by_zoom_linesearch(15, initial_guess_strategy=guess)),
                         fn, x0, steps)
        np.testing.assert_allclose(np.stack(got), np.stack(want), rtol=1e-7, atol=1e-10, err_msg=f"{name}, {guess}")


@pytest.mark.parametrize("name", ["quadratic", pytest.param("logistic", marks=pytest.mark.slow)])
def test_backtracking_linesearch_matches_optax(name):
    jax = jax_x64()
    import optax

    fn, x0 = problems_torch()[name]
    for kwargs in ({}, {"store_grad": True, "decrease_factor": 0.5, "max_learning_rate": 0.5}):
        want = run_optax(jax, _sd(optax, optax.scale_by_backtracking_linesearch(20, **kwargs)), problems_jax()[name],
                         x0, 20)
        states = []
        got = run_gradtx(gx.chain(gx.scale(-1.0), gx.scale_by_backtracking_linesearch(20, **kwargs)), fn, x0, 20,
                         states)
        np.testing.assert_allclose(np.stack(got), np.stack(want), rtol=1e-7, atol=1e-10, err_msg=f"{name} {kwargs}")
        if kwargs:  # the kept gradient is the gradient at the new point
            _, grad = gx.make_value_and_grad_fn(fn)({"x": torch.tensor(got[-1])})
            torch.testing.assert_close(states[-1][1].grad["x"], grad["x"], rtol=1e-12, atol=1e-14)


def _line(fn, x):
    """(value, gradient, direction -gradient) at x."""
    value, grad = gx.make_value_and_grad_fn(fn)({"x": x})
    return float(value), grad["x"], -grad["x"]


@pytest.mark.parametrize("name", ["quadratic", "rosenbrock2", "logistic"])
def test_backtracking_takes_the_first_armijo_step(name):
    fn, x0 = problems_torch()[name]
    init, beta, c = 1.0, 0.5, 1e-4
    tx = gx.chain(gx.scale(-1.0), gx.scale_by_backtracking(init, beta, c))
    params = {"x": torch.tensor(x0)}
    state = tx.init(params)
    for _ in range(10):
        f0, g, d = _line(fn, params["x"])
        t = init
        while float(fn({"x": params["x"] + t * d})) > f0 + c * t * float(g @ d):
            t *= beta
        extra = gx.evaluation_args(fn, params)
        updates, state = tx.update(extra["grad"], state, params, **extra)
        assert float(state[1].step_size) == t
        torch.testing.assert_close(updates["x"], t * d, rtol=1e-15, atol=0)
        params = gx.apply_updates(params, updates)


@pytest.mark.parametrize("name", ["quadratic", "rosenbrock2", "logistic"])
def test_strong_wolfe_steps_meet_both_conditions(name):
    fn, x0 = problems_torch()[name]
    c1, c2 = 1e-4, 0.9
    for tx in (gx.chain(gx.scale(-1.0), gx.scale_by_strong_wolfe(c1=c1, c2=c2)),
               gx.chain(gx.scale_by_lbfgs(), gx.scale(-1.0), gx.scale_by_strong_wolfe(c1=c1, c2=c2))):
        params = {"x": torch.tensor(x0)}
        state = tx.init(params)
        start = float(fn(params))
        for _ in range(15):
            f0, g, _ = _line(fn, params["x"])
            if float(g.norm()) < 1e-9:
                break
            extra = gx.evaluation_args(fn, params)
            updates, state = tx.update(extra["grad"], state, params, **extra)
            t, u = float(state[-1].step_size), updates["x"]
            assert t > 0
            d = u / t
            f1, g1, _ = _line(fn, params["x"] + u)
            assert f1 <= f0 + c1 * t * float(g @ d) + 1e-12 * abs(f0)
            assert abs(float(g1 @ d)) <= c2 * abs(float(g @ d)) + 1e-12
            params = gx.apply_updates(params, updates)
        assert float(fn(params)) < start


def test_adaptive_backtracking_follows_torchzeros_rule():
    fn, x0 = problems_torch()["rosenbrock2"]
    init, beta, c, nplus = 1.0, 0.5, 1e-4, 2.0
    tx = gx.chain(gx.scale(-1.0), gx.scale_by_adaptive_backtracking(init, beta, c, max_steps=20, nplus=nplus))
    params = {"x": torch.tensor(x0)}
    state = tx.init(params)
    scale, b = 1.0, 1.0  # the rule, written out
    for _ in range(25):
        f0, g, d = _line(fn, params["x"])
        t0 = t = init * scale
        for _ in range(20):
            if float(fn({"x": params["x"] + t * d})) <= f0 + c * t * float(g @ d):
                break
            t *= beta * b
        else:
            t = None
        if t is None:
            t, b = 0.0, b / 1.5
        else:
            scale = scale * nplus if t == t0 else t / (beta * b) / init
            b = min(1.0, b * math.sqrt(1.5))
        extra = gx.evaluation_args(fn, params)
        updates, state = tx.update(extra["grad"], state, params, **extra)
        assert float(state[1].step_size) == t
        assert float(state[1].initial_scale) == pytest.approx(scale, rel=1e-15)
        params = gx.apply_updates(params, updates)
    assert float(fn(params)) < float(fn({"x": torch.tensor(x0)}))


@pytest.mark.parametrize("build,needs", [
    (lambda: gx.scale_by_backtracking(), "value_fn"),
    (lambda: gx.scale_by_adaptive_backtracking(), "value_fn"),
    (lambda: gx.scale_by_strong_wolfe(), "value_and_grad_fn"),
    (lambda: gx.scale_by_backtracking_linesearch(10), "value_fn"),
    (lambda: gx.scale_by_zoom_linesearch(10), "value_and_grad_fn"),
    (lambda: gx.scale_by_more_thuente(), "value_and_grad_fn"),
])
def test_a_missing_evaluation_argument_is_named(build, needs):
    tx = build()
    params = {"x": torch.ones(3)}
    state = tx.init(params)
    grads = {"x": torch.ones(3)}
    with pytest.raises(ValueError, match=needs):
        tx.update(grads, state, params, value=torch.tensor(3.0), grad=grads)
    if needs == "value_fn":  # no loss at params and nothing to compute it
        with pytest.raises(ValueError, match="value and grad"):
            tx.update(grads, state, params, value_fn=lambda p: (p["x"] ** 2).sum())
    with pytest.raises(ValueError, match="needs params"):
        tx.update(grads, state, value=torch.tensor(3.0), grad=grads, value_fn=lambda p: (p["x"] ** 2).sum())
    # value and grad are computed with value_and_grad_fn when not given
    vg = gx.make_value_and_grad_fn(lambda p: (p["x"] ** 2).sum())
    updates, _ = tx.update({"x": -torch.ones(3)}, state, params, value_and_grad_fn=vg)
    assert float((params["x"] + updates["x"]).pow(2).sum()) < 3.0


def test_complex_params_search_as_their_real_views():
    """A complex leaf is searched as its real view: Re <g, d> is the slope."""
    gen = torch.Generator().manual_seed(0)
    z0 = torch.randn(4, generator=gen, dtype=torch.complex128)
    target = torch.randn(4, generator=gen, dtype=torch.complex128)

    def loss(p):
        return ((p["z"] - target).abs() ** 2).sum() + ((p["z"] - target).real ** 4).sum()

    def loss_real(p):
        return loss({"z": torch.view_as_complex(p["z"])})

    for search in (gx.scale_by_zoom_linesearch(10), gx.scale_by_strong_wolfe(), gx.scale_by_backtracking(),
                   gx.scale_by_more_thuente()):
        tx = gx.chain(gx.scale(-1.0), search)
        zc, zr = {"z": z0}, {"z": torch.view_as_real(z0).clone()}
        sc, sr = tx.init(zc), tx.init(zr)
        for _ in range(5):
            ec, er = gx.evaluation_args(loss, zc, backend="autograd"), gx.evaluation_args(loss_real, zr)
            # torch's complex gradient is conj(df/dz*)... its real view is the real gradient
            uc, sc = tx.update(ec["grad"], sc, zc, **ec)
            ur, sr = tx.update(er["grad"], sr, zr, **er)
            torch.testing.assert_close(torch.view_as_real(uc["z"]), ur["z"], rtol=1e-10, atol=1e-13)
            zc, zr = gx.apply_updates(zc, uc), gx.apply_updates(zr, ur)


def test_evaluation_builders_are_pure_and_match_autograd():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    model.double().eval()
    model[1].running_mean.fill_(0.3)  # buffers are used
    x, y = torch.randn(6, 3, dtype=torch.float64), torch.randn(6, 1, dtype=torch.float64)
    loss_fn = gx.module_loss_fn(model, lambda out: ((out - y) ** 2).mean(), x)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    for backend in ("func", "autograd"):
        value, grads = gx.make_value_and_grad_fn(loss_fn, backend=backend)(params)
        assert all(p.grad is None for p in model.parameters()), "a .grad was written"
        loss = ((model(x) - y) ** 2).mean()
        want = torch.autograd.grad(loss, list(model.parameters()))
        torch.testing.assert_close(value, loss.detach())
        for (k, g), w in zip(grads.items(), want):
            assert g.dtype == params[k].dtype
            torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-14)
    # other params, not the model's
    shifted = {k: v + 0.1 for k, v in params.items()}
    assert float(gx.make_value_fn(loss_fn)(shifted)) != float(gx.make_value_fn(loss_fn)(params))
    # composes with torch.func: per-example values under vmap
    per_example = torch.func.vmap(lambda xi: gx.make_value_fn(lambda p: (p["w"] * xi).sum())({"w": torch.ones(3)}))
    torch.testing.assert_close(per_example(x), x.sum(1))
    with pytest.raises(ValueError, match="scalar"):
        gx.make_value_fn(lambda p: p["w"])({"w": torch.ones(3)})
    with pytest.raises(ValueError, match="backend"):
        gx.make_value_and_grad_fn(loss_fn, backend="jax")


@pytest.mark.parametrize("search", [lambda: gx.scale_by_zoom_linesearch(15), lambda: gx.scale_by_strong_wolfe(),
                                    lambda: gx.scale_by_more_thuente()], ids=["zoom", "strong_wolfe", "more_thuente"])
def test_value_and_grad_from_state_reuses_the_searchs_evaluation(search):
    fn, x0 = problems_torch()["quadratic"]
    vg = gx.make_value_and_grad_fn(fn)
    calls = []

    def counted(p):
        calls.append(1)
        return vg(p)

    tx = gx.chain(gx.scale(-1.0), search())
    params = {"x": torch.tensor(x0)}
    state = tx.init(params)
    from_state = gx.value_and_grad_from_state(counted)
    for _ in range(5):
        value, grad = from_state(params, state)
        want_value, want_grad = vg(params)
        torch.testing.assert_close(grad["x"], want_grad["x"], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(torch.as_tensor(value, dtype=torch.float64), want_value, rtol=1e-12, atol=1e-14)
        updates, state = tx.update(grad, state, params, value=value, grad=grad, value_and_grad_fn=vg)
        params = gx.apply_updates(params, updates)
    assert len(calls) == 1  # only before the first step


def test_strong_wolfe_approximate_decrease_steps_where_the_loss_change_is_below_round_off():
    """Every trial's loss reads 1e-12 above f(p) (round-off larger than the true decrease,
    2e-14), the gradient is exact: the Armijo test fails at every trial and the search
    returns t = 0; with approx_dec_rtol the slopes show the decrease (Hager & Zhang's
    approximate Wolfe conditions) and the unit step, onto the minimiser, is taken."""
    x = torch.full((4,), 1e-7, dtype=torch.float64)

    def value_and_grad_fn(p):
        return 1.0 + 0.5 * p["x"].dot(p["x"]) + 1e-12, {"x": p["x"].clone()}

    value = 1.0 + 0.5 * x.dot(x)
    for rtol, want in ((None, 0.0), (1e-6, 1.0)):
        tx = gx.chain(gx.scale(-1.0), gx.scale_by_strong_wolfe(approx_dec_rtol=rtol))
        params = {"x": x}
        updates, state = tx.update({"x": x.clone()}, tx.init(params), params, value=value, grad={"x": x.clone()},
                                   value_and_grad_fn=value_and_grad_fn)
        assert float(state[-1].step_size) == want
        torch.testing.assert_close(updates["x"], -want * x, rtol=0, atol=0)
