"""``gx.Optimizer``: any gradient transformation as a ``torch.optim.Optimizer``.

The adapter owns the chain's state and runs it in place. It knows nothing of particular
transforms: it hands each param group to the chain as a dict ``{index: tensor}``, so
per-parameter state lives in int-keyed dicts it can select from and merge into, and it
exposes every hyperparameter the chain keeps in its state (``lr``, ``weight_decay``, ...)
as a key of ``param_groups``.
"""

from __future__ import annotations

import operator
import textwrap
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from itertools import repeat
from typing import Any

import torch

from .. import _foreach as F  # noqa: N812
from .._hparams import as_scalar, check
from .._tree import ParamKey, merge_keys, param_leaves, select_keys, split_param_paths, tree_unflatten
from ..base import GradientTransformation, supports_inplace, updater
from ..combine import members_runner
from ..handover import makes_gradients
from . import checkpoint as _checkpoint
from . import closure as _closure
from . import compiled as _compiled
from . import distributed as _distributed
from . import flat as _flat
from . import fused as _fused
from . import hyperparams
from . import layout as _layout
from . import pickling as _pickling
from . import placement as _placement
from . import settings as _settings
from . import torch_state as _torch_state
from .groups import split_by_group

__all__ = ["Optimizer"]

STATE_FORMAT = _checkpoint.OLD_FORMAT  # the layout the adapter works on; state_dict() gives format 2

# Constructor arguments that ZeroRedundancyOptimizer(optimizer_class=gx.Optimizer, tx=...) also
# puts in every param group; the chain itself is kept there as its signature (a string pickles).
_CONSTRUCTOR_KEYS = frozenset({"tx", "fast", "compile", "check_descent", "differentiable"})

# Chains built again with other settings, kept for the groups that use them; a scheduler
# cycling a momentum makes a new one each step, so only the latest few are kept.
_VARIANTS_KEPT = 16

_GRAD = operator.attrgetter("grad")
_IS_SPARSE = operator.attrgetter("is_sparse")


@dataclass(frozen=True)
class _Variant:
    """The chain built with one set of settings, and how the adapter runs it."""

    tx: GradientTransformation
    plan: Any  # a fused plan, or None
    before_lr: Any  # the parts before a final scale_by_lr, run by members_runner, or None
    run: Callable[..., Any]  # updater(tx)
    declared: bool  # supports_inplace(tx)

    def step(self, updates: dict, state: Any, params: dict, extra: dict[str, Any]) -> tuple[dict, Any, float]:
        """``(updates, new state, alpha)`` of the chain over ``updates``, which the caller adds
        to the params scaled by ``alpha``: a chain ending in ``scale_by_lr(number)`` runs its
        other parts and gives ``alpha = -lr`` (``p <- p - lr u`` in one pass), any other
        ``alpha = 1``."""
        if self.before_lr is not None and not state[-1].lr.requires_grad:
            updates, new_state = self.before_lr(updates, state[:-1], params, True, extra)
            return updates, (*new_state, state[-1]), -float(state[-1].lr)
        updates, state = self.run(updates, state, params, self.declared, extra)
        return updates, state, 1.0


def _slope(pairs: list[tuple[torch.Tensor, torch.Tensor]], block: int = 1 << 16) -> float:
    """``sum <x, g>`` over ``pairs`` in float64, a block of elements at a time (no float64
    copy of a whole tensor)."""
    total = 0.0
    for x, g in pairs:
        x, g = x.reshape(-1), g.reshape(-1)
        for i in range(0, x.numel(), block):
            total += float(torch.vdot(x[i:i + block].to(torch.complex128 if x.is_complex() else torch.float64),
                                      g[i:i + block].to(torch.complex128 if g.is_complex() else torch.float64)).real)
    return total


class StateView(dict):
    """``opt.state`` of a :class:`Optimizer`: ``{param: {path: tensor}}`` holding the chain's
    live state tensors. A parameter without state reads as ``{}`` (torch's ``defaultdict``);
    ``clear()`` forgets every parameter's state."""

    def __init__(self, optimizer: Optimizer) -> None:
        super().__init__()
        self._optimizer = optimizer

    def __missing__(self, key: Any) -> dict[str, torch.Tensor]:
        return {}

    def __setitem__(self, key: Any, value: Any) -> None:
        """``opt.state[param] = entry`` loads ``entry`` (the parameter's entry of a
        :meth:`Optimizer.state_dict`, as ``ZeroRedundancyOptimizer.load_state_dict`` writes it)."""
        self._optimizer._load_param_entry(key, value)

    def _fill(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)

    def clear(self) -> None:
        super().clear()
        self._optimizer._forget_state()


class Optimizer(torch.optim.Optimizer):
    """A ``torch.optim.Optimizer`` that runs a gradient transformation.

    ``p <- p + u`` with ``(u, state) = tx.update(grads, state, params)``.

    - **One chain over every param group.** Parts of the chain that are not leafwise
      (:func:`gradtx.is_leafwise`: a global-norm clip, a user's transform) see the
      parameters of all groups at once, as ``clip_grad_norm_(model.parameters())`` before a
      torch optimizer does; leafwise parts run per group, so a group's settings apply to
      that group only. A setting of a part that runs over all groups takes one value: groups
      that disagree on it raise ``ValueError``.
    - ``param_groups[i]`` holds the chain's hyperparameters (``lr``, ``weight_decay``, ...
      whatever its transforms keep in their state); LR schedulers and per-group overrides
      (``[{'params': enc, 'lr': 1e-2}, {'params': dec}]``) set them. Where two transforms
      hold the same name, each gets a key qualified by the transform holding it (its
      constructor's name, or the name given in ``named_chain``/``partition``):
      ``"scale_by_adam.eps"``; only ``lr`` stays one key, the others following it by their
      ratio to the first (a ``partition`` of two learning rates under one scheduler). A
      group key that no transform reads is warned about. A learning rate given as a gradtx
      schedule shows its first value as ``lr`` and refuses a change (a torch LR scheduler
      and a gradtx schedule cannot both drive it).
    - The constructors' other float arguments are group keys too (``b1``, ``b2``, ``eps``,
      ``momentum``, ...: see ``gradtx.optim.settings``), and torch's ``betas`` where the chain
      has one ``b1`` and one ``b2``, kept in step with them, so ``OneCycleLR`` and ``CyclicLR``
      (``cycle_momentum=True``) cycle Adam's ``b1`` or SGD's ``momentum`` as they cycle
      torch's. A group whose values differ runs the chain built again with them (cached; a
      value changed every step costs a rebuild, about a millisecond per group). Only
      arguments given as numbers are keys (``gx.sgd(lr)`` has no momentum, so no
      ``momentum`` key: build it with ``momentum=0.0`` to drive it). A value that would
      change the state's layout or that the constructor refuses raises ``ValueError``. Under
      ``compile=True`` the chain is built once with its settings as 0-dim tensors, which the
      graph reads as inputs: a group's values are written into them, with no rebuild and no
      recompile (a chain whose constructors do not take tensors keeps its numbers compiled in
      and refuses a change).
    - Any ``GradientTransformation`` runs, an optax-style one included; only transforms
      that declare in-place reuse (:func:`gradtx.supports_inplace`) are written into.
    - ``check_descent`` (default on): the first step warns when it moved the parameters
      uphill (a chain without ``scale_by_lr``, or with a positive ``scale``); steps on meta
      or fake tensors, which have no values, leave the check to the first step on real ones.
    - Meta-device parameters and ``FakeTensorMode`` (memory estimation, as
      ``torch.distributed._tools.mem_tracker.MemTracker`` runs it) step as with ``torch.optim``:
      the state made has the shapes, dtypes and devices it has on real tensors. Step counts
      are made from numbers, so under ``FakeTensorMode`` they keep their values and the fast
      paths read them as on real tensors. What would need values is done otherwise: meta
      parameters leave torch's fused kernels (some have no meta implementation, as with
      ``torch.optim``'s ``fused=True``) to the generic path, ``flat=True`` leaves both kinds to
      the default path (no memory to lay out), and a fake global norm counts as clipping (the
      kernels read copies of the gradients, as on an accelerator).
    - Parameters whose ``.grad`` is ``None`` are skipped and get no state. Step counters
      are shared by a param group: a parameter first seen late starts with fresh moments
      but the group's count.
    - ``step(closure)`` calls the closure (with grad enabled) first and returns its loss;
      transforms receive ``value`` (that loss), ``grad``, and ``value_fn`` (params -> loss)
      and ``value_and_grad_fn`` (params -> (loss, grads)), ``hvp_fn`` ((params, v) -> Hv,
      by double backward) and ``batched_hvp_fn`` built from the closure, which takes
      torchzero's ``backward`` flag (see :meth:`step`). ``reuse_evaluations`` (default on):
      a step that ends on a point its line search evaluated with gradients keeps that
      evaluation, and the next ``step`` with the same closure object, from those exact
      parameters, takes it instead of its first closure call (as ``torch.optim.LBFGS``'s next
      iteration does; it holds that point and its gradients between steps, twice the
      parameters' memory); ``False`` for a closure that reads data changing between steps.
    - ``state_dict()`` holds tensors and plain containers only and reads back with
      ``torch.load(..., weights_only=True)``.
    - ``pickle``, ``torch.save(opt)`` and ``copy.deepcopy(opt)`` work as for ``torch.optim``: the
      chain is built again from the constructor calls its transforms record, so a chain holding
      a lambda or nested function is refused when pickled, naming it (deepcopy shares such
      functions). See ``gradtx.optim.pickling``.
    - Migration: ``load_state_dict`` also takes a ``torch.optim`` state dict (Adam, AdamW, SGD,
      RMSprop, Adagrad) when the chain is its gradtx equivalent, and ``torch_state_dict(kind)``
      writes one ``torch.optim`` loads (see ``gradtx.optim.torch_state``).
    - Speed (``fast=True``, the default): a chain with the shape of Adam, AdamW or SGD
      (momentum, Nesterov, weight decay, masked or not), optionally after ``clip_value``, runs on torch's
      fused kernels (``torch._fused_adam_`` / ``_fused_adamw_`` / ``_fused_sgd_``) on the
      chain's own state tensors, and LAMB on Adam's kernel then its trust ratio (see
      ``gradtx.optim.fused``); the other ``torch.optim`` algorithms (Adagrad, RMSprop, Adamax,
      NAdam, RAdam, Adadelta, ASGD, Rprop) run as a few multi-tensor passes
      (``gradtx.optim.multi_tensor``); ``chain(clip_by_global_norm(c), adamw(...))`` (or SGD,
      Adam, LAMB) runs the norm once and the fused kernels on the gradients divided by
      ``n / c``. A shape is matched on the parts of a chain and of the chains nested in it, in
      order (``chain(clip_value(1.0), adam(lr))`` matches), with the learning rate a plain
      number (not a gradtx schedule). Any other chain runs in place on multi-tensor kernels, on a copy of the gradients
      kept from step to step, with a final ``scale_by_lr(lr)`` folded into ``p <- p - lr * u``.
      The paths agree to round-off and share one state layout, so checkpoints move between
      them; ``fast=False`` runs ``tx.update`` as is. docs/guides/performance.md says how to
      tell which path runs and when ``compile`` or ``flat`` pays.
    - ``compile=True`` (or a dict of ``torch.compile`` arguments, e.g. ``{"mode": ...}``) runs a
      chain of elementwise transforms (:func:`gradtx.is_elementwise`) under ``torch.compile``:
      one graph updates a few flat parameters at a time in one fused pass each, with small
      parameters packed together, so compile time does not grow with the number of
      parameters; hyperparameters and step counts are tensors, so schedulers never
      recompile. Other chains raise ``ValueError``. The state layout is the eager one.
    - ``flat=True`` keeps each param group's parameters (per device and dtype) as views into
      one flat buffer and their gradients as views into another, so an elementwise chain's
      step is one kernel pass over each buffer (fused, multi-tensor or compiled) whatever the
      number of parameters; ``zero_grad()`` zeroes the buffer in place (so ``p.grad`` stays a
      tensor, of -0.0 after ``set_to_none=True``), and the parameters are moved into the buffer
      at the first step (a ``.data`` kept from before no longer aliases). Anything the layout
      cannot take that step runs on the default path, with its numbers; the state layout and
      checkpoints are the default ones (see ``gradtx.optim.flat``). Chains with per-tensor
      norms (``gx.lamb``, ``gx.lars``) run there too, one norm per segment of the buffer; with
      a global norm over every group (``clip_by_global_norm``) every step runs on the default
      path (fused where the rest of the chain is), and the constructor warns that
      ``flat=True`` has no effect. ``gx.muon`` runs flat too (its matrices and its other
      leaves in buffers of their own, Newton-Schulz batched over runs of equal shapes in the
      buffer), and ``gx.adafactor`` (its factored tensors in a buffer of their own, their row
      and column moments flat, the update batched over runs of equal shapes). Other chains (a
      user's transform) raise ``ValueError``.

    Example::

        opt = gx.Optimizer(model.parameters(), gx.adamw(1e-3, weight_decay=0.01))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=1000)
        loss.backward(); opt.step(); opt.zero_grad(); sched.step()
    """

    def __init__(self, params: Iterable[Any], tx: GradientTransformation, *, fast: bool = True,
                 compile: bool | dict[str, Any] = False,  # noqa: A002 - torch.compile's word
                 check_descent: bool = True, differentiable: bool = False, flat: bool = False,
                 reuse_evaluations: bool = True) -> None:
        if not isinstance(tx, GradientTransformation):
            raise TypeError(f"tx must be a GradientTransformation, got {type(tx).__name__}")
        if differentiable:
            # torch's differentiable=True records the step for autograd; gradtx's functional
            # path is differentiable as it is, with nothing written in place.
            raise ValueError(
                "differentiable=True is not supported by gx.Optimizer, which updates parameters in place; "
                "differentiate through the functional API instead: state = tx.init(params); "
                "updates, state = tx.update(grads, state, params); params = gx.apply_updates(params, updates) "
                "(torch.func.grad and autograd see every step; hyperparameters may be tensors with requires_grad)")
        if not isinstance(fast, bool):
            raise ValueError(f"fast must be a bool, got {fast!r}")
        if not isinstance(compile, (bool, dict)):
            raise ValueError(f"compile must be a bool or a dict of torch.compile arguments, got {compile!r}")
        if not isinstance(flat, bool):
            raise ValueError(f"flat must be a bool, got {flat!r}")
        if not isinstance(reuse_evaluations, bool):
            raise ValueError(f"reuse_evaluations must be a bool, got {reuse_evaluations!r}")
        self.tx = tx
        # A chain with a member that makes its own gradients (gradtx.handover) steps every
        # parameter that requires grad, from closure(backward=False) evaluations alone.
        self._own_gradients = makes_gradients(tx)
        self._init_options = {"fast": fast, "compile": compile, "check_descent": check_descent}  # for pickling
        self._flat = None
        if not reuse_evaluations:
            self._init_options["reuse_evaluations"] = False
        # the closure's evaluation where the last step ended (see gradtx.optim.closure): not state
        self._reuse = reuse_evaluations
        self._kept: Any = None
        self._step_evaluations: Any = None  # while stepping with a closure: its Evaluations
        if flat:  # contiguous storage (gradtx.optim.flat)
            self._init_options["flat"] = True
            self._flat = _flat.FlatStorage.for_chain(tx)
        # Constructor arguments as group keys: a group's values rebuild the chain (settings.py).
        self._settings = _settings.find(tx)
        # compile=True (or torch.compile's arguments) runs an elementwise chain compiled, in
        # slots of flat tensors, so compile time does not grow with the parameter count. Its
        # settings are 0-dim tensors the graph reads (a cycled momentum is a fill_, not a
        # rebuilt chain and a new graph), where the constructors take tensors for them.
        self._setting_tensors: list[torch.Tensor] | None = None
        self._setting_filled: tuple[float, ...] | None = None
        self._compiled = None
        compiled_tx = tx
        if compile is not False:
            found = _settings.as_tensors(tx, self._settings)
            if found is not None and chain_signature(found[0]) == chain_signature(tx) and (
                    _layout_of(found[0].init({})) == _layout_of(tx.init({}))):
                compiled_tx, self._setting_tensors = found
            self._compiled = _compiled.CompiledChain(compiled_tx, {} if compile is True else compile)
        # A chain with the shape of adam / adamw / sgd runs on torch's fused kernels, on the
        # same state tensors (see _fused); fast=False forces the generic path (for tests).
        self._plan = _fused.plan(tx) if fast and self._compiled is None else None
        lr_tail = _fused.lr_tail(tx) if fast and self._compiled is None else None
        # chain(..., scale_by_lr(lr)): the parts before the learning rate, run as the chain
        # runs them, and -lr folded into the parameter update
        self._before_lr = None if lr_tail is None else members_runner(lr_tail[:-1])
        # A transform that declares in-place reuse writes into the update buffers it is
        # given and keeps none of them: it gets scratch copies of the grads, reused from
        # step to step (fresh memory costs page faults every step, ~5x slower than writing
        # in place). Any other one is called as optax would, on fresh copies it may keep.
        self._declared = supports_inplace(tx)
        self._run = updater(tx)
        # One chain over every group: a chain with parts that are not leafwise (a global
        # norm, a user's transform) runs once over all parameters, its leafwise parts per
        # group (see groups.py); a leafwise chain runs per group on the paths above.
        self._split = split_by_group(tx, lambda: len(self.param_groups)) if self._compiled is None else None
        # chain(clip_by_global_norm(c), adamw / sgd / ...): the norm once, then each group's
        # fused kernel reading the gradients divided by n / c (see fused.GlobalClipPlan)
        self._clip_plan = None
        if self._split is not None:
            self._clip_plan = _fused.global_clip_plan(tx) if fast else None
            self._plan = self._before_lr = None
            if self._flat is not None:  # the one-chain path has no flat form: say so, not silently
                warnings.warn(self._flat.unused_warning(tx), stacklevel=2)
            self._declared = supports_inplace(self._split)
            self._run = updater(self._split)
        self._one_state: Any = None  # with _split: the state over every group's stepped params
        self._one_known: set[int] = set()  # with _split: the global indices it covers
        self._one_ids: dict[int, int] = {}  # with _split: id() of each covered parameter when its state was made
        self._one_keys: list[ParamKey] | None = None  # with _split: a key per parameter of all groups
        self._scratch: list[Any] = []
        # Per group: (keys, params list, {ParamKey: param}) of the last step, reused while the
        # same params have gradients (building thousands of keys each step is measurable).
        self._step_params: list[Any] = []
        self._chain_states: list[Any] = []  # per group: chain state over its stepped params, or None
        # per group: a flag per param index, 1 where the chain state covers it (a set of
        # thousands of ints costs a hundred times the memory)
        self._known_keys: list[bytearray] = []
        self._param_keys: list[list[ParamKey] | None] = []  # per group: a key per parameter
        # per group: id() of each parameter when its state was made (a replaced one starts afresh)
        self._param_ids: list[list[int]] = []
        defaults, self._slots, self._setting_keys = hyperparams.template(tx, self._settings)
        self._built_values = tuple(s.value for s in self._settings)
        self._base = _Variant(tx, self._plan, self._before_lr, self._run, self._declared)
        if self._setting_tensors is not None:
            # what runs outside the graph (flat=True's small buffers) reads the same tensors
            self._base = _Variant(compiled_tx, None, None, updater(compiled_tx), supports_inplace(compiled_tx))
        self._variants: OrderedDict[tuple[float, ...], _Variant] = OrderedDict()
        self._splits: OrderedDict[tuple[tuple[float, ...], ...], Any] = OrderedDict()
        # torch's name for Adam's betas, where the chain has exactly one b1 and one b2
        self._betas = "b1" in defaults and "b2" in defaults
        if self._betas:
            defaults["betas"] = (defaults["b1"], defaults["b2"])
        self._betas_seen: list[tuple[float, float] | None] = []
        # A learning rate given as a gradtx schedule drives itself: param_groups shows its first
        # value under 'lr' (torch's LR schedulers need the key), and a step refuses a change
        # to it rather than ignore it.
        self._lr_schedule = hyperparams.lr_schedule(tx) if "lr" not in defaults else None
        if self._lr_schedule is not None:
            # (a count made from a number: it can be read under FakeTensorMode too)
            defaults["lr"] = float(self._lr_schedule(torch.tensor(0, dtype=torch.int32)))
        self._check_descent = check_descent
        self._has_dtensors = False  # a parameter is a DTensor (FSDP2): see gradtx.optim.distributed
        self._evaluations: Any = None  # while stepping DTensor parameters, their closure evaluations
        # _write_hyperparameters' check for running values: (group, position, part) -> (steps it
        # is still read back, the value written), and the positions found to be running values
        self._hp_probe: dict[tuple, tuple[int, float]] = {}
        self._hp_running: set[int] = set()
        super().__init__(params, defaults)

    # -- torch.optim.Optimizer plumbing -----------------------------------------------

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        where = f"param_groups[{len(self.param_groups)}]"
        if self._betas:
            param_group = self._betas_given(dict(param_group), where)
        for name in self.defaults:
            if name in param_group and name != "betas":
                check(f"{where}[{name!r}]", param_group[name], low=None if name in self._setting_keys else 0.0)
        if isinstance(param_group.get("tx"), GradientTransformation):
            param_group = {**param_group, "tx": chain_signature(param_group["tx"])}
        unread = sorted(k for k in param_group if k not in self.defaults and k not in hyperparams.BOOKKEEPING_KEYS
                        and k not in _CONSTRUCTOR_KEYS)
        if unread:
            warnings.warn(f"{where} sets {unread}, which no transform of this chain reads; its keys are "
                          f"{sorted(self.defaults)}", stacklevel=2)
        super().add_param_group(param_group)
        if self._flat is not None:  # a list that notes changes in place (gradtx.optim.flat)
            self.param_groups[-1]["params"] = _flat._Params(self.param_groups[-1]["params"])
        self._refuse_overlapping_params()
        self._has_dtensors = self._has_dtensors or _distributed.has_dtensors(self.param_groups[-1]["params"])
        try:  # the constructors check the group's settings, naming the argument
            self._variant(self._setting_values(self.param_groups[-1]), where)
        except ValueError:
            self.param_groups.pop()
            raise
        self._betas_seen.append(tuple(self.param_groups[-1]["betas"]) if self._betas else None)
        self._chain_states.append(None)
        self._known_keys.append(bytearray(len(self.param_groups[-1]["params"])))
        self._param_ids.append([0] * len(self.param_groups[-1]["params"]))
        self._param_keys.append(None)
        self._scratch.append(None)
        self._step_params.append(None)

    def zero_grad(self, set_to_none: bool = True) -> None:
        if self._flat is None:
            super().zero_grad(set_to_none)
        else:  # the flat groups' gradient buffers zeroed in place, keeping the views
            self._flat.zero_grad(self, set_to_none)

    def _betas_given(self, group: dict[str, Any], where: str) -> dict[str, Any]:
        """``group`` with ``betas`` and ``b1``/``b2`` agreeing, from whichever was given."""
        if "betas" in group:
            betas = group["betas"]
            if not isinstance(betas, (tuple, list)) or len(betas) != 2:
                raise ValueError(f"{where}['betas'] must be a pair (b1, b2), got {betas!r}")
            for name, value in zip(("b1", "b2"), betas):
                if name in group and group[name] != value:
                    raise ValueError(f"{where} gives betas={tuple(betas)!r} and {name}={group[name]!r}, which disagree")
            group["b1"], group["b2"] = betas
            group["betas"] = tuple(betas)
        elif "b1" in group or "b2" in group:
            group["betas"] = (group.get("b1", self.defaults["b1"]), group.get("b2", self.defaults["b2"]))
        return group

    def _sync_betas(self) -> None:
        """Keep ``betas`` and ``b1``/``b2`` equal in every group, following the one changed
        since the last step (a torch scheduler writes ``betas``, a user may write ``b1``)."""
        for gi, group in enumerate(self.param_groups):
            betas = tuple(group["betas"])
            seen = self._betas_seen[gi]
            if seen is None or betas != seen:
                group["b1"], group["b2"] = betas
            else:
                group["betas"] = betas = (group["b1"], group["b2"])
            self._betas_seen[gi] = betas

    def _setting_values(self, group: dict[str, Any]) -> tuple[float, ...]:
        return tuple(float(as_scalar(group[key])) for key in self._setting_keys)

    def _variant(self, values: tuple[float, ...], where: str = "param_groups") -> _Variant:
        """The chain built with ``values`` (one per setting), cached; the built one when they
        are its own. ``ValueError`` when the constructor refuses a value or the rebuilt chain
        would keep another state."""
        if values == self._built_values:
            return self._base
        return _cached(self._variants, values, lambda: self._build_variant(values, where))

    def _build_variant(self, values: tuple[float, ...], where: str) -> _Variant:
        changed = {(s.path, s.name): v for s, v in zip(self._settings, values) if v != s.value}
        keys = [k for k, s, v in zip(self._setting_keys, self._settings, values) if v != s.value]
        if self._compiled is not None and self._setting_tensors is None:
            raise ValueError(f"{where} sets {keys} to values the chain was not built with, but under compile=True "
                             "its numbers are compiled into the graph (its constructors do not take them as "
                             "tensors, which the graph would read); build the chain with them, or wrap the "
                             "transform in gx.inject_hyperparams to keep them in state")
        try:
            tx = _settings.rebuild(self.tx, changed)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
        built, rebuilt = _layout_of(self.tx.init({})), _layout_of(tx.init({}))
        if chain_signature(tx) != chain_signature(self.tx) or built != rebuilt:
            raise ValueError(f"{where} sets {keys}, which the chain cannot take without another state: built "
                             f"with these values it is {chain_signature(tx)} with state {rebuilt}, not "
                             f"{chain_signature(self.tx)} with state {built}. Build the chain with a value of the "
                             "kind the groups will use (a momentum of 0 builds no momentum buffer)")
        if self._compiled is not None:
            return self._base  # the compiled graph reads the values from self._setting_tensors
        # the fast paths the built chain has, for the rebuilt one (same shape: no need to recognise it)
        lr_tail = None if self._base.plan is None and self._base.before_lr is None else _fused.lr_tail(tx,
                                                                                                       is_chain=True)
        return _Variant(tx, None if self._base.plan is None else _fused.plan(tx, is_chain=True),
                        None if lr_tail is None else members_runner(lr_tail[:-1]), updater(tx), supports_inplace(tx))

    def _fill_settings(self, group: dict[str, Any]) -> None:
        """Under ``compile=True``: ``group``'s settings into the tensors the graph reads."""
        if self._setting_tensors is None:
            return
        values = self._setting_values(group)
        if values != self._setting_filled:
            for tensor, value in zip(self._setting_tensors, values):
                tensor.fill_(value)
            self._setting_filled = values

    @property
    def state(self) -> StateView:  # type: ignore[override]
        """Per-parameter state, ``{param: {path: tensor}}``: the live state tensors, so tools
        that walk ``opt.state`` (moving state to a device, logging moment norms) see them; a
        parameter without state reads as ``{}``, as in torch. ``opt.state.clear()`` (or
        assigning an empty dict) forgets all state; load states with ``load_state_dict``."""
        view = StateView(self)
        if self._split is not None:
            if self._one_state is not None:
                all_params = self._all_params()
                for index, leaves in split_param_paths(self._one_state)[1].items():
                    view._fill(all_params[index], leaves)
            return view
        for group, chain_state in zip(self.param_groups, self._chain_states):
            if chain_state is not None:
                _, per_param = split_param_paths(chain_state)
                for index, leaves in per_param.items():
                    view._fill(group["params"][index], leaves)
        return view

    @state.setter
    def state(self, value: Any) -> None:
        # torch.optim.Optimizer.__init__ assigns an empty dict; our state lives in the chain.
        if len(value):
            raise ValueError("gx.Optimizer's state lives in its chain: load states with load_state_dict, "
                             "or assign an empty dict to forget them")
        self._forget_state()

    def _forget_state(self) -> None:
        """Drop all state: every parameter starts afresh at its next step, as a new optimizer."""
        groups = getattr(self, "param_groups", [])  # torch.optim's __init__ assigns state first
        n = len(groups)
        self._chain_states = [None] * n
        self._known_keys = [bytearray(len(g["params"])) for g in groups]
        self._param_ids = [[0] * len(g["params"]) for g in groups]
        self._scratch = [None] * n
        self._step_params = [None] * n
        self._one_state, self._one_known, self._one_ids = None, set(), {}

    # -- stepping ----------------------------------------------------------------------

    def _forget_replaced(self, gi: int) -> None:
        """Forget the state of parameters replaced in ``param_groups[gi]['params']`` since
        their state was made: the new tensor starts afresh, as torch's state keyed by
        parameter does."""
        group, known, ids = self.param_groups[gi], self._known_keys[gi], self._param_ids[gi]
        n = len(group["params"])
        if len(ids) < n:
            ids.extend([0] * (n - len(ids)))
        if len(known) < n:
            known.extend(bytes(n - len(known)))
        replaced = {k for k in range(n) if known[k] and ids[k] != id(group["params"][k])}
        if not replaced:
            return
        kept = [k for k in range(n) if known[k] and k not in replaced]
        state = self._chain_states[gi]
        self._chain_states[gi] = select_keys(state, kept) if kept and state is not None else None
        for k in replaced:
            known[k] = 0
        self._param_keys[gi] = None
        self._scratch[gi] = None

    def _group_state(self, gi: int, keys: list[int], tx: GradientTransformation) -> tuple[Any, bool]:
        """The chain state over ``keys`` (initialising parameters seen for the first time
        with ``tx``, the group's chain), and whether it is a selection from a state over
        more parameters."""
        group = self.param_groups[gi]
        full = self._chain_states[gi]
        known = self._known_keys[gi]
        if len(known) < len(group["params"]):  # params appended to the group's list
            known.extend(bytes(len(group["params"]) - len(known)))
        new = [k for k in keys if not known[k]] if 0 in known else []  # `0 in`: one C-level scan
        if new:
            fresh = _placement.staggered_init(tx.init, self._param_dict(gi, new))
            full = fresh if full is None else merge_keys(fresh, full)
            self._chain_states[gi] = full
            ids = self._param_ids[gi]
            for k in new:
                known[k] = 1
                ids[k] = id(group["params"][k])
        if len(keys) == known.count(1):
            return full, False
        return select_keys(full, keys), True

    def _param_dict(self, gi: int, keys: list[int]) -> dict[ParamKey, torch.Tensor]:
        """``{ParamKey: param}`` for ``keys`` of param group ``gi``; the keys are made once
        per parameter and shared by every dict (thousands of parameters, every step)."""
        group = self.param_groups[gi]
        made = self._param_keys[gi]
        if made is None or len(made) != len(group["params"]):
            names = group.get("param_names")
            made = [ParamKey(k, names[k] if names else None) for k in range(len(group["params"]))]
            self._param_keys[gi] = made
        return {made[k]: group["params"][k] for k in keys}

    @torch.no_grad()
    def step(self, closure: Callable[..., Any] | None = None) -> Any:
        """One update of every param group; returns the closure's loss at the parameters
        before the step, when a closure is given.

        The closure takes a ``backward`` flag (``closure(backward=True)`` computes the
        gradients, ``backward=False`` only evaluates; see ``gradtx.optim.closure``), or none
        (it then always runs its backward). It is called once with gradients before the
        chain runs; members that evaluate again (line searches, L-BFGS) get ``value_fn`` and
        ``value_and_grad_fn`` built from it, which leave the parameters and ``.grad`` as they
        were. After the step the parameters hold the update and ``.grad`` the gradient at
        the point the step started from.

        With ``reuse_evaluations`` (the default), that first call is skipped when the last
        step ended on a point its line search evaluated with gradients, ``closure`` is the
        same object as then, and every parameter is still bitwise that point: ``.grad`` is
        set to (a copy of) what the closure left there and its loss, detached, is returned.
        The closure must then give the same loss at the same parameters (the data it reads
        unchanged between steps); otherwise build the optimizer with
        ``reuse_evaluations=False``."""
        if torch.compiler.is_compiling():
            return self._step_outside_graph(closure)
        if getattr(self, "_eval_mode", False):
            # the parameters hold the evaluation values: a step from them would be lost on train()
            raise RuntimeError("step() called in eval mode: call opt.train() before stepping (opt.eval() put the "
                               "evaluation parameters in place), as with schedulefree's optimizers")
        loss = None
        kept, self._kept = self._kept, None  # good for this step only
        if self._own_gradients and closure is None:
            raise ValueError("this chain makes its own gradients from the loss alone (it has a gradient-approximation "
                             "member such as gx.spsa or gx.mezo): step it with a closure that evaluates the loss, "
                             "opt.step(lambda backward=False: loss_fn(model(x), y)); it is called with backward=False "
                             "only")
        if closure is not None:
            if not callable(closure):
                raise TypeError(f"closure must be callable (closure(backward=True) -> loss), got {closure!r}")
            if self._own_gradients and not _closure.takes_backward(closure):
                raise ValueError("a chain that makes its own gradients calls the closure with backward=False only: "
                                 "give it the flag, def closure(backward=False): return loss_fn(model(x), y)")
            if kept is not None:
                loss = kept.first(closure, self._all_params())
            if loss is None:
                loss = _closure.Evaluations(closure, {}, []).first(backward=not self._own_gradients)
        if self._lr_schedule is not None:
            self._refuse_lr_change()
        if self._betas:
            self._sync_betas()
        with _distributed.chain_params(self, "step"):  # plain tensors for DTensor parameters
            before = self._descent_snapshot(closure is not None) if self._check_descent else None
            try:
                if self._split is not None:
                    self._step_one_chain(closure, loss)
                else:
                    self._step_per_group(closure, loss)
            finally:
                self._step_evaluations = None
            if before is not None:
                self._warn_if_uphill(before)
        return loss

    @torch.compiler.disable
    def _step_outside_graph(self, closure: Callable[..., Any] | None) -> Any:
        """``step`` under ``torch.compile`` (``torch.compile(opt.step)``, or a compiled training
        step that calls it): run outside the graph, as torch.optim runs its fused kernels. Traced,
        every ``param_groups`` float would be a guarded constant (a recompile per scheduler step),
        a rebuilt chain (a cycled momentum) another graph, the fused kernels cannot be
        functionalized, and Inductor loses writes to 0-dim float64 CPU tensors, which hold the
        hyperparameters (docs/upstream/compile_fill_lost.py). Out of the graph the step reads the
        groups afresh each call and runs its own kernels: the fused ones, the multi-tensor ones,
        or ``compile=True``'s graph, whose hyperparameters are tensor inputs."""
        return self.step(closure)

    def _step_per_group(self, closure: Callable[..., Any] | None, loss: Any) -> None:
        """One step of a leafwise chain: each param group on its own (fused, compiled or generic)."""
        for gi, group in enumerate(self.param_groups):
            self._fill_settings(group)
            if self._flat is not None and closure is None and self._flat.step(self, gi, group):
                continue
            plist = group["params"]
            cached = self._step_params[gi]
            new_keys = False  # a new set of stepped parameters: the updates' shapes are checked once
            if self._own_gradients:
                keys, all_grads = [k for k, p in enumerate(plist) if self._stepped(p)], None
            else:  # C-level passes (thousands of parameters, every step)
                all_grads = list(map(_GRAD, plist))
                n = len(all_grads)
                if all(map(operator.is_not, all_grads, repeat(None))):  # every one stepped: last step's keys
                    # when they were every index (ascending: n of them ending at n - 1), not
                    # those of a longer list of which n had a gradient
                    keys = cached[0] if cached is not None and len(cached[0]) == n and (
                        not n or cached[0][-1] == n - 1) else [*range(n)]
                else:
                    keys = [k for k, g in enumerate(all_grads) if g is not None]
            if not keys:
                continue
            if (cached is not None and cached[1] is group["params"] and (cached[0] is keys or cached[0] == keys)
                    and all(map(operator.is_, cached[3], group["params"]))):
                params = cached[2]
            else:
                self._forget_replaced(gi)
                params = self._param_dict(gi, keys)
                self._step_params[gi] = (keys, group["params"], params, tuple(group["params"]))
                new_keys = True
            if all_grads is None:
                grads = self._grads_or_zeros(gi, keys, params)
            else:
                grads = dict(zip(keys, all_grads if len(keys) == len(all_grads) else [all_grads[k] for k in keys]))
            if any(map(_IS_SPARSE, grads.values())):
                k = next(k for k, g in grads.items() if g.is_sparse)
                raise RuntimeError(f"gx.Optimizer does not support sparse gradients (param {k} of group {gi})")
            variant = self._variant(self._setting_values(group), f"param_groups[{gi}]")
            state, is_selection = self._group_state(gi, keys, variant.tx)
            self._write_hyperparameters(group, state)
            if self._compiled is not None:
                self._chain_states[gi] = self._compiled.run(gi, self._chain_states[gi], keys, params, grads)
                continue
            scratch = lambda like, slot=0, gi=gi, keys=keys: self._buffers(gi, keys, like, slot)  # noqa: E731
            if variant.plan is not None and variant.plan.run(state, keys, params, grads, scratch):
                if is_selection:
                    self._chain_states[gi] = merge_keys(self._chain_states[gi], state)
                continue
            # The chain may write into the updates it is given: hand it a copy, never .grad.
            gs = [grads[k] for k in keys]
            copies = F.copy_(self._buffers(gi, keys, gs), gs) if variant.declared else F.clone(gs)
            updates = dict(zip(keys, copies))
            extra = {} if self._own_gradients else {"grad": grads}
            if closure is not None:
                extra.update(self._evaluation_args(closure, loss, params))
            updates, state, alpha = variant.step(updates, state, params, extra)
            if new_keys:
                _check_update_shapes(updates, params, keys, f" of param_groups[{gi}]")
            self._chain_states[gi] = merge_keys(self._chain_states[gi], state) if is_selection else state
            ps = [params[k] for k in keys]
            us = F.cast_like([updates[k] for k in keys], ps)
            F.add(ps, us, alpha=alpha, inplace=True)

    def _evaluation_args(self, closure: Callable[..., Any], loss: Any, params: dict[Any, torch.Tensor]
                         ) -> dict[str, Any]:
        """The extra arguments a closure gives the chain: ``value`` (the loss the step
        started from), ``value_fn``, ``value_and_grad_fn``, ``hvp_fn`` and ``batched_hvp_fn``
        over ``params``."""
        evaluations = (self._evaluations or _closure.Evaluations)(closure, params, self._all_params())
        self._step_evaluations = evaluations
        extra = {"value": evaluations.reduced(loss),
                 "value_fn": evaluations.value_fn_for_chain()}
        if not self._own_gradients:  # these differentiate the closure; members after a gradient source get its own
            extra.update(value_and_grad_fn=evaluations.value_and_grad_fn, hvp_fn=evaluations.hvp_fn,
                         batched_hvp_fn=evaluations.batched_hvp_fn)
        return extra

    def _stepped(self, p: torch.Tensor) -> bool:
        """Whether ``p`` is stepped: it has a ``.grad``, or the chain makes its own gradients
        and ``p`` requires grad."""
        return p.grad is not None or (self._own_gradients and p.requires_grad)

    def _grads_or_zeros(self, slot: int, keys: list[Any], params: dict[Any, torch.Tensor]) -> dict[Any, torch.Tensor]:
        """The ``.grad`` of each stepped parameter; for a chain that makes its own gradients,
        zeros in the scratch buffers (the updates it is given and ignores)."""
        if not self._own_gradients:
            return {k: params[k].grad for k in keys}
        ps = [params[k] for k in keys]
        return dict(zip(keys, [b.zero_() for b in self._buffers(slot, keys, ps)]))

    def _refuse_lr_change(self) -> None:
        for gi, group in enumerate(self.param_groups):
            if group.get("lr") != self.defaults["lr"]:
                raise ValueError(
                    f"param_groups[{gi}]['lr'] was set to {group.get('lr')!r} (by a torch LR scheduler?), but this "
                    f"chain's learning rate is a gradtx schedule ({getattr(self._lr_schedule, '__name__', 'fn')}), "
                    "which drives it. Give the chain a float lr to drive it from param_groups, or drop one of "
                    "the two schedules.")

    def _descent_snapshot(self, clone: bool) -> tuple[list, float | None] | None:
        """Before the first step: the stepped parameters and the sum of ``<p, grad>`` over
        them, the step's slope along the gradient being that sum after the step minus it (no
        copy of the parameters: the check costs a block of memory). With a closure, which may
        write new gradients during the step, copies of the parameters instead. ``None`` when a
        parameter is a meta or fake tensor (a memory estimate): there are no values to check,
        and the check waits for the first step on real ones."""
        params = [p for group in self.param_groups for p in group["params"] if p.grad is not None]
        if any(map(F.without_data, params)):
            return None
        self._check_descent = False  # once per optimizer
        if clone:
            return [(p, p.detach().clone()) for p in params], None
        return params, _slope([(p.detach(), p.grad) for p in params])

    def _warn_if_uphill(self, before: tuple[list, float | None]) -> None:
        """Warn when the first step moved the parameters along the gradient (uphill)."""
        params, start = before
        if start is None:
            slope = sum(_slope([(p.detach() - old, p.grad)]) for p, old in params if p.grad is not None)
        else:
            slope = _slope([(p.detach(), p.grad) for p in params if p.grad is not None]) - start
        if slope > 0:
            warnings.warn(
                "the first step moved the parameters uphill (its update points along the gradient): updates are "
                "added to the parameters, so a chain must end in a negative scaling such as gx.scale_by_lr(lr) "
                "(or gx.scale(-step)). Check the chain's last transform; check_descent=False silences this.",
                stacklevel=3)

    def _all_keys(self) -> list[ParamKey]:
        """With one chain over all groups: a key per parameter of every group, in order (its
        index among them all, its name and its group), made once per layout."""
        sizes = [len(group["params"]) for group in self.param_groups]
        keys = self._one_keys
        if keys is None or len(keys) != sum(sizes) or (keys and keys[-1].group != len(sizes) - 1):
            keys = []
            for gi, group in enumerate(self.param_groups):
                names, offset = group.get("param_names"), len(keys)
                keys.extend(ParamKey(offset + k, names[k] if names else None, gi) for k in range(sizes[gi]))
            self._one_keys = keys
        return keys

    def _all_params(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def _step_one_chain(self, closure: Callable[..., Any] | None, loss: Any) -> None:
        """One step of a chain with parts that see every group's parameters at once."""
        all_keys = self._all_keys()
        params = {key: p for key, p in zip(all_keys, self._all_params()) if self._stepped(p)}
        if not params:
            return
        grads = self._grads_or_zeros(0, list(params), params)
        for key, g in grads.items():
            if g.is_sparse:
                raise RuntimeError(f"gx.Optimizer does not support sparse gradients (param {int(key)})")
        keys = list(params)
        replaced = [k for k in keys if int(k) in self._one_known and self._one_ids.get(int(k)) != id(params[k])]
        if replaced:  # a tensor put in place of a parameter starts afresh, as in torch
            self._one_known.difference_update(int(k) for k in replaced)
            kept = sorted(self._one_known)
            self._one_state = select_keys(self._one_state, kept) if kept else None
        new = [k for k in keys if int(k) not in self._one_known]
        if new:
            fresh = _placement.staggered_init(self._current_split()[0].init, {k: params[k] for k in new})
            self._one_state = fresh if self._one_state is None else merge_keys(fresh, self._one_state)
            self._one_known.update(int(k) for k in new)
            self._one_ids.update((int(k), id(params[k])) for k in new)
        split, run, declared = self._current_split()
        is_selection = len(keys) != len(self._one_known)
        state = select_keys(self._one_state, keys) if is_selection else self._one_state
        self._write_hyperparameters(None, state)
        if self._clip_plan is not None and closure is None and not self._own_gradients and not self._has_dtensors:
            per_group: dict[int, tuple[list, dict, dict]] = {}
            for k in keys:
                keys_g, params_g, grads_g = per_group.setdefault(k.group, ([], {}, {}))
                keys_g.append(k)
                params_g[k], grads_g[k] = params[k], grads[k]
            txs = {g: self._variant(self._setting_values(self.param_groups[g]), f"param_groups[{g}]").tx
                   for g in per_group}
            if self._clip_plan.run(txs, state, per_group,
                                   lambda g: lambda like, slot=0: self._buffers(g, per_group[g][0], like, slot)):
                self._one_state = merge_keys(self._one_state, state) if is_selection else state
                return
        gs = list(grads.values())
        if self._own_gradients:  # zeros in the scratch buffers already: nothing to copy
            copies = gs if declared else F.clone(gs)
            extra = {}
        else:
            copies = F.copy_(self._buffers(0, keys, gs), gs) if declared else F.clone(gs)
            extra = {"grad": grads}
        if closure is not None:
            extra.update(self._evaluation_args(closure, loss, params))
        updates, state = run(dict(zip(keys, copies)), state, params, declared, extra)
        if new:
            _check_update_shapes(updates, params, keys, "")
        self._one_state = merge_keys(self._one_state, state) if is_selection else state
        ps = list(params.values())
        F.add(ps, F.cast_like([updates[k] for k in keys], ps), inplace=True)
        if closure is not None and self._reusable():
            self._kept = _closure.Kept.after_step(self._step_evaluations)

    def _reusable(self) -> bool:
        """Whether a step may keep its last evaluation for the next (``reuse_evaluations``):
        not for a chain that makes its own gradients (its first call has no backward), nor
        with sharded parameters or several processes, where every rank must call the closure
        (its collectives) whenever one does, and each decides alone."""
        if not self._reuse or self._own_gradients or self._has_dtensors or self._evaluations is not None:
            return False
        dist = torch.distributed
        return not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1)

    def _current_split(self) -> tuple[GradientTransformation, Callable[..., Any], bool]:
        """With one chain over all groups: the split chain for the groups' settings, its
        updater and whether it reuses buffers. Settings of parts that run over every group
        take one value (``ValueError`` when groups disagree)."""
        values = tuple(self._setting_values(group) for group in self.param_groups)
        if all(v == self._built_values for v in values):
            return self._split, self._run, self._declared
        return _cached(self._splits, values, lambda: self._build_split(values))

    def _build_split(self, values: tuple[tuple[float, ...], ...]) -> tuple[GradientTransformation, Callable, bool]:
        for i, setting in enumerate(self._settings):
            if not setting.grouped:
                self._common_value(self._setting_keys[i], setting.scope)
        variants = [self._variant(v, f"param_groups[{gi}]") for gi, v in enumerate(values)]
        split = split_by_group(variants[0].tx, lambda: len(self.param_groups),
                               lambda g: variants[g].tx if g < len(variants) else self.tx)
        return split, updater(split), supports_inplace(split)

    def _write_hyperparameters(self, group: dict[str, Any] | None, state: Any) -> None:
        """Write ``param_groups`` into the chain's hyperparameter tensors (keys and factors
        as ``hyperparams.template`` made them): ``group``'s values, or with ``group=None``
        (one chain over all groups) each group's into its own part of the state and, into
        the parts that run over every group, the value all groups share."""
        slots = self._slots
        probe, running = self._hp_probe, self._hp_running
        for position, scope, gi, tensor in hyperparams.walk(state, self._split if group is None else self.tx):
            slot = slots[position] if position < len(slots) else None
            if slot is None or slot.factor is None or position in running:
                continue
            if group is not None:
                value = group.get(slot.key)
            elif gi is not None:
                value = self.param_groups[gi].get(slot.key)
            else:
                value = self._common_value(slot.key, scope)
            if value is not None:
                where = (None if group is None else id(group), position, gi)
                seen = probe.get(where)
                if seen is not None and seen[0] > 0 and _changed(tensor, seen[1]):
                    # Nothing but the transform wrote it since our last write: it is a running
                    # value (an EMA of a norm, a best loss) that looks like a hyperparameter
                    # (a 0-dim float in a NamedTuple field, made without the params' device).
                    # Writing the group's value would reset it every step.
                    running.add(position)
                    # stacklevel: the user's opt.step(), past torch's two wrappers of step
                    warnings.warn(f"param_groups key {slot.key!r} does not set {scope or slot.key}: the transform "
                                  "changes that 0-dim float tensor itself (a running value such as an EMA, or a "
                                  "schedule given to inject_hyperparams), so it is left to the transform from now "
                                  "on. A running value made on the params' device, as the built-ins make theirs, is "
                                  "not taken for a hyperparameter.", stacklevel=6)
                    continue
                value = as_scalar(value)  # a 1-element tensor of any shape, as torch takes for lr
                tensor.fill_(value if slot.factor == 1.0 else value * slot.factor)
                if seen is None or seen[0] > 0:  # the first steps only: reading the value back syncs
                    probe[where] = (_PROBE_STEPS if seen is None else seen[0] - 1, tensor.item())

    def _common_value(self, key: str, scope: str) -> Any:
        """The value of ``key`` in every group, for a part of the chain that runs over all
        parameters at once; ``ValueError`` when groups disagree (it cannot honour both)."""
        values = [group.get(key) for group in self.param_groups]
        if any(v != values[0] for v in values[1:]):
            raise ValueError(f"param_groups give {key!r} the values {values}, but {scope} runs over the "
                             "parameters of every group at once (it is not leafwise), so it takes one value: "
                             f"set {key!r} alike in every group")
        return values[0]

    def _buffers(self, gi: int, keys: list[int], like: list[torch.Tensor], slot: int = 0) -> list[torch.Tensor]:
        """Scratch tensors shaped like ``like`` (the grads of ``keys``), kept for the next step;
        a kernel that needs two temporaries asks for a second ``slot``."""
        cached = self._scratch[gi]
        if cached is None or cached[0] != keys:
            cached = self._scratch[gi] = (list(keys), {})
        bufs = cached[1].get(slot)
        if bufs is not None and _fused.same_kinds(bufs, like):
            return bufs
        bufs = cached[1][slot] = [torch.empty_like(x, memory_format=torch.preserve_format) for x in like]
        return bufs

    # -- checkpoints -------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """``{'format', 'state': {param index: {path: tensor}}, 'param_groups': [...]}``, torch's
        shape: tensors and plain containers only. ``state[i]`` holds parameter ``i``'s state
        leaves and the chain's shared ones (step counts, hyperparameter tensors) under
        ``"shared:" + path``; each group in ``param_groups`` carries ``"gradtx"`` (format, chain,
        layout). So ``torch.distributed.checkpoint`` (``get_optimizer_state_dict``, ``dcp.save``),
        which keep only ``state`` and ``param_groups``, keep all of it (see
        ``gradtx.optim.checkpoint``); under FSDP2 sharded state comes as ``DTensor``s. Runs the
        hooks registered with ``register_state_dict_pre_hook`` / ``_post_hook``, as torch does."""
        for pre_hook in self._optimizer_state_dict_pre_hooks.values():
            pre_hook(self)
        out = _distributed.for_checkpoint(self, _checkpoint.to_torch_shape(self._old_state_dict()))
        for post_hook in self._optimizer_state_dict_post_hooks.values():
            result = post_hook(self, out)
            if result is not None:
                out = result
        return out

    def _old_state_dict(self) -> dict[str, Any]:
        """The state dict in the layout the adapter works on (format 1): ``{'format', 'chain',
        'layout', 'state': {param index: {path: tensor}}, 'shared': [per group (or one per
        chain) {path: tensor}], 'stepped': [per group, the param indices the chain state
        covers], 'param_groups': [...]}``."""
        if self._betas:  # a scheduler may have written betas since the last step
            self._sync_betas()
        state: dict[int, dict[str, torch.Tensor]] = {}
        shared: list[dict[str, torch.Tensor]] = []
        stepped: list[list[int]] = []
        groups = []
        offset = 0
        for group, chain_state in zip(self.param_groups, self._chain_states):
            group_shared: dict[str, torch.Tensor] = {}
            if chain_state is not None and self._split is None:
                group_shared, per_param = split_param_paths(chain_state)
                for index, leaves in per_param.items():
                    state[offset + index] = dict(leaves)
            shared.append(group_shared)
            stepped.append([offset + k for k, flag in enumerate(self._known_keys[len(groups)]) if flag])
            packed = {k: v for k, v in group.items() if k not in ("params", "param_names")}
            packed["params"] = list(range(offset, offset + len(group["params"])))
            if "param_names" in group:
                packed["param_names"] = list(group["param_names"])
            groups.append(packed)
            offset += len(group["params"])
        if self._split is not None:  # one chain over all groups: one set of shared leaves
            shared = [{}]
            stepped = []
            offset = 0
            if self._one_state is not None:
                shared[0], per_param = split_param_paths(self._one_state)
                state = {index: dict(leaves) for index, leaves in per_param.items()}
            for group in self.param_groups:
                n = len(group["params"])
                stepped.append([i for i in range(offset, offset + n) if i in self._one_known])
                offset += n
        return {"format": STATE_FORMAT, "chain": chain_signature(self.tx), "layout": self._layout(),
                "state": state, "shared": shared, "stepped": stepped, "param_groups": groups}

    def _layout(self) -> str:
        return "one_chain" if self._split is not None else "per_group"

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a :meth:`state_dict` (of this format, of the older ``gradtx.Optimizer/1``, or
        as ``torch.distributed.checkpoint`` gives it back: parameters keyed by name, sharded
        state as ``DTensor``s of any placement); raises ``ValueError`` and changes nothing
        when it comes from another chain or model, or holds a hyperparameter the chain would
        refuse. A ``torch.optim`` state dict is converted first (see
        :meth:`load_torch_state_dict`). Runs the hooks registered with
        ``register_load_state_dict_pre_hook`` / ``_post_hook``."""
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = pre_hook(self, state_dict)
            if result is not None:
                state_dict = result
        self._load(state_dict)
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    def _load(self, state_dict: Any, fresh_shared: Callable[[int], dict[str, Any]] | None = None) -> None:
        self._hp_probe.clear()  # the loaded values are not the ones written before
        if _checkpoint.is_gradtx(state_dict):
            state_dict = _checkpoint.from_torch_shape(state_dict, fresh_shared)
        if isinstance(state_dict, dict) and isinstance(state_dict.get("state"), dict):
            state_dict = _distributed.localize(self, state_dict)
        with _distributed.chain_params(self, "load"):  # plain tensors of the state's shapes for DTensors
            self._load_old_format(self._converted_from_torch(state_dict))

    def _load_param_entry(self, param: Any, entry: Any) -> None:
        """``opt.state[param] = entry``: load one parameter's entry of a :meth:`state_dict`
        (its shared leaves, being the same for the parameters that share them, set theirs)."""
        index = next((i for i, p in enumerate(self._all_params()) if p is param), None)
        if index is None:
            raise KeyError("opt.state[param] = ...: not a parameter of this optimizer")
        self._hp_probe.clear()  # its shared leaves may set hyperparameters
        if not isinstance(entry, dict):
            raise ValueError(f"opt.state[param] takes the parameter's entry of a state_dict(), got {entry!r:.80}")
        sd = _checkpoint.to_torch_shape(self._old_state_dict())
        scope = self._scope_of(index)
        written = {path: v for path, v in entry.items()
                   if isinstance(path, str) and path.startswith(_checkpoint.SHARED)}
        for other, values in sd["state"].items():
            if self._scope_of(other) == scope:
                values.update((path, v) for path, v in written.items() if path in values)
        sd["state"][index] = dict(entry)
        self._load(sd, self._fresh_shared)

    def _scope_of(self, index: int) -> int:
        """The scope of a parameter's shared state: its param group, or 0 for one chain over all."""
        if self._split is not None:
            return 0
        for gi, group in enumerate(self.param_groups):
            if index < len(group["params"]):
                return gi
            index -= len(group["params"])
        return -1

    def _fresh_shared(self, scope: int) -> dict[str, Any]:
        """The shared leaves of a fresh state of ``scope`` (made over its first parameter)."""
        with _distributed.chain_params(self, "load"):
            if self._split is not None:
                key, param = self._all_keys()[0], self._all_params()[0]
                return split_param_paths(self._split.init({key: param}))[0]
            return split_param_paths(self.tx.init(self._param_dict(scope, [0])))[0]

    def _load_old_format(self, state_dict: Any) -> None:
        """Load a state dict of format 1, checked whole before anything changes."""
        if not isinstance(state_dict, dict) or state_dict.get("format") != STATE_FORMAT:
            found = state_dict.get("format") if isinstance(state_dict, dict) else type(state_dict).__name__
            raise ValueError(f"not a gx.Optimizer state dict (format {found!r}, expected "
                             f"{_checkpoint.FORMAT!r} or {STATE_FORMAT!r})")
        signature, saved_signature = chain_signature(self.tx), state_dict.get("chain", None)
        if saved_signature is not None and saved_signature != signature:
            raise ValueError(f"the state dict comes from another chain: it was saved by {saved_signature}, "
                             f"this optimizer runs {signature}")
        layout = state_dict.get("layout", "per_group")
        if layout != self._layout():
            raise ValueError(f"the state dict's layout is {layout!r}, this optimizer's {self._layout()!r} "
                             "(a state from another chain?)")
        missing = [key for key in ("state", "shared", "param_groups") if key not in state_dict]
        if missing:
            raise ValueError(f"the state dict lacks {missing} (a gx.Optimizer state dict has 'state', 'shared', "
                             "'stepped' and 'param_groups')")
        saved_groups = state_dict["param_groups"]
        expected_shared = 1 if self._split is not None else len(self.param_groups)
        if not isinstance(state_dict["shared"], list) or len(state_dict["shared"]) != expected_shared:
            raise ValueError(f"the state dict's 'shared' must be a list of {expected_shared} dicts, got "
                             f"{state_dict['shared']!r:.80}")
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"state dict has {len(saved_groups)} param groups, this optimizer "
                             f"{len(self.param_groups)}")
        for gi, (group, saved) in enumerate(zip(self.param_groups, saved_groups)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(f"param group {gi} has {len(group['params'])} params, the state dict "
                                 f"{len(saved['params'])}")
            where = f"the state dict's param_groups[{gi}]"
            for name in self.defaults:  # validated as the constructor and add_param_group do
                if name in saved and name != "betas" and name not in self._setting_keys:
                    check(f"{where}[{name!r}]", saved[name], low=0.0)
            self._variant(self._setting_values({**group, **saved}), where)
        stepped = state_dict.get("stepped")
        if self._split is not None:
            one = self._rebuild_one_chain(state_dict["state"], state_dict["shared"][0],
                                          [i for indices in stepped for i in indices])
            new_states = [(None, [])] * len(self.param_groups)
        else:
            new_states = [self._rebuild_group(gi, saved, state_dict["state"], state_dict["shared"][gi],
                                              None if stepped is None else stepped[gi])
                          for gi, saved in enumerate(saved_groups)]
        # Everything checked: only now change the optimizer.
        if self._split is not None:
            self._one_state, self._one_known = one
        if self._split is not None:
            self._one_ids = {int(key): id(p) for key, p in zip(self._all_keys(), self._all_params())}
        for gi, (group, saved) in enumerate(zip(self.param_groups, saved_groups)):
            for key, value in saved.items():
                if key not in ("params", "param_names"):
                    group[key] = value
            if "param_names" in saved and "param_names" not in group:
                group["param_names"] = list(saved["param_names"])  # torch keeps the saved names
                self._param_keys[gi] = self._one_keys = None
            self._chain_states[gi], keys = new_states[gi]
            self._known_keys[gi] = bytearray(len(group["params"]))
            self._param_ids[gi] = [id(p) for p in group["params"]]
            for k in keys:
                self._known_keys[gi][k] = 1
            self._scratch[gi] = None
            self._step_params[gi] = None
            if self._betas:  # b1 and b2 are what a state dict (or a converted torch one) holds
                group["betas"] = self._betas_seen[gi] = (group["b1"], group["b2"])

    def _rebuild_one_chain(self, saved_state: dict[int, dict[str, Any]], saved_shared: dict[str, Any],
                           covered: list[int]) -> tuple[Any, set[int]]:
        """With one chain over all groups: its state rebuilt from a state dict, and the global
        indices it covers; ``ValueError`` when the saved state does not fit the chain."""
        if not covered:
            if saved_shared:
                raise ValueError("shared state without any parameter state")
            return None, set()
        all_keys, all_params = self._all_keys(), self._all_params()
        fresh = _placement.staggered_init(self._split.init, {all_keys[i]: all_params[i] for i in covered})
        return _restore(fresh, "", saved_shared, {i: saved_state.get(i, {}) for i in covered}), set(covered)

    def _rebuild_group(self, gi: int, saved_group: dict[str, Any], saved_state: dict[int, dict[str, Any]],
                       saved_shared: dict[str, Any], saved_stepped: list[int] | None) -> tuple[Any, list[int]]:
        """The chain state of group ``gi`` rebuilt from a state dict, and the param indices
        it covers; raises ``ValueError`` when the saved state does not fit the chain."""
        # The stepped params: recorded since a chain may keep no per-param state at all
        # (sgd without momentum); older state dicts name them by their per-param state.
        covered = saved_stepped if saved_stepped is not None else list(saved_state)
        keys = [k for k, index in enumerate(saved_group["params"]) if index in covered]
        if not keys:
            if saved_shared:
                raise ValueError(f"param group {gi}: shared state without any parameter state")
            return None, []
        fresh = _placement.staggered_init(self.tx.init, self._param_dict(gi, keys))
        saved = {k: saved_state.get(saved_group["params"][k], {}) for k in keys}
        return _restore(fresh, f"param group {gi}", saved_shared, saved), keys

    # -- hooks of gradtx.optim.layout ---------------------------------------------------

    def _refuse_overlapping_params(self) -> None:
        """Refuse (and take back) the param group just added when a parameter's elements
        share memory (``base.expand(3, 4)``): no path can update it in place."""
        gi = len(self.param_groups) - 1
        try:
            _layout.check_no_overlap(self.param_groups[gi]["params"], f"param_groups[{gi}]['params']")
        except ValueError:
            self.param_groups.pop()
            raise

    def __repr__(self) -> str:
        """torch's format (the class, then each param group's keys) with the chain's repr, and
        the adapter's options where they are not the defaults, after the class name."""
        head, _, groups = super().__repr__().partition("\n")
        options = {k: v for k, v in self._init_options.items() if v != {"fast": True, "compile": False,
                                                                         "check_descent": True,
                                                                         "reuse_evaluations": True}.get(k)}
        lines = [head, "Chain:", textwrap.indent(repr(self.tx), "    ")]
        if options:
            lines.append("Options: " + ", ".join(f"{k}={v!r}" for k, v in options.items()))
        return "\n".join(lines + [groups])

    # -- hooks of gradtx.optim.pickling: pickle, copy.deepcopy, torch.save -------------------

    def __getstate__(self) -> dict[str, Any]:
        return _pickling.getstate(self)

    def __setstate__(self, state: dict[str, Any]) -> None:
        _pickling.setstate(self, state)

    def __deepcopy__(self, memo: dict[int, Any]) -> Optimizer:
        return _pickling.deepcopy(self, memo)

    # -- hooks of gradtx.optim.torch_state: migration from and to torch.optim ----------------

    def load_torch_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a ``torch.optim`` state dict (``Adam``, ``AdamW``, ``SGD``, ``RMSprop``,
        ``Adagrad``) into this optimizer, whose chain must be that class's gradtx equivalent
        (``gx.adam`` for ``Adam``, ...: the table is in ``gradtx.optim.torch_state``); training
        continues as torch's would have. Raises ``ValueError``, changing nothing, when the chain
        is not the equivalent or the state cannot be converted exactly. ``load_state_dict``
        does the same when given a torch state dict.

        Example::

            opt = gx.Optimizer(model.parameters(), gx.adam(1e-3))
            opt.load_torch_state_dict(torch.load("adam_checkpoint.pt")["optimizer"])
        """
        with _distributed.chain_params(self, "load"):
            converted = _torch_state.from_torch_state_dict(self.tx, state_dict, self._old_state_dict(),
                                                           [g["params"] for g in self.param_groups])
        self.load_state_dict(converted)

    def torch_state_dict(self, kind: Any = None) -> dict[str, Any]:
        """This optimizer's state as a state dict for ``torch.optim.<kind>`` (a class or its
        name: ``"Adam"``, ``"AdamW"``, ``"SGD"``, ``"RMSprop"``, ``"Adagrad"``; ``None`` finds
        the one the chain is equivalent to). Raises ``ValueError`` when the chain is not the
        equivalent of ``kind``.

        Example: ``torch.optim.AdamW(model.parameters()).load_state_dict(opt.torch_state_dict("AdamW"))``.
        """
        return _torch_state.to_torch_state_dict(self.tx, self._old_state_dict(),
                                                [g["params"] for g in self.param_groups], kind)

    def _converted_from_torch(self, state_dict: Any) -> Any:
        """``state_dict`` converted when it is a ``torch.optim`` one, else as it is."""
        if _torch_state.is_torch_state_dict(state_dict):
            return _torch_state.from_torch_state_dict(self.tx, state_dict, self._old_state_dict(),
                                                      [g["params"] for g in self.param_groups])
        return state_dict

    # -- evaluation parameters (schedule-free) -----------------------------------------------
    # A state node (a NamedTuple) with ``eval_params(params)`` and ``train_params(eval_params)``,
    # as gx.schedule_free's state has, keeps parameters to evaluate at other than the trained ones.

    def eval(self) -> Optimizer:
        """Set the parameters to their evaluation values, as ``schedulefree``'s ``opt.eval()``:
        for a schedule-free chain the average ``x`` (see :func:`gradtx.schedule_free`); a chain
        without such state leaves them as they are. ``train()`` sets them back; call it before
        the next ``step()`` (which refuses to run in eval mode), and save checkpoints in the
        mode they will be loaded in (the mode is not part of ``state_dict``). Repeated calls do
        nothing.

        Example: ``opt.eval(); evaluate(model); opt.train()``.
        """
        if not getattr(self, "_eval_mode", False):
            self._swap_eval_params("eval_params")
            self._eval_mode = True
        return self

    def train(self) -> Optimizer:
        """Set the parameters back to the training values after :meth:`eval` (a no-op otherwise)."""
        if getattr(self, "_eval_mode", False):
            self._swap_eval_params("train_params")
            self._eval_mode = False
        return self

    @torch.no_grad()
    def _swap_eval_params(self, method: str) -> None:
        if self._split is not None:
            everyone = self._all_params()
            states = [(self._one_state, everyone)]
        else:
            states = [(s, g["params"]) for s, g in zip(self._chain_states, self.param_groups)]
        for state, params in states:
            for node in self._eval_nodes(state):
                indices = list(dict.fromkeys(i for i, _, _ in param_leaves(node)[0] if i is not None))
                current = {i: params[i].detach() for i in indices}
                for i, value in getattr(node, method)(current).items():
                    params[i].copy_(value)

    @staticmethod
    def _eval_nodes(node: Any) -> list[Any]:
        """The state nodes of the evaluation protocol (``eval_params``, ``train_params``) in ``node``."""
        if hasattr(node, "_fields") and hasattr(node, "eval_params") and hasattr(node, "train_params"):
            return [node]
        values = node.values() if isinstance(node, dict) else node if isinstance(node, (list, tuple)) else ()
        return [found for value in values for found in Optimizer._eval_nodes(value)]


def chain_signature(tx: GradientTransformation) -> str:
    """What ``tx`` is made of, without its hyperparameter values: the innermost transforms'
    names in their chains and wrappers (``"chain(scale_by_adam, add_decayed_weights,
    scale_by_lr)"`` for ``gx.adamw(...)`` whatever its settings). A state saved by one chain
    loads into another only when they agree."""
    attrs = getattr(tx, "__dict__", {})
    parts = attrs.get("parts")
    if parts is not None:
        return f"chain({', '.join(chain_signature(part) for part in parts)})"
    name = attrs.get("name")
    if name is None:
        return "transform"  # a user's undescribed transform: only the state layout says
    inner = []
    for value in attrs.get("args", {}).values():
        values = value.values() if isinstance(value, dict) else [value]
        inner.extend(chain_signature(v) for v in values if isinstance(v, GradientTransformation))
    return f"{name}({', '.join(inner)})" if inner else name


def _cached(cache: OrderedDict, key: Any, make: Callable[[], Any]) -> Any:
    """``cache[key]``, made by ``make()`` on a miss; past ``_VARIANTS_KEPT`` entries the least
    recently used is dropped."""
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    value = cache[key] = make()
    if len(cache) > _VARIANTS_KEPT:
        cache.popitem(last=False)
    return value


def _layout_of(state: Any) -> Any:
    """The shape of a state tree, NamedTuples by their fields (a ``per_tensor`` transform makes
    a NamedTuple class per build, equal in all but identity)."""
    if isinstance(state, tuple) and hasattr(state, "_fields"):
        return (type(state).__name__, tuple(zip(state._fields, map(_layout_of, state))))
    if isinstance(state, (tuple, list)):
        return tuple(_layout_of(x) for x in state)
    if isinstance(state, dict):
        return tuple((k, _layout_of(v)) for k, v in state.items())
    if isinstance(state, torch.Tensor):
        return ("tensor", state.dtype, tuple(state.shape))
    return type(state).__name__


def _restore(fresh: Any, where: str, saved_shared: dict[str, Any], saved_params: dict[int, dict[str, Any]]) -> Any:
    """``fresh`` (a state the chain's ``init`` just made) holding the saved values: tensors
    copied into its own (so dtypes and devices stay the chain's), other leaves (a user's
    Python counter) taken as saved. ``ValueError`` naming the first leaf that does not fit,
    before anything is written."""
    prefix = f"{where} " if where else ""
    shared, per_param = split_param_paths(fresh)
    _same_paths(f"{prefix}shared state", shared, saved_shared)
    for index, saved in saved_params.items():
        _same_paths(f"{prefix}param {index}", per_param.get(index, {}), saved)
    leaves, treedef = param_leaves(fresh)
    values = []
    for index, path, leaf in leaves:
        src = saved_shared[path] if index is None else saved_params[index][path]
        what = f"{prefix}{'shared state' if index is None else f'param {index}'}: {path}"
        if isinstance(leaf, torch.Tensor):
            if not isinstance(src, torch.Tensor) or src.shape != leaf.shape or src.dtype != leaf.dtype:
                got = f"{tuple(src.shape)} {src.dtype}" if isinstance(src, torch.Tensor) else type(src).__name__
                raise ValueError(f"{what} is {got}, expected {tuple(leaf.shape)} {leaf.dtype} "
                                 "(a state from another model or chain?)")
        elif type(src) is not type(leaf):
            raise ValueError(f"{what} is {type(src).__name__}, expected {type(leaf).__name__}")
        values.append(src)
    out = []
    for (_, _, leaf), src in zip(leaves, values):
        out.append(leaf.copy_(src) if isinstance(leaf, torch.Tensor) else src)
    return tree_unflatten(out, treedef)


def _same_paths(where: str, expected: dict[str, Any], saved: dict[str, Any]) -> None:
    if set(expected) != set(saved):
        missing, extra = sorted(set(expected) - set(saved)), sorted(set(saved) - set(expected))
        raise ValueError(f"{where}: the state dict comes from another chain (missing {missing}, "
                         f"unexpected {extra})")


_PROBE_STEPS = 2  # steps after the first whose hyperparameter tensors are read back (one sync each)


def _changed(tensor: torch.Tensor, written: float) -> bool:
    """Whether a hyperparameter tensor no longer holds the value written into it."""
    now = tensor.item()
    return now != written and not (now != now and written != written)  # NaN stays NaN


def _check_update_shapes(updates: Any, params: dict[Any, torch.Tensor], keys: list[Any], where: str) -> None:
    """``ValueError`` when the chain gave a parameter an update of another shape: an in-place
    ``p += u`` broadcasts a smaller one over the parameter without a word. Checked when a set
    of parameters is first stepped (the shapes a chain gives do not change between steps)."""
    for k in keys:
        u = updates[k]
        if not isinstance(u, torch.Tensor) or u.shape != params[k].shape:
            got = f"shape {tuple(u.shape)}" if isinstance(u, torch.Tensor) else type(u).__name__
            raise ValueError(f"the chain gave parameter {int(k)}{where} an update of {got}, the parameter has "
                             f"shape {tuple(params[k].shape)}: each update has the shape of its parameter (a "
                             "transform of the chain returned it)")
