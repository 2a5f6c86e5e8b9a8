"""Per-element accumulators: Adagrad's sum of squares, Adadelta, Rprop, stddev, averaging."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .. import _foreach as F  # noqa: N812
from .._hparams import check, check_beta, check_order, full_like, increment, is_value, new_count, to_state
from .._tree import Tree
from ..base import GradientTransformation, transform
from ._common import leaves, leaves_like, need_params, unflatten
from .momentum import _bias_correction, _zeros

__all__ = ["ScaleByRssState", "ScaleByAdaDeltaState", "ScaleByRpropState", "ScaleByRStdDevState",
           "ScaleByRStdDevBiasCorrectedState", "ScaleByAsgdState", "scale_by_rss", "scale_by_adadelta",
           "scale_by_rprop", "scale_by_stddev", "scale_by_asgd"]


def _full(params: Tree, value: float) -> Tree:
    ps, treedef = leaves(params)
    return unflatten(treedef, [full_like(p, value) for p in ps])


def _zero_where_empty(out: list[torch.Tensor], acc: list[torch.Tensor]) -> None:
    # 0/0 -> 0 where nothing has been accumulated (optax's convention); only reachable with eps = 0.
    for o, a in zip(out, acc):
        o.masked_fill_(a == 0, 0)


class ScaleByRssState(NamedTuple):
    """State of :func:`scale_by_rss`."""

    sum_of_squares: Tree  # running sum of squared updates, the param's dtype


@transform(elementwise=True, inplace=True)
def scale_by_rss(initial_accumulator_value: float = 0.1, eps: float = 1e-7, eps_in_sqrt: bool = True
                 ) -> GradientTransformation:
    """Divide by the root of the sum of all squared updates so far: Adagrad (Duchi et al., 2011).

    ``s <- s + g^2`` (``s`` starts at ``initial_accumulator_value``);
    ``u <- g / sqrt(s + eps)`` if ``eps_in_sqrt`` (optax) else ``u <- g / (sqrt(s) + eps)`` (torch);
    ``u = 0`` where ``s = 0``.

    Defaults are optax's; ``torch.optim.Adagrad`` is
    ``scale_by_rss(initial_accumulator_value=0.0, eps=1e-10, eps_in_sqrt=False)``.

    Example: ``gx.chain(gx.scale_by_rss(), gx.scale_by_lr(0.1))``.
    """
    check("initial_accumulator_value", initial_accumulator_value, low=0.0)
    check("eps", eps, low=0.0)

    def init(params):
        return ScaleByRssState(sum_of_squares=_full(params, initial_accumulator_value))

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del params, extra_args
        gs, treedef = leaves(updates)
        ss = leaves_like(state.sum_of_squares, treedef)
        rv = F.real_views(gs, ss)  # complex leaves: real and imaginary parts, as torch.optim
        if rv:
            gs, ss = rv.real
        ss = F.addcmul(ss, gs, gs, 1.0, inplace=inplace)
        if eps_in_sqrt:
            denom = F.sqrt(F.add(ss, eps), inplace=True)
        else:
            denom = F.add(F.sqrt(ss), eps, inplace=True)
        out = F.div(gs, denom, inplace=inplace)
        if is_value(eps, 0.0):
            _zero_where_empty(out, ss)
        out = F.cast_like(out, gs)  # updates keep the gradients' dtype
        if rv:
            out, ss = rv.back(out, ss)
        return unflatten(treedef, out), ScaleByRssState(unflatten(treedef, ss))

    return GradientTransformation(init, update)


class ScaleByAdaDeltaState(NamedTuple):
    """State of :func:`scale_by_adadelta`."""

    e_g: Tree  # running mean of squared gradients
    e_x: Tree  # running mean of squared steps


@transform(elementwise=True, inplace=True)
def scale_by_adadelta(rho: float = 0.9, eps: float = 1e-6) -> GradientTransformation:
    """Adadelta's rescaling (Zeiler, 2012, Algorithm 1).

    ``E[g^2] <- rho E[g^2] + (1-rho) g^2``; ``u <- sqrt(E[x^2] + eps) / sqrt(E[g^2] + eps) * g``;
    ``E[x^2] <- rho E[x^2] + (1-rho) u^2`` (with the step before the learning rate, as torch
    and optax do). ``torch.optim.Adadelta`` is this followed by ``scale_by_lr(lr)``.

    Example: ``gx.chain(gx.scale_by_adadelta(), gx.scale_by_lr(1.0))``.
    """
    check("rho", rho, low=0.0, high=1.0)
    check("eps", eps, low=0.0)

    def init(params):
        return ScaleByAdaDeltaState(e_g=_zeros(params, None), e_x=_zeros(params, None))

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del params, extra_args
        gs, treedef = leaves(updates)
        egs = leaves_like(state.e_g, treedef)
        exs = leaves_like(state.e_x, treedef)
        rv = F.real_views(gs, egs, exs)  # complex leaves: real and imaginary parts, as torch.optim
        if rv:
            gs, egs, exs = rv.real
        egs = F.mul(egs, rho, inplace=inplace)
        F.addcmul(egs, gs, gs, 1.0 - rho, inplace=True)
        std = F.sqrt(F.add(egs, eps), inplace=True)
        ratio = F.sqrt(F.add(exs, eps), inplace=True)
        F.div(ratio, std, inplace=True)
        out = F.mul(gs, ratio, inplace=inplace)
        exs = F.mul(exs, rho, inplace=inplace)
        F.addcmul(exs, out, out, 1.0 - rho, inplace=True)
        out = F.cast_like(out, gs)  # updates keep the gradients' dtype
        if rv:
            out, egs, exs = rv.back(out, egs, exs)
        return unflatten(treedef, out), ScaleByAdaDeltaState(unflatten(treedef, egs), unflatten(treedef, exs))

    return GradientTransformation(init, update)


class ScaleByRpropState(NamedTuple):
    """State of :func:`scale_by_rprop`."""

    step_sizes: Tree  # per-element step sizes
    prev_updates: Tree  # the last output, zero where the sign flipped


@transform(elementwise=True, inplace=True)
def scale_by_rprop(lr: float, eta_minus: float = 0.5, eta_plus: float = 1.2,
                   min_step_size: float = 1e-6, max_step_size: float = 50.0) -> GradientTransformation:
    """Resilient propagation (Riedmiller & Braun, 1993), the variant of ``torch.optim.Rprop``.

    With ``s = g * u_prev``: the step size ``d`` (starting at ``lr``) becomes
    ``clamp(d * f, min_step_size, max_step_size)`` with ``f = eta_plus`` where ``s > 0``,
    ``eta_minus`` where ``s < 0`` and 1 where ``s = 0``; ``u <- d * sign(g)``, and ``u <- 0``
    where ``s < 0`` (a sign change: no move, and the next step sees ``s = 0``).

    The output is a positive multiple of the gradient's sign (follow with ``scale(-1)`` or
    ``scale_by_lr``). As torch, the step size is clamped also where ``s = 0`` (on the first
    step, for instance); optax leaves it unchanged there, which matters only when
    ``lr`` lies outside ``[min_step_size, max_step_size]``. ``lr`` is the initial step size,
    optax's ``learning_rate`` (the learning rate is ``lr`` throughout gradtx).

    Example: ``gx.chain(gx.scale_by_rprop(0.01), gx.scale(-1.0))``.
    """
    check("lr", lr, low=0.0, low_open=True)
    check("eta_minus", eta_minus, low=0.0, high=1.0, low_open=True, high_open=True)
    check("eta_plus", eta_plus, low=1.0, low_open=True)
    check("min_step_size", min_step_size, low=0.0)
    check("max_step_size", max_step_size, low=0.0, allow_inf=True)  # inf: no upper bound
    check_order("min_step_size", min_step_size, "max_step_size", max_step_size)

    def init(params):
        return ScaleByRpropState(step_sizes=_full(params, lr), prev_updates=_zeros(params, None))

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del params, extra_args
        gs, treedef = leaves(updates)
        steps = leaves_like(state.step_sizes, treedef)
        prevs = leaves_like(state.prev_updates, treedef)
        rv = F.real_views(gs, steps, prevs)  # complex leaves: real and imaginary parts, as torch.optim
        if rv:
            gs, steps, prevs = rv.real
        new_steps, outs, new_prevs = [], [], []
        for g, d, prev in zip(gs, steps, prevs):
            s = g * prev
            flipped = s < 0
            factor = torch.ones_like(g)
            factor.masked_fill_(s > 0, eta_plus)
            factor.masked_fill_(flipped, eta_minus)
            d = d.mul_(factor) if inplace else d * factor
            d = d.clamp_min_(min_step_size).clamp_max_(max_step_size)
            u = g.sign_() if inplace else g.sign()
            u.mul_(d).masked_fill_(flipped, 0)
            new_steps.append(d)
            outs.append(u)
            new_prevs.append(prev.copy_(u) if inplace else u.clone())
        outs = F.cast_like(outs, gs)  # updates keep the gradients' dtype
        if rv:
            outs, new_steps, new_prevs = rv.back(outs, new_steps, new_prevs)
        new_state = ScaleByRpropState(unflatten(treedef, new_steps), unflatten(treedef, new_prevs))
        return unflatten(treedef, outs), new_state

    return GradientTransformation(init, update)


class ScaleByRStdDevState(NamedTuple):
    """State of :func:`scale_by_stddev` (without bias correction)."""

    mu: Tree  # running mean of updates
    nu: Tree  # running mean of squared updates


class ScaleByRStdDevBiasCorrectedState(NamedTuple):
    """State of :func:`scale_by_stddev` with ``bias_correction=True``."""

    count: torch.Tensor
    mu: Tree
    nu: Tree


@transform(elementwise=True, inplace=True)
def scale_by_stddev(decay: float = 0.9, eps: float = 1e-8, initial_scale: float = 0.0,
                    eps_in_sqrt: bool = True, bias_correction: bool = False) -> GradientTransformation:
    """Divide by a running standard deviation of the updates: centered RMSprop (Graves, 2013).

    ``m <- decay m + (1-decay) g``; ``v <- decay v + (1-decay) g^2`` (``v`` starts at
    ``initial_scale``); with ``bias_correction`` both are divided by ``1 - decay^t``;
    ``var = max(v - m^2, 0)``; ``u <- g / sqrt(var + eps)`` if ``eps_in_sqrt`` else
    ``g / (sqrt(var) + eps)``.

    ``torch.optim.RMSprop(centered=True)`` is ``eps_in_sqrt=False`` (its ``alpha`` is ``decay``).
    The clamp at 0 only replaces round-off below zero, where torch and optax give NaN.

    Example: ``gx.chain(gx.scale_by_stddev(0.99, eps_in_sqrt=False), gx.scale_by_lr(1e-2))``.
    """
    check_beta("decay", decay)
    check("eps", eps, low=0.0)
    check("initial_scale", initial_scale, low=0.0)

    def init(params):
        mu, nu = _zeros(params, None), _full(params, initial_scale)
        return ScaleByRStdDevBiasCorrectedState(new_count(), mu, nu) if bias_correction else ScaleByRStdDevState(mu, nu)

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del params, extra_args
        gs, treedef = leaves(updates)
        mus = leaves_like(state.mu, treedef)
        nus = leaves_like(state.nu, treedef)
        rv = F.real_views(gs, mus, nus)  # complex leaves: real and imaginary parts, as torch.optim
        if rv:
            gs, mus, nus = rv.real
        mus = F.lerp(mus, gs, 1.0 - decay, inplace=inplace)
        nus = F.mul(nus, decay, inplace=inplace)
        F.addcmul(nus, gs, gs, 1.0 - decay, inplace=True)
        if bias_correction:
            count = increment(state.count, inplace)
            bc = _bias_correction(decay, count)
            mu_hat = F.div(mus, bc)
            var = F.div(nus, bc)
            F.addcmul(var, mu_hat, mu_hat, -1.0, inplace=True)
        else:
            var = F.addcmul(nus, mus, mus, -1.0)
        F.clamp(var, 0.0, math.inf, inplace=True)
        if eps_in_sqrt:
            denom = F.sqrt(F.add(var, eps, inplace=True), inplace=True)
        else:
            denom = F.add(F.sqrt(var, inplace=True), eps, inplace=True)
        out = F.cast_like(F.div(gs, denom, inplace=inplace), gs)  # updates keep the gradients' dtype
        if rv:
            out, mus, nus = rv.back(out, mus, nus)
        mu, nu = unflatten(treedef, mus), unflatten(treedef, nus)
        new_state = ScaleByRStdDevBiasCorrectedState(count, mu, nu) if bias_correction else ScaleByRStdDevState(mu, nu)
        return unflatten(treedef, out), new_state

    return GradientTransformation(init, update)


class ScaleByAsgdState(NamedTuple):
    """State of :func:`scale_by_asgd`."""

    count: torch.Tensor  # int32, steps taken
    lr: torch.Tensor  # 0-dim; the adapter exposes it as param_groups[i]['lr'], as scale_by_lr's
    ax: Tree  # the averaged iterate


@transform(elementwise=True, inplace=True)
def scale_by_asgd(lr: float | torch.Tensor, lambd: float = 1e-4, alpha: float = 0.75, t0: float = 1e6
                  ) -> GradientTransformation:
    """Averaged SGD's step-size decay (Polyak & Juditsky, 1992), as in ``torch.optim.ASGD``.

    At step ``t`` (from 1) the step size is ``eta_t = lr / (1 + lambd lr (t-1))^alpha`` and the
    step is ``p <- p - eta_t (g + lambd p)``; this transform outputs that step divided by
    ``lr``: ``u <- (g + lambd p) / (1 + lambd lr (t-1))^alpha``, so ``scale_by_lr(lr)`` must
    follow with the same ``lr``. It also keeps the average of the iterates,
    ``ax <- ax + mu_t (p_new - ax)`` with ``p_new = p - lr u`` and ``mu_t = 1 / max(1, t-1-t0)``:
    averaging starts after ``t0`` steps and never changes the parameters (read it from the state).

    ``lr`` is kept in the state as ``lr`` so the adapter drives it together with
    ``scale_by_lr``'s. Schedules are not accepted: ``eta_t`` is already a schedule.

    Example: ``gx.chain(gx.scale_by_asgd(0.01), gx.scale_by_lr(0.01))``.
    """
    check("lr", lr, low=0.0)
    check("lambd", lambd, low=0.0)
    check("alpha", alpha, low=0.0)
    check("t0", t0, low=0.0, allow_inf=True)  # inf: never average (ax follows p)

    def init(params):
        return ScaleByAsgdState(count=new_count(), lr=to_state(lr), ax=_zeros(params, None))

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del extra_args
        need_params("scale_by_asgd", params)
        gs, treedef = leaves(updates)
        ps = leaves_like(params, treedef, "params")
        if inplace:
            ps = [p.detach() for p in ps]
        axs = leaves_like(state.ax, treedef)
        count = increment(state.count, inplace)
        t = count.to(torch.float64)
        rate = state.lr.to(torch.float64)
        ratio = (1.0 + lambd * rate * (t - 1.0)) ** (-alpha)
        if is_value(lambd, 0.0):
            out = F.mul(gs, 1.0, inplace=inplace)
        else:
            out = F.add(gs, ps, alpha=lambd, inplace=inplace)
        F.mul(out, ratio, inplace=True)
        # averaging, in torch's order: ax + mu * (p_new - ax)
        mu = 1.0 / torch.clamp(t - 1.0 - t0, min=1.0)
        diff = F.add(F.mul(out, -state.lr), ps, inplace=True)
        F.sub(diff, axs, inplace=True)
        F.mul(diff, mu, inplace=True)
        axs = F.add(axs, diff, inplace=inplace)
        out = F.cast_like(out, gs)  # updates keep the gradients' dtype
        return unflatten(treedef, out), ScaleByAsgdState(count, state.lr, unflatten(treedef, axs))

    return GradientTransformation(init, update)
