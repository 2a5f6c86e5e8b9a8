"""L-BFGS: the two-loop recursion over the whole tree (optax's ``scale_by_lbfgs``)."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .._foreach import wide_dtype
from .._hparams import check_int
from .._tree import Tree, flatten_up_to, tensor_leaves, tree_unflatten
from ..base import GradientTransformation, transform
from ._line import device_of, real_view

__all__ = ["ScaleByLBFGSState", "scale_by_lbfgs"]


def _dot(xs: list[torch.Tensor], ys: list[torch.Tensor]) -> torch.Tensor:
    """``Re <x, y>`` over all leaves as a float64 0-dim tensor (autograd flows through it;
    no value is read on the host)."""
    parts = [torch.dot(real_view(x).reshape(-1).double(), real_view(y).reshape(-1).double()) for x, y in zip(xs, ys)]
    if not parts:
        return torch.zeros((), dtype=torch.float64)
    return torch.stack([p.to(parts[0].device) for p in parts]).sum()


class ScaleByLBFGSState(NamedTuple):
    count: torch.Tensor  # int32 0-dim: updates so far
    params: Tree  # the params of the last update, a tree like params
    updates: Tree  # the updates (gradients) of the last update, in the params' dtypes
    diff_params_memory: tuple  # memory_size trees like params: s_j = w_{j+1} - w_j, a ring buffer
    diff_updates_memory: tuple  # memory_size trees like params: y_j = u_{j+1} - u_j
    weights_memory: torch.Tensor  # float64 (memory_size,): rho_j = 1 / <y_j, s_j> (0: empty slot)


@transform
def scale_by_lbfgs(memory_size: int = 10, scale_init_precond: bool = True) -> GradientTransformation:
    """L-BFGS direction ``u <- P_k g_k`` (Nocedal & Wright, 2006, Alg. 7.4; Liu & Nocedal,
    1989), as ``optax.scale_by_lbfgs``; needs ``params``.

    With ``s_j = w_{j+1} - w_j``, ``y_j = g_{j+1} - g_j`` and ``rho_j = 1 / <y_j, s_j>`` (0
    when ``<y_j, s_j> = 0``) for the last ``memory_size`` steps, the two-loop recursion
    computes ``P_k g`` for ``P_{k,j+1} = V_j^T P_{k,j} V_j + rho_j s_j s_j^T``,
    ``V_j = I - rho_j y_j s_j^T``, from ``P_{k,k-m} = gamma_k I``:
    ``gamma_k = <s_{k-1}, y_{k-1}> / <y_{k-1}, y_{k-1}>`` with ``scale_init_precond`` (1 if
    ``y = 0``), else 1; at the first step ``gamma_0 = min(1, 1 / ||g_0||)`` with
    ``scale_init_precond`` (optax's heuristic: the first step has length at most 1). Dot
    products run over all leaves together, summed in float64. The output is the
    preconditioned gradient, not yet a descent step: follow with ``scale(-1.0)`` and a line
    search (``gx.lbfgs``) or ``scale_by_lr``. As optax, a pair with negative curvature
    (``<y, s> < 0``, possible without a Wolfe line search) is kept; defaults are optax's.

    State: the last params and gradients, and the pairs ``(s_j, y_j)`` as ``memory_size``
    trees like the params each (a ring buffer: a new pair replaces the oldest tree, no copy).

    Example::

        tx = gx.chain(gx.scale_by_lbfgs(), gx.scale(-1.0),
                      gx.scale_by_zoom_linesearch(20, initial_guess_strategy="one"))
    """
    check_int("memory_size", memory_size, low=1)
    if not isinstance(scale_init_precond, bool):
        raise ValueError(f"scale_init_precond must be a bool, got {scale_init_precond!r}")
    m = memory_size

    def init(params):
        ps, treedef = tensor_leaves(params)

        def zeros():
            return tree_unflatten([torch.zeros_like(p) for p in ps], treedef)

        return ScaleByLBFGSState(torch.zeros((), dtype=torch.int32), zeros(), zeros(), tuple(zeros() for _ in range(m)),
                                 tuple(zeros() for _ in range(m)),
                                 torch.zeros(m, dtype=torch.float64, device=device_of(ps)))

    def update(updates, state, params=None, **extra_args):
        del extra_args
        if params is None:
            raise ValueError("scale_by_lbfgs needs params: call update(updates, state, params)")
        us, treedef = tensor_leaves(updates)
        ps = flatten_up_to(params, treedef, "params")
        prev_ps = flatten_up_to(state.params, treedef)
        prev_us = flatten_up_to(state.updates, treedef)
        mem_s = [flatten_up_to(tree, treedef) for tree in state.diff_params_memory]
        mem_y = [flatten_up_to(tree, treedef) for tree in state.diff_updates_memory]
        k = int(state.count)
        prev = (k - 1) % m  # the slot of the newest pair
        # copies: the state keeps the params' dtypes and aliases neither the params nor the updates
        us_kept = [u.to(p.dtype, copy=True) for u, p in zip(us, ps)]
        weights = state.weights_memory.clone()
        if k > 0:
            s = [p - q for p, q in zip(ps, prev_ps)]
            y = [u - q for u, q in zip(us_kept, prev_us)]
            sy = _dot(y, s)
            inverse = 1.0 / sy
            # <y, s> = 0 (optax's rule) or so small that 1 / <y, s> overflows: the pair is left out
            weights[prev] = torch.where(torch.isfinite(inverse), inverse, torch.zeros_like(inverse))
        else:
            s = [torch.zeros_like(p) for p in ps]
            y = [torch.zeros_like(p) for p in ps]
            sy = None
            weights[prev] = 0.0
        mem_s[prev], mem_y[prev] = s, y
        if not scale_init_precond:
            gamma = None
        elif sy is not None:
            yy = _dot(y, y)
            gamma = torch.where(yy > 0, sy / torch.where(yy > 0, yy, torch.ones_like(yy)), torch.ones_like(yy))
        else:
            norm = _dot([u.detach() for u in us], [u.detach() for u in us]).sqrt()
            gamma = torch.clamp(1.0 / norm, max=1.0)  # 1 / 0 = inf -> 1
        # two-loop recursion over the filled slots (the last min(k, m) pairs): newest first, then oldest first
        q = [u.to(wide_dtype(u.dtype, p.dtype)) if not u.is_complex() else u for u, p in zip(us, ps)]
        filled = [(prev - i) % m for i in range(min(k, m))]
        alphas = {}
        for j in filled:
            alphas[j] = weights[j] * _dot(mem_s[j], q)
            q = [x - alphas[j] * yj for x, yj in zip(q, mem_y[j])]
        r = q if gamma is None else [x * gamma for x in q]
        for j in reversed(filled):
            beta = weights[j] * _dot(mem_y[j], r)
            r = [x + (alphas[j] - beta) * sj for x, sj in zip(r, mem_s[j])]
        out = tree_unflatten([x.to(u.dtype) for x, u in zip(r, us)], treedef)

        def tree(leaves):
            return tree_unflatten(list(leaves), treedef)

        diff_params = list(state.diff_params_memory)
        diff_updates = list(state.diff_updates_memory)
        diff_params[prev], diff_updates[prev] = tree(s), tree(y)
        new = ScaleByLBFGSState(state.count + 1, tree(p.clone() for p in ps), tree(us_kept),
                                tuple(diff_params), tuple(diff_updates), weights)
        return out, new

    return GradientTransformation(init, update)
