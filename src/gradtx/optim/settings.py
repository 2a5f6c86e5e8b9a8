"""Constructor hyperparameters as ``param_groups`` keys: a group's values rebuild the chain.

A transform keeps in its state only the hyperparameters it was written to change while
training (``lr``, ``weight_decay``; see ``hyperparams``); the others (``b1``, ``b2``,
``eps``, ``momentum``, ...) are numbers its constructor closed over. torch users expect
those in ``param_groups`` too: a group with ``betas=(0.5, 0.999)``, ``OneCycleLR`` cycling
the momentum. ``@transform`` records how each transform was built (``recipe``), so the
adapter builds the chain again with a group's values where they differ from the
constructor's, and runs that group with it. The state is the same (a rebuilt chain whose
state would differ is refused), so a group may change its values at any step.

A setting is a ``float`` argument of a transform built by a ``@transform`` constructor
(bools, ints, schedules, tensors and ``None`` are not settings: a 0-dim tensor is the
user's to drive). Arguments that are transforms are followed inside (``chain``,
``named_chain``, ``partition``, wrappers); a transform's own ``parts`` are not, since its
arguments built them (``gx.adam``'s ``b1`` is one setting, not one of ``adam`` and one of
its ``scale_by_adam``). An argument the transform keeps in its state is a key already.
"""

from __future__ import annotations

import inspect
import numbers
from typing import Any, NamedTuple

import torch

from ..base import GradientTransformation, is_leafwise
from ..combine import chain, named_chain
from .hyperparams import walk

__all__ = ["Setting", "as_tensors", "find", "rebuild"]

# A step from a transform to one of the transforms in its recipe's arguments: ("pos", i) or
# ("kw", name), then an index or key inside a tuple/list/dict argument when there is one.
Path = tuple[tuple[Any, ...], ...]


class Setting(NamedTuple):
    """A constructor argument that ``param_groups`` drives."""

    path: Path  # how to reach the transform that takes it, from the chain
    scope: str  # that transform's name, or the name a named_chain/partition gives it
    name: str  # the argument
    value: float  # as built
    # its transform runs per param group (``groups.split_by_group``: leafwise, or inside a
    # leafwise part reached through chains), so each group may set its own value
    grouped: bool


def _children(recipe: tuple) -> list[tuple[tuple[Any, ...], str | None, GradientTransformation]]:
    """The transforms among a recipe's arguments: (step, the name a container gives it, tx)."""
    _, args, kwargs = recipe
    out = []
    for where, items in (("pos", enumerate(args)), ("kw", kwargs.items())):
        for key, value in items:
            if isinstance(value, GradientTransformation):
                out.append(((where, key), None, value))
            elif isinstance(value, (tuple, list)):
                if len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], GradientTransformation):
                    out.append(((where, key, 1), value[0], value[1]))  # a named_chain's (name, tx) pair
                else:
                    out.extend(((where, key, i), None, v) for i, v in enumerate(value)
                               if isinstance(v, GradientTransformation))
            elif isinstance(value, dict):
                out.extend(((where, key, k), str(k), v) for k, v in value.items()
                           if isinstance(v, GradientTransformation))
    return out


def _held(tx: GradientTransformation) -> set[str]:
    """Names of the hyperparameters ``tx`` keeps in its state (keys already)."""
    try:
        state = tx.init({})
    except Exception:  # noqa: BLE001 - a transform that needs parameters to init: assume none
        return set()
    return {scoped.rsplit(".", 1)[-1] for _, scoped, _, _ in walk(state, tx)}


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and not isinstance(value, torch.Tensor)


def _float_arguments(build: Any) -> set[str]:
    """The arguments of ``build`` annotated as taking a float, so ``b1=0`` or a numpy float
    given for them is a setting too (an ``int`` argument such as a memory size is not)."""
    try:
        parameters = inspect.signature(build).parameters.values()
    except (TypeError, ValueError):
        return set()
    return {p.name for p in parameters if "float" in str(p.annotation) or "Scalar" in str(p.annotation)}


def _keywords_argument(build: Any) -> str | None:
    """The name of ``build``'s ``**kwargs`` argument, whose float values are settings too
    (``wrap_optimizer(torch.optim.Adam, lr=1e-3)``'s ``lr``)."""
    try:
        parameters = inspect.signature(build).parameters.values()
    except (TypeError, ValueError):
        return None
    return next((p.name for p in parameters if p.kind is inspect.Parameter.VAR_KEYWORD), None)


def find(tx: GradientTransformation) -> list[Setting]:
    """Every setting of ``tx``, in chain order (see the module docstring)."""
    out: list[Setting] = []

    def visit(node: GradientTransformation, path: Path, scope: str | None, grouped: bool, splits: bool) -> None:
        attrs = getattr(node, "__dict__", {})
        recipe = attrs.get("recipe")
        if recipe is None:
            return  # nothing says how it was built: it keeps its numbers
        grouped = grouped or (splits and is_leafwise(node))
        own = attrs.get("name")
        if own is not None:
            held = _held(node)
            floats = _float_arguments(recipe[0])
            args = dict(attrs.get("args", {}))
            args.update(args.pop(_keywords_argument(recipe[0]), None) or {})
            for name, value in args.items():
                if _is_number(value) and (type(value) is float or name in floats) and name not in held:
                    out.append(Setting(path, scope or own, name, float(value), grouped))
        # split_by_group goes into chains only: what another transform holds runs as it does
        splits = splits and recipe[0] in (chain, named_chain)
        for step, given_name, child in _children(recipe):
            visit(child, (*path, step), given_name, grouped, splits)

    visit(tx, (), None, False, True)
    return out


def _rebuilt(tx: GradientTransformation, changes: dict[str, float],
             inner: dict[tuple[Any, ...], GradientTransformation]) -> GradientTransformation:
    """``tx`` built again by its recipe with the arguments in ``changes`` and the transforms
    in ``inner`` (by step) put in place of those it was given."""
    build, args, kwargs = tx.__dict__["recipe"]
    args, kwargs = list(args), dict(kwargs)
    for step, child in inner.items():
        where, key, *sub = step
        holder = args if where == "pos" else kwargs
        if not sub:
            holder[key] = child
        elif isinstance(holder[key], dict):
            holder[key] = {**holder[key], sub[0]: child}
        else:
            items = list(holder[key])
            items[sub[0]] = child
            holder[key] = type(holder[key])(items) if isinstance(holder[key], tuple) else items
    if changes:
        signature = inspect.signature(build)
        bound = signature.bind(*args, **kwargs)
        keywords = _keywords_argument(build)
        for name, value in changes.items():
            if name in signature.parameters or keywords is None:
                bound.arguments[name] = value
            else:
                bound.arguments[keywords] = {**bound.arguments.get(keywords, {}), name: value}
        return build(*bound.args, **bound.kwargs)
    return build(*args, **kwargs)


def rebuild(tx: GradientTransformation, values: dict[tuple[Path, str], float]) -> GradientTransformation:
    """``tx`` built again with each setting ``(path, name)`` in ``values`` given its value;
    parts of the chain that no value touches are kept as they are."""
    by_path: dict[Path, dict[str, float]] = {}
    for (path, name), value in values.items():
        by_path.setdefault(path, {})[name] = value

    def visit(node: GradientTransformation, path: Path) -> GradientTransformation:
        touched = [p for p in by_path if p[:len(path)] == path]
        if not touched:
            return node
        recipe = node.__dict__["recipe"]
        inner = {}
        for step, _, child in _children(recipe):
            new = visit(child, (*path, step))
            if new is not child:
                inner[step] = new
        return _rebuilt(node, by_path.get(path, {}), inner)

    return visit(tx, ())


def as_tensors(tx: GradientTransformation, settings: list[Setting]
               ) -> tuple[GradientTransformation, list[torch.Tensor]] | None:
    """``tx`` built again with each of ``settings`` given as a 0-dim float64 tensor holding its
    value, and those tensors (in the order of ``settings``); ``None`` when a constructor does
    not take a tensor for one of them (``ValueError``/``TypeError``).

    For ``gx.Optimizer(..., compile=True)``: the compiled graph reads the tensors as inputs,
    so a group's values (a scheduler cycling the momentum) are written into them with
    ``fill_`` and the graph, compiled once, uses them; a rebuilt chain would be a new graph
    with its numbers as constants (a recompile per value)."""
    if not settings:
        return None
    tensors = [torch.tensor(s.value, dtype=torch.float64) for s in settings]
    try:
        return rebuild(tx, {(s.path, s.name): t for s, t in zip(settings, tensors)}), tensors
    except (ValueError, TypeError):
        return None
