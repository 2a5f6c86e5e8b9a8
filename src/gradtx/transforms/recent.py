"""Recent Adam relatives: ADOPT, AdEMAMix and its simplified form, LaProp, AcProp, MADGRAD,
AdaBound.

Each is a rule for one tensor looped over the leaves (:func:`gradtx.per_tensor`): every
hyperparameter is a float64 0-dim tensor in the state (a ``param_groups`` key), the step
count is shared, and the math runs in float32 or wider, each update and state tensor kept
in its own dtype. A complex parameter steps as its real view, as in torch.optim.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch

from .._foreach import wide_dtype
from .._hparams import ScalarOrSchedule, check, check_beta, is_schedule
from ..authoring import per_tensor
from ..base import GradientTransformation, transform

__all__ = ["adabound", "quarter_power", "scale_by_acprop", "scale_by_ademamix", "scale_by_adopt", "scale_by_laprop",
           "scale_by_madgrad", "scale_by_simplified_ademamix"]


def _exact(x) -> torch.Tensor:
    """``x`` as a tensor; a Python number exactly, as float64 (``torch.as_tensor(0.9)`` would round it to float32)."""
    return x if isinstance(x, torch.Tensor) else torch.tensor(float(x), dtype=torch.float64)


def real_rule(rule: Callable) -> Callable:
    """``rule(g, state, p, **kw)`` on real tensors, run on the real views of complex ones and
    computed in float32 or wider; results back in the update's and state's form."""

    @functools.wraps(rule)
    def run(g, state, p, **keywords):
        cplx = g.is_complex()
        as_real = (lambda x: torch.view_as_real(x)) if cplx else (lambda x: x)  # noqa: E731
        w = wide_dtype(g.dtype, *(s.dtype for s in state), *(() if p is None else (p.dtype,)))
        state_real = tuple(as_real(s).to(w) for s in state)
        u, new = rule(as_real(g).to(w), state_real, None if p is None else as_real(p).to(w), **keywords)
        back = (lambda x, like: torch.view_as_complex(x.to(like.dtype.to_real()).contiguous())) if cplx else (
            lambda x, like: x.to(like.dtype))
        return back(u, g), tuple(back(n, s) for n, s in zip(new, state))

    return run


def _zeros(n: int) -> Callable[[torch.Tensor], tuple]:
    def init(p: torch.Tensor) -> tuple:
        return tuple(torch.zeros_like(p) for _ in range(n))

    init.__name__ = f"zeros_{n}"
    return init


def quarter_power(count: torch.Tensor) -> torch.Tensor:
    """``count ** 0.25``: ADOPT's default clipping bound at step ``count`` (from 0)."""
    return count.to(torch.float64) ** 0.25


# --- ADOPT ---------------------------------------------------------------------------------


@transform(elementwise=True, inplace=True)
def scale_by_adopt(b1: float = 0.9, b2: float = 0.9999, eps: float = 1e-6, *, nesterov: bool = False,
                   use_clipping: bool = True, clip_value_fn: Callable[[torch.Tensor], Any] = quarter_power
                   ) -> GradientTransformation:
    """ADOPT's rescaling (Taniguchi et al., 2024), as ``optax.contrib.scale_by_adopt``.

    With ``k`` the steps taken before this one: at ``k = 0`` only ``v <- g^2`` (the update
    is 0); then ``n = clip(g / max(sqrt(v), eps), +-clip_value_fn(k))`` (the old ``v``; no
    clip without ``use_clipping``), ``m <- b1 m + (1-b1) n``, ``v <- b2 v + (1-b2) g^2``,
    ``u <- m`` (``b1 m + (1-b1) n`` with ``nesterov``). Follow with ``scale_by_lr(lr)``.

    Example: ``gx.chain(gx.scale_by_adopt(), gx.scale_by_lr(1e-3))``.
    """
    check_beta("b1", b1)
    check_beta("b2", b2)
    check("eps", eps, low=0.0)
    if not callable(clip_value_fn):
        raise ValueError(f"clip_value_fn must be a callable step -> bound, got {clip_value_fn!r}")

    def adopt_update(g, state, p, *, step, b1, b2, eps):
        mu, nu = state
        first = step == 1
        scaled = g / torch.clamp(nu.sqrt(), min=eps.to(g))
        if use_clipping:
            bound = _exact(clip_value_fn(step - 1)).to(dtype=g.dtype, device=g.device)
            scaled = torch.minimum(torch.maximum(scaled, -bound), bound)
        b1_ = torch.where(first, torch.ones_like(b1), b1).to(g.dtype)
        b2_ = torch.where(first, torch.zeros_like(b2), b2).to(g.dtype)
        new_mu = b1_ * mu + (1 - b1_) * scaled
        new_nu = b2_ * nu + (1 - b2_) * g * g
        u = b1_ * new_mu + (1 - b1_) * scaled if nesterov else new_mu.clone()
        return u, (new_mu, new_nu)

    return per_tensor(_zeros(2), real_rule(adopt_update), b1=b1, b2=b2, eps=eps)


# --- AdEMAMix ------------------------------------------------------------------------------


@transform(elementwise=True, inplace=True)
def scale_by_ademamix(b1: float = 0.9, b2: float = 0.999, b3: ScalarOrSchedule = 0.9999,
                      alpha: ScalarOrSchedule = 6.0, eps: float = 1e-8, eps_root: float = 0.0
                      ) -> GradientTransformation:
    """AdEMAMix's rescaling (Pagliardini et al., 2024), as ``optax.contrib.scale_by_ademamix``.

    ``m1 <- b1 m1 + (1-b1) g``; ``m2 <- b3 m2 + (1-b3) g``; ``v <- b2 v + (1-b2) g^2``;
    ``u <- (m1 / (1 - b1^t) + alpha m2) / (sqrt(v / (1 - b2^t) + eps_root) + eps)`` (the slow
    EMA ``m2`` is not bias-corrected). ``b3`` and ``alpha`` may be schedules of the step
    count (0 at the first update), as the paper warms them up.

    Example: ``gx.chain(gx.scale_by_ademamix(), gx.scale_by_lr(1e-3))``.
    """
    check_beta("b1", b1)
    check_beta("b2", b2)
    if not is_schedule(b3):
        check_beta("b3", b3)
    if not is_schedule(alpha):
        check("alpha", alpha)
    check("eps", eps, low=0.0)
    check("eps_root", eps_root, low=0.0)

    def ademamix_update(g, state, p, *, step, b1, b2, b3, alpha, eps, eps_root):
        m1, m2, nu = state
        dt = g.dtype
        b1, b2, b3, alpha = (_exact(x).to(dtype=dt, device=g.device) for x in (b1, b2, b3, alpha))
        m1 = b1 * m1 + (1 - b1) * g
        m2 = b3 * m2 + (1 - b3) * g
        nu = b2 * nu + (1 - b2) * g * g
        t = step.to(dt)
        m1_hat = m1 / (1 - b1 ** t)
        nu_hat = nu / (1 - b2 ** t)
        u = (m1_hat + alpha * m2) / ((nu_hat + eps_root.to(dt)).sqrt() + eps.to(dt))
        return u, (m1, m2, nu)

    return per_tensor(_zeros(3), real_rule(ademamix_update), b1=b1, b2=b2, b3=b3, alpha=alpha, eps=eps,
                      eps_root=eps_root)


@transform(elementwise=True, inplace=True)
def scale_by_simplified_ademamix(b1: float = 0.99, b2: float = 0.95, alpha: ScalarOrSchedule = 0.0,
                                 eps: float = 1e-8, eps_root: float = 0.0) -> GradientTransformation:
    """Simplified AdEMAMix's rescaling (Morwani et al., 2025), as
    ``optax.contrib.scale_by_simplified_ademamix``.

    ``m <- b1 m + g`` (no ``1 - b1``); ``v <- b2 v + (1-b2) g^2``;
    ``u <- (m + alpha g) / (sqrt(v / (1 - b2^t) + eps_root) + eps)``; ``alpha`` may be a
    schedule of the step count (0 at the first update).

    Example: ``gx.chain(gx.scale_by_simplified_ademamix(), gx.scale_by_lr(1e-3))``.
    """
    check_beta("b1", b1)
    check_beta("b2", b2)
    if not is_schedule(alpha):
        check("alpha", alpha)
    check("eps", eps, low=0.0)
    check("eps_root", eps_root, low=0.0)

    def simplified_ademamix_update(g, state, p, *, step, b1, b2, alpha, eps, eps_root):
        m, nu = state
        dt = g.dtype
        b1, b2, alpha = (_exact(x).to(dtype=dt, device=g.device) for x in (b1, b2, alpha))
        m = b1 * m + g
        nu = b2 * nu + (1 - b2) * g * g
        nu_hat = nu / (1 - b2 ** step.to(dt))
        u = (m + alpha * g) / ((nu_hat + eps_root.to(dt)).sqrt() + eps.to(dt))
        return u, (m, nu)

    return per_tensor(_zeros(2), real_rule(simplified_ademamix_update), b1=b1, b2=b2,
                      alpha=alpha, eps=eps, eps_root=eps_root)


# --- LaProp --------------------------------------------------------------------------------


@transform(elementwise=True, inplace=True)
def scale_by_laprop(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-15, eps_root: float = 1e-15
                    ) -> GradientTransformation:
    """LaProp's rescaling (Ziyin et al., 2020): momentum over the RMS-normalised gradient, as
    ``pytorch_optimizer.LaProp`` (not centred, no AMSBound).

    ``v <- b2 v + (1-b2) g^2``; ``m <- b1 m + (1-b1) sqrt(1 - b2^t) g / (sqrt(v + eps_root) + eps)``;
    ``u <- m / (1 - b1^t)``. Follow with ``scale_by_lr(lr)``: with a constant ``lr`` this is
    the reference's update, which folds ``lr`` into ``m`` (the two differ only when ``lr``
    changes during training).

    Example: ``gx.chain(gx.scale_by_laprop(), gx.scale_by_lr(4e-4))``.
    """
    check_beta("b1", b1)
    check_beta("b2", b2)
    check("eps", eps, low=0.0)
    check("eps_root", eps_root, low=0.0)

    def laprop_update(g, state, p, *, step, b1, b2, eps, eps_root):
        m, nu = state
        dt = g.dtype
        b1, b2 = b1.to(dt), b2.to(dt)
        t = step.to(dt)
        nu = b2 * nu + (1 - b2) * g * g
        denom = ((nu + eps_root.to(dt)).sqrt() + eps.to(dt)) / (1 - b2 ** t).sqrt()
        m = b1 * m + (1 - b1) * g / denom
        return m / (1 - b1 ** t), (m, nu)

    return per_tensor(_zeros(2), real_rule(laprop_update), b1=b1, b2=b2, eps=eps, eps_root=eps_root)


# --- AcProp --------------------------------------------------------------------------------


@transform(elementwise=True, inplace=True)
def scale_by_acprop(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-16, eps_root: float = 1e-16
                    ) -> GradientTransformation:
    """AcProp's rescaling (Zhuang et al., 2021), as ``optax.contrib.scale_by_acprop``: the
    gradient divided by the *previous* step's centred second moment (asynchronous update).

    ``s_hat = s_{t-1} / (1 - b2^(t-1))`` (1 at the first step); ``u <- g / (sqrt(s_hat) + eps)``;
    then ``s <- b2 s + (1-b2) (g - m_{t-1})^2 + eps_root`` and ``m <- b1 m + (1-b1) g``.
    As in optax, ``m`` enters only ``s`` (the update carries no momentum of its own).

    Example: ``gx.chain(gx.scale_by_acprop(), gx.scale_by_lr(1e-3))``.
    """
    check_beta("b1", b1)
    check_beta("b2", b2)
    check("eps", eps, low=0.0)
    check("eps_root", eps_root, low=0.0)

    def acprop_update(g, state, p, *, step, b1, b2, eps, eps_root):
        mu, nu = state
        dt = g.dtype
        b1, b2 = b1.to(dt), b2.to(dt)
        first = step == 1
        t_prev = torch.where(first, step, step - 1).to(dt)
        nu_hat = torch.where(first, torch.ones_like(nu), nu / (1 - b2 ** t_prev))
        u = g / (nu_hat.sqrt() + eps.to(dt))
        err = g - mu
        nu = b2 * nu + (1 - b2) * err * err + eps_root.to(dt)
        mu = b1 * mu + (1 - b1) * g
        return u, (mu, nu)

    return per_tensor(_zeros(2), real_rule(acprop_update), b1=b1, b2=b2, eps=eps, eps_root=eps_root)


# --- MADGRAD -------------------------------------------------------------------------------


def _madgrad_init(p: torch.Tensor) -> tuple:
    p = p.detach()
    return torch.zeros_like(p), torch.zeros_like(p), p.clone()


@transform(elementwise=True, inplace=True)
def scale_by_madgrad(lr: ScalarOrSchedule, momentum: float = 0.9, eps: float = 1e-6) -> GradientTransformation:
    """MADGRAD (Defazio & Jelassi, 2021), as ``optax.contrib.scale_by_madgrad`` and facebook's
    ``madgrad``; needs ``params``. Returns the whole step (learning rate included):

    ``lambda = (lr + eps) sqrt(k + 1)`` (``k`` steps taken); ``G <- G + lambda g^2``;
    ``s <- s + lambda g``; ``z = x0 - s / (G^(1/3) + eps)``;
    ``x' = (1 - momentum) z + momentum x``; the update is ``x' - x``.

    Example: ``gx.scale_by_madgrad(1e-2)`` (``gx.madgrad`` adds weight decay before it).
    """
    check("lr", lr, low=0.0, allow_schedule=True)
    check_beta("momentum", momentum)
    check("eps", eps, low=0.0)

    def madgrad_update(g, state, p, *, step, lr, momentum, eps):
        if p is None:
            raise ValueError("scale_by_madgrad needs params: call update(updates, state, params)")
        grad_sum_sq, s, x0 = state
        dt = g.dtype
        lamb = (_exact(lr).to(dt) + eps.to(dt)) * step.to(dt).sqrt()
        grad_sum_sq = grad_sum_sq + lamb * g * g
        s = s + lamb * g
        z = x0 - s / (grad_sum_sq.pow(1.0 / 3.0) + eps.to(dt))
        mom = momentum.to(dt)
        return (1 - mom) * z + mom * p - p, (grad_sum_sq, s, x0)

    return per_tensor(_madgrad_init, real_rule(madgrad_update), lr=lr, momentum=momentum,
                      eps=eps)


# --- AdaBound ------------------------------------------------------------------------------


@transform(elementwise=True, inplace=True)
def adabound(lr: float = 1e-3, final_lr: float = 0.1, b1: float = 0.9, b2: float = 0.999, gamma: float = 1e-3,
             eps: float = 1e-8) -> GradientTransformation:
    """AdaBound (Luo et al., 2019), as ``pytorch_optimizer.AdaBound`` (no weight decay, no
    AMSBound): Adam whose per-element step size is clipped into bounds that close on
    ``final_lr``. Returns the whole (descending) step.

    ``m <- b1 m + (1-b1) g``; ``v <- b2 v + (1-b2) g^2``;
    ``eta = clip(lr sqrt(1 - b2^t) / (1 - b1^t) / (sqrt(v + 1e-15) + eps), lo_t, hi_t)`` with
    ``lo_t = final_lr (1 - 1 / (gamma t + 1))``, ``hi_t = final_lr (1 + 1 / (gamma t))``;
    ``u = -eta m``. ``lr`` is ``param_groups[i]['lr']``; the reference scales ``final_lr``
    by ``lr / initial lr`` when a scheduler changes ``lr``, which is not done here.

    Example: ``gx.Optimizer(model.parameters(), gx.adabound(1e-3, final_lr=0.1))``.
    """
    check("lr", lr, low=0.0)
    check("final_lr", final_lr, low=0.0)
    check_beta("b1", b1)
    check_beta("b2", b2)
    check("gamma", gamma, low=0.0, low_open=True)
    check("eps", eps, low=0.0)

    def adabound_update(g, state, p, *, step, lr, final_lr, b1, b2, gamma, eps):
        m, nu = state
        dt = g.dtype
        lr, final_lr, b1, b2, gamma, eps = (x.to(dt) for x in (lr, final_lr, b1, b2, gamma, eps))
        t = step.to(dt)
        m = b1 * m + (1 - b1) * g
        nu = b2 * nu + (1 - b2) * g * g
        step_size = lr * (1 - b2 ** t).sqrt() / (1 - b1 ** t)
        lower = final_lr * (1 - 1 / (gamma * t + 1))
        upper = final_lr * (1 + 1 / (gamma * t))
        eta = torch.minimum(torch.maximum(step_size / ((nu + 1e-15).sqrt() + eps), lower), upper)
        return -eta * m, (m, nu)

    return per_tensor(_zeros(2), real_rule(adabound_update), lr=lr, final_lr=final_lr, b1=b1, b2=b2, gamma=gamma,
                      eps=eps)
