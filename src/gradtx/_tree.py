"""Pytree helpers: the only module that touches pytree machinery.

Trees are anything ``torch.utils._pytree`` understands (tuples, lists, dicts,
NamedTuples). ``None`` is a leaf there, but not a value gradtx's transforms take: a ``None``
leaf in the updates or params raises ``ValueError`` naming its path (:func:`tensor_leaves`).
For "no update for this parameter" use ``gx.masked`` (the parameter passes through
untouched, with no state) or ``gx.freeze`` (a zero update). Only ``gx.apply_updates``
takes a ``None`` update, as "leave this parameter unchanged".
"""

from __future__ import annotations

import fnmatch
import inspect
import operator
from collections.abc import Callable, Iterator
from itertools import repeat
from typing import Any

import torch
import torch.utils._pytree as _pytree

Tree = Any
TreeDef = _pytree.TreeSpec

__all__ = ["ParamKey", "leaf_names", "tree_add", "tree_get", "tree_get_all", "tree_l2_norm", "tree_leaves",
           "tree_map", "tree_paths", "tree_scale", "tree_sub", "tree_vdot", "tree_zeros_like"]

tree_flatten = _pytree.tree_flatten
tree_unflatten = _pytree.tree_unflatten
tree_structure = _pytree.tree_structure


def tensor_leaves(tree: Tree) -> tuple[list[Any], TreeDef]:
    """``tree_flatten(tree)`` for a tree that must hold a tensor at every leaf (updates,
    params): a ``None`` leaf raises ``ValueError`` naming its path and what to use instead."""
    leaves, treedef = tree_flatten(tree)
    if any(map(operator.is_, leaves, repeat(None))):
        paths = [path for path, leaf in tree_paths(tree) if leaf is None]
        raise ValueError(f"None leaf at {_listed(paths)}: gradtx transforms take a tensor at every leaf of the "
                         "updates and params. For 'no update for this parameter' use gx.masked(tx, mask) (the "
                         "leaf passes through untouched) or gx.freeze(mask) (a zero update), or leave the "
                         "parameter out of the tree; only gx.apply_updates takes a None update (the parameter "
                         "stays as it is)")
    return leaves, treedef


def flatten_up_to(tree: Tree, treedef: TreeDef, what: str = "the state", like: str = "the updates") -> list[Any]:
    """The subtrees of ``tree`` at the leaves of ``treedef`` (``tree`` may go deeper: the
    state's per-leaf lists under the updates' structure, say). Raises ``ValueError`` naming
    the key paths that differ when ``tree`` does not have that structure; ``what`` and
    ``like`` name the two trees in the message."""
    try:
        return treedef.flatten_up_to(tree)
    except (ValueError, TypeError):
        raise ValueError(structure_mismatch(tree, treedef, what, like)) from None


def structure_mismatch(tree: Tree, treedef: TreeDef, what: str, like: str) -> str:
    """Why ``tree`` (called ``what``) does not fit ``treedef`` (the structure of ``like``):
    the key paths found in one and not the other, or the node types when both hold the
    same paths."""
    expected = [path for path, _ in _pytree.tree_flatten_with_path(tree_unflatten([0] * treedef.num_leaves,
                                                                                   treedef))[0]]
    actual = [path for path, _ in _pytree.tree_flatten_with_path(tree)[0]]
    wanted = set(expected)
    covered = set()  # expected leaves that some leaf of tree lies at or below
    extra = []
    for path in actual:
        top = next((path[:i] for i in range(len(path) + 1) if path[:i] in wanted), None)
        if top is None:
            extra.append(path)
        else:
            covered.add(top)
    missing = [path for path in expected if path not in covered]
    parts = []
    if missing:
        parts.append(f"only in {like}: {_listed([_pytree.keystr(p) for p in missing])}")
    if extra:
        parts.append(f"only in {what}: {_listed([_pytree.keystr(p) for p in extra])}")
    if not parts:
        parts.append(f"the same key paths in other containers ({like}: {treedef}; {what}: {tree_structure(tree)})")
    return f"{what} does not match the structure of {like}: " + "; ".join(parts)


def _listed(paths: list[str], limit: int = 8) -> str:
    shown = ", ".join(p or "the root" for p in paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


def tree_leaves(tree: Tree) -> list[Any]:
    """The leaves of ``tree`` in a fixed order."""
    return _pytree.tree_leaves(tree)


def tree_map(fn: Callable[..., Any], tree: Tree, *rest: Tree) -> Tree:
    """Apply ``fn`` leafwise to ``tree`` and trees of the same structure."""
    return _pytree.tree_map(fn, tree, *rest)


def tree_paths(tree: Tree) -> list[tuple[str, Any]]:
    """``(path, leaf)`` pairs, the path a stable string such as ``"[1].mu['w']"``."""
    pairs, _ = _pytree.tree_flatten_with_path(tree)
    return [(_pytree.keystr(path), leaf) for path, leaf in pairs]


def tree_zeros_like(tree: Tree, dtype: torch.dtype | None = None) -> Tree:
    """A tree of zeros shaped like ``tree`` (optionally of another dtype)."""
    return tree_map(lambda x: torch.zeros_like(x, dtype=dtype), tree)


def tree_add(a: Tree, b: Tree) -> Tree:
    """Leafwise ``a + b``."""
    return tree_map(torch.add, a, b)


def tree_sub(a: Tree, b: Tree) -> Tree:
    """Leafwise ``a - b``."""
    return tree_map(torch.sub, a, b)


def tree_scale(scalar: float | torch.Tensor, tree: Tree) -> Tree:
    """Leafwise ``scalar * x``."""
    return tree_map(lambda x: x * scalar, tree)


def tree_vdot(a: Tree, b: Tree) -> torch.Tensor:
    """Sum over leaves of ``<a_i, b_i>``."""
    products = [torch.vdot(x.reshape(-1), y.reshape(-1)) for x, y in zip(tree_leaves(a), tree_leaves(b))]
    return torch.stack(products).sum() if products else torch.zeros(())


def tree_l2_norm(tree: Tree, squared: bool = False) -> torch.Tensor:
    """Global l2 norm of all leaves (as if concatenated into one vector)."""
    leaves = [x for x in tree_leaves(tree) if x is not None]
    if not leaves:
        return torch.zeros(())
    sq = sum(torch.sum(torch.square(x.to(torch.promote_types(x.dtype, torch.float32)))) for x in leaves)
    return sq if squared else torch.sqrt(sq)


def _named_nodes(tree: Tree, name: str) -> Iterator[Any]:
    if hasattr(tree, "_fields"):  # NamedTuple
        for field in tree._fields:
            value = getattr(tree, field)
            if field == name:
                yield value
            else:
                yield from _named_nodes(value, name)
    elif isinstance(tree, (list, tuple)):
        for value in tree:
            yield from _named_nodes(value, name)
    elif isinstance(tree, dict):
        for value in tree.values():
            yield from _named_nodes(value, name)


def tree_get_all(tree: Tree, name: str) -> list[Any]:
    """Every value held under a NamedTuple field called ``name``, in tree order."""
    return list(_named_nodes(tree, name))


def tree_get(tree: Tree, name: str, default: Any = None) -> Any:
    """The value of the unique NamedTuple field ``name`` in ``tree``.

    Raises ``KeyError`` when the name occurs more than once; returns ``default`` when absent.
    Example: ``gx.tree_get(state, "count")``.
    """
    found = tree_get_all(tree, name)
    if len(found) > 1:
        raise KeyError(f"field {name!r} occurs {len(found)} times in the tree; use tree_get_all")
    return found[0] if found else default


# --- param-keyed sub-trees --------------------------------------------------------------
# The adapter passes a parameter group to a chain as a dict {int index: tensor}. Every
# per-parameter piece of state then lives in a dict whose keys are those ints, so the
# adapter can select the parameters present at a step and merge newly seen ones without
# knowing which transforms are in the chain.


class ParamKey(int):
    """The key of a parameter in the dict the adapter hands to a chain: its index (in its
    param group, or among all parameters where one chain sees every group), carrying the
    parameter's name (``model.named_parameters()``) and param group when known."""

    # class defaults: an unnamed key holds no instance dict
    name: str | None = None
    group: int | None = None

    def __new__(cls, index: int, name: str | None = None, group: int | None = None) -> ParamKey:
        key = super().__new__(cls, index)
        if name is not None:
            key.name = name
        if group is not None:
            key.group = group
        return key

    def __repr__(self) -> str:
        return int.__repr__(self)

    def __reduce__(self):
        return (ParamKey, (int(self), self.name, self.group))


def _is_param_key(key: Any) -> bool:
    return isinstance(key, int) and not isinstance(key, bool)


def _is_param_dict(node: Any) -> bool:
    if not isinstance(node, dict) or not node:
        return False
    # The adapter's dicts are keyed by ParamKey throughout: one look suffices, which matters
    # with thousands of parameters (every step walks the state for its hyperparameters).
    return isinstance(next(iter(node)), ParamKey) or all(_is_param_key(k) for k in node)


def _key_name(key: Any) -> str:
    if isinstance(key, _pytree.MappingKey):
        name = getattr(key.key, "name", None)
        return name if name is not None else str(key.key)
    if isinstance(key, _pytree.SequenceKey):
        return str(key.idx)
    if isinstance(key, _pytree.GetAttrKey):
        return key.name
    return str(key)


def leaf_names(tree: Tree) -> list[str]:
    """A dotted name for each leaf, as ``named_parameters()`` would spell it:
    ``{"enc": {"weight": w}}`` and ``{"enc.weight": w}`` both give ``"enc.weight"``; in
    the adapter a parameter's name is its ``named_parameters()`` name."""
    pairs, _ = _pytree.tree_flatten_with_path(tree)
    return [".".join(_key_name(k) for k in path) for path, _ in pairs]


def leaves_at_paths_of(tree: Tree, like: Tree) -> list[Any]:
    """The subtrees of ``tree`` at the key paths of ``like``'s leaves: ``tree`` may hold more
    (the full gradient where ``like`` is a masked member's view, its hidden leaves
    ``MaskedNode``s without leaves). ``KeyError``/``IndexError``/``TypeError`` when a path is
    missing from ``tree``."""
    pairs, _ = _pytree.tree_flatten_with_path(like)
    return [_pytree.key_get(tree, path) for path, _ in pairs]


def select_keys(tree: Tree, keys: list[int]) -> Tree:
    """``tree`` with every int-keyed dict restricted to ``keys`` (in that order)."""
    if _is_param_dict(tree):
        return {k: tree[k] for k in keys}
    if hasattr(tree, "_fields"):
        return type(tree)(*(select_keys(v, keys) for v in tree))
    if isinstance(tree, (list, tuple)):
        return type(tree)(select_keys(v, keys) for v in tree)
    if isinstance(tree, dict):
        return {k: select_keys(v, keys) for k, v in tree.items()}
    return tree


def merge_keys(base: Tree, new: Tree) -> Tree:
    """Merge ``new`` into ``base``: int-keyed dicts take ``new``'s entries over ``base``'s
    (keys kept sorted); every other leaf is taken from ``new``."""
    if _is_param_dict(base) or _is_param_dict(new):
        merged = dict(base) if isinstance(base, dict) else {}
        merged.update(new)
        return {k: merged[k] for k in sorted(merged)}
    if hasattr(base, "_fields"):
        return type(base)(*(merge_keys(b, n) for b, n in zip(base, new)))
    if isinstance(base, (list, tuple)):
        # a longer base (state for a param group added since) keeps its extra entries
        return type(base)([*(merge_keys(b, n) for b, n in zip(base, new)), *base[len(new):]])
    if isinstance(base, dict):
        return {k: merge_keys(base[k], new[k]) if k in new else base[k] for k in base}
    return new


def param_leaves(tree: Tree) -> tuple[list[tuple[int | None, str, Any]], TreeDef]:
    """Each leaf of ``tree``, in ``tree_flatten`` order, as ``(parameter index, path, leaf)``:
    the index of the int-keyed dict entry holding it (``None`` for a shared leaf) and its
    path with that entry left out (``"[0].mu"`` for ``state[0].mu[3]``); and the structure."""
    pairs, treedef = _pytree.tree_flatten_with_path(tree)
    out: list[tuple[int | None, str, Any]] = []
    for path, leaf in pairs:
        at = next((i for i, k in enumerate(path) if isinstance(k, _pytree.MappingKey) and _is_param_key(k.key)),
                  None)
        if at is None:
            out.append((None, _pytree.keystr(path), leaf))
        else:
            out.append((int(path[at].key), _pytree.keystr(path[:at] + path[at + 1:]), leaf))
    return out, treedef


def split_param_paths(tree: Tree) -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
    """Split the leaves of ``tree`` into shared ones and per-parameter ones.

    Returns ``(shared, per_param)``: ``shared`` maps a path to a leaf; ``per_param`` maps a
    parameter index to ``{path-without-the-index: leaf}``.
    """
    shared: dict[str, Any] = {}
    per_param: dict[int, dict[str, Any]] = {}
    for index, path, leaf in param_leaves(tree)[0]:
        if index is None:
            shared[path] = leaf
        else:
            per_param.setdefault(index, {})[path] = leaf
    return shared, per_param


def hyperparameters(tree: Tree) -> list[tuple[str, torch.Tensor]]:
    """``(field name, tensor)`` for every 0-dim floating tensor held directly in a
    NamedTuple field outside the per-parameter dicts: the hyperparameters a transform
    keeps in its state (``lr``, ``weight_decay``, ...), in tree order."""
    found: list[tuple[str, torch.Tensor]] = []

    def visit(node: Any) -> None:
        if hasattr(node, "_fields"):
            for field, value in zip(node._fields, node):
                if isinstance(value, torch.Tensor) and value.dim() == 0 and value.is_floating_point():
                    found.append((field, value))
                else:
                    visit(value)
        elif isinstance(node, (list, tuple)):
            for value in node:
                visit(value)
        elif isinstance(node, dict) and not _is_param_dict(node):
            for value in node.values():
                visit(value)

    visit(tree)
    return found


def broadcast_prefix(prefix: Tree, tree: Tree) -> list[Any] | None:
    """The leaves of ``prefix`` repeated over the leaves of ``tree`` below them, in the
    order of ``tree_leaves(tree)``; ``None`` when ``prefix`` is not a prefix of ``tree``.

    Dicts are matched by key (not by position); an int-keyed dict (the adapter's
    ``{ParamKey: tensor}``) may hold more keys than ``tree``, so a mask or label tree
    keyed by parameter index also fits a step where some parameters have no gradient.
    """
    out: list[Any] = []

    def visit(p: Any, t: Any) -> bool:
        if _pytree.tree_is_leaf(p):
            out.extend([p] * len(_pytree.tree_leaves(t)))
            return True
        if isinstance(p, dict):
            if not isinstance(t, dict):
                return False
            if set(p) != set(t) and not (_is_param_dict(p) and set(t) <= set(p)):
                return False
            return all(visit(p[k], t[k]) for k in t)
        if hasattr(p, "_fields"):
            return type(p) is type(t) and all(visit(a, b) for a, b in zip(p, t))
        if isinstance(p, (list, tuple)):
            return (isinstance(t, (list, tuple)) and not hasattr(t, "_fields") and len(p) == len(t)
                    and all(visit(a, b) for a, b in zip(p, t)))
        return False

    return out if visit(prefix, tree) else None


# --- masks and labels in every accepted form (used by masked, partition, freeze and any
# transform taking a mask) ----------------------------------------------------------------

MASK_FORMS = ("a bool, a tree of bools with the structure of params (or a prefix of it), a callable "
              "params -> such a tree, a predicate (name, tensor) -> bool, or a glob string matched against "
              "parameter names such as '*.bias'")
LABEL_FORMS = ("a label, a tree of labels with the structure of params (or a prefix of it), a callable "
               "params -> such a tree, or a function (name, tensor) -> label")


def _required_positionals(fn: Callable) -> int | None:
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    count = 0
    for p in signature.parameters.values():
        if p.kind is inspect.Parameter.VAR_POSITIONAL:
            return None
        if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD) \
                and p.default is inspect.Parameter.empty:
            count += 1
    return count


def is_spec_callable(spec: Any) -> bool:
    return callable(spec) and not isinstance(spec, torch.Tensor)


def _is_name_fn(spec: Any) -> bool:
    # A callable of two required arguments is a per-parameter (name, tensor) function;
    # one of a single argument maps the whole params tree (optax's form).
    return is_spec_callable(spec) and _required_positionals(spec) == 2


def as_mask_flag(value: Any, argument: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, torch.Tensor) and value.dtype == torch.bool and value.numel() == 1:
        return bool(value)
    raise ValueError(f"{argument} must be {MASK_FORMS}; found a leaf {value!r}")


def per_leaf_spec(spec: Any, subject: Tree, params: Tree | None, argument: str, forms: str, globs: bool) -> list:
    """One mask flag or label per leaf of ``subject`` (updates, or params at init)."""
    named = params if params is not None else subject
    if globs and isinstance(spec, str):
        if isinstance(named, dict) and any(isinstance(k, ParamKey) and k.name is None for k in named):
            # a glob against bare indices would silently match nothing
            raise ValueError(f"{argument} {spec!r} is a glob over parameter names, but the parameters have none: "
                             "build gx.Optimizer(model.named_parameters(), tx)")
        return [fnmatch.fnmatchcase(name, spec) for name in leaf_names(named)]
    if _is_name_fn(spec):
        return [spec(name, x) for name, x in zip(leaf_names(named), tree_leaves(named))]
    tree = spec(subject) if is_spec_callable(spec) else spec
    flat = broadcast_prefix(tree, subject)
    if flat is None:
        hint = ("; with gx.Optimizer the params are a dict keyed by parameter index, so prefer a callable, "
                "a (name, tensor) function" + (", a glob" if globs else "") + " or a dict keyed by index")
        raise ValueError(f"{argument} must be {forms}; got {tree!r}, which does not fit params of structure "
                         f"{tree_structure(subject)}{hint}")
    return flat


def mask_flags(mask: Any, subject: Tree, params: Tree | None = None, argument: str = "mask") -> list[bool]:
    """One bool per leaf of ``subject`` (the updates, or the params at ``init``) from a mask
    in any form gradtx accepts (``MASK_FORMS``; ``None`` means every leaf). Names for
    globs and ``(name, tensor)`` predicates are :func:`leaf_names` of ``params`` (of
    ``subject`` when ``params`` is None): ``named_parameters()`` names under gx.Optimizer.
    Raises ``ValueError`` naming ``argument``. For any transform that takes a mask, e.g.
    ``flags = mask_flags(mask, updates, params)``."""
    if mask is None:
        return [True] * len(tree_leaves(subject))
    return [as_mask_flag(v, argument) for v in per_leaf_spec(mask, subject, params, argument, MASK_FORMS, globs=True)]
