"""Optimizers with adaptive step sizes: Polyak SGD and Polyak with a line search, optimistic gradient descent
and Adam, DoG."""

from __future__ import annotations

import math

import torch

from .._hparams import ScalarOrSchedule, check, is_schedule
from ..base import GradientTransformation, identity, transform
from ..combine import chain
from ..search.line_search import scale_by_backtracking
from ..transforms.adaptive import scale_by_adam
from ..transforms.regularize import Mask, add_decayed_weights
from ..transforms.scaling import scale, scale_by_lr
from ..transforms.stepsize import scale_by_dog, scale_by_optimistic_gradient, scale_by_polyak

__all__ = ["dog", "optimistic_adam", "optimistic_adam_v2", "optimistic_gradient_descent",
           "polyak_linesearch", "polyak_sgd"]

# Armijo backtracking from t = 1, i.e. from the Polyak step (pure, so one instance serves every call)
_BACKTRACKING = scale_by_backtracking()


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
def polyak_linesearch(f_min: float = 0.0, max_learning_rate: float = math.inf, eps: float = 0.0,
                      variant: str = "sps", linesearch: GradientTransformation = _BACKTRACKING
                      ) -> GradientTransformation:
    """Gradient descent whose line search starts from Polyak's step (torchzero's
    ``PolyakStepSize`` followed by ``Backtracking``); ``update`` needs ``params``, ``value``
    and the line search's evaluation arguments (``grad`` and ``value_fn`` for the default).

    ``d <- -min((f - f_min) / (||g||^2 + eps), max_learning_rate) g`` (:func:`scale_by_polyak`),
    then ``p <- p + t d`` with ``t`` from ``linesearch``, whose first trial ``t = 1`` is the
    Polyak step itself: by default Armijo backtracking, ``t <- 0.5 t`` until
    ``f(p + t d) <= f + 1e-4 t <g, d>`` (:func:`scale_by_backtracking`). Any line search
    that scales the update reaching it fits, e.g. ``linesearch=gx.scale_by_strong_wolfe()``.
    ``max_learning_rate`` defaults to no cap, as torchzero's ``max=None``: the search
    shortens a too-long step. ``f_min`` must be at most the loss's minimum: once ``f < f_min``
    the Polyak step points uphill (``variant="sps+"``: is 0) and the search stays at ``p``.

    ``chain(scale_by_polyak(f_min, max_learning_rate, eps, variant), scale(-1.0), linesearch)``.

    Example::

        tx = gx.polyak_linesearch(f_min=0.0)
        updates, state = tx.update(grads, state, params, value=loss, grad=grads, value_fn=loss_fn)

    or ``opt = gx.Optimizer(model.parameters(), gx.polyak_linesearch())`` and
    ``opt.step(closure)``.
    """
    if not isinstance(linesearch, GradientTransformation):
        raise TypeError(f"linesearch must be a GradientTransformation (e.g. gx.scale_by_backtracking()), "
                        f"got {type(linesearch).__name__}")
    return chain(scale_by_polyak(f_min, max_learning_rate, eps, variant), scale(-1.0), linesearch)


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
def optimistic_adam_v2(lr: ScalarOrSchedule, *, alpha: float = 1.0, beta: float = 1.0, b1: float = 0.9,
                       b2: float = 0.999, eps: float = 1e-8, eps_root: float = 0.0, mu_dtype: torch.dtype | None = None,
                       nesterov: bool = True) -> GradientTransformation:
    """Optimistic Adam (Daskalakis et al., 2018, "Training GANs with Optimism"), optax's
    ``optimistic_adam_v2``: the optimistic step applied to Adam's direction.

    ``d_t = adam(g)_t`` (:func:`scale_by_adam`, Nesterov by default as optax);
    ``p <- p - lr ((alpha + beta) d_t - beta d_{t-1})`` (``d_{-1} := d_0``):
    ``chain(scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov),
    scale_by_optimistic_gradient(alpha, beta), scale_by_lr(lr))``. For min-max games.

    Example: ``gx.optimistic_adam_v2(1e-3, alpha=1.0, beta=1.0)``.
    """
    return chain(scale_by_adam(b1, b2, eps, eps_root, mu_dtype, nesterov=nesterov),
                 scale_by_optimistic_gradient(alpha, beta), scale_by_lr(lr))


@transform
def optimistic_adam(lr: float, optimism: float | None = None, b1: float = 0.9, b2: float = 0.999,
                    eps: float = 1e-8, eps_root: float = 0.0, mu_dtype: torch.dtype | None = None, *,
                    nesterov: bool = True) -> GradientTransformation:
    """Optimistic Adam in optax's first (deprecated there) parameterisation.

    With ``d_t`` Adam's direction and ``o = optimism`` (default ``lr``):
    ``p <- p - ((lr + o) d_t - o d_{t-1})`` (Daskalakis et al., 2018). optax builds it as
    ``chain(scale_by_adam, scale_by_optimistic_gradient(alpha=lr, beta=o), scale_by_learning_rate(1))``;
    here it is the same rule written as ``optimistic_adam_v2(lr, alpha=1, beta=o / lr)``, so
    ``lr`` is the chain's learning rate (``param_groups[i]["lr"]``; a scheduler scaling it
    scales ``o`` along). Same numbers as optax's up to rounding; no schedules (as optax).

    Example: ``gx.optimistic_adam(1e-3, optimism=1e-2)``.
    """
    if is_schedule(lr):
        raise ValueError("optimistic_adam takes no learning-rate schedule (as optax); use optimistic_adam_v2")
    check("lr", lr, low=0.0, low_open=True)
    optimism = lr if optimism is None else optimism
    check("optimism", optimism, low=0.0)
    return optimistic_adam_v2(lr, alpha=1.0, beta=optimism / lr, b1=b1, b2=b2, eps=eps, eps_root=eps_root,
                              mu_dtype=mu_dtype, nesterov=nesterov)


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
