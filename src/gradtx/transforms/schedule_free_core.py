"""Schedule-free learning (Defazio et al., 2024): interpolate between a base step and its average.

The params hold ``y`` (where gradients are taken); the state holds ``z`` (the base
optimizer's iterate). The average ``x``, where the model should be evaluated, is not stored:
``x = (y - (1 - b1) z) / b1`` (:func:`schedule_free_eval_params`), as the authors' package
and optax.contrib keep it. A state that can give its evaluation parameters says so by the
methods ``eval_params(params)`` and ``train_params(eval_params)`` (the protocol
``gx.Optimizer.eval()`` / ``train()`` look for).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from .._foreach import wide_dtype
from .._hparams import ScalarOrSchedule, at, check, check_schedule, increment, is_schedule, new_count, to_state
from .._tree import Tree
from ..base import GradientTransformation, is_leafwise, supports_inplace, transform, updater
from ._common import first_device, leaves, leaves_like, need_params, unflatten

__all__ = ["ScheduleFreeState", "schedule_free", "schedule_free_eval_params", "schedule_free_train_params"]


class ScheduleFreeState(NamedTuple):
    """State of :func:`schedule_free`; ``eval_params``/``train_params`` convert between the
    training point ``y`` (the params) and the evaluation point ``x``."""

    count: torch.Tensor  # int32, steps taken
    lr: torch.Tensor  # 0-dim; param_groups[i]['lr'] (a schedule's current value when lr is one)
    b1: torch.Tensor  # 0-dim float64; param_groups[i]['b1']
    weight_sum: torch.Tensor  # 0-dim: sum of the averaging weights so far
    lr_max: torch.Tensor  # 0-dim: the largest learning rate seen
    z: Tree  # the base optimizer's iterate, shaped like params
    base_state: Any

    def eval_params(self, params: Tree) -> Tree:
        """``x = (y - (1 - b1) z) / b1`` for ``params = y`` (a tree like ``z``)."""
        ys, treedef = leaves(params)
        zs = leaves_like(self.z, treedef, "the state's z")
        b1 = self.b1
        return unflatten(treedef, [((y - (1 - b1.to(y.device)) * z) / b1.to(y.device)).to(y.dtype)
                                   for y, z in zip(ys, zs)])

    def train_params(self, eval_params: Tree) -> Tree:
        """``y = b1 x + (1 - b1) z`` for ``eval_params = x``: the inverse of :meth:`eval_params`."""
        xs, treedef = leaves(eval_params)
        zs = leaves_like(self.z, treedef, "the state's z")
        b1 = self.b1
        return unflatten(treedef, [(b1.to(x.device) * x + (1 - b1.to(x.device)) * z).to(x.dtype)
                                   for x, z in zip(xs, zs)])


def _find(state: Any) -> ScheduleFreeState:
    nodes = _schedule_free_nodes(state)
    if not nodes:
        raise ValueError("schedule_free_eval_params: the state holds no schedule-free state (build the optimizer "
                         "with gx.schedule_free, gx.schedule_free_sgd or gx.schedule_free_adamw)")
    if len(nodes) > 1:
        raise ValueError(f"schedule_free_eval_params: the state holds {len(nodes)} schedule-free states; "
                         "call node.eval_params(params) on the one meant")
    return nodes[0]


def _schedule_free_nodes(node: Any) -> list[Any]:
    """Every node of ``node`` with the evaluation protocol (``eval_params``, ``train_params``)."""
    if hasattr(node, "eval_params") and hasattr(node, "train_params") and hasattr(node, "_fields"):
        return [node]
    if isinstance(node, (list, tuple)):
        return [found for value in node for found in _schedule_free_nodes(value)]
    if isinstance(node, dict):
        return [found for value in node.values() for found in _schedule_free_nodes(value)]
    return []


def schedule_free_eval_params(state: Any, params: Tree) -> Tree:
    """The evaluation parameters ``x = (y - (1 - b1) z) / b1`` of a schedule-free optimizer
    whose state is ``state`` (found anywhere in a chain's state) and params ``y``, as
    ``optax.contrib.schedule_free_eval_params``. Pure: returns a new tree.

    Example::

        tx = gx.schedule_free_adamw(1e-3)
        ...
        loss = loss_fn(gx.schedule_free_eval_params(state, params))
    """
    return _find(state).eval_params(params)


def schedule_free_train_params(state: Any, eval_params: Tree) -> Tree:
    """The inverse of :func:`schedule_free_eval_params`: ``y = b1 x + (1 - b1) z``.

    Example: ``params = gx.schedule_free_train_params(state, gx.schedule_free_eval_params(state, params))``.
    """
    return _find(state).train_params(eval_params)


@transform(leafwise=lambda args: is_leafwise(args["base"]), inplace=lambda args: supports_inplace(args["base"]))
def schedule_free(base: GradientTransformation, lr: ScalarOrSchedule, b1: float = 0.9,
                  weight_lr_power: float = 2.0, r: float = 0.0) -> GradientTransformation:
    """Schedule-free wrapper (Defazio et al., 2024, "The Road Less Scheduled"), as
    ``optax.contrib.schedule_free`` and the authors' ``schedulefree`` package; needs ``params``.

    ``base`` gives the step of the iterate ``z`` (its learning rate included, e.g.
    ``chain(scale_by_adam(b1=0), scale_by_lr(lr))``), taken at the params ``y``. With ``k``
    the steps taken and ``lr_k`` the learning rate (``lr`` may be a schedule; give ``base``
    the same one):

    ``lr_max = max(lr_max, lr_k)``, ``w = (k + 1)^r lr_max^weight_lr_power``,
    ``W <- W + w``, ``c = w / W`` (0 while ``W = 0``);
    ``z' = z + base(g)``, ``x' = (1 - c) x + c z'``, ``y' = b1 x' + (1 - b1) z'``
    with ``x = (y - (1 - b1) z) / b1``; the update is
    ``y' - y = c (z - y) + (1 - b1 (1 - c)) base(g)``.

    Evaluate at ``x``: :func:`schedule_free_eval_params` functionally, ``opt.eval()`` /
    ``opt.train()`` under ``gx.Optimizer``. ``z`` keeps each param's dtype (optax's
    ``state_dtype`` is not offered); ``W`` and ``lr_max`` are float32 or wider.

    Example: ``gx.schedule_free(gx.chain(gx.scale_by_adam(b1=0.0), gx.scale_by_lr(1e-3)), 1e-3)``.
    """
    if not isinstance(base, GradientTransformation):
        raise ValueError(f"base must be a GradientTransformation, got {type(base).__name__}")
    scheduled = is_schedule(lr)
    if scheduled:
        check_schedule("lr", lr)
    else:
        check("lr", lr, low=0.0)
    check("b1", b1, low=0.0, high=1.0, low_open=True)
    check("weight_lr_power", weight_lr_power)
    check("r", r)
    run_base = updater(base)

    def init(params):
        ps, treedef = leaves(params)
        device = first_device(ps)
        dtype = wide_dtype(*{p.dtype for p in ps}) if ps else torch.float32
        dtype = dtype.to_real() if dtype.is_complex else dtype
        # made on the params' device: a running value, not a hyperparameter the adapter writes
        lr_state = torch.zeros((), dtype=torch.float64, device=device) if scheduled else to_state(lr)
        return ScheduleFreeState(
            count=new_count(), lr=lr_state, b1=to_state(b1),
            weight_sum=torch.zeros((), dtype=dtype, device=device),
            lr_max=torch.full((), -1.0, dtype=dtype, device=device),
            z=unflatten(treedef, [p.detach().clone() for p in ps]), base_state=base.init(params))

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        need_params("schedule_free", params)
        gs, treedef = leaves(updates)
        ys = leaves_like(params, treedef, "params")
        zs = leaves_like(state.z, treedef)
        lr_now = at(lr, state.count) if scheduled else state.lr
        if not isinstance(lr_now, torch.Tensor):  # a schedule's Python number, taken exactly
            lr_now = torch.tensor(float(lr_now), dtype=torch.float64)
        lr_now = lr_now.to(dtype=state.lr_max.dtype, device=state.lr_max.device)
        lr_max = torch.maximum(state.lr_max, lr_now)
        k1 = (state.count + 1).to(state.lr_max.dtype).to(state.lr_max.device)
        weight = k1 ** r * lr_max ** weight_lr_power
        weight_sum = state.weight_sum + weight
        nonzero = weight_sum != 0
        c = torch.where(nonzero, weight / torch.where(nonzero, weight_sum, torch.ones_like(weight_sum)),
                        torch.zeros_like(weight_sum))
        # the base may write into the updates (in place): only their dtypes are read after
        base_u, base_state = run_base(updates, state.base_state, params, inplace, extra_args)
        bs = leaves_like(base_u, treedef, "the base's updates")
        b1_ = state.b1
        out, new_z = [], []
        dtypes = [g.dtype for g in gs]
        for dtype, y, z, b in zip(dtypes, ys, zs, bs):
            wide = torch.promote_types(wide_dtype(y.dtype, z.dtype, b.dtype), y.dtype)  # complex stays so
            cw = c.to(y.device)
            kw = (1 - b1_ * (1 - c.to(b1_.dtype))).to(y.device)
            u = cw * (z.to(wide) - y.to(wide)) + kw * b.to(wide)
            out.append(u.to(dtype))
            new_z.append((z + b.to(wide)).to(z.dtype))
        lr_field = lr_now.to(state.lr.dtype).to(state.lr.device) if scheduled else state.lr
        return unflatten(treedef, out), ScheduleFreeState(
            increment(state.count, False), lr_field, state.b1, weight_sum, lr_max, unflatten(treedef, new_z),
            base_state)

    return GradientTransformation(init, update)
