"""The ``gx.Optimizer`` state dict in ``torch.optim``'s shape, and its older format.

torch's distributed checkpoint helpers (``get_optimizer_state_dict``,
``set_optimizer_state_dict``, ``dcp.save``/``dcp.load``) and ``ZeroRedundancyOptimizer``
keep only ``state`` (one entry per parameter, keyed by its index, or by its name once
converted) and ``param_groups``; anything else in a state dict is dropped. So the state
dict of format ``gradtx.Optimizer/2`` puts everything there:

- ``state[i]``: parameter ``i``'s state leaves (``{path: tensor}``), and the chain's shared
  leaves (step counts, hyperparameter tensors: one per param group, or one per chain when
  parts of it run over all groups) under ``"shared:" + path``. Small shared leaves are
  repeated in every stepped parameter's entry, as torch repeats Adam's ``step``, so the
  entry of any one parameter is enough (ZeRO loads entry by entry, and a reshard may keep
  any subset); a large one (a history over all parameters) is kept once, in the entry of
  the first stepped parameter of its scope. A parameter has an entry exactly when the
  chain has stepped it (an entry may be empty: ``sgd`` keeps nothing).
- ``param_groups[g]``: torch's group (hyperparameters, ``params``), and ``"gradtx"``:
  ``{"format", "chain", "layout"}``, which says whose state it is.

The adapter works on the older layout (format ``gradtx.Optimizer/1``: ``state``,
``shared``, ``stepped``, ``param_groups``, ``chain``, ``layout`` at the top): :func:`to_torch_shape`
and :func:`from_torch_shape` convert, so files of either format load.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["FORMAT", "OLD_FORMAT", "SHARED", "from_torch_shape", "is_gradtx", "to_torch_shape"]

FORMAT = "gradtx.Optimizer/2"
OLD_FORMAT = "gradtx.Optimizer/1"
SHARED = "shared:"  # prefix of a shared leaf's path in a parameter's entry
MARK = "gradtx"  # the param-group key naming the format
_REPEAT_UP_TO = 1024  # elements: shared leaves up to this size go into every entry


def is_gradtx(sd: Any) -> bool:
    """Whether ``sd`` is a ``gx.Optimizer`` state dict of the current format (its param
    groups carry the mark, whatever distributed checkpointing kept of the rest)."""
    if not isinstance(sd, dict):
        return False
    if sd.get("format") == FORMAT:
        return True
    if not isinstance(sd.get("param_groups"), list):
        return False
    groups = sd["param_groups"]
    return bool(groups) and all(isinstance(g, dict) and isinstance(g.get(MARK), dict)
                                and g[MARK].get("format") == FORMAT for g in groups)


def _repeated(value: Any) -> bool:
    return not isinstance(value, torch.Tensor) or value.numel() <= _REPEAT_UP_TO


def to_torch_shape(old: dict[str, Any]) -> dict[str, Any]:
    """The state dict of format 2 holding what the format-1 dict ``old`` holds."""
    one_chain = old["layout"] == "one_chain"
    mark = {"format": FORMAT, "chain": old["chain"], "layout": old["layout"]}
    state: dict[int, dict[str, Any]] = {}
    owners: set[int] = set()  # scopes whose large shared leaves have found their entry
    for gi in range(len(old["param_groups"])):
        scope = 0 if one_chain else gi
        shared = old["shared"][scope]
        for i in old["stepped"][gi]:
            entry = dict(old["state"].get(i, {}))
            first = scope not in owners
            owners.add(scope)
            for path, value in shared.items():
                if first or _repeated(value):
                    entry[SHARED + path] = value
            state[i] = entry
    groups = [{**group, MARK: dict(mark)} for group in old["param_groups"]]
    return {"format": FORMAT, "state": dict(sorted(state.items())), "param_groups": groups}


def from_torch_shape(sd: dict[str, Any], fresh_shared: Any = None) -> dict[str, Any]:
    """The format-1 dict of a format-2 ``sd``. Its parameters may be keyed by anything
    (indices, or the names torch's distributed helpers put in their place): they are matched
    by position in ``param_groups``, as ``torch.optim`` does. ``fresh_shared(scope)``, when
    given, supplies a shared leaf no entry holds (``ZeroRedundancyOptimizer`` writes entries
    one by one); otherwise the leaf is left out, and loading names it."""
    missing = [key for key in ("state", "param_groups") if not isinstance(sd.get(key), (dict, list))]
    if missing:
        raise ValueError(f"the state dict lacks {missing} (a gx.Optimizer state dict has 'state' and 'param_groups')")
    groups = sd["param_groups"]
    if not groups or not all(isinstance(g, dict) and isinstance(g.get(MARK), dict) and "params" in g
                             for g in groups):
        raise ValueError(f"the state dict's param_groups lack the {MARK!r} entry that names a gx.Optimizer "
                         "state (or their 'params')")
    mark = groups[0][MARK]
    one_chain = mark["layout"] == "one_chain"
    state: dict[int, dict[str, Any]] = {}
    shared: list[dict[str, Any]] = [{} for _ in range(1 if one_chain else len(groups))]
    stepped: list[list[int]] = []
    packed_groups = []
    position = 0
    saved_state = sd["state"]
    for gi, group in enumerate(groups):
        scope = 0 if one_chain else gi
        indices = []
        group_stepped = []
        for key in group["params"]:
            indices.append(position)
            entry = saved_state.get(key)
            if entry is not None:
                group_stepped.append(position)
                own = {}
                for path, value in entry.items():
                    if isinstance(path, str) and path.startswith(SHARED):
                        shared[scope].setdefault(path[len(SHARED):], value)
                    else:
                        own[path] = value
                if own:
                    state[position] = own
            position += 1
        stepped.append(group_stepped)
        packed_groups.append({**{k: v for k, v in group.items() if k != MARK}, "params": indices})
    if fresh_shared is not None:
        for scope, values in enumerate(shared):
            has_state = any(stepped[gi] for gi in (range(len(groups)) if one_chain else [scope]))
            if has_state:
                for path, value in fresh_shared(scope).items():
                    values.setdefault(path, value)
    return {"format": OLD_FORMAT, "chain": mark.get("chain"), "layout": mark["layout"], "state": state,
            "shared": shared, "stepped": stepped, "param_groups": packed_groups}
