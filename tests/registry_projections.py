"""Registry entries: project_params (projected gradient descent); the projections themselves
are functions of trees."""

from __future__ import annotations

from registry import Entry

import gradtx as gx

ENTRIES = [
    # each leaf into its own l2 ball (the matrix's is active): a projection of one leaf at a
    # time, so the mixed-dtype and per-group properties apply leaf by leaf
    Entry("project_params", lambda: gx.chain(gx.scale_by_lr(0.05), gx.project_params(
        lambda p: gx.tree_map(lambda x: gx.projection_l2_ball(x, 2.0), p))),
        "optax.projections.projection_l2_ball after each step"),
]

NOT_TRANSFORMS = {"projection_box", "projection_hypercube", "projection_l1_ball", "projection_l1_sphere",
                  "projection_l2_ball", "projection_l2_sphere", "projection_linf_ball", "projection_non_negative",
                  "projection_simplex"}
