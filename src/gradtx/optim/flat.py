"""Contiguous storage for ``gx.Optimizer(..., flat=True)``: one kernel pass per step whatever
the number of parameters.

Each param group's stepped parameters of one (device, dtype) become views into one flat
buffer, their gradients views into a second (the design of Megatron-LM's and DeepSpeed's
contiguous gradient buffers and of DDP's ``gradient_as_bucket_view``), and the chain's
per-parameter state lives in flat buffers too. An elementwise chain (``gx.is_elementwise``)
then runs over one tensor per buffer: torch's fused kernel, one in-place multi-tensor op of
one tensor, or the compiled graph with one slot; its numbers cannot depend on the split. A
chain with none of these plans (``gx.lion``, ``gx.adan``, a user's elementwise transforms)
runs its ops over a long CPU buffer a block of ``_BLOCK`` elements at a time, each block from
the state the step began with, so that its temporaries stay in cache (a chain that raises in
a later block has stepped the earlier ones: the error says so, with a note).

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
  it), and after ``zero_grad(set_to_none=True)`` no gradient has its first and last elements
  still -0.0 (one reduction over the gradients' first elements, or over a buffer of small
  tensors: the count cannot tell four micro-batches over half the parameters from two over
  all of them). Otherwise the step
  checks in full, one pass over the parameters: each parameter's
  data is its segment, each gradient its view. A gradient that is not its view is copied in
  and the view put back; a parameter moved, replaced, added or frozen (``requires_grad_(False)``)
  rebuilds the layout (replaced ones start afresh, as on the default path); anything the
  layout cannot take (another stepped parameter without a gradient, a gradient of another
  dtype, a sparse one, a DTensor, a meta or fake parameter (``FakeTensorMode``: nothing to lay
  out), a parameter sharing memory with another tensor or in shared
  memory (``model.share_memory()``: other processes read it), FSDP1's FlatParameter (FSDP sets
  its ``.data`` back to a shard it keeps), a closure)
  runs that step on the default path, with its numbers; a state of another dtype than its
  parameters (a model cast by ``model.double()`` after the first step) runs every later step
  there. Buffers are made outside ``torch.inference_mode`` (a first step run inside it), so
  the parameters stay trainable. Not seen: a gradient assigned
  (``p.grad = other``) after backward while the old gradient tensor is still referenced
  elsewhere and the write count is unchanged (the view neither dropped nor written less);
  such a step uses the old gradient. Nor a gradient view written between ``opt.zero_grad()``
  (``set_to_none=True``) and the step other than by backward (zeroed in place by
  ``model.zero_grad(set_to_none=False)``, a weight decay added to every gradient): it no longer
  holds -0.0, so a parameter backward did not reach is stepped, where the default path (its
  gradient ``None``) skips it.

**Per-tensor norms** (``gx.lamb``, ``gx.lars``, ``gx.fromage``): a transform declared
``@transform(segmented=True)`` (see :func:`gradtx.base.flat_blocking_parts`) gets the extra
argument ``segments``, a :class:`gradtx._segments.Segments` per flat leaf saying where each
parameter's tensor lies in it, and computes its per-leaf reductions per segment (a trust
ratio's norms become a vector of norms, its factors scale each segment). The layout then
puts parameters of equal size side by side (equal shapes together), so the segments form one run per distinct size
and a reduction is one ``(count, size)`` kernel per run, whatever the number of tensors
(measured on CPU against ``torch.segment_reduce`` and ``index_add_`` over a segment-id
vector: both slower than a foreach norm per tensor; runs 20x faster on 2000 tensors).
Elementwise parts run as before over the whole buffer.

**Muon** (``gx.muon``: Newton-Schulz on the matrices, Adam on the other leaves, each side's
per-parameter state an empty tensor for the other side's leaves): the layout gives each set
of state paths that the chain's ``init`` (over meta tensors) leaves empty a buffer of its
own, so the matrices and the other leaves lie in separate buffers, and the flat state holds,
per path and buffer, a flat tensor where the buffer's parameters have state there and an empty
one where they have none (the adapter's per-parameter state keeps its empty tensors, so
checkpoints keep the default layout). Muon's split (``_only``) then picks a whole buffer by the
shapes of its segments; ``scale_by_muon`` runs its momentum over the buffer and Newton-Schulz
over each run of equal shapes viewed as ``(count, m, n)`` (batched as the default path batches
separate tensors, so the numbers are its own; no stacked copy), and Adam's side is one
elementwise pass over the other buffer. The outputs of the chain's out-of-place ops over
large CPU buffers (Adam's denominator, nesterov's term) go into temporaries the layout keeps
between steps (:class:`gradtx._foreach.Temporaries`): made afresh, each would be a new
mapping page-faulted every step (over glibc's 32 MiB mmap threshold), where the default
path's per-tensor temporaries come back from the heap.

**Adafactor** (``gx.adafactor``: a row and a column moment per factored tensor, a full one
per other tensor, ``(1,)`` placeholders for the rest): a per-parameter state leaf need not be
shaped like its parameter. The layout also splits the buffers by which paths' leaves are not
(the factored tensors apart from the others), and the flat leaf of such a path is the
concatenation of its bucket's parameters' leaves there, in buffer order (``lay.state_at``
gives each one's offset and shape): since equal shapes lie side by side, a run of equal shapes
holds equal state shapes, and ``scale_by_factored_rms`` views a run's gradient as
``(count, *shape)`` and its row and column moments as ``(count, *reduced)`` slices of the flat
state, and runs the update over the run in batches of at most 2^20 elements (a batch's
temporaries are its size; over stretches of the buffer where nothing is factored). Those flat
leaves take init's values from init over the parameters a few at a time (``_fill``). A muon
whose ``weight_decay_mask`` is a callable (it must see per-parameter tensors) keeps its
parameters and gradients in the buffers all the same (one allocation, ``zero_grad`` one fill,
the same checks), and the default path steps their per-parameter views, with its numbers and
its state exactly. Any other part that is neither (a masked trust ratio, a user's transform)
makes the constructor raise ``ValueError`` naming ``flat=True``. A chain with a part over every param group at once
(``clip_by_global_norm``, declared segmented since a global norm is the same on any split)
is stepped by the adapter's one-chain path, never by this one: the default path's numbers.

Parameters are *moved* into the buffer, when no other tensor holds their memory: one that
does (a ``.data`` kept aside, ZeRO's bucket under ``parameters_as_bucket_view``, FSDP1's local
shard, which FSDP sets back as the parameter's ``.data``) would no longer see it, so such a
parameter stays where it is and its group runs on the default path (a group that could not
be laid out is tried again after 1, 2, 4, ... up to ``_RETRY_MAX`` steps: a try costs a pass
over its parameters). Weight tying by sharing
one ``Parameter`` works; two parameters sharing memory are left where they are too.
Parameters that are views of one storage nothing else holds, over spans apart (what
``torch.save``, ``pickle`` or ``load_state_dict(..., assign=True)`` from a saved flat layout
give), are moved like parameters of their own memory; views of a tensor still held elsewhere
stay (the group on the default path), so that the tensor keeps seeing them.
"""

from __future__ import annotations

import contextlib
import operator
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import _foreach as F  # noqa: N812
from .._segments import Segments
from .._tree import ParamKey, merge_keys, param_leaves, tree_leaves, tree_unflatten
from ..base import flat_blocking_parts, is_leafwise, non_elementwise_parts
from . import compiled as _compiled
from . import placement as _placement

__all__ = ["FlatStorage"]

_GRAD = operator.attrgetter("grad")
_PTR = torch.Tensor.data_ptr


class _NotFlat(Exception):  # noqa: N818 - internal signal, never raised to the user
    """The chain's state does not have one leaf per parameter of the parameter's shape."""


# Where the parameter and gradient buffers start past a 4 KiB boundary; the state's buffers,
# from the chain's init, go 2 and 3 KiB past the parameters' (gradtx.optim.placement). A step
# reads and writes each element of every buffer in turn; when their addresses agree modulo
# 4 KiB the CPU stalls (4K aliasing): on the big set (one tensor of 16.8M) the fused AdamW
# kernel ran 10-20% faster with the parameter and gradient buffers 1 KiB apart, and about
# 1.5-2x as fast with the state's apart too (benchmarks/aliasing.py, docs/benchmarks.md).
_PARAMS_AT, _GRADS_AT = 1024 + 64, 2048 + 64


def _staggered(numel: int, dtype: torch.dtype, device: torch.device, offset: int) -> torch.Tensor:
    """An uninitialised flat buffer of ``numel`` elements starting ``offset`` bytes past a
    4 KiB boundary (no view bookkeeping: the padding is the storage's own)."""
    return _placement.at_offset(torch.Size((numel,)), dtype, device, offset)


def _owns_memory(p: torch.Tensor) -> bool:
    """Whether ``p`` is the only tensor over its storage's memory (moving it unties nothing):
    it spans the storage, and no other tensor holds it (a ``.data`` kept aside, a framework's
    own alias such as ZeRO's bucket or FSDP1's local shard, which it writes or sets back)."""
    storage = p.untyped_storage()
    # p holds the storage once, the storage object asked here once more
    return p.storage_offset() == 0 and storage.nbytes() == p.numel() * p.element_size() and _use_count(storage) == 2


def _held_only_by(params: list[torch.Tensor]) -> set[int]:
    """The storages (by data pointer) shared by some of ``params`` that no other tensor holds,
    their spans apart (a loaded checkpoint's views of one storage, as ``torch.save`` and
    ``pickle`` keep a flat layout's parameters): moving those parameters unties nothing."""
    shared: dict[int, list[torch.Tensor]] = {}
    for p in params:
        if type(p.data) is torch.Tensor and p.layout is torch.strided and not _owns_memory(p):
            shared.setdefault(p.untyped_storage().data_ptr(), []).append(p)
    out = set()
    for ptr, ps in shared.items():
        spans = sorted((p.storage_offset(), p.storage_offset() + p.numel()) for p in ps)
        # each parameter holds the storage once, the storage object asked here once more
        if (_use_count(ps[0].untyped_storage()) == len(ps) + 1
                and all(end <= start for (_, end), (start, _) in zip(spans, spans[1:]))):
            out.add(ptr)
    return out


def _eligible(p: torch.Tensor, own: set[int]) -> bool:
    g = p.grad
    # shared memory (model.share_memory(), Hogwild training) is what other processes read
    # (is_shared is always true of CUDA tensors); FSDP1's FlatParameter has its .data set back
    # to the local shard FSDP keeps after each forward and backward, so a step into the buffer
    # would be lost
    return (type(p.data) is torch.Tensor and p.layout is torch.strided and p.is_contiguous()
            and not (p.device.type == "cpu" and p.is_shared()) and not getattr(p, "_is_flat_param", False)
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


def _bits(g: torch.Tensor) -> torch.Tensor:
    """``g``'s real components as integers of their width (-0.0 is the smallest one)."""
    g = _real(g)
    return g.view({1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[g.element_size()])


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
    # bucket -> the per-parameter state paths its parameters keep empty (muon's split; segmented chains)
    empty_paths: dict[ParamKey, frozenset[str]] | None = None
    temporaries: F.Temporaries | None = None  # kept outputs of the chain's out-of-place ops (muon's split)
    # (key, path) -> (offset, shape) of a per-parameter state leaf not shaped like its parameter
    # (adafactor's row and column moments, placeholders) in the flat leaf of its bucket and path,
    # which concatenates the bucket's parameters' leaves there in buffer order
    state_at: dict[tuple[int, str], tuple[int, torch.Size]] | None = None
    state_numel: dict[tuple[int, str], int] | None = None  # (bucket, path) -> that flat leaf's length
    # per bucket, the indices in its gradients' real elements (``_real``) of each non-empty
    # segment's first element, then of each one's last element
    ends: list[torch.Tensor] = field(default_factory=list)
    # (the flat state it was made for, its TreeSpec, its leaves, each leaf's bucket key when it
    # is a buffer-long per-bucket leaf, else None): how _run_blocks slices the state; the last
    # three None when that state cannot be cut into blocks
    block_plan: tuple | None = None

    def versions(self) -> tuple[int, ...]:
        return tuple(b._version for b in self.gbases)

    def maybe_unwritten(self) -> bool:
        """Whether some stepped gradient may still be what ``zero_grad(set_to_none=True)``
        left (-0.0 throughout): its first and last elements are. The write count cannot tell:
        two backward passes that reach half the parameters write as often as one that reaches
        them all (accumulation over a varying number of micro-batches). One reduction over
        the gradients' first elements (over the whole buffer when the tensors are small), and
        over both ends only when one is -0.0 (on a GPU, the step waits for the reduction); a
        gradient reached whose ends are -0.0 only sends the step to the full check, which
        looks at every element."""
        for g, ends in zip(self.fgrads.values(), self.ends):
            if ends.numel():
                bits = _bits(g)
                least, count = torch.iinfo(bits.dtype).min, ends.numel() // 2
                # -0.0 is the smallest integer: some element is when the least one is; over
                # small tensors the whole buffer (on 20,000 scalars, in a step, about half the
                # time of gathering their first elements), else the first elements
                quick = bits if bits.numel() <= 16 * count else torch.index_select(bits, 0, ends[:count])
                if int(quick.amin()) == least:  # then both ends of a gradient are when the larger is
                    pairs = torch.index_select(bits, 0, ends).view(2, -1)
                    if int(pairs.amax(0).amin()) == least:
                        return True
        return False

    def use_counts(self) -> tuple[int, ...]:
        return tuple(map(_use_count, self.stores))

    def grad_view(self, i: int) -> torch.Tensor:
        """The view of bucket memory that is stepped parameter ``i``'s gradient."""
        b, off, n, shape = self.where[self.keys[i]]
        base = self.gbases[b]
        return base.as_strided(shape, _placement.contiguous_strides(shape), base.storage_offset() + off)


_DISABLED = "disabled"

# Bytes of CPU parameters and gradients moved into the buffers between two hand-backs of the
# freed heap pages (FlatStorage._move_in): what the build may hold beyond the buffers.
_TRIM_EVERY = 1 << 20

# Most steps between two tries at laying out a group that could not be (FlatStorage.step):
# a try costs about one build, so a group that stays refused pays it once per this many steps.
_RETRY_MAX = 64

# Elements per block when an elementwise chain with no fused or multi-tensor plan steps a CPU
# buffer longer than two blocks (FlatStorage._run_blocks): the chain's out-of-place temporaries
# are then a block long and stay in cache from one op to the next. Over a whole buffer each
# would be a fresh mapping of tens of MiB (over glibc's 32 MiB mmap threshold), page-faulted
# every step: gx.lion flat on the resnet set took 1.8x its default path's time that way.
_BLOCK = 1 << 20
# shared state leaves other than tensors that a block may be given as they are: nothing changes them in place
_IMMUTABLE = (int, float, complex, bool, str, bytes, type(None), torch.dtype, torch.device)

# Parameters per ``init`` of the template that gives a fresh group state its structure
# (FlatStorage._link_fresh): its transient memory is that of this many parameters' template.
_TEMPLATE_CHUNK = 256

# Parts known to need per-parameter tensors (muon's split, when its decay mask is a callable
# that must see them) and to reduce per matrix, but to touch each parameter's tensor alone:
# with them ``flat=True`` keeps the contiguous buffers and steps per-parameter views of them
# on the default path, whose numbers and state they are.
_PER_PARAMETER = ("only(",)


class FlatStorage:
    """The flat layouts of an optimizer's param groups (``gx.Optimizer(..., flat=True)``)."""

    def __init__(self, segmented: bool = False, per_parameter: bool = False) -> None:
        self._layouts: dict[int, Any] = {}
        # group -> [steps before the next try, the wait after that one] once a layout was refused:
        # a failed try costs a pass over the parameters, several times the default path's step
        self._retry: dict[int, list[int]] = {}
        self._segmented = segmented  # the chain reduces per parameter: pass it the segments
        # muon with a callable mask: the buffers hold the parameters and gradients, the chain runs on
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
                             f"(per-tensor norms computed per segment of the flat buffer, as in gx.lamb, gx.lars) "
                             f"or muon's split with a callable mask (stepped per parameter); "
                             f"neither: {', '.join(names)} "
                             f"(use flat=False for this chain)")
        return cls(segmented=bool(non_elementwise_parts(tx)))

    @staticmethod
    def unused_warning(tx: Any) -> str:
        """What ``gx.Optimizer`` warns when ``flat=True`` is given a chain with a part over every
        param group at once (a global norm): the one-chain path that runs it has no flat form."""
        names = ", ".join(sorted(set(_global_parts(tx))))
        return (f"flat=True has no effect with this chain: {names} runs over the parameters of every param group "
                f"at once, so every step runs on the default path (the same numbers, on the fused kernels where the "
                f"rest of the chain has them; the parameters stay where they are). For flat storage, clip with "
                f"torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm) before opt.step() (it adds 1e-6 to "
                f"the norm) and leave the clip out of the chain")

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
        if lay is _DISABLED or opt._has_dtensors:
            # DTensor parameters (FSDP2) step through plain stand-ins, their local shards or
            # full tensors: moving a shard's data into a buffer would leave FSDP gathering
            # from memory the step no longer writes
            return False
        params = group["params"]
        ready = self._ready(lay) if isinstance(lay, _Layout) and params is lay.plist and not params.changed else None
        if ready is None:
            if any(map(F.without_data, params)):
                # meta or fake parameters (a model being sized, a memory estimate): no memory to
                # lay out, and nothing to refuse either; the default path steps them
                return False
            retry = self._retry.get(gi)
            if retry is not None and retry[0] > 0:  # refused lately: tried again after 1, 2, 4, ... steps
                retry[0] -= 1
                return False
            # buffers that are inference tensors (a first step under torch.inference_mode)
            # would have no version counter, and parameters over them could not be trained
            with torch.inference_mode(False):
                lay = self._build(opt, gi, group)
            if lay is None:
                wait = min(2 * retry[1], _RETRY_MAX) if retry is not None else 1
                self._retry[gi] = [wait, wait]
                return False
            self._retry.pop(gi, None)
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
        self._retry.clear()

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
                and (not lay.others or all(g is None for g in map(_GRAD, lay.others)))
                and not (lay.pending and lay.maybe_unwritten())):
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
                return None if any(not lay.bparams[i].requires_grad for i in untouched) else False
        missing = [i for i, mine in enumerate(own) if not mine]
        if any(grads[i] is None and not lay.bparams[i].requires_grad for i in missing):
            # frozen since the layout was made (fine-tuning in stages): laid out again without
            # it, or every later step would run on the default path
            return None
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
            # in the buffer's order (a segmented chain's layout sorts the parameters by size)
            order = sorted((i for i, k in enumerate(lay.keys) if lay.where[k][0] == b),
                           key=lambda i: lay.where[lay.keys[i]][1])
            per = 2 if g.is_complex() else 1
            lengths = torch.tensor([lay.where[lay.keys[i]][2] * per for i in order], device=g.device)
            bits = _bits(g)
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
        movable = None  # own, and the storages only the stepped parameters hold (when one is asked about)
        ptrs = set()
        for k in keys:
            p = params[k]
            if not _eligible(p, own):
                if movable is None:
                    movable = own | _held_only_by([params[j] for j in keys])
                if not _eligible(p, movable):
                    return None
            if p.numel() and p.data_ptr() in ptrs:
                return None
            ptrs.add(p.data_ptr())
        with torch.no_grad():
            for p in params if own else ():
                if (p.grad is None and type(p.data) is torch.Tensor and p.layout is torch.strided
                        and p.untyped_storage().data_ptr() in own):
                    # left out (frozen): memory of its own, or it could not join a later layout
                    p.data = p.detach().clone()
        if not keys:
            return None
        opt._forget_replaced(gi)
        if type(params) is _Params:
            params.changed = False
        else:  # a list the user put in the group since
            params = group["params"] = _Params(params)
        # one buffer per (device, dtype) and, for a segmented chain, per set of state paths
        # its init leaves empty (muon's matrices apart from the rest: each side's state is
        # then either flat or empty over a whole buffer)
        sides, resized = self._sides(opt, gi, group, keys) if self._segmented else (None, None)
        kinds: dict[tuple[torch.device, torch.dtype, frozenset[str], frozenset[str]], list[int]] = {}
        for k in keys:
            kinds.setdefault((params[k].device, params[k].dtype, sides[k] if sides else frozenset(),
                              frozenset(resized[k]) if resized else frozenset()), []).append(k)
        if self._segmented:
            # equal sizes side by side, equal shapes within (stable: the parameters' order
            # otherwise): one reduction per distinct size, one batch per shape (see _segments)
            kinds = {kind: sorted(ks, key=lambda k: (params[k].numel(), tuple(params[k].shape)))
                     for kind, ks in kinds.items()}
        where: dict[int, tuple[int, int, int, torch.Size]] = {}
        fparams, fgrads = {}, {}
        for b, ((device, dtype, *_), ks) in enumerate(kinds.items()):
            offset = 0
            for k in ks:
                n = params[k].numel()
                where[k] = (b, offset, n, params[k].shape)
                offset += n
            # untouched until the copies below (a large buffer's pages become resident as they are written)
            fparams[ParamKey(b)] = _staggered(offset, dtype, device, _PARAMS_AT)
            fgrads[ParamKey(b)] = _staggered(offset, dtype, device, _GRADS_AT)
        gbases = [_placement.alias(g, 0, g.shape) for g in fgrads.values()]
        lay = _Layout(params, keys, [params[k] for k in keys], [p for k, p in enumerate(params) if k not in where],
                      where, fparams, fgrads, gbases, [])
        self._move_in(lay)
        lay.pptrs = [p.data_ptr() for p in lay.bparams]
        if self._segmented:
            lay.segments = {ParamKey(b): Segments([params[k].shape for k in ks]) for b, ks in enumerate(kinds.values())}
            lay.empty_paths = {ParamKey(b): kind[2] for b, kind in enumerate(kinds)}
            if resized and any(resized.values()):
                lay.state_at, lay.state_numel = self._state_offsets(list(kinds.values()), resized)
            if any(lay.empty_paths.values()) or lay.state_at is not None:
                # muon's Adam side, adafactor's squares and scalings, are out-of-place ops over
                # large buffers: their outputs kept between steps, not mapped afresh each step
                # (see _foreach.Temporaries)
                lay.temporaries = F.Temporaries()
        lay.stores = [x.untyped_storage() for x in (*fparams.values(), *fgrads.values())]
        lay.ends = []
        for b, g in enumerate(fgrads.values()):
            per = 2 if g.is_complex() else 1
            spans = [(off * per, (off + n) * per - 1) for bb, off, n, _ in where.values() if bb == b and n]
            lay.ends.append(torch.tensor(spans, dtype=torch.long, device=g.device).reshape(-1, 2).T.reshape(-1))
        lay.mark, lay.counts = lay.versions(), lay.use_counts()
        self._layouts[gi] = lay
        return lay

    @staticmethod
    def _sides(opt: Any, gi: int, group: dict[str, Any], keys: list[int]
               ) -> tuple[dict[int, frozenset[str]] | None, dict[int, dict[str, torch.Size]] | None]:
        """Per stepped parameter, the paths of its per-parameter state that the chain's init
        (over meta tensors) leaves empty, a ``(0,)`` tensor (muon keeps its momentum for the
        matrices and Adam's moments for the other leaves), and the shapes of the other leaves
        not shaped like the parameter (adafactor's row and column moments, its ``(1,)``
        placeholders). ``(None, None)`` when init needs real tensors."""
        tx = opt._variant(opt._setting_values(group), f"param_groups[{gi}]").tx
        # a segmented chain is leafwise: a parameter's state depends on its shape and dtype
        # alone, so init runs over one meta tensor of each (thousands of scalars: one)
        kinds: dict[tuple[torch.Size, torch.dtype], list[int]] = {}
        for k in keys:
            p = group["params"][k]
            kinds.setdefault((p.shape, p.dtype), []).append(k)
        try:
            template = tx.init({ParamKey(j): torch.empty(shape, dtype=dtype, device="meta")
                                for j, (shape, dtype) in enumerate(kinds)})
        except Exception:  # noqa: BLE001 - one buffer per (device, dtype), as for any chain
            return None, None
        shapes = list(kinds)
        paths: list[set[str]] = [set() for _ in shapes]
        others: list[dict[str, torch.Size]] = [{} for _ in shapes]
        for index, path, leaf in param_leaves(template)[0]:
            if index is None or not isinstance(leaf, torch.Tensor) or leaf.shape == shapes[index][0]:
                continue
            if leaf.shape == (0,):
                paths[index].add(path)
            else:
                others[index][path] = leaf.shape
        frozen = [frozenset(x) for x in paths]
        return ({k: frozen[j] for j, ks in enumerate(kinds.values()) for k in ks},
                {k: others[j] for j, ks in enumerate(kinds.values()) for k in ks})

    @staticmethod
    def _state_offsets(buckets: list[list[int]], resized: dict[int, dict[str, torch.Size]]
                       ) -> tuple[dict[tuple[int, str], tuple[int, torch.Size]], dict[tuple[int, str], int]]:
        """Where each state leaf not shaped like its parameter lies in its flat leaf (the
        bucket's parameters' leaves of that path end to end, in buffer order), and each such
        flat leaf's length."""
        at, numel = {}, {}
        for b, ks in enumerate(buckets):
            ends: dict[str, int] = {}
            for k in ks:
                for path, shape in resized[k].items():
                    start = ends.get(path, 0)
                    at[k, path] = (start, shape)
                    ends[path] = start + shape.numel()
            for path, end in ends.items():
                numel[b, path] = end
        return at, numel

    @staticmethod
    def _slot(lay: _Layout, index: int, path: str) -> tuple[int, int, torch.Size, int]:
        """``(bucket, offset, shape, flat length)`` of parameter ``index``'s state leaf at
        ``path`` in the flat state."""
        b, off, n, shape = lay.where[index]
        if lay.state_at is not None:
            at = lay.state_at.get((index, path))
            if at is not None:
                return b, at[0], at[1], lay.state_numel[b, path]
        return b, off, shape, lay.fparams[ParamKey(b)].numel()

    @staticmethod
    def _flat_init(tx: Any, lay: _Layout) -> tuple[Any, bool]:
        """The flat state, and whether its values are init's.

        ``tx.init`` over the flat buffers; where some parameters keep empty state
        (``lay.empty_paths``, muon's split), over each buffer viewed with the number of
        dimensions of its first tensor, ``(1, ..., 1, numel)`` (what a split by dimensions
        reads), its state leaves flattened back: init's values, no per-parameter state made.
        A leaf that still comes out otherwise than ``lay.empty_paths`` says is made empty or
        flat (zeros) by hand, and ``False`` returned: its values are then the per-parameter
        init's, copied in by :meth:`_link`."""
        plain = lay.empty_paths is None or not any(lay.empty_paths.values())
        if plain and lay.state_numel is None:
            return _placement.staggered_init(tx.init, lay.fparams), True
        stand_ins = {} if not plain else FlatStorage._bare(tx, lay)
        for key, f in lay.fparams.items() if not plain else ():
            shapes = lay.segments[key].shapes
            dims = len(shapes[0]) if shapes else 1
            stand_ins[key] = f.view(*([1] * (dims - 1)), f.numel()) if dims > 1 else f
        flat_leaves, flat_def = param_leaves(_placement.staggered_init(tx.init, stand_ins))
        out, fresh, filled = [], True, {}
        for index, path, leaf in flat_leaves:
            if index is not None and isinstance(leaf, torch.Tensor):
                n = lay.fparams[ParamKey(index)].numel()
                if path in lay.empty_paths[ParamKey(index)]:
                    if leaf.shape != (0,):
                        leaf = leaf.new_empty((0,))
                elif lay.state_numel is not None and (index, path) in lay.state_numel:
                    # the parameters' leaves end to end: init's values filled in below
                    leaf = filled[index, path] = leaf.new_zeros((lay.state_numel[index, path],))
                elif leaf.numel() == n and leaf.is_contiguous():
                    leaf = leaf.view(n)
                else:  # init took the buffer for the other side's
                    leaf, fresh = leaf.new_zeros((n,)), False
            out.append(leaf)
        if filled and not FlatStorage._fill(tx, lay, filled):
            fresh = False  # init's values copied in by _link
        return tree_unflatten(out, flat_def), fresh

    @staticmethod
    def _fill(tx: Any, lay: _Layout, filled: dict[tuple[int, str], torch.Tensor]) -> bool:
        """Init's values of the state leaves not shaped like their parameters, written into
        the flat leaves ``filled`` ((bucket, path) -> flat tensor): init over the parameters
        ``_TEMPLATE_CHUNK`` at a time, so that no whole per-parameter state is made (the flat
        state is then fresh: the group's state becomes views of it, as for any chain).
        ``False`` when init does not give the leaves the layout expects."""
        items = list(zip(lay.keys, lay.bparams))
        for start in range(0, len(items), _TEMPLATE_CHUNK):
            try:
                state = tx.init({ParamKey(k): p.detach() for k, p in items[start:start + _TEMPLATE_CHUNK]})
            except Exception:  # noqa: BLE001 - _link copies from the per-parameter init instead
                return False
            for index, path, leaf in param_leaves(state)[0]:
                at = lay.state_at.get((index, path)) if index is not None else None
                if at is None:
                    continue
                big = filled.get((lay.where[index][0], path))
                if big is None or not isinstance(leaf, torch.Tensor) or leaf.shape != at[1] or leaf.dtype != big.dtype:
                    return False
                big[at[0]:at[0] + leaf.numel()].copy_(leaf.reshape(-1))
        return True

    @staticmethod
    def _bare(tx: Any, lay: _Layout) -> dict[ParamKey, torch.Tensor]:
        """The buffers to init the flat state over: a buffer none of whose state leaves comes
        from init over it (each path's leaves not shaped like the parameters, adafactor's
        factored tensors) as an empty slice of it, so that init does not make a state the size
        of the buffer only for it to be dropped (the first step's peak memory)."""
        try:
            template = tx.init({key: torch.empty(f.shape, dtype=f.dtype, device="meta")
                                for key, f in lay.fparams.items()})
        except Exception:  # noqa: BLE001 - a chain that needs real tensors to init: the buffers
            return lay.fparams
        used = {index for index, path, leaf in param_leaves(template)[0]
                if index is not None and isinstance(leaf, torch.Tensor) and (index, path) not in lay.state_numel}
        return {key: f if key in used else f[:0] for key, f in lay.fparams.items()}

    @staticmethod
    def _both_empty(leaf: Any, big: torch.Tensor | None) -> bool:
        """A per-parameter state leaf that is empty (the other side's, under muon's split)
        against an empty flat leaf: it stays the parameter's own empty tensor."""
        return (big is not None and big.shape == (0,) and isinstance(leaf, torch.Tensor) and leaf.shape == (0,)
                and leaf.dtype == big.dtype)

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
        fresh = True
        if lay.fstate is None or opt._chain_states[gi] is None:  # a group without state starts afresh
            lay.fstate, fresh = self._flat_init(tx, lay)
        if opt._chain_states[gi] is None and fresh and self._link_fresh(opt, gi, lay, tx):
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
            b, off, shape, length = self._slot(lay, index, path)
            big = by_path.get((b, path))
            if self._both_empty(leaf, big):
                leaves.append(leaf)
                continue
            if (big is None or not isinstance(leaf, torch.Tensor) or leaf.shape != shape or leaf.dtype != big.dtype
                    or big.shape != (length,)):
                raise _NotFlat
            view = _placement.alias(big, off, shape)  # no view bookkeeping: a tensor over the same memory
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
                spec.append((None, path, False))
                continue
            b, off, shape, length = self._slot(lay, index, path)
            big = by_path.get((b, path))
            if self._both_empty(leaf, big):
                spec.append((index, path, True))
                continue
            if (big is None or not isinstance(leaf, torch.Tensor) or leaf.shape != shape or leaf.dtype != big.dtype
                    or big.shape != (length,)):
                raise _NotFlat
            spec.append((index, path, False))
        self._check_covered(lay, positioned, flat_leaves, {p: 0 for i, p, _ in positioned if i is None},
                            keys=list(map(int, pdict)))
        del positioned
        leaves = []
        for index, path, empty in spec:
            if index is None:
                leaves.append(shared[path])
            elif empty:  # each parameter its own empty tensor, as init gives it
                leaves.append(by_path[lay.where[index][0], path].new_empty((0,)))
            else:
                b, off, shape, _ = self._slot(lay, index, path)
                leaves.append(_placement.alias(by_path[b, path], off, shape))
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
                                                         lambda like, slot=0: self._scratch(lay, like, slot),
                                                         segments=lay.segments):
            return
        if self._run_blocks(opt, gi, lay, variant):
            return
        copies = F.copy_(self._scratch(lay, gs), gs) if variant.declared else F.clone(gs)
        updates = dict(zip(keys, copies))
        extra = {"grad": dict(lay.fgrads)}
        if lay.segments is not None:
            extra["segments"] = lay.segments
        # drawn temporaries stay valid until the next step: _keep copies the state the chain
        # returns into the flat state's tensors, and the updates are added in below
        with F.drawing_from(lay.temporaries) if lay.temporaries is not None else contextlib.nullcontext():
            updates, new, alpha = variant.step(updates, lay.fstate, lay.fparams, extra)
        self._keep(opt, gi, lay, new)
        F.add(ps, F.cast_like([updates[k] for k in keys], ps), alpha=alpha, inplace=True)

    def _run_blocks(self, opt: Any, gi: int, lay: _Layout, variant: Any) -> bool:
        """The chain over ``_BLOCK``-long slices of the buffers in turn, when it is elementwise
        (not segmented), every buffer is on the CPU and one is longer than two blocks; ``False``
        (nothing done) otherwise.

        An elementwise chain's numbers on a slice are those of the same elements of the whole
        (``@transform(elementwise=True)``: each element depends on the same element alone and on
        shared state, such as step counts, that no parameter value changes). So each block is
        stepped from the state the step began with: its slices of the buffer-long state leaves,
        and copies of the shared leaves (a count incremented in place by one block must not be
        seen by the next; a tensor held at two paths gets one copy); the last block gets the
        shared leaves themselves, and what it returns for them is kept. Not undone when the
        chain raises in a later block: the blocks before it stay stepped (their parameters and
        state, not the shared counts), and a note on the error says so."""
        if lay.segments is not None or lay.temporaries is not None:
            return False
        longest = max(p.numel() for p in lay.fparams.values())
        if longest <= 2 * _BLOCK or any(p.device.type != "cpu" for p in lay.fparams.values()):
            return False
        _, treedef, leaves, owners = self._block_plan(lay)
        if treedef is None:
            return False
        keys = list(lay.fparams)
        bufs = lay.scratch.get(-1)
        if bufs is None or len(bufs) != len(keys):  # the updates' scratch: a block per buffer
            bufs = lay.scratch[-1] = [torch.empty(min(_BLOCK, p.numel()), dtype=p.dtype) for p in lay.fparams.values()]
        starts = range(0, longest, _BLOCK)
        for lo in starts:
            hi, last = lo + _BLOCK, lo == starts[-1]
            ps = {k: p[lo:hi] for k, p in lay.fparams.items()}
            gs = {k: g[lo:hi] for k, g in lay.fgrads.items()}
            copied: dict[int, torch.Tensor] = {}  # one copy per shared tensor: a tensor held twice stays one
            pieces = []
            for leaf, owner in zip(leaves, owners):
                if owner is not None:
                    pieces.append(leaf[lo:hi])
                elif last or not isinstance(leaf, torch.Tensor):
                    pieces.append(leaf)
                else:
                    if id(leaf) not in copied:
                        copied[id(leaf)] = leaf.clone()
                    pieces.append(copied[id(leaf)])
            state = tree_unflatten(pieces, treedef)
            if variant.declared:
                copies = [b[:g.numel()].copy_(g) for b, g in zip(bufs, gs.values())]
            else:
                copies = F.clone(list(gs.values()))
            updates, extra = dict(zip(keys, copies)), {"grad": gs}
            try:
                updates, new, alpha = variant.step(updates, state, ps, extra)
            except BaseException as e:
                # the blocks before this one were stepped: say so, a retry would step them twice
                # (add_note: Python 3.11 and later)
                if lo and hasattr(e, "add_note"):
                    e.add_note(f"gx.Optimizer(flat=True) ran this chain over blocks of {_BLOCK} elements of the "
                               f"flat buffers and it raised in the block from element {lo}: the elements before "
                               "it (parameters and state) were stepped, the later ones and the shared state "
                               "(counts) were not, so stepping again would step the first ones twice; load a "
                               "checkpoint instead (flat=False moves no parameter when the chain raises)")
                raise
            returned = tree_leaves(new)
            for piece, out, owner in zip(pieces, returned, owners):
                if owner is not None and out is not piece:  # a fresh tensor: into the buffer's slice
                    piece.copy_(out)
            block = list(ps.values())
            F.add(block, F.cast_like([updates[k] for k in keys], block), alpha=alpha, inplace=True)
        # the buffer-long leaves were written in their slices; the shared ones as the last block left them
        final = tree_unflatten([leaf if owner is not None else out
                                for leaf, out, owner in zip(leaves, returned, owners)], treedef)
        self._keep(opt, gi, lay, final)
        if lay.fstate is final:  # the same leaves in a new tree (_keep took it as it is): the plan holds
            lay.block_plan = (final, treedef, leaves, owners)
        return True

    @staticmethod
    def _block_plan(lay: _Layout) -> tuple:
        """``lay.block_plan`` for the current flat state, made when the state changed; its last
        three entries ``None`` when a per-bucket leaf is not a contiguous buffer-long tensor (it
        could not be sliced like the buffers), a shared tensor requires grad (a hypergradient through the copies), two
        shared tensors are views of one memory (each block's copies of them would be apart), or a
        shared leaf is neither a tensor nor an immutable value (a block could change it in place)."""
        plan = lay.block_plan
        if plan is not None and plan[0] is lay.fstate:
            return plan
        lay.block_plan = refused = (lay.fstate, None, None, None)
        positioned, treedef = param_leaves(lay.fstate)
        numel = {int(k): p.numel() for k, p in lay.fparams.items()}
        keys = {int(k): k for k in lay.fparams}
        owners = []
        seen, memory = set(), set()
        for index, _, leaf in positioned:
            if index is None:
                if isinstance(leaf, torch.Tensor):
                    if leaf.requires_grad:
                        return refused
                    if id(leaf) not in seen and leaf.untyped_storage().nbytes():  # one held twice is copied once
                        seen.add(id(leaf))
                        if leaf.untyped_storage().data_ptr() in memory:
                            return refused  # two views of one memory: copied apart, a write would not reach the other
                        memory.add(leaf.untyped_storage().data_ptr())
                elif not isinstance(leaf, _IMMUTABLE):
                    return refused  # a Python object a block could change in place: no copy is known to be safe
                owners.append(None)
            elif (isinstance(leaf, torch.Tensor) and index in numel and leaf.dim() == 1
                  and leaf.numel() == numel[index] and leaf.is_contiguous()):
                owners.append(keys[index])
            else:
                return refused
        lay.block_plan = (lay.fstate, treedef, [leaf for _, _, leaf in positioned], owners)
        return lay.block_plan

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


def _global_parts(tx: Any) -> list[str]:
    """The names of the innermost parts of ``tx`` that are not leafwise (see ``groups.py``)."""
    attrs = getattr(tx, "__dict__", {})
    if "parts" in attrs:
        return [name for part in attrs["parts"] for name in _global_parts(part)]
    return [] if is_leafwise(tx) else [attrs.get("name") or repr(tx)]


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
