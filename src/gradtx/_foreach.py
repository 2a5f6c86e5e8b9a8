"""Multi-tensor kernels over lists of tensors.

Every helper takes lists of tensors (and scalars: Python numbers or 0-dim tensors) and
runs one ``torch._foreach_*`` call for the whole list. ``inplace=True`` writes the result
into the first list and returns it; ``inplace=False`` returns new tensors and leaves the
inputs untouched. Transforms use the "first write decides" pattern: the first op of an
update is called with the caller's ``inplace`` flag, later ops on the buffers it returned
are always in place, so the pure path allocates exactly its outputs.

Under ``torch.func`` transforms (``vmap`` has no batching rule for foreach ops) the same
helpers run one ordinary op per tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Union

import torch

Scalar = Union[float, int, torch.Tensor]
Tensors = list[torch.Tensor]


def _native() -> bool:
    if torch.compiler.is_compiling():
        return True
    return torch._C._functorch.maybe_current_level() is None


def recording(*lists: Sequence[torch.Tensor]) -> bool:
    """Whether autograd records ops on any of these tensors (``torch.func.grad`` included).

    Backward needs some intermediates (the output of ``sqrt`` or ``reciprocal``, say) as
    they were, so a transform that reuses temporaries in place takes its out-of-place
    formulation while this holds; otherwise it may overwrite its temporaries freely.
    """
    return torch.is_grad_enabled() and any(x.requires_grad for xs in lists for x in xs)


def _on_device(scalar: Scalar, like: Sequence[torch.Tensor]) -> Scalar:
    # Hyperparameters live on the CPU as float64 0-dim tensors; foreach kernels on an
    # accelerator want their scalar tensor on the same device.
    if isinstance(scalar, torch.Tensor) and like and scalar.device != like[0].device:
        return scalar.to(like[0].device, non_blocking=True)
    return scalar


# ``gradtx::compute_once(x)``: a copy of ``x`` that a compiler cannot fold into its consumers.
# Registered through the low-level library API: a call costs ~2 us, a torch.library.custom_op ~7.
_LIBRARY = torch.library.Library("gradtx", "FRAGMENT")
_LIBRARY.define("compute_once(Tensor x) -> Tensor")
_LIBRARY.impl("compute_once", lambda x: x.clone(), "CompositeExplicitAutograd")
torch.library.register_fake("gradtx::compute_once", lambda x: torch.empty_like(x), lib=_LIBRARY)
_compute_once = torch.ops.gradtx.compute_once.default


def _scalar_arg(scalar: Scalar, like: Sequence[torch.Tensor]) -> Scalar:
    if not isinstance(scalar, torch.Tensor):
        return scalar
    if scalar.dim() == 0 and like[0].device.type == "cpu" and torch.compiler.is_compiling():
        # Inductor's CPU code inlines a 0-dim computation (Adam's 1 - b1**t: a pow per vector
        # of 16 elements) into every element loop that reads it, which doubled Adam's step
        # time; behind an opaque op it is computed once per call and read as a number.
        return _compute_once(scalar)
    return _on_device(scalar, like)


def _call(name: str, inplace: bool, xs: Tensors, *args, **kwargs) -> Tensors:
    if not xs:
        return []
    scalar_tensor = any(isinstance(a, torch.Tensor) for a in args)
    args = tuple(_scalar_arg(a, xs) for a in args)
    if _native():
        if inplace:
            getattr(torch, f"_foreach_{name}_")(xs, *args, **kwargs)
            return xs
        out = list(getattr(torch, f"_foreach_{name}")(xs, *args, **kwargs))
    else:
        method = f"{name}_" if inplace else name
        out = []
        for i, x in enumerate(xs):
            per_tensor = [a[i] if isinstance(a, (list, tuple)) else a for a in args]
            out.append(getattr(x, method)(*per_tensor, **kwargs))
        if inplace:
            return xs
    if scalar_tensor:
        # A 0-dim x times a float64 0-dim hyperparameter promotes to float64; updates keep
        # the dtype they came in with.
        out = cast_like(out, xs)
    return out


def add(xs: Tensors, ys: Tensors | Scalar, *, alpha: float = 1, inplace: bool = False) -> Tensors:
    """``xs + alpha * ys`` (``ys`` a list) or ``xs + ys`` (``ys`` a scalar)."""
    if isinstance(ys, list):
        return _call("add", inplace, xs, ys, alpha=alpha)
    return _call("add", inplace, xs, ys)


def sub(xs: Tensors, ys: Tensors, *, alpha: float = 1, inplace: bool = False) -> Tensors:
    """``xs - alpha * ys``."""
    return _call("sub", inplace, xs, ys, alpha=alpha)


def mul(xs: Tensors, ys: Tensors | Scalar, *, inplace: bool = False) -> Tensors:
    """``xs * ys`` (``ys`` a list or a scalar)."""
    return _call("mul", inplace, xs, ys)


def div(xs: Tensors, ys: Tensors | Scalar, *, inplace: bool = False) -> Tensors:
    """``xs / ys`` (``ys`` a list or a scalar)."""
    return _call("div", inplace, xs, ys)


def lerp(xs: Tensors, ys: Tensors, weight: float, *, inplace: bool = False) -> Tensors:
    """``xs + weight * (ys - xs)``; ``ys`` is read in the dtype of ``xs`` (a moment kept
    wider than bf16 gradients, say), since lerp takes no mixed dtypes."""
    return _call("lerp", inplace, xs, cast_like(ys, xs), weight)


def addcmul(xs: Tensors, ys: Tensors, zs: Tensors, value: float = 1, *, inplace: bool = False) -> Tensors:
    """``xs + value * ys * zs``."""
    return _call("addcmul", inplace, xs, ys, zs, value=value)


def addcdiv(xs: Tensors, ys: Tensors, zs: Tensors, value: float = 1, *, inplace: bool = False) -> Tensors:
    """``xs + value * ys / zs``."""
    return _call("addcdiv", inplace, xs, ys, zs, value=value)


def sqrt(xs: Tensors, *, inplace: bool = False) -> Tensors:
    """Elementwise ``sqrt(xs)``."""
    return _call("sqrt", inplace, xs)


def reciprocal(xs: Tensors, *, inplace: bool = False) -> Tensors:
    """Elementwise ``1 / xs``."""
    return _call("reciprocal", inplace, xs)


def sign(xs: Tensors, *, inplace: bool = False) -> Tensors:
    """Elementwise ``sign(xs)`` (-1, 0 or 1)."""
    return _call("sign", inplace, xs)


def neg(xs: Tensors, *, inplace: bool = False) -> Tensors:
    """Elementwise ``-xs``."""
    return _call("neg", inplace, xs)


def abs(xs: Tensors, *, inplace: bool = False) -> Tensors:  # noqa: A001 - mirrors torch
    """Elementwise ``|xs|``."""
    return _call("abs", inplace, xs)


# Up to this many tensors, a Python loop of one-pass ops beats two foreach passes: the
# per-call overhead (a few microseconds) is small next to a pass over large tensors.
_LOOP_MAX = 16


def clamp(xs: Tensors, low: float, high: float, *, inplace: bool = False) -> Tensors:
    """Elementwise clamp into ``[low, high]``."""
    if 0 < len(xs) <= _LOOP_MAX and _native() and not torch.compiler.is_compiling():
        if inplace:
            for x in xs:
                x.clamp_(low, high)
            return xs
        return [torch.clamp(x, low, high) for x in xs]
    xs = _call("clamp_min", inplace, xs, low)
    return _call("clamp_max", True, xs, high)


def copy_(dst: Tensors, src: Tensors) -> Tensors:
    """Copy ``src`` into ``dst`` elementwise (casting) and return ``dst``."""
    if dst:
        if _native():
            torch._foreach_copy_(dst, src)
        else:
            for d, s in zip(dst, src):
                d.copy_(s)
    return dst


def clone(xs: Tensors, dtype: torch.dtype | None = None) -> Tensors:
    """New tensors with the values of ``xs`` (optionally cast)."""
    return [x.to(dtype=dtype, copy=True) for x in xs]


def cast(xs: Tensors, dtype: torch.dtype | None) -> Tensors:
    """``xs`` cast to ``dtype``; the same tensors when already of that dtype."""
    if dtype is None:
        return xs
    return [x if x.dtype == dtype else x.to(dtype) for x in xs]


def cast_like(xs: Tensors, refs: Tensors) -> Tensors:
    """Each of ``xs`` in the dtype of the matching ``refs`` tensor (the same tensor where
    they agree): updates leave a transform in the dtype their gradients came in with."""
    return [x if x.dtype == r.dtype else x.to(r.dtype) for x, r in zip(xs, refs)]


def norms(xs: Tensors) -> Tensors:
    """The l2 norm of each tensor (computed in at least float32)."""
    if not xs:
        return []
    if _native():
        return list(torch._foreach_norm(xs))
    return [torch.linalg.vector_norm(x) for x in xs]


def global_norm(xs: Tensors) -> torch.Tensor:
    """The l2 norm of all tensors together, as a float32-or-wider 0-dim tensor."""
    if not xs:
        return torch.zeros(())
    per = norms(xs)
    dtype = torch.promote_types(per[0].dtype, torch.float32)
    return torch.linalg.vector_norm(torch.stack([n.to(dtype=dtype, device=per[0].device) for n in per]))


def maximum(xs: Tensors, ys: Tensors, *, inplace: bool = False) -> Tensors:
    """Elementwise ``max(xs, ys)``."""
    return _call("maximum", inplace, xs, ys) if _native() or not inplace else [
        x.copy_(torch.maximum(x, y)) for x, y in zip(xs, ys)]


def minimum(xs: Tensors, ys: Tensors, *, inplace: bool = False) -> Tensors:
    """Elementwise ``min(xs, ys)``."""
    return _call("minimum", inplace, xs, ys) if _native() or not inplace else [
        x.copy_(torch.minimum(x, y)) for x, y in zip(xs, ys)]


def exp(xs: Tensors, *, inplace: bool = False) -> Tensors:
    """Elementwise ``exp(xs)``."""
    return _call("exp", inplace, xs)


def log(xs: Tensors, *, inplace: bool = False) -> Tensors:
    """Elementwise natural ``log(xs)``."""
    return _call("log", inplace, xs)


def pow(xs: Tensors, exponent: float, *, inplace: bool = False) -> Tensors:  # noqa: A001 - mirrors torch
    """``xs ** exponent``."""
    return _call("pow", inplace, xs, exponent)


def zeros_like(xs: Tensors, dtype: torch.dtype | None = None) -> Tensors:
    """New zero tensors shaped like ``xs`` (optionally of another dtype)."""
    return [torch.zeros_like(x, dtype=dtype) for x in xs]
