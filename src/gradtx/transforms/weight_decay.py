"""Weight decay variants beside :func:`gradtx.add_decayed_weights`: L1, relative, cautious,
and decay applied after the learning rate."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .. import _foreach as F  # noqa: N812
from .._hparams import check, to_state
from ..base import GradientTransformation, transform
from ._common import leaves, leaves_like, need_params, unflatten
from .gradient_aware import grad_leaves

__all__ = ["WeightDecayState", "add_cautious_decayed_weights", "add_l1_decay", "add_relative_decayed_weights",
           "decay_weights"]


class WeightDecayState(NamedTuple):
    """State of the weight decay variants: the coefficient, which ``gx.Optimizer`` shows as
    ``param_groups[i]["weight_decay"]`` (a scheduler or a per-group override drives it)."""

    weight_decay: torch.Tensor  # 0-dim float64


def _init_for(weight_decay):
    def init(params):
        del params
        return WeightDecayState(weight_decay=to_state(weight_decay))

    return init


def _param_leaves(name: str, params, treedef, inplace: bool) -> list[torch.Tensor]:
    # read with their autograd history on the pure path (a hypergradient through the params
    # that earlier updates moved), detached when writing in place, as add_decayed_weights
    need_params(name, params)
    ps = leaves_like(params, treedef, "params")
    return [p.detach() for p in ps] if inplace else ps


def _real(*lists):
    rv = F.RealViews(*lists)
    return (*rv.real, lambda out: rv.back(out)[0])


@transform(elementwise=True, inplace=True)
def add_l1_decay(weight_decay: float | torch.Tensor = 0.0) -> GradientTransformation:
    """L1 weight decay: ``u <- u + weight_decay * sign(p)`` (the subgradient of
    ``weight_decay * ||p||_1``; torchzero's ``WeightDecay(ord=1)``). Followed by
    ``scale_by_lr(lr)`` it moves each weight ``lr * weight_decay`` toward zero per step
    (and past it: no clipping at zero, as the subgradient rule).

    Example: ``gx.chain(gx.scale_by_adam(), gx.add_l1_decay(1e-4), gx.scale_by_lr(1e-3))``.
    """
    check("weight_decay", weight_decay, low=0.0)

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del extra_args
        us, treedef = leaves(updates)
        xs, ps, back = _real(us, _param_leaves("add_l1_decay", params, treedef, inplace))
        signs = F.mul(F.sign(ps), state.weight_decay, inplace=True)
        out = F.add(xs, F.cast_like(signs, xs), inplace=inplace)
        return unflatten(treedef, back(out)), state

    return GradientTransformation(_init_for(weight_decay), update)


_RELATIVE_TO = ("update", "grad", "params")


@transform(inplace=True)
def add_relative_decayed_weights(weight_decay: float | torch.Tensor = 0.1, relative_to: str = "update"
                                 ) -> GradientTransformation:
    """Weight decay relative to the size of the step (torchzero's ``RelativeWeightDecay``,
    L2, ``metric="mad"``): ``u <- u + weight_decay * s * p`` with ``s = mean(|x|)``, the mean
    absolute value over every element of every leaf of ``x``: the incoming update
    (``relative_to="update"``), the raw gradient (``"grad"``, needs ``grad``) or the
    parameters (``"params"``). The decay thus keeps its proportion to the update whatever the
    gradients' scale. A global statistic: not leafwise.

    Example: ``gx.chain(gx.scale_by_adam(), gx.add_relative_decayed_weights(0.1), gx.scale_by_lr(1e-3))``.
    """
    check("weight_decay", weight_decay, low=0.0)
    if relative_to not in _RELATIVE_TO:
        raise ValueError(f"relative_to must be one of {_RELATIVE_TO}, got {relative_to!r}")

    def update(updates, state, params=None, *, inplace=False, grad=None, **extra_args):
        del extra_args
        us, treedef = leaves(updates)
        if not us:
            return updates, state
        ps = _param_leaves("add_relative_decayed_weights", params, treedef, inplace)
        if relative_to == "update":
            src = us
        elif relative_to == "grad":
            src = grad_leaves("add_relative_decayed_weights", grad, updates, treedef)
        else:
            src = ps
        src = F.as_real(src)
        dtype = F.wide_dtype(*{x.dtype for x in src})
        device = src[0].device
        total = torch.stack([x.abs().sum(dtype=dtype).to(device) for x in src]).sum()
        scale = total / sum(x.numel() for x in src) * state.weight_decay.to(device)
        xs, rps, back = _real(us, ps)
        decay = [(p.to(dtype) * scale.to(p.device)).to(x.dtype) for p, x in zip(rps, xs)]
        out = F.add(xs, decay, inplace=inplace)
        return unflatten(treedef, back(out)), state

    return GradientTransformation(_init_for(weight_decay), update)


@transform(elementwise=True, inplace=True)
def add_cautious_decayed_weights(weight_decay: float | torch.Tensor = 0.0) -> GradientTransformation:
    """Cautious weight decay (Chen et al., 2025, "Cautious Weight Decay"): decoupled decay
    only where it agrees with the update.

    ``u <- u + weight_decay * 1[u * p >= 0] * p`` elementwise, with ``u`` the incoming update
    (the optimizer's direction, before the learning rate). Followed by ``scale_by_lr(lr)`` this
    is the paper's ``p <- p - lr (u + weight_decay 1[u p >= 0] p)``: a weight is shrunk only
    where the step already moves it toward zero.

    Example: ``gx.chain(gx.scale_by_adam(), gx.add_cautious_decayed_weights(0.1), gx.scale_by_lr(1e-3))``.
    """
    check("weight_decay", weight_decay, low=0.0)

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del extra_args
        us, treedef = leaves(updates)
        xs, ps, back = _real(us, _param_leaves("add_cautious_decayed_weights", params, treedef, inplace))
        decay = [torch.where(x * p.to(x.dtype) >= 0, p.to(x.dtype), torch.zeros((), dtype=x.dtype, device=x.device))
                 for x, p in zip(xs, ps)]
        F.mul(decay, state.weight_decay, inplace=True)
        out = F.add(xs, decay, inplace=inplace)
        return unflatten(treedef, back(out)), state

    return GradientTransformation(_init_for(weight_decay), update)


@transform(elementwise=True, inplace=True)
def decay_weights(weight_decay: float | torch.Tensor = 0.0) -> GradientTransformation:
    """Weight decay applied after the learning rate ("fully decoupled"; torchzero's
    ``DirectWeightDecay``): ``u <- u - weight_decay * p``.

    Put it after ``scale_by_lr``: the update then shrinks each weight by the factor
    ``1 - weight_decay`` per step, whatever the learning rate or its schedule
    (``p <- (1 - weight_decay) p - lr * step``), where ``add_decayed_weights`` before the
    learning rate gives ``1 - lr * weight_decay``. The sign is the decay's own: no negative
    coefficient to cancel ``scale_by_lr``'s minus.

    Example: ``gx.chain(gx.scale_by_adam(), gx.scale_by_lr(1e-3), gx.decay_weights(1e-4))``.
    """
    check("weight_decay", weight_decay, low=0.0)

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del extra_args
        us, treedef = leaves(updates)
        ps = _param_leaves("decay_weights", params, treedef, inplace)
        decayed = F.cast_like(F.mul(ps, state.weight_decay), us)
        out = F.sub(us, decayed, inplace=inplace)
        return unflatten(treedef, out), state

    return GradientTransformation(_init_for(weight_decay), update)
