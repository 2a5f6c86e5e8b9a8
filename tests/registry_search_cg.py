"""Registry entries: nonlinear conjugate gradient, step-size rules, trust regions."""

from __future__ import annotations

from registry import Entry

import gradtx as gx

ENTRIES = [
    Entry("scale_by_conjugate_gradient",
          lambda: gx.chain(gx.scale_by_conjugate_gradient("polak_ribiere_plus", restart_every=4,
                                                          restart_threshold=0.2), gx.scale_by_lr(0.02)),
          "Nocedal & Wright ch. 5; scipy.optimize.minimize(method='CG')"),
]
