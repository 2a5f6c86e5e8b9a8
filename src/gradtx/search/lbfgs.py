"""L-BFGS: the two-loop recursion over the whole tree (optax's ``scale_by_lbfgs``)."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .._foreach import wide_dtype
from .._hparams import check, check_int, new_count
from .._tree import Tree, flatten_up_to, tensor_leaves, tree_unflatten
from ..base import GradientTransformation, transform
from ._line import device_of, real_view, same_precision

__all__ = ["ScaleByLBFGSState", "ScaleByOnlineLBFGSState", "scale_by_lbfgs", "scale_by_online_lbfgs"]


def _dot(xs: list[torch.Tensor], ys: list[torch.Tensor]) -> torch.Tensor:
    """``Re <x, y>`` over all leaves as a float64 0-dim tensor (autograd flows through it;
    no value is read on the host). Each leaf's product is summed in its own precision (at
    least float32), as torch.optim.LBFGS does: upcasting every leaf to float64 first cost a
    copy of each and tripled the step time of a 1M-parameter model."""
    parts = [torch.dot(*same_precision(real_view(x).reshape(-1), real_view(y).reshape(-1))).double()
             for x, y in zip(xs, ys)]
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


@transform(inplace=True)  # writes into nothing it is given; returns fresh tensors (or a given update as is)
def scale_by_lbfgs(memory_size: int = 10, scale_init_precond: bool = True,
                   first_step: str = "optax") -> GradientTransformation:
    """L-BFGS direction ``u <- P_k g_k`` (Nocedal & Wright, 2006, Alg. 7.4; Liu & Nocedal,
    1989), as ``optax.scale_by_lbfgs``; needs ``params``.

    With ``s_j = w_{j+1} - w_j``, ``y_j = g_{j+1} - g_j`` and ``rho_j = 1 / <y_j, s_j>`` (0
    when ``<y_j, s_j> = 0``) for the last ``memory_size`` steps, the two-loop recursion
    computes ``P_k g`` for ``P_{k,j+1} = V_j^T P_{k,j} V_j + rho_j s_j s_j^T``,
    ``V_j = I - rho_j y_j s_j^T``, from ``P_{k,k-m} = gamma_k I``:
    ``gamma_k = <s_{k-1}, y_{k-1}> / <y_{k-1}, y_{k-1}>`` with ``scale_init_precond`` (1 if
    ``y = 0``), else 1; at the first step ``gamma_0 = min(1, 1 / ||g_0||)`` with
    ``scale_init_precond`` (optax's heuristic: the first step has length at most 1), or
    ``gamma_0 = 1 / ||g_0||`` with ``first_step="unit"`` (a first step of length 1 whatever the
    gradient's norm, as scipy's L-BFGS-B and Nocedal & Wright's first trial: from a small
    gradient it saves the first iterations' short steps; one evaluation fewer than optax's on
    the logistic problem of ``benchmarks/closure_methods.py``, the same iterates as scipy). Dot
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
    if first_step not in ("optax", "unit"):
        raise ValueError(f"first_step must be 'optax' or 'unit', got {first_step!r}")
    longest = 1.0 if first_step == "optax" else math.inf
    m = memory_size

    def init(params):
        ps, treedef = tensor_leaves(params)

        def zeros():
            return tree_unflatten([torch.zeros_like(p) for p in ps], treedef)

        return ScaleByLBFGSState(new_count(), zeros(), zeros(), tuple(zeros() for _ in range(m)),
                                 tuple(zeros() for _ in range(m)),
                                 torch.zeros(m, dtype=torch.float64, device=device_of(ps)))

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del inplace, extra_args
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
            inverse = 1.0 / norm
            # 1 / 0 = inf: no scale for a zero gradient
            gamma = torch.where(torch.isinf(inverse), torch.ones_like(inverse), inverse).clamp(max=longest)
        # two-loop recursion over the filled slots (the last min(k, m) pairs): newest first, then oldest first
        q = [u.to(wide_dtype(u.dtype, p.dtype)) if not u.is_complex() else u for u, p in zip(us, ps)]
        r = _two_loop(q, mem_s, mem_y, weights, [(prev - i) % m for i in range(min(k, m))], gamma)
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


class ScaleByOnlineLBFGSState(NamedTuple):
    count: torch.Tensor  # int32 0-dim: updates so far
    diff_params_memory: tuple  # memory_size trees like params: s_j, the steps taken
    diff_updates_memory: tuple  # memory_size trees like params: y_j = g(w_j + s_j) - g(w_j) + lambda s_j
    weights_memory: torch.Tensor  # float64 (memory_size,): rho_j = 1 / <y_j, s_j> (0: empty slot)
    ratios_memory: torch.Tensor  # float64 (memory_size,): <s_j, y_j> / <y_j, y_j>, for the initial scaling


@transform(inplace=True)  # writes into nothing it is given; returns fresh tensors (or a given update as is)
def scale_by_online_lbfgs(learning_rate: float, memory_size: int = 10, c: float = 1.0, lambda_: float = 0.0,
                          epsilon: float = 1e-10) -> GradientTransformation:
    """Online L-BFGS (oLBFGS; Schraudolph, Yu & Günter, 2007, Alg. 2), for stochastic
    gradients; takes the raw gradient ``g_t`` (put it first in a chain) and needs ``params``
    and ``value_and_grad_fn`` on the same minibatch as ``g_t``. Returns the step itself
    (already negative: follow it with nothing that rescales).

    ``p_t = -H_t g_t`` by the two-loop recursion over the last ``memory_size`` pairs, from
    ``H_0 = (1 / k) sum_j <s_j, y_j> / <y_j, y_j>`` (the mean over the ``k`` pairs kept) and
    ``p_0 = -epsilon g_0``; ``s_t = (learning_rate / c) p_t``;
    ``y_t = g(w_t + s_t) - g_t + lambda_ s_t`` with ``g(w_t + s_t)`` from
    ``value_and_grad_fn`` (the same minibatch: one extra gradient per step, as the paper);
    ``u <- s_t``. A pair with ``<y, s> <= 0`` is not stored. Defaults ``c=1``,
    ``lambda_=0`` and ``epsilon=1e-10`` are the paper's.

    Example: ``tx = gx.scale_by_online_lbfgs(0.1)``; per minibatch
    ``tx.update(grads, state, params, value_and_grad_fn=batch_value_and_grad)``.
    """
    check("learning_rate", learning_rate, low=0.0, low_open=True)
    check_int("memory_size", memory_size, low=1)
    check("c", c, low=0.0, high=1.0, low_open=True)
    check("lambda_", lambda_, low=0.0)
    check("epsilon", epsilon, low=0.0, low_open=True)
    m = memory_size

    def init(params):
        ps, treedef = tensor_leaves(params)

        def zeros():
            return tree_unflatten([torch.zeros_like(p) for p in ps], treedef)

        return ScaleByOnlineLBFGSState(new_count(), tuple(zeros() for _ in range(m)),
                                       tuple(zeros() for _ in range(m)),
                                       torch.zeros(m, dtype=torch.float64, device=device_of(ps)),
                                       torch.zeros(m, dtype=torch.float64, device=device_of(ps)))

    def update(updates, state, params=None, *, inplace=False, value_and_grad_fn=None, **extra_args):
        del inplace, extra_args
        if params is None:
            raise ValueError("scale_by_online_lbfgs needs params: call update(grads, state, params, ...)")
        if value_and_grad_fn is None:
            raise ValueError("scale_by_online_lbfgs needs the extra argument value_and_grad_fn (params -> (loss, "
                             "grads)) on the minibatch of the gradient, for the gradient after the step")
        us, treedef = tensor_leaves(updates)
        ps = flatten_up_to(params, treedef, "params")
        mem_s = [flatten_up_to(tree, treedef) for tree in state.diff_params_memory]
        mem_y = [flatten_up_to(tree, treedef) for tree in state.diff_updates_memory]
        weights, ratios = state.weights_memory, state.ratios_memory
        k = int(state.count)
        filled = [(k - 1 - i) % m for i in range(min(k, m))]  # newest first
        q = [u.to(wide_dtype(u.dtype, p.dtype)) if not u.is_complex() else u for u, p in zip(us, ps)]
        if filled:
            kept = weights[filled] != 0
            n = kept.sum().clamp(min=1)
            gamma = (ratios[filled] * kept).sum() / n
            gamma = torch.where(kept.any(), gamma, torch.full_like(gamma, float(epsilon)))
            direction = _two_loop(q, mem_s, mem_y, weights, filled, gamma)
        else:
            direction = [x * float(epsilon) for x in q]
        scale = -float(learning_rate) / float(c)
        steps = [(x * scale).to(p.dtype) for x, p in zip(direction, ps)]
        _, new_grad = value_and_grad_fn(tree_unflatten([p + s for p, s in zip(ps, steps)], treedef))
        new_gs = flatten_up_to(new_grad, treedef, "the gradient value_and_grad_fn returned", "the updates")
        y = [(g2.detach().to(p.dtype) - u.to(p.dtype) + float(lambda_) * s) for g2, u, s, p in
             zip(new_gs, us, steps, ps)]
        sy, yy = _dot(y, steps), _dot(y, y)
        good = (sy > 0) & (yy > 0)
        slot = k % m
        weights, ratios = weights.clone(), ratios.clone()
        weights[slot] = torch.where(good, 1.0 / torch.where(good, sy, torch.ones_like(sy)), torch.zeros_like(sy))
        ratios[slot] = torch.where(good, sy / torch.where(good, yy, torch.ones_like(yy)), torch.zeros_like(yy))
        diff_params, diff_updates = list(state.diff_params_memory), list(state.diff_updates_memory)
        diff_params[slot] = tree_unflatten([s.clone() for s in steps], treedef)
        diff_updates[slot] = tree_unflatten(y, treedef)
        out = tree_unflatten([s.to(u.dtype) for s, u in zip(steps, us)], treedef)
        return out, ScaleByOnlineLBFGSState(state.count + 1, tuple(diff_params), tuple(diff_updates), weights, ratios)

    return GradientTransformation(init, update)


def _two_loop(q, mem_s, mem_y, weights, filled, gamma):
    """``H q`` for the pairs in slots ``filled`` (newest first) from ``H_0 = gamma I``.

    Works in place on one copy of ``q``: each axpy is one ``addcmul_`` by a 0-dim tensor (one
    pass, no host read, no temporary; its fused multiply-add rounds once where
    ``x - alpha * y`` rounds twice). ``x - alpha * y`` made two fresh tensors per leaf and pair
    and a multiplication into a scratch tensor then a subtraction took 2.7 times as long: the
    recursion was most of a step's overhead on a 1M-parameter model."""
    tensors = [*q, weights, *(t for j in filled for t in (*mem_s[j], *mem_y[j]))]
    if torch.is_grad_enabled() and (any(t.requires_grad for t in tensors) or getattr(gamma, "requires_grad", False)):
        return _two_loop_differentiable(q, mem_s, mem_y, weights, filled, gamma)
    alphas = {}
    q = [x.clone() for x in q]
    for j in filled:
        alphas[j] = weights[j] * _dot(mem_s[j], q)
        negative = -alphas[j]
        for x, yj in zip(q, mem_y[j]):
            x.addcmul_(yj, negative.to(x.device))
    r = q if gamma is None else [x.mul_(gamma.to(x.device)) for x in q]
    for j in reversed(filled):
        beta = weights[j] * _dot(mem_y[j], r)
        factor = alphas[j] - beta
        for x, sj in zip(r, mem_s[j]):
            x.addcmul_(sj, factor.to(x.device))
    return r


def _two_loop_differentiable(q, mem_s, mem_y, weights, filled, gamma):
    """:func:`_two_loop` out of place, for autograd through the recursion (hypergradients)."""
    alphas = {}
    for j in filled:
        alphas[j] = weights[j] * _dot(mem_s[j], q)
        q = [x - alphas[j] * yj for x, yj in zip(q, mem_y[j])]
    r = q if gamma is None else [x * gamma for x in q]
    for j in reversed(filled):
        beta = weights[j] * _dot(mem_y[j], r)
        r = [x + (alphas[j] - beta) * sj for x, sj in zip(r, mem_s[j])]
    return r
