"""The loss along a line ``t -> f(p + t d)``: what every line search evaluates.

Values and slopes are Python floats (float64): a line search is a short scalar loop whose
decisions read them anyway. Dot products over the tree are each leaf's in its own precision
(at least float32, as torch.optim.LBFGS), summed in float64 (complex leaves as their real
views: ``Re <g, d>``).
"""

from __future__ import annotations

import math

import torch

from .._tree import Tree, TreeDef, flatten_up_to, tensor_leaves, tree_unflatten
from ..evaluation import make_value_and_grad_fn

NEEDS = "value_fn (params -> loss) or value_and_grad_fn (params -> (loss, grads))"


def real_view(x: torch.Tensor) -> torch.Tensor:
    return torch.view_as_real(x) if x.is_complex() else x


def same_precision(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` and ``y`` in their common dtype, at least float32 (a half-precision dot product
    would round every partial sum)."""
    dtype = torch.promote_types(torch.promote_types(x.dtype, y.dtype), torch.float32)
    return x.to(dtype), y.to(dtype)


def tree_dot(xs: list[torch.Tensor], ys: list[torch.Tensor]) -> float:
    """``Re <x, y>`` over all leaves: each leaf's in its own precision (at least float32, as
    torch.optim.LBFGS does), summed in float64."""
    total = 0.0
    for x, y in zip(xs, ys):
        if x.numel():
            total += float(torch.dot(*same_precision(real_view(x).reshape(-1), real_view(y).reshape(-1))))
    return total


def as_float(value, what: str) -> float:
    value = torch.as_tensor(value).detach()
    if value.numel() != 1:
        raise ValueError(f"{what} must be a scalar loss, got a tensor of shape {tuple(value.shape)}")
    return float(value.reshape(()).real.double())


def device_of(xs: list[torch.Tensor]) -> torch.device:
    return xs[0].device if xs else torch.device("cpu")


def running(value: float, like: list[torch.Tensor]) -> torch.Tensor:
    """A float64 0-dim state tensor on the params' device: running state, not a hyperparameter
    (the adapter reads a float 0-dim tensor made at ``init`` from no parameter as one)."""
    return torch.tensor(value, dtype=torch.float64, device=device_of(like))


def count(value: int, like: list[torch.Tensor]) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.int32, device=device_of(like))


class Line:
    """The loss along ``p + t d`` for the flattened ``params`` and direction ``updates``.

    ``value0``, ``grad0`` (leaves) and ``slope0 = <grad0, d>`` are at ``t = 0``; they come
    from the ``value`` and ``grad`` extra arguments, or from one call of
    ``value_and_grad_fn`` when either is missing. ``evaluations`` counts the calls made.
    """

    def __init__(self, name: str, updates: Tree, params: Tree | None, *, value=None, grad=None, value_fn=None,
                 value_and_grad_fn=None, need_grad_fn: bool = False):
        if params is None:
            raise ValueError(f"{name} needs params: call update(updates, state, params, ...)")
        self.name = name
        self.ds, self.treedef = tensor_leaves(updates)
        self.ps = flatten_up_to(params, self.treedef, "params")
        if value_and_grad_fn is None and value_fn is not None and need_grad_fn:
            # as optax, which differentiates value_fn: here with autograd on detached copies
            value_and_grad_fn = make_value_and_grad_fn(value_fn, backend="autograd")
        if value_fn is None and value_and_grad_fn is not None:
            def value_fn(p, _vg=value_and_grad_fn):
                return _vg(p)[0]
        if value_fn is None:
            raise ValueError(f"{name} needs the extra argument {NEEDS}: call update(updates, state, params, "
                             "value=loss, grad=grads, value_fn=..., value_and_grad_fn=...); with gx.Optimizer, "
                             "give step a closure: opt.step(closure), def closure(backward=True) -> loss")
        self.value_fn, self.value_and_grad_fn = value_fn, value_and_grad_fn
        self.evaluations = 0
        if value is None or grad is None:
            if value_and_grad_fn is None:
                missing = " and ".join(n for n, v in (("value", value), ("grad", grad)) if v is None)
                raise ValueError(f"{name} needs {missing} (the loss and gradient at params), or value_and_grad_fn "
                                 "to compute them: call update(updates, state, params, value=loss, grad=grads, "
                                 "value_fn=...)")
            value, grad = self.value_and_grad_fn(params)
            self.evaluations += 1
        self.value0 = as_float(value, "value")
        self.gs0 = flatten_up_to(grad, self.treedef, "grad", "the updates")
        self.slope0 = tree_dot(self.gs0, self.ds)

    def point(self, t: float) -> Tree:
        """``p + t d``, each leaf in its parameter's dtype."""
        return tree_unflatten([(p + t * d).to(p.dtype) for p, d in zip(self.ps, self.ds)], self.treedef)

    def value(self, t: float) -> float:
        self.evaluations += 1
        return as_float(self.value_fn(self.point(t)), "value_fn")

    def value_and_slope(self, t: float) -> tuple[float, float, list[torch.Tensor]]:
        """``f(p + t d)``, its slope ``<g, d>`` along ``d`` and the gradient's leaves there."""
        if self.value_and_grad_fn is None:
            raise ValueError(f"{self.name} needs the extra argument value_and_grad_fn (params -> (loss, grads)), or "
                             "value_fn to differentiate")
        self.evaluations += 1
        value, grad = self.value_and_grad_fn(self.point(t))
        gs = flatten_up_to(grad, self.treedef, "the gradient value_and_grad_fn returned", "the updates")
        return as_float(value, "value_and_grad_fn's loss"), tree_dot(gs, self.ds), [g.detach() for g in gs]

    def scaled(self, t: float) -> Tree:
        """The updates ``t d``, each in its own dtype."""
        return tree_unflatten([d * t for d in self.ds], self.treedef)


def nan_to_inf(x: float) -> float:
    return math.inf if math.isnan(x) else x


def nan_min(a: float, b: float) -> float:
    """``min`` propagating NaN, as ``jnp.minimum``."""
    return math.nan if math.isnan(a) or math.isnan(b) else min(a, b)


def nan_max(a: float, b: float) -> float:
    return math.nan if math.isnan(a) or math.isnan(b) else max(a, b)


def treedef_like(tree: Tree) -> TreeDef:
    return tensor_leaves(tree)[1]
