"""Chain-owned temporaries: which update buffers a chain may overwrite on the pure path.

A chain member called with ``inplace=False`` returns updates that are often fresh tensors
nobody else can see (Adam's direction, a scaled copy). The next member would allocate yet
another full-size tensor for its result; fresh memory costs page faults, several times a
pass over memory already mapped. When every update tensor a member receives is such a
temporary and the member's state is small (hyperparameters, a step count), the chain calls
it with ``inplace=True`` on a private copy of that state instead: it writes into the
temporaries, and the caller can tell only by the missing allocations.

"Nobody else can see it" is checked on the tensor itself, not inferred from where it came
from, so a member that passes the caller's tensors through, keeps its output in its state,
returns a tensor held in a closure or a view of anything, is simply not written into:

- ``sys.getrefcount``: no Python reference but the chain's own list of leaves. The chain
  keeps its inputs (updates, state, params, extra arguments) and the new states alive
  meanwhile and rebuilds the update tree's containers itself, so anything reachable from
  them, or from a container a member shares with its state, counts as a second reference;
- ``Tensor._use_count``: no C++ owner either (a parameter's ``.grad``, a view's base);
- the storage's use count: no other tensor (a view, a ``detach()``) on the same memory;
- a plain, strided, dense float32 or float64 tensor that does not require grad.

Counts are calibrated once on a fresh tensor, so they do not depend on how this Python
version counts the references of a call; where torch lacks the counters, nothing is owned.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from typing import Any

import torch

from . import _foreach as F  # noqa: N812
from ._tree import Tree, tree_flatten, tree_leaves, tree_unflatten

# Only these dtypes are written in place: for them torch's in-place and allocating kernels
# give the same bits. (torch 2.13 on CPU: ``_foreach_mul_`` by a Python number rounds
# bfloat16 and float16 differently from ``_foreach_mul``.)
SAME_BITS_DTYPES = (torch.float32, torch.float64)

# State of at most this many elements (over all its tensors) counts as small: a private
# copy of it per step costs next to nothing.
SMALL_STATE_NUMEL = 64

_getrefcount = sys.getrefcount
_storage_use_count = getattr(torch._C, "_storage_Use_Count", None)


def _scan(leaves: list[Any], refs: int, storage_refs: int) -> bool:
    # One function for the calibration and the real check, so both count the same way.
    for t in leaves:
        if t is None:
            continue
        if (type(t) is not torch.Tensor or _getrefcount(t) > refs or t.requires_grad
                or t.dtype not in SAME_BITS_DTYPES or t.layout is not torch.strided or t._use_count() != 1
                or _storage_use_count(t.untyped_storage()._cdata) > storage_refs):
            return False
    return True


def _calibrate() -> tuple[int, int] | None:
    if _storage_use_count is None or not hasattr(torch.Tensor, "_use_count"):
        return None
    try:
        fresh = torch.empty(1, dtype=torch.float32)
        storage_refs = _storage_use_count(fresh.untyped_storage()._cdata)
        del fresh
        refs = next((r for r in range(1, 16) if _scan([torch.empty(1, dtype=torch.float32)], r, storage_refs)), None)
        if refs is None:
            return None
        # The counts must tell a shared tensor from an exclusive one, else own nothing.
        held = torch.empty(1, dtype=torch.float32)
        if _scan([held], refs, storage_refs) or _scan([torch.empty(2, dtype=torch.float32)[:1]], refs, storage_refs):
            return None
        return refs, storage_refs
    except Exception:  # noqa: BLE001 - an unusual build: fall back to always allocating
        return None


_COUNTS = _calibrate()


def enabled() -> bool:
    """Whether this call may reuse temporaries at all: eager, outside ``torch.func``
    transforms (batched tensors, and in-place writes there follow other rules) and outside
    ``torch.compile`` (which plans its own buffers and has no data to count)."""
    return _COUNTS is not None and not torch.compiler.is_compiling() and F._native()


def exclusive(leaves: list[Any], held_by_tree: bool = False) -> bool:
    """Every tensor of ``leaves`` is referenced by this list alone (``None`` leaves are
    skipped), so writing into it is invisible to anyone else. The caller must hold no
    other reference: neither a tree built from them nor a loop variable. With
    ``held_by_tree`` one more reference each is allowed (the tree they came from): a
    necessary condition only, to say no early."""
    if _COUNTS is None:
        return False
    refs, storage_refs = _COUNTS
    return _scan(leaves, refs + held_by_tree, storage_refs)


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
