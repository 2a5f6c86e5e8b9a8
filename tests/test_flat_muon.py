"""``gx.muon`` and ``gx.adafactor`` under ``gx.Optimizer(..., flat=True)``.

Their per-parameter state is not shaped like the parameter (muon's split keeps empty
tensors for the other side's leaves; adafactor's factored moments are a row and a column
vector per matrix), so the chain is stepped over per-parameter views of the flat buffers.
Checked here: the parameters and gradients do live in one buffer each, the trajectory is
the default path's over 50 steps (f32 to 1e-6, f64 to 1e-12 relative), the usual things
users do to gradients keep the numbers, and checkpoints move both ways and continue equal.
"""

from __future__ import annotations

import io

import pytest
import torch
from conftest import assert_close_to_scale, in_one_buffer, seeded_backward, seeded_params

import gradtx as gx

# matrices (muon's side, two of one shape), a conv weight, vectors and scalars (adam's side)
SHAPES = [(7, 5), (30,), (3, 4, 2, 2), (), (1,), (6, 6), (6, 6), (4, 9)]
REL = {torch.float32: 1e-6, torch.float64: 1e-12}
CHAINS = {
    "muon": lambda: gx.muon(0.02, weight_decay=0.01, adam_lr=0.01),
    "muon_conv_matrix": lambda: gx.muon(0.02, conv="matrix", adaptive=True, nesterov=False),
    "muon_torch": lambda: gx.muon(0.02, bias_correction=False, eps=1e-7, adjust_lr_fn="match_rms_adamw"),
    "adafactor": lambda: gx.adafactor(0.01),
}








def _train(opt, params, steps, start=0, skip_at=None):
    for step in range(start, start + steps):
        opt.zero_grad()
        seeded_backward(params, step, skip=(1, 2) if step == skip_at else (), cubic=True)
        opt.step()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", list(CHAINS))
def test_flat_matches_default_over_50_steps(name, dtype):
    results = []
    for flat in (False, True):
        params = seeded_params(SHAPES, dtype)
        opt = gx.Optimizer(params, CHAINS[name](), flat=flat)
        _train(opt, params, 50, skip_at=7)  # one step where backward reaches not every parameter
        if flat:
            assert in_one_buffer(params, grads_required=True)
        results.append(params)
    assert_close_to_scale(results[1], results[0], REL[dtype])


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
            assert in_one_buffer(params, grads_required=True)
        results.append(params)
    assert_close_to_scale(results[1], results[0], 1e-12)


@pytest.mark.parametrize("name", ["muon", "adafactor"])
@pytest.mark.parametrize("direction", ["flat_to_default", "default_to_flat"])
def test_checkpoints_move_between_flat_and_default(name, direction):
    source_flat = direction == "flat_to_default"
    # reference: 10 steps, then 10 more, on the default path throughout
    ref = seeded_params(SHAPES, torch.float64)
    opt = gx.Optimizer(ref, CHAINS[name]())
    _train(opt, ref, 20)
    # 10 steps one way, saved (torch.save / weights_only load), loaded into the other, 10 more
    params = seeded_params(SHAPES, torch.float64)
    opt = gx.Optimizer(params, CHAINS[name](), flat=source_flat)
    _train(opt, params, 10)
    buf = io.BytesIO()
    torch.save({"params": [p.detach().clone() for p in params], "opt": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    resumed = [torch.nn.Parameter(x) for x in saved["params"]]
    opt2 = gx.Optimizer(resumed, CHAINS[name](), flat=not source_flat)
    opt2.load_state_dict(saved["opt"])
    _train(opt2, resumed, 10, start=10)
    if not source_flat:
        assert in_one_buffer(resumed, grads_required=True)
    assert_close_to_scale(resumed, ref, 1e-12)


def test_a_users_transform_is_still_refused():
    user = gx.stateless(lambda u, p: u)
    with pytest.raises(ValueError, match="(?s)flat=True runs chains.*neither: .*stateless.*use flat=False"):
        gx.Optimizer(seeded_params(SHAPES, torch.float32), gx.chain(user, gx.muon(1e-3)), flat=True)
