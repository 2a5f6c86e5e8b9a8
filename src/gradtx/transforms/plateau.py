"""Reduce the step when the loss stops improving: optax.contrib's ``reduce_on_plateau``."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .._foreach import wide_dtype
from .._hparams import check, check_int
from ..base import GradientTransformation, transform
from ._common import first_device, leaves, unflatten

__all__ = ["ReduceLROnPlateauState", "reduce_on_plateau"]


class ReduceLROnPlateauState(NamedTuple):
    scale: torch.Tensor  # 0-dim: the factor applied to the updates
    best_value: torch.Tensor  # 0-dim: the best averaged loss so far
    plateau_count: torch.Tensor  # int32: windows without improvement
    cooldown_count: torch.Tensor  # int32: windows left before counting again
    count: torch.Tensor  # int32: losses in the current window
    avg_value: torch.Tensor  # 0-dim: the mean loss of the current window


@transform(leafwise=True, inplace=True)
def reduce_on_plateau(factor: float = 0.1, patience: int = 10, rtol: float = 1e-4, atol: float = 0.0,
                      cooldown: int = 0, accumulation_size: int = 1, min_scale: float = 0.0
                      ) -> GradientTransformation:
    """Scale the updates down when the loss plateaus, as ``optax.contrib.reduce_on_plateau``;
    ``update`` needs ``value`` (the loss).

    The losses of ``accumulation_size`` updates are averaged; at the end of each window, the
    mean improves when ``mean < (1 - rtol) best - atol`` (then ``best <- mean`` and the
    plateau count restarts), else the count grows; during a cooldown the count stays 0 and
    the cooldown shrinks by one; otherwise, when the count reaches ``patience``,
    ``scale <- max(factor scale, min_scale)``, the count restarts and the cooldown is set to
    ``cooldown``. Every update is ``u <- scale u``.

    The scalars live on the params' device, in their widest dtype (optax keeps ``scale`` in
    the lowest). Place it before ``scale_by_lr``.

    Example: ``gx.chain(gx.scale_by_adam(), gx.reduce_on_plateau(patience=5), gx.scale_by_lr(1e-3))``;
    ``tx.update(grads, state, params, value=loss)``.
    """
    check("factor", factor, low=0.0, high=1.0)
    check_int("patience", patience, low=1)
    check("rtol", rtol, low=0.0, high=1.0)
    check("atol", atol, low=0.0)
    check_int("cooldown", cooldown, low=0)
    check_int("accumulation_size", accumulation_size, low=1)
    check("min_scale", min_scale, low=0.0)

    def init(params):
        ps, _ = leaves(params)
        dtype = wide_dtype(*{p.dtype for p in ps})
        device = first_device(ps)

        def zero_int():
            return torch.zeros((), dtype=torch.int32, device=device)

        return ReduceLROnPlateauState(torch.ones((), dtype=dtype, device=device),
                                      torch.full((), float("inf"), dtype=dtype, device=device), zero_int(),
                                      zero_int(), zero_int(), torch.zeros((), dtype=dtype, device=device))

    def update(updates, state, params=None, *, inplace=False, value=None, **extra_args):
        del params, inplace, extra_args  # every result is a fresh tensor
        if value is None:
            raise ValueError("reduce_on_plateau needs the loss: call update(updates, state, params, value=loss)")
        value = torch.as_tensor(value).detach()
        if value.numel() != 1:
            raise ValueError(f"reduce_on_plateau needs a scalar loss as value, got shape {tuple(value.shape)}")
        dtype = state.avg_value.dtype
        value = value.reshape(()).to(dtype=dtype, device=state.avg_value.device)
        count = state.count + 1
        avg = (state.count.to(dtype) * state.avg_value + value) / count.to(dtype)
        # at the end of a window: judge the mean (all branches computed, one selected)
        improved = avg < (1 - rtol) * state.best_value - atol
        best = torch.where(improved, avg, state.best_value)
        plateau = torch.where(improved, torch.zeros_like(state.plateau_count), state.plateau_count + 1)
        cooling = state.cooldown_count > 0
        reached = plateau == patience
        new_plateau = torch.where(cooling | reached, torch.zeros_like(plateau), plateau)
        reduced = torch.clamp(torch.where(reached, state.scale * factor, state.scale), min=min_scale)
        new_scale = torch.where(cooling, state.scale, reduced)
        new_cooldown = torch.where(cooling, state.cooldown_count - 1,
                                   torch.where(reached, torch.full_like(plateau, cooldown), torch.zeros_like(plateau)))
        end = count == accumulation_size
        state = ReduceLROnPlateauState(
            torch.where(end, new_scale, state.scale), torch.where(end, best, state.best_value),
            torch.where(end, new_plateau, state.plateau_count), torch.where(end, new_cooldown, state.cooldown_count),
            torch.where(end, torch.zeros_like(count), count), torch.where(end, torch.zeros_like(avg), avg))
        us, treedef = leaves(updates)
        out = [u * state.scale.to(device=u.device, dtype=u.real.dtype if u.is_complex() else u.dtype) for u in us]
        return unflatten(treedef, out), state

    return GradientTransformation(init, update)
