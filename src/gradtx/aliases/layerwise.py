"""Layer-wise and noisy SGD aliases: LARS, LAMB, Fromage, noisy SGD."""

from __future__ import annotations

import math

import torch

from .._hparams import ScalarOrSchedule, check, check_beta, is_schedule
from .._tree import tree_map
from ..base import GradientTransformation, transform
from ..combine import chain
from ..transforms.adaptive import scale_by_adam
from ..transforms.momentum import trace
from ..transforms.normalize import scale_by_trust_ratio, trust_ratio_transform
from ..transforms.perturb import add_noise
from ..transforms.regularize import Mask, add_decayed_weights
from ..transforms.scaling import scale, scale_by_lr

__all__ = ["fromage", "lamb", "lars", "noisy_sgd"]


def _bool_mask(mask: Mask | bool | None) -> Mask | None:
    # optax lets a mask be a bare bool (a prefix of the whole tree); add_decayed_weights
    # takes None for "everywhere" and a tree or callable otherwise.
    if mask is True or mask is None:
        return None
    if mask is False:
        return lambda params: tree_map(lambda _: False, params)
    return mask


@transform
def lamb(lr: ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-6, eps_root: float = 0.0,
         weight_decay: float = 0.0, mask: Mask | None = None) -> GradientTransformation:
    """LAMB: Adam with a layer-wise trust ratio (You et al., 2020, Algorithm 2), optax's form.

    ``r = m_hat / (sqrt(v_hat + eps_root) + eps) + weight_decay * p`` (decay where ``mask``);
    per leaf ``p <- p - lr * ||p|| / ||r|| * r`` (ratio 1 when a norm is 0).

    ``chain(scale_by_adam(b1, b2, eps, eps_root), add_decayed_weights(weight_decay, mask),
    scale_by_trust_ratio(), scale_by_lr(lr))``.

    Example: ``gx.Optimizer(model.parameters(), gx.lamb(1e-3, weight_decay=0.01))``.
    """
    return chain(scale_by_adam(b1, b2, eps, eps_root), add_decayed_weights(weight_decay, _bool_mask(mask)),
                 scale_by_trust_ratio(), scale_by_lr(lr))


@transform
def lars(lr: ScalarOrSchedule, weight_decay: float = 0.0, weight_decay_mask: Mask | bool = True,
         trust_coefficient: float = 0.001, eps: float = 0.0, trust_ratio_mask: Mask | bool = True,
         momentum: float = 0.9, nesterov: bool = False) -> GradientTransformation:
    """LARS: SGD with momentum and a layer-wise trust ratio (You et al., 2017).

    ``g <- g + weight_decay * p`` (where ``weight_decay_mask``); per leaf, where
    ``trust_ratio_mask``: ``g <- trust_coefficient * ||p|| / (||g|| + eps) * g`` (ratio 1
    when a norm is 0); ``m <- momentum * m + g``; ``u = m`` (or ``g + momentum * m`` with
    ``nesterov``); ``p <- p - lr * u``. Masks are a bool, a tree of bools like params, or
    ``params -> tree``; the usual choice excludes biases and norm layers,
    ``lambda p: gx.tree_map(lambda x: x.dim() > 1, p)``.

    ``chain(add_decayed_weights, masked scale_by_trust_ratio, trace(momentum, nesterov),
    scale_by_lr(lr))``. optax applies the learning rate before the momentum; the two agree
    for a constant ``lr``, and with a schedule this one follows torch's SGD (the step scales
    the whole momentum).

    Example: ``gx.Optimizer(model.parameters(), gx.lars(5.0, weight_decay=1e-4))``.
    """
    check_beta("momentum", momentum)  # named here: trace would call it decay
    return chain(add_decayed_weights(weight_decay, _bool_mask(weight_decay_mask)),
                 trust_ratio_transform(trust_coefficient=trust_coefficient, eps=eps,
                                       mask=_bool_mask(trust_ratio_mask)),
                 trace(momentum, nesterov=nesterov), scale_by_lr(lr))


@transform
def fromage(lr: float | torch.Tensor, min_norm: float = 1e-6) -> GradientTransformation:
    """Fromage, Frobenius matched gradient descent (Bernstein et al., 2020).

    Per leaf: ``p <- (p - lr * max(||p||, min_norm) / max(||g||, min_norm) * g) / sqrt(1 + lr^2)``.

    Written with the learning rate last: ``chain(scale_by_trust_ratio(min_norm),
    scale(1/s), add_decayed_weights(lr / (s (s + 1))), scale_by_lr(lr))`` with
    ``s = sqrt(1 + lr^2)``, which gives the same update. ``lr`` is fixed when the optimizer
    is built (as in optax, a schedule is not accepted): the shrink factor depends on it, so
    changing ``param_groups[i]['lr']`` of a ``gx.Optimizer`` afterwards does not give Fromage
    at the new rate.

    Example: ``gx.Optimizer(model.parameters(), gx.fromage(1e-2))``.
    """
    if is_schedule(lr):
        raise ValueError("lr of fromage must be a number or a 0-dim tensor: the update's shrink factor depends on it")
    check("lr", lr, low=0.0)
    s = torch.sqrt(1 + lr * lr) if isinstance(lr, torch.Tensor) else math.sqrt(1.0 + lr * lr)
    return chain(scale_by_trust_ratio(min_norm), scale(1 / s), add_decayed_weights(lr / (s * (s + 1))),
                 scale_by_lr(lr))


@transform
def noisy_sgd(lr: ScalarOrSchedule, eta: float = 0.01, gamma: float = 0.55, seed: int = 0) -> GradientTransformation:
    """SGD with annealed Gaussian gradient noise (Neelakantan et al., 2015).

    ``p <- p - lr * (g + sqrt(eta / (1 + t)^gamma) * n)``, ``n ~ N(0, I)``, t = 0, 1, ...;
    the noise is reproducible from ``seed`` (see :func:`add_noise`).

    ``chain(add_noise(eta, gamma, seed), scale_by_lr(lr))``.

    Example: ``gx.Optimizer(model.parameters(), gx.noisy_sgd(1e-2, seed=0))``.
    """
    return chain(add_noise(eta, gamma, seed), scale_by_lr(lr))
