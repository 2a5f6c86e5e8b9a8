"""Step-size rules that read past iterates or the loss: Barzilai–Borwein and the bold driver."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .. import _foreach as F  # noqa: N812
from .._hparams import check, check_int, new_count
from .._tree import Tree
from ..base import GradientTransformation, transform
from ..transforms._common import first_device, leaves, leaves_like, need_params, unflatten
from ._vector import dot, safe_div, wide

__all__ = ["BarzilaiBorweinState", "BoldDriverState", "scale_by_barzilai_borwein", "scale_by_bold_driver"]


def _scalar(value, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    # A state scalar made on the params' device: the adapter never takes it for a
    # hyperparameter (those are float64 CPU tensors); a requires_grad value keeps its graph.
    if not isinstance(value, torch.Tensor):
        value = torch.tensor(float(value), dtype=torch.float64)
    return value.to(dtype=dtype, device=device).reshape(()).clone()


def _scale(us: list[torch.Tensor], step: torch.Tensor, inplace: bool) -> list[torch.Tensor]:
    return F.mul(us, [step.to(device=u.device, dtype=F.real_dtype(u.dtype)) for u in us], inplace=inplace)


def _diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # in the wider of the two dtypes and at least float32; a complex leaf stays complex
    dtype = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
    return a.to(dtype) - b.to(dtype)


# --- Barzilai-Borwein -------------------------------------------------------------------------


class BarzilaiBorweinState(NamedTuple):
    count: torch.Tensor  # int32 0-dim: updates so far
    step_size: torch.Tensor  # 0-dim: the last alpha_k, on the params' device
    prev_params: Tree  # x_{k-1}
    prev_grad: Tree  # g_{k-1}
    bb_count: torch.Tensor  # int32 0-dim: updates that computed a Barzilai-Borwein step
    min_step: torch.Tensor  # 0-dim: min |s| over the adaptive bound's warm-up (inf before)


_VARIANTS = ("long", "short", "geometric")


@transform(inplace=True)
def scale_by_barzilai_borwein(variant: str = "long", init_step: float = 1e-3, delta: float | None = None,
                              adaptive_delta: float | None = None, adaptive_iters: int = 3) -> GradientTransformation:
    """Barzilai–Borwein step sizes (Barzilai & Borwein, "Two-point step size gradient
    methods", 1988), optionally stabilised (Burdakov, Dai & Huang, "Stabilized
    Barzilai–Borwein method", 2019); needs ``params``.

    ``u <- alpha_k g_k`` with ``s = x_k - x_{k-1}``, ``y = g_k - g_{k-1}`` (dot products over
    the whole tree) and

    - ``variant="long"`` (BB1): ``alpha_k = s.s / s.y``;
    - ``variant="short"`` (BB2): ``alpha_k = s.y / y.y``;
    - ``variant="geometric"``: their geometric mean ``sqrt(BB1 BB2) = |s| / |y|`` (Dai,
      Al-Baali & Yang, "A positive Barzilai–Borwein-like stepsize and an extension for
      symmetric linear systems", 2015; torchzero's ``type="geom"``).

    ``alpha_0 = init_step``; when ``s.y <= 0`` (no positive curvature along ``s``) or a
    denominator is 0, the previous ``alpha`` (as used) is kept. With ``delta`` (the
    stabilised method, a constant bound), ``alpha_k <- min(alpha_k, delta / |g_k|)``, so
    that no step is longer than ``delta``. With ``adaptive_delta=c`` instead (the paper's
    adaptive bound, as torchzero's ``BBStab(c, delta=None, inf_iters=adaptive_iters)``): the
    first Barzilai–Borwein step is not bounded and not measured (its ``s`` is the
    ``init_step`` step), the next ``adaptive_iters`` are not bounded while their ``|s|`` are
    recorded, and every later one takes ``delta = c min |s|`` over those. ``g`` is the update
    that reaches it; ``params`` are read detached. No line search: follow with
    ``scale_by_lr(1.0)`` to descend (the output is gradient-like, as ``scale_by_polyak``'s).
    (torchzero falls back from one variant to the other, or to its ``alpha_0``, where
    ``s.y <= 0``; here the previous step is kept.)
    Defaults: ``variant="long"``, ``init_step=1e-3``, no bound (``delta=None``,
    ``adaptive_delta=None``), ``adaptive_iters=3`` (torchzero's ``inf_iters``).

    Example: ``gx.chain(gx.scale_by_barzilai_borwein("short", delta=1.0), gx.scale_by_lr(1.0))``.
    """
    if variant not in _VARIANTS:
        raise ValueError(f"variant must be one of {_VARIANTS}, got {variant!r}")
    check("init_step", init_step, low=0.0, low_open=True)
    if delta is not None:
        check("delta", delta, low=0.0, low_open=True)
    if adaptive_delta is not None:
        if delta is not None:
            raise ValueError("give delta (a constant bound) or adaptive_delta (c of the adaptive bound), not both")
        check("adaptive_delta", adaptive_delta, low=0.0, low_open=True)
    check_int("adaptive_iters", adaptive_iters, low=1)

    def init(params):
        ps, treedef = leaves(params)
        dtype, device = wide(ps), first_device(ps)
        return BarzilaiBorweinState(count=new_count(),
                                    step_size=_scalar(init_step, dtype, device),
                                    prev_params=unflatten(treedef, [p.detach().clone() for p in ps]),
                                    prev_grad=unflatten(treedef, F.zeros_like(ps)),
                                    bb_count=new_count(),
                                    min_step=torch.full((), torch.inf, dtype=dtype, device=device))

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del extra_args
        need_params("scale_by_barzilai_borwein", params)
        gs, treedef = leaves(updates)
        ps = leaves_like(params, treedef, "params")
        x_prev = leaves_like(state.prev_params, treedef)
        g_prev = leaves_like(state.prev_grad, treedef)
        dtype = state.step_size.dtype
        ps = [p.detach() for p in ps]
        ss_ = [_diff(p, q) for p, q in zip(ps, x_prev)]
        ys = [_diff(g, q) for g, q in zip(gs, g_prev)]
        sy = dot(ss_, ys, dtype)
        if variant == "long":
            alpha, ok = safe_div(dot(ss_, ss_, dtype), sy)
        elif variant == "short":
            alpha, ok = safe_div(sy, dot(ys, ys, dtype))
        else:
            ratio, ok = safe_div(dot(ss_, ss_, dtype), dot(ys, ys, dtype))
            alpha = ratio.clamp_min(0.0).sqrt()
        usable = ok & (sy > 0) & (state.count > 0).to(sy.device)
        alpha = torch.where(usable, alpha, state.step_size)
        bb_count, min_step = state.bb_count, state.min_step
        g_norm = dot(gs, gs, dtype).sqrt() if delta is not None or adaptive_delta is not None else None
        if delta is not None:
            bound, has_norm = safe_div(torch.as_tensor(delta, dtype=dtype, device=g_norm.device), g_norm)
            alpha = torch.where(has_norm, torch.minimum(alpha, bound), alpha)
        if adaptive_delta is not None:
            n = bb_count.to(sy.device)
            warming = usable & (n >= 1) & (n <= adaptive_iters)
            min_step = torch.where(warming, torch.minimum(min_step, dot(ss_, ss_, dtype).sqrt()), min_step)
            measured = torch.isfinite(min_step)  # (no inf reaches autograd through the branch not taken)
            bound, has_norm = safe_div(adaptive_delta * torch.where(measured, min_step, torch.ones_like(min_step)),
                                       g_norm)
            bounded = usable & (n > adaptive_iters) & measured & has_norm
            alpha = torch.where(bounded, torch.minimum(alpha, bound), alpha)
            bb_count = bb_count + usable.to(bb_count.device).int()
        count = state.count + 1
        if inplace:
            F.copy_(x_prev, ps)
            F.copy_(g_prev, gs)  # before the updates are scaled in place
            state.count.copy_(count)
            state.step_size.copy_(alpha)
            state.bb_count.copy_(bb_count)
            state.min_step.copy_(min_step)
            return unflatten(treedef, _scale(gs, alpha, True)), state
        new_state = BarzilaiBorweinState(count, alpha, unflatten(treedef, F.clone_like(ps, x_prev)),
                                         unflatten(treedef, F.clone_like(gs, g_prev)), bb_count.clone(),
                                         min_step.clone())
        return unflatten(treedef, _scale(gs, alpha, False)), new_state

    return GradientTransformation(init, update)


# --- bold driver ------------------------------------------------------------------------------


class BoldDriverState(NamedTuple):
    count: torch.Tensor  # int32 0-dim: updates so far
    step_size: torch.Tensor  # 0-dim: the current alpha_k, on the params' device
    prev_value: torch.Tensor  # 0-dim: f(x_{k-1})


@transform(inplace=True)
def scale_by_bold_driver(init_step: float = 1e-2, increase: float = 1.1,
                         decrease: float = 0.5) -> GradientTransformation:
    """The bold driver (Vogl et al., "Accelerating the convergence of the back-propagation
    method", 1988; Battiti, "Accelerated backpropagation learning: two optimization
    methods", 1989); needs ``value``.

    ``alpha_0 = init_step``; then with ``f_k`` the loss passed as ``update(..., value=f_k)``:
    ``alpha_k = increase * alpha_{k-1}`` when ``f_k < f_{k-1}``, else
    ``decrease * alpha_{k-1}``; ``u <- alpha_k g``. Battiti's factors are the defaults. Only
    the step size changes: a step that raised the loss is not undone (Vogl's variant does).
    ``value`` is read detached.
    Follow with ``scale_by_lr(1.0)`` to descend (the output is gradient-like).

    Example: ``gx.chain(gx.scale_by_bold_driver(1e-2), gx.scale_by_lr(1.0))``;
    ``tx.update(grads, state, params, value=loss)``.
    """
    check("init_step", init_step, low=0.0, low_open=True)
    check("increase", increase, low=1.0)
    check("decrease", decrease, low=0.0, high=1.0, low_open=True)

    def init(params):
        ps, _ = leaves(params)
        dtype, device = wide(ps), first_device(ps)
        return BoldDriverState(count=new_count(), step_size=_scalar(init_step, dtype, device),
                               prev_value=torch.zeros((), dtype=dtype, device=device))

    def update(updates, state, params=None, *, inplace=False, value=None, **extra_args):
        del params, extra_args
        if value is None:
            raise ValueError("scale_by_bold_driver needs the loss at params: call update(grads, state, params, "
                             "value=loss), or gx.Optimizer.step(closure)")
        gs, treedef = leaves(updates)
        value = torch.as_tensor(value).detach()
        if value.numel() != 1:
            raise ValueError(f"scale_by_bold_driver needs a scalar loss as value, got shape {tuple(value.shape)}")
        f = value.reshape(()).to(dtype=state.prev_value.dtype, device=state.prev_value.device)
        factor = torch.where(f < state.prev_value, torch.as_tensor(increase, dtype=f.dtype, device=f.device),
                             torch.as_tensor(decrease, dtype=f.dtype, device=f.device))
        step = torch.where((state.count > 0).to(f.device), state.step_size * factor, state.step_size)
        out = _scale(gs, step, inplace)
        count = state.count + 1
        if inplace:
            state.count.copy_(count)
            state.step_size.copy_(step)
            state.prev_value.copy_(f)
            return unflatten(treedef, out), state
        return unflatten(treedef, out), BoldDriverState(count, step, f)

    return GradientTransformation(init, update)
