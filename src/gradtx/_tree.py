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
import threading
from collections.abc import Callable, Iterator
from itertools import repeat
from typing import Any

import torch
import torch.utils._pytree as _pytree

Tree = Any
TreeDef = _pytree.TreeSpec

__all__ = ["ParamKey", "leaf_names", "tree_add", "tree_add_scale", "tree_allclose", "tree_batch_shape",
           "tree_bias_correction", "tree_cast", "tree_cast_like", "tree_clip", "tree_conj", "tree_div",
           "tree_full_like", "tree_get", "tree_get_all", "tree_l2_norm", "tree_leaves", "tree_map", "tree_max",
           "tree_min", "tree_mul", "tree_norm", "tree_ones_like", "tree_paths", "tree_random_like", "tree_real",
           "tree_scale", "tree_set", "tree_size", "tree_sub", "tree_sum", "tree_update_infinity_moment",
           "tree_update_moment", "tree_update_moment_per_elem_norm", "tree_vdot", "tree_where", "tree_zeros_like"]

tree_structure = _pytree.tree_structure

# A dict of tensors keyed by parameter (the adapter's params and updates, a transform's
# per-leaf state) is most of the trees a step walks, and torch's pytree walks it node by node
# in Python: 0.3-0.5 ms per flatten, unflatten or flatten_up_to over 2000 tensors, a dozen of
# them a step in a chain of three transforms. For such a dict these take the values directly,
# with its TreeSpec made once per key set (the last few key sets are kept).
_TENSOR_TYPES = frozenset({torch.Tensor, torch.nn.Parameter})
_FLAT_SPECS: dict[tuple, TreeDef] = {}  # the ids of the dict's keys -> its TreeSpec, oldest first
_IS_FLAT: dict[int, TreeDef] = {}  # id -> spec, for the specs in _FLAT_SPECS
_FLAT_SPECS_KEPT = 64
_FLAT_SPECS_LOCK = threading.Lock()
_KEY_TYPES: frozenset[type] = frozenset({int, str})  # and ParamKey, added below its class


def _of_tensors(tree: dict) -> bool:
    """Whether the plain dict ``tree`` holds tensors only (outside a compiled graph)."""
    return not torch.compiler.is_compiling() and set(map(type, tree.values())) <= _TENSOR_TYPES


def _flat_spec(tree: dict) -> TreeDef | None:
    """The TreeSpec of ``tree`` when it is a plain dict of tensors (outside a compiled graph),
    else ``None``."""
    if not _of_tensors(tree):
        return None
    # by the keys' identities: a ParamKey equals its int (and another ParamKey of that index),
    # and the spec must give back the very keys it was made from; its context keeps them alive
    keys = tuple(map(id, tree))
    spec = _FLAT_SPECS.get(keys)
    if spec is None:
        if not set(map(type, tree)) <= _KEY_TYPES:  # a kept spec keeps its keys alive: only small ones
            return None
        made = _pytree.tree_flatten(tree)[1]
        # one thread at a time: another's insertion between iter() and next() raises, and
        # two threads adding one key set would leave a spec in _IS_FLAT that is never evicted
        with _FLAT_SPECS_LOCK:
            spec = _FLAT_SPECS.get(keys)
            if spec is None:
                if len(_FLAT_SPECS) >= _FLAT_SPECS_KEPT:
                    del _IS_FLAT[id(_FLAT_SPECS.pop(next(iter(_FLAT_SPECS))))]
                spec = _FLAT_SPECS[keys] = made
                _IS_FLAT[id(spec)] = spec
    return spec


def _is_flat(treedef: TreeDef) -> bool:
    return _IS_FLAT.get(id(treedef)) is treedef and not torch.compiler.is_compiling()


def tree_flatten(tree: Tree) -> tuple[list[Any], TreeDef]:
    """``torch.utils._pytree.tree_flatten``, taken directly for a dict of tensors."""
    if type(tree) is dict:
        spec = _flat_spec(tree)
        if spec is not None:
            return list(tree.values()), spec
    return _pytree.tree_flatten(tree)


def tree_unflatten(leaves: Any, treedef: TreeDef) -> Tree:
    """``torch.utils._pytree.tree_unflatten``, taken directly for a dict of tensors' spec."""
    if _is_flat(treedef) and type(leaves) is list and len(leaves) == treedef.num_leaves:
        return dict(zip(treedef.context, leaves))
    return _pytree.tree_unflatten(leaves, treedef)


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
    if type(tree) is dict and _is_flat(treedef) and list(tree) == treedef.context:
        return list(tree.values())  # the subtrees at a dict's keys, in order
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
    if type(tree) is dict and _of_tensors(tree):  # (no spec needed for the leaves alone)
        return list(tree.values())
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


def tree_add(a: Tree, b: Tree, *others: Tree) -> Tree:
    """Leafwise ``a + b (+ ...)`` (optax.tree.add)."""
    return tree_map(lambda x, *ys: sum(ys, x), a, b, *others)


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
    leaves = [torch.view_as_real(x) if x.is_complex() else x for x in leaves]  # |z|^2 = re^2 + im^2
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
        for key, value in tree.items():
            if isinstance(key, str) and not isinstance(key, ParamKey) and key == name:
                yield value
            else:
                yield from _named_nodes(value, name)


def tree_get_all(tree: Tree, name: str) -> list[Any]:
    """Every value held under a NamedTuple field or a (string) dict key called ``name``, in
    tree order (``gx.snapshot``'s measurements are dict entries)."""
    return list(_named_nodes(tree, name))


def tree_get(tree: Tree, name: str, default: Any = None) -> Any:
    """The value of the unique NamedTuple field or dict key ``name`` in ``tree`` (optax.tree.get).

    Raises ``KeyError`` when the name occurs more than once; returns ``default`` when absent.
    Example: ``gx.tree_get(state, "count")``.
    """
    found = tree_get_all(tree, name)
    if len(found) > 1:
        raise KeyError(f"field {name!r} occurs {len(found)} times in the tree; use tree_get_all")
    return found[0] if found else default


def _rebuilt(tree: Tree, values: dict[str, Any]) -> Tree:
    if hasattr(tree, "_fields"):
        return type(tree)(*(values[f] if f in values else _rebuilt(getattr(tree, f), values) for f in tree._fields))
    if isinstance(tree, (list, tuple)):
        return type(tree)(_rebuilt(v, values) for v in tree)
    if isinstance(tree, dict):
        return type(tree)({k: values[k] if isinstance(k, str) and k in values else _rebuilt(v, values)
                           for k, v in tree.items()})
    return tree


def tree_set(tree: Tree, **values: Any) -> Tree:
    """A copy of ``tree`` with every NamedTuple field or string dict key named in ``values``
    replaced (optax.tree.set); a name found nowhere raises ``KeyError``.

    Example: ``state = gx.tree_set(state, lr=torch.tensor(1e-4, dtype=torch.float64))``.
    """
    missing = [name for name in values if not tree_get_all(tree, name)]
    if missing:
        raise KeyError(f"tree_set: no field or key named {', '.join(map(repr, missing))} in the tree")
    return _rebuilt(tree, values)


# --- leafwise arithmetic and reductions (optax.tree) -----------------------------------------


def tree_add_scale(a: Tree, scalar: float | torch.Tensor, b: Tree) -> Tree:
    """Leafwise ``a + scalar * b`` (optax.tree.add_scale)."""
    return tree_map(lambda x, y: x + scalar * y, a, b)


def tree_mul(a: Tree, b: Tree) -> Tree:
    """Leafwise ``a * b`` (optax.tree.mul)."""
    return tree_map(torch.mul, a, b)


def tree_div(a: Tree, b: Tree) -> Tree:
    """Leafwise ``a / b`` (optax.tree.div)."""
    return tree_map(torch.div, a, b)


def _tensors(tree: Tree) -> list[torch.Tensor]:
    return [torch.as_tensor(x) for x in tree_leaves(tree) if x is not None]


def tree_sum(tree: Tree) -> torch.Tensor:
    """The sum of every element of every leaf (optax.tree.sum); 0 for an empty tree."""
    xs = _tensors(tree)
    return torch.stack([x.sum() for x in xs]).sum() if xs else torch.zeros(())


def tree_max(tree: Tree) -> torch.Tensor:
    """The largest element over all leaves (optax.tree.max); ``-inf`` for an empty tree."""
    xs = [x for x in _tensors(tree) if x.numel()]
    return torch.stack([x.max() for x in xs]).max() if xs else torch.tensor(float("-inf"))


def tree_min(tree: Tree) -> torch.Tensor:
    """The smallest element over all leaves (optax.tree.min); ``inf`` for an empty tree."""
    xs = [x for x in _tensors(tree) if x.numel()]
    return torch.stack([x.min() for x in xs]).min() if xs else torch.tensor(float("inf"))


def tree_size(tree: Tree) -> int:
    """The number of elements over all leaves (optax.tree.size)."""
    return sum(x.numel() for x in _tensors(tree))


def tree_norm(tree: Tree, ord: int | float | str | None = None, squared: bool = False) -> torch.Tensor:
    """The vector norm of all leaves concatenated (optax.tree.norm): ``ord`` 2 (or ``None``),
    1, ``inf`` (or ``"inf"``); ``squared`` gives its square. Complex leaves use ``|x|``.

    Example: ``gx.tree_norm(grads, ord=1)``.
    """
    xs = [x.abs() for x in _tensors(tree)]
    if ord in (None, 2, "fro"):
        value = tree_l2_norm(xs)
        return value ** 2 if squared else value
    if ord == 1:
        value = tree_sum(xs)
    elif ord in (float("inf"), "inf"):
        value = tree_max(xs) if xs else torch.zeros(())
    else:
        raise ValueError(f"ord must be None, 1, 2, 'fro', inf or 'inf', got {ord!r}")
    return value ** 2 if squared else value


def tree_ones_like(tree: Tree, dtype: torch.dtype | None = None) -> Tree:
    """A tree of ones shaped like ``tree`` (optax.tree.ones_like)."""
    return tree_map(lambda x: torch.ones_like(x, dtype=dtype), tree)


def tree_full_like(tree: Tree, fill_value: float | torch.Tensor, dtype: torch.dtype | None = None) -> Tree:
    """A tree filled with ``fill_value``, shaped like ``tree`` (optax.tree.full_like)."""
    return tree_map(lambda x: torch.full_like(x, fill_value, dtype=dtype), tree)


def tree_cast(tree: Tree, dtype: torch.dtype | None) -> Tree:
    """Every leaf cast to ``dtype``; ``None`` leaves the tree as it is (optax.tree.cast)."""
    return tree if dtype is None else tree_map(lambda x: x.to(dtype), tree)


def tree_cast_like(tree: Tree, other: Tree) -> Tree:
    """Each leaf of ``tree`` cast to the dtype of the same leaf of ``other`` (optax.tree.cast_like)."""
    return tree_map(lambda x, y: x.to(y.dtype), tree, other)


def tree_clip(tree: Tree, min_value: float | torch.Tensor | None = None,
              max_value: float | torch.Tensor | None = None) -> Tree:
    """Each element clamped into ``[min_value, max_value]`` (either may be ``None``) (optax.tree.clip)."""
    return tree_map(lambda x: torch.clamp(x, min_value, max_value), tree)


def tree_where(condition: bool | torch.Tensor, a: Tree, b: Tree) -> Tree:
    """Leafwise ``torch.where(condition, a, b)`` for one condition (optax.tree.where)."""
    condition = torch.as_tensor(condition)
    return tree_map(lambda x, y: torch.where(condition.to(x.device), x, y), a, b)


def tree_allclose(a: Tree, b: Tree, rtol: float = 1e-5, atol: float = 1e-8, equal_nan: bool = False) -> bool:
    """Whether the trees have the same structure and every leaf pair is ``torch.allclose``
    (optax.tree.allclose)."""
    la, ta = tree_flatten(a)
    lb, tb = tree_flatten(b)
    return ta == tb and all(torch.allclose(torch.as_tensor(x), torch.as_tensor(y), rtol=rtol, atol=atol,
                                           equal_nan=equal_nan) for x, y in zip(la, lb))


def tree_conj(tree: Tree) -> Tree:
    """The complex conjugate of every leaf (a real leaf unchanged) (optax.tree.conj)."""
    return tree_map(lambda x: x.conj().resolve_conj() if x.is_complex() else x, tree)


def tree_real(tree: Tree) -> Tree:
    """The real part of every leaf (a real leaf unchanged) (optax.tree.real)."""
    return tree_map(lambda x: x.real if x.is_complex() else x, tree)


def tree_batch_shape(tree: Tree, shape: tuple[int, ...] = ()) -> Tree:
    """Each leaf's shape with ``shape`` prepended, as ``torch.Size`` leaves of the same tree
    (optax.tree.batch_shape, for leaves that are tensors)."""
    leaves, treedef = tree_flatten(tree)
    return tree_unflatten([torch.Size((*shape, *x.shape)) for x in leaves], treedef)


def tree_random_like(generator: torch.Generator | None, tree: Tree,
                     sampler: Callable[..., torch.Tensor] = torch.randn, dtype: torch.dtype | None = None) -> Tree:
    """A tree of random tensors shaped like ``tree`` (optax.tree.random_like), drawn with
    ``sampler(shape, generator=..., dtype=..., device=...)`` (``torch.randn`` by default,
    ``torch.rand`` for uniform) from ``generator`` in leaf order.

    Example: ``noise = gx.tree_random_like(torch.Generator().manual_seed(0), params)``.
    """
    return tree_map(lambda x: sampler(x.shape, generator=generator, dtype=dtype or x.dtype, device=x.device), tree)


# --- moment updates (optax.tree) --------------------------------------------------------------


def tree_update_moment(updates: Tree, moments: Tree, decay: float | torch.Tensor, order: int) -> Tree:
    """``decay * m + (1 - decay) * u^order``, leafwise (optax.tree.update_moment)."""
    return tree_map(lambda u, m: (1 - decay) * (u ** order) + decay * m, updates, moments)


def tree_update_moment_per_elem_norm(updates: Tree, moments: Tree, decay: float | torch.Tensor,
                                     order: int) -> Tree:
    """``decay * m + (1 - decay) * u^order`` for a real ``u``, ``(|u|^2)^(order/2)`` for a
    complex one, leafwise (optax.tree.update_moment_per_elem_norm)."""
    def power(u):
        if not u.is_complex():
            return u ** order
        return (u * u.conj()).real ** (order // 2 if order % 2 == 0 else order / 2)

    return tree_map(lambda u, m: (1 - decay) * power(u) + decay * m, updates, moments)


def tree_update_infinity_moment(updates: Tree, moments: Tree, decay: float | torch.Tensor,
                                eps: float | torch.Tensor) -> Tree:
    """``max(|u| + eps, decay * m)``, leafwise (optax.tree.update_infinity_moment, AdaMax's)."""
    return tree_map(lambda u, m: torch.maximum(u.abs() + eps, decay * m), updates, moments)


def tree_bias_correction(moment: Tree, decay: float | torch.Tensor, count: int | torch.Tensor) -> Tree:
    """``m / (1 - decay^count)``, leafwise (optax.tree.bias_correction); the factor is computed
    in float64 and each leaf keeps its dtype."""
    correction = 1 - torch.as_tensor(decay, dtype=torch.float64) ** torch.as_tensor(count, dtype=torch.float64)
    return tree_map(lambda m: (m / correction).to(m.dtype), moment)


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


_KEY_TYPES |= {ParamKey}


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
    """``tree`` with every int-keyed dict restricted to ``keys`` (in that order). A dict
    may hold some of them only: one param group's state under ``by_group`` holds that group's
    keys, and a step may have none of them (a group whose parameters got no gradient)."""
    if _is_param_dict(tree):
        return {k: tree[k] for k in keys if k in tree}
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


def leaf_owners(tree: Tree) -> tuple[list[Any], list[int | None], TreeDef]:
    """The leaves of ``tree`` (``tree_flatten`` order), the parameter index of the int-keyed
    dict entry holding each (``None`` for a shared leaf), and the structure: what
    :func:`param_leaves` gives without the path strings (thousands of leaves, at init)."""
    pairs, treedef = _pytree.tree_flatten_with_path(tree)
    owners = [next((int(k.key) for k in path if isinstance(k, _pytree.MappingKey) and _is_param_key(k.key)), None)
              for path, _ in pairs]
    return [leaf for _, leaf in pairs], owners, treedef


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
