"""``scipy.optimize`` behind the ``torch.optim.Optimizer`` interface: one ``step(closure)`` is
one whole scipy run on the parameters flattened into one float64 vector."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch

__all__ = ["ScipyMinimize"]

# scipy.optimize.minimize methods that take the gradient (jac=True: f returns (value, grad))
_GRADIENT_METHODS = {"cg", "bfgs", "newton-cg", "l-bfgs-b", "tnc", "slsqp", "trust-constr"}
_DERIVATIVE_FREE = {"nelder-mead", "powell", "cobyla", "cobyqa"}
_NEEDS_HESSIAN = {"dogleg", "trust-ncg", "trust-krylov", "trust-exact"}
# global methods: those that take bounds and no starting point of their own
_GLOBAL_WITH_BOUNDS = {"differential_evolution", "dual_annealing", "shgo", "direct"}
_GLOBAL = _GLOBAL_WITH_BOUNDS | {"basinhopping"}


def _scipy_optimize():
    try:
        from scipy import optimize
    except ImportError as e:  # scipy is an optional extra
        raise ImportError("gx.ScipyMinimize needs scipy: pip install gradtx[scipy] (or pip install scipy)") from e
    return optimize


def _takes_backward(closure: Callable) -> bool:
    try:
        parameters = inspect.signature(closure).parameters
    except (TypeError, ValueError):
        return False
    return "backward" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())


class ScipyMinimize(torch.optim.Optimizer):
    """``scipy.optimize.minimize`` (or one of scipy's global optimizers) as a
    ``torch.optim.Optimizer``: ``step(closure)`` runs the whole minimisation from the current
    parameters and writes the result back into them.

    The parameters of every group are flattened and concatenated into one float64 vector
    (a complex parameter as its real view); each evaluation writes a trial vector into the
    parameters (in their own dtype) and calls the closure. ``method`` is any of
    ``scipy.optimize.minimize``'s that need at most the gradient:

    - with the gradient (``loss.backward()`` in the closure, ``p.grad`` read; ``None`` as
      zeros): ``"CG"``, ``"BFGS"``, ``"Newton-CG"`` (Hessian products by scipy's finite
      differences of the gradient), ``"L-BFGS-B"`` (default), ``"TNC"``, ``"SLSQP"``,
      ``"trust-constr"``;
    - derivative-free: ``"Nelder-Mead"``, ``"Powell"``, ``"COBYLA"``, ``"COBYQA"``;
    - global, derivative-free: ``"differential_evolution"``, ``"dual_annealing"``, ``"shgo"``,
      ``"direct"`` (these need ``bounds``) and ``"basinhopping"`` (local steps by
      ``minimizer_kwargs``, by default L-BFGS-B with the gradient).

    The closure follows torchzero's and ``gx.Optimizer``'s convention: ``closure(backward=True)``
    zeroes the gradients, computes the loss and calls ``backward``; ``closure(backward=False)``
    only evaluates (used by the derivative-free methods, under ``torch.no_grad``). A plain
    ``closure()`` works too (it is then always called as written).

    ``bounds``: ``None``, a pair ``(low, high)`` for every element, a sequence of ``n`` pairs,
    or a ``scipy.optimize.Bounds``. Every other keyword argument goes to the scipy function
    (``tol``, ``options``, ``constraints``, ``callback``, ``seed``, ``maxiter``, ...).

    ``step`` returns the loss at the starting parameters (the first evaluation), as
    ``torch.optim.LBFGS`` does; the scipy ``OptimizeResult`` of the last step is
    ``self.result`` (``result.fun``: the final loss). After the step the parameters hold
    ``result.x``; ``.grad`` holds the gradient of the last evaluation, which scipy may have
    made elsewhere. The optimizer keeps no state between steps (each step is a fresh run).

    Needs scipy: ``pip install gradtx[scipy]``.

    Example::

        opt = gx.ScipyMinimize(model.parameters(), method="L-BFGS-B", options={"maxiter": 200})

        def closure(backward=True):
            loss = loss_fn(model(x), y)
            if backward:
                opt.zero_grad()
                loss.backward()
            return loss

        opt.step(closure)
    """

    def __init__(self, params: Iterable, method: str = "L-BFGS-B", *, bounds: Any = None, **kwargs: Any):
        self._optimize = _scipy_optimize()
        if not isinstance(method, str):
            raise ValueError(f"method must be the name of a scipy method (e.g. 'L-BFGS-B'), got {method!r}")
        key = method.lower()
        if key in _NEEDS_HESSIAN:
            raise ValueError(f"method {method!r} needs the Hessian, which ScipyMinimize does not compute; use one of "
                             f"{sorted(_GRADIENT_METHODS | _DERIVATIVE_FREE | _GLOBAL)}")
        if key not in _GRADIENT_METHODS | _DERIVATIVE_FREE | _GLOBAL:
            raise ValueError(f"method must be one of {sorted(_GRADIENT_METHODS | _DERIVATIVE_FREE | _GLOBAL)}, "
                             f"got {method!r}")
        if key in _GLOBAL_WITH_BOUNDS and bounds is None:
            raise ValueError(f"method {method!r} searches a box: give bounds=(low, high) or one pair per element")
        super().__init__(params, {"method": method})
        self.method, self._key, self.bounds, self.kwargs = method, key, bounds, kwargs
        self.result = None

    # --- the parameters as one vector ----------------------------------------------------------

    def _params(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def _views(self) -> list[torch.Tensor]:
        return [torch.view_as_real(p) if p.is_complex() else p for p in self._params()]

    def _get(self) -> np.ndarray:
        views = self._views()
        if not views:
            return np.zeros(0)
        return torch.cat([v.detach().reshape(-1).double().cpu() for v in views]).numpy()

    @torch.no_grad()
    def _set(self, x: np.ndarray) -> None:
        flat = torch.from_numpy(np.asarray(x, dtype=np.float64))
        offset = 0
        for v in self._views():
            piece = flat[offset:offset + v.numel()]
            v.copy_(piece.reshape(v.shape).to(dtype=v.dtype, device=v.device))
            offset += v.numel()

    def _grad(self) -> np.ndarray:
        pieces = []
        for p in self._params():
            g = p.grad
            if g is None:
                g = torch.zeros_like(p)
            if g.is_complex():
                g = torch.view_as_real(g)
            pieces.append(g.detach().reshape(-1).double().cpu())
        return torch.cat(pieces).numpy() if pieces else np.zeros(0)

    def _bounds(self, n: int):
        b = self.bounds
        if b is None or isinstance(b, self._optimize.Bounds):
            return b
        if (isinstance(b, (tuple, list)) and len(b) == 2 and all(v is None or np.isscalar(v) for v in b)):
            return [tuple(b)] * n
        b = list(b)
        if len(b) != n:
            raise ValueError(f"bounds must be a pair (low, high) or {n} pairs, one per element, got {len(b)}")
        return b

    # --- the step --------------------------------------------------------------------------------

    def step(self, closure: Callable | None = None):  # noqa: D102 - documented on the class
        if closure is None:
            raise ValueError("ScipyMinimize.step needs a closure that computes the loss "
                             "(closure(backward=True) also calls backward)")
        flag = _takes_backward(closure)
        first: list = []

        def value(x: np.ndarray) -> float:
            self._set(x)
            if flag:
                with torch.no_grad():
                    loss = closure(backward=False)
            else:  # a plain closure may call backward: it needs autograd on
                with torch.enable_grad():
                    loss = closure()
            if not first:
                first.append(loss)
            return float(loss.detach() if isinstance(loss, torch.Tensor) else loss)

        def value_and_grad(x: np.ndarray) -> tuple[float, np.ndarray]:
            self._set(x)
            with torch.enable_grad():
                loss = closure(backward=True) if flag else closure()
            if not first:
                first.append(loss)
            return float(loss.detach() if isinstance(loss, torch.Tensor) else loss), self._grad()

        x0 = self._get()
        opt, key, kwargs = self._optimize, self._key, dict(self.kwargs)
        bounds = self._bounds(x0.size)
        if key in _GRADIENT_METHODS:
            result = opt.minimize(value_and_grad, x0, jac=True, method=self.method, bounds=bounds, **kwargs)
        elif key in _DERIVATIVE_FREE:
            result = opt.minimize(value, x0, method=self.method, bounds=bounds, **kwargs)
        elif key == "basinhopping":
            minimizer = {"method": "L-BFGS-B", "jac": True, "bounds": bounds, **kwargs.pop("minimizer_kwargs", {})}
            fun = value_and_grad if minimizer.get("jac") is True else value
            result = opt.basinhopping(fun, x0, minimizer_kwargs=minimizer, **kwargs)
        else:
            if key == "dual_annealing":
                kwargs.setdefault("x0", x0)
            result = getattr(opt, key)(value, bounds, **kwargs)
        self._set(result.x)
        self.result = result
        loss = first[0] if first else None
        return loss.detach() if isinstance(loss, torch.Tensor) else loss
