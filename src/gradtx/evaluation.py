"""Evaluation functions: the loss and its gradient at any parameters, as pure functions.

Transforms that evaluate the loss again (line searches, L-BFGS, trust regions) take them as
extra arguments of ``update``, optax's vocabulary:

- ``value_fn(params) -> loss``: a scalar tensor;
- ``value_and_grad_fn(params) -> (loss, grads)``: ``grads`` a tree of the structure of
  ``params``, each gradient in its parameter's dtype and shape.

The contract, which the builders below keep and which hand-written functions must keep too:
they are **pure** (no ``.grad`` written, no parameter, buffer or input mutated, so a transform
may call them on as many trial points as it likes), ``params`` is a tree like the one given to
``update`` (they never read the model's own parameters), and the same ``params`` give the same
loss. Built on ``torch.func``, they also work under ``torch.func`` transforms (``vmap``,
``grad``).

Example::

    model = torch.nn.Linear(3, 1)
    x, y = torch.randn(8, 3), torch.randn(8, 1)
    loss_fn = gx.module_loss_fn(model, lambda out: ((out - y) ** 2).mean(), x)
    params = {k: v.detach() for k, v in model.named_parameters()}
    value, grads = gx.make_value_and_grad_fn(loss_fn)(params)  # model's .grad untouched
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ._tree import Tree, tree_map

__all__ = ["evaluation_args", "make_value_and_grad_fn", "make_value_fn", "module_loss_fn"]

ValueFn = Callable[[Tree], torch.Tensor]
ValueAndGradFn = Callable[[Tree], tuple[torch.Tensor, Tree]]


def _scalar(loss: Any, where: str) -> torch.Tensor:
    if not isinstance(loss, torch.Tensor):
        loss = torch.as_tensor(loss)
    if loss.numel() != 1:
        raise ValueError(f"{where} must return a scalar loss, got a tensor of shape {tuple(loss.shape)}")
    return loss.reshape(())


def make_value_fn(loss_fn: Callable[[Tree], torch.Tensor]) -> ValueFn:
    """``value_fn(params) -> loss`` from a loss function of the params: ``loss_fn`` itself,
    its result checked to be one number and returned as a 0-dim tensor.

    Pure as long as ``loss_fn`` is: it writes no ``.grad`` (it runs no backward). The loss
    keeps its autograd link to ``params`` (so ``torch.func.grad(value_fn)`` works).

    Example: ``value_fn = gx.make_value_fn(lambda p: (p["w"] ** 2).sum())``.
    """
    if not callable(loss_fn):
        raise ValueError(f"loss_fn must be a function params -> loss, got {type(loss_fn).__name__}")

    def value_fn(params: Tree) -> torch.Tensor:
        return _scalar(loss_fn(params), "loss_fn")

    return value_fn


def make_value_and_grad_fn(loss_fn: Callable[[Tree], torch.Tensor], *, backend: str = "func") -> ValueAndGradFn:
    """``value_and_grad_fn(params) -> (loss, grads)`` from a loss function of the params.

    ``loss`` is a detached 0-dim tensor, ``grads`` a tree of the structure of ``params``, each
    gradient in its parameter's dtype. Nothing is written to any ``.grad``: with
    ``backend="func"`` (the default) the gradient is ``torch.func.grad_and_value``'s, which
    composes with other ``torch.func`` transforms; ``backend="autograd"`` uses
    ``torch.autograd.grad`` on detached copies of ``params``, for a ``loss_fn`` that
    ``torch.func`` cannot trace (one that calls ``.item()`` or runs in-place on its inputs).

    Example::

        vg = gx.make_value_and_grad_fn(lambda p: (p["w"] ** 2).sum())
        loss, grads = vg({"w": torch.tensor([1.0, 2.0])})  # 5.0, {"w": tensor([2., 4.])}
    """
    if not callable(loss_fn):
        raise ValueError(f"loss_fn must be a function params -> loss, got {type(loss_fn).__name__}")
    if backend not in ("func", "autograd"):
        raise ValueError(f"backend must be 'func' or 'autograd', got {backend!r}")
    value_fn = make_value_fn(loss_fn)

    if backend == "func":
        grad_and_value = torch.func.grad_and_value(value_fn)

        def value_and_grad_fn(params: Tree) -> tuple[torch.Tensor, Tree]:
            grads, value = grad_and_value(params)
            return value, grads

        return value_and_grad_fn

    def autograd_value_and_grad_fn(params: Tree) -> tuple[torch.Tensor, Tree]:
        leaves = tree_map(lambda p: p.detach().requires_grad_(True), params)
        with torch.enable_grad():
            value = value_fn(leaves)
            flat = [p for p in torch.utils._pytree.tree_leaves(leaves)]
            grads = torch.autograd.grad(value, flat, allow_unused=True)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(flat, grads)]
        spec = torch.utils._pytree.tree_structure(leaves)
        return value.detach(), torch.utils._pytree.tree_unflatten(grads, spec)

    return autograd_value_and_grad_fn


def module_loss_fn(module: torch.nn.Module, loss: Callable[[Any], torch.Tensor], *args: Any,
                   **kwargs: Any) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
    """``loss_fn(params) = loss(module(*args, **kwargs))`` with the module's parameters
    replaced by ``params`` (a dict ``name -> tensor`` as ``module.named_parameters()`` names
    them; names left out keep the module's own), through ``torch.func.functional_call``. The
    module's buffers are used as they are (``functional_call`` with the module's
    ``named_buffers()``); a module that writes its buffers in ``forward`` (batch norm in
    training mode) is not pure: put it in ``eval()`` mode first.

    Example::

        loss_fn = gx.module_loss_fn(model, lambda out: torch.nn.functional.mse_loss(out, y), x)
        params = {k: v.detach() for k, v in model.named_parameters()}
        value_fn, value_and_grad_fn = gx.make_value_fn(loss_fn), gx.make_value_and_grad_fn(loss_fn)
    """
    if not isinstance(module, torch.nn.Module):
        raise ValueError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    if not callable(loss):
        raise ValueError(f"loss must be a function of the module's output, got {type(loss).__name__}")
    buffers = dict(module.named_buffers())

    def loss_fn(params: dict[str, torch.Tensor]) -> torch.Tensor:
        if not isinstance(params, dict):
            raise ValueError(f"params must be a dict name -> tensor (module.named_parameters()), got "
                             f"{type(params).__name__}")
        return loss(torch.func.functional_call(module, (params, buffers), args, kwargs))

    return loss_fn


def evaluation_args(loss_fn: Callable[[Tree], torch.Tensor], params: Tree, *, backend: str = "func") -> dict:
    """Every evaluation extra argument at ``params``: ``{"value", "grad", "value_fn",
    "value_and_grad_fn"}``, one evaluation of ``loss_fn`` with its gradient. Pass it on to
    ``update``: the gradient is also the usual first argument.

    Example::

        extra = gx.evaluation_args(loss_fn, params)
        updates, state = tx.update(extra["grad"], state, params, **extra)
    """
    value_and_grad_fn = make_value_and_grad_fn(loss_fn, backend=backend)
    value, grad = value_and_grad_fn(params)
    return {"value": value, "grad": grad, "value_fn": make_value_fn(loss_fn), "value_and_grad_fn": value_and_grad_fn}
