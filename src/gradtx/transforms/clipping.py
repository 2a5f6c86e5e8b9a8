"""Clipping: bound updates elementwise, by their global norm, per block or per unit."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .. import _foreach as F  # noqa: N812
from .._hparams import check, traced
from .._tree import tree_flatten, tree_leaves, tree_unflatten
from ..base import EmptyState, GradientTransformation, transform
from ._common import leaves, leaves_like, need_params, unflatten
from .normalize import block_rms, leaf_segments, scale_each

__all__ = ["adaptive_grad_clip", "clip", "clip_by_block_rms", "clip_by_global_norm", "clip_value",
           "per_example_global_norm_clip", "per_example_layer_norm_clip"]


def _empty(params):
    del params
    return EmptyState()


@transform(elementwise=True, inplace=True)
def clip_value(max_delta: float) -> GradientTransformation:
    """Clip each element into ``[-max_delta, max_delta]``: ``u <- clamp(u, -d, d)``.

    optax calls it ``clip``; ``torch.nn.utils.clip_grad_value_`` is the same rule on ``.grad``.
    Example: ``gx.clip_value(10.0)``.
    """
    check("max_delta", max_delta, low=0.0, allow_inf=True)  # inf: no clipping
    bound = max_delta if traced(max_delta) else float(max_delta)  # a traced bound keeps its gradient

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del params, extra_args
        us, treedef = leaves(updates)
        rv = F.real_views(us)  # a complex update: its real and imaginary parts clipped
        out = F.clamp(rv.real[0] if rv else us, -bound, bound, inplace=inplace)
        return unflatten(treedef, rv.back(out)[0] if rv else out), state

    return GradientTransformation(_empty, update)


clip = clip_value  # optax's name for the same transform


class ClipByGlobalNormState(NamedTuple):
    """Stateless; kept as a named type so states read well."""


@transform(inplace=True, segmented=True)  # a global norm: the same on any split of the leaves
def clip_by_global_norm(max_norm: float) -> GradientTransformation:
    """Rescale all updates together so their global l2 norm is at most ``max_norm``.

    ``n = ||u||_2`` over every leaf; ``u <- u * max_norm / n`` when ``n > max_norm``.
    (Pascanu et al., 2013, "On the difficulty of training recurrent neural networks";
    optax's rule. ``torch.nn.utils.clip_grad_norm_`` adds 1e-6 to ``n``.)

    Example: ``gx.chain(gx.clip_by_global_norm(1.0), gx.adam(1e-3))``.
    """
    check("max_norm", max_norm, low=0.0, low_open=True, allow_inf=True)  # inf: no clipping

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del params, extra_args
        us, treedef = leaves(updates)
        if not us:
            return updates, state
        norm = F.global_norm(us)
        factor = torch.where(norm > max_norm, max_norm / norm, torch.ones_like(norm))
        return unflatten(treedef, F.mul(us, factor, inplace=inplace)), state

    return GradientTransformation(_empty, update)


@transform(leafwise=True, inplace=True, segmented=True)
def clip_by_block_rms(threshold: float) -> GradientTransformation:
    """Clip each block (leaf) to a root mean square of at most ``threshold``:
    ``u <- u / max(1, sqrt(mean(u^2)) / threshold)``, one factor per leaf
    (optax.clip_by_block_rms; the per-block form of Pascanu et al., 2013's norm clipping).

    Example: ``gx.chain(gx.clip_by_block_rms(1.0), gx.scale_by_lr(1e-2))``.
    """
    check("threshold", threshold, low=0.0, low_open=True, allow_inf=True)  # inf: no clipping

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del params
        us, treedef = leaves(updates)
        segs = leaf_segments(extra_args, treedef)
        rms = block_rms(us, segs) if segs else block_rms(F.as_real(us))
        factors = [1.0 / torch.clamp_min(r / threshold, 1.0) for r in rms]
        return unflatten(treedef, scale_each(us, factors, inplace, segs)), state

    return GradientTransformation(_empty, update)


def _unit_dims(x: torch.Tensor, axis: int | tuple[int, ...] | None) -> tuple[int, ...] | None:
    # torch layouts put output units first ((out, in) linear, (out, in, kh, kw) conv): a
    # unit's norm runs over every other dimension. None: the whole tensor.
    if axis is not None:
        return (axis,) if isinstance(axis, int) else tuple(axis)
    return None if x.dim() <= 1 else tuple(range(1, x.dim()))


def _unit_norms(x: torch.Tensor, axis) -> torch.Tensor:
    dtype = torch.promote_types(x.dtype, torch.float32)
    return torch.linalg.vector_norm(x, dim=_unit_dims(x, axis), keepdim=True, dtype=dtype)


@transform(leafwise=True, inplace=True)
def adaptive_grad_clip(clipping: float, eps: float = 1e-3, axis: int | tuple[int, ...] | None = None
                       ) -> GradientTransformation:
    """Adaptive gradient clipping, unit-wise (Brock et al., 2021, NFNets).

    For each unit (slice) ``i`` of a leaf: ``m_i = clipping * max(||p_i||, eps)``;
    ``u_i <- u_i`` if ``||u_i|| < m_i`` else ``u_i * m_i / max(||u_i||, 1e-6)``.
    A unit is, by default, the whole tensor for scalars and vectors and one slice along
    dim 0 otherwise (norms over dims 1, 2, ...: an output unit in torch's layouts);
    ``axis`` names the dimensions to reduce over instead. Needs ``params``. A complex leaf's
    units are those of the complex tensor, their norms over real and imaginary parts.

    Example: ``gx.chain(gx.adaptive_grad_clip(0.01), gx.sgd(0.1, momentum=0.9))``.
    """
    check("clipping", clipping, low=0.0, allow_inf=True)  # inf: no clipping
    check("eps", eps, low=0.0)

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del extra_args
        need_params("adaptive_grad_clip", params)
        us, treedef = leaves(updates)
        ps = leaves_like(params, treedef, "params")
        out = []
        for u, p in zip(us, ps):
            g_norm = _unit_norms(u, axis)
            max_norm = clipping * _unit_norms(p.detach() if inplace else p, axis).clamp_min(eps)
            dtype = torch.promote_types(g_norm.dtype, max_norm.dtype)
            g_norm, max_norm = g_norm.to(dtype), max_norm.to(dtype)
            factor = torch.where(g_norm < max_norm, torch.ones_like(g_norm), max_norm / g_norm.clamp_min(1e-6))
            factor = factor.to(u.dtype)
            out.append(u.mul_(factor) if inplace else u * factor)
        return unflatten(treedef, out), state

    return GradientTransformation(_empty, update)


# --- per-example clipping (differential privacy) ------------------------------------------------


def _batched_leaves(grads, who: str) -> list[torch.Tensor]:
    gs = [g for g in tree_leaves(grads)]
    if not all(isinstance(g, torch.Tensor) and g.dim() >= 1 for g in gs) or len({g.shape[0] for g in gs}) > 1:
        raise ValueError(f"{who} expects every leaf of grads to be a tensor with the same batch size on axis 0 "
                         f"(one gradient per example); got shapes {[tuple(getattr(g, 'shape', ())) for g in gs]}")
    return gs


def _clipped_sum(gs: list[torch.Tensor], l2_norm_clip) -> tuple[list[torch.Tensor], torch.Tensor]:
    norms = torch.sqrt(sum(g.reshape(g.shape[0], -1).abs().square().sum(1, dtype=torch.promote_types(
        g.dtype, torch.float32)) for g in gs))
    # optax's multiplier: min(c / norm, 1), and 1 where that is NaN (0 / 0, inf / inf)
    multipliers = torch.nan_to_num(torch.clamp(l2_norm_clip / norms, max=1.0), nan=1.0)
    clipped = [torch.tensordot(multipliers.to(g.dtype), g, dims=1) for g in gs]
    return clipped, (multipliers < 1.0).sum().to(torch.int32)


def per_example_global_norm_clip(grads, l2_norm_clip: float | torch.Tensor):
    """Clip each example's gradient to global norm ``l2_norm_clip`` and sum over the batch (optax).

    Every leaf of ``grads`` holds per-example gradients along axis 0 (``torch.func.vmap`` of
    ``grad``). With ``n_i`` the global norm of example ``i`` over all leaves,
    ``g <- sum_i min(1, c / n_i) g_i`` (a multiplier of 1 where ``c / n_i`` is NaN). Returns
    ``(summed grads, number of examples clipped)``; the DP-SGD step (Abadi et al., 2016).
    A function, not a transform: the batch axis is gone from what it returns.

    Example: ``g, n_clipped = gx.per_example_global_norm_clip(per_example_grads, 1.0)``.
    """
    leaves_, treedef = tree_flatten(grads)
    gs = _batched_leaves(grads, "per_example_global_norm_clip")
    if not gs:
        return grads, torch.zeros((), dtype=torch.int32)
    clipped, num = _clipped_sum(gs, l2_norm_clip)
    return tree_unflatten(clipped, treedef), num


def per_example_layer_norm_clip(grads, global_l2_norm_clip: float | torch.Tensor, uniform: bool = True):
    """Clip each example's gradient per layer, then sum over the batch (optax; McMahan et al., 2017).

    Each of the ``K`` leaves (axis 0 the examples) is clipped on its own, by
    :func:`per_example_global_norm_clip`, to ``C / sqrt(K)`` when ``uniform``, else to
    ``C sqrt(D_k / D)`` (``D_k`` the size of one example's leaf, ``D`` their total). Returns
    ``(summed grads, tree of per-leaf numbers of examples clipped)``.

    Example: ``g, n_clipped = gx.per_example_layer_norm_clip(per_example_grads, 1.0)``.
    """
    leaves_, treedef = tree_flatten(grads)
    gs = _batched_leaves(grads, "per_example_layer_norm_clip")
    if uniform:
        clips = [global_l2_norm_clip * (1.0 / len(gs)) ** 0.5 for _ in gs]
    else:
        total = sum(g[0].numel() for g in gs)
        clips = [global_l2_norm_clip * (g[0].numel() / total) ** 0.5 for g in gs]
    sums, counts = [], []
    for g, c in zip(gs, clips):
        (s,), n = _clipped_sum([g], c)
        sums.append(s)
        counts.append(n)
    return tree_unflatten(sums, treedef), tree_unflatten(counts, treedef)
