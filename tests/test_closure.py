"""``gx.Optimizer.step(closure)``: the closure as ``value_fn`` / ``value_and_grad_fn``.

The functions a chain gets from a closure must be pure to it: parameters and every
``.grad`` as they were after each call, the loss and gradient those of the trial point
(checked against closed forms), and ``backward=False`` used where only a loss is asked for.
"""

from __future__ import annotations

import pytest
import torch

import gradtx as gx

TARGET = torch.arange(4.0, dtype=torch.float64)


def _probe(record: dict, trial: float):
    """A member that evaluates the loss again at ``params + trial`` (as a line search
    would) and records what it saw; it passes the update through."""

    def update(updates, state, params=None, *, value=None, grad=None, value_fn=None, value_and_grad_fn=None,
               **extra):
        shifted = {k: p + trial for k, p in params.items()}
        record["value"] = value
        record["grad"] = {k: g.clone() for k, g in grad.items()}
        record["value_fn"] = value_fn(shifted)
        record["value_and_grad_fn"] = value_and_grad_fn(shifted)
        record["params_after"] = {k: p.detach().clone() for k, p in params.items()}
        record["grad_after"] = {k: p.grad.clone() for k, p in params.items()}
        return updates, state

    return gx.GradientTransformation(lambda params: gx.EmptyState(), update)


def _loss(w, b):
    return ((w - TARGET) ** 2).sum() + 3 * b.sum() ** 2


@pytest.mark.parametrize("style", ["flag", "plain", "flag_zeroing_in_place"])
@pytest.mark.parametrize("groups", [1, 2])
def test_closure_functions_are_pure_and_exact(style, groups):
    w = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))
    b = torch.nn.Parameter(torch.ones(2, dtype=torch.float64))
    flags = []

    def closure(backward=True):
        flags.append(backward)
        loss = _loss(w, b)
        if backward:
            opt.zero_grad(set_to_none=style != "flag_zeroing_in_place")
            loss.backward()
        return loss

    def plain_closure():
        flags.append(True)
        opt.zero_grad()
        loss = _loss(w, b)
        loss.backward()
        return loss

    record: dict = {}
    param_groups = [w, b] if groups == 1 else [{"params": [w]}, {"params": [b]}]
    # a user's transform is not leafwise: with two groups it sees both (one chain over all)
    opt = gx.Optimizer(param_groups, gx.chain(_probe(record, 0.5), gx.sgd(0.1)))
    w0, b0 = w.detach().clone(), b.detach().clone()
    loss = opt.step(plain_closure if style == "plain" else closure)

    torch.testing.assert_close(loss, _loss(w0, b0))  # the loss where the step started
    torch.testing.assert_close(record["value"], _loss(w0, b0))
    want = _loss(w0 + 0.5, b0 + 0.5)
    torch.testing.assert_close(record["value_fn"], want)
    value, grads = record["value_and_grad_fn"]
    torch.testing.assert_close(value, want)
    want_grads = [2 * (w0 + 0.5 - TARGET), 6 * (b0 + 0.5).sum() * torch.ones(2, dtype=torch.float64)]
    assert len(grads) == 2
    for got, expected in zip(grads.values(), want_grads):
        torch.testing.assert_close(got, expected)
    # during the chain: parameters and .grad as at the start, after both evaluations
    start_grads = [2 * (w0 - TARGET), 6 * b0.sum() * torch.ones(2, dtype=torch.float64)]
    for got, expected in zip(record["params_after"].values(), [w0, b0]):
        assert torch.equal(got, expected)
    for got, expected in zip(record["grad_after"].values(), start_grads):
        torch.testing.assert_close(got, expected)
    for got, expected in zip(record["grad"].values(), start_grads):
        torch.testing.assert_close(got, expected)
    # after the step: the update applied, .grad the gradient at the start
    torch.testing.assert_close(w.detach(), w0 - 0.1 * start_grads[0])
    torch.testing.assert_close(b.detach(), b0 - 0.1 * start_grads[1])
    torch.testing.assert_close(w.grad, start_grads[0])
    if style != "plain":
        assert flags == [True, False, True]  # value_fn evaluated without backward


def test_value_and_grad_fn_gives_zeros_for_a_parameter_without_gradient():
    w = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    unused = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
    unused.grad = torch.ones(2, dtype=torch.float64)  # stepped, but the loss ignores it
    record: dict = {}

    def closure(backward=True):
        loss = (w ** 2).sum()
        if backward:
            loss.backward()
        return loss

    opt = gx.Optimizer([w, unused], gx.chain(_probe(record, 1.0), gx.sgd(0.1)))
    opt.step(closure)
    _, grads = record["value_and_grad_fn"]
    g_w, g_unused = grads.values()
    torch.testing.assert_close(g_w, 2 * torch.ones(3, dtype=torch.float64))
    assert torch.equal(g_unused, torch.zeros(2, dtype=torch.float64))
    assert torch.equal(unused.grad, torch.ones(2, dtype=torch.float64))  # put back


def test_a_closure_must_be_callable():
    w = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(TypeError, match="closure must be callable"):
        gx.Optimizer([w], gx.sgd(0.1)).step(closure=3.0)
