"""The adapter's multi-tensor plans (gradtx.optim.multi_tensor) for torch.optim's other
algorithms: recognised chains give the generic path's numbers (f32 1e-6, f64 1e-12 relative
to the largest entry), torch.optim's where the chain is torch's form, leave ``.grad`` alone,
and hand their state to the generic path and back."""

from __future__ import annotations

import io

import pytest
import torch

import gradtx as gx
from gradtx.optim import fused as _fused
from gradtx.optim import multi_tensor
from gradtx.optim.multi_tensor import MultiTensorPlan

STEPS = 20  # RAdam rectifies from step 6 on
O = torch.optim  # noqa: E741 - short for the table below

# name -> (gradtx chain, torch.optim optimizer with the same numbers or None)
PLANS = {
    "adagrad_torch": (lambda: gx.adagrad(1e-2, initial_accumulator_value=0.0, eps=1e-10, eps_in_sqrt=False),
                      lambda ps: O.Adagrad(ps, lr=1e-2)),
    "adagrad_torch_wd": (lambda: gx.adagrad(1e-2, 0.1, 1e-10, eps_in_sqrt=False, weight_decay=0.1),
                         lambda ps: O.Adagrad(ps, lr=1e-2, weight_decay=0.1, initial_accumulator_value=0.1)),
    "adagrad": (lambda: gx.adagrad(1e-2), None),
    "rmsprop_torch": (lambda: gx.rmsprop(1e-2, decay=0.99, eps_in_sqrt=False), lambda ps: O.RMSprop(ps, lr=1e-2)),
    "rmsprop": (lambda: gx.rmsprop(1e-2), None),
    "adamax": (lambda: gx.adamax(1e-2), lambda ps: O.Adamax(ps, lr=1e-2)),
    "nadam_torch": (lambda: gx.nadam(1e-2, momentum_decay=4e-3), lambda ps: O.NAdam(ps, lr=1e-2)),
    "radam_torch": (lambda: gx.radam(1e-2, eps_before_debias=True), lambda ps: O.RAdam(ps, lr=1e-2)),
    "radam": (lambda: gx.radam(1e-2), None),
    "adadelta": (lambda: gx.adadelta(0.5), lambda ps: O.Adadelta(ps, lr=0.5)),
    "asgd": (lambda: gx.asgd(1e-2), lambda ps: O.ASGD(ps, lr=1e-2)),
    "asgd_averaging": (lambda: gx.asgd(1e-2, lambd=1e-2, t0=5), lambda ps: O.ASGD(ps, lr=1e-2, lambd=1e-2, t0=5)),
    "rprop": (lambda: gx.rprop(1e-2), lambda ps: O.Rprop(ps, lr=1e-2)),
    # bounds reached within the steps: the clamps on both sides
    "rprop_bounded": (lambda: gx.rprop(1e-2, eta_minus=0.3, eta_plus=1.5, min_step_size=2e-3, max_step_size=3e-2),
                      lambda ps: O.Rprop(ps, lr=1e-2, etas=(0.3, 1.5), step_sizes=(2e-3, 3e-2))),
    # an alias nested in a chain: recognised by the parts of both, its state read through the nesting
    "nadam_nested_torch": (lambda: gx.chain(gx.chain(gx.nadam(1e-2, momentum_decay=4e-3))),
                           lambda ps: O.NAdam(ps, lr=1e-2)),
}

SHAPES = [(7, 5), (5,), (3, 4, 2), (1,)]


def _params(dtype):
    gen = torch.Generator().manual_seed(0)
    return [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=dtype)) for s in SHAPES]


def _grads(step, dtype):
    gen = torch.Generator().manual_seed(100 + step)
    return [torch.randn(s, generator=gen, dtype=dtype) for s in SHAPES]


def _steps(opt, params, dtype, start, stop):
    for step in range(start, stop):
        grads = _grads(step, dtype)
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
        for p, g in zip(params, grads):
            assert torch.equal(p.grad, g)  # the plans read the gradients, never write them


def _close(actual, expected, dtype):
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    for a, e in zip(actual, expected):
        scale = max(float(e.detach().abs().max()), 1.0)
        torch.testing.assert_close(a.detach(), e.detach(), rtol=tol, atol=tol * scale)


def _state(opt):
    sd = opt.state_dict()
    return [sd["state"][i][k] for i in sorted(sd["state"]) for k in sorted(sd["state"][i])]


@pytest.mark.parametrize("name", sorted(PLANS))
def test_recognised(name):
    assert isinstance(_fused.plan(PLANS[name][0]()), MultiTensorPlan)


@pytest.mark.parametrize("tx", [
    gx.rmsprop(1e-2, momentum=0.9), gx.rmsprop(1e-2, bias_correction=True), gx.rmsprop(1e-2, centered=True),
    gx.radam(1e-2, nesterov=True), gx.radam(1e-2, eps_root=1e-8), gx.nadam(1e-2),
    gx.nadam(1e-2, momentum_decay=4e-3, mu_dtype=torch.float64), gx.adagrad(1e-2, lr_decay=0.1),
    gx.chain(gx.clip_value(1.0), gx.scale_by_rss(), gx.scale_by_lr(1e-2)),
    gx.chain(gx.add_decayed_weights(0.1, mask=lambda p: gx.tree_map(lambda x: x.dim() > 1, p)), gx.scale_by_rss(),
             gx.scale_by_lr(1e-2)),
    gx.chain(gx.add_decayed_weights(0.1), gx.scale_by_adamax(), gx.scale_by_lr(1e-2)),
    gx.chain(gx.scale_by_adamax(), gx.scale_by_lr(1e-2), gx.scale(2.0)),
], ids=lambda tx: repr(tx).split("(")[0])
def test_other_chains_are_not(tx):
    assert not isinstance(_fused.plan(tx), MultiTensorPlan)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", sorted(PLANS))
def test_plan_generic_and_torch_agree(name, dtype):
    make, make_torch = PLANS[name]
    fast, slow = _params(dtype), _params(dtype)
    fast_opt, slow_opt = gx.Optimizer(fast, make()), gx.Optimizer(slow, make(), fast=False)
    assert fast_opt._plan is not None and slow_opt._plan is None
    _steps(fast_opt, fast, dtype, 0, STEPS)
    _steps(slow_opt, slow, dtype, 0, STEPS)
    _close(fast, slow, dtype)
    fast_state, slow_state = _state(fast_opt), _state(slow_opt)
    assert [(t.shape, t.dtype) for t in fast_state] == [(t.shape, t.dtype) for t in slow_state]
    _close(fast_state, slow_state, dtype)
    if make_torch is not None:
        ref = _params(dtype)
        _steps(make_torch(ref), ref, dtype, 0, STEPS)
        # torch keeps NAdam's product of momenta and ASGD's step size in its default dtype,
        # float32 (see gx.scale_by_nadam)
        _close(fast, ref, torch.float32 if name.startswith(("nadam", "asgd")) else dtype)


@pytest.mark.parametrize("name", ["adamax", "nadam_torch", "adadelta", "adagrad_torch"])
def test_checkpoint_moves_between_paths(name):
    make = PLANS[name][0]
    dtype = torch.float64
    params = _params(dtype)
    opt = gx.Optimizer(params, make())
    _steps(opt, params, dtype, 0, 7)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    resumed = [torch.nn.Parameter(p.detach().clone()) for p in params]
    slow_opt = gx.Optimizer(resumed, make(), fast=False)
    slow_opt.load_state_dict(saved)
    _steps(opt, params, dtype, 7, 14)
    _steps(slow_opt, resumed, dtype, 7, 14)
    _close(params, resumed, dtype)


def test_falls_back_with_the_same_numbers():
    """A weight decay the kernel lacks takes the generic path with the same numbers; a gradient
    of another dtype, bfloat16 and complex parameters are refused before anything changes."""
    dtype = torch.float32
    fast, slow = _params(dtype), _params(dtype)
    make = lambda: gx.rmsprop(1e-2, weight_decay=0.1)  # noqa: E731
    fast_opt, slow_opt = gx.Optimizer(fast, make()), gx.Optimizer(slow, make(), fast=False)
    _steps(fast_opt, fast, dtype, 0, 5)
    _steps(slow_opt, slow, dtype, 0, 5)
    _close(fast, slow, dtype)

    tx = gx.adamax(1e-2)
    plan = _fused.plan(tx)
    scratch = lambda like, slot=0: [torch.empty_like(x) for x in like]  # noqa: E731
    for p, g in [(torch.ones(3, dtype=torch.bfloat16), torch.ones(3, dtype=torch.bfloat16)),
                 (torch.ones(3), torch.ones(3, dtype=torch.float64)),
                 (torch.ones(3, dtype=torch.complex64), torch.ones(3, dtype=torch.complex64))]:
        state = tx.init({0: p})
        assert plan.run(state, [0], {0: p}, {0: g}, scratch) is False
        assert int(state[0].count) == 0 and torch.equal(p, torch.ones_like(p))
    traced = gx.inject_hyperparams(gx.adamax)(lr=torch.tensor(1e-2, requires_grad=True))
    assert not isinstance(_fused.plan(traced), MultiTensorPlan)


@pytest.mark.parametrize("name", ["adagrad_torch", "rmsprop_torch", "asgd"])
def test_transposed_gradient_on_the_fused_kernels(name):
    """torch's fused kernels (Adagrad's; Adam's for RMSprop, SGD's for ASGD) walk memory
    linearly: a gradient of other strides runs on copies or on the foreach passes."""
    make = PLANS[name][0]
    base = torch.randn(6, 4, dtype=torch.float64)
    fast, slow = torch.nn.Parameter(base.clone()), torch.nn.Parameter(base.clone())
    opts = gx.Optimizer([fast], make()), gx.Optimizer([slow], make(), fast=False)
    for step in range(4):
        g = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(step)).t()
        for p, opt in zip((fast, slow), opts):
            p.grad = g
            opt.step()
    _close([fast], [slow], torch.float64)


def test_param_groups_lr_and_schedulers():
    """The learning rate comes from param_groups each step (an LR scheduler works unchanged)."""
    dtype = torch.float64
    fast, slow = _params(dtype), _params(dtype)
    opts = [gx.Optimizer([{"params": ps[:2]}, {"params": ps[2:], "lr": 3e-2}], gx.nadam(1e-2, momentum_decay=4e-3),
                         fast=f) for ps, f in ((fast, True), (slow, False))]
    scheds = [torch.optim.lr_scheduler.StepLR(o, 2, gamma=0.5) for o in opts]
    for step in range(6):
        for ps, opt, sched in zip((fast, slow), opts, scheds):
            for p, g in zip(ps, _grads(step, dtype)):
                p.grad = g
            opt.step()
            sched.step()
    _close(fast, slow, dtype)


@pytest.mark.parametrize("flat", [False, True])
@pytest.mark.parametrize("name", sorted(PLANS))
def test_blocks(name, flat, monkeypatch):
    """Kernels run block by block (long tensors cut, short ones taken together) with the
    generic path's numbers, on the default path and over flat buffers; a group mixing float32
    and float64 runs unblocked, on the adapter's scratch."""
    monkeypatch.setattr(multi_tensor, "_BLOCK", 8)  # SHAPES: 35 cut in 5, then 5 + (24 cut in 3) + 1
    make, make_torch = PLANS[name]
    dtype = torch.float32
    fast, slow = _params(dtype), _params(dtype)
    fast_opt, slow_opt = gx.Optimizer(fast, make(), flat=flat), gx.Optimizer(slow, make(), fast=False)
    _steps(fast_opt, fast, dtype, 0, 8)
    _steps(slow_opt, slow, dtype, 0, 8)
    assert name.startswith("adagrad_torch") or fast_opt._plan._blocks is not None
    _close(fast, slow, dtype)
    _close(_state(fast_opt), _state(slow_opt), dtype)
    if make_torch is not None:
        ref = _params(dtype)
        _steps(make_torch(ref), ref, dtype, 0, 8)
        _close(fast, ref, dtype)
    mixed = [p.detach().double() if i % 2 else p.detach().clone() for i, p in enumerate(_params(dtype))]
    mixed_slow = [torch.nn.Parameter(p.clone()) for p in mixed]
    mixed = [torch.nn.Parameter(p) for p in mixed]
    opts = gx.Optimizer(mixed, make()), gx.Optimizer(mixed_slow, make(), fast=False)
    for step in range(4):
        for ps, opt in zip((mixed, mixed_slow), opts):
            for p, g in zip(ps, _grads(step, dtype)):
                p.grad = g.to(p.dtype)
            opt.step()
    _close(mixed, mixed_slow, dtype)


@pytest.mark.parametrize("loop", [False, True])
@pytest.mark.parametrize("flat", [False, True])
@pytest.mark.parametrize("make", [
    lambda: gx.chain(gx.clip_value(0.5), gx.scale_by_adam(), gx.scale_by_lr(1e-2)),
    lambda: gx.chain(gx.clip_value(0.5), gx.clip_value(0.3), gx.scale_by_adam(), gx.scale_by_lr(1e-2)),
    lambda: gx.chain(gx.clip_value(0.5), gx.scale_by_adam(), gx.add_decayed_weights(0.1), gx.scale_by_lr(1e-2)),
    lambda: gx.chain(gx.clip_value(0.5), gx.trace(0.9, nesterov=True), gx.scale_by_lr(1e-2)),
], ids=["adam", "adam_two_clips", "adamw", "sgd"])
def test_clipped_fused_chains_in_blocks(make, flat, loop, monkeypatch):
    """A leading clip_value before torch's fused kernels runs block by block (the clipped
    gradients in a scratch block, copied and clipped or, for long tensors, ``loop``, clipped
    straight into it): the generic path's numbers, .grad untouched."""
    monkeypatch.setattr(multi_tensor, "_BLOCK", 8)
    if loop:
        monkeypatch.setattr(multi_tensor, "_LOOP_MIN", 1)
    dtype = torch.float64
    fast, slow = _params(dtype), _params(dtype)
    fast_opt, slow_opt = gx.Optimizer(fast, make(), flat=flat), gx.Optimizer(slow, make(), fast=False)
    assert isinstance(fast_opt._plan, _fused.FusedPlan) and fast_opt._plan.clips
    _steps(fast_opt, fast, dtype, 0, 6)
    _steps(slow_opt, slow, dtype, 0, 6)
    assert fast_opt._plan._blocks is not None
    _close(fast, slow, dtype)
    _close(_state(fast_opt), _state(slow_opt), dtype)
