"""Newton methods as full optimizers: a second-order direction, a step size and a line search."""

from __future__ import annotations

from .._hparams import ScalarOrSchedule
from ..base import GradientTransformation, identity, transform
from ..combine import chain
from ..search.line_search import scale_by_backtracking
from ..second_order.newton import scale_by_newton
from ..second_order.newton_cg import scale_by_newton_cg
from ..transforms.scaling import scale, scale_by_lr

__all__ = ["newton", "newton_cg"]

# Armijo backtracking from the full Newton step t = 1 (pure, so one instance serves every call)
_BACKTRACKING = scale_by_backtracking()


def _searched(direction: GradientTransformation, lr: ScalarOrSchedule | None,
              linesearch: GradientTransformation | None) -> GradientTransformation:
    return chain(direction, scale(-1.0) if lr is None else scale_by_lr(lr),
                 identity() if linesearch is None else linesearch)


@transform
def newton(lr: ScalarOrSchedule | None = 1.0, damping: float = 0.0, eigenvalues: str = "none",
           hvp_method: str = "autograd", linesearch: GradientTransformation | None = _BACKTRACKING
           ) -> GradientTransformation:
    """Newton's method with a line search (Nocedal & Wright, 2006, §3.3 and Alg. 3.1; torchzero's
    ``Newton`` followed by ``Backtracking``); ``update`` needs ``params``, ``hvp_fn`` and, for the
    search, ``value``, ``grad`` and ``value_fn`` (``gx.evaluation_args``, or
    ``gx.Optimizer.step(closure)``).

    ``p <- p - t lr (H + damping I)^{-1} g`` with the dense Hessian (``eigenvalues``: ``"abs"``
    for saddle-free Newton, ``"clip"`` for the modified Newton's; see :func:`scale_by_newton`)
    and ``t`` from Armijo backtracking starting at 1 (``linesearch=None``: fixed steps of
    ``lr``). ``chain(scale_by_newton(damping, eigenvalues, hvp_method=hvp_method),
    scale(-1.0) or scale_by_lr(lr), linesearch)``.

    Example::

        tx = gx.newton()
        extra = gx.evaluation_args(loss_fn, params)
        updates, state = tx.update(extra["grad"], state, params, **extra)
    """
    return _searched(scale_by_newton(damping=damping, eigenvalues=eigenvalues, hvp_method=hvp_method), lr,
                     linesearch)


@transform
def newton_cg(lr: ScalarOrSchedule | None = 1.0, max_iters: int | None = None, tol: float = 1e-5,
              damping: float = 0.0, hvp_method: str = "autograd", h: float = 1e-3,
              linesearch: GradientTransformation | None = _BACKTRACKING) -> GradientTransformation:
    """Line-search Newton-CG (Nocedal & Wright, 2006, Alg. 7.1; torchzero's ``NewtonCG`` followed by
    ``Backtracking``; scipy's ``Newton-CG``); ``update`` needs ``params``, ``hvp_fn`` (or
    ``value_and_grad_fn`` with ``hvp_method="fd_*"``) and, for the search, ``value``, ``grad``
    and ``value_fn``.

    ``p <- p - t lr x`` with ``x ~ (H + damping I)^{-1} g`` by conjugate gradients on
    Hessian-vector products (:func:`scale_by_newton_cg`) and ``t`` from Armijo backtracking
    starting at 1 (``linesearch=None``: fixed steps of ``lr``). ``chain(scale_by_newton_cg(...),
    scale(-1.0) or scale_by_lr(lr), linesearch)``.

    Example::

        opt = gx.Optimizer(model.parameters(), gx.newton_cg(max_iters=20))
        opt.step(closure)  # closure(backward=True) -> loss
    """
    return _searched(scale_by_newton_cg(max_iters=max_iters, tol=tol, damping=damping, hvp_method=hvp_method, h=h),
                     lr, linesearch)
