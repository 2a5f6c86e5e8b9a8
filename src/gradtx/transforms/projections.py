"""Projections onto convex sets (optax.projections) and :func:`project_params`, the transform
that keeps the parameters in such a set: projected gradient descent."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .._tree import Tree, tree_flatten, tree_map, tree_norm, tree_unflatten
from ..base import EmptyState, GradientTransformation, transform
from ._common import leaves, leaves_like, need_params, unflatten

__all__ = ["project_params", "projection_box", "projection_hypercube", "projection_l1_ball", "projection_l1_sphere",
           "projection_l2_ball", "projection_l2_sphere", "projection_linf_ball", "projection_non_negative",
           "projection_simplex"]


def projection_non_negative(tree: Tree) -> Tree:
    """``max(x, 0)`` leafwise: the projection onto the non-negative orthant (optax)."""
    return tree_map(lambda x: torch.clamp(x, min=0), tree)


def projection_box(tree: Tree, lower: Any, upper: Any) -> Tree:
    """``clamp(x, lower, upper)`` leafwise; ``lower``/``upper`` numbers or trees like ``tree`` (optax).

    Example: ``gx.projection_box(params, -1.0, 1.0)``.
    """
    def bound(b, like):
        return b if not isinstance(like, torch.Tensor) or isinstance(b, torch.Tensor) else torch.as_tensor(
            b, dtype=like.dtype, device=like.device)

    leaves_, treedef = tree_flatten(tree)
    lows = _spread(lower, treedef, len(leaves_))
    highs = _spread(upper, treedef, len(leaves_))
    return tree_unflatten([torch.clamp(x, bound(lo, x), bound(hi, x)) for x, lo, hi in zip(leaves_, lows, highs)],
                          treedef)


def _spread(value: Any, treedef, n: int) -> list:
    if isinstance(value, (int, float)) or (isinstance(value, torch.Tensor) and value.dim() == 0):
        return [value] * n
    return treedef.flatten_up_to(value)


def projection_hypercube(tree: Tree, scale: float = 1.0) -> Tree:
    """The projection onto ``[0, scale]^n``: ``clamp(x, 0, scale)`` (optax)."""
    return projection_box(tree, 0.0, scale)


def projection_linf_ball(tree: Tree, scale: float = 1.0) -> Tree:
    """The projection onto ``{x : max |x_i| <= scale}``: ``clamp(x, -scale, scale)`` (optax)."""
    return projection_box(tree, -scale, scale)


def _unit_simplex(v: torch.Tensor) -> torch.Tensor:
    # Held & al. / Duchi et al. (2008): the threshold from the sorted values
    u = torch.sort(v, descending=True).values
    cumsum = torch.cumsum(u, 0)
    ind = torch.arange(1, v.numel() + 1, dtype=v.dtype, device=v.device)
    k = int(torch.count_nonzero(1.0 / ind + (u - cumsum / ind) > 0))
    return torch.clamp(1.0 / k + (v - cumsum[k - 1] / k), min=0)


def projection_simplex(tree: Tree, scale: float = 1.0) -> Tree:
    """The Euclidean projection of all leaves, as one vector, onto ``{x >= 0, sum x = scale}``
    (optax; Duchi et al., 2008, "Efficient projections onto the l1-ball").

    Example: ``gx.projection_simplex({"p": torch.tensor([0.5, 0.9, -0.2])})``.
    """
    xs, treedef = tree_flatten(tree)
    if not xs:
        return tree
    dtype = xs[0].dtype
    flat = torch.cat([x.reshape(-1).to(dtype) for x in xs])
    proj = scale * _unit_simplex(flat / scale)
    out, start = [], 0
    for x in xs:
        out.append(proj[start:start + x.numel()].reshape(x.shape).to(x.dtype))
        start += x.numel()
    return tree_unflatten(out, treedef)


def projection_l1_sphere(tree: Tree, scale: float = 1.0) -> Tree:
    """The projection onto ``{x : ||x||_1 = scale}``: ``sign(x) * simplex(|x|)`` (optax)."""
    projected = projection_simplex(tree_map(torch.abs, tree), scale)
    return tree_map(lambda x, a: torch.sign(x) * a, tree, projected)


def projection_l1_ball(tree: Tree, scale: float = 1.0) -> Tree:
    """The projection onto ``{x : ||x||_1 <= scale}`` (optax): ``x`` inside, else onto the sphere."""
    return tree if float(tree_norm(tree, ord=1)) <= scale else projection_l1_sphere(tree, scale)


def projection_l2_sphere(tree: Tree, scale: float = 1.0) -> Tree:
    """The projection onto ``{x : ||x||_2 = scale}``: ``x * scale / ||x||`` (optax)."""
    factor = scale / tree_norm(tree)
    return tree_map(lambda x: x * factor.to(x.dtype), tree)


def projection_l2_ball(tree: Tree, scale: float = 1.0) -> Tree:
    """The projection onto ``{x : ||x||_2 <= scale}``: ``x * scale / max(||x||, scale)`` (optax)."""
    factor = scale / torch.sqrt(torch.clamp(tree_norm(tree, squared=True), min=scale ** 2))
    return tree_map(lambda x: x * factor.to(x.dtype), tree)


@transform(inplace=True)
def project_params(projection: Callable[[Tree], Tree]) -> GradientTransformation:
    """Keep the parameters in a convex set: ``u <- P(p + u) - p``, so the step lands on
    ``P(p + u)`` (projected gradient descent). Put it last in a chain.

    ``projection`` maps a params tree to its projection: one of ``gx.projection_*`` (bind its
    arguments with ``functools.partial`` or a lambda) or your own. The landing point is
    ``P(p + u)`` up to one rounding of ``p + (P(p + u) - p)``. Not leafwise: a projection
    may couple leaves (the simplex, the l1 and l2 balls treat all leaves as one vector).

    Example: ``gx.chain(gx.sgd(0.1), gx.project_params(gx.projection_simplex))``;
    ``gx.project_params(lambda p: gx.projection_box(p, -1.0, 1.0))``.
    """
    if not callable(projection) or isinstance(projection, GradientTransformation):
        raise ValueError(f"projection must be a callable params -> projected params, got {projection!r}")

    def init(params):
        del params
        return EmptyState()

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del extra_args
        need_params("project_params", params)
        us, treedef = leaves(updates)
        ps = leaves_like(params, treedef, "params")
        target = [p + u.to(p.dtype) for p, u in zip(ps, us)]
        projected = leaves_like(projection(unflatten(treedef, target)), treedef, "the projection")
        steps = [(q - p).to(u.dtype) for q, p, u in zip(projected, ps, us)]
        out = [u.copy_(s) if inplace else s for u, s in zip(us, steps)]
        return unflatten(treedef, out), state

    return GradientTransformation(init, update)
