"""gx.Optimizer where torch expects an optimizer: GradScaler (AMP), step hooks, plateau scheduler."""

from __future__ import annotations

import pytest
import torch

import gradtx as gx


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))


def _loss(model: torch.nn.Module, step: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(step)
    x, y = torch.randn(16, 4, generator=gen), torch.randn(16, 1, generator=gen)
    return torch.nn.functional.mse_loss(model(x), y)


def _run_with_scaler(make_opt, steps: int, overflow_at: set[int]) -> tuple[torch.nn.Module, list[float]]:
    model = _model()
    opt = make_opt(model.parameters())
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    scales = []
    for step in range(steps):
        opt.zero_grad()
        scaler.scale(_loss(model, step)).backward()
        if step in overflow_at:
            next(model.parameters()).grad[0, 0] = float("inf")
        scaler.step(opt)
        scaler.update()
        scales.append(scaler.get_scale())
    return model, scales


def test_grad_scaler_unscales_skips_overflow_steps_and_matches_torch():
    """GradScaler drives gx.Optimizer exactly as torch.optim.Adam: same parameters, and a
    step whose gradients overflow changes nothing and halves the scale."""
    overflow_at = {3, 7}
    ours, our_scales = _run_with_scaler(lambda p: gx.Optimizer(p, gx.adam(1e-2)), 12, overflow_at)
    ref, ref_scales = _run_with_scaler(lambda p: torch.optim.Adam(p, lr=1e-2), 12, overflow_at)
    assert our_scales == ref_scales
    assert our_scales[3] == 2.0**9 and our_scales[7] == 2.0**8
    for a, b in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_skipped_overflow_step_leaves_parameters_and_state_untouched():
    model = _model()
    opt = gx.Optimizer(model.parameters(), gx.adam(1e-2))
    scaler = torch.amp.GradScaler("cpu")
    scaler.scale(_loss(model, 0)).backward()
    scaler.step(opt)
    scaler.update()
    before = [p.detach().clone() for p in model.parameters()]
    state_before = {k: v.clone() for k, v in gx.tree_paths(opt.state_dict()["state"])}
    opt.zero_grad()
    scaler.scale(_loss(model, 1)).backward()
    next(model.parameters()).grad.view(-1)[0] = float("nan")
    scaler.step(opt)
    for a, b in zip(model.parameters(), before):
        assert torch.equal(a.detach(), b)
    for path, value in gx.tree_paths(opt.state_dict()["state"]):
        assert torch.equal(value, state_before[path]), path


def test_step_hooks_run_around_each_step():
    model = _model()
    opt = gx.Optimizer(model.parameters(), gx.sgd(0.1))
    calls = []
    opt.register_step_pre_hook(lambda o, args, kwargs: calls.append(("pre", o is opt)))
    opt.register_step_post_hook(lambda o, args, kwargs: calls.append(("post", o is opt)))
    for step in range(2):
        opt.zero_grad()
        _loss(model, step).backward()
        opt.step()
    assert calls == [("pre", True), ("post", True)] * 2


@pytest.mark.parametrize("make", [lambda p: gx.Optimizer(p, gx.sgd(0.1, momentum=0.9)),
                                  lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)], ids=["gradtx", "torch"])
def test_reduce_lr_on_plateau_lowers_the_chain_lr(make):
    """ReduceLROnPlateau writes param_groups[i]['lr'], which the chain's scale_by_lr reads."""
    model = _model()
    opt = make(model.parameters())
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=0)
    sched.step(1.0)
    sched.step(2.0)  # no improvement: lr halves
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)
    before = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    _loss(model, 0).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    opt.step()
    # first momentum step: m = g, so p <- p - 0.05 g exactly
    for p, p0, g in zip(model.parameters(), before, grads):
        torch.testing.assert_close(p.detach(), p0 - 0.05 * g, rtol=1e-6, atol=1e-7)
