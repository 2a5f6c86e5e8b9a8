"""``gx.muon`` and ``gx.adafactor`` under ``gx.Optimizer(..., flat=True)``.

Muon runs flat: its matrices in one buffer, the other leaves in another (each side's state
flat over its buffer and empty over the other's), Newton-Schulz batched over runs of equal
shapes viewed in the buffer, Adam over the rest as one tensor. Adafactor runs flat too (its
factored moments concatenated per buffer: see test_flat_adafactor.py); muon with a callable
``weight_decay_mask`` steps per-parameter views of one buffer. Checked here: where the parameters, gradients and state
live, the trajectory is the default path's over 50 steps (f32 to 1e-6, f64 to 1e-12
relative), the usual things users do to gradients and parameter lists keep the numbers, and
checkpoints move both ways and continue equal.
"""

from __future__ import annotations

import pytest
import torch
from conftest import (
    assert_close_to_scale,
    checkpoint_across_flat,
    flat_and_default,
    in_one_buffer,
    seeded_backward,
    seeded_params,
)

import gradtx as gx
from gradtx.transforms import orthogonalize

# matrices (muon's side; three of one shape, a tall one, an empty one), a conv weight, vectors, scalars
SHAPES = [(7, 5), (30,), (3, 4, 2, 2), (), (1,), (6, 6), (6, 6), (4, 9), (6, 6), (9, 4), (2,), (0, 3)]
REL = {torch.float32: 1e-6, torch.float64: 1e-12}


def _no_decay_on_tall(params):
    return gx.tree_map(lambda p: p.shape[0] <= p.shape[-1] if p.dim() >= 2 else False, params)


CHAINS = {
    "muon": lambda: gx.muon(0.02, weight_decay=0.01, adam_lr=0.01),
    "muon_conv_matrix": lambda: gx.muon(0.02, conv="matrix", adaptive=True, nesterov=False),
    "muon_torch": lambda: gx.muon(0.02, bias_correction=False, eps=1e-7, adjust_lr_fn="match_rms_adamw"),
    "muon_plain": lambda: gx.muon(0.02, bias_correction=False, nesterov=False, conv="matrix", weight_decay=0.1,
                                  adam_weight_decay=0.01),
    "muon_bias_corrected": lambda: gx.muon(0.02, nesterov=False, adaptive=True, weight_decay=0.05,
                                           mu_dtype=torch.float64),
    "muon_callable_mask": lambda: gx.muon(0.02, weight_decay=0.01, weight_decay_mask=_no_decay_on_tall),
    "adafactor": lambda: gx.adafactor(0.01),
    # scale_by_muon alone: conv weights are batches of matrices, vectors and scalars pass through
    "scale_by_muon": lambda: gx.chain(gx.scale_by_muon(nesterov=False), gx.scale_by_lr(0.002)),
}
# the chains stepped over per-parameter views of one buffer rather than flat
PER_PARAMETER = ("muon_callable_mask",)


def _is_muons(name: str, p: torch.Tensor) -> bool:
    """Whether muon's side of chain ``name`` holds ``p`` (conv weights too with conv="matrix")."""
    return p.dim() >= 2 if name in ("muon_conv_matrix", "muon_plain", "scale_by_muon") else p.dim() == 2


def _storages(tensors) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in tensors}


def assert_laid_out(name: str, opt, params) -> None:
    """Flat muon: each side's parameters in a buffer of their own, their gradients too, and
    each side's state (as the adapter shows it) views of one flat tensor; the per-parameter
    chains: everything in one buffer."""
    if name in PER_PARAMETER:
        assert in_one_buffer(params, grads_required=True)
        return
    if name == "adafactor":
        assert_state_flat(opt, params)
        return
    sides = [[p for p in params if _is_muons(name, p)], [p for p in params if not _is_muons(name, p)]]
    for side in sides:
        assert len(_storages(side)) == 1 and len(_storages(p.grad for p in side)) == 1
        for key in opt.state[side[0]]:
            values = [opt.state[p][key] for p in side]
            if values[0].numel():  # this side's state: one flat tensor
                assert len(_storages(values)) == 1
            else:  # the other side's: empty throughout
                assert all(v.numel() == 0 for v in values)
    assert _storages(sides[0]).isdisjoint(_storages(sides[1]))


def assert_state_flat(opt, params) -> None:
    """Per buffer of parameters (their gradients in one other), each path of their state (as
    the adapter shows it) views of one flat tensor that no other buffer's state shares."""
    buckets: dict[int, list] = {}
    for p in params:
        buckets.setdefault(p.untyped_storage().data_ptr(), []).append(p)
    seen: set[int] = set()
    for side in buckets.values():
        assert len(_storages(p.grad for p in side)) == 1
        for key in opt.state[side[0]]:
            values = [opt.state[p][key] for p in side]
            if all(v.numel() for v in values):
                assert len(_storages(values)) == 1, key
                assert seen.isdisjoint(_storages(values)), key
                seen |= _storages(values)


def _train(opt, params, steps, start=0, skip_at=None):
    for step in range(start, start + steps):
        opt.zero_grad()
        seeded_backward(params, step, skip=(1, 2) if step == skip_at else (), cubic=True)
        opt.step()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", list(CHAINS))
def test_flat_matches_default_over_50_steps(name, dtype):
    (ref, _), (got, got_opt) = flat_and_default(CHAINS[name], SHAPES, dtype, _train)
    assert_laid_out(name, got_opt, got)
    assert_close_to_scale(got, ref, REL[dtype])


@pytest.mark.parametrize("shapes", [[(30,), (), (2,)], [(6, 6), (4, 9), (6, 6)]], ids=["no_matrices", "only_matrices"])
@pytest.mark.parametrize("name", ["muon", "muon_conv_matrix"])
def test_one_side_empty(name, shapes):
    """A model with nothing on one side of the split: one buffer, the other side's state empty."""
    results = []
    for flat in (False, True):
        params = seeded_params(shapes, torch.float64)
        opt = gx.Optimizer(params, CHAINS[name](), flat=flat)
        _train(opt, params, 20)
        if flat:
            assert in_one_buffer(params, grads_required=True)
        results.append(params)
    assert_close_to_scale(results[1], results[0], 1e-12)


def test_runs_batched_as_the_default_path(monkeypatch):
    """Runs of equal shapes split as the default path batches them: small matrices at most
    ``_BATCH_TOTAL`` elements a batch, a remainder of one alone, larger ones one by one."""
    monkeypatch.setattr(orthogonalize, "_BATCH_NUMEL", 30)  # (6, 6), (7, 5), (4, 9) one by one
    monkeypatch.setattr(orthogonalize, "_BATCH_TOTAL", 12)  # (2, 3) two a batch: 2 + 2 + 1
    shapes = [(2, 3), (6, 6), (2, 3), (7, 5), (2, 3), (6, 6), (30,), (2, 3), (4, 9), (2, 3)]
    for dtype in (torch.float32, torch.float64):
        results = []
        for flat in (False, True):
            params = seeded_params(shapes, dtype)
            opt = gx.Optimizer(params, CHAINS["muon_torch"](), flat=flat)
            _train(opt, params, 50)
            results.append(params)
        assert_close_to_scale(results[1], results[0], REL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", ["muon", "muon_plain"])
def test_large_buffers_with_kept_temporaries(name, dtype):
    """Tensors large enough (2^16 elements and more) that the flat step's out-of-place ops write
    into temporaries kept between steps: the default path's numbers, the state not disturbed."""
    shapes = [(300, 256), (70_000,), (3, 4, 2, 2), (), (256, 300), (40_000,)]
    (ref, ref_opt), (got, got_opt) = flat_and_default(CHAINS[name], shapes, dtype, _train, 12, 5)
    assert_laid_out(name, got_opt, got)
    if name == "muon":  # nesterov Adam's temporaries kept (its side: 110,049 elements)
        assert 110_049 in [b.numel() for b in got_opt._flat._layouts[0].temporaries.buffers]
    assert_close_to_scale(got, ref, REL[dtype])
    for p, q in zip(got, ref):  # the state too (the momentum, Adam's moments)
        assert_close_to_scale(list(got_opt.state[p].values()), list(ref_opt.state[q].values()), REL[dtype])


def test_two_dtypes_in_one_group():
    """A buffer per dtype and side: four buffers, the default path's numbers."""
    results = []
    for flat in (False, True):
        params = seeded_params(SHAPES, torch.float64)
        for i in (0, 1, 5, 3):  # a matrix of a run of three, a vector, a scalar, a lone matrix
            params[i] = torch.nn.Parameter(params[i].detach().float())
        opt = gx.Optimizer(params, CHAINS["muon"](), flat=flat)
        _train(opt, params, 30)
        if flat:
            assert len(_storages(params)) == 4
        results.append(params)
    for a, b in zip(results[1], results[0]):
        assert_close_to_scale([a], [b], REL[b.dtype])


def test_gradients_replaced_and_model_zero_grad_keep_the_numbers():
    results = []
    for flat in (False, True):
        params = seeded_params(SHAPES, torch.float64)
        opt = gx.Optimizer(params, CHAINS["muon"](), flat=flat)
        for step in range(12):
            if step % 3 == 0:
                for p in params:  # model.zero_grad(): new gradients, gathered back into the buffer
                    p.grad = None
            else:
                opt.zero_grad(set_to_none=False)
            seeded_backward(params, step, cubic=True)
            if step == 5:  # a gradient assigned after backward
                params[0].grad = params[0].grad * 2
            opt.step()
        if flat:
            assert_laid_out("muon", opt, params)
        results.append(params)
    assert_close_to_scale(results[1], results[0], 1e-12)


@pytest.mark.parametrize("name", ["muon", "muon_conv_matrix"])
def test_replaced_and_added_parameters(name):
    """A parameter replaced in the group's list starts afresh, a param group added later is
    laid out on its own, a parameter backward does not reach after zero_grad(set_to_none)
    is skipped: the default path's numbers throughout."""
    results = []
    for flat in (False, True):
        params = seeded_params(SHAPES + [(5, 3), (3,)], torch.float64)
        opt = gx.Optimizer(params[:len(SHAPES)], CHAINS[name](), flat=flat)
        _train(opt, params[:len(SHAPES)], 5)
        new = torch.nn.Parameter(torch.full((6, 6), 0.5, dtype=torch.float64))
        opt.param_groups[0]["params"][5] = params[5] = new
        opt.add_param_group({"params": params[len(SHAPES):], "lr": 0.01})
        for step in range(5, 15):
            opt.zero_grad()  # set_to_none: parameters 0 and 1 not reached at step 9
            seeded_backward(params, step, skip=(0, 1) if step == 9 else (), cubic=True)
            opt.step()
        if flat:
            assert_laid_out(name, opt, params[:len(SHAPES)])
        results.append(params)
    assert_close_to_scale(results[1], results[0], 1e-12)


@pytest.mark.parametrize("name", ["muon", "muon_conv_matrix", "muon_callable_mask", "adafactor"])
@pytest.mark.parametrize("direction", ["flat_to_default", "default_to_flat"])
def test_checkpoints_move_between_flat_and_default(name, direction):
    source_flat = direction == "flat_to_default"
    resumed, ref, opt2 = checkpoint_across_flat(CHAINS[name], SHAPES, _train, source_flat)
    if not source_flat:
        assert_laid_out(name, opt2, resumed)
    assert_close_to_scale(resumed, ref, 1e-12)


def test_a_users_transform_is_still_refused():
    user = gx.stateless(lambda u, p: u)
    with pytest.raises(ValueError, match="(?s)flat=True runs chains.*neither: .*stateless.*use flat=False"):
        gx.Optimizer(seeded_params(SHAPES, torch.float32), gx.chain(user, gx.muon(1e-3)), flat=True)
