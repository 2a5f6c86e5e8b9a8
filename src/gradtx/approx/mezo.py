"""MeZO: memory-efficient zeroth-order optimization (Malladi et al., 2023)."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .._hparams import check, check_int, to_state
from ..base import GradientTransformation, transform
from .randomized import randomized_member

__all__ = ["MezoState", "mezo", "scale_by_mezo"]


class MezoState(NamedTuple):
    """State of :func:`mezo`: the seed, the step count and the learning rate."""

    seed: torch.Tensor  # 0-dim int64
    count: torch.Tensor  # 0-dim int32
    lr: torch.Tensor  # 0-dim float64: the learning rate (a param_groups key under gx.Optimizer)


@transform(inplace=True)
def scale_by_mezo(eps: float = 1e-3, *, seed: int = 0, evaluate_in_place: bool = True) -> GradientTransformation:
    """MeZO's gradient estimate (Malladi et al., 2023, Algorithm 1): one Gaussian direction
    ``z`` from the state's seed, ``g = z (f(x + eps z) - f(x - eps z)) / (2 eps)``; needs
    ``value_fn``. A member making its own gradients: put it first in a chain.

    Under ``gx.Optimizer`` (``evaluate_in_place=True``, the default) the parameters are moved
    in place, ``x + eps z``, ``x - eps z``, back to ``x``, drawing ``z`` again from its seed for
    each move, leaf by leaf (regenerate, don't store): the step allocates only its update.
    The parameters after the moves differ from the ones before by round-off (a few ulps of
    ``eps |z|``), as in the paper's implementation. The functional path evaluates trial copies.

    Example: ``gx.chain(gx.scale_by_mezo(1e-3), gx.trace(0.9), gx.scale_by_lr(1e-4))``.
    """
    check("eps", eps, low=0.0, low_open=True)
    check_int("seed", seed)
    if not isinstance(evaluate_in_place, bool):
        raise ValueError(f"evaluate_in_place must be a bool, got {evaluate_in_place!r}")
    return randomized_member("scale_by_mezo", lambda count: eps, 1, "central", "gaussian", seed, evaluate_in_place)


@transform(inplace=True)
def mezo(lr: float = 1e-4, eps: float = 1e-3, *, seed: int = 0, evaluate_in_place: bool = True
         ) -> GradientTransformation:
    """MeZO-SGD (Malladi et al., 2023, Algorithm 1): ``u <- -lr g`` with :func:`scale_by_mezo`'s
    estimate ``g = z (f(x + eps z) - f(x - eps z)) / (2 eps)``; one member, so under
    ``gx.Optimizer`` the step allocates nothing but its update (the paper's goal: the memory of
    inference). ``lr`` is kept in the state (a ``param_groups`` key a scheduler drives). Same
    numbers as ``gx.chain(gx.scale_by_mezo(eps, seed=seed), gx.scale_by_lr(lr))``.

    Example::

        opt = gx.Optimizer(model.parameters(), gx.mezo(1e-4))
        opt.step(lambda backward=False: loss_fn(model(x), y))
    """
    check("lr", lr, low=0.0)
    check("eps", eps, low=0.0, low_open=True)
    check_int("seed", seed)
    if not isinstance(evaluate_in_place, bool):
        raise ValueError(f"evaluate_in_place must be a bool, got {evaluate_in_place!r}")
    return randomized_member("mezo", lambda count: eps, 1, "central", "gaussian", seed, evaluate_in_place,
                             scale=lambda state: -state.lr,
                             init_extra=lambda base: MezoState(base.seed, base.count, to_state(lr)))

