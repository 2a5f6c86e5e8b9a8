"""Step-size rules (Polyak, optimistic gradient, DoG) and Muon against their references.

Muon is checked against ``torch.optim.Muon`` (200 steps, float64, functional and through
``gx.Optimizer``); the rest against optax's / the papers' update rules written below in
plain per-tensor torch.
"""

from __future__ import annotations

import math

import pytest
import torch
from conftest import MLPProblem

import gradtx as gx

TOL = dict(rtol=1e-9, atol=1e-12)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: intra-op threads only add contention (several times slower
    on a shared machine), so this module runs on one thread and restores the setting after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
NS = (3.4445, -4.7750, 2.0315)


# --- problems -----------------------------------------------------------------------------


class MatrixProblem:
    """A bias-free two-layer tanh network: every parameter is a matrix (one wide, one tall),
    as ``torch.optim.Muon`` requires."""

    def __init__(self, dtype=torch.float64, seed=0, batches=8):
        gen = torch.Generator().manual_seed(seed)
        self.params0 = {"w1": torch.randn(6, 16, generator=gen, dtype=dtype) * 0.5,
                        "w2": torch.randn(16, 3, generator=gen, dtype=dtype) * 0.5}
        self.xs = [torch.randn(32, 6, generator=gen, dtype=dtype) for _ in range(batches)]
        true_w = torch.randn(6, 3, generator=gen, dtype=dtype)
        self.ys = [torch.sin(x @ true_w) for x in self.xs]

    def loss(self, params, step):
        x, y = self.xs[step % len(self.xs)], self.ys[step % len(self.ys)]
        return ((torch.tanh(x @ params["w1"]) @ params["w2"] - y) ** 2).mean()

    def value_and_grads(self, params, step):
        leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        loss = self.loss(leaves, step)
        return loss.detach(), dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))

    def leaf_params(self):
        return {k: v.clone().requires_grad_(True) for k, v in self.params0.items()}


def _functional(problem, tx, steps, with_value=False):
    params = {k: v.clone() for k, v in problem.params0.items()}
    state = tx.init(params)
    out = []
    for t in range(steps):
        value, grads = _value_and_grads(problem, params, t)
        extra = {"value": value} if with_value else {}
        updates, state = tx.update(grads, state, params, **extra)
        params = gx.apply_updates(params, updates)
        out.append(params)
    return out


def _value_and_grads(problem, params, t):
    leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    loss = problem.loss(leaves, t)
    return loss.detach(), dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))


def _torch_optim(problem, make_opt, steps):
    params = problem.leaf_params()
    opt = make_opt(list(params.values()))
    out = []
    for t in range(steps):
        opt.zero_grad()
        problem.loss(params, t).backward()
        opt.step()
        out.append({k: v.detach().clone() for k, v in params.items()})
    return out


def _adapter(problem, tx, steps, closure=False):
    params = problem.leaf_params()
    opt = gx.Optimizer(list(params.values()), tx)
    out = []
    for t in range(steps):
        def loss_fn(t=t):
            opt.zero_grad()
            loss = problem.loss(params, t)
            loss.backward()
            return loss
        if closure:
            opt.step(loss_fn)
        else:
            loss_fn()
            opt.step()
        out.append({k: v.detach().clone() for k, v in params.items()})
    return out


def _reference(problem, rule, steps, state):
    """Run ``rule(t, params, grads, value, state) -> params`` written in plain torch."""
    params = {k: v.clone() for k, v in problem.params0.items()}
    out = []
    for t in range(steps):
        value, grads = _value_and_grads(problem, params, t)
        params = rule(t, params, grads, value, state)
        out.append(params)
    return out


def _assert_same(traj, ref, **tol):
    assert len(traj) == len(ref)
    for t, (a, b) in enumerate(zip(traj, ref)):
        for k in b:
            torch.testing.assert_close(a[k], b[k], **(tol or TOL), msg=lambda m, t=t, k=k: f"step {t}, {k}: {m}")


def _moved(traj, problem):
    """The test is not vacuous: the parameters moved."""
    return max(float((traj[-1][k] - problem.params0[k]).abs().max()) for k in problem.params0)


# --- Newton-Schulz --------------------------------------------------------------------------


def _ns_reference(x, coeffs, eps):
    """Keller Jordan's quintic iteration written out for one matrix."""
    transpose = x.shape[0] > x.shape[1]
    if transpose:
        x = x.T
    x = x / (torch.linalg.matrix_norm(x) + eps)
    for a, b, c in coeffs:
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if transpose else x


@pytest.mark.parametrize("shape", [(5, 9), (9, 5), (7, 7)], ids=["wide", "tall", "square"])
def test_newton_schulz_matches_the_formula(shape):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    before = x.clone()
    out = gx.orthogonalize_via_newton_schulz(x, NS, 5, 1e-8)
    torch.testing.assert_close(out, _ns_reference(x, [NS] * 5, 1e-8), rtol=1e-10, atol=1e-12)
    assert torch.equal(x, before), "the input was modified"
    assert out.dtype == x.dtype and out.shape == x.shape


def test_newton_schulz_converges_to_the_polar_factor():
    """With the classic cubic coefficients (1.5, -0.5, 0) the iteration converges to U V^T."""
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    u, _, vh = torch.linalg.svd(x, full_matrices=False)
    out = gx.orthogonalize_via_newton_schulz(x, (1.5, -0.5, 0.0), ns_steps=60)
    torch.testing.assert_close(out, u @ vh, rtol=1e-9, atol=1e-10)
    # Muon's coefficients stop short of it: singular values roughly in [0.6, 1.25].
    s = torch.linalg.svdvals(gx.orthogonalize_via_newton_schulz(x))
    assert 0.6 < float(s.min()) and float(s.max()) < 1.25


@pytest.mark.parametrize("shape", [(6, 4), (4, 9), (5, 5)], ids=["tall", "wide", "square"])
def test_newton_schulz_keeps_the_singular_vectors_of_the_polar_factor(shape):
    """Each Newton-Schulz step is an odd polynomial of X: it acts on the singular values
    only, so Muon's output is U diag(s') V^T with x = U S V^T (SVD) and s' near 1: the
    exact polar factor U V^T up to a bounded rescaling of each singular direction."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    u, s, vh = torch.linalg.svd(x, full_matrices=False)
    out = gx.orthogonalize_via_newton_schulz(x)
    inner = u.T @ out @ vh.T
    diag = torch.diagonal(inner)
    torch.testing.assert_close(inner, torch.diag(diag), rtol=0, atol=1e-12)
    assert ((0.6 < diag) & (diag < 1.25)).all()
    # against the exact polar factor U V^T: within the documented band, entrywise
    polar = u @ vh
    assert float(torch.linalg.matrix_norm(out - polar, ord=2)) < 0.4


def test_newton_schulz_coefficient_sequence_and_steps():
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    seq = [(3.0, -3.2, 1.2), (2.0, -1.5, 0.5), (1.5, -0.5, 0.0)]
    torch.testing.assert_close(gx.orthogonalize_via_newton_schulz(x, seq, ns_steps=99),
                               _ns_reference(x, seq, 1e-8), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(gx.orthogonalize_via_newton_schulz(x, [NS] * 3),
                               gx.orthogonalize_via_newton_schulz(x, NS, ns_steps=3), rtol=0, atol=0)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)], ids=["f64", "f32"])
def test_newton_schulz_is_batched(dtype, tol):
    x = torch.randn(3, 2, 5, 8, generator=torch.Generator().manual_seed(3), dtype=dtype)
    out = gx.orthogonalize_via_newton_schulz(x)
    for i in range(3):
        for j in range(2):
            torch.testing.assert_close(out[i, j], gx.orthogonalize_via_newton_schulz(x[i, j]), rtol=tol, atol=tol)
    vmapped = torch.func.vmap(gx.orthogonalize_via_newton_schulz)(x.reshape(6, 5, 8))
    torch.testing.assert_close(vmapped, out.reshape(6, 5, 8), rtol=tol, atol=tol)


def test_newton_schulz_in_bfloat16():
    """bfloat16 in, bfloat16 out, close to the float64 result at bfloat16 precision; and
    ``ns_dtype=bfloat16`` on float64 input gives exactly the bfloat16 computation."""
    x = torch.randn(3, 8, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    exact = gx.orthogonalize_via_newton_schulz(x)
    low = gx.orthogonalize_via_newton_schulz(x.to(torch.bfloat16))
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.double(), exact, rtol=0, atol=0.05)
    via = gx.orthogonalize_via_newton_schulz(x, ns_dtype=torch.bfloat16)
    assert via.dtype == torch.float64
    assert torch.equal(via, low.double())
    assert not torch.equal(via, exact)


def test_newton_schulz_rejects_vectors():
    with pytest.raises(ValueError, match="2 dimensions"):
        gx.orthogonalize_via_newton_schulz(torch.ones(3))


# --- Muon against torch.optim.Muon ------------------------------------------------------------

MUON_CASES = [
    ("default", dict(lr=0.02), {}),
    ("no_nesterov", dict(lr=0.02, nesterov=False, weight_decay=0.01), {}),
    ("match_rms_adamw", dict(lr=0.01, momentum=0.9, adjust_lr_fn="match_rms_adamw"), {}),
    ("coefficients", dict(lr=0.02, ns_coefficients=(2.0, -1.5, 0.5), ns_steps=3, eps=1e-6, weight_decay=0.0), {}),
]


def _muon_like_torch(kw):
    """The gradtx chain equal to ``torch.optim.Muon(**kw)``."""
    return gx.chain(
        gx.scale_by_muon(kw.get("ns_coefficients", NS), kw.get("ns_steps", 5), kw.get("momentum", 0.95),
                         kw.get("eps", 1e-7), nesterov=kw.get("nesterov", True), bias_correction=False,
                         adjust_lr_fn=kw.get("adjust_lr_fn"), ns_dtype=torch.bfloat16),
        gx.add_decayed_weights(kw.get("weight_decay", 0.1)),
        gx.scale_by_lr(kw["lr"]))


def _muon_alias_like_torch(kw):
    return gx.muon(kw["lr"], kw.get("ns_coefficients", NS), kw.get("ns_steps", 5), kw.get("momentum", 0.95),
                   kw.get("eps", 1e-7), weight_decay=kw.get("weight_decay", 0.1), nesterov=kw.get("nesterov", True),
                   bias_correction=False, adjust_lr_fn=kw.get("adjust_lr_fn"), ns_dtype=torch.bfloat16)


@pytest.mark.parametrize("name,kw,_", MUON_CASES, ids=[c[0] for c in MUON_CASES])
def test_muon_matches_torch_functional_and_adapter(name, kw, _):
    problem = MatrixProblem()
    ref = _torch_optim(problem, lambda p: torch.optim.Muon(p, **kw), 200)
    assert _moved(ref, problem) > 0.1
    _assert_same(_functional(problem, _muon_like_torch(kw), 200), ref)
    _assert_same(_adapter(problem, _muon_like_torch(kw), 200), ref)
    _assert_same(_adapter(problem, _muon_alias_like_torch(kw), 200), ref)


def test_muon_alias_functional_matches_torch():
    problem = MatrixProblem()
    kw = dict(lr=0.02, weight_decay=0.05)
    ref = _torch_optim(problem, lambda p: torch.optim.Muon(p, **kw), 200)
    _assert_same(_functional(problem, _muon_alias_like_torch(kw), 200), ref)


def test_muon_default_differs_from_torch_as_documented():
    """The optax defaults (bias-corrected Nesterov momentum, iteration in float64) are not
    torch's rule: the documented options above are what makes them equal."""
    problem = MatrixProblem()
    ref = _torch_optim(problem, lambda p: torch.optim.Muon(p, lr=0.02, weight_decay=0.0), 20)
    ours = _functional(problem, gx.muon(0.02, eps=1e-7), 20)
    assert float((ours[-1]["w1"] - ref[-1]["w1"]).abs().max()) > 1e-6


# --- Muon against optax's rule ------------------------------------------------------------------


class MixedProblem:
    """A matrix, a batch of matrices (3-D), a vector and a scalar."""

    def __init__(self, dtype=torch.float64, seed=0):
        gen = torch.Generator().manual_seed(seed)
        self.params0 = {"m": torch.randn(5, 3, generator=gen, dtype=dtype),
                        "stack": torch.randn(2, 3, 4, generator=gen, dtype=dtype),
                        "v": torch.randn(4, generator=gen, dtype=dtype),
                        "s": torch.randn((), generator=gen, dtype=dtype)}
        self.targets = [{k: torch.randn(v.shape, generator=gen, dtype=dtype) for k, v in self.params0.items()}
                        for _ in range(4)]

    def loss(self, params, step):
        target = self.targets[step % len(self.targets)]
        return sum(((params[k] - target[k]) ** 2 * (1 + i)).sum() + (params[k] ** 4).sum() / 10
                   for i, k in enumerate(sorted(params)))

    def leaf_params(self):
        return {k: v.clone().requires_grad_(True) for k, v in self.params0.items()}


def _optax_muon_direction(g, mu, t, beta, nesterov, adaptive, eps, coeffs):
    """optax.contrib.scale_by_muon for one (batch of) matrices, written out; returns (u, mu)."""
    mu = beta * mu + (1 - beta) * g
    if nesterov:
        hat = beta * mu / (1 - beta ** (t + 2)) + (1 - beta) * g / (1 - beta ** (t + 1))
    else:
        hat = mu / (1 - beta ** (t + 1))
    flat = hat.reshape(-1, *hat.shape[-2:])
    o = torch.stack([_ns_reference(h, coeffs, eps) for h in flat]).reshape(hat.shape)
    if adaptive:
        o = (hat * o).sum(dim=(-2, -1), keepdim=True) * o
    rows, cols = hat.shape[-2:]
    return math.sqrt(max(1.0, rows / cols)) * o, mu


@pytest.mark.parametrize("nesterov,adaptive", [(True, False), (False, False), (True, True)],
                         ids=["nesterov", "plain", "adaptive"])
def test_scale_by_muon_matches_optax_rule(nesterov, adaptive):
    problem = MixedProblem()
    beta, lr = 0.9, 0.01
    tx = gx.chain(gx.scale_by_muon(beta=beta, nesterov=nesterov, adaptive=adaptive), gx.scale_by_lr(lr))

    def rule(t, params, grads, value, state):
        new = {}
        for k, p in params.items():
            g = grads[k]
            if p.dim() < 2:
                new[k] = p - lr * g  # passes through scale_by_muon unchanged
                continue
            u, state[k] = _optax_muon_direction(g, state.get(k, torch.zeros_like(p)), t, beta, nesterov, adaptive,
                                                1e-8, [NS] * 5)
            new[k] = p - lr * u
        return new

    ref = _reference(problem, rule, 30, {})
    _assert_same(_functional(problem, tx, 30), ref, rtol=1e-10, atol=1e-12)
    assert _moved(ref, problem) > 0.05


def test_muon_alias_matches_optax_rule():
    """Matrices: Muon + weight decay; everything else: AdamW with Nesterov momentum (NAdamW),
    each with its own weight decay, as optax.contrib.muon."""
    problem = MixedProblem()
    lr, beta, wd, adam_wd, b1, b2, eps = 0.01, 0.95, 0.1, 0.02, 0.9, 0.999, 1e-8
    tx = gx.muon(lr, beta=beta, weight_decay=wd, adam_weight_decay=adam_wd)

    def rule(t, params, grads, value, state):
        new = {}
        for k, p in params.items():
            g = grads[k]
            if p.dim() == 2:
                u, state[k] = _optax_muon_direction(g, state.get(k, torch.zeros_like(p)), t, beta, True, False, eps,
                                                    [NS] * 5)
                new[k] = p - lr * (u + wd * p)
            else:
                m, v = state.get(k, (torch.zeros_like(p), torch.zeros_like(p)))
                m = b1 * m + (1 - b1) * g
                v = b2 * v + (1 - b2) * g * g
                m_hat = b1 * m / (1 - b1 ** (t + 2)) + (1 - b1) * g / (1 - b1 ** (t + 1))
                u = m_hat / (torch.sqrt(v / (1 - b2 ** (t + 1))) + eps)
                state[k] = (m, v)
                new[k] = p - lr * (u + adam_wd * p)
        return new

    ref = _reference(problem, rule, 30, {})
    _assert_same(_functional(problem, tx, 30), ref, rtol=1e-10, atol=1e-12)
    # The adapter exposes the two weight decays under their own keys and follows the same path.
    params = problem.leaf_params()
    opt = gx.Optimizer(list(params.values()), tx)
    assert opt.param_groups[0]["weight_decay"] == wd and opt.param_groups[0]["adam_weight_decay"] == adam_wd
    _assert_same(_adapter(problem, tx, 30), ref, rtol=1e-10, atol=1e-12)


def test_muon_state_is_small_for_routed_leaves_and_keeps_mu_dtype():
    params = MixedProblem().params0
    state = gx.muon(0.01, mu_dtype=torch.float32).init(params)
    shapes = {path: (tuple(x.shape), x.dtype) for path, x in gx.tree_paths(state) if ".mu[" in path or ".nu[" in path}
    f32, f64 = torch.float32, torch.float64
    # Muon (chain [0]) holds momentum for the 2-D matrix only; the 3-D stack, the vector and
    # the scalar go to Adam (chain [1]), as optax.contrib.muon routes them; every routed-away
    # leaf costs an empty tensor. mu_dtype applies to both momenta, not to Adam's nu.
    assert shapes == {
        "[0][0].mu['m']": ((5, 3), f32), "[0][0].mu['stack']": ((0,), f32),
        "[0][0].mu['v']": ((0,), f32), "[0][0].mu['s']": ((0,), f32),
        "[1][0].mu['m']": ((0,), f32), "[1][0].mu['stack']": ((2, 3, 4), f32),
        "[1][0].mu['v']": ((4,), f32), "[1][0].mu['s']": ((), f32),
        "[1][0].nu['m']": ((0,), f64), "[1][0].nu['stack']": ((2, 3, 4), f64),
        "[1][0].nu['v']": ((4,), f64), "[1][0].nu['s']": ((), f64),
    }


def test_scale_by_muon_shape_factor_options():
    g = {"w": torch.randn(8, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)}
    base = gx.orthogonalize_via_newton_schulz(g["w"])
    for fn, factor in [(None, 2.0), ("original", 2.0), ("match_rms_adamw", 0.2 * math.sqrt(8)),
                       (lambda rows, cols: rows * 10 + cols, 82.0)]:
        tx = gx.scale_by_muon(beta=0.0, adjust_lr_fn=fn)
        u, _ = tx.update(g, tx.init(g))
        torch.testing.assert_close(u["w"], factor * base, rtol=1e-12, atol=1e-12)


# --- Polyak -----------------------------------------------------------------------------------


def _polyak_rule(f_min, max_lr, eps, variant, lr=1.0):
    def rule(t, params, grads, value, state):
        sq = sum(float((g ** 2).sum()) for g in grads.values())
        gap = float(value) - f_min
        if variant == "sps+":
            gap = max(gap, 0.0)
        step = 0.0 if sq + eps <= torch.finfo(torch.float64).eps else min(gap / (sq + eps), max_lr)
        return {k: p - lr * step * grads[k] for k, p in params.items()}
    return rule


@pytest.mark.parametrize("kw", [dict(), dict(max_learning_rate=0.3, f_min=0.01, eps=1e-3),
                                dict(f_min=0.2, variant="sps+"), dict(lr=0.5, max_learning_rate=5.0)],
                         ids=["default", "capped", "sps+", "lr"])
def test_polyak_sgd_matches_rule(kw):
    problem = MLPProblem(torch.float64)
    lr = kw.pop("lr", 1.0)
    tx = gx.polyak_sgd(lr, **kw)
    ref = _reference(problem, _polyak_rule(kw.get("f_min", 0.0), kw.get("max_learning_rate", 1.0),
                                           kw.get("eps", 0.0), kw.get("variant", "sps"), lr), 40, None)
    _assert_same(_functional(problem, tx, 40, with_value=True), ref)
    assert _moved(ref, problem) > 0.01
    _assert_same(_adapter(problem, tx, 40, closure=True), ref)


def test_polyak_step_is_gap_over_squared_norm_capped():
    g = {"a": torch.tensor([3.0, 4.0], dtype=torch.float64), "b": torch.tensor(0.0, dtype=torch.float64)}
    tx = gx.scale_by_polyak(f_min=1.0, max_learning_rate=10.0)
    state = tx.init(g)
    u, _ = tx.update(g, state, value=26.0)  # (26 - 1) / 25 = 1
    torch.testing.assert_close(u["a"], g["a"])
    u, _ = tx.update(g, state, value=6.0)  # 5 / 25
    torch.testing.assert_close(u["a"], 0.2 * g["a"])
    u, _ = tx.update(g, state, value=1e6)  # capped
    torch.testing.assert_close(u["a"], 10.0 * g["a"])
    u, _ = tx.update(g, state, value=torch.tensor(0.5))  # below f_min: sps steps backwards, sps+ not at all
    torch.testing.assert_close(u["a"], -0.02 * g["a"])
    plus = gx.scale_by_polyak(f_min=1.0, variant="sps+")
    u, _ = plus.update(g, plus.init(g), value=0.5)
    assert torch.equal(u["a"], torch.zeros(2, dtype=torch.float64))
    zero = {k: torch.zeros_like(v) for k, v in g.items()}
    u, _ = tx.update(zero, state, value=3.0)  # zero gradient: a zero step, no NaN
    assert torch.equal(u["a"], zero["a"])
    with pytest.raises(ValueError, match="value"):
        tx.update(g, state)
    u, _ = tx.update(g, state, value=torch.tensor([6.0]))  # a one-element loss of shape (1,)
    assert u["a"].shape == (2,) and u["b"].shape == ()
    torch.testing.assert_close(u["a"], 0.2 * g["a"])
    with pytest.raises(ValueError, match="scalar loss"):
        tx.update(g, state, value=torch.tensor([6.0, 1.0]))


def test_polyak_keeps_low_precision_dtypes():
    g = {"w": torch.ones(3, dtype=torch.bfloat16), "s": torch.tensor(2.0, dtype=torch.bfloat16)}
    tx = gx.scale_by_polyak()
    u, _ = tx.update(g, tx.init(g), value=torch.tensor(7.0, dtype=torch.float64))
    assert u["w"].dtype == torch.bfloat16 and u["s"].dtype == torch.bfloat16
    torch.testing.assert_close(u["w"].float(), torch.ones(3), rtol=1e-2, atol=0)  # 7 / 7 = 1


# --- optimistic gradient --------------------------------------------------------------------------


@pytest.mark.parametrize("alpha,beta", [(1.0, 1.0), (0.5, 2.0)], ids=["default", "general"])
def test_optimistic_gradient_descent_matches_rule(alpha, beta):
    problem = MLPProblem(torch.float64)
    lr = 0.05

    def rule(t, params, grads, value, state):
        prev = state.get("g", grads)  # g_{-1} := g_0
        state["g"] = grads
        return {k: p - lr * ((alpha + beta) * grads[k] - beta * prev[k]) for k, p in params.items()}

    ref = _reference(problem, rule, 40, {})
    tx = gx.optimistic_gradient_descent(lr, alpha, beta)
    _assert_same(_functional(problem, tx, 40), ref)
    _assert_same(_adapter(problem, tx, 40), ref)
    assert _moved(ref, problem) > 0.01


def test_optimistic_gradient_is_two_g_minus_previous():
    tx = gx.scale_by_optimistic_gradient()
    g0, g1 = {"x": torch.tensor([1.0, -2.0])}, {"x": torch.tensor([0.5, 3.0])}
    state = tx.init(g0)
    u0, state = tx.update(g0, state)
    torch.testing.assert_close(u0["x"], g0["x"])  # alpha g_0 at the first step
    u1, state = tx.update(g1, state)
    torch.testing.assert_close(u1["x"], 2 * g1["x"] - g0["x"])
    torch.testing.assert_close(state.previous_gradient["x"], g1["x"])


# --- distance over gradients ---------------------------------------------------------------------


def _ldog_rule(reps_rel, eps, lr=1.0):
    def rule(t, params, grads, value, state):
        if not state:
            state.update(x0={k: p.clone() for k, p in params.items()},
                         r={k: reps_rel * (1 + float(torch.linalg.vector_norm(p))) for k, p in params.items()},
                         G={k: 0.0 for k in params})
        new = {}
        for k, p in params.items():
            state["r"][k] = max(state["r"][k], float(torch.linalg.vector_norm(p - state["x0"][k])))
            state["G"][k] += float((grads[k] ** 2).sum())
            new[k] = p - lr * state["r"][k] / math.sqrt(state["G"][k] + eps) * grads[k]
        return new
    return rule


def _dog_rule(init_step, eps, lr=1.0, weight_decay=None):
    kind, v = init_step

    def rule(t, params, grads, value, state):
        if weight_decay is not None:
            grads = {k: g + weight_decay * params[k] for k, g in grads.items()}
        if not state:
            norm0 = math.sqrt(sum(float((p ** 2).sum()) for p in params.values()))
            state.update(x0={k: p.clone() for k, p in params.items()}, G=0.0,
                         r={"heuristic": v * (1 + norm0), "distance": v, "learning_rate": 0.0}[kind])
        dist = math.sqrt(sum(float(((p - state["x0"][k]) ** 2).sum()) for k, p in params.items()))
        state["r"] = max(state["r"], dist)
        state["G"] += sum(float((g ** 2).sum()) for g in grads.values())
        step = v if kind == "learning_rate" and t == 0 else state["r"] / math.sqrt(state["G"] + eps)
        return {k: p - lr * step * grads[k] for k, p in params.items()}
    return rule


def test_layerwise_dog_matches_rule():
    problem = MLPProblem(torch.float64)
    tx = gx.chain(gx.scale_by_distance_over_gradients(reps_rel=1e-4, param_dtype=torch.float64), gx.scale_by_lr(1.0))
    ref = _reference(problem, _ldog_rule(1e-4, 1e-8), 50, {})
    _assert_same(_functional(problem, tx, 50), ref)
    _assert_same(_adapter(problem, tx, 50), ref)
    assert _moved(ref, problem) > 0.01


@pytest.mark.parametrize("init_step", [("heuristic", 1e-4), ("distance", 0.05), ("learning_rate", 0.1)],
                         ids=["heuristic", "distance", "learning_rate"])
def test_dog_matches_rule(init_step):
    problem = MLPProblem(torch.float64)
    ref = _reference(problem, _dog_rule(init_step, 1e-8), 50, {})
    tx = gx.dog(init_step=init_step)
    _assert_same(_functional(problem, tx, 50), ref)
    _assert_same(_adapter(problem, tx, 50), ref)
    assert _moved(ref, problem) > 0.01


def test_dog_with_weight_decay_matches_rule():
    problem = MLPProblem(torch.float64)
    ref = _reference(problem, _dog_rule(("heuristic", 1e-4), 1e-8, lr=0.5, weight_decay=0.01), 30, {})
    _assert_same(_functional(problem, gx.dog(0.5, ("heuristic", 1e-4), weight_decay=0.01), 30), ref)


def test_dog_step_is_max_distance_over_root_of_summed_squares():
    params = {"a": torch.tensor([3.0, 4.0], dtype=torch.float64), "b": torch.tensor(0.0, dtype=torch.float64)}
    g = {"a": torch.tensor([1.0, 2.0], dtype=torch.float64), "b": torch.tensor(2.0, dtype=torch.float64)}
    tx = gx.scale_by_dog(("heuristic", 0.1), eps=0.0)
    state = tx.init(params)
    u, state = tx.update(g, state, params)
    torch.testing.assert_close(u["a"], 0.1 * (1 + 5.0) / 3.0 * g["a"])  # r0 = 0.1 (1 + ||x0||), ||g|| = 3
    moved = {"a": params["a"] + 2.0, "b": params["b"] + 1.0}  # ||x - x0|| = 3 > r0
    u, state = tx.update(g, state, moved)
    torch.testing.assert_close(u["a"], 3.0 / math.sqrt(18.0) * g["a"])
    u, _ = tx.update(g, state, params)  # back at x0: the max distance is kept
    torch.testing.assert_close(u["a"], 3.0 / math.sqrt(27.0) * g["a"])
    torch.testing.assert_close(u["b"], 3.0 / math.sqrt(27.0) * g["b"])

    layer = gx.scale_by_distance_over_gradients(reps_rel=0.1, eps=0.0)
    lstate = layer.init(params)
    assert lstate.init_params["a"].dtype == torch.float32  # optax's default param_dtype
    u, _ = layer.update(g, lstate, params)
    torch.testing.assert_close(u["a"], 0.1 * 6.0 / math.sqrt(5.0) * g["a"])  # per leaf: ||a|| = 5, ||g_a||^2 = 5
    torch.testing.assert_close(u["b"], 0.1 * 1.0 / 2.0 * g["b"])


def test_dog_needs_params_and_hides_its_scalars_from_param_groups():
    params = {"a": torch.ones(2)}
    for tx in (gx.dog(), gx.chain(gx.scale_by_distance_over_gradients(), gx.scale_by_lr(1.0))):
        with pytest.raises(ValueError, match="params"):
            tx.update(params, tx.init(params))
    opt = gx.Optimizer([torch.ones(2, requires_grad=True)], gx.dog())
    # its running scalars (r-bar, the sum of squared norms) are no keys; lr and the eps it was built with are
    assert set(opt.param_groups[0]) - {"params"} == {"lr", "eps"}


# --- hyperparameter validation ---------------------------------------------------------------------


@pytest.mark.parametrize("build,name", [
    (lambda: gx.scale_by_polyak(max_learning_rate=-1.0), "max_learning_rate"),
    (lambda: gx.scale_by_polyak(eps=-1.0), "eps"),
    (lambda: gx.scale_by_polyak(variant="sgd"), "variant"),
    (lambda: gx.polyak_sgd(lr=-1.0), "lr"),
    (lambda: gx.scale_by_optimistic_gradient(alpha=-1.0), "alpha"),
    (lambda: gx.optimistic_gradient_descent(0.1, beta=-0.5), "beta"),
    (lambda: gx.scale_by_distance_over_gradients(reps_rel=0.0), "reps_rel"),
    (lambda: gx.scale_by_distance_over_gradients(eps=-1.0), "eps"),
    (lambda: gx.scale_by_dog(("guess", 1.0)), "init_step"),
    (lambda: gx.scale_by_dog(("distance", -1.0)), "init_step"),
    (lambda: gx.dog(eps=-1.0), "eps"),
    (lambda: gx.scale_by_muon(beta=1.0), "beta"),
    (lambda: gx.scale_by_muon(eps=-1.0), "eps"),
    (lambda: gx.scale_by_muon(ns_steps=-1), "ns_steps"),
    (lambda: gx.scale_by_muon(ns_coeffs=(1.0, 2.0)), "ns_coeffs"),
    (lambda: gx.scale_by_muon(adjust_lr_fn="rms"), "adjust_lr_fn"),
    (lambda: gx.muon(-0.1), "lr"),
    (lambda: gx.muon(0.1, adam_b2=1.5), "b2"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_bad_hyperparameters_raise(build, name):
    with pytest.raises(ValueError, match=name):
        build()
