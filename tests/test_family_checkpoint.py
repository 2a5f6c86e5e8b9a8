"""gx.Optimizer checkpoints of the Adam and RMS families: saving after 5 steps, loading into a
fresh optimizer (``weights_only=True``) and going on gives the uninterrupted run bit for bit.

The families' states hold more than moments: SM3's per-axis lists, Adafactor's placeholders,
NAdam's float64 momentum product, ASGD's ``lr`` and averaged iterate, Rprop's step sizes.
"""

from __future__ import annotations

import io

import pytest
import registry  # noqa: F401  (registry first: it imports the family files itself)
import torch
from conftest import MLPProblem
from registry_adam_family import ENTRIES as ADAM_ENTRIES
from registry_rms_family import ENTRIES as RMS_ENTRIES

import gradtx as gx

ENTRIES = ADAM_ENTRIES + RMS_ENTRIES
PARAMS = [pytest.param(e, id=e.name) for e in ENTRIES]


def _run(problem, build, steps, split=None):
    params = problem.leaf_params()
    opt = gx.Optimizer(list(params.values()), build())
    for t in range(steps):
        if t == split:
            buf = io.BytesIO()
            torch.save(opt.state_dict(), buf)
            buf.seek(0)
            params = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
            opt = gx.Optimizer(list(params.values()), build())
            opt.load_state_dict(torch.load(buf, weights_only=True))
        opt.zero_grad()
        problem.loss(params, t).backward()
        opt.step()
    return {k: v.detach() for k, v in params.items()}


@pytest.mark.parametrize("entry", PARAMS)
def test_checkpoint_resume_is_bit_identical(entry):
    problem = MLPProblem(torch.float64)
    straight = _run(problem, entry.build, 10)
    resumed = _run(problem, entry.build, 10, split=5)
    assert not torch.equal(straight["w1"], problem.params0["w1"])
    for k in straight:
        assert torch.equal(resumed[k], straight[k]), k
