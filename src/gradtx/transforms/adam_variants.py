"""Variants of Adam: Adamax, AMSGrad, AdaBelief, Yogi, RAdam, NAdam (torch's), NovoGrad, Lion, Adan.

All follow the "first write decides" pattern of ``_foreach``: the first operation on a
state buffer or on the incoming updates takes the caller's ``inplace``; later operations
work on buffers this update owns. Bias corrections and other step-dependent scalars are
float64 0-dim tensors computed from the int32 step count, so no Python number depends on
the step (nothing to recompile, nothing to ``.item()``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .. import _foreach as F  # noqa: N812
from .._hparams import check, check_beta, full_like, increment, is_value, new_count
from .._tree import Tree
from ..base import GradientTransformation, transform
from ._common import leaves, leaves_like, need_params, unflatten
from .adaptive import ScaleByAdamState
from .momentum import _bias_correction, _zeros

__all__ = [
    "ScaleByAmsgradState", "ScaleByBeliefState", "ScaleByNadamState", "ScaleByNovogradState", "ScaleByLionState",
    "ScaleByAdanState",
    "scale_by_adamax", "scale_by_amsgrad", "scale_by_belief", "scale_by_yogi", "scale_by_radam", "scale_by_nadam",
    "scale_by_novograd", "scale_by_lion", "scale_by_adan",
]

_F64 = torch.float64



def _full(params: Tree, value: float) -> Tree:
    ps, treedef = leaves(params)
    return unflatten(treedef, [full_like(p, value) for p in ps])


def _step(count: torch.Tensor) -> torch.Tensor:
    return count.to(_F64)


def _divide_mu_hat(denom: list[torch.Tensor], mus: list[torch.Tensor], bc1: torch.Tensor | None) -> list:
    """``(m / bc1) / denom`` written into ``denom`` (which the caller owns)."""
    F.reciprocal(denom, inplace=True)
    F.mul(denom, F.cast_like(mus, denom), inplace=True)
    if bc1 is not None:
        F.div(denom, bc1, inplace=True)
    return denom


def _nesterov_numerator(gs, mus, b1: float, count: torch.Tensor, inplace: bool) -> list:
    """Dozat's look-ahead first moment ``b1 m / (1 - b1^(t+1)) + (1-b1) g / (1 - b1^t)``;
    built in ``g``'s buffer when ``inplace``."""
    bc1 = _bias_correction(b1, count)
    bc1_next = _bias_correction(b1, count + 1)
    numer = F.mul(gs, (1.0 - b1) / bc1, inplace=inplace)
    F.add(numer, F.mul(F.cast_like(mus, gs), b1 / bc1_next), inplace=True)
    return numer


def _second_moment(nus, gs, b2: float, inplace: bool) -> list:
    """``v <- b2 v + (1-b2) g^2``."""
    nus = F.mul(nus, b2, inplace=inplace)
    F.addcmul(nus, gs, gs, 1.0 - b2, inplace=True)
    return nus


def _root_denominator(out, nus, bc2: torch.Tensor, eps: float, eps_root: float, reuse: bool) -> list:
    """``sqrt(v / bc2 + eps_root) + eps``, built in ``out``'s buffers when ``reuse``."""
    if is_value(eps_root, 0.0):
        denom = F.sqrt(F.copy_(out, nus), inplace=True) if reuse else F.sqrt(nus)
        F.div(denom, bc2.sqrt(), inplace=True)
    else:
        denom = F.div(F.copy_(out, nus), bc2, inplace=True) if reuse else F.div(nus, bc2)
        F.add(denom, eps_root, inplace=True)
        F.sqrt(denom, inplace=True)
    F.add(denom, eps, inplace=True)
    return denom


# -- Adamax -----------------------------------------------------------------------------


@transform(elementwise=True, inplace=True)
def scale_by_adamax(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> GradientTransformation:
    """Adamax's rescaling (Kingma & Ba, 2015, Algorithm 2): Adam with an infinity norm.

    ``m <- b1 m + (1-b1) g``; ``u_inf <- max(b2 u_inf, |g| + eps)``; ``t <- t + 1``;
    ``u <- m / (1 - b1^t) / u_inf``. The state is a ``ScaleByAdamState`` with ``nu = u_inf``.

    Followed by ``scale_by_lr(lr)`` this equals ``torch.optim.Adamax`` (weight_decay 0).

    Example: ``gx.chain(gx.scale_by_adamax(), gx.scale_by_lr(2e-3))``.
    """
    check_beta("b1", b1)
    check_beta("b2", b2)
    check("eps", eps, low=0.0)

    def init(params):
        return ScaleByAdamState(count=new_count(), mu=_zeros(params, None), nu=_zeros(params, None))

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del params, extra_args
        gs, treedef = leaves(updates)
        mus = leaves_like(state.mu, treedef)
        nus = leaves_like(state.nu, treedef)
        rv = F.real_views(gs, mus, nus)  # complex leaves: real and imaginary parts, as torch.optim
        if rv:
            gs, mus, nus = rv.real
        mus = F.lerp(mus, gs, 1.0 - b1, inplace=inplace)
        # |g| + eps, in g's buffer when allowed (g is not needed after the first moment)
        bound = F.abs(gs, inplace=inplace)
        F.add(bound, eps, inplace=True)
        nus = F.mul(nus, b2, inplace=inplace)
        F.maximum(nus, F.cast_like(bound, nus), inplace=True)
        count = increment(state.count, inplace)
        out = F.copy_(bound, mus) if inplace else F.cast_like(mus, gs)
        out = F.div(out, nus, inplace=inplace)
        F.div(out, _bias_correction(b1, count), inplace=True)
        out = F.cast_like(out, gs)  # updates keep the gradients' dtype
        if rv:
            out, mus, nus = rv.back(out, mus, nus)
        return unflatten(treedef, out), ScaleByAdamState(count, unflatten(treedef, mus), unflatten(treedef, nus))

    return GradientTransformation(init, update)


# -- AMSGrad ----------------------------------------------------------------------------


class ScaleByAmsgradState(NamedTuple):
    """State of :func:`scale_by_amsgrad`."""

    count: torch.Tensor  # int32, steps taken
    mu: Tree  # first moment, dtype mu_dtype or the param's
    nu: Tree  # second moment
    nu_max: Tree  # running maximum of the (by default bias-corrected) second moment


@transform(elementwise=True, inplace=True)
def scale_by_amsgrad(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, eps_root: float = 0.0,
                     mu_dtype: torch.dtype | None = None, bias_correction_mu: bool = True,
                     bias_correction_nu: bool = True, *, debias_after_max: bool = False) -> GradientTransformation:
    """AMSGrad's rescaling (Reddi et al., 2018), optax's form by default.

    ``m <- b1 m + (1-b1) g``; ``v <- b2 v + (1-b2) g^2``; ``t <- t + 1``;
    ``m_hat = m / (1 - b1^t)`` (if ``bias_correction_mu``);
    optax: ``v_max <- max(v_max, v / (1 - b2^t))``, ``u <- m_hat / (sqrt(v_max + eps_root) + eps)``;
    ``debias_after_max=True`` (torch): ``v_max <- max(v_max, v)``,
    ``u <- m_hat / (sqrt(v_max / (1 - b2^t) + eps_root) + eps)``.
    Without ``bias_correction_nu`` neither form corrects ``v``.

    The two forms differ: optax keeps the maximum of the bias-corrected ``v_hat``, while
    ``torch.optim.Adam(amsgrad=True)`` keeps the maximum of the raw ``v`` and divides it by
    the current step's ``1 - b2^t``. With ``debias_after_max=True`` (and the other defaults)
    this followed by ``scale_by_lr(lr)`` equals ``torch.optim.Adam(amsgrad=True)``.

    Example: ``gx.chain(gx.scale_by_amsgrad(debias_after_max=True), gx.scale_by_lr(1e-3))``.
    """
    check_beta("b1", b1)
    check_beta("b2", b2)
    check("eps", eps, low=0.0)
    check("eps_root", eps_root, low=0.0)

    def init(params):
        return ScaleByAmsgradState(count=new_count(), mu=_zeros(params, mu_dtype), nu=_zeros(params, None),
                                   nu_max=_zeros(params, None))

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del params, extra_args
        gs, treedef = leaves(updates)
        mus = leaves_like(state.mu, treedef)
        nus = leaves_like(state.nu, treedef)
        maxs = leaves_like(state.nu_max, treedef)
        rv = F.real_views(gs, mus, nus, maxs)  # complex leaves: real and imaginary parts, as torch.optim
        if rv:
            gs, mus, nus, maxs = rv.real
        mus = F.lerp(mus, gs, 1.0 - b1, inplace=inplace)
        nus = _second_moment(nus, gs, b2, inplace)
        count = increment(state.count, inplace)
        bc2 = _bias_correction(b2, count)
        if bias_correction_nu and not debias_after_max:
            maxs = F.maximum(maxs, F.div(nus, bc2), inplace=inplace)
        else:
            maxs = F.maximum(maxs, nus, inplace=inplace)
        scale_after = bc2 if bias_correction_nu and debias_after_max else torch.ones((), dtype=_F64)
        denom = _root_denominator(gs, maxs, scale_after, eps, eps_root, reuse=inplace)
        out = _divide_mu_hat(denom, mus, _bias_correction(b1, count) if bias_correction_mu else None)
        out = F.cast_like(out, gs)  # updates keep the gradients' dtype
        if rv:
            out, mus, nus, maxs = rv.back(out, mus, nus, maxs)
        new_state = ScaleByAmsgradState(count, unflatten(treedef, mus), unflatten(treedef, nus),
                                        unflatten(treedef, maxs))
        return unflatten(treedef, out), new_state

    return GradientTransformation(init, update)


# -- AdaBelief --------------------------------------------------------------------------


class ScaleByBeliefState(NamedTuple):
    """State of :func:`scale_by_belief`."""

    count: torch.Tensor  # int32, steps taken
    mu: Tree  # first moment
    nu: Tree  # second moment of the prediction error g - m


@transform(elementwise=True, inplace=True)
def scale_by_belief(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-16, eps_root: float = 1e-16, *,
                    nesterov: bool = False) -> GradientTransformation:
    """AdaBelief's rescaling (Zhuang et al., 2020, Algorithm 2), optax's form.

    ``m <- b1 m + (1-b1) g``; ``s <- b2 s + (1-b2) (g - m)^2 + eps_root`` (with the new ``m``);
    ``t <- t + 1``; ``m_hat = m / (1 - b1^t)`` (or Dozat's look-ahead with ``nesterov``, as in
    ``scale_by_adam``); ``u <- m_hat / (sqrt(s / (1 - b2^t)) + eps)``.

    Example: ``gx.chain(gx.scale_by_belief(), gx.scale_by_lr(1e-3))``.
    """
    check_beta("b1", b1)
    check_beta("b2", b2)
    check("eps", eps, low=0.0)
    check("eps_root", eps_root, low=0.0)

    def init(params):
        return ScaleByBeliefState(count=new_count(), mu=_zeros(params, None), nu=_zeros(params, None))

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del params, extra_args
        gs, treedef = leaves(updates)
        mus = leaves_like(state.mu, treedef)
        nus = leaves_like(state.nu, treedef)
        rv = F.real_views(gs, mus, nus)  # complex leaves: real and imaginary parts, as torch.optim
        if rv:
            gs, mus, nus = rv.real
        mus = F.lerp(mus, gs, 1.0 - b1, inplace=inplace)
        reuse = inplace and not nesterov  # nesterov still needs g after the moments
        err = F.sub(gs, F.cast_like(mus, gs), inplace=reuse)
        nus = F.mul(nus, b2, inplace=inplace)
        F.addcmul(nus, err, err, 1.0 - b2, inplace=True)
        F.add(nus, eps_root, inplace=True)
        count = increment(state.count, inplace)
        denom = _root_denominator(err, nus, _bias_correction(b2, count), eps, 0.0, reuse=True)
        if nesterov:
            out = F.div(_nesterov_numerator(gs, mus, b1, count, inplace), denom, inplace=True)
        else:
            out = _divide_mu_hat(denom, mus, _bias_correction(b1, count))
        out = F.cast_like(out, gs)  # updates keep the gradients' dtype
        if rv:
            out, mus, nus = rv.back(out, mus, nus)
        new_state = ScaleByBeliefState(count, unflatten(treedef, mus), unflatten(treedef, nus))
        return unflatten(treedef, out), new_state

    return GradientTransformation(init, update)


# -- Yogi -------------------------------------------------------------------------------


@transform(elementwise=True, inplace=True)
def scale_by_yogi(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-3, eps_root: float = 0.0,
                  initial_accumulator_value: float = 1e-6) -> GradientTransformation:
    """Yogi's rescaling (Zaheer et al., 2018), optax's form.

    ``m`` and ``v`` start at ``initial_accumulator_value``; ``m <- b1 m + (1-b1) g``;
    ``v <- v - (1-b2) sign(v - g^2) g^2``; ``t <- t + 1``;
    ``u <- m_hat / (sqrt(v_hat + eps_root) + eps)`` with ``m_hat = m / (1 - b1^t)``,
    ``v_hat = v / (1 - b2^t)``. The paper's Algorithm 2 divides ``m`` by ``sqrt(v) + eps``
    without bias correction; the correction is optax's, kept so the two libraries agree.
    The state is a ``ScaleByAdamState``.

    Example: ``gx.chain(gx.scale_by_yogi(), gx.scale_by_lr(1e-2))``.
    """
    check_beta("b1", b1)
    check_beta("b2", b2)
    check("eps", eps, low=0.0)
    check("eps_root", eps_root, low=0.0)
    check("initial_accumulator_value", initial_accumulator_value, low=0.0)

    def init(params):
        return ScaleByAdamState(count=new_count(), mu=_full(params, initial_accumulator_value),
                                nu=_full(params, initial_accumulator_value))

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del params, extra_args
        gs, treedef = leaves(updates)
        mus = leaves_like(state.mu, treedef)
        nus = leaves_like(state.nu, treedef)
        rv = F.real_views(gs, mus, nus)  # complex leaves: real and imaginary parts, as torch.optim
        if rv:
            gs, mus, nus = rv.real
        mus = F.lerp(mus, gs, 1.0 - b1, inplace=inplace)
        g2 = F.mul(gs, gs, inplace=inplace)  # g is not needed after the first moment
        direction = F.sign(F.sub(nus, g2), inplace=True)
        nus = F.addcmul(nus, direction, g2, -(1.0 - b2), inplace=inplace)
        count = increment(state.count, inplace)
        denom = _root_denominator(g2, nus, _bias_correction(b2, count), eps, eps_root, reuse=True)
        out = _divide_mu_hat(denom, mus, _bias_correction(b1, count))
        out = F.cast_like(out, gs)  # updates keep the gradients' dtype
        if rv:
            out, mus, nus = rv.back(out, mus, nus)
        return unflatten(treedef, out), ScaleByAdamState(count, unflatten(treedef, mus), unflatten(treedef, nus))

    return GradientTransformation(init, update)


# -- RAdam ------------------------------------------------------------------------------


@transform(elementwise=True, inplace=True)
def scale_by_radam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, eps_root: float = 0.0,
                   threshold: float = 5.0, *, nesterov: bool = False,
                   eps_before_debias: bool = False) -> GradientTransformation:
    """Rectified Adam's rescaling (Liu et al., 2020, Algorithm 2), optax's form by default.

    ``m``, ``v`` as Adam; ``t <- t + 1``; ``rho_inf = 2 / (1-b2) - 1``;
    ``rho_t = rho_inf - 2 t b2^t / (1 - b2^t)``;
    if ``rho_t >= threshold``: ``r = sqrt((rho_t-4)(rho_t-2) rho_inf / ((rho_inf-4)(rho_inf-2) rho_t))``,
    ``u <- r m_hat / (sqrt(v_hat + eps_root) + eps)``; else ``u <- m_hat`` (``m_hat`` as
    ``scale_by_adam``, Dozat's look-ahead with ``nesterov``).

    ``eps_before_debias=True`` takes torch's denominator, ``(sqrt(v + eps_root) + eps) / sqrt(1 - b2^t)``:
    torch adds ``eps`` to ``sqrt(v)`` before the bias correction. torch also switches on
    ``rho_t > 5`` where optax switches on ``rho_t >= threshold``; ``rho_t`` is never exactly 5
    for a ``b2`` that can be written in a float, so with ``eps_before_debias=True`` and
    ``threshold=5`` this followed by ``scale_by_lr(lr)`` equals ``torch.optim.RAdam``.

    Example: ``gx.chain(gx.scale_by_radam(), gx.scale_by_lr(1e-3))``.
    """
    check_beta("b1", b1)
    check_beta("b2", b2)
    check("eps", eps, low=0.0)
    check("eps_root", eps_root, low=0.0)
    check("threshold", threshold)
    rho_inf = 2.0 / (1.0 - b2) - 1.0

    def init(params):
        return ScaleByAdamState(count=new_count(), mu=_zeros(params, None), nu=_zeros(params, None))

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del params, extra_args
        gs, treedef = leaves(updates)
        mus = leaves_like(state.mu, treedef)
        nus = leaves_like(state.nu, treedef)
        rv = F.real_views(gs, mus, nus)  # complex leaves: real and imaginary parts, as torch.optim
        if rv:
            gs, mus, nus = rv.real
        mus = F.lerp(mus, gs, 1.0 - b1, inplace=inplace)
        nus = _second_moment(nus, gs, b2, inplace)
        count = increment(state.count, inplace)
        t = _step(count)
        bc1 = _bias_correction(b1, count)
        bc2 = _bias_correction(b2, count)
        rho = rho_inf - 2.0 * t * b2 ** t / bc2
        rectify = rho >= threshold
        # r is NaN below rho = 4; where() keeps it out of the update
        r = torch.where(rectify, ((rho - 4.0) * (rho - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho))
                        .clamp_min(0.0).sqrt(), torch.ones((), dtype=_F64))
        on = rectify.to(_F64)
        if nesterov:
            numer = _nesterov_numerator(gs, mus, b1, count, inplace)
            denom_buf, reuse = None, False
        else:
            numer = None
            denom_buf, reuse = gs, inplace
        if eps_before_debias:
            denom = _root_denominator(denom_buf, nus, torch.ones((), dtype=_F64), eps, eps_root, reuse=reuse)
            F.div(denom, bc2.sqrt(), inplace=True)
        else:
            denom = _root_denominator(denom_buf, nus, bc2, eps, eps_root, reuse=reuse)
        # Without rectification the update is m_hat itself: make the denominator exactly 1
        # there (on * d + (1 - on) is d or 1 exactly), so no branch reads the step count.
        F.mul(denom, on, inplace=True)
        F.add(denom, 1.0 - on, inplace=True)
        if nesterov:
            out = F.div(numer, denom, inplace=True)
            F.mul(out, r, inplace=True)
        else:
            out = _divide_mu_hat(denom, mus, bc1 / r)
        out = F.cast_like(out, gs)  # updates keep the gradients' dtype
        if rv:
            out, mus, nus = rv.back(out, mus, nus)
        return unflatten(treedef, out), ScaleByAdamState(count, unflatten(treedef, mus), unflatten(treedef, nus))

    return GradientTransformation(init, update)


# -- NAdam, torch's form -------------------------------------------------------------------


class ScaleByNadamState(NamedTuple):
    """State of :func:`scale_by_nadam`."""

    count: torch.Tensor  # int32, steps taken
    # prod_{i<=t} mu_i, float64 of shape (1,): not 0-dim, so the adapter does not take it
    # for a hyperparameter
    mu_product: torch.Tensor
    mu: Tree  # first moment
    nu: Tree  # second moment


@transform(elementwise=True, inplace=True)
def scale_by_nadam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, momentum_decay: float = 4e-3,
                   eps_root: float = 0.0, mu_dtype: torch.dtype | None = None) -> GradientTransformation:
    """NAdam's rescaling with Dozat's momentum schedule (Dozat, 2016, "Incorporating Nesterov
    Momentum into Adam"), as ``torch.optim.NAdam``.

    ``mu_t = b1 (1 - 0.5 * 0.96^(t * momentum_decay))``; ``P_t = prod_{i<=t} mu_i``;
    ``m <- b1 m + (1-b1) g``; ``v <- b2 v + (1-b2) g^2``;
    ``u <- ((1 - mu_t) / (1 - P_t) g + mu_{t+1} / (1 - P_{t+1}) m) / (sqrt(v / (1 - b2^t) + eps_root) + eps)``.

    Followed by ``scale_by_lr(lr)`` this equals ``torch.optim.NAdam`` (weight_decay 0). optax's
    NAdam (``scale_by_adam(nesterov=True)``) is the same rule with the constant ``mu_t = b1``,
    which no ``momentum_decay`` reproduces (``momentum_decay=0`` gives ``mu_t = b1 / 2``).

    ``P_t`` is kept in float64 (``mu_product``, shape ``(1,)``). torch keeps it in the default
    dtype, float32 unless ``torch.set_default_dtype(torch.float64)``, so with float64
    parameters and the float32 default torch's steps carry a relative error of about 1e-8
    (``P_t`` rounded) that this does not; with the float64 default the two agree to round-off.

    Example: ``gx.chain(gx.scale_by_nadam(), gx.scale_by_lr(2e-3))``.
    """
    check_beta("b1", b1)
    check_beta("b2", b2)
    check("eps", eps, low=0.0)
    check("momentum_decay", momentum_decay, low=0.0)
    check("eps_root", eps_root, low=0.0)

    def init(params):
        return ScaleByNadamState(count=new_count(), mu_product=torch.ones(1, dtype=_F64),
                                 mu=_zeros(params, mu_dtype), nu=_zeros(params, None))

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del params, extra_args
        gs, treedef = leaves(updates)
        mus = leaves_like(state.mu, treedef)
        nus = leaves_like(state.nu, treedef)
        rv = F.real_views(gs, mus, nus)  # complex leaves: real and imaginary parts, as torch.optim
        if rv:
            gs, mus, nus = rv.real
        mus = F.lerp(mus, gs, 1.0 - b1, inplace=inplace)
        nus = _second_moment(nus, gs, b2, inplace)
        count = increment(state.count, inplace)
        t = _step(count)
        mu_t = b1 * (1.0 - 0.5 * 0.96 ** (t * momentum_decay))
        mu_next = b1 * (1.0 - 0.5 * 0.96 ** ((t + 1.0) * momentum_decay))
        product = state.mu_product.mul_(mu_t) if inplace else state.mu_product * mu_t
        prod_t = product.reshape(())
        # torch divides before the root: sqrt(v / bc2) + eps
        denom = F.div(nus, _bias_correction(b2, count))
        F.add(denom, eps_root, inplace=True)
        F.sqrt(denom, inplace=True)
        F.add(denom, eps, inplace=True)
        numer = F.mul(gs, (1.0 - mu_t) / (1.0 - prod_t), inplace=inplace)
        F.add(numer, F.mul(F.cast_like(mus, gs), mu_next / (1.0 - prod_t * mu_next)), inplace=True)
        out = F.cast_like(F.div(numer, denom, inplace=True), gs)  # updates keep the gradients' dtype
        if rv:
            out, mus, nus = rv.back(out, mus, nus)
        new_state = ScaleByNadamState(count, product, unflatten(treedef, mus), unflatten(treedef, nus))
        return unflatten(treedef, out), new_state

    return GradientTransformation(init, update)


# -- NovoGrad ---------------------------------------------------------------------------


class ScaleByNovogradState(NamedTuple):
    """State of :func:`scale_by_novograd`."""

    count: torch.Tensor  # int32, steps taken
    mu: Tree  # first moment of the normalised gradient, dtype mu_dtype or the param's
    nu: Tree  # one 0-dim second moment of the gradient's norm per parameter


@transform(leafwise=True, inplace=True)
def scale_by_novograd(b1: float = 0.9, b2: float = 0.25, eps: float = 1e-8, eps_root: float = 0.0,
                      weight_decay: float = 0.0, mu_dtype: torch.dtype | None = None) -> GradientTransformation:
    """NovoGrad's rescaling (Ginsburg et al., 2019, Algorithm 1), optax's form: layer-wise
    second moments.

    Per parameter tensor: ``n <- ||g||^2`` on the first step, then ``n <- b2 n + (1-b2) ||g||^2``;
    ``m <- b1 m + (g / (sqrt(n + eps_root) + eps) + weight_decay p)`` (``m`` starts at 0, so
    the first step gives ``m = g / (sqrt(n) + eps) + weight_decay p``); ``u <- m``.
    No bias correction. Needs ``params`` when ``weight_decay`` is not 0.

    Example: ``gx.chain(gx.scale_by_novograd(weight_decay=1e-3), gx.scale_by_lr(1e-2))``.
    """
    check_beta("b1", b1)
    check_beta("b2", b2)
    check("eps", eps, low=0.0)
    check("eps_root", eps_root, low=0.0)
    check("weight_decay", weight_decay, low=0.0)

    def init(params):
        ps, treedef = leaves(params)
        nu = unflatten(treedef, [torch.zeros((), dtype=p.dtype, device=p.device) for p in ps])
        return ScaleByNovogradState(count=new_count(), mu=_zeros(params, mu_dtype), nu=nu)

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del extra_args
        if not is_value(weight_decay, 0.0):
            need_params("scale_by_novograd", params)
        gs, treedef = leaves(updates)
        mus = leaves_like(state.mu, treedef)
        nus = leaves_like(state.nu, treedef)
        count = increment(state.count, inplace)
        # decay 0 on the first step, so n starts at ||g||^2 without a branch on the count
        decay = (count > 1).to(_F64) * b2
        sq_norms = [n.to(v.dtype) for n, v in zip(F.pow(F.norms(gs), 2.0, inplace=True), nus)]
        nus = F.mul(nus, decay, inplace=inplace)
        F.add(nus, F.mul(sq_norms, 1.0 - decay), inplace=True)
        denom = F.add(nus, eps_root)
        F.sqrt(denom, inplace=True)
        F.add(denom, eps, inplace=True)
        normed = F.div(gs, F.cast_like(denom, gs), inplace=inplace)
        if not is_value(weight_decay, 0.0):
            ps = leaves_like(params, treedef, "params")
            F.add(normed, F.cast_like([p.detach() for p in ps], gs), alpha=weight_decay, inplace=True)
        mus = F.mul(mus, b1, inplace=inplace)
        F.add(mus, F.cast_like(normed, mus), inplace=True)
        out = F.copy_(normed, mus)  # normed is this update's own buffer (or the caller's, when inplace)
        out = F.cast_like(out, gs)  # updates keep the gradients' dtype
        return unflatten(treedef, out), ScaleByNovogradState(count, unflatten(treedef, mus), unflatten(treedef, nus))

    return GradientTransformation(init, update)


# -- Lion -------------------------------------------------------------------------------


class ScaleByLionState(NamedTuple):
    """State of :func:`scale_by_lion`."""

    count: torch.Tensor  # int32, steps taken
    mu: Tree  # momentum, dtype mu_dtype or the param's


_LION_MODES = ("hard", "smooth", "refined")


@transform(elementwise=True, inplace=True)
def scale_by_lion(b1: float = 0.9, b2: float = 0.99, mu_dtype: torch.dtype | None = None, *,
                  mode: str = "hard", smooth_beta: float = 1.0) -> GradientTransformation:
    """Lion's rescaling (Chen et al., 2023, Program 1).

    ``c = b1 m + (1-b1) g``; ``u <- sign(c)`` (``mode="smooth"``: ``tanh(smooth_beta c)``;
    ``mode="refined"``: ``c`` clipped to ``[-1, 1]``); then ``m <- b2 m + (1-b2) g``.

    Example: ``gx.chain(gx.scale_by_lion(), gx.scale_by_lr(1e-4))``.
    """
    check_beta("b1", b1)
    check_beta("b2", b2)
    check("smooth_beta", smooth_beta, low=0.0)
    if mode not in _LION_MODES:
        raise ValueError(f"mode must be one of {_LION_MODES}, got {mode!r}")

    def init(params):
        return ScaleByLionState(count=new_count(), mu=_zeros(params, mu_dtype))

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del params, extra_args
        gs, treedef = leaves(updates)
        mus = leaves_like(state.mu, treedef)
        rv = F.real_views(gs, mus)  # complex leaves: real and imaginary parts, as torch.optim
        if rv:
            gs, mus = rv.real
        # c is new memory: g is still needed for the momentum below
        c = F.lerp(F.clone_like(mus, gs), gs, 1.0 - b1, inplace=True)
        if mode == "hard":
            F.sign(c, inplace=True)
        elif mode == "smooth":
            F.tanh(F.mul(c, smooth_beta, inplace=True), inplace=True)
        else:
            F.clamp(c, -1.0, 1.0, inplace=True)
        mus = F.lerp(mus, gs, 1.0 - b2, inplace=inplace)
        count = increment(state.count, inplace)
        if rv:
            c, mus = rv.back(c, mus)
        return unflatten(treedef, c), ScaleByLionState(count, unflatten(treedef, mus))

    return GradientTransformation(init, update)


# -- Adan -------------------------------------------------------------------------------


class ScaleByAdanState(NamedTuple):
    """State of :func:`scale_by_adan`."""

    m: Tree  # first moment of g
    v: Tree  # first moment of g_t - g_{t-1}
    n: Tree  # second moment of g_t + b2 (g_t - g_{t-1})
    g: Tree  # the previous gradient
    t: torch.Tensor  # int32, steps taken


@transform(elementwise=True, inplace=True)
def scale_by_adan(b1: float = 0.98, b2: float = 0.92, b3: float = 0.99, eps: float = 1e-8,
                  eps_root: float = 0.0) -> GradientTransformation:
    """Adan's rescaling (Xie et al., 2022, Algorithm 1), with decay rates ``b_i = 1 - beta_i``.

    ``d = g_t - g_{t-1}`` (0 on the first step); ``m <- b1 m + (1-b1) g``;
    ``v <- b2 v + (1-b2) d``; ``n <- b3 n + (1-b3) (g + b2 d)^2``; ``t <- t + 1``;
    ``u <- (m_hat + b2 v_hat) / (sqrt(n_hat + eps_root) + eps)`` with ``x_hat = x / (1 - b_x^t)``.

    This is the paper's rule (and its authors' code's): the difference term is weighted by
    the paper's ``1 - beta_2``, which is ``b2`` here. optax's ``scale_by_adan`` weights it by
    ``1 - b2`` instead (in ``n`` and in the numerator); the two agree on the first step only,
    where the difference is 0.

    Example: ``gx.chain(gx.scale_by_adan(), gx.scale_by_lr(1e-3))``.
    """
    check_beta("b1", b1)
    check_beta("b2", b2)
    check_beta("b3", b3)
    check("eps", eps, low=0.0)
    check("eps_root", eps_root, low=0.0)

    def init(params):
        return ScaleByAdanState(m=_zeros(params, None), v=_zeros(params, None), n=_zeros(params, None),
                                g=_zeros(params, None), t=new_count())

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del params, extra_args
        gs, treedef = leaves(updates)
        ms = leaves_like(state.m, treedef)
        vs = leaves_like(state.v, treedef)
        ns = leaves_like(state.n, treedef)
        prev = leaves_like(state.g, treedef)
        rv = F.real_views(gs, ms, vs, ns, prev)  # complex leaves: real and imaginary parts, as torch.optim
        if rv:
            gs, ms, vs, ns, prev = rv.real
        diff = F.sub(gs, prev)
        F.mul(diff, (state.t > 0).to(_F64), inplace=True)
        ms = F.lerp(ms, gs, 1.0 - b1, inplace=inplace)
        vs = F.lerp(vs, diff, 1.0 - b2, inplace=inplace)
        mixed = F.mul(diff, b2, inplace=True)  # g + b2 d, in d's buffer (d is used up)
        F.add(mixed, gs, inplace=True)
        ns = F.mul(ns, b3, inplace=inplace)
        F.addcmul(ns, mixed, mixed, 1.0 - b3, inplace=True)
        prev = F.copy_(prev, gs) if inplace else F.clone(gs)
        t = increment(state.t, inplace)
        denom = _root_denominator(mixed, ns, _bias_correction(b3, t), eps, eps_root, reuse=True)
        # numerator m / bc1 + b2 v / bc2, in g's buffer when allowed (g is saved in prev)
        out = F.div(F.copy_(gs, ms) if inplace else ms, _bias_correction(b1, t), inplace=inplace)
        F.add(out, F.mul(vs, b2 / _bias_correction(b2, t)), inplace=True)
        F.div(out, denom, inplace=True)
        out = F.cast_like(out, gs)  # updates keep the gradients' dtype
        if rv:
            out, ms, vs, ns, prev = rv.back(out, ms, vs, ns, prev)
        new_state = ScaleByAdanState(unflatten(treedef, ms), unflatten(treedef, vs), unflatten(treedef, ns),
                                     unflatten(treedef, prev), t)
        return unflatten(treedef, out), new_state

    return GradientTransformation(init, update)

