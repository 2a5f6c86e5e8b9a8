"""Where the adapter puts a chain's state in memory: staggered against 4K aliasing, on huge pages.

An optimizer step streams through a parameter, its gradient and its state buffers element by
element. When two of those streams start at the same address modulo 4 KiB, the CPU takes a
store into one for a store to the load it is about to make from the other ("4K aliasing")
and stalls. Large allocations come from ``mmap`` and all start at the same offset past a
page, so a state made by ``zeros_like(p)`` sits exactly like its parameter and its gradient.
Measured with torch's fused AdamW kernel on one tensor of 16.8M float32, one thread
(``python benchmarks/aliasing.py``, docs/benchmarks.md): the four streams at one offset 14.2 ms
a call; the first moment 1 KiB off the others 10.0 ms; both moments off, at distinct offsets,
9.4 ms.

:func:`staggered_init` runs a chain's ``init`` and moves each large per-parameter state
tensor on the CPU whose elements are all one value (zeros or a constant: the initial state of
nearly every optimizer) to memory starting 2, 3, then 2.5, 3.5, 0.5, 1.5 KiB past its
parameter's offset modulo 4 KiB. (The flat path's gradient buffer sits 1 KiB past its
parameters; a gradient that backward allocates afresh each step lands where the allocator
puts it, for a large one its parameter's offset.) The original is freed before its
replacement is made, so no transient copy is held, and the values are the same bit for bit.
Any other tensor (a copy of the parameter, a view of it or of anything, one sharing its
memory with another state tensor, one not contiguous, one on a GPU, where this stall does not
exist) stays where it is. Each moved tensor costs 4 KiB of
padding, so only tensors of at least :data:`MIN_BYTES` are moved.

Buffers :func:`at_offset` makes on the CPU (these state tensors and the flat path's buffers)
of at least :data:`HUGE_PAGE_BYTES` are also backed by transparent huge pages where Linux
allows it (:func:`huge_pages`), so that streaming through them takes fewer address
translations.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable
from typing import Any

import torch

from .. import _foreach as F  # noqa: N812
from .._tree import leaf_owners, tree_unflatten

__all__ = ["HUGE_PAGE_BYTES", "MIN_BYTES", "alias", "at_offset", "contiguous_strides", "huge_pages", "staggered_init"]

MIN_BYTES = 256 * 1024  # padding of 4 KiB is at most 1.6% of a moved tensor

# bytes past the parameter's offset (mod 4 KiB) for its 1st, 2nd, ... moved state tensor
_OFFSETS = (2048, 3072, 2560, 3584, 512, 1536)

_BITS = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def contiguous_strides(shape: torch.Size) -> tuple[int, ...]:
    """The strides of a contiguous tensor of ``shape``."""
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


def alias(base: torch.Tensor, offset: int, shape: torch.Size) -> torch.Tensor:
    """A tensor over ``base``'s memory from element ``offset``, shaped ``shape`` (contiguous),
    with a version counter of its own (a view would share ``base``'s) and no view bookkeeping."""
    out = torch.empty(0, dtype=base.dtype, device=base.device)
    return out.set_(base.untyped_storage(), base.storage_offset() + offset, shape, contiguous_strides(shape))


def at_offset(shape: torch.Size, dtype: torch.dtype, device: torch.device, offset: int) -> torch.Tensor:
    """An uninitialised contiguous tensor whose data starts ``offset`` bytes past a 4 KiB
    boundary (``offset`` a multiple of 64 and of the element size), with no view bookkeeping
    (the padding is its storage's own); on the CPU, one of at least :data:`HUGE_PAGE_BYTES`
    backed by huge pages where the system allows (:func:`huge_pages`)."""
    size = torch.empty((), dtype=dtype).element_size()
    base = torch.empty(shape.numel() + 4096 // size, dtype=dtype, device=device)
    if base.device.type == "cpu" and HUGE_PAGE_BYTES is not None and base.numel() * size >= HUGE_PAGE_BYTES:
        huge_pages(base)  # before the first write, which maps the pages
    return alias(base, (offset - base.data_ptr()) % 4096 // size, shape)


# CPU buffers of at least this many bytes get huge pages; None: none do
HUGE_PAGE_BYTES: int | None = 8 << 20

_MADV_HUGEPAGE = 14  # <sys/mman.h> on Linux
_madvise: Any = None


def huge_pages(x: torch.Tensor) -> bool:
    """Ask Linux to back ``x``'s memory (a contiguous CPU tensor not yet written) with transparent huge
    pages: a step streams through tens of megabytes per buffer, and a 2 MiB page needs one
    address translation where 4 KiB pages need 512 (``benchmarks/aliasing.py --huge-pages``).
    :func:`at_offset` asks it for every CPU buffer of at least :data:`HUGE_PAGE_BYTES` (the flat
    path's buffers, large state); set that to ``None`` to turn it off. torch's
    ``THP_MEM_ALLOC_ENABLE=1`` does the same for all of torch's allocations. Changes nothing
    where THP is off or already always on, or off Linux; ``False`` when no advice was taken."""
    global _madvise
    if _madvise is None:
        _madvise = False
        if sys.platform.startswith("linux"):
            try:
                fn = ctypes.CDLL(None, use_errno=True).madvise
                fn.argtypes, fn.restype = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int), ctypes.c_int
                _madvise = fn
            except (OSError, AttributeError):
                pass
    if not _madvise or x.device.type != "cpu" or not x.is_contiguous():
        return False  # (numel bytes from data_ptr() would not be the tensor's memory)
    # the whole 2 MiB pages within x: memory beside it (another allocation on the heap) keeps
    # its small pages, so no page of it can be made resident by the advice
    huge = 2 << 20
    start = -(-x.data_ptr() // huge) * huge
    stop = (x.data_ptr() + x.numel() * x.element_size()) // huge * huge
    return stop > start and _madvise(start, stop - start, _MADV_HUGEPAGE) == 0


def _constant(x: torch.Tensor) -> torch.Tensor | None:
    """The one value every element of ``x`` holds bit for bit (a 0-dim copy), or ``None``."""
    flat = x.reshape(-1)
    if flat.numel() == 0:
        return None
    size = flat.element_size()
    # an element's bits as one integer (complex128: a row of two)
    bits = flat.view(_BITS[size]) if size in _BITS else torch.view_as_real(flat).view(torch.int64)
    # torch.equal on an expanded first element: one pass, no temporary the size of x
    if not torch.equal(bits, bits[:1].expand_as(bits)):
        return None
    return flat[0].clone()


def _movable(leaf: Any, param: torch.Tensor | None, param_storages: set[int]) -> bool:
    # a tensor that owns its whole storage (not a view: a state holding a buffer and views of
    # it, or views of one buffer, must keep them aliased) and is not a parameter's memory
    return (param is not None and type(leaf) is torch.Tensor and leaf.device.type == "cpu"
            and not leaf.requires_grad and leaf.is_contiguous() and leaf.shape == param.shape
            and leaf.numel() * leaf.element_size() >= MIN_BYTES
            and leaf._base is None and leaf.storage_offset() == 0
            and leaf.untyped_storage().nbytes() == leaf.numel() * leaf.element_size()
            and leaf.untyped_storage().data_ptr() not in param_storages)


def staggered_init(init: Callable[[dict], Any], params: dict) -> Any:
    """``init(params)`` with its large constant per-parameter state tensors moved to memory
    staggered against their parameter's (see the module docstring)."""
    if not any(isinstance(p, torch.Tensor) and p.device.type == "cpu" and p.numel() * p.element_size() >= MIN_BYTES
               and not F.without_data(p) for p in params.values()):
        # nothing to move: no pass over the state (thousands of small tensors); fake tensors
        # (FakeTensorMode) have no memory to place
        return init(params)
    state = init(params)
    leaves, owners, treedef = leaf_owners(state)
    del state  # the list then holds the only references: each original is freed when replaced
    by_index = {int(k): p for k, p in params.items()}
    param_storages = {p.untyped_storage().data_ptr() for p in params.values() if isinstance(p, torch.Tensor)}
    # a tensor held at two places in the state, or whose memory another leaf shares, must stay
    # where it is (one tensor, the same memory)
    references: dict[int, int] = {}
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor):
            ptr = leaf.untyped_storage().data_ptr()
            references[ptr] = references.get(ptr, 0) + 1
    moved: dict[int, int] = {}  # parameter index -> state tensors moved so far
    for i, index in enumerate(owners):
        leaf = leaves[i]
        param = by_index.get(index) if index is not None else None
        if not _movable(leaf, param, param_storages) or references[leaf.untyped_storage().data_ptr()] != 1:
            continue
        value = _constant(leaf)
        if value is None:
            continue
        shape, dtype, device = leaf.shape, leaf.dtype, leaf.device
        leaves[i] = leaf = None  # freed here, before its replacement exists
        j = moved.get(index, 0)
        moved[index] = j + 1
        offset = (param.data_ptr() + _OFFSETS[j % len(_OFFSETS)]) % 4096
        leaves[i] = at_offset(shape, dtype, device, offset).fill_(value)
    return tree_unflatten(leaves, treedef)
