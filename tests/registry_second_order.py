"""Registry entries of the second-order family (src/gradtx/second_order/)."""

from __future__ import annotations

from registry import Entry

import gradtx as gx

HVP = frozenset({"hvp_fn"})
REAL_ONLY = {"complex": "the curvature model is over real coordinates (complex parameters are refused)"}
# CG's stopping rules, the trust region's comparisons and the finite-difference step read their
# hyperparameters as numbers (as the line searches do): no autograd link to them.
NUMBERS = ("scale_by_newton", "scale_by_newton_cg", "scale_by_newton_cg_trust_region")
SOLVER = {**REAL_ONLY, "numbers_only": NUMBERS}
TRIAL = {**SOLVER, "mixed": "the accepted step depends on the loss at a trial point rounded in each leaf's dtype, so "
                            "a low-precision leaf changes every leaf's update (a global coupling beyond round-off)"}

ENTRIES = [
    Entry("scale_by_newton", lambda: gx.chain(gx.scale_by_newton(damping=0.1, eigenvalues="abs"), gx.scale_by_lr(0.5)),
          "Nocedal & Wright §3.3; closed form on quadratics (test_second_order.py)", needs=HVP, skip=SOLVER),
    Entry("scale_by_newton_cg", lambda: gx.chain(gx.scale_by_newton_cg(), gx.scale_by_lr(0.5)),
          "Nocedal & Wright Alg. 7.1; numpy solve on quadratics", needs=HVP, skip=SOLVER),
    Entry("scale_by_newton_cg_trust_region", lambda: gx.scale_by_newton_cg_trust_region(init_radius=0.5),
          "Steihaug 1983, Nocedal & Wright Alg. 7.2 + 4.1; scipy trust-ncg", needs=HVP | {"value_fn"},
          skip=TRIAL),
]

# Hessian-vector product builders and optax's second_order utilities: functions, not transforms.
NOT_TRANSFORMS = {"make_hvp_fn", "hvp_from_grads", "batch_hvp", "curvature_fns", "hvp", "hessian_diag",
                  "fisher_diag", "NewtonCGState", "NewtonCGTrustRegionState"}
