"""Line searches: chain members that scale the update ``d`` reaching them by a step ``t``
found by evaluating the loss at trial points ``p + t d``.

Each needs ``params`` and the evaluation extra arguments (see :mod:`gradtx.evaluation`):
``value`` and ``grad`` at ``params`` (computed with ``value_and_grad_fn`` when either is
missing), ``value_fn`` for the sufficient decrease (Armijo) condition and
``value_and_grad_fn`` for the curvature (Wolfe) condition. A missing one raises
``ValueError`` naming it. The incoming update must be a descent direction
(``<grad, d> < 0``): put the line search after the rule that makes the direction and its
sign, e.g. ``chain(scale_by_lbfgs(), scale(-1.0), scale_by_zoom_linesearch(20))``.

The state holds the accepted step and the evaluation counts as 0-dim tensors (so a
checkpoint resumes exactly); optax's two also keep the loss, and the zoom search the
gradient, at the accepted point, as optax does, and so does ``scale_by_strong_wolfe``, for
:func:`value_and_grad_from_state`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from .._hparams import check, check_int
from .._tree import Tree, tensor_leaves, tree_get, tree_unflatten
from ..base import GradientTransformation, transform
from ._line import Line, count, nan_max, nan_min, nan_to_inf, running

__all__ = ["AdaptiveBacktrackingState", "BacktrackingLinesearchInfo", "BacktrackingState", "MoreThuenteState",
           "ScaleByBacktrackingLinesearchState", "ScaleByZoomLinesearchState", "StrongWolfeState",
           "ZoomLinesearchInfo", "scale_by_adaptive_backtracking", "scale_by_backtracking",
           "scale_by_backtracking_linesearch", "scale_by_more_thuente", "scale_by_strong_wolfe",
           "scale_by_zoom_linesearch",
           "value_and_grad_from_state"]


def _f(x: Any) -> float:
    """A hyperparameter (number or 0-dim tensor, possibly injected) as a Python float."""
    return float(torch.as_tensor(x).detach().double()) if isinstance(x, torch.Tensor) else float(x)


def _params_leaves(params: Tree) -> list[torch.Tensor]:
    return tensor_leaves(params)[0]


def _armijo(line: Line, t: float, c: float) -> tuple[float, bool]:
    value = line.value(t)
    return value, value <= line.value0 + c * t * line.slope0


def _backtrack(line: Line, t: float, beta: float, c: float, max_steps: int) -> tuple[float, float, bool]:
    """Armijo backtracking from ``t``: ``t <- beta t`` until ``f(p + t d) <= f(p) + c t <g, d>``,
    at most ``max_steps`` evaluations. Returns ``(t, f(p + t d), accepted)``; when no trial
    is accepted, the trial of least loss if it is below ``f(p)``, else ``t = 0``."""
    best_t, best_value = 0.0, line.value0
    for _ in range(max_steps):
        value, ok = _armijo(line, t, c)
        if ok:
            return t, value, True
        if value < best_value:
            best_t, best_value = t, value
        t *= beta
    return best_t, best_value, False


# --- backtracking (Armijo) ----------------------------------------------------------------


class BacktrackingState(NamedTuple):
    step_size: torch.Tensor  # float64 0-dim: the accepted step (0 when none decreased the loss)
    num_evaluations: torch.Tensor  # int32 0-dim: loss evaluations of the last search


def _check_backtracking(init, beta, c, max_steps) -> None:
    check("init", init, low=0.0, low_open=True)
    check("beta", beta, low=0.0, high=1.0, low_open=True, high_open=True)
    check("c", c, low=0.0, high=1.0, high_open=True)
    check_int("max_steps", max_steps, low=1)


@transform(inplace=True)  # never writes into its inputs; its updates are fresh tensors
def scale_by_backtracking(init: float = 1.0, beta: float = 0.5, c: float = 1e-4,
                          max_steps: int = 25) -> GradientTransformation:
    """Backtracking line search with the Armijo condition (Nocedal & Wright, 2006, Alg. 3.1);
    needs ``params``, ``value``, ``grad`` and ``value_fn``.

    ``t <- init``; while ``f(p + t d) > f(p) + c t <g, d>``: ``t <- beta t`` (at most
    ``max_steps`` evaluations); ``u <- t d``. When no trial satisfies the condition, the
    trial of least loss is taken if it is below ``f(p)``, else ``t = 0`` (no move). Every
    search starts at ``init``; :func:`scale_by_adaptive_backtracking` adapts it.
    Defaults: ``init=1``, ``beta=0.5``, ``c=1e-4``, ``max_steps=25``.

    Example::

        tx = gx.chain(gx.scale(-1.0), gx.scale_by_backtracking())  # gradient descent, Armijo steps
        updates, state = tx.update(grads, state, params, value=loss, grad=grads, value_fn=loss_fn)
    """
    _check_backtracking(init, beta, c, max_steps)

    def init_fn(params):
        ps = _params_leaves(params)
        return BacktrackingState(running(0.0, ps), count(0, ps))

    def update(updates, state, params=None, *, inplace=False, value=None, grad=None, value_fn=None,
               value_and_grad_fn=None, **extra_args):
        del inplace, extra_args
        line = Line("scale_by_backtracking", updates, params, value=value, grad=grad, value_fn=value_fn,
                    value_and_grad_fn=value_and_grad_fn)
        t, _, _ = _backtrack(line, _f(init), _f(beta), _f(c), max_steps)
        return line.scaled(t), BacktrackingState(running(t, line.ps), count(line.evaluations, line.ps))

    return GradientTransformation(init_fn, update)


# --- adaptive backtracking -----------------------------------------------------------------


class AdaptiveBacktrackingState(NamedTuple):
    step_size: torch.Tensor  # float64 0-dim: the accepted step
    initial_scale: torch.Tensor  # float64 0-dim: the next search starts at init * initial_scale
    beta_scale: torch.Tensor  # float64 0-dim: the next search backtracks by beta * beta_scale
    num_evaluations: torch.Tensor  # int32 0-dim


@transform(inplace=True)  # never writes into its inputs; its updates are fresh tensors
def scale_by_adaptive_backtracking(init: float = 1.0, beta: float = 0.5, c: float = 1e-4, max_steps: int = 20,
                                   nplus: float = 2.0, scale_beta: float = 0.0) -> GradientTransformation:
    """Armijo backtracking whose first trial adapts to the last accepted step (torchzero's
    ``AdaptiveBacktracking``); needs ``params``, ``value``, ``grad`` and ``value_fn``.

    A search backtracks as :func:`scale_by_backtracking` from ``t0 = init * s`` by the factor
    ``beta * b``. After it, with ``t`` the accepted step: if ``t = t0``, ``s <- nplus s``
    (the next search tries a longer step); else ``s <- (1 - scale_beta) t / (beta b init)
    + scale_beta s`` (the next search accepts after one backtrack if ``t`` is right again);
    ``b <- min(1, b sqrt(1.5))``. When no trial satisfies the condition the step is 0 and
    ``b <- b / 1.5`` (backtrack faster next time). ``s`` and ``b`` start at 1.
    Defaults: ``init=1``, ``beta=0.5``, ``c=1e-4``, ``max_steps=20``, ``nplus=2``,
    ``scale_beta=0`` (torchzero's, with its ``target_iters=1``).

    Example: ``gx.chain(gx.scale(-1.0), gx.scale_by_adaptive_backtracking())``.
    """
    _check_backtracking(init, beta, c, max_steps)
    check("nplus", nplus, low=1.0)
    check("scale_beta", scale_beta, low=0.0, high=1.0, high_open=True)

    def init_fn(params):
        ps = _params_leaves(params)
        return AdaptiveBacktrackingState(running(0.0, ps), running(1.0, ps), running(1.0, ps), count(0, ps))

    def update(updates, state, params=None, *, inplace=False, value=None, grad=None, value_fn=None,
               value_and_grad_fn=None, **extra_args):
        del inplace, extra_args
        line = Line("scale_by_adaptive_backtracking", updates, params, value=value, grad=grad, value_fn=value_fn,
                    value_and_grad_fn=value_and_grad_fn)
        scale, b = float(state.initial_scale), float(state.beta_scale)
        factor = _f(beta) * b
        t0 = _f(init) * scale
        t, accepted = t0, False
        for _ in range(max_steps):
            _, accepted = _armijo(line, t, _f(c))
            if accepted:
                break
            t *= factor
        if accepted:
            if t == t0:
                dtype_max = min((torch.finfo(p.dtype).max for p in line.ps if p.is_floating_point()),
                                default=torch.finfo(torch.float64).max)
                scale = min(scale * _f(nplus), dtype_max / 2)
            else:
                target = t / factor
                scale = (1 - _f(scale_beta)) * (target / _f(init)) + _f(scale_beta) * scale
            b = min(1.0, b * math.sqrt(1.5))
        else:
            t = 0.0
            b /= 1.5
        new = AdaptiveBacktrackingState(running(t, line.ps), running(scale, line.ps), running(b, line.ps),
                                        count(line.evaluations, line.ps))
        return line.scaled(t), new

    return GradientTransformation(init_fn, update)


# --- strong Wolfe (Nocedal & Wright, Alg. 3.5 / 3.6) ---------------------------------------


class StrongWolfeState(NamedTuple):
    step_size: torch.Tensor  # float64 0-dim: the accepted step
    num_evaluations: torch.Tensor  # int32 0-dim: value-and-gradient evaluations of the last search
    value: torch.Tensor  # float64 0-dim: the loss at the accepted point (inf before the first search)
    grad: Tree  # the gradient at the accepted point, a tree like params


def _cubic_step(a: float, fa: float, ga: float, b: float, fb: float, gb: float) -> float:
    """The minimiser of the cubic through ``(a, fa, ga)``, ``(b, fb, gb)`` (Nocedal & Wright,
    eq. 3.59), clamped to the interval; its midpoint when the cubic has no minimiser."""
    lo, hi = min(a, b), max(a, b)
    d1 = ga + gb - 3 * (fa - fb) / (a - b)
    radical = d1 * d1 - ga * gb
    if radical < 0 or not math.isfinite(radical):
        return (lo + hi) / 2
    d2 = math.copysign(math.sqrt(radical), b - a)
    denom = gb - ga + 2 * d2
    if denom == 0:
        return (lo + hi) / 2
    t = b - (b - a) * (gb + d2 - d1) / denom
    return min(max(t, lo), hi) if math.isfinite(t) else (lo + hi) / 2


def _check_wolfe_arguments(init: Any, c1: Any, c2: Any, max_steps: Any, max_step_size: Any,
                           approx_dec_rtol: Any) -> None:
    # the arguments the strong Wolfe searches (zoom, More-Thuente) share
    check("init", init, low=0.0, low_open=True)
    check("c1", c1, low=0.0, high=1.0, low_open=True, high_open=True)
    check("c2", c2, low=0.0, high=1.0, low_open=True, high_open=True)
    check_int("max_steps", max_steps, low=1)
    check("max_step_size", max_step_size, low=0.0, low_open=True, allow_inf=True)
    if approx_dec_rtol is not None:
        check("approx_dec_rtol", approx_dec_rtol, low=0.0)
    if _f(c2) <= _f(c1):
        raise ValueError(f"c2 must be > c1 (0 < c1 < c2 < 1), got c1={_f(c1)!r}, c2={_f(c2)!r}")


@transform(inplace=True)  # never writes into its inputs; its updates are fresh tensors
def scale_by_strong_wolfe(init: float = 1.0, c1: float = 1e-4, c2: float = 0.9, max_steps: int = 25,
                          max_step_size: float = 1e10, interval_threshold: float = 1e-9,
                          approx_dec_rtol: float | None = None) -> GradientTransformation:
    """Line search for the strong Wolfe conditions (Nocedal & Wright, 2006, Alg. 3.5 and 3.6,
    cubic interpolation eq. 3.59); needs ``params``, ``value``, ``grad`` and
    ``value_and_grad_fn`` (or ``value_fn``, differentiated with autograd).

    Finds ``t`` with ``f(p + t d) <= f(p) + c1 t <g, d>`` (sufficient decrease) and
    ``|<g(p + t d), d>| <= c2 |<g, d>|`` (curvature), ``u <- t d``. Bracketing: trials
    ``t = init, 2 init, 4 init, ...`` (capped at ``max_step_size``) until one fails the
    decrease condition, does not decrease the loss below the previous trial, or has a
    non-negative slope; zoom: the minimiser of the cubic through the bracket's ends (values
    and slopes), kept 10 % of the bracket away from its ends, replaces the end that keeps a
    minimiser inside. At most ``max_steps`` evaluations; when they run out or the bracket is
    shorter than ``interval_threshold``, the best trial satisfying the decrease condition is
    taken (``t = 0`` if none). With ``approx_dec_rtol`` (off by default, as torch's and
    scipy's searches), a trial with ``f(p + t d) <= f(p) + approx_dec_rtol |f(p)|`` and
    ``<g(p + t d), d> <= (2 c1 - 1) <g, d>`` meets the decrease condition too (Hager & Zhang,
    2005, the approximate Wolfe conditions, as ``scale_by_zoom_linesearch``'s default 1e-6):
    near a minimiser, where the change of the loss is below its round-off, the slopes still
    tell a decrease, and the search goes on where the Armijo test alone fails on every trial
    and returns ``t = 0``. The state keeps ``t`` and the loss and gradient at
    ``p + t d`` (at ``p`` when ``t = 0``), for :func:`value_and_grad_from_state`, as optax's zoom
    search keeps them. Defaults (torch.optim.LBFGS's, scipy's): ``c1=1e-4``, ``c2=0.9``,
    ``init=1``, ``max_steps=25``.

    Example: ``gx.chain(gx.scale_by_lbfgs(), gx.scale(-1.0), gx.scale_by_strong_wolfe())``.
    """
    _check_wolfe_arguments(init, c1, c2, max_steps, max_step_size, approx_dec_rtol)
    check("interval_threshold", interval_threshold, low=0.0)

    def init_fn(params):
        ps, treedef = tensor_leaves(params)
        return StrongWolfeState(running(0.0, ps), count(0, ps), running(math.inf, ps),
                                tree_unflatten([torch.zeros_like(p) for p in ps], treedef))

    def update(updates, state, params=None, *, inplace=False, value=None, grad=None, value_fn=None,
               value_and_grad_fn=None, **extra_args):
        del inplace, extra_args
        line = Line("scale_by_strong_wolfe", updates, params, value=value, grad=grad, value_fn=value_fn,
                    value_and_grad_fn=value_and_grad_fn, need_grad_fn=True)
        t, f, gs = _strong_wolfe(line, _f(init), _f(c1), _f(c2), max_steps, _f(max_step_size),
                                 _f(interval_threshold), None if approx_dec_rtol is None else _f(approx_dec_rtol))
        ps = line.ps
        kept = tree_unflatten([g.to(p.dtype, copy=True) for g, p in zip(gs, ps)], line.treedef)
        return line.scaled(t), StrongWolfeState(running(t, ps), count(line.evaluations, ps), running(f, ps), kept)

    return GradientTransformation(init_fn, update)


def _strong_wolfe(line: Line, t: float, c1: float, c2: float, max_steps: int, t_max: float,
                  threshold: float, c3: float | None = None) -> tuple[float, float, list[torch.Tensor]]:
    """The step taken, the loss and the gradient's leaves there (at ``t = 0``: ``line``'s own)."""
    f0, g0 = line.value0, line.slope0
    if not g0 < 0:  # not a descent direction: no step along it decreases the loss first
        return 0.0, f0, line.gs0
    budget = max_steps
    best = (0.0, f0, line.gs0)  # the trial of least loss that satisfies the decrease condition

    def sufficient(step: float, f: float, g: float) -> bool:
        if f <= f0 + c1 * step * g0:
            return True
        return c3 is not None and f <= f0 + c3 * abs(f0) and g <= (2 * c1 - 1) * g0

    def curvature(g: float) -> bool:
        return abs(g) <= -c2 * g0

    prev = (0.0, f0, g0)
    lo = hi = None
    t = min(t, t_max)
    while budget > 0:  # bracketing, Alg. 3.5
        f, g, gs = line.value_and_slope(t)
        budget -= 1
        if not math.isfinite(f):
            lo, hi = prev, (t, math.inf, math.nan)
            break
        if sufficient(t, f, g) and f < best[1]:
            best = (t, f, gs)
        if not sufficient(t, f, g) or (f >= prev[1] and prev[0] > 0):
            lo, hi = prev, (t, f, g)
            break
        if curvature(g):
            return t, f, gs
        if g >= 0:
            lo, hi = (t, f, g), prev
            break
        if t >= t_max:
            return t, f, gs
        prev = (t, f, g)
        t = min(2 * t, t_max)
    else:
        return best
    while budget > 0:  # zoom, Alg. 3.6: lo satisfies the decrease condition with the least loss so far
        a, b = lo[0], hi[0]
        if abs(b - a) <= threshold:
            break
        if math.isfinite(hi[1]) and math.isfinite(hi[2]):
            t = _cubic_step(a, lo[1], lo[2], b, hi[1], hi[2])
        else:
            t = (a + b) / 2
        margin = 0.1 * abs(b - a)
        t = min(max(t, min(a, b) + margin), max(a, b) - margin)
        f, g, gs = line.value_and_slope(t)
        budget -= 1
        if not math.isfinite(f) or not sufficient(t, f, g) or f >= lo[1]:
            hi = (t, f, g)
            continue
        if f < best[1]:
            best = (t, f, gs)
        if curvature(g):
            return t, f, gs
        if g * (b - a) >= 0:
            hi = lo
        lo = (t, f, g)
    return best


# --- More-Thuente (MINPACK-2's dcsrch, scipy's L-BFGS-B search) ----------------------------


class MoreThuenteState(NamedTuple):
    step_size: torch.Tensor  # float64 0-dim: the accepted step
    num_evaluations: torch.Tensor  # int32 0-dim: value-and-gradient evaluations of the last search
    value: torch.Tensor  # float64 0-dim: the loss at the accepted point (inf before the first search)
    grad: Tree  # the gradient at the accepted point, a tree like params


def _safeguarded_step(stx: float, fx: float, dx: float, sty: float, fy: float, dy: float, stp: float, fp: float,
                      dp: float, brackt: bool, stmin: float, stmax: float):
    """One step of Moré & Thuente's (1994) safeguarded interval update (their Sec. 4, cases
    1-4): the next trial from the best point ``x``, the other end ``y`` and the trial ``p``
    (values and slopes), and the new interval. Returns ``(stx, fx, dx, sty, fy, dy, stp, brackt)``."""
    sgnd = dp * math.copysign(1.0, dx)

    def cubic(theta: float, da: float, db: float, flip: bool, clip: bool = False) -> float:
        s = max(abs(theta), abs(da), abs(db))
        radical = (theta / s) ** 2 - (da / s) * (db / s)
        gamma = s * math.sqrt(max(0.0, radical) if clip else radical)
        return -gamma if flip else gamma

    if fp > fx:  # case 1: a higher loss, the minimiser is bracketed; the cubic's or half-way to the quadratic's
        theta = 3.0 * (fx - fp) / (stp - stx) + dx + dp
        gamma = cubic(theta, dx, dp, stp < stx)
        r = ((gamma - dx) + theta) / (((gamma - dx) + gamma) + dp)
        stpc = stx + r * (stp - stx)
        stpq = stx + ((dx / ((fx - fp) / (stp - stx) + dx)) / 2.0) * (stp - stx)
        stpf = stpc if abs(stpc - stx) < abs(stpq - stx) else stpc + (stpq - stpc) / 2.0
        brackt = True
    elif sgnd < 0:  # case 2: the slope changes sign: bracketed; the step farther from stp
        theta = 3.0 * (fx - fp) / (stp - stx) + dx + dp
        gamma = cubic(theta, dx, dp, stp > stx)
        r = ((gamma - dp) + theta) / (((gamma - dp) + gamma) + dx)
        stpc = stp + r * (stx - stp)
        stpq = stp + (dp / (dp - dx)) * (stx - stp)
        stpf = stpc if abs(stpc - stp) > abs(stpq - stp) else stpq
        brackt = True
    elif abs(dp) < abs(dx):  # case 3: the slope decreases in size: cubic (or the bound) against the secant
        theta = 3.0 * (fx - fp) / (stp - stx) + dx + dp
        gamma = cubic(theta, dx, dp, stp > stx, clip=True)
        r = ((gamma - dp) + theta) / ((gamma + (dx - dp)) + gamma)
        if r < 0.0 and gamma != 0.0:
            stpc = stp + r * (stx - stp)
        else:
            stpc = stmax if stp > stx else stmin
        stpq = stp + (dp / (dp - dx)) * (stx - stp)
        if brackt:
            stpf = stpc if abs(stpc - stp) < abs(stpq - stp) else stpq
            bound = stp + 0.66 * (sty - stp)
            stpf = min(bound, stpf) if stp > stx else max(bound, stpf)
        else:
            stpf = stpc if abs(stpc - stp) > abs(stpq - stp) else stpq
            stpf = max(stmin, min(stmax, stpf))
    elif brackt:  # case 4: the slope does not decrease: the cubic through p and y
        theta = 3.0 * (fp - fy) / (sty - stp) + dy + dp
        gamma = cubic(theta, dy, dp, stp > sty)
        r = ((gamma - dp) + theta) / (((gamma - dp) + gamma) + dy)
        stpf = stp + r * (sty - stp)
    else:
        stpf = stmax if stp > stx else stmin
    if fp > fx:
        sty, fy, dy = stp, fp, dp
    else:
        if sgnd < 0:
            sty, fy, dy = stx, fx, dx
        stx, fx, dx = stp, fp, dp
    return stx, fx, dx, sty, fy, dy, stpf, brackt


def _more_thuente(line: Line, stp: float, ftol: float, gtol: float, xtol: float, stpmin: float, stpmax: float,
                  max_steps: int, c3: float | None = None) -> tuple[float, float, list[torch.Tensor]]:
    """Moré & Thuente's search (MINPACK-2 ``dcsrch``) along ``line`` from the trial ``stp``:
    the step taken, the loss and the gradient's leaves there (at ``t = 0``: ``line``'s own)."""
    finit, ginit = line.value0, line.slope0
    if not ginit < 0:
        return 0.0, finit, line.gs0
    gtest = ftol * ginit
    width = stpmax - stpmin
    width1 = 2.0 * width
    brackt, stage = False, 1
    stx, fx, gx_, gsx = 0.0, finit, ginit, line.gs0  # the best step so far (least auxiliary function)
    sty, fy, gy = 0.0, finit, ginit
    stmin, stmax = 0.0, stp + 4.0 * stp
    stp = min(max(stp, stpmin), stpmax)
    for _ in range(max_steps):
        f, g, gs = line.value_and_slope(stp)
        if not math.isfinite(f) or not math.isfinite(g):
            # a non-finite loss: shrink towards the best point, as a trial of infinite loss
            f, g = math.inf, math.inf
        ftest = finit + stp * gtest
        approx = c3 is not None and f <= finit + c3 * abs(finit) and g <= (2 * ftol - 1) * ginit
        if (f <= ftest or approx) and abs(g) <= -gtol * ginit:
            return stp, f, gs
        if stage == 1 and f <= ftest and g >= 0.0:
            stage = 2
        if ((brackt and (stp <= stmin or stp >= stmax)) or (brackt and stmax - stmin <= xtol * stmax)
                or (stp == stpmax and f <= ftest and g <= gtest) or (stp == stpmin and (f > ftest or g >= gtest))):
            break  # rounding errors, the interval below xtol, or a bound reached: take the best point
        if not math.isfinite(f):
            sty, fy, gy, brackt = stp, f, g, True
            stp = stx + 0.5 * (stp - stx)
        elif stage == 1 and f <= fx and f > ftest:
            # the modified function f(t) - f(0) - ftol t f'(0) until a step meets the decrease condition
            if not f - stp * gtest > fx - stx * gtest:  # the trial becomes the best point
                gsx = gs
            stx, fxm, gxm, sty, fym, gym, stp, brackt = _safeguarded_step(
                stx, fx - stx * gtest, gx_ - gtest, sty, fy - sty * gtest, gy - gtest, stp, f - stp * gtest,
                g - gtest, brackt, stmin, stmax)
            fx, gx_, fy, gy = fxm + stx * gtest, gxm + gtest, fym + sty * gtest, gym + gtest
        else:
            if not f > fx:
                gsx = gs
            stx, fx, gx_, sty, fy, gy, stp, brackt = _safeguarded_step(stx, fx, gx_, sty, fy, gy, stp, f, g, brackt,
                                                                       stmin, stmax)
        if not math.isfinite(stp):  # interpolation through a non-finite end (a trial of inf loss): bisect
            stp = stx + 0.5 * (sty - stx)
        if brackt:
            if abs(sty - stx) >= 0.66 * width1:
                stp = stx + 0.5 * (sty - stx)
            width1, width = width, abs(sty - stx)
            stmin, stmax = min(stx, sty), max(stx, sty)
        else:
            stmin, stmax = stp + 1.1 * (stp - stx), stp + 4.0 * (stp - stx)
        stp = min(max(stp, stpmin), stpmax)
        if brackt and (stp <= stmin or stp >= stmax or stmax - stmin <= xtol * stmax):
            stp = stx
    if stx > 0.0 and fx <= finit + stx * gtest:
        return stx, fx, gsx
    return 0.0, finit, line.gs0


@transform(inplace=True)  # never writes into its inputs; its updates are fresh tensors
def scale_by_more_thuente(init: float = 1.0, c1: float = 1e-3, c2: float = 0.9, xtol: float = 0.1,
                          max_steps: int = 20, max_step_size: float = 1e10,
                          approx_dec_rtol: float | None = None) -> GradientTransformation:
    """Moré & Thuente's line search (1994; MINPACK-2's ``dcsrch``, the search of scipy's
    L-BFGS-B) for the strong Wolfe conditions; needs ``params``, ``value``, ``grad`` and
    ``value_and_grad_fn`` (or ``value_fn``, differentiated with autograd).

    Finds ``t`` with ``f(p + t d) <= f(p) + c1 t <g, d>`` and
    ``|<g(p + t d), d>| <= c2 |<g, d>|``, ``u <- t d``, from the trial ``t = init``. Each
    trial updates an interval ``[t_x, t_y]`` (``t_x`` the best step so far) by the
    safeguarded cubic and quadratic interpolation of Moré & Thuente's four cases, on the
    auxiliary function ``f(p + t d) - f(p) - c1 t <g, d>`` until a trial meets the decrease
    condition with a non-negative slope; before the minimiser is bracketed the trial
    extrapolates to between ``1.1`` and ``4`` times the last step's length
    (up to ``max_step_size``); once bracketed, an interval that did not shrink by a third
    in two trials is bisected. It stops at ``max_steps`` evaluations or an interval shorter
    than ``xtol t_max`` and takes the best step ``t_x`` when it meets the decrease condition
    (else ``t = 0``). With ``approx_dec_rtol`` (off by default, as scipy), a trial with
    ``f(p + t d) <= f(p) + approx_dec_rtol |f(p)|``, ``<g(p + t d), d> <= (2 c1 - 1) <g, d>``
    and the curvature condition is accepted too (Hager & Zhang's approximate Wolfe conditions,
    as :func:`scale_by_strong_wolfe`'s): where the change of the loss falls below its
    round-off every trial fails the decrease test, scipy stops, and this goes on.
    The state keeps ``t`` and the loss and gradient at ``p + t d``, for
    :func:`value_and_grad_from_state`. Defaults are scipy's L-BFGS-B's (``c1 = 1e-3``,
    ``c2 = 0.9``, ``xtol = 0.1``, 20 evaluations); with ``gx.lbfgs(first_step="unit")`` it
    follows scipy's L-BFGS-B iterates.

    Example: ``gx.lbfgs(first_step="unit", linesearch=gx.scale_by_more_thuente())``.
    """
    _check_wolfe_arguments(init, c1, c2, max_steps, max_step_size, approx_dec_rtol)
    check("xtol", xtol, low=0.0)

    def init_fn(params):
        ps, treedef = tensor_leaves(params)
        return MoreThuenteState(running(0.0, ps), count(0, ps), running(math.inf, ps),
                                tree_unflatten([torch.zeros_like(p) for p in ps], treedef))

    def update(updates, state, params=None, *, inplace=False, value=None, grad=None, value_fn=None,
               value_and_grad_fn=None, **extra_args):
        del inplace, extra_args
        line = Line("scale_by_more_thuente", updates, params, value=value, grad=grad, value_fn=value_fn,
                    value_and_grad_fn=value_and_grad_fn, need_grad_fn=True)
        t, f, gs = _more_thuente(line, _f(init), _f(c1), _f(c2), _f(xtol), 0.0, _f(max_step_size), max_steps,
                                 None if approx_dec_rtol is None else _f(approx_dec_rtol))
        ps = line.ps
        kept = tree_unflatten([g.to(p.dtype, copy=True) for g, p in zip(gs, ps)], line.treedef)
        return line.scaled(t), MoreThuenteState(running(t, ps), count(line.evaluations, ps), running(f, ps), kept)

    return GradientTransformation(init_fn, update)


# --- optax's backtracking line search ------------------------------------------------------


class BacktrackingLinesearchInfo(NamedTuple):
    num_linesearch_steps: torch.Tensor  # int32 0-dim: trials of the last search
    decrease_error: torch.Tensor  # float64 0-dim: how far the accepted step misses the condition (0: met)


class ScaleByBacktrackingLinesearchState(NamedTuple):
    learning_rate: torch.Tensor  # float64 0-dim: the accepted step
    value: torch.Tensor  # float64 0-dim: the loss at the accepted point
    grad: Tree  # the gradient there (a tree like params) with store_grad, else ()
    info: BacktrackingLinesearchInfo


@transform(inplace=True)  # never writes into its inputs; its updates are fresh tensors
def scale_by_backtracking_linesearch(max_backtracking_steps: int, slope_rtol: float = 1e-4,
                                     decrease_factor: float = 0.8, increase_factor: float = 1.5,
                                     max_learning_rate: float = 1.0, atol: float = 0.0, rtol: float = 0.0,
                                     store_grad: bool = False, verbose: bool = False) -> GradientTransformation:
    """optax's backtracking line search (``optax.scale_by_backtracking_linesearch``, Vaswani
    et al., 2019); needs ``params``, ``value``, ``grad`` and ``value_fn`` (or
    ``value_and_grad_fn``, which ``store_grad=True`` needs).

    Finds ``t`` with ``f(p + t d) <= (1 + rtol) f(p) + t slope_rtol <g, d> + atol``: the
    first trial is ``t = min(increase_factor t_prev, max_learning_rate)`` (``t_prev`` the last
    accepted step, 1 at first), then ``t <- decrease_factor t`` while the condition fails, for
    at most ``max_backtracking_steps + 1`` trials; the last trial is taken even when it fails,
    and ``t = 0`` when its loss is NaN. ``u <- t d``. The state keeps ``t``, the loss there
    and, with ``store_grad=True``, the gradient there (trials then evaluate with
    ``value_and_grad_fn``), for :func:`value_and_grad_from_state`. Defaults are optax's;
    ``verbose`` prints when the search fails.

    Example::

        tx = gx.chain(gx.scale(-1.0), gx.scale_by_backtracking_linesearch(max_backtracking_steps=15))
        updates, state = tx.update(grads, state, params, value=loss, grad=grads, value_fn=loss_fn)
    """
    check_int("max_backtracking_steps", max_backtracking_steps, low=0)
    check("slope_rtol", slope_rtol, low=0.0)
    check("decrease_factor", decrease_factor, low=0.0, high=1.0, low_open=True, high_open=True)
    check("increase_factor", increase_factor, low=1.0, allow_inf=True)
    check("max_learning_rate", max_learning_rate, low=0.0, low_open=True)
    check("atol", atol, low=0.0)
    check("rtol", rtol, low=0.0)
    name = "scale_by_backtracking_linesearch"

    def init_fn(params):
        ps = _params_leaves(params)
        grad = tree_unflatten([torch.zeros_like(p) for p in ps], tensor_leaves(params)[1]) if store_grad else ()
        return ScaleByBacktrackingLinesearchState(running(1.0, ps), running(math.inf, ps), grad,
                                                  BacktrackingLinesearchInfo(count(0, ps), running(math.inf, ps)))

    def update(updates, state, params=None, *, inplace=False, value=None, grad=None, value_fn=None,
               value_and_grad_fn=None, **extra_args):
        del inplace, extra_args
        line = Line(name, updates, params, value=value, grad=grad, value_fn=value_fn,
                    value_and_grad_fn=value_and_grad_fn, need_grad_fn=store_grad)
        c, dec, rt = _f(slope_rtol), _f(decrease_factor), _f(rtol)
        t = min(_f(increase_factor) * float(state.learning_rate), _f(max_learning_rate))
        new_value, new_grad, error, trials = line.value0, None, math.inf, 0
        while not error <= _f(atol) and trials <= max_backtracking_steps:
            if trials > 0:
                t *= dec
            if store_grad:
                new_value, _, new_grad = line.value_and_slope(t)
            else:
                new_value = line.value(t)
            error = nan_to_inf(max(new_value - (1 + rt) * line.value0 - t * c * line.slope0, 0.0))
            trials += 1
        if verbose and error > _f(atol):
            print(f"{name}: no step size found with sufficient decrease (value {line.value0}, slope "
                  f"{line.slope0}, step {t}, decrease error {error})" + ("; taking a step of 0 to avoid inf or nan "
                                                                         "values" if math.isinf(error) else ""))
        if math.isinf(error):
            t = 0.0
        ps = line.ps
        kept = () if not store_grad else tree_unflatten([g.to(p.dtype, copy=True) for g, p in zip(new_grad, ps)],
                                                        line.treedef)
        new = ScaleByBacktrackingLinesearchState(running(t, ps), running(new_value, ps), kept,
                                                 BacktrackingLinesearchInfo(count(trials, ps), running(error, ps)))
        return line.scaled(t), new

    return GradientTransformation(init_fn, update)


# --- optax's zoom line search --------------------------------------------------------------


class ZoomLinesearchInfo(NamedTuple):
    num_linesearch_steps: torch.Tensor  # int32 0-dim
    decrease_error: torch.Tensor  # float64 0-dim: 0 when the decrease condition holds at the step taken
    curvature_error: torch.Tensor  # float64 0-dim: 0 when the curvature condition holds there


class ScaleByZoomLinesearchState(NamedTuple):
    learning_rate: torch.Tensor  # float64 0-dim: the accepted step
    value: torch.Tensor  # float64 0-dim: the loss at the accepted point
    grad: Tree  # the gradient at the accepted point, a tree like params
    info: ZoomLinesearchInfo


def _cubicmin(a: float, fa: float, fpa: float, b: float, fb: float, c: float, fc: float) -> float:
    """A critical point of the cubic through ``(a, fa)`` with slope ``fpa``, ``(b, fb)`` and
    ``(c, fc)``; NaN where there is none (as scipy's ``_cubicmin``, which optax follows)."""
    db, dc = b - a, c - a
    denom = (db * dc) ** 2 * (db - dc)
    if denom == 0:
        return math.nan
    rb, rc = fb - fa - fpa * db, fc - fa - fpa * dc
    big_a = (dc * dc * rb - db * db * rc) / denom
    big_b = (-dc ** 3 * rb + db ** 3 * rc) / denom
    radical = big_b * big_b - 3.0 * big_a * fpa
    if not radical >= 0 or big_a == 0:
        return math.nan
    return a + (-big_b + math.sqrt(radical)) / (3.0 * big_a)


def _quadmin(a: float, fa: float, fpa: float, b: float, fb: float) -> float:
    db = b - a
    if db == 0:
        return math.nan
    big_b = (fb - fa - fpa * db) / (db * db)
    return math.nan if big_b == 0 else a - fpa / (2.0 * big_b)


class _Point(NamedTuple):
    t: float
    value: float
    slope: float


@transform(inplace=True)  # never writes into its inputs; its updates are fresh tensors
def scale_by_zoom_linesearch(max_linesearch_steps: int, max_learning_rate: float | None = None, tol: float = 0.0,
                             increase_factor: float = 2.0, slope_rtol: float = 1e-4, curv_rtol: float = 0.9,
                             approx_dec_rtol: float | None = 1e-6, stepsize_precision: float = 1e-5,
                             initial_guess_strategy: str = "keep", verbose: bool = False) -> GradientTransformation:
    """optax's zoom line search (``optax.scale_by_zoom_linesearch``; Nocedal & Wright, 2006,
    Alg. 3.5 and 3.6; Hager & Zhang, 2006, for the approximate decrease condition); needs
    ``params``, ``value``, ``grad`` and ``value_and_grad_fn`` (or ``value_fn``,
    differentiated with autograd, as optax differentiates it with JAX).

    Finds ``t`` with the decrease condition ``f(p + t d) <= f(p) + slope_rtol t <g, d> + tol``
    and the curvature condition ``|<g(p + t d), d>| <= curv_rtol |<g, d>| + tol``. Where
    ``f(p + t d) <= f(p) + approx_dec_rtol |f(p)|``, the approximate decrease condition
    ``<g(p + t d), d> <= (2 slope_rtol - 1) <g, d>`` may replace the first (``approx_dec_rtol=None``
    turns this off). Phase 1 tries ``t0`` (1 with ``initial_guess_strategy="one"``, the last
    accepted step with ``"keep"``), then ``increase_factor`` times the last trial (capped at
    ``max_learning_rate``) until an interval holding such a step is found; phase 2 zooms into it
    by cubic interpolation (through the interval's ends and the previous end), quadratic, or
    bisection, in that order of preference. After ``max_linesearch_steps`` evaluations, or
    when the interval is shorter than ``stepsize_precision``, the best trial meeting the
    decrease condition is taken, else the last one. ``u <- t d``; the state keeps ``t`` and
    the loss and gradient at ``p + t d``. Defaults are optax's; ``verbose`` prints when the
    search fails.

    Example::

        tx = gx.chain(gx.scale(-1.0), gx.scale_by_zoom_linesearch(max_linesearch_steps=15))
        updates, state = tx.update(grads, state, params, value=loss, grad=grads, value_and_grad_fn=vg_fn)
    """
    check_int("max_linesearch_steps", max_linesearch_steps, low=1)
    if max_learning_rate is not None:
        check("max_learning_rate", max_learning_rate, low=0.0, low_open=True, allow_inf=True)
    check("tol", tol, low=0.0)
    check("increase_factor", increase_factor, low=1.0, low_open=True)
    check("slope_rtol", slope_rtol, low=0.0)
    check("curv_rtol", curv_rtol, low=0.0, allow_inf=True)
    if approx_dec_rtol is not None:
        check("approx_dec_rtol", approx_dec_rtol, low=0.0)
    check("stepsize_precision", stepsize_precision, low=0.0)
    if initial_guess_strategy not in ("one", "keep"):
        raise ValueError(f"initial_guess_strategy must be 'one' or 'keep', got {initial_guess_strategy!r}")
    name = "scale_by_zoom_linesearch"

    def init_fn(params):
        ps, treedef = tensor_leaves(params)
        return ScaleByZoomLinesearchState(
            running(1.0, ps), running(math.inf, ps), tree_unflatten([torch.zeros_like(p) for p in ps], treedef),
            ZoomLinesearchInfo(count(0, ps), running(math.inf, ps), running(math.inf, ps)))

    def update(updates, state, params=None, *, inplace=False, value=None, grad=None, value_fn=None,
               value_and_grad_fn=None, **extra_args):
        del inplace, extra_args
        line = Line(name, updates, params, value=value, grad=grad, value_fn=value_fn,
                    value_and_grad_fn=value_and_grad_fn, need_grad_fn=True)
        guess = 1.0 if initial_guess_strategy == "one" else float(state.learning_rate)
        hp = {"max_steps": max_linesearch_steps, "t_max": None if max_learning_rate is None else _f(max_learning_rate),
              "tol": _f(tol), "increase": _f(increase_factor), "c1": _f(slope_rtol), "c2": _f(curv_rtol),
              "c3": None if approx_dec_rtol is None else _f(approx_dec_rtol), "precision": _f(stepsize_precision)}
        t, new_value, gs, steps, dec_err, curv_err = _zoom(line, guess, hp, verbose)
        ps = line.ps
        kept = tree_unflatten([g.to(p.dtype, copy=True) for g, p in zip(gs, ps)], line.treedef)
        info = ZoomLinesearchInfo(count(steps, ps), running(dec_err, ps), running(curv_err, ps))
        return line.scaled(t), ScaleByZoomLinesearchState(running(t, ps), running(new_value, ps), kept, info)

    return GradientTransformation(init_fn, update)


def _zoom(line: Line, guess: float, hp: dict, verbose: bool):
    """optax's zoom search as a loop over floats: returns ``(t, f, grad leaves, steps,
    decrease error, curvature error)`` at the step taken."""
    f0, s0, tol = line.value0, line.slope0, hp["tol"]

    def decrease_error(t: float, f: float, s: float) -> float:
        error = f - f0 - hp["c1"] * t * s0
        if hp["c3"] is not None:
            approx = nan_max(s - (2 * hp["c1"] - 1.0) * s0, f - f0 - hp["c3"] * abs(f0))
            error = nan_min(approx, error)
        return nan_to_inf(nan_max(error, 0.0))

    def curvature_error(s: float) -> float:
        return nan_to_inf(nan_max(abs(s) - hp["c2"] * abs(s0), 0.0))

    cur = _Point(0.0, f0, s0)  # the last trial
    grad = line.gs0
    low = high = cubic = cur
    safe, safe_grad = cur, line.gs0  # the best trial meeting the decrease condition (t = 0: none yet)
    dec_err = curv_err = math.inf
    interval_found = done = failed = False
    steps = 0
    while not (done or failed):
        if not interval_found:
            t = guess if steps == 0 else hp["increase"] * cur.t
            reached = False
            if hp["t_max"] is not None:
                reached = t >= hp["t_max"]
                t = min(t, hp["t_max"])
            f, s, g = line.value_and_slope(t)
            new = _Point(t, f, s)
            dec_err, curv_err = decrease_error(t, f, s), curvature_error(s)
            error = max(dec_err, curv_err)
            if dec_err <= tol:
                safe, safe_grad = new, g
            set_high = dec_err > 0.0 or (f >= cur.value and steps > 0)
            set_low = s >= 0.0 and not set_high
            low, high = (new, cur) if set_low else (cur, new)
            cubic = low
            interval_found = set_high or set_low or error <= tol
            done = error <= tol or (reached and not interval_found)
            failed = steps + 1 >= hp["max_steps"] and not done
            if verbose and reached and not interval_found:
                print("scale_by_zoom_linesearch: no interval satisfying the curvature condition; consider a larger "
                      f"max_learning_rate (step {t}, decrease error {dec_err}, curvature error {curv_err})")
        else:
            delta = abs(high.t - low.t)
            left, right = min(high.t, low.t), max(high.t, low.t)
            mid_cubic = _cubicmin(low.t, low.value, low.slope, high.t, high.value, cubic.t, cubic.value)
            mid_quad = _quadmin(low.t, low.value, low.slope, high.t, high.value)
            if left + 0.2 * delta < mid_cubic < right - 0.2 * delta:
                t = mid_cubic
            elif left + 0.1 * delta < mid_quad < right - 0.1 * delta:
                t = mid_quad
            else:
                t = (low.t + high.t) / 2.0
            f, s, g = line.value_and_slope(t)
            new = _Point(t, f, s)
            dec_err, curv_err = decrease_error(t, f, s), curvature_error(s)
            if dec_err <= tol and f < safe.value:
                safe, safe_grad = new, g
            done = max(dec_err, curv_err) <= tol
            high_to_new = dec_err > 0.0 or f >= low.value
            high_to_low = s * (high.t - low.t) >= 0.0 and not high_to_new
            cubic = high if (high_to_new or high_to_low) else low
            if high_to_new:
                high = new
            elif high_to_low:
                high, low = low, new
            else:
                low = new
            failed = (steps + 1 >= hp["max_steps"] or (delta <= hp["precision"] and safe.t > 0.0)) and not done
        cur, grad = new, g
        steps += 1
        if failed:
            if verbose:
                print(f"scale_by_zoom_linesearch: search failed after {steps} steps (value {f0}, slope {s0}, step "
                      f"{cur.t}, decrease error {dec_err}, curvature error {curv_err}); "
                      + ("taking the best step with sufficient decrease" if safe.t > 0 else "no step decreases the "
                         "loss enough" + ("" if s0 < 0 else ": not a descent direction")))
            if safe.t > 0.0 or math.isinf(dec_err):
                cur, grad = safe, safe_grad
    return cur.t, cur.value, grad, steps, dec_err, curv_err


# --- reusing the last evaluation -----------------------------------------------------------


def value_and_grad_from_state(value_and_grad_fn: Callable[[Tree], tuple[torch.Tensor, Tree]]
                              ) -> Callable[..., tuple[torch.Tensor, Tree]]:
    """``fn(params, state) -> (loss, grads)``: the loss and gradient a line search kept in
    ``state`` at the point it accepted (``value`` and ``grad`` fields, as optax's
    ``value_and_grad_from_state``), or ``value_and_grad_fn(params)`` while the kept loss is
    not finite (before the first step). Only correct when ``params`` is the point the last
    update moved to and the loss is deterministic.

    Example::

        value_and_grad = gx.value_and_grad_from_state(vg_fn)
        value, grad = value_and_grad(params, state)
        updates, state = tx.update(grad, state, params, value=value, grad=grad, value_and_grad_fn=vg_fn)
    """

    def fn(params: Tree, state: Tree) -> tuple[torch.Tensor, Tree]:
        value, grad = tree_get(state, "value"), tree_get(state, "grad")
        if value is None or grad is None or isinstance(grad, tuple) and not grad:
            raise ValueError("no value and grad found in the state: use scale_by_zoom_linesearch, "
                             "scale_by_strong_wolfe, or scale_by_backtracking_linesearch with store_grad=True")
        if not bool(torch.isfinite(value)):
            return value_and_grad_fn(params)
        return value, grad

    return fn
