"""Registry entries for the Adam family (transforms/adam_variants.py, aliases/adam_family.py)."""

from __future__ import annotations

from registry import Entry

import gradtx as gx

ENTRIES = [
    # transforms, each followed by a learning rate so that it descends
    Entry("scale_by_adamax", lambda: gx.chain(gx.scale_by_adamax(), gx.scale_by_lr(0.05)), "torch.optim.Adamax"),
    Entry("scale_by_amsgrad", lambda: gx.chain(gx.scale_by_amsgrad(), gx.scale_by_lr(0.05)),
          "optax.scale_by_amsgrad; torch.optim.Adam(amsgrad=True) with debias_after_max"),
    Entry("scale_by_belief", lambda: gx.chain(gx.scale_by_belief(), gx.scale_by_lr(0.05)),
          "AdaBelief, Zhuang et al. 2020 Alg. 2"),
    Entry("scale_by_yogi", lambda: gx.chain(gx.scale_by_yogi(), gx.scale_by_lr(0.05)), "Yogi, optax's rule"),
    Entry("scale_by_radam", lambda: gx.chain(gx.scale_by_radam(), gx.scale_by_lr(0.05)),
          "torch.optim.RAdam with eps_before_debias"),
    Entry("scale_by_nadam", lambda: gx.chain(gx.scale_by_nadam(), gx.scale_by_lr(0.05)), "torch.optim.NAdam"),
    Entry("scale_by_novograd", lambda: gx.chain(gx.scale_by_novograd(weight_decay=1e-3), gx.scale_by_lr(0.02)),
          "NovoGrad, Ginsburg et al. 2019 / optax's rule"),
    Entry("scale_by_lion", lambda: gx.chain(gx.scale_by_lion(), gx.scale_by_lr(0.02)), "Lion, Chen et al. 2023"),
    Entry("scale_by_adan", lambda: gx.chain(gx.scale_by_adan(), gx.scale_by_lr(0.05)), "Adan, Xie et al. 2022 Alg. 1"),
    # aliases: full optimizers
    Entry("adamax", lambda: gx.adamax(0.05), "torch.optim.Adamax", kind="alias"),
    Entry("adamaxw", lambda: gx.adamaxw(0.05, weight_decay=1e-3), "torch.optim.Adamax + decoupled decay",
          kind="alias"),
    Entry("amsgrad", lambda: gx.amsgrad(0.05, debias_after_max=True), "torch.optim.Adam(amsgrad=True)",
          kind="alias"),
    Entry("adabelief", lambda: gx.adabelief(0.05), "AdaBelief, Zhuang et al. 2020", kind="alias"),
    Entry("yogi", lambda: gx.yogi(0.05), "Yogi, Zaheer et al. 2018", kind="alias"),
    Entry("radam", lambda: gx.radam(0.05, eps_before_debias=True), "torch.optim.RAdam", kind="alias"),
    Entry("novograd", lambda: gx.novograd(0.05, weight_decay=1e-3), "NovoGrad, Ginsburg et al. 2019",
          kind="alias"),
    Entry("lion", lambda: gx.lion(0.02, weight_decay=1e-2), "Lion, Chen et al. 2023", kind="alias"),
    Entry("adan", lambda: gx.adan(0.05, weight_decay=1e-3), "Adan, Xie et al. 2022", kind="alias"),
    Entry("nadam", lambda: gx.nadam(0.05, momentum_decay=4e-3), "torch.optim.NAdam", kind="alias"),
    Entry("nadamw", lambda: gx.nadamw(0.05, weight_decay=1e-3, momentum_decay=4e-3),
          "torch.optim.NAdam(decoupled_weight_decay=True)", kind="alias"),
]
