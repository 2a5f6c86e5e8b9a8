"""Schedule-free SGD and AdamW (Defazio et al., 2024), as the authors' ``schedulefree`` package."""

from __future__ import annotations

import torch

from .._hparams import check, check_int
from ..base import GradientTransformation, transform
from ..combine import chain
from ..transforms.adaptive import scale_by_adam
from ..transforms.regularize import add_decayed_weights
from ..transforms.scaling import scale_by_lr
from ..transforms.schedule_free_core import schedule_free

__all__ = ["schedule_free_adamw", "schedule_free_sgd"]


class LinearWarmup:
    """``lr * min(1, (k + 1) / warmup_steps)`` at step ``k``: the schedule-free package's warmup."""

    def __init__(self, lr: float | torch.Tensor, warmup_steps: int) -> None:
        self.lr, self.warmup_steps = lr, warmup_steps

    def __call__(self, count: torch.Tensor) -> torch.Tensor:
        frac = (torch.as_tensor(count).to(torch.float64) + 1) / self.warmup_steps
        return self.lr * torch.clamp(frac, max=1.0)

    def __repr__(self) -> str:
        return f"LinearWarmup({self.lr!r}, {self.warmup_steps})"


def _lr(lr, warmup_steps: int):
    check("lr", lr, low=0.0)
    check_int("warmup_steps", warmup_steps, low=0)
    return LinearWarmup(lr, warmup_steps) if warmup_steps > 0 else lr


@transform(leafwise=True, inplace=True)
def schedule_free_sgd(lr: float | torch.Tensor = 1.0, b1: float = 0.9, weight_decay: float = 0.0,
                      warmup_steps: int = 0, weight_lr_power: float = 2.0, r: float = 0.0) -> GradientTransformation:
    """Schedule-free SGD (Defazio et al., 2024), as ``schedulefree.SGDScheduleFree`` (its
    ``momentum`` is ``b1``) and optax.contrib.schedule_free_sgd.

    ``lr_k = lr min(1, (k + 1) / warmup_steps)``; ``d = g + weight_decay y`` (at the params
    ``y``); ``z <- z - lr_k d``; ``x``, ``y`` and the averaging weights as in
    :func:`schedule_free`. Evaluate at ``x``: ``opt.eval()`` under ``gx.Optimizer``
    (``opt.train()`` before the next step), :func:`schedule_free_eval_params` functionally.

    ``schedule_free(chain(add_decayed_weights(weight_decay), scale_by_lr(lr_k)), lr_k, b1,
    weight_lr_power, r)``.

    Example::

        opt = gx.Optimizer(model.parameters(), gx.schedule_free_sgd(1.0, warmup_steps=100))
        opt.train(); ...; opt.eval(); evaluate(model)
    """
    lr_k = _lr(lr, warmup_steps)
    return schedule_free(chain(add_decayed_weights(weight_decay), scale_by_lr(lr_k)), lr_k, b1, weight_lr_power, r)


@transform(leafwise=True, inplace=True)
def schedule_free_adamw(lr: float | torch.Tensor = 0.0025, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                        weight_decay: float = 0.0, warmup_steps: int = 0, weight_lr_power: float = 2.0,
                        r: float = 0.0) -> GradientTransformation:
    """Schedule-free AdamW (Defazio et al., 2024), as ``schedulefree.AdamWScheduleFree``
    (``betas = (b1, b2)``) and optax.contrib.schedule_free_adamw.

    ``v <- b2 v + (1 - b2) g^2``; ``d = g / (sqrt(v / (1 - b2^t)) + eps) + weight_decay y``;
    ``z <- z - lr_k d`` with ``lr_k = lr min(1, (k + 1) / warmup_steps)``; ``x``, ``y`` and
    the averaging weights as in :func:`schedule_free`. Evaluate at ``x`` (``opt.eval()``).

    ``schedule_free(chain(scale_by_adam(0, b2, eps), add_decayed_weights(weight_decay),
    scale_by_lr(lr_k)), lr_k, b1, weight_lr_power, r)``.

    Example: ``opt = gx.Optimizer(model.parameters(), gx.schedule_free_adamw(2.5e-3, warmup_steps=1000))``.
    """
    lr_k = _lr(lr, warmup_steps)
    base = chain(scale_by_adam(0.0, b2, eps), add_decayed_weights(weight_decay), scale_by_lr(lr_k))
    return schedule_free(base, lr_k, b1, weight_lr_power, r)
