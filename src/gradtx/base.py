"""The contract: ``GradientTransformation(init, update)`` and the smallest transforms.

``init(params) -> state`` needs only structure, shapes, dtypes and devices of ``params``.
``update(updates, state, params=None, **extra_args) -> (updates, state)`` never mutates its
inputs. That is all a transform must do to work in ``chain``, every wrapper and
``gx.Optimizer``. Updates are *added* to parameters.

In-place buffer reuse is a capability a transform *declares* (``@transform(inplace=True)``,
as every built-in does; see :func:`supports_inplace` for the promise it makes). Only a
declared transform is ever passed ``inplace=True``; the combinators call any other one
exactly as optax would, and never write into a tensor it returned or keeps.
"""

from __future__ import annotations

import functools
import inspect
import operator
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import torch

from . import _foreach as F
from ._hparams import as_scalar
from ._tree import Tree, flatten_up_to, leaf_names, tree_flatten, tree_unflatten

__all__ = ["EmptyState", "GradientTransformation", "apply_updates", "describe", "identity", "incremental_update",
           "is_elementwise", "is_leafwise", "periodic_update", "scale_gradient", "stateless", "supports_inplace",
           "transform"]

_SHAPE = operator.attrgetter("shape")


class TransformInitFn(Protocol):
    def __call__(self, params: Tree) -> Tree: ...


class TransformUpdateFn(Protocol):
    def __call__(self, updates: Tree, state: Tree, params: Tree | None = None, **extra_args: Any
                 ) -> tuple[Tree, Tree]: ...


class GradientTransformation(NamedTuple):
    """A pure pair of functions over pytrees of tensors.

    Example::

        tx = gx.chain(gx.clip_value(10.0), gx.scale_by_adam(), gx.scale_by_lr(1e-3))
        state = tx.init(params)
        updates, state = tx.update(grads, state, params)
        params = gx.apply_updates(params, updates)
    """

    init: TransformInitFn
    update: TransformUpdateFn

    def __repr__(self) -> str:
        # A bare pair says only which functions it holds; the constructors decorated with
        # @transform (every built-in) print as the call that built them instead.
        return (f"GradientTransformation(init={_function_name(self.init)}, update={_function_name(self.update)})"
                "  # decorate the constructor with @gx.transform for a readable repr")


def _function_name(fn: Any) -> str:
    """``make_tx.<locals>.update`` for a function, the type's name for another callable."""
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    return name if isinstance(name, str) else type(fn).__name__


class ComplexParamsError(ValueError):
    """A transform refused complex parameters at ``init`` (its rule reads the shape of each
    tensor, which a complex tensor's real view would change)."""


class _Described(GradientTransformation):
    # A GradientTransformation that remembers how it was built, for ``repr``. Subclassing
    # the NamedTuple without __slots__ gives instances a __dict__; they stay tuples.
    def __repr__(self) -> str:
        return self.__dict__.get("description", super().__repr__())


def describe(tx: GradientTransformation, description: str, **attrs: Any) -> GradientTransformation:
    """``tx`` with a readable ``repr`` (and optional attributes, e.g. parts of a chain)."""
    out = _Described(tx.init, tx.update)
    out.__dict__["description"] = description
    out.__dict__.update(attrs)
    return out


def _format_value(value: Any) -> str:
    if isinstance(value, torch.Tensor) and value.dim() == 0:
        return f"tensor({value.item():g})" if not value.requires_grad else "tensor(...)"
    if isinstance(value, torch.dtype):
        return str(value)
    if callable(value) and not isinstance(value, GradientTransformation):
        return getattr(value, "__name__", type(value).__name__)
    return repr(value)


def transform(fn: Callable[..., GradientTransformation] | None = None, *,
              elementwise: bool | Callable[[dict[str, Any]], bool] = False,
              leafwise: bool | Callable[[dict[str, Any]], bool] = False,
              inplace: bool | Callable[[dict[str, Any]], bool] = False,
              segmented: bool | Callable[[dict[str, Any]], bool] = False) -> Any:
    """Decorator for a transform constructor: the result's ``repr`` shows the call.

    ``gx.scale_by_adam(b1=0.8)`` prints as ``scale_by_adam(b1=0.8)``: only the arguments
    the caller gave, so the repr reads like the code that built it. The result also
    carries ``name`` (the constructor's) and ``args`` (all arguments, defaults included),
    which fast paths read to recognise a chain; a chain adds ``parts``. ``recipe`` is
    ``(constructor, args, kwargs)`` as called: pickling ``gx.Optimizer`` rebuilds the chain
    from it (see ``gradtx.optim.pickling``).

    ``@transform(elementwise=True)`` declares that every element of the update, and of each
    per-parameter state tensor (shaped like its parameter), depends only on the same element
    of the gradient, parameter and state, and on shared state (step counts, hyperparameters)
    that no parameter value changes: such a transform gives the same numbers on any split of
    the parameters into flat pieces, which the compiled path relies on (see
    :func:`is_elementwise`). A callable ``args -> bool`` decides from the arguments.

    ``@transform(leafwise=True)`` declares the weaker property that each leaf's update and
    state depend only on that leaf (its gradient, parameter and state) and on shared state
    that no parameter value changes: a norm per tensor is leafwise, a global norm is not.
    ``gx.Optimizer`` runs a leafwise transform per param group, so a group's settings apply
    to that group alone (see :func:`is_leafwise`); elementwise implies leafwise.

    ``@transform(segmented=True)`` declares that the transform is leafwise and, when the
    extra argument ``segments`` maps a leaf to a :class:`gradtx._segments.Segments`, treats
    that leaf as the concatenation of those segments (a per-leaf norm becomes one norm per
    segment), or that its numbers do not depend on how the leaves are split at all (a global
    norm): ``gx.Optimizer(..., flat=True)`` runs such chains over flat buffers (see
    :func:`flat_blocking_parts`).

    ``@transform(inplace=True)`` declares that ``update`` takes the keyword ``inplace`` and
    keeps the promise :func:`supports_inplace` states; leave it out for an optax-style
    ``update`` (the combinators then never pass ``inplace`` and never write into what it
    returns or keeps). A callable ``args -> bool`` decides from the arguments (a wrapper is
    declared when the transform it wraps is).

    Tensor arguments holding one element reach ``fn`` as 0-dim tensors
    (``torch.tensor([1e-3])`` is taken as ``torch.tensor(1e-3)``).

    Example::

        @gx.transform
        def scale_by_two() -> gx.GradientTransformation:
            return gx.stateless(lambda u, p: gx.tree_map(lambda x: 2 * x, u))

        scale_by_two()  # prints as scale_by_two()
    """
    if fn is None:
        return functools.partial(transform, elementwise=elementwise, leafwise=leafwise, inplace=inplace,
                                 segmented=segmented)
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def build(*args: Any, **kwargs: Any) -> GradientTransformation:
        # A 1-element tensor hyperparameter (torch.tensor([1e-3]), as torch takes for lr) is
        # used as 0-dim, so it broadcasts like a number against every leaf.
        args = tuple(as_scalar(a) for a in args)
        kwargs = {k: as_scalar(v) for k, v in kwargs.items()}
        tx = fn(*args, **kwargs)
        bound = signature.bind(*args, **kwargs)
        given = dict(bound.arguments)
        bound.apply_defaults()
        parts = []
        for name, value in given.items():
            kind = signature.parameters[name].kind
            if kind is inspect.Parameter.VAR_POSITIONAL:
                parts.extend(_format_value(v) for v in value)
            elif kind is inspect.Parameter.VAR_KEYWORD:
                parts.extend(f"{k}={_format_value(v)}" for k, v in value.items())
            else:
                parts.append(f"{name}={_format_value(value)}")
        inner = getattr(tx, "__dict__", {})
        attrs = {k: v for k, v in inner.items() if k != "description"}
        # recipe: how to build it again (pickling gx.Optimizer rebuilds the chain from it)
        attrs.update(name=fn.__name__, args=dict(bound.arguments), recipe=(build, args, kwargs))
        if "parts" not in inner:  # an alias is as elementwise (and in-place) as the chain it returns
            attrs["elementwise"] = bool(elementwise(attrs["args"]) if callable(elementwise) else elementwise)
            # leafwise by construction (gx.per_tensor's result) stays so under any decorator
            attrs["leafwise"] = attrs["elementwise"] or inner.get("leafwise", False) or bool(
                leafwise(attrs["args"]) if callable(leafwise) else leafwise)
            attrs["inplace"] = bool(inplace(attrs["args"]) if callable(inplace) else inplace)
            attrs["segmented"] = inner.get("segmented", False) or bool(
                segmented(attrs["args"]) if callable(segmented) else segmented)
        description = f"{fn.__name__}({', '.join(parts)})"
        if "parts" in inner:
            tx = GradientTransformation(_naming_refusals(fn.__name__, tx.init), tx.update)
        if "parts" in inner and "description" in inner:
            # an alias: show what it is made of, e.g. "adamw(lr=0.001) = chain(\n  scale_by_adam(...), ...)"
            description = f"{description} = {inner['description']}"
        return describe(tx, description, **attrs)

    return build


def _naming_refusals(name: str, init: Callable) -> Callable:
    # An alias refusing complex params names itself too: the user typed gx.adafactor, not
    # the scale_by_factored_rms inside it.
    def named_init(params):
        try:
            return init(params)
        except ComplexParamsError as e:
            if str(e).startswith(f"{name}:"):
                raise
            raise ComplexParamsError(f"{name}: {e}") from None

    return named_init


def is_elementwise(tx: GradientTransformation) -> bool:
    """Whether ``tx`` was declared elementwise (``@transform(elementwise=True)``); a chain
    is when all its parts are. Undeclared transforms (``stateless``, wrappers) are not.
    ``gx.Optimizer(..., compile=True)`` takes exactly these chains.

    Example: ``gx.is_elementwise(gx.adamw(1e-3))`` is true, ``gx.is_elementwise(gx.lamb(1e-3))``
    false (its trust ratio is a norm over each whole tensor).
    """
    return not non_elementwise_parts(tx)


def is_leafwise(tx: GradientTransformation) -> bool:
    """Whether ``tx`` was declared leafwise (``@transform(leafwise=True)``, or elementwise):
    each leaf's update depends on that leaf alone, so running it on any split of the
    parameters gives the same numbers. A chain is when all its parts are. ``gx.Optimizer``
    runs leafwise parts per param group (a group's settings apply to it alone) and every
    other part once over all parameters (a global norm sees every group).

    Example: ``gx.is_leafwise(gx.lamb(1e-3))`` is true (a norm per tensor),
    ``gx.is_leafwise(gx.clip_by_global_norm(1.0))`` false.
    """
    attrs = getattr(tx, "__dict__", {})
    if "parts" in attrs:
        return all(is_leafwise(part) for part in attrs["parts"])
    return bool(attrs.get("leafwise", False))


def non_elementwise_parts(tx: GradientTransformation) -> list[GradientTransformation]:
    """The innermost parts of ``tx`` that are not declared elementwise (``[tx]`` for a
    single undeclared transform, ``[]`` for an elementwise one)."""
    attrs = getattr(tx, "__dict__", {})
    if "parts" in attrs:
        return [bad for part in attrs["parts"] for bad in non_elementwise_parts(part)]
    return [] if attrs.get("elementwise", False) else [tx]


def flat_blocking_parts(tx: GradientTransformation) -> list[GradientTransformation]:
    """The innermost parts of ``tx`` that can not run over flat buffers: neither elementwise
    nor declared ``segmented`` (``@transform(segmented=True)``: it reduces per segment of a
    flat leaf given the ``segments`` extra argument, or its numbers do not depend on the
    split). ``gx.Optimizer(..., flat=True)`` takes chains without any."""
    attrs = getattr(tx, "__dict__", {})
    if "parts" in attrs:
        return [bad for part in attrs["parts"] for bad in flat_blocking_parts(part)]
    return [] if attrs.get("elementwise", False) or attrs.get("segmented", False) else [tx]


def supports_inplace(tx: GradientTransformation) -> bool:
    """Whether ``tx`` declares in-place buffer reuse (``@transform(inplace=True)``; every
    built-in does, ``chain`` always). Such a transform promises:

    1. ``update`` takes the keyword ``inplace``. With ``inplace=True`` it may write into the
       tensors of the ``updates`` and ``state`` it is given (never ``params`` or the extra
       arguments); with ``inplace=False`` into nothing it is given.
    2. Each tensor of the updates it returns is either one of the update tensors it was given
       or a tensor it made in this call that nothing else holds: not its new state, ``params``
       or an extra argument, and no two leaves share memory. So its caller may write into
       the updates it returns once it owns the ones it passed in.
    3. Its new state keeps none of the update tensors it was given: the caller may reuse
       those buffers.

    ``gx.Optimizer`` and the combinators pass ``inplace=True`` only to declared transforms;
    any other one is called as optax calls it, and what it returns or keeps is never
    written into. Example: ``gx.supports_inplace(gx.scale_by_adam())`` is true.
    """
    return bool(getattr(tx, "__dict__", {}).get("inplace", False))


def updater(tx: GradientTransformation) -> Callable[..., tuple[Tree, Tree]]:
    """``run(updates, state, params, inplace, extra_args) -> (updates, state)``: ``tx.update``
    called as its declaration allows. A declared transform gets ``inplace`` and every extra
    argument; any other one neither ``inplace`` nor an extra argument its signature does
    not name (an optax-style ``update(updates, state, params=None)`` gets none, as optax's
    ``with_extra_args_support`` does). Built once per member, not per step."""
    update = tx.update
    if supports_inplace(tx):
        def run_declared(updates, state, params, inplace, extra_args):
            return update(updates, state, params, inplace=inplace, **extra_args)

        return run_declared
    accepted = _accepted_keywords(update)

    def run(updates, state, params, inplace, extra_args):
        del inplace  # never passed to an undeclared transform
        if accepted is not None:
            extra_args = {k: v for k, v in extra_args.items() if k in accepted}
        out = update(updates, state, params, **extra_args)
        if not (isinstance(out, tuple) and len(out) == 2):
            # unpacked as it is, a dict of two leaves would pass for a pair of its keys
            raise ValueError(f"the update of {_short_repr(tx)} must return a pair (updates, new_state), got "
                             f"{type(out).__name__}" + (f" of length {len(out)}" if isinstance(out, tuple) else ""))
        return out

    return run


def _short_repr(tx: GradientTransformation) -> str:
    if not getattr(tx, "__dict__", {}).get("name"):  # a bare pair: its update function's name
        return f"GradientTransformation(update={getattr(tx.update, '__name__', type(tx.update).__name__)})"
    text = repr(tx)
    return text if len(text) <= 120 else text[:117] + "..."


def _accepted_keywords(fn: Callable) -> frozenset[str] | None:
    """The keyword arguments ``fn`` names beyond the first three, ``None`` for any (``**kw``)."""
    try:
        parameters = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    named = [p for p in parameters if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                                  inspect.Parameter.KEYWORD_ONLY)]
    return frozenset(p.name for p in named[3:])


class EmptyState(NamedTuple):
    """The state of a stateless transform."""


def _empty_init(params: Tree) -> EmptyState:
    del params
    return EmptyState()


@transform(elementwise=True, inplace=True)
def identity() -> GradientTransformation:
    """Leaves updates unchanged: ``u <- u``."""

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del params, inplace, extra_args
        return updates, state

    return GradientTransformation(_empty_init, update)


def stateless(fn: Callable[[Tree, Tree | None], Tree]) -> GradientTransformation:
    """A transform from a pure function ``fn(updates, params) -> updates`` with no state.

    Example: ``gx.stateless(lambda u, p: gx.tree_map(lambda x: 2 * x, u))``.
    """

    def update(updates, state, params=None, **extra_args):
        del extra_args
        return fn(updates, params), state

    return describe(GradientTransformation(_empty_init, update),
                    f"stateless({getattr(fn, '__name__', 'fn')})", recipe=(stateless, (fn,), {}))


def apply_updates(params: Tree, updates: Tree, *, inplace: bool = False) -> Tree:
    """``params + updates``, leafwise, the result cast to each parameter's dtype.

    A ``None`` update leaves its parameter unchanged; any other has its parameter's shape
    (``ValueError`` otherwise: ``p + u`` would broadcast it). With ``inplace=True`` the
    parameters are written in place (under ``torch.no_grad``) and returned.
    """
    p_leaves, treedef = tree_flatten(params)
    u_leaves = flatten_up_to(updates, treedef, "the updates", "params")
    if len(u_leaves) != len(p_leaves):
        raise ValueError(f"updates has {len(u_leaves)} leaves but params has {len(p_leaves)}")
    idx = [i for i, u in enumerate(u_leaves) if u is not None]
    ps = [p_leaves[i] for i in idx]
    us = [u_leaves[i] for i in idx]
    # p + u would broadcast a smaller update over its parameter, or grow the parameter
    # (C-level passes: the functional path calls this every step, over thousands of leaves)
    if any(map(operator.ne, map(_SHAPE, us), map(_SHAPE, ps))):
        i = next(i for i in idx if u_leaves[i].shape != p_leaves[i].shape)
        raise ValueError(f"the update of {leaf_names(params)[i]!r} has shape {tuple(u_leaves[i].shape)}, its "
                         f"parameter {tuple(p_leaves[i].shape)}: each update has the shape of its parameter")
    us = F.cast_like(us, ps)
    if inplace:
        with torch.no_grad():
            F.add(ps, us, inplace=True)
        return params
    out = list(p_leaves)
    for i, new in zip(idx, F.add(ps, us)):
        out[i] = new
    return tree_unflatten(out, treedef)


def incremental_update(new_tensors: Tree, old_tensors: Tree, step_size: float | torch.Tensor) -> Tree:
    """Polyak averaging of parameters: ``step_size * new + (1 - step_size) * old``, leafwise (optax).

    For a slowly moving copy of the parameters (a target network, an evaluation average):
    ``target = gx.incremental_update(params, target, 0.01)`` after each step. A ``None`` leaf
    of ``new_tensors`` stays ``None``. Pure: returns new tensors.
    (Polyak & Juditsky, 1992.)

    Example: ``ema_params = gx.incremental_update(params, ema_params, step_size=1e-3)``.
    """
    new_leaves, treedef = tree_flatten(new_tensors)
    old_leaves = flatten_up_to(old_tensors, treedef, "old_tensors", "new_tensors")
    out = [None if new is None else step_size * new + (1.0 - step_size) * old
           for new, old in zip(new_leaves, old_leaves)]
    return tree_unflatten(out, treedef)


def periodic_update(new_tensors: Tree, old_tensors: Tree, steps: int | torch.Tensor,
                    update_period: int | torch.Tensor) -> Tree:
    """``new_tensors`` when ``steps % update_period == 0``, else ``old_tensors`` (optax).

    A copy of the parameters refreshed every ``update_period`` steps (a DQN target network;
    Mnih et al., 2015). Returns one of the two trees itself, not a copy: clone it if the
    other will be changed in place.

    Example: ``target = gx.periodic_update(params, target, step, update_period=100)``.
    """
    return new_tensors if int(steps) % int(update_period) == 0 else old_tensors


class _ScaleGradient(torch.autograd.Function):
    generate_vmap_rule = True  # torch.func.vmap / grad work through it

    @staticmethod
    def forward(x, scale):
        return x.view_as(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.scale = inputs[1]

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


def scale_gradient(inputs: Tree, scale: float | torch.Tensor) -> Tree:
    """The identity on ``inputs`` in the forward pass; gradients flowing back through it are
    multiplied by ``scale`` (optax's ``scale_gradient``).

    This acts on autograd, not on an optimizer's updates: put it in the model or the loss
    (``head(gx.scale_gradient(features, 0.1))`` trains the layers below ``features`` with a
    tenth of the gradient from this head). gradtx's transforms are not differentiated through
    when they step, so inside an optimizer it changes nothing; it matters only where you
    differentiate through code that calls it (your loss, or an unrolled inner loop that
    uses ``torch.func``). ``scale = 0`` detaches; ``scale = 1`` returns ``inputs`` as they are.

    Example: ``y = gx.scale_gradient({"h": h}, 0.5)["h"]``.
    """
    if isinstance(scale, (int, float)) and scale == 1.0:
        return inputs
    if isinstance(scale, (int, float)) and scale == 0.0:
        return _tree_map_tensors(torch.Tensor.detach, inputs)
    return _tree_map_tensors(lambda x: _ScaleGradient.apply(x, scale), inputs)


def _tree_map_tensors(fn: Callable[[torch.Tensor], torch.Tensor], tree: Tree) -> Tree:
    leaves, treedef = tree_flatten(tree)
    return tree_unflatten([fn(x) if isinstance(x, torch.Tensor) else x for x in leaves], treedef)
