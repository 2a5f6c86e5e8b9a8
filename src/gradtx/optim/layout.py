"""Memory layouts the adapter's kernels may assume, and what they do with the others.

torch's fused optimizer kernels (``torch._fused_adam_`` ...) and the compiled path's flat
views walk a tensor's storage linearly: element ``i`` of the parameter, its gradient and
each state buffer is the ``i``-th element of their memory. That is right only when every
tensor involved is *dense and non-overlapping* (its elements fill a block of memory, each
once) and all of them have the *same strides*. A slice ``base[:, ::2]`` is not dense (the
kernel would write the elements between, which belong to ``base``); a transposed parameter
is dense but autograd or the user may give it a gradient of other strides
(``p.grad = g.t()``), and the elements would then be paired wrongly. ``fits`` tells which
tensors the kernels may take as they are; the others run on contiguous copies (see
``gradtx.optim.fused``). A parameter whose elements share memory (``base.expand(3, 4)``)
cannot be updated in place by any path: ``check_no_overlap`` refuses it.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

__all__ = ["check_distinct", "check_no_overlap", "fits", "is_dense", "same_strides"]


def is_dense(x: torch.Tensor) -> bool:
    """Whether the elements of ``x`` fill a block of memory, each once, in some order of its
    dimensions (contiguous, channels-last, transposed...; not a slice with a step or an
    expanded tensor). The rule of ``TensorImpl::compute_non_overlapping_and_dense``."""
    if x.is_contiguous():
        return True
    expected = 1
    for stride, size in sorted((st, sz) for sz, st in zip(x.shape, x.stride()) if sz != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def same_strides(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether ``a`` and ``b`` (of one shape) lay out their elements alike: equal strides on
    every dimension longer than 1 (the stride of a size-1 dimension is never used)."""
    return all(sa == sb for sa, sb, size in zip(a.stride(), b.stride(), a.shape) if size != 1)


def fits(p: torch.Tensor, others: Iterable[torch.Tensor]) -> bool:
    """Whether a kernel that walks memory linearly updates ``p`` exactly when it reads and
    writes ``others`` (its gradient and state buffers, shaped like ``p``) alongside."""
    if p.is_contiguous():
        # the common case in two C calls per tensor: contiguous tensors of one shape agree
        return all(x.is_contiguous() for x in others)
    return is_dense(p) and all(same_strides(x, p) for x in others)


def check_no_overlap(params: Iterable[torch.Tensor], where: str) -> None:
    """Raise ``ValueError`` for a parameter some of whose elements share memory
    (``base.expand(3, 4)``): no update can write each element on its own."""
    for i, p in enumerate(params):
        check_distinct(p, f"{where}[{i}]")


def check_distinct(p: torch.Tensor, what: str) -> None:
    """:func:`check_no_overlap` for one tensor, named ``what`` in the error."""
    # 1: overlap for sure; 2: too hard to tell (a strided slice), left to the kernels
    if isinstance(p, torch.Tensor) and torch._debug_has_internal_overlap(p) == 1:
        raise ValueError(f"{what} (shape {tuple(p.shape)}, strides {p.stride()}) has elements that share memory "
                         "(an expanded tensor?), so it cannot be updated in place; give it memory of its own, "
                         "e.g. nn.Parameter(t.clone())")
