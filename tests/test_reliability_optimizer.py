"""gx.Optimizer keeps torch.optim's contract where careful users lean on it (issue 9,
items 4, 7, 9, 10, 16, 20, 24): each test failed before its fix."""

from __future__ import annotations

import copy

import pytest
import torch

import gradtx as gx


def _params(n=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(4, generator=gen, dtype=torch.float64)) for _ in range(n)]


def _grad(p, step):
    gen = torch.Generator().manual_seed(100 + step)
    return torch.randn(p.shape, generator=gen, dtype=p.dtype)


@pytest.mark.parametrize("fast", [True, False])
def test_replaced_parameter_is_stepped_and_starts_afresh(fast):
    # item 4: torch steps the tensor now in param_groups, with fresh state (a momentum
    # buffer; gradtx's step counts are per group, so Adam's bias correction would differ)
    params = _params()
    twin = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt = gx.Optimizer(params, gx.sgd(0.1, momentum=0.9), fast=fast)
    ref = torch.optim.SGD(twin, lr=0.1, momentum=0.9)
    for step in range(6):
        if step == 3:
            new, new_twin = (torch.nn.Parameter(torch.ones(4, dtype=torch.float64)) for _ in range(2))
            opt.param_groups[0]["params"][1] = new
            ref.param_groups[0]["params"][1] = new_twin
            old = params[1].detach().clone()
            params[1], twin[1] = new, new_twin
        for p, q in zip(params, twin):
            p.grad = _grad(p, step)
            q.grad = p.grad.clone()
        opt.step()
        ref.step()
    for p, q in zip(params, twin):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)
    assert not torch.equal(params[1], torch.ones(4, dtype=torch.float64))
    assert not torch.equal(params[1], old)


@pytest.mark.parametrize("bad", [float("nan"), -1.0, "abc", None, torch.tensor([1e-3, 2e-3])])
def test_load_state_dict_validates_hyperparameters_and_changes_nothing(bad):
    # item 7
    params = _params()
    opt = gx.Optimizer(params, gx.adamw(1e-3, weight_decay=0.1))
    for p in params:
        p.grad = _grad(p, 0)
    opt.step()
    saved = opt.state_dict()
    saved["param_groups"][0]["lr"] = bad
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match="lr"):
        opt.load_state_dict(saved)
    after = opt.state_dict()
    assert after["param_groups"] == before["param_groups"]
    for index, leaves in before["state"].items():
        for path, value in leaves.items():
            assert torch.equal(after["state"][index][path], value)


@pytest.mark.parametrize("skip", ["skip_not_finite", "skip_large_updates"])
def test_multi_steps_with_a_skip_function_builds_and_skips(skip):
    # item 9: the docstring's own example failed at construction
    fn = gx.skip_not_finite if skip == "skip_not_finite" else (
        lambda u, s, p: gx.skip_large_updates(u, s, p, max_squared_norm=1e6))
    params = _params(1)
    opt = gx.Optimizer(params, gx.multi_steps(gx.sgd(0.1), 2, should_skip_update_fn=fn))
    start = params[0].detach().clone()
    bad = torch.full((4,), float("inf"), dtype=torch.float64)
    for g in (bad, torch.ones(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)):
        params[0].grad = g
        opt.step()
    # the infinite gradient was skipped; the two finite ones made one step of -0.1 * mean
    torch.testing.assert_close(params[0].detach(), start - 0.1)


def test_state_dict_hooks_run():
    # item 10
    params = _params()
    opt = gx.Optimizer(params, gx.adam(1e-3))
    calls = []
    opt.register_state_dict_pre_hook(lambda o: calls.append("pre"))
    opt.register_state_dict_post_hook(lambda o, sd: {**sd, "extra": 1})
    opt.register_load_state_dict_pre_hook(lambda o, sd: calls.append("load_pre"))
    opt.register_load_state_dict_post_hook(lambda o: calls.append("load_post"))
    sd = opt.state_dict()
    assert sd["extra"] == 1 and calls == ["pre"]
    opt.load_state_dict(sd)
    assert calls == ["pre", "load_pre", "load_post"]


def test_state_view_reads_like_torch_and_clear_forgets():
    # item 10
    params = _params()
    opt = gx.Optimizer(params, gx.adam(1e-3))
    assert opt.state[params[0]] == {}
    for p in params:
        p.grad = _grad(p, 0)
    opt.step()
    mu = [t for path, t in opt.state[params[0]].items() if path.endswith(".mu")]
    assert len(mu) == 1 and torch.allclose(mu[0], 0.1 * params[0].grad)
    mu[0].zero_()  # the live tensor: a tool that edits state in place edits the optimizer's
    assert torch.equal(opt.state_dict()["state"][0]["[0].mu"], torch.zeros(4, dtype=torch.float64))
    opt.state.clear()
    assert len(opt.state) == 0
    fresh = gx.Optimizer([torch.nn.Parameter(p.detach().clone()) for p in params], gx.adam(1e-3))
    for q, p in zip(fresh.param_groups[0]["params"], params):
        q.grad = p.grad.clone()
    opt.step()
    fresh.step()
    for p, q in zip(params, fresh.param_groups[0]["params"]):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    with pytest.raises(ValueError, match="load_state_dict"):
        opt.state = {params[0]: {}}


@pytest.mark.parametrize("drop", ["param_groups", "state"])
def test_missing_top_level_key_is_named(drop):
    # item 16
    opt = gx.Optimizer(_params(), gx.adam(1e-3))
    sd = opt.state_dict()
    del sd[drop]
    with pytest.raises(ValueError, match=drop):
        opt.load_state_dict(sd)


@pytest.mark.parametrize("drop", ["shared", "param_groups", "state"])
def test_missing_top_level_key_of_the_old_format_is_named(drop):
    opt = gx.Optimizer(_params(), gx.adam(1e-3))
    sd = opt._old_state_dict()  # format gradtx.Optimizer/1, which files hold and which still loads
    del sd[drop]
    with pytest.raises(ValueError, match=drop):
        opt.load_state_dict(sd)
    sd = opt._old_state_dict()
    sd["shared"] = []
    with pytest.raises(ValueError, match="shared"):
        opt.load_state_dict(sd)


def test_param_names_survive_loading_into_unnamed_params():
    # item 20
    model = torch.nn.Linear(3, 2)
    named = gx.Optimizer(model.named_parameters(), gx.adam(1e-3))
    plain = gx.Optimizer(model.parameters(), gx.adam(1e-3))
    plain.load_state_dict(named.state_dict())
    assert plain.param_groups[0]["param_names"] == ["weight", "bias"]


def test_differentiable_says_how():
    # item 24
    with pytest.raises(ValueError, match="functional API"):
        gx.Optimizer(_params(), gx.adam(1e-3), differentiable=True)
