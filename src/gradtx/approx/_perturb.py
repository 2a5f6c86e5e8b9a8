"""Seeded perturbations and the loss at perturbed params, shared by the approximators.

Every random direction is drawn from a ``torch.Generator`` of its own, seeded from the
state's ``seed`` and ``count``, the sample and the leaf's position: no global RNG is touched,
a checkpoint holds everything a draw depends on, and a leaf's direction can be drawn again,
alone, whenever it is needed (MeZO's regenerate-don't-store: nothing the size of the params
is kept between evaluations). Directions are drawn in the leaf's :func:`wide_dtype`
(float32 for bfloat16/float16 leaves) on its device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch

from .. import _foreach as F  # noqa: N812
from .._hparams import new_count
from .._tree import TreeDef, tree_unflatten

DISTRIBUTIONS = ("gaussian", "rademacher")
_MASK = (1 << 63) - 1


class ApproxState(NamedTuple):
    """State of a randomized approximator: the seed and the number of steps taken."""

    seed: torch.Tensor  # 0-dim int64: the user's seed
    count: torch.Tensor  # 0-dim int32: steps so far; step t draws from (seed, t)


def new_state(seed: int) -> ApproxState:
    return ApproxState(torch.tensor(seed, dtype=torch.int64), new_count())


def advanced(state: ApproxState, inplace: bool) -> ApproxState:
    return ApproxState(state.seed, state.count.add_(1) if inplace else state.count + 1)


def _splitmix(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


def _mix(*values: int) -> int:
    h = 0
    for v in values:
        h = _splitmix(h ^ (v & 0xFFFFFFFFFFFFFFFF))
    return h & _MASK


class Directions:
    """The directions of one step: ``self(k, i, like)`` is sample ``k``'s direction for
    leaf ``i`` (shaped like ``like``, in its wide dtype), the same tensor values at every call."""

    def __init__(self, state: ApproxState, distribution: str) -> None:
        self.base = _mix(int(state.seed), int(state.count))
        self.distribution = distribution

    def __call__(self, k: int, i: int, like: torch.Tensor) -> torch.Tensor:
        dtype = F.wide_dtype(F.real_dtype(like.dtype))
        gen = torch.Generator(device=like.device).manual_seed(_mix(self.base, k, i))
        if self.distribution == "gaussian":
            return torch.randn(like.shape, generator=gen, dtype=dtype, device=like.device)
        bits = torch.randint(0, 2, like.shape, generator=gen, device=like.device)
        return (bits * 2 - 1).to(dtype)


def check_distribution(distribution: str) -> None:
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")


def in_place_evaluator(value_fn: Callable) -> Callable | None:
    """``value_fn.at_offsets`` where the evaluation function offers it (``gx.Optimizer``'s
    closure evaluations): ``at_offsets(direction, scales) -> [loss]``, the loss at
    ``params + s * direction(i, p)`` for each ``s``, written into the parameters in place."""
    return getattr(value_fn, "at_offsets", None)


def losses_at(value_fn: Callable, ps: Sequence[torch.Tensor], treedef: TreeDef,
              direction: Callable[[int, torch.Tensor], torch.Tensor], scales: Sequence[Any], in_place: bool
              ) -> list[torch.Tensor]:
    """The loss at ``p + s * direction(i, p_i)`` (leafwise) for each ``s`` in ``scales``.

    Functional path: a trial tree per ``s`` (one copy of the params at a time, each leaf
    rounded to its dtype once). ``in_place`` with an evaluator that offers it
    (:func:`in_place_evaluator`): the parameters are moved in place, the direction drawn
    again for each move, and moved back at the end, so nothing the size of the params is
    allocated; the trial points and the restored params then differ from the functional
    ones by the round-off of the additions (a few ulps of ``|s z|``).
    """
    offsets = in_place_evaluator(value_fn) if in_place else None
    if offsets is not None:
        return offsets(direction, [float(s) for s in scales])
    out = []
    for s in scales:
        trial = [(p + s * direction(i, p)).to(p.dtype) for i, p in enumerate(ps)]
        out.append(value_fn(tree_unflatten(trial, treedef)))
        del trial
    return out


def as_loss(value: Any) -> torch.Tensor:
    value = value if isinstance(value, torch.Tensor) else torch.as_tensor(value)
    if value.numel() != 1:
        raise ValueError(f"value_fn must return a scalar loss, got a tensor of shape {tuple(value.shape)}")
    value = value.reshape(())
    return value if value.dtype == torch.float64 else value.to(torch.float64)
