"""Directions searched along by a line search: L-BFGS (optax's ``lbfgs``), BFGS, nonlinear CG."""

from __future__ import annotations

from .._hparams import ScalarOrSchedule
from ..base import GradientTransformation, identity, transform
from ..combine import chain
from ..search.conjugate_gradient import scale_by_conjugate_gradient
from ..search.lbfgs import scale_by_lbfgs
from ..search.line_search import scale_by_strong_wolfe, scale_by_zoom_linesearch
from ..search.quasi_newton import scale_by_bfgs
from ..transforms.scaling import scale, scale_by_lr

__all__ = ["bfgs", "lbfgs", "nonlinear_cg"]

# optax's default line search for L-BFGS (pure, so one instance serves every call)
_ZOOM = scale_by_zoom_linesearch(max_linesearch_steps=20, initial_guess_strategy="one")
# the strong Wolfe search with scipy's and torch.optim.LBFGS's constants, and N&W's c2 = 0.1 for CG
_WOLFE = scale_by_strong_wolfe()
_WOLFE_CG = scale_by_strong_wolfe(c2=0.1)


@transform
def lbfgs(lr: ScalarOrSchedule | None = 1.0, memory_size: int = 10, scale_init_precond: bool = True,
          linesearch: GradientTransformation | None = _ZOOM, first_step: str = "optax") -> GradientTransformation:
    """L-BFGS (Nocedal & Wright, 2006, Alg. 7.4 and 7.5; Liu & Nocedal, 1989), as ``optax.lbfgs``;
    ``update`` needs ``params``, ``value``, ``grad`` and ``value_and_grad_fn`` (or
    ``value_fn``) for the line search.

    ``p <- p - t P_k g_k``: ``P_k g_k`` the L-BFGS direction (:func:`scale_by_lbfgs`) and ``t``
    the step the line search finds along ``-P_k g_k`` (by default optax's zoom search for the
    strong Wolfe conditions, ``scale_by_zoom_linesearch(20, initial_guess_strategy="one")``),
    times ``lr`` (optax's ``learning_rate``; 1 as in ``torch.optim.LBFGS``, and a
    ``param_groups`` key torch's LR schedulers drive; ``None``: no ``lr`` at all, optax's
    default, the same numbers). ``linesearch=None`` takes fixed steps of ``lr``.
    ``chain(scale_by_lbfgs(memory_size, scale_init_precond, first_step), scale(-1.0) or
    scale_by_lr(lr), linesearch)``. Beyond optax: ``first_step="unit"`` (the first step's
    length 1, as scipy's L-BFGS-B; see :func:`scale_by_lbfgs`), and
    ``linesearch=scale_by_strong_wolfe()``, whose cubic interpolation uses the slopes at both
    ends of the bracket (as scipy's and torch's searches) where optax's zoom uses one: on
    Rosenbrock's function it needs fewer evaluations (``docs/benchmarks.md``).
    ``gx.lbfgs(first_step="unit", linesearch=gx.scale_by_more_thuente(approx_dec_rtol=1e-6))``
    is scipy's L-BFGS-B (its first step, its Moré-Thuente search and constants), with the
    approximate Wolfe conditions below the loss's round-off: scipy's iterates and evaluation
    counts, fewer evaluations than optax's defaults; the defaults stay optax's.

    Example::

        tx = gx.lbfgs()
        extra = gx.evaluation_args(loss_fn, params)
        updates, state = tx.update(extra["grad"], state, params, **extra)
    """
    base_scaling = scale(-1.0) if lr is None else scale_by_lr(lr)
    return chain(scale_by_lbfgs(memory_size=memory_size, scale_init_precond=scale_init_precond,
                                first_step=first_step), base_scaling,
                 identity() if linesearch is None else linesearch)


def _searched(direction: GradientTransformation, lr: ScalarOrSchedule | None,
              linesearch: GradientTransformation | None) -> GradientTransformation:
    """``direction`` (an update to subtract), turned downhill, scaled by ``lr`` and searched along."""
    return chain(direction, scale(-1.0) if lr is None else scale_by_lr(lr), identity() if linesearch is None
                 else linesearch)


@transform
def bfgs(lr: ScalarOrSchedule | None = 1.0, damping: bool = False,
         linesearch: GradientTransformation | None = _WOLFE) -> GradientTransformation:
    """BFGS with a line search (Nocedal & Wright, 2006, Alg. 6.1), as ``scipy.optimize.minimize(method="BFGS")``;
    ``update`` needs ``params``, ``value``, ``grad`` and ``value_and_grad_fn`` for the search.

    ``p <- p - t H_k g_k``: ``H_k`` the inverse-Hessian approximation of
    :func:`scale_by_bfgs` (over all parameters as one vector: ``O(n^2)`` memory, for problems
    of up to a few thousand parameters; :func:`lbfgs` scales), ``t`` the step the line search
    finds (by default :func:`scale_by_strong_wolfe` with ``c1 = 1e-4``, ``c2 = 0.9``), times
    ``lr`` (a ``param_groups`` key for torch's LR schedulers; ``None``: none).
    ``damping=True``: Powell's damped update. ``linesearch=None`` takes
    fixed steps of ``lr``. ``chain(scale_by_bfgs(damping=damping), scale(-1.0) or
    scale_by_lr(lr), linesearch)``.

    Example::

        opt = gx.Optimizer(model.parameters(), gx.bfgs())
        def closure(backward=True):
            loss = loss_fn(model(x), y)
            if backward:
                opt.zero_grad()
                loss.backward()
            return loss
        opt.step(closure)
    """
    return _searched(scale_by_bfgs(damping=damping), lr, linesearch)


@transform
def nonlinear_cg(beta: str = "polak_ribiere_plus", lr: ScalarOrSchedule | None = 1.0,
                 linesearch: GradientTransformation | None = _WOLFE_CG) -> GradientTransformation:
    """Nonlinear conjugate gradient with a line search (Nocedal & Wright, 2006, Alg. 5.4), as
    ``scipy.optimize.minimize(method="CG")`` with ``beta="polak_ribiere"``; ``update`` needs
    ``params``, ``value``, ``grad`` and ``value_and_grad_fn`` for the search.

    ``p <- p + t d_k`` with ``d_k = -g_k + beta_k d_{k-1}`` (:func:`scale_by_conjugate_gradient`:
    the choice of ``beta`` and its restarts), ``t`` the step the line search finds (by default
    :func:`scale_by_strong_wolfe` with ``c2 = 0.1``, the tighter curvature condition N&W
    recommend for CG, §5.2), times ``lr`` (a ``param_groups`` key; ``None``: none).
    ``chain(scale_by_conjugate_gradient(beta), scale(-1.0) or scale_by_lr(lr), linesearch)``.

    Example: ``opt = gx.Optimizer(model.parameters(), gx.nonlinear_cg("hager_zhang"))``, then
    ``opt.step(closure)`` as for :func:`bfgs`.
    """
    return _searched(scale_by_conjugate_gradient(beta), lr, linesearch)
