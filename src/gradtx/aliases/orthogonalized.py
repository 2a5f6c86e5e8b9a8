"""Muon: momentum followed by orthogonalization for matrix parameters, Adam elsewhere."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from .._hparams import ScalarOrSchedule, check, check_beta
from ..base import GradientTransformation, describe, is_leafwise, transform
from ..combine import chain
from ..transforms._common import leaves, unflatten
from ..transforms.adaptive import scale_by_adam
from ..transforms.orthogonalize import MUON_NS_COEFFS, AdjustLrFn, NsCoeffs, scale_by_muon
from ..transforms.regularize import AddDecayedWeightsState, Mask, add_decayed_weights
from ..transforms.scaling import scale_by_lr

__all__ = ["muon"]


def _only(what: str, select: Callable[[torch.Tensor], bool], tx: GradientTransformation) -> GradientTransformation:
    """``tx`` applied to the leaves where ``select(leaf)`` is true; the others pass through.

    ``tx`` sees the whole tree with every other leaf replaced by an empty tensor, so its
    state keeps the tree's structure (what the adapter needs) at almost no memory cost.
    """

    def stub(tree):
        xs, treedef = leaves(tree)
        return unflatten(treedef, [x if select(x) else x.new_empty((0,)) for x in xs]), xs, treedef

    def init(params):
        return tx.init(stub(params)[0])

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        sub, us, treedef = stub(updates)
        sub_params = None if params is None else stub(params)[0]
        new, state = tx.update(sub, state, sub_params, inplace=inplace, **extra_args)
        out = [n if select(u) else u for n, u in zip(leaves(new)[0], us)]
        return unflatten(treedef, out), state

    body = repr(tx).replace("\n", "\n  ")
    return describe(GradientTransformation(init, update), f"only({what},\n  {body},\n)", leafwise=is_leafwise(tx),
                    inplace=True)


class _AdamWeightDecayState(NamedTuple):
    # Its own field name, so the adapter shows it as param_groups[i]['adam_weight_decay']
    # and does not confuse it with the matrices' 'weight_decay'.
    adam_weight_decay: torch.Tensor


def _adam_weight_decay(weight_decay: float) -> GradientTransformation:
    inner = add_decayed_weights(weight_decay)

    def init(params):
        return _AdamWeightDecayState(inner.init(params).weight_decay)

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        updates, _ = inner.update(updates, AddDecayedWeightsState(state.adam_weight_decay), params,
                                  inplace=inplace, **extra_args)
        return updates, state

    return describe(GradientTransformation(init, update), f"add_decayed_weights({weight_decay!r})", leafwise=True,
                    inplace=True)


def _is_matrix(x: torch.Tensor) -> bool:
    return x.dim() == 2


@transform
def muon(lr: ScalarOrSchedule, ns_coeffs: NsCoeffs = MUON_NS_COEFFS, ns_steps: int = 5, beta: float = 0.95,
         eps: float = 1e-8, weight_decay: float = 0.0, weight_decay_mask: Mask | None = None,
         mu_dtype: torch.dtype | None = None, *, nesterov: bool = True, adaptive: bool = False,
         adam_b1: float = 0.9, adam_b2: float = 0.999, adam_eps_root: float = 0.0, adam_weight_decay: float = 0.0,
         bias_correction: bool = True, adjust_lr_fn: AdjustLrFn = None,
         ns_dtype: torch.dtype | None = None) -> GradientTransformation:
    """Muon (Jordan, 2024) on matrices, Adam on every other leaf, as optax.contrib.muon.

    2-D leaves: ``p <- p - lr * (scale_by_muon(...)(g) + weight_decay * p)`` (momentum,
    Newton-Schulz orthogonalization, shape factor; see :func:`scale_by_muon`). Other
    leaves: AdamW with ``adam_b1``, ``adam_b2``, ``eps``, ``adam_eps_root``, Nesterov
    momentum when ``nesterov`` (optax's choice), ``adam_weight_decay`` and the same ``lr``.
    In ``gx.Optimizer`` the group keys are ``lr``, ``weight_decay`` and ``adam_weight_decay``.

    With ``bias_correction=False, ns_dtype=torch.bfloat16, eps=1e-7`` and ``adjust_lr_fn``
    as given to torch, the matrices follow ``torch.optim.Muon(lr=lr, momentum=beta,
    weight_decay=weight_decay, nesterov=nesterov)`` exactly. The defaults are optax's
    (bias-corrected momentum, iteration in the gradient's dtype); the shape factor uses
    torch's ``(out, in)`` layout (see :func:`scale_by_muon`). ``weight_decay_mask``, when a
    function, sees the params with the non-matrix leaves replaced by empty tensors.

    Example: ``gx.Optimizer(model.parameters(), gx.muon(0.02, weight_decay=0.01))``.
    """
    # checked here, under muon's names (scale_by_adam calls them b1, b2, eps_root; the decay
    # transform weight_decay)
    check_beta("adam_b1", adam_b1)
    check_beta("adam_b2", adam_b2)
    check("adam_eps_root", adam_eps_root, low=0.0)
    check("adam_weight_decay", adam_weight_decay, low=0.0)
    matrices = chain(scale_by_muon(ns_coeffs, ns_steps, beta, eps, mu_dtype, nesterov=nesterov, adaptive=adaptive,
                                   bias_correction=bias_correction, adjust_lr_fn=adjust_lr_fn, ns_dtype=ns_dtype),
                     add_decayed_weights(weight_decay, weight_decay_mask), scale_by_lr(lr))
    others = chain(scale_by_adam(adam_b1, adam_b2, eps, adam_eps_root, mu_dtype, nesterov=nesterov),
                   _adam_weight_decay(adam_weight_decay), scale_by_lr(lr))
    # With combine.partition this is partition({"muon": matrices, "adam": others},
    # lambda p: tree_map(lambda x: "muon" if x.dim() == 2 else "adam", p)).
    return chain(_only("2-D leaves", _is_matrix, matrices), _only("other leaves", lambda x: not _is_matrix(x), others))
