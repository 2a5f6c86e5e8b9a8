"""Clipping: bound updates elementwise or by their global norm."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .. import _foreach as F  # noqa: N812
from .._hparams import check
from ..base import EmptyState, GradientTransformation, transform
from ._common import leaves, unflatten

__all__ = ["clip_value", "clip_by_global_norm"]


def _empty(params):
    del params
    return EmptyState()


@transform
def clip_value(max_delta: float) -> GradientTransformation:
    """Clip each element into ``[-max_delta, max_delta]``: ``u <- clamp(u, -d, d)``.

    (optax calls it ``clip``.) Example: ``gx.clip_value(10.0)``.
    """
    check("max_delta", max_delta, low=0.0)
    bound = float(max_delta)

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del params, extra_args
        us, treedef = leaves(updates)
        return unflatten(treedef, F.clamp(us, -bound, bound, inplace=inplace)), state

    return GradientTransformation(_empty, update)


class ClipByGlobalNormState(NamedTuple):
    """Stateless; kept as a named type so states read well."""


@transform
def clip_by_global_norm(max_norm: float) -> GradientTransformation:
    """Rescale all updates together so their global l2 norm is at most ``max_norm``.

    ``n = ||u||_2`` over every leaf; ``u <- u * max_norm / n`` when ``n > max_norm``.
    (optax's rule; ``torch.nn.utils.clip_grad_norm_`` adds 1e-6 to ``n``.)

    Example: ``gx.chain(gx.clip_by_global_norm(1.0), gx.adam(1e-3))``.
    """
    check("max_norm", max_norm, low=0.0, low_open=True)

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del params, extra_args
        us, treedef = leaves(updates)
        if not us:
            return updates, state
        norm = F.global_norm(us)
        factor = torch.where(norm > max_norm, max_norm / norm, torch.ones_like(norm))
        return unflatten(treedef, F.mul(us, factor, inplace=inplace)), state

    return GradientTransformation(_empty, update)
