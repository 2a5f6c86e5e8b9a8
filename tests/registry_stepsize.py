"""Registry entries: step-size rules (Polyak, optimistic gradient, DoG) and Muon."""

from __future__ import annotations

from registry import Entry

import gradtx as gx

VALUE = frozenset({"value"})
ARMIJO = frozenset({"value", "grad", "value_fn"})
# As the line searches' entries (registry_search_ls.py): the accepted step t is read as a number from
# trial points rounded in each leaf's dtype (so f_min reaches t d only through d, as lr does in
# registry_search_ls's SEARCHED_WITH_LR), and the registry's value_fn takes complex params' real views.
SEARCHED = {"mixed": "the accepted step depends on trial points rounded in each leaf's dtype, so a low-precision "
                     "leaf changes every leaf's update (a global coupling beyond round-off)",
            "numbers_only": ("scale_by_backtracking", "polyak_linesearch"),
            "complex": "the registry's value_fn takes real views, the line search calls it on the complex params"}

ENTRIES = [
    Entry("scale_by_polyak", lambda: gx.chain(gx.scale_by_polyak(max_learning_rate=0.5), gx.scale_by_lr(1.0)),
          "optax.scale_by_polyak; Loizou et al. 2021", needs=VALUE),
    Entry("scale_by_optimistic_gradient",
          lambda: gx.chain(gx.scale_by_optimistic_gradient(), gx.scale_by_lr(0.03)),
          "optax.scale_by_optimistic_gradient"),
    Entry("scale_by_distance_over_gradients",
          lambda: gx.chain(gx.scale_by_distance_over_gradients(reps_rel=1e-3), gx.scale_by_lr(1.0)),
          "optax.scale_by_distance_over_gradients (LDoG); Ivgi et al. 2023"),
    Entry("scale_by_dog", lambda: gx.chain(gx.scale_by_dog(("heuristic", 1e-3)), gx.scale_by_lr(1.0)),
          "optax.contrib.scale_by_dog; Ivgi et al. 2023"),
    Entry("scale_by_muon", lambda: gx.chain(gx.scale_by_muon(), gx.scale_by_lr(0.02)),
          "optax.contrib.scale_by_muon; torch.optim.Muon"),
    Entry("polyak_sgd", lambda: gx.polyak_sgd(max_learning_rate=0.5), "optax.polyak_sgd", kind="alias",
          needs=VALUE),
    Entry("polyak_linesearch", lambda: gx.polyak_linesearch(), "torchzero PolyakStepSize + Backtracking",
          kind="alias", needs=ARMIJO, skip=SEARCHED),
    Entry("optimistic_gradient_descent", lambda: gx.optimistic_gradient_descent(0.03),
          "optax.optimistic_gradient_descent", kind="alias"),
    Entry("dog", lambda: gx.dog(init_step=("heuristic", 1e-3)), "optax.contrib.dog", kind="alias"),
    # the options' code paths (the defaults are checked against torch and optax in their tests)
    Entry("muon", lambda: gx.muon(0.02, weight_decay=1e-4, adam_weight_decay=1e-3, adam_lr=0.01, conv="matrix"),
          "optax.contrib.muon; torch.optim.Muon", kind="alias"),
]

NOT_TRANSFORMS = {"orthogonalize_via_newton_schulz"}
