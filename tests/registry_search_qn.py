"""Registry entries: full-matrix quasi-Newton preconditioners (gradtx.search.quasi_newton) and L-SR1."""

from __future__ import annotations

from registry import Entry

import gradtx as gx

# These rules keep no positive-definite H (non-symmetric or rank-one corrections): their
# direction need not descend, and on Rosenbrock a fixed step leaves the valley. They are meant
# for a line search or a trust region (torchzero's advice); test_quasi_newton.py runs them so.
NEEDS_LINE_SEARCH = {"rosenbrock": "H is not kept positive definite, so the direction need not descend and a "
                                   "fixed step leaves the valley; run with a line search in test_quasi_newton.py"}


def _qn(name: str, reference: str, lr: float = 0.1, skip: dict | None = None, **kwargs) -> Entry:
    return Entry(name, lambda: gx.chain(getattr(gx, name)(**kwargs), gx.scale_by_lr(lr)), reference,
                 skip=skip or {})


ENTRIES = [
    _qn("scale_by_bfgs", "Nocedal & Wright eq. 6.17; torchzero BFGS; scipy BFGS"),
    _qn("scale_by_dfp", "Nocedal & Wright eq. 6.15; torchzero DFP"),
    _qn("scale_by_sr1", "Nocedal & Wright eq. 6.25; torchzero SR1"),
    _qn("scale_by_psb", "Powell 1970; torchzero PSB"),
    _qn("scale_by_broyden_good", "Broyden 1965; torchzero BroydenGood"),
    _qn("scale_by_broyden_bad", "Broyden 1965; torchzero BroydenBad", skip=NEEDS_LINE_SEARCH),
    _qn("scale_by_greenstadt1", "Greenstadt 1970 / Spedicato & Huang 1997", skip=NEEDS_LINE_SEARCH),
    _qn("scale_by_greenstadt2", "Greenstadt 1970 / Spedicato & Huang 1997; torchzero Greenstadt2",
        skip=NEEDS_LINE_SEARCH),
    _qn("scale_by_mccormick", "Pearson 1969 alg. 2; torchzero McCormick", skip=NEEDS_LINE_SEARCH),
    _qn("scale_by_pearson", "Pearson 1969 alg. 3; torchzero Pearson", skip=NEEDS_LINE_SEARCH),
    _qn("scale_by_icum", "Lopes & Martinez 1995; torchzero ICUM", skip=NEEDS_LINE_SEARCH),
    _qn("scale_by_hoshino", "Hoshino 1972; torchzero Horisho"),
    _qn("scale_by_ssvm", "Oren & Spedicato 1976; torchzero SSVM"),
    _qn("scale_by_thomas", "Thomas 1975; torchzero ThomasOptimalMethod"),
    # the projection empties H along every direction seen until the restart from R (n + 1
    # calls): a fixed step moves little in between, and R need not be positive definite
    _qn("scale_by_projected_newton_raphson", "Pearson 1969 alg. 7; torchzero ProjectedNewtonRaphson", lr=0.3,
        skip=NEEDS_LINE_SEARCH),
    Entry("scale_by_new_ssm", lambda: gx.chain(gx.scale_by_new_ssm(), gx.scale_by_lr(0.3)),
          "Moghrabi, Hassan & Askar 2022; torchzero NewSSM", needs=frozenset({"value"}), skip=NEEDS_LINE_SEARCH),
    # Shor's r-algorithm shrinks H along every gradient: it has no step size of its own (as
    # conjugate gradient), so a fixed step stalls by design; tested with a line search.
    Entry("scale_by_shor_r", lambda: gx.chain(gx.scale_by_shor_r(), gx.scale_by_lr(0.05)),
          "Shor 1970; torchzero ShorR", converges=False),
    # the trust region on the compact L-BFGS model (the model is not a transform: registered by its name)
    Entry("lbfgs_hessian", lambda: gx.scale_by_trust_region("dogleg", hessian=gx.lbfgs_hessian(memory_size=3),
                                                            init_radius=0.5),
          "Byrd, Nocedal & Schnabel 1994 compact form; N&W Alg. 4.1; the dense BFGS recursion "
          "(test_trust_region_lbfgs.py)",
          needs=frozenset({"value_fn"})),
    Entry("scale_by_lsr1", lambda: gx.chain(gx.scale_by_lsr1(memory_size=3), gx.scale_by_lr(0.1)),
          "scale_by_sr1 on the last m pairs; torchzero LSR1", skip=NEEDS_LINE_SEARCH),
]

NOT_TRANSFORMS = {"QuasiNewtonState", "LSR1State", "ScipyMinimize"}
