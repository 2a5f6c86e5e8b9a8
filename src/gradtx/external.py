"""A ``torch.optim.Optimizer`` as a member of a chain: :func:`wrap_optimizer`.

Any optimizer written for torch (``torch.optim``'s, ``pytorch_optimizer``'s, a user's) becomes a
transform: the incoming update is its gradient, and the step it takes is the outgoing update.
Its state (per-parameter tensors and numbers, and numbers it keeps in its param group) is
copied into the transform's state after each step and back into a fresh optimizer before the
next, so the member is pure like any other, works on the functional path and under
``gx.Optimizer``, and is saved and loaded with the chain's ``state_dict``.
"""

from __future__ import annotations

import numbers
from typing import Any, NamedTuple

import torch

from ._tree import Tree, flatten_up_to, tensor_leaves, tree_flatten, tree_unflatten
from .base import GradientTransformation, transform

__all__ = ["WrappedOptimizerState", "wrap_optimizer"]


class WrappedOptimizerState(NamedTuple):
    started: torch.Tensor  # 0-dim bool: the optimizer has stepped (made its own state) before
    slots: dict[str, Tree]  # each per-parameter state entry, a tree like the params
    group: dict[str, torch.Tensor]  # numbers the optimizer keeps in its param group (a step count)


class _Entry(NamedTuple):
    """One state entry of one parameter, as the optimizer made it on a step on zeros."""

    number_type: type | None  # int, float or bool for a Python number (kept as 0-dim float64), else None
    shape: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Number) and not isinstance(value, complex)


def _as_tensor(value: Any) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float64) if _is_number(value) else value


def _as_number(value: torch.Tensor, number_type: type) -> Any:
    return number_type(value.item())


@transform(inplace=True)
def wrap_optimizer(optimizer_class: type[torch.optim.Optimizer], *, closure: bool = False,
                   **hyperparameters: Any) -> GradientTransformation:
    """The step ``optimizer_class(params, **hyperparameters)`` would take, as a transform.

    Update rule: with ``x`` the params and ``u`` the incoming update, a fresh
    ``opt = optimizer_class(x', **hyperparameters)`` on copies ``x'`` of the params, given the
    state this member kept, steps once with ``x'.grad = u``; the outgoing update is
    ``x' - x`` and the optimizer's state after the step is the new state. So
    ``gx.chain(gx.clip_by_global_norm(1.0), gx.wrap_optimizer(torch.optim.Adam, lr=1e-3))``
    is torch's Adam on clipped gradients, and ``gx.wrap_optimizer(torch.optim.SGD, lr=1.0)``
    is ``-u``: the optimizer's own learning rate is the step size (no ``scale_by_lr`` after).

    The state is kept as the optimizer makes it on its first step: per-parameter tensors and
    numbers (numbers as 0-dim float64 tensors), and numbers it adds to its param group (some
    libraries count steps there). An optimizer that keeps anything else (lists, as
    ``torch.optim.LBFGS`` does; use ``gx.lbfgs``), or whose state changes shape, is refused
    when the state is made. ``closure=True`` passes the optimizer a closure that evaluates the
    loss and sets the copies' gradients from the chain's ``value_and_grad_fn`` (under
    ``gx.Optimizer``, give ``step`` a closure), for optimizers whose ``step`` needs one.
    Float ``hyperparameters`` are ``param_groups`` keys under ``gx.Optimizer`` like any
    transform's (a scheduler moving ``lr`` reaches the wrapped optimizer). The member is
    treated as coupling its parameters (not leafwise): each param group of ``gx.Optimizer``
    shares one value of each hyperparameter.

    Each step copies the params and builds the optimizer again, a cost in memory (one copy of
    the params) and Python time that a native gradtx transform does not pay. That copy is the
    only full-size allocation of its own: the optimizer steps it, the outgoing update is
    computed in its memory (``x' <- x' - x``), and where the caller lets the member write into
    the incoming update (``inplace=True``, e.g. after another member in a chain) the update is
    the optimizer's ``.grad`` without a copy (a state entry that is, or views, that gradient
    is cloned, so the state never holds an update tensor).

    Stepping the real parameters when the member is last (saving the copy and the addition
    ``gx.Optimizer`` then makes) is not done, because it cannot keep the guarantees: ``update``
    never writes ``params`` (the functional path's params are the caller's tree, and every
    transform is pure in its inputs); a member does not know it is last, and what wraps or
    follows the chain (``apply_if_finite``, ``multi_steps``, ``lookahead``, ``masked``, the
    adapter's skip of a non-finite ``GradScaler`` step) needs the update before anything moves;
    an optimizer that raised part-way would leave parameters moved with the state of the step
    before, which no checkpoint could resume; and ``gx.Optimizer`` would have to recognise this
    member, while it knows nothing of any particular transform.

    Example::

        from pytorch_optimizer import LaProp
        opt = gx.Optimizer(model.parameters(), gx.chain(gx.clip_by_global_norm(1.0),
                                                        gx.wrap_optimizer(LaProp, lr=1e-3)))
    """
    if not (isinstance(optimizer_class, type) and issubclass(optimizer_class, torch.optim.Optimizer)):
        raise ValueError(f"optimizer_class must be a torch.optim.Optimizer subclass (torch.optim.Adam), got "
                         f"{optimizer_class!r}")
    if not isinstance(closure, bool):
        raise ValueError(f"closure must be a bool, got {closure!r}")
    _build(optimizer_class, [torch.zeros(1)], hyperparameters)  # bad hyperparameters fail here, not at init
    name = optimizer_class.__name__
    layouts: dict[tuple, tuple[list[dict[str, _Entry]], dict[str, type]]] = {}

    def layout(leaves: list[torch.Tensor]) -> tuple[list[dict[str, _Entry]], dict[str, type]]:
        """What the optimizer keeps per parameter and in its group, from one step on zeros."""
        if not leaves:  # torch optimizers refuse an empty parameter list
            return [], {}
        key = tuple((tuple(p.shape), p.dtype, p.device) for p in leaves)
        if key not in layouts:
            # gradients of ones: a step that moves, so the optimizer makes all it keeps (on zeros,
            # torch's LBFGS returns before making its history)
            copies = [torch.zeros_like(p) for p in leaves]
            for c in copies:
                c.grad = torch.ones_like(c)
            opt = _build(optimizer_class, copies, hyperparameters)
            before = dict(opt.param_groups[0])
            opt.step(_probe_closure(copies) if closure else None)
            entries = []
            for i, c in enumerate(copies):
                entry = {}
                for k, v in opt.state.get(c, {}).items():
                    if isinstance(v, torch.Tensor):
                        entry[k] = _Entry(None, tuple(v.shape), v.dtype, v.device)
                    elif _is_number(v):
                        entry[k] = _Entry(type(v), (), torch.float64, torch.device("cpu"))
                    else:
                        raise ValueError(f"wrap_optimizer: {name} keeps {type(v).__name__} {k!r} in the state of "
                                         f"parameter {i}; only tensors and numbers can be carried in a transform's "
                                         "state")
                entries.append(entry)
            group = {k: type(v) for k, v in opt.param_groups[0].items()
                     if k != "params" and _is_number(v) and (k not in before or before[k] != v)}
            layouts[key] = entries, group
        return layouts[key]

    def init(params):
        leaves, treedef = tree_flatten(params)
        entries, group = layout(leaves)
        slots = {}
        for k in sorted({k for e in entries for k in e}):
            # a parameter that keeps no such entry holds an empty placeholder
            slot = [torch.zeros(e[k].shape, dtype=e[k].dtype, device=e[k].device) if k in e
                    else torch.zeros(0, dtype=p.dtype, device=p.device) for p, e in zip(leaves, entries)]
            slots[k] = tree_unflatten(slot, treedef)
        return WrappedOptimizerState(torch.zeros((), dtype=torch.bool), slots,
                                     {k: torch.zeros((), dtype=torch.float64) for k in sorted(group)})

    def update(updates, state, params=None, *, inplace=False, value_and_grad_fn=None, **extra_args):
        if params is None:
            raise ValueError(f"wrap_optimizer({name}) needs params: the optimizer steps copies of them")
        if closure and value_and_grad_fn is None:
            raise ValueError(f"wrap_optimizer({name}, closure=True) needs value_and_grad_fn (under gx.Optimizer, "
                             "give step a closure)")
        grads, treedef = tensor_leaves(updates)
        leaves = flatten_up_to(params, treedef, "params", "the updates")
        entries, group_types = layout(leaves)
        if not leaves:
            return updates, state
        copies = [p.detach().clone() for p in leaves]
        for c, g in zip(copies, grads):
            # the update itself only where this call may write into it (the optimizer may change
            # p.grad in place); whatever of it the optimizer keeps is cloned below
            c.grad = g.to(c.dtype) if inplace else g.to(c.dtype, copy=True)
        opt = _build(optimizer_class, copies, hyperparameters)
        slot_leaves = {k: flatten_up_to(v, treedef, f"the state's {k!r}") for k, v in state.slots.items()}
        if bool(state.started):
            opt.param_groups[0].update({k: _as_number(state.group[k], t) for k, t in group_types.items()})
            for i, (c, entry) in enumerate(zip(copies, entries)):
                opt.state[c] = {k: (_as_number(slot_leaves[k][i], e.number_type) if e.number_type
                                    else slot_leaves[k][i] if inplace else slot_leaves[k][i].clone())
                                for k, e in entry.items()}
        opt.step(_closure(copies, treedef, value_and_grad_fn) if closure else None)

        for i, c in enumerate(copies):
            unknown = set(opt.state.get(c, {})) - set(entries[i])
            if unknown:
                raise ValueError(f"wrap_optimizer: {name} made state {sorted(unknown)} for parameter {i} that its "
                                 "first step did not make; a transform's state keeps its structure")
        # an optimizer may keep p.grad itself (or a view of it) in its state, and the state must
        # hold none of the update tensors it was given (nor the copies, whose memory becomes the output)
        given = {_storage(g) for g in grads} | {_storage(c) for c in copies}
        new_slots = {}
        for k, leaves_k in slot_leaves.items():
            new = []
            for i, (c, old) in enumerate(zip(copies, leaves_k)):
                if k not in entries[i]:
                    new.append(old)
                    continue
                value = _as_tensor(opt.state[c][k])
                if value.numel() and _storage(value) in given:
                    value = value.clone()
                if value.shape != old.shape or value.dtype != old.dtype:
                    raise ValueError(f"wrap_optimizer: {name}'s state {k!r} of parameter {i} changed from "
                                     f"{tuple(old.shape)} {old.dtype} to {tuple(value.shape)} {value.dtype}; a "
                                     "transform's state keeps its shapes")
                new.append(value)
            new_slots[k] = tree_unflatten(new, treedef)
        new_group = {k: _as_tensor(float(opt.param_groups[0][k])) for k in group_types}
        # the step in the copy's own memory: nothing else holds it once the optimizer is dropped
        out = [c.detach().sub_(p).to(g.dtype) for c, p, g in zip(copies, leaves, grads)]
        return tree_unflatten(out, treedef), WrappedOptimizerState(torch.ones((), dtype=torch.bool), new_slots,
                                                                   new_group)

    return GradientTransformation(init, update)


def _storage(x: torch.Tensor) -> int:
    return x.untyped_storage().data_ptr()


def _build(optimizer_class: type[torch.optim.Optimizer], params: list[torch.Tensor],
           hyperparameters: dict[str, Any]) -> torch.optim.Optimizer:
    try:
        return optimizer_class(params, **hyperparameters)
    except (TypeError, ValueError) as error:
        raise ValueError(f"wrap_optimizer: {optimizer_class.__name__}(params, "
                         f"{', '.join(f'{k}={v!r}' for k, v in hyperparameters.items())}) failed: {error}") from error


def _probe_closure(copies: list[torch.Tensor]):
    def closure():
        for c in copies:
            c.grad = torch.ones_like(c)
        return torch.zeros((), dtype=torch.float64)

    return closure


def _closure(copies: list[torch.Tensor], treedef: Any, value_and_grad_fn: Any):
    """The loss at the copies' current values, their gradients set: a torch closure."""
    def closure():
        value, grads = value_and_grad_fn(tree_unflatten([c.detach() for c in copies], treedef))
        for c, g in zip(copies, tree_flatten(grads)[0]):
            c.grad = g.to(c.dtype)
        return value

    return closure
