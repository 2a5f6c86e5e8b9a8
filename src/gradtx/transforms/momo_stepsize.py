"""MoMo: momentum with a Polyak-type step size from a lower bound of the loss (Schaipp et al., 2024)."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .. import _foreach as F  # noqa: N812
from .._foreach import wide_dtype
from .._hparams import ScalarOrSchedule, at, check, check_beta, check_schedule, is_schedule, new_count
from .._tree import Tree
from ..base import GradientTransformation, transform
from ._common import first_device, leaves, leaves_like, need_params, unflatten

__all__ = ["MomoAdamState", "MomoState", "momo", "momo_adam"]


def _exact(x) -> torch.Tensor:
    """``x`` as a tensor; a Python number exactly, as float64 (``torch.as_tensor(0.9)`` would round it to float32)."""
    return x if isinstance(x, torch.Tensor) else torch.tensor(float(x), dtype=torch.float64)


class MomoState(NamedTuple):
    exp_avg: Tree  # EMA of the gradients
    barf: torch.Tensor  # 0-dim: EMA of the losses
    gamma: torch.Tensor  # 0-dim: EMA of <g, x>
    lb: torch.Tensor  # 0-dim: the lower bound of the loss in use
    count: torch.Tensor  # int32, steps taken


class MomoAdamState(NamedTuple):
    exp_avg: Tree
    exp_avg_sq: Tree
    barf: torch.Tensor
    gamma: torch.Tensor
    lb: torch.Tensor
    count: torch.Tensor


def _check(lr, weight_decay, lower_bound):
    if is_schedule(lr):
        check_schedule("lr", lr)
    else:
        check("lr", lr, low=0.0)
    check("weight_decay", weight_decay, low=0.0)
    check("lower_bound", lower_bound)


def _scalars(params, lower_bound):
    ps, treedef = leaves(params)
    dtype, device = wide_dtype(*{p.dtype for p in ps}), first_device(ps)
    zero = torch.zeros((), dtype=dtype, device=device)
    lb = (lower_bound.to(device=device, dtype=dtype) if isinstance(lower_bound, torch.Tensor)
          else torch.tensor(float(lower_bound), dtype=torch.float64).to(device=device, dtype=dtype)) + zero
    return ps, treedef, zero, lb


def _vdot(xs, ys, like: torch.Tensor) -> torch.Tensor:
    total = torch.zeros((), dtype=like.dtype, device=like.device)
    for x, y in zip(F.as_real(xs), F.as_real(ys)):
        total = total + (x.to(like.dtype) * y.to(like.dtype)).sum().to(like.device)
    return total


def _loss(value, like: torch.Tensor, name: str) -> torch.Tensor:
    if value is None:
        raise ValueError(f"{name} needs the loss at params: call update(grads, state, params, value=loss)")
    value = torch.as_tensor(value).detach()
    if value.numel() != 1:
        raise ValueError(f"{name} needs a scalar loss as value, got shape {tuple(value.shape)}")
    return value.reshape(()).to(dtype=like.dtype, device=like.device)


def _step_size(alpha, weight_decay, barf, lb, gamma, iprod, norm, bc1, adapt_lower_bound, lower_bound):
    """MoMo's ``tau`` (capped by ``alpha / bc1``) and the lower bound used and kept."""
    decay = 1 + alpha * weight_decay
    if adapt_lower_bound:
        cap = decay * (barf - gamma) + iprod
        this_lb = torch.where(cap < decay * bc1 * lb, torch.clamp(cap / (2 * bc1 * decay), min=lower_bound), lb)
    else:
        this_lb = lb
    tiny = norm <= torch.finfo(torch.float64).eps
    t1 = torch.clamp(decay * (barf - bc1 * this_lb - gamma) + iprod, min=0.0) / torch.where(
        tiny, torch.ones_like(norm), norm)
    t1 = torch.where(tiny, torch.zeros_like(t1), t1)
    tau = torch.minimum(alpha / bc1 + torch.zeros_like(t1), t1)
    if adapt_lower_bound:
        new_lb = torch.clamp(((barf + iprod - gamma) - 0.5 * tau * norm) / bc1, min=lower_bound)
    else:
        new_lb = lb
    return tau, new_lb


@transform(inplace=True)
def momo(lr: ScalarOrSchedule = 1.0, beta: float = 0.9, lower_bound: float = 0.0, weight_decay: float = 0.0,
         adapt_lower_bound: bool = False) -> GradientTransformation:
    """MoMo (Schaipp et al., 2024), as ``optax.contrib.momo``; ``update`` needs ``value`` (the
    loss) and ``params``. Returns the whole step. With ``b = 0`` at the first step, else ``beta``:

    ``f_bar <- b f_bar + (1-b) f``; ``d <- b d + (1-b) g``; ``gamma <- b gamma + (1-b) <g, x>``;
    ``tau = min(lr, max((1 + lr wd)(f_bar - lb - gamma) + <d, x>, 0) / ||d||^2)`` (0 when
    ``||d||^2`` is below float64's epsilon); ``u = -lr wd / (1 + lr wd) x - tau d``. With
    ``adapt_lower_bound`` the bound ``lb`` (from ``lower_bound``) is re-estimated each step
    as optax does. Sums over all leaves; scalars in the widest params dtype; ``value`` is
    used detached.

    Example: ``gx.Optimizer(model.parameters(), gx.momo())`` and ``opt.step(closure)``.
    """
    _check(lr, weight_decay, lower_bound)
    check_beta("beta", beta)

    def init(params):
        ps, treedef, zero, lb = _scalars(params, lower_bound)
        return MomoState(unflatten(treedef, [torch.zeros_like(p) for p in ps]), zero, zero.clone(), lb, new_count())

    def update(updates, state, params=None, *, inplace=False, value=None, **extra_args):
        del inplace, extra_args
        need_params("momo", params)
        like = state.barf
        loss = _loss(value, like, "momo")
        gs, treedef = leaves(updates)
        ps = leaves_like(params, treedef, "params")
        ms = leaves_like(state.exp_avg, treedef)
        first = state.count == 0
        b = torch.where(first.to(like.device), torch.zeros_like(like), _exact(beta).to(like))
        barf = b * state.barf + (1 - b) * loss
        new_ms = [(b.to(m.device, F.real_dtype(m.dtype)) * m + (1 - b.to(m.device, F.real_dtype(m.dtype))) * g
                   ).to(m.dtype) for m, g in zip(ms, gs)]
        gamma = b * state.gamma + (1 - b) * _vdot(gs, ps, like)
        norm = _vdot(new_ms, new_ms, like)
        iprod = _vdot(new_ms, ps, like)
        alpha = _exact(at(lr, state.count)).to(like)
        tau, new_lb = _step_size(alpha, weight_decay, barf, state.lb, gamma, iprod, norm, 1.0, adapt_lower_bound,
                                 lower_bound)
        shrink = alpha * weight_decay / (1 + alpha * weight_decay)
        out = []
        for g, p, m in zip(gs, ps, new_ms):
            rd = F.real_dtype(g.dtype)
            wide = torch.promote_types(wide_dtype(g.dtype), g.dtype)
            out.append((-shrink.to(p.device, wide_dtype(rd)) * p.to(wide)
                        - tau.to(p.device, wide_dtype(rd)) * m.to(wide)).to(g.dtype))
        return unflatten(treedef, out), MomoState(unflatten(treedef, new_ms), barf, gamma, new_lb, state.count + 1)

    return GradientTransformation(init, update)


@transform(inplace=True)
def momo_adam(lr: ScalarOrSchedule = 1e-2, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
              lower_bound: float = 0.0, weight_decay: float = 0.0, adapt_lower_bound: bool = False
              ) -> GradientTransformation:
    """MoMo-Adam (Schaipp et al., 2024), as ``optax.contrib.momo_adam``; needs ``value`` and
    ``params``; returns the whole step.

    ``f_bar <- b1 f_bar + (1-b1) f``; ``m <- b1 m + (1-b1) g``; ``v <- b2 v + (1-b2) g^2``;
    ``D = eps + sqrt(v / (1 - b2^t))``; ``gamma <- b1 gamma + (1-b1) <g, x>``;
    with ``bc1 = 1 - b1^t``: ``tau = min(lr / bc1, max((1 + lr wd)(f_bar - bc1 lb - gamma)
    + <m, x>, 0) / <m, m / D>)``; ``u = -lr wd / (1 + lr wd) x - tau m / D``. ``value`` is used detached.

    Example: ``gx.Optimizer(model.parameters(), gx.momo_adam(1e-2))`` and ``opt.step(closure)``.
    """
    _check(lr, weight_decay, lower_bound)
    check_beta("b1", b1)
    check_beta("b2", b2)
    check("eps", eps, low=0.0)

    def init(params):
        ps, treedef, zero, lb = _scalars(params, lower_bound)
        return MomoAdamState(unflatten(treedef, [torch.zeros_like(p) for p in ps]),
                             unflatten(treedef, [torch.zeros_like(p) for p in ps]), zero, zero.clone(), lb,
                             new_count())

    def update(updates, state, params=None, *, inplace=False, value=None, **extra_args):
        del inplace, extra_args
        need_params("momo_adam", params)
        like = state.barf
        loss = _loss(value, like, "momo_adam")
        gs, treedef = leaves(updates)
        ps = leaves_like(params, treedef, "params")
        ms = leaves_like(state.exp_avg, treedef)
        vs = leaves_like(state.exp_avg_sq, treedef)
        rv = F.real_views(gs, ms, vs, ps)
        if rv:
            gs, ms, vs, ps = rv.real
        b1_, b2_ = _exact(b1).to(like), _exact(b2).to(like)
        t = (state.count + 1).to(like)
        barf = b1_ * state.barf + (1 - b1_) * loss
        dt = like.dtype
        new_ms = [b1_ * m.to(dt) + (1 - b1_) * g.to(dt) for m, g in zip(ms, gs)]
        new_vs = [b2_ * v.to(dt) + (1 - b2_) * g.to(dt) * g.to(dt) for v, g in zip(vs, gs)]
        bc2 = 1 - b2_ ** t
        precs = [eps + (v / bc2).sqrt() for v in new_vs]
        weighted = [m / d for m, d in zip(new_ms, precs)]
        norm = _vdot(new_ms, weighted, like)
        gamma = b1_ * state.gamma + (1 - b1_) * _vdot(gs, ps, like)
        iprod = _vdot(new_ms, ps, like)
        alpha = _exact(at(lr, state.count)).to(like)
        bc1 = 1 - b1_ ** t
        tau, new_lb = _step_size(alpha, weight_decay, barf, state.lb, gamma, iprod, norm, bc1, adapt_lower_bound,
                                 lower_bound)
        shrink = alpha * weight_decay / (1 + alpha * weight_decay)
        out = [(-shrink * p.to(dt) - tau * w).to(g.dtype) for g, p, w in zip(gs, ps, weighted)]
        new_ms = [m.to(old.dtype) for m, old in zip(new_ms, ms)]
        new_vs = [v.to(old.dtype) for v, old in zip(new_vs, vs)]
        if rv:
            out, new_ms, new_vs = rv.back(out, new_ms, new_vs)
        return unflatten(treedef, out), MomoAdamState(unflatten(treedef, new_ms), unflatten(treedef, new_vs), barf,
                                                      gamma, new_lb, state.count + 1)

    return GradientTransformation(init, update)
