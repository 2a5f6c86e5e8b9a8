"""optax names gradtx lacked (issue 13 §2) against optax 0.2.8 itself, in float64 (jax x64).

Each test runs the same gradients through gradtx and optax and compares updates, states'
measurements and returned values at float64 round-off (rtol 1e-12 unless noted).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from conftest import MLPProblem, assert_resume_bit_exact, assert_same, functional_trajectory

import gradtx as gx

optax = pytest.importorskip("optax")
jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)
jnp = jax.numpy

TOL = dict(rtol=1e-12, atol=1e-14)


def _params(seed=0):
    gen = torch.Generator().manual_seed(seed)
    out = {"w": torch.randn(4, 3, generator=gen, dtype=torch.float64),
           "b": torch.randn(3, generator=gen, dtype=torch.float64),
           "s": torch.randn((), generator=gen, dtype=torch.float64)}
    return dict(sorted(out.items()))  # jax orders dict leaves by key


def _to_jax(tree):
    return jax.tree.map(lambda x: jnp.asarray(x.detach().numpy()), tree)


def _close(mine, theirs, **tol):
    theirs = jax.tree.map(lambda x: torch.as_tensor(np.array(x)), theirs)
    for a, b in zip(gx.tree_leaves(mine), jax.tree.leaves(theirs)):
        torch.testing.assert_close(torch.as_tensor(a).to(b.dtype), b, **(tol or TOL))


def _run_both(tx, otx, steps=6, seed=0, extra=None, tol=None):
    """Updates of ``tx`` and ``otx`` on the same gradient sequence, compared every step; the
    final states are returned."""
    params = _params(seed)
    state, ostate = tx.init(params), otx.init(_to_jax(params))
    oupdate = jax.jit(otx.update)  # one compile instead of many slow eager dispatches
    for t in range(steps):
        grads = _params(100 + t)
        u, state = tx.update(grads, state, params, **(extra or {}))
        ou, ostate = oupdate(_to_jax(grads), ostate, _to_jax(params), **(extra or {}))
        _close(u, ou, **(tol or {}))
        params = gx.apply_updates(params, u)
    return state, ostate


# --- set_to_zero, selective_transform, conditionally_mask -------------------------------------------


def test_set_to_zero_matches_optax():
    _run_both(gx.set_to_zero(), optax.set_to_zero(), steps=2)


def test_selective_transform_matches_optax():
    mask = {"w": False, "b": True, "s": False}
    _run_both(gx.selective_transform(gx.adam(0.1), freeze_mask=mask),
              optax.selective_transform(optax.adam(0.1), freeze_mask=mask))
    # the optimizer keeps no state for the frozen leaf
    state = gx.selective_transform(gx.adam(0.1), freeze_mask=mask).init(_params())
    assert isinstance(gx.tree_get_all(state, "mu")[0]["b"], gx.MaskedNode)
    # a bool freezes all or nothing
    _run_both(gx.selective_transform(gx.adam(0.1), freeze_mask=True),
              optax.selective_transform(optax.adam(0.1), freeze_mask=True), steps=2)


def test_conditionally_mask_matches_optax():
    def cond(step):
        return step % 3 != 1

    _run_both(gx.conditionally_mask(gx.adam(0.1), cond), optax.conditionally_mask(optax.adam(0.1), cond), steps=7)


def test_conditionally_mask_forwards_extra_args_and_zeros_in_place():
    seen = []
    tx = gx.conditionally_mask(gx.sgd(0.1), lambda step, value: seen.append(float(value)) or value < 1.0,
                               forward_extra_args=True)
    params = _params()
    state = tx.init(params)
    grads = {k: v.clone() for k, v in _params(1).items()}
    out, state = tx.update(grads, state, params, inplace=True, value=torch.tensor(2.0))
    assert seen == [2.0] and all(torch.equal(out[k], torch.zeros_like(out[k])) for k in out)
    assert out["w"] is grads["w"]  # zeroed in place
    assert int(state.step) == 1


# --- snapshot, monitor, measure_with_ema ----------------------------------------------------------


def test_snapshot_monitor_and_measure_with_ema_match_optax():
    """optax's monitor example: sgd with momentum, the norm before clipping and an EMA of
    'was clipped', read back with tree_get / optax.tree.get every step."""
    clip = 1.0
    tx = gx.chain(gx.sgd(0.1, momentum=0.9),
                  gx.snapshot("snap", gx.tree_l2_norm),
                  gx.monitor({"norm": gx.tree_l2_norm,
                              "clipped": gx.measure_with_ema(lambda u: gx.tree_l2_norm(u) > clip, 0.9,
                                                             accumulator_dtype=torch.float64)}),
                  gx.clip_by_global_norm(clip))
    otx = optax.chain(optax.sgd(0.1, momentum=0.9),
                      optax.snapshot("snap", optax.tree.norm),
                      optax.monitor({"norm": optax.tree.norm,
                                     "clipped": optax.measure_with_ema(lambda u: optax.tree.norm(u) > clip, 0.9)}),
                      optax.clip_by_global_norm(clip))
    params = _params()
    state, ostate = tx.init(params), otx.init(_to_jax(params))
    _close([gx.tree_get(state, "snap")], [optax.tree.get(ostate, "snap")])
    oupdate = jax.jit(otx.update)
    for t in range(6):
        grads = gx.tree_scale(0.3 * (t + 1), _params(100 + t))
        u, state = tx.update(grads, state, params)
        ou, ostate = oupdate(_to_jax(grads), ostate, _to_jax(params))
        _close(u, ou)
        for name in ("snap", "norm", "clipped"):
            _close([gx.tree_get(state, name)], [optax.tree.get(ostate, name)])
        params = gx.apply_updates(params, u)
    assert 0.0 < float(gx.tree_get(state, "clipped")) < 1.0  # the flag held on some steps only


def test_measure_with_ema_of_the_updates_is_ema():
    for debias in (True, False):
        _run_both(gx.measure_with_ema(lambda u: u, 0.8, debias=debias),
                  optax.measure_with_ema(lambda u: u, 0.8, debias=debias), steps=4)


def test_monitor_state_keeps_its_structure_and_updates_pass_through():
    tx = gx.monitor({"norm": gx.tree_l2_norm, "avg": gx.measure_with_ema(gx.tree_l2_norm, 0.5)})
    params = _params()
    state = tx.init(params)
    structure = gx.tree_map(lambda x: (x.shape, x.dtype), state)
    grads = _params(1)
    out, state = tx.update(grads, state, params)
    assert all(out[k] is grads[k] for k in grads)
    assert gx.tree_map(lambda x: (x.shape, x.dtype), state) == structure
    torch.testing.assert_close(gx.tree_get(state, "norm"), torch.sqrt(sum((g ** 2).sum() for g in grads.values())))


def test_monitor_refuses_bad_measures():
    with pytest.raises(ValueError, match="measures"):
        gx.monitor({"x": 3})
    with pytest.raises(ValueError, match="measure_name"):
        gx.snapshot(3, gx.tree_l2_norm)
    with pytest.raises(ValueError, match="decay"):
        gx.measure_with_ema(gx.tree_l2_norm, 1.5)


# --- optimistic Adam ------------------------------------------------------------------------------


def test_optimistic_adam_v2_matches_optax():
    _run_both(gx.optimistic_adam_v2(0.05, alpha=0.7, beta=0.4, b1=0.8, b2=0.99),
              optax.optimistic_adam_v2(0.05, alpha=0.7, beta=0.4, b1=0.8, b2=0.99), steps=30)
    _run_both(gx.optimistic_adam_v2(0.05, nesterov=False), optax.optimistic_adam_v2(0.05, nesterov=False), steps=10)


def test_optimistic_adam_matches_optax():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # optax deprecates the first form
        otx = optax.optimistic_adam(0.05, optimism=0.2)
        otx_default = optax.optimistic_adam(0.05)
    # the same rule written with lr as the chain's learning rate: round-off differs
    tol = dict(rtol=1e-10, atol=1e-13)
    for mine, theirs in ((gx.optimistic_adam(0.05, optimism=0.2), otx), (gx.optimistic_adam(0.05), otx_default)):
        params = _params()
        state, ostate = mine.init(params), theirs.init(_to_jax(params))
        oupdate = jax.jit(theirs.update)
        for t in range(30):
            grads = _params(100 + t)
            u, state = mine.update(grads, state, params)
            ou, ostate = oupdate(_to_jax(grads), ostate, _to_jax(params))
            _close(u, ou, **tol)
            params = gx.apply_updates(params, u)
    with pytest.raises(ValueError, match="schedule"):
        gx.optimistic_adam(lambda step: 0.1)


def test_optimistic_adam_under_optimizer_and_state_dict_round_trip():
    problem = MLPProblem(torch.float64)
    tx = lambda: gx.optimistic_adam_v2(0.01, alpha=1.0, beta=0.5)  # noqa: E731
    # a fresh optimizer loaded at step 6 continues bit-identically
    got = assert_resume_bit_exact(lambda leaves: gx.Optimizer(list(leaves.values()), tx()), problem.leaf_params(),
                                  problem.loss, steps=12, split=6)
    assert_same(got, functional_trajectory(problem, tx(), 12))


# --- optax spellings -------------------------------------------------------------------------------


def test_spellings_are_the_same_objects_or_thin_aliases():
    assert gx.clip is gx.clip_value
    assert gx.inject_stateful_hyperparams is gx.inject_hyperparams
    _run_both(gx.clip(0.5), optax.clip(0.5), steps=2)
    _run_both(gx.scale_by_learning_rate(0.1), optax.scale_by_learning_rate(0.1), steps=2)
    _run_both(gx.scale_by_learning_rate(0.1, flip_sign=False), optax.scale_by_learning_rate(0.1, flip_sign=False),
              steps=2)
    schedule = gx.linear_schedule(0.1, 0.01, 4)
    oschedule = optax.linear_schedule(0.1, 0.01, 4)
    f32 = dict(rtol=1e-7, atol=0.0)  # optax evaluates the schedule at an int32 count in float32
    _run_both(gx.scale_by_learning_rate(schedule), optax.scale_by_learning_rate(oschedule), steps=5, tol=f32)
    _run_both(gx.scale_by_learning_rate(schedule, flip_sign=False),
              optax.scale_by_learning_rate(oschedule, flip_sign=False), steps=5, tol=f32)
    # same state as scale_by_lr: the adapter's "lr" key
    assert gx.scale_by_learning_rate(0.1).init(_params()) == gx.scale_by_lr(0.1).init(_params())
    with pytest.raises(ValueError, match="learning_rate"):
        gx.scale_by_learning_rate(-1.0)


def test_multisteps_class_matches_optax():
    ms = gx.MultiSteps(gx.adam(0.1), every_k_schedule=3)
    oms = optax.MultiSteps(optax.adam(0.1), every_k_schedule=3, accumulator_dtype=jnp.float64)
    assert ms.gradient_transformation().update is ms.update
    params = _params()
    state, ostate = ms.init(params), oms.init(_to_jax(params))
    oupdate = jax.jit(oms.update)
    for t in range(7):
        grads = _params(100 + t)
        u, state = ms.update(grads, state, params)
        ou, ostate = oupdate(_to_jax(grads), ostate, _to_jax(params))
        _close(u, ou)
        assert bool(ms.has_updated(state)) == bool(oms.has_updated(ostate))
        params = gx.apply_updates(params, u)


# --- functions: per-example clipping, parameter averaging, scale_gradient ---------------------------


def _per_example(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(5, 4, 3, generator=gen, dtype=torch.float64) * 2,
            torch.randn(5, 7, generator=gen, dtype=torch.float64)]


def test_per_example_global_norm_clip_matches_optax():
    grads = _per_example()
    for c in (0.0, 1.0, 3.0, float("inf")):
        mine, n = gx.per_example_global_norm_clip(grads, c)
        theirs, on = optax.per_example_global_norm_clip(_to_jax(grads), c)
        _close(mine, theirs)
        assert int(n) == int(on) and n.dtype == torch.int32
    # optax's docstring example
    g = [torch.tensor([[0, 0, 0], [0, 3, 4], [4, 0, 3], [3, 4, 0]], dtype=torch.float64)]
    out, n = gx.per_example_global_norm_clip(g, 1.25)
    torch.testing.assert_close(out[0], torch.full((3,), 1.75, dtype=torch.float64))
    assert int(n) == 3
    with pytest.raises(ValueError, match="batch"):
        gx.per_example_global_norm_clip([torch.ones(3, 2), torch.ones(4)], 1.0)


def test_per_example_layer_norm_clip_matches_optax():
    grads = _per_example(1)
    for uniform in (True, False):
        for c in (0.5, 2.0, float("inf")):
            mine, counts = gx.per_example_layer_norm_clip(grads, c, uniform=uniform)
            theirs, ocounts = optax.per_example_layer_norm_clip(_to_jax(grads), c, uniform=uniform)
            _close(mine, theirs)
            assert [int(x) for x in counts] == [int(x) for x in ocounts]


def test_incremental_and_periodic_update_match_optax():
    new, old = _params(1), _params(2)
    _close(gx.incremental_update(new, old, 0.1), optax.incremental_update(_to_jax(new), _to_jax(old), 0.1))
    for step in (0, 3, 5, 10):
        mine = gx.periodic_update(new, old, step, 5)
        assert mine is (new if step % 5 == 0 else old)
        _close(mine, optax.periodic_update(_to_jax(new), _to_jax(old), jnp.asarray(step), 5))


def test_scale_gradient_matches_optax_gradient():
    x = torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64, requires_grad=True)

    def f(v, scale):
        if scale == 0.0:  # detached: the value no longer depends on v
            return (v * 0).sum() + (gx.scale_gradient({"v": v ** 2}, scale)["v"]
                                    * torch.arange(1.0, 4.0, dtype=torch.float64)).sum()
        return (gx.scale_gradient({"v": v ** 2}, scale)["v"] * torch.arange(1.0, 4.0, dtype=torch.float64)).sum()

    def of(v, scale):
        return jnp.sum(optax.scale_gradient({"v": v ** 2}, scale)["v"] * jnp.arange(1.0, 4.0))

    for scale in (0.0, 0.25, 1.0, -3.0):
        value = f(x, scale)
        (grad,) = torch.autograd.grad(value, [x], allow_unused=True, materialize_grads=True)
        ovalue, ograd = jax.value_and_grad(of)(jnp.asarray(x.detach().numpy()), scale)
        _close([value.detach(), grad], [ovalue, ograd])
    # the forward pass is exactly the identity, infinities included
    y = torch.tensor([float("inf"), 1.0], requires_grad=True)
    assert torch.equal(gx.scale_gradient(y, 0.5), y)
    # and torch.func sees the scaled gradient too
    g = torch.func.grad(lambda v: gx.scale_gradient(v, 0.5).sum())(torch.ones(3))
    torch.testing.assert_close(g, torch.full((3,), 0.5))


# --- tree utilities ---------------------------------------------------------------------------------


def test_tree_utilities_match_optax_tree():
    a, b = _params(1), _params(2)
    ja, jb = _to_jax(a), _to_jax(b)
    _close(gx.tree_add(a, b, a), optax.tree.add(ja, jb, ja))
    _close(gx.tree_add_scale(a, 0.3, b), optax.tree.add_scale(ja, 0.3, jb))
    _close(gx.tree_mul(a, b), optax.tree.mul(ja, jb))
    _close(gx.tree_div(a, b), optax.tree.div(ja, jb))
    for fn in ("sum", "max", "min"):
        _close([getattr(gx, f"tree_{fn}")(a)], [getattr(optax.tree, fn)(ja)])
    for ord in (None, 1, 2, float("inf")):
        for squared in (False, True):
            _close([gx.tree_norm(a, ord, squared)], [optax.tree.norm(ja, ord, squared)])
    assert gx.tree_size(a) == optax.tree.size(ja)
    _close(gx.tree_ones_like(a), optax.tree.ones_like(ja))
    _close(gx.tree_full_like(a, 2.5), optax.tree.full_like(ja, 2.5))
    _close(gx.tree_clip(a, -0.5, 0.7), optax.tree.clip(ja, -0.5, 0.7))
    _close(gx.tree_where(False, a, b), optax.tree.where(False, ja, jb))
    assert gx.tree_allclose(a, gx.tree_add_scale(a, 1e-12, b)) and not gx.tree_allclose(a, b)
    _close(gx.tree_update_moment(a, b, 0.9, 2), optax.tree.update_moment(ja, jb, 0.9, 2))
    for order in (1, 2, 3):
        _close(gx.tree_update_moment_per_elem_norm(a, b, 0.9, order),
               optax.tree.update_moment_per_elem_norm(ja, jb, 0.9, order))
    _close(gx.tree_update_infinity_moment(a, b, 0.9, 1e-3), optax.tree.update_infinity_moment(ja, jb, 0.9, 1e-3))
    _close(gx.tree_bias_correction(a, 0.9, torch.tensor(3)), optax.tree.bias_correction(ja, 0.9, 3))
    c = {"z": torch.tensor([1 + 2j, -3j], dtype=torch.complex128)}
    _close(gx.tree_conj(c), optax.tree.conj(_to_jax(c)))
    _close(gx.tree_real(c), optax.tree.real(_to_jax(c)))
    for order in (1, 2, 3):
        _close(gx.tree_update_moment_per_elem_norm(c, gx.tree_real(c), 0.9, order),
               optax.tree.update_moment_per_elem_norm(_to_jax(c), optax.tree.real(_to_jax(c)), 0.9, order))
    _close([gx.tree_norm(c)], [optax.tree.norm(_to_jax(c))])
    assert gx.tree_cast(a, torch.float32)["w"].dtype == torch.float32
    assert gx.tree_cast_like(a, gx.tree_cast(b, torch.float16))["b"].dtype == torch.float16
    assert gx.tree_batch_shape(a, (2,))["w"] == (2, 4, 3)
    r1 = gx.tree_random_like(torch.Generator().manual_seed(0), a)
    r2 = gx.tree_random_like(torch.Generator().manual_seed(0), a)
    assert gx.tree_allclose(r1, r2) and r1["w"].shape == (4, 3)


def test_tree_get_and_set_reach_named_fields_and_dict_keys():
    state = gx.chain(gx.snapshot("norm", gx.tree_l2_norm), gx.scale_by_lr(0.1)).init(_params())
    assert gx.tree_get(state, "norm") is not None
    new = gx.tree_set(state, lr=torch.tensor(0.5, dtype=torch.float64), norm=torch.tensor(2.0))
    assert float(gx.tree_get(new, "lr")) == 0.5 and float(gx.tree_get(new, "norm")) == 2.0
    assert float(gx.tree_get(state, "lr")) == 0.1  # a copy
    with pytest.raises(KeyError, match="nope"):
        gx.tree_set(state, nope=1)
