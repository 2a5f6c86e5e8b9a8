"""Normalisation: trust ratios, block norms, centralisation.

A *block* is one leaf tensor of the update tree (one parameter tensor): the block
transforms below compute one norm per leaf and rescale that leaf by a 0-dim factor.
"""

from __future__ import annotations

import math

import torch

from .. import _foreach as F  # noqa: N812
from .._hparams import check
from ..base import EmptyState, GradientTransformation, describe, transform
from ._common import leaves, leaves_like, need_params, unflatten
from .regularize import mask_leaves

__all__ = ["centralize", "normalize_by_update_norm", "scale_by_param_block_norm", "scale_by_param_block_rms",
           "scale_by_trust_ratio"]


def _empty(params):
    del params
    return EmptyState()


def block_norms(xs: list[torch.Tensor], segments: list | None = None) -> list[torch.Tensor]:
    """The l2 norm of each tensor as a 0-dim tensor, in float32 or wider; with ``segments``
    (flat leaves, see :func:`leaf_segments`) a 1-D tensor of one norm per segment."""
    if segments:
        return [seg.norms(x) for x, seg in zip(xs, segments)]
    return [n if n.dtype == torch.promote_types(n.dtype, torch.float32) else n.float() for n in F.norms(xs)]


def block_rms(xs: list[torch.Tensor], segments: list | None = None) -> list[torch.Tensor]:
    """``sqrt(mean(x^2))`` of each tensor (0 for an empty tensor); pass complex tensors as
    their real views (:func:`gradtx._foreach.as_real`) for the mean over real components.
    With ``segments`` (flat leaves, complex ones as they are) one per segment."""
    if segments:
        return [seg.rms(x) for x, seg in zip(xs, segments)]
    return [n / math.sqrt(max(x.numel(), 1)) for n, x in zip(block_norms(xs), xs)]


def scale_each(xs: list[torch.Tensor], factors: list[torch.Tensor], inplace: bool,
               segments: list | None = None) -> list[torch.Tensor]:
    """``xs[i] * factors[i]`` for 0-dim ``factors``, each cast to its tensor's dtype so the
    result keeps it (a float32 factor would promote a 0-dim bfloat16 update); with
    ``segments``, ``factors[i]`` holds one factor per segment of ``xs[i]``."""
    if segments:
        return [seg.scale(x, f, inplace) for x, f, seg in zip(xs, factors, segments)]
    return F.mul(xs, [f.to(x.dtype) for f, x in zip(factors, xs)], inplace=inplace)


def leaf_segments(extra_args: dict, treedef) -> list | None:
    """The :class:`gradtx._segments.Segments` of each leaf when the flat path passes
    ``segments`` (each leaf is then many parameters' tensors end to end), else ``None``."""
    segments = extra_args.get("segments")
    return None if segments is None else leaves_like(segments, treedef, "segments")


def _param_leaves(name: str, params, treedef, inplace: bool) -> list[torch.Tensor]:
    need_params(name, params)
    ps = leaves_like(params, treedef, "params")
    # The adapter hands over the live parameters; nothing here should be recorded by autograd.
    return [p.detach() for p in ps] if inplace else ps


def trust_ratio_transform(min_norm=0.0, trust_coefficient=1.0, eps=0.0, mask=None) -> GradientTransformation:
    """:func:`scale_by_trust_ratio` applied only to the leaves where ``mask`` is true
    (``mask`` as in ``add_decayed_weights``: ``None``, a tree of bools or ``params -> tree``).
    Used by :func:`gradtx.lars` for its ``trust_ratio_mask``."""
    check("min_norm", min_norm, low=0.0)
    check("trust_coefficient", trust_coefficient, low=0.0)
    check("eps", eps, low=0.0)

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        us, treedef = leaves(updates)
        ps = _param_leaves("scale_by_trust_ratio", params, treedef, inplace)
        segs = leaf_segments(extra_args, treedef) if mask is None else None
        flags = mask_leaves(mask, params)
        idx = [i for i, f in enumerate(flags) if f and us[i] is not None]
        sel_u = [us[i] for i in idx]
        sel_s = segs and [segs[i] for i in idx]
        p_norms = [n.clamp_min(min_norm) for n in block_norms([ps[i] for i in idx], sel_s)]
        u_norms = [n.clamp_min(min_norm) for n in block_norms(sel_u, sel_s)]
        factors = []
        for pn, un in zip(p_norms, u_norms):
            pn = pn.to(torch.promote_types(pn.dtype, un.dtype))
            ratio = trust_coefficient * pn / (un + eps)
            # optax: a zero norm (possible only with min_norm = 0) leaves the update unscaled
            factors.append(torch.where((pn == 0) | (un == 0), torch.ones_like(ratio), ratio))
        out = list(us)
        for i, value in zip(idx, scale_each(sel_u, factors, inplace, sel_s)):
            out[i] = value
        return unflatten(treedef, out), state

    inner = f"scale_by_trust_ratio(min_norm={min_norm!r}, trust_coefficient={trust_coefficient!r}, eps={eps!r})"
    description = inner if mask is None else f"masked({inner}, mask={mask!r})"
    # a mask picks leaves, which flat buffers do not have: only the unmasked form is segmented
    return describe(GradientTransformation(_empty, update), description, leafwise=True, inplace=True,
                    segmented=mask is None)


@transform(leafwise=True, inplace=True)
def scale_by_trust_ratio(min_norm: float = 0.0, trust_coefficient: float = 1.0, eps: float = 0.0
                         ) -> GradientTransformation:
    """Scale each block by its trust ratio, as in LARS / LAMB (You et al., 2017; 2020).

    Per leaf: ``pn = max(||p||, min_norm)``, ``un = max(||u||, min_norm)``,
    ``u <- u * trust_coefficient * pn / (un + eps)``; when ``pn == 0`` or ``un == 0`` the
    ratio is 1 (optax's rule: a zero parameter still moves). Needs ``params``.

    Example: ``gx.chain(gx.scale_by_adam(), gx.scale_by_trust_ratio(), gx.scale_by_lr(1e-3))``.
    """
    return trust_ratio_transform(min_norm, trust_coefficient, eps)


@transform(leafwise=True, inplace=True, segmented=True)
def scale_by_param_block_norm(min_scale: float = 1e-3) -> GradientTransformation:
    """Scale each block by the norm of its parameter: ``u <- u * max(||p||, min_scale)``.

    Relative (size-proportional) steps as in Fromage and LARS (Bernstein et al., 2020;
    You et al., 2017); optax.scale_by_param_block_norm. Needs ``params``.

    Example: ``gx.chain(gx.scale_by_param_block_norm(), gx.scale_by_lr(1e-2))``.
    """
    check("min_scale", min_scale, low=0.0)

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        us, treedef = leaves(updates)
        ps = _param_leaves("scale_by_param_block_norm", params, treedef, inplace)
        segs = leaf_segments(extra_args, treedef)
        factors = [n.clamp_min(min_scale) for n in block_norms(ps, segs)]
        return unflatten(treedef, scale_each(us, factors, inplace, segs)), state

    return GradientTransformation(_empty, update)


@transform(leafwise=True, inplace=True, segmented=True)
def scale_by_param_block_rms(min_scale: float = 1e-3) -> GradientTransformation:
    """Scale each block by the root mean square of its parameter:
    ``u <- u * max(sqrt(mean(p^2)), min_scale)`` (Adafactor's relative step, Shazeer & Stern, 2018).

    Needs ``params``. Example: ``gx.chain(gx.scale_by_param_block_rms(), gx.scale_by_lr(1e-2))``.
    """
    check("min_scale", min_scale, low=0.0)

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        us, treedef = leaves(updates)
        ps = _param_leaves("scale_by_param_block_rms", params, treedef, inplace)
        segs = leaf_segments(extra_args, treedef)
        factors = [r.clamp_min(min_scale) for r in (block_rms(ps, segs) if segs else block_rms(F.as_real(ps)))]
        return unflatten(treedef, scale_each(us, factors, inplace, segs)), state

    return GradientTransformation(_empty, update)


@transform(leafwise=True, inplace=True)
def centralize() -> GradientTransformation:
    """Gradient centralisation (Yong et al., 2020): for every leaf with more than one
    dimension, subtract its mean over all dimensions but the first,
    ``u <- u - mean(u, dims=1..)``; vectors and scalars are left unchanged.

    With torch's ``(out_features, in_features, ...)`` layouts this centres each output unit's
    weights. A complex leaf's real and imaginary parts are each centralized (the mean of the
    complex tensor). Example: ``gx.chain(gx.centralize(), gx.scale_by_adam(), gx.scale_by_lr(1e-3))``.
    """

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del params, extra_args
        us, treedef = leaves(updates)
        out = list(us)
        for i, u in enumerate(us):
            if u.dim() > 1:
                mean = u.mean(dim=tuple(range(1, u.dim())), keepdim=True)
                out[i] = u.sub_(mean) if inplace else u - mean
        return unflatten(treedef, out), state

    return GradientTransformation(_empty, update)


@transform(inplace=True)
def normalize_by_update_norm(scale_factor: float = 1.0, eps: float = 1e-6) -> GradientTransformation:
    """Divide all updates by their global l2 norm: ``u <- scale_factor * u / (||u||_2 + eps)``,
    the norm taken over every leaf together: normalized gradient descent (Hazan, Levy &
    Shalev-Shwartz, 2015, "Beyond convexity: stochastic quasi-convex optimization");
    optax.normalize_by_update_norm.

    Example: ``gx.chain(gx.normalize_by_update_norm(), gx.scale_by_lr(1e-2))`` (normalised
    gradient descent, steps of length 1e-2).
    """
    check("scale_factor", scale_factor)
    check("eps", eps, low=0.0)

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del params, extra_args
        us, treedef = leaves(updates)
        if not us:
            return updates, state
        factor = scale_factor / (F.global_norm(us) + eps)
        return unflatten(treedef, F.mul(us, factor, inplace=inplace)), state

    return GradientTransformation(_empty, update)
