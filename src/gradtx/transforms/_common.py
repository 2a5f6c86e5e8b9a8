"""Plumbing shared by transforms: flatten an update tree, map results back."""

from __future__ import annotations

from typing import Any

import torch

from .._tree import Tree, TreeDef, flatten_up_to, tensor_leaves, tree_unflatten


def leaves(tree: Tree) -> tuple[list[torch.Tensor], TreeDef]:
    """The tensor leaves of ``tree`` (updates or params) and its structure; a ``None`` leaf
    raises ``ValueError`` naming its path (see :func:`gradtx._tree.tensor_leaves`)."""
    return tensor_leaves(tree)


def leaves_like(tree: Tree, treedef: TreeDef, what: str = "the state") -> list[Any]:
    """The leaves of ``tree`` (the state, or ``what``: ``"params"``), which must have the
    updates' structure ``treedef``; otherwise ``ValueError`` naming the key paths that differ."""
    return flatten_up_to(tree, treedef, what)


def unflatten(treedef: TreeDef, values: list[Any]) -> Tree:
    return tree_unflatten(values, treedef)


def first_device(tree_leaves: list[torch.Tensor]) -> torch.device:
    return tree_leaves[0].device if tree_leaves else torch.device("cpu")


def need_params(name: str, params: Tree | None) -> None:
    if params is None:
        raise ValueError(f"{name} needs params: call update(updates, state, params)")
