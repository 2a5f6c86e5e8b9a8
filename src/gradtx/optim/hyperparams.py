"""The chain's hyperparameters as ``param_groups`` keys, and writing them into its state.

A transform keeps a hyperparameter that may change during training (``lr``,
``weight_decay``, ...) as a 0-dim float tensor in a NamedTuple field of its state; the
field's name is the key. Where two transforms of a chain hold the same name, a group
override of one must not change the other (``eps`` of Adam is not ``eps`` of a clip), so
each gets a key qualified by the transform that holds it (``"scale_by_adam.eps"``, or the
name given to ``named_chain``); only ``lr`` keeps one key for all, the others following it
by their ratio to the first (a ``partition`` of two learning rates under one scheduler).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from .._tree import _is_param_dict
from ..base import GradientTransformation
from ..wrappers import InjectHyperparamsState
from .groups import GroupStates

__all__ = ["Slot", "lr_schedule", "template", "walk"]

# Keys torch's LR schedulers and SWA add to param groups, and names users give groups: never
# reported as unread.
BOOKKEEPING_KEYS = frozenset({"params", "param_names", "name", "initial_lr", "max_lr", "min_lr", "base_lr",
                              "max_momentum", "base_momentum", "initial_momentum", "swa_lr"})

RATIO_KEYS = ("lr",)  # names held several times that follow one key by their ratio


class Slot(NamedTuple):
    """How one hyperparameter tensor of the state follows ``param_groups``."""

    key: str  # the param_groups key
    factor: float | None  # the tensor holds param_groups[key] * factor; None: it keeps its own value


def _name(tx: Any, default: str) -> str:
    return getattr(tx, "__dict__", {}).get("name") or default


def walk(state: Any, tx: GradientTransformation | None) -> list[tuple[int, str, int | None, torch.Tensor]]:
    """Every hyperparameter tensor of ``state`` (the state of ``tx``) as ``(position, scope,
    group, tensor)``: its position in the state of the unsplit chain (the same for every
    group of a :func:`~gradtx.optim.groups.by_group` part), the name of the transform
    holding it, and its param group (``None`` outside any ``by_group`` part)."""
    out: list[tuple[int, str, int | None, torch.Tensor]] = []
    counter = [0]

    def visit(node: Any, tx: Any, scope: str, group: int | None) -> None:
        if isinstance(node, GroupStates):
            inner = getattr(tx, "__dict__", {}).get("grouped")
            start = counter[0]
            for g, s in enumerate(node.states):
                counter[0] = start
                visit(s, inner, scope, g)
            return
        parts = getattr(tx, "__dict__", {}).get("parts")
        if isinstance(node, InjectHyperparamsState):
            # the inner state's hyperparameters are written from these at every update: keys
            # for them would be dead ("weight_decay#1" next to "weight_decay")
            node = node._replace(inner_state=())
        if hasattr(node, "_fields"):
            for field, value in zip(node._fields, node):
                if isinstance(value, torch.Tensor) and value.dim() == 0 and value.is_floating_point():
                    out.append((counter[0], f"{scope}.{field}" if scope else field, group, value))
                    counter[0] += 1
                else:
                    visit(value, None, scope, group)
        elif isinstance(node, (list, tuple)):
            if parts and len(parts) == len(node):
                for part, value in zip(parts, node):
                    visit(value, part, _name(part, scope), group)
            else:
                for value in node:
                    visit(value, None, scope, group)
        elif isinstance(node, dict) and not _is_param_dict(node):
            # a named_chain's or a partition's state: the user's names and labels scope it
            named = parts and len(parts) == len(node)
            for i, (name, value) in enumerate(node.items()):
                visit(value, parts[i] if named else None, str(name), group)

    visit(state, tx, _name(tx, ""), None)
    return out


def lr_schedule(tx: Any) -> Any:
    """The schedule given as the learning rate of a ``scale_by_lr`` part of ``tx`` (at any
    depth), or ``None``: such a chain drives its learning rate itself."""
    attrs = getattr(tx, "__dict__", {})
    args = attrs.get("args", {})
    if attrs.get("name") == "scale_by_lr" and callable(args.get("lr")) and not isinstance(args["lr"], torch.Tensor):
        return args["lr"]
    inner = list(attrs.get("parts", ()))
    for value in args.values():
        inner.extend(value.values() if isinstance(value, dict) else [value])
    for part in inner:
        if isinstance(part, GradientTransformation):
            found = lr_schedule(part)
            if found is not None:
                return found
    return None


def template(tx: GradientTransformation, settings: list[Any] = ()) -> tuple[dict[str, float], list[Slot], list[str]]:
    """The chain's hyperparameters as param-group defaults, a :class:`Slot` for each
    hyperparameter tensor of its state, by position (see the module docstring), and the key
    of each of ``settings`` (``gradtx.optim.settings.find(tx)``: constructor arguments),
    named by the same rule."""
    # Built on a meta tensor: no memory, known before any parameter has a gradient (LR
    # schedulers read param_groups at once), and a 0-dim state tensor computed from the
    # params (DoG's running distance) comes out on the meta device, telling it from a
    # hyperparameter. An init that must read values (multi_steps' should_skip_update_fn)
    # gets one real element instead.
    try:
        state = tx.init({0: torch.empty(1, device="meta")})
    except (NotImplementedError, RuntimeError):
        state = tx.init({0: torch.zeros(1)})
    found = walk(state, tx)
    fields = [scoped.rsplit(".", 1)[-1] for _, scoped, _, _ in found]
    all_names = fields + [s.name for s in settings]
    counts = {f: all_names.count(f) for f in all_names}
    seen: dict[str, int] = {}

    def key_of(field: str, scoped: str, ratio: bool) -> str:
        if (ratio and field in RATIO_KEYS) or counts[field] == 1:
            return field
        n = seen.get(scoped, 0)
        seen[scoped] = n + 1
        return f"{scoped}#{n}" if n else scoped

    defaults: dict[str, float] = {}
    slots: list[Slot] = []
    for (_, scoped, _, value), field in zip(found, fields):
        key = key_of(field, scoped, True)
        if value.device.type == "meta" or value.requires_grad:
            slots.append(Slot(key, None))
            continue
        x = float(value.item())
        first = defaults.setdefault(key, x)
        slots.append(Slot(key, 1.0 if x == first else (x / first if first != 0 else None)))
    setting_keys = []
    for setting in settings:
        key = key_of(setting.name, f"{setting.scope}.{setting.name}" if setting.scope else setting.name, False)
        setting_keys.append(key)
        defaults[key] = setting.value
    return defaults, slots, setting_keys
