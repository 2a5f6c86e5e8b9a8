"""Plumbing shared by transforms: flatten an update tree, map results back."""

from __future__ import annotations

from typing import Any

import torch

from .._tree import Tree, TreeDef, tree_flatten, tree_unflatten


def leaves(tree: Tree) -> tuple[list[torch.Tensor], TreeDef]:
    """The leaves of ``tree`` (in a fixed order) and its structure: ``gs, treedef = leaves(updates)``."""
    return tree_flatten(tree)


def leaves_like(tree: Tree, treedef: TreeDef) -> list[Any]:
    """The leaves of ``tree`` in the order of ``treedef``'s, where ``tree`` has that structure
    down to them (a leaf may be a whole subtree): ``mus = leaves_like(state.mu, treedef)``."""
    return treedef.flatten_up_to(tree)


def unflatten(treedef: TreeDef, values: list[Any]) -> Tree:
    """The tree of structure ``treedef`` holding ``values`` as its leaves."""
    return tree_unflatten(values, treedef)


def first_device(tree_leaves: list[torch.Tensor]) -> torch.device:
    return tree_leaves[0].device if tree_leaves else torch.device("cpu")


def need_params(name: str, params: Tree | None) -> None:
    if params is None:
        raise ValueError(f"{name} needs params: call update(updates, state, params)")
