"""Gauss-Newton for least squares: the Hessian of ``||r||^2 / 2`` modelled by ``J^T J``."""

from __future__ import annotations

import torch

from .._hparams import check
from ..base import EmptyState, GradientTransformation, transform
from ..search._vector import concat
from ._curvature import Flat
from .newton import solve_symmetric

__all__ = ["scale_by_gauss_newton"]

_JACOBIANS = ("reverse", "forward")


@transform(inplace=True)  # writes into nothing it is given; its updates are fresh tensors
def scale_by_gauss_newton(damping: float = 0.0, jacobian: str = "reverse") -> GradientTransformation:
    """Gauss-Newton direction ``u <- (J^T J + damping I)^{-1} g`` for a least-squares loss
    ``f(x) = ||r(x)||^2 / 2`` (Nocedal & Wright, 2006, §10.3; with ``damping > 0``
    Levenberg's regularisation, §10.3 eq. 10.32 with a fixed ``lambda``); needs ``params`` and
    the extra argument ``residual_fn``.

    **How the residuals reach it**: ``update(..., residual_fn=r)`` with ``r(params) -> tensor``
    (any shape, flattened to the ``m`` residuals), pure and traceable by ``torch.func`` like
    :func:`gradtx.make_value_fn`'s functions, the loss being ``||r||^2 / 2`` (scipy's
    ``least_squares`` convention; for ``sum r^2`` the direction is twice as long). ``J`` is
    the ``m x n`` Jacobian over all leaves flattened (``torch.func.jacrev``, or ``jacfwd``
    with ``jacobian="forward"``, cheaper when ``m > n``), computed in the widest dtype of the
    tree (at least float32). ``g`` is the update that reaches it: the gradient ``J^T r`` when it
    comes first in the chain. A singular ``J^T J`` gets the minimum-norm solution (``pinv``),
    i.e. ``u = J^+ r``. ``gx.Optimizer``'s closures give no ``residual_fn``: use the functional
    API (or ``gx.scale_by_newton`` on the loss). Complex parameters are refused.

    The output is the preconditioned gradient: ``chain(scale_by_gauss_newton(), scale_by_lr(1.0))``
    is the Gauss-Newton iteration ``x <- x - (J^T J)^{-1} J^T r``; add ``scale(-1.0)`` and a line
    search for a damped one.

    Example::

        residual_fn = lambda p: p["a"] * torch.exp(p["k"] * t) - y
        tx = gx.chain(gx.scale_by_gauss_newton(), gx.scale_by_lr(1.0))
        extra = gx.evaluation_args(lambda p: 0.5 * (residual_fn(p) ** 2).sum(), params)
        updates, state = tx.update(extra["grad"], state, params, residual_fn=residual_fn)
    """
    check("damping", damping, low=0.0)
    if jacobian not in _JACOBIANS:
        raise ValueError(f"jacobian must be one of {_JACOBIANS}, got {jacobian!r}")

    def init(params):
        del params
        return EmptyState()

    def update(updates, state, params=None, *, inplace=False, residual_fn=None, **extra_args):
        del inplace, extra_args
        if residual_fn is None:
            raise ValueError("scale_by_gauss_newton needs residual_fn (params -> residuals, the loss being "
                             "||r||^2 / 2): call update(grads, state, params, residual_fn=...)")
        flat = Flat("scale_by_gauss_newton", updates, params, {}, need_curvature=False)

        def residuals(x):
            return torch.as_tensor(residual_fn(flat.tree(x, flat.ps))).reshape(-1).to(flat.dtype)

        x = concat(flat.ps, flat.dtype).to(flat.device)
        jac = (torch.func.jacrev if jacobian == "reverse" else torch.func.jacfwd)(residuals)(x).detach()
        jtj = jac.T @ jac
        damp = torch.as_tensor(damping, dtype=flat.dtype).to(flat.device)
        d = solve_symmetric(jtj + damp * torch.eye(flat.n, dtype=flat.dtype, device=flat.device), flat.g)
        return flat.tree(d), state

    return GradientTransformation(init, update)
