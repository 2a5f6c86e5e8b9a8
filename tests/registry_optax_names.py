"""Registry entries: optax names gradtx lacked (issue 13 §2): set_to_zero, selective_transform,
conditionally_mask, snapshot, monitor, measure_with_ema, optimistic Adam, and optax's spellings
of existing transforms (scale_by_learning_rate; clip and inject_stateful_hyperparams are the
same objects as clip_value and inject_hyperparams, listed in NOT_TRANSFORMS).

Masks here are ``(name, tensor)`` predicates, which fit both the functional tree and the
adapter's dict keyed by parameter index.
"""

from __future__ import annotations

from registry import Entry

import gradtx as gx


def _adam(lr=0.05):
    return gx.chain(gx.scale_by_adam(), gx.scale_by_lr(lr))


def _is_scalar(name, p):
    return p.dim() == 0


def _is_tiny(name, p):
    # freezes the 0-dim leaf, and its real view (2 elements) when it is complex
    return p.numel() <= 2


ENTRIES = [
    Entry("set_to_zero", lambda: gx.chain(gx.scale_by_lr(0.05), gx.set_to_zero()), "optax.set_to_zero: u <- 0",
          converges=False),
    Entry("selective_transform", lambda: gx.selective_transform(_adam(), freeze_mask=_is_tiny),
          "optax.selective_transform: inner on unfrozen leaves, zeros on frozen",
          skip={"rosenbrock": "the frozen 0-dim leaf is a coordinate of the chained Rosenbrock valley, held at 0, so "
                              "the value cannot halve (the other properties run with it frozen)"}),
    Entry("conditionally_mask", lambda: gx.conditionally_mask(_adam(), lambda step: step % 2 == 0),
          "optax.conditionally_mask: inner at chosen steps, zeros otherwise"),
    Entry("snapshot", lambda: gx.chain(gx.snapshot("norm", gx.tree_l2_norm), gx.scale_by_lr(0.05)),
          "optax.snapshot: updates unchanged, measurement in the state"),
    Entry("monitor", lambda: gx.chain(gx.monitor({"norm": gx.tree_l2_norm,
                                                  "big": gx.measure_with_ema(lambda u: gx.tree_l2_norm(u) > 1.0, 0.9)}),
                                      gx.scale_by_lr(0.05)),
          "optax.monitor: updates unchanged, measurements in the state"),
    Entry("measure_with_ema", lambda: gx.chain(gx.measure_with_ema(lambda u: u, 0.9), gx.scale_by_lr(0.05)),
          "optax.measure_with_ema (with the identity measure: gx.ema)"),
    Entry("optimistic_adam", lambda: gx.optimistic_adam(0.02, optimism=0.01), "optax.optimistic_adam", kind="alias"),
    Entry("optimistic_adam_v2", lambda: gx.optimistic_adam_v2(0.02, alpha=1.0, beta=0.5), "optax.optimistic_adam_v2",
          kind="alias"),
    Entry("scale_by_learning_rate", lambda: gx.chain(gx.scale_by_adam(), gx.scale_by_learning_rate(0.05)),
          "optax.scale_by_learning_rate (= scale_by_lr)"),
]

# functions of trees, not transform constructors; and optax's spellings that are the very
# object of a registered name (gx.clip is gx.clip_value, gx.inject_stateful_hyperparams is
# gx.inject_hyperparams), so the suites already run them under that name
NOT_TRANSFORMS = {"scale_gradient", "periodic_update", "incremental_update", "per_example_global_norm_clip",
                  "per_example_layer_norm_clip", "clip", "inject_stateful_hyperparams"}
