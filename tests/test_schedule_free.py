"""Schedule-free SGD and AdamW against the authors' ``schedulefree`` package, float64."""

from __future__ import annotations

import pytest
import torch
from conftest import MLPProblem, assert_resume_bit_exact

import gradtx as gx

schedulefree = pytest.importorskip("schedulefree")

STEPS = 60
TOL = dict(rtol=1e-10, atol=1e-12)


def _reference(problem: MLPProblem, make, steps: int = STEPS):
    """The reference's params (y) after each step, and its evaluation params (x) at the end."""
    leaves = problem.leaf_params()
    opt = make(list(leaves.values()))
    opt.train()
    ys = []
    for t in range(steps):
        opt.zero_grad()
        problem.loss(leaves, t).backward()
        opt.step()
        ys.append({k: v.detach().clone() for k, v in leaves.items()})
    opt.eval()
    xs = {k: v.detach().clone() for k, v in leaves.items()}
    return ys, xs


def _functional(problem: MLPProblem, tx, steps: int = STEPS):
    params = {k: v.clone() for k, v in problem.params0.items()}
    state = tx.init(params)
    ys = []
    for t in range(steps):
        updates, state = tx.update(problem.grads(params, t), state, params)
        params = gx.apply_updates(params, updates)
        ys.append(params)
    return ys, gx.schedule_free_eval_params(state, params), state


CASES = [
    ("sgd", dict(lr=0.3), lambda p: schedulefree.SGDScheduleFree(p, lr=0.3, foreach=False)),
    ("sgd", dict(lr=0.2, b1=0.8, weight_decay=1e-2, warmup_steps=10, weight_lr_power=1.0, r=0.5),
     lambda p: schedulefree.SGDScheduleFree(p, lr=0.2, momentum=0.8, weight_decay=1e-2, warmup_steps=10,
                                            weight_lr_power=1.0, r=0.5, foreach=False)),
    ("adamw", dict(lr=0.02), lambda p: schedulefree.AdamWScheduleFree(p, lr=0.02, foreach=False)),
    ("adamw", dict(lr=0.03, b1=0.95, b2=0.99, eps=1e-6, weight_decay=1e-2, warmup_steps=15, r=1.0),
     lambda p: schedulefree.AdamWScheduleFree(p, lr=0.03, betas=(0.95, 0.99), eps=1e-6, weight_decay=1e-2,
                                              warmup_steps=15, r=1.0, foreach=True)),
]


@pytest.mark.parametrize(("kind", "kwargs", "make"), CASES, ids=["sgd", "sgd-warmup-wd-r", "adamw",
                                                                 "adamw-warmup-wd-r"])
def test_matches_schedulefree_package(kind, kwargs, make):
    problem = MLPProblem()
    ref_ys, ref_x = _reference(problem, make)
    tx = (gx.schedule_free_sgd if kind == "sgd" else gx.schedule_free_adamw)(**kwargs)
    ys, x, _ = _functional(problem, tx)
    for t, (got, want) in enumerate(zip(ys, ref_ys)):
        for k in want:
            torch.testing.assert_close(got[k], want[k], **TOL, msg=lambda m, t=t, k=k: f"step {t}, {k}: {m}")
    for k in ref_x:
        torch.testing.assert_close(x[k], ref_x[k], **TOL)
    assert not torch.allclose(x["w1"], ys[-1]["w1"])  # x and y differ: the test can see a swap


def test_eval_params_inverse_and_paper_rule():
    """x from the state equals the paper's average written out: x_{t+1} = (1-c) x_t + c z_{t+1}
    with c = w_t / sum w, z the SGD iterate; train_params inverts eval_params."""
    problem = MLPProblem()
    lr, b1 = 0.25, 0.9
    tx = gx.schedule_free_sgd(lr, b1=b1)
    ys, x, state = _functional(problem, tx, steps=20)
    # the paper's rule, with x and z kept explicitly
    z = {k: v.clone() for k, v in problem.params0.items()}
    xs = {k: v.clone() for k, v in problem.params0.items()}
    y = {k: v.clone() for k, v in problem.params0.items()}
    total = 0.0
    for t in range(20):
        g = problem.grads(y, t)
        z = {k: z[k] - lr * g[k] for k in z}
        total += lr ** 2
        c = lr ** 2 / total
        xs = {k: (1 - c) * xs[k] + c * z[k] for k in z}
        y = {k: (1 - b1) * z[k] + b1 * xs[k] for k in z}
        for k in y:
            torch.testing.assert_close(ys[t][k], y[k], **TOL)
    for k in xs:
        torch.testing.assert_close(x[k], xs[k], **TOL)
    back = gx.schedule_free_train_params(state, x)
    for k in back:
        torch.testing.assert_close(back[k], ys[-1][k], **TOL)


def test_optimizer_eval_train_match_reference_and_checkpoint_resumes():
    """gx.Optimizer gives the reference's y while training; eval() swaps in the reference's
    x and train() swaps y back; a state_dict round-trip through torch.save continues
    bit-identically."""
    problem = MLPProblem()
    make = lambda p: schedulefree.AdamWScheduleFree(p, lr=0.02, warmup_steps=5, foreach=False)  # noqa: E731
    ref_ys, ref_x = _reference(problem, make, steps=30)
    made = []

    def make(leaves):
        opt = gx.Optimizer(list(leaves.values()), gx.schedule_free_adamw(0.02, warmup_steps=5))
        if not made:  # the first, uninterrupted one; the resumed one has its mode from the checkpoint
            opt.train()
        made.append((opt, leaves))
        return opt

    got = assert_resume_bit_exact(make, problem.leaf_params(), problem.loss, steps=30, split=15)
    opt, leaves = made[0]
    for k in leaves:
        torch.testing.assert_close(got[-1][k], ref_ys[-1][k], **TOL)
    y = {k: v.detach().clone() for k, v in leaves.items()}
    opt.eval()
    opt.eval()  # twice: no further change
    for k in leaves:
        torch.testing.assert_close(leaves[k].detach(), ref_x[k], **TOL)
    opt.train()
    for k in leaves:
        torch.testing.assert_close(leaves[k].detach(), y[k], rtol=1e-14, atol=1e-15)


def test_optimizer_eval_through_a_global_chain():
    """eval() finds the schedule-free state inside a chain run over all groups at once
    (a global-norm clip before it) and with two param groups."""
    problem = MLPProblem()
    tx = gx.chain(gx.clip_by_global_norm(10.0), gx.schedule_free_sgd(0.2))
    params = {k: v.clone() for k, v in problem.params0.items()}
    state = tx.init(params)
    leaves = problem.leaf_params()
    opt = gx.Optimizer([{"params": [leaves["w1"], leaves["b1"]]}, {"params": [leaves["w2"], leaves["b2"]]}], tx)
    for t in range(10):
        updates, state = tx.update(problem.grads(params, t), state, params)
        params = gx.apply_updates(params, updates)
        opt.zero_grad()
        problem.loss(leaves, t).backward()
        opt.step()
    x = gx.schedule_free_eval_params(state, params)
    opt.eval()
    for k in leaves:
        torch.testing.assert_close(leaves[k].detach(), x[k], **TOL)
    opt.train()
    for k in leaves:
        torch.testing.assert_close(leaves[k].detach(), params[k], **TOL)


def test_eval_without_schedule_free_state_changes_nothing():
    p = torch.nn.Parameter(torch.ones(3))
    opt = gx.Optimizer([p], gx.sgd(0.1))
    p.grad = torch.ones(3)
    opt.step()
    before = p.detach().clone()
    opt.eval()
    opt.train()
    assert torch.equal(p.detach(), before)


def test_a_step_in_eval_mode_is_refused_and_changes_nothing():
    p = torch.nn.Parameter(torch.ones(3))
    opt = gx.Optimizer([p], gx.schedule_free_sgd(0.1))
    p.grad = torch.ones(3)
    opt.step()
    opt.eval()
    before = p.detach().clone()
    with pytest.raises(RuntimeError, match=r"opt.train\(\)"):
        opt.step()
    assert torch.equal(p.detach(), before)
    opt.train()
    opt.step()  # back in train mode, it steps


def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="b1"):
        gx.schedule_free_sgd(b1=0.0)
    with pytest.raises(ValueError, match="warmup_steps"):
        gx.schedule_free_adamw(warmup_steps=-1)
    with pytest.raises(ValueError, match="no schedule-free state"):
        gx.schedule_free_eval_params(gx.sgd(0.1).init({"a": torch.ones(2)}), {"a": torch.ones(2)})
