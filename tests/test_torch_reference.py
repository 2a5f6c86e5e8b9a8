"""Trajectories equal to torch.optim over 200 steps, functional API and gx.Optimizer."""

from __future__ import annotations

import pytest
import torch
from conftest import TOL, MLPProblem, assert_same, functional_trajectory

import gradtx as gx

STEPS = 200

# (name, gradtx transform factory, torch optimizer factory, gradient preprocessing for torch)
CASES = [
    ("sgd", lambda: gx.sgd(0.05), lambda p: torch.optim.SGD(p, lr=0.05), None),
    ("sgd_momentum", lambda: gx.sgd(0.05, momentum=0.9),
     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9), None),
    ("sgd_nesterov", lambda: gx.sgd(0.05, momentum=0.9, nesterov=True),
     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True), None),
    ("sgd_wd", lambda: gx.sgd(0.05, momentum=0.5, weight_decay=0.01),
     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.5, weight_decay=0.01), None),
    ("adam", lambda: gx.adam(1e-2), lambda p: torch.optim.Adam(p, lr=1e-2), None),
    ("adam_betas", lambda: gx.adam(3e-3, b1=0.8, b2=0.99, eps=1e-6),
     lambda p: torch.optim.Adam(p, lr=3e-3, betas=(0.8, 0.99), eps=1e-6), None),
    ("adamw", lambda: gx.adamw(1e-2, weight_decay=0.05),
     lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.05), None),
    ("mission_chain", lambda: gx.chain(gx.clip_value(10.0), gx.scale_by_adam(), gx.scale_by_lr(1e-3)),
     lambda p: torch.optim.Adam(p, lr=1e-3), lambda g: g.clamp_(-10.0, 10.0)),
    ("mission_chain_tight_clip", lambda: gx.chain(gx.clip_value(0.05), gx.scale_by_adam(), gx.scale_by_lr(1e-2)),
     lambda p: torch.optim.Adam(p, lr=1e-2), lambda g: g.clamp_(-0.05, 0.05)),
]


def torch_trajectory(problem: MLPProblem, make_opt, grad_fn=None, sched=None, steps=STEPS):
    params = problem.leaf_params()
    opt = make_opt(list(params.values()))
    scheduler = sched(opt) if sched else None
    out = []
    for t in range(steps):
        opt.zero_grad()
        problem.loss(params, t).backward()
        if grad_fn is not None:
            for p in params.values():
                grad_fn(p.grad)
        opt.step()
        if scheduler is not None:
            scheduler.step()
        out.append({k: v.detach().clone() for k, v in params.items()})
    return out


def adapter_trajectory(problem: MLPProblem, tx, sched=None, steps=STEPS):
    params = problem.leaf_params()
    opt = gx.Optimizer(list(params.values()), tx)
    scheduler = sched(opt) if sched else None
    out = []
    for t in range(steps):
        opt.zero_grad()
        problem.loss(params, t).backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()
        out.append({k: v.detach().clone() for k, v in params.items()})
    return out


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name,make_tx,make_opt,grad_fn", CASES, ids=[c[0] for c in CASES])
def test_functional_matches_torch(name, make_tx, make_opt, grad_fn, dtype):
    problem = MLPProblem(dtype)
    ref = torch_trajectory(problem, make_opt, grad_fn)
    assert_same(functional_trajectory(problem, make_tx()), ref, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name,make_tx,make_opt,grad_fn", CASES, ids=[c[0] for c in CASES])
def test_adapter_matches_torch(name, make_tx, make_opt, grad_fn, dtype):
    problem = MLPProblem(dtype)
    ref = torch_trajectory(problem, make_opt, grad_fn)
    assert_same(adapter_trajectory(problem, make_tx()), ref, dtype)


SCHEDULERS = [
    ("step_lr", lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=30, gamma=0.5)),
    ("cosine", lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=150, eta_min=1e-4)),
]


@pytest.mark.parametrize("sched_name,sched", SCHEDULERS, ids=[s[0] for s in SCHEDULERS])
@pytest.mark.parametrize("name,make_tx,make_opt", [
    ("sgd_momentum", lambda: gx.sgd(0.05, momentum=0.9), lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)),
    ("adamw", lambda: gx.adamw(1e-2, weight_decay=0.05), lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.05)),
], ids=["sgd_momentum", "adamw"])
def test_lr_schedulers_drive_gradtx(name, make_tx, make_opt, sched_name, sched):
    problem = MLPProblem(torch.float64)
    ref = torch_trajectory(problem, make_opt, sched=sched)
    assert_same(adapter_trajectory(problem, make_tx(), sched=sched), ref, torch.float64)


def test_per_group_overrides_match_torch():
    problem = MLPProblem(torch.float64)

    def groups(params):
        return [{"params": params[:2], "lr": 3e-2, "weight_decay": 0.0}, {"params": params[2:]}]

    ref = torch_trajectory(problem, lambda p: torch.optim.AdamW(groups(p), lr=1e-2, weight_decay=0.1))
    params = problem.leaf_params()
    opt = gx.Optimizer(groups(list(params.values())), gx.adamw(1e-2, weight_decay=0.1))
    assert [g["lr"] for g in opt.param_groups] == [3e-2, 1e-2]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.0, 0.1]
    for t in range(STEPS):
        opt.zero_grad()
        problem.loss(params, t).backward()
        opt.step()
        for k in params:
            torch.testing.assert_close(params[k].detach(), ref[t][k], **TOL[torch.float64])
