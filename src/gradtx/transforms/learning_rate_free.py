"""Learning-rate-free methods: Prodigy, D-Adaptation (Adam, SGD), DoWG, Mechanic.

Each estimates the distance to the solution, ``d``, from sums over every parameter, so
none is leafwise: under ``gx.Optimizer`` it runs once over all param groups. The running
scalars (``d``, its numerator, ...) are 0-dim tensors in the widest dtype of the params
(float32 or wider), made on the params' device, and so is the sum ``s`` that ``d`` is
estimated from (a low-precision leaf's share would otherwise be rounded before the sum); the
learning rate ``lr`` enters the estimate, so it is kept in the state (``param_groups[i]['lr']``).
The transforms return the step to *subtract* (learning rate included): the aliases follow them with ``scale(-1)``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch

from .. import _foreach as F  # noqa: N812
from .._foreach import wide_dtype
from .._hparams import check, check_beta, check_int, full_like, is_value, new_count, to_state
from .._tree import Tree
from ..authoring import per_tensor
from ..base import GradientTransformation, supports_inplace, transform, updater
from ._common import first_device, leaves, leaves_like, need_params, unflatten
from .recent import real_rule

__all__ = ["DAdaptAdamState", "DAdaptSGDState", "DoWGState", "MechanicState", "ProdigyState", "mechanize",
           "scale_by_cocob", "scale_by_dadapt_adam", "scale_by_dadapt_sgd", "scale_by_dowg", "scale_by_prodigy"]


def _scalar_dtype(ps: list[torch.Tensor]) -> torch.dtype:
    return wide_dtype(*{p.dtype for p in ps})


def _scalar(value, ps: list[torch.Tensor]) -> torch.Tensor:
    # on the params' device: a running value, never mistaken for a hyperparameter by the adapter
    dtype, device = _scalar_dtype(ps), first_device(ps)
    if isinstance(value, torch.Tensor):  # a 0-dim hyperparameter (d0), autograd history kept
        return value.to(device=device, dtype=dtype) + torch.zeros((), dtype=dtype, device=device)
    return torch.full((), value, dtype=dtype, device=device)


def _zeros(ps: list[torch.Tensor], treedef, dtype: torch.dtype | None = None) -> Tree:
    return unflatten(treedef, [torch.zeros_like(p, dtype=None if dtype is None else _like_param(dtype, p))
                               for p in ps])


def _like_param(dtype: torch.dtype, p: torch.Tensor) -> torch.dtype:
    # a complex parameter's state stays complex, at the precision asked for
    return dtype.to_complex() if p.is_complex() else dtype


def _sum(values: list[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
    """The sum of 0-dim tensors in ``like``'s dtype and device (0 for none)."""
    total = torch.zeros((), dtype=like.dtype, device=like.device)
    for v in values:
        total = total + v.to(dtype=like.dtype, device=like.device)
    return total


def _safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``num / den`` where ``den != 0``, else 0 (no NaN in a gradient through the unused branch)."""
    ok = den != 0
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(num))


def _capped_growth(d: torch.Tensor, d_hat: torch.Tensor, growth_rate) -> torch.Tensor:
    """``min(d_hat, d * growth_rate)``; an infinite growth rate leaves ``d_hat``."""
    if is_value(growth_rate, math.inf):
        return d_hat
    return torch.minimum(d_hat, d * growth_rate)


def _counted(count: torch.Tensor, progress: torch.Tensor) -> torch.Tensor:
    """The count (on the CPU), plus one when the step moved (``progress``, on the params' device).
    Meta and fake ``progress`` (a memory estimate) has no value to move to the CPU (fake, a count
    that could not be read after): such a step is counted as one that moved, as every step does
    once a gradient is not zero."""
    if F.without_data(progress):
        return count + 1
    return count + progress.to(device=count.device, dtype=count.dtype)


def _caster(device: torch.device, dtype: torch.dtype):
    """``x -> x`` as a 0-dim tensor of ``dtype`` on ``device`` (a number taken exactly, as float64)."""
    def cast(x):
        x = x if isinstance(x, torch.Tensor) else torch.tensor(float(x), dtype=torch.float64)
        return x.to(device=device, dtype=dtype)

    return cast


def _hp(value, like: torch.Tensor):
    """A hyperparameter as a number or a tensor on ``like``'s device (autograd kept)."""
    return value.to(like.device) if isinstance(value, torch.Tensor) else value


# --- Prodigy -------------------------------------------------------------------------------


class ProdigyState(NamedTuple):
    count: torch.Tensor  # int32, steps taken
    lr: torch.Tensor  # float64 0-dim: param_groups[i]['lr']
    d: torch.Tensor  # 0-dim: the distance estimate
    d_max: torch.Tensor  # 0-dim
    d_numerator: torch.Tensor  # 0-dim: beta3-weighted sum of (d/d0) dlr <g, x0 - x>
    exp_avg: Tree  # d-weighted first moment
    exp_avg_sq: Tree  # d^2-weighted second moment
    s: Tree  # beta3-weighted sum of (d/d0) dlr g, in the widest params dtype (d is a sum over it)
    init_params: Tree  # x0


@transform(inplace=True)
def scale_by_prodigy(lr: float | torch.Tensor = 1.0, b1: float = 0.9, b2: float = 0.999, beta3: float | None = None,
                     eps: float = 1e-8, weight_decay: float = 0.0, decouple: bool = True,
                     use_bias_correction: bool = False, safeguard_warmup: bool = False, d0: float = 1e-6,
                     d_coef: float = 1.0, growth_rate: float = math.inf) -> GradientTransformation:
    """Prodigy (Mishchenko & Defazio, 2024), as the authors' ``prodigyopt.Prodigy``; needs
    ``params``. Returns the step to subtract (see :func:`gradtx.prodigy`).

    With ``k`` the steps taken, ``bc = sqrt(1 - b2^(k+1)) / (1 - b1^(k+1))`` (1 unless
    ``use_bias_correction``), ``dlr = d lr bc``, ``beta3`` default ``sqrt(b2)``, and
    ``g <- g + weight_decay x`` first when not ``decouple``:
    ``r <- beta3 r + (d/d0) dlr <g, x0 - x>`` (sums over all leaves);
    ``m <- b1 m + d (1-b1) g``; ``v <- b2 v + d^2 (1-b2) g^2``;
    ``s <- beta3 s + (d/d0) dlr g`` (``(d/d0) d g`` with ``safeguard_warmup``);
    ``d_hat = d_coef r / sum|s|``; ``d <- max(d, d_hat)`` while ``d = d0``;
    ``d_max <- max(d_max, d_hat)``; ``d <- min(d_max, growth_rate d)``;
    step ``dlr m / (sqrt(v) + d eps)`` (``dlr d g / (sqrt(v) + d eps)`` when ``b1 = 0``), plus
    ``weight_decay dlr x`` when ``decouple``. While ``sum|s| = 0`` (zero gradients) the step is
    0 and ``d``, ``r`` and ``k`` stay, as the reference returns early.

    Deviation: the reference's ``slice_p`` (estimating on every p-th element) is not offered
    (it is 1 here); complex params are refused. ``lr`` must be > 0.

    Example: ``gx.chain(gx.scale_by_prodigy(), gx.scale(-1.0))`` (that is ``gx.prodigy()``).
    """
    check("lr", lr, low=0.0, low_open=True)
    check_beta("b1", b1)
    check_beta("b2", b2)
    if beta3 is not None:
        check_beta("beta3", beta3)
    check("eps", eps, low=0.0)
    check("weight_decay", weight_decay, low=0.0)
    check("d0", d0, low=0.0, low_open=True)
    check("d_coef", d_coef, low=0.0, low_open=True)
    check("growth_rate", growth_rate, low=1.0, allow_inf=True)

    def init(params):
        ps, treedef = leaves(params)
        ps = [p.detach() for p in ps]
        return ProdigyState(new_count(), to_state(lr), _scalar(d0, ps), _scalar(d0, ps), _scalar(0.0, ps),
                            _zeros(ps, treedef), _zeros(ps, treedef), _zeros(ps, treedef, _scalar_dtype(ps)),
                            unflatten(treedef, [p.clone() for p in ps]))

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del inplace, extra_args  # every result is a fresh tensor
        need_params("scale_by_prodigy", params)
        gs, treedef = leaves(updates)
        ps = leaves_like(params, treedef, "params")
        ms, vs, ss = (leaves_like(t, treedef) for t in (state.exp_avg, state.exp_avg_sq, state.s))
        x0s = leaves_like(state.init_params, treedef)
        rv = F.real_views(gs, ms, vs, ss, ps, x0s)  # complex leaves: real and imaginary parts, as torch.optim
        if rv:
            gs, ms, vs, ss, ps, x0s = rv.real
        d, dtype = state.d, state.d.dtype
        lr_ = state.lr.to(device=d.device, dtype=dtype)
        b1_, b2_ = _hp(b1, d), _hp(b2, d)
        b3 = b2_ ** 0.5 if beta3 is None else _hp(beta3, d)
        k1 = (state.count + 1).to(device=d.device, dtype=dtype)
        bc = (1 - b2_ ** k1) ** 0.5 / (1 - b1_ ** k1) if use_bias_correction else 1.0
        dlr = d * lr_ * bc
        ratio = d / d0
        s_scale = ratio * (d if safeguard_warmup else dlr)
        new_m, new_v, new_s, deltas, l1s, gws = [], [], [], [], [], []
        for g, p, m, v, s, x0 in zip(gs, ps, ms, vs, ss, x0s):
            w = dtype  # the widest dtype: every leaf's share of the sums as precise as the sums
            gw, pw = g.to(w), p.to(w)
            if not decouple and not is_value(weight_decay, 0.0):
                gw = gw + _hp(weight_decay, pw) * pw
            gws.append(gw)
            deltas.append((gw * (x0.to(w) - pw)).sum())
            c = _caster(p.device, w)
            new_m.append((c(b1_) * m.to(w) + c(d * (1 - b1_)) * gw).to(m.dtype))
            new_v.append((c(b2_) * v.to(w) + c(d * d * (1 - b2_)) * gw * gw).to(v.dtype))
            s_new = c(b3) * s.to(w) + c(s_scale) * gw
            new_s.append(s_new.to(s.dtype))
            l1s.append(s_new.abs().sum())
        d_numerator = b3 * state.d_numerator + ratio * dlr * _sum(deltas, d)
        d_denom = _sum(l1s, d)
        d_hat = d_coef * _safe_div(d_numerator, d_denom)
        d_new = torch.where(d == d0, torch.maximum(d, d_hat), d)
        d_max = torch.maximum(state.d_max, d_hat)
        d_new = d_max if is_value(growth_rate, math.inf) else torch.minimum(d_max, d_new * growth_rate)
        progress = d_denom != 0
        d_new = torch.where(progress, d_new, d)
        d_max = torch.where(progress, d_max, state.d_max)
        d_numerator = torch.where(progress, d_numerator, state.d_numerator)
        count = _counted(state.count, progress)
        out = []
        for g, p, gw, m, v in zip(gs, ps, gws, new_m, new_v):
            w = gw.dtype
            c = _caster(p.device, w)
            denom = v.to(w).sqrt() + c(d_new * eps)
            step = (c(dlr) * m.to(w) if not is_value(b1, 0.0) else c(dlr * d_new) * gw) / denom
            if decouple and not is_value(weight_decay, 0.0):
                step = step + c(_hp(weight_decay, d) * dlr) * p.to(w)
            out.append((step * c(progress.to(dtype))).to(g.dtype))
        if rv:
            out, new_m, new_v, new_s = rv.back(out, new_m, new_v, new_s)
        return unflatten(treedef, out), ProdigyState(
            count, state.lr, d_new, d_max, d_numerator, unflatten(treedef, new_m), unflatten(treedef, new_v),
            unflatten(treedef, new_s), state.init_params)

    return GradientTransformation(init, update)


# --- D-Adaptation Adam -----------------------------------------------------------------------


class DAdaptAdamState(NamedTuple):
    count: torch.Tensor  # int32, steps taken
    lr: torch.Tensor  # float64 0-dim: param_groups[i]['lr']
    d: torch.Tensor  # 0-dim: the distance estimate
    numerator_weighted: torch.Tensor  # 0-dim
    exp_avg: Tree  # dlr-weighted first moment
    exp_avg_sq: Tree
    s: Tree  # in the widest params dtype (d is a sum over it)


@transform(inplace=True)
def scale_by_dadapt_adam(lr: float | torch.Tensor = 1.0, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                         weight_decay: float = 0.0, decouple: bool = False, use_bias_correction: bool = False,
                         d0: float = 1e-6, growth_rate: float = math.inf) -> GradientTransformation:
    """D-Adaptation Adam (Defazio & Mishchenko, 2023), as ``dadaptation.DAdaptAdam``; returns
    the step to subtract (see :func:`gradtx.dadapt_adam`).

    With ``bc`` as in :func:`scale_by_prodigy`, ``dlr = d lr bc``, ``g <- g + weight_decay x``
    first when not ``decouple``:
    ``a = sum dlr <g, s / (sqrt(v) + eps)>`` (the old ``s``, ``v``; sums over all leaves);
    ``m <- b1 m + dlr (1-b1) g``; ``v <- b2 v + (1-b2) g^2``;
    ``s <- sqrt(b2) s + dlr (1 - sqrt(b2)) g``;
    ``n <- sqrt(b2) n + (1 - sqrt(b2)) a``; ``d_hat = n / ((1 - sqrt(b2)) sum|s|)``;
    ``d <- max(d, min(d_hat, growth_rate d))``; step ``m / (sqrt(v) + eps)``, plus
    ``weight_decay dlr x`` when ``decouple``. While ``sum|s| = 0`` the step is 0 and ``d``,
    ``n`` and ``k`` stay, as the reference returns early. The reference's ``layer_scale`` is 1.

    Example: ``gx.chain(gx.scale_by_dadapt_adam(), gx.scale(-1.0))`` (``gx.dadapt_adam()``).
    """
    check("lr", lr, low=0.0, low_open=True)
    check_beta("b1", b1)
    check_beta("b2", b2)
    check("eps", eps, low=0.0)
    check("weight_decay", weight_decay, low=0.0)
    check("d0", d0, low=0.0, low_open=True)
    check("growth_rate", growth_rate, low=1.0, allow_inf=True)

    def init(params):
        ps, treedef = leaves(params)
        return DAdaptAdamState(new_count(), to_state(lr), _scalar(d0, ps), _scalar(0.0, ps), _zeros(ps, treedef),
                               _zeros(ps, treedef), _zeros(ps, treedef, _scalar_dtype(ps)))

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del inplace, extra_args
        need_params("scale_by_dadapt_adam", params)
        gs, treedef = leaves(updates)
        ps = leaves_like(params, treedef, "params")
        ms, vs, ss = (leaves_like(t, treedef) for t in (state.exp_avg, state.exp_avg_sq, state.s))
        rv = F.real_views(gs, ms, vs, ss, ps)
        if rv:
            gs, ms, vs, ss, ps = rv.real
        d, dtype = state.d, state.d.dtype
        lr_ = state.lr.to(device=d.device, dtype=dtype)
        b1_, b2_ = _hp(b1, d), _hp(b2, d)
        sb2 = b2_ ** 0.5
        k1 = (state.count + 1).to(device=d.device, dtype=dtype)
        bc = (1 - b2_ ** k1) ** 0.5 / (1 - b1_ ** k1) if use_bias_correction else 1.0
        dlr = d * lr_ * bc
        new_m, new_v, new_s, dots, l1s = [], [], [], [], []
        for g, p, m, v, s in zip(gs, ps, ms, vs, ss):
            w = dtype  # the widest dtype: every leaf's share of the sums as precise as the sums
            c = _caster(p.device, w)
            gw = g.to(w)
            if not decouple and not is_value(weight_decay, 0.0):
                gw = gw + c(weight_decay) * p.to(w)
            dots.append((gw * s.to(w) / (v.to(w).sqrt() + c(eps))).sum())
            new_m.append((c(b1_) * m.to(w) + c(dlr * (1 - b1_)) * gw).to(m.dtype))
            new_v.append((c(b2_) * v.to(w) + c(1 - b2_) * gw * gw).to(v.dtype))
            s_new = c(sb2) * s.to(w) + c(dlr * (1 - sb2)) * gw
            new_s.append(s_new.to(s.dtype))
            l1s.append(s_new.abs().sum())
        numerator = sb2 * state.numerator_weighted + (1 - sb2) * dlr * _sum(dots, d)
        sk_l1 = _sum(l1s, d)
        d_hat = _safe_div(numerator, (1 - sb2) * sk_l1)
        d_new = torch.maximum(d, _capped_growth(d, d_hat, growth_rate))
        progress = sk_l1 != 0
        d_new = torch.where(progress, d_new, d)
        numerator = torch.where(progress, numerator, state.numerator_weighted)
        count = _counted(state.count, progress)
        out = []
        for g, p, m, v in zip(gs, ps, new_m, new_v):
            w = dtype  # the widest dtype: every leaf's share of the sums as precise as the sums
            c = _caster(p.device, w)
            step = m.to(w) / (v.to(w).sqrt() + c(eps))
            if decouple and not is_value(weight_decay, 0.0):
                step = step + c(_hp(weight_decay, d) * dlr) * p.to(w)
            out.append((step * c(progress.to(dtype))).to(g.dtype))
        if rv:
            out, new_m, new_v, new_s = rv.back(out, new_m, new_v, new_s)
        return unflatten(treedef, out), DAdaptAdamState(count, state.lr, d_new, numerator, unflatten(treedef, new_m),
                                                        unflatten(treedef, new_v), unflatten(treedef, new_s))

    return GradientTransformation(init, update)


# --- D-Adaptation SGD ------------------------------------------------------------------------


class DAdaptSGDState(NamedTuple):
    count: torch.Tensor  # int32, steps taken
    lr: torch.Tensor  # float64 0-dim: param_groups[i]['lr']
    d: torch.Tensor  # 0-dim: the distance estimate
    numerator_weighted: torch.Tensor  # 0-dim
    g0_norm: torch.Tensor  # 0-dim: ||g_0||, set at the first step
    s: Tree  # sum of dlr g, in the widest params dtype (d is a sum over it)
    init_params: Tree  # x0


@transform(inplace=True)
def scale_by_dadapt_sgd(lr: float | torch.Tensor = 1.0, momentum: float = 0.0, weight_decay: float = 0.0,
                        d0: float = 1e-6, growth_rate: float = math.inf) -> GradientTransformation:
    """D-Adaptation SGD (Defazio & Mishchenko, 2023), as ``dadaptation.DAdaptSGD``; needs
    ``params``; returns the step to subtract (see :func:`gradtx.dadapt_sgd`).

    ``||g_0||`` is the global norm of the first gradient (taken before weight decay, as the
    reference does); ``dlr = d lr / ||g_0||``; ``g <- g + weight_decay x``;
    ``n <- n + dlr <g, s>`` (the old ``s``; sums over all leaves); ``s <- s + dlr g``;
    ``d_hat = 2 n / ||s||``; ``d <- max(d, min(d_hat, growth_rate d))``;
    ``z = x0 - s`` and ``x <- (1 - c) x + c z`` with ``c = 1 - momentum``: the step is
    ``c (x - z)``. While ``s = 0`` the step is 0 and ``d``, ``n`` and ``k`` stay.

    Example: ``gx.chain(gx.scale_by_dadapt_sgd(momentum=0.9), gx.scale(-1.0))`` (``gx.dadapt_sgd``).
    """
    check("lr", lr, low=0.0, low_open=True)
    check_beta("momentum", momentum)
    check("weight_decay", weight_decay, low=0.0)
    check("d0", d0, low=0.0, low_open=True)
    check("growth_rate", growth_rate, low=1.0, allow_inf=True)

    def init(params):
        ps, treedef = leaves(params)
        ps = [p.detach() for p in ps]
        return DAdaptSGDState(new_count(), to_state(lr), _scalar(d0, ps), _scalar(0.0, ps), _scalar(0.0, ps),
                              _zeros(ps, treedef, _scalar_dtype(ps)), unflatten(treedef, [p.clone() for p in ps]))

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del inplace, extra_args
        need_params("scale_by_dadapt_sgd", params)
        gs, treedef = leaves(updates)
        ps = leaves_like(params, treedef, "params")
        ss = leaves_like(state.s, treedef)
        x0s = leaves_like(state.init_params, treedef)
        rv = F.real_views(gs, ss, ps, x0s)
        if rv:
            gs, ss, ps, x0s = rv.real
        d, dtype = state.d, state.d.dtype
        lr_ = state.lr.to(device=d.device, dtype=dtype)
        first = state.count == 0
        g_sq = _sum([(g.to(dtype) ** 2).sum() for g in gs], d)
        g0 = torch.where(first.to(d.device), g_sq.sqrt(), state.g0_norm)
        dlr = _safe_div(d * lr_, g0)
        new_s, dots, sqs = [], [], []
        for g, p, s in zip(gs, ps, ss):
            w = dtype  # the widest dtype: every leaf's share of the sums as precise as the sums
            c = _caster(p.device, w)
            gw = g.to(w)
            if not is_value(weight_decay, 0.0):
                gw = gw + c(weight_decay) * p.to(w)
            dots.append((gw * s.to(w)).sum())
            s_new = s.to(w) + c(dlr) * gw
            new_s.append(s_new.to(s.dtype))
            sqs.append((s_new * s_new).sum())
        numerator = state.numerator_weighted + dlr * _sum(dots, d)
        sk_sq = _sum(sqs, d)
        d_hat = 2 * _safe_div(numerator, sk_sq.sqrt())
        d_new = torch.maximum(d, _capped_growth(d, d_hat, growth_rate))
        progress = sk_sq != 0
        d_new = torch.where(progress, d_new, d)
        numerator = torch.where(progress, numerator, state.numerator_weighted)
        count = _counted(state.count, progress)
        out = []
        for g, p, s, x0 in zip(gs, ps, new_s, x0s):
            w = dtype  # the widest dtype: every leaf's share of the sums as precise as the sums
            c = _caster(p.device, w)
            z = x0.to(w) - s.to(w)
            step = c(1 - _hp(momentum, d)) * (p.to(w) - z)
            out.append((step * c(progress.to(dtype))).to(g.dtype))
        if rv:
            out, new_s = rv.back(out, new_s)
        return unflatten(treedef, out), DAdaptSGDState(count, state.lr, d_new, numerator, g0,
                                                       unflatten(treedef, new_s), state.init_params)

    return GradientTransformation(init, update)


# --- DoWG ----------------------------------------------------------------------------------


class DoWGState(NamedTuple):
    init_params: Tree  # x0
    estim_sq_dist: torch.Tensor  # 0-dim: max_t ||x_t - x0||^2
    weighted_sq_norm_grads: torch.Tensor  # 0-dim: sum_t r_t^2 ||g_t||^2


@transform(inplace=True)
def scale_by_dowg(init_estim_sq_dist: float | None = None, eps: float = 1e-4) -> GradientTransformation:
    """Distance over weighted gradients (DoWG; Khaled et al., 2023), as
    ``optax.contrib.scale_by_dowg``; needs ``params``.

    ``r^2 <- max(r^2, ||x - x0||^2)``, ``v <- v + r^2 ||g||^2`` (global norms),
    ``u <- r^2 / (sqrt(v) + eps) g``; ``r^2`` starts at ``init_estim_sq_dist`` (``eps`` when
    ``None``). Follow with ``scale_by_lr(lr)``. The scalars are kept in the widest params
    dtype (optax: the lowest).

    Example: ``gx.chain(gx.scale_by_dowg(), gx.scale_by_lr(1.0))`` (that is ``gx.dowg()``).
    """
    if init_estim_sq_dist is not None:
        check("init_estim_sq_dist", init_estim_sq_dist, low=0.0)
    check("eps", eps, low=0.0)

    def init(params):
        ps, treedef = leaves(params)
        ps = [p.detach() for p in ps]
        start = eps if init_estim_sq_dist is None else init_estim_sq_dist
        return DoWGState(unflatten(treedef, [p.clone() for p in ps]), _scalar(start, ps), _scalar(0.0, ps))

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del inplace, extra_args
        need_params("scale_by_dowg", params)
        gs, treedef = leaves(updates)
        ps = F.as_real(leaves_like(params, treedef, "params"))
        x0s = F.as_real(leaves_like(state.init_params, treedef))
        like = state.estim_sq_dist
        dtype = like.dtype
        dist = _sum([((x0.to(dtype) - p.to(dtype)) ** 2).sum() for p, x0 in zip(ps, x0s)], like)
        estim = torch.maximum(state.estim_sq_dist, dist)
        g_sq = _sum([(g.to(dtype) ** 2).sum() for g in F.as_real(gs)], like)
        weighted = estim * g_sq + state.weighted_sq_norm_grads
        step = estim / (weighted.sqrt() + eps)
        out = [g * step.to(device=g.device, dtype=F.real_dtype(g.dtype)) for g in gs]
        return unflatten(treedef, out), DoWGState(
            state.init_params, estim, weighted)

    return GradientTransformation(init, update)


# --- Mechanic ------------------------------------------------------------------------------


class MechanicState(NamedTuple):
    base_optimizer_state: Any
    count: torch.Tensor  # int32, steps taken
    r: torch.Tensor  # (num_betas,): the betting rewards
    m: torch.Tensor  # (num_betas,): running max of |h|
    v: torch.Tensor  # (num_betas,): discounted sum of h^2
    s: torch.Tensor  # (num_betas,): the scales; x = x0 + sum(s) * (sum of base updates)
    x0: Tree  # the params at the first update


@transform(inplace=lambda args: supports_inplace(args["base_optimizer"]))
def mechanize(base_optimizer: GradientTransformation, weight_decay: float = 1e-2, eps: float = 1e-8,
              s_init: float = 1e-6, num_betas: int = 6) -> GradientTransformation:
    """Mechanic (Cutkosky, Defazio & Mehta, 2023): learns the scale of any optimizer's steps,
    as ``optax.contrib.mechanize``; needs ``params``. Not leafwise (inner products over all leaves).

    With ``Delta`` the sum of the base updates so far, kept as ``(x0 - x) / (sum(s) + eps)``,
    ``u_b = base(g)``, ``S = sum(s)``:
    ``g <- g + weight_decay S ||g|| / (||x|| + eps) x``; ``h = <g, Delta>``;
    with ``beta_i = 1 - 0.1^i`` (``i = 1..num_betas``):
    ``m <- max(beta m, |h| + eps)``, ``v <- beta^2 v + h^2``, ``r <- beta r + clip(h, +-m_old) s``,
    ``s <- (s_init / num_betas m + max(r, 0)) / (sqrt(v) + eps)``;
    ``x' = x0 - sum(s) (Delta - u_b)``, the update ``x' - x``. ``x0`` is the params at the
    first update. The vectors ``r, m, v, s`` are in the widest params dtype (optax: lowest).

    Example: ``gx.mechanize(gx.adam(1e-3))``.
    """
    if not isinstance(base_optimizer, GradientTransformation):
        raise ValueError(f"base_optimizer must be a GradientTransformation, got {type(base_optimizer).__name__}")
    check("weight_decay", weight_decay, low=0.0)
    check("eps", eps, low=0.0)
    check("s_init", s_init, low=0.0)
    check_int("num_betas", num_betas, low=1)
    run_base = updater(base_optimizer)

    def init(params):
        ps, treedef = leaves(params)
        ps = [p.detach() for p in ps]
        dtype, device = _scalar_dtype(ps), first_device(ps)

        def vec(value):
            return torch.full((num_betas,), float(value), dtype=dtype, device=device) if not isinstance(
                value, torch.Tensor) else value.to(device=device, dtype=dtype) * torch.ones(num_betas, dtype=dtype,
                                                                                           device=device)

        return MechanicState(base_optimizer.init(params), new_count(), vec(0.0), vec(0.0), vec(0.0), vec(s_init),
                             unflatten(treedef, [p.clone() for p in ps]))

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        need_params("mechanize", params)
        gs, treedef = leaves(updates)
        ps = leaves_like(params, treedef, "params")
        x0s = leaves_like(state.x0, treedef)
        like = state.s
        dtype = like.dtype
        g_real = [F.as_real([g])[0].to(dtype) for g in gs]
        first = int(state.count) == 0
        x0s = [p.detach().clone() for p in ps] if first else x0s
        s_sum = state.s.sum()
        grad_norm = _sum([(g ** 2).sum() for g in g_real], like[0]).sqrt()
        p_real = [F.as_real([p])[0].to(dtype) for p in ps]
        x0_real = [F.as_real([x])[0].to(dtype) for x in x0s]
        param_norm = _sum([(p ** 2).sum() for p in p_real], like[0]).sqrt()
        coef = weight_decay * s_sum * grad_norm / (param_norm + eps)
        delta_prev = [(x0 - p) / (s_sum + eps) for p, x0 in zip(p_real, x0_real)]
        h = _sum([((g + coef * p) * dp).sum() for g, p, dp in zip(g_real, p_real, delta_prev)], like[0])
        dtypes = [g.dtype for g in gs]
        # the base may write into the updates (in place): everything read from them is computed above
        base_u, base_state = run_base(updates, state.base_optimizer_state, params, inplace, extra_args)
        bs = leaves_like(base_u, treedef, "the base's updates")
        clipped_h = torch.clamp(torch.full_like(state.m, 0) + h, min=-state.m, max=state.m)
        betas = 1.0 - 0.1 ** torch.arange(1, num_betas + 1, dtype=dtype, device=like.device)
        m = torch.maximum(betas * state.m, h.abs() + eps)
        v = betas ** 2 * state.v + h ** 2
        r = betas * state.r + clipped_h * state.s
        wealth = (s_init / num_betas) * m + torch.clamp(r, min=0.0)
        positive = v > 0  # sqrt's gradient at 0 is infinite: keep it out of autograd's products
        s = wealth / (torch.where(positive, torch.where(positive, v, torch.ones_like(v)).sqrt(), torch.zeros_like(v))
                      + eps)
        total = s.sum()
        out = []
        for dt, p, x0, dp, b in zip(dtypes, p_real, x0_real, delta_prev, bs):
            b_real = F.as_real([b])[0].to(dtype)
            u = (x0 - total * (dp - b_real) - p).to(F.real_dtype(dt))
            out.append(torch.view_as_complex(u.contiguous()) if dt.is_complex else u)
        return unflatten(treedef, out), MechanicState(base_state, state.count + 1, r, m, v, s,
                                                      unflatten(treedef, x0s) if first else state.x0)

    return GradientTransformation(init, update)


# --- COCOB ---------------------------------------------------------------------------------


@transform(elementwise=True, inplace=True)
def scale_by_cocob(alpha: float = 100.0, eps: float = 1e-8) -> GradientTransformation:
    """COCOB-Backprop (Orabona & Tommasi, 2017), as ``optax.contrib.scale_by_cocob``; needs
    ``params``. Returns the whole step (no learning rate after it). Per element, with ``x0``
    the initial params:

    ``L <- max(L, |g|)`` (``L_0 = eps``), ``G <- G + |g|``, ``R <- max(R - g (x - x0), 0)``,
    ``C <- C - g``; ``u = x0 + C (L + R) / (L max(G + L, alpha L)) - x``.

    State per parameter: ``(x0, C, L, G, R)``. Example: ``gx.scale_by_cocob()`` (``gx.cocob()`` adds weight decay).
    """
    check("alpha", alpha, low=0.0, low_open=True)
    check("eps", eps, low=0.0, low_open=True)

    def cocob_init(p: torch.Tensor) -> tuple:
        p = p.detach()
        return p.clone(), torch.zeros_like(p), full_like(p, eps), torch.zeros_like(p), torch.zeros_like(p)

    def cocob_update(g, state, p, *, alpha):
        if p is None:
            raise ValueError("scale_by_cocob needs params: call update(updates, state, params)")
        x0, cum, scale, sub, reward = state
        dt = g.dtype
        scale = torch.maximum(scale, g.abs())
        sub = sub + g.abs()
        reward = torch.clamp(reward - g * (p - x0), min=0.0)
        cum = cum - g
        u = x0 + cum / (scale * torch.maximum(sub + scale, alpha.to(dt) * scale)) * (scale + reward) - p
        return u, (x0, cum, scale, sub, reward)

    return per_tensor(cocob_init, real_rule(cocob_update), alpha=alpha)
