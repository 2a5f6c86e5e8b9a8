"""Sophia (Liu, Li, Hall, Liang & Ma, 2023, "Sophia: A Scalable Stochastic Second-order
Optimizer for Language Model Pre-training"): momentum divided by an exponential average of
Hessian-diagonal estimates, clipped elementwise.

Two forms, which differ in when the new curvature estimate is used:

- :func:`scale_by_sophia_h` is the paper's Algorithm 3 with Hutchinson's estimator (SophiaH,
  as pytorch_optimizer's ``SophiaH`` and torchzero's ``SophiaH``): on an estimation step the
  estimate enters ``h`` before the division;
- :func:`scale_by_sophia` is optax.contrib's (after levanter): any ``hessian_diagonal_fn``
  transform, a bias-corrected momentum, and the division by the ``h`` of the previous step.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from .._hparams import check, check_beta, check_int, increment, new_count
from .._tree import Tree, tensor_leaves, tree_unflatten
from ..base import GradientTransformation, transform, updater
from ..transforms._common import leaves_like, need_params, refuse_complex
from .hutchinson import check_sampling, check_seed, diagonal_estimate, hutchinson_estimator_diag_hessian

__all__ = ["ScaleBySophiaHState", "ScaleBySophiaState", "scale_by_sophia", "scale_by_sophia_h"]


def _zeros(params: Tree, dtype: torch.dtype | None = None) -> Tree:
    ps, treedef = tensor_leaves(params)
    return tree_unflatten([torch.zeros_like(p, dtype=dtype) for p in ps], treedef)


def _clip_ratio(mus: list[torch.Tensor], hs: list[torch.Tensor], gamma: Any, eps: Any,
                clip_threshold: Any) -> list[torch.Tensor]:
    # m / max(gamma h, eps), clipped to [-c, c]; max(gamma h, eps) > 0 for eps > 0
    out = []
    for m, h in zip(mus, hs):
        r = m / torch.clamp(gamma * h, min=eps)
        out.append(r if clip_threshold is None else torch.clamp(r, -clip_threshold, clip_threshold))
    return out


class ScaleBySophiaHState(NamedTuple):
    count: torch.Tensor  # int32, steps taken
    seed: torch.Tensor  # int64 0-dim: the Hutchinson probes' seed
    mu: Tree  # momentum of the updates
    h: Tree  # exponential average of the Hessian-diagonal estimates


@transform(inplace=True)
def scale_by_sophia_h(b1: float = 0.965, b2: float = 0.99, gamma: float = 0.01, eps: float = 1e-12,
                      clip_threshold: float = 1.0, update_interval: int = 10, *, n_samples: int = 1,
                      distribution: str = "gaussian", seed: int = 0, hvp_method: str = "autograd",
                      h: float = 1e-3) -> GradientTransformation:
    """SophiaH's rescaling (Liu et al., 2023, Algorithm 3 with Hutchinson's estimator).

    ``m <- b1 m + (1-b1) g``; every ``update_interval`` steps, starting with the first,
    ``h <- b2 h + (1-b2) z*(Hz)`` (Hutchinson, ``n_samples`` probes); then
    ``u <- clip(m / max(gamma h, eps), -clip_threshold, clip_threshold)``. No bias correction.
    Followed by ``scale_by_lr(lr)`` (and decoupled decay) it is :func:`gradtx.sophia_h`.

    ``H`` is reached through the extra argument ``hvp_fn`` (``hvp_method="autograd"``) or
    finite differences of ``value_and_grad_fn`` (``"fd_forward"``/``"fd_central"``, step
    ``h``); probes are Gaussian by default, as in the paper (``distribution="rademacher"``
    halves the variance). See :mod:`gradtx.second_order.hutchinson` for the seeding.

    Defaults are the paper's (b1, b2, gamma, eps, k=10). pytorch_optimizer's ``SophiaH(lr, p,
    eps)`` clips ``m / max(h, eps)`` at ``p`` instead; since ``clip(m / max(gamma h, eps), 1) =
    clip(m / max(h, eps / gamma), gamma) / gamma``, ``gx.sophia_h(lr, gamma=g, eps=e)`` is its
    ``SophiaH(lr=lr / g, p=g, eps=e / g)``.

    Example: ``gx.chain(gx.scale_by_sophia_h(), gx.scale_by_lr(1e-3))`` with
    ``update(..., hvp_fn=gx.make_hvp_fn(loss_fn))`` or under ``gx.Optimizer.step(closure)``.
    """
    check_beta("b1", b1)
    check_beta("b2", b2)
    check("gamma", gamma, low=0.0, low_open=True)
    check("eps", eps, low=0.0, low_open=True)
    check("clip_threshold", clip_threshold, low=0.0, low_open=True, allow_inf=True)
    check_int("update_interval", update_interval, low=1)
    check_sampling(n_samples, distribution, hvp_method, h)
    check_seed(seed)

    def init(params):
        refuse_complex("scale_by_sophia_h", params, "the Hessian diagonal of a real loss")
        return ScaleBySophiaHState(new_count(), torch.tensor(seed, dtype=torch.int64), _zeros(params),
                                   _zeros(params))

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del inplace  # it allocates: writes into nothing it is given, returns fresh tensors
        need_params("scale_by_sophia_h", params)
        gs, treedef = tensor_leaves(updates)
        mus = [torch.lerp(m, g.to(m.dtype), 1.0 - b1) for m, g in zip(leaves_like(state.mu, treedef), gs)]
        hs = leaves_like(state.h, treedef)
        count = increment(state.count, False)
        if (int(count) - 1) % update_interval == 0:
            d, _ = diagonal_estimate(params, extra_args, seed=int(state.seed), step=int(count), n_samples=n_samples,
                                     distribution=distribution, hvp_method=hvp_method, h=h,
                                     where="scale_by_sophia_h")
            hs = [torch.lerp(x, e.to(x.dtype), 1.0 - b2) for x, e in zip(hs, d)]
        out = [u.to(g.dtype) for u, g in zip(_clip_ratio(mus, hs, gamma, eps, clip_threshold), gs)]
        return tree_unflatten(out, treedef), ScaleBySophiaHState(count, state.seed, tree_unflatten(mus, treedef),
                                                                 tree_unflatten(hs, treedef))

    return GradientTransformation(init, update)


class ScaleBySophiaState(NamedTuple):
    count: torch.Tensor  # int32, steps taken
    mu: Tree  # momentum, dtype mu_dtype or the param's
    nu: Tree  # exponential average of the Hessian-diagonal estimates
    hessian_fn_state: Any  # the state of hessian_diagonal_fn


@transform(inplace=True)
def scale_by_sophia(b1: float = 0.965, b2: float = 0.99, eps: float = 1e-8, gamma: float = 0.01,
                    clip_threshold: float | None = 1.0, update_interval: int = 10,
                    hessian_diagonal_fn: GradientTransformation | None = None,
                    mu_dtype: torch.dtype | None = None) -> GradientTransformation:
    """Sophia's rescaling, optax.contrib's ``scale_by_sophia`` (levanter's order).

    ``t <- t + 1``; ``m <- b1 m + (1-b1) g``; ``u <- m / (1 - b1^t) / max(gamma nu, eps)``,
    clipped to ``[-clip_threshold, clip_threshold]`` (``None``: not clipped); then, when
    ``(t - 1) % update_interval == 0``, ``nu <- b2 nu + (1-b2) d`` with ``d`` the update of
    ``hessian_diagonal_fn`` (given the gradient, ``params`` and every extra argument). So the
    estimate of step ``t`` is first used at step ``t + 1`` (the first step divides by
    ``eps`` and is clipped). The paper's order is :func:`scale_by_sophia_h`.

    ``hessian_diagonal_fn`` defaults to ``gx.hutchinson_estimator_diag_hessian()`` (one
    Rademacher probe, ``seed=0``, through the extra argument ``hvp_fn``); any transform
    returning a diagonal estimate works (its state lives in ``hessian_fn_state``).

    Defaults are optax's. Reference: Liu et al. (2023); optax.contrib.scale_by_sophia.

    Example: ``gx.chain(gx.scale_by_sophia(), gx.scale_by_lr(1e-3))``, updated with
    ``hvp_fn=gx.make_hvp_fn(loss_fn)`` (or under ``gx.Optimizer.step(closure)``).
    """
    check_beta("b1", b1)
    check_beta("b2", b2)
    check("eps", eps, low=0.0, low_open=True)
    check("gamma", gamma, low=0.0)
    if clip_threshold is not None:
        check("clip_threshold", clip_threshold, low=0.0, low_open=True, allow_inf=True)
    check_int("update_interval", update_interval, low=1)
    if hessian_diagonal_fn is None:
        hessian_diagonal_fn = hutchinson_estimator_diag_hessian()
    elif not isinstance(hessian_diagonal_fn, GradientTransformation):
        raise ValueError("hessian_diagonal_fn must be a GradientTransformation returning the Hessian diagonal as its "
                         f"update (e.g. gx.hutchinson_estimator_diag_hessian()), got {hessian_diagonal_fn!r}")
    if mu_dtype is not None and not isinstance(mu_dtype, torch.dtype):
        raise ValueError(f"mu_dtype must be a torch.dtype or None, got {mu_dtype!r}")
    run_hessian = updater(hessian_diagonal_fn)

    def init(params):
        return ScaleBySophiaState(new_count(), _zeros(params, mu_dtype), _zeros(params),
                                  hessian_diagonal_fn.init(params))

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del inplace  # it allocates: writes into nothing it is given, returns fresh tensors
        need_params("scale_by_sophia", params)
        gs, treedef = tensor_leaves(updates)
        count = increment(state.count, False)
        mus = [torch.lerp(m.to(g.dtype), g, 1.0 - b1) for m, g in zip(leaves_like(state.mu, treedef), gs)]
        bc1 = 1.0 - b1 ** count.double()
        nus = leaves_like(state.nu, treedef)
        out = _clip_ratio([m / bc1.to(m.dtype) for m in mus], nus, gamma, eps, clip_threshold)
        out = [u.to(g.dtype) for u, g in zip(out, gs)]
        hessian_fn_state = state.hessian_fn_state
        if (int(count) - 1) % update_interval == 0:
            d, hessian_fn_state = run_hessian(updates, hessian_fn_state, params, False, extra_args)
            d = leaves_like(d, treedef, "hessian_diagonal_fn's update")
            nus = [torch.lerp(x, e.to(x.dtype), 1.0 - b2) for x, e in zip(nus, d)]
        mus = [m.to(old.dtype) for m, old in zip(mus, leaves_like(state.mu, treedef))]
        new_state = ScaleBySophiaState(count, tree_unflatten(mus, treedef), tree_unflatten(nus, treedef),
                                       hessian_fn_state)
        return tree_unflatten(out, treedef), new_state

    return GradientTransformation(init, update)
