"""Wrappers: transforms that modify how another transform is applied.

Wrappers that decide at each step whether to run the inner transform (``multi_steps``,
``apply_every``, ``apply_if_finite``, ``conditionally_transform``, ``lookahead``) branch
in Python: their counters live on the CPU, so reading them costs no device sync
(``apply_if_finite`` reads one flag computed from the updates, which does).
"""

from __future__ import annotations

import collections
import inspect
import re
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import torch

from . import _foreach as F  # noqa: N812
from ._hparams import HPARAM_DTYPE, as_scalar, check, check_schedule, increment, is_schedule, new_count, to_state
from ._tree import (
    Tree,
    flatten_up_to,
    hyperparameters,
    tensor_leaves,
    tree_flatten,
    tree_l2_norm,
    tree_leaves,
    tree_map,
    tree_structure,
    tree_unflatten,
)
from .base import GradientTransformation, describe, is_leafwise, supports_inplace, transform, updater
from .transforms._common import need_params

__all__ = ["InjectHyperparamsState", "MultiStepsState", "ApplyEveryState", "ApplyIfFiniteState",
           "ConditionallyTransformState", "ConditionallyMaskState", "LookaheadState", "MultiSteps",
           "inject_hyperparams", "inject_stateful_hyperparams", "multi_steps", "skip_not_finite", "skip_large_updates",
           "apply_every", "apply_if_finite", "conditionally_transform", "conditionally_mask", "lookahead", "flatten"]


def _zeros_out(us: list[torch.Tensor], inplace: bool) -> list[torch.Tensor]:
    return [u.zero_() for u in us] if inplace else [torch.zeros_like(u) for u in us]


def _set_count(count: torch.Tensor, value: int, inplace: bool) -> torch.Tensor:
    return count.fill_(value) if inplace else torch.tensor(value, dtype=count.dtype, device=count.device)


# --- inject_hyperparams ---------------------------------------------------------------------


class InjectHyperparamsState(NamedTuple):
    """State of :func:`inject_hyperparams`: step count, hyperparameter tensors, inner state."""

    count: torch.Tensor  # int32, steps taken; schedules are evaluated at it
    hyperparams: Any  # name -> 0-dim tensor: the values used at the last step (write to change them)
    inner_state: Any


def _hyperparams_type(names: list[str]) -> type:
    # A NamedTuple rather than a dict: its fields are 0-dim tensors held directly in a
    # NamedTuple, which is where gx.Optimizer looks for hyperparameters to expose in
    # param_groups (so torch LR schedulers drive them); it still reads like optax's dict.
    base = collections.namedtuple("Hyperparams", names)

    class Hyperparams(base):
        """The injected hyperparameters: ``hp["lr"]`` or ``hp.lr``; ``hp["lr"].fill_(x)`` sets one."""

        __slots__ = ()

        def __getitem__(self, key):
            return getattr(self, key) if isinstance(key, str) else tuple.__getitem__(self, key)

        def __contains__(self, key):
            return key in self._fields

        def keys(self):
            return self._fields

        def values(self):
            return tuple(self)

        def items(self):
            return tuple(zip(self._fields, self))

        def __setitem__(self, key, value):
            raise TypeError(f"hyperparams are 0-dim tensors in the state: set one with "
                            f"state.hyperparams[{key!r}].fill_(value)")

    return Hyperparams


_INTEGER_ANNOTATION = re.compile(r"\b(int|bool)\b")


def _integer_params(signature: inspect.Signature) -> set[str]:
    # Parameters declared int or bool (annotation, or an int default) are structural: an
    # int value given for them stays a Python int, as optax keeps them static.
    names = set()
    for name, p in signature.parameters.items():
        annotation = "" if p.annotation is p.empty else (p.annotation if isinstance(p.annotation, str)
                                                         else repr(p.annotation))
        if _INTEGER_ANNOTATION.search(annotation) or (p.default is not p.empty and isinstance(p.default, int)):
            names.add(name)
    return names


def _is_static_int(value: Any) -> bool:
    if isinstance(value, int):
        return True
    return (isinstance(value, torch.Tensor) and value.dim() == 0
            and not value.is_floating_point() and not value.is_complex())


def _replace_leaves(tree: Tree, replacements: list[tuple[torch.Tensor, torch.Tensor]]) -> Tree:
    leaves, treedef = tree_flatten(tree)
    index = {id(x): i for i, x in enumerate(leaves) if isinstance(x, torch.Tensor)}
    for old, new in replacements:
        leaves[index[id(old)]] = new
    return tree_unflatten(leaves, treedef)


def _meta_like(tree: Tree) -> Tree:
    return tree_map(lambda x: torch.empty_like(x, device="meta") if isinstance(x, torch.Tensor) else x, tree)


def _sync_inner_hyperparameters(inner: GradientTransformation, inner_state: Any, like: Tree, inplace: bool) -> Any:
    """Write the hyperparameters ``inner`` was built with into ``inner_state``.

    gradtx transforms keep numeric hyperparameters in their state (``scale_by_lr`` keeps
    ``lr``) and read them from there, so rebuilding the inner transform is not enough:
    the hyperparameter leaves of a fresh ``init`` (on meta tensors: no memory) replace the
    ones in the state, position by position.
    """
    current = hyperparameters(inner_state)
    if not current:
        return inner_state
    try:
        fresh = hyperparameters(inner.init(_meta_like(like)))
    except (NotImplementedError, RuntimeError):  # an init that reads values needs real tensors
        fresh = hyperparameters(inner.init(like))
    if len(fresh) != len(current):
        raise ValueError(f"inject_hyperparams: the inner transform's state holds {len(current)} hyperparameters "
                         f"but a fresh one {len(fresh)}; a hyperparameter changes the state's structure, so pass "
                         "it in static_args")
    pairs = [(old, new) for (_, old), (_, new) in zip(current, fresh)
             if new.device.type != "meta" and old is not new]
    if inplace:
        for old, new in pairs:
            old.copy_(new)
        return inner_state
    return _replace_leaves(inner_state, pairs)


def inject_hyperparams(inner_factory: Callable[..., GradientTransformation], static_args: str | Iterable[str] = (),
                       hyperparam_dtype: torch.dtype | None = None) -> Callable[..., GradientTransformation]:
    """Make the numeric arguments of ``inner_factory`` state that can be read, set or scheduled.

    ``gx.inject_hyperparams(gx.adam)(lr=1e-3)`` builds a transform whose state is
    ``InjectHyperparamsState(count, hyperparams, inner_state)``: ``hyperparams`` maps every
    numeric argument (float, int given for a non-integer argument, 0-dim tensor) to a 0-dim
    tensor (float64 for numbers, or ``hyperparam_dtype``), and every schedule argument to
    its value at the current step; it reads like optax's dict (``hyperparams["lr"]``,
    ``.items()``) but is a NamedTuple of tensors. Each update rebuilds the inner transform
    from these values, so ``state.hyperparams["lr"].fill_(1e-4)`` between steps changes the
    learning rate (functionally: ``state._replace(hyperparams=state.hyperparams._replace(lr=x))``),
    while a scheduled value is recomputed from ``count`` (writing it has no effect).
    Bools, ``None``, dtypes, transforms, ``int`` values of arguments declared
    ``int``/``bool`` and the names in ``static_args`` stay as given; other callables are
    schedules unless named in ``static_args``.

    Under ``gx.Optimizer`` the hyperparameters appear in ``param_groups`` (``lr`` ...), so
    torch LR schedulers drive them.

    ``gx.inject_stateful_hyperparams`` is this same function (optax 0.2.8 deprecates it in
    favour of ``inject_hyperparams``). optax's ``StatefulSchedule`` objects (``init``/``update``
    methods and a state of their own) are not taken: a schedule here is a function of the
    step count only.

    Example::

        tx = gx.inject_hyperparams(gx.adam)(lr=gx.cosine_decay_schedule(1e-3, 1000), b1=0.9)
        state = tx.init(params)
        state.hyperparams["b1"].fill_(0.8)   # used from the next update on
    """
    if not callable(inner_factory):
        raise ValueError(f"inner_factory must be a callable returning a GradientTransformation, got {inner_factory!r}")
    static = {static_args} if isinstance(static_args, str) else set(static_args)
    signature = inspect.signature(inner_factory)
    if not static <= set(signature.parameters):
        raise ValueError(f"static_args must name parameters of {getattr(inner_factory, '__name__', inner_factory)}"
                         f" ({sorted(signature.parameters)}), got {sorted(static)}")
    integer_params = _integer_params(signature)
    dtype = hyperparam_dtype or HPARAM_DTYPE
    factory_name = getattr(inner_factory, "__name__", type(inner_factory).__name__)

    def wrapped(*args: Any, **kwargs: Any) -> GradientTransformation:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        numeric: dict[str, Any] = {}
        schedules: dict[str, Callable] = {}
        other: dict[str, Any] = {}
        for name, value in bound.arguments.items():
            value = as_scalar(value)  # a 1-element tensor is a 0-dim hyperparameter
            kind = signature.parameters[name].kind
            if (kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD) or name in static
                    or isinstance(value, bool)):
                other[name] = value
            elif name in integer_params and _is_static_int(value):
                other[name] = int(value)
            elif is_schedule(value):
                check_schedule(name, value)
                schedules[name] = value
            elif isinstance(value, (int, float)) or (isinstance(value, torch.Tensor) and value.dim() == 0):
                numeric[name] = value
            else:
                other[name] = value
        order = list(signature.parameters)
        hp_names = [n for n in order if n in numeric or n in schedules]
        hp_type = _hyperparams_type(hp_names)

        def as_state(value: Any) -> torch.Tensor:
            if isinstance(value, torch.Tensor):
                return to_state(value)
            return torch.tensor(float(value), dtype=dtype)

        def scheduled(value: Any) -> torch.Tensor:
            return torch.as_tensor(value).to(dtype)

        def build(hparams: dict[str, Any]) -> GradientTransformation:
            merged = {**other, **hparams}
            call = inspect.BoundArguments(signature, {n: merged[n] for n in order if n in merged})
            return inner_factory(*call.args, **call.kwargs)

        def initial(count: torch.Tensor) -> dict[str, torch.Tensor]:
            hparams = {**{k: as_state(v) for k, v in numeric.items()},
                       **{k: scheduled(f(count)) for k, f in schedules.items()}}
            return {n: hparams[n] for n in hp_names}

        # bad values raise ValueError now, naming the argument
        example = build(initial(new_count()))
        declared, leafwise = supports_inplace(example), is_leafwise(example)

        def init(params):
            count = new_count()
            hparams = initial(count)
            return InjectHyperparamsState(count, hp_type(**hparams), build(hparams).init(params))

        def update(updates, state, params=None, *, inplace=False, **extra_args):
            hparams = {}
            for name, value in state.hyperparams.items():
                if name in schedules:
                    new = scheduled(schedules[name](state.count))
                    value = value.copy_(new) if inplace and isinstance(value, torch.Tensor) else new
                elif not isinstance(value, torch.Tensor):  # a number put in with hyperparams._replace(name=x)
                    value = torch.tensor(float(value), dtype=dtype)
                hparams[name] = value
            inner = build(hparams)
            inner_state = _sync_inner_hyperparameters(inner, state.inner_state, updates, inplace)
            updates, inner_state = updater(inner)(updates, inner_state, params, inplace, extra_args)
            return updates, InjectHyperparamsState(increment(state.count, inplace), hp_type(**hparams), inner_state)

        shown = ", ".join(f"{k}={v!r}" if not callable(v) else f"{k}={getattr(v, '__name__', 'fn')}"
                          for k, v in bound.arguments.items() if k in kwargs or k in list(order)[:len(args)])
        return describe(GradientTransformation(init, update), f"inject_hyperparams({factory_name})({shown})",
                        leafwise=leafwise, inplace=declared, recipe=(wrapped, args, kwargs))

    wrapped.__name__ = f"inject_hyperparams({factory_name})"
    # how to make this factory again (pickling rebuilds from recipes, see gradtx.optim.pickling)
    wrapped.recipe = (inject_hyperparams, (inner_factory, tuple(sorted(static)), hyperparam_dtype), {})
    wrapped.__doc__ = inner_factory.__doc__
    return wrapped


inject_stateful_hyperparams = inject_hyperparams  # optax's deprecated spelling, the same function


# --- multi_steps ------------------------------------------------------------------------------


class MultiStepsState(NamedTuple):
    """State of :func:`multi_steps`: mini-step and gradient-step counters, inner state, accumulator."""

    mini_step: torch.Tensor  # int32, mini-steps accumulated in the current gradient step
    gradient_step: torch.Tensor  # int32, inner steps taken
    inner_opt_state: Any
    acc_grads: Tree  # running mean (or sum) of this gradient step's mini-step gradients
    skip_state: Any = ()  # what should_skip_update_fn returned last


def skip_not_finite(updates: Tree, gradient_step: torch.Tensor, params: Tree | None):
    """``should_skip_update_fn`` for :func:`multi_steps`: skip mini-steps whose updates hold
    an inf or NaN. Returns ``(skip, {"should_skip", "num_not_finite"})``.

    Example: ``gx.multi_steps(gx.adam(1e-3), 4, should_skip_update_fn=gx.skip_not_finite)``.
    """
    del gradient_step, params
    leaves = [u for u in tree_leaves(updates) if isinstance(u, torch.Tensor)]
    count = sum((torch.count_nonzero(~torch.isfinite(u)).cpu() for u in leaves), torch.zeros((), dtype=torch.int64))
    skip = count > 0
    return skip, {"should_skip": skip, "num_not_finite": count}


def skip_large_updates(updates: Tree, gradient_step: torch.Tensor, params: Tree | None, max_squared_norm: float):
    """``should_skip_update_fn`` for :func:`multi_steps` (bind ``max_squared_norm`` with
    ``functools.partial``): skip when ``||u||^2`` is not below it (NaN included).
    Returns ``(skip, {"should_skip", "norm_squared"})``.

    Example: ``gx.multi_steps(tx, 4, should_skip_update_fn=functools.partial(gx.skip_large_updates,
    max_squared_norm=1e6))``.
    """
    del gradient_step, params
    norm_sq = tree_l2_norm(updates, squared=True).cpu()
    skip = torch.logical_not(norm_sq < max_squared_norm)
    return skip, {"should_skip": skip, "norm_squared": norm_sq}


@transform(leafwise=lambda args: is_leafwise(args["opt"]) and args["should_skip_update_fn"] is None,
           inplace=lambda args: supports_inplace(args["opt"]))
def multi_steps(opt: GradientTransformation, every_k_schedule: int | Callable[[torch.Tensor], Any],
                use_grad_mean: bool = True, should_skip_update_fn: Callable | None = None,
                accumulator_dtype: torch.dtype | None = None) -> GradientTransformation:
    """Accumulate ``k`` mini-step gradients, then take one step of ``opt`` (optax's ``MultiSteps``).

    On mini-steps ``1..k-1`` the updates are zero and ``acc <- acc + (g - acc) / n`` (the
    running mean; the sum when ``use_grad_mean=False``); on the ``k``-th ``opt`` runs on
    ``acc`` (cast to the gradient's dtype), its updates are returned and ``acc`` restarts.
    ``k = every_k_schedule(gradient_step)`` may vary. ``should_skip_update_fn(updates,
    gradient_step, params) -> (bool, skip_state)`` drops a mini-step entirely (zero updates,
    state unchanged but ``skip_state``); see :func:`skip_not_finite`, :func:`skip_large_updates`.
    A step was applied when ``state.mini_step == 0 and state.gradient_step > 0``.

    The accumulator is ``accumulator_dtype``, by default the gradient's dtype widened to at
    least float32 (optax: always float32).

    Example: ``gx.multi_steps(gx.adam(1e-3), every_k_schedule=4)``.
    """
    if isinstance(every_k_schedule, bool) or not (isinstance(every_k_schedule, int) or is_schedule(every_k_schedule)):
        raise ValueError(f"every_k_schedule must be an int >= 1 or a callable step -> int, got {every_k_schedule!r}")
    if isinstance(every_k_schedule, int):
        check("every_k_schedule", every_k_schedule, low=1)

    def acc_dtype(x: torch.Tensor) -> torch.dtype:
        return accumulator_dtype or torch.promote_types(x.dtype, torch.float32)

    def k_at(step: torch.Tensor) -> int:
        k = every_k_schedule(step) if callable(every_k_schedule) else every_k_schedule
        k = int(k)
        if k < 1:
            raise ValueError(f"every_k_schedule must give k >= 1, gave {k} at gradient step {int(step)}")
        return k

    if is_schedule(every_k_schedule):
        check_schedule("every_k_schedule", every_k_schedule)
        k_at(new_count())  # k >= 1 at the first gradient step, or the error now

    run_opt = updater(opt)

    def init(params):
        ps, treedef = tensor_leaves(params)
        acc = tree_unflatten([torch.zeros_like(p, dtype=acc_dtype(p)) for p in ps], treedef)
        gradient_step = new_count()
        skip_state = ()
        if should_skip_update_fn is not None:
            _, skip_state = should_skip_update_fn(tree_map(torch.zeros_like, params), gradient_step, params)
        return MultiStepsState(new_count(), gradient_step, opt.init(params), acc, skip_state)

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        us, treedef = tensor_leaves(updates)
        skip_state = state.skip_state
        if should_skip_update_fn is not None:
            skip, skip_state = should_skip_update_fn(updates, state.gradient_step, params)
            skip = torch.as_tensor(skip)
            if skip.dtype != torch.bool or skip.dim() != 0:
                raise ValueError("should_skip_update_fn must return a 0-dim bool tensor first, got dtype "
                                 f"{skip.dtype} and shape {tuple(skip.shape)}")
            if bool(skip):
                zeros = _zeros_out(us, inplace)
                return tree_unflatten(zeros, treedef), state._replace(skip_state=skip_state)
        k = k_at(state.gradient_step)
        mini = int(state.mini_step)
        accs = flatten_up_to(state.acc_grads, treedef)
        gs = [u if u.dtype == a.dtype else u.to(a.dtype) for u, a in zip(us, accs)]
        if use_grad_mean:
            accs = F.lerp(accs, gs, 1.0 / (mini + 1), inplace=inplace)
        else:
            accs = F.add(accs, gs, inplace=inplace)
        if mini != k - 1:
            out = _zeros_out(us, inplace)
            new_state = MultiStepsState(_set_count(state.mini_step, (mini + 1) % k, inplace), state.gradient_step,
                                        state.inner_opt_state, tree_unflatten(accs, treedef), skip_state)
            return tree_unflatten(out, treedef), new_state
        # Emit: the inner transform may overwrite what it is given, so in place it gets the
        # caller's update buffers (holding the mean), never the accumulator.
        if inplace:
            mean = F.copy_(us, accs)
        else:
            mean = [a if a.dtype == u.dtype else a.to(u.dtype) for a, u in zip(accs, us)]
        out, inner_state = run_opt(tree_unflatten(mean, treedef), state.inner_opt_state, params, inplace, extra_args)
        accs = _zeros_out(accs, inplace)
        new_state = MultiStepsState(_set_count(state.mini_step, (mini + 1) % k, inplace),
                                    increment(state.gradient_step, inplace), inner_state,
                                    tree_unflatten(accs, treedef), skip_state)
        return out, new_state

    return GradientTransformation(init, update)


class MultiSteps:
    """optax's class spelling of :func:`multi_steps`: ``MultiSteps(opt, k).gradient_transformation()``.

    The instance has ``init`` and ``update`` itself, like optax's; ``has_updated(state)``
    says whether the last ``update`` applied ``opt`` (``mini_step == 0`` and
    ``gradient_step > 0``). The arguments are those of :func:`multi_steps`.

    Example: ``tx = gx.MultiSteps(gx.adam(1e-3), every_k_schedule=4).gradient_transformation()``.
    """

    def __init__(self, opt: GradientTransformation, every_k_schedule: int | Callable[[torch.Tensor], Any],
                 use_grad_mean: bool = True, should_skip_update_fn: Callable | None = None,
                 accumulator_dtype: torch.dtype | None = None):
        self._tx = multi_steps(opt, every_k_schedule, use_grad_mean, should_skip_update_fn, accumulator_dtype)
        self.init = self._tx.init
        self.update = self._tx.update

    @staticmethod
    def has_updated(state: MultiStepsState) -> torch.Tensor:
        """A 0-dim bool tensor: did the last ``update`` take a step of the inner optimizer?"""
        return torch.logical_and(state.mini_step == 0, state.gradient_step > 0)

    def gradient_transformation(self) -> GradientTransformation:
        """The transform itself (the same as ``gx.multi_steps(...)`` with these arguments)."""
        return self._tx


# --- apply_every --------------------------------------------------------------------------------


class ApplyEveryState(NamedTuple):
    """State of :func:`apply_every`: step count modulo ``k`` and the running sum."""

    count: torch.Tensor  # int32, steps taken modulo k (as optax)
    grad_acc: Tree  # sum of the updates since the last emitted step


@transform(leafwise=True, inplace=True)
def apply_every(k: int = 1) -> GradientTransformation:
    """Sum updates over ``k`` steps and emit the sum every ``k``-th step, zeros otherwise.

    With ``c = count % k``: ``acc <- u`` if ``c == 0`` else ``acc + u``; ``u <- acc`` if
    ``c == k - 1`` else ``0`` (optax). Transforms before it in a chain still update their
    state every step; :func:`multi_steps` accumulates before the whole optimizer instead.

    Example: ``gx.chain(gx.apply_every(4), gx.scale_by_lr(1e-2))``.
    """
    if isinstance(k, bool) or not isinstance(k, int):
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    check("k", k, low=1)

    def init(params):
        return ApplyEveryState(new_count(), tree_map(torch.zeros_like, params))

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del params, extra_args
        us, treedef = tensor_leaves(updates)
        accs = flatten_up_to(state.grad_acc, treedef)
        c = int(state.count) % k
        if c == 0:
            accs = F.copy_(accs, us) if inplace else [u.to(a.dtype, copy=True) for u, a in zip(us, accs)]
        else:
            accs = F.add(accs, F.cast_like(us, accs), inplace=inplace)
        if c == k - 1:
            # never hand out the accumulator itself: the caller may write into its updates
            out = F.copy_(us, accs) if inplace else [a.to(u.dtype, copy=True) for a, u in zip(accs, us)]
        else:
            out = _zeros_out(us, inplace)
        return tree_unflatten(out, treedef), ApplyEveryState(_set_count(state.count, (c + 1) % k, inplace),
                                                             tree_unflatten(accs, treedef))

    return GradientTransformation(init, update)


# --- apply_if_finite ------------------------------------------------------------------------------


class ApplyIfFiniteState(NamedTuple):
    """State of :func:`apply_if_finite`: non-finite step counters and the inner state."""

    notfinite_count: torch.Tensor  # int32, consecutive steps with an inf or NaN update (0 after a finite one)
    last_finite: torch.Tensor  # bool, whether the last step's updates were finite
    total_notfinite: torch.Tensor  # int32, steps with an inf or NaN update since init
    inner_state: Any


def _all_finite(us: list[torch.Tensor]) -> bool:
    if not us:
        return True
    device = us[0].device
    return bool(torch.stack([torch.isfinite(u).all().to(device) for u in us]).all())


@transform(inplace=lambda args: supports_inplace(args["inner"]))
def apply_if_finite(inner: GradientTransformation, max_consecutive_errors: int) -> GradientTransformation:
    """Skip steps whose incoming updates hold an inf or NaN (optax).

    A non-finite step returns zero updates and leaves ``inner``'s state untouched, unless
    more than ``max_consecutive_errors`` non-finite steps came in a row: then ``inner`` runs
    anyway. ``ApplyIfFiniteState`` counts consecutive and total non-finite steps. Reading
    the finiteness flag syncs with the device once per step.

    Example: ``gx.apply_if_finite(gx.adam(1e-3), max_consecutive_errors=5)``.
    """
    if isinstance(max_consecutive_errors, bool) or not isinstance(max_consecutive_errors, int):
        raise ValueError(f"max_consecutive_errors must be an int >= 0, got {max_consecutive_errors!r}")
    check("max_consecutive_errors", max_consecutive_errors, low=0)

    run_inner = updater(inner)

    def init(params):
        return ApplyIfFiniteState(new_count(), torch.tensor(True), new_count(), inner.init(params))

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        us, treedef = tensor_leaves(updates)
        finite = _all_finite(us)
        notfinite = 0 if finite else int(state.notfinite_count) + 1
        if finite or notfinite > max_consecutive_errors:
            updates, inner_state = run_inner(updates, state.inner_state, params, inplace, extra_args)
        else:
            updates, inner_state = tree_unflatten(_zeros_out(us, inplace), treedef), state.inner_state
        total = state.total_notfinite if finite else increment(state.total_notfinite, inplace)
        last = state.last_finite.fill_(finite) if inplace else torch.tensor(finite)
        return updates, ApplyIfFiniteState(_set_count(state.notfinite_count, notfinite, inplace), last, total,
                                           inner_state)

    return GradientTransformation(init, update)


# --- conditionally_transform ------------------------------------------------------------------------


class ConditionallyTransformState(NamedTuple):
    """State of :func:`conditionally_transform`: the inner state and the step count."""

    inner_state: Any
    step: torch.Tensor  # int32, calls to update so far


@transform(leafwise=lambda args: is_leafwise(args["inner"]), inplace=lambda args: supports_inplace(args["inner"]))
def conditionally_transform(inner: GradientTransformation, should_transform_fn: Callable[..., Any],
                            forward_extra_args: bool = False) -> GradientTransformation:
    """Run ``inner`` only at steps where ``should_transform_fn(step)`` is true (optax).

    At other steps the updates and ``inner``'s state pass through unchanged. ``step``
    counts calls to ``update`` from 0; with ``forward_extra_args`` the extra arguments
    (``value``, ...) are passed to ``should_transform_fn`` too.

    Example: ``gx.conditionally_transform(gx.clip_by_global_norm(1.0), lambda step: step >= 100)``.
    """
    if not is_schedule(should_transform_fn):
        raise ValueError(f"should_transform_fn must be a callable step -> bool, got {should_transform_fn!r}")

    run_inner = updater(inner)

    def init(params):
        return ConditionallyTransformState(inner.init(params), new_count())

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        tensor_leaves(updates)  # a None leaf is refused on every step, not only on transformed ones
        condition_args = extra_args if forward_extra_args else {}
        if bool(should_transform_fn(state.step, **condition_args)):
            updates, inner_state = run_inner(updates, state.inner_state, params, inplace, extra_args)
        else:
            inner_state = state.inner_state
        return updates, ConditionallyTransformState(inner_state, increment(state.step, inplace))

    return GradientTransformation(init, update)


class ConditionallyMaskState(NamedTuple):
    """State of :func:`conditionally_mask`: the step count and the inner state."""

    step: torch.Tensor  # int32, calls to update so far
    inner_state: Any


@transform(leafwise=lambda args: is_leafwise(args["inner"]), inplace=lambda args: supports_inplace(args["inner"]))
def conditionally_mask(inner: GradientTransformation, should_transform_fn: Callable[..., Any],
                       forward_extra_args: bool = False) -> GradientTransformation:
    """Run ``inner`` where ``should_transform_fn(step)`` is true; elsewhere return zeros (optax).

    ``u <- inner(u)`` at those steps, else ``u <- 0`` with ``inner``'s state unchanged;
    ``step`` counts calls to ``update`` from 0. :func:`conditionally_transform` passes the
    updates through instead of zeroing them. With ``forward_extra_args`` the extra
    arguments (``value``, ...) go to ``should_transform_fn`` too. The step is read on the CPU
    (``bool(...)``), as in :func:`conditionally_transform`.

    Example: ``gx.conditionally_mask(gx.adam(1e-3), lambda step: step % 2 == 0)`` steps every other call.
    """
    if not is_schedule(should_transform_fn):
        raise ValueError(f"should_transform_fn must be a callable step -> bool, got {should_transform_fn!r}")

    run_inner = updater(inner)

    def init(params):
        return ConditionallyMaskState(new_count(), inner.init(params))

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        us, treedef = tensor_leaves(updates)
        condition_args = extra_args if forward_extra_args else {}
        if bool(should_transform_fn(state.step, **condition_args)):
            updates, inner_state = run_inner(updates, state.inner_state, params, inplace, extra_args)
        else:
            updates, inner_state = tree_unflatten(_zeros_out(us, inplace), treedef), state.inner_state
        return updates, ConditionallyMaskState(increment(state.step, inplace), inner_state)

    return GradientTransformation(init, update)


# --- lookahead -------------------------------------------------------------------------------------


class LookaheadState(NamedTuple):
    """State of :func:`lookahead`: fast optimizer state, sync counter, slow step size, slow weights."""

    fast_state: Any  # the fast optimizer's state
    steps_since_sync: torch.Tensor  # int32, fast steps since the last synchronisation
    slow_step_size: torch.Tensor  # 0-dim; exposed by the adapter as param_groups[i]['slow_step_size']
    slow: Tree  # the slow parameters, shaped like params


@transform(leafwise=lambda args: is_leafwise(args["fast_optimizer"]),
           inplace=lambda args: supports_inplace(args["fast_optimizer"]))
def lookahead(fast_optimizer: GradientTransformation, sync_period: int, slow_step_size: float | torch.Tensor,
              reset_state: bool = False) -> GradientTransformation:
    """Lookahead (Zhang et al., 2019, "Lookahead Optimizer: k steps forward, 1 step back").

    The params are the fast weights; the slow weights live in the state (``state.slow``,
    a copy of params at ``init``). Each step ``u <- fast_optimizer(u)``; every
    ``sync_period``-th step also ``slow <- slow + slow_step_size * (p + u - slow)`` and
    ``u <- slow - p``, so the params land on the new slow weights. With ``reset_state`` the
    fast optimizer's state is re-initialised at each synchronisation.

    optax keeps the slow weights in the params (``LookaheadParams(fast, slow)``); here the
    params are the model's own tensors, so read the slow weights from the state:
    ``gx.tree_get(state, "slow")`` functionally, or ``opt.state[p]`` (the path ending in
    ``.slow``) under ``gx.Optimizer``. The params equal the slow weights right after each
    synchronisation, which is where to evaluate.

    Example: ``gx.lookahead(gx.adam(1e-3), sync_period=6, slow_step_size=0.5)``.
    """
    if isinstance(sync_period, bool) or not isinstance(sync_period, int):
        raise ValueError(f"sync_period must be an int >= 1, got {sync_period!r}")
    check("sync_period", sync_period, low=1)
    check("slow_step_size", slow_step_size, low=0.0, high=1.0)

    run_fast = updater(fast_optimizer)

    def init(params):
        return LookaheadState(fast_optimizer.init(params), new_count(), to_state(slow_step_size),
                              tree_map(lambda p: p.detach().clone(), params))

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        need_params("lookahead", params)
        updates, fast_state = run_fast(updates, state.fast_state, params, inplace, extra_args)
        since = int(state.steps_since_sync)
        steps = _set_count(state.steps_since_sync, (since + 1) % sync_period, inplace)
        if since != sync_period - 1:
            return updates, LookaheadState(fast_state, steps, state.slow_step_size, state.slow)
        us, treedef = tensor_leaves(updates)
        ps = [p.detach() if inplace else p for p in flatten_up_to(params, treedef, "params")]
        slows = flatten_up_to(state.slow, treedef)
        reached = F.add(ps, F.cast_like(us, ps))  # the fast weights after this step
        slows = F.lerp(slows, reached, state.slow_step_size, inplace=inplace)
        step_to_slow = F.sub(slows, ps)
        out = F.copy_(us, step_to_slow) if inplace else F.cast_like(step_to_slow, us)
        if reset_state:  # optax re-initialises from the params given to this step
            fast_state = fast_optimizer.init(params)
        return tree_unflatten(out, treedef), LookaheadState(fast_state, steps, state.slow_step_size,
                                                            tree_unflatten(slows, treedef))

    return GradientTransformation(init, update)


# --- flatten ----------------------------------------------------------------------------------------


def _concat(leaves: list[torch.Tensor]) -> torch.Tensor:
    # a complex leaf joins as its real and imaginary parts (torch.optim's view of it), so the
    # vector is real and a real leaf beside a complex one is not made complex
    if not leaves:
        return torch.zeros(0)
    return torch.cat([x.reshape(-1) for x in F.as_real(leaves)])


def _split(flat: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    """``flat`` cut into pieces shaped like ``like`` (real views for complex ones), each back
    in its tensor's dtype."""
    reals = F.as_real(like)
    pieces = torch.split(flat, [x.numel() for x in reals]) if like else []
    shaped = [piece.reshape(r.shape).to(r.dtype) for piece, r in zip(pieces, reals)]
    return F.as_complex_like([s.contiguous() for s in shaped], like)


@transform(inplace=lambda args: supports_inplace(args["inner"]))
def flatten(inner: GradientTransformation) -> GradientTransformation:
    """Run ``inner`` on one vector: all leaves flattened and concatenated (optax).

    ``u <- split(inner(concat(u)))``; ``inner``'s state is over the concatenated vector
    (leaves of mixed dtypes are promoted to a common one; updates keep each leaf's dtype).
    Extra arguments with the updates' structure (``grad``) are concatenated too, and
    ``value_fn`` is called with params rebuilt from the vector.

    Under ``gx.Optimizer`` the state is one vector per param group, so every parameter of
    the group must have a gradient at every step (it is not per-parameter state).

    Example: ``gx.flatten(gx.adam(1e-3))``.
    """

    run_inner = updater(inner)

    def init(params):
        return inner.init(_concat(tensor_leaves(params)[0]))

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        us, treedef = tensor_leaves(updates)
        flat_params = None if params is None else _concat(flatten_up_to(params, treedef, "params"))
        extra = {}
        for key, value in extra_args.items():
            if key == "value_fn" and callable(value) and params is not None:
                value = _unflattening(value, flatten_up_to(params, treedef, "params"), treedef)
            elif not treedef.is_leaf() and tree_structure(value) == treedef:
                value = _concat(treedef.flatten_up_to(value))
            extra[key] = value
        flat = _concat(us)
        _check_flat_size(flat.numel(), state)
        # the concatenated vector is ours, so the inner transform may always write into it
        flat_out, state = run_inner(flat, state, flat_params, inplace, extra)
        shaped = _split(flat_out, us)
        out = F.copy_(us, shaped) if inplace else shaped
        return tree_unflatten(out, treedef), state

    return GradientTransformation(init, update)


def _check_flat_size(size: int, state: Any) -> None:
    """Raise ``ValueError`` saying why when the updates' vector is not the one the inner state
    was built for (its largest 1-d tensor, the per-element state), rather than a shape error
    deep in the inner transform."""
    built = max((x.numel() for x in tree_leaves(state) if isinstance(x, torch.Tensor) and x.dim() == 1), default=None)
    if built is not None and built > 1 and built != size:
        raise ValueError(
            f"flatten: the updates hold {size} elements but the state was built for {built} (the leaves given "
            "to init): flatten keeps one state vector over all leaves, so every leaf needs an update at every step. "
            "Under gx.Optimizer every parameter of the group must have a gradient at every step (a parameter whose "
            ".grad is None is skipped): set its .grad to zeros instead")


def _unflattening(value_fn: Callable, like: list[torch.Tensor], treedef) -> Callable:
    def flat_value_fn(flat: torch.Tensor):
        return value_fn(tree_unflatten(_split(flat, like), treedef))

    return flat_value_fn
