"""Plumbing shared by transforms: flatten an update tree, map results back."""

from __future__ import annotations

from typing import Any

import torch

from .._tree import Tree, TreeDef, flatten_up_to, tensor_leaves, tree_paths, tree_unflatten
from ..base import ComplexParamsError


def leaves(tree: Tree) -> tuple[list[torch.Tensor], TreeDef]:
    """The tensor leaves of ``tree`` (updates or params, in a fixed order) and its structure:
    ``gs, treedef = leaves(updates)``; a ``None`` leaf raises ``ValueError`` naming its path
    (see :func:`gradtx._tree.tensor_leaves`)."""
    return tensor_leaves(tree)


def leaves_like(tree: Tree, treedef: TreeDef, what: str = "the state") -> list[Any]:
    """The leaves of ``tree`` (the state, or ``what``: ``"params"``) in the order of
    ``treedef``'s, where ``tree`` has that structure down to them (a leaf may be a whole
    subtree): ``mus = leaves_like(state.mu, treedef)``; otherwise ``ValueError`` naming the
    key paths that differ."""
    return flatten_up_to(tree, treedef, what)


def unflatten(treedef: TreeDef, values: list[Any]) -> Tree:
    """The tree of structure ``treedef`` holding ``values`` as its leaves."""
    return tree_unflatten(values, treedef)


def first_device(tree_leaves: list[torch.Tensor]) -> torch.device:
    return tree_leaves[0].device if tree_leaves else torch.device("cpu")


def refuse_complex(name: str, params: Tree, why: str) -> None:
    """Raise ``ValueError`` naming ``name`` when ``params`` holds a complex tensor: for a
    transform whose rule reads each tensor's shape (``why``), where stepping the real and
    imaginary parts as torch.optim does would change what the rule means."""
    for path, x in tree_paths(params):
        if isinstance(x, torch.Tensor) and x.is_complex():
            raise ComplexParamsError(
                f"{name} does not support complex parameters ({why}); got {path or 'a tensor'} of dtype {x.dtype}. "
                "Optimize torch.view_as_real(p) instead (a real tensor with a trailing axis of size 2), or "
                "use a transform that steps complex parameters as torch.optim does (adam, sgd, rmsprop, ...)")


def need_params(name: str, params: Tree | None) -> None:
    if params is None:
        raise ValueError(f"{name} needs params: call update(updates, state, params)")
