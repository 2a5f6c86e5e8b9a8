"""Combinators: run several transforms as one."""

from __future__ import annotations

from .base import GradientTransformation, describe

__all__ = ["chain", "named_chain"]


def _indent(text: str) -> str:
    return text.replace("\n", "\n  ")


def chain(*transforms: GradientTransformation) -> GradientTransformation:
    """Apply ``transforms`` in sequence; the state is a tuple of their states.

    ``u <- t_n(...t_2(t_1(u)))``. Extra keyword arguments (``value``, ``grad``,
    ``value_fn``, ``inplace``) are forwarded to every member.

    Example: ``gx.chain(gx.clip_value(10.0), gx.scale_by_adam(), gx.scale_by_lr(1e-3))``.
    """
    for i, tx in enumerate(transforms):
        if not isinstance(tx, GradientTransformation):
            raise TypeError(f"chain argument {i} must be a GradientTransformation, got {type(tx).__name__}")
    inits = tuple(tx.init for tx in transforms)
    updates_fns = tuple(tx.update for tx in transforms)

    def init(params):
        return tuple(fn(params) for fn in inits)

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        if len(state) != len(updates_fns):
            raise ValueError(f"chain of {len(updates_fns)} transforms got a state of length {len(state)}")
        new_state = []
        for fn, s in zip(updates_fns, state):
            updates, s = fn(updates, s, params, inplace=inplace, **extra_args)
            new_state.append(s)
        return updates, tuple(new_state)

    body = ",\n  ".join(_indent(repr(tx)) for tx in transforms)
    return describe(GradientTransformation(init, update), f"chain(\n  {body},\n)" if transforms else "chain()",
                    parts=transforms)


def named_chain(*named_transforms: tuple[str, GradientTransformation]) -> GradientTransformation:
    """Like :func:`chain`, with the state a dict ``{name: state}``.

    Example: ``gx.named_chain(("clip", gx.clip_value(1.0)), ("adam", gx.scale_by_adam()))``.
    """
    names = [name for name, _ in named_transforms]
    for i, item in enumerate(named_transforms):
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)
                and isinstance(item[1], GradientTransformation)):
            raise TypeError(f"named_chain argument {i} must be a (name, GradientTransformation) pair")
    if len(set(names)) != len(names):
        raise ValueError(f"named_chain names must be unique, got {names}")

    def init(params):
        return {name: tx.init(params) for name, tx in named_transforms}

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        new_state = {}
        for name, tx in named_transforms:
            updates, new_state[name] = tx.update(updates, state[name], params, inplace=inplace, **extra_args)
        return updates, new_state

    body = ",\n  ".join(f"({name!r}, {_indent(repr(tx))})" for name, tx in named_transforms)
    return describe(GradientTransformation(init, update), f"named_chain(\n  {body},\n)",
                    parts=tuple(tx for _, tx in named_transforms))
