"""Newton's method: the exact Hessian over all parameters, solved densely."""

from __future__ import annotations

import torch

from .._hparams import check
from ..base import EmptyState, GradientTransformation, transform
from ..search._vector import concat
from ._curvature import Flat, check_hvp_method

__all__ = ["scale_by_newton"]

_EIGENVALUES = ("none", "abs", "clip")
_HESSIAN_METHODS = ("hvp", "func")


def solve_symmetric(hess: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``H^{-1} g``; the minimum-norm least-squares solution where ``H`` is singular."""
    x, info = torch.linalg.solve_ex(hess, g)
    if int(info) != 0 or not bool(torch.isfinite(x).all()):
        x = torch.linalg.pinv(hess, hermitian=True) @ g
    return x


@transform(inplace=True)  # writes into nothing it is given; its updates are fresh tensors
def scale_by_newton(damping: float = 0.0, eigenvalues: str = "none", min_eigenvalue: float = 1e-8,
                    hessian_method: str = "hvp", hvp_method: str = "autograd", h: float = 1e-3
                    ) -> GradientTransformation:
    """Newton's direction ``u <- (H + damping I)^{-1} g`` (Nocedal & Wright, 2006, §3.3;
    torchzero's ``Newton``); needs ``params`` and ``hvp_fn`` (or ``value_and_grad_fn`` with
    ``hvp_method="fd_*"``, or ``value_fn`` with ``hessian_method="func"``).

    ``g`` is the update that reaches it (the gradient), ``H`` the Hessian at ``params`` over
    all leaves flattened into one vector of ``n`` coordinates, dense (``n^2`` memory):
    ``hessian_method="hvp"`` (default) builds it from ``n`` Hessian-vector products with the
    unit vectors (``batched_hvp_fn`` when given; ``hvp_method`` as in
    :func:`gradtx.curvature_fns`), ``"func"`` as ``torch.func.hessian`` of ``value_fn`` (which
    must be traceable by ``torch.func``: the functional builders' are, the adapter's closure
    ones are not). ``eigenvalues`` modifies ``H = Q diag(lambda) Q^T`` so the direction descends:

    - ``"none"`` (default): the plain Newton system; a singular ``H`` gets the minimum-norm
      least-squares solution (``pinv``);
    - ``"abs"``: ``lambda <- max(|lambda|, min_eigenvalue)``, saddle-free Newton (Dauphin et
      al., 2014);
    - ``"clip"``: ``lambda <- max(lambda, min_eigenvalue)`` (N&W §3.4's eigenvalue modification);

    then ``+ damping`` (Levenberg's). The output is the preconditioned gradient, not yet a
    step: follow with ``scale_by_lr(1.0)`` (the pure Newton step) or ``scale(-1.0)`` and a
    line search. Computed in the widest dtype of the tree (at least float32); complex
    parameters are refused. On a strictly convex quadratic, one step of ``lr = 1`` lands on the
    minimiser.

    Example::

        tx = gx.chain(gx.scale_by_newton(), gx.scale(-1.0), gx.scale_by_backtracking())
        extra = gx.evaluation_args(loss_fn, params)
        updates, state = tx.update(extra["grad"], state, params, **extra)
    """
    check("damping", damping, low=0.0)
    check("min_eigenvalue", min_eigenvalue, low=0.0)
    if eigenvalues not in _EIGENVALUES:
        raise ValueError(f"eigenvalues must be one of {_EIGENVALUES}, got {eigenvalues!r}")
    if hessian_method not in _HESSIAN_METHODS:
        raise ValueError(f"hessian_method must be one of {_HESSIAN_METHODS}, got {hessian_method!r}")
    check_hvp_method(hvp_method, h)

    def init(params):
        del params
        return EmptyState()

    def update(updates, state, params=None, *, inplace=False, value_fn=None, **extra_args):
        del inplace
        flat = Flat("scale_by_newton", updates, params, {**extra_args, "value_fn": value_fn}, hvp_method, h,
                    need_curvature=hessian_method == "hvp")
        if hessian_method == "hvp":
            hess = flat.hessian()
        else:
            if value_fn is None:
                raise ValueError("scale_by_newton with hessian_method='func' needs value_fn (params -> loss), "
                                 "traceable by torch.func: update(..., value_fn=gx.make_value_fn(loss_fn))")

            def flat_value(x):
                return value_fn(flat.tree(x, flat.ps))

            hess = torch.func.hessian(flat_value)(concat(flat.ps, flat.dtype).to(flat.device)).to(flat.dtype)
            hess = 0.5 * (hess + hess.T)
        g = flat.g
        damp = torch.as_tensor(damping, dtype=flat.dtype).to(flat.device)
        if eigenvalues == "none":
            x = solve_symmetric(hess + damp * torch.eye(flat.n, dtype=flat.dtype, device=flat.device), g)
        else:
            lam, q = torch.linalg.eigh(hess)
            floor = torch.as_tensor(min_eigenvalue, dtype=flat.dtype).to(flat.device)
            lam = torch.maximum(lam.abs() if eigenvalues == "abs" else lam, floor) + damp
            x = q @ ((q.T @ g) / lam)
        return flat.tree(x), state

    return GradientTransformation(init, update)


