"""Registry entries: gradient approximation (issue 12), each making its update from value_fn alone."""

from __future__ import annotations

from registry import Entry

import gradtx as gx

EVALS = frozenset({"value", "value_fn"})

# One loss for every leaf: a perturbation of all leaves at once is rounded in each leaf's dtype, so a
# low-precision leaf changes every leaf's estimate (a coupling through the loss, beyond round-off).
RANDOM = {"mixed": "every leaf is perturbed at once and the one loss sees each leaf rounded in its dtype, so a "
                   "low-precision leaf changes every leaf's estimate",
          "complex": "the registry's value_fn takes real views; the approximator evaluates it at the complex params"}
# A central difference on the registry's quadratic is exact: the update does not depend on h (eps), and a
# finite difference of it in h measures only round-off.
EXACT_ON_QUADRATIC = ("scale_by_mezo", "mezo")

ENTRIES = [
    Entry("fdm", lambda: gx.chain(gx.fdm(1e-3, "forward"), gx.scale_by_lr(0.1)),
          "the coordinate formulas written out in test_approx.py; torchzero.modules.FDM", needs=EVALS,
          skip={"complex": RANDOM["complex"]}),
    Entry("randomized_fdm", lambda: gx.chain(gx.randomized_fdm(1e-3, 4, "forward", "gaussian"), gx.scale_by_lr(0.02)),
          "unbiased in expectation (seeded statistical test in test_approx.py)", needs=EVALS, skip=RANDOM),
    Entry("spsa", lambda: gx.chain(gx.spsa(1e-2, 2, "forward", seed=1), gx.scale_by_lr(0.02)),
          "Spall 1992; unbiased in expectation (test_approx.py)", needs=EVALS, skip=RANDOM),
    Entry("rdsa", lambda: gx.chain(gx.rdsa(1e-2, 2, "backward", seed=2), gx.scale_by_lr(0.02)),
          "Chen 2021; unbiased in expectation (test_approx.py)", needs=EVALS, skip=RANDOM),
    Entry("gaussian_smoothing", lambda: gx.chain(gx.gaussian_smoothing(1e-2, 8), gx.scale_by_lr(0.02)),
          "Nesterov & Spokoiny 2017; closed form on a quadratic (test_approx.py)", needs=EVALS, skip=RANDOM),
    Entry("gaussian_homotopy", lambda: gx.chain(gx.gaussian_homotopy(0.5, 0.9, 1e-2, 4, "forward"),
                                                gx.scale_by_lr(0.02)),
          "Iwakiri et al. 2022: Gaussian smoothing with a shrinking width (test_approx.py)", needs=EVALS, skip=RANDOM),
    Entry("scale_by_mezo", lambda: gx.chain(gx.scale_by_mezo(1e-3), gx.scale_by_lr(0.01)),
          "Malladi et al. 2023, Alg. 1; unbiased in expectation (test_approx.py)", needs=EVALS,
          skip={**RANDOM, "numbers_only": EXACT_ON_QUADRATIC}),
    Entry("mezo", lambda: gx.mezo(0.01, 1e-3, seed=4), "Malladi et al. 2023, Alg. 1 (MeZO-SGD)", kind="alias",
          needs=EVALS, skip={**RANDOM, "numbers_only": EXACT_ON_QUADRATIC,
                             "rosenbrock": "one random direction a step: in the 16-dimensional narrow valley 1000 "
                                           "steps take it to about half the start, not a tenth (larger lr diverge)"}),
    Entry("forward_gradient", lambda: gx.chain(gx.forward_gradient(2), gx.scale_by_lr(0.02)),
          "Baydin et al. 2022; torch.func.jvp's directional derivative (test_approx.py)",
          needs=frozenset({"value_fn"}), skip=RANDOM),
    Entry("laplacian_smoothing", lambda: gx.chain(gx.laplacian_smoothing(0.5, min_numel=3), gx.scale_by_lr(0.05)),
          "torchzero.modules.LaplacianSmoothing; Osher et al. 2022"),
]

NOT_TRANSFORMS = {"declare_gradient_source", "gradient_source", "makes_gradients", "handover_args"}
