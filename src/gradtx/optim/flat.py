"""Contiguous storage for ``gx.Optimizer(..., flat=True)``: one kernel pass per step whatever
the number of parameters.

Each param group's stepped parameters of one (device, dtype) become views into one flat
buffer, their gradients views into a second (the design of Megatron-LM's and DeepSpeed's
contiguous gradient buffers and of DDP's ``gradient_as_bucket_view``), and the chain's
per-parameter state lives in flat buffers too. An elementwise chain (``gx.is_elementwise``)
then runs over one tensor per buffer: torch's fused kernel, one in-place multi-tensor op of
one tensor, or the compiled graph with one slot; its numbers cannot depend on the split.

- **State**: the chain runs on a state over the flat buffers (the *flat state*); the
  adapter's own per-group state (what ``opt.state``, ``state_dict`` and the default path
  see) holds views of its segments and the same shared tensors (step counts,
  hyperparameters). So checkpoints have the default layout and move both ways; a state
  loaded or made by the default path is copied in at the next flat step.
- **Gradients**: autograd adds into a gradient that exists in place, so backward fills the
  buffer. The gradient views of a buffer are views of one base tensor and share its version
  counter: each in-place write into any of them (backward's addition, clipping, unscaling)
  moves it by one. ``opt.zero_grad()`` fills the buffer in place and keeps the views; with
  ``set_to_none=True`` (torch's default) it fills it with -0.0, which backward's addition
  turns into the gradient, so a parameter that backward did not reach reads as having no
  gradient, as after torch's ``zero_grad``: its gradient is set to ``None`` and that step
  runs on the default path, which skips it. (A gradient of exactly -0.0 in every element
  looks the same and is taken as not reached.)
- **Checks each step**, at a cost that does not grow with the number of parameters when
  nothing changed (the usual loop): the group's ``params`` list is the one laid out and was
  not changed in place (the list notes changes), no tensor over a buffer's memory came or
  went (the storages' use counts: a parameter moved by ``p.data = ...`` or ``model.to``, or a
  gradient view dropped by ``p.grad = ...`` or ``model.zero_grad()``, lowers them), and the
  gradients were written since the last step (or ``zero_grad``) as often as in the last step
  checked in full (a loop's backward passes and in-place operations on the gradients give
  the same count each step; a gradient that backward wrote elsewhere or did not reach lowers
  it). Otherwise the step checks in full, one pass over the parameters: each parameter's
  data is its segment, each gradient its view. A gradient that is not its view is copied in
  and the view put back; a parameter moved, replaced or added rebuilds the layout (replaced
  ones start afresh, as on the default path); anything the layout cannot take (no gradient
  on a stepped parameter, a gradient of another dtype, a sparse one, a DTensor, a parameter
  sharing memory with another tensor, a closure) runs that step on the default path, with
  its numbers. Not seen: a gradient assigned (``p.grad = other``) after backward while the
  old gradient tensor is still referenced elsewhere and the write count is unchanged (the
  view neither dropped nor written less); such a step uses the old gradient.

**Per-tensor norms** (``gx.lamb``, ``gx.lars``, ``gx.fromage``): a transform declared
``@transform(segmented=True)`` (see :func:`gradtx.base.flat_blocking_parts`) gets the extra
argument ``segments``, a :class:`gradtx._segments.Segments` per flat leaf saying where each
parameter's tensor lies in it, and computes its per-leaf reductions per segment (a trust
ratio's norms become a vector of norms, its factors scale each segment). The layout then
puts parameters of equal size side by side, so the segments form one run per distinct size
and a reduction is one ``(count, size)`` kernel per run, whatever the number of tensors
(measured on CPU against ``torch.segment_reduce`` and ``index_add_`` over a segment-id
vector: both slower than a foreach norm per tensor; runs 20x faster on 2000 tensors).
Elementwise parts run as before over the whole buffer. **Muon and adafactor** (parts
neither elementwise nor segmented: muon's split between matrices and the rest, adafactor's
factored moments) keep per-parameter state not shaped like the parameter (each side of
muon's split keeps empty tensors for the other side's leaves; adafactor a row and a column
vector per matrix), which the flat state's views cannot hold: their parameters and
gradients live in the buffers all the same (one allocation, ``zero_grad`` one fill, the
same checks), and the default path steps their per-parameter views, with its numbers and
its state exactly (a flat form, Newton-Schulz batched over runs of equal shapes as views of
the buffer and Adam over the rest as one range, is not built yet). Any other part that is
neither (a masked trust ratio, a user's transform) makes the constructor raise
``ValueError`` naming ``flat=True``. A chain with a part over every param group at once
(``clip_by_global_norm``, declared segmented since a global norm is the same on any split)
is stepped by the adapter's one-chain path, never by this one: the default path's numbers.

Parameters are *moved* into the buffer: a tensor that aliased a parameter's old memory (a
``.data`` kept aside) no longer sees it. Weight tying by sharing one ``Parameter`` works; two
parameters sharing memory are left where they are (their group runs on the default path).
"""

from __future__ import annotations

import operator
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import _foreach as F  # noqa: N812
from .._segments import Segments
from .._tree import ParamKey, merge_keys, param_leaves, tree_unflatten
from ..base import flat_blocking_parts, non_elementwise_parts
from . import compiled as _compiled

__all__ = ["FlatStorage"]

_GRAD = operator.attrgetter("grad")
_PTR = torch.Tensor.data_ptr


class _NotFlat(Exception):  # noqa: N818 - internal signal, never raised to the user
    """The chain's state does not have one leaf per parameter of the parameter's shape."""


def _strides(shape: torch.Size) -> tuple[int, ...]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


def _alias(base: torch.Tensor, offset: int, shape: torch.Size) -> torch.Tensor:
    """A tensor over ``base``'s memory from element ``offset``, shaped ``shape`` (contiguous),
    with a version counter of its own (a view would share ``base``'s) and no view bookkeeping."""
    out = torch.empty(0, dtype=base.dtype, device=base.device)
    return out.set_(base.untyped_storage(), base.storage_offset() + offset, shape, _strides(shape))


# Bytes by which the parameter and gradient buffers start past a 4 KiB boundary (the state's
# buffers, allocated by the chain's init, start at one). A step reads and writes each element
# of every buffer in turn; when their addresses agree modulo 4 KiB, the CPU takes a store to
# one for a store to the load it is about to make from another (4K aliasing) and stalls:
# measured on the big set (one tensor of 16.8M), the fused AdamW kernel ran 10-20% faster
# with the buffers 1 and 2 KiB apart (flat step 1.05 -> 0.85 of torch fused; docs/benchmarks.md).
_STAGGER = 1024


def _staggered(numel: int, dtype: torch.dtype, device: torch.device, slot: int) -> torch.Tensor:
    """An uninitialised flat buffer of ``numel`` elements starting ``slot * _STAGGER`` bytes
    into its memory (no view bookkeeping: the padding is the storage's own)."""
    size = torch.empty((), dtype=dtype).element_size()
    pad = slot * _STAGGER // size
    base = torch.empty(numel + 4096 // size, dtype=dtype, device=device)
    return _alias(base, pad, torch.Size((numel,)))


def _owns_memory(p: torch.Tensor) -> bool:
    """Whether ``p`` is the only tensor over its storage's memory (moving it unties nothing)."""
    return p.storage_offset() == 0 and p.untyped_storage().nbytes() == p.numel() * p.element_size()


def _eligible(p: torch.Tensor, own: set[int]) -> bool:
    g = p.grad
    return (type(p.data) is torch.Tensor and p.layout is torch.strided and p.is_contiguous()
            and (_owns_memory(p) or p.untyped_storage().data_ptr() in own)
            and type(g) is torch.Tensor and g.layout is torch.strided and g.dtype == p.dtype
            and g.device == p.device and g.shape == p.shape)


class _Params(list):
    """A flat group's ``params`` list: notes any change made to it in place (an item replaced,
    one added or removed), so that the step need not compare the parameters one by one."""

    __slots__ = ("changed",)

    def __init__(self, items: Any = ()) -> None:
        super().__init__(items)
        self.changed = False

    def _changing(name: str) -> Any:  # noqa: N805 - builds the methods below
        method = getattr(list, name)

        def changing(self: _Params, *args: Any, **kwargs: Any) -> Any:
            self.changed = True
            return method(self, *args, **kwargs)
        changing.__name__ = name
        return changing

    for _name in ("__setitem__", "__delitem__", "__iadd__", "__imul__", "append", "extend", "insert", "pop",
                  "remove", "clear", "sort", "reverse"):
        locals()[_name] = _changing(_name)
    del _name, _changing


def _real(g: torch.Tensor) -> torch.Tensor:
    """``g``'s real components (a complex tensor's as pairs), flat."""
    return torch.view_as_real(g).view(-1) if g.is_complex() else g


def _use_count(storage: torch.UntypedStorage) -> int:
    """How many tensors (and storage objects) hold ``storage``'s memory."""
    return torch._C._storage_Use_Count(storage._cdata)


_TRIM = None


def _release_freed_heap(device: torch.device) -> None:
    """Hand the heap pages freed by moving CPU tensors into the buffers back to the system
    (glibc's ``malloc_trim``): tensors under the mmap threshold live in the heap, whose
    freed pages stay resident otherwise, so the move would cost a buffer's worth of memory."""
    global _TRIM
    if device.type != "cpu":
        return
    if _TRIM is None:
        try:
            import ctypes
            _TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _TRIM = False
    if _TRIM:
        _TRIM(0)


@dataclass
class _Layout:
    """One param group's buffers and what the checks compare against."""

    plist: _Params  # the group's params list object
    keys: list[int]  # indices of the stepped (flat) parameters
    bparams: list[torch.Tensor]  # those parameters
    others: list[torch.Tensor]  # the group's other parameters: no gradient while flat runs
    where: dict[int, tuple[int, int, int, torch.Size]]  # key -> (bucket, offset, numel, shape)
    fparams: dict[ParamKey, torch.Tensor]  # bucket -> flat parameters
    fgrads: dict[ParamKey, torch.Tensor]  # bucket -> flat gradients
    gbases: list[torch.Tensor]  # per bucket, the gradients' base: its views share one version counter
    pptrs: list[int]
    grefs: list[Any] = field(default_factory=list)  # weak references to the gradient views
    stores: list[torch.UntypedStorage] = field(default_factory=list)  # the buffers' storages
    counts: tuple[int, ...] = ()  # their use counts when last checked
    mark: tuple[int, ...] = ()  # the gradient bases' versions at the last step or zero_grad
    pending: bool = False  # zero_grad(set_to_none=True) since the last step
    writes: dict[bool, tuple[int, ...] | None] = field(default_factory=lambda: {False: None, True: None})
    canonical: Any = None  # the adapter's state of the group, linked to ``fstate``
    fstate: Any = None  # the chain's state over ``fparams``
    scratch: dict[int, list[torch.Tensor]] = field(default_factory=dict)  # slot -> temporaries
    segments: dict[ParamKey, Segments] | None = None  # bucket -> its parameters' segments (segmented chains)

    def versions(self) -> tuple[int, ...]:
        return tuple(b._version for b in self.gbases)

    def use_counts(self) -> tuple[int, ...]:
        return tuple(map(_use_count, self.stores))

    def grad_view(self, i: int) -> torch.Tensor:
        """The view of bucket memory that is stepped parameter ``i``'s gradient."""
        b, off, n, shape = self.where[self.keys[i]]
        base = self.gbases[b]
        return base.as_strided(shape, _strides(shape), base.storage_offset() + off)


_DISABLED = "disabled"

# Bytes of CPU parameters and gradients moved into the buffers between two hand-backs of the
# freed heap pages (FlatStorage._move_in): what the build may hold beyond the buffers.
_TRIM_EVERY = 1 << 20

# Parameters per ``init`` of the template that gives a fresh group state its structure
# (FlatStorage._link_fresh): its transient memory is that of this many parameters' template.
_TEMPLATE_CHUNK = 256

# Parts known to keep per-parameter state not shaped like the parameter (muon's split keeps
# empty tensors for the other side's leaves; adafactor's factored moments are a row and a
# column vector per matrix) and to reduce per matrix, but to touch each parameter's tensor
# alone: with them ``flat=True`` keeps the contiguous buffers and steps per-parameter views
# of them on the default path, whose numbers and state they are.
_PER_PARAMETER = ("scale_by_factored_rms", "only(")


class FlatStorage:
    """The flat layouts of an optimizer's param groups (``gx.Optimizer(..., flat=True)``)."""

    def __init__(self, segmented: bool = False, per_parameter: bool = False) -> None:
        self._layouts: dict[int, Any] = {}
        self._segmented = segmented  # the chain reduces per parameter: pass it the segments
        # muon, adafactor: the buffers hold the parameters and gradients, the chain runs on
        # the default path over their per-parameter views (its numbers and state exactly)
        self._per_parameter = per_parameter

    @classmethod
    def for_chain(cls, tx: Any) -> FlatStorage:
        """The storage for ``tx``; ``ValueError`` when a part is neither elementwise nor
        segmented (its numbers would depend on where one parameter ends and the next begins)."""
        bad = flat_blocking_parts(tx)
        if bad:
            names = sorted({getattr(b, "__dict__", {}).get("name") or repr(b) for b in bad})
            if all(any(name.startswith(key) for key in _PER_PARAMETER) for name in names):
                return cls(per_parameter=True)
            raise ValueError(f"flat=True runs chains of elementwise (gx.is_elementwise) or segmented transforms "
                             f"(per-tensor norms computed per segment of the flat buffer, as in gx.lamb, gx.lars, "
                             f"gx.clip_by_global_norm) or muon's and adafactor's parts (stepped per parameter); "
                             f"neither: {', '.join(names)} "
                             f"(use flat=False for this chain)")
        return cls(segmented=bool(non_elementwise_parts(tx)))

    # -- zero_grad ----------------------------------------------------------------------

    def zero_grad(self, opt: Any, set_to_none: bool) -> None:
        """``opt.zero_grad``: a flat group's gradient buffer is cleared and its views kept
        (with ``set_to_none`` it is filled with -0.0, so that a gradient backward does not
        reach reads as ``None`` at the step); other gradients as torch does."""
        for gi, group in enumerate(opt.param_groups):
            lay = self._layouts.get(gi)
            rest = group["params"]
            if (isinstance(lay, _Layout) and rest is lay.plist and not rest.changed
                    and lay.use_counts()[len(lay.fparams):] == lay.counts[len(lay.fparams):]):
                # every gradient view is alive (a view of the parameters kept aside, as by
                # model.state_dict(), changes only their counts: the step checks those)
                for g in lay.fgrads.values():
                    _real(g).fill_(-0.0 if set_to_none else 0.0)
                lay.mark, lay.pending = lay.versions(), set_to_none
                rest = lay.others
            elif isinstance(lay, _Layout):
                lay.pending = False
            _zero_like_torch(rest, set_to_none)

    # -- stepping -----------------------------------------------------------------------

    def step(self, opt: Any, gi: int, group: dict[str, Any]) -> bool:
        """One flat step of param group ``gi``; ``False`` (having changed nothing but
        gradients no backward reached, now ``None``) when the default path must run it."""
        lay = self._layouts.get(gi)
        if lay is _DISABLED:
            return False
        params = group["params"]
        ready = self._ready(lay) if isinstance(lay, _Layout) and params is lay.plist and not params.changed else None
        if ready is None:
            lay = self._build(opt, gi, group)
            if lay is None:
                return False
        elif not ready:
            lay.mark, lay.pending = lay.versions(), False
            return False
        if self._per_parameter:  # the default path steps the views; the checks see its writes as a step's
            lay.mark, lay.pending, lay.counts = lay.versions(), False, lay.use_counts()
            return False
        variant = opt._variant(opt._setting_values(group), f"param_groups[{gi}]")
        if lay.canonical is None or opt._chain_states[gi] is not lay.canonical:
            try:
                self._link(opt, gi, lay, variant.tx)
            except _NotFlat:
                self._layouts[gi] = _DISABLED
                return False
        opt._write_hyperparameters(group, lay.canonical)
        self._run(opt, gi, lay, variant)
        lay.mark, lay.pending, lay.counts = lay.versions(), False, lay.use_counts()
        return True

    def forget(self) -> None:
        """Drop every layout (the parameters stay where they are; the next step rebuilds)."""
        self._layouts.clear()

    def _ready(self, lay: _Layout) -> bool | None:
        """Whether the layout's buffers hold the group's parameters and gradients (``None``:
        rebuild it; ``False``: the default path runs this step).

        Each step costs the same whatever the number of parameters when nothing changed: no
        tensor over a buffer's memory came or went (a parameter moved by ``p.data = ...`` or
        ``model.to``, a gradient view dropped by ``p.grad = None``, change the storages' use
        counts), and the gradients' shared version counter moved since the last step (or
        ``zero_grad``) as it did in the last step checked in full (one write per gradient
        for each backward and each in-place operation on them: a gradient that backward wrote
        somewhere else, or did not reach, makes a difference). Anything else is checked in
        full, one pass over the parameters."""
        writes = tuple(v - m for v, m in zip(lay.versions(), lay.mark))
        if (writes == lay.writes[lay.pending] and lay.use_counts() == lay.counts
                and (not lay.others or all(g is None for g in map(_GRAD, lay.others)))):
            return True
        return self._check(lay, writes)

    def _check(self, lay: _Layout, writes: tuple[int, ...]) -> bool | None:
        """:meth:`_ready` in full: each parameter's data and gradient; a gradient that is not
        its view is copied in and the view put back; after ``zero_grad(set_to_none=True)`` a
        gradient backward did not reach (still -0.0 throughout) is set to ``None``."""
        if any(g is not None for g in map(_GRAD, lay.others)) or list(map(_PTR, lay.bparams)) != lay.pptrs:
            return None
        grads = list(map(_GRAD, lay.bparams))
        own = [g is not None and r() is g for r, g in zip(lay.grefs, grads)]
        if lay.pending:
            untouched = [i for i in self._unwritten(lay) if own[i]]
            if untouched:  # zero_grad(set_to_none=True) and no backward since: no gradient
                for i in untouched:
                    lay.bparams[i].grad = None
                return False
        missing = [i for i, mine in enumerate(own) if not mine]
        for i in missing:
            p, g = lay.bparams[i], grads[i]
            if (type(g) is not torch.Tensor or g.layout is not torch.strided or g.dtype != p.dtype
                    or g.device != p.device or g.shape != p.shape):
                return False
        if missing:
            views = [lay.grad_view(i) for i in missing]
            torch._foreach_copy_(views, [grads[i] for i in missing])
            for i, view in zip(missing, views):
                lay.bparams[i].grad = view
                lay.grefs[i] = weakref.ref(view)
        elif all(writes):  # the gradients were written in their views: what a step like this one shows
            lay.writes[lay.pending] = writes
        return True

    def _unwritten(self, lay: _Layout) -> list[int]:
        """The stepped parameters whose gradient is still -0.0 throughout (what ``zero_grad(
        set_to_none=True)`` left: backward adds into it, and only a gradient of exactly -0.0
        in every element leaves it so). One segment reduction per buffer."""
        out = []
        for b, g in enumerate(lay.fgrads.values()):
            order = [i for i, k in enumerate(lay.keys) if lay.where[k][0] == b]
            per = 2 if g.is_complex() else 1
            lengths = torch.tensor([lay.where[lay.keys[i]][2] * per for i in order], device=g.device)
            g = _real(g)
            bits = g.view({1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[g.element_size()])
            written = bits.ne(torch.iinfo(bits.dtype).min).to(torch.half)
            hit = torch.segment_reduce(written, "max", lengths=lengths, unsafe=True).tolist()
            out.extend(i for i, h, n in zip(order, hit, lengths.tolist()) if n and not h > 0)
        return out

    def _build(self, opt: Any, gi: int, group: dict[str, Any]) -> _Layout | None:
        """Move the stepped parameters of group ``gi`` and their gradients into flat buffers;
        ``None`` (nothing moved) when some cannot be."""
        params = group["params"]
        # parameters in a buffer of this optimizer may move to a new one
        own = {x.untyped_storage().data_ptr() for lay in self._layouts.values() if isinstance(lay, _Layout)
               for x in lay.fparams.values()}
        self._layouts.pop(gi, None)
        keys = [k for k, p in enumerate(params) if p.grad is not None]
        if not keys:
            return None
        ptrs = set()
        for k in keys:
            p = params[k]
            if not _eligible(p, own) or (p.numel() and p.data_ptr() in ptrs):
                return None
            ptrs.add(p.data_ptr())
        opt._forget_replaced(gi)
        if type(params) is _Params:
            params.changed = False
        else:  # a list the user put in the group since
            params = group["params"] = _Params(params)
        kinds: dict[tuple[torch.device, torch.dtype], list[int]] = {}
        for k in keys:
            kinds.setdefault((params[k].device, params[k].dtype), []).append(k)
        if self._segmented:  # equal sizes side by side: one reduction per distinct size (see _segments)
            kinds = {kind: sorted(ks, key=lambda k: params[k].numel()) for kind, ks in kinds.items()}
        where: dict[int, tuple[int, int, int, torch.Size]] = {}
        fparams, fgrads = {}, {}
        for b, ((device, dtype), ks) in enumerate(kinds.items()):
            offset = 0
            for k in ks:
                n = params[k].numel()
                where[k] = (b, offset, n, params[k].shape)
                offset += n
            # untouched until the copies below (a large buffer's pages become resident as they are written)
            fparams[ParamKey(b)] = _staggered(offset, dtype, device, 1)
            fgrads[ParamKey(b)] = _staggered(offset, dtype, device, 2)
        gbases = [_alias(g, 0, g.shape) for g in fgrads.values()]
        lay = _Layout(params, keys, [params[k] for k in keys], [p for k, p in enumerate(params) if k not in where],
                      where, fparams, fgrads, gbases, [])
        self._move_in(lay)
        lay.pptrs = [p.data_ptr() for p in lay.bparams]
        if self._segmented:
            lay.segments = {ParamKey(b): Segments([params[k].shape for k in ks]) for b, ks in enumerate(kinds.values())}
        lay.stores = [x.untyped_storage() for x in (*fparams.values(), *fgrads.values())]
        lay.mark, lay.counts = lay.versions(), lay.use_counts()
        self._layouts[gi] = lay
        return lay

    @staticmethod
    def _move_in(lay: _Layout) -> None:
        """Copy each stepped parameter, then its gradient, into its slice of the buffers and
        rebind it there at once, so that its old memory is freed before the next one is copied;
        the CPU heap pages freed are handed back every ``_TRIM_EVERY`` bytes.

        A parameter and its gradient move together: small tensors live in the heap, where the
        parameters and gradients not yet moved sit between the freed ones, and a freed 4 KiB
        tensor between two live ones holds no whole page to hand back; moving all parameters
        before any gradient kept them all resident until the gradients moved (where the
        parameters and gradients were allocated in turn, a peak of about twice their size)."""
        flats = list(lay.fparams.values())
        since = 0
        for i, p in enumerate(lay.bparams):
            b, off, n, shape = lay.where[lay.keys[i]]
            flats[b][off:off + n].copy_(p.detach().reshape(-1))
            p.data = flats[b][off:off + n].view(shape)
            view = lay.grad_view(i)
            view.copy_(p.grad)
            p.grad = view
            lay.grefs.append(weakref.ref(view))
            if p.device.type == "cpu":
                since += 2 * n * p.element_size()
                if since >= _TRIM_EVERY:
                    _release_freed_heap(p.device)
                    since = 0
        for device in {p.device for p in lay.bparams}:
            _release_freed_heap(device)

    def _link(self, opt: Any, gi: int, lay: _Layout, tx: Any) -> None:
        """Make the group's state (the adapter's) views of the flat state, copying its values
        in; a group without state gets a fresh flat state and views of it, never the
        per-parameter tensors (no transient copy of the whole state)."""
        if lay.fstate is None or opt._chain_states[gi] is None:  # a group without state starts afresh
            lay.fstate = tx.init(lay.fparams)
        if opt._chain_states[gi] is None and self._link_fresh(opt, gi, lay, tx):
            return
        opt._group_state(gi, lay.keys, tx)  # initialises the ones seen for the first time
        full = opt._chain_states[gi]
        positioned, treedef = param_leaves(full)
        flat_leaves, flat_def = param_leaves(lay.fstate)
        by_path = {(index, path): leaf for index, path, leaf in flat_leaves}
        shared = {path: leaf for index, path, leaf in positioned if index is None}
        leaves, copies = [], []
        for index, path, leaf in positioned:
            if index is None or index not in lay.where:
                leaves.append(leaf)
                continue
            b, off, n, shape = lay.where[index]
            big = by_path.get((b, path))
            if (big is None or not isinstance(leaf, torch.Tensor) or leaf.shape != shape or leaf.dtype != big.dtype
                    or big.shape != (lay.fparams[ParamKey(b)].numel(),)):
                raise _NotFlat
            view = _alias(big, off, shape)  # no view bookkeeping: a tensor over the same memory
            if view.data_ptr() != leaf.data_ptr():
                copies.append((view, leaf))
            leaves.append(view)
        self._check_covered(lay, positioned, flat_leaves, shared)
        if copies:
            torch._foreach_copy_([v for v, _ in copies], [x for _, x in copies])
        lay.fstate = tree_unflatten([shared[path] if index is None else leaf for index, path, leaf in flat_leaves],
                                    flat_def)
        lay.canonical = opt._chain_states[gi] = tree_unflatten(leaves, treedef)

    @staticmethod
    def _check_covered(lay: _Layout, positioned: list, flat_leaves: list, shared: dict,
                       keys: list[int] | None = None) -> None:
        """Each stepped parameter (of ``keys``, if given) has every per-parameter path of the
        flat state, and the flat state's shared leaves are the group's."""
        flat_paths = {path for index, path, _ in flat_leaves if index is not None}
        have: dict[int, set[str]] = {k: set() for k in (lay.keys if keys is None else keys)}
        for index, path, _ in positioned:
            if index in have:
                have[index].add(path)
        if any(paths != flat_paths for paths in have.values()):
            raise _NotFlat
        if {path for index, path, _ in flat_leaves if index is None} != set(shared):
            raise _NotFlat

    def _link_fresh(self, opt: Any, gi: int, lay: _Layout, tx: Any) -> bool:
        """A group without state: its state made of views of a fresh flat state (its
        structure from ``init`` over meta tensors); ``False`` when the chain cannot init
        on meta.

        The structure is taken ``_TEMPLATE_CHUNK`` parameters at a time, each part's views
        made before the next part's template: a template over every parameter at once (meta
        tensors, their paths and its structure, some 1.7 KiB per parameter) was the group's
        peak memory beyond its state (2000 parameters of 32x32: 3.3 MiB over 16 MiB)."""
        pdict = opt._param_dict(gi, lay.keys)
        flat_leaves, _ = param_leaves(lay.fstate)
        by_path = {(index, path): leaf for index, path, leaf in flat_leaves}
        shared = {path: leaf for index, path, leaf in flat_leaves if index is None}
        items = list(pdict.items())
        parts = []
        for start in range(0, len(items), _TEMPLATE_CHUNK):
            part = self._fresh_part(lay, tx, dict(items[start:start + _TEMPLATE_CHUNK]), flat_leaves, by_path,
                                    shared)
            if part is None:
                return False
            parts.append(part)
        while len(parts) > 1:  # pairwise, so that each parameter's entry is copied log(parts) times
            parts = [merge_keys(*parts[i:i + 2]) if i + 1 < len(parts) else parts[i] for i in range(0, len(parts), 2)]
        known, ids, params = opt._known_keys[gi], opt._param_ids[gi], opt.param_groups[gi]["params"]
        n = len(params)
        if len(known) < n:
            known.extend(bytes(n - len(known)))
        if len(ids) < n:
            ids.extend([0] * (n - len(ids)))
        for k in lay.keys:
            known[k] = 1
            ids[k] = id(params[k])
        lay.canonical = opt._chain_states[gi] = parts[0]
        return True

    def _fresh_part(self, lay: _Layout, tx: Any, pdict: dict[ParamKey, torch.Tensor], flat_leaves: list,
                    by_path: dict, shared: dict) -> Any:
        """The group's fresh state over the parameters of ``pdict`` (some of the group's),
        made of views of the flat state; ``None`` when the chain cannot init on meta."""
        try:
            template = tx.init({key: torch.empty(p.shape, dtype=p.dtype, device="meta") for key, p in pdict.items()})
        except Exception:  # noqa: BLE001 - a chain that needs real tensors to init copies instead
            return None
        positioned, treedef = param_leaves(template)
        del template
        # what the template says, then the template freed before the views are made: its
        # memory serves them (made while it lives, they would grow the heap past it)
        spec = []
        for index, path, leaf in positioned:
            if index is None:
                if path not in shared:
                    raise _NotFlat
                spec.append((None, path))
                continue
            b, off, n, shape = lay.where[index]
            big = by_path.get((b, path))
            if (big is None or not isinstance(leaf, torch.Tensor) or leaf.shape != shape or leaf.dtype != big.dtype
                    or big.shape != (lay.fparams[ParamKey(b)].numel(),)):
                raise _NotFlat
            spec.append((index, path))
        self._check_covered(lay, positioned, flat_leaves, {p: 0 for i, p, _ in positioned if i is None},
                            keys=list(map(int, pdict)))
        del positioned
        leaves = []
        for index, path in spec:
            if index is None:
                leaves.append(shared[path])
            else:
                b, off, _, shape = lay.where[index]
                leaves.append(_alias(by_path[b, path], off, shape))
        return tree_unflatten(leaves, treedef)

    def _run(self, opt: Any, gi: int, lay: _Layout, variant: Any) -> None:
        """The chain over the flat buffers, in place (fused, compiled or multi-tensor)."""
        keys = list(lay.fparams)
        ps, gs = list(lay.fparams.values()), list(lay.fgrads.values())
        compiled = opt._compiled
        # packing a small buffer into the compiled path's own copies would detach the state's views
        if compiled is not None and all(p.numel() >= _compiled.PACK_BELOW for p in ps):
            new = compiled.run(-1 - gi, lay.fstate, keys, lay.fparams, lay.fgrads)
            self._keep(opt, gi, lay, new)
            return
        if variant.plan is not None and variant.plan.run(lay.fstate, keys, lay.fparams, lay.fgrads,
                                                         lambda like, slot=0: self._scratch(lay, like, slot)):
            return
        copies = F.copy_(self._scratch(lay, gs), gs) if variant.declared else F.clone(gs)
        updates = dict(zip(keys, copies))
        extra = {"grad": dict(lay.fgrads)}
        if lay.segments is not None:
            extra["segments"] = lay.segments
        state, alpha = lay.fstate, 1.0
        if variant.before_lr is not None and not state[-1].lr.requires_grad:
            updates, new_state = variant.before_lr(updates, state[:-1], lay.fparams, True, extra)
            alpha = -float(state[-1].lr)
            new = (*new_state, state[-1])
        else:
            updates, new = variant.run(updates, state, lay.fparams, variant.declared, extra)
        self._keep(opt, gi, lay, new)
        F.add(ps, F.cast_like([updates[k] for k in keys], ps), alpha=alpha, inplace=True)

    @staticmethod
    def _keep(opt: Any, gi: int, lay: _Layout, new: Any) -> None:
        """Keep the flat state's tensors (the group's state holds views of them): a chain that
        returned fresh ones has them copied in; a shared leaf that is not a tensor (a user's
        Python counter) is taken as returned, in both states."""
        old_leaves, flat_def = param_leaves(lay.fstate)
        new_leaves = param_leaves(new)[0]
        fresh = [(o, n) for (_, _, o), (_, _, n) in zip(old_leaves, new_leaves) if o is not n]
        if not fresh:
            lay.fstate = new  # the same tensors: the compiled path recognises its tree
            return
        others = {}
        for (_, path, o), (_, _, n) in zip(old_leaves, new_leaves):
            if o is n:
                continue
            if isinstance(o, torch.Tensor):
                o.copy_(n)
            else:
                others[path] = n
        if others:
            lay.fstate = tree_unflatten([others.get(path, o) if index is None else o
                                         for index, path, o in old_leaves], flat_def)
            positioned, treedef = param_leaves(lay.canonical)
            lay.canonical = opt._chain_states[gi] = tree_unflatten(
                [others.get(path, leaf) if index is None else leaf for index, path, leaf in positioned], treedef)

    @staticmethod
    def _scratch(lay: _Layout, like: list[torch.Tensor], slot: int = 0) -> list[torch.Tensor]:
        """Temporaries like the flat buffers ``like``, kept per ``slot`` (a kernel may need two)."""
        bufs = lay.scratch.get(slot)
        if bufs is None or len(bufs) != len(like):
            bufs = lay.scratch[slot] = [torch.empty_like(x) for x in like]
        return bufs


def _zero_like_torch(params: list[torch.Tensor], set_to_none: bool) -> None:
    """``torch.optim.Optimizer.zero_grad`` over ``params``."""
    for p in params:
        g = p.grad
        if g is None:
            continue
        if set_to_none:
            p.grad = None
        else:
            if g.grad_fn is not None:
                g.detach_()
            else:
                g.requires_grad_(False)
            g.zero_()
