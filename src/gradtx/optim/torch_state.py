"""Moving training between ``torch.optim`` and ``gx.Optimizer``: state dicts both ways.

A ``torch.optim`` state dict loads into the ``gx.Optimizer`` that runs the same algorithm,
and a ``gx.Optimizer`` writes a state dict that the ``torch.optim`` class loads; training
then continues as if it had never switched. The equivalents, and how the state maps:

- ``Adam(lr, betas, eps)``: ``adam(lr, b1, b2, eps)``; with ``weight_decay`` (L2):
  ``chain(add_decayed_weights(wd), scale_by_adam(b1, b2, eps), scale_by_lr(lr))``.
  State ``exp_avg -> mu``, ``exp_avg_sq -> nu``, ``step -> count``.
- ``AdamW(lr, betas, eps, weight_decay)``: ``adamw(lr, b1, b2, eps, weight_decay=wd)``; as Adam.
- ``SGD(lr, momentum, nesterov, weight_decay)``: ``sgd(lr, momentum or None, nesterov, weight_decay)``.
  State ``momentum_buffer -> trace``.
- ``RMSprop(lr, alpha, eps, weight_decay, momentum, centered)``: ``rmsprop(lr, decay=alpha, eps=eps,
  eps_in_sqrt=False, centered=centered, momentum=momentum or None, weight_decay=wd)``.
  State ``square_avg -> nu``, ``grad_avg -> mu`` (centered), ``momentum_buffer -> trace``.
- ``Adagrad(lr, lr_decay, weight_decay, initial_accumulator_value, eps)``: ``adagrad(lr,
  initial_accumulator_value, eps, eps_in_sqrt=False, lr_decay=lr_decay, weight_decay=wd)``.
  State ``sum -> sum_of_squares``, ``step -> count`` (of the ``lr_decay`` schedule).

A chain built otherwise but to the same effect (``chain(scale_by_adam(), scale_by_lr(lr))``
for ``adam``) is accepted: chains are compared part by part, by constructor and arguments.
The values that ``gx.Optimizer`` keeps in ``param_groups`` (``lr``, ``weight_decay``) are
taken from the state dict, as ``load_state_dict`` does; the others must agree with the chain,
or ``ValueError`` names the one that differs. Not convertible (``ValueError``): ``amsgrad``,
``maximize``, SGD's ``dampening``.

Step counts: torch keeps one per parameter, gradtx one per transform (shared by a param
group). Where gradtx uses its count (Adam, AdamW, Adagrad with ``lr_decay``) a torch state
whose parameters of one group have different steps is refused; a parameter with no state
(or Adagrad's step 0) has not been stepped and starts fresh. Where gradtx keeps no count
(RMSprop, SGD, Adagrad without ``lr_decay``) torch's ``step`` only counts steps and is not
used by the update: it is dropped, and the dict written for torch carries ``step`` 0.

The functions work on plain dicts; only :func:`_read_gx` and :func:`_write_gx` know the
layout of a ``gx.Optimizer`` state dict.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .._tree import ParamKey, split_param_paths
from ..base import GradientTransformation
from .checkpoint import is_gradtx

__all__ = ["KINDS", "from_torch_state_dict", "is_torch_state_dict", "to_torch_state_dict"]


# --- the algorithms -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Kind:
    name: str  # the torch.optim class name
    state_keys: dict[str, str]  # gradtx state field -> torch state key (per parameter)
    from_torch: Callable[[dict], dict]  # torch group -> gradtx hyperparameters (raises for unsupported flags)
    to_torch: Callable[[dict], dict]  # gradtx hyperparameters -> torch group values
    from_parts: Callable[[dict[str, dict]], dict]  # {part name: args} of a chain -> gradtx hyperparameters
    equivalents: Callable[[dict], list[GradientTransformation]]  # the gradtx chains of these hyperparameters
    counts: Callable[[dict], bool]  # whether gradtx keeps a step count for these hyperparameters

    @property
    def torch_class(self) -> type[torch.optim.Optimizer]:
        return getattr(torch.optim, self.name)


def _gx():
    import gradtx as gx  # the aliases live above this layer; imported when first needed

    return gx


def _refuse(group: dict, flags: dict[str, Any], kind: str) -> None:
    for key, fine in flags.items():
        value = group.get(key, fine)
        if value != fine and not (fine == 0 and not value):
            raise ValueError(f"torch.optim.{kind} with {key}={value!r} has no gradtx equivalent to convert to "
                             f"(only {key}={fine!r})")


def _adam_from_torch(group: dict, kind: str) -> dict:
    _refuse(group, {"amsgrad": False, "maximize": False}, kind)
    b1, b2 = (float(b) for b in group["betas"])
    return {"lr": float(group["lr"]), "b1": b1, "b2": b2, "eps": float(group["eps"]),
            "weight_decay": float(group["weight_decay"])}


def _adam_to_torch(hp: dict) -> dict:
    return {"lr": hp["lr"], "betas": (hp["b1"], hp["b2"]), "eps": hp["eps"], "weight_decay": hp["weight_decay"]}


def _adam_parts(parts: dict) -> dict:
    a = _need(parts, "scale_by_adam")
    return {"lr": _need(parts, "scale_by_lr")["lr"], "b1": a["b1"], "b2": a["b2"], "eps": a["eps"],
            "weight_decay": parts.get("add_decayed_weights", {}).get("weight_decay", 0.0)}


def _adam_equivalents(hp: dict) -> list:
    gx = _gx()
    scaler = gx.scale_by_adam(hp["b1"], hp["b2"], hp["eps"])
    l2 = gx.chain(gx.add_decayed_weights(hp["weight_decay"]), scaler, gx.scale_by_lr(hp["lr"]))
    return [gx.adam(hp["lr"], hp["b1"], hp["b2"], hp["eps"]), l2] if hp["weight_decay"] == 0 else [l2]


def _adamw_equivalents(hp: dict) -> list:
    gx = _gx()
    return [gx.adamw(hp["lr"], hp["b1"], hp["b2"], hp["eps"], weight_decay=hp["weight_decay"])]


def _sgd_from_torch(group: dict) -> dict:
    _refuse(group, {"dampening": 0, "maximize": False}, "SGD")
    return {"lr": float(group["lr"]), "momentum": float(group["momentum"]), "nesterov": bool(group["nesterov"]),
            "weight_decay": float(group["weight_decay"])}


def _sgd_to_torch(hp: dict) -> dict:
    return {"lr": hp["lr"], "momentum": hp["momentum"], "nesterov": hp["nesterov"],
            "weight_decay": hp["weight_decay"], "dampening": 0}


def _sgd_parts(parts: dict) -> dict:
    trace = parts.get("trace", {"decay": 0.0, "nesterov": False})
    return {"lr": _need(parts, "scale_by_lr")["lr"], "momentum": trace["decay"], "nesterov": trace["nesterov"],
            "weight_decay": parts.get("add_decayed_weights", {}).get("weight_decay", 0.0)}


def _sgd_equivalents(hp: dict) -> list:
    gx = _gx()
    momentum = hp["momentum"] or None
    out = [gx.sgd(hp["lr"], momentum, hp["nesterov"], hp["weight_decay"])]
    if hp["weight_decay"] == 0 and momentum:
        out.append(gx.chain(gx.trace(momentum, nesterov=hp["nesterov"]), gx.scale_by_lr(hp["lr"])))
    return out


def _rmsprop_from_torch(group: dict) -> dict:
    _refuse(group, {"maximize": False}, "RMSprop")
    return {"lr": float(group["lr"]), "alpha": float(group["alpha"]), "eps": float(group["eps"]),
            "centered": bool(group["centered"]), "momentum": float(group["momentum"]),
            "weight_decay": float(group["weight_decay"])}


def _rmsprop_to_torch(hp: dict) -> dict:
    return dict(hp)


def _rmsprop_parts(parts: dict) -> dict:
    centered = "scale_by_stddev" in parts
    rms = _need(parts, "scale_by_stddev" if centered else "scale_by_rms")
    return {"lr": _need(parts, "scale_by_lr")["lr"], "alpha": rms["decay"], "eps": rms["eps"], "centered": centered,
            "momentum": parts.get("trace", {}).get("decay", 0.0),
            "weight_decay": parts.get("add_decayed_weights", {}).get("weight_decay", 0.0)}


def _rmsprop_equivalents(hp: dict) -> list:
    return [_gx().rmsprop(hp["lr"], decay=hp["alpha"], eps=hp["eps"], eps_in_sqrt=False, centered=hp["centered"],
                          momentum=hp["momentum"] or None, weight_decay=hp["weight_decay"])]


def _adagrad_from_torch(group: dict) -> dict:
    _refuse(group, {"maximize": False}, "Adagrad")
    return {"lr": float(group["lr"]), "lr_decay": float(group["lr_decay"]), "eps": float(group["eps"]),
            "initial_accumulator_value": float(group["initial_accumulator_value"]),
            "weight_decay": float(group["weight_decay"])}


def _adagrad_to_torch(hp: dict) -> dict:
    return dict(hp)


def _adagrad_parts(parts: dict) -> dict:
    rss = _need(parts, "scale_by_rss")
    alias = parts.get("adagrad", {})
    return {"lr": _need(parts, "scale_by_lr")["lr"], "lr_decay": alias.get("lr_decay", 0.0), "eps": rss["eps"],
            "initial_accumulator_value": rss["initial_accumulator_value"],
            "weight_decay": parts.get("add_decayed_weights", {}).get("weight_decay", 0.0)}


def _adagrad_equivalents(hp: dict) -> list:
    return [_gx().adagrad(hp["lr"], hp["initial_accumulator_value"], hp["eps"], eps_in_sqrt=False,
                          lr_decay=hp["lr_decay"], weight_decay=hp["weight_decay"])]


_ADAM_STATE = {"mu": "exp_avg", "nu": "exp_avg_sq"}

KINDS: dict[str, _Kind] = {k.name: k for k in [
    _Kind("Adam", _ADAM_STATE, lambda g: _adam_from_torch(g, "Adam"), _adam_to_torch, _adam_parts,
          _adam_equivalents, lambda hp: True),
    _Kind("AdamW", _ADAM_STATE, lambda g: _adam_from_torch(g, "AdamW"), _adam_to_torch, _adam_parts,
          _adamw_equivalents, lambda hp: True),
    _Kind("SGD", {"trace": "momentum_buffer"}, _sgd_from_torch, _sgd_to_torch, _sgd_parts, _sgd_equivalents,
          lambda hp: False),
    _Kind("RMSprop", {"nu": "square_avg", "mu": "grad_avg", "trace": "momentum_buffer"}, _rmsprop_from_torch,
          _rmsprop_to_torch, _rmsprop_parts, _rmsprop_equivalents, lambda hp: False),
    _Kind("Adagrad", {"sum_of_squares": "sum"}, _adagrad_from_torch, _adagrad_to_torch, _adagrad_parts,
          _adagrad_equivalents, lambda hp: hp["lr_decay"] != 0),
]}
"""The ``torch.optim`` classes whose state dicts convert, by class name."""


def _need(parts: dict, name: str) -> dict:
    if name not in parts:
        raise _NotThisKind(f"it has no {name}")
    return parts[name]


class _NotThisKind(ValueError):
    pass


# --- comparing chains -------------------------------------------------------------------------


def _attrs(tx: Any) -> dict:
    return getattr(tx, "__dict__", {})


def _leaves(tx: Any) -> list:
    parts = _attrs(tx).get("parts")
    return [leaf for part in parts for leaf in _leaves(part)] if parts else [tx]


def _part_args(tx: Any) -> dict[str, dict]:
    """``{constructor name: args}`` of the alias ``tx`` is and of its innermost parts."""
    out: dict[str, dict] = {}
    for part in [tx] + _leaves(tx):
        name, args = _attrs(part).get("name"), _attrs(part).get("args")
        if name is not None and args is not None:
            if name in out and part is not tx:
                raise ValueError(f"the chain holds {name} twice")
            out[name] = args
    return out


def _same_value(a: Any, b: Any) -> bool:
    if isinstance(a, GradientTransformation) or isinstance(b, GradientTransformation):
        return isinstance(a, GradientTransformation) and isinstance(b, GradientTransformation) and \
            _differences(a, b, frozenset()) == []
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        try:
            return float(a) == float(b)
        except (TypeError, ValueError, RuntimeError):
            return a is b
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if callable(a) or callable(b) or isinstance(a, bool) or isinstance(b, bool):
        return a is b or (isinstance(a, bool) and isinstance(b, bool) and a == b)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    return type(a) is type(b) and a == b


def _differences(tx: Any, want: Any, free: frozenset[str]) -> list[str]:
    """How ``tx`` differs from ``want``, part by part (arguments named in ``free`` aside):
    ``[]`` when they build the same chain."""
    a, b = _attrs(tx), _attrs(want)
    if a.get("name") is not None and a.get("name") == b.get("name") and "args" in a and "args" in b:
        return [f"{a['name']}: {k}={a['args'].get(k)!r}, expected {v!r}" for k, v in b["args"].items()
                if k not in free and not _same_value(a["args"].get(k), v)]
    got, expected = _leaves(tx), _leaves(want)
    if len(got) == 1 and len(expected) == 1:
        return [f"{a.get('name') or _short(tx)} where {b.get('name') or _short(want)} was expected"]
    if len(got) != len(expected):
        return [f"{len(got)} parts where {len(expected)} were expected"]
    return [d for x, y in zip(got, expected) for d in _differences(x, y, free)]


def _short(tx: Any) -> str:
    return repr(tx).split(" = ", 1)[0].split("\n", 1)[0]


def _check_chain(tx: GradientTransformation, kind: _Kind, hp: dict, free: frozenset[str], where: str) -> None:
    candidates = kind.equivalents(hp)
    found = [_differences(tx, want, free) for want in candidates]
    if not any(d == [] for d in found):
        raise ValueError(f"{where}: this optimizer's chain is not torch.optim.{kind.name}'s equivalent "
                         f"{_short(candidates[0])} ({'; '.join(found[0])}); build the gx.Optimizer with "
                         f"{_short(candidates[0])}")


def _kind(kind: Any) -> _Kind:
    name = kind.__name__ if isinstance(kind, type) else kind
    if name not in KINDS:
        raise ValueError(f"kind must be one of the torch.optim classes {sorted(KINDS)} (a class or its name), "
                         f"got {kind!r}")
    return KINDS[name]


def _detect(torch_sd: dict) -> list[_Kind]:
    """The torch.optim classes a state dict may come from, by its param-group keys (Adam or
    AdamW when an older torch did not record ``decoupled_weight_decay``)."""
    group = torch_sd["param_groups"][0] if torch_sd["param_groups"] else {}
    if "betas" in group and "amsgrad" in group:
        if "decoupled_weight_decay" not in group:
            return [KINDS["Adam"], KINDS["AdamW"]]
        return [KINDS["AdamW" if group["decoupled_weight_decay"] else "Adam"]]
    for name, keys in (("RMSprop", {"alpha", "centered"}), ("Adagrad", {"lr_decay", "initial_accumulator_value"}),
                       ("SGD", {"momentum", "dampening", "nesterov"})):
        if keys <= set(group):
            return [KINDS[name]]
    raise ValueError(f"a torch.optim state dict of an unknown class (group keys {sorted(group)}); convertible: "
                     f"{sorted(KINDS)}")


# --- the gx.Optimizer state dict: the only code that knows its layout --------------------------


def _read_gx(sd: dict) -> list[dict]:
    """Per param group of a ``gx.Optimizer`` state dict: ``{'hparams': group keys, 'indices':
    global param indices, 'stepped': those with state, 'shared': {field: tensor},
    'state': {global index: {field: tensor}}}`` (fields: the last part of a state path)."""
    out = []
    for gi, group in enumerate(sd["param_groups"]):
        indices = list(group["params"])
        state = {i: {_field(path): t for path, t in sd["state"].get(i, {}).items()} for i in indices}
        out.append({"hparams": {k: v for k, v in group.items() if k not in ("params", "param_names")},
                    "indices": indices, "stepped": [i for i in sd["stepped"][gi] if i in indices],
                    "shared": {_field(path): t for path, t in sd["shared"][gi].items()}, "state": state})
    return out


def _write_gx(template: dict, tx: GradientTransformation, params: list[list[torch.Tensor]],
              groups: list[dict]) -> dict:
    """A ``gx.Optimizer`` state dict like ``template`` (the optimizer's own), for ``groups``:
    per group ``{'hparams': group keys to set, 'stepped': [position in the group],
    'count': int | None, 'state': {position: {field: tensor}}}``."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    shared: list[dict[str, torch.Tensor]] = []
    stepped: list[list[int]] = []
    param_groups = []
    for gi, (saved, group, ps) in enumerate(zip(template["param_groups"], groups, params)):
        indices = saved["params"]
        names = saved.get("param_names")
        keys = group["stepped"]
        group_shared: dict[str, torch.Tensor] = {}
        if keys:
            # paths and dtypes from the chain's init (on meta: no memory), values from `group`
            layout = tx.init({ParamKey(k, names[k] if names else None): torch.empty_like(ps[k], device="meta")
                              for k in keys})
            meta_shared, per_param = split_param_paths(layout)
            first = ps[keys[0]]
            real_shared, _ = split_param_paths(tx.init({ParamKey(0): torch.zeros(1, dtype=first.dtype,
                                                                                  device=first.device)}))
            for path, meta in meta_shared.items():
                field = _field(path)
                if field == "count" and group["count"] is not None:
                    group_shared[path] = torch.tensor(group["count"], dtype=meta.dtype)
                elif field in group["hparams"] and meta.dim() == 0 and meta.is_floating_point():
                    group_shared[path] = torch.tensor(float(group["hparams"][field]), dtype=meta.dtype)
                else:
                    group_shared[path] = real_shared[path].clone()
            for k in keys:
                entry = {}
                for path, meta in per_param.get(k, {}).items():
                    value = group["state"][k][_field(path)]
                    if tuple(value.shape) != tuple(meta.shape):
                        raise ValueError(f"param group {gi} param {k}: state {_field(path)} has shape "
                                         f"{tuple(value.shape)}, the parameter {tuple(meta.shape)}")
                    entry[path] = value.detach().to(dtype=meta.dtype)
                state[indices[k]] = entry
        shared.append(group_shared)
        stepped.append([indices[k] for k in keys])
        param_groups.append({**saved, **group["hparams"]})
    return {**template, "state": state, "shared": shared, "stepped": stepped, "param_groups": param_groups}


def _field(path: str) -> str:
    return path.rsplit(".", 1)[-1]


# --- the conversions ------------------------------------------------------------------------


def is_torch_state_dict(sd: Any) -> bool:
    """Whether ``sd`` looks like a ``torch.optim`` state dict (``state`` and ``param_groups``,
    no gradtx ``format``)."""
    return (isinstance(sd, dict) and "format" not in sd and "shared" not in sd and not is_gradtx(sd)
            and isinstance(sd.get("state"), dict) and isinstance(sd.get("param_groups"), list)
            and all(isinstance(g, dict) and "params" in g for g in sd["param_groups"]))


def from_torch_state_dict(tx: GradientTransformation, torch_sd: dict, gx_template: dict,
                          params: list[list[torch.Tensor]]) -> dict:
    """A ``gx.Optimizer`` state dict for the chain ``tx`` from a ``torch.optim`` state dict.

    ``gx_template`` is the optimizer's own ``state_dict()`` (its layout and param groups),
    ``params`` its parameters per param group. Raises ``ValueError`` when the torch class has
    no equivalent, ``tx`` is not it, the groups or parameters do not match, or the
    parameters of a group have different step counts where gradtx keeps one.
    """
    if not is_torch_state_dict(torch_sd):
        raise ValueError("not a torch.optim state dict: expected a dict with 'state' and 'param_groups'")
    errors = []
    for kind in _detect(torch_sd):
        try:
            return _from_torch(kind, tx, torch_sd, gx_template, params)
        except ValueError as error:
            errors.append(error)
    raise errors[0]


def _from_torch(kind: _Kind, tx: GradientTransformation, torch_sd: dict, gx_template: dict,
                params: list[list[torch.Tensor]]) -> dict:
    torch_groups = torch_sd["param_groups"]
    if len(torch_groups) != len(params):
        raise ValueError(f"the torch.optim state dict has {len(torch_groups)} param groups, this optimizer "
                         f"{len(params)}")
    gx_groups = _read_gx(gx_template)
    groups = []
    for gi, (tgroup, ps, gx_group) in enumerate(zip(torch_groups, params, gx_groups)):
        where = f"torch.optim.{kind.name} param group {gi}"
        if len(tgroup["params"]) != len(ps):
            raise ValueError(f"{where} has {len(tgroup['params'])} params, this optimizer's {len(ps)}")
        hp = kind.from_torch(tgroup)
        free = frozenset(gx_group["hparams"])
        _check_chain(tx, kind, hp, free, where)
        entries = {}
        for k, tid in enumerate(tgroup["params"]):
            entry = torch_sd["state"].get(tid, {})
            step = entry.get("step")
            if not entry or any(v is None for v in entry.values()) or (step is not None and float(step) == 0):
                continue  # never stepped: gradtx starts it fresh, as torch would
            entries[k] = entry
        count = None
        if kind.counts(hp) and entries:
            steps = {k: float(e["step"]) for k, e in entries.items()}
            if len(set(steps.values())) > 1:
                shown = ", ".join(f"param {tgroup['params'][k]}: {int(s)}" for k, s in steps.items())
                raise ValueError(f"{where}: the parameters have different step counts ({shown}); gradtx keeps one "
                                 "count per param group, so this state cannot be converted exactly")
            count = int(next(iter(steps.values())))
        state = {}
        for k, entry in entries.items():
            state[k] = {}
            for field, key in kind.state_keys.items():
                if key in entry:
                    state[k][field] = entry[key]
        torch_values = {**hp, **kind.to_torch(hp)}
        hparams = {key: torch_values[key] for key in gx_group["hparams"] if key in torch_values}
        groups.append({"hparams": hparams, "stepped": sorted(entries), "count": count, "state": state})
    for gi, group in enumerate(groups):
        for k, fields in group["state"].items():
            missing = [f for f in _per_param_fields(tx, params[gi][k]) if f not in fields]
            if missing:
                raise ValueError(f"torch.optim.{kind.name} param group {gi} param {k}: the torch state has no "
                                 f"{[_torch_key(kind, f) for f in missing]}")
    return _write_gx(gx_template, tx, params, groups)


def _per_param_fields(tx: GradientTransformation, p: torch.Tensor) -> list[str]:
    _, per_param = split_param_paths(tx.init({ParamKey(0): torch.empty_like(p, device="meta")}))
    return [_field(path) for path in per_param.get(0, {})]


def _torch_key(kind: _Kind, field: str) -> str:
    return kind.state_keys.get(field, field)


def to_torch_state_dict(tx: GradientTransformation, gx_sd: dict, params: list[list[torch.Tensor]],
                        kind: Any = None) -> dict:
    """A state dict that ``torch.optim.<kind>.load_state_dict`` takes, from a ``gx.Optimizer``
    state dict of the chain ``tx`` (``params``: its parameters per param group). ``kind`` is
    a class or class name of :data:`KINDS`; ``None`` finds the one ``tx`` is equivalent to.
    Raises ``ValueError`` when ``tx`` is not the equivalent of ``kind`` (of any, for ``None``).
    Group flags torch has no gradtx counterpart for (``foreach``, ``fused``...) take the
    class's defaults."""
    if kind is None:
        reasons = []
        for candidate in KINDS.values():
            try:
                return to_torch_state_dict(tx, gx_sd, params, candidate.name)
            except _NotThisKind:
                pass
            except ValueError as error:  # the parts of this kind, but something differs: say what
                reasons.append(str(error))
        raise ValueError(f"this optimizer's chain {_short(tx)} is not the equivalent of any of the torch.optim "
                         f"classes {sorted(KINDS)}" + (f"; closest: {reasons[0]}" if reasons else ""))
    kind = _kind(kind)
    parts = _part_args(tx)
    out_groups = []
    out_state: dict[int, dict[str, Any]] = {}
    scalar = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
    for gi, (group, ps) in enumerate(zip(_read_gx(gx_sd), params)):
        where = f"param group {gi}"
        try:
            hp = kind.from_parts(parts)
        except _NotThisKind as error:
            raise _NotThisKind(f"this optimizer's chain {_short(tx)} is not torch.optim.{kind.name}'s equivalent "
                               f"({error})") from None
        for key, value in group["hparams"].items():
            if key in hp and not callable(hp[key]):  # a schedule's 'lr' key only shows its first value
                hp[key] = value
        hp = {k: float(v) if isinstance(v, torch.Tensor) else v for k, v in hp.items()}
        for key, value in hp.items():
            if callable(value):
                raise ValueError(f"{where}: {key} is a schedule, which torch.optim.{kind.name} cannot hold (it keeps "
                                 "a number; drive it with a torch LR scheduler instead)")
        _check_chain(tx, kind, hp, frozenset(group["hparams"]), where)
        defaults = kind.torch_class([torch.zeros(1, requires_grad=True)]).param_groups[0]
        out_group = {k: v for k, v in defaults.items() if k != "params"}
        out_group.update(kind.to_torch(hp))
        out_group["params"] = list(group["indices"])
        names = [g.get("param_names") for g in gx_sd["param_groups"]][gi]
        if names is not None:
            out_group["param_names"] = list(names)
        out_groups.append(out_group)
        count = group["shared"].get("count")
        step = float(count) if count is not None and kind.counts(hp) else 0.0
        for k, index in enumerate(group["indices"]):
            if index in group["stepped"]:
                fields = group["state"][index]
                entry = {key: fields[field] for field, key in kind.state_keys.items() if field in fields}
                if kind.name != "SGD":  # torch's SGD keeps no step, and no state without momentum
                    entry = {"step": torch.tensor(step, dtype=scalar), **entry}
                if entry:
                    out_state[index] = entry
            elif kind.name == "Adagrad":
                # torch makes Adagrad's state at construction and expects it for every parameter
                out_state[index] = {"step": torch.tensor(0.0, dtype=scalar),
                                    "sum": torch.full_like(ps[k], hp["initial_accumulator_value"],
                                                           memory_format=torch.preserve_format)}
    return {"state": out_state, "param_groups": out_groups}
