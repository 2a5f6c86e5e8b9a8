"""Registry entries: combinators (masked, partition, freeze) and wrappers (inject_hyperparams, ...).

The property suite hands the same transform ``{"w", "b", "s"}`` functionally and a dict keyed
by parameter index through the adapter, so masks and labels here are callables of the params
or predicates on ``(name, tensor)``, which fit both. Under gx.Optimizer ``param_groups[i]["lr"]``
is the chain's first ``lr``; other ``lr`` fields keep their ratio to it (test_combine.py).
"""

from __future__ import annotations

from registry import Entry

import gradtx as gx


def _adam(lr=0.05):
    return gx.chain(gx.scale_by_adam(), gx.scale_by_lr(lr))


def _not_scalar(params):
    return gx.tree_map(lambda x: x.dim() > 0, params)


ENTRIES = [
    Entry("masked", lambda: gx.chain(gx.masked(gx.scale_by_adam(), _not_scalar), gx.scale_by_lr(0.05)),
          "optax.masked: inner on masked leaves, others unchanged"),
    Entry("partition", lambda: gx.partition({"adam": _adam(), "sgd": gx.sgd(0.05, momentum=0.5)},
                                            lambda name, p: "adam" if p.dim() > 1 else "sgd"),
          "optax.partition: each label's transform on its leaves"),
    Entry("multi_transform", lambda: gx.multi_transform({"big": _adam(), "small": gx.sgd(0.05)},
                                                        lambda p: gx.tree_map(lambda x: "big" if x.numel() > 3
                                                                              else "small", p)),
          "optax.multi_transform (alias of partition)"),
    Entry("freeze", lambda: gx.chain(gx.scale_by_lr(0.05), gx.freeze(lambda name, p: p.dim() == 0)),
          "optax.freeze: zero updates where masked", converges=False),
    Entry("inject_hyperparams", lambda: gx.inject_hyperparams(gx.adam)(lr=0.05, b1=0.8),
          "optax.inject_hyperparams: same numbers as the inner transform"),
    Entry("multi_steps", lambda: gx.multi_steps(_adam(), 2), "optax.MultiSteps: inner on the mean of k gradients"),
    Entry("apply_every", lambda: gx.chain(gx.apply_every(3), gx.scale_by_lr(0.02)),
          "optax.apply_every: sum of k updates every k-th step"),
    Entry("apply_if_finite", lambda: gx.apply_if_finite(_adam(), 2), "optax.apply_if_finite"),
    Entry("conditionally_transform",
          lambda: gx.chain(gx.conditionally_transform(gx.scale_by_adam(), lambda step: step % 2 == 0),
                           gx.scale_by_lr(0.05)),
          "optax.conditionally_transform"),
    Entry("lookahead", lambda: gx.lookahead(_adam(), sync_period=3, slow_step_size=0.5),
          "Zhang et al. 2019 (optax.lookahead, slow weights in the state)"),
    Entry("flatten", lambda: gx.flatten(_adam()), "optax.flatten: inner on one concatenated vector"),
]

# multi_steps' should_skip_update_fn helpers are functions of updates, not transforms.
NOT_TRANSFORMS = {"skip_not_finite", "skip_large_updates"}
