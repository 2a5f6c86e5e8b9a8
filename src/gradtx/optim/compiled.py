"""The adapter's compiled path: an elementwise chain under ``torch.compile``.

Compiling a chain over a param group as it is would trace one loop per tensor, so compile
time would grow with the number of parameters (torch's own compiled step does not finish in
300 s for 2000 tensors on two cores). Here one graph serves every group of every size:

- The graph runs the chain on a fixed number of *slots* (``SLOTS``), each a flat 1-d tensor
  of symbolic length (with the matching gradient and per-parameter state), then writes the
  new state and ``p + u`` in place. Inductor fuses it into one pass per slot that reads
  ``p, g`` and the state once and writes them once.
- A large contiguous parameter takes a slot of its own, as a flat view: no copy.
- Small parameters (and any that cannot be viewed flat) share one slot: their per-parameter
  state is packed once into flat buffers (the state's tensors become views of them, so
  ``state_dict`` and checkpoints are unchanged), and each step their gradients and values
  are gathered into flat scratch tensors with one multi-tensor copy, and the values copied
  back after. That costs 24 bytes per element more than the 28 of Adam, worth it below
  ``PACK_BELOW`` elements, where a slot's fixed cost dominates.
- Unused slots hold small dummy tensors, so every call has the same signature; sizes are
  dynamic and not duck-shaped, so no call recompiles another's graph.

This relies on the chain being elementwise (:func:`gradtx.base.is_elementwise`): the
numbers cannot depend on how the parameters are split into slots. State shared across
parameters (step counts, hyperparameters) is read by every call of a step and written once
after the last, so every call sees the values of the step's start.
"""

from __future__ import annotations

import contextlib
import functools
import types
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx.experimental._config as _fx_config

from .._tree import param_leaves, tree_flatten, tree_leaves, tree_unflatten
from ..base import GradientTransformation, non_elementwise_parts, updater
from . import layout as _layout

__all__ = ["CompiledChain"]

SLOTS = 8  # tensors per compiled call: compile time grows with it, per-call cost shrinks
PACK_BELOW = 1 << 16  # parameters with fewer elements share the packed slot

# Shapes are symbolic, each input's own (no "duck" sharing of equal sizes, which would make
# the next call, with other sizes, recompile) and not specialised for sizes 0 or 1.
_SHAPE_CONFIG = {k: v for k, v in (("use_duck_shape", False), ("backed_size_oblivious", True))
                 if hasattr(_fx_config, k)}
_INDUCTOR_CONFIG = {
    # Inductor's C++ code runs a loop serially when the size it was compiled for is small,
    # and a graph first compiled with dummies in most slots would then run real parameters
    # in those slots on one thread (resnet: 12.8 ms a step, 7.0 parallel); so is a kernel
    # compiled by a one-thread process. A parallel region everywhere, sized by OpenMP at
    # run time, is right for any slot and thread count.
    "cpp.dynamic_threads": True,
    # Guards already check every input's size and stride; the generated code need not again.
    "size_asserts": False,
    "alignment_asserts": False,
}


@functools.cache
def _inductor_settings() -> dict:
    """``_INDUCTOR_CONFIG`` less the settings this torch's Inductor lacks (an older release
    lacks some; all are speed settings, so leaving one out changes no number)."""
    import torch._inductor.config as inductor_config

    known = inductor_config.get_config_copy()
    return {k: v for k, v in _INDUCTOR_CONFIG.items() if k in known}


def _flat(x: torch.Tensor) -> torch.Tensor | None:
    """``x`` as a flat tensor sharing its memory, or ``None`` when it has none in index order.

    Detached, so that it is neither a view (dynamo guards a view's base, whose shape differs
    from slot to slot) nor requiring grad (a parameter's would, and the dummies' not)."""
    return x.view(-1).detach() if x.is_contiguous() else None


def _fresh_function(fn: types.FunctionType) -> types.FunctionType:
    """A copy of ``fn`` with a code object of its own: dynamo keeps its cache (and its limit
    of recompiles) per code object, so each optimizer gets its own instead of sharing one
    with every other optimizer made from the same source."""
    return types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__,
                              fn.__closure__)


def _slot_step(tx: GradientTransformation, spec: Any, per_param: tuple[bool, ...]):
    """The function compiled: one update of the chain on ``SLOTS`` flat slots, in place."""
    run = updater(tx)  # an undeclared transform gets only the extra arguments it names

    def slot_step(leaves: list[torch.Tensor]) -> list[torch.Tensor]:
        grads, state, params = tree_unflatten(leaves, spec)
        # the pure update writes into nothing: the slots' gradients stay the raw gradient
        updates, new_state = run(grads, state, params, False, {"grad": grads})
        shared = []
        for old, new, is_param in zip(tree_leaves(state), tree_leaves(new_state), per_param):
            if is_param:
                old.copy_(new)
            else:
                shared.append(new)
        for p, u in zip(params.values(), updates.values()):
            p.add_(u)
        return shared

    return _fresh_function(slot_step)


@dataclass
class _Pack:
    """Small parameters packed into one slot."""

    keys: list[int]
    grads: torch.Tensor  # flat scratch, gathered each step
    params: torch.Tensor  # flat scratch, gathered before and scattered after each call
    grad_views: list[torch.Tensor]  # views of ``grads`` shaped like each parameter
    param_views: list[torch.Tensor]
    state: dict[str, torch.Tensor]  # path -> flat buffer the state's tensors are views of


@dataclass
class _Call:
    """One compiled call: the slots' leaves, and which slots take this step's tensors."""

    leaves: list[torch.Tensor]
    big: list[tuple[int, int]] = field(default_factory=list)  # (slot, parameter key)
    pack: _Pack | None = None


@dataclass
class _Plan:
    state: Any  # the full group state this plan was built on (identity)
    keys: tuple[int, ...]
    calls: list[_Call]
    shared: list[torch.Tensor]  # the state's shared leaves, in output order


class CompiledChain:
    """Runs an elementwise chain for ``gx.Optimizer(..., compile=...)``, a param group at a
    time, in place. ``options`` are ``torch.compile``'s keyword arguments."""

    def __init__(self, tx: GradientTransformation, options: dict[str, Any]) -> None:
        bad = non_elementwise_parts(tx)
        if bad:
            names = ", ".join(sorted({getattr(b, "__dict__", {}).get("name") or repr(b) for b in bad}))
            raise ValueError(f"compile=True runs chains of elementwise transforms; not elementwise: {names} "
                             "(use compile=False for this chain)")
        slots = {i: torch.empty(2, device="meta") for i in range(SLOTS)}
        template = tx.init(slots)
        self._positions = [(index, path) for index, path, _ in param_leaves(template)[0]]
        self._paths = sorted({path for index, path in self._positions if index is not None})
        _, self._spec = tree_flatten((slots, template, slots))
        per_param = tuple(index is not None for index, _ in self._positions)
        self._inductor = options.get("backend", "inductor") == "inductor"
        options = {"dynamic": True, "fullgraph": True, **options}
        self._step = torch.compile(_slot_step(tx, self._spec, per_param), **options)
        self._plans: dict[int, _Plan] = {}

    def run(self, group: int, state: Any, keys: list[int], params: dict, grads: dict) -> Any:
        """One step of param group ``group`` in place: ``state`` is the group's full chain
        state, ``keys`` the parameters with gradients. Returns the state to keep (the same
        tree, or one whose small parameters' tensors were packed into flat buffers)."""
        plan = self._plans.get(group)
        if plan is None or plan.state is not state or plan.keys != tuple(keys) or not self._fits(plan, params):
            plan = self._plan(state, keys, params, grads)
            self._plans[group] = plan
        outputs = None
        with self._compiling():
            for call in plan.calls:
                leaves = list(call.leaves)  # slots' gradients, then state, then params
                for slot, k in call.big:
                    leaves[slot] = self._flat_grad(grads[k])
                    leaves[SLOTS + len(self._positions) + slot] = _flat(params[k])
                pack = call.pack
                if pack is not None:
                    torch._foreach_copy_(pack.grad_views, [grads[k] for k in pack.keys])
                    torch._foreach_copy_(pack.param_views, [params[k] for k in pack.keys])
                try:
                    outputs = self._step(leaves)
                except RuntimeError as err:  # before any write of this call: say what to change
                    if not _untraceable(err):
                        raise
                    said = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                    raise ValueError(
                        "compile=True traces the chain's update into one graph, and torch.compile could not trace "
                        "it: a Python branch on a tensor's value (`if int(step) == 1:`, `if x.item() > 0:`) or a "
                        "call it cannot trace. Write the branch with torch.where, or build the optimizer with "
                        f"compile=False. torch.compile said: {said}") from err
                if pack is not None:
                    torch._foreach_copy_([params[k] for k in pack.keys], pack.param_views)
        for old, new in zip(plan.shared, outputs):
            old.copy_(new)
        return plan.state

    def _compiling(self) -> contextlib.ExitStack:
        """The settings a (re)compilation during this step must see."""
        stack = contextlib.ExitStack()
        if _SHAPE_CONFIG:
            stack.enter_context(_fx_config.patch(**_SHAPE_CONFIG))
        if self._inductor:
            import torch._inductor.config as inductor_config

            # a patch, not torch.compile's options, which cannot be given with a mode
            stack.enter_context(inductor_config.patch(_inductor_settings()))
        return stack

    @staticmethod
    def _fits(plan: _Plan, params: dict) -> bool:
        # A parameter whose .data was replaced by a non-contiguous tensor loses its flat view.
        return all(params[k].is_contiguous() for call in plan.calls for _, k in call.big)

    @staticmethod
    def _flat_grad(g: torch.Tensor) -> torch.Tensor:
        flat = _flat(g)
        return flat if flat is not None else _flat(g.contiguous())

    # -- planning (once per group, again when the parameters or the state change) ----------

    def _plan(self, state: Any, keys: list[int], params: dict, grads: dict) -> _Plan:
        # Packed parameters are copied back whole: one whose elements share memory cannot be.
        for k in keys:
            _layout.check_distinct(params[k], f"parameter {k} of this param group")
        positioned, treedef = param_leaves(state)
        leaves = [leaf for _, _, leaf in positioned]
        per_param: dict[int, dict[str, torch.Tensor]] = {}
        shared: list[torch.Tensor] = []
        where: dict[tuple[int, str], int] = {}
        for at, (index, path, leaf) in enumerate(positioned):
            if index is None:
                shared.append(leaf)
            else:
                per_param.setdefault(index, {})[path] = leaf
                where[(index, path)] = at
        if len(shared) != sum(index is None for index, _ in self._positions):
            raise ValueError("compile=True: the chain's state does not have the structure of its init")

        # Slots by (device, param dtype, grad dtype): one graph per such kind, as eager kernels.
        kinds: dict[tuple, tuple[list[int], list[int]]] = {}
        for k in keys:
            p, g = params[k], grads[k]
            if p.numel() == 0:
                continue
            per_param.setdefault(k, {})
            for path in self._paths:
                leaf = per_param[k][path]
                if leaf.shape != p.shape:
                    raise ValueError(f"compile=True: state {path} of parameter {k} has shape {tuple(leaf.shape)}, "
                                     f"not its parameter's {tuple(p.shape)}: the chain is not elementwise")
            big, small = kinds.setdefault((p.device, p.dtype, g.dtype), ([], []))
            flat_ok = p.is_contiguous() and all(x.is_contiguous() for x in per_param[k].values())
            (big if flat_ok and p.numel() >= PACK_BELOW else small).append(k)

        calls: list[_Call] = []
        for (device, p_dtype, g_dtype), (big, small) in kinds.items():
            pack = self._pack(small, params, grads, per_param, leaves, where, g_dtype) if small else None
            items: list[Any] = ([pack] if pack else []) + big
            for start in range(0, len(items), SLOTS):
                calls.append(self._call(items[start:start + SLOTS], per_param, shared, device, p_dtype, g_dtype))
        if not calls:
            # Nothing with elements to update: one call of dummies still advances shared state.
            calls.append(self._call([], per_param, shared, torch.device("cpu"), torch.float32, torch.float32))
        new_state = tree_unflatten(leaves, treedef)
        return _Plan(new_state, tuple(keys), calls, shared)

    def _pack(self, keys: list[int], params: dict, grads: dict, per_param: dict, leaves: list, where: dict,
              g_dtype: torch.dtype) -> _Pack:
        """Pack the state of ``keys`` into flat buffers (replacing their ``leaves`` by views)."""
        p0 = params[keys[0]]
        sizes = [params[k].numel() for k in keys]
        total = sum(sizes)

        def views(flat: torch.Tensor) -> list[torch.Tensor]:
            return [piece.view(params[k].shape) for piece, k in zip(flat.split(sizes), keys)]

        state = {}
        for path in self._paths:
            flat = torch.empty(total, dtype=per_param[keys[0]][path].dtype, device=p0.device)
            pieces = views(flat)
            torch._foreach_copy_(pieces, [per_param[k][path] for k in keys])
            for k, piece in zip(keys, pieces):
                leaves[where[(k, path)]] = piece
                per_param[k][path] = piece
            state[path] = flat
        g_flat = torch.empty(total, dtype=g_dtype, device=p0.device)
        p_flat = torch.empty(total, dtype=p0.dtype, device=p0.device)
        return _Pack(keys, g_flat, p_flat, views(g_flat), views(p_flat), state)

    def _call(self, items: list[Any], per_param: dict, shared: list[torch.Tensor], device: torch.device,
              p_dtype: torch.dtype, g_dtype: torch.dtype) -> _Call:
        """The leaves of one call: ``items`` (a pack or parameter keys) in the first slots,
        dummies in the rest."""
        slot_grads: list[torch.Tensor] = []
        slot_params: list[torch.Tensor] = []
        slot_state: list[dict[str, torch.Tensor]] = []
        call = _Call([])
        first = items[0] if items else None
        dtypes = (first.state if isinstance(first, _Pack) else per_param[first] if first is not None else {})
        dtypes = {path: x.dtype for path, x in dtypes.items()}
        for slot in range(SLOTS):
            item = items[slot] if slot < len(items) else None
            if isinstance(item, _Pack):
                call.pack = item
                slot_grads.append(item.grads)
                slot_params.append(item.params)
                slot_state.append(item.state)
            elif item is not None:
                call.big.append((slot, item))
                slot_grads.append(torch.empty(0))  # replaced by the step's gradient
                slot_params.append(torch.empty(0))
                slot_state.append({path: _flat(per_param[item][path]) for path in self._paths})
            else:
                # A dummy of two elements (0 or 1 would be a special size): distinct tensors,
                # since inputs that alias each other are guarded on.
                slot_grads.append(torch.zeros(2, dtype=g_dtype, device=device))
                slot_params.append(torch.zeros(2, dtype=p_dtype, device=device))
                slot_state.append({path: torch.zeros(2, dtype=dtypes.get(path, p_dtype), device=device)
                                   for path in self._paths})
        shared_iter = iter(shared)
        state_leaves = [next(shared_iter) if index is None else slot_state[index][path]
                        for index, path in self._positions]
        call.leaves = slot_grads + state_leaves + slot_params
        return call


def _untraceable(err: RuntimeError) -> bool:
    """Whether ``err`` is torch.compile's for an update it cannot trace whole (fullgraph): a
    branch on a tensor's value, an unsupported call (torch._dynamo is imported by then)."""
    exc = getattr(getattr(torch, "_dynamo", None), "exc", None)
    kinds = tuple(getattr(exc, name) for name in ("UserError", "Unsupported") if hasattr(exc, name))
    return bool(kinds) and isinstance(err, kinds)
