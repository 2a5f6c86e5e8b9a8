"""Registry entries: nonlinear conjugate gradient, step-size rules, trust regions."""

from __future__ import annotations

from registry import Entry

import gradtx as gx

VALUE = frozenset({"value"})
VALUE_FN = frozenset({"value", "value_fn"})

ENTRIES = [
    Entry("scale_by_conjugate_gradient",
          lambda: gx.chain(gx.scale_by_conjugate_gradient("polak_ribiere_plus", restart_every=4,
                                                          restart_threshold=0.2), gx.scale_by_lr(0.02)),
          "Nocedal & Wright ch. 5; scipy.optimize.minimize(method='CG')"),
    Entry("scale_by_barzilai_borwein",
          lambda: gx.chain(gx.scale_by_barzilai_borwein("long", init_step=0.05, delta=0.5), gx.scale_by_lr(1.0)),
          "Barzilai & Borwein 1988; Burdakov, Dai & Huang 2019; closed form on a quadratic"),
    Entry("scale_by_bold_driver", lambda: gx.chain(gx.scale_by_bold_driver(0.05, decrease=0.25), gx.scale_by_lr(1.0)),
          "Vogl et al. 1988; Battiti 1989", needs=VALUE),
    Entry("scale_by_trust_region", lambda: gx.scale_by_trust_region("dogleg", init_radius=0.5),
          "Nocedal & Wright Alg. 4.1; scipy.optimize.minimize(method='dogleg')", needs=VALUE_FN),
]

# HessianApproximation constructors: models for scale_by_trust_region, not transforms
NOT_TRANSFORMS = {"bfgs_hessian", "quasi_newton_hessian"}
