"""L-BFGS: ``gx.lbfgs`` against ``optax.lbfgs`` in float64 (the same iterates to 1e-7
relative, see STEPS for Rosenbrock) on Rosenbrock (2, 10, 100 dims), an ill-conditioned quadratic and a logistic
regression; against scipy's L-BFGS-B (the same minimiser, iteration and evaluation counts
within a factor 2); ``scale_by_lbfgs`` under ``gx.Optimizer`` with a checkpoint round trip.

One difference from optax, where optax gives NaN: a pair whose ``1 / <y, s>`` overflows
(``<y, s>`` subnormal, once the iterates have converged to the last bits) is left out of the
recursion instead of making the direction NaN."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from search_problems import jax_x64, problems_jax, problems_torch, run_gradtx, run_optax

import gradtx as gx

# (steps compared one by one, steps run): Rosenbrock's valley amplifies round-off (XLA and torch
# sum dot products in different orders) about twofold per step, from 1e-16 at the start to
# ~1e-6 mid-valley on 10 dims, so iterates are compared while the amplified round-off stays
# below 1e-7, and the converged end point at the last step.
STEPS = {"rosenbrock2": (40, 40), "rosenbrock10": (40, 80), "rosenbrock100": (25, 25), "quadratic": (30, 30),
         "logistic": (15, 15)}
SLOW = {"rosenbrock10", "rosenbrock100", "quadratic", "logistic"}  # each compiles optax's lbfgs afresh


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in STEPS])
def test_lbfgs_matches_optax(name):
    jax = jax_x64()
    import optax

    fn, x0 = problems_torch()[name]
    window, total = STEPS[name]
    want = run_optax(jax, optax.lbfgs(), problems_jax()[name], x0, total)
    got = run_gradtx(gx.lbfgs(), fn, x0, total)
    for step in [*range(window), total - 1]:
        g, w = got[step], want[step]
        np.testing.assert_allclose(g, w, rtol=1e-7, atol=1e-9 * max(1.0, np.abs(w).max()),
                                   err_msg=f"{name}, step {step}")
    assert float(fn({"x": torch.tensor(got[-1])})) < float(fn({"x": torch.tensor(x0)}))


@pytest.mark.slow
def test_lbfgs_options_match_optax():
    """memory_size, scale_init_precond=False and a learning rate with no line search (on the
    logistic regression: see test_line_search.py for why not on the quadratic)."""
    jax = jax_x64()
    import optax

    fn, x0 = problems_torch()["logistic"]
    cases = [(optax.lbfgs(memory_size=3, scale_init_precond=False), gx.lbfgs(memory_size=3, scale_init_precond=False)),
             (optax.lbfgs(learning_rate=0.5, linesearch=None), gx.lbfgs(lr=0.5, linesearch=None))]
    for otx, gtx in cases:
        want = run_optax(jax, otx, problems_jax()["logistic"], x0, 12)
        got = run_gradtx(gtx, fn, x0, 12)
        np.testing.assert_allclose(np.stack(got), np.stack(want), rtol=1e-7, atol=1e-10)


def _scipy_counts(name):
    scipy_optimize = pytest.importorskip("scipy.optimize")
    fn, x0 = problems_torch()[name]
    vg = gx.make_value_and_grad_fn(fn)

    def fun(x):
        value, grad = vg({"x": torch.tensor(x)})
        return float(value), grad["x"].numpy()

    res = scipy_optimize.minimize(fun, x0, jac=True, method="L-BFGS-B", options={"gtol": 1e-10, "ftol": 0,
                                                                                 "maxiter": 1000})
    return res


@pytest.mark.parametrize("name", ["rosenbrock10", "logistic", "quadratic"])
def test_lbfgs_reaches_scipys_minimiser_in_as_many_evaluations(name):
    """The same minimiser as scipy's L-BFGS-B (gradient norm 1e-8), in at most twice its
    iterations and evaluations; each gradtx iteration counts 1 + the line search's evaluations."""
    res = _scipy_counts(name)
    fn, x0 = problems_torch()[name]
    tx = gx.lbfgs()
    params = {"x": torch.tensor(x0)}
    state = tx.init(params)
    iterations = evaluations = 0
    vg = gx.make_value_and_grad_fn(fn)
    while iterations < 1000:
        value, grad = vg(params)
        evaluations += 1
        if float(grad["x"].norm()) < 1e-8:
            break
        iterations += 1
        updates, state = tx.update(grad, state, params, value=value, grad=grad, value_and_grad_fn=vg)
        evaluations += int(state[2].info.num_linesearch_steps)
        params = gx.apply_updates(params, updates)
    np.testing.assert_allclose(params["x"].numpy(), res.x, rtol=1e-6, atol=1e-7)
    assert iterations <= 2 * res.nit + 2, (iterations, res.nit)
    assert evaluations <= 2 * res.nfev + 2, (evaluations, res.nfev)


def test_scale_by_lbfgs_is_the_two_loop_recursion_of_the_dense_bfgs_update():
    """With memory covering every pair, the L-BFGS direction equals H g for the dense inverse
    BFGS update H <- (I - rho s y^T) H (I - rho y s^T) + rho s s^T from H0 = gamma I (Nocedal &
    Wright eq. 6.17; gamma = <s, y> / <y, y> of the newest pair), written here independently."""
    a, b = torch.tensor(np.diag(np.linspace(1, 20, 6))), torch.linspace(-1, 1, 6, dtype=torch.float64)
    tx = gx.scale_by_lbfgs(memory_size=10)
    xs = [torch.linspace(0.5, -0.3, 6, dtype=torch.float64)]
    for i in range(4):  # arbitrary iterates
        xs.append(xs[-1] + 0.1 * torch.sin(torch.arange(6, dtype=torch.float64) * (i + 1)))
    grads = [a @ x - b for x in xs]
    state = tx.init({"x": xs[0]})
    for x, g in zip(xs, grads):
        out, state = tx.update({"x": g}, state, {"x": x})
    pairs = [(xs[i + 1] - xs[i], grads[i + 1] - grads[i]) for i in range(len(xs) - 1)]
    s, y = pairs[-1]
    h = torch.eye(6, dtype=torch.float64) * (s @ y) / (y @ y)
    for s, y in pairs:
        rho = 1 / (y @ s)
        v = torch.eye(6, dtype=torch.float64) - rho * torch.outer(y, s)
        h = v.T @ h @ v + rho * torch.outer(s, s)
    torch.testing.assert_close(out["x"], h @ grads[-1], rtol=1e-12, atol=1e-14)


def _problem():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(8, 5, generator=gen, dtype=torch.float64)
    target = torch.randn(8, 3, generator=gen, dtype=torch.float64)
    return a, target


def test_scale_by_lbfgs_through_the_optimizer_with_a_checkpoint():
    """chain(scale_by_lbfgs(), scale_by_lr(0.2)) under gx.Optimizer (opt.step() after backward)
    gives the functional trajectory, and a state_dict round trip through torch.save /
    torch.load(weights_only=True) continues bit-identically."""
    a, target = _problem()

    def loss_of(w, b):
        return ((a @ w + b - target) ** 2).mean()

    build = lambda: gx.chain(gx.scale_by_lbfgs(memory_size=4), gx.scale_by_lr(0.2))  # noqa: E731
    w0, b0 = torch.zeros(5, 3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    # functional
    tx = build()
    params = {0: w0.clone(), 1: b0.clone()}
    state = tx.init(params)
    functional = []
    for _ in range(12):
        _, grads = gx.make_value_and_grad_fn(lambda p: loss_of(p[0], p[1]))(params)
        updates, state = tx.update(grads, state, params)
        params = gx.apply_updates(params, updates)
        functional.append((params[0].clone(), params[1].clone()))

    def run(opt, w, b, steps):
        out = []
        for _ in range(steps):
            opt.zero_grad()
            loss_of(w, b).backward()
            opt.step()
            out.append((w.detach().clone(), b.detach().clone()))
        return out

    w, b = w0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
    opt = gx.Optimizer([w, b], build())
    first = run(opt, w, b, 6)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    w2, b2 = w.detach().clone().requires_grad_(True), b.detach().clone().requires_grad_(True)
    opt2 = gx.Optimizer([w2, b2], build())
    opt2.load_state_dict(torch.load(buffer, weights_only=True))
    resumed = run(opt2, w2, b2, 6)
    continued = run(opt, w, b, 6)
    for (gw, gb), (fw, fb) in zip(first + continued, functional):
        torch.testing.assert_close(gw, fw, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(gb, fb, rtol=1e-12, atol=1e-14)
    for (rw, rb), (cw, cb) in zip(resumed, continued):
        assert torch.equal(rw, cw) and torch.equal(rb, cb)


def test_memory_is_a_ring_of_trees_like_the_params():
    tx = gx.scale_by_lbfgs(memory_size=3)
    params = {"w": torch.zeros(2, 2), "b": torch.zeros(3, dtype=torch.float64)}
    state = tx.init(params)
    assert len(state.diff_params_memory) == 3 and state.weights_memory.shape == (3,)
    for tree in state.diff_params_memory + state.diff_updates_memory:
        assert {k: (v.shape, v.dtype) for k, v in tree.items()} == {k: (v.shape, v.dtype) for k, v in params.items()}
    with pytest.raises(ValueError, match="memory_size"):
        gx.scale_by_lbfgs(memory_size=0)
    with pytest.raises(ValueError, match="needs params"):
        tx.update(params, state)


def _olbfgs_reference(grad, w0, lr, m, c, lam, eps, steps):
    """oLBFGS (Schraudolph, Yu & Günter, 2007, Alg. 2) in numpy, pairs in a list."""
    pairs, w, out = [], w0.copy(), []
    for _ in range(steps):
        g = grad(w)
        if not pairs:
            p = -eps * g
        else:
            q, alphas = g.copy(), []
            for s, y in reversed(pairs):
                alphas.append((s @ q) / (y @ s))
                q = q - alphas[-1] * y
            r = np.mean([(s @ y) / (y @ y) for s, y in pairs]) * q
            for (s, y), a in zip(pairs, reversed(alphas)):
                r = r + (a - (y @ r) / (y @ s)) * s
            p = -r
        s = lr / c * p
        y = grad(w + s) - g + lam * s
        if s @ y > 0:
            pairs = (pairs + [(s, y)])[-m:]
        w = w + s
        out.append(w)
    return out


def test_online_lbfgs_follows_the_papers_algorithm():
    """On the (convex) logistic regression, full batch: the iterates of the paper's algorithm
    written out in numpy, float64 round-off."""
    fn, x0 = problems_torch()["logistic"]
    vg = gx.make_value_and_grad_fn(fn)

    def grad(w):
        return vg({"x": torch.tensor(w)})[1]["x"].numpy()

    lr, m, c, lam, eps = 0.5, 3, 0.8, 1e-2, 1e-10
    want = _olbfgs_reference(grad, x0, lr, m, c, lam, eps, 25)
    tx = gx.scale_by_online_lbfgs(lr, memory_size=m, c=c, lambda_=lam, epsilon=eps)
    params = {"x": torch.tensor(x0)}
    state = tx.init(params)
    for step in range(25):
        _, grads = vg(params)
        updates, state = tx.update(grads, state, params, value_and_grad_fn=vg)
        params = gx.apply_updates(params, updates)
        np.testing.assert_allclose(params["x"].numpy(), want[step], rtol=1e-9, atol=1e-12, err_msg=f"step {step}")
    assert float(fn(params)) < 0.9 * float(fn({"x": torch.tensor(x0)}))
    with pytest.raises(ValueError, match="value_and_grad_fn"):
        tx.update(grads, state, params)


def test_lbfgs_state_checkpoint_resumes_bit_identically():
    """The whole state of gx.lbfgs (L-BFGS memory, the zoom search's last step, loss and
    gradient) is tensors: saved as its leaves with torch.save, read back with
    torch.load(weights_only=True), it continues the run bit for bit."""
    import torch.utils._pytree as pytree

    fn, x0 = problems_torch()["rosenbrock10"]
    tx = gx.lbfgs(memory_size=4)
    params = {"x": torch.tensor(x0)}
    state = tx.init(params)

    def run(params, state, steps):
        out = []
        for _ in range(steps):
            extra = gx.evaluation_args(fn, params)
            updates, state = tx.update(extra["grad"], state, params, **extra)
            params = gx.apply_updates(params, updates)
            out.append(params["x"].clone())
        return params, state, out

    params, state, _ = run(params, state, 6)
    leaves, treedef = pytree.tree_flatten(state)
    assert all(isinstance(x, torch.Tensor) for x in leaves)
    buffer = io.BytesIO()
    torch.save({"leaves": leaves, "params": params}, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    _, _, continued = run(params, state, 6)
    _, _, resumed = run(loaded["params"], pytree.tree_unflatten(loaded["leaves"], treedef), 6)
    for a, b in zip(continued, resumed):
        assert torch.equal(a, b)


@pytest.mark.parametrize("norm", [1e-3, 5.0])
def test_first_step_unit_is_scipys_unit_length_first_step(norm):
    """``first_step="unit"``: the first direction is ``g / ||g||`` whatever ``||g||`` (scipy's
    L-BFGS-B first trial ``1 / ||d||``); optax's default, ``min(1, 1 / ||g||) g``."""
    g = torch.tensor([3.0, -4.0], dtype=torch.float64) * (norm / 5.0)
    params = {"x": torch.zeros(2, dtype=torch.float64)}
    for first_step, want in (("unit", g / norm), ("optax", g * min(1.0, 1.0 / norm))):
        tx = gx.scale_by_lbfgs(first_step=first_step)
        out, _ = tx.update({"x": g.clone()}, tx.init(params), params)
        torch.testing.assert_close(out["x"], want, rtol=1e-15, atol=0)
    with pytest.raises(ValueError, match="first_step"):
        gx.scale_by_lbfgs(first_step="one")
