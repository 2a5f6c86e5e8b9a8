"""Registry entries of the second-order family (src/gradtx/second_order/)."""

from __future__ import annotations

from registry import Entry

import gradtx as gx

HVP = frozenset({"hvp_fn"})
REAL_ONLY = {"complex": "the curvature model is over real coordinates (complex parameters are refused)"}
# CG's stopping rules, the trust region's comparisons and the finite-difference step read their
# hyperparameters as numbers (as the line searches do): no autograd link to them.
NUMBERS = ("scale_by_newton", "scale_by_newton_cg", "scale_by_newton_cg_trust_region", "scale_by_nystrom_pcg",
           "scale_by_nystrom_sketch_and_solve", "scale_by_gauss_newton", "scale_by_cubic_regularization")
SOLVER = {**REAL_ONLY, "numbers_only": NUMBERS}
SKETCH = {**SOLVER, "mixed": "the random sketch mixes all coordinates, so a low-precision leaf's rounding changes "
                             "every leaf's update (a global coupling beyond round-off)"}
# The aliases' Armijo search reads t as a number, so lr reaches the step only through the numbers.
SEARCHED = {**REAL_ONLY, "numbers_only": NUMBERS + ("scale_by_lr", "scale_by_backtracking", "newton", "newton_cg"),
            "mixed": "the accepted step depends on trial points rounded in each leaf's dtype, so a low-precision "
                     "leaf changes every leaf's update (a global coupling beyond round-off)"}
SEARCH_NEEDS = frozenset({"hvp_fn", "value", "grad", "value_fn"})
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
    Entry("scale_by_nystrom_sketch_and_solve",
          lambda: gx.chain(gx.scale_by_nystrom_sketch_and_solve(rank=4, damping=10.0), gx.scale_by_lr(1.0)),
          "Frangella, Tropp & Udell 2023 (Alg. 2.1, eq. 1.3); numpy solve", needs=HVP, skip=SKETCH),
    Entry("scale_by_nystrom_pcg", lambda: gx.chain(gx.scale_by_nystrom_pcg(rank=4), gx.scale_by_lr(0.5)),
          "Frangella, Tropp & Udell 2023 (Alg. 5.3); numpy solve", needs=HVP, skip=SKETCH),
    Entry("scale_by_gauss_newton", lambda: gx.chain(gx.scale_by_gauss_newton(damping=1e-3), gx.scale_by_lr(0.5)),
          "Nocedal & Wright §10.3; scipy.optimize.least_squares", needs=frozenset({"residual_fn"}), skip=SOLVER),
    Entry("scale_by_cubic_regularization", lambda: gx.scale_by_cubic_regularization(sigma=1.0),
          "Cartis, Gould & Toint 2011 (ARC); Nesterov & Polyak 2006", needs=HVP | {"value_fn"}, skip=TRIAL),
    Entry("newton", lambda: gx.newton(eigenvalues="abs"), "Nocedal & Wright §3.3 + Alg. 3.1; torchzero Newton",
          kind="alias", needs=SEARCH_NEEDS, skip=SEARCHED),
    Entry("newton_cg", lambda: gx.newton_cg(), "Nocedal & Wright Alg. 7.1 + 3.1; scipy Newton-CG", kind="alias",
          needs=SEARCH_NEEDS, skip=SEARCHED),
]

# Hessian-vector product builders and optax's second_order utilities: functions, not transforms.
NOT_TRANSFORMS = {"make_hvp_fn", "hvp_from_grads", "batch_hvp", "curvature_fns", "hvp", "hessian_diag",
                  "fisher_diag", "NewtonCGState", "NewtonCGTrustRegionState", "NystromState", "NystromPCGState",
                  "CubicRegularizationState"}
