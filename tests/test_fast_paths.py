"""The adapter's fast paths are invisible except in speed: the fused kernels, the in-place
generic path and the pure functional path give the same numbers and the same state."""

from __future__ import annotations

from typing import NamedTuple

import pytest
import torch

import gradtx as gx
from gradtx._tree import tree_flatten
from gradtx.optim import fused as _fused

STEPS = 12

# chains that take a fused path, by name
FAST = {
    "adam": lambda: gx.adam(1e-2),
    "adamw": lambda: gx.adamw(1e-2, weight_decay=0.05),
    "adamw_chain": lambda: gx.chain(gx.scale_by_adam(b1=0.8, b2=0.99, eps=1e-6), gx.add_decayed_weights(0.05),
                                    gx.scale_by_lr(1e-2)),
    "adam_l2": lambda: gx.chain(gx.add_decayed_weights(0.05), gx.scale_by_adam(), gx.scale_by_lr(1e-2)),
    "mission": lambda: gx.chain(gx.clip_value(0.5), gx.scale_by_adam(), gx.scale_by_lr(1e-2)),
    "clip_adamw": lambda: gx.chain(gx.clip_value(0.5), gx.scale_by_adam(), gx.add_decayed_weights(0.1),
                                   gx.scale_by_lr(1e-2)),
    "sgd": lambda: gx.sgd(0.05),
    "sgd_wd": lambda: gx.sgd(0.05, weight_decay=0.1),
    "sgd_momentum": lambda: gx.sgd(0.05, momentum=0.9, weight_decay=0.01),
    "sgd_nesterov": lambda: gx.sgd(0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
    # a masked decay: the kernel on the decayed parameters, again on the others without
    "adamw_masked": lambda: gx.adamw(1e-2, weight_decay=0.1, mask=lambda p: gx.tree_map(lambda x: x.dim() > 1, p)),
    "adam_l2_masked": lambda: gx.chain(gx.add_decayed_weights(0.05, mask=lambda name, x: x.dim() == 1),
                                       gx.scale_by_adam(), gx.scale_by_lr(1e-2)),
    "sgd_masked": lambda: gx.chain(gx.add_decayed_weights(0.1, mask=lambda p: gx.tree_map(lambda x: x.dim() != 1, p)),
                                   gx.trace(0.9), gx.scale_by_lr(0.05)),
    # an alias nested as a member: recognised by the parts of both chains, in order
    "nested_clip_adam": lambda: gx.chain(gx.clip_value(0.5), gx.adam(1e-2)),
    "nested_clip_adamw": lambda: gx.chain(gx.clip_value(0.5), gx.adamw(1e-2, weight_decay=0.05)),
    "nested_twice": lambda: gx.chain(gx.chain(gx.clip_value(0.5)), gx.chain(gx.adamw(1e-2, weight_decay=0.05))),
    # Adam's kernel into a scratch, then the per-tensor parts ("adam_then")
    "lamb": lambda: gx.lamb(1e-2, weight_decay=0.1),
    "lamb_masked": lambda: gx.lamb(1e-2, weight_decay=0.1, mask=lambda p: gx.tree_map(lambda x: x.dim() > 1, p)),
    "adam_trust_ratio": lambda: gx.chain(gx.scale_by_adam(b1=0.8), gx.scale_by_trust_ratio(min_norm=0.5),
                                         gx.scale_by_lr(1e-2)),
}


def _params(dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    shapes = [(7, 5), (5,), (3, 4, 2), (1,)]
    return [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=dtype)) for s in shapes]


def _grads(step, params):
    gen = torch.Generator().manual_seed(100 + step)
    return [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]


def _run_adapter(make_tx, dtype, fast, steps=STEPS, params=None, opt=None, start=0):
    params = params if params is not None else _params(dtype)
    opt = opt if opt is not None else gx.Optimizer(params, make_tx(), fast=fast)
    for step in range(start, start + steps):
        for p, g in zip(params, _grads(step, params)):
            p.grad = g
        opt.step()
    return params, opt


def _run_pure(make_tx, dtype, steps=STEPS):
    tx = make_tx()
    params = {i: p.detach().clone() for i, p in enumerate(_params(dtype))}
    state = tx.init(params)
    for step in range(steps):
        grads = dict(enumerate(_grads(step, list(params.values()))))
        updates, state = tx.update(grads, state, params)
        params = gx.apply_updates(params, updates)
    return list(params.values()), state


def _tol(dtype):
    return (1e-6, 1e-6) if dtype == torch.float32 else (1e-12, 1e-12)


def _close(actual, expected, dtype):
    rtol, atol = _tol(dtype)
    for a, e in zip(actual, expected):
        scale = max(float(e.detach().abs().max()), 1.0)
        torch.testing.assert_close(a.detach(), e.detach(), rtol=rtol, atol=atol * scale)


def _state_tensors(opt):
    sd = opt._old_state_dict()
    out = []
    for index in sorted(sd["state"]):
        out.extend(sd["state"][index][k] for k in sorted(sd["state"][index]))
    for shared in sd["shared"]:
        out.extend(shared[k] for k in sorted(shared))
    return out


@pytest.mark.parametrize("name", sorted(FAST))
def test_chain_is_recognised(name):
    assert _fused.plan(FAST[name]()) is not None


@pytest.mark.parametrize("tx", [
    gx.adam(1e-3, nesterov=True), gx.adam(1e-3, eps_root=1e-8), gx.adam(lambda c: 1e-3),
    gx.adam(1e-3, mu_dtype=torch.bfloat16),
    gx.chain(gx.scale_by_adam(), gx.scale_by_lr(1e-3), gx.clip_value(1.0)),
    gx.chain(gx.trace(0.9), gx.add_decayed_weights(0.1), gx.scale_by_lr(1e-3)),
    gx.chain(gx.trace(0.0), gx.scale_by_lr(1e-3)),
    gx.named_chain(("adam", gx.scale_by_adam()), ("lr", gx.scale_by_lr(1e-3))),
    gx.scale_by_adam(),
    gx.chain(gx.clip_value(1.0), gx.scale_by_adam(), gx.scale_by_trust_ratio(), gx.scale_by_lr(1e-3)),
    gx.chain(gx.scale_by_adam(), gx.scale_by_trust_ratio(), gx.trace(0.9), gx.scale_by_lr(1e-3)),
    gx.chain(gx.add_decayed_weights(0.1), gx.sgd(1e-3, weight_decay=0.1)),  # two decays
    gx.chain(gx.adam(1e-3), gx.clip_value(1.0)),  # the learning rate is not last
], ids=lambda tx: repr(tx).split("(")[0])
def test_other_chains_are_not(tx):
    assert _fused.plan(tx) is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", sorted(FAST))
def test_fused_generic_and_pure_agree(name, dtype):
    fast_params, fast_opt = _run_adapter(FAST[name], dtype, fast=True)
    slow_params, slow_opt = _run_adapter(FAST[name], dtype, fast=False)
    pure_params, pure_state = _run_pure(FAST[name], dtype)
    _close(fast_params, slow_params, dtype)
    _close(fast_params, pure_params, dtype)
    fast_state, slow_state = _state_tensors(fast_opt), _state_tensors(slow_opt)
    assert [(t.shape, t.dtype) for t in fast_state] == [(t.shape, t.dtype) for t in slow_state]
    _close(fast_state, slow_state, dtype)
    pure_leaves = [t for t in tree_flatten(pure_state)[0] if isinstance(t, torch.Tensor)]
    assert len(pure_leaves) == len(tree_flatten(slow_opt._chain_states[0])[0])


# chains on the generic in-place path (with -lr folded into the parameter update)
GENERIC = {
    "nadam": lambda: gx.adam(1e-2, nesterov=True),
    "adam_eps_root": lambda: gx.adam(1e-2, eps_root=1e-6),
    "rms_clip": lambda: gx.chain(gx.clip_value(0.5), gx.scale_by_rms(0.9), gx.scale_by_lr(1e-2)),
    "ema_sign": lambda: gx.chain(gx.ema(0.9), gx.scale_by_sign(), gx.scale_by_lr(1e-2)),
    "adam_then_clip": lambda: gx.chain(gx.scale_by_adam(), gx.clip_value(0.5), gx.trace(0.5), gx.scale_by_lr(1e-2)),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", sorted(GENERIC))
def test_generic_inplace_and_pure_agree(name, dtype):
    assert _fused.plan(GENERIC[name]()) is None and _fused.lr_tail(GENERIC[name]()) is not None
    fast_params, fast_opt = _run_adapter(GENERIC[name], dtype, fast=True)
    slow_params, slow_opt = _run_adapter(GENERIC[name], dtype, fast=False)
    pure_params, _ = _run_pure(GENERIC[name], dtype)
    _close(fast_params, slow_params, dtype)
    _close(fast_params, pure_params, dtype)
    _close(_state_tensors(fast_opt), _state_tensors(slow_opt), dtype)


@pytest.mark.parametrize("name", ["mission", "adamw", "sgd_nesterov", "rms_clip"])
def test_grads_are_not_changed(name):
    params = _params(torch.float32)
    opt = gx.Optimizer(params, {**FAST, **GENERIC}[name]())
    for step in range(2):
        grads = _grads(step, params)
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
        for p, g in zip(params, grads):
            assert torch.equal(p.grad, g)


@pytest.mark.parametrize("name", ["adamw", "mission", "sgd_nesterov"])
def test_checkpoint_moves_between_fast_and_slow(name):
    dtype = torch.float64
    ref_params, _ = _run_adapter(FAST[name], dtype, fast=True, steps=2 * STEPS)
    for first, second in [(True, False), (False, True)]:
        params, opt = _run_adapter(FAST[name], dtype, fast=first)
        sd = opt.state_dict()
        moved = [torch.nn.Parameter(p.detach().clone()) for p in params]
        opt2 = gx.Optimizer(moved, FAST[name](), fast=second)
        opt2.load_state_dict(sd)
        _run_adapter(FAST[name], dtype, fast=second, params=moved, opt=opt2, start=STEPS)
        _close(moved, ref_params, dtype)


def test_lr_scheduler_and_group_overrides_on_the_fused_path():
    def run(fast):
        params = _params(torch.float64)
        opt = gx.Optimizer([{"params": params[:2], "lr": 0.05, "weight_decay": 0.2}, {"params": params[2:]}],
                           gx.adamw(1e-2, weight_decay=0.01), fast=fast)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
        for step in range(STEPS):
            for p, g in zip(params, _grads(step, params)):
                p.grad = g
            opt.step()
            sched.step()
        return params

    _close(run(True), run(False), torch.float64)


def test_params_without_grad_are_skipped():
    params = _params(torch.float32)
    opt = gx.Optimizer(params, gx.adam(1e-2))
    params[0].grad = torch.ones_like(params[0])
    before = params[1].detach().clone()
    opt.step()
    assert torch.equal(params[1], before)
    assert params[1] not in opt.state and params[0] in opt.state
    # a late parameter joins the fused path with fresh moments and the group's count
    params[1].grad = torch.ones_like(params[1])
    opt.step()
    assert params[1] in opt.state
    assert not torch.equal(params[1], before)


_MOVED_DTYPE = {"adamw": lambda: gx.adamw(1e-2, weight_decay=0.1), "sgd": lambda: gx.sgd(1e-2, momentum=0.9),
                "adagrad": lambda: gx.adagrad(1e-2, initial_accumulator_value=0.0, eps=1e-10, eps_in_sqrt=False),
                "nadam": lambda: gx.nadam(1e-2, momentum_decay=4e-3), "adamax": lambda: gx.adamax(1e-2)}


@pytest.mark.parametrize("name", sorted(_MOVED_DTYPE))
@pytest.mark.parametrize("moved", ["all", "one"])
def test_parameters_moved_to_another_dtype_take_the_generic_path(moved, name):
    """``p.data = p.data.double()`` (what ``model.double()`` does) after the first step puts
    float64 parameters over float32 state: the fused and multi-tensor kernels would stop
    midway ("expected scalar type Double but found Float", with some parameters stepped), so
    those steps take the generic path, with the numbers of ``fast=False``."""
    def run(fast):
        params = _params(torch.float32)
        opt = gx.Optimizer(params, _MOVED_DTYPE[name](), fast=fast)
        for t in range(3):
            gen = torch.Generator().manual_seed(t)
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            if t == 1:
                for p in params if moved == "all" else params[:1]:
                    p.data = p.data.double()
            opt.step()
        return params

    fast, generic = run(True), run(False)
    assert [p.dtype for p in fast] == [p.dtype for p in generic]
    _close(fast, generic, torch.float32)  # the first step ran fused: round-off apart


class _DelayState(NamedTuple):
    last: dict


def _delay():
    # u_t <- g_{t-1}: keeps the update tensors it was given (not copies) in its state, which
    # is legal when it owns them; the adapter must then stop reusing its scratch tensors
    def init(params):
        return _DelayState({k: torch.zeros_like(p) for k, p in params.items()})

    def update(updates, state, params=None, *, inplace=False, **extra):
        return {k: state.last[k] * 1.0 for k in updates}, _DelayState(dict(updates))

    return gx.GradientTransformation(init, update)


def test_chain_that_keeps_its_updates_in_state():
    params = _params(torch.float32)
    start = params[0].detach().clone()
    opt = gx.Optimizer(params, _delay())
    total = torch.zeros_like(start)
    for step in range(4):
        grads = _grads(step, params)
        for p, g in zip(params, grads):
            p.grad = g
        opt.step()
        if step < 3:
            total += grads[0]
    torch.testing.assert_close(params[0].detach(), start + total)


def test_fast_must_be_bool():
    with pytest.raises(ValueError, match="fast"):
        gx.Optimizer(_params(torch.float32), gx.adam(1e-3), fast="yes")


# chain(clip_by_global_norm(c), rest): the norm over every group, then each group's fused kernel
# dividing the gradients it reads by n / c (fused.GlobalClipPlan)
GLOBAL_CLIP = {
    "adamw": lambda: gx.chain(gx.clip_by_global_norm(1.0), gx.adamw(1e-2, weight_decay=0.1)),
    "parts": lambda: gx.chain(gx.clip_by_global_norm(0.5), gx.scale_by_adam(b1=0.8), gx.add_decayed_weights(0.1),
                              gx.scale_by_lr(1e-2)),
    "sgd_momentum": lambda: gx.chain(gx.clip_by_global_norm(1.0), gx.sgd(1e-2, momentum=0.9)),
    "lamb": lambda: gx.chain(gx.clip_by_global_norm(1.0), gx.lamb(1e-2, weight_decay=0.1)),
    "adamw_masked": lambda: gx.chain(gx.clip_by_global_norm(1.0), FAST["adamw_masked"]()),
}


def _two_group_run(make_tx, dtype, fast):
    """Two param groups (another lr and weight decay in the second), a parameter without a
    gradient, gradients that clip on odd steps only; returns params, grads seen and the
    optimizer."""
    params = _params(dtype)
    groups = [{"params": params[:2]}, {"params": params[2:], "lr": 3e-2, "weight_decay": 0.0}]
    opt = gx.Optimizer(groups, make_tx(), fast=fast)
    for step in range(STEPS):
        for i, (p, g) in enumerate(zip(params, _grads(step, params))):
            p.grad = None if (i == 3 and step < 4) else g * (5.0 if step % 2 else 0.05)
        kept = [None if p.grad is None else p.grad.clone() for p in params]
        opt.step()
        for p, g in zip(params, kept):  # .grad is the gradient after the step, never the clipped one
            assert (p.grad is None and g is None) or torch.equal(p.grad, g)
    return params, opt


@pytest.mark.parametrize("name", sorted(GLOBAL_CLIP))
def test_global_clip_chains_are_recognised(name):
    assert _fused.global_clip_plan(GLOBAL_CLIP[name]()) is not None


@pytest.mark.parametrize("tx", [
    gx.chain(gx.clip_by_global_norm(1.0), gx.adam(1e-3, nesterov=True)),
    gx.chain(gx.clip_by_global_norm(1.0), gx.clip_value(0.5), gx.adam(1e-3)),
    gx.chain(gx.adamw(1e-3), gx.clip_by_global_norm(1.0)),
    gx.chain(gx.clip_by_global_norm(1.0), gx.scale_by_adam()),
], ids=["nesterov", "then_value_clip", "clip_last", "no_lr"])
def test_other_global_clip_chains_are_not(tx):
    assert _fused.global_clip_plan(tx) is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", sorted(GLOBAL_CLIP))
def test_global_clip_fused_and_generic_agree(name, dtype, monkeypatch):
    calls = []
    for kernel in ("_fused_adam_", "_fused_adamw_", "_fused_sgd_"):
        real = getattr(torch, kernel)
        monkeypatch.setattr(torch, kernel,
                            lambda *a, real=real, **k: calls.append(k.get("grad_scale")) or real(*a, **k))
    fast_params, fast_opt = _two_group_run(GLOBAL_CLIP[name], dtype, fast=True)
    fused_calls = list(calls)
    slow_params, slow_opt = _two_group_run(GLOBAL_CLIP[name], dtype, fast=False)
    assert len(calls) == len(fused_calls)  # fast=False: no kernel
    _close(fast_params, slow_params, dtype)
    _close(_state_tensors(fast_opt), _state_tensors(slow_opt), dtype)
    if dtype == torch.float32:  # the kernels' scale is float32: float64 takes the generic path
        assert fused_calls and any(s is not None for s in fused_calls) and any(s is None for s in fused_calls)
    else:
        assert not fused_calls


def test_global_clip_reads_each_groups_settings_of_every_part(monkeypatch):
    """A group's setting may rebuild a part other than the one after the clip (the momentum of
    ``trace`` behind ``add_decayed_weights``): that group's kernel takes its own momentum,
    not the plan of another group whose first part after the clip is the same object."""
    momenta = []
    real = torch._fused_sgd_
    monkeypatch.setattr(torch, "_fused_sgd_", lambda *a, **k: momenta.append(k["momentum"]) or real(*a, **k))

    def make_tx():
        return gx.chain(gx.clip_by_global_norm(1.0), gx.add_decayed_weights(0.01), gx.trace(0.9),
                        gx.scale_by_lr(1e-2))

    def run(fast):
        params = _params(torch.float32)
        opt = gx.Optimizer([{"params": params[:2]}, {"params": params[2:], "decay": 0.2}], make_tx(), fast=fast)
        for step in range(STEPS):
            for p, g in zip(params, _grads(step, params)):
                p.grad = g * 5.0
            opt.step()
        return params

    fast = run(True)
    assert sorted(set(momenta)) == [0.2, 0.9]
    _close(fast, run(False), torch.float32)


@pytest.mark.parametrize("name", ["adamw", "sgd", "adagrad"])
def test_a_group_moved_to_another_dtype_takes_the_generic_path(name):
    """Two groups of one plan: the first float32 throughout, the second stepped in float64 then
    moved to float32 (``p.data = p.data.float()``), its state left in float64. Its counts of
    parameters by dtype are then the first group's, which the plan found matching its state:
    that must not vouch for the second group's state (the kernel stopped midway, after the
    count had moved on)."""
    def run(fast):
        first, second = _params(torch.float32), _params(torch.float64, seed=1)
        opt = gx.Optimizer([{"params": first}, {"params": second}], _MOVED_DTYPE[name](), fast=fast)
        for t in range(4):
            if t == 2:
                for p in second:
                    p.data = p.data.float()
            for p, g in zip(first + second, _grads(t, first) + _grads(t, second)):
                p.grad = g
            opt.step()
        return first + second

    fast, generic = run(True), run(False)
    assert [p.dtype for p in fast] == [p.dtype for p in generic] == [torch.float32] * 8
    _close(fast, generic, torch.float32)


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "generic"])
def test_global_clip_with_a_group_without_gradients(fast):
    """A chain over every group (clip_by_global_norm) and a step where a whole group got no
    gradient: that group's state is left as it is (it raised KeyError: selecting the stepped
    parameters looked for them in every group's state). Against torch: clip_grad_norm_ over
    the parameters that have gradients, then AdamW, whose skipped parameters keep their step."""
    def make_tx():
        return gx.chain(gx.clip_by_global_norm(1.0), gx.adamw(1e-2, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.1))

    params, reference = _params(torch.float32), _params(torch.float32)
    opt = gx.Optimizer([{"params": params[:2]}, {"params": params[2:], "lr": 3e-2}], make_tx(), fast=fast)
    torch_opt = torch.optim.AdamW([{"params": reference[:2]}, {"params": reference[2:], "lr": 3e-2}], lr=1e-2,
                                  weight_decay=0.1, foreach=False)
    skipped = {1: {2, 3}, 2: {2, 3}, 4: {0, 1}}  # steps where one group has no gradient
    for step in range(6):
        for ps in (params, reference):
            for i, (p, g) in enumerate(zip(ps, _grads(step, ps))):
                p.grad = None if i in skipped.get(step, ()) else g * 3.0
        opt.step()
        torch.nn.utils.clip_grad_norm_(reference, 1.0)
        torch_opt.step()
    _close(params, reference, torch.float32)


@pytest.mark.parametrize("name", ["adamw", "sgd", "adagrad"])
def test_parameters_trading_dtypes_take_the_generic_path(name):
    """In a group of float32 and float64 parameters, one of each moved to the other's dtype
    after a step: the counts of parameters by dtype are unchanged, yet two states no longer
    have their parameter's dtype."""
    def run(fast):
        params = _params(torch.float32)
        for p in params[1::2]:
            p.data = p.data.double()
        opt = gx.Optimizer(params, _MOVED_DTYPE[name](), fast=fast)
        for t in range(4):
            if t == 2:
                params[1].data, params[2].data = params[1].data.float(), params[2].data.double()
            for p, g in zip(params, _grads(t, params)):
                p.grad = g
            opt.step()
        return params

    fast, generic = run(True), run(False)
    assert [p.dtype for p in fast] == [p.dtype for p in generic] == [torch.float32] * 2 + [torch.float64] * 2
    _close(fast, generic, torch.float32)


def test_global_clip_keeps_few_plans_while_a_scheduler_cycles_a_setting():
    """OneCycleLR cycles the betas: a chain per value, each looked up once. The plans of the
    chains no longer stepped are let go (one was kept per value: 300 after 300 steps)."""
    params = _params(torch.float32)
    opt = gx.Optimizer(params, GLOBAL_CLIP["adamw"]())
    scheduler = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=300)
    for step in range(300):
        for p, g in zip(params, _grads(step, params)):
            p.grad = g
        opt.step()
        scheduler.step()
    assert len(opt._clip_plan._plans) <= 64


@pytest.mark.parametrize("dtypes", [[torch.float32] * 3, [torch.float64, torch.float32, torch.float64]])
def test_grouping_by_device_and_dtype_matches_torchs(dtypes):
    """The one-dtype shortcut and the mixed case give the indices torch's own grouping gives."""
    from torch.utils._foreach_utils import _group_tensors_by_device_and_dtype

    ps = [torch.zeros(2, dtype=d) for d in dtypes]
    expected = {key: list(idx) for key, (_, idx) in _group_tensors_by_device_and_dtype([ps], with_indices=True).items()}
    assert {key: list(idx) for key, idx in _fused._group_by_device_and_dtype(ps).items()} == expected


_KERNELS = ("_fused_adam_", "_fused_adamw_", "_fused_sgd_", "_foreach_lerp_")


@pytest.mark.parametrize("name", ["adam", "adamw", "mission", "sgd_momentum", "lamb", "sgd_dampened", "nadam",
                                  "radam", "adamax", "asgd"])
def test_a_kernel_that_refuses_its_arguments_leaves_the_step_undone(name, monkeypatch):
    """A fused or multi-tensor kernel that raises (before writing, as on bad arguments) leaves
    the parameters and every state tensor, the counts among them, as they were: the next
    steps are those of an optimizer that never saw the failed one."""
    make = {**FAST, "sgd_dampened": lambda: gx.sgd(0.05, momentum=0.9, dampening=0.1),
            "nadam": lambda: gx.nadam(1e-2, momentum_decay=4e-3), "radam": lambda: gx.radam(1e-2),
            "adamax": lambda: gx.adamax(1e-2), "asgd": lambda: gx.asgd(1e-2)}[name]
    params, opt = _run_adapter(make, torch.float32, fast=True, steps=2)
    assert opt._variant(opt._setting_values(opt.param_groups[0]), "").plan is not None  # the fast path runs
    before = [t.clone() for t in [*params, *_state_tensors(opt)]]

    def refuse(*args, **kwargs):
        raise RuntimeError("refused")

    with monkeypatch.context() as patch:
        for kernel in _KERNELS:
            patch.setattr(torch, kernel, refuse)
        with pytest.raises(RuntimeError, match="refused"):
            opt.step()
    for a, b in zip([*params, *_state_tensors(opt)], before, strict=True):
        assert torch.equal(a, b)
    _run_adapter(make, torch.float32, fast=True, steps=3, params=params, opt=opt, start=2)
    expected, _ = _run_adapter(make, torch.float32, fast=True, steps=5)
    for a, e in zip(params, expected):
        assert torch.equal(a, e)


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("change", ["del", "new_list"])
def test_group_shortened_after_a_step_with_a_parameter_unreached(change, fast):
    """A group whose last step left a parameter without a gradient, then shortened (its last
    parameter deleted in place, or the list replaced by a shorter one) with every parameter
    now stepped, steps its parameters as torch.optim.SGD does (last step's keys, reused when
    they were as many as the parameters, named the deleted parameter and not the unreached
    one: each step's gradient went to the wrong tensor, or the new list raised IndexError)."""
    params = [torch.nn.Parameter(p.double()) for p in _params(torch.float32)[:3]]
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt = gx.Optimizer(params, gx.sgd(0.1, momentum=0.9), fast=fast)
    ref = torch.optim.SGD(twins, lr=0.1, momentum=0.9)
    for step in range(5):
        if step == 2:
            for o in (opt, ref):
                if change == "del":
                    del o.param_groups[0]["params"][2]
                else:
                    o.param_groups[0]["params"] = o.param_groups[0]["params"][:2]
        for o in (opt, ref):
            for k, (p, g) in enumerate(zip(o.param_groups[0]["params"], _grads(step, params))):
                p.grad = None if step < 2 and k == 1 else g.to(p.dtype)
            o.step()
    for p, q in zip(params, twins):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)
