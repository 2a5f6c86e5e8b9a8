"""Registry entries of the second-order family (src/gradtx/second_order/)."""

from __future__ import annotations

ENTRIES: list = []

# Hessian-vector product builders and optax's second_order utilities: functions, not transforms.
NOT_TRANSFORMS = {"make_hvp_fn", "hvp_from_grads", "batch_hvp", "curvature_fns", "hvp", "hessian_diag",
                  "fisher_diag"}
