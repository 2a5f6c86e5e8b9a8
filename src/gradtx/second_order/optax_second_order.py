"""optax's ``second_order`` utilities: ``hvp``, ``hessian_diag`` and ``fisher_diag``.

The signatures are optax's (``optax.second_order``, 0.2.x): a loss ``loss(params, inputs,
targets)``, and flat vectors over ``ravel(params)``: every leaf flattened and concatenated in
the tree's leaf order (``torch.utils._pytree``'s, insertion order for a dict, where
``jax.flatten_util.ravel_pytree`` sorts dict keys; the same for a dict built in sorted order).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .._tree import Tree, tree_flatten, tree_unflatten

__all__ = ["fisher_diag", "hessian_diag", "hvp"]

LossFn = Callable[[Tree, Any, Any], torch.Tensor]


def _ravel(tree: Tree) -> torch.Tensor:
    leaves, _ = tree_flatten(tree)
    if not leaves:
        return torch.zeros(0)
    dtype = leaves[0].dtype
    for x in leaves[1:]:
        dtype = torch.promote_types(dtype, x.dtype)
    return torch.cat([x.reshape(-1).to(dtype) for x in leaves])


def _unravel(flat: torch.Tensor, like: Tree) -> Tree:
    leaves, spec = tree_flatten(like)
    sizes = [x.numel() for x in leaves]
    if flat.dim() != 1 or flat.numel() != sum(sizes):
        raise ValueError(f"v must be a flat vector of size ravel(params) = {sum(sizes)}, got shape {tuple(flat.shape)}")
    pieces = torch.split(flat, sizes)
    return tree_unflatten([p.reshape(x.shape).to(x.dtype) for p, x in zip(pieces, leaves)], spec)


def _check_loss(loss: Any, argument: str) -> None:
    if not callable(loss):
        raise ValueError(f"{argument} must be a function (params, inputs, targets) -> loss, got {type(loss).__name__}")


def hvp(loss: LossFn, v: torch.Tensor, params: Tree, inputs: Any, targets: Any) -> Tree:
    """The Hessian of ``loss(params, inputs, targets)`` in ``params`` times ``v``
    (``optax.second_order.hvp``): forward-over-reverse, ``jvp(grad(loss), params, unravel(v))``.

    ``v`` is a flat vector of size ``ravel(params)`` (the leaves concatenated in tree order);
    the result is a tree like ``params`` (as optax's is).

    Example::

        loss = lambda p, x, y: ((x @ p["w"] - y) ** 2).sum()
        hv = gx.hvp(loss, torch.ones(3), {"w": torch.zeros(3)}, x, y)  # {"w": 2 x^T x 1}
    """
    _check_loss(loss, "loss")
    tangent = _unravel(v, params)
    return torch.func.jvp(torch.func.grad(lambda p: loss(p, inputs, targets)), (params,), (tangent,))[1]


def hessian_diag(loss: LossFn, params: Tree, inputs: Any, targets: Any) -> torch.Tensor:
    """The diagonal of the Hessian of ``loss(params, inputs, targets)`` in ``params``, as a
    flat vector over ``ravel(params)`` (``optax.second_order.hessian_diag``):
    ``diag(H)_i = e_i^T H e_i``, one Hessian-vector product per coordinate (vmapped), so
    for small models only.

    Example::

        gx.hessian_diag(lambda p, x, y: (p["w"] ** 4).sum(), {"w": torch.tensor([1.0, 2.0])}, None, None)
        # tensor([12., 48.])
    """
    _check_loss(loss, "loss")
    flat = _ravel(params)
    eye = torch.eye(flat.numel(), dtype=flat.dtype, device=flat.device)
    grad_fn = torch.func.grad(lambda p: loss(p, inputs, targets))

    def component(e: torch.Tensor) -> torch.Tensor:
        return torch.dot(e, _ravel(torch.func.jvp(grad_fn, (params,), (_unravel(e, params),))[1]).to(e.dtype))

    return torch.func.vmap(component)(eye)


def fisher_diag(negative_log_likelihood: LossFn, params: Tree, inputs: Any, targets: Any) -> torch.Tensor:
    """The diagonal of the observed Fisher information, the squared gradient of
    ``negative_log_likelihood(params, inputs, targets)`` as a flat vector over
    ``ravel(params)`` (``optax.second_order.fisher_diag``): ``F_ii = (d nll / d theta_i)^2``.

    Example::

        gx.fisher_diag(nll, params, x, y)  # ravel(grad(nll)(params, x, y)) ** 2
    """
    _check_loss(negative_log_likelihood, "negative_log_likelihood")
    grads = torch.func.grad(lambda p: negative_log_likelihood(p, inputs, targets))(params)
    return torch.square(_ravel(grads))
