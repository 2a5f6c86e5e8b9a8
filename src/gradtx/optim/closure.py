"""``step(closure)``: the closure as the pure evaluation functions transforms take.

torchzero's convention, which plain torch optimizers accept too: the closure takes a
``backward`` flag::

    def closure(backward=True):
        loss = loss_fn(model(x), y)
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

``backward=True`` computes the gradients, ``backward=False`` only evaluates. From it the
adapter builds what a chain's members receive (see ``gradtx.evaluation`` for the functional
forms): ``value_fn(params) -> loss``, ``value_and_grad_fn(params) -> (loss, grads)``,
``hvp_fn(params, v) -> Hv`` and ``batched_hvp_fn(params, vs) -> Hvs``, which set the
parameters to the trial values, call the closure, and put back the parameters and every
``.grad`` as they were, so to the chain they are pure. The Hessian-vector products are by
double backward: ``closure(backward=False)`` under grad mode gives the loss with its graph,
``torch.autograd.grad(loss, params, create_graph=True)`` the gradient with its own, and one
more ``torch.autograd.grad`` per vector the products (``batched_hvp_fn`` builds the graph
once for all its vectors; each ``hvp_fn`` call costs a forward and two backward passes, as
the parameters go back between calls and a graph cannot outlive them). They need the
``backward`` flag (a closure that runs its own ``backward()`` frees the graph); without it,
a transform's ``hvp_method="fd_central"`` builds them from ``value_and_grad_fn`` instead
(:func:`gradtx.hvp_from_grads`). A closure without the flag
(``def closure(): ...; loss.backward(); return loss``) works too: each evaluation then runs
its backward, whose gradients are dropped when only the loss was asked for.

Reusing the last evaluation (``gx.Optimizer(..., reuse_evaluations=True)``, the default): a
line search ends on a point it evaluated with gradients, which is where the next step starts.
As ``torch.optim.LBFGS`` reuses its line search's last evaluation for its next iteration, the
adapter keeps that evaluation (:class:`Kept`: the trial parameters, the loss and every
``.grad`` the closure left) when the step moved the parameters exactly there, and the next
``step`` takes it instead of calling the closure, when it is given the same closure object
and every parameter is still bitwise the kept trial value.
"""

from __future__ import annotations

import inspect
import operator
import weakref
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import torch

from .._tree import tree_flatten

__all__ = ["Evaluations", "Kept", "takes_backward"]


def takes_backward(closure: Callable[..., Any]) -> bool:
    """Whether ``closure`` takes the ``backward`` flag (by name, or through ``**kwargs``)."""
    try:
        parameters = inspect.signature(closure).parameters.values()
    except (TypeError, ValueError):  # a builtin or C callable: call it plainly
        return False
    return any(p.name == "backward" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


class Evaluations:
    """The closure of one ``step``: its first call, and the evaluation functions at other
    parameter values. ``stepped`` maps the chain's keys to the parameters it steps;
    ``everything`` is every parameter of the optimizer (whose ``.grad`` an evaluation must
    leave as it found it)."""

    def __init__(self, closure: Callable[..., Any], stepped: dict[Any, torch.Tensor],
                 everything: Iterable[torch.Tensor]) -> None:
        self.closure = closure
        self.flag = takes_backward(closure)
        self.stepped = stepped
        self.everything = list(everything)
        self._values: list[torch.Tensor] | None = None  # the parameters at the step's point
        self.evaluations = 0
        # the last evaluation with gradients: (trial values of the stepped params, loss, every .grad)
        self.last: tuple[list[torch.Tensor], Any, list[torch.Tensor | None]] | None = None

    def first(self, backward: bool = True) -> Any:
        """The closure at the current parameters, with gradients (or, ``backward=False``, for
        a chain that makes its own gradients, without): the loss ``step`` returns."""
        if not backward:
            with torch.no_grad():
                return self.closure(backward=False)
        with torch.enable_grad():
            return self.closure(backward=True) if self.flag else self.closure()

    def _set(self, new_params: Any) -> None:
        if self._values is None:  # kept once per step, put back after every evaluation
            self._values = [p.detach().clone() for p in self.stepped.values()]
        if isinstance(new_params, dict) and new_params.keys() == self.stepped.keys():
            values = [new_params[k] for k in self.stepped]
        else:
            values, _ = tree_flatten(new_params)
            if len(values) != len(self.stepped):
                raise ValueError(f"value_fn got {len(values)} tensors for {len(self.stepped)} parameters: give it a "
                                 "tree like the params the chain was given")
        with torch.no_grad():
            for p, v in zip(self.stepped.values(), values):
                p.copy_(v)

    def _restore(self) -> None:
        with torch.no_grad():
            for p, v in zip(self.stepped.values(), self._values):
                p.copy_(v)

    def _evaluate(self, new_params: Any, backward: bool) -> tuple[Any, list[torch.Tensor | None]]:
        """The loss (and the stepped parameters' gradients, with ``backward``) at ``new_params``;
        parameters and every ``.grad`` put back after."""
        self.evaluations += 1
        grads = [p.grad for p in self.everything]
        self._set(new_params)
        try:
            for p in self.everything:  # the closure's zero_grad and backward write fresh tensors
                p.grad = None
            if backward or not self.flag:
                with torch.enable_grad():
                    loss = self.closure(backward=True) if self.flag else self.closure()
                self._keep(loss)
            else:
                with torch.no_grad():
                    loss = self.closure(backward=False)
            new_grads = self.new_grads() if backward else []
        finally:
            for p, g in zip(self.everything, grads):
                p.grad = g
            self._restore()
        return self.reduced(loss), new_grads

    def _keep(self, loss: Any) -> None:
        """Keep this evaluation as :attr:`last`: a copy of the trial values (the member may
        reuse its tensors for the next trial), made in one set of buffers per step."""
        buffers = self.last[0] if self.last is not None else [torch.empty_like(p) for p in self.stepped.values()]
        with torch.no_grad():
            for b, p in zip(buffers, self.stepped.values()):
                b.copy_(p)  # p holds the trial value, in its own dtype, as the closure saw it
        self.last = (buffers, _detached(loss), [p.grad for p in self.everything])

    def new_grads(self) -> list[torch.Tensor | None]:
        """The stepped parameters' gradients the closure's backward just wrote."""
        return [p.grad for p in self.stepped.values()]

    def reduced(self, loss: Any) -> Any:
        """The loss as the chain sees it (detached; averaged over ranks where parameters are sharded)."""
        return _detached(loss)

    def value_fn(self, new_params: Any) -> Any:
        """The loss at ``new_params`` (a tree like the chain's params); nothing else changes."""
        return self._evaluate(new_params, backward=False)[0]

    def value_fn_for_chain(self) -> Callable[[Any], Any]:
        """:meth:`value_fn` as the function a chain gets: marked ``from_closure`` (``torch.func``
        cannot trace it) and offering ``at_offsets`` (:meth:`value_at_offsets`)."""

        def value_fn(new_params: Any) -> Any:
            return self.value_fn(new_params)

        value_fn.from_closure = True
        value_fn.at_offsets = self.value_at_offsets
        return value_fn

    def value_at_offsets(self, direction: Callable[[int, torch.Tensor], torch.Tensor],
                         scales: list[float]) -> list[Any]:
        """The loss at ``p + s * direction(i, p)`` for each ``s`` in ``scales``, evaluated by
        moving the stepped parameters in place (``p += (s - s_prev) direction(i, p)``) and moving
        them back after the last: ``direction`` must give the same values at every call (it is
        drawn again for each move, leaf by leaf, so nothing the size of the parameters is
        allocated). The parameters come back to within the round-off of the additions, not
        bitwise; every ``.grad`` is put back as it was. Needs the closure's ``backward`` flag."""
        if not self.flag:
            raise ValueError("evaluating without gradients needs a closure that takes the backward flag: "
                             "def closure(backward=True): ...")
        params = list(self.stepped.values())
        grads = [p.grad for p in self.everything]
        losses, at = [], 0.0
        try:
            for p in self.everything:
                p.grad = None
            for s in scales:
                self._move(params, direction, s - at)
                at = s
                self.evaluations += 1
                with torch.no_grad():
                    losses.append(_detached(self.closure(backward=False)))
        finally:
            self._move(params, direction, -at)
            for p, g in zip(self.everything, grads):
                p.grad = g
        return losses

    @staticmethod
    def _move(params: list[torch.Tensor], direction: Callable, alpha: float) -> None:
        if alpha == 0.0:
            return
        with torch.no_grad():
            for i, p in enumerate(params):
                z = direction(i, p)
                p.add_(z if z.dtype == p.dtype else z.to(p.dtype), alpha=alpha)
                del z

    def _leaves_like(self, tree: Any, what: str) -> list[torch.Tensor]:
        if isinstance(tree, dict) and tree.keys() == self.stepped.keys():
            leaves = [tree[k] for k in self.stepped]
        else:
            leaves, _ = tree_flatten(tree)
        if len(leaves) != len(self.stepped):
            raise ValueError(f"{what} got {len(leaves)} tensors for {len(self.stepped)} parameters: give it a tree "
                             "like the params the chain was given")
        return leaves

    def _hvps(self, new_params: Any, vectors: list[list[torch.Tensor]]) -> list[list[torch.Tensor]]:
        """``H v`` at ``new_params`` for each of ``vectors`` (lists in the order of the stepped
        parameters), by double backward through one graph; parameters and ``.grad`` put back."""
        if not self.flag:
            raise ValueError("hvp_fn under gx.Optimizer needs a closure that takes the backward flag "
                             "(def closure(backward=True): ...), whose closure(backward=False) returns the loss with "
                             "its graph; a closure that runs its own backward() frees it. Or give the transform "
                             "hvp_method='fd_central', which needs gradients only")
        self.evaluations += 1
        grads = [p.grad for p in self.everything]
        self._set(new_params)
        ps = list(self.stepped.values())
        try:
            for p in self.everything:
                p.grad = None
            with torch.enable_grad():
                loss = self.closure(backward=False)
                if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
                    raise ValueError(f"closure(backward=False) must return the loss as a one-element tensor, got "
                                     f"{type(loss).__name__}")
                if not loss.requires_grad:
                    raise ValueError("closure(backward=False) returned a loss without a graph (computed under "
                                     "torch.no_grad()?): hvp_fn differentiates it twice; or give the transform "
                                     "hvp_method='fd_central'")
                firsts = torch.autograd.grad(loss.reshape(()), ps, create_graph=True, allow_unused=True)
                # a gradient with no graph is constant in the parameters: its rows of H are 0
                live = [i for i, g in enumerate(firsts) if g is not None and g.requires_grad]
                out = []
                for j, v in enumerate(vectors):
                    products: list[torch.Tensor | None] = [None] * len(ps)
                    if live:
                        products = list(torch.autograd.grad(
                            [firsts[i] for i in live], ps, grad_outputs=[v[i].to(firsts[i].dtype) for i in live],
                            retain_graph=j < len(vectors) - 1, allow_unused=True))
                    out.append([torch.zeros_like(p) if hv is None else hv.detach().to(p.dtype)
                                for p, hv in zip(ps, products)])
        finally:
            for p, g in zip(self.everything, grads):
                p.grad = g
            self._restore()
        return out

    def hvp_fn(self, new_params: Any, v: Any) -> dict[Any, torch.Tensor]:
        """The Hessian of the loss at ``new_params`` times ``v`` (both trees like the chain's
        params), as a dict like the chain's params; nothing else changes."""
        vs = self._leaves_like(v, "hvp_fn's v")
        return dict(zip(self.stepped, self._hvps(new_params, [vs])[0]))

    def batched_hvp_fn(self, new_params: Any, vs: Any) -> dict[Any, torch.Tensor]:
        """``H vs[i]`` for every ``i``: ``vs`` like the chain's params with a leading batch
        dimension ``k`` on every leaf, the result a dict like the params with it too; one
        forward and one first backward for all ``k`` products."""
        leaves = self._leaves_like(vs, "batched_hvp_fn's vs")
        sizes = {x.shape[0] if x.dim() > 0 else None for x in leaves}
        shapes_ok = all(x.shape[1:] == p.shape for x, p in zip(leaves, self.stepped.values()))
        if len(sizes) != 1 or None in sizes or not shapes_ok:
            raise ValueError("batched_hvp_fn's vs must be shaped (k, *param.shape) on every leaf, one k, got "
                             f"{[tuple(x.shape) for x in leaves]}")
        k = sizes.pop()
        if k == 0:
            return {key: torch.zeros_like(x) for key, x in zip(self.stepped, leaves)}
        products = self._hvps(new_params, [[x[i] for x in leaves] for i in range(k)])
        return {key: torch.stack(col) for key, col in zip(self.stepped, zip(*products))}

    def value_and_grad_fn(self, new_params: Any) -> tuple[Any, dict[Any, torch.Tensor]]:
        """The loss and its gradient (a dict like the chain's params; zeros where a parameter
        gets none) at ``new_params``; nothing else changes."""
        loss, grads = self._evaluate(new_params, backward=True)
        return loss, {k: torch.zeros_like(p) if g is None else g
                      for (k, p), g in zip(self.stepped.items(), grads)}


class Kept(NamedTuple):
    """The closure's evaluation at the point a step moved to, for the next step's first call:
    a weak reference to the closure, the optimizer's parameters and the stepped ones (as the
    step saw them), their values there, the loss and every parameter's ``.grad`` after it."""

    closure: Any  # weakref.ref or weakref.WeakMethod
    everything: list[torch.Tensor]
    stepped: list[torch.Tensor]
    values: list[torch.Tensor]
    loss: Any
    grads: list[torch.Tensor | None]

    @staticmethod
    def after_step(evaluations: Evaluations) -> Kept | None:
        """The last evaluation with gradients of this step, if the step moved the stepped
        parameters bitwise onto its trial point (else ``None``)."""
        if evaluations.last is None:
            return None
        values, loss, grads = evaluations.last
        stepped = list(evaluations.stepped.values())
        if not _same_values(stepped, values):
            return None
        try:  # a bound method is made afresh at each attribute access: watch its object and function
            ref = (weakref.WeakMethod if inspect.ismethod(evaluations.closure) else weakref.ref)(evaluations.closure)
        except TypeError:  # an object without weak references: nothing to recognise it by
            return None
        return Kept(ref, evaluations.everything, stepped, values, loss, grads)

    def first(self, closure: Callable[..., Any], everything: list[torch.Tensor]) -> Any:
        """What ``closure(backward=True)`` would give now, without calling it: the kept loss,
        with every ``.grad`` set to a copy of the kept one; ``None`` (nothing set) unless
        ``closure`` is the kept closure and every parameter is where the evaluation was."""
        target = self.closure()
        same = target is closure or (inspect.ismethod(closure) and target == closure)
        if not same or len(everything) != len(self.everything) or not all(map(operator.is_, everything,
                                                                               self.everything)):
            return None
        if not _same_values(self.stepped, self.values):
            return None
        for p, g in zip(everything, self.grads):
            p.grad = None if g is None else g.clone()  # a member may keep the tensor it was given
        return self.loss


def _same_values(params: list[torch.Tensor], values: list[torch.Tensor]) -> bool:
    """Every parameter bitwise equal to its value (same shape and dtype)."""
    if len(params) != len(values):
        return False
    for p, v in zip(params, values):
        if not isinstance(v, torch.Tensor) or v.dtype != p.dtype or v.shape != p.shape or v.device != p.device:
            return False
        if not torch.equal(p.detach(), v):
            return False
    return True


def _detached(loss: Any) -> Any:
    return loss.detach() if isinstance(loss, torch.Tensor) else loss
