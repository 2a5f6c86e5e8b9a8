"""Trust regions on quasi-Newton models (gx.quasi_newton_hessian): every model reaches a
quadratic's minimiser; DFP and SR1 with the dogleg follow N&W Alg. 4.1, their update formulas
and the dogleg (Cauchy point for an indefinite B) written here in numpy, iterate by iterate;
the adapter's trajectory and a bit-exact resume.

torchzero's trust regions are not an oracle here: its ``TrustRegionBase`` retries a refused
step inside one ``step`` (``max_attempts`` closures), its ``LevenbergMarquardt`` adds ``I /
radius`` instead of solving the constrained subproblem and its ``Dogleg`` caps the radius at 2,
so its iterates are of another algorithm; the models' update rules themselves are checked
against torchzero in test_quasi_newton.py."""

from __future__ import annotations

import pickle
from typing import NamedTuple

import numpy as np
import pytest
import torch
from conftest import regression_batch, round_trip, tanh_net

import gradtx as gx
from gradtx.search.quasi_newton import MODELS

N = 5


def _quadratic():
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(N, N, generator=gen, dtype=torch.float64))
    a = q @ torch.diag(torch.tensor([1.0, 1.5, 2.0, 3.0, 4.0], dtype=torch.float64)) @ q.T
    b = torch.linspace(-1, 1, N, dtype=torch.float64)
    return a, b


def _rosen(p):
    x = p["x"]
    return (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2


def _run(tx, fn, x0, steps, gtol=1e-10, record=None):
    p = {"x": torch.as_tensor(x0, dtype=torch.float64).clone()}
    state = tx.init(p)
    for k in range(steps):
        x = p["x"].clone().requires_grad_(True)
        f = fn({"x": x})
        (g,) = torch.autograd.grad(f, x)
        if g.norm() < gtol:
            return p, k, state
        u, state = tx.update({"x": g}, state, p, value=f.detach(), value_fn=fn)
        p = gx.apply_updates(p, u)
        if record is not None:
            record.append((p["x"].clone(), state.radius.clone(), state.model))
    return p, steps, state


@pytest.mark.parametrize("subproblem", ["dogleg", "levenberg_marquardt"])
@pytest.mark.parametrize("method", list(MODELS))
def test_every_model_reaches_the_minimiser_of_a_quadratic(method, subproblem):
    """0.5 x'Ax - b'x (eigenvalues 1..4, minimum value != 0): x* = A^{-1} b to 1e-6 within 120
    updates (most models reach 1e-10 in about 20; Greenstadt's second and SSVM stall near
    1e-7, where a model's predicted decrease meets the loss's round-off)."""
    a, b = _quadratic()

    def fn(p):
        return 0.5 * p["x"] @ a @ p["x"] - b @ p["x"]

    tx = gx.scale_by_trust_region(subproblem, hessian=gx.quasi_newton_hessian(method))
    p, _, _ = _run(tx, fn, torch.zeros(N), 120)
    torch.testing.assert_close(p["x"], torch.linalg.solve(a, b), rtol=0, atol=1e-6)


def test_sr1_model_terminates_on_a_quadratic():
    """SR1's B is the Hessian after n independent steps (N&W Thm 6.1): a handful of steps."""
    a, b = _quadratic()

    def fn(p):
        return 0.5 * p["x"] @ a @ p["x"] - b @ p["x"]

    for subproblem in ("dogleg", "levenberg_marquardt"):
        tx = gx.scale_by_trust_region(subproblem, hessian=gx.quasi_newton_hessian("sr1"), init_radius=10.0)
        p, steps, state = _run(tx, fn, torch.zeros(N), 50)
        assert steps <= 2 * N
        torch.testing.assert_close(state.model.matrix, a, rtol=1e-6, atol=1e-6)


# --- N&W Alg. 4.1 with the model's formula and the dogleg written here ----------------------------


def _np_dfp(b, s, y):
    rho = 1 / (s @ y)
    left = np.eye(len(s)) - rho * np.outer(y, s)
    return left @ b @ left.T + rho * np.outer(y, y), s @ y > 1e-32


def _np_sr1(b, s, y):
    r = y - b @ s
    rs = r @ s
    ok = abs(rs) > 1e-8 * np.linalg.norm(r) * np.linalg.norm(s)
    return (b + np.outer(r, r) / rs if ok else b), ok


def _np_dogleg(g, b, radius):
    """N&W eq. 4.16 for a positive definite B; the Cauchy point (Alg. 4.2) otherwise."""
    gbg = g @ b @ g
    try:
        np.linalg.cholesky(b)
        definite = gbg > 0
    except np.linalg.LinAlgError:
        definite = False
    if not definite:
        tau = 1.0 if gbg <= 0 else min(np.linalg.norm(g) ** 3 / (radius * gbg), 1.0)
        p = -tau * radius * g / np.linalg.norm(g)
        return p, tau >= 1.0
    newton = -np.linalg.solve(b, g)
    if np.linalg.norm(newton) <= radius:
        return newton, False
    cauchy = -(g @ g) / gbg * g
    if np.linalg.norm(cauchy) >= radius:
        return -radius * g / np.linalg.norm(g), True
    d = newton - cauchy
    qa, qb, qc = d @ d, 2 * cauchy @ d, cauchy @ cauchy - radius**2
    t = (-qb + np.sqrt(qb * qb - 4 * qa * qc)) / (2 * qa)
    return cauchy + t * d, True


class RadiusOutcome(NamedTuple):
    shrunk: bool
    expanded: bool
    refused: bool


def np_dogleg_trust_region_step(x, f, g, b, radius, f_of):
    """One step of Nocedal & Wright's Alg. 4.1 with the dogleg on the model ``b`` (eta 0.15,
    1/4, 3/4, factors 1/4 and 2, radius at most 1000, rho = 1 where the predicted decrease is
    below 100 ulps of max(|f|, 1)): the new point and radius and which branches were taken."""
    p, boundary = _np_dogleg(g, b, radius)
    predicted = -(g @ p + 0.5 * p @ b @ p)
    rho = 1.0 if predicted <= 100 * np.finfo(float).eps * max(abs(f), 1.0) else (f - f_of(x + p)) / predicted
    shrunk = rho < 0.25
    expanded = not shrunk and rho > 0.75 and boundary
    radius = 0.25 * radius if shrunk else min(2 * radius, 1000.0) if expanded else radius
    accepted = rho > 0.15
    return (x + p if accepted else x), radius, RadiusOutcome(shrunk, bool(expanded), not accepted)


def _np_rosen(x):
    f = (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2
    g = np.array([-2 * (1 - x[0]) - 400 * x[0] * (x[1] - x[0] ** 2), 200 * (x[1] - x[0] ** 2)])
    return f, g


@pytest.mark.parametrize("method", ["dfp", "sr1"])
def test_dogleg_on_the_model_follows_algorithm_4_1_written_here(method):
    """Rosenbrock from (-1.2, 1), 60 updates: the model (DFP eq. 6.13 with N&W's initial scale
    y'y / s'y on the first pair, or SR1 eq. 6.24 from B_0 = I with the skip of eq. 6.26), the
    dogleg and Alg. 4.1 (eta 0.15, 1/4, 3/4, factors 1/4 and 2, round-off rule) here: the same
    iterates, radii and matrices. Every branch of the radius rule is taken: it shrinks after
    a refused step and grows after a very successful one on the boundary."""
    tx = gx.scale_by_trust_region("dogleg", hessian=gx.quasi_newton_hessian(method), init_radius=1.0)
    mine = []
    _run(tx, _rosen, [-1.2, 1.0], 60, gtol=0.0, record=mine)
    x, radius, b = np.array([-1.2, 1.0]), 1.0, np.eye(2)
    scaled = method == "sr1"
    prev = None
    shrunk = expanded = refused = 0
    for k in range(60):
        f, g = _np_rosen(x)
        if prev is not None and np.any(x != prev[0]):
            s, y = x - prev[0], g - prev[1]
            if not scaled and s @ y > 0:
                b, scaled = b * (y @ y) / (s @ y), True
            new, ok = (_np_dfp if method == "dfp" else _np_sr1)(b, s, y)
            b = new if ok else b
        prev = (x, g)
        x, radius, outcome = np_dogleg_trust_region_step(x, f, g, b, radius, lambda z: _np_rosen(z)[0])
        shrunk, expanded, refused = shrunk + outcome.shrunk, expanded + outcome.expanded, refused + outcome.refused
        got_x, got_radius, model = mine[k]
        np.testing.assert_allclose(got_x.numpy(), x, rtol=1e-9, atol=1e-12, err_msg=f"iterate {k}")
        assert float(got_radius) == pytest.approx(radius, rel=1e-9), k
        # (SR1's late rank-one corrections amplify round-off: 1e-6 on the matrix)
        np.testing.assert_allclose(model.matrix.numpy(), b, rtol=1e-6, atol=1e-10, err_msg=f"model {k}")
    assert shrunk and expanded and refused


def test_inverse_form_models_invert_and_symmetrise():
    """An inverse-form model's matrix is the symmetric part of H^{-1}, with H from the rule."""
    model = gx.quasi_newton_hessian("mccormick", init_scale=2.0)
    state = model.init(torch.zeros(3, dtype=torch.float64))
    state = model.update(state, torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64))  # x_0
    h = np.eye(3) / 2.0
    rng = np.random.default_rng(0)
    for _ in range(3):
        s, y = rng.standard_normal(3), rng.standard_normal(3)
        state = model.update(state, torch.from_numpy(s), torch.from_numpy(y))
        h = h + np.outer(s - h @ y, s) / (s @ y)
    want = np.linalg.inv(h)
    np.testing.assert_allclose(model.matrix(state).numpy(), 0.5 * (want + want.T), rtol=1e-9, atol=1e-12)


def test_errors_name_the_argument():
    for call, name in ((lambda: gx.quasi_newton_hessian("newton"), "method"),
                       (lambda: gx.quasi_newton_hessian("mccormick", inverse=False), "inverse"),
                       (lambda: gx.quasi_newton_hessian("psb", inverse=True), "inverse"),
                       (lambda: gx.quasi_newton_hessian("sr1", alpha=0.5), "alpha"),
                       (lambda: gx.quasi_newton_hessian("ssvm", switch=7), "switch"),
                       (lambda: gx.quasi_newton_hessian("bfgs", eps=-1.0), "eps"),
                       (lambda: gx.quasi_newton_hessian("bfgs", init_scale="big"), "init_scale")):
        with pytest.raises(ValueError, match=name):
            call()


# --- through gx.Optimizer ---------------------------------------------------------------------


def _make_tx():
    return gx.scale_by_trust_region("levenberg_marquardt", hessian=gx.quasi_newton_hessian("sr1", eps=1e-7),
                                    init_radius=0.5)


def _closure_for(m, o, x, y):
    def closure(backward=True):
        loss = torch.nn.functional.mse_loss(m(x), y)
        if backward:
            o.zero_grad()
            loss.backward()
        return loss
    return closure


def test_optimizer_follows_the_functional_trajectory_and_resumes_bit_identically():
    model = tanh_net()
    x, y = regression_batch()
    names = [n for n, _ in model.named_parameters()]
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    tx = _make_tx()
    assert repr(tx) == ("scale_by_trust_region(subproblem='levenberg_marquardt', "
                        "hessian=quasi_newton_hessian('sr1', eps=1e-07), init_radius=0.5)")
    state = tx.init(params)

    def loss_of(ps):
        return torch.func.functional_call(model, ps, (x,)).sub(y).square().mean()

    opt = gx.Optimizer(model.parameters(), _make_tx(), check_descent=False)
    for _ in range(8):
        ps = {n: v.clone().requires_grad_(True) for n, v in params.items()}
        loss = loss_of(ps)
        grads = dict(zip(names, torch.autograd.grad(loss, list(ps.values()))))
        with torch.no_grad():
            updates, state = tx.update(grads, state, params, value=loss.detach(), value_fn=loss_of)
        params = gx.apply_updates(params, updates)
        opt.step(_closure_for(model, opt, x, y))
        for n, p in model.named_parameters():
            torch.testing.assert_close(p.detach(), params[n], rtol=1e-12, atol=1e-14)

    twin = tanh_net()
    twin.load_state_dict(model.state_dict())
    opt2 = gx.Optimizer(twin.parameters(), _make_tx(), check_descent=False)
    opt2.load_state_dict(round_trip(opt.state_dict()))
    pickle.loads(pickle.dumps(opt))  # the model pickles as its call, keywords included
    ssvm = gx.quasi_newton_hessian("ssvm", inverse=True, switch=2)
    assert repr(pickle.loads(pickle.dumps(ssvm))) == repr(ssvm)
    assert repr(ssvm) == "quasi_newton_hessian('ssvm', inverse=True, switch=2)"
    for _ in range(4):
        for m, o in ((model, opt), (twin, opt2)):
            o.step(_closure_for(m, o, x, y))
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)
