"""Muon: momentum followed by orthogonalization for matrix parameters, Adam elsewhere."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from .._hparams import ScalarOrSchedule, check, check_beta, check_schedule, is_schedule
from .._segments import Segments
from ..base import GradientTransformation, describe, flat_blocking_parts, is_leafwise, transform
from ..combine import chain
from ..transforms._common import leaves, leaves_like, unflatten
from ..transforms.adaptive import scale_by_adam
from ..transforms.orthogonalize import MUON_NS_COEFFS, AdjustLrFn, NsCoeffs, ScaleByMuonState, scale_by_muon
from ..transforms.regularize import AddDecayedWeightsState, Mask, add_decayed_weights
from ..transforms.scaling import ScaleByLrState, scale_by_lr

__all__ = ["muon"]


def _selects_whole_leaf(select: Callable[[torch.Tensor], bool], seg: Segments) -> bool:
    """``select`` over a flat leaf made of ``seg``'s tensors: the flat layout keeps each side
    of the split in leaves of its own, so every tensor of the leaf answers alike."""
    picks = {bool(select(torch.empty(shape, device="meta"))) for _, _, shape in seg.shape_runs}
    if len(picks) > 1:
        raise RuntimeError(f"internal error: a flat leaf holds tensors of both sides of muon's split ({seg!r})")
    return picks.pop() if picks else False


def _only(what: str, select: Callable[[torch.Tensor], bool], tx: GradientTransformation) -> GradientTransformation:
    """``tx`` applied to the leaves where ``select(leaf)`` is true; the others pass through.

    ``tx`` sees the whole tree with every other leaf replaced by an empty tensor, so its
    state keeps the tree's structure (what the adapter needs) at almost no memory cost.
    Declared segmented when ``tx`` can run over flat leaves: given ``segments`` (the flat
    path, whose layout puts each side in leaves of its own), a leaf is selected when the
    tensors it is made of are (see :func:`_selects_whole_leaf`).
    """
    flat_ready = not flat_blocking_parts(tx)

    def stub(tree, picks=None):
        xs, treedef = leaves(tree)
        if picks is None:  # each leaf by itself (params whose tree differs get the inner error)
            picks = [select(x) for x in xs]
        return unflatten(treedef, [x if pick else x.new_empty((0,)) for x, pick in zip(xs, picks)])

    def init(params):
        return tx.init(stub(params))

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        us, treedef = leaves(updates)
        segments = extra_args.get("segments") if flat_ready else None
        if segments is None:
            picks = [select(u) for u in us]
        else:
            picks = [_selects_whole_leaf(select, seg) for seg in leaves_like(segments, treedef, "segments")]
        sub = stub(updates, picks)
        sub_params = None if params is None else stub(params, None if segments is None else picks)
        new, state = tx.update(sub, state, sub_params, inplace=inplace, **extra_args)
        out = [n if pick else u for n, u, pick in zip(leaves(new)[0], us, picks)]
        return unflatten(treedef, out), state

    body = repr(tx).replace("\n", "\n  ")
    return describe(GradientTransformation(init, update), f"only({what},\n  {body},\n)", leafwise=is_leafwise(tx),
                    inplace=True, segmented=flat_ready)


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

    # elementwise as add_decayed_weights without a mask: flat=True runs it over flat leaves
    return describe(GradientTransformation(init, update), f"add_decayed_weights({weight_decay!r})", leafwise=True,
                    inplace=True, elementwise=True)


class _AdamLrState(NamedTuple):
    # Its own field name, so the adapter shows it as param_groups[i]['adam_lr'] (a group may
    # set its own) instead of following 'lr' by its ratio.
    adam_lr: torch.Tensor


def _adam_lr(adam_lr: ScalarOrSchedule) -> GradientTransformation:
    inner = scale_by_lr(adam_lr)
    if is_schedule(adam_lr):
        return inner  # the state is a step count: nothing for param_groups

    def init(params):
        return _AdamLrState(inner.init(params).lr)

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        updates, _ = inner.update(updates, ScaleByLrState(state.adam_lr), params, inplace=inplace, **extra_args)
        return updates, state

    return describe(GradientTransformation(init, update), f"scale_by_lr({adam_lr!r})", leafwise=True, inplace=True,
                    elementwise=True)


def _as_matrix(x: torch.Tensor) -> torch.Tensor:
    # prod, not -1: a zero-size leaf has no -1 to infer
    return x.reshape(x.shape[0], math.prod(x.shape[1:])) if x.dim() > 2 else x


def _matrix_shape(shape: torch.Size) -> torch.Size:
    return torch.Size((shape[0], math.prod(shape[1:]))) if len(shape) > 2 else shape


def _on_matrices(tx: GradientTransformation) -> GradientTransformation:
    """``scale_by_muon`` ``tx`` run on every leaf of more than two dimensions reshaped to
    ``(shape[0], prod(shape[1:]))`` (its momentum too), the result reshaped back. Given
    ``segments`` (flat leaves), ``tx`` gets the segments with those shapes instead: a flat
    leaf needs no reshaping."""
    matrix_segments: dict[int, tuple[Segments, Segments]] = {}  # id -> (segments, as matrices)

    def as_matrices(seg: Segments) -> Segments:
        hit = matrix_segments.get(id(seg))
        if hit is None or hit[0] is not seg:
            if len(matrix_segments) > 64:  # layouts rebuilt many times: forget the old ones
                matrix_segments.clear()
            hit = matrix_segments[id(seg)] = (seg, Segments([_matrix_shape(s) for s in seg.shapes]))
        return hit[1]

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        segments = extra_args.get("segments")
        if segments is not None:
            treedef = leaves(updates)[1]
            segs = leaves_like(segments, treedef, "segments")
            return tx.update(updates, state, None, inplace=inplace,
                             **{**extra_args, "segments": unflatten(treedef, [as_matrices(x) for x in segs])})
        us, treedef = leaves(updates)
        mus = leaves_like(state.mu, treedef)
        # an empty momentum is a leaf the muon part does not hold
        flat_mu = [_as_matrix(m) if m.dim() == u.dim() else m for m, u in zip(mus, us)]
        new, new_state = tx.update(unflatten(treedef, [_as_matrix(u) for u in us]),
                                   ScaleByMuonState(state.count, unflatten(treedef, flat_mu)), None,
                                   inplace=inplace, **extra_args)
        out = [n.reshape(u.shape) for n, u in zip(leaves(new)[0], us)]
        new_mu = [n.reshape(m.shape) for n, m in zip(leaves_like(new_state.mu, treedef), mus)]
        return unflatten(treedef, out), ScaleByMuonState(new_state.count, unflatten(treedef, new_mu))

    body = repr(tx).replace("\n", "\n  ")
    return describe(GradientTransformation(tx.init, update), f"as_matrices(\n  {body},\n)", leafwise=is_leafwise(tx),
                    inplace=True, segmented=not flat_blocking_parts(tx))


def _is_matrix(x: torch.Tensor) -> bool:
    return x.dim() == 2


def _is_matrix_or_more(x: torch.Tensor) -> bool:
    return x.dim() >= 2


@transform
def muon(lr: ScalarOrSchedule, ns_coeffs: NsCoeffs = MUON_NS_COEFFS, ns_steps: int = 5, beta: float = 0.95,
         eps: float = 1e-8, weight_decay: float = 0.0, weight_decay_mask: Mask | None = None,
         mu_dtype: torch.dtype | None = None, *, nesterov: bool = True, adaptive: bool = False,
         adam_b1: float = 0.9, adam_b2: float = 0.999, adam_eps_root: float = 0.0, adam_weight_decay: float = 0.0,
         adam_lr: ScalarOrSchedule | None = None, conv: str = "adam", bias_correction: bool = True,
         adjust_lr_fn: AdjustLrFn = None, ns_dtype: torch.dtype | None = None) -> GradientTransformation:
    """Muon (Jordan, 2024) on matrices, Adam on every other leaf, as optax.contrib.muon.

    2-D leaves: ``p <- p - lr * (scale_by_muon(...)(g) + weight_decay * p)`` (momentum,
    Newton-Schulz orthogonalization, shape factor; see :func:`scale_by_muon`). Other
    leaves: AdamW with ``adam_b1``, ``adam_b2``, ``eps``, ``adam_eps_root``, Nesterov
    momentum when ``nesterov`` (optax's choice), ``adam_weight_decay`` and the learning rate
    ``adam_lr`` (``None``, the default: ``lr``; optax's ``adam_learning_rate``).

    ``conv`` says what becomes of leaves with more than two dimensions (conv weights
    ``(out, in, kh, kw)``): ``"adam"`` (the default, optax's default) sends them to Adam;
    ``"matrix"`` runs Muon on each as the matrix ``G.reshape(shape[0], prod(shape[1:]))``
    (Keller Jordan's practice for conv weights; its momentum kept in the leaf's shape, the
    shape factor that of the ``out x (in kh kw)`` matrix) and reshapes the result back, as
    optax.contrib.muon with ``muon_weight_dimension_numbers=MuonDimensionNumbers(
    reduction_axis=(1, 2, 3), output_axis=0)``. Then only vectors and scalars get Adam.

    In ``gx.Optimizer`` the group keys are ``lr``, ``weight_decay``, ``adam_weight_decay``
    and, when ``adam_lr`` is a number, ``adam_lr`` (its own key, which torch's LR schedulers
    leave alone; a schedule for it is given here instead).

    With ``bias_correction=False, ns_dtype=torch.bfloat16, eps=1e-7`` and ``adjust_lr_fn``
    as given to torch, the matrices follow ``torch.optim.Muon(lr=lr, momentum=beta,
    weight_decay=weight_decay, nesterov=nesterov)`` exactly. The defaults are optax's
    (bias-corrected momentum, iteration in the gradient's dtype); the shape factor uses
    torch's ``(out, in)`` layout (see :func:`scale_by_muon`). ``weight_decay_mask``, when a
    function, sees the params with the leaves Adam updates replaced by empty tensors.

    Example: ``gx.Optimizer(model.parameters(), gx.muon(0.02, weight_decay=0.01, adam_lr=3e-4,
    conv="matrix"))``.
    """
    # checked here, under muon's names (scale_by_adam calls them b1, b2, eps_root; the decay
    # transform weight_decay)
    check_beta("adam_b1", adam_b1)
    check_beta("adam_b2", adam_b2)
    check("adam_eps_root", adam_eps_root, low=0.0)
    check("adam_weight_decay", adam_weight_decay, low=0.0)
    if conv not in ("adam", "matrix"):
        raise ValueError(f"conv must be 'adam' or 'matrix', got {conv!r}")
    if adam_lr is not None:
        if is_schedule(adam_lr):
            check_schedule("adam_lr", adam_lr)
        else:
            check("adam_lr", adam_lr, low=0.0)
    direction = scale_by_muon(ns_coeffs, ns_steps, beta, eps, mu_dtype, nesterov=nesterov, adaptive=adaptive,
                              bias_correction=bias_correction, adjust_lr_fn=adjust_lr_fn, ns_dtype=ns_dtype)
    select, what = (_is_matrix, "2-D leaves") if conv == "adam" else (_is_matrix_or_more, "leaves of 2 or more dims")
    if conv == "matrix":
        direction = _on_matrices(direction)
    matrices = chain(direction, add_decayed_weights(weight_decay, weight_decay_mask), scale_by_lr(lr))
    # adam_lr=None keeps today's chain (and state) exactly
    others = chain(scale_by_adam(adam_b1, adam_b2, eps, adam_eps_root, mu_dtype, nesterov=nesterov),
                   _adam_weight_decay(adam_weight_decay), scale_by_lr(lr) if adam_lr is None else _adam_lr(adam_lr))
    # With combine.partition this is partition({"muon": matrices, "adam": others},
    # lambda p: tree_map(lambda x: "muon" if select(x) else "adam", p)).
    return chain(_only(what, select, matrices), _only("other leaves", lambda x: not select(x), others))
