"""Registry entries: line searches and L-BFGS (issue 11), each after ``scale(-1.0)`` so it
searches along a descent direction."""

from __future__ import annotations

from registry import Entry

import gradtx as gx

ARMIJO = frozenset({"value", "grad", "value_fn"})
WOLFE = frozenset({"value", "grad", "value_and_grad_fn"})

# A line search accepts a step by the loss at trial points p + t d, which each leaf rounds in its own
# dtype: a bfloat16 leaf's rounding can flip which trial is accepted, and so every leaf's update.
SEARCH_MIXED = {"mixed": "the accepted step depends on trial points rounded in each leaf's dtype, so a low-precision "
                         "leaf changes every leaf's update (a global coupling beyond round-off)"}
LBFGS_MIXED = {"mixed": "the two-loop recursion's dot products run over all leaves, so a low-precision leaf's "
                        "history (its params and gradients as that dtype holds them) changes every leaf's direction"}

SEARCHES = ("scale_by_backtracking", "scale_by_adaptive_backtracking", "scale_by_strong_wolfe",
            "scale_by_backtracking_linesearch", "scale_by_zoom_linesearch", "scale_by_more_thuente")
# value_fn and value_and_grad_fn of the registry take the real views of complex params; the line
# searches evaluate them at complex trial points (complex params are tested in test_line_search.py)
SEARCH = {**SEARCH_MIXED, "numbers_only": SEARCHES,
          "complex": "the registry's value_fn takes real views, the line search calls it on the complex params"}

# Interpolating searches find the point t d on the line whatever d's length, but read t as a number: d's
# scale (scale.step_size) reaches the update through autograd as if t were fixed, and not in value.
INTERPOLATING = {**SEARCH, "numbers_only": SEARCHES + ("scale",)}

# oLBFGS reads the gradient after its step from value_and_grad_fn, which has no autograd link to the
# step: its hyperparameters reach the pairs (s, y) only as numbers.
ONLINE = {**LBFGS_MIXED, "numbers_only": ("scale_by_online_lbfgs",),
          "complex": "the registry's value_and_grad_fn takes real views, oLBFGS calls it on the complex params"}

# The aliases' lr scales the direction the line search then rescales: t is read as a number, so
# lr reaches the step only through the numbers (as scale's step_size for interpolating searches).
SEARCHED_WITH_LR = {**SEARCH, "numbers_only": SEARCHES + ("scale_by_lr", "lbfgs", "bfgs", "nonlinear_cg")}

ENTRIES = [
    Entry("scale_by_backtracking", lambda: gx.chain(gx.scale(-1.0), gx.scale_by_backtracking()),
          "Nocedal & Wright Alg. 3.1 (Armijo), closed form in test_line_search.py", needs=ARMIJO, skip=SEARCH),
    Entry("scale_by_adaptive_backtracking", lambda: gx.chain(gx.scale(-1.0), gx.scale_by_adaptive_backtracking()),
          "torchzero.modules.AdaptiveBacktracking's rule", needs=ARMIJO, skip=SEARCH),
    Entry("scale_by_strong_wolfe", lambda: gx.chain(gx.scale(-1.0), gx.scale_by_strong_wolfe()),
          "Nocedal & Wright Alg. 3.5/3.6; strong Wolfe conditions checked", needs=WOLFE, skip=INTERPOLATING),
    Entry("scale_by_more_thuente", lambda: gx.chain(gx.scale(-1.0), gx.scale_by_more_thuente()),
          "scipy.optimize._dcsrch.DCSRCH (MINPACK-2), test_more_thuente.py", needs=WOLFE, skip=INTERPOLATING),
    Entry("scale_by_backtracking_linesearch",
          lambda: gx.chain(gx.scale(-1.0), gx.scale_by_backtracking_linesearch(max_backtracking_steps=15)),
          "optax.scale_by_backtracking_linesearch", needs=ARMIJO, skip=SEARCH),
    Entry("scale_by_zoom_linesearch", lambda: gx.chain(gx.scale(-1.0), gx.scale_by_zoom_linesearch(15)),
          "optax.scale_by_zoom_linesearch", needs=WOLFE, skip=INTERPOLATING),
    Entry("scale_by_lbfgs", lambda: gx.chain(gx.scale_by_lbfgs(), gx.scale_by_lr(0.1)), "optax.scale_by_lbfgs",
          skip=LBFGS_MIXED),
    Entry("scale_by_online_lbfgs", lambda: gx.scale_by_online_lbfgs(0.1), "Schraudolph, Yu & Gunter 2007, Alg. 2 "
          "(written out in test_lbfgs.py)", needs=frozenset({"value_and_grad_fn"}), skip=ONLINE),
    Entry("lbfgs", lambda: gx.lbfgs(), "optax.lbfgs; scipy L-BFGS-B", kind="alias", needs=WOLFE,
          skip=SEARCHED_WITH_LR),
    Entry("bfgs", lambda: gx.bfgs(), "scipy BFGS; torch.optim.LBFGS's minimiser (test_closure_methods.py)",
          kind="alias", needs=WOLFE, skip={**SEARCHED_WITH_LR, "complex": "BFGS's matrix is over the real view"}),
    Entry("nonlinear_cg", lambda: gx.nonlinear_cg(), "scipy CG; the minimiser (test_closure_methods.py)",
          kind="alias", needs=WOLFE, skip=SEARCHED_WITH_LR),
]

NOT_TRANSFORMS = {"make_value_fn", "make_value_and_grad_fn", "module_loss_fn", "evaluation_args",
                  "value_and_grad_from_state"}
