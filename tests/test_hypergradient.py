"""Differentiable optimizers through plain autograd (issue 14, item 5): ``d(loss after k steps)/d(lr)``
with ``lr`` a 0-dim tensor that requires grad, by ``torch.autograd.grad`` and by ``torch.func.grad``,
through ``tx.update`` of the elementwise built-ins. Reference: the same k steps written out by hand
in this file (Adam, SGD with momentum, RMSprop, plain scaling), differentiated by autograd.

Two set-ups: gradients that do not depend on the parameters (a fixed sequence), and gradients
of a loss at the current parameters taken with ``create_graph=True`` (second order through the
trajectory). Also: ``print(opt)`` of ``gx.Optimizer`` shows the chain (item 6).
"""

from __future__ import annotations

import pytest
import torch

import gradtx as gx

K = 4
LR = 0.05


def _problem():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    params = {"w": torch.randn(3, generator=gen, dtype=torch.float64),
              "m": torch.randn(2, 2, generator=gen, dtype=torch.float64)}
    fixed = [{k: torch.randn(v.shape, generator=gen, dtype=torch.float64) for k, v in params.items()}
             for _ in range(K)]

    def loss(p):
        return ((a @ p["w"]) ** 2).sum() / 5 + (p["m"].sin() ** 2).sum()
    return params, fixed, loss


def _grads(loss, params, fixed, step):
    """The step's gradients: ``fixed[step]``, or ``d loss / d params`` kept differentiable."""
    if fixed is not None:
        return fixed[step]
    leaves = {k: v if v.requires_grad else v.detach().requires_grad_() for k, v in params.items()}
    grads = torch.autograd.grad(loss(leaves), list(leaves.values()), create_graph=True)
    return dict(zip(leaves, grads)), leaves


# -- the rules written out by hand (no gradtx), one tensor at a time --------------------------

def _adam(lr, p, gs, b1=0.9, b2=0.999, eps=1e-8):
    m = v = torch.zeros_like(p)
    for t, g in enumerate(gs(p), start=1):
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        p = p - lr * (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + eps)
        yield p


def _sgd_momentum(lr, p, gs, momentum=0.9):
    buf = torch.zeros_like(p)
    for g in gs(p):
        buf = momentum * buf + g
        p = p - lr * buf
        yield p


def _rmsprop(lr, p, gs, decay=0.9, eps=1e-8):
    v = torch.zeros_like(p)
    for g in gs(p):
        v = decay * v + (1 - decay) * g * g
        p = p - lr * g / (v + eps).sqrt()
        yield p


def _plain(lr, p, gs):
    for g in gs(p):
        p = p - lr * g
        yield p


CASES = [
    ("adam", gx.adam, _adam),
    ("sgd_momentum", lambda lr: gx.sgd(lr, momentum=0.9), _sgd_momentum),
    ("rmsprop", gx.rmsprop, _rmsprop),
    ("scale_by_lr", lambda lr: gx.scale_by_lr(lr), _plain),
    ("sgd", gx.sgd, _plain),
]


def _loss_by_gradtx(lr, build, fixed_grads: bool):
    params, fixed, loss = _problem()
    tx = build(lr)
    state = tx.init(params)
    for step in range(K):
        if fixed_grads:
            grads = fixed[step]
        else:
            grads, params = _grads(loss, params, None, step)
        updates, state = tx.update(grads, state, params)
        params = gx.apply_updates(params, updates)
    return loss(params)


def _loss_by_hand(lr, rule, fixed_grads: bool):
    params, fixed, loss = _problem()
    if fixed_grads:  # leaves are independent: each runs its own rule on its own gradients
        final = {}
        for name, p in params.items():
            def gs(_p, name=name):
                for step in range(K):
                    yield fixed[step][name]
            *_, final[name] = rule(lr, p, gs)
        return loss(final)
    # gradients at the current parameters couple the leaves: step all rules together
    names = list(params)
    current = dict(params)
    feeds = {name: [] for name in names}

    def feeder(name):
        def gs(_p):
            while True:
                yield feeds[name].pop()
        return gs

    runs = {name: rule(lr, params[name], feeder(name)) for name in names}
    for _ in range(K):
        leaves = {k: v if v.requires_grad else v.detach().requires_grad_() for k, v in current.items()}
        grads = torch.autograd.grad(loss(leaves), list(leaves.values()), create_graph=True)
        for name, g in zip(names, grads):
            feeds[name].append(g)
        current = {name: next(runs[name]) for name in names}
    return loss(current)


@pytest.mark.parametrize("fixed_grads", [True, False], ids=["fixed_grads", "grads_at_params"])
@pytest.mark.parametrize("name, build, rule", CASES, ids=[c[0] for c in CASES])
def test_hypergradient_by_autograd_matches_the_hand_written_steps(name, build, rule, fixed_grads):
    lr = torch.tensor(LR, dtype=torch.float64, requires_grad=True)
    (got,) = torch.autograd.grad(_loss_by_gradtx(lr, build, fixed_grads), lr)
    lr_ref = torch.tensor(LR, dtype=torch.float64, requires_grad=True)
    (want,) = torch.autograd.grad(_loss_by_hand(lr_ref, rule, fixed_grads), lr_ref)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    assert want.abs() > 1e-3  # not vacuous


@pytest.mark.parametrize("name, build, rule", CASES, ids=[c[0] for c in CASES])
def test_hypergradient_by_func_grad_matches_autograd(name, build, rule):
    lr = torch.tensor(LR, dtype=torch.float64)
    by_func = torch.func.grad(lambda x: _loss_by_gradtx(x, build, True))(lr)
    lr_ref = torch.tensor(LR, dtype=torch.float64, requires_grad=True)
    (by_hand,) = torch.autograd.grad(_loss_by_hand(lr_ref, rule, True), lr_ref)
    torch.testing.assert_close(by_func, by_hand, rtol=1e-9, atol=1e-12)


def test_hypergradient_with_a_float32_model_and_float32_lr():
    """The common case of a model in float32: the same number as the hand-written Adam."""
    params, fixed, loss = _problem()
    params = {k: v.float() for k, v in params.items()}
    fixed = [{k: v.float() for k, v in g.items()} for g in fixed]
    lr = torch.tensor(LR, requires_grad=True)
    tx = gx.adam(lr)
    state = tx.init(params)
    p = params
    for g in fixed:
        u, state = tx.update(g, state, p)
        p = gx.apply_updates(p, u)
    (got,) = torch.autograd.grad(sum((v ** 2).sum() for v in p.values()), lr)
    lr_ref = torch.tensor(LR, requires_grad=True)
    final = []
    for name, x in params.items():
        *_, last = _adam(lr_ref, x, lambda _p, name=name: (g[name] for g in fixed))
        final.append(last)
    (want,) = torch.autograd.grad(sum((v ** 2).sum() for v in final), lr_ref)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_print_optimizer_shows_the_chain_and_the_groups():
    w = torch.nn.Parameter(torch.zeros(2))
    text = repr(gx.Optimizer([w], gx.chain(gx.clip_by_global_norm(1.0), gx.adamw(1e-3, weight_decay=0.01)),
                             fast=False))
    torch_text = repr(torch.optim.AdamW([w], lr=1e-3))
    assert text.startswith("Optimizer (\n") and torch_text.startswith("AdamW (\n")
    assert "clip_by_global_norm(max_norm=1.0)" in text
    assert "scale_by_adam(b1=0.9" in text and "add_decayed_weights(weight_decay=0.01" in text
    assert "Options: fast=False" in text
    # torch's lines for the groups follow, as torch prints them
    assert "Parameter Group 0\n" in text and "    lr: 0.001\n" in text and text.endswith(")")
    assert "Options" not in repr(gx.Optimizer([w], gx.sgd(0.1)))
