"""Block clipping, normalisation, constraints, gradient noise and the layer-wise aliases
(LAMB, LARS, Fromage, noisy SGD), each against its update rule written here per tensor."""

from __future__ import annotations

import io
import math
import re

import pytest
import torch
from conftest import MLPProblem

import gradtx as gx

STEPS = 30


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: intra-op threads only add contention (several times slower
    on a shared machine), so this module runs on one thread and restores the setting after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
TOL = dict(rtol=1e-10, atol=1e-12)


# -- harness: run a transform and a per-tensor reference on the same problem ------------------------

def _gx_trajectory(tx, problem: MLPProblem, steps=STEPS, params0=None):
    params = {k: v.clone() for k, v in (params0 or problem.params0).items()}
    state = tx.init(params)
    out = []
    for t in range(steps):
        updates, state = tx.update(problem.grads(params, t), state, params)
        params = gx.apply_updates(params, updates)
        out.append(params)
    return out


def _ref_trajectory(step, problem: MLPProblem, steps=STEPS, params0=None):
    """``step(name, p, g, state_of_that_tensor, t) -> new p``, one tensor at a time."""
    params = {k: v.clone() for k, v in (params0 or problem.params0).items()}
    states = {k: {} for k in params}
    out = []
    for t in range(steps):
        grads = problem.grads(params, t)
        params = {k: step(k, params[k], grads[k], states[k], t) for k in params}
        out.append(params)
    return out


def _assert_same(traj, ref):
    assert len(traj) == len(ref)
    for t, (a, b) in enumerate(zip(traj, ref)):
        for k in b:
            torch.testing.assert_close(a[k], b[k], **TOL, msg=lambda m, t=t, k=k: f"step {t}, {k}: {m}")


def _l2(x):
    return x.pow(2).sum().sqrt()


# -- clipping ---------------------------------------------------------------------------------------

def _grad_tree(seed=0, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(5, 4, generator=gen, dtype=torch.float64) * scale,
            "b": torch.randn(4, generator=gen, dtype=torch.float64) * scale,
            "s": torch.randn((), generator=gen, dtype=torch.float64) * scale}


@pytest.mark.parametrize("max_delta", [0.0, 0.3, 100.0])
def test_clip_value_matches_torch_clip_grad_value(max_delta):
    grads = _grad_tree(1, 2.0)
    leaves = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads.values()]
    for p, g in zip(leaves, grads.values()):
        p.grad = g.clone()
    torch.nn.utils.clip_grad_value_(leaves, max_delta)
    for inplace in (False, True):
        given = {k: v.clone() for k, v in grads.items()}
        u, _ = gx.clip_value(max_delta).update(given, gx.EmptyState(), inplace=inplace)
        for p, k in zip(leaves, grads):
            assert torch.equal(u[k], p.grad)


@pytest.mark.parametrize("max_norm,scale", [(1.0, 1.0), (0.5, 3.0), (100.0, 1.0)], ids=["clip", "clip_more", "keep"])
def test_clip_by_global_norm_matches_torch_clip_grad_norm(max_norm, scale):
    """torch scales by min(1, max_norm / (norm + 1e-6)), optax (and gradtx) by
    min(1, max_norm / norm): equal up to that 1e-6, and exactly the rule written here."""
    grads = _grad_tree(2, scale)
    leaves = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads.values()]
    for p, g in zip(leaves, grads.values()):
        p.grad = g.clone()
    total = torch.nn.utils.clip_grad_norm_(leaves, max_norm)
    norm = math.sqrt(sum(float(g.pow(2).sum()) for g in grads.values()))
    torch.testing.assert_close(float(total), norm)
    u, _ = gx.clip_by_global_norm(max_norm).update(grads, gx.EmptyState())
    factor = max_norm / norm if norm > max_norm else 1.0
    for p, k in zip(leaves, grads):
        torch.testing.assert_close(u[k], grads[k] * factor, rtol=1e-14, atol=0)
        torch.testing.assert_close(u[k], p.grad, rtol=1e-5, atol=0)
    clipped_norm = math.sqrt(sum(float(x.pow(2).sum()) for x in u.values()))
    assert clipped_norm <= max_norm * (1 + 1e-12)


@pytest.mark.parametrize("threshold", [1e-3, 0.02, 10.0])
def test_clip_by_block_rms_matches_rule(problem64, threshold):
    lr = 0.1

    def step(name, p, g, st, t):
        rms = g.pow(2).mean().sqrt()
        return p - lr * g / max(1.0, float(rms) / threshold)

    tx = gx.chain(gx.clip_by_block_rms(threshold), gx.scale_by_lr(lr))
    _assert_same(_gx_trajectory(tx, problem64), _ref_trajectory(step, problem64))


def test_clip_by_block_rms_bounds_each_leaf():
    g = {"big": torch.full((10, 10), 3.0, dtype=torch.float64), "small": torch.full((4,), 0.1, dtype=torch.float64)}
    u, _ = gx.clip_by_block_rms(1.0).update(g, gx.EmptyState())
    torch.testing.assert_close(u["big"].pow(2).mean().sqrt(), torch.tensor(1.0, dtype=torch.float64))
    assert torch.equal(u["small"], g["small"])


def _unit_norms_ref(x, axis=None):
    if axis is not None:
        return x.pow(2).sum(dim=axis, keepdim=True).sqrt().expand_as(x)
    if x.dim() <= 1:
        return _l2(x).expand_as(x)
    rows = x.reshape(x.shape[0], -1)
    return rows.pow(2).sum(dim=1).sqrt().reshape((-1,) + (1,) * (x.dim() - 1)).expand_as(x)


@pytest.mark.parametrize("clipping,eps,axis", [(0.01, 1e-3, None), (0.05, 0.1, None), (0.02, 1e-3, 0)])
def test_adaptive_grad_clip_matches_rule(problem64, clipping, eps, axis):
    lr = 0.2

    def step(name, p, g, st, t):
        max_norm = clipping * _unit_norms_ref(p, axis).clamp_min(eps)
        g_norm = _unit_norms_ref(g, axis)
        u = torch.where(g_norm < max_norm, g, g * max_norm / g_norm.clamp_min(1e-6))
        return p - lr * u

    tx = gx.chain(gx.adaptive_grad_clip(clipping, eps, axis=axis), gx.scale_by_lr(lr))
    _assert_same(_gx_trajectory(tx, problem64), _ref_trajectory(step, problem64))


def test_adaptive_grad_clip_clips_per_unit_norm_ratio():
    gen = torch.Generator().manual_seed(0)
    p = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    p[4] = 0.0  # a zero-initialised unit: its limit is clipping * eps
    g = torch.randn(5, 4, generator=gen, dtype=torch.float64)
    g[0] *= 1e-3  # well inside its limit
    g[1:] *= 10.0
    clipping, eps = 0.1, 1e-3
    u, _ = gx.adaptive_grad_clip(clipping, eps).update({"w": g}, gx.EmptyState(), {"w": p})
    u = u["w"]
    p_rows, g_rows, u_rows = p.norm(dim=1), g.norm(dim=1), u.norm(dim=1)
    limit = clipping * p_rows.clamp_min(eps)
    assert torch.equal(u[0], g[0])
    assert (g_rows[1:] > limit[1:]).all()
    torch.testing.assert_close(u_rows[1:], limit[1:], rtol=1e-12, atol=0)
    # clipping rescales: the direction of every unit is kept
    torch.testing.assert_close(u / u_rows[:, None], g / g_rows[:, None])


def test_adaptive_grad_clip_needs_params():
    tx = gx.adaptive_grad_clip(0.1)
    with pytest.raises(ValueError, match="needs params"):
        tx.update({"w": torch.ones(3)}, tx.init({"w": torch.ones(3)}))


# -- normalisation --------------------------------------------------------------------------------

@pytest.mark.parametrize("min_norm,trust_coefficient,eps", [(0.0, 1.0, 0.0), (0.0, 0.5, 1e-3), (0.5, 2.0, 0.0)])
def test_scale_by_trust_ratio_matches_rule(problem64, min_norm, trust_coefficient, eps):
    lr = 0.05

    def step(name, p, g, st, t):
        pn, gn = max(float(_l2(p)), min_norm), max(float(_l2(g)), min_norm)
        ratio = 1.0 if pn == 0.0 or gn == 0.0 else trust_coefficient * pn / (gn + eps)
        return p - lr * ratio * g

    tx = gx.chain(gx.scale_by_trust_ratio(min_norm, trust_coefficient, eps), gx.scale_by_lr(lr))
    # b2 starts at zero: the first step exercises the "zero norm -> ratio 1" rule
    assert float(_l2(problem64.params0["b2"])) == 0.0
    _assert_same(_gx_trajectory(tx, problem64), _ref_trajectory(step, problem64))


@pytest.mark.parametrize("kind,min_scale", [("norm", 1e-3), ("norm", 0.5), ("rms", 1e-3), ("rms", 0.3)])
def test_scale_by_param_block_matches_rule(problem64, kind, min_scale):
    lr = 0.05

    def step(name, p, g, st, t):
        size = _l2(p) if kind == "norm" else p.pow(2).mean().sqrt()
        return p - lr * max(float(size), min_scale) * g

    block = gx.scale_by_param_block_norm(min_scale) if kind == "norm" else gx.scale_by_param_block_rms(min_scale)
    tx = gx.chain(block, gx.scale_by_lr(lr))
    _assert_same(_gx_trajectory(tx, problem64), _ref_trajectory(step, problem64))


def test_centralize_matches_rule(problem64):
    lr = 0.1

    def step(name, p, g, st, t):
        if g.dim() > 1:
            g = g - g.sum(dim=1, keepdim=True) / g.shape[1]
        return p - lr * g

    tx = gx.chain(gx.centralize(), gx.scale_by_lr(lr))
    _assert_same(_gx_trajectory(tx, problem64), _ref_trajectory(step, problem64))


def test_centralize_leaves_vectors_and_centres_the_rest():
    gen = torch.Generator().manual_seed(0)
    g = {"v": torch.randn(7, generator=gen, dtype=torch.float64) + 3.0,
         "s": torch.tensor(2.5, dtype=torch.float64),
         "w": torch.randn(4, 6, generator=gen, dtype=torch.float64) + 3.0,
         "conv": torch.randn(3, 2, 5, 5, generator=gen, dtype=torch.float64) + 3.0}
    u, _ = gx.centralize().update(g, gx.EmptyState())
    assert torch.equal(u["v"], g["v"]) and torch.equal(u["s"], g["s"])
    torch.testing.assert_close(u["w"].mean(dim=1), torch.zeros(4, dtype=torch.float64), atol=1e-14, rtol=0)
    torch.testing.assert_close(u["conv"].mean(dim=(1, 2, 3)), torch.zeros(3, dtype=torch.float64), atol=1e-14,
                               rtol=0)
    # only a per-unit constant is removed
    diff = g["w"] - u["w"]
    torch.testing.assert_close(diff, diff[:, :1].expand_as(diff))


@pytest.mark.parametrize("scale_factor,eps", [(1.0, 1e-6), (-0.5, 0.1)])
def test_normalize_by_update_norm_matches_rule(problem64, scale_factor, eps):
    lr = 0.05
    params = {k: v.clone() for k, v in problem64.params0.items()}
    tx = gx.chain(gx.normalize_by_update_norm(scale_factor, eps), gx.scale_by_lr(lr))
    state = tx.init(params)
    ref = {k: v.clone() for k, v in params.items()}
    for t in range(STEPS):
        updates, state = tx.update(problem64.grads(params, t), state, params)
        params = gx.apply_updates(params, updates)
        grads = problem64.grads(ref, t)
        total = math.sqrt(sum(float(g.pow(2).sum()) for g in grads.values()))
        ref = {k: ref[k] - lr * scale_factor * grads[k] / (total + eps) for k in ref}
        for k in ref:
            torch.testing.assert_close(params[k], ref[k], **TOL)


# -- constraints -----------------------------------------------------------------------------------

def test_keep_params_nonnegative_is_projected_descent(problem64):
    lr = 0.3
    params0 = {k: v.abs() for k, v in problem64.params0.items()}

    def step(name, p, g, st, t):
        return (p - lr * g).clamp_min(0.0)

    tx = gx.chain(gx.scale_by_lr(lr), gx.keep_params_nonnegative())
    traj = _gx_trajectory(tx, problem64, params0=params0)
    _assert_same(traj, _ref_trajectory(step, problem64, params0=params0))
    assert all((p >= 0).all() for params in traj for p in params.values())
    assert any((p == 0).any() for p in traj[-1].values()), "the constraint never engaged: weak test"


def test_keep_params_nonnegative_rule():
    p = {"x": torch.tensor([1.0, 1.0, 0.0, -2.0, 3.0], dtype=torch.float64)}
    u = {"x": torch.tensor([-0.5, -3.0, 1.0, 0.5, -3.0], dtype=torch.float64)}
    out, _ = gx.keep_params_nonnegative().update(u, gx.EmptyState(), p)
    # kept where p + u >= 0; otherwise -p (a negative parameter is moved to 0)
    assert torch.equal(out["x"], torch.tensor([-0.5, -1.0, 1.0, 2.0, -3.0], dtype=torch.float64))
    assert (p["x"] + out["x"] >= 0).all()


def test_keep_params_nonnegative_with_low_precision_updates():
    """bfloat16 updates on float32 params: -p rounded to bfloat16 may overshoot (-1.006 ->
    -1.0078); the projected parameter must still be >= 0 after apply_updates."""
    p = {"x": torch.tensor([1.006, 3.3, 0.5, 1e-30, 2.0, 0.7])}
    u = {"x": torch.tensor([-5.0, -5.0, -5.0, -1.0, -2.0, 0.25]).to(torch.bfloat16)}
    for inplace in (False, True):
        out, _ = gx.keep_params_nonnegative().update({"x": u["x"].clone()}, gx.EmptyState(), p, inplace=inplace)
        assert out["x"].dtype == torch.bfloat16
        new = gx.apply_updates(p, out)["x"]
        assert (new >= 0).all(), new
        assert float(new[4]) == 0.0 and float(new[5]) == pytest.approx(0.95)  # exact -p kept; u untouched
        assert float(new[0]) < 0.01  # moved (almost) to the boundary


@pytest.mark.parametrize("inplace", [False, True])
def test_zero_nans_replaces_and_flags(inplace):
    tx = gx.zero_nans()
    params = {"a": torch.zeros(3), "b": torch.zeros(2, 2), "c": torch.zeros(())}
    state = tx.init(params)
    assert all(f.dtype == torch.bool and f.dim() == 0 and not f for f in gx.tree_leaves(state))
    nan, inf = float("nan"), float("inf")
    grads = {"a": torch.tensor([1.0, nan, 2.0]), "b": torch.tensor([[inf, -1.0], [3.0, -inf]]),
             "c": torch.tensor(nan)}
    before = {k: v.clone() for k, v in grads.items()}
    u, state = tx.update({k: v.clone() for k, v in grads.items()} if inplace else grads, state, inplace=inplace)
    assert torch.equal(u["a"], torch.tensor([1.0, 0.0, 2.0]))
    assert torch.equal(u["b"], before["b"])  # infinities are not NaNs
    assert torch.equal(u["c"], torch.tensor(0.0))
    assert [bool(state.found_nan[k]) for k in "abc"] == [True, False, True]
    if not inplace:
        torch.testing.assert_close(grads, before, equal_nan=True)  # the pure path left its input alone
    # the flags describe the last update only
    u, state = tx.update({"a": torch.ones(3), "b": torch.ones(2, 2), "c": torch.tensor(nan)}, state, inplace=inplace)
    assert [bool(state.found_nan[k]) for k in "abc"] == [False, False, True]


# -- gradient noise --------------------------------------------------------------------------------

def _noise_updates(tx, grads, steps, state=None):
    state = tx.init(grads) if state is None else state
    out = []
    for _ in range(steps):
        u, state = tx.update(grads, state)
        out.append(u)
    return out, state


def test_add_noise_is_reproducible_from_the_seed():
    grads = {"w": torch.zeros(5, 4), "b": torch.zeros(4)}
    a, _ = _noise_updates(gx.add_noise(0.1, 0.55, seed=7), grads, 4)
    b, _ = _noise_updates(gx.add_noise(0.1, 0.55, seed=7), grads, 4)
    c, _ = _noise_updates(gx.add_noise(0.1, 0.55, seed=8), grads, 4)
    for x, y, z in zip(a, b, c):
        assert torch.equal(x["w"], y["w"]) and torch.equal(x["b"], y["b"])
        assert not torch.equal(x["w"], z["w"])
    assert not torch.equal(a[0]["w"], a[1]["w"]), "the same noise twice"
    assert not torch.equal(a[0]["w"][0], a[0]["b"]), "two leaves got the same noise"


def test_add_noise_resumes_from_its_state():
    grads = {"w": torch.zeros(3, 3)}
    tx = gx.add_noise(0.1, 0.55, seed=2)
    straight, _ = _noise_updates(tx, grads, 6)
    first, state = _noise_updates(tx, grads, 3)
    saved = gx.tree_map(lambda x: x.clone(), state)
    second, _ = _noise_updates(gx.add_noise(0.1, 0.55, seed=2), grads, 3, state=saved)
    for x, y in zip(straight, first + second):
        assert torch.equal(x["w"], y["w"])


def test_add_noise_resumes_through_the_adapter_checkpoint():
    def make():
        return [torch.nn.Parameter(torch.ones(4, 3)), torch.nn.Parameter(torch.ones(3))]

    def step(opt, params, t):
        for i, p in enumerate(params):
            p.grad = torch.full_like(p, 0.1 * (t + i))
        opt.step()

    def noisy(seed):
        # with momentum, so the chain has per-parameter state (see the report on stateless chains)
        return gx.chain(gx.add_noise(0.5, 0.55, seed=seed), gx.trace(0.5), gx.scale_by_lr(0.1))

    p1 = make()
    opt1 = gx.Optimizer(p1, noisy(11))
    for t in range(3):
        step(opt1, p1, t)
    buffer = io.BytesIO()
    torch.save(opt1.state_dict(), buffer)
    buffer.seek(0)
    p2 = [torch.nn.Parameter(p.detach().clone()) for p in p1]
    opt2 = gx.Optimizer(p2, noisy(99))  # the seed comes from the checkpoint
    opt2.load_state_dict(torch.load(buffer, weights_only=True))
    for t in range(3, 6):
        step(opt1, p1, t)
        step(opt2, p2, t)
        for a, b in zip(p1, p2):
            assert torch.equal(a, b)


def _resume_matches(build):
    """Six adapter steps equal three, a checkpoint (``weights_only`` load), three more."""
    def make():
        gen = torch.Generator().manual_seed(0)
        return [torch.nn.Parameter(torch.randn(4, 3, generator=gen, dtype=torch.float64)),
                torch.nn.Parameter(torch.randn(3, generator=gen, dtype=torch.float64))]

    def step(opt, params, t):
        for i, p in enumerate(params):
            p.grad = p.detach() * (1 + 0.1 * t) + 0.01 * i
        opt.step()

    p1 = make()
    opt1 = gx.Optimizer(p1, build())
    for t in range(3):
        step(opt1, p1, t)
    buffer = io.BytesIO()
    torch.save(opt1.state_dict(), buffer)
    buffer.seek(0)
    p2 = [torch.nn.Parameter(p.detach().clone()) for p in p1]
    opt2 = gx.Optimizer(p2, build())
    opt2.load_state_dict(torch.load(buffer, weights_only=True))
    for t in range(3, 6):
        step(opt1, p1, t)
        step(opt2, p2, t)
    return all(torch.equal(a, b) for a, b in zip(p1, p2))


@pytest.mark.parametrize("build", [
    lambda: gx.lamb(0.01, weight_decay=1e-3), lambda: gx.lars(1.0, weight_decay=1e-3),
    lambda: gx.chain(gx.adaptive_grad_clip(0.1), gx.trace(0.9), gx.scale_by_lr(0.1)),
    lambda: gx.chain(gx.zero_nans(), gx.scale_by_lr(0.1)),
    lambda: gx.dog(init_step=("heuristic", 1e-3)), lambda: gx.muon(0.02, weight_decay=0.01),
    lambda: gx.chain(gx.scale_by_distance_over_gradients(1e-3), gx.scale_by_lr(1.0)),
    lambda: gx.optimistic_gradient_descent(0.05),
], ids=["lamb", "lars", "agc_momentum", "zero_nans", "dog", "muon", "ldog", "optimistic"])
def test_resumes_from_an_adapter_checkpoint(build):
    assert _resume_matches(build)


@pytest.mark.parametrize("build", [lambda: gx.noisy_sgd(0.01, seed=3), lambda: gx.fromage(0.01)],
                         ids=["noisy_sgd", "fromage"])
def test_resumes_from_an_adapter_checkpoint_without_per_parameter_state(build):
    assert _resume_matches(build)


def test_add_noise_variance_is_annealed():
    eta, gamma = 0.7, 0.55
    n = 200_000
    grads = {"x": torch.zeros(n, dtype=torch.float64)}
    noises, _ = _noise_updates(gx.add_noise(eta, gamma, seed=5), grads, 50)
    for t in (0, 1, 9, 49):
        x = noises[t]["x"]
        expected = eta / (1 + t) ** gamma
        # the sample variance of n Gaussians has relative standard error sqrt(2 / n) ~ 0.3%
        assert abs(float(x.var()) / expected - 1) < 0.02, t
        assert abs(float(x.mean())) < 5 * math.sqrt(expected / n)
    corr = torch.corrcoef(torch.stack([noises[3]["x"], noises[4]["x"]]))[0, 1]
    assert abs(float(corr)) < 0.02


def test_noisy_sgd_adds_annealed_noise_to_sgd(problem64):
    lr = 0.05
    # eta = 0 is plain gradient descent
    plain = _gx_trajectory(gx.noisy_sgd(lr, eta=0.0), problem64)
    _assert_same(plain, _ref_trajectory(lambda name, p, g, st, t: p - lr * g, problem64))
    # the noise in the step, recovered from the update, has variance eta / (1 + t)^gamma
    eta, gamma = 0.3, 0.55
    tx = gx.noisy_sgd(lr, eta=eta, gamma=gamma, seed=4)
    params = {"x": torch.linspace(-1, 1, 100_000, dtype=torch.float64)}
    state = tx.init(params)
    for t in range(3):
        grads = {"x": 2 * params["x"]}
        updates, state = tx.update(grads, state, params)
        noise = -updates["x"] / lr - grads["x"]
        assert abs(float(noise.var()) / (eta / (1 + t) ** gamma) - 1) < 0.03
        params = gx.apply_updates(params, updates)


# -- aliases ---------------------------------------------------------------------------------------

def _matrix_mask(params):
    return {k: v.dim() > 1 for k, v in params.items()}


@pytest.mark.parametrize("weight_decay,masked", [(0.0, False), (0.05, False), (0.05, True)])
def test_lamb_matches_paper(problem64, weight_decay, masked):
    lr, b1, b2, eps = 0.01, 0.9, 0.99, 1e-6

    def step(name, p, g, st, t):
        m = st.get("m", torch.zeros_like(p)) * b1 + (1 - b1) * g
        v = st.get("v", torch.zeros_like(p)) * b2 + (1 - b2) * g * g
        st["m"], st["v"] = m, v
        r = (m / (1 - b1 ** (t + 1))) / ((v / (1 - b2 ** (t + 1))).sqrt() + eps)
        if not masked or p.dim() > 1:
            r = r + weight_decay * p
        pn, rn = float(_l2(p)), float(_l2(r))
        ratio = pn / rn if pn > 0 and rn > 0 else 1.0
        return p - lr * ratio * r

    tx = gx.lamb(lr, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=_matrix_mask if masked else None)
    _assert_same(_gx_trajectory(tx, problem64), _ref_trajectory(step, problem64))


@pytest.mark.parametrize("nesterov", [False, True])
@pytest.mark.parametrize("masks", ["default", "matrices", "off"])
def test_lars_matches_paper(problem64, nesterov, masks):
    lr, wd, tc, eps, mom = 0.5, 1e-3, 0.01, 1e-8, 0.9
    mask = {"default": True, "matrices": _matrix_mask, "off": False}[masks]

    def step(name, p, g, st, t):
        on = masks == "default" or (masks == "matrices" and p.dim() > 1)
        if on:
            g = g + wd * p
            pn, gn = float(_l2(p)), float(_l2(g))
            g = g * (tc * pn / (gn + eps) if pn > 0 and gn > 0 else 1.0)
        m = mom * st.get("m", torch.zeros_like(p)) + g
        st["m"] = m
        return p - lr * (g + mom * m if nesterov else m)

    tx = gx.lars(lr, weight_decay=wd, weight_decay_mask=mask, trust_coefficient=tc, eps=eps, trust_ratio_mask=mask,
                 momentum=mom, nesterov=nesterov)
    _assert_same(_gx_trajectory(tx, problem64), _ref_trajectory(step, problem64))


@pytest.mark.parametrize("lr,min_norm", [(0.01, 1e-6), (0.2, 1e-2)])
def test_fromage_matches_paper(problem64, lr, min_norm):
    def step(name, p, g, st, t):
        ratio = max(float(_l2(p)), min_norm) / max(float(_l2(g)), min_norm)
        return (p - lr * ratio * g) / math.sqrt(1 + lr * lr)

    _assert_same(_gx_trajectory(gx.fromage(lr, min_norm), problem64), _ref_trajectory(step, problem64))


def test_fromage_with_a_tensor_lr(problem64):
    a = _gx_trajectory(gx.fromage(torch.tensor(0.05, dtype=torch.float64)), problem64, steps=5)
    b = _gx_trajectory(gx.fromage(0.05), problem64, steps=5)
    _assert_same(a, b)


# -- hyperparameter validation ------------------------------------------------------------------------

@pytest.mark.parametrize("build,name", [
    (lambda: gx.clip_by_block_rms(0.0), "threshold"),
    (lambda: gx.clip_by_block_rms(-1.0), "threshold"),
    (lambda: gx.adaptive_grad_clip(-0.1), "clipping"),
    (lambda: gx.adaptive_grad_clip(0.1, eps=-1.0), "eps"),
    (lambda: gx.scale_by_trust_ratio(min_norm=-1.0), "min_norm"),
    (lambda: gx.scale_by_trust_ratio(trust_coefficient=-1.0), "trust_coefficient"),
    (lambda: gx.scale_by_trust_ratio(eps=-1.0), "eps"),
    (lambda: gx.scale_by_param_block_norm(-1.0), "min_scale"),
    (lambda: gx.scale_by_param_block_rms(-1.0), "min_scale"),
    (lambda: gx.normalize_by_update_norm(eps=-1.0), "eps"),
    (lambda: gx.normalize_by_update_norm(scale_factor=float("nan")), "scale_factor"),
    (lambda: gx.add_noise(-0.1, 0.55), "eta"),
    (lambda: gx.add_noise(0.1, -1.0), "gamma"),
    (lambda: gx.add_noise(0.1, 0.55, seed=1.5), "seed"),
    (lambda: gx.add_noise(0.1, 0.55, seed=2**64), "seed"),
    (lambda: gx.lamb(-1.0), "lr"),
    (lambda: gx.lamb(1e-3, b1=1.0), "b1"),
    (lambda: gx.lamb(1e-3, weight_decay=-1.0), "weight_decay"),
    (lambda: gx.lars(-1.0), "lr"),
    (lambda: gx.lars(1.0, momentum=-0.5), "momentum"),
    (lambda: gx.lars(1.0, trust_coefficient=-1.0), "trust_coefficient"),
    (lambda: gx.fromage(-0.1), "lr"),
    (lambda: gx.fromage(lambda t: 0.1), "lr"),
    (lambda: gx.fromage(0.1, min_norm=-1.0), "min_norm"),
    (lambda: gx.noisy_sgd(0.1, eta=-1.0), "eta"),
])
def test_bad_hyperparameters_raise(build, name):
    with pytest.raises(ValueError, match=name):
        build()


@pytest.mark.parametrize("tx", [gx.scale_by_trust_ratio(), gx.scale_by_param_block_norm(),
                                gx.scale_by_param_block_rms(), gx.keep_params_nonnegative()],
                         ids=lambda tx: tx.name)
def test_param_transforms_need_params(tx):
    grads = {"w": torch.ones(2, 2)}
    with pytest.raises(ValueError, match="needs params"):
        tx.update(grads, tx.init(grads))


@pytest.mark.parametrize("build,name", [
    (lambda: gx.clip_value(-1.0), "max_delta"),
    (lambda: gx.clip_by_global_norm(0.0), "max_norm"),
])
def test_core_clipping_bad_hyperparameters_raise(build, name):
    with pytest.raises(ValueError, match=name):
        build()


# -- documentation ---------------------------------------------------------------------------------

MY_NAMES = ["clip_value", "clip_by_global_norm", "clip_by_block_rms", "adaptive_grad_clip", "scale_by_trust_ratio",
            "scale_by_param_block_norm", "scale_by_param_block_rms", "centralize", "normalize_by_update_norm",
            "keep_params_nonnegative", "zero_nans", "add_noise", "lamb", "lars", "fromage", "noisy_sgd",
            "scale_by_polyak", "scale_by_optimistic_gradient", "scale_by_distance_over_gradients", "scale_by_dog",
            "scale_by_muon", "orthogonalize_via_newton_schulz", "polyak_sgd", "optimistic_gradient_descent", "dog",
            "muon"]


@pytest.mark.parametrize("name", MY_NAMES)
def test_docstring_has_rule_citation_and_example(name):
    doc = getattr(gx, name).__doc__ or ""
    assert "Example" in doc, "no example"
    assert "<-" in doc or "=" in doc, "no update rule"
    assert re.search(r"\b(19|20)\d\d\b", doc) or "optax." in doc or "torch." in doc, "no citation"
