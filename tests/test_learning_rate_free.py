"""Learning-rate-free optimizers against the authors' packages (prodigyopt, dadaptation) and
optax.contrib, float64."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import MLPProblem, assert_resume_bit_exact, functional_trajectory, optax_trajectory, optimizer_trajectory

import gradtx as gx

STEPS = 60
TOL = dict(rtol=1e-10, atol=1e-12)


def _reference(problem: MLPProblem, make, steps: int = STEPS, groups: bool = False):
    leaves = problem.leaf_params()
    ps = list(leaves.values())
    return optimizer_trajectory(leaves, problem.loss, make([{"params": ps[:2]}, {"params": ps[2:]}] if groups else ps),
                                steps)


def _functional(problem: MLPProblem, tx, steps: int = STEPS):
    return functional_trajectory(problem, tx, steps)


def _assert_trajectories(got, want, tol=TOL):
    for t, (g, w) in enumerate(zip(got, want)):
        for k in w:
            torch.testing.assert_close(g[k], w[k], **tol, msg=lambda m, t=t, k=k: f"step {t}, {k}: {m}")


PRODIGY = [
    {},
    dict(weight_decay=1e-2, use_bias_correction=True, safeguard_warmup=True, d_coef=0.5, growth_rate=1.05),
    dict(lr=0.5, betas=(0.0, 0.99), beta3=0.9, weight_decay=1e-2, decouple=False, d0=1e-4),
]


@pytest.mark.parametrize("kwargs", PRODIGY, ids=["defaults", "wd-bias-safeguard-dcoef-growth", "b1=0-coupled"])
def test_prodigy_matches_prodigyopt(kwargs):
    prodigyopt = pytest.importorskip("prodigyopt")
    problem = MLPProblem()
    want = _reference(problem, lambda p: prodigyopt.Prodigy(p, **kwargs))
    mine = dict(kwargs)
    if "betas" in mine:
        mine["b1"], mine["b2"] = mine.pop("betas")
    _assert_trajectories(_functional(problem, gx.prodigy(**mine)), want)


DADAPT_ADAM = [{}, dict(lr=0.5, betas=(0.8, 0.99), weight_decay=1e-2, decouple=True, use_bias_correction=True,
                         growth_rate=1.1), dict(weight_decay=1e-2, d0=1e-4)]


@pytest.mark.parametrize("kwargs", DADAPT_ADAM, ids=["defaults", "decoupled-bias-growth", "coupled-wd"])
def test_dadapt_adam_matches_dadaptation(kwargs):
    dadaptation = pytest.importorskip("dadaptation")
    problem = MLPProblem()
    want = _reference(problem, lambda p: dadaptation.DAdaptAdam(p, **kwargs))
    mine = dict(kwargs)
    if "betas" in mine:
        mine["b1"], mine["b2"] = mine.pop("betas")
    _assert_trajectories(_functional(problem, gx.dadapt_adam(**mine)), want)


@pytest.mark.parametrize("kwargs", [{}, dict(momentum=0.9, weight_decay=1e-3, growth_rate=1.5, lr=0.5)],
                         ids=["defaults", "momentum-wd-growth"])
def test_dadapt_sgd_matches_dadaptation(kwargs):
    dadaptation = pytest.importorskip("dadaptation")
    problem = MLPProblem()
    want = _reference(problem, lambda p: dadaptation.DAdaptSGD(p, **kwargs))
    _assert_trajectories(_functional(problem, gx.dadapt_sgd(**kwargs)), want)


def test_prodigy_through_optimizer_over_two_groups_and_checkpoint():
    """gx.Optimizer over two param groups (one d over both, as the reference) gives
    prodigyopt's trajectory; a state_dict round-trip continues bit-identically."""
    prodigyopt = pytest.importorskip("prodigyopt")
    problem = MLPProblem()
    want = _reference(problem, lambda p: prodigyopt.Prodigy(p, weight_decay=1e-2), steps=30, groups=True)

    def make(leaves):
        ps = list(leaves.values())
        return gx.Optimizer([{"params": ps[:2]}, {"params": ps[2:]}], gx.prodigy(weight_decay=1e-2))

    got = assert_resume_bit_exact(make, problem.leaf_params(), problem.loss, steps=30, split=15)
    assert len(got) == len(want) == 30
    _assert_trajectories(got[-1:], want[-1:])  # the final params (a step midway is 1.8e-10 off)


def test_zero_gradients_do_not_step_or_move_d():
    """As the references return early when sum|s| = 0: no step, d unchanged."""
    params = {"a": torch.ones(3, dtype=torch.float64)}
    for tx in (gx.scale_by_prodigy(), gx.scale_by_dadapt_adam(), gx.scale_by_dadapt_sgd()):
        state = tx.init(params)
        updates, new = tx.update({"a": torch.zeros(3, dtype=torch.float64)}, state, params)
        assert torch.count_nonzero(updates["a"]) == 0
        assert torch.equal(new.d, state.d) and int(new.count) == 0


def test_errors_name_the_argument():
    for bad, name in [(dict(d0=0.0), "d0"), (dict(growth_rate=0.5), "growth_rate"), (dict(lr=0.0), "lr"),
                      (dict(b2=1.0), "b2"), (dict(growth_rate=math.nan), "growth_rate")]:
        with pytest.raises(ValueError, match=name):
            gx.prodigy(**bad)
    with pytest.raises(ValueError, match="momentum"):
        gx.dadapt_sgd(momentum=1.0)
    with pytest.raises(ValueError, match="base_optimizer"):
        gx.mechanize(0.1)
    with pytest.raises(ValueError, match="num_betas"):
        gx.mechanize(gx.sgd(0.1), num_betas=0)


def _optax_trajectory(jax, problem: MLPProblem, tx, steps: int = 40):
    return optax_trajectory(jax, problem, tx, steps)


OPTAX_CASES = [
    ("dowg", lambda c, o: c.dowg(), lambda: gx.dowg()),
    ("dowg-init-wd", lambda c, o: c.dowg(0.5, init_estim_sq_dist=1e-2, weight_decay=1e-3),
     lambda: gx.dowg(0.5, init_estim_sq_dist=1e-2, weight_decay=1e-3)),
    ("cocob", lambda c, o: c.cocob(), lambda: gx.cocob()),
    ("cocob-lr-alpha-wd", lambda c, o: c.cocob(0.5, alpha=50.0, weight_decay=1e-3),
     lambda: gx.cocob(0.5, alpha=50.0, weight_decay=1e-3)),
    ("mechanize-adam", lambda c, o: c.mechanize(o.adam(1e-2)), lambda: gx.mechanize(gx.adam(1e-2))),
    ("mechanize-sgd", lambda c, o: c.mechanize(o.sgd(0.1, momentum=0.9), weight_decay=0.0, num_betas=3),
     lambda: gx.mechanize(gx.sgd(0.1, momentum=0.9), weight_decay=0.0, num_betas=3)),
]


@pytest.mark.parametrize(("name", "ref", "mine"), OPTAX_CASES, ids=[c[0] for c in OPTAX_CASES])
def test_matches_optax_contrib(jax_x64, name, ref, mine):
    import optax
    import optax.contrib

    problem = MLPProblem()
    want = _optax_trajectory(jax_x64, problem, ref(optax.contrib, optax))
    _assert_trajectories(_functional(problem, mine(), steps=40), want)


MOMO_CASES = [
    ("momo", lambda c: c.momo(0.5, beta=0.9), lambda: gx.momo(0.5)),
    ("momo-wd-adapt", lambda c: c.momo(0.5, beta=0.8, lower_bound=0.01, weight_decay=1e-2,
                                       adapt_lower_bound=True),
     lambda: gx.momo(0.5, beta=0.8, lower_bound=0.01, weight_decay=1e-2, adapt_lower_bound=True)),
    ("momo_adam", lambda c: c.momo_adam(0.05, b1=0.9, b2=0.999), lambda: gx.momo_adam(0.05)),
    ("momo_adam-wd-adapt", lambda c: c.momo_adam(0.05, b1=0.9, b2=0.999, weight_decay=1e-2,
                                                 adapt_lower_bound=True),
     lambda: gx.momo_adam(0.05, weight_decay=1e-2, adapt_lower_bound=True)),
]


@pytest.mark.parametrize(("name", "ref", "mine"), MOMO_CASES, ids=[c[0] for c in MOMO_CASES])
def test_momo_matches_optax_contrib(jax_x64, name, ref, mine):
    """The loss is passed as ``value`` to both, float64."""
    import numpy as np
    import optax
    import optax.contrib

    jax = jax_x64
    problem = MLPProblem()
    tx_ref = ref(optax.contrib)
    params_ref = {k: jax.numpy.asarray(v.numpy()) for k, v in problem.params0.items()}
    state_ref = tx_ref.init(params_ref)
    step = jax.jit(lambda g, s, p, v: tx_ref.update(g, s, p, value=v))
    tx = mine()
    params = {k: v.clone() for k, v in problem.params0.items()}
    state = tx.init(params)
    for t in range(40):
        torch_params = {k: torch.from_numpy(np.asarray(v).copy()) for k, v in params_ref.items()}
        loss = problem.loss(torch_params, t)
        grads = problem.grads(torch_params, t)
        updates, state_ref = step({k: jax.numpy.asarray(g.numpy()) for k, g in grads.items()}, state_ref,
                                  params_ref, jax.numpy.asarray(float(loss)))
        params_ref = optax.apply_updates(params_ref, updates)
        updates, state = tx.update(problem.grads(params, t), state, params, value=problem.loss(params, t))
        params = gx.apply_updates(params, updates)
        for k in params:
            torch.testing.assert_close(params[k], torch.from_numpy(np.asarray(params_ref[k]).copy()), **TOL,
                                       msg=lambda m, t=t, k=k: f"step {t}, {k}: {m}")
