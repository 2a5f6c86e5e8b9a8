"""Diagonal quasi-Newton preconditioners: a diagonal approximation of the (inverse) Hessian.

Every transform here keeps one diagonal ``D`` per leaf (shaped and typed like the param; a
complex leaf's real and imaginary parts are separate coordinates), so memory is ``O(n)``.
The diagonal is built from the pairs

    ``s_k = x_k - x_{k-1}``  (the change of the params between two calls)
    ``y_k = g_k - g_{k-1}``  (the change of the *incoming update* ``g`` at this chain position)

and the output is the preconditioned direction ``H g`` (inverse form, ``D = H``) or ``g / B``
(Hessian form, ``D = B``), elementwise; not a step: follow with ``scale_by_lr(lr)`` or a line
search (``gx.chain(gx.scale_by_quasi_cauchy(), gx.scale(-1.0), gx.scale_by_backtracking())``).

Every rule reads global sums over all leaves (``s.y``, ``sum s^4``, ...), taken over all
params as one vector as torchzero's modules do (``concat_params=True``): these transforms are
not leafwise, and under ``gx.Optimizer`` they run once over every parameter of every group.

Shared rules (those of :mod:`gradtx.search.quasi_newton`, on a diagonal):

- The first call keeps ``D_0 = 1 / init_scale`` (inverse form) or ``init_scale`` (Hessian
  form) and returns ``D_0 g_0`` (``g_0 / D_0``). With ``init_scale="auto"`` ``D_0 = 1`` and,
  on the first update with ``s.y > 0`` and ``y.y > 0``, the diagonal is first scaled by
  ``s.y / y.y`` (inverse) or ``y.y / s.y`` (Hessian; Nocedal & Wright 2006, eq. 6.20).
- An update is skipped (``D`` kept) when ``s`` or ``y`` is zero, when the method's curvature
  test fails (each method says which) or when the new diagonal is not finite.
- ``reset_interval=k`` resets ``D`` to ``D_0`` on every ``k``-th call (``"auto"``: ``n + 1``),
  the pair of that call only setting the automatic scale, as torchzero's ``restart_interval``.
- In the Hessian form an element whose quotient ``g_i / B_i`` is not finite (``B_i = 0``)
  passes ``g_i`` through.
- The global sums are taken in the widest precision of the tree (at least float32), each
  leaf's diagonal kept in its own dtype.

References: torchzero 0.4's ``DiagonalBFGS``, ``DiagonalSR1``, ``DiagonalQuasiCauchi``,
``DiagonalWeightedQuasiCauchi``, ``DNRTR`` and ``NewDQN`` (the catalogue, defaults and
conventions), and the papers each transform cites.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from .. import _foreach as F  # noqa: N812
from .._hparams import check
from .._tree import Tree, flatten_up_to, tensor_leaves, tree_unflatten
from ..base import GradientTransformation, transform
from ._vector import concat, split, wide
from .quasi_newton import _check_common

__all__ = ["DiagonalQuasiNewtonState", "scale_by_diagonal_bfgs", "scale_by_diagonal_sr1", "scale_by_dnrtr",
           "scale_by_new_dqn", "scale_by_quasi_cauchy", "scale_by_weighted_quasi_cauchy"]


class DiagonalQuasiNewtonState(NamedTuple):
    count: torch.Tensor  # int32 0-dim: calls so far
    scaled: torch.Tensor  # bool 0-dim: the initial scale is set (always, unless init_scale="auto")
    diagonal: Tree  # per leaf, like the params: H (inverse form) or B (Hessian form)
    prev_params: Tree  # per leaf: x_{k-1}
    prev_update: Tree  # per leaf: g_{k-1}


def _tiny(x: torch.Tensor) -> float:
    return torch.finfo(x.dtype).tiny


def _safe(denominator: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
    # 1 where the update is skipped: no inf/nan in the discarded branch (nor in its gradient)
    return torch.where(ok, denominator, torch.ones_like(denominator))


# --- the update rules on flat vectors: (D, s, y, eps) -> (new D, ok) -------------------------------


def diagonal_bfgs_inverse(H, s, y, eps):
    """The diagonal of BFGS's inverse update of ``diag(H)``:
    ``H+ = H - 2 rho H y s + rho (1 + rho y^T H y) s^2``, ``rho = 1 / s.y``; skip if ``s.y < eps``."""
    sy = s @ y
    ok = (sy >= eps) & (sy > _tiny(sy))
    rho = 1 / _safe(sy, ok)
    yHy = (y * H) @ y
    return H - 2 * rho * H * y * s + rho * (1 + rho * yHy) * s * s, ok


def diagonal_sr1_inverse(H, s, y, eps):
    """``H+ = H + z^2 / z.y``, ``z = s - H y``; skip if ``|z.y| <= eps ||z|| ||y||``."""
    z = s - H * y
    zy = z @ y
    ok = (zy.abs() > eps * torch.linalg.vector_norm(z) * torch.linalg.vector_norm(y)) & (zy.abs() > _tiny(zy))
    return H + z * z / _safe(zy, ok), ok


def diagonal_sr1_hessian(B, s, y, eps):
    """``B+ = B + r^2 / r.s``, ``r = y - B s``; skip if ``|r.s| <= eps ||r|| ||s||``."""
    return diagonal_sr1_inverse(B, y, s, eps)


def _weak_secant(B, s, y, weight):
    # the least change in the norm weighted by w^-1 with s^T B+ s = s.y: B + w (s.y - s^T B s) / s^T w s
    s2 = s * s
    den = s2 @ weight
    ok = den > _tiny(den)
    return B + weight * ((s @ y - s2 @ B) / _safe(den, ok)), ok


def quasi_cauchy_hessian(B, s, y, eps):
    """``B+ = B + s^2 (s.y - s^T B s) / sum s^4`` (Zhu, Nazareth & Wolkowicz 1999)."""
    return _weak_secant(B, s, y, s * s)


def weighted_quasi_cauchy_hessian(B, s, y, eps):
    """``B+ = B + s^2 B^2 (s.y - s^T B s) / sum s^4 B^2`` (Leong, Enshaei & Kek 2021)."""
    return _weak_secant(B, s, y, s * s * B * B)


def dnrtr_hessian(B, s, y, eps):
    """``B+ = B - 1 + s^2 (s.y + s.s - s^T B s) / sum s^4`` (Andrei 2019)."""
    # the weak secant correction of B - 1 (the trace term's shift), as Andrei's Lagrangian gives
    return _weak_secant(B - 1, s, y, s * s)


def new_dqn_hessian(B, s, y, eps):
    """``B+ = B + s^2 s.y / sum s^4`` (torchzero's ``NewDQN``; Nosrati & Amini 2024)."""
    s2 = s * s
    den = s2 @ s2
    ok = den > _tiny(den)
    return B + s2 * ((s @ y) / _safe(den, ok)), ok


Rule = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def _full_like(p: torch.Tensor, value: float) -> torch.Tensor:
    # a complex leaf's real and imaginary coordinates each get the value (not value + 0j)
    out = torch.empty_like(p)
    F.as_real([out])[0].fill_(value)
    return out


def _truncate(B: torch.Tensor, bounds: tuple[float, float] | None) -> torch.Tensor:
    # Andrei's safeguard: an element outside (lb, ub) is replaced by 1 where the diagonal is used
    if bounds is None:
        return B
    lb, ub = bounds
    return torch.where((B > lb) & (B < ub), B, torch.ones_like(B))


def diagonal_quasi_newton(name: str, rule: Rule, *, inverse: bool, init_scale: Any = "auto", eps: Any = 1e-32,
                          reset_interval: int | str | None = None,
                          bounds: tuple[float, float] | None = None) -> GradientTransformation:
    """The shared machinery: ``rule(D, s, y, eps) -> (new D, ok)`` on the flattened diagonal,
    params and updates (see the module's docstring for what it adds); ``bounds=(lb, ub)``
    truncates the Hessian diagonal where it is used (the stored one is kept)."""
    auto = isinstance(init_scale, str)

    def init(params):
        ps, treedef = tensor_leaves(params)
        device = ps[0].device if ps else None
        diag = [_full_like(p, 1.0) for p in ps]
        if not auto:  # (a tensor init_scale keeps its autograd link)
            def scaled_(d):
                c = init_scale.to(F.as_real([d])[0].dtype) if isinstance(init_scale, torch.Tensor) else init_scale
                return d / c if inverse else d * c
            diag = [scaled_(d) for d in diag]
        return DiagonalQuasiNewtonState(
            count=torch.zeros((), dtype=torch.int32, device=device),
            scaled=torch.tensor(not auto, device=device),
            diagonal=tree_unflatten(diag, treedef),
            prev_params=tree_unflatten([torch.zeros_like(p) for p in ps], treedef),
            prev_update=tree_unflatten([torch.zeros_like(p) for p in ps], treedef))

    def update(updates, state, params=None, **extra_args):
        del extra_args
        if params is None:
            raise ValueError(f"{name} needs params (s = x_k - x_(k-1)): call update(updates, state, params)")
        us, treedef = tensor_leaves(updates)
        ps = flatten_up_to(params, treedef, "params")
        ds = flatten_up_to(state.diagonal, treedef, "state.diagonal")
        xs_prev = flatten_up_to(state.prev_params, treedef, "state.prev_params")
        gs_prev = flatten_up_to(state.prev_update, treedef, "state.prev_update")
        dtype = wide(us, ps, ds)
        device = us[0].device if us else None
        g, x, D = concat(us, dtype, device), concat(ps, dtype, device), concat(ds, dtype, device)
        s, y = x - concat(xs_prev, dtype, device), g - concat(gs_prev, dtype, device)
        n = D.numel()
        count = state.count
        valid = (count > 0) & (s != 0).any() & (y != 0).any()
        scaled = state.scaled
        if reset_interval is not None:
            every = n + 1 if reset_interval == "auto" else reset_interval
            reset = valid & ((count + 1) % every == 0)
            if auto:
                initial = torch.ones_like(D)
            else:
                scale = init_scale.to(dtype) if isinstance(init_scale, torch.Tensor) else float(init_scale)
                initial = torch.full_like(D, 1.0) / scale if inverse else torch.full_like(D, 1.0) * scale
            D = torch.where(reset, initial, D)
            scaled = torch.where(reset, torch.tensor(not auto, device=scaled.device), scaled)
        else:
            reset = torch.zeros_like(valid)
        if auto:
            sy, yy = s @ y, y @ y
            first = valid & ~scaled & (sy > 2 * _tiny(sy)) & (yy > 2 * _tiny(yy))
            factor = (sy / _safe(yy, first)) if inverse else (yy / _safe(sy, first))
            D = torch.where(first, D * factor, D)
            scaled = scaled | first
        new, ok = rule(D, s, y, eps)
        ok = ok & valid & ~reset & torch.isfinite(new).all()
        D = torch.where(ok, new, D)
        if inverse:
            out = D * g
        else:
            quotient = g / _truncate(D, bounds)
            out = torch.where(torch.isfinite(quotient), quotient, g)
        new_state = DiagonalQuasiNewtonState(
            count=count + 1, scaled=scaled, diagonal=tree_unflatten(split(D, ds), treedef),
            prev_params=tree_unflatten(split(x, xs_prev), treedef),
            prev_update=tree_unflatten(split(g, gs_prev), treedef))
        return tree_unflatten(split(out, us), treedef), new_state

    return GradientTransformation(init, update)


# --- the public transforms ----------------------------------------------------------------------

_COMMON_ARGS = """
    Common arguments (see the module's docstring): ``init_scale`` (``"auto"``: Nocedal &
    Wright's ``s.y / y.y`` scale on the first update; a positive number ``c``: ``H_0 = 1 / c``,
    ``B_0 = c``), ``reset_interval`` (``None``, an int ``k >= 1`` or ``"auto"`` = ``n + 1``:
    reset to ``D_0`` every ``k`` calls)."""


def _check_bounds(lb: Any, ub: Any) -> tuple[float, float]:
    check("lb", lb, low=0.0)
    check("ub", ub, low=0.0)
    lb, ub = (float(v.detach()) if isinstance(v, torch.Tensor) else float(v) for v in (lb, ub))
    if not lb < ub:
        raise ValueError(f"lb must be below ub, got lb={lb!r}, ub={ub!r}")
    return lb, ub


@transform
def scale_by_diagonal_bfgs(init_scale: float | str = "auto", eps: float = 1e-32,
                           reset_interval: int | str | None = None) -> GradientTransformation:
    """Diagonal BFGS: ``u <- H_k * g_k`` with ``H`` the diagonal of BFGS's inverse update.

    ``H+ = diag((I - rho s y^T) H (I - rho y s^T) + rho s s^T)`` for diagonal ``H``, that is
    ``H+ = H - 2 rho H y s + rho (1 + rho y^T H y) s^2`` elementwise, ``rho = 1 / s.y``
    (Nocedal & Wright 2006, eq. 6.17, keeping the diagonal); skipped when ``s.y < eps``.
    It satisfies no secant equation and ``H`` may lose positivity on a nonconvex function:
    use a line search. torchzero 0.4's ``DiagonalBFGS`` writes ``y_i H_i y_i`` (elementwise)
    where the diagonal of BFGS has the sum ``y^T H y``; with one parameter they agree.
    Defaults as torchzero (``tol=1e-32``, ``init_scale="auto"``).
    {common}

    Example: ``gx.chain(gx.scale_by_diagonal_bfgs(), gx.scale(-1.0), gx.scale_by_backtracking())``,
    a line search along ``-u`` (or ``gx.scale_by_lr(lr)`` after it for a fixed step).
    """
    _check_common(eps, init_scale, reset_interval)
    return diagonal_quasi_newton("scale_by_diagonal_bfgs", diagonal_bfgs_inverse, inverse=True,
                                 init_scale=init_scale, eps=eps, reset_interval=reset_interval)


@transform
def scale_by_diagonal_sr1(inverse: bool = True, init_scale: float | str = 1.0, eps: float = 1e-8,
                          reset_interval: int | str | None = None) -> GradientTransformation:
    """Diagonal SR1: ``u <- H_k * g_k`` (or ``g_k / B_k``) with the diagonal of SR1's update.

    Inverse form: ``H+ = H + z^2 / z.y``, ``z = s - H y`` (elementwise products), skipped
    when ``|z.y| <= eps ||z|| ||y||`` (Nocedal & Wright 2006, eq. 6.25-6.26, keeping the
    diagonal). Hessian form (``inverse=False``): ``B+ = B + r^2 / r.s``, ``r = y - B s``,
    ``u <- g / B``. Neither satisfies the secant equation, nor keeps the diagonal positive:
    use a line search or a trust region. As :func:`gradtx.scale_by_sr1` the defaults are
    ``init_scale=1`` (with ``"auto"`` the first ``z.y`` is exactly 0) and ``eps=1e-8``
    (N&W's ``r``); torchzero's ``DiagonalSR1`` defaults to ``"auto"`` and ``tol=1e-32``.
    {common}

    Example: ``gx.chain(gx.scale_by_diagonal_sr1(), gx.scale(-1.0), gx.scale_by_backtracking())``,
    a line search along ``-u`` (or ``gx.scale_by_lr(lr)`` after it for a fixed step).
    """
    if not isinstance(inverse, bool):
        raise ValueError(f"inverse must be True or False, got {inverse!r}")
    _check_common(eps, init_scale, reset_interval)
    return diagonal_quasi_newton("scale_by_diagonal_sr1", diagonal_sr1_inverse if inverse else diagonal_sr1_hessian,
                                 inverse=inverse, init_scale=init_scale, eps=eps, reset_interval=reset_interval)


@transform
def scale_by_quasi_cauchy(init_scale: float | str = "auto",
                          reset_interval: int | str | None = None) -> GradientTransformation:
    """Diagonal quasi-Cauchy update (M. Zhu, J. L. Nazareth & H. Wolkowicz, "The quasi-Cauchy
    relation and diagonal updating", SIAM J. Optim. 9(4), 1999; torchzero's
    ``DiagonalQuasiCauchi``): ``u <- g_k / B_k``.

    The diagonal nearest ``B`` in Frobenius norm with the weak secant (quasi-Cauchy) relation
    ``s^T B+ s = s.y``: ``B+ = B + s^2 (s.y - s^T B s) / sum s^4`` (elementwise ``s^2``);
    skipped only when ``s = 0``. ``B`` is not kept positive (as torchzero, no safeguard; the
    paper also proposes variants with hereditary positive definiteness, not these): a negative
    element flips that coordinate's direction. A line search refuses a direction that points
    uphill with no move, after which ``s = 0`` and ``B`` is never updated again: the run
    stalls there (seen on a badly scaled quadratic; a reset too waits for a pair with
    ``s != 0``). :func:`scale_by_dnrtr`'s truncation keeps the direction downhill.
    {common}

    Example: ``gx.chain(gx.scale_by_quasi_cauchy(), gx.scale(-1.0), gx.scale_by_backtracking())``,
    a line search along ``-u`` (or ``gx.scale_by_lr(lr)`` after it for a fixed step).
    """
    _check_common(0.0, init_scale, reset_interval)
    return diagonal_quasi_newton("scale_by_quasi_cauchy", quasi_cauchy_hessian, inverse=False,
                                 init_scale=init_scale, reset_interval=reset_interval)


@transform
def scale_by_weighted_quasi_cauchy(init_scale: float | str = "auto",
                                   reset_interval: int | str | None = None) -> GradientTransformation:
    """Weighted diagonal quasi-Cauchy update (W. J. Leong, S. Enshaei & S. L. Kek, "Diagonal
    quasi-Newton methods via least change updating principle with weighted Frobenius norm",
    Numer. Algorithms 86, 2021; torchzero's ``DiagonalWeightedQuasiCauchi``): ``u <- g_k / B_k``.

    The least change in the norm weighted by ``B^{-1}`` under ``s^T B+ s = s.y``:
    ``B+ = B + s^2 B^2 (s.y - s^T B s) / sum s^4 B^2`` (elementwise); skipped when
    ``sum s^4 B^2 = 0``. The change of each element scales with ``B_i^2``, so an element
    that reaches 0 stays there (its quotient then passes ``g_i`` through). No positivity
    safeguard (as torchzero): use a line search, which stalls as :func:`scale_by_quasi_cauchy`'s
    when the direction points uphill.
    {common}

    Example: ``gx.chain(gx.scale_by_weighted_quasi_cauchy(), gx.scale(-1.0), gx.scale_by_backtracking())``,
    a line search along ``-u`` (or ``gx.scale_by_lr(lr)`` after it for a fixed step).
    """
    _check_common(0.0, init_scale, reset_interval)
    return diagonal_quasi_newton("scale_by_weighted_quasi_cauchy", weighted_quasi_cauchy_hessian, inverse=False,
                                 init_scale=init_scale, reset_interval=reset_interval)


@transform
def scale_by_dnrtr(lb: float = 1e-2, ub: float = 1e5, init_scale: float | str = "auto",
                   reset_interval: int | str | None = None) -> GradientTransformation:
    """Andrei's diagonal quasi-Newton update (N. Andrei, "A diagonal quasi-Newton updating
    method for unconstrained optimization", Numer. Algorithms 81(2), 2019, 575-590):
    ``u <- g_k / T(B_k)``.

    The diagonal minimising ``||B+ - B||_F^2 / 2 + tr(B+)`` (the size of the change and the
    trace) under the weak secant relation ``s^T B+ s = s.y``:
    ``B+ = B - 1 + s^2 (s.y + s.s - s^T B s) / sum s^4`` (elementwise ``s^2``); skipped only
    when ``s = 0``. Where it is used each element is truncated, ``T(B)_i = B_i`` if
    ``lb < B_i < ub`` else 1 (the stored diagonal is kept), which keeps the direction a
    descent direction. Defaults ``lb=1e-2, ub=1e5`` as torchzero's ``DNRTR``. Difference: torchzero
    0.4's ``DNRTR`` updates with the *weighted* quasi-Cauchy rule (its ``update_B`` calls
    ``diagonal_wqc_B_``, leaving its own ``dnrtr_B_`` unused); this is the paper's rule (the
    one of ``dnrtr_B_``), with torchzero's truncation.
    {common}

    Example: ``gx.chain(gx.scale_by_dnrtr(), gx.scale(-1.0), gx.scale_by_backtracking())``,
    a line search along ``-u`` (or ``gx.scale_by_lr(lr)`` after it for a fixed step).
    """
    bounds = _check_bounds(lb, ub)
    _check_common(0.0, init_scale, reset_interval)
    return diagonal_quasi_newton("scale_by_dnrtr", dnrtr_hessian, inverse=False, init_scale=init_scale,
                                 reset_interval=reset_interval, bounds=bounds)


@transform
def scale_by_new_dqn(lb: float = 1e-2, ub: float = 1e5, init_scale: float | str = "auto",
                     reset_interval: int | str | None = None) -> GradientTransformation:
    """A diagonal quasi-Newton method (M. Nosrati & K. Amini, "A new diagonal quasi-Newton
    algorithm for unconstrained optimization problems", Appl. Math. 69(4), 2024, 501-512;
    torchzero's ``NewDQN``): ``u <- g_k / T(B_k)``.

    ``B+ = B + s^2 s.y / sum s^4`` (elementwise ``s^2``), skipped only when ``s = 0``, with
    :func:`scale_by_dnrtr`'s truncation ``T`` (``lb < B_i < ub``, else 1) where it is used.
    These are torchzero 0.4's formula and defaults (``lb=1e-2, ub=1e5``); the paper was not at
    hand to check them against.
    {common}

    Example: ``gx.chain(gx.scale_by_new_dqn(), gx.scale(-1.0), gx.scale_by_backtracking())``,
    a line search along ``-u`` (or ``gx.scale_by_lr(lr)`` after it for a fixed step).
    """
    bounds = _check_bounds(lb, ub)
    _check_common(0.0, init_scale, reset_interval)
    return diagonal_quasi_newton("scale_by_new_dqn", new_dqn_hessian, inverse=False, init_scale=init_scale,
                                 reset_interval=reset_interval, bounds=bounds)


for _fn in (scale_by_diagonal_bfgs, scale_by_diagonal_sr1, scale_by_quasi_cauchy, scale_by_weighted_quasi_cauchy,
            scale_by_dnrtr, scale_by_new_dqn):
    if _fn.__doc__ and "{" in _fn.__doc__:
        _fn.__doc__ = _fn.__doc__.replace("{common}", _COMMON_ARGS)
del _fn
