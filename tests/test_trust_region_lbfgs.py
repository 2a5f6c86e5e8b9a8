"""The trust region on the limited-memory BFGS model (gx.lbfgs_hessian): its compact form
against the BFGS matrix built here by the recursive update from the same pairs; the dogleg and
Levenberg–Marquardt steps against the dense-matrix path given that matrix; N&W Alg. 4.1 with
the L-BFGS matrix and the dogleg written here in numpy, iterate by iterate; the minimisers
of a quadratic and Rosenbrock-10 against scipy; gx.Optimizer's trajectory and a bit-exact
resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import assert_resume_bit_exact, leaf_copy
from test_trust_region_models import np_dogleg_trust_region_step

import gradtx as gx
from gradtx.search.trust_region import _Dense, _dogleg, _levenberg_marquardt


def _np_lbfgs_matrix(pairs, n):
    """The BFGS recursion (N&W eq. 6.19) from B_0 = (y'y / s'y) I of the newest pair over the
    pairs, oldest first (I with none)."""
    if not pairs:
        return np.eye(n)
    s, y = pairs[-1]
    b = (y @ y) / (s @ y) * np.eye(n)
    for s, y in pairs:
        bs = b @ s
        b = b - np.outer(bs, bs) / (s @ bs) + np.outer(y, y) / (y @ s)
    return b


def _feed(model, n, count, memory, seed=0, skip_at=()):
    """``count`` pairs (y = A s, A positive definite; at ``skip_at`` a pair with y's < 0) into
    the model; returns its state and the pairs it should keep (the last ``memory`` good ones)."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, n))
    a = a @ a.T + np.eye(n)
    state = model.init(torch.zeros(n, dtype=torch.float64))
    kept = []
    for k in range(count):
        s = rng.standard_normal(n)
        y = -s if k in skip_at else a @ s + 0.1 * rng.standard_normal(n)
        if s @ y <= 0:
            y = -y if k not in skip_at else y
        state = model.update(state, torch.from_numpy(s), torch.from_numpy(y))
        if s @ y > 1e-8 * np.linalg.norm(s) * np.linalg.norm(y):
            kept.append((s, y))
    return state, kept[-memory:]


@pytest.mark.parametrize("n, memory, count", [(8, 3, 0), (8, 3, 2), (8, 3, 7), (12, 5, 11), (3, 4, 6)])
def test_compact_form_is_the_recursive_bfgs_matrix(n, memory, count):
    """B v (compact form, m pairs in a ring buffer, wrapped round; a refused pair at step 1;
    n < 2m in the last case) equals the recursive BFGS matrix built here, to 1e-10."""
    model = gx.lbfgs_hessian(memory_size=memory)
    state, kept = _feed(model, n, count, memory, skip_at=(1,))
    want = _np_lbfgs_matrix(kept, n)
    op = model.matrix(state)
    rng = np.random.default_rng(5)
    for _ in range(3):
        v = rng.standard_normal(n)
        np.testing.assert_allclose(op.mv(torch.from_numpy(v)).numpy(), want @ v, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(op.dense().numpy(), want, rtol=1e-10, atol=1e-10)
    g = rng.standard_normal(n)
    np.testing.assert_allclose(op.newton(torch.from_numpy(g))[0].numpy(), -np.linalg.solve(want, g),
                               rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("solver", [_dogleg, _levenberg_marquardt])
@pytest.mark.parametrize("n, memory, count", [(10, 3, 7), (3, 4, 6)])
def test_steps_equal_the_dense_path_given_the_same_matrix(solver, n, memory, count):
    """The dogleg and LM steps (and whether they end on the boundary) on the compact model
    equal those of the dense path on the matrix built here from the same pairs, to 1e-9, for
    a radius that cuts the Cauchy point, one between it and the Newton point, and one past it."""
    model = gx.lbfgs_hessian(memory_size=memory)
    state, kept = _feed(model, n, count, memory, seed=3)
    b = torch.from_numpy(_np_lbfgs_matrix(kept, n))
    g = torch.from_numpy(np.random.default_rng(7).standard_normal(n))
    newton = torch.linalg.norm(torch.linalg.solve(b, g))
    for radius in (1e-3 * newton, 0.5 * newton, 2.0 * newton):
        got, got_edge = solver(g, model.matrix(state), radius)
        want, want_edge = solver(g, _Dense(b), radius)
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
        assert bool(got_edge) == bool(want_edge)


def _rosen(p):
    x = p["x"]
    return torch.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)


def _run(tx, fn, x0, steps, gtol=1e-10):
    p = {"x": torch.as_tensor(x0, dtype=torch.float64).clone()}
    state = tx.init(p)
    for _ in range(steps):
        x = p["x"].clone().requires_grad_(True)
        f = fn({"x": x})
        (g,) = torch.autograd.grad(f, x)
        if g.norm() < gtol:
            break
        u, state = tx.update({"x": g}, state, p, value=f.detach(), value_fn=fn)
        p = gx.apply_updates(p, u)
    return p["x"]


@pytest.mark.parametrize("subproblem", ["dogleg", "levenberg_marquardt"])
def test_reaches_scipys_minimisers(subproblem):
    """A quadratic (n = 10, eigenvalues 1..10) and Rosenbrock-10 (chained, scipy's ``rosen``):
    the minimiser scipy's BFGS finds (gtol 1e-10) from the same start, to 1e-6."""
    scipy_optimize = pytest.importorskip("scipy.optimize")
    n = 10
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((n, n)))
    a = q @ np.diag(np.linspace(1, 10, n)) @ q.T
    c = np.linspace(-1, 1, n)
    at, ct = torch.from_numpy(a), torch.from_numpy(c)

    def quad(p):
        return 0.5 * p["x"] @ at @ p["x"] - ct @ p["x"]

    x0 = np.linspace(-0.5, 0.5, n)  # from the classic (-1.2, 1, ...) BFGS ends at the local minimiser near x_0 = -1
    for fn, start, steps in ((quad, np.zeros(n), 100), (_rosen, x0, 400)):
        def f_and_g(x, fn=fn):
            xt = torch.from_numpy(x).requires_grad_(True)
            value = fn({"x": xt})
            return value.item(), torch.autograd.grad(value, xt)[0].numpy()
        ref = scipy_optimize.minimize(f_and_g, start, jac=True, method="BFGS", options={"gtol": 1e-10})
        tx = gx.scale_by_trust_region(subproblem, hessian=gx.lbfgs_hessian(memory_size=5))
        got = _run(tx, fn, start, steps)
        np.testing.assert_allclose(got.numpy(), ref.x, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got.numpy(), np.ones(n), rtol=0, atol=1e-6)


def test_radius_rule_follows_algorithm_4_1_written_here():
    """Rosenbrock-4, 50 updates: the L-BFGS matrix (m = 3) from the pairs, the dogleg and Alg.
    4.1 (eta 0.15, 1/4, 3/4, factors 1/4 and 2, round-off rule) here, as the full-matrix test
    does: the same iterates and radii; the radius shrinks, grows, and a step is refused."""
    tx = gx.scale_by_trust_region("dogleg", hessian=gx.lbfgs_hessian(memory_size=3))
    p = {"x": torch.tensor([-1.2, 1.0, -1.2, 1.0], dtype=torch.float64)}
    state = tx.init(p)
    x, radius, prev, pairs = p["x"].numpy().copy(), 1.0, None, []
    shrunk = expanded = refused = 0

    def np_f_g(x):
        xt = torch.from_numpy(x).requires_grad_(True)
        value = _rosen({"x": xt})
        return value.item(), torch.autograd.grad(value, xt)[0].numpy()

    for k in range(50):
        xt = p["x"].clone().requires_grad_(True)
        f = _rosen({"x": xt})
        (g_t,) = torch.autograd.grad(f, xt)
        u, state = tx.update({"x": g_t}, state, p, value=f.detach(), value_fn=_rosen)
        p = gx.apply_updates(p, u)

        f, g = np_f_g(x)
        if prev is not None and np.any(x != prev[0]):
            s, y = x - prev[0], g - prev[1]
            if s @ y > 1e-8 * np.linalg.norm(s) * np.linalg.norm(y):
                pairs = (pairs + [(s, y)])[-3:]
        prev = (x, g)
        b = _np_lbfgs_matrix(pairs, 4)
        x, radius, outcome = np_dogleg_trust_region_step(x, f, g, b, radius, lambda z: np_f_g(z)[0])
        shrunk, expanded, refused = shrunk + outcome.shrunk, expanded + outcome.expanded, refused + outcome.refused
        np.testing.assert_allclose(p["x"].numpy(), x, rtol=1e-9, atol=1e-12, err_msg=f"iterate {k}")
        assert float(state.radius) == pytest.approx(radius, rel=1e-9), k
    assert shrunk and expanded and refused


def test_state_keeps_its_structure_and_the_model_pickles():
    import pickle

    model = gx.lbfgs_hessian(memory_size=4)
    assert repr(pickle.loads(pickle.dumps(model))) == "lbfgs_hessian(memory_size=4)"
    assert repr(gx.lbfgs_hessian()) == "lbfgs_hessian()"
    tx = gx.scale_by_trust_region("dogleg", hessian=model)
    p = {"x": torch.tensor([-1.2, 1.0, 0.5], dtype=torch.float64)}
    state = tx.init(p)
    shapes = [(t.shape, t.dtype) for t in gx.tree_leaves(state)]
    for _ in range(7):
        xt = p["x"].clone().requires_grad_(True)
        f = _rosen({"x": xt})
        (g,) = torch.autograd.grad(f, xt)
        u, state = tx.update({"x": g}, state, p, value=f.detach(), value_fn=_rosen)
        p = gx.apply_updates(p, u)
        assert [(t.shape, t.dtype) for t in gx.tree_leaves(state)] == shapes
    assert int(state.model.count) > 4  # the ring buffer wrapped round


def test_errors_name_the_argument():
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="memory_size"):
            gx.lbfgs_hessian(memory_size=bad)


def test_optimizer_follows_the_functional_trajectory_and_resumes_bit_exactly():
    torch.manual_seed(0)
    params = {"w": torch.randn(3, 2, dtype=torch.float64), "b": torch.randn(2, dtype=torch.float64)}
    gen = torch.Generator().manual_seed(1)
    inputs = torch.randn(16, 3, generator=gen, dtype=torch.float64)
    targets = torch.randn(16, 2, generator=gen, dtype=torch.float64)

    def loss_of(ps, t=0):
        return torch.tanh(inputs @ ps["w"] + ps["b"]).sub(targets).square().mean()

    def make():
        return gx.scale_by_trust_region("levenberg_marquardt", hessian=gx.lbfgs_hessian(memory_size=3),
                                        init_radius=0.5)

    got = assert_resume_bit_exact(lambda leaves: gx.Optimizer(list(leaves.values()), make(), check_descent=False),
                                  leaf_copy(params), loss_of, 10, 5, closure="backward")
    tx = make()
    ps = {k: v.clone() for k, v in params.items()}
    state = tx.init(ps)
    for t in range(10):
        leaves = {k: v.clone().requires_grad_(True) for k, v in ps.items()}
        loss = loss_of(leaves)
        grads = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))
        with torch.no_grad():
            updates, state = tx.update(grads, state, ps, value=loss.detach(), value_fn=loss_of)
        ps = gx.apply_updates(ps, updates)
        for k in ps:
            torch.testing.assert_close(got[t][k], ps[k], rtol=1e-12, atol=1e-14)
