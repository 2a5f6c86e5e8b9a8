"""Shampoo: one Kronecker factor per axis, the update multiplied by their inverse roots
(Gupta, Koren & Singer, 2018)."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from .._hparams import check, check_int, new_count
from .._tree import Tree
from ..base import GradientTransformation, is_leafwise, transform, updater
from ..transforms._common import leaves, leaves_like, refuse_complex, unflatten
from ._factors import empty_like_factor, factor_sizes, gram, multiply_axes, symmetric_power

__all__ = ["ScaleByShampooState", "scale_by_shampoo"]

START_PRECONDITIONING_STEP = 5  # Distributed Shampoo's default (Anil et al., 2020)


class ScaleByShampooState(NamedTuple):
    """State of :func:`scale_by_shampoo`."""

    count: torch.Tensor  # int32, steps taken
    factors: Tree  # per parameter, one (n, n) statistic per axis of its working shape; (0,) where none
    roots: Tree  # per parameter, the inverse root of each statistic used since the last refresh
    graft_state: Any  # the state of ``graft`` (an EmptyState-like () when there is none)


def _inverse_root(factor: torch.Tensor, power: float, precond_dtype: torch.dtype | None, floor) -> torch.Tensor:
    """``factor^(-1/power)`` by a symmetric eigendecomposition, in float64 for a float64 factor
    and float32 otherwise unless ``precond_dtype`` says, as pytorch_optimizer's (SVD) does.
    Eigenvalues are floored at ``floor``, the statistic's own lower bound (``eps`` times the
    decay of the initial ``eps I``): in float32 the eigenvalues of ``eps I + g g^T`` come out
    below ``eps``, even negative, and their root would blow up the null-space directions."""
    dtype = precond_dtype or (torch.float64 if factor.dtype == torch.float64 else torch.float32)
    floor = max(float(floor), torch.finfo(dtype).tiny)
    return symmetric_power(factor.to(dtype), -1.0 / power, floor=floor).to(factor.dtype)


def _into(old: torch.Tensor, new: torch.Tensor, inplace: bool) -> torch.Tensor:
    """``new``, copied into the state tensor ``old`` when ``inplace``."""
    return old.copy_(new) if inplace else new


def _value(x) -> float:
    return float(x.detach()) if isinstance(x, torch.Tensor) else float(x)


def _stat_dtype(dtype: torch.dtype) -> torch.dtype:
    # half types would round the small eigenvalues of eps I + G G^T to 0 and overflow the root
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _graft_leafwise(args: dict) -> bool:
    graft = args.get("graft", "sgd")
    return not isinstance(graft, GradientTransformation) or is_leafwise(graft)


@transform(leafwise=_graft_leafwise, inplace=True)
def scale_by_shampoo(eps: float = 1e-6, update_freq: int = 1, beta: float | None = None,
                     max_precond_dim: int = 10000, merge_dims: bool = False, precondition_1d: bool = True,
                     graft: GradientTransformation | str | None = "sgd",
                     precond_dtype: torch.dtype | None = None,
                     start_preconditioning_step: int = START_PRECONDITIONING_STEP) -> GradientTransformation:
    """Shampoo's preconditioning (Gupta et al., 2018, "Shampoo: Preconditioned Stochastic Tensor
    Optimization", Algorithm 2 for order-``k`` tensors).

    Each parameter (reshaped to its working shape, the rule of :func:`scale_by_soap`) keeps one
    statistic per axis, started at ``eps I``: ``H_i <- H_i + G_(i) G_(i)^T``, or an EMA
    ``H_i <- beta H_i + (1-beta) G_(i) G_(i)^T`` when ``beta`` is given (``G_(i)``: ``g`` with
    axis ``i`` first, the others flattened). Every ``update_freq`` steps, from
    ``start_preconditioning_step`` on, the roots ``P_i = H_i^(-1/(2k))`` are recomputed, ``k`` the rank of the working
    shape, by an eigendecomposition in float64 for float64 factors and float32 otherwise (or
    ``precond_dtype``), eigenvalues floored at ``eps`` (``eps beta^t`` with ``beta``), the
    statistic's true lower bound, which float32 round-off undershoots; the update is
    ``u <- g x_1 P_1 ... x_k P_k`` (then grafted, below). Statistics and roots are
    kept in float32 for half-precision parameters (whose rounding would zero the small
    eigenvalues and overflow the roots), in the parameter's dtype otherwise.

    A vector gets a full ``(n, n)`` statistic (``k = 1``: full-matrix AdaGrad) with
    ``precondition_1d`` (the default, as the paper and pytorch_optimizer), an axis longer than
    ``max_precond_dim`` none (identity along it); a 0-dim tensor, or a vector without a
    statistic, gets no Shampoo direction.

    Stabilisers, the defaults of Distributed Shampoo (Anil et al., 2020, "Scalable Second
    Order Optimization for Deep Learning"; also ``pytorch_optimizer.ScalableShampoo``):

    - *grafting* (``graft``): each leaf's update is Shampoo's direction with the norm of
      another rule's update, ``u <- u_shampoo ||u_graft|| / ||u_shampoo||`` (0 when
      ``u_shampoo`` is), and ``u_graft`` itself on a leaf without a direction. ``"sgd"`` (the
      default, Distributed Shampoo's ``graft_type=SGD``) takes the incoming update's norm;
      a transform (``gx.scale_by_rss()`` for AdaGrad grafting, ``gx.scale_by_adam()``) its
      update's, its state kept in ``graft_state``; ``None`` grafts nothing (the paper's rule:
      the raw direction, and such leaves pass through unchanged).
    - *start_preconditioning_step* ``s`` (default 5, Distributed Shampoo's): steps
      ``1 .. s-1`` only collect statistics and take the graft's update (SGD: the incoming
      update); the roots are computed at step ``s`` and every ``update_freq`` steps after.
      Roots computed from one or two gradients amplify the directions those gradients do not
      span by up to ``eps^(-1/2)``: on a small CNN, ungrafted Shampoo with ``update_freq=10``
      and roots from the first gradient reaches NaN within 10 steps at any lr from 0.03
      (``tests/test_precondition.py``).

    With ``graft=None``, ``start_preconditioning_step=1`` and ``update_freq=1`` this is
    ``pytorch_optimizer.Shampoo(momentum=0)`` step for step; for ``update_freq > 1`` that
    implementation multiplies by zero roots until step ``update_freq``, where this one
    computes them on its first preconditioned step. For momentum chain ``gx.trace``. Complex
    parameters are refused at ``init`` (optimize ``torch.view_as_real(p)``).

    Example: ``gx.chain(gx.scale_by_shampoo(update_freq=10, graft=gx.scale_by_rss()), gx.scale_by_lr(0.1))``,
    or ``gx.shampoo(0.1)``.
    """
    check("eps", eps, low=0.0)
    check_int("update_freq", update_freq, low=1)
    if beta is not None:
        check("beta", beta, low=0.0, high=1.0, high_open=True)
    check_int("max_precond_dim", max_precond_dim, low=1)
    check_int("start_preconditioning_step", start_preconditioning_step, low=1)
    if precond_dtype is not None and precond_dtype not in (torch.float32, torch.float64):
        raise ValueError(f"precond_dtype must be None, torch.float32 or torch.float64, got {precond_dtype!r}")
    if graft is not None and graft != "sgd" and not isinstance(graft, GradientTransformation):
        raise ValueError(f"graft must be 'sgd', None or a GradientTransformation (e.g. gx.scale_by_rss()), "
                         f"got {graft!r}")
    sgd_graft = isinstance(graft, str)
    graft_tx = graft if isinstance(graft, GradientTransformation) else None
    run_graft = None if graft_tx is None else updater(graft_tx)

    def layout(p: torch.Tensor) -> tuple[list[int], list[bool]]:
        return factor_sizes(p.shape, max_dim=max_precond_dim, merge=merge_dims, precondition_1d=precondition_1d)

    def init(params):
        refuse_complex("scale_by_shampoo", params, "its statistics are built from each tensor's axes")
        ps, treedef = leaves(params)
        factors, roots = [], []
        for p in ps:
            shape, has = layout(p)
            dtype = _stat_dtype(p.dtype)
            factors.append([torch.eye(n, dtype=dtype, device=p.device) * eps if on else empty_like_factor(p)
                            for n, on in zip(shape, has)])
            roots.append([p.new_zeros(n, n, dtype=dtype) if on else empty_like_factor(p) for n, on in zip(shape, has)])
        graft_state = () if graft_tx is None else graft_tx.init(params)
        return ScaleByShampooState(new_count(), unflatten(treedef, factors), unflatten(treedef, roots), graft_state)

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        # in place: the statistics and roots are written into, each update into g's buffer
        gs, treedef = leaves(updates)
        all_factors = leaves_like(state.factors, treedef)
        all_roots = leaves_like(state.roots, treedef)
        count = int(state.count)  # Python control flow: the schedule of roots
        first = start_preconditioning_step - 1  # the first preconditioned step (count from 0)
        precondition = count >= first
        refresh = precondition and (count - first) % update_freq == 0
        # the smallest eigenvalue the statistic can have: eps, decayed by the EMA if any
        floor = _value(eps) * (1.0 if beta is None else _value(beta) ** (count + 1))
        graft_state, grafted = state.graft_state, None
        if graft_tx is not None:  # first: it reads the updates before they are overwritten
            grafted, graft_state = run_graft(updates, graft_state, params, False, extra_args)
            grafted = leaves_like(grafted, treedef, "the graft's updates")
        outs, new_factors, new_roots = [], [], []
        for i, (g, factors, roots) in enumerate(zip(gs, all_factors, all_roots)):
            shape, has = layout(g)
            work = g.reshape(shape).to(_stat_dtype(g.dtype))
            stats = [gram(work, axis).to(f.dtype) for axis, (f, on) in enumerate(zip(factors, has)) if on]
            it = iter(stats)
            if beta is None:
                factors = [(f.add_(next(it)) if inplace else f + next(it)) if on else f for f, on in zip(factors, has)]
            else:
                factors = [(f.lerp_(next(it), 1.0 - beta) if inplace else torch.lerp(f, next(it), 1.0 - beta))
                           if on else f for f, on in zip(factors, has)]
            del stats, it
            if refresh:
                power = 2.0 * len(shape)
                roots = [_into(r, _inverse_root(f, power, precond_dtype, floor), inplace) if on else r
                         for f, r, on in zip(factors, roots, has)]
            # None: the leaf passes through (or takes the graft's update): it has no statistic, or
            # preconditioning has not started
            shampooed = precondition and any(has)
            out = multiply_axes(work, roots, has, transpose=False).reshape(g.shape).to(g.dtype) if shampooed else None
            del work
            if grafted is not None or (sgd_graft and out is not None):
                gu = g if grafted is None else grafted[i]  # SGD grafting: the incoming update's norm
                if grafted is not None:
                    grafted[i] = None  # each graft update freed as the loop goes
                if out is None:
                    out = gu.to(g.dtype)
                else:
                    norm = torch.linalg.vector_norm(out)
                    ratio = torch.where(norm > 0, torch.linalg.vector_norm(gu) / norm, torch.zeros_like(norm))
                    out = out * ratio.to(out.dtype)
                del gu
            if inplace:
                out = g if out is None else g.copy_(out)
            elif out is None or out is g or not shampooed:  # g itself, or what the graft returned: a copy
                out = (g if out is None else out).clone()
            outs.append(out)
            new_factors.append(factors)
            new_roots.append(roots)
        new_state = ScaleByShampooState(state.count + 1, unflatten(treedef, new_factors), unflatten(treedef, new_roots),
                                        graft_state)
        return unflatten(treedef, outs), new_state

    return GradientTransformation(init, update)
