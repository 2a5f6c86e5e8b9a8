"""Fast paths for the adapter: chains whose numbers are those of torch's fused kernels.

``plan(tx)`` recognises a chain by its *shape*, reading the ``name`` and ``args`` that the
``@transform`` decorator records on each part (never alias names alone):

- ``[clip_value(c)...] + [add_decayed_weights(wd)?] + scale_by_adam(...) + scale_by_lr(lr)``
  runs ``torch._fused_adam_`` (the optional L2 weight decay is Adam's ``weight_decay``);
- ``[clip_value(c)...] + scale_by_adam(...) + add_decayed_weights(wd) + scale_by_lr(lr)``
  runs ``torch._fused_adamw_`` (decoupled decay, ``gx.adamw``);
- ``[clip_value(c)...] + [add_decayed_weights(wd)?] + [trace(m, nesterov, dampening)?] + scale_by_lr(lr)``
  runs ``torch._fused_sgd_`` (``gx.sgd``);
- ``scale_by_adam(...) + [add_decayed_weights(wd, mask)?] + scale_by_trust_ratio(...) + scale_by_lr(lr)``
  (``gx.lamb``) runs ``torch._fused_adam_`` on a zeroed scratch with learning rate -1, which
  leaves Adam's direction there in one pass over the gradient and moments (the generic form
  makes about ten), then the decay and the trust ratio by their own in-place update (per
  segment on the flat path) and ``p <- p - lr u``;
- ``chain(clip_by_global_norm(c), rest)`` with ``rest`` one of the shapes above (no value clip),
  over every param group (the adapter's one-chain path): the norm ``n`` of all gradients, then
  each group's kernel dividing the gradients it reads by ``n / c`` (its ``grad_scale``
  argument, GradScaler's unscaling) — reading copies when it clips, since the kernel writes the
  divided gradient back (``GlobalClipPlan``; float16, bfloat16 and float32, the scale being
  float32).

The kernels update the chain's own state tensors in place (the same ``mu``, ``nu``,
``trace`` buffers, the same int32 ``count``), so the state layout, ``state_dict`` and
checkpoints are those of the generic path and move freely between the two. The numbers
agree with the generic path to round-off (the same formulas in another association
order); hyperparameters are read from the state after the adapter wrote ``param_groups``
into it, so LR schedulers and per-group overrides work unchanged.

The kernels walk memory linearly, so they take a parameter as it is only when it is dense
and its gradient and state have its strides (``layout.fits``); any other parameter (a slice
``base[:, ::2]``, a gradient ``g.t()``, a channels-last tensor given a contiguous gradient)
runs on contiguous copies of its tensors, copied back after: the numbers of the generic path,
and nothing written outside the parameter.

A leading ``clip_value`` is exact, so it runs first on a private copy of the gradients,
which the kernel then reads: ``.grad`` is never changed. Where the tensors are contiguous and
of one dtype and device, the copy, the clip and the kernel go block by block
(``multi_tensor.cut``): the scratch is one block, not a copy of every gradient (the peak
memory of torch's fused Adam), a long tensor's block is clipped straight into it (one pass
over the gradient, where torch's ``clip_grad_value_`` makes two), and each block is read by
the kernel while in cache. ``add_decayed_weights`` with a
``mask`` (``gx.adamw(..., mask="*.weight")``: no decay on biases) runs the kernel twice, on
the masked parameters with the decay and on the others without; the mask is evaluated once
per set of parameters the adapter steps.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._foreach_utils import _group_tensors_by_device_and_dtype

from .. import _foreach as F  # noqa: N812
from .._hparams import is_schedule
from .._tree import mask_flags
from ..combine import chain
from . import layout as _layout

_DTYPE = operator.attrgetter("dtype")
_DEVICE = operator.attrgetter("device")
_IS_CPU = operator.attrgetter("is_cpu")
_SHAPE = operator.attrgetter("shape")
# stateless per-tensor parts that may follow scale_by_adam in an "adam_then" plan (lamb)
_THEN = frozenset({"add_decayed_weights", "scale_by_trust_ratio"})
_FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _attrs(tx: Any) -> tuple[str | None, dict[str, Any]]:
    d = getattr(tx, "__dict__", {})
    return d.get("name"), d.get("args", {})


def _number(value: Any) -> float | None:
    """A plain float for a hyperparameter the kernel takes by value; ``None`` when it is a
    schedule or carries autograd history (those stay on the generic path)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, torch.Tensor) and value.dim() == 0 and not value.requires_grad:
        return float(value.item())
    return None


def _is_chain(tx: Any, parts: tuple) -> bool:
    # ``chain`` keeps a tuple of its parts' states; ``named_chain`` (also with ``parts``) a dict.
    # No parameters needed: a chain's state is its tuple of part states whatever the params
    # (an init over none costs nothing, where a meta tensor's dispatch costs milliseconds).
    try:
        state = tx.init({})
    except Exception:  # noqa: BLE001 - a transform that cannot init on meta just takes the generic path
        return False
    return type(state) is tuple and len(state) == len(parts)


@dataclass
class FusedPlan:
    """How to run one recognised chain with a fused kernel."""

    kind: str  # "adam", "adamw", "sgd" or "adam_then" (lamb: Adam's kernel, then per-tensor parts)
    clips: list[float]  # leading clip_value bounds, applied in order
    core: int  # index in the chain state of scale_by_adam / trace (-1: plain SGD)
    decay: int  # index of add_decayed_weights (-1: none)
    lr: int  # index of scale_by_lr
    hp: dict[str, Any] = field(default_factory=dict)  # b1, b2, eps / momentum, nesterov
    mask: Any = None  # add_decayed_weights' mask, in any form gx.masked takes
    then: tuple = ()  # "adam_then": (index in the chain, transform) of each part between scale_by_adam and scale_by_lr
    nesting: tuple | None = None  # a chain of chains: how its state nests (see unnest)
    # the mask's flags for the last params dict (the adapter reuses it while the same
    # parameters step): (params dict, flags)
    _flags: tuple[Any, list[bool]] | None = field(default=None, repr=False)
    # the parameter sets whose every state buffer was found to have its parameter's dtype and
    # device (see state_matches)
    _verified: set = field(default_factory=set, repr=False, compare=False)
    _blocks: Any = field(default=None, repr=False, compare=False)  # multi_tensor.cut's blocks (clipped chains)
    _lr: float = field(default=0.0, repr=False, compare=False)  # this step's learning rate

    def run(self, state: tuple, keys: list[int], params: dict, grads: dict,
            buffers: Any | None, segments: dict | None = None) -> bool:
        """One step in place on ``state`` (the chain's tuple of states over ``keys``).
        Returns ``False``, having changed nothing, when these tensors do not suit the kernel
        (mixed dtypes, an unsupported device or dtype, ...): the caller then takes the
        generic path. ``buffers(grads)`` gives reusable scratch tensors like the gradients;
        ``segments`` is the flat path's (each leaf many parameters end to end), which the
        per-tensor parts of ``"adam_then"`` need."""
        step = self.prepare(state, keys, params, grads, buffers, segments)
        if step is None:
            return False
        step(None)
        return True

    def prepare(self, state: tuple, keys: list[int], params: dict, grads: dict, buffers: Any | None,
                segments: dict | None = None, copies: bool = False) -> Callable[[torch.Tensor | None], None] | None:
        """:meth:`run` in two halves: the checks now (``None`` when the tensors do not suit
        the kernel; nothing changed), and the step as a function of ``grad_scale``, a 0-dim
        float32 tensor the kernels divide each gradient by as they read it (``None``: 1).
        With ``copies`` the kernels read copies of the gradients (they write the divided
        gradient back): block by block in a scratch block where the tensors allow it."""
        state = unnest(state, self.nesting)
        # the adapter's dicts hold exactly ``keys``, in order: their values are the lists
        ps = list(params.values()) if len(params) == len(keys) else [params[k] for k in keys]
        gs = list(grads.values()) if len(grads) == len(keys) else [grads[k] for k in keys]
        per_param = []
        if self.kind in ("adam", "adamw", "adam_then"):
            s = state[self.core]
            per_param = [[s.mu[k] for k in keys], [s.nu[k] for k in keys]]
        elif self.core >= 0:
            per_param = [[state[self.core].trace[k] for k in keys]]
        # Dtypes and devices: only the gradients need a look each step, as the state buffers
        # are zeros_like(params) (the plan excludes mu_dtype and loading keeps dtypes);
        # autograd and the .grad setter guarantee shapes, and the adapter refused sparse
        # gradients already. Layouts (strides) are checked below, on every tensor.
        groups = _group_by_device_and_dtype(ps)
        if not grads_match(groups, ps, gs) or not state_matches(self._verified, groups, ps, per_param):
            return None
        if any(dtype not in _FUSED_DTYPES or device.type not in ("cpu", "cuda") for device, dtype in groups):
            return None
        lr = _number(state[self.lr].lr)
        wd = _number(state[self.decay].weight_decay) if self.decay >= 0 else 0.0
        if lr is None or wd is None:
            return None

        if self.kind == "adam_then":
            if not _contiguous(gs, *per_param):  # the scratch is contiguous: the walk must pair them
                return None
            if copies:
                gs = F.copy_(buffers(gs, 1), gs)
            return lambda scale: self._adam_then(state, keys, params, ps, gs, per_param, groups, lr, buffers,
                                                 segments, scale)
        flags = self._mask_flags(params) if self.mask is not None else None
        if (self.clips or copies) and flags is None and len(groups) == 1 and _contiguous(ps, gs, *per_param):
            return lambda scale: self._clipped_blocks(state, ps, gs, per_param, lr, wd, buffers, scale)

        def step(scale: torch.Tensor | None) -> None:
            self._lr = lr
            nonlocal ps, gs, per_param
            if self.clips or copies:
                gs = F.copy_(buffers(gs), gs)
                for c in self.clips:
                    F.clamp(gs, -c, c, inplace=True)
            # The kernels walk memory linearly: tensors of another layout run on contiguous copies.
            ps, gs, per_param, write_back = _linear_layout(ps, gs, per_param)
            # (device, indices, weight decay) per kernel call: a masked decay splits each group in two
            calls = []
            for (device, _), idx in groups.items():
                if flags is None:
                    calls.append((device, idx, wd))
                    continue
                decayed, kept = [i for i in idx if flags[i]], [i for i in idx if not flags[i]]
                calls.extend((device, part, decay) for part, decay in ((decayed, wd), (kept, 0.0)) if part)
            counter = self._count(state)
            for device, idx, decay in calls:
                if len(idx) == len(ps):  # one call over everything (the usual case): the lists as they are
                    self._kernel(counter, device, ps, gs, per_param, decay, grad_scale=scale)
                    continue
                self._kernel(counter, device, [ps[i] for i in idx], [gs[i] for i in idx],
                             [[buf[i] for i in idx] for buf in per_param], decay, grad_scale=scale)
            if write_back:
                torch._foreach_copy_([dst for dst, _ in write_back], [src for _, src in write_back])
            self._advance(state)

        return step

    def _adam_then(self, state: tuple, keys: list[int], params: dict, ps: list, gs: list, per_param: list[list],
                   groups: dict, lr: float, buffers: Any, segments: dict | None,
                   grad_scale: torch.Tensor | None) -> None:
        """Adam's direction from torch's fused kernel, then the parts between it and the
        learning rate (lamb's decay and trust ratio) by their own in-place update, then
        ``p <- p - lr u``. The kernel steps a zeroed scratch "parameter" with learning rate
        -1, which leaves ``m_hat / (sqrt(v_hat) + eps)`` in it: one pass over the gradient and
        the moments where scale_by_adam's generic form makes about ten."""
        us = buffers(gs)
        torch._foreach_zero_(us)
        counter = self._count(state)
        for (device, _), idx in groups.items():
            every = len(idx) == len(ps)
            step = counter.to(device=device, dtype=torch.float32)
            torch._fused_adam_(us if every else [us[i] for i in idx], gs if every else [gs[i] for i in idx],
                               *(buf if every else [buf[i] for i in idx] for buf in per_param), [],
                               [step] * len(idx), lr=-1.0, beta1=self.hp["b1"], beta2=self.hp["b2"],
                               weight_decay=0.0, eps=self.hp["eps"], amsgrad=False, maximize=False,
                               grad_scale=_on(grad_scale, device))
        updates = dict(zip(keys, us))
        extra = {} if segments is None else {"segments": segments}
        for at, part in self.then:  # stateless parts (_THEN): their state stays as it is
            updates, _ = part.update(updates, state[at], params, inplace=True, **extra)
        F.add(ps, F.cast_like([updates[k] for k in keys], ps), alpha=-lr, inplace=True)
        self._advance(state)

    def _count(self, state: tuple) -> Any:
        """This step's count, the state's left as it is (:meth:`_advance` moves it on once the
        kernels ran, so a step that raises leaves it where it was): Adam's count tensor plus
        one; SGD's first-step flag."""
        if self.kind in ("adam", "adamw", "adam_then"):
            return state[self.core].count + 1
        # Without dampening is_first_step=False is exact: the trace starts at zero and
        # momentum * 0 + g == g, torch's first step (buf = g). A trace given a dampening
        # counts steps (DampenedTraceState) and the kernel's first step is buf = g, as
        # trace's (the count is on the CPU: reading it costs no device sync).
        return bool(state[self.core].count == 0) if self.hp.get("counted") else False

    def _advance(self, state: tuple) -> None:
        if self.kind in ("adam", "adamw", "adam_then") or self.hp.get("counted"):
            state[self.core].count.add_(1)

    def _kernel(self, counter: Any, device: torch.device, ps: list, gs: list, per_param: list[list],
                decay: float, step: torch.Tensor | None = None, grad_scale: torch.Tensor | None = None) -> None:
        grad_scale = _on(grad_scale, device)
        if self.kind in ("adam", "adamw"):
            kernel = torch._fused_adamw_ if self.kind == "adamw" else torch._fused_adam_
            # torch keeps one float step per parameter; gradtx one int32 count per transform.
            # The kernel only reads the steps, so one tensor serves every parameter.
            if step is None:
                step = counter.to(device=device, dtype=torch.float32)
            kernel(ps, gs, per_param[0], per_param[1], [], [step] * len(ps), lr=self._lr, beta1=self.hp["b1"],
                   beta2=self.hp["b2"], weight_decay=decay, eps=self.hp["eps"], amsgrad=False, maximize=False,
                   grad_scale=grad_scale)
        else:
            torch._fused_sgd_(ps, gs, per_param[0] if per_param else [], weight_decay=decay,
                              momentum=self.hp.get("momentum", 0.0), lr=self._lr,
                              dampening=self.hp.get("dampening", 0.0), nesterov=self.hp.get("nesterov", False),
                              maximize=False, is_first_step=counter, grad_scale=grad_scale)

    def _clipped_blocks(self, state: tuple, ps: list, gs: list, per_param: list[list], lr: float, wd: float,
                        buffers: Any, grad_scale: torch.Tensor | None = None) -> None:
        """The leading clips and the kernel block by block: each block's gradients clipped
        (or, without clips, copied) into a scratch block (never ``.grad``) that the kernel
        reads while it is in cache; scratch of one block, not of every gradient. Long tensors
        are clipped straight into the scratch (``torch.clamp(..., out=)``: one pass, not a
        copy and a clamp)."""
        from .multi_tensor import _LOOP_MIN, cut  # imports this module's helpers

        self._lr = lr
        counter = self._count(state)
        device = ps[0].device
        step = counter.to(device=device, dtype=torch.float32) if self.kind in ("adam", "adamw") else None
        first, rest = (self.clips[0], self.clips[1:]) if self.clips else (None, ())
        for (bp, bg, *bs), (scratch,), numel in cut(self, [ps, gs, *per_param], 1, buffers, True):
            if first is not None and numel >= _LOOP_MIN * len(bg):
                for dst, src in zip(scratch, bg):
                    torch.clamp(src, -first, first, out=dst)
            else:
                torch._foreach_copy_(scratch, bg)  # no clip: a copy the kernel may write into
                if first is not None:
                    F.clamp(scratch, -first, first, inplace=True)
            for c in rest:
                F.clamp(scratch, -c, c, inplace=True)
            self._kernel(counter, device, bp, scratch, bs, wd, step, grad_scale)
        self._advance(state)

    def _mask_flags(self, params: dict) -> list[bool]:
        """The decay mask over ``params`` (in its order), as ``add_decayed_weights`` reads it."""
        if self._flags is None or self._flags[0] is not params:
            self._flags = (params, mask_flags(self.mask, params, params))
        return self._flags[1]


# the kernels' grad_scale is float32: a float64 step would lose its precision
_SCALED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@dataclass
class GlobalClipPlan:
    """``chain(clip_by_global_norm(c), rest)`` run over every param group (the adapter's
    one-chain path), where ``rest`` has a :class:`FusedPlan`: the norm ``n`` of every group's
    gradients together, then each group's kernel, which divides each gradient by
    ``grad_scale = n / c`` (1 when ``n <= c``) as it reads it (the argument torch's kernels
    take for GradScaler's unscaling). The generic path writes clipped copies of the
    gradients and then runs Adam's generic form; this reads the gradients twice in all.
    ``single``: ``rest`` is one part (an alias such as ``gx.adamw``) rather than several."""

    single: bool
    # id(a group's chain) -> (that chain, the FusedPlan of its parts after the clip, or None);
    # the adapter keeps its chains (one per set of group settings) while they are in use
    _plans: dict = field(default_factory=dict, repr=False)

    def _plan_of(self, tx: Any) -> FusedPlan | None:
        """The fused plan of the part(s) after the clip in ``tx`` (a group's chain). Looked up
        by the whole chain: a group's settings may rebuild any of its parts (SGD's momentum in
        ``chain(clip_by_global_norm(c), add_decayed_weights(wd), trace(m), scale_by_lr(lr))``
        leaves the part after the clip as it was)."""
        found = self._plans.get(id(tx))
        if found is None or found[0] is not tx:
            parts = tx.__dict__["parts"]
            if len(self._plans) >= 64:  # settings cycled by a scheduler make a chain per value
                self._plans.clear()
            found = self._plans[id(tx)] = (tx, _clip_free_fused(parts[1] if self.single else chain(*parts[1:])))
        return found[1]

    def run(self, txs: dict[int, Any], state: tuple, per_group: dict[int, tuple[list, dict, dict]],
            buffers: Callable[[int], Any]) -> bool:
        """One step in place on ``state`` (the split chain's: the clip's state, then one
        ``GroupStates`` per part after it); ``txs[g]`` is group ``g``'s chain, ``per_group[g]``
        its ``(keys, params, grads)``, ``buffers(g)`` its scratch. ``False`` (nothing
        changed) when some group does not suit its kernel."""
        max_norm = _number(_attrs(txs[min(txs)].__dict__["parts"][0])[1].get("max_norm"))
        if max_norm is None:
            return False
        grads = [g for _, _, gs in per_group.values() for g in gs.values()]
        # clip_by_global_norm's own norm and comparison; the kernels divide by its inverse factor
        norm = F.global_norm(grads)
        # they also write the divided gradient back: when it clips, they read copies (``.grad``
        # stays the gradient), a block at a time where they can; on the CPU, where the
        # comparison costs no device sync, a step that does not clip reads the gradients
        try:
            clips = norm.device.type != "cpu" or bool(norm > max_norm)
        except RuntimeError:  # a fake norm (FakeTensorMode) has no value: read copies, as on an accelerator
            if not F.without_data(norm):
                raise
            clips = True
        steps = []
        for g, (keys, params, gs) in per_group.items():
            plan = self._plan_of(txs[g])
            if plan is None or any(p.dtype not in _SCALED_DTYPES for p in params.values()):
                return False
            group_state = state[1].states[g] if self.single else tuple(part.states[g] for part in state[1:])
            step = plan.prepare(group_state, keys, params, gs, buffers(g), copies=clips)
            if step is None:
                return False
            steps.append(step)
        scale = None
        if clips:
            scale = torch.where(norm > max_norm, norm / max_norm, torch.ones_like(norm)).to(torch.float32)
        for step in steps:
            step(scale)
        return True


def global_clip_plan(tx: Any) -> GlobalClipPlan | None:
    """A :class:`GlobalClipPlan` for ``tx`` when it is ``chain(clip_by_global_norm(c), rest)``
    with ``c`` a number and a fused plan for ``rest`` (without leading value clips)."""
    parts = getattr(tx, "__dict__", {}).get("parts")
    if not parts or len(parts) < 2 or not _is_chain(tx, parts):
        return None
    name, args = _attrs(parts[0])
    if name != "clip_by_global_norm" or _number(args.get("max_norm")) is None:
        return None
    single = len(parts) == 2
    if _clip_free_fused(parts[1] if single else chain(*parts[1:])) is None:
        return None
    return GlobalClipPlan(single)


def _clip_free_fused(tx: Any) -> FusedPlan | None:
    found = plan(tx)
    return found if isinstance(found, FusedPlan) and not found.clips else None


def _on(x: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    return x if x is None or x.device == device else x.to(device)


def state_matches(verified: set, groups: dict, ps: list[torch.Tensor], state: list[list[torch.Tensor]]) -> bool:
    """Whether each buffer in the lists ``state`` has its parameter's dtype and device. They
    are made so, but ``p.data = p.data.double()`` (what ``model.double()`` does) changes a
    parameter under its state, and a kernel would then stop midway; the generic path steps
    such a state as it is. Checked in full when the parameters change and remembered in
    ``verified`` otherwise: one check per optimizer in the usual loop. The memo is keyed by
    which parameters have which (device, dtype) (``groups``: with one, their count; with
    several, their indices, as two parameters may trade dtypes) and by the first parameter and
    state buffer, since one plan steps every param group of its settings (a group of float32
    parameters verified says nothing of another group's)."""
    if not state or not ps:
        return True
    by_kind = tuple((key, len(idx) if len(groups) == 1 else tuple(idx)) for key, idx in groups.items())
    signature = (by_kind, id(ps[0]), id(state[0][0]))
    if signature in verified:
        return True
    if not all(b.dtype == p.dtype and b.device == p.device for buf in state for p, b in zip(ps, buf)):
        return False
    if len(verified) >= 64:  # parameter sets come and go (ids may be reused): keep the memo small
        verified.clear()
    verified.add(signature)
    return True


def grads_match(groups: dict, ps: list[torch.Tensor], gs: list[torch.Tensor]) -> bool:
    """Whether each gradient has its parameter's dtype and device: with one (device, dtype)
    among the parameters, two C-level passes over the gradients (thousands, every step)."""
    if len(groups) == 1:
        (device, dtype), = groups
        if set(map(_DTYPE, gs)) != {dtype}:
            return False
        # ``is_cpu`` reads a flag where ``device`` builds an object per tensor
        return all(map(_IS_CPU, gs)) if device.type == "cpu" else set(map(_DEVICE, gs)) == {device}
    return all(g.dtype == p.dtype and g.device == p.device for p, g in zip(ps, gs))


def same_kinds(xs: list[torch.Tensor], ys: list[torch.Tensor]) -> bool:
    """Whether ``xs[i]`` and ``ys[i]`` have one shape, dtype and device for every ``i``: C-level
    passes over each list (thousands of tensors, every step) where every tensor is on the CPU."""
    if len(xs) != len(ys) or list(map(_SHAPE, xs)) != list(map(_SHAPE, ys)) or (
            list(map(_DTYPE, xs)) != list(map(_DTYPE, ys))):
        return False
    if all(map(_IS_CPU, xs)) and all(map(_IS_CPU, ys)):
        return True
    return list(map(_DEVICE, xs)) == list(map(_DEVICE, ys))


def _contiguous(*lists: list[torch.Tensor]) -> bool:
    return all(all(map(torch.Tensor.is_contiguous, x)) for x in lists)


def _linear_layout(ps: list, gs: list, per_param: list[list]) -> tuple[list, list, list[list], list]:
    """``ps``, ``gs`` and the state lists, with the tensors of every parameter that a linear
    walk of memory would pair wrongly (not dense, or strides that differ: see ``layout``)
    replaced by contiguous copies; and the ``(tensor, copy)`` pairs to copy back after the
    kernel (the parameter and its state; the gradient is only read). Each element then
    meets its own gradient and state, as on the generic path."""
    contiguous = torch.Tensor.is_contiguous
    if all(map(contiguous, ps)) and all(map(contiguous, gs)) and all(all(map(contiguous, buf)) for buf in per_param):
        return ps, gs, per_param, []  # the common case, one C call per tensor
    misfits = [i for i, p in enumerate(ps) if not _layout.fits(p, [gs[i]] + [buf[i] for buf in per_param])]
    if not misfits:
        return ps, gs, per_param, []
    ps, gs, per_param = list(ps), list(gs), [list(buf) for buf in per_param]
    write_back = []
    for i in misfits:
        _layout.check_distinct(ps[i], "a parameter")
        for tensors, written in [(ps, True), (gs, False)] + [(buf, True) for buf in per_param]:
            x = tensors[i]
            if not x.is_contiguous():
                tensors[i] = x.contiguous()
                if written:
                    write_back.append((x, tensors[i]))
    return ps, gs, per_param, write_back


def _group_by_device_and_dtype(ps: list[torch.Tensor]) -> dict[tuple[torch.device, torch.dtype], Sequence[int]]:
    """Indices of ``ps`` by (device, dtype). Every step, on every parameter: with one dtype
    and device (the usual case) two C-level passes over the tensors' attributes find it in
    about two thirds of the time torch's grouping in C++ takes (the mixed case takes that,
    as torch's fused optimizers do)."""
    if not ps:
        return {}
    first = ps[0]
    if len(set(map(_DTYPE, ps))) == 1 and (
            all(map(_IS_CPU, ps)) if first.is_cpu else len(set(map(_DEVICE, ps))) == 1):
        return {(first.device, first.dtype): range(len(ps))}
    grouped = _group_tensors_by_device_and_dtype([ps], with_indices=True)
    return {key: indices for key, (_, indices) in grouped.items()}


def lr_tail(tx: Any, *, is_chain: bool | None = None) -> tuple | None:
    """The parts of ``tx`` when it is a ``chain`` ending in ``scale_by_lr(number)``: the
    adapter then runs the other parts itself and applies ``p <- p - lr * u`` in one pass
    (``torch._foreach_add_(p, u, alpha=-lr)``) instead of scaling ``u`` first. ``is_chain``
    may say what is known already (a chain rebuilt with other settings)."""
    parts = getattr(tx, "__dict__", {}).get("parts")
    if not parts or not (is_chain if is_chain is not None else _is_chain(tx, parts)) or not _ends_in_lr(parts):
        return None
    return tuple(parts)


def _ends_in_lr(parts: Any) -> bool:
    """Whether the last of ``parts`` is ``scale_by_lr`` with a plain number (not a schedule)."""
    name, args = _attrs(parts[-1])
    return name == "scale_by_lr" and not is_schedule(args.get("lr")) and _number(args.get("lr")) is not None


def plan(tx: Any, *, is_chain: bool | None = None) -> Any:
    """The fast plan for ``tx``: a ``FusedPlan``, a ``multi_tensor.MultiTensorPlan`` (torch's
    other algorithms), or ``None`` when it does not have a recognised shape. A chain whose
    members are chains (``chain(clip_value(c), adamw(lr))``) is recognised by the parts of
    all of them in order; the plan then reads its state through ``nesting``."""
    parts = lr_tail(tx, is_chain=is_chain)  # every recognised shape is a chain ending in scale_by_lr(number)
    found = None if parts is None else _recognise(parts)
    if found is not None:
        return found
    nested = _nested_parts(tx)
    if nested is None or len(nested[0]) == len(getattr(tx, "__dict__", {}).get("parts", ())):
        return None
    flat_parts, nesting = nested
    if not _ends_in_lr(flat_parts):
        return None
    found = _recognise(tuple(flat_parts))
    if found is not None:
        found.nesting = nesting
    return found


def _nested_parts(tx: Any) -> tuple[list, tuple] | None:
    """The innermost parts of a chain of chains, in order, and the nesting of its state
    (per member: ``None`` for a part, the member's own nesting for a chain); ``None`` when
    ``tx`` is not a chain with a tuple state."""
    parts = getattr(tx, "__dict__", {}).get("parts")
    if not parts or not _is_chain(tx, parts):
        return None
    out, nesting = [], []
    for part in parts:
        inner = _nested_parts(part)
        if inner is None:
            out.append(part)
            nesting.append(None)
        else:
            out.extend(inner[0])
            nesting.append(inner[1])
    return out, tuple(nesting)


def unnest(state: tuple, nesting: tuple | None) -> tuple:
    """A chain of chains' state as the tuple of its innermost parts' states (the same
    objects: the plans update them in place)."""
    if nesting is None:
        return state
    out: list = []
    for part, inner in zip(state, nesting):
        if inner is None:
            out.append(part)
        else:
            out.extend(unnest(part, inner))
    return tuple(out)


def _recognise(parts: tuple) -> Any:
    names = [_attrs(p)[0] for p in parts]
    if names[0] != "clip_value":
        from . import multi_tensor  # imports this module's helpers

        other = multi_tensor.plan(parts)
        if other is not None:
            return other
    args = [_attrs(p)[1] for p in parts]
    clips = []
    i = 0
    while i < len(parts) and names[i] == "clip_value":
        c = _number(args[i].get("max_delta"))
        if c is None:
            return None
        clips.append(c)
        i += 1
    rest = names[i:]
    lr_at = len(names) - 1

    def decay_ok(j: int) -> bool:
        return _number(args[j].get("weight_decay")) is not None

    def mask(j: int) -> Any:
        return args[j].get("mask") if j >= 0 else None

    if "scale_by_adam" in rest:
        a_at = i + rest.index("scale_by_adam")
        a = args[a_at]
        hp = {k: _number(a.get(k)) for k in ("b1", "b2", "eps")}
        if (any(v is None for v in hp.values()) or _number(a.get("eps_root")) != 0.0 or a.get("nesterov")
                or a.get("mu_dtype") is not None):
            return None
        between = rest[1:-1]
        if rest[0] == "scale_by_adam" and not clips and set(between) <= _THEN and "scale_by_trust_ratio" in between:
            return FusedPlan("adam_then", [], a_at, -1, lr_at, hp,
                             then=tuple((j, parts[j]) for j in range(a_at + 1, lr_at)))
        if rest == ["scale_by_adam", "scale_by_lr"]:
            return FusedPlan("adam", clips, a_at, -1, lr_at, hp)
        if rest == ["add_decayed_weights", "scale_by_adam", "scale_by_lr"] and decay_ok(i):
            return FusedPlan("adam", clips, a_at, i, lr_at, hp, mask(i))
        if rest == ["scale_by_adam", "add_decayed_weights", "scale_by_lr"] and decay_ok(i + 1):
            return FusedPlan("adamw", clips, a_at, i + 1, lr_at, hp, mask(i + 1))
        return None
    decay_at = core = -1
    j = i
    if j < lr_at and names[j] == "add_decayed_weights":
        if not decay_ok(j):
            return None
        decay_at, j = j, j + 1
    hp: dict[str, Any] = {}
    if j < lr_at and names[j] == "trace":
        t = args[j]
        momentum = _number(t.get("decay"))
        counted = t.get("dampening") is not None  # the state is a DampenedTraceState
        dampening = _number(t["dampening"]) if counted else 0.0
        # momentum 0 would leave the trace buffer untouched in the kernel but not in gradtx
        if not momentum or dampening is None or t.get("accumulator_dtype") is not None:
            return None
        hp = {"momentum": momentum, "nesterov": bool(t.get("nesterov")), "dampening": dampening, "counted": counted}
        core, j = j, j + 1
    if j != lr_at:
        return None
    return FusedPlan("sgd", clips, core, decay_at, lr_at, hp, mask(decay_at))
