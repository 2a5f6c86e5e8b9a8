"""``gx.Optimizer(..., flat=True)`` with per-tensor norms: segmented chains on flat buffers.

Every registry alias whose chain is segmented (lamb, lars, fromage: a trust ratio per
tensor, computed per segment of the flat buffer) runs 50 steps flat and on the default path
and agrees to round-off (f32 1e-6, f64 1e-12 relative), with the fast path taken (one
buffer); ``Segments``' reductions are checked against a norm of each tensor on its own;
checkpoints move both ways; chains the flat path cannot run are refused (naming
``flat=True``) or, for a global norm over every param group, run on the default path.
"""

from __future__ import annotations

import io
import warnings

import pytest
import torch
from conftest import assert_close_to_scale, in_one_buffer, seeded_backward, seeded_params
from registry import ENTRIES

import gradtx as gx
from gradtx._segments import Segments
from gradtx.base import flat_blocking_parts

# muon and adafactor are segmented too (Newton-Schulz, factored moments per run of equal
# shapes), with a buffer per kind of state (muon's split; adafactor's factored tensors apart):
# tests/test_flat_muon.py, tests/test_flat_adafactor.py
SEGMENTED = [e for e in ENTRIES if e.kind == "alias" and gx.is_leafwise(e.build())
             and not gx.is_elementwise(e.build()) and not flat_blocking_parts(e.build())
             and e.name not in ("muon", "adafactor")]
# repeated sizes (runs of equal segments), scalars, an empty tensor
SHAPES = [(7, 5), (30,), (3, 4, 2), (), (1,), (6, 6), (6, 6), (), (0, 3), (36,), (5, 7), ()]
REL = {torch.float32: 1e-6, torch.float64: 1e-12}






def _steps(opt, params, n, start=0):
    for step in range(start, start + n):
        opt.zero_grad()
        seeded_backward(params, step)
        opt.step()
    return params




def test_the_segmented_aliases_are_found():
    assert {"lamb", "lars", "fromage"} <= {e.name for e in SEGMENTED}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("entry", SEGMENTED, ids=[e.name for e in SEGMENTED])
def test_segmented_alias_flat_matches_default(entry, dtype):
    results = []
    for flat in (False, True):
        params = seeded_params(SHAPES, dtype)
        opt = gx.Optimizer(params, entry.build(), flat=flat)
        _steps(opt, params, 50)
        if flat:
            assert in_one_buffer(params)
        results.append(params)
    assert_close_to_scale(results[1], results[0], REL[dtype])


@pytest.mark.parametrize("tx", [
    lambda: gx.lamb(0.02, weight_decay=0.1, eps=1e-4),
    lambda: gx.lars(0.5, weight_decay=1e-3, nesterov=True),
    lambda: gx.chain(gx.scale_by_adam(), gx.scale_by_trust_ratio(min_norm=0.5, trust_coefficient=0.3, eps=1e-3),
                     gx.scale_by_lr(0.02)),
    lambda: gx.chain(gx.trace(0.9), gx.scale_by_param_block_norm(0.1), gx.scale_by_lr(0.01)),
    lambda: gx.chain(gx.clip_by_block_rms(0.05), gx.scale_by_adam(), gx.scale_by_lr(0.02)),
    lambda: gx.chain(gx.scale_by_adam(), gx.scale_by_param_block_rms(0.1), gx.scale_by_lr(0.02)),
], ids=["lamb", "lars_nesterov", "trust_ratio_options", "param_block_norm", "clip_by_block_rms",
        "param_block_rms"])
def test_segmented_chains_with_two_param_groups(tx):
    """Two groups (one with another learning rate and decay): a layout and segments per group."""
    results = []
    for flat in (False, True):
        params = seeded_params(SHAPES, torch.float64)
        opt = gx.Optimizer([{"params": params[:5]}, {"params": params[5:], "lr": 0.003}], tx(), flat=flat)
        _steps(opt, params, 30)
        if flat:
            assert in_one_buffer(params[:5]) and in_one_buffer(params[5:])
        results.append(params)
    assert_close_to_scale(results[1], results[0], 1e-12)


def test_segments_reduce_each_tensor_on_its_own():
    gen = torch.Generator().manual_seed(0)
    shapes = [(), (), (4, 4), (16,), (0,), (3,), (2, 3)]
    xs = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    flat = torch.cat([x.reshape(-1) for x in xs])
    seg = Segments([torch.Size(s) for s in shapes])
    assert len(seg.runs) == 5  # (), () | (4,4), (16,) | (0,) | (3,) | (2,3)
    expected = torch.stack([torch.sqrt((x * x).sum()) for x in xs])
    torch.testing.assert_close(seg.norms(flat), expected, rtol=1e-15, atol=0)
    rms = torch.stack([torch.sqrt((x * x).mean()) if x.numel() else torch.zeros((), dtype=x.dtype) for x in xs])
    torch.testing.assert_close(seg.rms(flat), rms, rtol=1e-15, atol=0)
    factors = torch.arange(1.0, len(xs) + 1, dtype=torch.float64)
    scaled = seg.scale(flat, factors, inplace=False)
    torch.testing.assert_close(scaled, torch.cat([(x * f).reshape(-1) for x, f in zip(xs, factors)]))
    assert [v.shape for v in seg.views(scaled)] == [torch.Size(s) for s in shapes]
    seg.scale(flat, factors, inplace=True)
    torch.testing.assert_close(flat, scaled, rtol=0, atol=0)
    c = torch.randn(10, dtype=torch.complex128, generator=gen)  # a complex tensor: norms over |x|
    torch.testing.assert_close(Segments([torch.Size([4]), torch.Size([6])]).norms(c),
                               torch.stack([c[:4].abs().square().sum().sqrt(), c[4:].abs().square().sum().sqrt()]))


@pytest.mark.parametrize("direction", ["flat_to_default", "default_to_flat"])
def test_lamb_checkpoints_move_between_flat_and_default(direction):
    src_flat = direction == "flat_to_default"
    params = seeded_params(SHAPES, torch.float64)
    opt = gx.Optimizer(params, gx.lamb(0.02, weight_decay=0.01), flat=src_flat)
    _steps(opt, params, 4)
    buf = io.BytesIO()
    torch.save({"params": [p.detach() for p in params], "opt": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    _steps(opt, params, 4, start=4)

    restored = [torch.nn.Parameter(p.clone()) for p in saved["params"]]
    other = gx.Optimizer(restored, gx.lamb(0.02, weight_decay=0.01), flat=not src_flat)
    other.load_state_dict(saved["opt"])
    _steps(other, restored, 4, start=4)
    assert_close_to_scale(restored, params, 1e-12)
    a, b = opt.state_dict(), other.state_dict()
    assert a["state"].keys() == b["state"].keys()
    for k in a["state"]:
        for path in a["state"][k]:
            torch.testing.assert_close(a["state"][k][path], b["state"][k][path], rtol=1e-12, atol=1e-14)


def test_frozen_and_replaced_parameters_with_lamb():
    def train(flat):
        params = seeded_params(SHAPES, torch.float64)
        opt = gx.Optimizer(params, gx.lamb(0.02, weight_decay=0.01), flat=flat)
        _steps(opt, params, 3)
        params[2].requires_grad_(False)  # frozen: no gradient from now on
        params[2].grad = None
        for step in range(3, 6):
            opt.zero_grad(set_to_none=True)
            seeded_backward([p for i, p in enumerate(params) if i != 2], step)
            opt.step()
        return params
    assert_close_to_scale(train(True), train(False), 1e-12)


def test_a_masked_trust_ratio_is_refused_naming_flat():
    # a mask picks leaves, which a flat buffer does not have
    with pytest.raises(ValueError, match="flat=True runs chains.*use flat=False"):
        gx.Optimizer(seeded_params(SHAPES, torch.float32), gx.lars(0.1, trust_ratio_mask=lambda p: gx.tree_map(
            lambda x: x.dim() > 1, p)), flat=True)


def test_a_global_norm_over_the_groups_runs_on_the_default_path():
    """clip_by_global_norm sees every param group at once: with flat=True the step is the
    default path's (the same numbers; the parameters stay where they are)."""
    def tx():
        return gx.chain(gx.clip_by_global_norm(1.0), gx.adamw(0.02, weight_decay=0.01))
    results = []
    for flat in (False, True):
        params = seeded_params(SHAPES, torch.float32)
        if flat:  # said at construction, not left for the user to find by timing it
            with pytest.warns(UserWarning, match=r"flat=True has no effect.*clip_by_global_norm.*clip_grad_norm_"):
                opt = gx.Optimizer([{"params": params[:5]}, {"params": params[5:]}], tx(), flat=True)
        else:
            opt = gx.Optimizer([{"params": params[:5]}, {"params": params[5:]}], tx())
        _steps(opt, params, 20)
        results.append(params)
        if flat:  # the parameters were not moved into a buffer
            assert len({p.untyped_storage().data_ptr() for p in params}) == len(params)
    assert_close_to_scale(results[1], results[0], 0.0)


def test_flat_chains_without_a_global_part_do_not_warn():
    for tx in (gx.adamw(0.01), gx.lamb(0.01), gx.muon(0.01), gx.chain(gx.clip_value(1.0), gx.lars(0.1))):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            gx.Optimizer(seeded_params(SHAPES, torch.float32), tx, flat=True)


def test_lamb_over_two_dtypes_and_an_added_group():
    """float32 and float64 parameters in one group (a buffer and its segments per dtype), and a
    group added after some steps."""
    def train(flat):
        params = seeded_params(SHAPES, torch.float64)
        for i in (1, 4, 6, 9):
            params[i] = torch.nn.Parameter(params[i].detach().float())
        opt = gx.Optimizer(params[:8], gx.lamb(0.02, weight_decay=0.01), flat=flat)
        for step in range(5):
            opt.zero_grad()
            seeded_backward(params[:8], step)
            opt.step()
        if flat:  # a buffer per dtype
            assert len({p.untyped_storage().data_ptr() for p in params[:8]}) == 2
        opt.add_param_group({"params": params[8:], "lr": 0.005})
        _steps(opt, params, 5, start=5)
        if flat:
            assert len({p.untyped_storage().data_ptr() for p in params}) == 4
        return params
    default, flat = train(False), train(True)
    for a, b in zip(flat, default):
        assert_close_to_scale([a], [b], REL[b.dtype])


@pytest.mark.parametrize("tx", [lambda: gx.lamb(0.02, weight_decay=0.01),
                                lambda: gx.chain(gx.clip_by_block_rms(0.05), gx.scale_by_param_block_rms(0.1),
                                                 gx.scale_by_lr(0.02))], ids=["lamb", "block_rms"])
def test_complex_parameters(tx):
    """Complex segments: norms over |x|, rms over the real components (as the default path's
    real views)."""
    results = []
    for flat in (False, True):
        gen = torch.Generator().manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=torch.complex128)) for s in SHAPES]
        opt = gx.Optimizer(params, tx(), flat=flat, check_descent=False)  # its check reads real parts
        for step in range(10):
            opt.zero_grad()
            g = torch.Generator().manual_seed(100 + step)
            for p in params:
                p.grad = torch.randn(p.shape, generator=g, dtype=p.dtype) if p.grad is None else p.grad.copy_(
                    torch.randn(p.shape, generator=g, dtype=p.dtype))
            opt.step()
        if flat:
            assert in_one_buffer(params)
        results.append(params)
    assert_close_to_scale(results[1], results[0], 1e-12)


def test_a_parameter_backward_did_not_reach_is_found_in_a_sorted_layout():
    """After ``zero_grad()`` (set_to_none) the parameters backward did not reach are found by
    their place in the buffer, which the segmented layout sorts by size: the others step."""
    results = []
    for flat in (False, True):
        params = seeded_params(SHAPES, torch.float64)
        opt = gx.Optimizer(params, gx.lamb(0.02), flat=flat)
        for step in range(6):
            opt.zero_grad()
            seeded_backward(params, step, skip=(1, 2) if step == 3 else ())
            opt.step()
        results.append(params)
    assert_close_to_scale(results[1], results[0], 1e-12)
