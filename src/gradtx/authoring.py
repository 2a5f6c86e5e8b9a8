"""Writing a transform: helpers for the first two of three levels of control.

1. **Per tensor** (:func:`per_tensor`, :func:`stateless_with_tree_map`): write the rule for
   one tensor and its own state; the helper loops it over the leaves and keeps the states
   in a tree shaped like the params, plus a shared step count and hyperparameters.
2. **Multi-tensor** (:func:`multi_tensor` with the kernels of :mod:`gradtx.foreach`): write
   the rule over lists of tensors, one multi-tensor kernel call per operation, as the
   built-ins do; the helper turns trees into lists and back.
3. **Full control**: a plain ``GradientTransformation(init, update)`` over the whole tree,
   with ``params`` and the extra arguments (``value``, ``grad``, ``value_fn``); no helper.

``docs/guides/writing_transforms.md`` writes Adam at each level.
"""

from __future__ import annotations

import collections
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from . import foreach
from ._hparams import check, is_schedule, new_count, to_state
from ._tree import (
    Tree,
    TreeDef,
    flatten_up_to,
    leaves_at_paths_of,
    tensor_leaves,
    tree_flatten,
    tree_map,
    tree_structure,
    tree_unflatten,
)
from .base import EmptyState, GradientTransformation, _format_value, describe

__all__ = ["PerTensorState", "foreach", "multi_tensor", "per_tensor", "stateless_with_tree_map"]

# Keywords the helpers hand to the author's function themselves, and the extra-argument
# vocabulary: never hyperparameter names.
_RESERVED = frozenset({"step", "grad", "inplace", "value", "value_fn", "value_and_grad_fn", "hvp_fn"})


class _Keywords:
    """Which keyword arguments ``fn`` takes: every one when it has ``**kwargs``."""

    def __init__(self, fn: Callable, skip: int) -> None:
        try:
            parameters = list(inspect.signature(fn).parameters.values())
        except (TypeError, ValueError):  # a builtin without a signature: assume it takes anything
            parameters = [inspect.Parameter("kw", inspect.Parameter.VAR_KEYWORD)]
        self.any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
        named = [p for p in parameters if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                      inspect.Parameter.KEYWORD_ONLY)]
        self.named = frozenset(p.name for p in named[skip:])

    def __contains__(self, name: str) -> bool:
        return self.any or name in self.named

    def extra(self, extra_args: dict[str, Any]) -> dict[str, Any]:
        """The extra arguments ``fn`` takes, ``grad`` and ``inplace`` left to the caller."""
        return {k: v for k, v in extra_args.items() if k not in ("grad", "inplace") and k in self}


def _name(fn: Any) -> str:
    return getattr(fn, "__name__", type(fn).__name__)


def _check_callable(argument: str, fn: Any, form: str) -> None:
    if not callable(fn):
        raise ValueError(f"{argument} must be a function {form}, got {type(fn).__name__} {fn!r}")


def _grad_leaves(extra_args: dict[str, Any], treedef: TreeDef, updates: Tree) -> list[Any] | None:
    """The ``grad`` extra argument as a list matching the update leaves (``None`` if absent).
    Inside ``gx.masked``/``gx.partition`` (without ``mask_compatible_extra_args``) ``grad`` is
    the whole gradient and the updates hide the other leaves: the leaves at the updates' key
    paths are taken, as the built-in gradient-aware members take them."""
    grad = extra_args.get("grad")
    if grad is None:
        return None
    try:
        return treedef.flatten_up_to(grad)
    except (ValueError, TypeError) as err:
        try:
            found = leaves_at_paths_of(grad, updates)
        except (KeyError, IndexError, TypeError, ValueError):
            found = None
        if found is None or len(found) != treedef.num_leaves or not all(isinstance(g, torch.Tensor) for g in found):
            raise ValueError(f"grad must have the structure of updates ({treedef}), got {tree_structure(grad)}"
                             ) from err
        return found


def _check_tensor_leaves(state: Any, who: str) -> None:
    # Checkpoints (weights_only) and compile need tensors: a step count is a 0-dim int32 tensor.
    for leaf in tree_flatten(state)[0]:
        if not isinstance(leaf, torch.Tensor):
            raise ValueError(f"{who} must return a tensor or a tree of tensors (tuple, NamedTuple, dict, list; () "
                             f"for none), got a leaf {leaf!r}; hold numbers as 0-dim tensors")


def _keep_dtype(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    return new if not isinstance(new, torch.Tensor) or new.dtype == old.dtype else new.to(old.dtype)


class _ShapeChanged(Exception):
    """A state tensor came back with another shape: ``args`` are the new and the old one."""


def _keep_state_leaf(new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    if isinstance(new, torch.Tensor) and isinstance(old, torch.Tensor) and new.shape != old.shape:
        raise _ShapeChanged(tuple(new.shape), tuple(old.shape))
    return _keep_dtype(new, old)


def _describe(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"shape {tuple(x.shape)}"
    if isinstance(x, tuple):
        return f"a tuple of {len(x)}"
    return f"a {type(x).__name__}"


# --- level 1: per tensor ----------------------------------------------------------------


class PerTensorState(NamedTuple):
    """State of :func:`per_tensor`: the step count, the hyperparameters, and each tensor's
    own state in a tree with the structure of the params."""

    count: torch.Tensor  # int32, updates taken
    hyperparams: Tree  # a NamedTuple of float64 0-dim tensors, one field per hyperparameter
    per_tensor: Tree  # init_fn(param) for each leaf of params


def per_tensor(init_fn: Callable[[torch.Tensor], Tree], update_fn: Callable[..., tuple[torch.Tensor, Tree]],
               **hyperparams: Any) -> GradientTransformation:
    """A transform from the rule for one tensor: ``update_fn`` is looped over the leaves.

    ``init_fn(param) -> state`` builds one tensor's state: a tensor, a tuple, NamedTuple or
    dict of tensors, or ``()`` for none. ``update_fn(update, state, param, **keywords) ->
    (update, state)`` updates one tensor; ``param`` is ``None`` when ``update`` is called
    without params. It receives, among these keywords, the ones it names (all with
    ``**kwargs``):

    - ``step``: the number of this update, counting from 1, an int32 0-dim tensor shared
      by every tensor (a bias correction reads it);
    - each hyperparameter given here: a float64 0-dim tensor kept in the state, or a
      schedule's value at ``step - 1``, the number of updates before this one (the first
      update reads ``schedule(0)``, as ``gx.scale_by_lr(schedule)`` and optax do);
    - ``grad``: this tensor's raw gradient, when the caller passes ``grad`` (inside
      ``gx.masked`` or ``gx.partition``, the gradient of the same parameter);
    - ``inplace``: true only when the constructor is declared ``@gx.transform(inplace=True)``
      and the caller allows it; the rule may then write into the update and state tensors
      it is given, and keeps the promise of :func:`gradtx.supports_inplace`;
    - any other extra argument as given (``value``, ``value_fn``, ...).

    The state is ``PerTensorState(count, hyperparams, per_tensor)``: the per-tensor states
    in a tree with the structure of the params, so ``gx.Optimizer`` files each under its
    parameter (``opt.state[p]``, checkpoints), and each hyperparameter (a number or 0-dim
    tensor; a schedule ``step -> value`` is not kept) as a 0-dim tensor in a NamedTuple
    field of its name, so it is ``param_groups[i][name]`` for schedulers and per-group
    overrides. Each returned update keeps the dtype of the update it replaces, and each
    state leaf the dtype it had. A ``None`` leaf is refused naming its path, as by every
    transform (``gx.masked``/``gx.freeze`` leave a parameter out).

    The result is leafwise by construction (:func:`gradtx.is_leafwise`): ``gx.Optimizer``
    runs it per param group, a state (count, hyperparameters) per group, so a group's
    settings apply to that group alone. Each tensor is one Python call: for many small
    tensors, :func:`multi_tensor` is faster. Decorate the constructor with
    ``@gx.transform`` for a readable repr, and declare ``elementwise=True`` when the rule is
    (``gx.Optimizer(..., compile=True)``).

    Example (heavy ball: ``m <- beta m + g``, ``u <- m``; returning one tensor as both the
    update and the state is safe)::

        def heavy_ball_update(g, m, p, *, beta):
            m = beta * m + g
            return m, m

        @gx.transform(elementwise=True)
        def heavy_ball(beta=0.9):
            return gx.per_tensor(torch.zeros_like, heavy_ball_update, beta=beta)
    """
    _check_callable("init_fn", init_fn, "param -> state")
    _check_callable("update_fn", update_fn, "(update, state, param, **keywords) -> (update, state)")
    takes = _Keywords(update_fn, skip=3)
    for name, value in hyperparams.items():
        if name in _RESERVED or name.startswith("_"):
            raise ValueError(f"a hyperparameter of per_tensor cannot be called {name!r} (reserved: "
                             f"{sorted(_RESERVED)}, and names starting with '_')")
        check(name, value, allow_schedule=True)
        if name not in takes:
            raise ValueError(f"hyperparameter {name}={value!r}: update_fn {_name(update_fn)} takes no keyword "
                             f"{name!r}; add it to its signature (e.g. `def update(g, state, p, *, {name}): ...`)")
    kept = [name for name, value in hyperparams.items() if not is_schedule(value)]
    schedules = {name: value for name, value in hyperparams.items() if is_schedule(value)}
    Hyperparams = collections.namedtuple("Hyperparams", kept)  # noqa: N806 - a class, one per transform
    wants_step = "step" in takes
    takes_inplace = "inplace" in takes.named

    def init(params):
        ps, treedef = tensor_leaves(params)
        states = []
        for p in ps:
            state = init_fn(p)
            _check_tensor_leaves(state, f"init_fn {_name(init_fn)}")
            states.append(state)
        hyper = Hyperparams(*(to_state(hyperparams[name]) for name in kept))
        # (a count made from a number: it keeps its value under FakeTensorMode, as every count)
        return PerTensorState(new_count(), hyper, tree_unflatten(states, treedef))

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        us, treedef = tensor_leaves(updates)
        states = flatten_up_to(state.per_tensor, treedef)
        ps = [None] * len(us) if params is None else flatten_up_to(params, treedef, "params")
        grads = _grad_leaves(extra_args, treedef, updates) if "grad" in takes else None
        count = state.count + 1
        shared = takes.extra(extra_args)
        shared.update(zip(kept, state.hyperparams))
        # at the count before this update, as every built-in and optax read a schedule
        shared.update((name, fn(state.count)) for name, fn in schedules.items())
        if wants_step:
            shared["step"] = count
        if takes_inplace:
            shared["inplace"] = inplace
        new_us, new_states = [], []
        for i, (u, s, p) in enumerate(zip(us, states, ps)):
            if u is None:
                new_us.append(None)
                new_states.append(s)
                continue
            keywords = shared if grads is None else {**shared, "grad": grads[i]}
            out = update_fn(u, s, p, **keywords)
            if not (isinstance(out, tuple) and len(out) == 2):
                raise ValueError(f"update_fn {_name(update_fn)} must return a pair (update, state), got "
                                 f"{_describe(out)}")
            new_u, new_s = out
            if not isinstance(new_u, torch.Tensor) or new_u.shape != u.shape:
                # p + u would broadcast a smaller tensor over the parameter without a word
                raise ValueError(f"update_fn {_name(update_fn)} returned an update of {_describe(new_u)} for a "
                                 f"tensor of shape {tuple(u.shape)}: the update has the shape of the tensor")
            new_us.append(_keep_dtype(new_u, u))
            try:
                new_states.append(tree_map(_keep_state_leaf, new_s, s))
            except (ValueError, TypeError) as err:
                raise ValueError(f"update_fn {_name(update_fn)} returned a state of structure {tree_structure(new_s)}"
                                 f", but init_fn gave {tree_structure(s)}: keep the structure") from err
            except _ShapeChanged as err:
                raise ValueError(f"update_fn {_name(update_fn)} returned a state tensor of shape {err.args[0]}, but "
                                 f"init_fn gave shape {err.args[1]}: keep each state tensor's shape (checkpoints "
                                 f"and the adapter build the state from init_fn)") from None
        return (tree_unflatten(new_us, treedef),
                PerTensorState(count, state.hyperparams, tree_unflatten(new_states, treedef)))

    args = [_name(init_fn), _name(update_fn)] + [f"{k}={_format_value(v)}" for k, v in hyperparams.items()]
    # recipe: how to build it again (as base.stateless records it, for pickling gx.Optimizer)
    return describe(GradientTransformation(init, update), f"per_tensor({', '.join(args)})",
                    recipe=(per_tensor, (init_fn, update_fn), dict(hyperparams)), leafwise=True)


def stateless_with_tree_map(fn: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
                            ) -> GradientTransformation:
    """A stateless transform from ``fn(update, param) -> update`` for one tensor, mapped over
    the leaves (optax's ``stateless_with_tree_map``); ``param`` is ``None`` when ``update``
    is called without params. Each update keeps its dtype; a ``None`` leaf is refused naming its path.
    Leafwise by construction (:func:`gradtx.is_leafwise`).

    Example (L2 regularisation, ``u <- g + 1e-4 p``)::

        gx.chain(gx.stateless_with_tree_map(lambda g, p: g + 1e-4 * p), gx.scale_by_lr(0.1))
    """
    _check_callable("fn", fn, "(update, param) -> update")

    def one(u, p):
        if u is None:
            return None
        new = fn(u, p)
        if not isinstance(new, torch.Tensor) or new.shape != u.shape:  # p + u would broadcast it silently
            raise ValueError(f"fn {_name(fn)} returned {_describe(new)} for an update of shape {tuple(u.shape)}: "
                             "return a tensor of the update's shape")
        return _keep_dtype(new, u)

    def update(updates, state, params=None, **extra_args):
        del extra_args
        us, treedef = tensor_leaves(updates)
        ps = [None] * len(us) if params is None else flatten_up_to(params, treedef, "params")
        return tree_unflatten([one(u, p) for u, p in zip(us, ps)], treedef), state

    return describe(GradientTransformation(lambda params: EmptyState(), update),
                    f"stateless_with_tree_map({_name(fn)})", recipe=(stateless_with_tree_map, (fn,), {}),
                    leafwise=True)


# --- level 2: multi-tensor ------------------------------------------------------------------

_LIST = "list"  # where the skeleton of a state has a per-tensor list


def _skeleton(state: Any) -> Any:
    """The containers of ``state`` with each list marked: compared between calls, and used
    to find the lists again in a state whose lists became trees."""
    if isinstance(state, list):
        return _LIST
    if isinstance(state, tuple):  # NamedTuples included
        return (type(state), tuple(_skeleton(v) for v in state))
    if isinstance(state, dict):
        return (dict, tuple((k, _skeleton(v)) for k, v in state.items()))
    return None


def _lists_to_trees(state: Any, skeleton: Any, treedef: TreeDef, n: int, who: str) -> Any:
    if skeleton is _LIST:
        if len(state) != n:
            raise ValueError(f"{who}: each list in the state holds one entry per tensor ({n}), found one of "
                             f"{len(state)}; keep other sequences in tuples")
        return tree_unflatten(list(state), treedef)
    if skeleton is None:
        return state
    kind, children = skeleton
    if kind is dict:
        return {k: _lists_to_trees(state[k], child, treedef, n, who) for k, child in children}
    values = [_lists_to_trees(v, child, treedef, n, who) for v, child in zip(state, children)]
    return kind(*values) if hasattr(kind, "_fields") else kind(values)


def _trees_to_lists(state: Any, skeleton: Any, treedef: TreeDef) -> Any:
    if skeleton is _LIST:
        return treedef.flatten_up_to(state)
    if skeleton is None:
        return state
    kind, children = skeleton
    if kind is dict:
        return {k: _trees_to_lists(state[k], child, treedef) for k, child in children}
    values = [_trees_to_lists(v, child, treedef) for v, child in zip(state, children)]
    return kind(*values) if hasattr(kind, "_fields") else kind(values)


def multi_tensor(init_fn: Callable[[list[torch.Tensor]], Any],
                 update_fn: Callable[..., tuple[list[torch.Tensor], Any]]) -> GradientTransformation:
    """A transform from a rule over lists of tensors, as the built-ins are written: one
    multi-tensor kernel call (:mod:`gradtx.foreach`) per operation for all tensors.

    ``init_fn(params: list) -> state``; ``update_fn(updates: list, state, params: list |
    None, **keywords) -> (updates: list, state)``, the lists in the order of the tree's
    leaves. In the state, **every Python list holds one entry per tensor** (a tensor, or a
    tuple of them), in that order; anything else (0-dim step counts, hyperparameters, in
    tuples, NamedTuples, dicts) is shared by all tensors. Between calls each list is kept
    as a tree with the structure of the params, so ``gx.Optimizer`` files its entries
    under their parameters (``opt.state[p]``, checkpoints) and steps any subset of them;
    keep the same containers from call to call. A 0-dim float tensor in a NamedTuple field
    is a hyperparameter: ``param_groups[i][field]`` under ``gx.Optimizer``; make a running
    value (an EMA of a norm) on the params' device, as the built-ins do, and it is not one.

    ``update_fn`` receives, among these keywords, the ones it names (all with
    ``**kwargs``): ``grad`` (the raw gradients, a list like ``updates``), ``inplace``,
    and any other extra argument as given (``value``, ``value_fn``, ...). Returned updates
    keep the dtype of the ones they replace.

    Declare ``@gx.transform(leafwise=True)`` (or ``elementwise=True``) when each tensor's
    update depends on that tensor alone (no norm over all of them): ``gx.Optimizer`` then
    runs it per param group, so a group's settings apply to that group alone; otherwise it
    runs once over the parameters of every group and each hyperparameter takes one value.

    In-place reuse: decorate the constructor with ``@gx.transform(inplace=True)`` and take
    the keyword ``inplace``; when it is true, ``update_fn`` may write into the tensors of
    ``updates`` and ``state`` it was given, and must keep the promise written in
    :func:`gradtx.supports_inplace` (its updates are given or fresh tensors, never its
    state; its state keeps no update tensor). When false it writes into nothing.

    Example (momentum ``m <- b m + g``, ``u <- m`` returned as a copy)::

        @gx.transform(elementwise=True, inplace=True)
        def momentum(b=0.9):
            def update_fn(gs, ms, ps, *, inplace=False):
                ms = gx.foreach.mul(ms, b, inplace=inplace)
                gx.foreach.add(ms, gs, inplace=True)
                return gx.foreach.clone(ms), ms
            return gx.multi_tensor(lambda ps: [torch.zeros_like(p) for p in ps], update_fn)
    """
    _check_callable("init_fn", init_fn, "params: list -> state")
    _check_callable("update_fn", update_fn, "(updates: list, state, params: list | None, **keywords) -> "
                                            "(updates: list, state)")
    takes = _Keywords(update_fn, skip=3)
    takes_inplace = "inplace" in takes.named
    layout: list[Any] = []  # the skeleton of init_fn's state, once known

    def skeleton_of(state: Any, who: str) -> Any:
        found = _skeleton(state)
        if not layout:
            layout.append(found)
        elif found != layout[0]:
            raise ValueError(f"{who} returned a state with other containers than init_fn's "
                             f"({found} against {layout[0]}): keep the same NamedTuples, tuples, dicts and lists")
        return found

    def init(params):
        ps, treedef = tensor_leaves(params)
        state = init_fn(list(ps))
        _check_tensor_leaves(state, f"init_fn {_name(init_fn)}")
        return _lists_to_trees(state, skeleton_of(state, f"init_fn {_name(init_fn)}"), treedef, len(ps),
                               f"init_fn {_name(init_fn)}")

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        gs, treedef = tensor_leaves(updates)
        if not layout:  # a state from elsewhere: learn where its lists are from init_fn
            skeleton_of(init_fn(list(gs)), f"init_fn {_name(init_fn)}")
        keywords = takes.extra(extra_args)
        if "grad" in takes and extra_args.get("grad") is not None:
            keywords["grad"] = _grad_leaves(extra_args, treedef, updates)
        if takes_inplace:
            keywords["inplace"] = inplace
        ps = None if params is None else flatten_up_to(params, treedef, "params")
        new_gs, new_state = update_fn(gs, _trees_to_lists(state, layout[0], treedef), ps, **keywords)
        if len(new_gs) != len(gs):
            raise ValueError(f"update_fn {_name(update_fn)} returned {len(new_gs)} updates for {len(gs)} tensors")
        who = f"update_fn {_name(update_fn)}"
        new_state = _lists_to_trees(new_state, skeleton_of(new_state, who), treedef, len(gs), who)
        return tree_unflatten(foreach.cast_like(list(new_gs), gs), treedef), new_state

    return describe(GradientTransformation(init, update), f"multi_tensor({_name(init_fn)}, {_name(update_fn)})",
                    recipe=(multi_tensor, (init_fn, update_fn), {}))
