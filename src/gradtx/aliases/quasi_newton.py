"""L-BFGS with a line search (optax's ``lbfgs``)."""

from __future__ import annotations

from .._hparams import ScalarOrSchedule
from ..base import GradientTransformation, identity, transform
from ..combine import chain
from ..search.lbfgs import scale_by_lbfgs
from ..search.line_search import scale_by_zoom_linesearch
from ..transforms.scaling import scale, scale_by_lr

__all__ = ["lbfgs"]

# optax's default line search for L-BFGS (pure, so one instance serves every call)
_ZOOM = scale_by_zoom_linesearch(max_linesearch_steps=20, initial_guess_strategy="one")


@transform
def lbfgs(lr: ScalarOrSchedule | None = None, memory_size: int = 10, scale_init_precond: bool = True,
          linesearch: GradientTransformation | None = _ZOOM) -> GradientTransformation:
    """L-BFGS (Nocedal & Wright, 2006, Alg. 7.4 and 7.5; Liu & Nocedal, 1989), as ``optax.lbfgs``;
    ``update`` needs ``params``, ``value``, ``grad`` and ``value_and_grad_fn`` (or
    ``value_fn``) for the line search.

    ``p <- p - t P_k g_k``: ``P_k g_k`` the L-BFGS direction (:func:`scale_by_lbfgs`) and ``t``
    the step the line search finds along ``-P_k g_k`` (by default optax's zoom search for the
    strong Wolfe conditions, ``scale_by_zoom_linesearch(20, initial_guess_strategy="one")``),
    times ``lr`` when given (``lr`` is optax's ``learning_rate``; ``None``: the line search's
    step alone). ``linesearch=None`` takes fixed steps of ``lr``.
    ``chain(scale_by_lbfgs(memory_size, scale_init_precond), scale(-1.0) or scale_by_lr(lr),
    linesearch)``.

    Example::

        tx = gx.lbfgs()
        extra = gx.evaluation_args(loss_fn, params)
        updates, state = tx.update(extra["grad"], state, params, **extra)
    """
    base_scaling = scale(-1.0) if lr is None else scale_by_lr(lr)
    return chain(scale_by_lbfgs(memory_size=memory_size, scale_init_precond=scale_init_precond), base_scaling,
                 identity() if linesearch is None else linesearch)
