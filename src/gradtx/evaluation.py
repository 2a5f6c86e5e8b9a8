"""Evaluation functions: the loss and its gradient at any parameters, as pure functions.

Transforms that evaluate the loss again (line searches, L-BFGS, trust regions) take them as
extra arguments of ``update``, optax's vocabulary:

- ``value_fn(params) -> loss``: a scalar tensor;
- ``value_and_grad_fn(params) -> (loss, grads)``: ``grads`` a tree of the structure of
  ``params``, each gradient in its parameter's dtype and shape;
- ``hvp_fn(params, v) -> Hv``: the Hessian of the loss at ``params`` times ``v``, ``v`` and
  ``Hv`` trees like ``params`` (each leaf in its parameter's dtype), for methods that need
  curvature (Newton-CG, Sophia, ...);
- ``batched_hvp_fn(params, vs) -> Hvs``: the same for several vectors at once, every leaf of
  ``vs`` and ``Hvs`` with a leading batch dimension ``k`` (``Hvs[i] = H vs[i]``). It is
  optional: a transform that needs several products uses it when given and otherwise
  loops over ``hvp_fn`` (:func:`batch_hvp` builds that loop), so a hand-written ``hvp_fn``
  alone is enough.

The contract, which the builders below keep and which hand-written functions must keep too:
they are **pure** (no ``.grad`` written, no parameter, buffer or input mutated, so a transform
may call them on as many trial points as it likes), ``params`` is a tree like the one given to
``update`` (they never read the model's own parameters), and the same ``params`` give the same
loss. Built on ``torch.func``, they also work under ``torch.func`` transforms (``vmap``,
``grad``).

Where Hessian-vector products come from:

- functionally, :func:`make_hvp_fn` (``method="forward"``: forward-over-reverse,
  ``torch.func.jvp`` of ``torch.func.grad``, exact and the cheapest; ``"autograd"``:
  reverse-over-reverse; ``"fd_forward"`` / ``"fd_central"``: finite differences of gradients);
- under ``gx.Optimizer.step(closure)``, the adapter passes ``hvp_fn`` and ``batched_hvp_fn``
  built from the closure by double backward (``closure(backward=False)`` under grad mode,
  ``torch.autograd.grad(..., create_graph=True)``, then the vector product);
- anywhere a ``value_and_grad_fn`` is, :func:`hvp_from_grads` builds the finite-difference
  forms from it (no second derivatives needed: a closure without the ``backward`` flag, a
  gradient approximation, a loss ``torch.func`` cannot trace).

Which one a transform uses is the transform's choice, torchzero's ``hvp_method`` argument:
``"autograd"`` (the default) calls the ``hvp_fn`` it is given, ``"fd_forward"`` /
``"fd_central"`` build one from ``value_and_grad_fn`` with :func:`hvp_from_grads` and step
``h`` (see :func:`curvature_fns`, the one helper transforms call).

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

__all__ = ["HVP_METHODS", "batch_hvp", "curvature_fns", "evaluation_args", "hvp_from_grads", "make_hvp_fn",
           "make_value_and_grad_fn", "make_value_fn", "module_loss_fn"]

ValueFn = Callable[[Tree], torch.Tensor]
ValueAndGradFn = Callable[[Tree], tuple[torch.Tensor, Tree]]
HvpFn = Callable[[Tree, Tree], Tree]

#: ``make_hvp_fn``'s methods; transforms take ``"autograd"`` (the given ``hvp_fn``) or the two
#: finite-difference ones (torchzero's ``hvp_method`` names).
HVP_METHODS = ("forward", "autograd", "fd_forward", "fd_central")


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


def _check_h(h: Any) -> float:
    if isinstance(h, bool) or not isinstance(h, (int, float)) or not h > 0 or h != h or h == float("inf"):
        raise ValueError(f"h must be a positive finite number (the finite-difference step), got {h!r}")
    return float(h)


def _check_method(method: Any, allowed: tuple[str, ...], argument: str = "method") -> str:
    if method not in allowed:
        raise ValueError(f"{argument} must be one of {', '.join(repr(m) for m in allowed)}, got {method!r}")
    return method


def _global_norm(leaves: list[torch.Tensor]) -> torch.Tensor:
    dtype = torch.float32
    for x in leaves:
        dtype = torch.promote_types(dtype, x.real.dtype if x.is_complex() else x.dtype)
    if not leaves:
        return torch.zeros((), dtype=dtype)
    return torch.sqrt(sum(torch.sum(torch.abs(x.to(dtype)) ** 2) for x in leaves))


class _GradAt:
    """The gradient at the last ``params`` asked for, kept while those very tensors are
    unchanged (same objects, same version counters): ``fd_forward`` needs ``g(x)`` once for
    every product at ``x``. The tensors are held, so their ``id`` cannot be reused."""

    def __init__(self, value_and_grad_fn: ValueAndGradFn) -> None:
        self.value_and_grad_fn = value_and_grad_fn
        self.key: tuple | None = None
        self.leaves: list[Any] = []
        self.grad: Any = None

    def __call__(self, params: Tree) -> Any:
        leaves = torch.utils._pytree.tree_leaves(params)
        key = tuple(getattr(x, "_version", None) for x in leaves)
        if (self.key is None or key != self.key or len(leaves) != len(self.leaves)
                or any(a is not b for a, b in zip(leaves, self.leaves))):
            self.grad = self.value_and_grad_fn(params)[1]
            self.key, self.leaves = key, leaves
        return self.grad


def hvp_from_grads(value_and_grad_fn: ValueAndGradFn, method: str = "fd_central", h: float = 1e-3) -> HvpFn:
    """``hvp_fn(params, v)`` by finite differences of the gradient (torchzero's
    ``hvp_fd_forward`` / ``hvp_fd_central``, with its normalised step):

    - ``"fd_forward"``: ``Hv ~ (g(x + e v) - g(x)) / e``, one gradient per product (``g(x)``
      is kept while ``params`` is the same unchanged tensors), error ``O(h)``;
    - ``"fd_central"`` (default): ``Hv ~ (g(x + e v) - g(x - e v)) / (2 e)``, two gradients
      per product, error ``O(h^2)``;

    with ``e = h / ||v||`` (the trial points are ``h`` from ``x`` whatever the scale of
    ``v``); ``v = 0`` gives ``Hv = 0``. Default ``h = 1e-3`` (torchzero's), fine in float32
    and float64. Only gradients are needed, so it works from a closure without the
    ``backward`` flag, a gradient approximation, or any ``value_and_grad_fn``.

    Example::

        hvp_fn = gx.hvp_from_grads(gx.make_value_and_grad_fn(loss_fn), "fd_central", h=1e-4)
        hv = hvp_fn(params, v)
    """
    if not callable(value_and_grad_fn):
        raise ValueError(f"value_and_grad_fn must be a function params -> (loss, grads), got "
                         f"{type(value_and_grad_fn).__name__}")
    _check_method(method, ("fd_forward", "fd_central"))
    h = _check_h(h)
    grad_at = _GradAt(value_and_grad_fn) if method == "fd_forward" else None
    flatten, unflatten = torch.utils._pytree.tree_flatten, torch.utils._pytree.tree_unflatten

    def fd_hvp_fn(params: Tree, v: Tree) -> Tree:
        ps, spec = flatten(params)
        vs = _like(v, ps, spec, "v")
        norm = _global_norm(vs)
        if not bool(norm > 0):
            return unflatten([torch.zeros_like(p) for p in ps], spec)
        e = h / norm

        def grad(sign: float) -> list[torch.Tensor]:
            shifted = [(p + (sign * e).to(p.real.dtype if p.is_complex() else p.dtype) * x).to(p.dtype)
                       for p, x in zip(ps, vs)]
            return _leaves_in(value_and_grad_fn(unflatten(shifted, spec))[1], spec, "value_and_grad_fn's grads")

        plus = grad(1.0)
        if grad_at is not None:
            base, denominator = _leaves_in(grad_at(params), spec, "value_and_grad_fn's grads"), e
        else:
            base, denominator = grad(-1.0), 2 * e
        return unflatten([((a - b) / denominator.to(a.real.dtype if a.is_complex() else a.dtype)).to(p.dtype)
                          for a, b, p in zip(plus, base, ps)], spec)

    return fd_hvp_fn


def _leaves_in(tree: Tree, spec: Any, what: str) -> list[Any]:
    """The leaves of ``tree`` in the order of ``spec``'s (a dict built in another key order
    gives its leaves in ``spec``'s order)."""
    try:
        return spec.flatten_up_to(tree)
    except (ValueError, TypeError):
        raise ValueError(f"{what} must be a tree like params") from None


def _like(v: Tree, ps: list[torch.Tensor], spec: Any, what: str) -> list[torch.Tensor]:
    """The leaves of ``v``, a tree like params (or just as many leaves in the same order)."""
    try:
        vs = spec.flatten_up_to(v)
    except (ValueError, TypeError):
        vs, _ = torch.utils._pytree.tree_flatten(v)
    if len(vs) != len(ps):
        raise ValueError(f"{what} must be a tree like params ({len(ps)} tensors), got {len(vs)} tensors")
    for x, p in zip(vs, ps):
        if not isinstance(x, torch.Tensor) or x.shape != p.shape:
            raise ValueError(f"{what} must be a tree like params, each leaf of its parameter's shape; got "
                             f"{tuple(getattr(x, 'shape', ()))} for a parameter of shape {tuple(p.shape)}")
    return vs


def make_hvp_fn(loss_fn: Callable[[Tree], torch.Tensor], *, method: str = "forward", h: float = 1e-3,
                batched: bool = False) -> HvpFn:
    """``hvp_fn(params, v) -> Hv`` from a loss function of the params: the Hessian of
    ``loss_fn`` at ``params`` times ``v`` (a tree like ``params``), pure like
    :func:`make_value_and_grad_fn`.

    ``method`` (names after torchzero's ``hvp_method``):

    - ``"forward"`` (default): forward-over-reverse, ``torch.func.jvp(torch.func.grad(f),
      (params,), (v,))``; exact, about the cost of two gradients;
    - ``"autograd"``: reverse-over-reverse, ``torch.func.vjp`` of ``torch.func.grad``
      (exact; ``H`` is symmetric, so ``v^T H = (H v)^T``), for ops without forward-mode AD;
    - ``"fd_forward"`` / ``"fd_central"``: finite differences of gradients with step ``h``
      (see :func:`hvp_from_grads`).

    ``batched=True`` gives ``batched_hvp_fn(params, vs)`` instead: every leaf of ``vs`` has a
    leading batch dimension ``k``, and so has the result (``torch.func.vmap`` over the
    vectors for the exact methods, a loop for finite differences).

    Example::

        hvp_fn = gx.make_hvp_fn(lambda p: (p["w"] ** 4).sum())
        hvp_fn({"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([1.0, 1.0])})  # {"w": [12., 48.]}
    """
    if not callable(loss_fn):
        raise ValueError(f"loss_fn must be a function params -> loss, got {type(loss_fn).__name__}")
    _check_method(method, HVP_METHODS)
    h = _check_h(h)
    if not isinstance(batched, bool):
        raise ValueError(f"batched must be a bool, got {batched!r}")
    value_fn = make_value_fn(loss_fn)
    if method in ("fd_forward", "fd_central"):
        fd = hvp_from_grads(make_value_and_grad_fn(loss_fn), method, h)
        return batch_hvp(fd) if batched else fd
    grad_fn = torch.func.grad(value_fn)

    if method == "forward":
        def exact_hvp_fn(params: Tree, v: Tree) -> Tree:
            ps, spec = torch.utils._pytree.tree_flatten(params)
            v = torch.utils._pytree.tree_unflatten(_like(v, ps, spec, "v"), spec)
            return torch.func.jvp(grad_fn, (params,), (v,))[1]
    else:
        def exact_hvp_fn(params: Tree, v: Tree) -> Tree:
            ps, spec = torch.utils._pytree.tree_flatten(params)
            v = torch.utils._pytree.tree_unflatten(_like(v, ps, spec, "v"), spec)
            return torch.func.vjp(grad_fn, params)[1](v)[0]

    if not batched:
        return exact_hvp_fn
    vmapped = torch.func.vmap(exact_hvp_fn, in_dims=(None, 0))

    def batched_exact_hvp_fn(params: Tree, vs: Tree) -> Tree:
        _batch_size(vs, params)
        return vmapped(params, vs)

    return batched_exact_hvp_fn


def _batch_size(vs: Tree, params: Tree) -> int:
    ps, spec = torch.utils._pytree.tree_flatten(params)
    leaves = _batched_leaves(vs, spec)
    if len(leaves) != len(ps):
        raise ValueError(f"vs must be a tree like params ({len(ps)} tensors) with a leading batch dimension, got "
                         f"{len(leaves)} tensors")
    sizes = {x.shape[0] if isinstance(x, torch.Tensor) and x.dim() > 0 else None for x in leaves}
    if len(sizes) != 1 or None in sizes:
        raise ValueError("vs must have a leading batch dimension of one size on every leaf, got shapes "
                         f"{[tuple(getattr(x, 'shape', ())) for x in leaves]}")
    for x, p in zip(leaves, ps):
        if x.shape[1:] != p.shape:
            raise ValueError(f"vs leaves must be shaped (k, *param.shape); got {tuple(x.shape)} for a parameter of "
                             f"shape {tuple(p.shape)}")
    return sizes.pop()


def _batched_leaves(vs: Tree, spec: Any) -> list[torch.Tensor]:
    try:
        return spec.flatten_up_to(vs)
    except (ValueError, TypeError):
        return torch.utils._pytree.tree_flatten(vs)[0]


def batch_hvp(hvp_fn: HvpFn) -> HvpFn:
    """``batched_hvp_fn(params, vs)`` from ``hvp_fn``: one product per vector, stacked.
    ``vs`` is a tree like ``params`` with a leading batch dimension ``k`` on every leaf; so is
    the result (``out[i] = H vs[i]``). What transforms fall back on when no
    ``batched_hvp_fn`` is given.

    Example::

        bh = gx.batch_hvp(hvp_fn)
        hvs = bh(params, {"w": torch.eye(2)})  # the Hessian's rows, for a 2-vector w
    """
    if not callable(hvp_fn):
        raise ValueError(f"hvp_fn must be a function (params, v) -> Hv, got {type(hvp_fn).__name__}")

    def looped_hvp_fn(params: Tree, vs: Tree) -> Tree:
        k = _batch_size(vs, params)
        pspec = torch.utils._pytree.tree_structure(params)
        leaves = _batched_leaves(vs, pspec)
        outs = [_leaves_in(hvp_fn(params, torch.utils._pytree.tree_unflatten([x[i] for x in leaves], pspec)), pspec,
                           "hvp_fn's result") for i in range(k)]
        if k == 0:
            return torch.utils._pytree.tree_unflatten([torch.zeros_like(x) for x in leaves], pspec)
        return torch.utils._pytree.tree_unflatten([torch.stack(col) for col in zip(*outs)], pspec)

    return looped_hvp_fn


def curvature_fns(hvp_method: str, h: float, extra: dict, where: str) -> tuple[HvpFn, HvpFn]:
    """What a transform taking ``hvp_method`` (and ``h``) calls: ``(hvp_fn, batched_hvp_fn)``
    from its extra arguments ``extra``. ``"autograd"``: the given ``hvp_fn`` (and
    ``batched_hvp_fn``, or a loop over ``hvp_fn``); ``"fd_forward"`` / ``"fd_central"``:
    :func:`hvp_from_grads` of the given ``value_and_grad_fn``. A missing argument raises
    ``ValueError`` naming ``where`` (the transform) and what to pass.

    Example (inside an ``update``)::

        hvp_fn, batched_hvp_fn = gx.curvature_fns(hvp_method, h, extra_args, "newton_cg")
    """
    if hvp_method == "autograd":
        hvp_fn = extra.get("hvp_fn")
        if hvp_fn is None:
            raise ValueError(f"{where} with hvp_method='autograd' needs hvp_fn (params, v) -> Hv: call update(..., "
                             "hvp_fn=gx.make_hvp_fn(loss_fn)), or step(closure) under gx.Optimizer, or use "
                             "hvp_method='fd_central' with a value_and_grad_fn")
        batched = extra.get("batched_hvp_fn")
        return hvp_fn, batch_hvp(hvp_fn) if batched is None else batched
    value_and_grad_fn = extra.get("value_and_grad_fn")
    if value_and_grad_fn is None:
        raise ValueError(f"{where} with hvp_method={hvp_method!r} needs value_and_grad_fn params -> (loss, grads): "
                         "call update(..., value_and_grad_fn=gx.make_value_and_grad_fn(loss_fn)), or "
                         "step(closure) under gx.Optimizer")
    fd = hvp_from_grads(value_and_grad_fn, hvp_method, h)
    return fd, batch_hvp(fd)


def evaluation_args(loss_fn: Callable[[Tree], torch.Tensor], params: Tree, *, backend: str = "func",
                    hvp_method: str = "forward", h: float = 1e-3) -> dict:
    """Every evaluation extra argument at ``params``: ``{"value", "grad", "value_fn",
    "value_and_grad_fn", "hvp_fn", "batched_hvp_fn"}``, one evaluation of ``loss_fn`` with its
    gradient (the Hessian-vector functions, from :func:`make_hvp_fn` with ``hvp_method`` and
    ``h``, evaluate only when called). Pass it on to ``update``: the gradient is also the
    usual first argument.

    Example::

        extra = gx.evaluation_args(loss_fn, params)
        updates, state = tx.update(extra["grad"], state, params, **extra)
    """
    value_and_grad_fn = make_value_and_grad_fn(loss_fn, backend=backend)
    value, grad = value_and_grad_fn(params)
    return {"value": value, "grad": grad, "value_fn": make_value_fn(loss_fn), "value_and_grad_fn": value_and_grad_fn,
            "hvp_fn": make_hvp_fn(loss_fn, method=hvp_method, h=h),
            "batched_hvp_fn": make_hvp_fn(loss_fn, method=hvp_method, h=h, batched=True)}
