"""Nonlinear conjugate gradient: linear CG on a quadratic, each beta against its formula
written here, scipy's CG on Rosenbrock, and the adapter."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_resume_bit_exact, leaf_copy

import gradtx as gx

BETAS = ["fletcher_reeves", "polak_ribiere", "polak_ribiere_plus", "hestenes_stiefel", "dai_yuan", "liu_storey",
         "conjugate_descent", "hager_zhang", "hs_dy"]

SHAPES = {"w": (2, 2), "b": (3,), "s": ()}  # a tree of 8 coordinates


def _flat(tree):
    return torch.cat([tree[k].reshape(-1) for k in SHAPES])


def _tree(flat):
    out, i = {}, 0
    for k, shape in SHAPES.items():
        n = int(torch.tensor(shape).prod()) if shape else 1
        out[k] = flat[i:i + n].reshape(shape).clone()
        i += n
    return out


def _quadratic(n=8, seed=0, cond=50.0):
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    a = q @ torch.diag(torch.logspace(0, torch.log10(torch.tensor(cond)).item(), n, dtype=torch.float64)) @ q.T
    b = torch.randn(n, generator=gen, dtype=torch.float64)
    return a, b


def _linear_cg(a, b, x0, steps):
    """Textbook linear CG (Nocedal & Wright Alg. 5.2), its iterates."""
    x = x0.clone()
    r = a @ x - b
    d = -r
    out = []
    for _ in range(steps):
        alpha = (r @ r) / (d @ a @ d)
        x = x + alpha * d
        r_new = r + alpha * (a @ d)
        d = -r_new + (r_new @ r_new) / (r @ r) * d
        r = r_new
        out.append(x.clone())
    return out


@pytest.mark.parametrize("beta", BETAS)
def test_every_beta_is_linear_cg_on_a_quadratic_with_exact_line_search(beta):
    a, b = _quadratic()
    n = b.numel()
    x0 = torch.linspace(-1.0, 1.0, n, dtype=torch.float64)
    want = _linear_cg(a, b, x0, n)
    tx = gx.scale_by_conjugate_gradient(beta)
    params = _tree(x0)
    state = tx.init(params)
    for k in range(n):
        x = _flat(params)
        g = a @ x - b
        p, state = tx.update(_tree(g), state, params)
        p = _flat(p)
        # the output is -d_k: the exact step along d = -p minimises the quadratic
        alpha = (g @ p) / (p @ a @ p)
        params = _tree(x - alpha * p)
        torch.testing.assert_close(_flat(params), want[k], rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(_flat(params), torch.linalg.solve(a, b), rtol=1e-8, atol=1e-9)


def _beta_formula(name, g, g0, d0):
    """beta_k of each method in the descent convention d_k = -g_k + beta d_{k-1}, from the
    papers (Hager & Zhang 2006 survey, Table 1; CG_DESCENT's lower bound for HZ)."""
    y = g - g0
    if name == "fletcher_reeves":
        return (g @ g) / (g0 @ g0)
    if name == "polak_ribiere":
        return (g @ y) / (g0 @ g0)
    if name == "polak_ribiere_plus":
        return max((g @ y) / (g0 @ g0), torch.tensor(0.0, dtype=g.dtype))
    if name == "hestenes_stiefel":
        return (g @ y) / (d0 @ y)
    if name == "dai_yuan":
        return (g @ g) / (d0 @ y)
    if name == "liu_storey":
        return (g @ y) / (-(d0 @ g0))
    if name == "conjugate_descent":
        return (g @ g) / (-(d0 @ g0))
    if name == "hager_zhang":
        dy = d0 @ y
        hz = ((y - 2 * d0 * (y @ y) / dy) @ g) / dy
        eta = -1.0 / (d0.norm() * torch.clamp(g0.norm(), max=0.01))
        return max(hz, eta)
    if name == "hs_dy":
        return max(torch.tensor(0.0, dtype=g.dtype), min((g @ y) / (d0 @ y), (g @ g) / (d0 @ y)))
    raise AssertionError(name)


@pytest.mark.parametrize("beta", BETAS)
def test_first_steps_follow_each_formula(beta):
    """Four arbitrary gradients (no restart rule on): the outputs are -d_k with d_k built by
    each paper's beta, written independently above."""
    gen = torch.Generator().manual_seed(3)
    gs = [torch.randn(8, generator=gen, dtype=torch.float64) for _ in range(4)]
    # small changes between gradients keep every beta's denominator well away from 0
    gs = [gs[0]] + [gs[0] + 0.3 * g for g in gs[1:]]
    tx = gx.scale_by_conjugate_gradient(beta, restart_on_ascent=False)
    params = _tree(torch.zeros(8, dtype=torch.float64))
    state = tx.init(params)
    d = None
    for k, g in enumerate(gs):
        out, state = tx.update(_tree(g), state, params)
        d = -g if d is None else -g + _beta_formula(beta, g, gs[k - 1], d) * d
        torch.testing.assert_close(_flat(out), -d, rtol=1e-12, atol=1e-12)


def test_restart_every_k_updates():
    gen = torch.Generator().manual_seed(4)
    gs = [torch.randn(8, generator=gen, dtype=torch.float64) for _ in range(5)]
    tx = gx.scale_by_conjugate_gradient("fletcher_reeves", restart_every=2, restart_on_ascent=False)
    params = _tree(torch.zeros(8, dtype=torch.float64))
    state = tx.init(params)
    outs = []
    for g in gs:
        out, state = tx.update(_tree(g), state, params)
        outs.append(_flat(out))
    # steps 0, 2, 4 restart (p = g); steps 1, 3 add beta p_prev
    for k in (0, 2, 4):
        torch.testing.assert_close(outs[k], gs[k], rtol=0, atol=0)
    for k in (1, 3):
        want = gs[k] + (gs[k] @ gs[k]) / (gs[k - 1] @ gs[k - 1]) * outs[k - 1]
        torch.testing.assert_close(outs[k], want, rtol=1e-12, atol=1e-12)


def test_powell_restart():
    g0 = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    g1 = torch.tensor([0.5, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64)  # g1.g0 = 0.5 >= 0.2 |g1|^2
    g2 = torch.tensor([0.1, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    for threshold, restarts in ((0.2, True), (0.5, False)):  # 0.5 / 1.25 = 0.4
        tx = gx.scale_by_conjugate_gradient("fletcher_reeves", restart_threshold=threshold, restart_on_ascent=False)
        params = _tree(torch.zeros(8, dtype=torch.float64))
        state = tx.init(params)
        _, state = tx.update(_tree(g0), state, params)
        out, state = tx.update(_tree(g1), state, params)
        want = g1 if restarts else g1 + (g1 @ g1) / (g0 @ g0) * g0
        torch.testing.assert_close(_flat(out), want, rtol=1e-12, atol=1e-12)
    out, _ = tx.update(_tree(g2), state, params)  # |g2.g1| = 0.05 < 0.5 |g2|^2: no restart
    torch.testing.assert_close(_flat(out), g2 + (g2 @ g2) / (g1 @ g1) * _flat(_tree(want)), rtol=1e-12, atol=1e-12)


def test_restart_on_ascent():
    """Polak-Ribiere can give an ascent direction: g1 = -g0 makes beta = 2 and g1.d1 > 0."""
    g0 = torch.linspace(1.0, 2.0, 8, dtype=torch.float64)
    g1 = -0.5 * g0  # y = -1.5 g0, beta_PR = 0.75; d1 = -g1 - 0.75 g0 = -0.25 g0, g1.d1 > 0
    for on in (True, False):
        tx = gx.scale_by_conjugate_gradient("polak_ribiere", restart_on_ascent=on)
        params = _tree(torch.zeros(8, dtype=torch.float64))
        state = tx.init(params)
        _, state = tx.update(_tree(g0), state, params)
        out, _ = tx.update(_tree(g1), state, params)
        want = g1 if on else g1 + 0.75 * g0
        torch.testing.assert_close(_flat(out), want, rtol=1e-12, atol=1e-12)


def test_global_not_leafwise():
    """beta reads every leaf: the update of one leaf changes with another leaf's gradient."""
    tx = gx.scale_by_conjugate_gradient("fletcher_reeves")
    params = {"a": torch.zeros(2, dtype=torch.float64), "b": torch.zeros(2, dtype=torch.float64)}
    outs = []
    for scale in (1.0, 3.0):
        state = tx.init(params)
        _, state = tx.update({"a": torch.ones(2, dtype=torch.float64), "b": torch.ones(2, dtype=torch.float64)},
                             state, params)
        out, _ = tx.update({"a": torch.ones(2, dtype=torch.float64), "b": scale * torch.ones(2, dtype=torch.float64)},
                           state, params)
        outs.append(out["a"])
    torch.testing.assert_close(outs[0], torch.full((2,), 2.0, dtype=torch.float64))  # beta = 4 / 4
    torch.testing.assert_close(outs[1], torch.full((2,), 1.0 + 20.0 / 4.0, dtype=torch.float64))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="beta"):
        gx.scale_by_conjugate_gradient("polak")
    with pytest.raises(ValueError, match="restart_every"):
        gx.scale_by_conjugate_gradient(restart_every=0)
    with pytest.raises(ValueError, match="restart_threshold"):
        gx.scale_by_conjugate_gradient(restart_threshold=-0.1)


# --- against scipy's CG on Rosenbrock -----------------------------------------------------------


def test_matches_scipy_cg_on_rosenbrock():
    """Polak-Ribiere+ with a Wolfe line search (scipy's line_search, c2 = 0.4 as in its CG):
    the same minimiser as scipy.optimize.minimize(method="CG"), iterations within 2x."""
    np = pytest.importorskip("numpy")
    optimize = pytest.importorskip("scipy.optimize")
    x0 = np.array([-1.2, 1.0])
    ref = optimize.minimize(optimize.rosen, x0, jac=optimize.rosen_der, method="CG", options={"gtol": 1e-8})
    assert ref.success

    tx = gx.scale_by_conjugate_gradient("polak_ribiere_plus")
    params = {"x": torch.tensor(x0)}
    state = tx.init(params)
    old = None
    iterations = 0
    for iterations in range(1, 200):
        x = params["x"].numpy()
        g = optimize.rosen_der(x)
        if np.linalg.norm(g) < 1e-8:
            break
        p, state = tx.update({"x": torch.tensor(g)}, state, params)
        d = -p["x"].numpy()  # the descent direction
        f = optimize.rosen(x)
        alpha = optimize.line_search(optimize.rosen, optimize.rosen_der, x, d, g, f, old, c1=1e-4, c2=0.4)[0]
        assert alpha is not None, f"line search failed at iteration {iterations}"
        old = f
        params = {"x": torch.tensor(x + alpha * d)}
    np.testing.assert_allclose(params["x"].numpy(), ref.x, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(params["x"].numpy(), [1.0, 1.0], atol=1e-6)
    assert ref.nit / 2 <= iterations <= 2 * ref.nit, (iterations, ref.nit)


# --- through gx.Optimizer --------------------------------------------------------------------


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).double()


def _batch():
    gen = torch.Generator().manual_seed(1)
    return torch.randn(16, 3, generator=gen, dtype=torch.float64), torch.randn(16, 1, generator=gen,
                                                                                 dtype=torch.float64)


def _make_tx():
    return gx.chain(gx.scale_by_conjugate_gradient("hestenes_stiefel", restart_every=5), gx.scale_by_lr(0.05))


def test_optimizer_follows_the_functional_trajectory_and_resumes_bit_identically():
    """gx.Optimizer follows the functional run (1e-12) for ten steps and resumes from a
    checkpoint after six bit-identically."""
    model = _model()
    x, y = _batch()
    params = {n: p.detach().clone() for n, p in model.named_parameters()}

    def loss_of(ps, t=None):
        return torch.func.functional_call(model, ps, (x,)).sub(y).square().mean()

    got = assert_resume_bit_exact(lambda leaves: gx.Optimizer(list(leaves.values()), _make_tx()), leaf_copy(params),
                                  loss_of, steps=10, split=6)
    tx = _make_tx()
    state = tx.init(params)
    for step in range(10):
        ps = {n: v.clone().requires_grad_(True) for n, v in params.items()}
        loss = loss_of(ps)
        grads = dict(zip(ps, torch.autograd.grad(loss, list(ps.values()))))
        updates, state = tx.update(grads, state, params)
        params = gx.apply_updates(params, updates)
        for n in params:
            torch.testing.assert_close(got[step][n], params[n], rtol=1e-12, atol=1e-14)
