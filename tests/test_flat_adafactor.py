"""``gx.adafactor`` under ``gx.Optimizer(..., flat=True)``: factored moments on flat buffers.

The layout puts the factored tensors apart from the others (their state leaves are a row and
a column vector and a ``(1,)`` placeholder; the others' a full moment and two placeholders),
and each state path of a buffer is one flat tensor, the buffer's parameters' leaves end to
end; the factored update runs per run of equal shapes. Checked against the default path
(the per-parameter loop, itself checked against torch.optim.Adafactor and optax in
test_rms_family.py): 50 steps on a mixed model (vectors, scalars, an empty tensor, matrices
below and above ``min_dim_size_to_factor``, 3-D and 4-D tensors, runs of equal shapes) to f32
1e-6 and f64 1e-12 relative, the state too; checkpoints both ways; a parameter backward did
not reach after ``zero_grad(set_to_none=True)``, a replaced parameter, an added param group.
"""

from __future__ import annotations

import pytest
import torch
from conftest import (
    assert_close_to_scale,
    assert_resume_bit_exact,
    checkpoint_across_flat,
    flat_and_default,
    seeded_backward,
    seeded_params,
)
from test_flat_muon import assert_state_flat

import gradtx as gx
from gradtx import _foreach as F  # noqa: N812
from gradtx.transforms import factored

# with min_dim_size_to_factor=4: (6, 6) x3, (4, 9), (9, 4), (5, 4, 6), (2, 3, 4, 5) and (8, 4)
# factored; (7, 3), (3, 4, 2, 2) not; vectors, scalars, (1,), an empty tensor
SHAPES = [(7, 3), (30,), (3, 4, 2, 2), (), (1,), (6, 6), (6, 6), (4, 9), (6, 6), (9, 4), (2,), (0, 3),
          (5, 4, 6), (2, 3, 4, 5), (8, 4), (), (30,)]
REL = {torch.float32: 1e-6, torch.float64: 1e-12}

CHAINS = {
    "small_factored": lambda: gx.adafactor(0.01, min_dim_size_to_factor=4),
    "momentum_decay": lambda: gx.adafactor(0.01, min_dim_size_to_factor=4, momentum=0.9, weight_decay_rate=0.01,
                                           decay_rate=0.7),
    # torch.optim.Adafactor's form: every matrix factored, eps=0 (its clamps), no clipping
    "torch_form": lambda: gx.adafactor(0.01, min_dim_size_to_factor=1, eps=0.0, clipping_threshold=None,
                                       multiply_by_parameter_scale=False, weight_decay_rate=0.01),
    "unfactored": lambda: gx.adafactor(0.01, factored=False, momentum=0.5),
    "default": lambda: gx.adafactor(0.01),  # min_dim_size_to_factor=128: nothing here factored
    "scale_by_factored_rms": lambda: gx.chain(gx.scale_by_factored_rms(min_dim_size_to_factor=3, decay_rate=0.6),
                                              gx.scale_by_lr(0.003)),
}


def _train(opt, params, steps, start=0, skip_at=None):
    for step in range(start, start + steps):
        opt.zero_grad()
        seeded_backward(params, step, skip=(1, 5) if step == skip_at else (), cubic=True)
        opt.step()


def _flat_ran(opt) -> bool:
    layout = opt._flat._layouts.get(0)
    return layout is not None and layout != "disabled" and layout.canonical is opt._chain_states[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", list(CHAINS))
def test_flat_matches_default_over_50_steps(name, dtype):
    (ref, ref_opt), (got, got_opt) = flat_and_default(CHAINS[name], SHAPES, dtype, _train)
    assert _flat_ran(got_opt)
    assert_state_flat(got_opt, got)
    assert_close_to_scale(got, ref, REL[dtype])
    for p, q in zip(got, ref):  # the moments (rows, columns, full, placeholders) and momentum
        assert list(got_opt.state[p]) == list(ref_opt.state[q])
        for key in ref_opt.state[q]:
            assert got_opt.state[p][key].shape == ref_opt.state[q][key].shape, key
        assert_close_to_scale(list(got_opt.state[p].values()), list(ref_opt.state[q].values()), REL[dtype])


def test_factored_tensors_lie_apart():
    """Three buffers here: the factored tensors, the others, and (1,) (its placeholders are
    shaped like it, so its state is full everywhere); a factored tensor's row moment is a
    view of one flat tensor holding every factored tensor's rows in buffer order."""
    params = seeded_params(SHAPES, torch.float64)
    opt = gx.Optimizer(params, CHAINS["small_factored"](), flat=True)
    _train(opt, params, 2)
    factored = [p for p, s in zip(params, SHAPES) if len(s) >= 2 and sorted(s)[-2] >= 4]
    others = [p for p in params if all(p is not q for q in factored)]
    ptr = lambda x: x.untyped_storage().data_ptr()  # noqa: E731
    assert len({ptr(p) for p in factored}) == 1
    assert len({ptr(p) for p in others if p.shape != (1,)}) == 1
    assert len({ptr(p) for p in params}) == 3
    rows = [opt.state[p]["[0].v_row"] for p in factored]
    assert len({ptr(r) for r in rows}) == 1
    assert sum(r.numel() for r in rows) * rows[0].element_size() <= rows[0].untyped_storage().nbytes()
    # the (6, 6) run: (6,) rows side by side
    six = [opt.state[p]["[0].v_row"] for p in factored if p.shape == (6, 6)]
    assert [r.data_ptr() - six[0].data_ptr() for r in six] == [0, 6 * 8, 12 * 8]


@pytest.mark.parametrize("name", ["small_factored", "momentum_decay", "torch_form"])
@pytest.mark.parametrize("direction", ["flat_to_default", "default_to_flat"])
def test_checkpoints_move_between_flat_and_default(name, direction):
    source_flat = direction == "flat_to_default"
    resumed, ref, opt2 = checkpoint_across_flat(CHAINS[name], SHAPES, _train, source_flat)
    if not source_flat:
        assert _flat_ran(opt2)
        assert_state_flat(opt2, resumed)
    assert_close_to_scale(resumed, ref, 1e-12)


def test_flat_resume_is_bit_exact():
    shapes = {f"p{i}": s for i, s in enumerate(SHAPES)}
    params = {k: p for k, p in zip(shapes, seeded_params(SHAPES, torch.float64))}

    def loss(ps, t):
        gen = torch.Generator().manual_seed(t)
        return sum(((torch.randn(p.shape, generator=gen, dtype=p.dtype) * p).sum() + (p ** 4).sum() / 4
                    for p in ps.values()), torch.zeros((), dtype=torch.float64))

    assert_resume_bit_exact(lambda ps: gx.Optimizer(list(ps.values()), CHAINS["momentum_decay"](), flat=True),
                            params, loss, steps=12, split=5)


def test_replaced_and_added_parameters():
    """A parameter replaced in the group's list starts afresh, a param group added later is
    laid out on its own, parameters backward does not reach after zero_grad(set_to_none) are
    skipped: the default path's numbers throughout."""
    extra = [(6, 6), (3,), (5, 8)]
    results = []
    for flat in (False, True):
        params = seeded_params(SHAPES + extra, torch.float64)
        opt = gx.Optimizer(params[:len(SHAPES)], CHAINS["momentum_decay"](), flat=flat)
        _train(opt, params[:len(SHAPES)], 5)
        new = torch.nn.Parameter(torch.full((6, 6), 0.5, dtype=torch.float64))
        opt.param_groups[0]["params"][5] = params[5] = new
        opt.add_param_group({"params": params[len(SHAPES):], "lr": 0.02})
        for step in range(5, 15):
            opt.zero_grad()  # set_to_none: a vector and a factored matrix not reached at step 9
            seeded_backward(params, step, skip=(1, 6) if step == 9 else (), cubic=True)
            opt.step()
        if flat:
            assert _flat_ran(opt)
            assert_state_flat(opt, params[:len(SHAPES)])
        results.append(params)
    assert_close_to_scale(results[1], results[0], 1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", ["default", "torch_form", "unfactored"])
def test_large_buffers_with_kept_temporaries(name, dtype, monkeypatch):
    """Tensors of 2^16 elements and more, factored at the default min_dim_size_to_factor=128
    (a run of two, a lone 3-D one) or not (a long vector): the squares and scalings go into
    temporaries kept between steps (from 64 KiB here, 32 MiB by default); the default path's
    numbers and state."""
    monkeypatch.setattr(F, "_KEEP_ABOVE", 1 << 16)
    shapes = [(300, 256), (70_000,), (3, 4, 2, 2), (), (300, 256), (2, 260, 130), (130, 5)]
    (ref, ref_opt), (got, got_opt) = flat_and_default(CHAINS[name], shapes, dtype, _train, 12, 5)
    assert _flat_ran(got_opt)
    assert_state_flat(got_opt, got)
    assert got_opt._flat._layouts[0].temporaries.buffers  # drawn
    assert_close_to_scale(got, ref, REL[dtype])
    for p, q in zip(got, ref):
        assert_close_to_scale(list(got_opt.state[p].values()), list(ref_opt.state[q].values()), REL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_runs_split_into_batches(dtype, monkeypatch):
    """Runs longer than ``_BATCH_NUMEL`` elements go in batches: (6, 6) two at a time (2 + 1),
    (5, 4, 6) and (2, 3, 4, 5) alone; the default path's numbers."""
    monkeypatch.setattr(factored, "_BATCH_NUMEL", 80)
    shapes = SHAPES + [(6, 6), (5, 4, 6)]
    results = []
    for flat in (False, True):
        params = seeded_params(shapes, dtype)
        opt = gx.Optimizer(params, CHAINS["torch_form"](), flat=flat)
        _train(opt, params, 50)
        if flat:
            assert _flat_ran(opt)
        results.append(params)
    assert_close_to_scale(results[1], results[0], REL[dtype])
