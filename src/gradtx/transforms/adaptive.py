"""Adaptive scaling by running moments of the gradient: Adam, RMS."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .. import _foreach as F  # noqa: N812
from .._hparams import check, check_beta, full_like, increment, is_value, new_count
from .._tree import Tree
from ..base import GradientTransformation, transform
from ._common import leaves, leaves_like, unflatten
from .momentum import _bias_correction, _zeros

__all__ = ["ScaleByAdamState", "ScaleByRmsState", "ScaleByRmsBiasCorrectedState", "scale_by_adam", "scale_by_rms"]


class ScaleByAdamState(NamedTuple):
    count: torch.Tensor  # int32, steps taken
    mu: Tree  # first moment, dtype mu_dtype or the param's
    nu: Tree  # second moment, the param's dtype



@transform(elementwise=True, inplace=True)
def scale_by_adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, eps_root: float = 0.0,
                  mu_dtype: torch.dtype | None = None, *, nesterov: bool = False) -> GradientTransformation:
    """Adam's rescaling (Kingma & Ba, 2015, Algorithm 1), optax's form.

    ``m <- b1 m + (1-b1) g``; ``v <- b2 v + (1-b2) g^2``; ``t <- t + 1``;
    ``m_hat = m / (1 - b1^t)``, or with ``nesterov`` (Dozat's NAdam)
    ``m_hat = b1 m / (1 - b1^(t+1)) + (1-b1) g / (1 - b1^t)``;
    ``u <- m_hat / (sqrt(v / (1 - b2^t) + eps_root) + eps)``.

    Equals ``torch.optim.Adam`` once followed by ``scale_by_lr(lr)``.

    Example: ``gx.chain(gx.scale_by_adam(b2=0.99), gx.scale_by_lr(1e-3))``.
    """
    check_beta("b1", b1)
    check_beta("b2", b2)
    check("eps", eps, low=0.0)
    check("eps_root", eps_root, low=0.0)

    def init(params):
        return ScaleByAdamState(count=new_count(), mu=_zeros(params, mu_dtype), nu=_zeros(params, None))

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del params, extra_args
        gs, treedef = leaves(updates)
        mus = leaves_like(state.mu, treedef)
        nus = leaves_like(state.nu, treedef)
        rv = F.real_views(gs, mus, nus)  # complex leaves: real and imaginary parts, as torch.optim
        if rv:
            gs, mus, nus = rv.real
        mus = F.lerp(mus, gs, 1.0 - b1, inplace=inplace)
        nus = F.mul(nus, b2, inplace=inplace)
        F.addcmul(nus, gs, gs, 1.0 - b2, inplace=True)
        count = increment(state.count, inplace)
        bc1 = _bias_correction(b1, count)
        bc2 = _bias_correction(b2, count)

        if F.recording(gs, mus, nus):
            # Autograd records (e.g. a hypergradient through the update): no temporary
            # that backward saved may be overwritten, so every step allocates.
            v_hat = F.add(F.div(nus, bc2), eps_root)
            denom = F.add(F.sqrt(v_hat), eps)
            if nesterov:
                bc1_next = _bias_correction(b1, count + 1)
                numer = F.add(F.mul(gs, (1.0 - b1) / bc1), F.mul(F.cast_like(mus, gs), b1 / bc1_next))
            else:
                numer = F.div(F.cast_like(mus, gs), bc1)
            out = F.div(numer, denom)
        else:
            out = _adam_direction(gs, mus, nus, count, b1, bc1, bc2, eps, eps_root, nesterov, inplace)
        out = F.cast_like(out, gs)  # updates keep the gradients' dtype
        if rv:
            out, mus, nus = rv.back(out, mus, nus)
        new_state = ScaleByAdamState(count, unflatten(treedef, mus), unflatten(treedef, nus))
        return unflatten(treedef, out), new_state

    return GradientTransformation(init, update)


def _adam_direction(gs, mus, nus, count, b1, bc1, bc2, eps, eps_root, nesterov, inplace):
    """``m_hat / (sqrt(v_hat + eps_root) + eps)`` reusing temporaries: one buffer for the
    denominator, which is g's own buffer when the caller allows writing into it (g is not
    needed after the moments, except by nesterov), so the in-place path allocates nothing."""
    reuse = inplace and not nesterov
    if is_value(eps_root, 0.0) and not nesterov:
        # sqrt(v / bc2) + eps == (sqrt(v) + eps sqrt(bc2)) / sqrt(bc2): the division by
        # sqrt(bc2) joins the final scaling, one pass fewer over the tensors.
        root_bc2 = bc2.sqrt()
        denom = F.sqrt(F.copy_(gs, nus), inplace=True) if reuse else F.sqrt(nus)
        F.add(denom, eps * root_bc2, inplace=True)
        F.reciprocal(denom, inplace=True)
        F.mul(denom, F.cast_like(mus, denom), inplace=True)
        return F.mul(denom, root_bc2 / bc1, inplace=True)
    if is_value(eps_root, 0.0):
        denom = F.sqrt(F.copy_(gs, nus), inplace=True) if reuse else F.sqrt(nus)
        F.div(denom, bc2.sqrt(), inplace=True)
    else:
        denom = F.div(F.copy_(gs, nus), bc2, inplace=True) if reuse else F.div(nus, bc2)
        F.add(denom, eps_root, inplace=True)
        F.sqrt(denom, inplace=True)
    F.add(denom, eps, inplace=True)

    if nesterov:
        bc1_next = _bias_correction(b1, count + 1)
        # numerator b1 m / bc1_next + (1 - b1) g / bc1, built in g's buffer when allowed
        numer = F.mul(gs, (1.0 - b1) / bc1, inplace=inplace)
        F.add(numer, F.mul(F.cast_like(mus, gs), b1 / bc1_next), inplace=True)
        return F.div(numer, denom, inplace=True)
    F.reciprocal(denom, inplace=True)
    F.mul(denom, F.cast_like(mus, denom), inplace=True)
    return F.div(denom, bc1, inplace=True)


class ScaleByRmsState(NamedTuple):
    nu: Tree


class ScaleByRmsBiasCorrectedState(NamedTuple):
    count: torch.Tensor
    nu: Tree


@transform(elementwise=True, inplace=True)
def scale_by_rms(decay: float = 0.9, eps: float = 1e-8, initial_scale: float = 0.0,
                 eps_in_sqrt: bool = True, bias_correction: bool = False) -> GradientTransformation:
    """Divide by the root of a running mean of squared updates (Tieleman & Hinton, 2012).

    ``v <- decay v + (1-decay) g^2`` (``v`` starts at ``initial_scale``);
    ``v_hat = v / (1 - decay^t)`` if ``bias_correction`` else ``v``;
    ``u <- g / sqrt(v_hat + eps)`` if ``eps_in_sqrt`` else ``g / (sqrt(v_hat) + eps)``.

    ``torch.optim.RMSprop`` is ``eps_in_sqrt=False, initial_scale=0``.

    Example: ``gx.chain(gx.scale_by_rms(0.99, eps_in_sqrt=False), gx.scale_by_lr(1e-2))``.
    """
    check_beta("decay", decay)
    check("eps", eps, low=0.0)
    check("initial_scale", initial_scale, low=0.0)

    def init(params):
        ps, treedef = leaves(params)
        nu = unflatten(treedef, [full_like(p, initial_scale) for p in ps])
        return ScaleByRmsBiasCorrectedState(new_count(), nu) if bias_correction else ScaleByRmsState(nu)

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del params, extra_args
        gs, treedef = leaves(updates)
        nus = leaves_like(state.nu, treedef)
        rv = F.real_views(gs, nus)  # complex leaves: real and imaginary parts, as torch.optim
        if rv:
            gs, nus = rv.real
        nus = F.mul(nus, decay, inplace=inplace)
        F.addcmul(nus, gs, gs, 1.0 - decay, inplace=True)
        if bias_correction:
            count = increment(state.count, inplace)
            denom = F.div(nus, _bias_correction(decay, count))
        else:
            denom = None
        if eps_in_sqrt:
            denom = F.add(denom if denom is not None else nus, eps, inplace=denom is not None)
            F.sqrt(denom, inplace=True)
        else:
            denom = F.sqrt(denom if denom is not None else nus, inplace=denom is not None)
            F.add(denom, eps, inplace=True)
        out = F.cast_like(F.div(gs, denom, inplace=inplace), gs)  # updates keep the gradients' dtype
        if rv:
            out, nus = rv.back(out, nus)
        nu = unflatten(treedef, nus)
        new_state = ScaleByRmsBiasCorrectedState(count, nu) if bias_correction else ScaleByRmsState(nu)
        return unflatten(treedef, out), new_state

    return GradientTransformation(init, update)
