"""Aliases of the RMS and accumulator family (Adagrad, RMSprop, Adadelta, Adafactor, SM3, Rprop, ASGD, ...).

The learning rate is ``lr`` and comes last in every chain (``scale_by_lr``), so ``gx.Optimizer``
exposes it as ``param_groups[i]['lr']``; other argument names and defaults follow optax.
"""

from __future__ import annotations

import torch

from .._hparams import ScalarOrSchedule, _as_float, check, check_beta, check_int, check_order, is_value, traced
from ..base import GradientTransformation, identity, transform
from ..combine import chain
from ..transforms.accumulators import scale_by_adadelta, scale_by_asgd, scale_by_rprop, scale_by_rss, scale_by_stddev
from ..transforms.adaptive import scale_by_rms
from ..transforms.clipping import clip_by_block_rms
from ..transforms.factored import scale_by_factored_rms, scale_by_sm3
from ..transforms.momentum import at_least_float32, ema, trace
from ..transforms.normalize import scale_by_param_block_rms
from ..transforms.regularize import Mask, add_decayed_weights
from ..transforms.scaling import scale_by_lr, scale_by_schedule, scale_by_sign

__all__ = ["adagrad", "adadelta", "rmsprop", "rprop", "adafactor", "sm3", "sign_sgd", "signum", "asgd"]


@transform
def adagrad(lr: ScalarOrSchedule, initial_accumulator_value: float = 0.1, eps: float = 1e-7, *,
            eps_in_sqrt: bool = True, lr_decay: float = 0.0, weight_decay: float = 0.0) -> GradientTransformation:
    """Adagrad (Duchi et al., 2011).

    ``g <- g + weight_decay * p``; ``s <- s + g^2`` (from ``initial_accumulator_value``);
    ``p <- p - lr / (1 + (t-1) lr_decay) * g / sqrt(s + eps)`` (``g / (sqrt(s) + eps)`` when
    ``eps_in_sqrt=False``).

    Defaults are optax's (accumulator from 0.1, eps inside the root). It equals
    ``torch.optim.Adagrad(lr, lr_decay, weight_decay, initial_accumulator_value, eps)`` as
    ``adagrad(lr, initial_accumulator_value, eps, eps_in_sqrt=False, lr_decay=lr_decay,
    weight_decay=weight_decay)``; torch's defaults are ``initial_accumulator_value=0, eps=1e-10``.

    ``chain(add_decayed_weights(weight_decay), scale_by_rss(...), [scale_by_schedule(1/(1+t lr_decay))],
    scale_by_lr(lr))``.

    Example: ``gx.Optimizer(model.parameters(), gx.adagrad(1e-2))``.
    """
    check("lr_decay", lr_decay, low=0.0)
    parts = [add_decayed_weights(weight_decay), scale_by_rss(initial_accumulator_value, eps, eps_in_sqrt)]
    if not is_value(lr_decay, 0.0):
        parts.append(scale_by_schedule(lambda count: 1.0 / (1.0 + count.to(torch.float64) * lr_decay)))
    parts.append(scale_by_lr(lr))
    return chain(*parts)


@transform
def adadelta(lr: ScalarOrSchedule = 1.0, rho: float = 0.9, eps: float = 1e-6, weight_decay: float = 0.0,
             weight_decay_mask: Mask | None = None) -> GradientTransformation:
    """Adadelta (Zeiler, 2012), equal to ``torch.optim.Adadelta`` (same defaults).

    ``g <- g + weight_decay * p``; ``E[g^2] <- rho E[g^2] + (1-rho) g^2``;
    ``d = sqrt(E[x^2] + eps) / sqrt(E[g^2] + eps) * g``; ``E[x^2] <- rho E[x^2] + (1-rho) d^2``;
    ``p <- p - lr * d``. optax's default ``learning_rate=None`` (no scaling) is ``lr=1.0`` here.

    ``chain(add_decayed_weights(weight_decay, weight_decay_mask), scale_by_adadelta(rho, eps), scale_by_lr(lr))``.

    Example: ``gx.Optimizer(model.parameters(), gx.adadelta())``.
    """
    return chain(add_decayed_weights(weight_decay, weight_decay_mask), scale_by_adadelta(rho, eps), scale_by_lr(lr))


@transform
def rmsprop(lr: ScalarOrSchedule, decay: float = 0.9, eps: float = 1e-8, initial_scale: float = 0.0,
            eps_in_sqrt: bool = True, centered: bool = False, momentum: float | None = None, nesterov: bool = False,
            bias_correction: bool = False, *, weight_decay: float = 0.0) -> GradientTransformation:
    """RMSprop (Tieleman & Hinton, 2012), centered (Graves, 2013), with optional momentum.

    ``g <- g + weight_decay * p``; ``v <- decay v + (1-decay) g^2`` (and ``m`` likewise when
    ``centered``, ``v`` then replaced by ``v - m^2``); ``d = g / sqrt(v + eps)`` (or
    ``g / (sqrt(v) + eps)`` when ``eps_in_sqrt=False``); with momentum ``b <- momentum b + d``,
    ``d <- b`` (``d + momentum b`` when ``nesterov``); ``p <- p - lr d``.

    ``torch.optim.RMSprop(lr, alpha, eps, weight_decay, momentum, centered)`` is
    ``rmsprop(lr, decay=alpha, eps=eps, eps_in_sqrt=False, centered=centered, momentum=momentum,
    weight_decay=weight_decay)``; optax's default puts eps inside the root. The momentum trace
    comes before ``scale_by_lr`` (torch's order; optax scales by the learning rate first, which
    differs only when the learning rate changes).

    Example: ``gx.Optimizer(model.parameters(), gx.rmsprop(1e-2, decay=0.99, eps_in_sqrt=False))``.
    """
    if momentum is not None:
        # checked here so the error names rmsprop's argument, not trace's ``decay`` (which
        # would read as rmsprop's own ``decay``)
        check_beta("momentum", momentum)
    if nesterov and not momentum:
        raise ValueError("nesterov=True needs a momentum > 0")
    scaler = scale_by_stddev if centered else scale_by_rms
    return chain(add_decayed_weights(weight_decay),
                 scaler(decay, eps, initial_scale, eps_in_sqrt, bias_correction),
                 trace(momentum, nesterov=nesterov) if momentum is not None else identity(),
                 scale_by_lr(lr))


@transform
def rprop(lr: float | torch.Tensor, eta_minus: float = 0.5, eta_plus: float = 1.2, min_step_size: float = 1e-6,
          max_step_size: float = 50.0) -> GradientTransformation:
    """Rprop (Riedmiller & Braun, 1993), equal to ``torch.optim.Rprop`` with
    ``etas=(eta_minus, eta_plus), step_sizes=(min_step_size, max_step_size)``.

    Per element a step size ``d`` starts at ``lr``, is multiplied by ``eta_plus`` while the
    gradient keeps its sign and by ``eta_minus`` when it flips (that step then does not move),
    and is clamped to ``[min_step_size, max_step_size]``; ``p <- p - d sign(g)``.

    Built as ``chain(scale_by_rprop(1.0, eta_minus, eta_plus, min_step_size / lr, max_step_size / lr),
    scale_by_lr(lr))``: step sizes are kept relative to ``lr`` so that ``lr`` is the last factor.
    With a constant ``lr`` this is torch's Rprop; changing ``lr`` later (a param group, an LR
    scheduler) rescales all current step sizes, where torch only reads ``lr`` once.

    Example: ``gx.Optimizer(model.parameters(), gx.rprop(1e-2))``.
    """
    check("lr", lr, low=0.0, low_open=True)
    # checked here: scale_by_rprop sees them divided by lr
    check("min_step_size", min_step_size, low=0.0)
    check("max_step_size", max_step_size, low=0.0, allow_inf=True)  # inf: no upper bound
    check_order("min_step_size", min_step_size, "max_step_size", max_step_size)
    # a traced lr stays a tensor, so the bounds keep their gradient
    rate = lr if traced(lr) else _as_float(lr.detach() if isinstance(lr, torch.Tensor) else lr)
    return chain(scale_by_rprop(1.0, eta_minus, eta_plus, min_step_size / rate, max_step_size / rate),
                 scale_by_lr(lr))


@transform
def adafactor(lr: ScalarOrSchedule | None = None, min_dim_size_to_factor: int = 128, decay_rate: float = 0.8,
              decay_offset: int = 0, multiply_by_parameter_scale: bool = True, clipping_threshold: float | None = 1.0,
              momentum: float | None = None, dtype_momentum: torch.dtype | None = None,
              weight_decay_rate: float | None = None, eps: float = 1e-30, factored: bool = True,
              weight_decay_mask: Mask | None = None) -> GradientTransformation:
    """Adafactor (Shazeer & Stern, 2018), optax's form.

    ``d = scale_by_factored_rms(factored, decay_rate, decay_offset, min_dim_size_to_factor, eps)(g)``;
    ``d <- d / max(1, rms(d) / clipping_threshold)`` (:func:`clip_by_block_rms`);
    ``d <- d * max(rms(p), 1e-3)`` when ``multiply_by_parameter_scale``
    (:func:`scale_by_param_block_rms`; rms per tensor); with momentum ``m <- momentum m + (1-momentum) d``,
    ``d <- m``; ``d <- d + weight_decay_rate * p``; ``p <- p - lr d``. ``lr=None`` is 1 (optax's
    "no learning-rate scaling").

    Differences from optax: the learning rate is applied last, after the momentum and the weight
    decay, so the decay is multiplied by ``lr`` (as in ``torch.optim.Adafactor`` and
    ``gx.adamw``; optax's is not). The momentum is kept in ``dtype_momentum``; ``None`` (the
    default) is float32 for lower-precision parameters and the parameter's dtype when wider
    (optax: always float32, which would round a float64 run's momentum).

    ``torch.optim.Adafactor(lr=a, beta2_decay=-c, eps=(None, 1e-3), d=k, weight_decay=w)`` is
    ``adafactor(lr=lambda t: min(a, 1/sqrt(t+1)), decay_rate=c, min_dim_size_to_factor=1,
    clipping_threshold=k, eps=0.0, weight_decay_rate=w)`` (``t`` counting from 0), with these
    differences:

    - torch factors the last two axes of a tensor of rank >= 3, this (as optax) the two
      largest: the same when the two largest axes are the last two (always for matrices);
    - torch decays the weights by ``a w``, this by ``min(a, 1/sqrt(t+1)) w``: the same while
      ``t + 1 <= 1/a^2``;
    - torch's parameter-scale floor ``eps[1]`` is fixed at 1e-3 here. ``eps=0.0`` takes torch's
      clamps (``eps[0]=None``: the machine epsilon of the parameters' dtype; see
      :func:`scale_by_factored_rms`), so an all-zero gradient moves nothing, as in torch; a
      positive ``eps`` is optax's, added to ``g^2``.

    Example: ``gx.Optimizer(model.parameters(), gx.adafactor(1e-2))``.
    """
    # checked here, under adafactor's names (scale_by_factored_rms calls them epsilon and
    # step_offset, add_decayed_weights weight_decay)
    check("eps", eps, low=0.0)
    check_int("decay_offset", decay_offset, low=0)
    if clipping_threshold is not None:
        check("clipping_threshold", clipping_threshold, low=0.0, low_open=True, allow_inf=True)  # inf: no clipping
    if momentum is not None:
        check_beta("momentum", momentum)
    if weight_decay_rate is not None:
        check("weight_decay_rate", weight_decay_rate, low=0.0)
    parts = [scale_by_factored_rms(factored, decay_rate, decay_offset, min_dim_size_to_factor, eps)]
    if clipping_threshold is not None:
        parts.append(clip_by_block_rms(clipping_threshold))
    if multiply_by_parameter_scale:
        parts.append(scale_by_param_block_rms())
    if momentum is not None:
        parts.append(ema(momentum, debias=False, accumulator_dtype=dtype_momentum or at_least_float32))
    if weight_decay_rate is not None:
        parts.append(add_decayed_weights(weight_decay_rate, weight_decay_mask))
    parts.append(scale_by_lr(1.0 if lr is None else lr))
    return chain(*parts)


@transform
def sm3(lr: ScalarOrSchedule, momentum: float = 0.9) -> GradientTransformation:
    """SM3 (Anil et al., 2019), optax's form: ``chain(scale_by_sm3(momentum), scale_by_lr(lr))``.

    Per-axis maxima of the accumulated squared gradients stand in for Adagrad's full
    accumulator: ``nu' = g^2 + min_i mu_i``, ``mu_i <- max`` of ``nu'`` over the other axes,
    ``m <- momentum m + (1-momentum) g / sqrt(nu' + 1e-8)``, ``p <- p - lr m``.

    Example: ``gx.Optimizer(model.parameters(), gx.sm3(0.1))``.
    """
    check_beta("momentum", momentum)  # named here: scale_by_sm3 would call it b1
    return chain(scale_by_sm3(momentum), scale_by_lr(lr))


@transform
def sign_sgd(lr: ScalarOrSchedule) -> GradientTransformation:
    """signSGD (Bernstein et al., 2018): ``p <- p - lr sign(g)``.

    ``chain(scale_by_sign(), scale_by_lr(lr))``, as optax's ``sign_sgd``.

    Example: ``gx.Optimizer(model.parameters(), gx.sign_sgd(1e-3))``.
    """
    return chain(scale_by_sign(), scale_by_lr(lr))


@transform
def signum(lr: ScalarOrSchedule, momentum: float = 0.9) -> GradientTransformation:
    """Signum (Bernstein et al., 2018, Algorithm 3): the sign of a momentum.

    ``m <- momentum m + (1-momentum) g``; ``p <- p - lr sign(m)``.
    ``chain(ema(momentum, debias=False), scale_by_sign(), scale_by_lr(lr))`` (optax has no signum).

    Example: ``gx.Optimizer(model.parameters(), gx.signum(1e-3))``.
    """
    check_beta("momentum", momentum)  # named here: ema would call it decay
    return chain(ema(momentum, debias=False), scale_by_sign(), scale_by_lr(lr))


@transform
def asgd(lr: float | torch.Tensor, lambd: float = 1e-4, alpha: float = 0.75, t0: float = 1e6,
         weight_decay: float = 0.0) -> GradientTransformation:
    """Averaged SGD (Polyak & Juditsky, 1992), equal to ``torch.optim.ASGD`` (same arguments
    and defaults; optax has none).

    ``g <- g + weight_decay * p``; ``eta_t = lr / (1 + lambd lr (t-1))^alpha``;
    ``p <- p - eta_t (g + lambd p)``. The average of the iterates from step ``t0`` on is kept in
    the state of ``scale_by_asgd`` (``ax``) and does not affect the parameters.

    ``chain(add_decayed_weights(weight_decay), scale_by_asgd(lr, lambd, alpha, t0), scale_by_lr(lr))``.
    When ``lr`` changes (a param group, an LR scheduler) both ``lr`` follow, and ``eta_t`` uses the
    new value at once (torch uses it from the next step on).

    Example: ``gx.Optimizer(model.parameters(), gx.asgd(1e-2))``.
    """
    return chain(add_decayed_weights(weight_decay), scale_by_asgd(lr, lambd, alpha, t0), scale_by_lr(lr))
