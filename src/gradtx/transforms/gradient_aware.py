"""Gradient-aware members: rules that compare the incoming update with the raw gradient or
the parameters (cautious masking, sign copying, OrthoGrad, cosine-similarity scaling).

**The gradient.** Members here read the raw gradient from the ``grad`` extra argument, which
``gx.Optimizer`` passes every step (the parameters' ``.grad``, before any member ran) and
``chain`` forwards to every member, so such a member works in any chain position: after
``scale_by_adam``, ``grad`` is still the gradient, not Adam's direction. Functionally, pass
it yourself: ``tx.update(grads, state, params, grad=grads)``.

Inside :func:`gradtx.masked` or :func:`gradtx.partition`, "the gradient" of a member is the
raw gradient of the leaves it sees: with ``mask_compatible_extra_args=True`` the combinator
hides the other leaves of ``grad`` as it hides them in the updates; without it the member
gets the whole ``grad`` tree and takes from it the leaves at the key paths of the updates it
sees (the hidden ones are skipped). Either way leaf ``i`` of the update is compared with the
gradient of the same parameter.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .. import _foreach as F  # noqa: N812
from .._hparams import check
from .._tree import Tree, TreeDef, flatten_up_to, leaves_at_paths_of
from ..base import EmptyState, GradientTransformation, transform
from ._common import leaves, leaves_like, need_params, unflatten

__all__ = ["SignConsistencyState", "cautious", "copy_grad_sign", "copy_update_sign", "orthograd",
           "scale_by_grad_cosine_similarity", "sign_consistency_mask"]


def _empty(params):
    del params
    return EmptyState()


def grad_leaves(name: str, grad: Tree | None, updates: Tree, treedef: TreeDef) -> list[torch.Tensor]:
    """The leaves of the raw gradient ``grad`` matching the updates' leaves (see the module
    docstring for masked members); ``ValueError`` naming ``name`` when there is none."""
    if grad is None:
        raise ValueError(f"{name} needs the raw gradient: call update(updates, state, params, grad=grads) "
                         "(gx.Optimizer passes it, and chain forwards it to every member)")
    try:
        return flatten_up_to(grad, treedef, "grad")
    except ValueError as mismatch:
        try:  # the full gradient given to a member that sees part of the leaves
            found = leaves_at_paths_of(grad, updates)
        except (KeyError, IndexError, TypeError, ValueError):
            raise mismatch from None
        if not all(isinstance(g, torch.Tensor) for g in found):
            raise mismatch from None
        return found


def _real(us: list[torch.Tensor], other: list[torch.Tensor]) -> tuple:
    """``(xs, ys, back)``: the updates and another list with complex tensors seen as real
    (their real and imaginary parts, as torch.optim steps them), and ``back(out)`` giving the
    output leaves their complex form again (the given update tensors where written in place)."""
    rv = F.RealViews(us, other)
    xs, ys = rv.real
    return xs, ys, lambda out: rv.back(out)[0]


@transform(leafwise=True, inplace=True)
def cautious() -> GradientTransformation:
    """Cautious optimizers (Liang et al., 2024, "Cautious Optimizers: Improving Training with
    One Line of Code"); needs ``grad``.

    Per tensor: ``m = 1[u * g > 0]`` (elements where the update and the raw gradient agree in
    sign), ``u <- u * m * n / (sum(m) + 1)`` with ``n`` the tensor's number of elements: the
    disagreeing elements are zeroed and the others rescaled to keep the mean scale, the
    ``+ 1`` as in the authors' code and ``pytorch_optimizer``'s ``apply_cautious``. Place it
    after the momentum or adaptive rule it cautions (the sign is then the momentum's).

    Example: ``gx.chain(gx.scale_by_adam(), gx.cautious(), gx.scale_by_lr(1e-3))``: C-Adam.
    """

    def update(updates, state, params=None, *, inplace=False, grad=None, **extra_args):
        del params, extra_args
        us, treedef = leaves(updates)
        gs = grad_leaves("cautious", grad, updates, treedef)
        xs, ys, back = _real(us, gs)
        masks = [(x * y.to(x.dtype) > 0) for x, y in zip(xs, ys)]
        factors = [(m.numel() / (m.sum(dtype=F.wide_dtype(x.dtype)) + 1)).to(x.dtype) for m, x in zip(masks, xs)]
        out = F.mul(xs, [m.to(x.dtype) for m, x in zip(masks, xs)], inplace=inplace)
        F.mul(out, factors, inplace=True)
        return unflatten(treedef, back(out)), state

    return GradientTransformation(_empty, update)


@transform(elementwise=True, inplace=True)
def copy_grad_sign() -> GradientTransformation:
    """The update's magnitude with the raw gradient's sign (Grams, Cao et al., 2024,
    "Grams: Gradient Descent with Adaptive Momentum Scaling"); needs ``grad``.

    ``u <- |u| * sign(g)`` elementwise (0 where ``g == 0``, as the paper's ``sign``;
    torchzero's ``GradSign`` uses ``copysign``, which keeps ``|u|`` there).

    Example: ``gx.chain(gx.scale_by_adam(), gx.copy_grad_sign(), gx.scale_by_lr(1e-3))``: Grams.
    """

    def update(updates, state, params=None, *, inplace=False, grad=None, **extra_args):
        del params, extra_args
        us, treedef = leaves(updates)
        gs = grad_leaves("copy_grad_sign", grad, updates, treedef)
        xs, ys, back = _real(us, gs)
        out = F.abs(xs, inplace=inplace)
        F.mul(out, F.cast_like(F.sign(ys), out), inplace=True)
        return unflatten(treedef, back(out)), state

    return GradientTransformation(_empty, update)


@transform(elementwise=True, inplace=True)
def copy_update_sign() -> GradientTransformation:
    """The raw gradient's magnitude with the update's sign (torchzero's ``UpdateSign``);
    needs ``grad``.

    ``u <- |g| * sign(u)`` elementwise (0 where ``u == 0``).

    Example: ``gx.chain(gx.trace(0.9), gx.copy_update_sign(), gx.scale_by_lr(1e-2))``: steps of
    the gradient's size in the momentum's direction.
    """

    def update(updates, state, params=None, *, inplace=False, grad=None, **extra_args):
        del params, extra_args
        us, treedef = leaves(updates)
        gs = grad_leaves("copy_update_sign", grad, updates, treedef)
        xs, ys, back = _real(us, gs)
        out = F.sign(xs, inplace=inplace)
        F.mul(out, F.cast_like(F.abs(ys), out), inplace=True)
        return unflatten(treedef, back(out)), state

    return GradientTransformation(_empty, update)


def _dots(xs: list[torch.Tensor], ys: list[torch.Tensor], dtype: torch.dtype) -> list[torch.Tensor]:
    """``<x, y>`` per pair, computed in ``dtype``."""
    return [torch.dot(x.reshape(-1).to(dtype), y.reshape(-1).to(dtype)) for x, y in zip(xs, ys)]


@transform(leafwise=True, inplace=True)
def orthograd(eps: float = 1e-30) -> GradientTransformation:
    """OrthoGrad (Prieto et al., 2025, "Grokking at the edge of numerical stability"); needs
    ``params``. Removes from each tensor's update its component along the weights, keeping
    its norm.

    Per tensor, with ``w`` the parameter and ``u`` the update (both flattened):
    ``u_perp = u - (<w, u> / (<w, w> + eps)) w``; ``u <- u_perp * ||u|| / (||u_perp|| + eps)``
    (the authors' rule; ``eps = 1e-30`` as theirs), and ``u <- 0`` where ``||u_perp||`` is
    round-off (at most 4 machine epsilons of ``||u||``, as ``pytorch_optimizer``'s guard): an
    update parallel to the weights (a 0-dim parameter's, always) is removed, not amplified.
    Put it first, on the gradient, as the paper does (``gx.chain(gx.orthograd(), gx.scale_by_adam(), ...)``).

    Example: ``gx.chain(gx.orthograd(), gx.scale_by_adam(), gx.scale_by_lr(1e-3))``.
    """
    check("eps", eps, low=0.0)

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del extra_args
        need_params("orthograd", params)
        us, treedef = leaves(updates)
        ps = leaves_like(params, treedef, "params")
        ps = [p.detach() for p in ps] if inplace else ps
        xs, ws, back = _real(us, ps)
        out = []
        for x, w in zip(xs, ws):
            dtype = F.wide_dtype(x.dtype, w.dtype)
            xw, ww = x.reshape(-1).to(dtype), w.reshape(-1).to(dtype)
            perp = xw - (torch.dot(ww, xw) / (torch.dot(ww, ww) + eps)) * ww
            norm = torch.linalg.vector_norm(xw)
            perp_sq = torch.dot(perp, perp)
            # an update along the weights leaves only round-off: zero, not round-off blown up
            # to the update's norm (pytorch_optimizer's guard); the inner where keeps autograd
            # away from the root of 0
            degenerate = perp_sq <= (4 * torch.finfo(dtype).eps * norm) ** 2
            root = torch.sqrt(torch.where(degenerate, torch.ones_like(perp_sq), perp_sq))
            scale = torch.where(degenerate, torch.zeros_like(norm), norm / (root + eps))
            perp = (perp * scale).reshape(x.shape)
            out.append(x.copy_(perp) if inplace else perp.to(x.dtype))
        return unflatten(treedef, back(out)), state

    return GradientTransformation(_empty, update)


@transform(inplace=True)
def scale_by_grad_cosine_similarity(eps: float = 1e-6) -> GradientTransformation:
    """Scale the update by its cosine similarity with the raw gradient (torchzero's
    ``ScaleByGradCosineSimilarity``); needs ``grad``.

    ``u <- u * <u, g> / max(||u|| ||g||, eps)`` with the inner product and norms over all
    leaves together (computed in float32 or wider): an update pointing against the gradient
    is reversed, one orthogonal to it vanishes.

    Example: ``gx.chain(gx.scale_by_adam(), gx.scale_by_grad_cosine_similarity(), gx.scale_by_lr(1e-3))``.
    """
    check("eps", eps, low=0.0)

    def update(updates, state, params=None, *, inplace=False, grad=None, **extra_args):
        del params, extra_args
        us, treedef = leaves(updates)
        if not us:
            return updates, state
        gs = grad_leaves("scale_by_grad_cosine_similarity", grad, updates, treedef)
        xs, ys, back = _real(us, gs)
        dtype = F.wide_dtype(*{x.dtype for x in xs}, *{y.dtype for y in ys})
        device = xs[0].device
        dot = torch.stack([d.to(dtype=dtype, device=device) for d in _dots(xs, ys, dtype)]).sum()
        norm_u = torch.linalg.vector_norm(torch.stack([n.to(device) for n in F.norms(xs, dtype)]))
        norm_g = torch.linalg.vector_norm(torch.stack([n.to(device) for n in F.norms(ys, dtype)]))
        cos = dot / (norm_u * norm_g).clamp_min(eps)
        out = F.mul(xs, [cos.to(x.dtype) for x in xs], inplace=inplace)
        return unflatten(treedef, back(out)), state

    return GradientTransformation(_empty, update)


class SignConsistencyState(NamedTuple):
    previous: Tree  # the previous step's update (zeros before the first)


@transform(elementwise=True, inplace=True)
def sign_consistency_mask(against: str = "previous") -> GradientTransformation:
    """A 0/1 mask of sign agreement, as the update (torchzero's ``SignConsistencyMask`` and
    ``UpdateGradientSignConsistency``); multiply another branch by it (:func:`gradtx.product`).

    ``against="previous"``: ``u <- 1[u_t * u_{t-1} > 0]``, ``u_{t-1}`` the previous step's
    incoming update kept in the state (zeros at first: the first mask is all 0).
    ``against="grad"``: ``u <- 1[u * g > 0]`` with ``g`` the raw gradient (needs ``grad``;
    no state kept, the state is then empty).

    Example: ``gx.chain(gx.product(gx.identity(), gx.sign_consistency_mask()), gx.scale_by_lr(1e-2))``:
    gradient descent that skips elements whose gradient sign just flipped.
    """
    if against not in ("previous", "grad"):
        raise ValueError(f"against must be 'previous' or 'grad', got {against!r}")

    def init(params):
        if against == "grad":
            return EmptyState()
        ps, treedef = leaves(params)
        return SignConsistencyState(unflatten(treedef, [torch.zeros_like(p) for p in ps]))

    def update(updates, state, params=None, *, inplace=False, grad=None, **extra_args):
        del params, extra_args
        us, treedef = leaves(updates)
        if against == "grad":
            other = grad_leaves("sign_consistency_mask", grad, updates, treedef)
        else:
            other = leaves_like(state.previous, treedef)
        xs, ys, back = _real(us, other)
        masks = [(x * y.to(x.dtype) > 0).to(x.dtype) for x, y in zip(xs, ys)]
        if against == "previous":
            new_prev = F.copy_(ys, xs) if inplace else F.clone_like(xs, ys)
            state = SignConsistencyState(unflatten(treedef, F.as_complex_like(new_prev, other, ys)))
        out = F.copy_(xs, masks) if inplace else masks
        return unflatten(treedef, back(out)), state

    return GradientTransformation(_empty if against == "grad" else init, update)
