"""``gx.Optimizer``: any gradient transformation as a ``torch.optim.Optimizer``.

The adapter owns the chain's state and runs it in place. It knows nothing of particular
transforms: it hands each param group to the chain as a dict ``{index: tensor}``, so
per-parameter state lives in int-keyed dicts it can select from and merge into, and it
exposes every hyperparameter the chain keeps in its state (``lr``, ``weight_decay``, ...)
as a key of ``param_groups``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from .. import _foreach as F  # noqa: N812
from .._hparams import check
from .._tree import ParamKey, hyperparameters, merge_keys, select_keys, split_param_paths, tree_flatten
from ..base import GradientTransformation
from . import compiled as _compiled
from . import fused as _fused
from . import layout as _layout
from . import pickling as _pickling
from . import torch_state as _torch_state

__all__ = ["Optimizer"]

STATE_FORMAT = "gradtx.Optimizer/1"


def _chain_hyperparameters(tx: GradientTransformation) -> tuple[dict[str, float], list[float | None]]:
    """The chain's hyperparameters as param-group defaults (each name's first value), and for
    every hyperparameter tensor of its state, in state order, the factor by which it follows
    ``param_groups[i][name]``: 1 for a tensor holding the first value, ``value / first`` for
    another one (``partition({"a": adam(1e-3), "b": sgd(0.1)})`` keeps its 1:100 ratio when a
    scheduler moves ``lr``), ``None`` for one that keeps its own value (a tensor with autograd
    history, or a nonzero value where the first is zero)."""
    # Built on a meta tensor: no memory, and known before any parameter has a gradient
    # (LR schedulers read param_groups at once).
    state = tx.init({0: torch.empty(1, device="meta")})
    defaults: dict[str, float] = {}
    factors: list[float | None] = []
    for name, value in hyperparameters(state):
        if value.device.type == "meta" or value.requires_grad:
            factors.append(None)
            continue
        x = float(value.item())
        first = defaults.setdefault(name, x)
        factors.append(1.0 if x == first else (x / first if first != 0 else None))
    return defaults, factors


class Optimizer(torch.optim.Optimizer):
    """A ``torch.optim.Optimizer`` that runs a gradient transformation.

    ``p <- p + u`` with ``(u, state) = tx.update(grads, state, params)`` per param group.

    - ``param_groups[i]`` holds the chain's hyperparameters (``lr``, ``weight_decay``, ...
      whatever its transforms keep in their state); LR schedulers and per-group overrides
      (``[{'params': enc, 'lr': 1e-2}, {'params': dec}]``) set them. Where a chain holds one
      name several times with different values (a ``partition`` of two learning rates), the
      group shows the first and the others keep their ratio to it.
    - Parameters whose ``.grad`` is ``None`` are skipped and get no state. Step counters
      are shared by a param group: a parameter first seen late starts with fresh moments
      but the group's count.
    - ``step(closure)`` calls the closure (with grad enabled) first and returns its loss;
      transforms receive ``value`` (that loss), ``grad`` and ``value_fn`` (params -> loss).
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
      chain's own state tensors; any other chain runs in place on multi-tensor kernels, on
      a copy of the gradients kept from step to step, with a final ``scale_by_lr(lr)``
      folded into ``p <- p - lr * u``. The paths agree to round-off and share one state
      layout, so checkpoints move between them; ``fast=False`` runs ``tx.update`` as is.
    - ``compile=True`` (or a dict of ``torch.compile`` arguments, e.g. ``{"mode": ...}``) runs a
      chain of elementwise transforms (:func:`gradtx.is_elementwise`) under ``torch.compile``:
      one graph updates a few flat parameters at a time in one fused pass each, with small
      parameters packed together, so compile time does not grow with the number of
      parameters; hyperparameters and step counts are tensors, so schedulers never
      recompile. Other chains raise ``ValueError``. The state layout is the eager one.

    Example::

        opt = gx.Optimizer(model.parameters(), gx.adamw(1e-3, weight_decay=0.01))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=1000)
        loss.backward(); opt.step(); opt.zero_grad(); sched.step()
    """

    def __init__(self, params: Iterable[Any], tx: GradientTransformation, *, fast: bool = True,
                 compile: bool | dict[str, Any] = False) -> None:  # noqa: A002 - torch.compile's word
        if not isinstance(tx, GradientTransformation):
            raise TypeError(f"tx must be a GradientTransformation, got {type(tx).__name__}")
        if not isinstance(fast, bool):
            raise ValueError(f"fast must be a bool, got {fast!r}")
        if not isinstance(compile, (bool, dict)):
            raise ValueError(f"compile must be a bool or a dict of torch.compile arguments, got {compile!r}")
        self.tx = tx
        self._init_options = {"fast": fast, "compile": compile}  # for pickling (see .pickling)
        # compile=True (or torch.compile's arguments) runs an elementwise chain compiled, in
        # slots of flat tensors, so compile time does not grow with the parameter count.
        self._compiled = (None if compile is False else
                          _compiled.CompiledChain(tx, {} if compile is True else compile))
        # A chain with the shape of adam / adamw / sgd runs on torch's fused kernels, on the
        # same state tensors (see _fused); fast=False forces the generic path (for tests).
        self._plan = _fused.plan(tx) if fast and self._compiled is None else None
        self._lr_tail = _fused.lr_tail(tx) if fast and self._compiled is None else None
        # Per group: (keys, scratch tensors like the grads) reused from step to step, since
        # fresh memory costs page faults every step (~5x slower than writing in place).
        self._scratch: list[Any] = []
        # None until a generic step showed whether the chain keeps the updates it was given
        # in its state (then the scratch tensors cannot be reused).
        self._reuse_scratch: bool | None = None
        # Per group: (keys, params list, {ParamKey: param}) of the last step, reused while the
        # same params have gradients (building thousands of keys each step is measurable).
        self._step_params: list[Any] = []
        self._chain_states: list[Any] = []  # per group: chain state over its stepped params, or None
        # per group: a flag per param index, 1 where the chain state covers it (a set of
        # thousands of ints costs a hundred times the memory)
        self._known_keys: list[bytearray] = []
        self._param_keys: list[list[ParamKey] | None] = []  # per group: a key per parameter
        defaults, self._hparam_factors = _chain_hyperparameters(tx)
        super().__init__(params, defaults)

    # -- torch.optim.Optimizer plumbing -----------------------------------------------

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        for name in self.defaults:
            if name in param_group:
                check(f"param_groups[{len(self.param_groups)}][{name!r}]", param_group[name], low=0.0)
        super().add_param_group(param_group)
        self._refuse_overlapping_params()
        self._chain_states.append(None)
        self._known_keys.append(bytearray(len(self.param_groups[-1]["params"])))
        self._param_keys.append(None)
        self._scratch.append(None)
        self._step_params.append(None)

    @property
    def state(self) -> dict[torch.Tensor, dict[str, torch.Tensor]]:  # type: ignore[override]
        """Per-parameter state, ``{param: {path: tensor}}`` (a read-only view)."""
        view: dict[torch.Tensor, dict[str, torch.Tensor]] = {}
        for group, chain_state in zip(self.param_groups, self._chain_states):
            if chain_state is not None:
                _, per_param = split_param_paths(chain_state)
                for index, leaves in per_param.items():
                    view[group["params"][index]] = leaves
        return view

    @state.setter
    def state(self, value: Any) -> None:
        # torch.optim.Optimizer.__init__ assigns an empty dict; our state lives in the chain.
        del value

    # -- stepping ----------------------------------------------------------------------

    def _group_state(self, gi: int, keys: list[int]) -> tuple[Any, bool]:
        """The chain state over ``keys`` (initialising parameters seen for the first time),
        and whether it is a selection from a state over more parameters."""
        group = self.param_groups[gi]
        full = self._chain_states[gi]
        known = self._known_keys[gi]
        if len(known) < len(group["params"]):  # params appended to the group's list
            known.extend(bytes(len(group["params"]) - len(known)))
        new = [k for k in keys if not known[k]]
        if new:
            fresh = self.tx.init(self._param_dict(gi, new))
            full = fresh if full is None else merge_keys(fresh, full)
            self._chain_states[gi] = full
            for k in new:
                known[k] = 1
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
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One update of every param group; returns ``closure()``'s loss when given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for gi, group in enumerate(self.param_groups):
            keys = [k for k, p in enumerate(group["params"]) if p.grad is not None]
            if not keys:
                continue
            cached = self._step_params[gi]
            if cached is not None and cached[1] is group["params"] and cached[0] == keys:
                params = cached[2]
            else:
                params = self._param_dict(gi, keys)
                self._step_params[gi] = (keys, group["params"], params)
            grads = {k: params[k].grad for k in keys}
            for k, g in grads.items():
                if g.is_sparse:
                    raise RuntimeError(f"gx.Optimizer does not support sparse gradients (param {k} of group {gi})")
            state, is_selection = self._group_state(gi, keys)
            self._write_hyperparameters(group, state)
            if self._compiled is not None:
                self._chain_states[gi] = self._compiled.run(gi, self._chain_states[gi], keys, params, grads)
                continue
            if self._plan is not None and self._plan.run(state, keys, params, grads,
                                                         lambda like, gi=gi, keys=keys: self._buffers(gi, keys, like)):
                if is_selection:
                    self._chain_states[gi] = merge_keys(self._chain_states[gi], state)
                continue
            # The chain may write into the updates it is given: hand it a copy, never .grad.
            gs = [grads[k] for k in keys]
            reuse = self._reuse_scratch is not False
            copies = F.copy_(self._buffers(gi, keys, gs), gs) if reuse else F.clone(gs)
            updates = dict(zip(keys, copies))
            extra = {"grad": grads}
            if closure is not None:
                extra["value"] = loss
                extra["value_fn"] = _value_fn(closure, params)
            alpha = 1.0
            if self._lr_tail is not None and not state[-1].lr.requires_grad:
                # chain(..., scale_by_lr(lr)): run the parts before the learning rate here
                # (exactly what chain.update does) and fold -lr into the parameter update.
                new_state = []
                for part, part_state in zip(self._lr_tail[:-1], state[:-1]):
                    updates, part_state = part.update(updates, part_state, params, inplace=True, **extra)
                    new_state.append(part_state)
                alpha = -float(state[-1].lr)
                state = (*new_state, state[-1])
            else:
                updates, state = self.tx.update(updates, state, params, inplace=True, **extra)
            if self._reuse_scratch is None:
                # A chain that keeps an incoming update tensor in its state (rather than a
                # copy) would see it overwritten next step: check once, then trust.
                held = {t.data_ptr() for t in tree_flatten(state)[0] if isinstance(t, torch.Tensor)}
                self._reuse_scratch = not any(c.data_ptr() in held for c in copies)
                if not self._reuse_scratch:
                    self._scratch = [None] * len(self._scratch)
            self._chain_states[gi] = merge_keys(self._chain_states[gi], state) if is_selection else state
            ps = [params[k] for k in keys]
            us = F.cast_like([updates[k] for k in keys], ps)
            F.add(ps, us, alpha=alpha, inplace=True)
        return loss

    def _write_hyperparameters(self, group: dict[str, Any], state: Any) -> None:
        """Write the group's hyperparameters into the chain's state tensors (see
        :func:`_chain_hyperparameters` for names held more than once)."""
        found = hyperparameters(state)
        factors = self._hparam_factors if len(found) == len(self._hparam_factors) else [1.0] * len(found)
        for (name, tensor), factor in zip(found, factors):
            if factor is not None and name in group:
                tensor.fill_(group[name] if factor == 1.0 else group[name] * factor)

    def _buffers(self, gi: int, keys: list[int], like: list[torch.Tensor]) -> list[torch.Tensor]:
        """Scratch tensors shaped like ``like`` (the grads of ``keys``), kept for the next step."""
        cached = self._scratch[gi]
        if cached is not None and cached[0] == keys and all(
                b.shape == x.shape and b.dtype == x.dtype and b.device == x.device for b, x in zip(cached[1], like)):
            return cached[1]
        bufs = [torch.empty_like(x, memory_format=torch.preserve_format) for x in like]
        self._scratch[gi] = (list(keys), bufs)
        return bufs

    # -- checkpoints -------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """``{'format', 'state': {param index: {path: tensor}}, 'shared': [per group
        {path: tensor}], 'stepped': [per group, the param indices the chain state covers],
        'param_groups': [...]}``: tensors and plain containers only."""
        state: dict[int, dict[str, torch.Tensor]] = {}
        shared: list[dict[str, torch.Tensor]] = []
        stepped: list[list[int]] = []
        groups = []
        offset = 0
        for group, chain_state in zip(self.param_groups, self._chain_states):
            group_shared: dict[str, torch.Tensor] = {}
            if chain_state is not None:
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
        return {"format": STATE_FORMAT, "state": state, "shared": shared, "stepped": stepped,
                "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a :meth:`state_dict`; raises ``ValueError`` and changes nothing when it
        comes from another chain or model. A ``torch.optim`` state dict is converted first
        (see :meth:`load_torch_state_dict`)."""
        state_dict = self._converted_from_torch(state_dict)
        if not isinstance(state_dict, dict) or state_dict.get("format") != STATE_FORMAT:
            found = state_dict.get("format") if isinstance(state_dict, dict) else type(state_dict).__name__
            raise ValueError(f"not a gx.Optimizer state dict (format {found!r}, expected {STATE_FORMAT!r})")
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"state dict has {len(saved_groups)} param groups, this optimizer "
                             f"{len(self.param_groups)}")
        new_states = []
        for gi, (group, saved) in enumerate(zip(self.param_groups, saved_groups)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(f"param group {gi} has {len(group['params'])} params, the state dict "
                                 f"{len(saved['params'])}")
            stepped = state_dict.get("stepped")
            new_states.append(self._rebuild_group(gi, saved, state_dict["state"], state_dict["shared"][gi],
                                                  None if stepped is None else stepped[gi]))
        # Everything checked: only now change the optimizer.
        for gi, (group, saved) in enumerate(zip(self.param_groups, saved_groups)):
            for key, value in saved.items():
                if key not in ("params", "param_names"):
                    group[key] = value
            self._chain_states[gi], keys = new_states[gi]
            self._known_keys[gi] = bytearray(len(group["params"]))
            for k in keys:
                self._known_keys[gi][k] = 1
            self._scratch[gi] = None

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
        fresh = self.tx.init(self._param_dict(gi, keys))
        shared, per_param = split_param_paths(fresh)
        targets: list[tuple[str, torch.Tensor, Any]] = []
        _match(f"param group {gi} shared state", shared, saved_shared, targets)
        for k in keys:
            _match(f"param group {gi} param {k}", per_param.get(k, {}),
                   saved_state.get(saved_group["params"][k], {}), targets)
        for _, dst, src in targets:
            dst.copy_(src)
        return fresh, keys

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
        self.load_state_dict(_torch_state.from_torch_state_dict(
            self.tx, state_dict, self.state_dict(), [g["params"] for g in self.param_groups]))

    def torch_state_dict(self, kind: Any = None) -> dict[str, Any]:
        """This optimizer's state as a state dict for ``torch.optim.<kind>`` (a class or its
        name: ``"Adam"``, ``"AdamW"``, ``"SGD"``, ``"RMSprop"``, ``"Adagrad"``; ``None`` finds
        the one the chain is equivalent to). Raises ``ValueError`` when the chain is not the
        equivalent of ``kind``.

        Example: ``torch.optim.AdamW(model.parameters()).load_state_dict(opt.torch_state_dict("AdamW"))``.
        """
        return _torch_state.to_torch_state_dict(self.tx, self.state_dict(), [g["params"] for g in self.param_groups],
                                                kind)

    def _converted_from_torch(self, state_dict: Any) -> Any:
        """``state_dict`` converted when it is a ``torch.optim`` one, else as it is."""
        if _torch_state.is_torch_state_dict(state_dict):
            return _torch_state.from_torch_state_dict(self.tx, state_dict, self.state_dict(),
                                                      [g["params"] for g in self.param_groups])
        return state_dict


def _match(where: str, expected: dict[str, torch.Tensor], saved: dict[str, Any],
           out: list[tuple[str, torch.Tensor, Any]]) -> None:
    if set(expected) != set(saved):
        missing, extra = sorted(set(expected) - set(saved)), sorted(set(saved) - set(expected))
        raise ValueError(f"{where}: the state dict comes from another chain (missing {missing}, "
                         f"unexpected {extra})")
    for path, dst in expected.items():
        src = saved[path]
        if not isinstance(src, torch.Tensor) or src.shape != dst.shape or src.dtype != dst.dtype:
            got = f"{tuple(src.shape)} {src.dtype}" if isinstance(src, torch.Tensor) else type(src).__name__
            raise ValueError(f"{where}: {path} is {got}, expected {tuple(dst.shape)} {dst.dtype} "
                             "(a state from another model or chain?)")
        out.append((path, dst, src))


def _value_fn(closure: Callable[[], Any], params: dict[int, torch.Tensor]) -> Callable[[Any], Any]:
    """``params -> loss``: evaluate the closure at other parameter values, then restore."""

    def value_fn(new_params: dict[int, torch.Tensor]) -> Any:
        current = [p.detach().clone() for p in params.values()]
        leaves, _ = tree_flatten(new_params)
        with torch.no_grad():
            for p, v in zip(params.values(), leaves):
                p.copy_(v)
        try:
            with torch.enable_grad():
                return closure()
        finally:
            with torch.no_grad():
                for p, v in zip(params.values(), current):
                    p.copy_(v)

    return value_fn
