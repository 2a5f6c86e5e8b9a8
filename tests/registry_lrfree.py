"""Registry entries: schedule-free, learning-rate-free and recent optimizers."""

from __future__ import annotations

from registry import Entry

import gradtx as gx

# growth_rate finite: the hypergradient suite perturbs every float argument (inf has no neighbourhood)
ENTRIES = [
    Entry("scale_by_prodigy", lambda: gx.chain(gx.scale_by_prodigy(weight_decay=1e-3, growth_rate=1.5),
                                               gx.scale(-1.0)), "prodigyopt.Prodigy"),
    Entry("prodigy", lambda: gx.prodigy(d0=1e-3, growth_rate=2.0, use_bias_correction=True), "prodigyopt.Prodigy",
          kind="alias"),
    Entry("scale_by_dadapt_adam", lambda: gx.chain(gx.scale_by_dadapt_adam(growth_rate=1.5), gx.scale(-1.0)),
          "dadaptation.DAdaptAdam"),
    Entry("dadapt_adam", lambda: gx.dadapt_adam(d0=1e-3, weight_decay=1e-4, decouple=True, growth_rate=2.0),
          "dadaptation.DAdaptAdam", kind="alias"),
    Entry("scale_by_dadapt_sgd", lambda: gx.chain(gx.scale_by_dadapt_sgd(0.1, momentum=0.9, growth_rate=1.5),
                                                  gx.scale(-1.0)),
          "dadaptation.DAdaptSGD"),
    Entry("dadapt_sgd", lambda: gx.dadapt_sgd(0.1, momentum=0.9, d0=1e-3, growth_rate=2.0), "dadaptation.DAdaptSGD",
          kind="alias"),
    Entry("schedule_free", lambda: gx.schedule_free(gx.chain(gx.scale_by_adam(b1=0.0), gx.scale_by_lr(0.05)), 0.05),
          "optax.contrib.schedule_free; Defazio et al. 2024"),
    Entry("schedule_free_sgd", lambda: gx.schedule_free_sgd(0.1, weight_decay=1e-4, warmup_steps=2),
          "schedulefree.SGDScheduleFree", kind="alias"),
    Entry("schedule_free_adamw", lambda: gx.schedule_free_adamw(0.05, weight_decay=1e-4, warmup_steps=2),
          "schedulefree.AdamWScheduleFree", kind="alias"),
]

NOT_TRANSFORMS = {"schedule_free_eval_params", "schedule_free_train_params", "quarter_power"}

ENTRIES += [
    Entry("scale_by_adopt", lambda: gx.chain(gx.scale_by_adopt(), gx.scale_by_lr(0.05)),
          "optax.contrib.scale_by_adopt"),
    Entry("adopt", lambda: gx.adopt(0.05, b2=0.999), "optax.contrib.adopt", kind="alias"),
    Entry("scale_by_ademamix", lambda: gx.chain(gx.scale_by_ademamix(b3=0.99, alpha=2.0), gx.scale_by_lr(0.02)),
          "optax.contrib.scale_by_ademamix"),
    Entry("ademamix", lambda: gx.ademamix(0.02, b3=0.99, alpha=2.0, weight_decay=1e-3), "optax.contrib.ademamix",
          kind="alias"),
    Entry("scale_by_simplified_ademamix",
          lambda: gx.chain(gx.scale_by_simplified_ademamix(b1=0.9, alpha=1.0), gx.scale_by_lr(0.005)),
          "optax.contrib.scale_by_simplified_ademamix"),
    Entry("simplified_ademamix", lambda: gx.simplified_ademamix(0.005, b1=0.9, alpha=1.0, weight_decay=1e-3),
          "optax.contrib.simplified_ademamix", kind="alias"),
    Entry("scale_by_laprop", lambda: gx.chain(gx.scale_by_laprop(), gx.scale_by_lr(0.05)), "pytorch_optimizer.LaProp"),
    Entry("laprop", lambda: gx.laprop(0.05), "pytorch_optimizer.LaProp", kind="alias"),
]

ENTRIES += [
    Entry("scale_by_dowg", lambda: gx.chain(gx.scale_by_dowg(), gx.scale_by_lr(1.0)), "optax.contrib.scale_by_dowg"),
    Entry("dowg", lambda: gx.dowg(), "optax.contrib.dowg", kind="alias"),
    Entry("scale_by_cocob", lambda: gx.scale_by_cocob(), "optax.contrib.scale_by_cocob"),
    Entry("cocob", lambda: gx.cocob(), "optax.contrib.cocob", kind="alias"),
    Entry("mechanize", lambda: gx.mechanize(gx.adam(0.05)), "optax.contrib.mechanize", kind="alias"),
]

ENTRIES += [
    # eps 1e-8: the defaults (1e-16) leave g / sqrt(variance) unbounded once the gradient settles (Rosenbrock)
    Entry("scale_by_acprop", lambda: gx.chain(gx.scale_by_acprop(eps=1e-8, eps_root=1e-8), gx.scale_by_lr(0.01)),
          "optax.contrib.scale_by_acprop"),
    Entry("acprop", lambda: gx.acprop(0.01, eps=1e-8, eps_root=1e-8, weight_decay=1e-4), "optax.contrib.acprop",
          kind="alias"),
    Entry("scale_by_madgrad", lambda: gx.scale_by_madgrad(0.05), "optax.contrib.scale_by_madgrad; madgrad"),
    Entry("madgrad", lambda: gx.madgrad(0.05, weight_decay=1e-4), "pytorch_optimizer.MADGRAD", kind="alias"),
    Entry("ranger", lambda: gx.ranger(0.1), "torch.optim.RAdam inside Lookahead", kind="alias"),
]

ENTRIES += [
    Entry("reduce_on_plateau", lambda: gx.chain(gx.scale_by_adam(), gx.reduce_on_plateau(patience=3, cooldown=1),
                                                gx.scale_by_lr(0.05)),
          "optax.contrib.reduce_on_plateau", needs=frozenset({"value"})),
]

ENTRIES += [
    Entry("momo", lambda: gx.momo(0.5, weight_decay=1e-4), "optax.contrib.momo", kind="alias",
          needs=frozenset({"value"})),
    Entry("momo_adam", lambda: gx.momo_adam(0.05, weight_decay=1e-4), "optax.contrib.momo_adam", kind="alias",
          needs=frozenset({"value"})),
]

ENTRIES += [
    Entry("adabound", lambda: gx.adabound(0.02, final_lr=0.05), "pytorch_optimizer.AdaBound", kind="alias"),
]
