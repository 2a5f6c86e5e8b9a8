"""Methods that evaluate the loss again, through ``gx.Optimizer.step(closure)``.

``gx.lbfgs`` on a model, driven by a closure with the ``backward`` flag, against
``torch.optim.LBFGS(line_search_fn="strong_wolfe")`` on the same strictly convex problem:
the same minimiser, and no more closure calls (both reuse the line search's last
evaluation). Reusing it (``reuse_evaluations``, the default) against calling the closure at
every step's start: bitwise the same parameters, losses and ``.grad``, one call fewer per
step; and never reused for another closure object or parameters changed between steps.
"""

from __future__ import annotations

import pytest
import torch

import gradtx as gx

_gen = torch.Generator().manual_seed(3)
X = torch.randn(200, 10, generator=_gen, dtype=torch.float64)
Y = (torch.rand(200, generator=_gen, dtype=torch.float64) < torch.sigmoid(X @ torch.randn(10, generator=_gen,
                                                                                         dtype=torch.float64))).double()


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(10, 1).double()


def _loss(model):
    # L2-regularised logistic regression: strictly convex, one minimiser
    logits = model(X).squeeze(-1)
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, Y) + 1e-2 * model.weight.pow(2).sum()


def _grad_norm(model) -> float:
    grads = torch.autograd.grad(_loss(model), list(model.parameters()))
    return float(torch.cat([g.reshape(-1) for g in grads]).norm())


def _minimise_with_gradtx(tx, steps=100, tol=1e-10):
    model = _model()
    opt = gx.Optimizer(model.parameters(), tx)
    calls = {"backward": 0, "value": 0}

    def closure(backward=True):
        loss = _loss(model)
        calls["backward" if backward else "value"] += 1
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

    for _ in range(steps):
        opt.step(closure)
        if _grad_norm(model) < tol:
            break
    return model, calls


def test_lbfgs_reaches_torch_lbfgs_minimiser_in_as_few_evaluations():
    model, calls = _minimise_with_gradtx(gx.lbfgs())

    twin = _model()
    ref = torch.optim.LBFGS(twin.parameters(), lr=1, max_iter=200, tolerance_grad=1e-10, tolerance_change=0,
                            history_size=10, line_search_fn="strong_wolfe")
    ref_calls = [0]

    def ref_closure():
        ref_calls[0] += 1
        ref.zero_grad()
        loss = _loss(twin)
        loss.backward()
        return loss

    ref.step(ref_closure)
    assert _grad_norm(model) < 1e-9 and _grad_norm(twin) < 1e-9
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-7, atol=1e-8)
    # the step's first call takes the line search's last evaluation, as torch's next iteration
    # does: 16 calls against torch's 21 here (30 when every step called the closure first)
    total = calls["backward"] + calls["value"]
    assert total <= ref_calls[0], (calls, ref_calls)


def _recording_closure(model, opt, seen):
    """The model's closure (torchzero's backward flag), noting in ``seen`` the weight at each call."""

    def closure(backward=True):
        seen.append(model.weight.detach().clone())
        loss = _loss(model)
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

    return closure


def _stepped_with(reuse, steps=8, make=gx.lbfgs):
    """Per step: the loss step returned, the parameters and .grad after it; and every
    closure call's parameters (the weight's first entry is enough to tell points apart)."""
    model = _model()
    opt = gx.Optimizer(model.parameters(), make(), reuse_evaluations=reuse)
    seen, out = [], []

    closure = _recording_closure(model, opt, seen)

    for _ in range(steps):
        loss = opt.step(closure)
        out.append((float(loss.detach()), [p.detach().clone() for p in model.parameters()],
                    [p.grad.clone() for p in model.parameters()]))
    return out, seen


@pytest.mark.parametrize("make", [gx.lbfgs, gx.bfgs], ids=["lbfgs_zoom", "bfgs_wolfe"])
def test_reusing_the_last_evaluation_changes_nothing_but_the_calls(make):
    fresh, fresh_calls = _stepped_with(False, make=make)
    reused, reused_calls = _stepped_with(True, make=make)
    for (la, pa, ga), (lb, pb, gb) in zip(fresh, reused):
        assert la == lb
        for x, y in zip(pa + ga, pb + gb):
            assert torch.equal(x, y)
    # each step after the first starts where the last line search ended, on a point it evaluated
    assert len(fresh_calls) - len(reused_calls) == len(fresh) - 1


def test_returned_loss_and_grad_of_a_reused_step_are_the_closures_at_the_start():
    model = _model()
    opt = gx.Optimizer(model.parameters(), gx.lbfgs())
    seen = []
    closure = _recording_closure(model, opt, seen)
    opt.step(closure)
    start = [p.detach().clone() for p in model.parameters()]
    want_loss = _loss(model)
    want_grads = torch.autograd.grad(want_loss, list(model.parameters()))
    before = len(seen)
    loss = opt.step(closure)
    assert len(seen) - before == 1  # the search's one trial (t = 1 accepted); the start was reused
    torch.testing.assert_close(loss, want_loss.detach(), rtol=1e-15, atol=0)
    assert not loss.requires_grad
    for p, g in zip(model.parameters(), want_grads):  # .grad: the gradient at the step's start
        torch.testing.assert_close(p.grad, g, rtol=1e-12, atol=1e-15)
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), start))


def _first_call_is_at_the_start(opt, model, closure, seen):
    start = model.weight.detach().clone()
    n = len(seen)
    opt.step(closure)
    return torch.equal(seen[n], start)


def test_no_reuse_after_the_parameters_change_or_for_another_closure():
    model = _model()
    opt = gx.Optimizer(model.parameters(), gx.lbfgs())
    seen = []
    closure = _recording_closure(model, opt, seen)
    assert _first_call_is_at_the_start(opt, model, closure, seen)
    assert not _first_call_is_at_the_start(opt, model, closure, seen)  # reused: the first call is a trial
    model.weight.data.mul_(0.5)  # through .data: no version counter sees it
    assert _first_call_is_at_the_start(opt, model, closure, seen)
    with torch.no_grad():
        model.bias.add_(1e-3)
    assert _first_call_is_at_the_start(opt, model, closure, seen)

    def other(backward=True):  # a new closure (a new batch) is called afresh
        return closure(backward)

    assert _first_call_is_at_the_start(opt, model, other, seen)
    assert not _first_call_is_at_the_start(opt, model, other, seen)
    no_reuse = gx.Optimizer(model.parameters(), gx.lbfgs(), reuse_evaluations=False)
    opt = no_reuse
    assert _first_call_is_at_the_start(opt, model, closure, seen)
    assert _first_call_is_at_the_start(opt, model, closure, seen)


def test_a_closure_over_data_that_changes_needs_reuse_off():
    """The documented contract: the same closure object reading data that changed between
    steps starts the next step from the last evaluation (the old data) unless
    reuse_evaluations=False; a closure made for each batch needs nothing."""

    def bce(model, rows):
        return torch.nn.functional.binary_cross_entropy_with_logits(model(X[rows]).squeeze(-1), Y[rows])

    first, second = slice(0, 100), slice(100, 200)
    for reuse in (True, False):
        model = _model()
        opt = gx.Optimizer(model.parameters(), gx.lbfgs(), reuse_evaluations=reuse)
        batch = [first]

        def closure(backward=True, model=model, opt=opt, batch=batch):
            loss = bce(model, batch[0])
            if backward:
                opt.zero_grad()
                loss.backward()
            return loss

        opt.step(closure)
        batch[0] = second
        with torch.no_grad():
            old, new = float(bce(model, first)), float(bce(model, second))
        loss = float(opt.step(closure).detach())
        assert loss == (old if reuse else new), (reuse, loss, old, new)
