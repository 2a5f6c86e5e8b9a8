"""Full-matrix quasi-Newton preconditioners over all parameters as one vector.

Every transform here keeps one dense ``n x n`` matrix over the ``n`` elements of all leaves,
flattened and concatenated in leaf order (as :func:`gradtx.flatten` does; a complex leaf as its
real and imaginary parts). The matrix is built from the pairs

    ``s_k = x_k - x_{k-1}``  (the change of the params between two calls)
    ``y_k = g_k - g_{k-1}``  (the change of the *incoming update* ``g`` at this chain position)

so placed first in a chain ``g`` is the gradient (as torchzero's quasi-Newton modules take
their input). The output is the preconditioned direction ``H_k g_k`` (inverse form) or
``B_k^{-1} g_k`` (Hessian form), not a step: follow with ``scale_by_lr(lr)`` or a line search
to descend (``gx.chain(gx.scale_by_bfgs(), gx.scale_by_lr(1.0))`` is BFGS with a unit step).

Shared rules (one machinery, each method a small update rule):

- The first call keeps ``H_0 = I / init_scale`` (``B_0 = init_scale I``) and returns
  ``H_0 g_0``. With ``init_scale="auto"`` (the default) ``H_0 = I`` and, on the first
  update with ``s.y > 0`` and ``y.y > 0``, the matrix is first scaled to
  ``H_0 = (s.y / y.y) I`` (``B_0 = (y.y / s.y) I``; Nocedal & Wright 2006, eq. 6.20).
- An update is skipped (the matrix kept) when ``s`` or ``y`` is zero, when the method's
  curvature test fails (each method says which) or when the new matrix is not finite.
- ``reset_interval=k`` resets the matrix to ``H_0`` on every ``k``-th call (``"auto"``:
  ``n + 1``), the pair of that call only setting the automatic scale, as torchzero's
  ``restart_interval``.
- The matrix and vectors are kept in the promoted dtype of the params and updates, at least
  float32 (float64 for float64 params); each update leaf keeps its own dtype.
- The Hessian form solves ``B x = g`` (``torch.linalg.solve_ex``); where ``B`` is singular
  the update is passed through unchanged.
- Methods with a second matrix (Thomas's, projected Newton-Raphson) or that read the loss
  (NewSSM, ``value``) keep a :class:`QuasiNewtonExtraState`; a skipped pair changes neither.
- Each update rule is also a model of the Hessian for a trust region:
  :func:`gradtx.quasi_newton_hessian` (the keys of ``MODELS``).

Not leafwise: ``gx.Optimizer`` runs these once over every parameter of every group, and
every parameter must have a gradient at every step (the state is over the whole vector).
Memory and time are ``O(n^2)`` per step (``O(n^3)`` for the Hessian form's solve): for
models beyond a few thousand parameters use a limited-memory method (:func:`scale_by_lsr1`).

References: J. Nocedal & S. J. Wright, *Numerical Optimization*, 2nd ed., Springer 2006,
ch. 6; E. Spedicato & Z. Huang, "Numerical experience with Newton-like methods for nonlinear
algebraic systems", Computing 58 (1997) 69-89 (the rank-one class ``H + (s - Hy) c^T / c^T y``);
torchzero 0.4's ``quasi_newton`` modules (the catalogue and conventions).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from .._hparams import check, check_int
from .._tree import Tree, TreeDef, flatten_up_to, tensor_leaves, tree_unflatten
from ..base import GradientTransformation, transform
from ._vector import concat, split, wide

__all__ = ["QuasiNewtonExtraState", "QuasiNewtonState", "scale_by_bfgs", "scale_by_broyden_bad",
           "scale_by_broyden_good", "scale_by_dfp", "scale_by_greenstadt1", "scale_by_greenstadt2", "scale_by_hoshino",
           "scale_by_icum", "scale_by_mccormick", "scale_by_new_ssm", "scale_by_pearson",
           "scale_by_projected_newton_raphson", "scale_by_psb", "scale_by_shor_r", "scale_by_sr1", "scale_by_ssvm",
           "scale_by_thomas"]


class QuasiNewtonState(NamedTuple):
    count: torch.Tensor  # int32 0-dim: calls so far
    scaled: torch.Tensor  # bool 0-dim: the initial scale is set (always, unless init_scale="auto")
    matrix: torch.Tensor  # (n, n): H (inverse form) or B (Hessian form)
    prev_params: torch.Tensor  # (n,): x_{k-1}
    prev_update: torch.Tensor  # (n,): g_{k-1}


# --- one vector over all leaves ---------------------------------------------------------------


def vector_inputs(name: str, updates: Tree, params: Tree | None, size: int
                  ) -> tuple[list[torch.Tensor], TreeDef, torch.Tensor, torch.Tensor]:
    """``(update leaves, treedef, g, x)``: the updates and params as vectors in the dtype of
    the state (``size`` elements), or ``ValueError`` saying why they do not fit it."""
    if params is None:
        raise ValueError(f"{name} needs params (s = x_k - x_(k-1)): call update(updates, state, params)")
    us, treedef = tensor_leaves(updates)
    ps = flatten_up_to(params, treedef, "params")
    dtype = wide(us, ps)
    device = us[0].device if us else None
    g, x = concat(us, dtype, device), concat(ps, dtype, device)
    if g.numel() != size:
        raise ValueError(
            f"{name}: the updates hold {g.numel()} elements but the state was built for {size} (the leaves given to "
            "init): the quasi-Newton matrix is over all leaves, so every leaf needs an update at every step. Under "
            "gx.Optimizer every parameter must have a gradient at every step (set a missing .grad to zeros)")
    return us, treedef, g, x


def _tiny(x: torch.Tensor) -> float:
    return torch.finfo(x.dtype).tiny


def _safe(denominator: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
    # 1 where the update is skipped: no inf/nan in the discarded branch (nor in its gradient)
    return torch.where(ok, denominator, torch.ones_like(denominator))


def _norm(x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(x)


# --- the update rules: (M, s, y, g_prev, eps) -> (new M, ok) ------------------------------------
# M is H (inverse form) or B (Hessian form); ok is a 0-dim bool (False: keep M).

Rule = Callable[..., tuple[torch.Tensor, torch.Tensor]]


def bfgs_inverse(H, s, y, g_prev, eps, **_):
    """``H+ = (I - rho s y^T) H (I - rho y s^T) + rho s s^T``, ``rho = 1 / s.y``; skip if ``s.y <= eps``."""
    sy = s @ y
    ok = sy > eps
    rho = 1 / _safe(sy, ok)
    Hy = H @ y
    new = H + torch.outer(s, s) * (rho * (1 + rho * (y @ Hy))) - rho * (torch.outer(Hy, s) + torch.outer(s, Hy))
    return new, ok


def bfgs_hessian(B, s, y, g_prev, eps, **_):
    """``B+ = B - B s s^T B / s^T B s + y y^T / s.y``; skip if ``s.y <= eps`` or ``s^T B s <= 0``."""
    sy = s @ y
    Bs = B @ s
    sBs = s @ Bs
    ok = (sy > eps) & (sBs > _tiny(sBs))
    new = B - torch.outer(Bs, Bs) / _safe(sBs, ok) + torch.outer(y, y) / _safe(sy, ok)
    return new, ok


def dfp_inverse(H, s, y, g_prev, eps, **_):
    """``H+ = H - H y y^T H / y^T H y + s s^T / s.y``; skip if ``s.y <= eps`` or ``y^T H y <= 0``."""
    sy = s @ y
    Hy = H @ y
    yHy = y @ Hy
    ok = (sy > eps) & (yHy > _tiny(yHy))
    new = H - torch.outer(Hy, Hy) / _safe(yHy, ok) + torch.outer(s, s) / _safe(sy, ok)
    return new, ok


def dfp_hessian(B, s, y, g_prev, eps, **_):
    """``B+ = (I - rho y s^T) B (I - rho s y^T) + rho y y^T``, ``rho = 1 / s.y``; skip if ``s.y <= eps``."""
    # BFGS's inverse update with s and y exchanged (the duality of Nocedal & Wright, sec. 6.1)
    return bfgs_inverse(B, y, s, g_prev, eps)


def sr1_inverse(H, s, y, g_prev, eps, **_):
    """``H+ = H + z z^T / z.y``, ``z = s - H y``; skip if ``|z.y| <= eps ||z|| ||y||``."""
    z = s - H @ y
    zy = z @ y
    ok = (zy.abs() > eps * _norm(z) * _norm(y)) & (zy.abs() > _tiny(zy))
    return H + torch.outer(z, z) / _safe(zy, ok), ok


def sr1_hessian(B, s, y, g_prev, eps, **_):
    """``B+ = B + r r^T / r.s``, ``r = y - B s``; skip if ``|r.s| <= eps ||r|| ||s||`` (N&W eq. 6.26)."""
    return sr1_inverse(B, y, s, g_prev, eps)


def psb_hessian(B, s, y, g_prev, eps, **_):
    """``B+ = B + (r s^T + s r^T) / s.s - (r.s) s s^T / (s.s)^2``, ``r = y - B s``."""
    r = y - B @ s
    ss = s @ s
    ok = ss > _tiny(ss)
    ss = _safe(ss, ok)
    new = B + (torch.outer(r, s) + torch.outer(s, r)) / ss - torch.outer(s, s) * ((r @ s) / (ss * ss))
    return new, ok


def _rank_one_class(H, s, y, c, eps):
    """Spedicato & Huang's class: ``H+ = H + (s - H y) c^T / c.y``; skip if ``|c.y| <= eps ||c|| ||y||``."""
    cy = c @ y
    ok = (cy.abs() > eps * _norm(c) * _norm(y)) & (cy.abs() > _tiny(cy))
    return H + torch.outer(s - H @ y, c) / _safe(cy, ok), ok


def broyden_good_inverse(H, s, y, g_prev, eps, **_):
    """``c = H^T s``: the inverse of Broyden's good update of ``B`` (Sherman-Morrison)."""
    return _rank_one_class(H, s, y, H.T @ s, eps)


def broyden_good_hessian(B, s, y, g_prev, eps, **_):
    """``B+ = B + (y - B s) s^T / s.s`` (Broyden 1965)."""
    return _rank_one_class(B, y, s, s, eps)


def broyden_bad_inverse(H, s, y, g_prev, eps, **_):
    """``H+ = H + (s - H y) y^T / y.y`` (Broyden 1965, the "bad" update)."""
    return _rank_one_class(H, s, y, y, eps)


def broyden_bad_hessian(B, s, y, g_prev, eps, **_):
    """``B+ = B + (y - B s) y^T B / y^T B s``: the inverse of the bad update of ``H`` (Sherman-Morrison)."""
    return _rank_one_class(B, y, s, B.T @ y, eps)


def greenstadt1_inverse(H, s, y, g_prev, eps, **_):
    """``c = g_{k-1}`` (the previous update)."""
    return _rank_one_class(H, s, y, g_prev, eps)


def greenstadt2_inverse(H, s, y, g_prev, eps, **_):
    """``c = H H y``."""
    return _rank_one_class(H, s, y, H @ (H @ y), eps)


def mccormick_inverse(H, s, y, g_prev, eps, **_):
    """``c = s``: ``H+ = H + (s - H y) s^T / s.y`` (Pearson 1969, algorithm 2)."""
    return _rank_one_class(H, s, y, s, eps)


def pearson_inverse(H, s, y, g_prev, eps, **_):
    """``c = H y``: ``H+ = H + (s - H y) (H y)^T / y^T H y`` (Pearson 1969, algorithm 3)."""
    return _rank_one_class(H, s, y, H @ y, eps)


def icum_inverse(H, s, y, g_prev, eps, **_):
    """``c = e_j``, ``j = argmax_i |y_i|``: only column ``j`` of ``H`` changes."""
    c = torch.zeros_like(y)
    if y.numel():
        c = c.scatter(0, y.abs().argmax().reshape(1), torch.ones(1, dtype=y.dtype, device=y.device))
    return _rank_one_class(H, s, y, c, eps)


def hoshino_inverse(H, s, y, g_prev, eps, **_):
    """``H+ = H + [(1 + 2 y^T H y / s.y) s s^T - s y^T H - H y s^T - H y y^T H] / (s.y + y^T H y)``."""
    sy = s @ y
    Hy = H @ y
    yHy = y @ Hy
    denom = sy + yHy
    ok = (sy.abs() > eps) & (denom.abs() > _tiny(denom))
    sy, denom = _safe(sy, ok), _safe(denom, ok)
    yH = H.T @ y
    num = torch.outer(s, s) * (1 + 2 * yHy / sy) - torch.outer(s, yH) - torch.outer(Hy, s) - torch.outer(Hy, yH)
    return H + num / denom, ok


def ssvm_inverse(H, s, y, g_prev, eps, *, g, switch, **_):
    """Oren & Spedicato's self-scaling variable metric update (torchzero's ``SSVM`` definitions):
    ``H+ = mu (H - H y y^T H / y^T H y + theta v v^T) + s s^T / s.y``,
    ``v = sqrt(y^T H y) (s / s.y - H y / y^T H y)``, ``mu = phi g.s / g^T H y + (1 - phi) s.y / y^T H y``."""
    sy = s @ y
    Hy = H @ y
    yHy, gHy, gs = y @ Hy, g @ Hy, g @ s
    ok = (sy > eps) & (yHy > _tiny(yHy)) & (gHy.abs() > _tiny(gHy))
    sy, yHy, gHy = _safe(sy, ok), _safe(yHy, ok), _safe(gHy, ok)
    one = torch.ones_like(sy)
    if isinstance(switch, tuple):
        phi, theta = switch
    else:
        o, t, e = sy, yHy, gs / gHy
        if switch in (1, 3):
            denom = e * t - o * o
            middle = o * (e - o) if switch == 1 else o * (t - o)
            low, high = e / o <= 1, o / t >= 1
            phi = torch.where(low, e / o, torch.where(high, o / t, one))
            theta = torch.where(low | high, torch.where(low, 0 * one, one),
                                middle / torch.where(low | high, one, denom))
        elif switch == 2:
            phi = (e / t).sqrt()
            theta = 1 / (1 + (t * e / (o * o)).sqrt())
        else:
            phi, theta = e / t, 0.5 * one
    v = yHy.sqrt() * (s / sy - Hy / yHy)
    mu = phi * (gs / gHy) + (1 - phi) * (sy / yHy)
    new = mu * (H - torch.outer(Hy, H.T @ y) / yHy + theta * torch.outer(v, v)) + torch.outer(s, s) / sy
    return new, ok


def shor_r_inverse(H, s, y, g_prev, eps, *, alpha, **_):
    """``H+ = H - (1 - alpha^2) H y (H y)^T / y^T H y`` (space dilation along ``y``)."""
    Hy = H @ y
    yHy = y @ Hy
    ok = yHy > _tiny(yHy)
    return H - (1 - alpha * alpha) * torch.outer(Hy, Hy) / _safe(yHy, ok), ok


def thomas_inverse(H, s, y, g_prev, eps, *, extra, **_):
    """Thomas (1975): ``d = (R + |s| I / 2) s``, ``c = H^T d`` in the rank-one class, and
    ``R+ = (1 + |s|) (R + |s| I - d d^T / d.s)``; skipped (``R`` too) if ``|c.y| <= eps ||c|| ||y||``
    or ``d.s = 0``."""
    s_norm = _norm(s)
    d = extra @ s + (0.5 * s_norm) * s
    ds = d @ s
    fine = ds.abs() > _tiny(ds)
    eye = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    r = (1 + s_norm) * (extra + s_norm * eye - torch.outer(d, d) / _safe(ds, fine))
    new, ok = _rank_one_class(H, s, y, H.T @ d, eps)
    return new, ok & fine, r


def projected_newton_raphson_inverse(H, s, y, g_prev, eps, *, extra, **_):
    """Pearson (1969), algorithm 7: ``H+ = H - H y (H y)^T / y^T H y`` (a projection) and
    ``R+ = R + (s - R y) (H y)^T / y^T H y``; skipped if ``|y^T H y| <= eps``."""
    Hy = H @ y
    yHy = y @ Hy
    ok = (yHy.abs() > eps) & (yHy.abs() > _tiny(yHy))
    yHy = _safe(yHy, ok)
    return H - torch.outer(Hy, Hy) / yHy, ok, extra + torch.outer(s - extra @ y, Hy) / yHy


def new_ssm_inverse(H, s, y, g_prev, eps, *, f, f_prev, kind, **_):
    """Moghrabi, Hassan & Askar (2022) as torchzero 0.4's ``NewSSM``:
    ``H+ = H - (H y s^T + s y^T H) / s.y + (1 / b + y^T H y / s.y) s s^T / s.y`` with
    ``b = (2 s.y + 2 (f - f_prev)) / s.y`` (``kind=1``) or ``(f_prev - f + 1 / (2 s.y)) / s.y``
    (``kind=2``); skipped if ``s.y < eps`` or ``b = 0``."""
    sy = s @ y
    ok = (sy >= eps) & (sy.abs() > _tiny(sy))
    sy = _safe(sy, ok)
    b = (2 * sy + 2 * (f - f_prev)) / sy if kind == 1 else (f_prev - f + 1 / (2 * sy)) / sy
    ok = ok & (b.abs() > _tiny(b))
    b = _safe(b, ok)
    Hy, yH = H @ y, H.T @ y
    new = H - (torch.outer(Hy, s) + torch.outer(s, yH)) / sy + torch.outer(s, s) * ((1 / b + (y @ Hy) / sy) / sy)
    return new, ok


def _eye_extra(n: int, dtype: torch.dtype, device: Any) -> torch.Tensor:
    return torch.eye(n, dtype=dtype, device=device)


def _thomas_reset(initial: torch.Tensor, extra: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return initial, torch.eye(extra.shape[0], dtype=extra.dtype, device=extra.device)


def _pnr_reset(initial: torch.Tensor, extra: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # the projection is exhausted: restart from the estimate R built so far
    return extra, extra


# --- the machinery ------------------------------------------------------------------------------


def _check_init_scale(init_scale: Any) -> None:
    if isinstance(init_scale, str):
        if init_scale != "auto":
            raise ValueError(f"init_scale must be 'auto' or a positive number, got {init_scale!r}")
        return
    check("init_scale", init_scale, low=0.0, low_open=True)


def _check_reset_interval(reset_interval: Any) -> None:
    if reset_interval is None:
        return
    if isinstance(reset_interval, str):
        if reset_interval == "auto":
            return
        raise ValueError(f"reset_interval must be None, 'auto' or an int >= 1, got {reset_interval!r}")
    check_int("reset_interval", reset_interval, low=1)


def _check_common(eps: Any, init_scale: Any, reset_interval: Any) -> None:
    check("eps", eps, low=0.0)
    _check_init_scale(init_scale)
    _check_reset_interval(reset_interval)


def _initial(n: int, dtype: torch.dtype, device: torch.device | None, inverse: bool, init_scale: Any
             ) -> torch.Tensor:
    eye = torch.eye(n, dtype=dtype, device=device)
    if isinstance(init_scale, str):
        return eye
    scale = init_scale.to(dtype=dtype, device=device) if isinstance(init_scale, torch.Tensor) else init_scale
    return eye / scale if inverse else eye * scale


def _damped(y: torch.Tensor, s: torch.Tensor, M: torch.Tensor, inverse: bool) -> torch.Tensor:
    """Powell's damping (Nocedal & Wright, procedure 18.2): ``r = theta y + (1 - theta) B s`` with
    ``theta = 1`` if ``s.y >= 0.2 s^T B s``, else ``0.8 s^T B s / (s^T B s - s.y)``."""
    if inverse:
        Bs, info = torch.linalg.solve_ex(M, s)
        Bs = torch.where(info == 0, Bs, s)
    else:
        Bs = M @ s
    sBs, sy = s @ Bs, s @ y
    weak = sy < 0.2 * sBs
    theta = torch.where(weak, 0.8 * sBs / _safe(sBs - sy, weak), torch.ones_like(sy))
    return theta * y + (1 - theta) * Bs


class Extra(NamedTuple):
    """A method's own tensor beside the matrix (Thomas's ``R``, the projected Newton-Raphson
    estimate ``R``): ``init(n, dtype, device)``, and ``reset(H_0, extra) -> (matrix, extra)`` on
    a reset (``keep_scale``: a reset keeps the automatic scale already set)."""

    init: Callable[[int, torch.dtype, Any], torch.Tensor]
    reset: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    keep_scale: bool = False


THOMAS = Extra(_eye_extra, _thomas_reset)
PROJECTED_NEWTON_RAPHSON = Extra(_eye_extra, _pnr_reset, keep_scale=True)


def advance(M: torch.Tensor, scaled: torch.Tensor, count: torch.Tensor, s: torch.Tensor, y: torch.Tensor,
            g_prev: torch.Tensor, g: torch.Tensor, rule: Rule, *, inverse: bool, init_scale: Any = "auto",
            eps: Any = 1e-32, reset_interval: int | str | None = None, damping: bool = False,
            extra: torch.Tensor | None = None, extra_rule: Extra | None = None,
            **hyperparams: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One call's change of the matrix: ``(new M, new scaled, new extra)`` from the pair
    ``(s, y)`` of the ``count + 1``-th call (the rules of the module's docstring: reset,
    automatic initial scale, damping, the method's ``rule`` and its skips; a skipped pair
    changes nothing, ``extra`` included). Shared by the transforms and the trust region's
    quasi-Newton models (:func:`gradtx.quasi_newton_hessian`)."""
    n = M.shape[0]
    auto = isinstance(init_scale, str)
    valid = (count > 0) & (s != 0).any() & (y != 0).any()
    if reset_interval is not None:
        every = n + 1 if reset_interval == "auto" else reset_interval
        reset = valid & ((count + 1) % every == 0)
        initial = _initial(n, M.dtype, M.device, inverse, init_scale)
        if extra_rule is not None:
            initial, reset_extra = extra_rule.reset(initial, extra)
            extra = torch.where(reset, reset_extra, extra)
        M = torch.where(reset, initial, M)
        if extra_rule is None or not extra_rule.keep_scale:
            scaled = torch.where(reset, torch.tensor(not auto, device=scaled.device), scaled)
    else:
        reset = torch.zeros_like(valid)
    if auto:
        sy, yy = s @ y, y @ y
        first = valid & ~scaled & (sy > _tiny(sy)) & (yy > _tiny(yy))
        factor = (sy / _safe(yy, first)) if inverse else (yy / _safe(sy, first))
        M = torch.where(first, M * factor, M)
        scaled = scaled | first
    if damping:
        y = _damped(y, s, M, inverse)
    if extra_rule is None:
        new, ok = rule(M, s, y, g_prev, eps, g=g, **hyperparams)
    else:
        new, ok, new_extra = rule(M, s, y, g_prev, eps, g=g, extra=extra, **hyperparams)
    ok = ok & valid & ~reset & torch.isfinite(new).all()
    if extra_rule is not None:
        extra = torch.where(ok & torch.isfinite(new_extra).all(), new_extra, extra)
        ok = ok & torch.isfinite(new_extra).all()
    return torch.where(ok, new, M), scaled, extra


class QuasiNewtonExtraState(NamedTuple):
    count: torch.Tensor  # int32 0-dim: calls so far
    scaled: torch.Tensor  # bool 0-dim: the initial scale is set
    matrix: torch.Tensor  # (n, n): H
    extra: torch.Tensor  # the method's own tensor ((n, n) R, or (0,) when it keeps none)
    prev_params: torch.Tensor  # (n,): x_{k-1}
    prev_update: torch.Tensor  # (n,): g_{k-1}
    prev_value: torch.Tensor  # 0-dim: f_{k-1} (0 for a method that reads no loss)


def quasi_newton(name: str, rule: Rule, *, inverse: bool, init_scale: Any = "auto", eps: Any = 1e-32,
                 reset_interval: int | str | None = None, damping: bool = False, extra_rule: Extra | None = None,
                 needs_value: bool = False, **hyperparams: Any) -> GradientTransformation:
    """The shared machinery: ``rule(M, s, y, g_prev, eps, **hyperparams) -> (new M, ok)`` on
    the flattened params and updates (see the module's docstring for what it adds). With
    ``extra_rule`` the rule also takes and returns the method's own tensor (``extra=``), and
    with ``needs_value`` it reads ``f=value, f_prev=`` the previous call's loss; both keep a
    :class:`QuasiNewtonExtraState`."""
    if not isinstance(inverse, bool):
        raise ValueError(f"inverse must be True or False, got {inverse!r}")
    auto = isinstance(init_scale, str)
    extended = extra_rule is not None or needs_value

    def init(params):
        ps, _ = tensor_leaves(params)
        dtype = wide(ps)
        device = ps[0].device if ps else None
        n = sum(p.numel() * (2 if p.is_complex() else 1) for p in ps)
        zeros = torch.zeros(n, dtype=dtype, device=device)
        common = dict(count=torch.zeros((), dtype=torch.int32, device=device),
                      scaled=torch.tensor(not auto, device=device),
                      matrix=_initial(n, dtype, device, inverse, init_scale))
        if not extended:
            return QuasiNewtonState(**common, prev_params=zeros, prev_update=zeros.clone())
        extra = (torch.zeros(0, dtype=dtype, device=device) if extra_rule is None
                 else extra_rule.init(n, dtype, device))
        return QuasiNewtonExtraState(**common, extra=extra, prev_params=zeros, prev_update=zeros.clone(),
                                     prev_value=torch.zeros((), dtype=dtype, device=device))

    def update(updates, state, params=None, *, value=None, **extra_args):
        del extra_args
        n = state.prev_params.numel()
        us, treedef, g, x = vector_inputs(name, updates, params, n)
        dtype = state.matrix.dtype
        g, x = g.to(dtype), x.to(dtype)
        more = dict(hyperparams)
        if needs_value:
            if value is None:
                raise ValueError(f"{name} needs value (the loss at params): call update(updates, state, params, "
                                 "value=loss), or gx.Optimizer.step(closure)")
            value = torch.as_tensor(value).detach().reshape(()).to(dtype=dtype, device=state.prev_value.device)
            more.update(f=value, f_prev=state.prev_value)
        if extra_rule is not None:
            more.update(extra=state.extra, extra_rule=extra_rule)
        M, scaled, extra = advance(state.matrix, state.scaled, state.count, x - state.prev_params,
                                   g - state.prev_update, state.prev_update, g, rule, inverse=inverse,
                                   init_scale=init_scale, eps=eps, reset_interval=reset_interval, damping=damping,
                                   **more)
        if inverse:
            out = M @ g
        else:
            solved, info = torch.linalg.solve_ex(M, g)
            out = torch.where((info == 0) & torch.isfinite(solved).all(), solved, g)
        common = dict(count=state.count + 1, scaled=scaled, matrix=M, prev_params=x, prev_update=g)
        if not extended:
            new_state = QuasiNewtonState(**common)
        else:
            new_state = QuasiNewtonExtraState(**common, extra=state.extra if extra is None else extra,
                                              prev_value=value if needs_value else state.prev_value)
        return tree_unflatten(split(out, us), treedef), new_state

    return GradientTransformation(init, update)


# --- the public transforms ----------------------------------------------------------------------

_COMMON_ARGS = """
    Common arguments (see the module's docstring): ``init_scale`` (``"auto"``: Nocedal &
    Wright's ``s.y / y.y`` on the first update; a number ``c``: ``H_0 = I / c``, ``B_0 = c I``),
    ``reset_interval`` (``None``, an int ``k`` or ``"auto"`` = ``n + 1``: reset to ``H_0``
    every ``k`` calls)."""


@transform
def scale_by_bfgs(inverse: bool = True, init_scale: float | str = "auto", eps: float = 1e-32,
                  damping: bool = False, reset_interval: int | str | None = None) -> GradientTransformation:
    """BFGS (Broyden, Fletcher, Goldfarb, Shanno 1970): ``u <- H_k g_k`` on all params as one vector.

    Inverse form (default): ``H+ = (I - rho s y^T) H (I - rho y s^T) + rho s s^T``,
    ``rho = 1 / s.y`` (Nocedal & Wright 2006, eq. 6.17). Hessian form (``inverse=False``):
    ``B+ = B - B s s^T B / s^T B s + y y^T / s.y`` (eq. 6.19), ``u <- B^{-1} g``. The update
    is skipped when ``s.y <= eps`` (the curvature condition fails). ``damping=True`` replaces
    ``y`` by Powell's damped ``theta y + (1 - theta) B s`` (N&W procedure 18.2; in the
    inverse form ``B s`` is solved from ``H``, ``O(n^3)``), so ``s.y > 0`` always holds.
    With exact line searches on a strictly convex quadratic it stops after at most ``n``
    steps with ``H_n`` the inverse Hessian (quadratic termination; Fletcher, *Practical
    Methods of Optimization*, 1987, ch. 3). Defaults as torchzero's ``BFGS`` (``tol=1e-32``).
    torchzero's ``FletcherVMM`` (Fletcher 1970) is this inverse update, skipped when ``|s.y| < tol``.
    {common}

    Example: ``gx.chain(gx.scale_by_bfgs(), gx.scale_by_lr(1.0))``, or before a line search.
    """
    _check_common(eps, init_scale, reset_interval)
    rule = bfgs_inverse if inverse else bfgs_hessian
    return quasi_newton("scale_by_bfgs", rule, inverse=inverse, init_scale=init_scale, eps=eps,
                        reset_interval=reset_interval, damping=bool(damping))


@transform
def scale_by_dfp(inverse: bool = True, init_scale: float | str = "auto", eps: float = 1e-32,
                 reset_interval: int | str | None = None) -> GradientTransformation:
    """DFP (Davidon 1959; Fletcher & Powell 1963): ``u <- H_k g_k`` on all params as one vector.

    Inverse form: ``H+ = H - H y y^T H / y^T H y + s s^T / s.y`` (N&W eq. 6.15); Hessian form:
    ``B+ = (I - rho y s^T) B (I - rho s y^T) + rho y y^T``, ``rho = 1 / s.y`` (eq. 6.13),
    BFGS's inverse update with ``s`` and ``y`` exchanged. Skipped when ``s.y <= eps``.
    {common}

    Example: ``gx.chain(gx.scale_by_dfp(), gx.scale_by_lr(1.0))``.
    """
    _check_common(eps, init_scale, reset_interval)
    return quasi_newton("scale_by_dfp", dfp_inverse if inverse else dfp_hessian, inverse=inverse,
                        init_scale=init_scale, eps=eps, reset_interval=reset_interval)


@transform
def scale_by_sr1(inverse: bool = True, init_scale: float | str = 1.0, eps: float = 1e-8,
                 reset_interval: int | str | None = None) -> GradientTransformation:
    """Symmetric rank one (Davidon 1959; Conn, Gould & Toint 1991): ``u <- H_k g_k``.

    Inverse form: ``H+ = H + z z^T / z.y``, ``z = s - H y`` (N&W eq. 6.25), skipped when
    ``|z.y| <= eps ||z|| ||y||``; Hessian form: ``B+ = B + r r^T / r.s``, ``r = y - B s``
    (eq. 6.24), skipped when ``|r.s| <= eps ||r|| ||s||`` (eq. 6.26, N&W's ``r = 1e-8``).
    ``H`` need not stay positive definite: pair it with a trust region or a line search that
    checks the direction. On a quadratic with ``n`` linearly independent steps ``B_n`` is the
    Hessian (N&W thm. 6.1). Default ``init_scale=1`` (``H_0 = I``): with ``"auto"`` the first
    update is degenerate by construction (``z = s - (s.y / y.y) y`` gives ``z.y = 0``, so it is
    skipped; in the Hessian form ``B_1`` would be singular), though the scale is still set.
    {common}

    Example: ``gx.chain(gx.scale_by_sr1(), gx.scale_by_lr(1.0))``.
    """
    _check_common(eps, init_scale, reset_interval)
    return quasi_newton("scale_by_sr1", sr1_inverse if inverse else sr1_hessian, inverse=inverse,
                        init_scale=init_scale, eps=eps, reset_interval=reset_interval)


@transform
def scale_by_psb(init_scale: float | str = "auto", reset_interval: int | str | None = None) -> GradientTransformation:
    """Powell's symmetric Broyden (Powell 1970), Hessian form: ``u <- B_k^{-1} g_k``.

    ``B+ = B + (r s^T + s r^T) / s.s - (r.s) s s^T / (s.s)^2``, ``r = y - B s`` (Spedicato
    & Huang 1997; Dennis & Moré 1977): the symmetric matrix nearest ``B`` in Frobenius norm
    with ``B+ s = y``; skipped only when ``s = 0``.
    {common}

    Example: ``gx.chain(gx.scale_by_psb(), gx.scale_by_lr(1.0))``.
    """
    _check_common(0.0, init_scale, reset_interval)
    return quasi_newton("scale_by_psb", psb_hessian, inverse=False, init_scale=init_scale,
                        reset_interval=reset_interval)


_RANK_ONE = """
    One of Spedicato & Huang's (1997) rank-one class ``H+ = H + (s - H y) c^T / c.y`` (so
    ``H+ y = s``), skipped when ``|c.y| <= eps ||c|| ||y||``. ``H`` is not kept symmetric."""


@transform
def scale_by_broyden_good(inverse: bool = True, init_scale: float | str = "auto", eps: float = 1e-32,
                          reset_interval: int | str | None = None) -> GradientTransformation:
    """Broyden's "good" method (Broyden 1965): ``u <- H_k g_k``.

    Hessian form: ``B+ = B + (y - B s) s^T / s.s``; inverse form, its Sherman-Morrison inverse
    ``H+ = H + (s - H y) s^T H / s^T H y`` (``c = H^T s``).
    {rank_one}
    {common}

    Example: ``gx.chain(gx.scale_by_broyden_good(), gx.scale_by_lr(1.0))``.
    """
    _check_common(eps, init_scale, reset_interval)
    return quasi_newton("scale_by_broyden_good", broyden_good_inverse if inverse else broyden_good_hessian,
                        inverse=inverse, init_scale=init_scale, eps=eps, reset_interval=reset_interval)


@transform
def scale_by_broyden_bad(inverse: bool = True, init_scale: float | str = "auto", eps: float = 1e-32,
                         reset_interval: int | str | None = None) -> GradientTransformation:
    """Broyden's "bad" method (Broyden 1965): ``u <- H_k g_k``.

    Inverse form: ``H+ = H + (s - H y) y^T / y.y`` (``c = y``); Hessian form, its
    Sherman-Morrison inverse ``B+ = B + (y - B s) y^T B / y^T B s`` (torchzero's ``BroydenBad``
    uses ``(y - B s) y^T / y.s`` there instead, which is not this inverse).
    {rank_one}
    {common}

    Example: ``gx.chain(gx.scale_by_broyden_bad(), gx.scale_by_lr(1.0))``.
    """
    _check_common(eps, init_scale, reset_interval)
    return quasi_newton("scale_by_broyden_bad", broyden_bad_inverse if inverse else broyden_bad_hessian,
                        inverse=inverse, init_scale=init_scale, eps=eps, reset_interval=reset_interval)


def _inverse_only(public: str, rule: Rule, doc_rule: str, reference: str) -> Callable[..., GradientTransformation]:
    def build(init_scale: float | str = "auto", eps: float = 1e-32,
              reset_interval: int | str | None = None) -> GradientTransformation:
        _check_common(eps, init_scale, reset_interval)
        return quasi_newton(public, rule, inverse=True, init_scale=init_scale, eps=eps,
                            reset_interval=reset_interval)

    build.__name__ = build.__qualname__ = public
    build.__doc__ = f"""{reference}: ``u <- H_k g_k`` on all params as one vector (inverse form).

    {doc_rule}
    {_RANK_ONE}
    {_COMMON_ARGS}

    Example: ``gx.chain(gx.{public}(), gx.scale_by_lr(1.0))``, or before a line search.
    """
    build.__module__ = __name__
    return transform(build)


scale_by_greenstadt1 = _inverse_only(
    "scale_by_greenstadt1", greenstadt1_inverse,
    "``c = g_{k-1}`` (the previous incoming update; torchzero 0.4's ``Greenstadt1`` names this but reads "
    "``g_k``, its previous-gradient buffer being overwritten before the rule runs).",
    "Greenstadt's first method (Greenstadt 1970; as in Spedicato & Huang 1997 and torchzero)")
scale_by_greenstadt2 = _inverse_only(
    "scale_by_greenstadt2", greenstadt2_inverse, "``c = H H y``.",
    "Greenstadt's second method (Greenstadt 1970; as in Spedicato & Huang 1997 and torchzero)")
scale_by_mccormick = _inverse_only(
    "scale_by_mccormick", mccormick_inverse, "``c = s``: ``H+ = H + (s - H y) s^T / s.y``.",
    "McCormick's method (Pearson 1969, algorithm 2)")
scale_by_pearson = _inverse_only(
    "scale_by_pearson", pearson_inverse, "``c = H y``: ``H+ = H + (s - H y) (H y)^T / y^T H y``.",
    "Pearson's method (Pearson 1969, algorithm 3)")
scale_by_icum = _inverse_only(
    "scale_by_icum", icum_inverse, "``c = e_j`` with ``j = argmax_i |y_i|``: one column of ``H`` changes per step.",
    "Inverse column-updating method (Lopes & Martinez 1995)")


@transform
def scale_by_hoshino(init_scale: float | str = "auto", eps: float = 1e-32,
                     reset_interval: int | str | None = None) -> GradientTransformation:
    """Hoshino's variable metric method (Hoshino 1972): ``u <- H_k g_k``.

    ``H+ = H + [(1 + 2 y^T H y / s.y) s s^T - s y^T H - H y s^T - H y y^T H] / (s.y + y^T H y)``,
    skipped when ``|s.y| <= eps``. (torchzero's ``Horisho``.)
    {common}

    Example: ``gx.chain(gx.scale_by_hoshino(), gx.scale_by_lr(1.0))``.
    """
    _check_common(eps, init_scale, reset_interval)
    return quasi_newton("scale_by_hoshino", hoshino_inverse, inverse=True, init_scale=init_scale, eps=eps,
                        reset_interval=reset_interval)


def _check_switch(switch: Any) -> None:
    if isinstance(switch, tuple):
        if len(switch) != 2:
            raise ValueError(f"switch must be 1, 2, 3, 4 or a pair (phi, theta), got {switch!r}")
        check("switch[0] (phi)", switch[0])
        check("switch[1] (theta)", switch[1])
        return
    if isinstance(switch, bool) or switch not in (1, 2, 3, 4):
        raise ValueError(f"switch must be 1, 2, 3, 4 or a pair (phi, theta), got {switch!r}")


@transform
def scale_by_ssvm(switch: int | tuple[float, float] = 3, init_scale: float | str = "auto", eps: float = 1e-32,
                  reset_interval: int | str | None = None) -> GradientTransformation:
    """Self-scaling variable metric method (Oren & Spedicato 1976): ``u <- H_k g_k``.

    ``H+ = mu (H - H y y^T H / y^T H y + theta v v^T) + s s^T / s.y`` with
    ``v = sqrt(y^T H y) (s / s.y - H y / y^T H y)`` and
    ``mu = phi g.s / g^T H y + (1 - phi) s.y / y^T H y`` (``g`` the current update), skipped
    when ``s.y <= eps``. ``switch`` picks ``(phi, theta)``: a pair given directly, or, with
    ``o = s.y``, ``t = y^T H y``, ``e = g.s / g^T H y``: 1 and 3, ``(e / o, 0)`` if ``e <= o``,
    else ``(o / t, 1)`` if ``o >= t``, else ``phi = 1`` and ``theta = o (e - o) / (e t - o^2)``
    (1) or ``o (t - o) / (e t - o^2)`` (3); 2, ``(sqrt(e / t), 1 / (1 + sqrt(t e / o^2)))``;
    4, ``(e / t, 1 / 2)``. These are torchzero 0.4's ``SSVM`` definitions (its reading of the
    paper's ``epsilon`` as ``g.s / g^T H y``). ``theta = 0, mu = 1`` is DFP, ``theta = 1, mu = 1``
    BFGS.
    {common}

    Example: ``gx.chain(gx.scale_by_ssvm(), line_search)``.
    """
    _check_switch(switch)
    _check_common(eps, init_scale, reset_interval)
    return quasi_newton("scale_by_ssvm", ssvm_inverse, inverse=True, init_scale=init_scale, eps=eps,
                        reset_interval=reset_interval, switch=switch)


@transform
def scale_by_shor_r(alpha: float = 0.5, init_scale: float | str = 1.0,
                    reset_interval: int | str | None = None) -> GradientTransformation:
    """Shor's r-algorithm (Shor 1970; Burke, Lewis & Overton 2008): ``u <- H_k g_k``.

    Space dilation along ``y``: ``H+ = H - (1 - alpha^2) H y (H y)^T / y^T H y`` (``s`` is not
    used; the update is skipped only when ``y^T H y <= 0``). Like conjugate
    gradient it has no natural step size: follow it with a line search. Default
    ``init_scale=1`` (``H_0 = I``), as torchzero's ``ShorR``.
    {common}

    Example: ``gx.chain(gx.scale_by_shor_r(), line_search)``.
    """
    check("alpha", alpha, low=0.0, high=1.0)
    _check_common(0.0, init_scale, reset_interval)
    return quasi_newton("scale_by_shor_r", shor_r_inverse, inverse=True, init_scale=init_scale,
                        reset_interval=reset_interval, alpha=alpha)


@transform
def scale_by_thomas(init_scale: float | str = "auto", eps: float = 1e-32,
                    reset_interval: int | str | None = None) -> GradientTransformation:
    """Thomas's "optimal" quasi-Newton method (S. W. Thomas, *Sequential estimation techniques
    for quasi-Newton algorithms*, Cornell 1975; torchzero's ``ThomasOptimalMethod``): ``u <- H_k g_k``.

    With a second matrix ``R`` (``R_0 = I``, kept in state): ``d = (R + |s| I / 2) s``,
    ``H+ = H + (s - H y) d^T H / d^T H y`` (the rank-one class with ``c = H^T d``) and
    ``R+ = (1 + |s|) (R + |s| I - d d^T / d.s)``. A reset sets ``R`` to ``I`` again.
    Defaults as torchzero's (``init_scale="auto"``, ``eps=1e-32`` its ``tol``, no reset).
    {rank_one}
    {common}

    Memory: ``2 n^2``. Example: ``gx.chain(gx.scale_by_thomas(), gx.scale(-1.0), gx.scale_by_backtracking())``
    (a line search along ``-u``).
    """
    _check_common(eps, init_scale, reset_interval)
    return quasi_newton("scale_by_thomas", thomas_inverse, inverse=True, init_scale=init_scale, eps=eps,
                        reset_interval=reset_interval, extra_rule=THOMAS)


@transform
def scale_by_projected_newton_raphson(init_scale: float | str = "auto", eps: float = 1e-32,
                                      reset_interval: int | str | None = "auto") -> GradientTransformation:
    """Projected Newton-Raphson (J. D. Pearson, "Variable metric methods of minimisation",
    The Computer Journal 12(2), 1969, algorithm 7; torchzero's ``ProjectedNewtonRaphson``):
    ``u <- H_k g_k``.

    ``H+ = H - H y (H y)^T / y^T H y`` projects the directions seen out of ``H``, while
    ``R+ = R + (s - R y) (H y)^T / y^T H y`` (``R_0 = I``) builds an inverse-Hessian estimate
    with ``R y_i = s_i``; every ``reset_interval`` calls ``H`` restarts from ``R`` (not from
    ``H_0``; the automatic scale is kept). Default ``"auto"``, ``n + 1`` calls, as torchzero:
    ``n - 1`` pairs per cycle, the first call having none; with ``n + 2`` the ``n`` pairs of a
    quadratic empty ``H`` and make ``R = A^{-1}``, so the restart takes Newton's step.
    Skipped when ``|y^T H y| <= eps``.
    {common}

    Memory: ``2 n^2``. Example:
    ``gx.chain(gx.scale_by_projected_newton_raphson(), gx.scale(-1.0), gx.scale_by_backtracking())``
    (a line search along ``-u``).
    """
    _check_common(eps, init_scale, reset_interval)
    return quasi_newton("scale_by_projected_newton_raphson", projected_newton_raphson_inverse, inverse=True,
                        init_scale=init_scale, eps=eps, reset_interval=reset_interval,
                        extra_rule=PROJECTED_NEWTON_RAPHSON)


@transform
def scale_by_new_ssm(kind: int = 1, init_scale: float | str = "auto", eps: float = 1e-32,
                     reset_interval: int | str | None = None) -> GradientTransformation:
    """A self-scaling BFGS-type method (I. A. Moghrabi, B. A. Hassan & A. Askar, "New
    self-scaling quasi-Newton methods for unconstrained optimization", Int. J. Math. Comput.
    Sci. 17, 2022; torchzero's ``NewSSM``): ``u <- H_k g_k``; needs ``value`` (the loss at params).

    ``H+ = H - (H y s^T + s y^T H) / s.y + (1 / b + y^T H y / s.y) s s^T / s.y``, BFGS's
    inverse update with its ``1`` replaced by ``1 / b``, from the losses ``f = f(x_k)`` and
    ``f_prev = f(x_{k-1})`` (the previous call's ``value``):
    ``b = (2 s.y + 2 (f - f_prev)) / s.y`` (``kind=1``) or ``(f_prev - f + 1 / (2 s.y)) / s.y``
    (``kind=2``); ``value`` is read detached. These are torchzero 0.4's formulas (the paper was not at hand to check
    them against). Skipped when ``s.y < eps`` or ``b = 0``. Meant for a line search
    (torchzero's advice: strong Wolfe).
    Defaults as torchzero's (``kind=1``, ``init_scale="auto"``, ``eps=1e-32`` its ``tol``, no reset).
    {common}

    Example: ``gx.chain(gx.scale_by_new_ssm(), gx.scale(-1.0), gx.scale_by_backtracking())``
    (a line search along ``-u``), called with ``value=loss`` among the extra args.
    """
    if isinstance(kind, bool) or kind not in (1, 2):
        raise ValueError(f"kind must be 1 or 2, got {kind!r}")
    _check_common(eps, init_scale, reset_interval)
    return quasi_newton("scale_by_new_ssm", new_ssm_inverse, inverse=True, init_scale=init_scale, eps=eps,
                        reset_interval=reset_interval, needs_value=True, kind=kind)


for _fn in (scale_by_bfgs, scale_by_dfp, scale_by_sr1, scale_by_psb, scale_by_broyden_good, scale_by_broyden_bad,
            scale_by_hoshino, scale_by_ssvm, scale_by_shor_r, scale_by_greenstadt1, scale_by_greenstadt2,
            scale_by_mccormick, scale_by_pearson, scale_by_icum, scale_by_thomas, scale_by_projected_newton_raphson,
            scale_by_new_ssm):
    if _fn.__doc__ and "{" in _fn.__doc__:
        _fn.__doc__ = _fn.__doc__.replace("{common}", _COMMON_ARGS).replace("{rank_one}", _RANK_ONE)
del _fn


# --- the update rules as models of the Hessian, for gradtx.quasi_newton_hessian -----------------
# method -> (inverse rule or None, Hessian rule or None, default init_scale, default eps, Extra or None,
#            checks of its own hyperparameters, their defaults). Shor's r-algorithm is left out: it
# never reads s (no secant condition), so its H^{-1} is no model of the Hessian; projected
# Newton-Raphson's H is a projection that reaches 0 (its estimate R only takes over at a reset);
# NewSSM reads loss values, which a model is not given.

MODELS: dict[str, tuple[Any, ...]] = {
    "bfgs": (bfgs_inverse, bfgs_hessian, "auto", 1e-32, None, None, {}),
    "dfp": (dfp_inverse, dfp_hessian, "auto", 1e-32, None, None, {}),
    "sr1": (sr1_inverse, sr1_hessian, 1.0, 1e-8, None, None, {}),
    "psb": (None, psb_hessian, "auto", 0.0, None, None, {}),
    "broyden_good": (broyden_good_inverse, broyden_good_hessian, "auto", 1e-32, None, None, {}),
    "broyden_bad": (broyden_bad_inverse, broyden_bad_hessian, "auto", 1e-32, None, None, {}),
    "greenstadt1": (greenstadt1_inverse, None, "auto", 1e-32, None, None, {}),
    "greenstadt2": (greenstadt2_inverse, None, "auto", 1e-32, None, None, {}),
    "mccormick": (mccormick_inverse, None, "auto", 1e-32, None, None, {}),
    "pearson": (pearson_inverse, None, "auto", 1e-32, None, None, {}),
    "icum": (icum_inverse, None, "auto", 1e-32, None, None, {}),
    "hoshino": (hoshino_inverse, None, "auto", 1e-32, None, None, {}),
    "ssvm": (ssvm_inverse, None, "auto", 1e-32, None, _check_switch, {"switch": 3}),
    "thomas": (thomas_inverse, None, "auto", 1e-32, THOMAS, None, {}),
}
