"""Wrappers against closed forms or independent references: inject_hyperparams (the plain
transform), multi_steps (the inner transform on the mean gradient; torch.optim with
accumulated .grad), apply_every, apply_if_finite, conditionally_transform, lookahead (the
paper's two-loop rule), flatten."""

from __future__ import annotations

import functools

import pytest
import torch

import gradtx as gx


def _params():
    gen = torch.Generator().manual_seed(0)
    return {"w": torch.randn(4, 3, generator=gen, dtype=torch.float64),
            "b": torch.randn(3, generator=gen, dtype=torch.float64)}


def _grads(params, step):
    gen = torch.Generator().manual_seed(100 + step)
    return {k: torch.randn(v.shape, generator=gen, dtype=v.dtype) + 0.5 * v for k, v in params.items()}


def _close(a, b, rtol=1e-13, atol=1e-15):
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=rtol, atol=atol, msg=k)


def _zero(tree):
    return all(torch.count_nonzero(x) == 0 for x in gx.tree_leaves(tree))


# --- inject_hyperparams ------------------------------------------------------------------------


def test_inject_hyperparams_same_numbers_as_plain():
    params = _params()
    plain, injected = gx.adam(0.05, b1=0.8, eps=1e-6), gx.inject_hyperparams(gx.adam)(0.05, b1=0.8, eps=1e-6)
    s1, s2 = plain.init(params), injected.init(params)
    assert list(s2.hyperparams.keys()) == ["lr", "b1", "b2", "eps", "eps_root"]
    assert all(v.dtype == torch.float64 and v.dim() == 0 for v in s2.hyperparams.values())
    assert float(s2.hyperparams["b1"]) == 0.8 and float(s2.hyperparams.lr) == 0.05
    p1 = p2 = params
    for step in range(6):
        u1, s1 = plain.update(_grads(p1, step), s1, p1)
        u2, s2 = injected.update(_grads(p2, step), s2, p2)
        _close(u2, u1, rtol=0, atol=0)
        p1, p2 = gx.apply_updates(p1, u1), gx.apply_updates(p2, u2)
    assert int(s2.count) == 6


def test_inject_hyperparams_set_between_steps():
    """Changing lr in the state between steps: adam's direction times the new -lr."""
    params = _params()
    tx = gx.inject_hyperparams(gx.adam)(lr=0.1)
    unit = gx.scale_by_adam()
    state, unit_state = tx.init(params), unit.init(params)
    lrs = [0.1, 0.1, 0.1, 0.01, 0.01, 0.5]
    p = params
    for step, lr in enumerate(lrs):
        state.hyperparams["lr"].fill_(lr)
        g = _grads(p, step)
        u, state = tx.update(g, state, p)
        direction, unit_state = unit.update(g, unit_state, p)
        _close(u, {k: -lr * d for k, d in direction.items()})
        p = gx.apply_updates(p, u)
    # functional form: a new hyperparams tuple
    state = state._replace(hyperparams=state.hyperparams._replace(lr=torch.tensor(0.0, dtype=torch.float64)))
    u, _ = tx.update(_grads(p, 9), state, p)
    assert _zero(u)
    with pytest.raises(TypeError, match="fill_"):
        state.hyperparams["lr"] = 0.1


def test_inject_hyperparams_schedule_evaluated_per_step():
    params = _params()
    sched = gx.linear_schedule(0.1, 0.0, 5)
    tx = gx.inject_hyperparams(gx.adam)(lr=sched)
    unit = gx.scale_by_adam()
    state, unit_state = tx.init(params), unit.init(params)
    for step in range(7):
        g = _grads(params, step)
        u, state = tx.update(g, state, params)
        direction, unit_state = unit.update(g, unit_state, params)
        lr_t = 0.1 * (1 - min(step, 5) / 5)
        assert float(state.hyperparams["lr"]) == pytest.approx(lr_t, abs=1e-15)
        _close(u, {k: -lr_t * d for k, d in direction.items()})


def test_inject_hyperparams_static_args_and_errors():
    tx = gx.inject_hyperparams(gx.sgd, static_args="momentum")(0.1, momentum=0.9, nesterov=True)
    state = tx.init(_params())
    assert set(state.hyperparams.keys()) == {"lr", "weight_decay"}
    tx = gx.inject_hyperparams(gx.add_decayed_weights, hyperparam_dtype=torch.float32)(0.1)
    assert tx.init(_params()).hyperparams["weight_decay"].dtype == torch.float32
    with pytest.raises(ValueError, match="static_args"):
        gx.inject_hyperparams(gx.sgd, static_args=["not_an_argument"])
    with pytest.raises(ValueError, match="inner_factory"):
        gx.inject_hyperparams(gx.adam(0.1))
    with pytest.raises(ValueError, match="lr"):
        gx.inject_hyperparams(gx.adam)(lr=-1.0)


def test_inject_hyperparams_driven_by_a_torch_lr_scheduler():
    """Under gx.Optimizer the injected lr is in param_groups, so StepLR drives it as torch.optim.Adam's."""
    def model():
        torch.manual_seed(0)
        return torch.nn.Linear(4, 2).double()

    def train(m, opt):
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.3)
        gen = torch.Generator().manual_seed(1)
        for _ in range(20):
            x = torch.randn(8, 4, generator=gen, dtype=torch.float64)
            opt.zero_grad()
            (m(x) ** 2).mean().backward()
            opt.step()
            sched.step()

    ours, ref = model(), model()
    opt = gx.Optimizer(ours.parameters(), gx.inject_hyperparams(gx.adam)(lr=0.05))
    assert opt.param_groups[0]["lr"] == 0.05
    train(ours, opt)
    train(ref, torch.optim.Adam(ref.parameters(), lr=0.05))
    for p, q in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


# --- multi_steps --------------------------------------------------------------------------------


def test_multi_steps_is_inner_on_mean_gradient():
    params = _params()
    k = 3
    tx = gx.multi_steps(gx.adam(0.1), every_k_schedule=k)
    inner = gx.adam(0.1)
    state, inner_state = tx.init(params), inner.init(params)
    p = params
    for big in range(3):
        grads = [_grads(p, 10 * big + i) for i in range(k)]
        for i, g in enumerate(grads):
            u, state = tx.update(g, state, p)
            if i < k - 1:
                assert _zero(u), f"mini-step {i} of {k} is not zero"
                assert int(state.mini_step) == i + 1 and int(state.gradient_step) == big
        mean = {key: sum(g[key] for g in grads) / k for key in p}
        want, inner_state = inner.update(mean, inner_state, p)
        _close(u, want, rtol=1e-12, atol=1e-14)
        assert int(state.mini_step) == 0 and int(state.gradient_step) == big + 1
        assert _zero(state.acc_grads)
        p = gx.apply_updates(p, u)


def test_multi_steps_sum_and_varying_k():
    params = _params()
    tx = gx.multi_steps(gx.sgd(1.0), lambda step: 2 if int(step) < 1 else 3, use_grad_mean=False)
    state = tx.init(params)
    grads = [_grads(params, i) for i in range(5)]
    outs = []
    for g in grads:
        u, state = tx.update(g, state, params)
        outs.append(u)
    assert _zero(outs[0]) and _zero(outs[2]) and _zero(outs[3])
    _close(outs[1], {key: -(grads[0][key] + grads[1][key]) for key in params})
    _close(outs[4], {key: -(grads[2][key] + grads[3][key] + grads[4][key]) for key in params})


def test_multi_steps_skips_non_finite_and_large_mini_steps():
    params = _params()
    tx = gx.multi_steps(gx.sgd(1.0), 2, should_skip_update_fn=gx.skip_not_finite)
    state = tx.init(params)
    g0, g1, g2 = (_grads(params, i) for i in range(3))
    bad = {**g1, "w": g1["w"].clone().fill_(float("nan"))}
    u, state = tx.update(g0, state, params)
    u, state = tx.update(bad, state, params)
    assert _zero(u) and int(state.mini_step) == 1 and bool(state.skip_state["should_skip"])
    assert int(state.skip_state["num_not_finite"]) == 12
    u, state = tx.update(g2, state, params)
    _close(u, {key: -(g0[key] + g2[key]) / 2 for key in params})

    big = {key: 1e3 * v for key, v in g1.items()}
    tx = gx.multi_steps(gx.sgd(1.0), 2, should_skip_update_fn=functools.partial(gx.skip_large_updates,
                                                                                max_squared_norm=1e4))
    state = tx.init(params)
    for g in (g0, big, g2):
        u, state = tx.update(g, state, params)
    _close(u, {key: -(g0[key] + g2[key]) / 2 for key in params})


def test_multi_steps_through_the_adapter_matches_torch_accumulation():
    """k backward passes accumulate .grad in torch; Adam steps on their mean."""
    k = 4

    def model():
        torch.manual_seed(3)
        return torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 1)).double()

    gen = torch.Generator().manual_seed(5)
    batches = [torch.randn(8, 4, generator=gen, dtype=torch.float64) for _ in range(4 * k)]
    ours, ref = model(), model()
    opt = gx.Optimizer(ours.parameters(), gx.multi_steps(gx.adam(0.05), k))
    ref_opt = torch.optim.Adam(ref.parameters(), lr=0.05)
    for i, x in enumerate(batches):
        opt.zero_grad()
        (ours(x) ** 2).mean().backward()
        opt.step()
        (ref(x) ** 2).mean().div(k).backward()
        if i % k == k - 1:
            ref_opt.step()
            ref_opt.zero_grad()
        for p, q in zip(ours.parameters(), ref.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


def test_multi_steps_bad_arguments():
    for bad in (0, 1.5, True, "2"):
        with pytest.raises(ValueError, match="every_k_schedule"):
            gx.multi_steps(gx.adam(0.1), bad)
    with pytest.raises(ValueError, match="every_k_schedule"):  # the schedule is called at step 0 when built
        gx.multi_steps(gx.adam(0.1), lambda step: 0)
    tx = gx.multi_steps(gx.adam(0.1), lambda step: 1 if int(step) == 0 else 0)
    state = tx.init(_params())
    _, state = tx.update(_grads(_params(), 0), state, _params())
    with pytest.raises(ValueError, match="every_k_schedule"):
        tx.update(_grads(_params(), 1), state, _params())


# --- apply_every, apply_if_finite, conditionally_transform -----------------------------------------


def test_apply_every_emits_the_sum_every_k():
    params = _params()
    tx = gx.apply_every(3)
    state = tx.init(params)
    grads = [_grads(params, i) for i in range(7)]
    for i, g in enumerate(grads):
        u, state = tx.update(g, state, params)
        if i % 3 == 2:
            _close(u, {key: sum(grads[j][key] for j in range(i - 2, i + 1)) for key in params})
        else:
            assert _zero(u)
        assert int(state.count) == (i + 1) % 3
    with pytest.raises(ValueError, match="k"):
        gx.apply_every(0)


def test_apply_if_finite():
    params = _params()
    tx = gx.apply_if_finite(gx.adam(0.1), max_consecutive_errors=2)
    ref = gx.adam(0.1)
    state, ref_state = tx.init(params), ref.init(params)
    nan = {key: torch.full_like(v, float("nan")) for key, v in params.items()}
    finite_steps = 0
    for step, bad in enumerate([False, True, True, False, True]):
        g = nan if bad else _grads(params, step)
        u, state = tx.update(g, state, params)
        if bad:
            assert _zero(u)
        else:
            want, ref_state = ref.update(g, ref_state, params)
            _close(u, want, rtol=0, atol=0)
            finite_steps += 1
        assert bool(state.last_finite) == (not bad)
    assert int(state.total_notfinite) == 3 and int(state.notfinite_count) == 1
    # three non-finite steps in a row exceed max_consecutive_errors=2: the inner runs anyway
    for _ in range(2):
        u, state = tx.update(nan, state, params)
    assert int(state.notfinite_count) == 3 and torch.isnan(u["w"]).all()
    with pytest.raises(ValueError, match="max_consecutive_errors"):
        gx.apply_if_finite(gx.adam(0.1), -1)


def test_conditionally_transform_runs_inner_only_when_asked():
    params = _params()
    tx = gx.conditionally_transform(gx.adam(0.1), lambda step: step % 2 == 0)
    ref = gx.adam(0.1)
    state, ref_state = tx.init(params), ref.init(params)
    for step in range(6):
        g = _grads(params, step)
        u, state = tx.update(g, state, params)
        if step % 2 == 0:
            want, ref_state = ref.update(g, ref_state, params)
        else:
            want = g
        _close(u, want, rtol=0, atol=0)
    assert int(state.step) == 6
    seen = []
    tx = gx.conditionally_transform(gx.scale(2.0), lambda step, value: seen.append(float(value)) or True,
                                    forward_extra_args=True)
    tx.update(_grads(params, 0), tx.init(params), params, value=torch.tensor(3.0))
    assert seen == [3.0]
    with pytest.raises(ValueError, match="should_transform_fn"):
        gx.conditionally_transform(gx.adam(0.1), True)


# --- lookahead -------------------------------------------------------------------------------------


@pytest.mark.parametrize("reset_state", [False, True])
def test_lookahead_follows_the_papers_rule(reset_state):
    """Zhang et al. 2019, Algorithm 1: k fast steps of the inner optimizer from the slow
    weights, then slow <- slow + alpha (fast - slow) and fast <- slow."""
    params = _params()
    k, alpha = 3, 0.4
    tx = gx.lookahead(gx.sgd(0.1, momentum=0.9), sync_period=k, slow_step_size=alpha, reset_state=reset_state)
    state = tx.init(params)
    fast_opt = gx.sgd(0.1, momentum=0.9)
    fast_state = fast_opt.init(params)
    fast, slow, p = dict(params), dict(params), params
    for step in range(10):
        g = _grads(p, step)
        # reference, two loops unrolled
        u, fast_state = fast_opt.update(g, fast_state, fast)
        fast = {key: fast[key] + u[key] for key in fast}
        if step % k == k - 1:
            slow = {key: slow[key] + alpha * (fast[key] - slow[key]) for key in slow}
            fast = dict(slow)
            if reset_state:
                fast_state = fast_opt.init(fast)
        # lookahead as a transform
        out, state = tx.update(g, state, p)
        p = gx.apply_updates(p, out)
        _close(p, fast, rtol=1e-12, atol=1e-14)
        _close(gx.tree_get(state, "slow"), slow, rtol=1e-12, atol=1e-14)
    for argument, bad in (("sync_period", dict(sync_period=0, slow_step_size=0.5)),
                          ("slow_step_size", dict(sync_period=2, slow_step_size=1.5))):
        with pytest.raises(ValueError, match=argument):
            gx.lookahead(gx.sgd(0.1), **bad)
    with pytest.raises(ValueError, match="params"):
        tx.update(_grads(params, 0), tx.init(params))


# --- flatten -------------------------------------------------------------------------------------


def test_flatten_runs_inner_on_one_vector():
    params = _params()
    tx, ref = gx.flatten(gx.adam(0.1)), gx.adam(0.1)
    state, ref_state = tx.init(params), ref.init(params)
    assert [tuple(x.shape) for x in gx.tree_get_all(state, "mu")] == [(15,)]
    for step in range(4):
        g = _grads(params, step)
        u, state = tx.update(g, state, params)
        want, ref_state = ref.update(g, ref_state, params)
        _close(u, want, rtol=0, atol=0)
    # a transform that sees the whole vector: normalising it, not each leaf
    g = _grads(params, 0)
    u, _ = gx.flatten(gx.stateless(lambda v, p: v / v.norm())).update(g, gx.EmptyState(), params)
    norm = torch.sqrt(sum((x**2).sum() for x in g.values()))
    _close(u, {key: v / norm for key, v in g.items()})


def test_repr_of_wrappers():
    text = repr(gx.multi_steps(gx.adam(1e-3), every_k_schedule=4))
    assert text.startswith("multi_steps(opt=adam(lr=0.001) = chain(") and text.endswith("every_k_schedule=4)")
    assert repr(gx.inject_hyperparams(gx.adam)(lr=1e-3, b1=0.8)) == "inject_hyperparams(adam)(lr=0.001, b1=0.8)"
    assert "slow_step_size=0.5" in repr(gx.lookahead(gx.sgd(0.1), sync_period=5, slow_step_size=0.5))


@pytest.mark.parametrize("build", [lambda: gx.inject_hyperparams(gx.adam)(lr=0.05, b1=0.8),
                                   lambda: gx.multi_steps(gx.adam(0.05), 3),
                                   lambda: gx.lookahead(gx.adam(0.05), sync_period=4, slow_step_size=0.5)],
                         ids=["inject_hyperparams", "multi_steps", "lookahead"])
def test_checkpoint_resume_through_the_adapter(build, tmp_path):
    """A wrapper's state_dict round-trips with weights_only=True and resumes bit for bit."""
    gen = torch.Generator().manual_seed(2)
    batches = [torch.randn(8, 4, generator=gen, dtype=torch.float64) for _ in range(10)]

    def model():
        torch.manual_seed(4)
        return torch.nn.Linear(4, 2).double()

    def train(m, opt, xs):
        for x in xs:
            opt.zero_grad()
            (m(x) ** 2).mean().backward()
            opt.step()

    straight = model()
    train(straight, gx.Optimizer(straight.parameters(), build()), batches)
    first = model()
    opt = gx.Optimizer(first.parameters(), build())
    train(first, opt, batches[:5])
    torch.save({"model": first.state_dict(), "opt": opt.state_dict()}, tmp_path / "ckpt.pt")
    saved = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    resumed = torch.nn.Linear(4, 2).double()
    resumed.load_state_dict(saved["model"])
    opt = gx.Optimizer(resumed.parameters(), build())
    opt.load_state_dict(saved["opt"])
    train(resumed, opt, batches[5:])
    for p, q in zip(resumed.parameters(), straight.parameters()):
        assert torch.equal(p, q)
