"""``pickle``, ``copy.deepcopy`` and ``torch.save`` of a ``gx.Optimizer``.

A chain is made of closures, which pickle cannot store; but every built-in transform
remembers how it was built: ``@gx.transform`` records ``recipe = (constructor, args,
kwargs)`` on what it returns, as do ``chain``, ``named_chain``, ``stateless``,
``inject_hyperparams`` and the schedules. An optimizer is pickled as

- the chain's *recipe*: its constructor calls, nested (the arguments of an alias, the
  members of a chain, a schedule given as ``lr``), each constructor stored by reference;
- its param groups' parameters (and ``param_names``), pickled as tensors, so a model saved
  in the same file shares them;
- ``self.state_dict()``, and the constructor's options (``fast``, ``compile``).

Loading builds the chain again from the recipe, then the optimizer with its constructor,
then calls ``load_state_dict``: it continues exactly as the original would have. What the
optimizer keeps besides (hooks, caches) is not stored, as ``torch.optim`` does not store hooks.

A chain that cannot be rebuilt (a lambda or nested function anywhere in it: ``stateless(
lambda u, p: u)``, a user's ``GradientTransformation(init, update)`` of closures, a mask
given as a lambda) is refused when pickled, with :class:`NotRebuildableError` naming the
transform and its argument: the file would otherwise be written and never load.
``copy.deepcopy`` needs no file, so there such parts are shared with the copy, as
``deepcopy`` shares functions; everything else (parameters, state, tensor arguments) is
copied, and stepping the copy leaves the original untouched.
"""

from __future__ import annotations

import copy
import functools
import inspect
import pickle
import sys
from typing import Any

import torch

from ..base import GradientTransformation

__all__ = ["NotRebuildableError", "deepcopy", "getstate", "setstate"]

_VERSION = 1
# values stored as they are: pickle and deepcopy handle them
_ATOMS = (type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device, torch.Tensor,
          type(Ellipsis))


class NotRebuildableError(ValueError, pickle.PicklingError):
    """A ``gx.Optimizer`` whose chain cannot be built again was asked to be pickled."""


class _Call:
    """A constructor call to make again at load time: ``fn(*args, **kwargs)``."""

    __slots__ = ("fn", "args", "kwargs")

    def __init__(self, fn: Any, args: tuple, kwargs: dict) -> None:
        self.fn, self.args, self.kwargs = fn, args, kwargs

    def __getstate__(self) -> tuple:
        return self.fn, self.args, self.kwargs

    def __setstate__(self, state: tuple) -> None:
        self.fn, self.args, self.kwargs = state


class _Shared:
    """A part ``copy.deepcopy`` gives the copy as it is (functions, closures)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __deepcopy__(self, memo: dict) -> _Shared:
        return self


def _short(tx: Any) -> str:
    """A transform's repr on one line: an alias as it was called (``adamw(lr=0.001)``)."""
    text = repr(tx).split(" = ", 1)[0]
    first = text.split("\n", 1)[0]
    return first + (" ...)" if "\n" in text else "")


def _importable(obj: Any) -> bool:
    """Whether pickle can store ``obj`` by reference: a module-level name that is ``obj``."""
    module = sys.modules.get(getattr(obj, "__module__", None) or "")
    qualname = getattr(obj, "__qualname__", None)
    if module is None or not isinstance(qualname, str) or "<" in qualname:  # <lambda>, <locals>
        return False
    target: Any = module
    for part in qualname.split("."):
        target = getattr(target, part, None)
    return target is obj


def _positional_names(fn: Any, count: int) -> list[str]:
    """The names of ``fn``'s first ``count`` positional arguments (``transforms[1]`` for
    the second of ``*transforms``), for error messages; their indices when unknown."""
    names: list[str] = []
    try:
        parameters = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        parameters = []
    for p in parameters:
        if p.kind is inspect.Parameter.VAR_POSITIONAL:
            names.extend(f"{p.name}[{i}]" for i in range(count - len(names)))
        elif p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD):
            names.append(p.name)
    return (names + [str(i) for i in range(len(names), count)])[:count]


def _recipe(obj: Any) -> tuple | None:
    recipe = getattr(obj, "__dict__", {}).get("recipe")
    if isinstance(recipe, tuple) and len(recipe) == 3 and callable(recipe[0]):
        return recipe
    return None


class _Encoder:
    """Turns a chain into nested :class:`_Call` and plain values. ``strict``: refuse what
    cannot be pickled (pickle); otherwise keep it as :class:`_Shared` (deepcopy)."""

    def __init__(self, strict: bool) -> None:
        self.strict = strict

    def refuse(self, where: str, why: str) -> None:
        raise NotRebuildableError(
            f"cannot pickle this gx.Optimizer: {where} {why}, so its chain could not be built again when "
            "loaded. Use functions defined at module level (not lambdas or nested functions), or save "
            "opt.state_dict() and rebuild the optimizer in code.")

    def encode(self, value: Any, where: str) -> Any:
        if isinstance(value, _ATOMS):
            return value
        recipe = _recipe(value)
        if recipe is not None:  # a built-in transform, chain, schedule, inject_hyperparams factory
            fn, args, kwargs = recipe
            name = _short(value) if isinstance(value, GradientTransformation) else getattr(fn, "__name__", repr(fn))
            names = _positional_names(fn, len(args))
            return _Call(self.callable(fn, f"the constructor of {name}"),
                         tuple(self.encode(a, f"{name}, argument {n}") for n, a in zip(names, args)),
                         {k: self.encode(v, f"{name}, argument {k}") for k, v in kwargs.items()})
        if isinstance(value, GradientTransformation):
            # a user's (init, update) pair: stored as its functions, when pickle can store them
            if type(value) is GradientTransformation:
                shown = _short(value)
                return _Call(GradientTransformation, (self.callable(value.init, f"{where}: init of {shown}"),
                                                      self.callable(value.update, f"{where}: update of {shown}")), {})
            return self.opaque(value, f"{where}: the transform {_short(value)}",
                               "was not built by a @gx.transform constructor")
        if isinstance(value, functools.partial):
            return _Call(functools.partial, (self.callable(value.func, where),
                                             *(self.encode(a, where) for a in value.args)),
                         {k: self.encode(v, where) for k, v in value.keywords.items()})
        if type(value) in (tuple, list):
            return type(value)(self.encode(x, where) for x in value)
        if type(value) is dict:
            return {k: self.encode(v, where) for k, v in value.items()}
        if isinstance(value, tuple) and hasattr(value, "_fields"):  # a NamedTuple
            return _Call(self.callable(type(value), where), tuple(self.encode(x, where) for x in value), {})
        if callable(value):
            return self.callable(value, where)
        if self.strict:
            try:
                pickle.dumps(value)
            except Exception as error:  # noqa: BLE001 - any failure means the same to the user
                self.refuse(where, f"holds {type(value).__name__} {value!r}, which cannot be pickled ({error})")
        return value

    def callable(self, fn: Any, where: str) -> Any:
        if _importable(fn):
            return fn
        recipe = _recipe(fn)
        if recipe is not None:
            return self.encode(fn, where)
        return self.opaque(fn, where, f"is {getattr(fn, '__qualname__', type(fn).__name__)}")

    def opaque(self, value: Any, where: str, why: str) -> Any:
        if self.strict:
            self.refuse(where, f"{why} (a lambda or nested function cannot be pickled)")
        return _Shared(value)


def _decode(value: Any) -> Any:
    if isinstance(value, _Call):
        fn = _decode(value.fn)
        return fn(*(_decode(a) for a in value.args), **{k: _decode(v) for k, v in value.kwargs.items()})
    if isinstance(value, _Shared):
        return value.value
    if type(value) in (tuple, list):
        return type(value)(_decode(x) for x in value)
    if type(value) is dict:
        return {k: _decode(v) for k, v in value.items()}
    return value


def _state(opt: Any, strict: bool) -> dict[str, Any]:
    tx = _Encoder(strict).encode(opt.tx, "the chain")
    groups = [{"params": list(g["params"]), **({"param_names": list(g["param_names"])} if "param_names" in g else {})}
              for g in opt.param_groups]
    return {"gradtx.Optimizer pickle": _VERSION, "tx": tx, "groups": groups, "state_dict": opt.state_dict(),
            "options": dict(getattr(opt, "_init_options", {}))}


def getstate(opt: Any) -> dict[str, Any]:
    """``gx.Optimizer.__getstate__``: the chain's recipe, the parameters, the state dict.
    Raises :class:`NotRebuildableError` when the chain cannot be built again."""
    return _state(opt, strict=True)


def setstate(opt: Any, state: dict[str, Any]) -> None:
    """``gx.Optimizer.__setstate__``: build the chain and the optimizer again, load the state."""
    from .optimizer import Optimizer

    if not isinstance(state, dict) or state.get("gradtx.Optimizer pickle") != _VERSION:
        raise ValueError("not a pickled gx.Optimizer of this gradtx version")
    tx = _decode(state["tx"])
    groups = [{"params": list(zip(g["param_names"], g["params"])) if "param_names" in g else g["params"]}
              for g in state["groups"]]
    Optimizer.__init__(opt, groups, tx, **state["options"])
    opt.load_state_dict(state["state_dict"])


def deepcopy(opt: Any, memo: dict) -> Any:
    """``gx.Optimizer.__deepcopy__``: a copy sharing nothing but functions with ``opt``."""
    new = type(opt).__new__(type(opt))
    memo[id(opt)] = new
    setstate(new, copy.deepcopy(_state(opt, strict=False), memo))
    return new
