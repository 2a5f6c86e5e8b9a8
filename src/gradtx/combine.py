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
    flatten_up_to,
    is_spec_callable,
    mask_flags,
    per_leaf_spec,
    tensor_leaves,
    tree_flatten,
    tree_leaves,
    tree_structure,
    tree_unflatten,
)
from .base import EmptyState, GradientTransformation, describe, is_leafwise, supports_inplace, transform, updater
from .handover import gradient_source, handover_args

__all__ = ["chain", "named_chain", "MaskedNode", "MaskedState", "PartitionState", "masked", "partition",
           "multi_transform", "freeze", "selective_transform", "set_to_zero"]


def _indent(text: str) -> str:
    return text.replace("\n", "\n  ")


def chain(*transforms: GradientTransformation) -> GradientTransformation:
    """Apply ``transforms`` in sequence; the state is a tuple of their states.

    ``u <- t_n(...t_2(t_1(u)))``. Extra keyword arguments (``value``, ``grad``,
    ``value_fn``) are forwarded to every member, as far as its signature takes them.

    Any ``GradientTransformation`` may be a member, an optax-style one included: only the
    members that declare in-place reuse (:func:`gradtx.supports_inplace`; every built-in)
    are passed ``inplace`` or written into, and what another member returns or keeps is
    never written into (it is copied first where a later member would write). The chain
    itself always declares in-place reuse.

    On the pure path (``inplace=False``) the chain still writes into the update tensors it
    made itself: a member whose state is small whatever the params (``scale_by_lr``,
    ``scale``, ``add_decayed_weights``, ``clip_value``...) and whose every update tensor
    was made in this call by a declared member runs with ``inplace=True`` on a private copy
    of its state. ``update`` still never mutates its inputs and gives the same bits; it
    only allocates less (``adamw``: the moments, the update, nothing else).

    Example: ``gx.chain(gx.clip_value(10.0), gx.scale_by_adam(), gx.scale_by_lr(1e-3))``.
    """
    for i, tx in enumerate(transforms):
        if not isinstance(tx, GradientTransformation):
            raise TypeError(f"chain argument {i} must be a GradientTransformation, got {type(tx).__name__}")
    inits = tuple(tx.init for tx in transforms)
    run = members_runner(transforms)

    def init(params):
        return tuple(fn(params) for fn in inits)

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        if len(state) != len(transforms):
            raise ValueError(f"chain of {len(transforms)} transforms got a state of length {len(state)}")
        updates, new_state = run(updates, state, params, inplace, extra_args)
        return updates, tuple(new_state)

    body = ",\n  ".join(_indent(repr(tx)) for tx in transforms)
    return describe(GradientTransformation(init, update), f"chain(\n  {body},\n)" if transforms else "chain()",
                    parts=transforms, inplace=True,
                    recipe=(chain, transforms, {}), **_nested_source(transforms, lambda state, i: state[i]))


def _nested_source(transforms: tuple[GradientTransformation, ...], member_state) -> dict:
    """A chain whose member makes its own gradients declares that member's source (its
    output is not the gradient: the members after the source changed it)."""
    for i, tx in enumerate(transforms):
        source = gradient_source(tx)
        if source is not None:
            return {"gradient_source": lambda state, extra, i=i, source=source: source(member_state(state, i), extra),
                    "outputs_gradient": len(transforms) == i + 1 and bool(tx.__dict__.get("outputs_gradient"))}
    return {}


def members_runner(transforms: tuple[GradientTransformation, ...]):
    """``run(updates, states, params, inplace, extra_args) -> (updates, new_states)``: the
    members of a chain in sequence, each called as its declaration allows, writing only
    into tensors the chain owns (the rules are in ``_owned``'s docstring). A member that
    makes its own gradients (``gradtx.handover``) hands the members after it its gradient,
    value/gradient function and Hessian-vector product as their extra arguments."""
    sources = [i for i, tx in enumerate(transforms) if gradient_source(tx) is not None and i + 1 < len(transforms)]
    if sources:
        return _handing_over(transforms, sources[0])
    return _plain_runner(transforms)


def _handing_over(transforms: tuple[GradientTransformation, ...], i: int):
    """The runner of a chain whose member ``i`` makes its own gradients (see ``handover``):
    the members up to it, then the others with its hand-over as extra arguments. On the
    in-place path they write into a copy of its output, which stays the ``grad`` they read."""
    head, tail = _plain_runner(transforms[:i + 1]), members_runner(transforms[i + 1:])
    source_tx = transforms[i]

    def run(updates, states, params, inplace, extra_args):
        states = list(states)
        updates, head_states = head(updates, states[:i + 1], params, inplace, extra_args)
        extra = handover_args(source_tx, states[i], updates, params, extra_args)
        if inplace:
            updates = tree_unflatten([x.clone() if isinstance(x, torch.Tensor) else x
                                      for x in tree_leaves(updates)], tree_structure(updates))
        updates, tail_states = tail(updates, states[i + 1:], params, inplace, extra)
        return updates, list(head_states) + list(tail_states)

    return run


def _plain_runner(transforms: tuple[GradientTransformation, ...]):
    runs = tuple(updater(tx) for tx in transforms)
    declared = tuple(supports_inplace(tx) for tx in transforms)
    all_declared = all(declared)
    small: list[bool | None] = [None] * len(transforms)  # has_small_state, decided on first use

    def may_reuse(i: int) -> bool:
        if small[i] is None:
            small[i] = _owned.has_small_state(transforms[i])
        return small[i]

    def run(updates, states, params, inplace, extra_args):
        new_states = []
        if (inplace and all_declared) or not (inplace or _owned.enabled()):
            # Every member keeps the promise: each may write into what the previous returned.
            # Or nothing is written at all (compiling, or under torch.func: no reuse), and no
            # identity may be read (it would pin the compiled graph to these tensors).
            for run_member, s in zip(runs, states):
                updates, s = run_member(updates, s, params, inplace, extra_args)
                new_states.append(s)
            return updates, new_states
        received = _owned.ids(tree_leaves(updates))
        owned = set(received) if inplace else set()  # update tensors the chain may write into
        suspect: set[int] = set()  # returned by an undeclared member: may be held elsewhere
        reuse = not inplace and _owned.enabled() and not _owned.records(params, extra_args)
        for i, (run_member, s) in enumerate(zip(runs, states)):
            if not declared[i]:
                if inplace:
                    # It may keep what it is given: never a buffer the caller reuses.
                    updates = _owned.copy_leaves(updates, lambda x, keep=received: id(x) in keep)
                updates, s = run_member(updates, s, params, False, extra_args)
                owned, suspect = set(), _owned.ids(tree_leaves(updates))
                new_states.append(s)
                continue
            if inplace:
                # Copies of what an undeclared member returned: this one writes into them.
                updates = _owned.copy_leaves(updates, lambda x, mine=owned: id(x) not in mine)
                updates, s = run_member(updates, s, params, True, extra_args)
                owned = _owned.ids(tree_leaves(updates))
                suspect = set()
                new_states.append(s)
                continue
            given = tree_leaves(updates)
            copy = (_owned.private_copy(s) if reuse and may_reuse(i) and _owned.all_owned(given, owned)
                    else None)
            if copy is not None:
                updates, s = run_member(updates, copy[0], params, True, extra_args)
                s = copy[1](s)
            else:
                updates, s = run_member(updates, s, params, False, extra_args)
            given_ids = _owned.ids(given)
            out = tree_leaves(updates)
            # A declared member's result is fresh where it is not a tensor it was given.
            owned = {id(x) for x in out if isinstance(x, torch.Tensor) and (id(x) not in given_ids or id(x) in owned)}
            suspect = {id(x) for x in out if id(x) in suspect}
            new_states.append(s)
        if suspect:
            # The chain's own promise: nothing it returns is held by a member's state.
            updates = _owned.copy_leaves(updates, lambda x, held=suspect: id(x) in held)
        return updates, new_states

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

    run = members_runner(tuple(tx for _, tx in named_transforms))

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        updates, new_states = run(updates, [state[name] for name in names], params, inplace, extra_args)
        return updates, dict(zip(names, new_states))

    body = ",\n  ".join(f"({name!r}, {_indent(repr(tx))})" for name, tx in named_transforms)
    return describe(GradientTransformation(init, update), f"named_chain(\n  {body},\n)",
                    parts=tuple(tx for _, tx in named_transforms), inplace=True,
                    recipe=(named_chain, named_transforms, {}),
                    **_nested_source(tuple(tx for _, tx in named_transforms), lambda state, i: state[names[i]]))


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


def _diagnose(updates: Tree, params: Tree | None) -> None:
    """Raise the clear error when a mask or label could not be applied because of the trees
    themselves: a None leaf, or params that do not have the updates' structure. Called only
    after a failure, so the success path pays nothing."""
    _, treedef = tensor_leaves(updates)
    if params is not None:
        flatten_up_to(params, treedef, "params")


def _masked_update(run_inner, flags: list[bool], updates: Tree, inner_state: Any,
                   params: Tree | None, inplace: bool, extra_args: dict, mask_extra_args: bool):
    u_leaves, treedef = tensor_leaves(updates)
    if len(flags) != len(u_leaves):
        raise ValueError(f"mask has {len(flags)} leaves but updates has {len(u_leaves)}")
    hidden = tree_unflatten([u if f else MaskedNode() for u, f in zip(u_leaves, flags)], treedef)
    hidden_params = None if params is None else _hide(params, flags)
    if mask_extra_args:
        extra_args = {k: _hide(v, flags) if not treedef.is_leaf() and tree_structure(v) == treedef else v
                      for k, v in extra_args.items()}
    new_hidden, new_state = run_inner(hidden, inner_state, hidden_params, inplace, extra_args)
    out = list(u_leaves)
    for i, value in zip([i for i, f in enumerate(flags) if f], tree_leaves(new_hidden)):
        out[i] = value
    return tree_unflatten(out, treedef), new_state


def _all_declared(*transforms: GradientTransformation) -> bool:
    return all(supports_inplace(tx) for tx in transforms)


@transform(leafwise=lambda args: is_leafwise(args["inner"]), inplace=lambda args: _all_declared(args["inner"]))
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
    arguments with the structure of the updates (``grad``) are masked too; either way a
    gradient-aware member (``gx.cautious``, ``gx.copy_grad_sign``, ...) compares each leaf it
    sees with the raw gradient of that same leaf.

    Example: ``gx.masked(gx.add_decayed_weights(1e-2), lambda name, p: p.dim() > 1)``.
    """
    if not isinstance(inner, GradientTransformation):
        raise TypeError(f"inner must be a GradientTransformation, got {type(inner).__name__}")
    _check_mask(mask)
    run_inner = updater(inner)

    def init(params):
        return MaskedState(inner_state=inner.init(_hide(params, mask_flags(mask, params, params))))

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        try:
            flags = mask_flags(mask, updates, params)
            updates, inner_state = _masked_update(run_inner, flags, updates, state.inner_state, params, inplace,
                                                  extra_args, mask_compatible_extra_args)
        except (ValueError, TypeError, AttributeError, IndexError):
            _diagnose(updates, params)
            raise
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


@transform(leafwise=lambda args: all(is_leafwise(tx) for tx in args["transforms"].values()),
           inplace=lambda args: _all_declared(*args["transforms"].values()))
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
    runs = {label: updater(tx) for label, tx in items}

    def labels_of(subject, params):
        labels = per_leaf_spec(param_labels, subject, params, "param_labels", LABEL_FORMS, globs=False)
        _check_known(labels, transforms)
        return labels

    def init(params):
        labels = labels_of(params, params)
        return PartitionState({label: MaskedState(tx.init(_hide(params, [x == label for x in labels])))
                               for label, tx in items})

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        given = updates
        try:
            labels = labels_of(updates, params)
            new_states = {}
            for label, _ in items:
                flags = [x == label for x in labels]
                inner_state = state.inner_states[label].inner_state
                updates, inner_state = _masked_update(runs[label], flags, updates, inner_state, params, inplace,
                                                      extra_args, mask_compatible_extra_args)
                new_states[label] = MaskedState(inner_state)
        except (ValueError, TypeError, AttributeError, IndexError):
            _diagnose(given, params)
            raise
        return updates, PartitionState(new_states)

    return GradientTransformation(init, update)


@transform(leafwise=lambda args: all(is_leafwise(tx) for tx in args["transforms"].values()),
           inplace=lambda args: _all_declared(*args["transforms"].values()))
def multi_transform(transforms: dict[str, GradientTransformation], param_labels: Any, *,
                    mask_compatible_extra_args: bool = False) -> GradientTransformation:
    """Another name for :func:`partition` (optax's older name).

    Example: ``gx.multi_transform({"a": gx.adam(1e-3), "b": gx.sgd(0.1)}, labels)``.
    """
    return partition(transforms, param_labels, mask_compatible_extra_args=mask_compatible_extra_args)


def _zero_init(params):
    del params
    return EmptyState()


@transform(elementwise=True, inplace=True)
def set_to_zero() -> GradientTransformation:
    """Replace every update by zeros: ``u <- 0`` (optax's ``set_to_zero``).

    No state. Under ``masked``/``partition`` it freezes the leaves it is given (see
    :func:`freeze`, :func:`selective_transform`).

    Example: ``gx.partition({"train": gx.adam(1e-3), "frozen": gx.set_to_zero()}, labels)``.
    """

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del params, extra_args
        leaves, treedef = tree_flatten(updates)
        if inplace:
            zeros = [u.zero_() if isinstance(u, torch.Tensor) else u for u in leaves]
        else:
            zeros = [torch.zeros_like(u) if isinstance(u, torch.Tensor) else u for u in leaves]
        return tree_unflatten(zeros, treedef), state

    return GradientTransformation(_zero_init, update)


_set_to_zero = set_to_zero


@transform(leafwise=True, inplace=True)
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


@transform(leafwise=lambda args: is_leafwise(args["optimizer"]),
           inplace=lambda args: _all_declared(args["optimizer"]))
def selective_transform(optimizer: GradientTransformation, *, freeze_mask: Any) -> GradientTransformation:
    """Run ``optimizer`` on the leaves ``freeze_mask`` leaves unfrozen; zero the frozen ones (optax).

    ``u_i <- 0`` where ``freeze_mask_i``, else ``optimizer(u)_i``: ``partition({"train":
    optimizer, "freeze": set_to_zero()}, labels)``, so ``optimizer`` keeps state only for
    the trained leaves (unlike :func:`freeze`, which zeroes after the optimizer has run on
    all of them). ``freeze_mask`` is a bool (freeze everything or nothing) or any mask form
    :func:`masked` takes (a tree of bools, a callable of the params, a glob, a
    ``(name, tensor)`` predicate); keyword-only, as in optax, so it is not read as a
    "train" mask.

    Example: ``gx.selective_transform(gx.adam(1e-3), freeze_mask={"w": True, "b": False})``.
    """
    _check_mask(freeze_mask, "freeze_mask")

    def labels(subject):
        leaves, treedef = tree_flatten(subject)
        if isinstance(freeze_mask, bool):
            flags = [freeze_mask] * len(leaves)
        else:
            flags = mask_flags(freeze_mask, subject, None, "freeze_mask")
        return tree_unflatten(["freeze" if f else "train" for f in flags], treedef)

    return partition({"train": optimizer, "freeze": set_to_zero()}, labels)
