"""Diagonal quasi-Newton preconditioners (gradtx.search.diagonal_quasi_newton).

Checked against torchzero 0.4's modules as an oracle (float64, 30 steps with a fixed step on a
quadratic and on Rosenbrock), against the diagonal of the full BFGS update computed with numpy,
a line-search convergence test, a tree/complex split check, hyperparameter errors and
gx.Optimizer (trajectory and state_dict round-trip).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

import gradtx as gx

# --- problems (torch, float64) ------------------------------------------------------------------


def _quadratic(x: torch.Tensor) -> torch.Tensor:
    # an ill-conditioned diagonal-dominant quadratic with a coupling and a quartic term
    n = x.numel()
    d = torch.linspace(1.0, 10.0, n, dtype=x.dtype)
    b = torch.linspace(-1.0, 1.0, n, dtype=x.dtype)
    return 0.5 * (d * x * x).sum() + 0.1 * (x[1:] * x[:-1]).sum() - b @ x + 0.05 * (x**4).sum()


def _rosenbrock(x: torch.Tensor) -> torch.Tensor:
    return (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum()


PROBLEMS = {
    "quadratic": (_quadratic, torch.linspace(1.0, -1.0, 6, dtype=torch.float64), 0.1),
    "rosenbrock": (_rosenbrock, torch.tensor([-1.2, 1.0, -0.5, 0.8], dtype=torch.float64), 1e-3),
}


# --- torchzero as an oracle ---------------------------------------------------------------------


def _diagonal_of_full_bfgs(H, s, y, tol):
    """The diagonal of N&W eq. 6.17 applied to diag(H), via the full matrix (numpy)."""
    sy = float(s.dot(y))
    if sy < tol:
        return H
    Hm, sv, yv = np.diag(H.numpy()), s.numpy(), y.numpy()
    rho = 1.0 / sy
    V = np.eye(len(sv)) - rho * np.outer(yv, sv)
    full = V.T @ Hm @ V + rho * np.outer(sv, sv)
    H.copy_(torch.from_numpy(np.diag(full).copy()))
    return H


def _tz_module(tz, key, monkeypatch):
    from torchzero.modules.quasi_newton import diagonal_quasi_newton as tzd

    if key.startswith("diagonal_bfgs"):
        # torchzero writes y_i H_i y_i where BFGS's diagonal has y^T H y: checked with the latter
        monkeypatch.setattr(tzd, "diagonal_bfgs_H_", _diagonal_of_full_bfgs)
        return tz.m.DiagonalBFGS(init_scale=2.0) if key.endswith("scale") else tz.m.DiagonalBFGS()
    if key == "dnrtr":
        # torchzero's DNRTR calls the weighted quasi-Cauchy rule; its own dnrtr_B_ is Andrei's
        class _DNRTR(tz.m.DNRTR):
            def update_B(self, B, s, y, p, g, p_prev, g_prev, state, setting):
                return tzd.dnrtr_B_(B=B, s=s, y=y)
        return _DNRTR()
    return {
        "diagonal_sr1": lambda: tz.m.DiagonalSR1(init_scale=1.0, tol=1e-8),
        "diagonal_sr1-hessian": lambda: tz.m.DiagonalSR1(init_scale=1.0, tol=1e-8, inverse=False),
        "quasi_cauchy": lambda: tz.m.DiagonalQuasiCauchi(),
        "weighted_quasi_cauchy": lambda: tz.m.DiagonalWeightedQuasiCauchi(),
        "new_dqn": lambda: tz.m.NewDQN(),
        "quasi_cauchy-reset": lambda: tz.m.DiagonalQuasiCauchi(restart_interval=7),
    }[key]()


GX = {
    "diagonal_bfgs": lambda: gx.scale_by_diagonal_bfgs(),
    "diagonal_sr1": lambda: gx.scale_by_diagonal_sr1(),
    "diagonal_sr1-hessian": lambda: gx.scale_by_diagonal_sr1(inverse=False),
    "quasi_cauchy": lambda: gx.scale_by_quasi_cauchy(),
    "weighted_quasi_cauchy": lambda: gx.scale_by_weighted_quasi_cauchy(),
    "dnrtr": lambda: gx.scale_by_dnrtr(),
    "new_dqn": lambda: gx.scale_by_new_dqn(),
    "quasi_cauchy-reset": lambda: gx.scale_by_quasi_cauchy(reset_interval=7),
    "diagonal_bfgs-scale": lambda: gx.scale_by_diagonal_bfgs(init_scale=2.0),
}


def _side_by_side(tz, module, transform, fn, x0, lr, steps):
    """Yields ``(x, x_tz, state)`` after each of ``steps`` fixed steps ``lr`` from ``x0`` on
    ``fn``: gradtx's ``chain(transform, scale_by_lr(lr))`` and torchzero's
    ``tz.Optimizer([x], module, tz.m.LR(lr))``."""
    x_tz = torch.nn.Parameter(x0.clone())
    opt = tz.Optimizer([x_tz], module, tz.m.LR(lr))

    def closure(backward=True):
        loss = fn(x_tz)
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

    tx = gx.chain(transform, gx.scale_by_lr(lr))
    params = {"x": x0.clone()}
    state = tx.init(params)
    for _ in range(steps):
        x = params["x"].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(fn(x), x)
        updates, state = tx.update({"x": g}, state, params)
        params = gx.apply_updates(params, updates)
        opt.step(closure)
        yield params["x"], x_tz.detach().clone(), state


@pytest.mark.parametrize("problem", list(PROBLEMS))
@pytest.mark.parametrize("key", list(GX))
def test_matches_torchzero(key, problem, monkeypatch):
    """30 steps with a fixed step (0.1 on the quadratic, 1e-3 on Rosenbrock), float64: the
    iterates equal torchzero 0.4's ``tz.Optimizer([x], tz.m.<Module>(), tz.m.LR(lr))`` to 1e-10
    (DiagonalBFGS with the diagonal of BFGS's update, DNRTR with torchzero's own ``dnrtr_B_``:
    see the docstrings for why)."""
    tz = pytest.importorskip("torchzero")
    fn, x0, lr = PROBLEMS[problem]
    run = list(_side_by_side(tz, _tz_module(tz, key, monkeypatch), GX[key](), fn, x0, lr, 30))
    for step, (x, x_tz, _) in enumerate(run):
        assert torch.isfinite(x).all()
        torch.testing.assert_close(x, x_tz, rtol=1e-10, atol=1e-12, msg=lambda m, step=step: f"step {step}: {m}")
    state = run[-1][2]
    assert state[0].count.dtype == torch.int32 and state[0].count.item() == 30


def test_torchzero_dnrtr_and_diagonal_bfgs_differ_from_the_papers_rules():
    """The two documented differences are real: unpatched, torchzero's DNRTR and DiagonalBFGS
    leave gradtx's iterates on the quadratic."""
    tz = pytest.importorskip("torchzero")
    fn, x0, lr = PROBLEMS["quadratic"]
    for module, build in ((tz.m.DNRTR(), gx.scale_by_dnrtr()), (tz.m.DiagonalBFGS(), gx.scale_by_diagonal_bfgs())):
        *_, (x, x_tz, _) = _side_by_side(tz, module, build, fn, x0, lr, 10)
        assert (x - x_tz).abs().max() > 1e-6


# --- closed forms ---------------------------------------------------------------------------------


@pytest.mark.parametrize("build", [gx.scale_by_quasi_cauchy, gx.scale_by_weighted_quasi_cauchy])
def test_weak_secant_holds_after_an_update(build):
    """After an update, the quasi-Cauchy diagonals satisfy s^T B s = s.y (their defining relation):
    checked through the output g / B on a quadratic with a known pair."""
    A = torch.tensor([1.0, 3.0, 7.0], dtype=torch.float64)
    tx = build(init_scale=1.0)
    x0 = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    x1 = torch.tensor([0.3, 1.0, -0.2], dtype=torch.float64)
    state = tx.init({"x": x0})
    _, state = tx.update({"x": A * x0}, state, {"x": x0})
    _, state = tx.update({"x": A * x1}, state, {"x": x1})
    B = state.diagonal["x"]
    s, y = x1 - x0, A * (x1 - x0)
    torch.testing.assert_close((s * B) @ s, s @ y, rtol=1e-12, atol=0)


def test_curvature_failure_skips_and_truncation_passes_the_gradient():
    """Diagonal BFGS keeps H when s.y < 0 (a concave pair); DNRTR's stored diagonal follows
    Andrei's rule while an element outside (lb, ub) divides by 1 (u_i = g_i)."""
    x0 = torch.tensor([1.0, 2.0], dtype=torch.float64)
    x1 = torch.tensor([0.0, 1.0], dtype=torch.float64)
    tx = gx.scale_by_diagonal_bfgs(init_scale=1.0)
    state = tx.init({"x": x0})
    _, state = tx.update({"x": -x0}, state, {"x": x0})  # g = -x: s.y = -|s|^2 < 0
    u, state = tx.update({"x": -x1}, state, {"x": x1})
    torch.testing.assert_close(state.diagonal["x"], torch.ones(2, dtype=torch.float64), rtol=0, atol=0)
    torch.testing.assert_close(u["x"], -x1, rtol=0, atol=0)

    # s = (-1, -1), y = (-10, -0.001): Andrei's B+ = B - 1 + s^2 (s.y + s.s - s^T B s) / sum s^4
    tx = gx.scale_by_dnrtr(lb=0.5, ub=2.0, init_scale=1.0)
    state = tx.init({"x": x0})
    g0, g1 = torch.tensor([3.0, 4.0], dtype=torch.float64), torch.tensor([-7.0, 3.999], dtype=torch.float64)
    _, state = tx.update({"x": g0}, state, {"x": x0})
    u, state = tx.update({"x": g1}, state, {"x": x1})
    s, y = x1 - x0, g1 - g0
    B = 1.0 - 1.0 + s**2 * ((s @ y + s @ s - s @ s) / (s**4).sum())
    torch.testing.assert_close(state.diagonal["x"], B, rtol=1e-14, atol=0)
    assert B[0] > 2.0 and B[1] > 2.0  # both outside (0.5, 2): truncated to 1 where used
    torch.testing.assert_close(u["x"], g1, rtol=0, atol=0)


def test_split_tree_equals_one_vector_and_complex_is_its_real_view():
    """The sums are global: a tree {(2, 2) matrix, complex 1-vector} gives the same numbers as
    one real 6-vector in the same order."""
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal(6) for _ in range(4)]
    gs = [rng.standard_normal(6) for _ in range(4)]

    def tree(v):
        t = torch.from_numpy(v)
        return {"a": t[:4].reshape(2, 2).clone(), "b": torch.view_as_complex(t[4:].reshape(1, 2).clone())}

    for build in (gx.scale_by_diagonal_bfgs, gx.scale_by_dnrtr, gx.scale_by_diagonal_sr1):
        tx_v, tx_t = build(), build()
        sv, st = tx_v.init({"x": torch.from_numpy(xs[0])}), tx_t.init(tree(xs[0]))
        for x, g in zip(xs, gs):
            uv, sv = tx_v.update({"x": torch.from_numpy(g)}, sv, {"x": torch.from_numpy(x)})
            ut, st = tx_t.update(tree(g), st, tree(x))
            flat = torch.cat([ut["a"].reshape(-1), torch.view_as_real(ut["b"]).reshape(-1)])
            torch.testing.assert_close(flat, uv["x"], rtol=1e-12, atol=1e-14)
        assert st.diagonal["b"].dtype == torch.complex128 and st.diagonal["a"].shape == (2, 2)


# --- with a line search ---------------------------------------------------------------------------


def _armijo_run(tx, fn, x0: torch.Tensor, iters: int) -> torch.Tensor:
    """``x <- x - t d`` with ``d`` the transform's direction, ``t`` from backtracking (Armijo,
    c1 = 1e-4, halving from 1) and the gradient where ``d`` does not descend."""
    x = x0.clone()
    state = tx.init({"x": x})
    for _ in range(iters):
        xr = x.clone().requires_grad_(True)
        f = fn(xr)
        (g,) = torch.autograd.grad(f, xr)
        u, state = tx.update({"x": g}, state, {"x": x})
        d = u["x"] if g @ u["x"] > 0 else g
        t = 1.0
        while fn(x - t * d) > f.detach() - 1e-4 * t * (g @ d) and t > 1e-12:
            t *= 0.5
        x = x - t * d
    return x


def _scipy_minimum(fn, x0):
    """scipy's BFGS run on ``fn`` from ``x0`` to ``gtol=1e-12`` (its ``OptimizeResult``)."""
    optimize = pytest.importorskip("scipy.optimize")

    def fg(v):
        t = torch.from_numpy(v).requires_grad_(True)
        f = fn(t)
        (g,) = torch.autograd.grad(f, t)
        return f.item(), g.numpy()

    return optimize.minimize(fg, x0.numpy(), jac=True, method="BFGS", options={"gtol": 1e-12})


@pytest.mark.parametrize("build", [gx.scale_by_diagonal_bfgs, gx.scale_by_diagonal_sr1, gx.scale_by_quasi_cauchy,
                                   gx.scale_by_weighted_quasi_cauchy, gx.scale_by_dnrtr, gx.scale_by_new_dqn])
def test_converges_with_a_line_search(build):
    """With a backtracking line search each method reaches the quadratic's minimiser (found by
    scipy's BFGS) to 1e-6 in 300 steps and lowers 2-d Rosenbrock by 1e3 in 1000. NewDQN's
    diagonal only grows while s.y > 0 (its steps shrink), so it is asked to cut the quadratic's
    optimality gap by 1e3 instead, and on Rosenbrock, where it stalls in the valley (its diagonal
    grows past ``ub`` and is truncated to 1 in turn), to cut the loss by 5."""
    fn, x0, _ = PROBLEMS["quadratic"]
    ref = _scipy_minimum(fn, x0)
    x = _armijo_run(build(), fn, x0, 300)
    if build is gx.scale_by_new_dqn:
        assert fn(x).item() - ref.fun < 1e-3 * (fn(x0).item() - ref.fun)
    else:
        np.testing.assert_allclose(x.numpy(), ref.x, atol=1e-6)
    start = torch.tensor([-1.2, 1.0], dtype=torch.float64)
    x = _armijo_run(build(), _rosenbrock, start, 1000)
    assert _rosenbrock(x) < (0.2 if build is gx.scale_by_new_dqn else 1e-3) * _rosenbrock(start)


def test_docstring_chain_with_gradtx_backtracking_minimises_the_quadratic():
    """The docstrings' chain, ``scale_by_dnrtr() -> scale(-1) -> scale_by_backtracking()`` fed by
    ``gx.evaluation_args``, reaches scipy's minimiser of the quadratic to 1e-6 in 200 steps."""
    fn, x0, _ = PROBLEMS["quadratic"]
    ref = _scipy_minimum(fn, x0)
    tx = gx.chain(gx.scale_by_dnrtr(), gx.scale(-1.0), gx.scale_by_backtracking())
    params = {"x": x0.clone()}
    state = tx.init(params)
    for _ in range(200):
        extra = gx.evaluation_args(lambda p: fn(p["x"]), params)
        updates, state = tx.update(extra["grad"], state, params, **extra)
        params = gx.apply_updates(params, updates)
    np.testing.assert_allclose(params["x"].numpy(), ref.x, atol=1e-6)


# --- hyperparameters ------------------------------------------------------------------------------


@pytest.mark.parametrize("call, match", [
    (lambda: gx.scale_by_diagonal_bfgs(eps=-1.0), "eps"),
    (lambda: gx.scale_by_diagonal_sr1(inverse="no"), "inverse must be True or False"),
    (lambda: gx.scale_by_diagonal_sr1(eps=float("nan")), "eps"),
    (lambda: gx.scale_by_quasi_cauchy(init_scale=0.0), "init_scale"),
    (lambda: gx.scale_by_weighted_quasi_cauchy(init_scale="fast"), "init_scale"),
    (lambda: gx.scale_by_diagonal_bfgs(reset_interval=0), "reset_interval"),
    (lambda: gx.scale_by_dnrtr(lb=-1.0), "lb"),
    (lambda: gx.scale_by_dnrtr(ub="big"), "ub"),
    (lambda: gx.scale_by_new_dqn(lb=2.0, ub=1.0), "lb must be below ub"),
])
def test_hyperparameter_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_needs_params():
    tx = gx.scale_by_dnrtr()
    state = tx.init({"x": torch.ones(2)})
    with pytest.raises(ValueError, match="needs params"):
        tx.update({"x": torch.ones(2)}, state)


# --- through gx.Optimizer -------------------------------------------------------------------------


def test_optimizer_matches_functional_and_resumes_bit_identically():
    """gx.Optimizer(chain(scale_by_dnrtr(), scale_by_lr(0.05))) on a small MLP follows the
    functional trajectory (to 1e-12); a state_dict saved after 4 steps and loaded with
    torch.load(weights_only=True) into a fresh optimizer continues bit-identically."""
    def tx():
        return gx.chain(gx.scale_by_dnrtr(), gx.scale_by_lr(0.05))

    gen = torch.Generator().manual_seed(0)
    X = torch.randn(16, 3, generator=gen, dtype=torch.float64)
    Y = torch.randn(16, 1, generator=gen, dtype=torch.float64)

    def model():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).double()

    m = model()
    opt = gx.Optimizer(m.parameters(), tx())
    names = [n for n, _ in m.named_parameters()]
    params = {n: p.detach().clone() for n, p in m.named_parameters()}
    t = tx()
    state = t.init(params)

    def loss_of(ps):
        return torch.func.functional_call(m, ps, (X,)).sub(Y).pow(2).mean()

    saved = None
    for step in range(8):
        opt.zero_grad()
        loss_of(dict(m.named_parameters())).backward()
        opt.step()
        grads = torch.func.grad(loss_of)(params)
        updates, state = t.update(grads, state, params)
        params = gx.apply_updates(params, updates)
        for n, p in m.named_parameters():
            torch.testing.assert_close(p.detach(), params[n], rtol=1e-12, atol=1e-12)
        if step == 3:
            buf = io.BytesIO()
            torch.save({"opt": opt.state_dict(), "model": m.state_dict()}, buf)
            saved = buf.getvalue()
    final = [p.detach().clone() for p in m.parameters()]

    blob = torch.load(io.BytesIO(saved), weights_only=True)
    m2 = model()
    m2.load_state_dict(blob["model"])
    opt2 = gx.Optimizer(m2.parameters(), tx())
    opt2.load_state_dict(blob["opt"])
    for _ in range(4):
        opt2.zero_grad()
        torch.func.functional_call(m2, dict(m2.named_parameters()), (X,)).sub(Y).pow(2).mean().backward()
        opt2.step()
    for a, b in zip(final, m2.parameters()):
        assert torch.equal(a, b.detach())
    assert names
