"""One chain over every param group: leafwise parts run per group, the others over all.

torch users put parameters in groups to give some of them other settings (no weight decay
on biases, a smaller learning rate for the encoder), and expect anything global in the
optimizer to see every parameter, as ``clip_grad_norm_(model.parameters())`` before a
torch optimizer does. ``split_by_group(tx)`` rewrites a chain accordingly: each part
declared leafwise (:func:`gradtx.is_leafwise`; each leaf's update depends on that leaf
alone) becomes :func:`by_group` of itself, a state per group so a group's settings apply to
it alone; every other part (a global norm, a line search, a user's transform) runs once
over the parameters of all groups. The parameters carry their group in their key
(:class:`gradtx.ParamKey`), so nothing else needs to know about groups.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

from .._tree import tree_structure
from ..base import GradientTransformation, describe, is_leafwise, supports_inplace, updater
from ..combine import chain, named_chain

__all__ = ["GroupStates", "by_group", "split_by_group"]


class GroupStates(NamedTuple):
    """State of :func:`by_group`: the inner transform's state over each group's parameters."""

    states: tuple  # index g: the state over the parameters of param group g


def _of_group(tree: dict, g: int) -> dict:
    return {k: v for k, v in tree.items() if k.group == g}


def by_group(tx: GradientTransformation, n_groups: Callable[[], int],
             of_group: Callable[[int], GradientTransformation] | None = None) -> GradientTransformation:
    """``tx`` run separately on the parameters of each param group, each with its own state
    (so its own hyperparameters and step count). The trees are the adapter's
    ``{ParamKey: tensor}`` dicts; ``n_groups()`` is the current number of groups.
    ``of_group(g)``, when given, is the transform group ``g`` runs instead (``tx`` built
    with that group's settings; it keeps the same state)."""
    runners: dict[int, Callable] = {}

    def group_tx(g: int) -> GradientTransformation:
        return tx if of_group is None else of_group(g)

    def runner(g: int) -> Callable:
        if g not in runners:
            runners[g] = updater(group_tx(g))
        return runners[g]

    def init(params):
        return GroupStates(tuple(group_tx(g).init(_of_group(params, g)) for g in range(n_groups())))

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        states = list(state.states)
        while len(states) < n_groups():  # add_param_group after the state was made
            states.append(group_tx(len(states)).init({}))
        structure = tree_structure(updates)
        out = dict(updates)
        for g in sorted({k.group for k in updates}):
            sub = _of_group(updates, g)
            # extra arguments shaped like the updates (grad) are split with them
            extra = {name: _of_group(value, g) if isinstance(value, dict) and tree_structure(value) == structure
                     else value for name, value in extra_args.items()}
            new, states[g] = runner(g)(sub, states[g], None if params is None else _of_group(params, g), inplace,
                                       extra)
            out.update(new)
        return {k: out[k] for k in updates}, GroupStates(tuple(states))

    return describe(GradientTransformation(init, update), repr(tx), leafwise=True,
                    inplace=supports_inplace(tx), grouped=tx)


def _parts(tx: GradientTransformation) -> tuple | None:
    return getattr(tx, "__dict__", {}).get("parts")


def split_by_group(tx: GradientTransformation, n_groups: Callable[[], int],
                   group_tx: Callable[[int], GradientTransformation] | None = None) -> GradientTransformation | None:
    """``tx`` with every leafwise part run per group (see the module docstring), or ``None``
    when ``tx`` is leafwise as a whole (the adapter then runs it per group itself, on its
    fast paths). ``group_tx(g)``, when given, is the chain built with group ``g``'s
    settings: group ``g`` runs its leafwise parts."""
    if is_leafwise(tx):
        return None
    return _split(tx, n_groups, group_tx, ())


def _split(tx: GradientTransformation, n_groups: Callable[[], int],
           group_tx: Callable[[int], GradientTransformation] | None, at: tuple[int, ...]) -> GradientTransformation:
    if is_leafwise(tx):
        return by_group(tx, n_groups, None if group_tx is None else lambda g: _part_at(group_tx(g), at))
    parts = _parts(tx)
    if not parts:
        return tx  # global: runs once over every group's parameters
    try:
        state = tx.init({})
    except Exception:  # noqa: BLE001 - not a plain chain after all: keep it whole
        return tx
    if type(state) is tuple and len(state) == len(parts):
        return chain(*(_split(part, n_groups, group_tx, (*at, i)) for i, part in enumerate(parts)))
    if type(state) is dict and len(state) == len(parts):
        return named_chain(*((name, _split(part, n_groups, group_tx, (*at, i)))
                             for i, (name, part) in enumerate(zip(state, parts))))
    return tx


def _part_at(tx: GradientTransformation, at: tuple[int, ...]) -> GradientTransformation:
    for i in at:
        tx = tx.__dict__["parts"][i]
    return tx
