"""Regularisation: decoupled weight decay and friends."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Union

import torch

from .. import _foreach as F  # noqa: N812
from .._hparams import check, to_state, traced
from .._tree import Tree, mask_flags
from ..base import GradientTransformation, transform
from ._common import leaves, leaves_like, need_params, unflatten

__all__ = ["AddDecayedWeightsState", "add_decayed_weights"]

Mask = Union[Tree, Callable[[Tree], Tree]]


class AddDecayedWeightsState(NamedTuple):
    weight_decay: torch.Tensor  # 0-dim; the adapter exposes it as param_groups[i]['weight_decay']


def mask_leaves(mask: Mask | None, params: Tree) -> list[bool]:
    """One bool per leaf of ``params``, from a mask in any form :func:`gradtx.masked`
    accepts (a tree of bools, ``params -> tree``, a ``(name, tensor)`` predicate or a glob
    over parameter names); ``None`` selects every leaf."""
    return mask_flags(mask, params, params)


@transform(elementwise=lambda args: args["mask"] is None, leafwise=True, inplace=True)
def add_decayed_weights(weight_decay: float | torch.Tensor = 0.0, mask: Mask | None = None
                        ) -> GradientTransformation:
    """Add decoupled weight decay: ``u <- u + weight_decay * p`` where ``mask`` is true.

    Followed by ``scale_by_lr(lr)`` this is AdamW's ``p <- p - lr * weight_decay * p``
    (Loshchilov & Hutter, 2019). ``mask`` takes every form :func:`gradtx.masked` accepts:
    a tree of bools like params, ``params -> tree of bools``, a predicate
    ``(name, tensor) -> bool`` or a glob over parameter names (``"*.weight"``).

    Example: ``gx.add_decayed_weights(1e-2, mask=lambda p: gx.tree_map(lambda x: x.dim() > 1, p))``.
    """
    check("weight_decay", weight_decay, low=0.0)

    def init(params):
        del params
        return AddDecayedWeightsState(weight_decay=to_state(weight_decay))

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del extra_args
        need_params("add_decayed_weights", params)
        us, treedef = leaves(updates)
        ps = leaves_like(params, treedef, "params")
        flags = mask_leaves(mask, params)
        idx = [i for i, f in enumerate(flags) if f and us[i] is not None]
        wd = state.weight_decay
        sel_us = [us[i] for i in idx]
        # read into the updates in place: detached unless autograd is off (the adapter's step)
        detach = inplace and torch.is_grad_enabled()
        sel_ps = [ps[i].detach() if detach else ps[i] for i in idx]
        same_dtype = all(u.dtype == p.dtype for u, p in zip(sel_us, sel_ps))
        if same_dtype and not traced(wd) and wd.device.type == "cpu":
            # one pass, no temporary: u + wd * p as a foreach add with a number alpha
            summed = F.add(sel_us, sel_ps, alpha=float(wd), inplace=inplace)
        else:
            decayed = F.mul(sel_ps, wd)
            summed = F.add(sel_us, F.cast_like(decayed, sel_us), inplace=inplace)
        out = list(us)
        for i, value in zip(idx, summed):
            out[i] = value
        return unflatten(treedef, out), state

    return GradientTransformation(init, update)
