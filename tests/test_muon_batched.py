"""gx.muon with many small matrices of one shape: their Newton-Schulz iterations run stacked
(gradtx.transforms.orthogonalize._batches), with optax.contrib.muon's numbers (float64 via
jax) and those of one matrix at a time, in stacks cut to a size too."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import gradtx as gx
from gradtx.transforms import orthogonalize

STEPS = 8
# many equal wide and tall matrices, one of another shape, vectors and a scalar (Adam's)
SHAPES = [(6, 8)] * 5 + [(8, 6)] * 4 + [(5, 5), (7,), (7,), ()]


def _tree(seed):
    gen = torch.Generator().manual_seed(seed)
    return {f"p{i}": torch.randn(s, generator=gen, dtype=torch.float64) for i, s in enumerate(SHAPES)}


def _functional(tx, steps=STEPS):
    params = _tree(0)
    state = tx.init(params)
    for t in range(steps):
        updates, state = tx.update(_tree(100 + t), state, params)
        params = gx.apply_updates(params, updates)
    return params


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("adaptive", [False, True])
def test_stacked_matrices_match_optax(adaptive):
    jax = pytest.importorskip("jax")
    optax = pytest.importorskip("optax")
    from optax.contrib import MuonDimensionNumbers as D

    jax.config.update("jax_enable_x64", True)
    dims = {f"p{i}": D(1, 0) if len(s) == 2 else None for i, s in enumerate(SHAPES)}
    tx = optax.contrib.muon(0.02, beta=0.9, adaptive=adaptive, muon_weight_dimension_numbers=dims)
    params = {k: jax.numpy.asarray(v.numpy()) for k, v in _tree(0).items()}
    state = tx.init(params)
    step = jax.jit(tx.update)
    for t in range(STEPS):
        grads = {k: jax.numpy.asarray(v.numpy()) for k, v in _tree(100 + t).items()}
        updates, state = step(grads, state, params)
        params = optax.apply_updates(params, updates)
    got = _functional(gx.muon(0.02, beta=0.9, adaptive=adaptive))
    for k in got:
        torch.testing.assert_close(got[k], torch.from_numpy(np.asarray(params[k]).copy()), rtol=1e-10, atol=1e-12)
    assert float((got["p0"] - _tree(0)["p0"]).abs().max()) > 0.05


def test_stacks_cut_and_single_matrices_agree(monkeypatch):
    """Stacks of at most two matrices, and no stacking at all, give the same numbers."""
    whole = _functional(gx.muon(0.02))
    monkeypatch.setattr(orthogonalize, "_BATCH_TOTAL", 2 * 48)
    cut = _functional(gx.muon(0.02))
    monkeypatch.setattr(orthogonalize, "_BATCH_NUMEL", 0)
    alone = _functional(gx.muon(0.02))
    for k in whole:
        torch.testing.assert_close(cut[k], whole[k], rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(alone[k], whole[k], rtol=1e-12, atol=1e-14)


def test_stacked_under_optimizer_keeps_state_and_writes_no_grad():
    params = [torch.nn.Parameter(p.clone()) for p in _tree(0).values()]
    opt = gx.Optimizer(params, gx.muon(0.02, beta=0.9))
    for t in range(3):
        grads = list(_tree(100 + t).values())
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
        for p, g in zip(params, grads):
            assert torch.equal(p.grad, g)
    want = _functional(gx.muon(0.02, beta=0.9), steps=3)
    for p, w in zip(params, want.values()):
        torch.testing.assert_close(p.detach(), w, rtol=1e-12, atol=1e-14)


def test_stacked_outputs_differentiable_and_writable():
    """A hypergradient through stacked matrices, with a later part writing the updates in place."""
    lr = torch.tensor(0.02, dtype=torch.float64, requires_grad=True)
    tx = gx.chain(gx.scale_by_muon(), gx.add_decayed_weights(0.1), gx.scale_by_lr(lr))
    params = {k: v.requires_grad_(True) for k, v in _tree(0).items() if v.dim() == 2}
    scale = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    grads = {k: v * scale for k, v in _tree(100).items() if v.dim() == 2}  # gradients with a graph
    updates, _ = tx.update(grads, tx.init(params), params, inplace=True)
    direction, _ = gx.scale_by_muon().update(grads, gx.scale_by_muon().init(params))
    for u in direction.values():  # fresh tensors: a caller may write them in place
        u.mul_(2.0).mul_(lr)
    loss = sum((p + u).square().sum() for p, u in zip(params.values(), updates.values()))
    loss.backward()
    assert lr.grad is not None and torch.isfinite(lr.grad) and scale.grad is not None
