"""Matrix momentum (Orr & Leen, 1997, "Using curvature information for fast stochastic
search"): heavy-ball momentum whose scalar momentum is replaced by the matrix ``I - mu H``."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from .._hparams import check, check_int, increment, new_count
from .._tree import Tree, tensor_leaves, tree_unflatten
from ..base import GradientTransformation, transform
from ..evaluation import curvature_fns
from ..transforms._common import leaves_like, need_params, refuse_complex

__all__ = ["MatrixMomentumState", "matrix_momentum"]


class MatrixMomentumState(NamedTuple):
    count: torch.Tensor  # int32, steps taken
    # float64 0-dim on the params' device: the adaptive factor ||s|| / ||y|| (1 when not
    # adaptive); a running value there, not a hyperparameter gx.Optimizer would write
    mu_scale: torch.Tensor
    prev_params: Tree  # the params of the previous step
    prev_grad: Tree  # the previous step's gradient (adaptive without adapt_interval); else ()


def _norm(xs: list[torch.Tensor]) -> torch.Tensor:
    if not xs:
        return torch.zeros((), dtype=torch.float64)
    return torch.sqrt(sum(x.double().square().sum().cpu() for x in xs))


def _first_step_scale(us: list[torch.Tensor]) -> torch.Tensor:
    """torchzero's first step: scale ``us`` by ``1 / ||us||_1``, at most 1 and at least what
    keeps its largest entry above ``1e-7`` (torch L-BFGS's first step)."""
    full = [u.double().abs() for u in us if u.numel()]
    if not full:
        return torch.ones((), dtype=torch.float64)
    total = sum(u.sum().cpu() for u in full)
    largest = torch.stack([u.max().cpu() for u in full]).max()
    floor = 1e-7 / largest  # torchzero takes max(1e-7, machine eps); one constant keeps leaves' dtypes apart
    if bool(floor >= 1):
        return torch.ones((), dtype=torch.float64)
    return torch.clamp(torch.maximum(1.0 / total, floor), max=1.0)


@transform(inplace=True)
def matrix_momentum(lr: float, mu: float = 0.1, *, adaptive: bool = False, adapt_interval: int | None = None,
                    hvp_method: str = "autograd", h: float = 1e-3) -> GradientTransformation:
    """Matrix momentum (Orr & Leen, 1997), torchzero's ``MatrixMomentum`` with its adaptive form.

    With ``s = x_t - x_{t-1}`` the last step the params took (kept in the state as the
    previous params) and ``H`` the Hessian at ``x_t``:
    ``u <- -lr g + s - mu_t H s``, i.e. ``x_{t+1} - x_t = (I - mu_t H) s - lr g``: the momentum
    matrix ``I - mu H`` damps each curvature direction by its own eigenvalue. The first step
    (no ``s`` yet) is ``-lr g`` scaled down to length about 1 in the l1 norm (torchzero's
    small first step). ``mu`` plays the part of ``1 - beta``; it must stay below
    ``1 / lambda_max(H)``.

    ``adaptive=True`` sets ``mu_t = mu ||s|| / ||y||``, ``y`` the change of the gradient over
    ``s`` (a secant estimate of ``1/lambda``, torchzero's ``adaptive``): from the previous
    step's gradient (deterministic objectives; ``adapt_interval=None``), or, every
    ``adapt_interval`` steps, from the gradient at ``x_{t-1}`` evaluated now through
    ``value_and_grad_fn`` (the current mini-batch: stochastic objectives). The factor is kept
    between adaptations.

    ``H s`` comes from the extra argument ``hvp_fn`` (``hvp_method="autograd"``) or finite
    differences of ``value_and_grad_fn`` (``"fd_forward"``/``"fd_central"``, step ``h``).
    ``g`` is the incoming update; ``lr`` is part of the rule (``s`` is in parameter units),
    so this ends a chain: no ``scale_by_lr`` after it.

    Example: ``gx.Optimizer(model.parameters(), gx.matrix_momentum(1e-2, mu=0.1, adaptive=True))``,
    stepped with a closure.
    """
    check("lr", lr, low=0.0)
    check("mu", mu, low=0.0)
    if not isinstance(adaptive, bool):
        raise ValueError(f"adaptive must be a bool, got {adaptive!r}")
    if adapt_interval is not None:
        check_int("adapt_interval", adapt_interval, low=1)
        if not adaptive:
            raise ValueError("adapt_interval is for adaptive=True (it sets how often mu adapts); got adaptive=False")
    if hvp_method not in ("autograd", "fd_forward", "fd_central"):
        raise ValueError(f"hvp_method must be 'autograd', 'fd_forward' or 'fd_central', got {hvp_method!r}")
    check("h", h, low=0.0, low_open=True)
    keeps_grad = adaptive and adapt_interval is None

    def init(params):
        refuse_complex("matrix_momentum", params, "a real Hessian's curvature directions")
        ps, treedef = tensor_leaves(params)
        prev = tree_unflatten([p.detach().clone() for p in ps], treedef)
        grads = tree_unflatten([torch.zeros_like(p) for p in ps], treedef) if keeps_grad else ()
        device = ps[0].device if ps else None
        return MatrixMomentumState(new_count(), torch.ones((), dtype=torch.float64, device=device), prev, grads)

    def update(updates, state, params=None, *, inplace=False, **extra_args: Any):
        del inplace  # it allocates: writes into nothing it is given, returns fresh tensors
        need_params("matrix_momentum", params)
        us, treedef = tensor_leaves(updates)
        ps = leaves_like(params, treedef, "params")
        grads = leaves_like(extra_args["grad"], treedef, "grad") if extra_args.get("grad") is not None else us
        prevs = leaves_like(state.prev_params, treedef)
        prev_grads = leaves_like(state.prev_grad, treedef) if keeps_grad else []
        count = increment(state.count, False)
        step = int(count)
        new_prevs = [p.clone() for p in ps]
        mu_scale = state.mu_scale
        if step == 1:
            scale = _first_step_scale([u.double() * lr for u in us])
            out = [(-lr * u.double() * scale).to(u.dtype) for u in us]
            if keeps_grad:
                prev_grads = [g.clone().to(x.dtype) for g, x in zip(grads, prev_grads)]
            return tree_unflatten(out, treedef), MatrixMomentumState(
                count, mu_scale, tree_unflatten(new_prevs, treedef),
                tree_unflatten(prev_grads, treedef) if keeps_grad else ())
        hvp_fn, _ = curvature_fns(hvp_method, h, extra_args, "matrix_momentum")
        ss = [p - q for p, q in zip(ps, prevs)]
        hss = leaves_like(hvp_fn(tree_unflatten(ps, treedef), tree_unflatten(ss, treedef)), treedef,
                          "hvp_fn's result")
        if keeps_grad:
            ys = [g - q for g, q in zip(grads, prev_grads)]
            prev_grads = [g.clone().to(x.dtype) for g, x in zip(grads, prev_grads)]
            mu_scale = _secant(ss, ys).to(state.mu_scale.device)
        elif adaptive and (step - 2) % adapt_interval == 0:
            vg = extra_args.get("value_and_grad_fn")
            if vg is None:
                raise ValueError("matrix_momentum with adapt_interval needs value_and_grad_fn (the gradient at the "
                                 "previous params on this step's data): call update(..., value_and_grad_fn=...), or "
                                 "step(closure) under gx.Optimizer")
            at_prev = leaves_like(vg(tree_unflatten(prevs, treedef))[1], treedef, "value_and_grad_fn's gradient")
            mu_scale = _secant(ss, [g - q for g, q in zip(grads, at_prev)]).to(state.mu_scale.device)
        m = mu * mu_scale
        out = [(-lr * u + s.to(u.dtype) - m.to(u.dtype) * hs.to(u.dtype)).to(u.dtype)
               for u, s, hs in zip(us, ss, hss)]
        return tree_unflatten(out, treedef), MatrixMomentumState(
            count, mu_scale, tree_unflatten(new_prevs, treedef),
            tree_unflatten(prev_grads, treedef) if keeps_grad else ())

    return GradientTransformation(init, update)


def _secant(ss: list[torch.Tensor], ys: list[torch.Tensor]) -> torch.Tensor:
    # ||s|| / ||y||, y's norm kept above the smallest float64 (torchzero's guard)
    return _norm(ss) / torch.clamp(_norm(ys), min=torch.finfo(torch.float64).tiny * 2)
