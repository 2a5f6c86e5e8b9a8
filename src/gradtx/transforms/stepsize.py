"""Step-size rules: Polyak, distance over gradients, optimistic gradient."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .. import _foreach as F  # noqa: N812
from .._hparams import check, is_value
from .._tree import Tree
from ..base import EmptyState, GradientTransformation, transform
from ._common import first_device, leaves, leaves_like, need_params, unflatten

__all__ = ["DoGState", "ScaleByDistanceOverGradientsState", "ScaleByOptimisticGradientState",
           "scale_by_distance_over_gradients", "scale_by_dog", "scale_by_optimistic_gradient", "scale_by_polyak"]


_wide = F.wide_dtype  # the dtype statistics of tensors of given dtypes are kept in: float32 or wider


def _sq_norms(xs: list[torch.Tensor], dtype: torch.dtype | None = None) -> list[torch.Tensor]:
    """``||x||^2`` of each tensor, in ``dtype`` (by default each in its own :func:`_wide`):
    a sum over all leaves passes the widest dtype of the tree, so that no leaf's share is
    computed in a lower precision than the sum."""
    ns = F.norms(xs, dtype)
    return F.mul(ns, ns, inplace=True)


def _total(scalars: list[torch.Tensor], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The sum of 0-dim tensors, as one ``dtype`` tensor."""
    if not scalars:
        return torch.zeros((), dtype=dtype, device=device)
    return torch.stack([s.to(dtype=dtype, device=device) for s in scalars]).sum()


def _scale_each(xs: list[torch.Tensor], factors: list[torch.Tensor], inplace: bool) -> list[torch.Tensor]:
    # Each factor cast to its tensor's dtype: a float32 factor would promote a 0-dim bf16 leaf.
    return F.mul(xs, [f.to(x.dtype) for f, x in zip(factors, xs)], inplace=inplace)


# --- Polyak ------------------------------------------------------------------------------


@transform(inplace=True)
def scale_by_polyak(f_min: float = 0.0, max_learning_rate: float = 1.0, eps: float = 0.0,
                    variant: str = "sps") -> GradientTransformation:
    """Polyak's step size (Loizou et al., 2021; optax.scale_by_polyak); needs ``value``.

    ``u <- min((f - f_min) / (||g||^2 + eps), max_learning_rate) g`` with ``f`` the loss
    passed as ``update(..., value=f)`` and ``||g||`` the global l2 norm of the updates;
    ``variant="sps+"`` (Garrigos et al., 2023) uses ``max(f - f_min, 0)``. The step is 0
    when ``||g||^2 + eps`` is at most the machine epsilon of the norm's dtype. ``value`` is
    used detached. Follow with ``scale_by_lr(lr)`` (usually ``lr = 1``) to descend.

    Example: ``tx = gx.chain(gx.scale_by_polyak(), gx.scale_by_lr(1.0))``;
    ``tx.update(grads, state, params, value=loss)``.
    """
    check("f_min", f_min)
    check("max_learning_rate", max_learning_rate, low=0.0, allow_inf=True)  # inf: no cap
    check("eps", eps, low=0.0)
    if variant not in ("sps", "sps+"):
        raise ValueError(f"variant must be 'sps' or 'sps+', got {variant!r}")

    def init(params):
        del params
        return EmptyState()

    def update(updates, state, params=None, *, inplace=False, value=None, **extra_args):
        del params, extra_args
        if value is None:
            raise ValueError("scale_by_polyak needs the loss at params: call update(grads, state, params, value=loss)")
        us, treedef = leaves(updates)
        if not us:
            return updates, state
        dtype = _wide(*{u.dtype for u in us})
        device = first_device(us)
        sq_norm = _total(_sq_norms(us, dtype), dtype, device)
        value = torch.as_tensor(value).detach()
        if value.numel() != 1:
            raise ValueError(f"scale_by_polyak needs a scalar loss as value, got shape {tuple(value.shape)}")
        # A one-element loss of any shape (e.g. (1,)) is the scalar it holds.
        gap = value.reshape(()).to(dtype=dtype, device=device) - f_min
        if variant == "sps+":
            gap = gap.clamp_min(0.0)
        denom = sq_norm + eps
        step = torch.where(denom <= torch.finfo(dtype).eps, torch.zeros_like(denom),
                           torch.clamp(gap / denom, max=max_learning_rate))
        return unflatten(treedef, F.mul(us, step, inplace=inplace)), state

    return GradientTransformation(init, update)


# --- optimistic gradient -----------------------------------------------------------------


class ScaleByOptimisticGradientState(NamedTuple):
    is_initial_step: torch.Tensor  # 0-dim bool: no previous gradient yet
    previous_gradient: Tree


@transform(elementwise=True, inplace=True)
def scale_by_optimistic_gradient(alpha: float = 1.0, beta: float = 1.0) -> GradientTransformation:
    """Generalized optimistic gradient (Mokhtari et al., 2019; optax.scale_by_optimistic_gradient).

    ``u_t <- (alpha + beta) g_t - beta g_{t-1}``; the defaults give ``2 g_t - g_{t-1}``. At
    the first step ``g_0`` stands in for the missing ``g_{-1}`` (so ``u_0 = alpha g_0``),
    as optax does since its issue #1082.

    Example: ``gx.chain(gx.scale_by_optimistic_gradient(), gx.scale_by_lr(0.05))``.
    """
    check("alpha", alpha, low=0.0)
    check("beta", beta, low=0.0)

    def init(params):
        ps, treedef = leaves(params)
        return ScaleByOptimisticGradientState(
            is_initial_step=torch.ones((), dtype=torch.bool),
            previous_gradient=unflatten(treedef, [torch.zeros_like(p) for p in ps]))

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del params, extra_args
        us, treedef = leaves(updates)
        prev = leaves_like(state.previous_gradient, treedef)
        # w = 0 at the first step (then g_{-1} := g_0), else 1: no data-dependent branch.
        w = (~state.is_initial_step).to(torch.float64)
        old = F.mul(prev, beta * w)
        if inplace:
            F.copy_(prev, us)
            new_prev = prev
            state.is_initial_step.fill_(False)
            first = state.is_initial_step
        else:
            new_prev = F.clone(us)
            first = torch.zeros_like(state.is_initial_step)
        out = F.mul(us, alpha + beta * w, inplace=inplace)
        F.sub(out, old, inplace=True)
        return unflatten(treedef, out), ScaleByOptimisticGradientState(first, unflatten(treedef, new_prev))

    return GradientTransformation(init, update)


# --- distance over gradients ---------------------------------------------------------------


class ScaleByDistanceOverGradientsState(NamedTuple):
    max_dist: Tree  # per leaf, 0-dim: max_t ||x_t - x_0|| (from reps_rel (1 + ||x_0||))
    grad_sum_of_squares: Tree  # per leaf, 0-dim: sum_t ||g_t||^2
    init_params: Tree  # x_0, in param_dtype


def _displacements(params: list[torch.Tensor], inits: list[torch.Tensor], dtype: torch.dtype | None = None
                   ) -> list[torch.Tensor]:
    """``p - p0`` per leaf, in ``dtype`` or each in its own :func:`_wide` (params are read
    detached; a complex leaf as its real view)."""
    ps, p0s = F.as_real([p.detach() for p in params]), F.as_real(inits)
    return [p.to(dtype or _wide(p.dtype)) - p0.to(dtype or _wide(p.dtype)) for p, p0 in zip(ps, p0s)]


@transform(leafwise=True, inplace=True)
def scale_by_distance_over_gradients(reps_rel: float = 1e-6, eps: float = 1e-8,
                                     param_dtype: torch.dtype | None = torch.float32,
                                     global_scale: float = 1.0) -> GradientTransformation:
    """Layer-wise distance over gradients (LDoG; Ivgi et al., 2023), optax's
    ``scale_by_distance_over_gradients``; needs ``params``.

    Per leaf: ``r_t = max(r_{t-1}, ||x_t - x_0||)`` with ``r_0 = reps_rel (1 + ||x_0||)``,
    ``G_t = G_{t-1} + ||g_t||^2``, ``u <- global_scale * r_t / sqrt(G_t + eps) * g``.
    ``x_0`` (the params given to ``init``) is kept in ``param_dtype`` (``None``: the
    param's own dtype); ``r`` and ``G`` are 0-dim, float32 or wider (optax keeps ``G`` as
    shape ``(1,)`` float32). For one step size over all leaves see :func:`scale_by_dog`.

    Example: ``gx.chain(gx.scale_by_distance_over_gradients(), gx.scale_by_lr(1.0))``.
    """
    check("reps_rel", reps_rel, low=0.0, low_open=True)
    check("eps", eps, low=0.0)
    check("global_scale", global_scale)

    def init(params):
        ps, treedef = leaves(params)
        ps = [p.detach() for p in ps]
        r0 = F.add(F.mul(F.norms(ps), reps_rel, inplace=True), reps_rel, inplace=True)
        return ScaleByDistanceOverGradientsState(
            max_dist=unflatten(treedef, r0),
            grad_sum_of_squares=unflatten(treedef, [torch.zeros((), dtype=_wide(p.dtype), device=p.device)
                                                    for p in ps]),
            init_params=unflatten(treedef, [p.to(dtype=_param_dtype(param_dtype, p), copy=True) for p in ps]))

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del extra_args
        need_params("scale_by_distance_over_gradients", params)
        us, treedef = leaves(updates)
        ps = leaves_like(params, treedef, "params")
        inits = leaves_like(state.init_params, treedef)
        max_dist = F.maximum(leaves_like(state.max_dist, treedef), F.norms(_displacements(ps, inits)), inplace=inplace)
        sums = F.add(leaves_like(state.grad_sum_of_squares, treedef), _sq_norms(us), inplace=inplace)
        etas = F.div(max_dist, F.sqrt(F.add(sums, eps), inplace=True))
        if not is_value(global_scale, 1.0):
            F.mul(etas, global_scale, inplace=True)
        out = _scale_each(us, etas, inplace)
        return unflatten(treedef, out), ScaleByDistanceOverGradientsState(
            unflatten(treedef, max_dist), unflatten(treedef, sums), state.init_params)

    return GradientTransformation(init, update)


def _param_dtype(dtype: torch.dtype | None, p: torch.Tensor) -> torch.dtype:
    # x_0 of a complex parameter stays complex, at the precision asked for
    if dtype is None:
        return p.dtype
    return dtype.to_complex() if p.is_complex() and not dtype.is_complex else dtype


class DoGState(NamedTuple):
    is_init_step: torch.Tensor  # 0-dim bool
    init_params: Tree  # x_0
    max_dist: torch.Tensor  # 0-dim: max_t ||x_t - x_0|| over all leaves together
    sum_sq_norm_grads: torch.Tensor  # 0-dim: sum_t ||g_t||^2


_INIT_STEPS = ("distance", "learning_rate", "heuristic")


@transform(inplace=True)
def scale_by_dog(init_step: tuple[str, float] = ("heuristic", 1e-6), eps: float = 1e-8) -> GradientTransformation:
    """Distance over gradients (DoG; Ivgi et al., 2023), optax.contrib's ``scale_by_dog``;
    needs ``params``. One step size for all leaves:

    ``r_t = max(r_{t-1}, ||x_t - x_0||)``, ``G_t = G_{t-1} + ||g_t||^2`` (global norms),
    ``u <- r_t / sqrt(G_t + eps) * g``. ``init_step = (tag, v)`` sets the start:
    ``("heuristic", v)``: ``r_0 = v (1 + ||x_0||)``; ``("distance", v)``: ``r_0 = v``;
    ``("learning_rate", v)``: ``r_0 = 0`` and the first step size is ``v``.

    ``x_0`` keeps each param's dtype and ``r``, ``G`` are float32 or wider (optax casts all
    three to the lowest param dtype). ``init`` must see the actual initial params.

    Example: ``gx.chain(gx.scale_by_dog(("heuristic", 1e-4)), gx.scale_by_lr(1.0))``.
    """
    if not (isinstance(init_step, (tuple, list)) and len(init_step) == 2 and init_step[0] in _INIT_STEPS):
        raise ValueError(f"init_step must be a pair (tag, value) with tag in {_INIT_STEPS}, got {init_step!r}")
    kind, value = init_step
    check("init_step value", value, low=0.0, low_open=True)
    check("eps", eps, low=0.0)

    def init(params):
        ps, treedef = leaves(params)
        ps = [p.detach() for p in ps]
        device = first_device(ps)
        dtype = _wide(*{p.dtype for p in ps})
        if kind == "heuristic":
            r0 = value * (1.0 + _total(_sq_norms(ps, dtype), dtype, device).sqrt())
        else:
            # Created on the params' device: the adapter then never mistakes it for a hyperparameter.
            r0 = torch.full((), value if kind == "distance" else 0.0, dtype=dtype, device=device)
        return DoGState(is_init_step=torch.ones((), dtype=torch.bool, device=device),
                        init_params=unflatten(treedef, [p.clone() for p in ps]),
                        max_dist=r0, sum_sq_norm_grads=torch.zeros((), dtype=dtype, device=device))

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del extra_args
        need_params("scale_by_dog", params)
        us, treedef = leaves(updates)
        ps = leaves_like(params, treedef, "params")
        inits = leaves_like(state.init_params, treedef)
        dtype, device = state.max_dist.dtype, state.max_dist.device
        dist = _total(_sq_norms(_displacements(ps, inits, dtype), dtype), dtype, device).sqrt()
        max_dist = torch.maximum(state.max_dist, dist)
        total = state.sum_sq_norm_grads + _total(_sq_norms(us, dtype), dtype, device)
        step = max_dist / torch.sqrt(total + eps)
        if kind == "learning_rate":
            step = torch.where(state.is_init_step, torch.full_like(step, value), step)
        out = F.mul(us, step, inplace=inplace)
        if inplace:
            new_state = DoGState(state.is_init_step.fill_(False), state.init_params,
                                 state.max_dist.copy_(max_dist), state.sum_sq_norm_grads.copy_(total))
        else:
            new_state = DoGState(torch.zeros_like(state.is_init_step), state.init_params, max_dist, total)
        return unflatten(treedef, out), new_state

    return GradientTransformation(init, update)
