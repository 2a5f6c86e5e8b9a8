"""Combinators: run several transforms as one."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from . import _owned
from ._tree import (
    LABEL_FORMS,
    MASK_FORMS,
    Tree,
    as_mask_flag,
    is_spec_callable,
    mask_flags,
    per_leaf_spec,
    tree_flatten,
    tree_leaves,
    tree_structure,
    tree_unflatten,
)
from .base import EmptyState, GradientTransformation, describe, transform

__all__ = ["chain", "named_chain", "MaskedNode", "MaskedState", "PartitionState", "masked", "partition",
           "multi_transform", "freeze"]


def _indent(text: str) -> str:
    return text.replace("\n", "\n  ")


def chain(*transforms: GradientTransformation) -> GradientTransformation:
    """Apply ``transforms`` in sequence; the state is a tuple of their states.

    ``u <- t_n(...t_2(t_1(u)))``. Extra keyword arguments (``value``, ``grad``,
    ``value_fn``, ``inplace``) are forwarded to every member.

    On the pure path (``inplace=False``) the chain still writes into the update tensors
    it made itself: a member after the first is called with ``inplace=True``, on a private
    copy of its state, when (a) its state is small whatever the params (hyperparameters,
    step counts: ``scale_by_lr``, ``scale``, ``add_decayed_weights``, ``clip_value``...) and
    (b) every update tensor it receives is referenced by the chain alone: made by an
    earlier member in this call, not the caller's, not held by any state, params, extra
    argument or closure, not a view, not recorded by autograd. Otherwise it allocates as
    usual. ``update`` still never mutates its inputs and gives the same bits; it only
    allocates less (``adamw``: the moments, the update, nothing else).

    Example: ``gx.chain(gx.clip_value(10.0), gx.scale_by_adam(), gx.scale_by_lr(1e-3))``.
    """
    for i, tx in enumerate(transforms):
        if not isinstance(tx, GradientTransformation):
            raise TypeError(f"chain argument {i} must be a GradientTransformation, got {type(tx).__name__}")
    inits = tuple(tx.init for tx in transforms)
    run = _members_runner(transforms)

    def init(params):
        return tuple(fn(params) for fn in inits)

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        if len(state) != len(transforms):
            raise ValueError(f"chain of {len(transforms)} transforms got a state of length {len(state)}")
        updates, new_state = run(updates, state, params, inplace, extra_args)
        return updates, tuple(new_state)

    body = ",\n  ".join(_indent(repr(tx)) for tx in transforms)
    return describe(GradientTransformation(init, update), f"chain(\n  {body},\n)" if transforms else "chain()",
                    parts=transforms, recipe=(chain, transforms, {}))


def _members_runner(transforms: tuple[GradientTransformation, ...]):
    """``run(updates, states, params, inplace, extra_args) -> (updates, new_states)``: the
    members of a chain in sequence, reusing the chain's own temporaries on the pure path
    (the rule is in :func:`chain`'s docstring, the checks in ``_owned``)."""
    fns = tuple(tx.update for tx in transforms)
    small: list[bool | None] = [None] * len(transforms)  # has_small_state, decided on first use

    def may_reuse(i: int) -> bool:
        if small[i] is None:
            small[i] = i > 0 and _owned.has_small_state(transforms[i])
        return small[i]

    def run(updates, states, params, inplace, extra_args):
        new_states = []
        if inplace or len(fns) < 2 or not _owned.enabled() or _owned.records(params, extra_args):
            for fn, s in zip(fns, states):
                updates, s = fn(updates, s, params, inplace=inplace, **extra_args)
                new_states.append(s)
            return updates, new_states
        # `updates`, `states`, `params`, `extra_args` and `new_states` stay referenced
        # here to the end: anything reachable from them never counts as the chain's own.
        out, owned = updates, False
        for i, (fn, s) in enumerate(zip(fns, states)):
            copy = _owned.private_copy(s) if owned else None
            if copy is not None:
                out, s = fn(out, copy[0], params, inplace=True, **extra_args)
                s = copy[1](s)
            else:
                out, s = fn(out, s, params, inplace=False, **extra_args)
            new_states.append(s)
            copy = None
            owned = False
            if i + 1 < len(fns) and may_reuse(i + 1):
                leaves, treedef = tree_flatten(out)
                # A quick no while the member's tree still holds each leaf once (a state
                # buffer returned as the update, say): its tree is kept as it is.
                if _owned.exclusive(leaves, held_by_tree=True):
                    # Rebuild the tree in our own containers, so that a container the
                    # member also keeps (in its state, say) still holds a second reference
                    # to each leaf, and count with the member's tree dropped.
                    out = None
                    owned = _owned.exclusive(leaves)
                    out = tree_unflatten(leaves, treedef)
                del leaves
        return out, new_states

    return run


def named_chain(*named_transforms: tuple[str, GradientTransformation]) -> GradientTransformation:
    """Like :func:`chain`, with the state a dict ``{name: state}``.

    Example: ``gx.named_chain(("clip", gx.clip_value(1.0)), ("adam", gx.scale_by_adam()))``.
    """
    names = [name for name, _ in named_transforms]
    for i, item in enumerate(named_transforms):
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)
                and isinstance(item[1], GradientTransformation)):
            raise TypeError(f"named_chain argument {i} must be a (name, GradientTransformation) pair")
    if len(set(names)) != len(names):
        raise ValueError(f"named_chain names must be unique, got {names}")

    def init(params):
        return {name: tx.init(params) for name, tx in named_transforms}

    run = _members_runner(tuple(tx for _, tx in named_transforms))

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        updates, new_states = run(updates, [state[name] for name in names], params, inplace, extra_args)
        return updates, dict(zip(names, new_states))

    body = ",\n  ".join(f"({name!r}, {_indent(repr(tx))})" for name, tx in named_transforms)
    return describe(GradientTransformation(init, update), f"named_chain(\n  {body},\n)",
                    parts=tuple(tx for _, tx in named_transforms), recipe=(named_chain, named_transforms, {}))


# --- masking and partitioning -------------------------------------------------------------
# A transform that sees only some leaves gets the full tree with a ``MaskedNode`` (a node
# with no leaves) in place of each hidden leaf, as optax does. Its state then has the
# params' structure with nothing stored for hidden leaves; in the adapter every int-keyed
# dict keeps all parameter keys, so the adapter can still select and merge parameters.


class MaskedNode(NamedTuple):
    """Stands in for a leaf a masked transform does not see: a tree node without leaves."""


class MaskedState(NamedTuple):
    """State of :func:`masked`: the inner transform's state over the masked leaves."""

    inner_state: Any  # the inner transform's state over the masked leaves only


class PartitionState(NamedTuple):
    """State of :func:`partition`: ``{label: MaskedState}``, one per transform."""

    inner_states: dict  # label -> MaskedState of that label's transform


def _check_mask(mask: Any, argument: str = "mask") -> None:
    if isinstance(mask, str) or is_spec_callable(mask):
        return
    if isinstance(mask, torch.Tensor) and not (mask.dtype == torch.bool and mask.numel() == 1):
        raise ValueError(f"{argument} must be {MASK_FORMS}; got a tensor of dtype {mask.dtype}")
    for leaf in tree_leaves(mask):
        as_mask_flag(leaf, argument)


def _hide(tree: Tree, flags: list[bool]) -> Tree:
    leaves, treedef = tree_flatten(tree)
    return tree_unflatten([x if f else MaskedNode() for x, f in zip(leaves, flags)], treedef)


def _masked_update(inner: GradientTransformation, flags: list[bool], updates: Tree, inner_state: Any,
                   params: Tree | None, inplace: bool, extra_args: dict, mask_extra_args: bool):
    u_leaves, treedef = tree_flatten(updates)
    if len(flags) != len(u_leaves):
        raise ValueError(f"mask has {len(flags)} leaves but updates has {len(u_leaves)}")
    hidden = tree_unflatten([u if f else MaskedNode() for u, f in zip(u_leaves, flags)], treedef)
    hidden_params = None if params is None else _hide(params, flags)
    if mask_extra_args:
        extra_args = {k: _hide(v, flags) if not treedef.is_leaf() and tree_structure(v) == treedef else v
                      for k, v in extra_args.items()}
    new_hidden, new_state = inner.update(hidden, inner_state, hidden_params, inplace=inplace, **extra_args)
    out = list(u_leaves)
    for i, value in zip([i for i, f in enumerate(flags) if f], tree_leaves(new_hidden)):
        out[i] = value
    return tree_unflatten(out, treedef), new_state


@transform
def masked(inner: GradientTransformation, mask: Any, *, mask_compatible_extra_args: bool = False
           ) -> GradientTransformation:
    """Apply ``inner`` to the leaves where ``mask`` is true; pass the others through unchanged.

    ``u_i <- inner(u)_i`` where ``mask_i``, else ``u_i``. ``inner`` sees the tree with a
    :class:`MaskedNode` in place of every unmasked leaf, so its state covers only the
    masked leaves (``MaskedState(inner_state)``).

    ``mask`` is one of: a bool; a tree of bools with the structure of params, or a prefix
    of it (``{"enc": True, "dec": False}``); a callable ``params -> tree`` (called with
    params at ``init`` and with the updates at ``update``, as optax); a predicate
    ``(name, tensor) -> bool`` (two required arguments); or a glob string matched against
    parameter names (``"*.bias"``, ``"encoder.*"``). Names are :func:`leaf_names` of the
    params: ``named_parameters()`` names under ``gx.Optimizer(model.named_parameters(), tx)``,
    dotted keys for a functional params tree. With ``mask_compatible_extra_args`` the extra
    arguments with the structure of the updates (``grad``) are masked too.

    Example: ``gx.masked(gx.add_decayed_weights(1e-2), lambda name, p: p.dim() > 1)``.
    """
    if not isinstance(inner, GradientTransformation):
        raise TypeError(f"inner must be a GradientTransformation, got {type(inner).__name__}")
    _check_mask(mask)

    def init(params):
        return MaskedState(inner_state=inner.init(_hide(params, mask_flags(mask, params, params))))

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        flags = mask_flags(mask, updates, params)
        updates, inner_state = _masked_update(inner, flags, updates, state.inner_state, params, inplace, extra_args,
                                              mask_compatible_extra_args)
        return updates, MaskedState(inner_state=inner_state)

    return GradientTransformation(init, update)


def _check_labels(transforms: Any, param_labels: Any) -> None:
    if not isinstance(transforms, dict) or not transforms:
        raise ValueError(f"transforms must be a non-empty dict label -> GradientTransformation, got {transforms!r}")
    for label, tx in transforms.items():
        if not isinstance(label, str):
            # the state is keyed by label; an int label would read as a parameter index
            raise ValueError(f"transforms labels must be strings, got {label!r}")
        if not isinstance(tx, GradientTransformation):
            raise ValueError(f"transforms[{label!r}] must be a GradientTransformation, got {type(tx).__name__}")
    if not is_spec_callable(param_labels):
        _check_known(tree_leaves(param_labels), transforms)


def _check_known(labels: list, transforms: dict) -> None:
    unknown = sorted({repr(label) for label in labels if not isinstance(label, str) or label not in transforms})
    if unknown:
        raise ValueError(f"param_labels must be {LABEL_FORMS}, each label a key of transforms "
                         f"{sorted(transforms)}; found unknown labels {', '.join(unknown)}")


@transform
def partition(transforms: dict[str, GradientTransformation], param_labels: Any, *,
              mask_compatible_extra_args: bool = False) -> GradientTransformation:
    """Apply ``transforms[label]`` to the leaves labelled ``label``.

    ``u_i <- transforms[labels_i](u)_i``: each transform runs :func:`masked` to the leaves
    of its label; the state is ``PartitionState({label: MaskedState(inner_state)})``, and a
    label no leaf carries still gets a (leafless) state. Every label must be a key of
    ``transforms`` (``ValueError`` naming ``param_labels`` otherwise); labels are strings.

    ``param_labels`` is a tree of labels with the structure of params (or a prefix of it),
    a callable ``params -> tree`` (called with the updates at ``update``, as optax), or a
    function ``(name, tensor) -> label`` of two arguments (names as in :func:`masked`).

    Under ``gx.Optimizer``, ``param_groups[i]["lr"]`` shows the first transform's learning
    rate and the others keep their ratio to it, so an LR scheduler scales them all.

    Example::

        tx = gx.partition({"adam": gx.adam(1e-3), "sgd": gx.sgd(1e-2)},
                          lambda name, p: "adam" if p.dim() > 1 else "sgd")
    """
    _check_labels(transforms, param_labels)
    items = tuple(transforms.items())

    def labels_of(subject, params):
        labels = per_leaf_spec(param_labels, subject, params, "param_labels", LABEL_FORMS, globs=False)
        _check_known(labels, transforms)
        return labels

    def init(params):
        labels = labels_of(params, params)
        return PartitionState({label: MaskedState(tx.init(_hide(params, [x == label for x in labels])))
                               for label, tx in items})

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        labels = labels_of(updates, params)
        new_states = {}
        for label, tx in items:
            flags = [x == label for x in labels]
            updates, inner_state = _masked_update(tx, flags, updates, state.inner_states[label].inner_state, params,
                                                  inplace, extra_args, mask_compatible_extra_args)
            new_states[label] = MaskedState(inner_state)
        return updates, PartitionState(new_states)

    return GradientTransformation(init, update)


@transform
def multi_transform(transforms: dict[str, GradientTransformation], param_labels: Any, *,
                    mask_compatible_extra_args: bool = False) -> GradientTransformation:
    """Another name for :func:`partition` (optax's older name).

    Example: ``gx.multi_transform({"a": gx.adam(1e-3), "b": gx.sgd(0.1)}, labels)``.
    """
    return partition(transforms, param_labels, mask_compatible_extra_args=mask_compatible_extra_args)


def _set_to_zero() -> GradientTransformation:
    def init(params):
        del params
        return EmptyState()

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del params, extra_args
        leaves, treedef = tree_flatten(updates)
        if inplace:
            zeros = [u.zero_() if isinstance(u, torch.Tensor) else u for u in leaves]
        else:
            zeros = [torch.zeros_like(u) if isinstance(u, torch.Tensor) else u for u in leaves]
        return tree_unflatten(zeros, treedef), state

    return GradientTransformation(init, update)


@transform
def freeze(mask: Any) -> GradientTransformation:
    """Zero the updates of the leaves where ``mask`` is true (freeze them); keep the others.

    ``u_i <- 0`` where ``mask_i``, else ``u_i``; no state is kept for any leaf (optax's
    ``masked(set_to_zero(), mask)``). ``mask`` takes every form :func:`masked` accepts.

    Example: ``gx.chain(gx.adam(1e-3), gx.freeze("encoder.*"))`` trains all but the encoder.
    Put ``freeze`` last, so nothing before it (momentum, weight decay) moves a frozen leaf;
    the optimizer before it still keeps state for frozen leaves (``masked`` avoids that).
    """
    _check_mask(mask)
    return masked(_set_to_zero(), mask)
