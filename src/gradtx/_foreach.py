"""Multi-tensor kernels over lists of tensors.

Every helper takes lists of tensors (and scalars: Python numbers or 0-dim tensors) and
runs one ``torch._foreach_*`` call for the whole list. ``inplace=True`` writes the result
into the first list and returns it; ``inplace=False`` returns new tensors and leaves the
inputs untouched. Transforms use the "first write decides" pattern: the first op of an
update is called with the caller's ``inplace`` flag, later ops on the buffers it returned
are always in place, so the pure path allocates exactly its outputs.

Under ``torch.func`` transforms (``vmap`` has no batching rule for foreach ops) the same
helpers run one ordinary op per tensor. Under :func:`drawing_from` (the flat path's muon
step) an out-of-place op over a few large CPU tensors writes into kept temporaries instead
of new tensors.
"""

from __future__ import annotations

import contextlib
import operator
import threading
from collections.abc import Iterator, Sequence
from typing import Union

import torch
from torch._subclasses.fake_tensor import FakeTensor

Scalar = Union[float, int, torch.Tensor]
Tensors = list[torch.Tensor]
_DTYPE = operator.attrgetter("dtype")


def without_data(x: torch.Tensor) -> bool:
    """Whether ``x`` has no values to read: a meta tensor, or a ``FakeTensor`` (under
    ``FakeTensorMode``, as memory estimators run a training step)."""
    return isinstance(x, FakeTensor) or x.is_meta


def _scalars_without_data(args: tuple, kwargs: dict) -> bool:
    return any(isinstance(a, torch.Tensor) and without_data(a) for a in (*args, *kwargs.values()))


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


def _tracked(value) -> bool:
    """Whether a scalar argument carries autograd history (a hyperparameter tensor with
    ``requires_grad``): foreach kernels take most scalars as plain numbers, which would
    drop it (or refuse it), so such calls run one ordinary op per tensor."""
    return isinstance(value, torch.Tensor) and value.requires_grad


# Ops with a keyword scalar (alpha, value), spelled out for a tensor scalar: the ordinary
# ops take those keywords as numbers only.
_SPELLED = {
    "add": lambda x, y, alpha: y * alpha,
    "sub": lambda x, y, alpha: y * alpha,
    "addcmul": lambda x, y, z, value: y * z * value,
    "addcdiv": lambda x, y, z, value: y / z * value,
}


def _per_tensor(name: str, inplace: bool, xs: Tensors, args: tuple, kwargs: dict) -> Tensors:
    out = []
    for i, x in enumerate(xs):
        per = [a[i] if isinstance(a, (list, tuple)) else a for a in args]
        if name == "lerp" and isinstance(per[1], torch.Tensor) and per[1].dtype != x.dtype:
            per[1] = per[1].to(x.dtype)  # lerp wants its weight in the tensor's dtype
        if kwargs and any(isinstance(v, torch.Tensor) for v in kwargs.values()):
            term = _SPELLED[name](x, *per, **kwargs)
            method = "sub" if name == "sub" else "add"
            out.append(getattr(x, f"{method}_" if inplace else method)(term))
        else:
            out.append(getattr(x, f"{name}_" if inplace else name)(*per, **kwargs))
    return xs if inplace else out


def _records(xs: Tensors, args: tuple, kwargs: dict | None = None) -> bool:
    """Whether autograd records an op on ``xs`` and ``args`` (one of them requires grad)."""
    if not torch.is_grad_enabled():
        return False
    for a in (*args, *(kwargs or {}).values()):
        if isinstance(a, torch.Tensor):
            if a.requires_grad:
                return True
        elif isinstance(a, (list, tuple)) and any(y.requires_grad for y in a):  # a list of tensors
            return True
    return any(x.requires_grad for x in xs)


def _replaced(xs: Tensors, new: Tensors) -> Tensors:
    # An in-place op that autograd records could overwrite a value backward needs (the output
    # of a sqrt, a factor of a product): it runs out of place instead, and the new tensors take
    # the old ones' places in the caller's list, which is all the in-place contract promises.
    xs[:] = new
    return xs


class Temporaries:
    """Kept buffers for the outputs of out-of-place ops, handed out in the order they are
    asked for (see :func:`drawing_from`): a loop asks for the same temporaries each time, so
    they are made once. On CPU a tensor over glibc's largest mmap threshold (32 MiB) is
    otherwise a fresh mapping, page-faulted in every step (measured: ``gx.muon``'s Adam side
    as one 10.9M-element buffer, flat / default 1.45-1.81 with fresh temporaries)."""

    __slots__ = ("buffers", "next")

    def __init__(self) -> None:
        self.buffers: list[torch.Tensor] = []
        self.next = 0

    def take(self, like: torch.Tensor) -> torch.Tensor:
        return self.take_new(like.shape, like.dtype, like.device)

    def take_new(self, shape: torch.Size, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        i = self.next
        self.next += 1
        if i < len(self.buffers):
            kept = self.buffers[i]
            if kept.shape == shape and kept.dtype == dtype and kept.device == device:
                return kept
            self.buffers[i] = torch.empty(shape, dtype=dtype, device=device)
            return self.buffers[i]
        self.buffers.append(torch.empty(shape, dtype=dtype, device=device))
        return self.buffers[-1]


_drawing = threading.local()


@contextlib.contextmanager
def drawing_from(temporaries: Temporaries) -> Iterator[None]:
    """Within the block, out-of-place ops over a few large CPU tensors (at least
    ``_DRAW_MIN`` elements each) write their outputs into ``temporaries``' buffers (one
    ordinary op per tensor with ``out=``: the foreach CPU kernels run the same op per tensor,
    so the numbers are the same). An output is valid until the same place is drawn again (the
    next block): whoever draws keeps nothing past it (the flat path copies the state a chain
    returns into its own tensors and consumes the updates in the step)."""
    previous = getattr(_drawing, "temporaries", None)
    _drawing.temporaries = temporaries
    temporaries.next = 0
    try:
        yield
    finally:
        _drawing.temporaries = previous


_DRAWN = frozenset({"add", "sub", "mul", "div", "lerp", "addcmul", "addcdiv", "sqrt", "reciprocal", "neg", "abs",
                    "maximum", "minimum", "exp", "log"})
_DRAW_MIN = 1 << 16  # smaller temporaries come from the heap's free lists anyway
_KEEP_ABOVE = 32 << 20  # bytes: glibc's largest mmap threshold (kept_empty)


def kept_empty(shape: torch.Size, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialised contiguous tensor of ``shape``: within :func:`drawing_from`, a CPU
    one over glibc's largest mmap threshold (32 MiB: below it, the heap's free lists serve it
    again at once) is a kept temporary (valid until the same place is drawn again), else a new
    one. For a transform's own out-of-place outputs (``out=``), such as
    ``scale_by_factored_rms``'s squares and scalings under ``flat=True``: each place drawn
    holds memory between steps, so only those the heap would not serve are kept."""
    temporaries = getattr(_drawing, "temporaries", None)
    if (temporaries is None or device.type != "cpu" or not dtype.is_floating_point
            or shape.numel() * dtype.itemsize <= _KEEP_ABOVE or torch.compiler.is_compiling()):
        return torch.empty(shape, dtype=dtype, device=device)
    return temporaries.take_new(shape, dtype, device)


def _drawn(name: str, xs: Tensors, args: tuple, kwargs: dict) -> Tensors | None:
    """``name``'s outputs written into drawn temporaries; ``None`` when none are being drawn
    or the op does not qualify."""
    temporaries = getattr(_drawing, "temporaries", None)
    if (temporaries is None or name not in _DRAWN or len(xs) > _LOOP_MAX or torch.compiler.is_compiling()
            or any(isinstance(v, torch.Tensor) for v in kwargs.values()) or _records(xs, args, kwargs)):
        return None
    per_tensor = []
    for i, x in enumerate(xs):
        # (an empty tensor, the other side's leaf under muon's split, does not count)
        if x.device.type != "cpu" or 0 < x.numel() < _DRAW_MIN or not x.is_floating_point():
            return None
        per = [a[i] if isinstance(a, (list, tuple)) else a for a in args]
        if name == "lerp" and isinstance(per[1], torch.Tensor):
            per[1] = per[1].to(x.dtype)  # lerp wants its weight in the tensor's dtype
        # the output keeps x's dtype (a 0-dim or Python scalar does not promote it)
        if any(isinstance(a, torch.Tensor) and a.dim() > 0 and a.dtype != x.dtype for a in per):
            return None
        per_tensor.append(per)
    if not any(x.numel() for x in xs):
        return None
    op = getattr(torch, name)
    return [op(x, *per, **kwargs, out=temporaries.take(x)) for x, per in zip(xs, per_tensor)]


def _call(name: str, inplace: bool, xs: Tensors, *args, **kwargs) -> Tensors:
    if not xs:
        return []
    if inplace and _records(xs, args, kwargs):
        return _replaced(xs, _call(name, False, xs, *args, **kwargs))
    scalar_tensor = any(isinstance(a, torch.Tensor) for a in args) or any(
        isinstance(v, torch.Tensor) for v in kwargs.values())
    if scalar_tensor and (any(_tracked(a) for a in args) or any(_tracked(v) for v in kwargs.values())):
        out = _per_tensor(name, inplace, xs, args, kwargs)
    elif any(isinstance(v, torch.Tensor) for v in kwargs.values()) and torch.compiler.is_compiling():
        # Traced, a foreach op's tensor alpha/value (a hyperparameter compile=True keeps as a
        # tensor) came out wrong (nesterov SGD off by 3e-3 in 5 steps); spelled out it is right.
        out = _per_tensor(name, inplace, xs, tuple(_scalar_arg(a, xs) for a in args),
                          {k: _scalar_arg(v, xs) for k, v in kwargs.items()})
    elif _native():
        args = tuple(_scalar_arg(a, xs) for a in args)
        try:
            if inplace:
                getattr(torch, f"_foreach_{name}_")(xs, *args, **kwargs)
                return xs
            out = _drawn(name, xs, args, kwargs)
            if out is None:
                out = list(getattr(torch, f"_foreach_{name}")(xs, *args, **kwargs))
        except RuntimeError:
            # A foreach kernel reads a tensor scalar's value (.item()) before it runs, which a
            # meta or fake one has not: spelled out as tensor ops it needs none. (Raised while
            # reading the arguments, so nothing was written.)
            if not (scalar_tensor and _scalars_without_data(args, kwargs)):
                raise
            out = _per_tensor(name, inplace, xs, args, kwargs)
    else:
        out = _per_tensor(name, inplace, xs, args, kwargs)
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
    if isinstance(weight, torch.Tensor) and torch.compiler.is_compiling() and xs:
        # Inductor's foreach lerp reads a tensor weight (a hyperparameter compile=True keeps as a
        # tensor) at about float32 precision (1.6e-8 off in float64); spelled out it is exact.
        w = _scalar_arg(weight, xs)
        ys = cast_like(ys, xs)
        if inplace:
            torch._foreach_add_(xs, torch._foreach_mul(torch._foreach_sub(ys, xs), w))
            return xs
        return cast_like(torch._foreach_add(xs, torch._foreach_mul(torch._foreach_sub(ys, xs), w)), xs)
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


def tanh(xs: Tensors, *, inplace: bool = False) -> Tensors:
    return _call("tanh", inplace, xs)


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
    if 0 < len(xs) <= _LOOP_MAX and _native() and not torch.compiler.is_compiling() and not _records(xs, (low, high)):
        if inplace:
            for x in xs:
                x.clamp_(low, high)
            return xs
        return [torch.clamp(x, low, high) for x in xs]
    xs = _call("clamp_min", inplace, xs, low)
    return _call("clamp_max", True, xs, high)


def copy_(dst: Tensors, src: Tensors) -> Tensors:
    """Copy ``src`` into ``dst`` elementwise (casting) and return ``dst``."""
    if dst and _records(dst, (src,)):
        return _replaced(dst, [s.to(dtype=d.dtype, copy=True) for d, s in zip(dst, src)])
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


def clone_like(xs: Tensors, refs: Tensors) -> Tensors:
    """New tensors with the values of ``xs``, each in the dtype of the matching ``refs`` tensor."""
    return [x.to(dtype=r.dtype, copy=True) for x, r in zip(xs, refs)]


def cast(xs: Tensors, dtype: torch.dtype | None) -> Tensors:
    """``xs`` cast to ``dtype`` (a dtype the caller chose, e.g. an ``accumulator_dtype``);
    the same tensors when already of that dtype, ``xs`` itself when ``dtype`` is ``None``.
    To follow other tensors' dtypes leaf by leaf use :func:`cast_like`: a tree may mix dtypes."""
    if dtype is None:
        return xs
    return [x if x.dtype == dtype else x.to(dtype) for x in xs]


def cast_like(xs: Tensors, refs: Tensors) -> Tensors:
    """Each of ``xs`` in the dtype of the matching ``refs`` tensor (the same tensor where
    they agree): updates leave a transform in the dtype their gradients came in with."""
    if not torch.compiler.is_compiling():  # (Dynamo cannot trace attrgetter)
        dtypes = set(map(_DTYPE, refs))
        if len(dtypes) == 1 and set(map(_DTYPE, xs)) == dtypes:  # one dtype throughout: C-level passes
            return list(xs)
    return [x if x.dtype == r.dtype else x.to(r.dtype) for x, r in zip(xs, refs)]


# --- complex tensors ---------------------------------------------------------------------
# torch.optim steps a complex parameter as its torch.view_as_real view (a real tensor with a
# trailing axis of size 2: real and imaginary parts); transforms whose rule is not linear
# in the update do the same through these helpers, one check per update.


def any_complex(xs: Tensors) -> bool:
    """Whether any of ``xs`` is complex."""
    return any(x.is_complex() for x in xs)


def as_real(xs: Tensors) -> Tensors:
    """Each complex tensor of ``xs`` as its real view (``torch.view_as_real``: the same
    memory, a trailing axis of size 2), the others as they are."""
    return [torch.view_as_real(x.resolve_conj()) if x.is_complex() else x for x in xs]


def _complex_viewable(x: torch.Tensor) -> bool:
    # view_as_complex needs whole complex elements: unit last stride, even other strides and
    # an even storage offset (a piece cut from a flat real vector may start at an odd one).
    # Dynamo cannot trace storage_offset; compiled code works on values, not on storage.
    if torch.compiler.is_compiling():
        return x.stride(-1) == 1
    return x.stride(-1) == 1 and x.storage_offset() % 2 == 0 and all(s % 2 == 0 for s in x.stride()[:-1])


def as_complex_like(xs: Tensors, refs: Tensors, views: Tensors | None = None) -> Tensors:
    """Undo :func:`as_real`: where ``refs[i]`` is complex, ``xs[i]`` (a real tensor with a
    trailing axis of size 2) as a complex tensor; ``refs[i]`` itself when ``xs[i]`` is
    ``views[i]``, the real view :func:`as_real` made of it (written in place)."""
    out = []
    for i, (x, r) in enumerate(zip(xs, refs)):
        if not r.is_complex() or x.is_complex():
            out.append(x)
        elif views is not None and x is views[i]:
            out.append(r)
        else:
            whole = x if _complex_viewable(x) else x.clone(memory_format=torch.contiguous_format)
            out.append(torch.view_as_complex(whole))
    return out


class RealViews:
    """Lists of tensors with their complex tensors seen as real (:func:`as_real`), and the way
    back: ``real`` holds the views; ``back(*lists)`` gives each new list its complex form,
    following the list at the same position (the first: the updates)."""

    __slots__ = ("refs", "real")

    def __init__(self, *lists: Tensors):
        self.refs = lists
        self.real = tuple(as_real(xs) for xs in lists)

    def back(self, *lists: Tensors) -> tuple:
        return tuple(as_complex_like(xs, refs, views) for xs, refs, views in zip(lists, self.refs, self.real))


def real_views(updates: Tensors, *lists: Tensors) -> RealViews | None:
    """``RealViews(updates, *lists)`` when an update is complex, else ``None`` (one check per
    update; a transform whose rule is not linear runs on the real views, as torch.optim does
    with complex parameters). ``lists`` hold the tensors shaped like the updates (state,
    params)."""
    return RealViews(updates, *lists) if any_complex(updates) else None


def real_dtype(dtype: torch.dtype) -> torch.dtype:
    """``dtype``, or the dtype of its real part for a complex one."""
    return dtype.to_real() if dtype.is_complex else dtype


def wide_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """The dtype statistics (norms, sums of squares) of tensors of ``dtypes`` are computed
    in: float32, or the widest real dtype among them when wider."""
    out = torch.float32
    for d in dtypes:
        out = torch.promote_types(out, real_dtype(d))
    return out


def norms(xs: Tensors, dtype: torch.dtype | None = None) -> Tensors:
    """The l2 norm of each tensor as a real 0-dim tensor, computed and returned in ``dtype``,
    by default in :func:`wide_dtype` of the tensor's own dtype (a bfloat16 tensor's norm in
    float32, a float64 tensor's in float64)."""
    if not xs:
        return []
    if dtype is None:
        kinds = {x.dtype for x in xs}
        if len(kinds) > 1:  # one norm per leaf in its own precision: group by dtype
            out: list = [None] * len(xs)
            for kind in kinds:
                idx = [i for i, x in enumerate(xs) if x.dtype == kind]
                for i, n in zip(idx, norms([xs[i] for i in idx], wide_dtype(kind))):
                    out[i] = n
            return out
        dtype = wide_dtype(kinds.pop())
    if not _native():
        return [torch.linalg.vector_norm(x, dtype=dtype.to_complex() if x.is_complex() else dtype) for x in xs]
    if any_complex(xs):  # the kernel's dtype is the input's kind: complex in, real out
        real = [i for i, x in enumerate(xs) if not x.is_complex()]
        cplx = [i for i, x in enumerate(xs) if x.is_complex()]
        out = [None] * len(xs)
        for idx, kind in ((real, dtype), (cplx, dtype.to_complex())):
            if idx:
                for i, n in zip(idx, torch._foreach_norm([xs[i] for i in idx], 2, dtype=kind)):
                    out[i] = n
        return out
    return list(torch._foreach_norm(xs, 2, dtype=dtype))


def global_norm(xs: Tensors) -> torch.Tensor:
    """The l2 norm of all tensors together, as a real 0-dim tensor computed in the widest
    precision among them (at least float32): a float64 leaf's share is never rounded to a
    lower-precision neighbour's dtype."""
    if not xs:
        return torch.zeros(())
    dtype = wide_dtype(*{x.dtype for x in xs})
    per = norms(xs, dtype)
    device = per[0].device
    return torch.linalg.vector_norm(torch.stack([n.to(device) for n in per]))


def maximum(xs: Tensors, ys: Tensors, *, inplace: bool = False) -> Tensors:
    """Elementwise ``max(xs, ys)``."""
    return _call("maximum", inplace, xs, ys) if _native() or not inplace else copy_(xs, _call("maximum", False, xs, ys))


def minimum(xs: Tensors, ys: Tensors, *, inplace: bool = False) -> Tensors:
    """Elementwise ``min(xs, ys)``."""
    return _call("minimum", inplace, xs, ys) if _native() or not inplace else copy_(xs, _call("minimum", False, xs, ys))


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
