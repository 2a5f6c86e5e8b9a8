"""Finite differences along each coordinate: the gradient from ``n`` or ``2n`` evaluations."""

from __future__ import annotations

from typing import Any

import torch

from .._hparams import check
from .._tree import Tree, tree_unflatten
from ..base import EmptyState, GradientTransformation, transform
from ..handover import declare_gradient_source
from ..transforms._common import leaves, leaves_like, need_params
from . import _perturb as P  # noqa: N812
from .randomized import check_formula, need_value_fn

__all__ = ["fdm"]


def _coordinate_estimate(ps: list[torch.Tensor], treedef, value_fn, value: Any, h: Any, formula: str
                         ) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
    f0 = None
    if formula != "central":
        f0 = P.as_loss(value if value is not None else value_fn(tree_unflatten(list(ps), treedef)))
    grads = []
    for i, p in enumerate(ps):
        flat = p.reshape(-1)
        out = []
        for j in range(flat.numel()):
            def at(s, i=i, j=j, flat=flat, p=p):
                x = flat.clone()
                x[j] = x[j] + s
                trial = list(ps)
                trial[i] = x.reshape(p.shape)
                return P.as_loss(value_fn(tree_unflatten(trial, treedef)))

            if formula == "central":
                out.append((at(h) - at(-h)) / (2 * h))
            elif formula == "forward":
                out.append((at(h) - f0) / h)
            else:
                out.append((f0 - at(-h)) / h)
        dtype = torch.float64 if p.dtype == torch.float64 else torch.float32
        grads.append((torch.stack(out).to(dtype) if out else torch.zeros(0, dtype=dtype, device=p.device)
                      ).reshape(p.shape).to(p.device))
    return f0, grads


@transform(inplace=True)
def fdm(h: float = 1e-3, formula: str = "central") -> GradientTransformation:
    """Finite differences along each coordinate ``e_j`` of every leaf (needs ``value_fn``):

    - ``"central"``: ``g_j = (f(x + h e_j) - f(x - h e_j)) / (2h)``, error ``O(h^2)``, ``2n`` evaluations;
    - ``"forward"``: ``g_j = (f(x + h e_j) - f(x)) / h``, error ``O(h)``, ``n`` (+1 without ``value``);
    - ``"backward"``: ``g_j = (f(x) - f(x - h e_j)) / h``, error ``O(h)``.

    ``x + h e_j`` is rounded to the leaf's dtype (as the evaluation sees it). For small models
    and tests: the cost grows with the number of parameters. Ignores the updates it is given:
    put it first in a chain; it hands the members after it ``grad``, ``value_and_grad_fn`` and
    ``hvp_fn`` (:mod:`gradtx.handover`). torchzero's ``FDM`` (same formulas and defaults).

    Example: ``gx.chain(gx.fdm(1e-4), gx.scale_by_lr(0.1))``.
    """
    check("h", h, low=0.0, low_open=True)
    check_formula(formula)

    def init(params):
        del params
        return EmptyState()

    def update(updates, state, params=None, *, inplace=False, value=None, value_fn=None, **extra_args):
        del extra_args
        need_params("fdm", params)
        need_value_fn("fdm", value_fn)
        us, treedef = leaves(updates)
        ps = leaves_like(params, treedef, "params")
        _, gs = _coordinate_estimate(ps, treedef, value_fn, value, h, formula)
        out = [u.copy_(g) if inplace and not g.requires_grad else g.to(u.dtype) for g, u in zip(gs, us)]
        return tree_unflatten(out, treedef), state

    def source(state, extra):
        value_fn = extra.get("value_fn")
        need_value_fn("fdm", value_fn)

        def value_and_grad_fn(params: Tree):
            ps, treedef = leaves(params)
            f0, gs = _coordinate_estimate(ps, treedef, value_fn, None, h, formula)
            loss = f0 if f0 is not None else P.as_loss(value_fn(params))
            return loss, tree_unflatten([g.to(p.dtype) for g, p in zip(gs, ps)], treedef)

        return value_and_grad_fn

    return declare_gradient_source(GradientTransformation(init, update), source)
