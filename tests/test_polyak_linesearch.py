"""Polyak's step size as a line search's first trial (issue 11 §2): ``gx.polyak_linesearch``
and the chain it names, against torchzero's ``PolyakStepSize`` + ``Backtracking`` (float64) and
against the rule written out here."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import assert_resume_bit_exact, leaf_copy
from search_problems import problems_torch, quadratic_data, run_gradtx

import gradtx as gx


def _problem(name):
    """(loss, start, f_min): the quadratic's minimum is below 0, so its f_min is the exact one."""
    fn, x0 = problems_torch()[name]
    f_min = 0.0
    if name == "quadratic":
        a, b = quadratic_data()
        f_min = float(-0.5 * b @ np.linalg.solve(a, b))
    return fn, x0, f_min


def _torchzero_iterates(fn, x0, f_min, steps):
    tz = pytest.importorskip("torchzero")
    x = torch.tensor(x0, requires_grad=True)
    opt = tz.Optimizer([x], tz.m.PolyakStepSize(f_star=f_min), tz.m.Backtracking(maxiter=25, adaptive=False))

    def closure(backward=True):
        loss = fn({"x": x})
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

    out = []
    for _ in range(steps):
        opt.step(closure)
        out.append(x.detach().numpy().copy())
    return out


@pytest.mark.parametrize("name", ["quadratic", "rosenbrock2", "rosenbrock10", "logistic"])
def test_polyak_linesearch_matches_torchzero(name):
    fn, x0, f_min = _problem(name)
    want = _torchzero_iterates(fn, x0, f_min, 30)
    got = run_gradtx(gx.polyak_linesearch(f_min=f_min), fn, x0, 30)
    np.testing.assert_allclose(np.stack(got), np.stack(want), rtol=1e-7, atol=1e-9, err_msg=name)
    assert float(fn({"x": torch.tensor(got[-1])})) < float(fn({"x": torch.tensor(x0)}))


@pytest.mark.parametrize("name", ["quadratic", "rosenbrock2"])
def test_the_search_starts_from_the_polyak_step(name):
    fn, x0, f_min = _problem(name)
    beta, c = 0.5, 1e-4
    tx = gx.polyak_linesearch(f_min=f_min, linesearch=gx.scale_by_backtracking(beta=beta, c=c))
    params = {"x": torch.tensor(x0)}
    state = tx.init(params)
    for _ in range(15):
        x = params["x"].clone().requires_grad_(True)
        f = fn({"x": x})
        (g,) = torch.autograd.grad(f, x)
        f0 = float(f.detach())
        d = -(f0 - f_min) / float(g @ g) * g  # the Polyak step, written out
        t = 1.0
        while float(fn({"x": params["x"] + t * d})) > f0 + c * t * float(g @ d):
            t *= beta
        extra = gx.evaluation_args(fn, params)
        updates, state = tx.update(extra["grad"], state, params, **extra)
        assert float(state[2].step_size) == t
        torch.testing.assert_close(updates["x"], t * d, rtol=1e-13, atol=1e-300)
        params = gx.apply_updates(params, updates)


def test_polyak_linesearch_with_strong_wolfe_descends():
    fn, x0, _ = _problem("rosenbrock2")
    got = run_gradtx(gx.polyak_linesearch(linesearch=gx.scale_by_strong_wolfe()), fn, x0, 40)
    losses = [float(fn({"x": torch.tensor(x)})) for x in [x0, *got]]
    assert all(b <= a for a, b in zip(losses, losses[1:]))
    assert losses[-1] < 0.25 * losses[0]


def test_polyak_linesearch_needs_value_and_a_transformation():
    tx = gx.polyak_linesearch()
    params = {"x": torch.ones(3)}
    with pytest.raises(ValueError, match="value"):
        tx.update({"x": torch.ones(3)}, tx.init(params), params)
    with pytest.raises(TypeError, match="linesearch"):
        gx.polyak_linesearch(linesearch="backtracking")
    with pytest.raises(ValueError, match="f_min"):
        gx.polyak_linesearch(f_min=float("nan"))


def _loss(p):
    w, b = p["w"], p["b"]
    return 100 * (w[1] - w[0] ** 2) ** 2 + (1 - w[0]) ** 2 + (b ** 2).sum() + 0.1 * (b ** 4).sum()


def test_polyak_linesearch_under_the_optimizer_gives_the_functional_trajectory_and_round_trips():
    d = torch.float64
    init = {"w": torch.tensor([-1.2, 1.0], dtype=d), "b": torch.tensor([0.5, -0.3, 0.2], dtype=d)}
    # checkpoint after three steps: a fresh optimizer from the saved state continues the same
    got = assert_resume_bit_exact(lambda leaves: gx.Optimizer(list(leaves.values()), gx.polyak_linesearch()),
                                  leaf_copy(init), lambda p, t: _loss(p), steps=5, split=3, closure="backward")
    params = dict(init)
    tx = gx.polyak_linesearch()
    state = tx.init(params)
    for step in range(5):
        extra = gx.evaluation_args(_loss, params)
        updates, state = tx.update(extra["grad"], state, params, **extra)
        params = gx.apply_updates(params, updates)
        torch.testing.assert_close(got[step]["w"], params["w"], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(got[step]["b"], params["b"], rtol=1e-10, atol=1e-12)
