"""Members that make their own gradients, and what they hand the members after them.

A gradient-approximation member (finite differences, SPSA, MeZO, Gaussian smoothing, forward
gradients) computes its update from evaluations alone: it reads ``value_fn`` and ignores
the updates it is given. It keeps the usual ``update(updates, state, params, **extra_args)
-> (updates, state)`` contract and *declares* what it can hand on, with
:func:`declare_gradient_source`: a function ``source(state, extra_args) ->
value_and_grad_fn`` that gives, for the state the member was called with (its seed), the
loss and the approximated gradient at any params. A chain reads the declaration
(:func:`gradient_source`) and gives every member after such a member, in place of the
extra arguments it was called with:

- ``grad``: the approximated gradient at the step's params (the member's output, or
  ``value_and_grad_fn(params)`` when its output is not the gradient itself);
- ``value_and_grad_fn``: ``source(state, extra_args)``: at the step's params it returns
  that same gradient (the same seed draws the same perturbations);
- ``hvp_fn(params, v)``: central differences of that gradient along ``v``
  (:func:`gradtx.hvp_from_grads`, trial points ``HVP_STEP`` from ``x``), and
  ``batched_hvp_fn`` looping over it, so a Newton method after it is a zeroth-order Newton
  method (whatever its ``hvp_method``: the fd ones difference ``value_and_grad_fn``);
- ``value``: the loss at params (the one given, else one evaluation of ``value_fn``).

Nothing is guessed: a user's plain optax-style pair declares nothing and is called as
before. ``gx.Optimizer`` reads :func:`makes_gradients` to call the closure with
``backward=False`` only and to step parameters that have no ``.grad``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ._tree import Tree
from .base import GradientTransformation, describe
from .evaluation import batch_hvp, hvp_from_grads

__all__ = ["declare_gradient_source", "gradient_source", "handover_args", "makes_gradients"]

# The finite-difference step of the hand-over's hvp_fn (trial points HVP_STEP from x, whatever
# ||v||): torchzero's default for hvp_fd_central.
HVP_STEP = 1e-3

Source = Callable[[Any, dict], Callable[[Tree], tuple[torch.Tensor, Tree]]]


def declare_gradient_source(tx: GradientTransformation, source: Source, *, outputs_gradient: bool = True
                            ) -> GradientTransformation:
    """``tx`` declared a gradient source: ``source(state, extra_args)`` returns
    ``value_and_grad_fn(params) -> (loss, approximated gradient)`` for the state ``tx.update``
    was called with. ``outputs_gradient``: whether ``tx``'s update is that gradient itself (so
    the chain hands its output on as ``grad`` without evaluating again).

    Example::

        tx = gx.declare_gradient_source(gx.GradientTransformation(init, update),
                                        lambda state, extra: my_estimator(state, extra["value_fn"]))
    """
    attrs = dict(getattr(tx, "__dict__", {}))
    description = attrs.pop("description", repr(tx))
    attrs.update(gradient_source=source, outputs_gradient=outputs_gradient)
    return describe(GradientTransformation(tx.init, tx.update), description, **attrs)


def gradient_source(tx: GradientTransformation) -> Source | None:
    """The ``source`` ``tx`` declared (:func:`declare_gradient_source`), else ``None``."""
    return getattr(tx, "__dict__", {}).get("gradient_source")


def outputs_gradient(tx: GradientTransformation) -> bool:
    return bool(getattr(tx, "__dict__", {}).get("outputs_gradient", False))


def makes_gradients(tx: GradientTransformation) -> bool:
    """Whether ``tx`` or any part of it (a chain's member, a wrapper's inner transform)
    declares itself a gradient source: such a chain needs only ``value_fn``.

    Example: ``gx.makes_gradients(gx.chain(gx.spsa(), gx.scale_by_lr(0.1)))`` is true.
    """
    return _makes(tx, set())


def _makes(tx: Any, seen: set[int]) -> bool:
    if id(tx) in seen or not isinstance(tx, GradientTransformation):
        return False
    seen.add(id(tx))
    attrs = getattr(tx, "__dict__", {})
    if attrs.get("gradient_source") is not None:
        return True
    inner = list(attrs.get("parts", ())) + [attrs.get("grouped")]
    for value in attrs.get("args", {}).values():
        inner.extend(value.values() if isinstance(value, dict) else [value])
    return any(_makes(x, seen) for x in inner)


def handover_args(tx: GradientTransformation, state_before: Any, updates: Tree, params: Tree | None,
                  extra_args: dict) -> dict:
    """The extra arguments for the members after ``tx`` (a gradient source), which was called
    with ``state_before`` and returned ``updates`` (see the module docstring)."""
    source = gradient_source(tx)
    value_and_grad_fn = source(state_before, extra_args)
    if outputs_gradient(tx):
        grad = updates
        value = extra_args.get("value")
        if value is None and params is not None and extra_args.get("value_fn") is not None:
            value = extra_args["value_fn"](params)
    else:
        value, grad = value_and_grad_fn(params)
        value = extra_args.get("value", value)
    hvp_fn = hvp_from_grads(value_and_grad_fn, "fd_central", HVP_STEP)
    return {**extra_args, "value": value, "grad": grad, "value_and_grad_fn": value_and_grad_fn, "hvp_fn": hvp_fn,
            "batched_hvp_fn": batch_hvp(hvp_fn)}
