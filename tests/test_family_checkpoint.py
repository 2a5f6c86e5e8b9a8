"""gx.Optimizer checkpoints of the Adam and RMS families: saving after 5 steps, loading into a
fresh optimizer (``weights_only=True``) and going on gives the uninterrupted run bit for bit.

The families' states hold more than moments: SM3's per-axis lists, Adafactor's placeholders,
NAdam's float64 momentum product, ASGD's ``lr`` and averaged iterate, Rprop's step sizes.
"""

from __future__ import annotations

import pytest
import registry  # noqa: F401  (registry first: it imports the family files itself)
import torch
from conftest import MLPProblem, assert_resume_bit_exact
from registry_adam_family import ENTRIES as ADAM_ENTRIES
from registry_rms_family import ENTRIES as RMS_ENTRIES

import gradtx as gx

ENTRIES = ADAM_ENTRIES + RMS_ENTRIES
PARAMS = [pytest.param(e, id=e.name) for e in ENTRIES]


@pytest.mark.parametrize("entry", PARAMS)
def test_checkpoint_resume_is_bit_identical(entry):
    problem = MLPProblem(torch.float64)
    straight = assert_resume_bit_exact(lambda params: gx.Optimizer(list(params.values()), entry.build()),
                                       problem.leaf_params(), problem.loss, steps=10, split=5)
    assert not torch.equal(straight[-1]["w1"], problem.params0["w1"])
