"""Clipping and normalising by a moving average: bound each update by what recent updates
looked like (torchzero's ``ClipNormByEMA``, ``NormalizeByEMA``, ``ClipValueByEMA``), and
per-tensor normalisation."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .._hparams import check, check_beta, increment, new_count
from .._tree import Tree
from ..base import EmptyState, GradientTransformation, transform
from ._common import leaves, leaves_like, unflatten

__all__ = ["EmaNormClipState", "ClipValueByEmaState", "clip_norm_by_ema", "clip_value_by_ema", "normalize_by_ema",
           "normalize_per_tensor"]


def _real(x: torch.Tensor) -> torch.Tensor:
    return torch.view_as_real(x) if x.is_complex() else x


def _norm(x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(x)


@transform(leafwise=True, inplace=True)
def normalize_per_tensor(norm_value: float = 1.0) -> GradientTransformation:
    """Scale each tensor to l2 norm ``norm_value``: ``u <- norm_value * u / ||u||`` per tensor
    (torchzero's ``Normalize``). A zero tensor stays zero; a norm at or below 1e-12 is taken
    as 1 (no blow-up of a vanishing tensor). :func:`normalize_by_update_norm` uses the global norm.

    Example: ``gx.chain(gx.normalize_per_tensor(), gx.scale_by_adam(), gx.scale_by_lr(1e-2))``.
    """
    check("norm_value", norm_value, low=0.0)

    def init(params):
        del params
        return EmptyState()

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del params, extra_args
        us, treedef = leaves(updates)
        out = []
        for u in us:
            n = _norm(u)
            factor = norm_value / torch.where(n <= 1e-12, torch.ones_like(n), n)
            factor = torch.where(n == 0, torch.ones_like(factor), factor).to(u.dtype)
            out.append(u.mul_(factor) if inplace else u * factor)
        return unflatten(treedef, out), state

    return GradientTransformation(init, update)


class EmaNormClipState(NamedTuple):
    """State of :func:`clip_norm_by_ema` / :func:`normalize_by_ema`."""

    count: torch.Tensor  # int32, steps taken
    ema: Tree  # moving average of the updates, shaped like params
    prev_ema_norm: Tree  # the (growth-limited) norm of ema at the last step: per tensor a 0-dim
    # tensor in a tree like params, or one (1,)-shaped tensor for the global norm


def _ema_norm_rule(name: str, normalize: bool):
    def build(beta: float = 0.99, tensorwise: bool = True, max_ema_growth: float | None = 1.5, init: float = 0.0,
              min_norm: float = 1e-6) -> GradientTransformation:
        check_beta("beta", beta)
        if not isinstance(tensorwise, bool):
            raise ValueError(f"tensorwise must be a bool, got {tensorwise!r}")
        if max_ema_growth is not None:
            check("max_ema_growth", max_ema_growth, low=0.0, low_open=True)
        check("init", init)
        check("min_norm", min_norm, low=0.0)

        def init_fn(params):
            ps, treedef = leaves(params)
            ema = unflatten(treedef, [(torch.zeros_like(p) + init).to(p.dtype) for p in ps])
            if tensorwise:
                prev = unflatten(treedef, [torch.zeros((), dtype=p.real.dtype, device=p.device) for p in ps])
            else:
                dtype = ps[0].real.dtype if ps else torch.float32
                prev = torch.zeros(1, dtype=dtype, device=ps[0].device if ps else None)
            return EmaNormClipState(new_count(), ema, prev)

        def limit(emas: list, ema_norm, prev, first: bool, inplace: bool):
            """The emas and their norm with the norm's growth over one step bounded."""
            if max_ema_growth is None:
                return emas, ema_norm
            prev_norm = ema_norm if first else prev
            allowed = torch.clamp(prev_norm * max_ema_growth, min=min_norm)
            denom = torch.clamp(ema_norm / allowed, min=1.0)
            emas = [e.div_(denom.to(e.dtype)) if inplace else e / denom.to(e.dtype) for e in emas]
            return emas, ema_norm / denom

        def update(updates, state, params=None, *, inplace=False, **extra_args):
            del params, extra_args
            us, treedef = leaves(updates)
            emas = leaves_like(state.ema, treedef)
            emas = [e.lerp_(u.to(e.dtype), 1.0 - beta) if inplace else torch.lerp(e, u.to(e.dtype), 1.0 - beta)
                    for e, u in zip(emas, us)]
            first = int(state.count) == 0
            tiny = [2 * torch.finfo(u.real.dtype).tiny for u in us]
            if tensorwise:
                prevs = leaves_like(state.prev_ema_norm, treedef)
                new_prevs, denoms, limited = [], [], []
                for u, e, p, eps in zip(us, emas, prevs, tiny):
                    (e,), en = limit([e], _norm(e), p, first, inplace)
                    limited.append(e)
                    new_prevs.append(p.copy_(en) if inplace else en.to(p.dtype))
                    denoms.append(_norm(u) / torch.clamp(en, min=eps))
                emas = limited
                new_prev_tree = unflatten(treedef, new_prevs)
            else:
                eps = min(tiny) if tiny else 0.0
                u_norm = torch.linalg.vector_norm(torch.stack([_norm(u).double() for u in us])) if us else None
                e_norm = torch.linalg.vector_norm(torch.stack([_norm(e).double() for e in emas])) if us else None
                if us:
                    emas, en = limit(emas, e_norm, state.prev_ema_norm.reshape(()).double(), first, inplace)
                    p = state.prev_ema_norm
                    new_prev_tree = p.copy_(en.reshape(1)) if inplace else en.reshape(1).to(p.dtype)
                    denoms = [u_norm / torch.clamp(en, min=eps)] * len(us)
                else:
                    new_prev_tree, denoms = state.prev_ema_norm, []
            low = tiny if normalize else [1.0] * len(us)
            out = []
            for u, d, lo in zip(us, denoms, low):
                d = torch.clamp(d, min=lo).to(u.real.dtype)
                out.append(u.div_(d) if inplace else u / d)
            new_state = EmaNormClipState(increment(state.count, inplace), unflatten(treedef, emas), new_prev_tree)
            return unflatten(treedef, out), new_state

        return GradientTransformation(init_fn, update)

    build.__name__ = name
    return build


@transform(leafwise=lambda args: args["tensorwise"], inplace=True)
def clip_norm_by_ema(beta: float = 0.99, tensorwise: bool = True, max_ema_growth: float | None = 1.5,
                     init: float = 0.0, min_norm: float = 1e-6) -> GradientTransformation:
    """Clip each update's norm to the norm of a moving average of past updates (torchzero's
    ``ClipNormByEMA``, the reference; l2 norms).

    ``m <- beta m + (1 - beta) u`` (``m`` starts at ``init``); with ``max_ema_growth`` the
    norm of ``m`` may grow by at most that factor per step: ``m <- m / max(1, ||m|| / a)``,
    ``a = max(max_ema_growth * ||m||_prev, min_norm)`` (``||m||_prev`` the previous step's
    bounded norm, the current one at the first step); then
    ``u <- u / max(1, ||u|| / max(||m||, 2 tiny))``. Norms per tensor, or over all leaves
    with ``tensorwise=False``. Note that with ``init = 0`` the first updates are scaled by
    about ``1 - beta``, as in torchzero.

    Example: ``gx.chain(gx.clip_norm_by_ema(0.99), gx.scale_by_adam(), gx.scale_by_lr(1e-3))``.
    """
    return _ema_norm_rule("clip_norm_by_ema", normalize=False)(beta, tensorwise, max_ema_growth, init, min_norm)


@transform(leafwise=lambda args: args["tensorwise"], inplace=True)
def normalize_by_ema(beta: float = 0.99, tensorwise: bool = True, max_ema_growth: float | None = 1.5,
                     init: float = 0.0, min_norm: float = 1e-6) -> GradientTransformation:
    """Scale each update to the norm of a moving average of past updates (torchzero's
    ``NormalizeByEMA``): :func:`clip_norm_by_ema`'s rule with ``u <- u / max(||u|| / ||m||, 2 tiny)``,
    so small updates are scaled up as well as large ones down.

    Example: ``gx.chain(gx.normalize_by_ema(0.9), gx.scale_by_lr(1e-2))``.
    """
    return _ema_norm_rule("normalize_by_ema", normalize=True)(beta, tensorwise, max_ema_growth, init, min_norm)


class ClipValueByEmaState(NamedTuple):
    """State of :func:`clip_value_by_ema`: steps taken and the moving average of ``|u|``."""

    count: torch.Tensor  # int32, steps taken
    ema: Tree  # moving average of |u|, shaped like params


# leafwise, not declared elementwise: its first step is a Python branch on the step count,
# which compile=True cannot trace
@transform(leafwise=True, inplace=True)
def clip_value_by_ema(beta: float = 0.99, init: float = 0.0) -> GradientTransformation:
    """Clip each element to a moving average of its past magnitudes (torchzero's ``ClipValueByEMA``).

    ``a <- init |u_1|`` at the first step; then every step ``a <- beta a + (1 - beta) |u|`` and
    ``u <- clamp(u, -a, a)``. With ``init = 0`` the first updates are scaled by ``1 - beta``.

    Example: ``gx.chain(gx.clip_value_by_ema(0.9), gx.scale_by_lr(1e-2))``.
    """
    check_beta("beta", beta)
    check("init", init, low=0.0)

    def init_fn(params):
        ps, treedef = leaves(params)
        # a complex parameter's real and imaginary parts are clipped separately, as torch.optim steps them
        return ClipValueByEmaState(new_count(), unflatten(treedef, [torch.zeros_like(_real(p)) for p in ps]))

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del params, extra_args
        us, treedef = leaves(updates)
        emas = leaves_like(state.ema, treedef)
        first = int(state.count) == 0
        out, new = [], []
        for u0, e in zip(us, emas):
            u = _real(u0)
            a = u.abs().to(e.dtype)
            if first:
                e = e.copy_(a * init) if inplace else (a * init).to(a.dtype)
            e = e.lerp_(a, 1.0 - beta) if inplace else torch.lerp(e, a, 1.0 - beta)
            bound = e.to(u.dtype)
            clipped = torch.clamp(u, -bound, bound, out=u) if inplace else torch.clamp(u, -bound, bound)
            out.append(u0 if inplace else (torch.view_as_complex(clipped) if u0.is_complex() else clipped))
            new.append(e)
        return unflatten(treedef, out), ClipValueByEmaState(increment(state.count, inplace), unflatten(treedef, new))

    return GradientTransformation(init_fn, update)
