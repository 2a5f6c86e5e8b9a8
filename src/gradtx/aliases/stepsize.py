"""Optimizers with adaptive step sizes: Polyak SGD, optimistic gradient descent, DoG."""

from __future__ import annotations

from .._hparams import ScalarOrSchedule
from ..base import GradientTransformation, identity, transform
from ..combine import chain
from ..transforms.regularize import Mask, add_decayed_weights
from ..transforms.scaling import scale_by_lr
from ..transforms.stepsize import scale_by_dog, scale_by_optimistic_gradient, scale_by_polyak

__all__ = ["dog", "optimistic_gradient_descent", "polyak_sgd"]


@transform
def polyak_sgd(lr: ScalarOrSchedule = 1.0, max_learning_rate: float = 1.0, f_min: float = 0.0, eps: float = 0.0,
               variant: str = "sps") -> GradientTransformation:
    """SGD with Polyak's step size (Loizou et al., 2021); ``update`` needs ``value`` (the loss).

    ``p <- p - lr * min((f - f_min) / (||g||^2 + eps), max_learning_rate) * g``, the rule of
    optax.polyak_sgd's docstring (``lr`` is optax's ``scaling``). Optax applies ``scaling``
    before the Polyak step, so its step is ``(f - f_min) / (scaling^2 ||g||^2 + eps)``;
    the two agree for ``lr = 1``, the default. ``variant="sps+"`` clips ``f - f_min`` at 0.

    ``chain(scale_by_polyak(f_min, max_learning_rate, eps, variant), scale_by_lr(lr))``.

    Example: ``opt = gx.Optimizer(model.parameters(), gx.polyak_sgd(max_learning_rate=0.5))``,
    then ``opt.step(closure)`` (the closure's loss is the ``value``).
    """
    return chain(scale_by_polyak(f_min, max_learning_rate, eps, variant), scale_by_lr(lr))


@transform
def optimistic_gradient_descent(lr: ScalarOrSchedule, alpha: float = 1.0, beta: float = 1.0
                                ) -> GradientTransformation:
    """Optimistic gradient descent (Mokhtari et al., 2019), as optax's.

    ``p <- p - lr * ((alpha + beta) g_t - beta g_{t-1})`` (``g_{-1} := g_0``):
    ``chain(scale_by_optimistic_gradient(alpha, beta), scale_by_lr(lr))``.

    Example: ``gx.Optimizer(model.parameters(), gx.optimistic_gradient_descent(0.05))``.
    """
    return chain(scale_by_optimistic_gradient(alpha, beta), scale_by_lr(lr))


@transform
def dog(lr: ScalarOrSchedule = 1.0, init_step: tuple[str, float] = ("heuristic", 1e-6), eps: float = 1e-8,
        weight_decay: float | None = None, mask: Mask | None = None) -> GradientTransformation:
    """Distance over gradients (DoG; Ivgi et al., 2023), as optax.contrib.dog.

    ``g <- g + weight_decay * p`` (when given); ``r_t = max(r_{t-1}, ||x_t - x_0||)``,
    ``G_t = G_{t-1} + ||g_t||^2`` (global norms), ``p <- p - lr * r_t / sqrt(G_t + eps) * g``;
    ``init_step`` as in :func:`scale_by_dog`. The authors recommend averaging the iterates.

    ``chain(add_decayed_weights(weight_decay, mask) or identity(), scale_by_dog(init_step, eps),
    scale_by_lr(lr))``; :func:`scale_by_distance_over_gradients` is the layer-wise variant.

    Example: ``gx.Optimizer(model.parameters(), gx.dog())``.
    """
    decay = identity() if weight_decay is None else add_decayed_weights(weight_decay, mask)
    return chain(decay, scale_by_dog(init_step, eps), scale_by_lr(lr))
