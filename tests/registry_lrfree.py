"""Registry entries: schedule-free, learning-rate-free and recent optimizers."""

from __future__ import annotations

from registry import Entry

import gradtx as gx

ENTRIES = [
    Entry("schedule_free", lambda: gx.schedule_free(gx.chain(gx.scale_by_adam(b1=0.0), gx.scale_by_lr(0.05)), 0.05),
          "optax.contrib.schedule_free; Defazio et al. 2024"),
    Entry("schedule_free_sgd", lambda: gx.schedule_free_sgd(0.1, weight_decay=1e-4, warmup_steps=2),
          "schedulefree.SGDScheduleFree", kind="alias"),
    Entry("schedule_free_adamw", lambda: gx.schedule_free_adamw(0.05, weight_decay=1e-4, warmup_steps=2),
          "schedulefree.AdamWScheduleFree", kind="alias"),
]

NOT_TRANSFORMS = {"schedule_free_eval_params", "schedule_free_train_params"}
