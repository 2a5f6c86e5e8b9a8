"""Building blocks: small elementwise transforms that compose into optimizers.

Each block does one thing to the update (a power, a running maximum, a bias correction,
an EMA of squares), so that known optimizers can be written out of them with ``chain`` and
the branching combinators (:func:`gradtx.ratio`, :func:`gradtx.product`, ...). Adam, say::

    gx.ratio(gx.chain(gx.ema(0.9, debias=False), gx.debias(0.9)),
             gx.chain(gx.ema_squared(0.999), gx.debias(0.999), gx.sqrt(), gx.add(1e-8)))

gives ``gx.scale_by_adam()``'s numbers to round-off (torchzero composes Adam the same ways).
Every block acts elementwise; a complex update is taken as its real and imaginary parts
(as torch.optim steps complex parameters), so the compositions keep their meaning there.
The sign block is :func:`gradtx.scale_by_sign`; symmetric clipping is :func:`gradtx.clip_value`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from .. import _foreach as F  # noqa: N812
from .._hparams import check, check_beta, increment, is_value, new_count
from .._tree import Tree
from ..base import EmptyState, GradientTransformation, transform
from ._common import leaves, leaves_like, unflatten

__all__ = ["AccumulateMeanState", "AccumulatorState", "CenteredEmaSquaredState", "DebiasState", "EmaSquaredState",
           "abs", "accumulate_maximum", "accumulate_mean", "accumulate_minimum", "accumulate_sum", "add", "debias",
           "ema_squared", "pow", "reciprocal", "sqrt", "sqrt_ema_squared"]

_F64 = torch.float64


def _empty(params):
    del params
    return EmptyState()


def _real_parts(us: list[torch.Tensor], *lists: list[torch.Tensor]):
    """``(views, back)``: the updates (and state lists) with complex tensors seen as real, and
    ``back(out, *state)`` giving complex tensors again (identity for real trees)."""
    rv = F.real_views(us, *lists)
    if rv is None:
        return (us, *lists), lambda *xs: xs
    return rv.real, rv.back


def _workspace(xs: list[torch.Tensor], src: list[torch.Tensor], inplace: bool) -> list[torch.Tensor]:
    """Copies of ``src`` (state) to compute the output in: the update's own buffer where
    writing is allowed and the dtypes agree, else a new tensor in the state's precision (a
    bfloat16 update over float32 state is computed in float32, then cast)."""
    return [x.copy_(y) if inplace and x.dtype == y.dtype else y.clone() for x, y in zip(xs, src)]


def _stateless_block(op: Callable[[list, bool], list]) -> GradientTransformation:
    """A stateless elementwise block: ``op(real_leaves, inplace) -> leaves``."""

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del params, extra_args
        us, treedef = leaves(updates)
        (xs,), back = _real_parts(us)
        out = F.cast_like(op(xs, inplace), xs)
        return unflatten(treedef, back(out)[0]), state

    return GradientTransformation(_empty, update)


@transform(elementwise=True, inplace=True)
def abs() -> GradientTransformation:  # noqa: A001 - the block's name, as torchzero's Abs
    """``u <- |u|`` elementwise (a complex update: of its real and imaginary parts).

    Example: ``gx.chain(gx.abs(), gx.accumulate_maximum())`` tracks the largest magnitude seen.
    """
    return _stateless_block(lambda xs, inplace: F.abs(xs, inplace=inplace))


@transform(elementwise=True, inplace=True)
def sqrt() -> GradientTransformation:
    """``u <- sqrt(u)`` elementwise (NaN where ``u < 0``, as ``torch.sqrt``).

    Example: ``gx.chain(gx.ema_squared(0.999), gx.sqrt())`` is :func:`sqrt_ema_squared`.
    """
    return _stateless_block(lambda xs, inplace: F.sqrt(xs, inplace=inplace))


@transform(elementwise=True, inplace=True)
def reciprocal() -> GradientTransformation:
    """``u <- 1 / u`` elementwise (``inf`` where ``u == 0``, as ``torch.reciprocal``).

    Example: ``gx.chain(gx.sqrt_ema_squared(0.99), gx.add(1e-8), gx.reciprocal())``: RMSprop's
    preconditioner, to multiply another branch by (:func:`gradtx.product`).
    """
    return _stateless_block(lambda xs, inplace: F.reciprocal(xs, inplace=inplace))


@transform(elementwise=True, inplace=True)
def pow(exponent: float | torch.Tensor) -> GradientTransformation:  # noqa: A001 - torch's and torchzero's name
    """``u <- u ** exponent`` elementwise (``torch.pow``: NaN for a negative ``u`` and a
    non-integer exponent).

    Example: ``gx.chain(gx.ema_squared(0.999), gx.debias(0.999), gx.pow(0.5))``.
    """
    check("exponent", exponent)
    return _stateless_block(lambda xs, inplace: F.pow(xs, exponent, inplace=inplace))


@transform(elementwise=True, inplace=True)
def add(constant: float | torch.Tensor) -> GradientTransformation:
    """``u <- u + constant`` elementwise (to each real and imaginary part of a complex update).

    Example: ``gx.chain(gx.sqrt_ema_squared(0.999, debias=True), gx.add(1e-8))``: Adam's
    denominator.
    """
    check("constant", constant)
    return _stateless_block(lambda xs, inplace: F.add(xs, constant, inplace=inplace))


# --- step-dependent and accumulating blocks ---------------------------------------------


class DebiasState(NamedTuple):
    count: torch.Tensor  # int32, steps taken


def _correction(beta, count: torch.Tensor, power) -> torch.Tensor:
    """``(1 - beta**t)**power`` in float64."""
    bc = 1.0 - beta ** count.to(_F64)
    return bc if is_value(power, 1.0) else bc ** power


@transform(elementwise=True, inplace=True)
def debias(beta: float | torch.Tensor, power: float = 1.0) -> GradientTransformation:
    """Bias correction of an EMA started at zero: ``u <- u / (1 - beta^t)^power`` with ``t`` the
    step count (from 1) this block keeps (torchzero's ``Debias``).

    ``gx.chain(gx.ema(b, debias=False), gx.debias(b))`` is ``gx.ema(b)``; with ``power=0.5`` it
    corrects a square root of an EMA of squares.

    Example: ``gx.chain(gx.ema_squared(0.999), gx.debias(0.999), gx.sqrt())``.
    """
    check_beta("beta", beta)
    check("power", power)

    def init(params):
        del params
        return DebiasState(count=new_count())

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del params, extra_args
        us, treedef = leaves(updates)
        count = increment(state.count, inplace)
        return unflatten(treedef, F.div(us, _correction(beta, count, power), inplace=inplace)), DebiasState(count)

    return GradientTransformation(init, update)


class EmaSquaredState(NamedTuple):
    count: torch.Tensor  # int32, steps taken
    nu: Tree  # EMA of u^2


class CenteredEmaSquaredState(NamedTuple):
    count: torch.Tensor  # int32, steps taken
    mu: Tree  # EMA of u
    nu: Tree  # EMA of u^2


def _ema_squared(decay, debias: bool, centered: bool, root: bool) -> GradientTransformation:
    check_beta("decay", decay)

    def zeros(params):
        ps, treedef = leaves(params)
        return unflatten(treedef, [torch.zeros_like(p) for p in ps])

    def init(params):
        if centered:
            return CenteredEmaSquaredState(count=new_count(), mu=zeros(params), nu=zeros(params))
        return EmaSquaredState(count=new_count(), nu=zeros(params))

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del params, extra_args
        us, treedef = leaves(updates)
        nus = leaves_like(state.nu, treedef)
        mus = leaves_like(state.mu, treedef) if centered else []
        (xs, nus, *rest), back = _real_parts(us, nus, *([mus] if centered else []))
        nus = F.mul(nus, decay, inplace=inplace)
        F.addcmul(nus, xs, xs, 1.0 - decay, inplace=True)
        if centered:
            mus = F.lerp(rest[0], xs, 1.0 - decay, inplace=inplace)
        count = increment(state.count, inplace)
        out = _workspace(xs, nus, inplace)  # never the state's memory
        if centered:
            # nu_hat - mu_hat^2, with each EMA debiased when asked
            mean = F.div(mus, _correction(decay, count, 1.0)) if debias else mus
            if debias:
                F.div(out, _correction(decay, count, 1.0), inplace=True)
            F.addcmul(out, mean, mean, -1.0, inplace=True)
            # round-off may take a zero variance (the first debiased step) below 0: no sqrt of it
            out = F.clamp(out, 0.0, float("inf"), inplace=True)
        elif debias:
            F.div(out, _correction(decay, count, 1.0), inplace=True)
        if root:
            F.sqrt(out, inplace=True)
        out = F.cast_like(out, xs)
        out, nus, *rest = back(out, nus, *([mus] if centered else []))
        if centered:
            return unflatten(treedef, out), CenteredEmaSquaredState(count, unflatten(treedef, rest[0]),
                                                                     unflatten(treedef, nus))
        return unflatten(treedef, out), EmaSquaredState(count, unflatten(treedef, nus))

    return GradientTransformation(init, update)


@transform(elementwise=True, inplace=True)
def ema_squared(decay: float = 0.999, debias: bool = False, centered: bool = False) -> GradientTransformation:
    """Exponential moving average of the squared update (torchzero's ``EMASquared``).

    ``v <- decay v + (1 - decay) u^2``; ``u <- v``, or ``v / (1 - decay^t)`` with ``debias``.
    ``centered=True`` also keeps ``m <- decay m + (1 - decay) u`` and gives the variance
    estimate ``u <- max(v - m^2, 0)`` (each debiased with ``debias``; the maximum only stops
    round-off below zero), as centered RMSprop does (``torch.optim.RMSprop(centered=True)``).

    Example: ``gx.chain(gx.ema_squared(0.999), gx.debias(0.999), gx.sqrt(), gx.add(1e-8))``
    is Adam's denominator.
    """
    return _ema_squared(decay, debias, centered, root=False)


@transform(elementwise=True, inplace=True)
def sqrt_ema_squared(decay: float = 0.999, debias: bool = False, centered: bool = False) -> GradientTransformation:
    """The square root of :func:`ema_squared`: ``u <- sqrt(v)`` (``sqrt(v / (1 - decay^t))``
    with ``debias``; ``sqrt(v - m^2)`` when ``centered``); torchzero's ``SqrtEMASquared``.

    Example: ``gx.ratio(gx.identity(), gx.chain(gx.sqrt_ema_squared(0.99), gx.add(1e-8)))`` is
    RMSprop's rescaling (``gx.scale_by_rms(0.99, 1e-8, eps_in_sqrt=False)``).
    """
    return _ema_squared(decay, debias, centered, root=True)


class AccumulatorState(NamedTuple):
    acc: Tree  # the running maximum, minimum or sum


class AccumulateMeanState(NamedTuple):
    count: torch.Tensor  # int32, steps taken
    acc: Tree  # the running sum


def _accumulator(kind: str) -> GradientTransformation:
    start = {"maximum": float("-inf"), "minimum": float("inf"), "sum": 0.0, "mean": 0.0}[kind]
    combine = {"maximum": F.maximum, "minimum": F.minimum, "sum": F.add, "mean": F.add}[kind]

    def init(params):
        ps, treedef = leaves(params)
        acc = unflatten(treedef, [torch.full_like(p, start) if not p.is_complex() else
                                  torch.view_as_complex(torch.full_like(torch.view_as_real(p), start))
                                  for p in ps])
        return AccumulateMeanState(new_count(), acc) if kind == "mean" else AccumulatorState(acc)

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del params, extra_args
        us, treedef = leaves(updates)
        (xs, accs), back = _real_parts(us, leaves_like(state.acc, treedef))
        accs = combine(accs, xs, inplace=inplace)
        out = _workspace(xs, accs, inplace)  # never the state's memory
        if kind == "mean":
            count = increment(state.count, inplace)
            F.div(out, count.to(_F64), inplace=True)
        out = F.cast_like(out, xs)
        out, accs = back(out, accs)
        if kind == "mean":
            return unflatten(treedef, out), AccumulateMeanState(count, unflatten(treedef, accs))
        return unflatten(treedef, out), AccumulatorState(unflatten(treedef, accs))

    return GradientTransformation(init, update)


@transform(elementwise=True, inplace=True)
def accumulate_maximum() -> GradientTransformation:
    """Running elementwise maximum of the updates: ``a <- max(a, u)``; ``u <- a``
    (``a`` starts at ``-inf``, so the first output is the first update; torchzero's
    ``AccumulateMaximum``). AMSGrad keeps the running maximum of its second moment.

    Example: ``gx.chain(gx.ema_squared(0.999), gx.accumulate_maximum())``.
    """
    return _accumulator("maximum")


@transform(elementwise=True, inplace=True)
def accumulate_minimum() -> GradientTransformation:
    """Running elementwise minimum: ``a <- min(a, u)``; ``u <- a`` (``a`` starts at ``inf``).

    Example: ``gx.chain(gx.abs(), gx.accumulate_minimum())``.
    """
    return _accumulator("minimum")


@transform(elementwise=True, inplace=True)
def accumulate_sum() -> GradientTransformation:
    """Running sum of the updates: ``a <- a + u``; ``u <- a`` (``a`` starts at 0;
    torchzero's ``AccumulateSum``). Plain heavy-ball momentum with ``decay = 1``.

    Example: ``gx.chain(gx.accumulate_sum(), gx.scale_by_lr(1e-3))``.
    """
    return _accumulator("sum")


@transform(elementwise=True, inplace=True)
def accumulate_mean() -> GradientTransformation:
    """Running mean of the updates: ``a <- a + u``, ``t <- t + 1``; ``u <- a / t``
    (torchzero's ``AccumulateMean``).

    Example: ``gx.chain(gx.accumulate_mean(), gx.scale_by_lr(1e-2))``: the average gradient.
    """
    return _accumulator("mean")
