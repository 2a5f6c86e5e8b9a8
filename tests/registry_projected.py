"""Registry entries for chains run in a projected space."""

from __future__ import annotations

from registry import Entry

import gradtx as gx


def _adam_in(projection):
    return gx.chain(gx.in_projected_space(gx.scale_by_adam(), projection), gx.scale_by_lr(0.05))


ENTRIES = [
    # the example params' 4x3 matrix is projected to rank 1; its vector and scalar pass through
    Entry("in_projected_space", lambda: _adam_in(gx.galore_projection(rank=1, update_every=3, scale=1.0)),
          "GaLore (Zhao et al., 2024), the rule written in test_projected.py"),
]
NOT_TRANSFORMS = {"Projection", "InProjectedSpaceState", "galore_projection", "dct_projection", "fft_projection",
                  "block_projection", "flat_projection"}
