"""Registry entries: diagonal curvature (Hutchinson, Sophia, SophiaH, AdaHessian), matrix
momentum, and sharpness-aware minimisation (SAM, ASAM, optax.contrib's sam, MSAM)."""

from __future__ import annotations

from registry import Entry

import gradtx as gx

HVP = frozenset({"hvp_fn"})
VG = frozenset({"value_and_grad_fn"})

ENTRIES = [
    Entry("hutchinson_estimator_diag_hessian",
          lambda: gx.chain(gx.hutchinson_estimator_diag_hessian(seed=3), gx.scale_by_lr(0.0)),
          "optax.contrib.hutchinson_estimator_diag_hessian: E[z*Hz] = diag H", needs=HVP, converges=False),
    Entry("scale_by_sophia", lambda: gx.chain(gx.scale_by_sophia(update_interval=2), gx.scale_by_lr(0.05)),
          "optax.contrib.scale_by_sophia", needs=HVP),
    Entry("scale_by_sophia_h", lambda: gx.chain(gx.scale_by_sophia_h(update_interval=2), gx.scale_by_lr(0.05)),
          "Liu et al. 2023 Alg. 3; pytorch_optimizer.SophiaH", needs=HVP),
    Entry("scale_by_adahessian", lambda: gx.chain(gx.scale_by_adahessian(), gx.scale_by_lr(0.05)),
          "Yao et al. 2021 Alg. 1; pytorch_optimizer.AdaHessian", needs=HVP),
    Entry("sophia", lambda: gx.sophia(0.05, update_interval=2), "optax.contrib.sophia", kind="alias", needs=HVP),
    Entry("sophia_h", lambda: gx.sophia_h(0.05, update_interval=2), "pytorch_optimizer.SophiaH", kind="alias",
          needs=HVP),
    Entry("adahessian", lambda: gx.adahessian(0.05), "pytorch_optimizer.AdaHessian", kind="alias", needs=HVP),
    Entry("matrix_momentum", lambda: gx.matrix_momentum(0.05, mu=0.1, adaptive=True),
          "torchzero.MatrixMomentum(adaptive=True)", kind="alias", needs=HVP | {"grad"}),
    Entry("sam_gradient", lambda: gx.chain(gx.sam_gradient(0.05), gx.scale_by_lr(0.05)), "torchzero.SAM; Foret 2021",
          needs=VG),
    Entry("asam_gradient", lambda: gx.chain(gx.asam_gradient(0.5), gx.scale_by_lr(0.05)),
          "torchzero.ASAM; Kwon 2021", needs=VG),
    Entry("sam", lambda: gx.sam(gx.sgd(0.05, momentum=0.5), rho=0.05, sync_period=2), "optax.contrib.sam",
          kind="alias"),
    Entry("msam", lambda: gx.msam(gx.sgd(0.05, momentum=0.5), rho=0.05, momentum=0.5),
          "torchzero.MSAM / MSAMMomentum", kind="alias",
          skip={"mixed": "the perturbation's norm is over the velocity, kept in each leaf's dtype: a bfloat16 "
                         "velocity's round-off moves every leaf's perturbation by more than a float64 tolerance"}),
]
