"""The pure path under torch's function transforms: func.grad, func.vmap, torch.compile."""

from __future__ import annotations

import pytest
import torch

import gradtx as gx


def _quadratic(params, target):
    return sum(((params[k] - target[k]) ** 2).sum() for k in params)


def _problem(dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    params = {"w": torch.randn(3, 2, generator=gen, dtype=dtype), "b": torch.randn(2, generator=gen, dtype=dtype)}
    target = {k: torch.randn(v.shape, generator=gen, dtype=dtype) for k, v in params.items()}
    return params, target


def _loss_after_training(lr, params, target, build, steps=5):
    """The loss after ``steps`` updates of ``build(lr)``, a differentiable function of ``lr``."""
    tx = build(lr)
    state = tx.init(params)
    for _ in range(steps):
        grads = torch.func.grad(_quadratic)(params, target)
        updates, state = tx.update(grads, state, params)
        params = gx.apply_updates(params, updates)
    return _quadratic(params, target)


@pytest.mark.parametrize("build", [
    lambda lr: gx.sgd(lr, momentum=0.9),
    lambda lr: gx.adam(lr),
    lambda lr: gx.chain(gx.clip_by_global_norm(1.0), gx.scale_by_adam(), gx.scale_by_lr(lr)),
], ids=["sgd_momentum", "adam", "clipped_adam"])
def test_func_grad_with_respect_to_the_learning_rate(build):
    params, target = _problem()
    lr = torch.tensor(0.05, dtype=torch.float64)
    hypergrad = torch.func.grad(_loss_after_training)(lr, params, target, build)
    h = 1e-6
    finite = (_loss_after_training(lr + h, params, target, build)
              - _loss_after_training(lr - h, params, target, build)) / (2 * h)
    assert hypergrad.shape == ()
    torch.testing.assert_close(hypergrad, finite, rtol=1e-6, atol=1e-9)
    assert hypergrad.abs() > 1e-3  # the check above is not vacuous


def test_func_grad_matches_the_closed_form_for_sgd():
    """One SGD step on sum (p - t)^2: L(lr) = (1 - 2 lr)^2 ||p0 - t||^2, so
    dL/dlr = -4 (1 - 2 lr) ||p0 - t||^2."""
    params, target = _problem()
    lr = torch.tensor(0.1, dtype=torch.float64)
    hypergrad = torch.func.grad(_loss_after_training)(lr, params, target, gx.sgd, steps=1)
    expected = -4 * (1 - 2 * 0.1) * _quadratic(params, target)
    torch.testing.assert_close(hypergrad, expected, rtol=1e-12, atol=0)


@pytest.mark.parametrize("build", [
    lambda: gx.adamw(0.05, weight_decay=0.01),
    lambda: gx.sgd(0.05, momentum=0.9, nesterov=True),
    lambda: gx.chain(gx.clip_value(1.0), gx.scale_by_adam(), gx.scale_by_lr(0.05)),
    lambda: gx.chain(gx.clip_by_global_norm(1.0), gx.scale_by_rms(), gx.scale_by_lr(0.01)),
], ids=["adamw", "sgd_nesterov", "mission", "clipped_rms"])
def test_vmap_over_independent_parameter_sets(build):
    """vmap of k training steps over a batch of parameter sets equals a loop over the batch."""
    tx = build()
    batch = 4
    sets = [_problem(seed=s) for s in range(batch)]
    stacked_params = {k: torch.stack([p[k] for p, _ in sets]) for k in sets[0][0]}
    stacked_target = {k: torch.stack([t[k] for _, t in sets]) for k in sets[0][1]}

    def train(params, target):
        state = tx.init(params)
        for _ in range(4):
            grads = torch.func.grad(_quadratic)(params, target)
            updates, state = tx.update(grads, state, params)
            params = gx.apply_updates(params, updates)
        return params

    batched = torch.func.vmap(train)(stacked_params, stacked_target)
    for i, (params, target) in enumerate(sets):
        single = train(params, target)
        for k in single:
            torch.testing.assert_close(batched[k][i], single[k], rtol=1e-12, atol=1e-14)


def test_compiled_update_with_fullgraph_matches_eager():
    """One ``tx.update`` compiles as a single graph and gives the eager numbers; a new lr
    written into the state does not change the result's correctness."""
    torch._dynamo.reset()
    tx = gx.chain(gx.clip_value(10.0), gx.scale_by_adam(), gx.add_decayed_weights(1e-2), gx.scale_by_lr(1e-2))
    params, target = _problem(torch.float32)
    grads = {k: 2 * (params[k] - target[k]) for k in params}
    state = tx.init(params)

    compiled = torch.compile(lambda g, s, p: tx.update(g, s, p), fullgraph=True)
    for _ in range(3):
        eager_updates, eager_state = tx.update(grads, state, params)
        updates, new_state = compiled(grads, state, params)
        for k in params:
            torch.testing.assert_close(updates[k], eager_updates[k], rtol=1e-6, atol=1e-7)
        for a, b in zip(gx.tree_leaves(new_state), gx.tree_leaves(eager_state)):
            assert a.dtype == b.dtype and a.shape == b.shape
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
        state = new_state
        params = gx.apply_updates(params, updates)
