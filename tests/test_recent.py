"""ADOPT, AdEMAMix (and simplified), LaProp against optax.contrib (float64 via jax) and
pytorch_optimizer."""

from __future__ import annotations

import pytest
import torch
from conftest import MLPProblem, assert_resume_bit_exact, functional_trajectory, optax_trajectory

import gradtx as gx

STEPS = 60
TOL = dict(rtol=1e-10, atol=1e-12)


def _optax_trajectory(jax, problem: MLPProblem, tx, steps: int = STEPS):
    return optax_trajectory(jax, problem, tx, steps)


def _functional(problem: MLPProblem, tx, steps: int = STEPS):
    return functional_trajectory(problem, tx, steps)


def _assert_trajectories(got, want):
    for t, (g, w) in enumerate(zip(got, want)):
        for k in w:
            torch.testing.assert_close(g[k], w[k], **TOL, msg=lambda m, t=t, k=k: f"step {t}, {k}: {m}")


def _jax_schedule(start, slope):
    import jax.numpy as jnp

    return lambda t: start + slope * jnp.asarray(t, jnp.float64)


def _torch_schedule(start, slope):
    return lambda t: start + slope * t.to(torch.float64)


def _cases():
    return [
        ("adopt", lambda c: c.adopt(3e-3), lambda: gx.adopt(3e-3)),
        ("adopt-nesterov-noclip", lambda c: c.adopt(3e-3, b2=0.99, nesterov=True, use_clipping=False),
         lambda: gx.adopt(3e-3, b2=0.99, nesterov=True, use_clipping=False)),
        ("ademamix", lambda c: c.ademamix(1e-2, b3=0.999, alpha=3.0, weight_decay=1e-2),
         lambda: gx.ademamix(1e-2, b3=0.999, alpha=3.0, weight_decay=1e-2)),
        # schedules written out in float64 (optax.linear_schedule computes in float32)
        ("ademamix-schedules", lambda c: c.ademamix(1e-2, b3=_jax_schedule(0.9, 0.0015), alpha=_jax_schedule(0.0, 0.1)),
         lambda: gx.ademamix(1e-2, b3=_torch_schedule(0.9, 0.0015), alpha=_torch_schedule(0.0, 0.1))),
        ("simplified_ademamix", lambda c: c.simplified_ademamix(1e-3, alpha=2.0, eps_root=1e-12, weight_decay=1e-3),
         lambda: gx.simplified_ademamix(1e-3, alpha=2.0, eps_root=1e-12, weight_decay=1e-3)),
        ("acprop", lambda c: c.acprop(1e-3, weight_decay=1e-3), lambda: gx.acprop(1e-3, weight_decay=1e-3)),
        ("acprop-eps", lambda c: c.acprop(1e-3, b1=0.8, b2=0.99, eps=1e-8, eps_root=1e-10),
         lambda: gx.acprop(1e-3, b1=0.8, b2=0.99, eps=1e-8, eps_root=1e-10)),

    ]


@pytest.mark.parametrize(("name", "ref", "mine"), _cases(), ids=[c[0] for c in _cases()])
def test_matches_optax_contrib(jax_x64, name, ref, mine):
    import optax.contrib

    problem = MLPProblem()
    want = _optax_trajectory(jax_x64, problem, ref(optax.contrib))
    _assert_trajectories(_functional(problem, mine()), want)


def test_laprop_matches_pytorch_optimizer():
    pytorch_optimizer = pytest.importorskip("pytorch_optimizer")
    problem = MLPProblem()
    leaves = problem.leaf_params()
    # foreach=False: its multi-tensor path rounds the step sizes to a float32 tensor
    opt = pytorch_optimizer.LaProp(list(leaves.values()), lr=1e-2, betas=(0.8, 0.99), foreach=False)
    want = []
    for t in range(STEPS):
        opt.zero_grad()
        problem.loss(leaves, t).backward()
        opt.step()
        want.append({k: v.detach().clone() for k, v in leaves.items()})
    _assert_trajectories(_functional(problem, gx.laprop(1e-2, b1=0.8, b2=0.99)), want)


def test_adopt_paper_rule_written_out():
    """ADOPT's Algorithm 1 with clipping (Taniguchi et al., 2024), independently: v_0 = g_0^2,
    then m <- b1 m + (1-b1) clip(g / max(sqrt(v), eps), t^(1/4)), p <- p - lr m, v <- b2 v + (1-b2) g^2."""
    problem = MLPProblem()
    lr, b1, b2, eps = 3e-3, 0.9, 0.9999, 1e-6
    got = _functional(problem, gx.adopt(lr, b1, b2, eps), steps=20)
    p = {k: v.clone() for k, v in problem.params0.items()}
    m = {k: torch.zeros_like(v) for k, v in p.items()}
    v = None
    for t in range(20):
        g = problem.grads(p, t)
        if t == 0:
            v = {k: g[k] ** 2 for k in g}
        else:
            for k in g:
                n = torch.clamp(g[k] / torch.clamp(v[k].sqrt(), min=eps), -t ** 0.25, t ** 0.25)
                m[k] = b1 * m[k] + (1 - b1) * n
                p[k] = p[k] - lr * m[k]
                v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
        for k in p:
            torch.testing.assert_close(got[t][k], p[k], **TOL)


def test_ademamix_through_optimizer_and_checkpoint():
    problem = MLPProblem()
    tx = lambda: gx.ademamix(1e-2, b3=0.999, weight_decay=1e-2)  # noqa: E731
    want = _functional(problem, tx(), steps=20)
    got = assert_resume_bit_exact(lambda leaves: gx.Optimizer(list(leaves.values()), tx()), problem.leaf_params(),
                                  problem.loss, steps=20, split=10)
    _assert_trajectories(got, want)
    assert len(got) == len(want) == 20


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="b3"):
        gx.ademamix(1e-3, b3=1.0)
    with pytest.raises(ValueError, match="clip_value_fn"):
        gx.adopt(1e-3, clip_value_fn=2.0)
    with pytest.raises(ValueError, match="eps_root"):
        gx.laprop(eps_root=-1.0)


def test_ranger_is_torch_radam_inside_lookahead():
    """Ranger against torch.optim.RAdam stepping the fast weights, with the Lookahead rule
    written out: every k steps slow += alpha (fast - slow), fast = slow."""
    problem = MLPProblem()
    lr, k, alpha = 1e-2, 4, 0.5
    got = _functional(problem, gx.ranger(lr, sync_period=k, slow_step_size=alpha), steps=30)
    leaves = problem.leaf_params()
    opt = torch.optim.RAdam(list(leaves.values()), lr=lr, betas=(0.95, 0.999), eps=1e-5)
    slow = {n: v.detach().clone() for n, v in leaves.items()}
    for t in range(30):
        opt.zero_grad()
        problem.loss(leaves, t).backward()
        opt.step()
        if (t + 1) % k == 0:
            with torch.no_grad():
                for n, v in leaves.items():
                    slow[n] += alpha * (v - slow[n])
                    v.copy_(slow[n])
        for n, v in leaves.items():
            torch.testing.assert_close(got[t][n], v.detach(), **TOL, msg=lambda m, t=t, n=n: f"step {t}, {n}: {m}")


@pytest.mark.parametrize("kwargs", [dict(lr=1e-2), dict(lr=3e-2, momentum=0.5, weight_decay=1e-3, eps=1e-5)],
                         ids=["defaults", "wd-momentum-eps"])
def test_madgrad_matches_pytorch_optimizer(kwargs):
    """Facebook's MADGRAD rule as pytorch_optimizer runs it (optax.contrib.madgrad computes
    lr * sqrt(k + 1) in float32 even under x64, so it is not the float64 reference)."""
    pytorch_optimizer = pytest.importorskip("pytorch_optimizer")
    problem = MLPProblem()
    leaves = problem.leaf_params()
    opt = pytorch_optimizer.MADGRAD(list(leaves.values()), **kwargs)
    want = []
    for t in range(STEPS):
        opt.zero_grad()
        problem.loss(leaves, t).backward()
        opt.step()
        want.append({k: v.detach().clone() for k, v in leaves.items()})
    _assert_trajectories(_functional(problem, gx.madgrad(**kwargs)), want)


def test_reduce_on_plateau_matches_optax(jax_x64):
    """A loss sequence with plateaus, windows of 2, patience 2, cooldown 1: the scale over
    time equals optax.contrib.reduce_on_plateau's, float64."""
    import optax.contrib

    jnp = jax_x64.numpy
    losses = [5.0, 4.0, 4.0, 4.0, 4.0, 4.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    kwargs = dict(factor=0.5, patience=2, rtol=1e-3, atol=1e-2, cooldown=1, accumulation_size=2, min_scale=0.1)
    ref = optax.contrib.reduce_on_plateau(**kwargs)
    mine = gx.reduce_on_plateau(**kwargs)
    g = {"w": jnp.ones(3, dtype=jnp.float64)}
    ref_state = ref.init(g)
    state = mine.init({"w": torch.ones(3, dtype=torch.float64)})
    step = jax_x64.jit(lambda u, s, v: ref.update(u, s, value=v))
    scales = []
    for loss in losses:
        want, ref_state = step(g, ref_state, jnp.asarray(loss, jnp.float64))
        got, state = mine.update({"w": torch.ones(3, dtype=torch.float64)}, state, value=torch.tensor(loss))
        scales.append(float(got["w"][0]))
        assert float(got["w"][0]) == float(want["w"][0])
    assert min(scales) < 1.0  # the sequence reduces the scale at least once


def test_adabound_matches_pytorch_optimizer():
    pytorch_optimizer = pytest.importorskip("pytorch_optimizer")
    problem = MLPProblem()
    leaves = problem.leaf_params()
    kwargs = dict(lr=1e-2, final_lr=0.05, gamma=1e-2)
    opt = pytorch_optimizer.AdaBound(list(leaves.values()), betas=(0.8, 0.99), foreach=False, **kwargs)
    want = []
    for t in range(STEPS):
        opt.zero_grad()
        problem.loss(leaves, t).backward()
        opt.step()
        want.append({k: v.detach().clone() for k, v in leaves.items()})
    _assert_trajectories(_functional(problem, gx.adabound(b1=0.8, b2=0.99, **kwargs)), want)
