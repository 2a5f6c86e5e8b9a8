"""Registry entries: diagonal quasi-Newton preconditioners (gradtx.search.diagonal_quasi_newton)."""

from __future__ import annotations

from registry import Entry

import gradtx as gx

# A low-precision leaf's diagonal, stored in its dtype, enters the sums over all leaves (s^T B s,
# y^T H y): its rounding changes every leaf's update beyond that leaf's round-off.
MIXED = {"mixed": "the diagonal of a low-precision leaf (kept in its dtype) enters the global sums s^T B s / "
                  "y^T H y, so its rounding changes every leaf's update (a global coupling beyond round-off)"}

# On Rosenbrock with a fixed step these leave the valley or stall (no positivity safeguard in
# quasi-Cauchy and SR1; the diagonal BFGS and NewDQN scales are not step sizes): they are meant
# for a line search, with which test_diagonal_quasi_newton.py runs them to the minimiser.
FIXED_STEP = {"rosenbrock": "a diagonal scale, not a step size: with a fixed step it leaves Rosenbrock's valley or "
                            "stalls; run with a line search in test_diagonal_quasi_newton.py"}


def _diag(name: str, reference: str, lr: float = 0.1, skip: dict | None = None, **kwargs) -> Entry:
    return Entry(name, lambda: gx.chain(getattr(gx, name)(**kwargs), gx.scale_by_lr(lr)), reference,
                 skip=skip or {})


ENTRIES = [
    _diag("scale_by_diagonal_bfgs", "diagonal of Nocedal & Wright eq. 6.17; torchzero DiagonalBFGS",
          skip=MIXED | FIXED_STEP),
    _diag("scale_by_diagonal_sr1", "diagonal of Nocedal & Wright eq. 6.25; torchzero DiagonalSR1",
          skip=MIXED | FIXED_STEP),
    _diag("scale_by_quasi_cauchy", "Zhu, Nazareth & Wolkowicz 1999; torchzero DiagonalQuasiCauchi",
          skip=MIXED | FIXED_STEP),
    _diag("scale_by_weighted_quasi_cauchy", "Leong, Enshaei & Kek 2021; torchzero DiagonalWeightedQuasiCauchi",
          skip=MIXED),
    _diag("scale_by_dnrtr", "Andrei 2019; torchzero dnrtr_B_ with DNRTR's truncation", skip=MIXED),
    _diag("scale_by_new_dqn", "Nosrati & Amini 2024; torchzero NewDQN", skip=FIXED_STEP),
]

NOT_TRANSFORMS = {"DiagonalQuasiNewtonState"}
