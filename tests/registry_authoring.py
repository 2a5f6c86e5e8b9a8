"""Registry entries: the authoring helpers, each with a small rule written as a user would.

The property suite then checks that what the helpers build is pure, keeps its state's
structure and dtypes, runs in place and under the adapter (and compiled, where declared
elementwise) with the same numbers: the guarantees the guide promises an author.
"""

from __future__ import annotations

import torch
from registry import Entry

import gradtx as gx


def _debiased_momentum(g, m, param, *, step, beta):
    m = beta * m + (1 - beta) * g
    return m / (1 - beta**step), m


@gx.transform(elementwise=True)
def _momentum_per_tensor(beta=0.9):
    return gx.per_tensor(torch.zeros_like, _debiased_momentum, beta=beta)


@gx.transform(elementwise=True, inplace=True)
def _ema_multi_tensor(decay=0.9):
    """Debiased EMA over lists, writing into its state when allowed."""

    def init_fn(params):
        return torch.zeros((), dtype=torch.int32), gx.foreach.zeros_like(params)

    def update_fn(gs, state, params, *, inplace=False):
        count, ms = state
        count = count + 1
        ms = gx.foreach.lerp(ms, gs, 1 - decay, inplace=inplace)
        return gx.foreach.div(ms, 1 - decay ** count.double()), (count, ms)

    return gx.multi_tensor(init_fn, update_fn)


ENTRIES = [
    Entry("per_tensor", lambda: gx.chain(_momentum_per_tensor(0.9), gx.scale_by_lr(0.05)),
          "debiased momentum, closed form (test_authoring.py)"),
    Entry("multi_tensor", lambda: gx.chain(_ema_multi_tensor(0.9), gx.scale_by_lr(0.05)),
          "debiased EMA, closed form (test_authoring.py)"),
    Entry("stateless_with_tree_map",
          lambda: gx.chain(gx.stateless_with_tree_map(lambda g, p: g + 1e-2 * p), gx.scale_by_lr(0.05)),
          "optax.stateless_with_tree_map; L2 decay, closed form"),
]
