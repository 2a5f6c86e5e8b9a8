"""Arithmetic on transforms: run several branches on the same update and combine their outputs.

Each combinator here gives every branch the incoming update, runs it with its own state, and
combines the branches' outputs elementwise (``sum_of``, ``difference``, ``product``,
``ratio``, ``lerp``, ``copysign``) or per tensor (``graft``). The state is
``BranchesState(branches)``, the tuple of the branches' states, so a checkpoint holds exactly
what the branches hold.

Ownership follows :func:`gradtx.supports_inplace`: under ``inplace=True`` the last branch that
declares in-place reuse writes into the caller's buffers and every other branch gets a copy of
its own (an undeclared branch may keep what it is given); on the pure path every branch reads
the caller's updates and writes into nothing. The combination is written into a branch's output
only when that output is a buffer the combinator owns (a declared branch's result under
``inplace=True``), never into what an undeclared branch returned, which its state may hold.

Complex updates: the linear combinations (``sum_of``, ``difference``, ``lerp``) act on the
complex values; ``product``, ``ratio`` and ``copysign`` act on the real and imaginary parts
separately, as torch.optim treats a complex parameter (so a ratio of two moment estimates
built from blocks gives Adam's numbers on complex parameters too).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from . import _foreach as F  # noqa: N812
from ._hparams import check, is_value
from ._tree import TreeDef, tensor_leaves, tree_unflatten
from .base import GradientTransformation, is_elementwise, is_leafwise, supports_inplace, transform, updater

__all__ = ["BranchesState", "copysign", "difference", "graft", "lerp", "product", "ratio", "sum_of"]


class BranchesState(NamedTuple):
    """State of a branching combinator: the tuple of its branches' states, in order."""

    branches: tuple


def _check_branches(name: str, branches: tuple, at_least: int = 1) -> None:
    if len(branches) < at_least:
        raise ValueError(f"{name} needs at least {at_least} transforms, got {len(branches)}")
    for i, tx in enumerate(branches):
        if not isinstance(tx, GradientTransformation):
            raise TypeError(f"{name} argument {i} must be a GradientTransformation, got {type(tx).__name__}")


# combine(outs, owned, treedef) -> list of output tensors; outs[i] is branch i's list of
# leaves, owned[i] whether the combinator may write into them.
Combine = Callable[[list, list, TreeDef], list]


def _branching(branches: tuple[GradientTransformation, ...], combine: Combine) -> GradientTransformation:
    """The transform running ``branches`` on the same update and ``combine``-ing their outputs."""
    runs = tuple(updater(tx) for tx in branches)
    declared = tuple(supports_inplace(tx) for tx in branches)
    last_declared = max((i for i, d in enumerate(declared) if d), default=None)

    def init(params):
        return BranchesState(tuple(tx.init(params) for tx in branches))

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        states = state.branches
        if len(states) != len(branches):
            raise ValueError(f"a combinator of {len(branches)} transforms got a state of {len(states)}")
        us, treedef = tensor_leaves(updates)
        if inplace:
            # copies first: a branch writing into the caller's buffers must not change what
            # the others read
            inputs = [updates if i == last_declared else tree_unflatten(F.clone(us), treedef)
                      for i in range(len(branches))]
        else:
            inputs = [updates] * len(branches)
        outs, owned, new_states = [], [], []
        for i, (run, s) in enumerate(zip(runs, states)):
            out, s = run(inputs[i], s, params, inplace and declared[i], extra_args)
            leaves, out_def = tensor_leaves(out)
            if out_def != treedef:
                raise ValueError(f"branch {i} returned updates of another structure than it was given")
            outs.append(leaves)
            # a declared branch run in place returns the buffers it got (ours) or fresh ones
            owned.append(inplace and declared[i])
            new_states.append(s)
        result = F.cast_like(combine(outs, owned, treedef), us)
        return tree_unflatten(result, treedef), BranchesState(tuple(new_states))

    return GradientTransformation(init, update)


def _fold(op: str, outs: list, owned: list) -> list:
    """``outs[0] op outs[1] op ...``, written into ``outs[0]`` when owned, else into a new list."""
    acc = getattr(F, op)(outs[0], outs[1], inplace=owned[0]) if len(outs) > 1 else (
        outs[0] if owned[0] else F.clone(outs[0]))
    for more in outs[2:]:
        getattr(F, op)(acc, more, inplace=True)
    return acc


def _on_real_parts(fn: Callable[[list, list], list], outs: list, owned: list) -> list:
    """``fn(outs, owned)`` on the real views of complex outputs (real and imaginary parts
    separately), mapped back to complex."""
    if not F.any_complex(outs[0]):
        return fn(outs, owned)
    rvs = [F.RealViews(o) for o in outs]
    views = [rv.real[0] for rv in rvs]
    result = fn(views, owned)
    return rvs[0].back(result)[0]


def _elementwise(branches) -> bool:
    return all(is_elementwise(tx) for tx in branches)


def _leafwise(branches) -> bool:
    return all(is_leafwise(tx) for tx in branches)


@transform(elementwise=lambda a: _elementwise(a["transforms"]), leafwise=lambda a: _leafwise(a["transforms"]),
           inplace=True)
def sum_of(*transforms: GradientTransformation) -> GradientTransformation:
    """The sum of several transforms of the same update: ``u <- t_1(u) + ... + t_n(u)``.

    Each ``t_i`` gets the incoming update and keeps its own state (``BranchesState``).
    torchzero's ``Add``/``Sum`` of modules.

    Example: ``gx.sum_of(gx.scale_by_adam(), gx.scale(0.1))`` adds a tenth of the gradient
    to Adam's direction.
    """
    _check_branches("sum_of", transforms)
    return _branching(transforms, lambda outs, owned, treedef: _fold("add", outs, owned))


@transform(elementwise=lambda a: _elementwise((a["minuend"], a["subtrahend"])),
           leafwise=lambda a: _leafwise((a["minuend"], a["subtrahend"])), inplace=True)
def difference(minuend: GradientTransformation, subtrahend: GradientTransformation) -> GradientTransformation:
    """``u <- a(u) - b(u)`` for ``a = minuend``, ``b = subtrahend`` (torchzero's ``Sub``).

    Example: ``gx.difference(gx.identity(), gx.ema(0.9))``: the gradient minus its average.
    """
    _check_branches("difference", (minuend, subtrahend))
    return _branching((minuend, subtrahend), lambda outs, owned, treedef: _fold("sub", outs, owned))


@transform(elementwise=lambda a: _elementwise(a["transforms"]), leafwise=lambda a: _leafwise(a["transforms"]),
           inplace=True)
def product(*transforms: GradientTransformation) -> GradientTransformation:
    """The elementwise product ``u <- t_1(u) * ... * t_n(u)`` (torchzero's ``Mul``/``Prod``);
    complex updates multiply their real and imaginary parts separately.

    Example: ``gx.product(gx.scale_by_sign(), gx.ema(0.9))``.
    """
    _check_branches("product", transforms)
    return _branching(transforms, lambda outs, owned, treedef: _on_real_parts(
        lambda o, w: _fold("mul", o, w), outs, owned))


@transform(elementwise=lambda a: _elementwise((a["numerator"], a["denominator"])),
           leafwise=lambda a: _leafwise((a["numerator"], a["denominator"])), inplace=True)
def ratio(numerator: GradientTransformation, denominator: GradientTransformation, eps: float = 0.0
          ) -> GradientTransformation:
    """``u <- a(u) / (b(u) + eps)`` elementwise, ``a = numerator``, ``b = denominator``
    (torchzero's ``Div``); complex updates divide their real and imaginary parts separately.

    Adam is ``gx.ratio(gx.ema(b1), gx.sqrt_ema_squared(b2, debias=True), eps=eps)``.
    Default ``eps=0``: a zero denominator gives inf or nan, as the division does.

    Example: ``gx.ratio(gx.ema(0.9), gx.sqrt_ema_squared(0.999, debias=True), eps=1e-8)``.
    """
    _check_branches("ratio", (numerator, denominator))
    check("eps", eps)

    def divide(outs, owned):
        num, den = outs
        if not is_value(eps, 0.0):
            den = F.add(den, eps, inplace=owned[1])
        return F.div(num, den, inplace=owned[0])

    return _branching((numerator, denominator), lambda outs, owned, treedef: _on_real_parts(divide, outs, owned))


@transform(elementwise=lambda a: _elementwise((a["start"], a["end"])),
           leafwise=lambda a: _leafwise((a["start"], a["end"])), inplace=True)
def lerp(start: GradientTransformation, end: GradientTransformation, weight: float | torch.Tensor
         ) -> GradientTransformation:
    """Linear interpolation of two transforms: ``u <- a(u) + weight * (b(u) - a(u))``
    with ``a = start``, ``b = end`` (``torch.lerp``; torchzero's ``Lerp``). ``weight`` is any
    real number (0 gives ``a``, 1 gives ``b``).

    Example: ``gx.lerp(gx.identity(), gx.ema(0.9), 0.5)``: half gradient, half momentum.
    """
    _check_branches("lerp", (start, end))
    check("weight", weight)

    def interpolate(outs, owned, treedef):
        a, b = outs
        if owned[0]:
            return F.lerp(a, b, weight, inplace=True)
        if owned[1]:  # a + w (b - a) written into b's buffers
            F.sub(b, a, inplace=True)
            F.mul(b, weight, inplace=True)
            return F.add(b, a, inplace=True)
        return F.lerp(a, b, weight)

    return _branching((start, end), interpolate)


@transform(elementwise=lambda a: _elementwise((a["magnitude"], a["sign"])),
           leafwise=lambda a: _leafwise((a["magnitude"], a["sign"])), inplace=True)
def copysign(magnitude: GradientTransformation, sign: GradientTransformation) -> GradientTransformation:
    """``u <- copysign(a(u), b(u))``: the magnitude of ``a = magnitude`` with the sign of
    ``b = sign``, elementwise (``torch.copysign``; torchzero's ``CopySign``). As in torch, the
    sign of a zero counts (``-0.0`` is negative); complex updates take the real and
    imaginary parts separately.

    Example: ``gx.copysign(gx.scale_by_adam(), gx.identity())``: Adam's magnitudes with the
    gradient's signs (Grams, Cao et al. 2024; see also :func:`gradtx.copy_grad_sign`).
    """
    _check_branches("copysign", (magnitude, sign))

    def combine(outs, owned):
        a, b = outs
        if owned[0]:
            for x, y in zip(a, b):
                x.copysign_(y)
            return a
        return [torch.copysign(x, y) for x, y in zip(a, b)]

    return _branching((magnitude, sign), lambda outs, owned, treedef: _on_real_parts(combine, outs, owned))


@transform(leafwise=lambda a: _leafwise((a["magnitude"], a["direction"])), inplace=True)
def graft(magnitude: GradientTransformation, direction: GradientTransformation, eps: float = 1e-16
          ) -> GradientTransformation:
    """Layer-wise grafting (Agarwal et al., 2020, "Disentangling adaptive gradient methods
    from learning rates"): the norm of one transform's step with the direction of another's,
    per tensor.

    ``u_i <- d_i * ||m_i|| / max(||d_i||, eps)`` for each leaf ``i``, with ``m = magnitude(u)``
    and ``d = direction(u)`` (l2 norms over the whole tensor, computed in float32 or wider).
    A zero direction stays zero. torchzero's ``Graft`` (``tensorwise=True``) is this rule.

    Example: ``gx.graft(gx.scale_by_adam(), gx.scale_by_muon())``: Muon's direction with
    Adam's per-layer step length.
    """
    _check_branches("graft", (magnitude, direction))
    check("eps", eps, low=0.0, low_open=True)

    def combine(outs, owned, treedef):
        m, d = outs
        m_norms = F.norms(m)
        d_norms = F.norms(d)
        factors = [(mn / dn.clamp_min(eps)).to(x.dtype if not x.is_complex() else x.real.dtype)
                   for mn, dn, x in zip(m_norms, d_norms, d)]
        return F.mul(d, factors, inplace=owned[1])

    return _branching((magnitude, direction), combine)

