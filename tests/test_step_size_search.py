"""Barzilai-Borwein (closed forms on a quadratic) and the bold driver (its rule written here)."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_resume_bit_exact, leaf_copy, regression_batch, tanh_net

import gradtx as gx


def _quadratic(n=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    a = q @ torch.diag(torch.linspace(1.0, 20.0, n, dtype=torch.float64)) @ q.T
    return a, torch.randn(n, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("variant", ["long", "short"])
@pytest.mark.parametrize("delta", [None, 0.5])
def test_barzilai_borwein_steps_are_the_closed_forms_on_a_quadratic(variant, delta):
    """On f = x'Ax/2 - b'x, y = A s: BB1 = s's / s'As, BB2 = s'As / s'AAs; stabilised:
    min(that, delta / |g|); the first step is init_step. The iterates reach A^-1 b."""
    a, b = _quadratic()
    tx = gx.chain(gx.scale_by_barzilai_borwein(variant, init_step=0.01, delta=delta), gx.scale_by_lr(1.0))
    x = {"x": torch.zeros(6, dtype=torch.float64)}
    state = tx.init(x)
    prev = None
    for k in range(60):
        g = a @ x["x"] - b
        u, state = tx.update({"x": g}, state, x)
        if k == 0:
            alpha = torch.tensor(0.01, dtype=torch.float64)
        else:
            s = x["x"] - prev
            alpha = (s @ s) / (s @ a @ s) if variant == "long" else (s @ a @ s) / (s @ a @ a @ s)
        if delta is not None and g.norm() > 0:
            alpha = torch.minimum(alpha, delta / g.norm())
        if k < 20:
            torch.testing.assert_close(u["x"], -alpha * g, rtol=1e-10, atol=1e-14)
        prev = x["x"]
        x = gx.apply_updates(x, u)
    torch.testing.assert_close(x["x"], torch.linalg.solve(a, b), rtol=1e-8, atol=1e-8)


def test_barzilai_borwein_keeps_its_step_without_positive_curvature():
    tx = gx.scale_by_barzilai_borwein("long", init_step=0.1)
    state = tx.init({"x": torch.zeros(2, dtype=torch.float64)})
    _, state = tx.update({"x": torch.tensor([1.0, 0.0], dtype=torch.float64)}, state,
                         {"x": torch.zeros(2, dtype=torch.float64)})
    # s = (1, 0), y = (-2, 0): s.y < 0
    u, state = tx.update({"x": torch.tensor([-1.0, 0.0], dtype=torch.float64)}, state,
                         {"x": torch.tensor([1.0, 0.0], dtype=torch.float64)})
    torch.testing.assert_close(u["x"], torch.tensor([-0.1, 0.0], dtype=torch.float64))
    # s = (1, 0), y = (2, 1): s.y = 2 > 0, BB1 = 1 / 2
    u, _ = tx.update({"x": torch.tensor([1.0, 1.0], dtype=torch.float64)}, state,
                     {"x": torch.tensor([2.0, 0.0], dtype=torch.float64)})
    torch.testing.assert_close(u["x"], torch.tensor([0.5, 0.5], dtype=torch.float64))


def test_bold_driver_follows_its_rule():
    tx = gx.scale_by_bold_driver(init_step=0.1, increase=1.2, decrease=0.25)
    params = {"x": torch.zeros(3, dtype=torch.float64)}
    state = tx.init(params)
    g = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    alpha = 0.1
    prev = None
    for value in (5.0, 4.0, 4.5, 4.5, 3.0, 1.0):
        if prev is not None:
            alpha *= 1.2 if value < prev else 0.25
        u, state = tx.update({"x": g}, state, params, value=torch.tensor(value))
        torch.testing.assert_close(u["x"], alpha * g, rtol=1e-12, atol=0)
        prev = value
    with pytest.raises(ValueError, match="value"):
        tx.update({"x": g}, state, params)


def test_bad_arguments_are_named():
    for call, name in ((lambda: gx.scale_by_barzilai_borwein("medium"), "variant"),
                       (lambda: gx.scale_by_barzilai_borwein(init_step=0.0), "init_step"),
                       (lambda: gx.scale_by_barzilai_borwein(delta=-1.0), "delta"),
                       (lambda: gx.scale_by_barzilai_borwein(delta=1.0, adaptive_delta=0.2), "adaptive_delta"),
                       (lambda: gx.scale_by_barzilai_borwein(adaptive_delta=0.0), "adaptive_delta"),
                       (lambda: gx.scale_by_barzilai_borwein(adaptive_delta=0.2, adaptive_iters=0), "adaptive_iters"),
                       (lambda: gx.scale_by_bold_driver(increase=0.9), "increase"),
                       (lambda: gx.scale_by_bold_driver(decrease=1.5), "decrease")):
        with pytest.raises(ValueError, match=name):
            call()


# --- through gx.Optimizer ---------------------------------------------------------------------


def _make_tx():
    return gx.chain(gx.scale_by_barzilai_borwein("short", init_step=0.05, delta=0.5), gx.scale_by_lr(1.0))


def _make_adaptive():
    return gx.chain(gx.scale_by_barzilai_borwein("geometric", init_step=0.05, adaptive_delta=0.2, adaptive_iters=2),
                    gx.scale_by_lr(1.0))


def _make_bold():
    return gx.chain(gx.scale_by_bold_driver(0.05), gx.scale_by_lr(1.0))


@pytest.mark.parametrize("make", [_make_tx, _make_adaptive, _make_bold],
                         ids=["barzilai_borwein", "barzilai_borwein_adaptive", "bold_driver"])
def test_optimizer_follows_the_functional_trajectory_and_resumes_bit_identically(make):
    """gx.Optimizer follows the functional run (1e-12) for ten steps and resumes from a
    checkpoint after six bit-identically."""
    model = tanh_net()
    x, y = regression_batch()
    params = {n: p.detach().clone() for n, p in model.named_parameters()}

    def loss_of(ps, t=None):
        return torch.func.functional_call(model, ps, (x,)).sub(y).square().mean()

    got = assert_resume_bit_exact(lambda leaves: gx.Optimizer(list(leaves.values()), make()), leaf_copy(params),
                                  loss_of, steps=10, split=6, closure="plain")
    tx = make()
    state = tx.init(params)
    for step in range(10):
        ps = {n: v.clone().requires_grad_(True) for n, v in params.items()}
        loss = loss_of(ps)
        grads = dict(zip(ps, torch.autograd.grad(loss, list(ps.values()))))
        updates, state = tx.update(grads, state, params, value=loss.detach())
        params = gx.apply_updates(params, updates)
        for n in params:
            torch.testing.assert_close(got[step][n], params[n], rtol=1e-12, atol=1e-14)


# --- torchzero's BarzilaiBorwein and BBStab as oracles -------------------------------------------

_TZ_TYPES = {"long": "long", "short": "short", "geometric": "geom"}


def _tz_run(tz, module, a, b, steps):
    x = torch.nn.Parameter(torch.zeros(a.shape[0], dtype=torch.float64))
    opt = tz.Optimizer([x], module)

    def closure(backward=True):
        loss = 0.5 * x @ a @ x - b @ x
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

    out = []
    for _ in range(steps):
        opt.step(closure)
        out.append(x.detach().clone())
    return out


def _gx_run(tx, a, b, steps):
    x = {"x": torch.zeros(a.shape[0], dtype=torch.float64)}
    state = tx.init(x)
    out = []
    for _ in range(steps):
        u, state = tx.update({"x": a @ x["x"] - b}, state, x)
        x = gx.apply_updates(x, u)
        out.append(x["x"].clone())
    return out


@pytest.mark.parametrize("variant", list(_TZ_TYPES))
@pytest.mark.parametrize("stabilised", [False, True])
def test_barzilai_borwein_matches_torchzero(variant, stabilised):
    """30 steps on a convex quadratic (s.y > 0 throughout, |g_0|_max >= 1 so torchzero's first
    step is its alpha_0), float64: the iterates of torchzero 0.4's ``BarzilaiBorwein(type)`` and,
    stabilised, ``BBStab(c=0.2, delta=None, inf_iters=3)`` (the adaptive bound) to 1e-9 (BB is
    not monotone: round-off grows to ~1e-8 by step 35)."""
    tz = pytest.importorskip("torchzero")
    a, b = _quadratic()
    b = 5 * b
    kind = _TZ_TYPES[variant]
    if stabilised:
        module = tz.m.BBStab(c=0.2, delta=None, type=kind, alpha_0=0.01, inf_iters=3)
        tx = gx.scale_by_barzilai_borwein(variant, init_step=0.01, adaptive_delta=0.2, adaptive_iters=3)
    else:
        module = tz.m.BarzilaiBorwein(type=kind, alpha_0=0.01)
        tx = gx.scale_by_barzilai_borwein(variant, init_step=0.01)
    want = _tz_run(tz, module, a, b, 30)
    got = _gx_run(gx.chain(tx, gx.scale_by_lr(1.0)), a, b, 30)
    for k, (x, y) in enumerate(zip(got, want)):
        torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-11, msg=lambda m, k=k: f"step {k}: {m}")


def test_adaptive_bound_is_c_times_the_shortest_warm_up_step():
    """The rule written here: BB1 steps; the 2nd to 4th BB steps record |s|; from the 5th on,
    alpha = min(BB1, 0.3 min|s| / |g|). The bound is active at least once."""
    a, b = _quadratic()
    tx = gx.chain(gx.scale_by_barzilai_borwein("long", init_step=0.01, adaptive_delta=0.3, adaptive_iters=3),
                  gx.scale_by_lr(1.0))
    x = {"x": torch.zeros(6, dtype=torch.float64)}
    state = tx.init(x)
    prev, norms, active = None, [], 0
    for k in range(30):
        g = a @ x["x"] - b
        u, state = tx.update({"x": g}, state, x)
        if k == 0:
            alpha = torch.tensor(0.01, dtype=torch.float64)
        else:
            s = x["x"] - prev
            alpha = (s @ s) / (s @ a @ s)
            if 2 <= k <= 4:
                norms.append(float(s.norm()))
            if k >= 5:
                bound = 0.3 * min(norms) / g.norm()
                active += bool(bound < alpha)
                alpha = torch.minimum(alpha, bound)
        torch.testing.assert_close(u["x"], -alpha * g, rtol=1e-10, atol=1e-14, msg=f"step {k}")
        prev = x["x"]
        x = gx.apply_updates(x, u)
    assert active
