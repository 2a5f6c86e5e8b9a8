"""Factored second moments: Adafactor, SM3."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import torch

from .. import _foreach as F  # noqa: N812
from .._hparams import check, check_beta, check_int, increment, is_value, new_count, traced
from .._tree import Tree
from ..base import GradientTransformation, transform
from ._common import leaves, leaves_like, refuse_complex, unflatten

__all__ = ["FactoredState", "ScaleBySM3State", "scale_by_factored_rms", "scale_by_sm3"]


class ScaleBySM3State(NamedTuple):
    """State of :func:`scale_by_sm3`."""

    mu: Tree  # per parameter, a list of accumulators: one per axis (a full-shape one for < 2-D)
    nu: Tree  # momentum of the rescaled updates


def _expanded(shape: torch.Size, axis: int) -> list[int]:
    # [M, N, K], axis 1 -> [1, N, 1]
    return [n if i == axis else 1 for i, n in enumerate(shape)]


@transform(leafwise=True, inplace=True)
def scale_by_sm3(b1: float = 0.9, b2: float = 1.0, eps: float = 1e-8) -> GradientTransformation:
    """SM3-II (Anil et al., 2019, "Memory-Efficient Adaptive Optimization"), optax's form.

    A tensor of rank ``k >= 2`` keeps one accumulator per axis (a row max, a column max, ...);
    ``nu' = c1 g^2 + c2 min_i mu_i`` (broadcast over the other axes), with ``(c1, c2) = (1, 1)``
    when ``b2 = 1`` (the paper) else ``(1-b2, b2)``; ``mu_i <- max of nu'`` over all axes but
    ``i``. Tensors of rank < 2 keep ``nu'`` itself. Then ``u' = g / sqrt(nu' + eps)``
    (0 where ``nu' = 0``) and ``u <- m <- b1 m + (1-b1) u'``.

    Example: ``gx.chain(gx.scale_by_sm3(), gx.scale_by_lr(0.1))``.
    """
    check_beta("b1", b1)
    check("b2", b2, low=0.0, high=1.0)
    check("eps", eps, low=0.0)
    # b2 = 1 selects the paper's rule (a constant: no gradient flows to b2 there)
    paper = is_value(b2.detach() if isinstance(b2, torch.Tensor) else b2, 1.0)
    c1, c2 = (1.0, 1.0) if paper else (1.0 - b2, b2)

    def init(params):
        refuse_complex("scale_by_sm3", params, "it keeps one accumulator per axis of each tensor")
        ps, treedef = leaves(params)
        mu = []
        for p in ps:
            if p.dim() < 2:
                mu.append([torch.zeros_like(p)])
            else:
                mu.append([p.new_zeros(n) for n in p.shape])
        return ScaleBySM3State(mu=unflatten(treedef, mu), nu=unflatten(treedef, [torch.zeros_like(p) for p in ps]))

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del params, extra_args
        gs, treedef = leaves(updates)
        mus = leaves_like(state.mu, treedef)
        nus = leaves_like(state.nu, treedef)
        new_mus, new_nus, outs = [], [], []
        for g, accs, nu in zip(gs, mus, nus):
            if g.dim() < 2:
                prev = accs[0]
            else:
                prev = functools.reduce(torch.minimum, [a.reshape(_expanded(g.shape, i)) for i, a in enumerate(accs)])
            acc = g * g
            # acc is this step's own tensor, written in place unless a traced b2 must keep
            # the values autograd saved
            keep = traced(c1)
            if not is_value(c1, 1.0):
                acc = acc * c1 if keep else acc.mul_(c1)
            term = prev if is_value(c2, 1.0) else prev * c2
            acc = acc + term if keep else acc.add_(term)
            scaling = torch.where(acc > 0, torch.rsqrt(acc + eps), 0.0)
            if g.dim() < 2:
                new_acc = [accs[0].copy_(acc) if inplace else acc]
            else:
                dims = list(range(g.dim()))
                # an empty tensor has seen nothing along any axis: its accumulators stay
                maxes = ([acc.amax(dim=[d for d in dims if d != i]) for i in dims] if acc.numel()
                         else [torch.zeros_like(a) for a in accs])
                new_acc = [a.copy_(m) for a, m in zip(accs, maxes)] if inplace else maxes
            up = g.mul_(scaling) if inplace else g * scaling
            nu = nu.lerp_(up.to(nu.dtype), 1.0 - b1) if inplace else torch.lerp(nu, up.to(nu.dtype), 1.0 - b1)
            new_mus.append(new_acc)
            new_nus.append(nu)
            # never return the state itself: the caller may write into returned updates
            outs.append(up.copy_(nu) if inplace else nu.to(g.dtype, copy=True))
        return unflatten(treedef, outs), ScaleBySM3State(unflatten(treedef, new_mus), unflatten(treedef, new_nus))

    return GradientTransformation(init, update)


class FactoredState(NamedTuple):
    """State of :func:`scale_by_factored_rms`."""

    count: torch.Tensor  # int32, steps taken
    v_row: Tree  # factored: second moment with the largest axis reduced; else a (1,) placeholder
    v_col: Tree  # factored: second moment with the second largest axis reduced; else a placeholder
    v: Tree  # not factored: the full second moment; else a placeholder


def _factored_dims(shape: torch.Size, factored: bool, min_dim_size_to_factor: int) -> tuple[int, int] | None:
    """``(second largest axis, largest axis)``, or ``None`` when the tensor is not factored."""
    if not factored or len(shape) < 2:
        return None
    order = sorted(range(len(shape)), key=lambda i: shape[i])  # stable: ties keep axis order
    if shape[order[-2]] < min_dim_size_to_factor:
        return None
    return order[-2], order[-1]


# The most elements a batch of equal shapes holds under flat=True (scale_by_factored_rms):
# larger tensors go one at a time, as on the default path.
_BATCH_NUMEL = 1 << 20


def _decay_rate_pow(step: torch.Tensor, exponent: float) -> torch.Tensor:
    """Adafactor's ``beta2_t = 1 - (step + 1)^(-exponent)`` (``step`` counts from 0)."""
    return 1.0 - (step.to(torch.float64) + 1.0) ** (-exponent)


def _clamped_rsqrt(estimate: torch.Tensor) -> torch.Tensor:
    """``1 / sqrt(max(v, tiny^2))`` in place, tiny the dtype's machine epsilon: how
    ``torch.optim.Adafactor`` (``eps=(None, ...)``) keeps a vanishing estimate finite, so a
    zero gradient gives a zero update instead of ``0 / 0``."""
    tiny = torch.finfo(estimate.dtype).eps
    return estimate.clamp_min_(tiny * tiny).rsqrt_()


def _moving(v: torch.Tensor, x: torch.Tensor, decay: torch.Tensor, inplace: bool) -> torch.Tensor:
    # decay v + (1 - decay) x; x is a fresh tensor, free to overwrite. The pure path clones and
    # then works in place, as the in-place path does: v * decay would promote a 0-dim v to
    # decay's float64 and change the state's dtype.
    x.mul_(1.0 - decay)
    return (v if inplace else v.clone()).mul_(decay).add_(x)


@transform(leafwise=True, inplace=True, segmented=True)
def scale_by_factored_rms(factored: bool = True, decay_rate: float = 0.8, step_offset: int = 0,
                          min_dim_size_to_factor: int = 128, epsilon: float = 1e-30,
                          decay_rate_fn: Callable[[torch.Tensor, float], torch.Tensor] = _decay_rate_pow
                          ) -> GradientTransformation:
    """Adafactor's factored second-moment scaling (Shazeer & Stern, 2018), optax's form.

    ``beta_t = decay_rate_fn(t - step_offset, decay_rate)`` (default ``1 - (t+1)^(-decay_rate)``,
    ``t`` counting from 0). For a tensor whose two largest axes ``a1 <= a0`` have size at least
    ``min_dim_size_to_factor`` (and ``factored``): with ``G = g^2 + epsilon``,
    ``R <- beta_t R + (1-beta_t) mean_{a0} G``, ``C <- beta_t C + (1-beta_t) mean_{a1} G`` and
    ``u <- g / sqrt(R C / mean_{a1} R)`` (broadcast back). Otherwise
    ``v <- beta_t v + (1-beta_t) G`` and ``u <- g / sqrt(v)``.

    ``epsilon=0`` takes ``torch.optim.Adafactor``'s guards instead (its ``eps=(None, ...)``):
    ``mean_{a1} R`` is clamped below at the dtype's machine epsilon ``e`` and the estimate
    (``R C / mean_{a1} R`` or ``v``) at ``e^2``, so an all-zero gradient gives a zero update.
    ``torch.optim.Adafactor`` factors the last two axes of every tensor of rank >= 2; for
    matrices and vectors it is ``min_dim_size_to_factor=1, epsilon=0`` (see ``gx.adafactor``).

    Under ``gx.Optimizer(..., flat=True)`` (declared segmented) a leaf may be a flat buffer of
    many tensors end to end, described by the extra argument ``segments``, and each state leaf
    the concatenation of those tensors' state leaves in the same order (a row and a column
    vector per factored tensor, a ``(1,)`` placeholder per unfactored one). The update then runs
    once per run of equal shapes, viewed as ``(count, *shape)`` with the run's row and column
    statistics as ``(count, *reduced)`` (batches of at most ``2^20`` elements, so that the
    temporaries stay small; a tensor alone as itself), and over stretches of the buffer when
    no tensor of it is factored: the reductions are each tensor's own, so the numbers
    are those of the separate tensors.

    Example: ``gx.chain(gx.scale_by_factored_rms(), gx.scale_by_lr(1e-2))``.
    """
    check("decay_rate", decay_rate, low=0.0)
    check_int("step_offset", step_offset, low=0)
    check("min_dim_size_to_factor", min_dim_size_to_factor, low=0.0)
    check("epsilon", epsilon, low=0.0)
    if not callable(decay_rate_fn):
        raise ValueError(f"decay_rate_fn must be a callable (step, decay_rate) -> beta, got {decay_rate_fn!r}")

    def init(params):
        refuse_complex("scale_by_factored_rms", params, "it factors the two largest axes of each tensor")
        ps, treedef = leaves(params)
        rows, cols, full = [], [], []
        for p in ps:
            dims = _factored_dims(p.shape, factored, min_dim_size_to_factor)
            placeholder = p.new_zeros(1)
            if dims is None:
                rows.append(placeholder)
                cols.append(placeholder.clone())
                full.append(torch.zeros_like(p))
            else:
                d1, d0 = dims
                rows.append(p.new_zeros([n for i, n in enumerate(p.shape) if i != d0]))
                cols.append(p.new_zeros([n for i, n in enumerate(p.shape) if i != d1]))
                full.append(placeholder.clone())
        return FactoredState(new_count(), unflatten(treedef, rows), unflatten(treedef, cols), unflatten(treedef, full))

    def scaled(g, row, col, full, dims, beta, inplace, lead=0, kept=False):
        """``(g's scaling, row, col, full)``; ``lead`` leading batch axes (a run of a flat
        buffer); ``kept``: the g-sized outputs into kept temporaries (``F.kept_empty``: a fresh
        large CPU tensor is a new mapping, page-faulted each step)."""
        def like_g():
            return F.kept_empty(g.shape, g.dtype, g.device) if kept else None

        sq = torch.mul(g, g, out=like_g())
        if not is_value(epsilon, 0.0):
            sq.add_(epsilon)
        if dims is None:
            full = _moving(full, sq, beta, inplace)
            if epsilon:
                return torch.rsqrt(full, out=like_g()), row, col, full
            return _clamped_rsqrt(like_g().copy_(full) if kept else full.clone()), row, col, full
        d1, d0 = dims
        row = _moving(row, sq.mean(dim=d0 + lead), beta, inplace)
        col = _moving(col, sq.mean(dim=d1 + lead), beta, inplace)
        reduced_d1 = d1 - 1 if d1 > d0 else d1
        row_mean = row.mean(dim=reduced_d1 + lead, keepdim=True)
        if epsilon:
            row_factor = (row / row_mean).rsqrt_()
            scaling = torch.mul(row_factor.unsqueeze(d0 + lead), col.rsqrt().unsqueeze(d1 + lead), out=like_g())
        else:
            # torch's order: R C / max(mean R, tiny), then the clamp in _clamped_rsqrt
            estimate = torch.mul(row.unsqueeze(d0 + lead), col.unsqueeze(d1 + lead), out=like_g())
            estimate.div_(row_mean.clamp_min(torch.finfo(row.dtype).eps).unsqueeze(d0 + lead))
            scaling = _clamped_rsqrt(estimate)
        return scaling, row, col, full

    def flat_update(g, row, col, full, seg, beta, inplace):
        """One flat leaf of ``seg``'s tensors (and its concatenated state), run by run."""
        if not inplace:  # the state's new tensors, then written in place as the in-place path
            row, col, full = row.clone(), col.clone(), full.clone()
        out = g if inplace else torch.empty_like(g)
        runs = seg.blocks(g)
        plan = [_factored_dims(shape, factored, min_dim_size_to_factor) for _, _, shape, _ in runs]
        if all(d is None for d in plan) and full.shape == g.shape:
            # nothing factored: elementwise, in stretches of _BATCH_NUMEL (small temporaries)
            for start in range(0, g.numel(), _BATCH_NUMEL):
                part = slice(start, start + _BATCH_NUMEL)
                scaling, *_ = scaled(g[part], row, col, full[part], None, beta, True, kept=True)
                torch.mul(g[part], scaling, out=out[part])
            return out, row, col, full
        at = {"row": 0, "col": 0, "full": 0}

        def take(name, x, count, shape):
            n = count * shape.numel()
            start = at[name]
            at[name] = start + n
            return x[start:start + n].view(count, *shape) if count > 1 else x[start:start + n].view(shape)

        for (start, runs_of, shape, _), dims in zip(runs, plan):
            size = shape.numel()
            # batches of at most _BATCH_NUMEL elements: a batch's squares and scaling are
            # temporaries of its size (a whole run's would raise the peak memory)
            per = max(1, _BATCH_NUMEL // max(size, 1))
            for first in range(0, runs_of, per):
                count = min(per, runs_of - first)
                offset = start + first * size
                block = g[offset:offset + count * size]
                block = block.view(count, *shape) if count > 1 else block.view(shape)
                one = torch.Size((1,))
                if dims is None:
                    r, c = take("row", row, count, one), take("col", col, count, one)
                    f = take("full", full, count, shape)
                else:
                    d1, d0 = dims
                    r = take("row", row, count, torch.Size([n for i, n in enumerate(shape) if i != d0]))
                    c = take("col", col, count, torch.Size([n for i, n in enumerate(shape) if i != d1]))
                    f = take("full", full, count, one)
                scaling, *_ = scaled(block, r, c, f, dims, beta, True, lead=1 if count > 1 else 0, kept=True)
                torch.mul(block, scaling, out=out[offset:offset + count * size].view(block.shape))
        return out, row, col, full

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del params
        gs, treedef = leaves(updates)
        rows = leaves_like(state.v_row, treedef)
        cols = leaves_like(state.v_col, treedef)
        fulls = leaves_like(state.v, treedef)
        beta = decay_rate_fn(state.count - step_offset, decay_rate)
        segments = extra_args.get("segments")
        segs = [None] * len(gs) if segments is None else leaves_like(segments, treedef, "segments")
        new_rows, new_cols, new_fulls, outs = [], [], [], []
        for g, row, col, full, seg in zip(gs, rows, cols, fulls, segs):
            if seg is not None:  # a flat buffer of many tensors (gx.Optimizer(..., flat=True))
                out, row, col, full = flat_update(g, row, col, full, seg, beta, inplace)
                outs.append(out)
                new_rows.append(row)
                new_cols.append(col)
                new_fulls.append(full)
                continue
            dims = _factored_dims(g.shape, factored, min_dim_size_to_factor)
            scaling, row, col, full = scaled(g, row, col, full, dims, beta, inplace)
            # the update keeps g's dtype when the statistics are wider (bf16 grads, f32 params)
            outs.append(g.mul_(scaling) if inplace else (g * scaling).to(g.dtype))
            new_rows.append(row)
            new_cols.append(col)
            new_fulls.append(full)
        new_state = FactoredState(increment(state.count, inplace), unflatten(treedef, new_rows),
                                  unflatten(treedef, new_cols), unflatten(treedef, new_fulls))
        return unflatten(treedef, outs), new_state

    return GradientTransformation(init, update)
