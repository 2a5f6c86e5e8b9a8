"""Which update tensors a chain may write into: ownership known by construction.

Every member of a chain is either *declared* (``@transform(inplace=True)``, see
:func:`gradtx.base.supports_inplace`) or not. A declared member returns, for each leaf,
either a tensor it was given or one it made that nothing else holds; an undeclared one may
return anything (its state, its input, one tensor for two leaves) and keep anything. So the
chain knows, by identity alone, which of the tensors in hand it owns:

- under ``inplace=True`` its caller handed it the update buffers: it owns them;
- a declared member's result is owned where it made it, and keeps the status of the tensor
  it was given where it passed one through;
- an undeclared member's results are never owned; before a declared member writes into
  them under ``inplace=True`` the chain copies them, and before an undeclared member sees a
  buffer its caller may reuse, the chain hands it a copy it may keep.

On the pure path (``inplace=False``) a member whose state is small (hyperparameters, a step
count) and whose every update tensor is owned runs with ``inplace=True`` on a private copy
of its state: it writes into the chain's temporaries and allocates nothing. Only float32
and float64 leaves are written so, where torch's in-place and allocating kernels give the
same bits. Nothing here reads reference counts or other runtime counters.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch

from . import _foreach as F  # noqa: N812
from ._tree import Tree, tree_flatten, tree_leaves, tree_unflatten

# Only these dtypes are written in place on the pure path: for them torch's in-place and
# allocating kernels give the same bits. (torch 2.13 on CPU: ``_foreach_mul_`` by a Python
# number rounds bfloat16 and float16 differently from ``_foreach_mul``.)
SAME_BITS_DTYPES = (torch.float32, torch.float64)

# State of at most this many elements (over all its tensors) counts as small: a private
# copy of it per step costs next to nothing.
SMALL_STATE_NUMEL = 64


def enabled() -> bool:
    """Whether the pure path may reuse temporaries at all: eager, outside ``torch.func``
    transforms (batched tensors, and in-place writes there follow other rules) and outside
    ``torch.compile`` (which plans its own buffers)."""
    return not torch.compiler.is_compiling() and F._native()


def ids(leaves: list[Any]) -> set[int]:
    """The identities of the tensors among ``leaves``."""
    return {id(x) for x in leaves if isinstance(x, torch.Tensor)}


def all_owned(leaves: list[Any], owned: set[int]) -> bool:
    """Every tensor of ``leaves`` is owned, appears once, and is of a dtype written in place
    with the allocating path's bits."""
    seen: set[int] = set()
    for x in leaves:
        if x is None:
            continue
        if (not isinstance(x, torch.Tensor) or id(x) not in owned or id(x) in seen
                or x.dtype not in SAME_BITS_DTYPES):
            return False
        seen.add(id(x))
    return True


def copy_leaves(tree: Tree, copy: Callable[[torch.Tensor], bool]) -> Tree:
    """``tree`` with each tensor leaf for which ``copy(leaf)`` holds, and every repeat of a
    tensor, replaced by a copy; ``tree`` itself when nothing is copied."""
    leaves, treedef = tree_flatten(tree)
    seen: set[int] = set()
    out, changed = [], False
    for x in leaves:
        if isinstance(x, torch.Tensor):
            if copy(x) or id(x) in seen:
                x, changed = x.clone(), True
            else:
                seen.add(id(x))
        out.append(x)
    return tree_unflatten(out, treedef) if changed else tree


def has_small_state(tx: Any) -> bool:
    """Whether ``tx`` keeps only a few numbers of state whatever the params: its ``init``
    on two different sets of meta tensors gives the same small state (same leaves, shapes
    and dtypes). Any failure (an ``init`` that reads values or needs a structure) is a no."""
    def signature(params: list[torch.Tensor]) -> list[Any] | None:
        leaves = tree_leaves(tx.init(params))
        sig = [(tuple(x.shape), x.dtype) if isinstance(x, torch.Tensor) else type(x) for x in leaves]
        numel = sum(x.numel() for x in leaves if isinstance(x, torch.Tensor))
        return sig if numel <= SMALL_STATE_NUMEL else None

    try:
        with warnings.catch_warnings():  # a probe, not the user's init: stay quiet
            warnings.simplefilter("ignore")
            one = signature([torch.empty(1, device="meta")])
            two = signature([torch.empty(2, 3, device="meta"), torch.empty(5, device="meta")])
    except Exception:  # noqa: BLE001 - not provably small: never written in place
        return False
    return one is not None and one == two


def _version(t: torch.Tensor) -> int | None:
    try:
        return t._version
    except RuntimeError:  # inference tensors keep no version counter
        return None


def private_copy(state: Tree) -> tuple[Tree, Callable[[Tree], Tree]] | None:
    """A copy of a small ``state`` that a member may mutate, and a function that maps the
    member's new state back onto the caller's tensors wherever it left them untouched (so
    ``lr`` stays the caller's tensor, as on the allocating path). ``None`` when the state
    is not small after all, or a tensor in it requires grad."""
    leaves, treedef = tree_flatten(state)
    tensors = [x for x in leaves if isinstance(x, torch.Tensor)]
    if sum(x.numel() for x in tensors) > SMALL_STATE_NUMEL:
        return None
    if not tensors:
        return state, lambda new_state: new_state
    if torch.is_grad_enabled() and any(x.requires_grad for x in tensors):
        return None
    copies = [x.clone() if isinstance(x, torch.Tensor) else x for x in leaves]
    back = {id(c): (x, _version(c)) for c, x in zip(copies, leaves) if isinstance(c, torch.Tensor)}

    def restore(new_state: Tree) -> Tree:
        new_leaves, new_treedef = tree_flatten(new_state)
        out, all_original = [], new_treedef == treedef
        for x in new_leaves:
            entry = back.get(id(x)) if isinstance(x, torch.Tensor) else None
            if entry is not None and entry[1] is not None and _version(x) == entry[1]:
                out.append(entry[0])
            else:
                out.append(x)
                all_original = False
        if all_original and all(a is b for a, b in zip(out, leaves)):
            return state
        return tree_unflatten(out, new_treedef)

    return tree_unflatten(copies, treedef), restore


def records(params: Tree | None, extra_args: dict) -> bool:
    """Whether autograd records through ``params`` or the extra arguments: a member then
    keeps its allocating form, since backward may need a temporary as it was."""
    if not torch.is_grad_enabled():
        return False
    found = tree_leaves(params) + tree_leaves(list(extra_args.values()))
    return any(isinstance(x, torch.Tensor) and x.requires_grad for x in found)
