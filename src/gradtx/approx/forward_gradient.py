"""Forward gradients (Baydin et al., 2022): directional derivatives by forward-mode AD."""

from __future__ import annotations

import torch

from .._hparams import check_int
from .._tree import Tree, tree_unflatten
from ..base import GradientTransformation, transform
from ..handover import declare_gradient_source
from ..transforms._common import leaves, leaves_like, need_params
from . import _perturb as P  # noqa: N812
from .randomized import need_value_fn

__all__ = ["forward_gradient"]


def _refuse_closure(value_fn) -> None:
    if getattr(value_fn, "from_closure", False):
        raise ValueError("forward_gradient differentiates value_fn forward with torch.func.jvp, which cannot trace "
                         "gx.Optimizer's closure (it sets the parameters in place); use the functional API with "
                         "gx.make_value_fn / gx.module_loss_fn, or gx.rdsa (the same estimate, with the "
                         "directional derivative by finite differences) under gx.Optimizer")


def _estimate(ps, treedef, value_fn, directions: P.Directions, n_samples: int):
    _refuse_closure(value_fn)
    grads = None
    value = None
    for k in range(n_samples):
        vs = [directions(k, i, p) for i, p in enumerate(ps)]

        def f(*xs):
            return value_fn(tree_unflatten(list(xs), treedef))

        value, d = torch.func.jvp(f, tuple(ps), tuple(v.to(p.dtype) for v, p in zip(vs, ps)))
        d = P.as_loss(d) / n_samples
        grads = [v * d for v in vs] if grads is None else [g + v * d for g, v in zip(grads, vs)]
    return P.as_loss(value), grads


@transform(inplace=True)
def forward_gradient(n_samples: int = 1, distribution: str = "gaussian", *, seed: int = 0) -> GradientTransformation:
    """The forward gradient (Baydin et al., 2022): ``g = (1/n) sum_k (grad f(x) . v_k) v_k``,
    ``v_k ~ N(0, I)`` (or Rademacher) from the state's seed, the directional derivative
    ``grad f(x) . v_k`` by forward-mode AD (``torch.func.jvp`` of ``value_fn``) in one
    evaluation each, no backward pass. Unbiased: ``E[v v^T] = I``. Needs a ``value_fn`` that
    ``torch.func`` can trace (``gx.make_value_fn``, ``gx.module_loss_fn``); under
    ``gx.Optimizer``'s closure use :func:`rdsa`, the same estimate by finite differences.
    torchzero's ``ForwardGradient`` (``jvp_method="autograd"``).

    Example: ``gx.chain(gx.forward_gradient(4), gx.scale_by_lr(0.01))``.
    """
    check_int("n_samples", n_samples, low=1)
    P.check_distribution(distribution)
    check_int("seed", seed)

    def init(params):
        del params
        return P.new_state(seed)

    def update(updates, state, params=None, *, inplace=False, value_fn=None, **extra_args):
        del extra_args
        need_params("forward_gradient", params)
        need_value_fn("forward_gradient", value_fn)
        us, treedef = leaves(updates)
        ps = leaves_like(params, treedef, "params")
        _, gs = _estimate(ps, treedef, value_fn, P.Directions(state, distribution), n_samples)
        out = [u.copy_(g) if inplace and not g.requires_grad else g.to(u.dtype) for g, u in zip(gs, us)]
        return tree_unflatten(out, treedef), P.advanced(state, inplace)

    def source(state, extra):
        value_fn = extra.get("value_fn")
        need_value_fn("forward_gradient", value_fn)
        directions = P.Directions(state, distribution)

        def value_and_grad_fn(params: Tree):
            ps, treedef = leaves(params)
            value, gs = _estimate(ps, treedef, value_fn, directions, n_samples)
            return value, tree_unflatten([g.to(p.dtype) for g, p in zip(gs, ps)], treedef)

        return value_and_grad_fn

    return declare_gradient_source(GradientTransformation(init, update), source)
