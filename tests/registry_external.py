"""Registry entries for external torch optimizers as chain members."""

from __future__ import annotations

import torch
from registry import Entry

import gradtx as gx

ENTRIES = [
    Entry("wrap_optimizer", lambda: gx.wrap_optimizer(torch.optim.Adam, lr=0.05), "torch.optim.Adam", kind="alias"),
]
NOT_TRANSFORMS = {"WrappedOptimizerState"}
