"""Full-matrix quasi-Newton transforms (gradtx.search.quasi_newton) and L-SR1.

Each rule is checked against its formula written here independently in numpy float64, and
against closed-form properties (quadratic termination of BFGS with exact line searches, SR1
recovering a quadratic's Hessian, BFGS/DFP duality), torchzero's modules (same iterates to
1e-10 where the conventions agree) and scipy's BFGS (same minimiser on Rosenbrock).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

import gradtx as gx

# --- the rules, written independently: (M, s, y, g_prev) -> M+ ---------------------------------


def _np_bfgs_h(H, s, y, gp):
    rho = 1 / (s @ y)
    eye = np.eye(len(s))
    return (eye - rho * np.outer(s, y)) @ H @ (eye - rho * np.outer(y, s)) + rho * np.outer(s, s)


def _np_bfgs_b(B, s, y, gp):
    return B - np.outer(B @ s, s @ B) / (s @ B @ s) + np.outer(y, y) / (y @ s)


def _np_dfp_h(H, s, y, gp):
    return H - np.outer(H @ y, y @ H) / (y @ H @ y) + np.outer(s, s) / (y @ s)


def _np_dfp_b(B, s, y, gp):
    rho = 1 / (s @ y)
    eye = np.eye(len(s))
    return (eye - rho * np.outer(y, s)) @ B @ (eye - rho * np.outer(s, y)) + rho * np.outer(y, y)


def _np_sr1_h(H, s, y, gp):
    z = s - H @ y
    if abs(z @ y) <= 1e-8 * np.linalg.norm(z) * np.linalg.norm(y):  # N&W eq. 6.26: skip
        return H
    return H + np.outer(z, z) / (z @ y)


def _np_sr1_b(B, s, y, gp):
    r = y - B @ s
    if abs(r @ s) <= 1e-8 * np.linalg.norm(r) * np.linalg.norm(s):
        return B
    return B + np.outer(r, r) / (r @ s)


def _np_psb_b(B, s, y, gp):
    r = y - B @ s
    ss = s @ s
    return B + (np.outer(r, s) + np.outer(s, r)) / ss - (r @ s) * np.outer(s, s) / ss**2


def _np_class(c):  # Spedicato & Huang: H + (s - Hy) c^T / c^T y
    def rule(H, s, y, gp):
        cv = c(H, s, y, gp)
        return H + np.outer(s - H @ y, cv) / (cv @ y)
    return rule


def _np_broyden_good_b(B, s, y, gp):
    return B + np.outer(y - B @ s, s) / (s @ s)


def _np_broyden_bad_b(B, s, y, gp):  # the Sherman-Morrison inverse of H + (s - Hy) y^T / y^T y
    return np.linalg.inv(np.linalg.inv(B) + np.outer(s - np.linalg.inv(B) @ y, y) / (y @ y))


def _np_hoshino_h(H, s, y, gp):
    sy, yHy = s @ y, y @ H @ y
    num = (1 + 2 * yHy / sy) * np.outer(s, s) - np.outer(s, y @ H) - np.outer(H @ y, s) - np.outer(H @ y, y @ H)
    return H + num / (sy + yHy)


def _np_shor_h(H, s, y, gp, alpha=0.5):
    Hy = H @ y
    return H - (1 - alpha**2) * np.outer(Hy, Hy) / (y @ Hy)


def _e_argmax(H, s, y, gp):
    e = np.zeros_like(y)
    e[np.argmax(np.abs(y))] = 1.0
    return e


# (constructor, kwargs, numpy rule, inverse form); the automatic initial scale unless init_scale=1
RULES = {
    "bfgs": (gx.scale_by_bfgs, {}, _np_bfgs_h, True),
    "bfgs-hessian": (gx.scale_by_bfgs, {"inverse": False}, _np_bfgs_b, False),
    "dfp": (gx.scale_by_dfp, {}, _np_dfp_h, True),
    "dfp-hessian": (gx.scale_by_dfp, {"inverse": False}, _np_dfp_b, False),
    "sr1": (gx.scale_by_sr1, {}, _np_sr1_h, True),  # init_scale=1 by default
    "sr1-hessian": (gx.scale_by_sr1, {"inverse": False}, _np_sr1_b, False),
    "sr1-auto": (gx.scale_by_sr1, {"init_scale": "auto"}, _np_sr1_h, True),
    "psb": (gx.scale_by_psb, {}, _np_psb_b, False),
    "broyden_good": (gx.scale_by_broyden_good, {}, _np_class(lambda H, s, y, gp: H.T @ s), True),
    "broyden_good-hessian": (gx.scale_by_broyden_good, {"inverse": False}, _np_broyden_good_b, False),
    "broyden_bad": (gx.scale_by_broyden_bad, {}, _np_class(lambda H, s, y, gp: y), True),
    "broyden_bad-hessian": (gx.scale_by_broyden_bad, {"inverse": False}, _np_broyden_bad_b, False),
    "greenstadt1": (gx.scale_by_greenstadt1, {}, _np_class(lambda H, s, y, gp: gp), True),
    "greenstadt2": (gx.scale_by_greenstadt2, {}, _np_class(lambda H, s, y, gp: H @ H @ y), True),
    "mccormick": (gx.scale_by_mccormick, {}, _np_class(lambda H, s, y, gp: s), True),
    "pearson": (gx.scale_by_pearson, {}, _np_class(lambda H, s, y, gp: H @ y), True),
    "icum": (gx.scale_by_icum, {}, _np_class(_e_argmax), True),
    "hoshino": (gx.scale_by_hoshino, {}, _np_hoshino_h, True),
    "shor_r": (gx.scale_by_shor_r, {"init_scale": "auto"}, _np_shor_h, True),
}
RULES_WITH_LINE_SEARCH = dict(RULES, ssvm=(gx.scale_by_ssvm, {}, None, True),
                              thomas=(gx.scale_by_thomas, {}, None, True),
                              projected_newton_raphson=(gx.scale_by_projected_newton_raphson, {}, None, True))


def _spd(n: int, seed: int, cond: float = 10.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    return q @ np.diag(np.geomspace(1.0, cond, n)) @ q.T


def _split_tree(v: np.ndarray) -> dict[str, torch.Tensor]:
    """A 5-vector as a tree of a (2, 1) matrix and a 3-vector, float64."""
    t = torch.from_numpy(v.copy())
    return {"m": t[:2].reshape(2, 1).clone(), "v": t[2:].clone()}


def _join(tree: dict[str, torch.Tensor]) -> np.ndarray:
    return torch.cat([tree["m"].reshape(-1), tree["v"]]).numpy()


def _np_ssvm_h(H, s, y, g, switch):
    """Oren & Spedicato's update, with torchzero's choices of (phi, theta)."""
    sy, Hy = s @ y, H @ y
    yHy, gHy, gs = y @ Hy, g @ Hy, g @ s
    o, t, e = sy, yHy, gs / gHy
    if isinstance(switch, tuple):
        phi, theta = switch
    elif switch in (1, 3):
        if e / o <= 1:
            phi, theta = e / o, 0.0
        elif o / t >= 1:
            phi, theta = o / t, 1.0
        else:
            phi = 1.0
            theta = (o * (e - o) if switch == 1 else o * (t - o)) / (e * t - o**2)
    elif switch == 2:
        phi, theta = np.sqrt(e / t), 1 / (1 + np.sqrt(t * e / o**2))
    else:
        phi, theta = e / t, 0.5
    v = np.sqrt(yHy) * (s / sy - Hy / yHy)
    mu = phi * gs / gHy + (1 - phi) * sy / yHy
    return mu * (H - np.outer(Hy, Hy) / yHy + theta * np.outer(v, v)) + np.outer(s, s) / sy


@pytest.mark.parametrize("switch", [1, 2, 3, 4, (0.3, 0.6)])
def test_ssvm_first_updates_match_the_formula(switch):
    n = 5
    A = _spd(n, 0)
    rng = np.random.default_rng(1)
    tx = gx.scale_by_ssvm(switch=switch)
    xs = [rng.standard_normal(n) for _ in range(4)]
    gs = [A @ x + 0.01 * rng.standard_normal(n) for x in xs]
    state = tx.init(_split_tree(xs[0]))
    M = np.eye(n)
    for k, (x, g) in enumerate(zip(xs, gs)):
        updates, state = tx.update(_split_tree(g), state, _split_tree(x))
        if k > 0:
            s, y = x - xs[k - 1], g - gs[k - 1]
            if k == 1:
                M = M * (s @ y) / (y @ y)
            M = _np_ssvm_h(M, s, y, g, switch)
            np.testing.assert_allclose(state.matrix.numpy(), M, rtol=1e-10, atol=1e-12, err_msg=f"update {k}")
        np.testing.assert_allclose(_join(updates), M @ g, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("key", list(RULES))
def test_first_updates_match_the_formula(key):
    """Three matrix updates from random points with g = A x + noise (s.y > 0): the state's
    matrix and the returned direction equal the numpy formula, with N&W's initial scale (for
    SR1 with it, the first update is skipped: z.y = 0 exactly)."""
    build, kwargs, rule, inverse = RULES[key]
    n = 5
    A = _spd(n, 0)
    rng = np.random.default_rng(1)
    tx = build(**kwargs)
    xs = [rng.standard_normal(n) for _ in range(4)]
    gs = [A @ x + 0.01 * rng.standard_normal(n) for x in xs]
    state = tx.init(_split_tree(xs[0]))
    M = np.eye(n)
    for k, (x, g) in enumerate(zip(xs, gs)):
        updates, state = tx.update(_split_tree(g), state, _split_tree(x))
        if k > 0:
            s, y = x - xs[k - 1], g - gs[k - 1]
            if k == 1 and kwargs.get("init_scale", 1.0 if build is gx.scale_by_sr1 else "auto") == "auto":
                # N&W eq. 6.20, on the first update
                M = M * ((s @ y) / (y @ y) if inverse else (y @ y) / (s @ y))
            M = rule(M, s, y, gs[k - 1])
            np.testing.assert_allclose(state.matrix.numpy(), M, rtol=1e-10, atol=1e-12, err_msg=f"update {k}")
        want = M @ g if inverse else np.linalg.solve(M, g)
        np.testing.assert_allclose(_join(updates), want, rtol=1e-9, atol=1e-12, err_msg=f"direction {k}")


def test_init_scale_number_and_curvature_skips():
    """A numeric init_scale c gives H_0 = I / c (B_0 = c I) and no automatic scaling; BFGS
    skips an update with s.y <= 0 and SR1 one with |z.y| <= eps |z| |y|."""
    x0, x1 = np.array([1.0, 0.0]), np.array([0.0, 0.0])
    tx = gx.scale_by_bfgs(init_scale=4.0)
    state = tx.init({"x": torch.zeros(2, dtype=torch.float64)})
    u, state = tx.update({"x": torch.tensor([1.0, 1.0], dtype=torch.float64)}, state,
                         {"x": torch.from_numpy(x0)})
    np.testing.assert_allclose(u["x"].numpy(), [0.25, 0.25])
    # s = (-1, 0), y = (1, 0): s.y = -1 < 0, skipped
    u, state = tx.update({"x": torch.tensor([2.0, 1.0], dtype=torch.float64)}, state, {"x": torch.from_numpy(x1)})
    np.testing.assert_allclose(state.matrix.numpy(), np.eye(2) / 4)
    tx = gx.scale_by_bfgs(inverse=False, init_scale=4.0)
    state = tx.init({"x": torch.zeros(2, dtype=torch.float64)})
    np.testing.assert_allclose(state.matrix.numpy(), 4 * np.eye(2))
    # SR1: y = H^{-1} s exactly (z = 0): the rule would divide 0 by 0, so it is skipped
    tx = gx.scale_by_sr1(init_scale=1.0)
    state = tx.init({"x": torch.zeros(2, dtype=torch.float64)})
    _, state = tx.update({"x": torch.tensor([1.0, 1.0], dtype=torch.float64)}, state, {"x": torch.from_numpy(x0)})
    _, state = tx.update({"x": torch.tensor([0.0, 1.0], dtype=torch.float64)}, state, {"x": torch.from_numpy(x1)})
    np.testing.assert_array_equal(state.matrix.numpy(), np.eye(2))


def test_powell_damping_keeps_positive_curvature():
    """With damping, a pair with s.y < 0 still updates BFGS with r = theta y + (1 - theta) B s,
    theta = 0.8 s^T B s / (s^T B s - s.y) (N&W procedure 18.2), and H stays positive definite."""
    tx = gx.scale_by_bfgs(inverse=False, init_scale=1.0, damping=True)
    state = tx.init({"x": torch.zeros(2, dtype=torch.float64)})
    _, state = tx.update({"x": torch.tensor([1.0, 0.0], dtype=torch.float64)}, state,
                         {"x": torch.tensor([0.0, 0.0], dtype=torch.float64)})
    _, state = tx.update({"x": torch.tensor([0.5, 0.3], dtype=torch.float64)}, state,
                         {"x": torch.tensor([1.0, 0.0], dtype=torch.float64)})
    s, y, B = np.array([1.0, 0.0]), np.array([-0.5, 0.3]), np.eye(2)
    sBs, sy = s @ B @ s, s @ y
    theta = 0.8 * sBs / (sBs - sy)
    r = theta * y + (1 - theta) * B @ s
    np.testing.assert_allclose(state.matrix.numpy(), _np_bfgs_b(B, s, r, None), rtol=1e-12)
    assert np.all(np.linalg.eigvalsh(state.matrix.numpy()) > 0)


def test_reset_interval_restores_the_initial_matrix():
    """reset_interval=k: on every k-th call the matrix is I (scaled by the pair of that call)."""
    tx = gx.scale_by_bfgs(reset_interval=3)
    A = _spd(3, 2)
    rng = np.random.default_rng(3)
    xs = [rng.standard_normal(3) for _ in range(3)]
    state = tx.init({"x": torch.zeros(3, dtype=torch.float64)})
    for x in xs:
        _, state = tx.update({"x": torch.from_numpy(A @ x)}, state, {"x": torch.from_numpy(x)})
    s, y = xs[2] - xs[1], A @ (xs[2] - xs[1])
    np.testing.assert_allclose(state.matrix.numpy(), np.eye(3) * (s @ y) / (y @ y), rtol=1e-12)


# --- closed-form properties ---------------------------------------------------------------------


def test_bfgs_exact_line_search_terminates_on_a_quadratic_with_the_inverse_hessian():
    """BFGS with exact line searches on f = x^T A x / 2 - b^T x in R^n, H_0 = I: the gradient
    vanishes after n steps and H_n = A^{-1} (quadratic termination)."""
    n = 6
    A = _spd(n, 4, cond=50.0)
    b = np.random.default_rng(5).standard_normal(n)
    tx = gx.scale_by_bfgs(init_scale=1.0)
    x = np.zeros(n)
    state = tx.init({"x": torch.zeros(n, dtype=torch.float64)})
    for _ in range(n):
        g = A @ x - b
        u, state = tx.update({"x": torch.from_numpy(g)}, state, {"x": torch.from_numpy(x)})
        d = -u["x"].numpy()
        x = x + (-(g @ d) / (d @ A @ d)) * d
    assert np.linalg.norm(A @ x - b) < 1e-10 * np.linalg.norm(b)
    # one more call forms H_n from the last pair
    _, state = tx.update({"x": torch.from_numpy(A @ x - b)}, state, {"x": torch.from_numpy(x)})
    np.testing.assert_allclose(state.matrix.numpy(), np.linalg.inv(A), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("inverse", [True, False])
def test_sr1_recovers_the_hessian_of_a_quadratic(inverse):
    """SR1 after n linearly independent steps on a quadratic (any steps, no line search):
    B_n = A (N&W theorem 6.1), or H_n = A^{-1}."""
    n = 5
    A = _spd(n, 6)
    rng = np.random.default_rng(7)
    tx = gx.scale_by_sr1(inverse=inverse, init_scale=1.0)
    state = tx.init({"x": torch.zeros(n, dtype=torch.float64)})
    for x in [rng.standard_normal(n) for _ in range(n + 1)]:
        _, state = tx.update({"x": torch.from_numpy(A @ x)}, state, {"x": torch.from_numpy(x)})
    want = np.linalg.inv(A) if inverse else A
    np.testing.assert_allclose(state.matrix.numpy(), want, rtol=1e-8, atol=1e-10)


def test_bfgs_dfp_duality_and_forms():
    """DFP's Hessian update is BFGS's inverse update with s and y exchanged (feeding one the
    params as updates and the updates as params gives the same matrix), and each method's
    inverse and Hessian forms give inverse matrices."""
    n = 4
    A = _spd(n, 8)
    rng = np.random.default_rng(9)
    xs = [rng.standard_normal(n) for _ in range(4)]
    gs = [A @ x for x in xs]
    runs = {"dfp_b": (gx.scale_by_dfp(inverse=False, init_scale=1.0), False),
            "bfgs_h_swapped": (gx.scale_by_bfgs(init_scale=1.0), True),
            "bfgs_h": (gx.scale_by_bfgs(), False), "bfgs_b": (gx.scale_by_bfgs(inverse=False), False),
            "dfp_h": (gx.scale_by_dfp(), False), "dfp_b_auto": (gx.scale_by_dfp(inverse=False), False)}
    mats = {}
    for key, (tx, swapped) in runs.items():
        state = tx.init({"x": torch.zeros(n, dtype=torch.float64)})
        for x, g in zip(xs, gs):
            u, p = (x, g) if swapped else (g, x)
            _, state = tx.update({"x": torch.from_numpy(u)}, state, {"x": torch.from_numpy(p)})
        mats[key] = state.matrix.numpy()
    np.testing.assert_allclose(mats["dfp_b"], mats["bfgs_h_swapped"], rtol=1e-12)
    np.testing.assert_allclose(mats["bfgs_h"] @ mats["bfgs_b"], np.eye(n), atol=1e-10)
    np.testing.assert_allclose(mats["dfp_h"] @ mats["dfp_b_auto"], np.eye(n), atol=1e-10)


# --- torchzero as an oracle ---------------------------------------------------------------------

TZ = {  # gradtx constructor -> torchzero module, where the conventions agree
    "bfgs": (lambda: gx.scale_by_bfgs(), "BFGS", {}),
    "bfgs-hessian": (lambda: gx.scale_by_bfgs(inverse=False), "BFGS", {"inverse": False}),
    "dfp": (lambda: gx.scale_by_dfp(), "DFP", {}),
    # the automatic scale makes SR1's first z.y exactly 0 (z = s - (s.y / y.y) y): torchzero
    # divides by a clipped 0 there; gradtx's SR1 starts from H_0 = I by default
    "sr1": (lambda: gx.scale_by_sr1(eps=1e-32), "SR1", {"init_scale": 1.0}),
    "sr1-hessian": (lambda: gx.scale_by_sr1(inverse=False, eps=1e-32), "SR1", {"inverse": False, "init_scale": 1.0}),
    "psb": (lambda: gx.scale_by_psb(), "PSB", {}),
    "broyden_good": (lambda: gx.scale_by_broyden_good(), "BroydenGood", {}),
    "broyden_good-hessian": (lambda: gx.scale_by_broyden_good(inverse=False), "BroydenGood", {"inverse": False}),
    "broyden_bad": (lambda: gx.scale_by_broyden_bad(), "BroydenBad", {}),
    "greenstadt2": (lambda: gx.scale_by_greenstadt2(), "Greenstadt2", {}),
    "mccormick": (lambda: gx.scale_by_mccormick(), "McCormick", {}),
    "pearson": (lambda: gx.scale_by_pearson(), "Pearson", {}),
    "icum": (lambda: gx.scale_by_icum(), "ICUM", {}),
    "hoshino": (lambda: gx.scale_by_hoshino(), "Horisho", {}),
    "ssvm": (lambda: gx.scale_by_ssvm(), "SSVM", {}),
    "ssvm-1": (lambda: gx.scale_by_ssvm(switch=1), "SSVM", {"switch": 1}),
    # (switch=2 takes sqrt(e / t), e = g.s / g^T H y: negative on this run at step 1, where
    # torchzero's iterate becomes NaN and gradtx skips the update; checked against numpy above)
    "ssvm-4": (lambda: gx.scale_by_ssvm(switch=4), "SSVM", {"switch": 4}),
    "shor_r": (lambda: gx.scale_by_shor_r(), "ShorR", {}),
    "thomas": (lambda: gx.scale_by_thomas(), "ThomasOptimalMethod", {}),
    "thomas-reset": (lambda: gx.scale_by_thomas(reset_interval=4), "ThomasOptimalMethod", {"restart_interval": 4}),
    # n = 5: the 6th call restarts H from R
    "projected_newton_raphson": (lambda: gx.scale_by_projected_newton_raphson(), "ProjectedNewtonRaphson", {}),
    "new_ssm": (lambda: gx.scale_by_new_ssm(), "NewSSM", {}),
    "new_ssm-2": (lambda: gx.scale_by_new_ssm(kind=2), "NewSSM", {"type": 2}),
}


def _quadratic_loss(A: torch.Tensor, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return 0.5 * x @ A @ x - b @ x + 0.1 * (x**4).sum()


@pytest.mark.parametrize("key", list(TZ))
def test_matches_torchzero(key):
    """Eight steps with a fixed step of 0.2 on a quartic-perturbed quadratic, float64: the
    iterates equal torchzero 0.4's ``tz.Optimizer([x], tz.m.<Module>(), tz.m.LR(0.2))`` to 1e-10.
    (Greenstadt1 differs on purpose: see its docstring; BroydenBad's Hessian form is
    torchzero's own secant update, not the inverse of the H form.)"""
    tz = pytest.importorskip("torchzero")
    build, module, kwargs = TZ[key]
    n = 5
    A = torch.from_numpy(_spd(n, 10))
    b = torch.linspace(-1, 1, n, dtype=torch.float64)
    x_tz = torch.nn.Parameter(torch.ones(n, dtype=torch.float64))
    opt = tz.Optimizer([x_tz], getattr(tz.m, module)(**kwargs), tz.m.LR(0.2))

    def closure(backward=True):
        loss = _quadratic_loss(A, b, x_tz)
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

    tx = gx.chain(build(), gx.scale_by_lr(0.2))
    params = {"x": torch.ones(n, dtype=torch.float64)}
    state = tx.init(params)
    for step in range(8):
        x = params["x"].clone().requires_grad_(True)
        loss = _quadratic_loss(A, b, x)
        (g,) = torch.autograd.grad(loss, x)
        updates, state = tx.update({"x": g}, state, params, value=loss.detach())  # (NewSSM reads it)
        params = gx.apply_updates(params, updates)
        opt.step(closure)
        torch.testing.assert_close(params["x"], x_tz.detach(), rtol=1e-10, atol=1e-12,
                                   msg=lambda m, step=step: f"step {step}: {m}")


# --- scipy's BFGS ---------------------------------------------------------------------------------


def _rosenbrock(x: np.ndarray) -> tuple[float, np.ndarray]:
    f = float(np.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2))
    g = np.zeros_like(x)
    g[:-1] = -400 * x[:-1] * (x[1:] - x[:-1] ** 2) - 2 * (1 - x[:-1])
    g[1:] += 200 * (x[1:] - x[:-1] ** 2)
    return f, g


def _armijo_run(tx, fg, x0: np.ndarray, gtol: float = 1e-6, max_iter: int = 2000) -> tuple[np.ndarray, int]:
    """``x <- x - t d`` with ``d`` the transform's direction and ``t`` from backtracking
    (Armijo, c1 = 1e-4, halving from 1); stops at ||g|| <= gtol."""
    x = x0.copy()
    state = tx.init({"x": torch.from_numpy(x)})
    for it in range(max_iter):
        f, g = fg(x)
        if np.linalg.norm(g) <= gtol:
            return x, it
        u, state = tx.update({"x": torch.from_numpy(g)}, state, {"x": torch.from_numpy(x)})
        d = u["x"].numpy()
        if g @ d <= 0:  # not a descent direction: fall back to the gradient
            d = g
        t = 1.0
        while fg(x - t * d)[0] > f - 1e-4 * t * (g @ d) and t > 1e-12:
            t *= 0.5
        x = x - t * d
    return x, max_iter


@pytest.mark.parametrize("n", [2, 10])
def test_bfgs_matches_scipy_on_rosenbrock(n):
    """BFGS with a backtracking line search reaches scipy.optimize.minimize(method="BFGS")'s
    minimiser (x = 1) on Rosenbrock in 2 and 10 dimensions, in at most 3x its iterations."""
    optimize = pytest.importorskip("scipy.optimize")
    x0 = np.full(n, -1.2) if n > 2 else np.array([-1.2, 1.0])
    ref = optimize.minimize(lambda x: _rosenbrock(x), x0, jac=True, method="BFGS", options={"gtol": 1e-6})
    x, iters = _armijo_run(gx.scale_by_bfgs(), _rosenbrock, x0)
    np.testing.assert_allclose(x, ref.x, atol=1e-5)
    np.testing.assert_allclose(x, np.ones(n), atol=1e-5)
    assert iters <= 3 * ref.nit, (iters, ref.nit)


@pytest.mark.slow
@pytest.mark.parametrize("key", ["sr1", "psb", "broyden_good", "broyden_bad", "greenstadt1", "greenstadt2",
                                 "mccormick", "pearson", "icum", "hoshino", "dfp", "ssvm", "thomas",
                                 "projected_newton_raphson"])
def test_other_rules_minimise_rosenbrock_with_a_line_search(key):
    """Every rule with a backtracking line search (and a gradient fallback where the direction
    does not descend) reaches Rosenbrock's minimiser in 2 dimensions."""
    build, kwargs, _, _ = RULES_WITH_LINE_SEARCH[key]
    x, _ = _armijo_run(build(**kwargs), _rosenbrock, np.array([-1.2, 1.0]), gtol=1e-6, max_iter=1000)
    assert _rosenbrock(x)[0] < 1e-3 * _rosenbrock(np.array([-1.2, 1.0]))[0]


# --- through gx.Optimizer -------------------------------------------------------------------------


def _model_and_data():
    gen = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).double()
    X = torch.randn(16, 3, generator=gen, dtype=torch.float64)
    Y = torch.randn(16, 1, generator=gen, dtype=torch.float64)
    return model, X, Y


def test_optimizer_matches_functional_and_resumes_bit_identically():
    """gx.Optimizer(chain(scale_by_bfgs(), scale_by_lr(0.1))) on a small MLP follows the
    functional trajectory (to 1e-12); a state_dict saved after 4 steps and loaded with
    torch.load(weights_only=True) into a fresh optimizer continues bit-identically."""
    def tx():
        return gx.chain(gx.scale_by_bfgs(), gx.scale_by_lr(0.1))

    model, X, Y = _model_and_data()
    names = [n for n, _ in model.named_parameters()]
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    fn_tx = tx()
    state = fn_tx.init(params)

    def grads_at(ps):
        leaves = {k: v.clone().requires_grad_(True) for k, v in ps.items()}
        out = torch.func.functional_call(model, leaves, (X,))
        loss = ((out - Y) ** 2).mean()
        return dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))

    opt = gx.Optimizer(model.parameters(), tx())

    def step(m, o):
        o.zero_grad()
        ((m(X) - Y) ** 2).mean().backward()
        o.step()

    for _ in range(4):
        updates, state = fn_tx.update(grads_at(params), state, params)
        params = gx.apply_updates(params, updates)
        step(model, opt)
        for n, p in model.named_parameters():
            torch.testing.assert_close(p.detach(), params[n], rtol=1e-12, atol=1e-14)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    model2, _, _ = _model_and_data()
    model2.load_state_dict(saved["model"])
    opt2 = gx.Optimizer(model2.parameters(), tx())
    opt2.load_state_dict(saved["opt"])
    for _ in range(3):
        step(model, opt)
        step(model2, opt2)
    for (n, p), p2 in zip(model.named_parameters(), model2.parameters()):
        assert torch.equal(p, p2), n
    assert names


def test_float32_params_keep_a_float32_matrix_and_float64_a_float64_one():
    for dtype in (torch.float32, torch.float64):
        state = gx.scale_by_sr1().init({"a": torch.zeros(3, dtype=dtype), "b": torch.zeros(2, dtype=torch.bfloat16)})
        assert state.matrix.dtype == dtype and state.matrix.shape == (5, 5)


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="init_scale"):
        gx.scale_by_bfgs(init_scale="bad")
    with pytest.raises(ValueError, match="reset_interval"):
        gx.scale_by_bfgs(reset_interval=0)
    for make in (gx.scale_by_bfgs, gx.scale_by_dfp, gx.scale_by_sr1):
        with pytest.raises(ValueError, match="inverse must be True or False"):
            make(inverse="no")
    with pytest.raises(ValueError, match="needs params"):
        tx = gx.scale_by_bfgs()
        tx.update({"x": torch.ones(2)}, tx.init({"x": torch.ones(2)}))
    with pytest.raises(ValueError, match="built for 2"):
        tx = gx.scale_by_bfgs()
        tx.update({"x": torch.ones(3)}, tx.init({"x": torch.ones(2)}), {"x": torch.ones(3)})
    with pytest.raises(ValueError, match="kind"):
        gx.scale_by_new_ssm(kind=3)
    with pytest.raises(ValueError, match="needs value"):
        tx = gx.scale_by_new_ssm()
        tx.update({"x": torch.ones(2)}, tx.init({"x": torch.ones(2)}), {"x": torch.ones(2)})
    with pytest.raises(ValueError, match="reset_interval"):
        gx.scale_by_projected_newton_raphson(reset_interval=-1)


def test_projected_newton_raphson_restarts_from_its_inverse_hessian_estimate():
    """On a quadratic g = A x, after n independent pairs the projection H is 0 and R = A^{-1}
    (R y_i = s_i for every pair, Pearson 1969); with ``reset_interval=n + 2`` (the first call
    has no pair) the next call restarts H from R, so its direction is Newton's, A^{-1} g."""
    n = 4
    A = _spd(n, 3)
    rng = np.random.default_rng(4)
    tx = gx.scale_by_projected_newton_raphson(init_scale=1.0, reset_interval=n + 2)
    state = tx.init({"x": torch.zeros(n, dtype=torch.float64)})
    for k in range(n + 2):
        x = rng.standard_normal(n)
        u, state = tx.update({"x": torch.from_numpy(A @ x)}, state, {"x": torch.from_numpy(x)})
        if k == n:
            np.testing.assert_allclose(state.extra.numpy(), np.linalg.inv(A), rtol=1e-8, atol=1e-10)
            np.testing.assert_allclose(state.matrix.numpy(), np.zeros((n, n)), atol=1e-10)
    np.testing.assert_allclose(u["x"].numpy(), x, rtol=1e-8)


# --- limited-memory SR1 ---------------------------------------------------------------------------


@pytest.mark.parametrize("init_scale", [1.0, 2.5])
def test_lsr1_with_enough_memory_is_full_sr1(init_scale):
    """With memory for every pair, L-SR1's direction equals full SR1's (inverse form, the same
    H_0 and skip rule) at every step, on an indefinite quadratic with a 2-leaf tree."""
    n = 5
    rng = np.random.default_rng(11)
    A = _spd(n, 12) - 1.5 * np.eye(n)  # indefinite: SR1 keeps it so
    full, lim = gx.scale_by_sr1(init_scale=init_scale), gx.scale_by_lsr1(memory_size=8, init_scale=init_scale)
    xs = [rng.standard_normal(n) for _ in range(8)]
    sf, sl = full.init(_split_tree(xs[0])), lim.init(_split_tree(xs[0]))
    for x in xs:
        g = _split_tree(A @ x)
        uf, sf = full.update(g, sf, _split_tree(x))
        ul, sl = lim.update(g, sl, _split_tree(x))
        np.testing.assert_allclose(_join(ul), _join(uf), rtol=1e-9, atol=1e-12)


def test_lsr1_keeps_the_last_m_pairs():
    """memory_size=2 after 5 pairs: the direction is SR1's from H_0 = I through the last two
    pairs only (written here in numpy), so the ring buffer's order is right after wrapping."""
    n = 4
    rng = np.random.default_rng(13)
    A = _spd(n, 14)
    xs = [rng.standard_normal(n) for _ in range(6)]
    tx = gx.scale_by_lsr1(memory_size=2)
    state = tx.init({"x": torch.zeros(n, dtype=torch.float64)})
    for x in xs:
        u, state = tx.update({"x": torch.from_numpy(A @ x)}, state, {"x": torch.from_numpy(x)})
    H = np.eye(n)
    for k in (4, 5):
        H = _np_sr1_h(H, xs[k] - xs[k - 1], A @ (xs[k] - xs[k - 1]), None)
    np.testing.assert_allclose(u["x"].numpy(), H @ (A @ xs[-1]), rtol=1e-10)


def test_lsr1_matches_torchzero():
    """Eight steps with a fixed step of 0.2: the iterates equal torchzero 0.4's LSR1 to 1e-10."""
    tz = pytest.importorskip("torchzero")
    n = 5
    A = torch.from_numpy(_spd(n, 10))
    b = torch.linspace(-1, 1, n, dtype=torch.float64)
    x_tz = torch.nn.Parameter(torch.ones(n, dtype=torch.float64))
    opt = tz.Optimizer([x_tz], tz.m.LSR1(history_size=3), tz.m.LR(0.2))

    def closure(backward=True):
        loss = _quadratic_loss(A, b, x_tz)
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

    tx = gx.chain(gx.scale_by_lsr1(memory_size=3, eps=0.0), gx.scale_by_lr(0.2))
    params = {"x": torch.ones(n, dtype=torch.float64)}
    state = tx.init(params)
    for step in range(8):
        x = params["x"].clone().requires_grad_(True)
        loss = _quadratic_loss(A, b, x)
        (g,) = torch.autograd.grad(loss, x)
        updates, state = tx.update({"x": g}, state, params, value=loss.detach())  # (NewSSM reads it)
        params = gx.apply_updates(params, updates)
        opt.step(closure)
        torch.testing.assert_close(params["x"], x_tz.detach(), rtol=1e-10, atol=1e-12,
                                   msg=lambda m, step=step: f"step {step}: {m}")


def test_lsr1_minimises_rosenbrock_with_a_line_search():
    x, _ = _armijo_run(gx.scale_by_lsr1(memory_size=5), _rosenbrock, np.array([-1.2, 1.0]), max_iter=1000)
    assert _rosenbrock(x)[0] < 1e-3 * _rosenbrock(np.array([-1.2, 1.0]))[0]


def test_a_complex_leaf_after_an_odd_length_real_leaf_is_one_vector_of_real_coordinates():
    """BFGS over {real 3-vector, complex 2-vector} equals BFGS over the 7 real coordinates: the
    complex leaf's piece of the flat vector starts at an odd offset (it used to fail to view)."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(7, 7, generator=gen, dtype=torch.float64)
    a = a @ a.T + 7 * torch.eye(7, dtype=torch.float64)

    def grad_of(v):
        return a @ v

    tx = gx.chain(gx.scale_by_bfgs(), gx.scale_by_lr(0.1))
    v = torch.randn(7, generator=gen, dtype=torch.float64)
    tree = {"a": v[:3].clone(), "b": torch.view_as_complex(v[3:].reshape(2, 2).clone())}
    flat = {"x": v.clone()}
    tree_state, flat_state = tx.init(tree), tx.init(flat)
    for _ in range(5):
        g = grad_of(torch.cat([tree["a"], torch.view_as_real(tree["b"]).reshape(-1)]))
        pieces = {"a": g[:3], "b": torch.view_as_complex(g[3:].reshape(2, 2).clone())}
        u, tree_state = tx.update(pieces, tree_state, tree)
        tree = gx.apply_updates(tree, u)
        w, flat_state = tx.update({"x": grad_of(flat["x"])}, flat_state, flat)
        flat = gx.apply_updates(flat, w)
    got = torch.cat([tree["a"], torch.view_as_real(tree["b"]).reshape(-1)])
    torch.testing.assert_close(got, flat["x"], rtol=1e-12, atol=1e-14)
