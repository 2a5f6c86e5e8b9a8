"""A trust region with its radius in state: Cauchy point, dogleg and Levenberg–Marquardt
steps on a model of the loss, accepted or refused by the loss at the trial point."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from .._hparams import check, new_count
from ..base import EmptyState, GradientTransformation, transform
from ..transforms._common import first_device, leaves, leaves_like, need_params, refuse_complex, unflatten
from . import quasi_newton as _qn
from ._radius import accepted, check_radius_args, next_radius, ratio
from ._vector import concat, safe_div, split, wide

__all__ = ["BFGSHessianState", "HessianApproximation", "LBFGSHessianState", "QuasiNewtonHessianState",
           "TrustRegionState", "bfgs_hessian", "lbfgs_hessian", "quasi_newton_hessian", "scale_by_trust_region"]


class HessianApproximation(NamedTuple):
    """A model ``B`` of the Hessian over the flattened parameters (one real vector of ``n``
    coordinates, in the order of the tree's leaves), for :func:`scale_by_trust_region`.

    - ``init(x0) -> state``: ``x0`` the flat parameters (shape ``(n,)``); the state is a
      pytree of tensors whose structure, shapes and dtypes never change.
    - ``update(state, s, y) -> state``: after a step ``s = x_k - x_{k-1}`` with gradient change
      ``y = g_k - g_{k-1}`` (``s = 0`` after a refused step: nothing to learn).
    - ``matrix(state) -> B``: the ``(n, n)`` symmetric matrix of the model, or (the
      limited-memory model :func:`lbfgs_hessian`) an operator giving ``B v``, the Newton
      point and ``B``'s eigenpairs without forming the matrix.

    :func:`bfgs_hessian` is one, and :func:`quasi_newton_hessian` makes one of every
    full-matrix quasi-Newton update of :mod:`gradtx.search.quasi_newton`; an exact Hessian of
    a quadratic is ``matrix = lambda _: A``.
    Pickling ``gx.Optimizer`` needs the three to be module-level functions (or partials of
    them); :func:`bfgs_hessian`'s result pickles as its call.

    Example::

        A = torch.diag(torch.tensor([1.0, 10.0]))
        exact = gx.HessianApproximation(init=lambda x: (), update=lambda st, s, y: st, matrix=lambda st: A)
        tx = gx.scale_by_trust_region("dogleg", hessian=exact)
    """

    init: Callable[[torch.Tensor], Any]
    update: Callable[[Any, torch.Tensor, torch.Tensor], Any]
    matrix: Callable[[Any], torch.Tensor]


class BFGSHessianState(NamedTuple):
    matrix: torch.Tensor  # B, (n, n)
    count: torch.Tensor  # int32 0-dim: pairs (s, y) taken


def bfgs_hessian(init_scale: float | None = None) -> HessianApproximation:
    """The BFGS approximation of the Hessian itself (not its inverse), dense, as a
    :class:`HessianApproximation` (Nocedal & Wright, eq. 6.19):

    ``B <- B - (B s)(B s)^T / (s^T B s) + y y^T / (y^T s)``, skipped unless
    ``y^T s > sqrt(eps) |s| |y|`` (so ``B`` stays positive definite). ``B_0 = init_scale I``;
    with ``init_scale=None`` (default) ``B_0 = I`` until the first pair, which first rescales
    it to ``(y^T y / y^T s) I`` (the Hessian form of N&W eq. 6.20). Memory: ``n^2``.

    Example: ``gx.scale_by_trust_region("dogleg", hessian=gx.bfgs_hessian())``.
    """
    if init_scale is not None:
        check("init_scale", init_scale, low=0.0, low_open=True)

    def init(x0):
        scale = 1.0 if init_scale is None else init_scale
        eye = torch.eye(x0.numel(), dtype=x0.dtype, device=x0.device)
        return BFGSHessianState(matrix=eye * torch.as_tensor(scale, dtype=x0.dtype).to(x0.device),
                                count=new_count())

    def update(state, s, y):
        b = state.matrix
        sy = torch.dot(s, y)
        ok = sy > torch.finfo(s.dtype).eps ** 0.5 * torch.linalg.vector_norm(s) * torch.linalg.vector_norm(y)
        if init_scale is None:
            scale, _ = safe_div(torch.dot(y, y), sy)
            first = (state.count == 0).to(b.device)
            b = torch.where(first & ok, scale * torch.eye(b.shape[0], dtype=b.dtype, device=b.device), b)
        bs = b @ s
        inv_sbs, _ = safe_div(torch.ones_like(sy), torch.dot(s, bs))
        inv_sy, _ = safe_div(torch.ones_like(sy), sy)
        new = b - torch.outer(bs, bs) * inv_sbs + torch.outer(y, y) * inv_sy
        return BFGSHessianState(torch.where(ok, new, state.matrix), state.count + ok.to(state.count.device).int())

    out = _Rebuilt(init, update, _matrix_field)
    out.__dict__["recipe"] = (bfgs_hessian, () if init_scale is None else (init_scale,), {})
    return out


def _matrix_field(state: BFGSHessianState) -> torch.Tensor:
    return state.matrix


class _Rebuilt(HessianApproximation):
    # A model built by a public constructor: it prints and pickles as the call that built it
    # (pickling gx.Optimizer rebuilds the chain from its arguments; closures do not pickle).
    def __repr__(self) -> str:
        fn, args, kwargs = self.__dict__["recipe"]
        shown = [repr(a) for a in args] + [f"{k}={v!r}" for k, v in kwargs.items()]
        return f"{fn.__name__}({', '.join(shown)})"

    def __reduce__(self):
        fn, args, kwargs = self.__dict__["recipe"]
        return (functools.partial(fn, **kwargs) if kwargs else fn), args


class QuasiNewtonHessianState(NamedTuple):
    count: torch.Tensor  # int32 0-dim: pairs offered (refused steps included)
    scaled: torch.Tensor  # bool 0-dim: the initial scale is set
    matrix: torch.Tensor  # (n, n): B (Hessian form) or H (inverse form)
    grad: torch.Tensor  # (n,): g_{k-1}, the sum of the y's offered
    extra: torch.Tensor  # the method's own tensor ((0,) for most)


def quasi_newton_hessian(method: str = "sr1", inverse: bool | None = None, init_scale: float | str | None = None,
                         eps: float | None = None, **hyperparams: Any) -> HessianApproximation:
    """A quasi-Newton update of :mod:`gradtx.search.quasi_newton` as the model ``B`` of
    :func:`scale_by_trust_region`: the same update rule, initial scale and skips as the
    transform ``gx.scale_by_<method>`` (its docstring gives the rule), applied to the
    trust region's pairs ``(s, y)`` (a refused step offers ``s = 0``: skipped).

    ``method``: ``"bfgs"``, ``"dfp"``, ``"sr1"``, ``"psb"``, ``"broyden_good"``,
    ``"broyden_bad"``, ``"greenstadt1"``, ``"greenstadt2"``, ``"mccormick"``, ``"pearson"``,
    ``"icum"``, ``"hoshino"``, ``"ssvm"`` (``switch=``) or any other key of
    ``gradtx.search.quasi_newton.MODELS`` (Shor's r-algorithm is not one: it has no secant
    condition). ``inverse=None`` (default) keeps ``B``
    itself where the method has a Hessian form (BFGS, DFP, SR1, PSB, Broyden) and its
    inverse ``H`` otherwise; ``init_scale`` and ``eps`` default to the transform's. The
    model's matrix is the symmetric part ``(B + B^T) / 2`` (all a quadratic model sees; the
    rank-one class keeps no symmetric matrix), with ``B = H^{-1}`` in the inverse form
    (``O(n^3)`` per step; ``B = I`` while ``H`` is singular). ``g_k`` (SSVM's and
    Greenstadt's rules read it) is the sum of the ``y``'s offered.

    SR1, PSB and the rank-one class may give an indefinite ``B``: ``"levenberg_marquardt"``
    solves the subproblem for any symmetric ``B`` (Moré 1978), while ``"dogleg"``, defined
    for a positive definite ``B`` only, takes the Cauchy point (N&W Alg. 4.2) there. This is
    torchzero's ``LevenbergMarquardt(hess_module=tz.m.SR1(inverse=False))`` design with N&W's
    subproblems and radius rule. Memory: ``n^2`` (twice for Thomas's method).

    Example: ``gx.scale_by_trust_region("levenberg_marquardt", hessian=gx.quasi_newton_hessian("sr1"))``.
    """
    given = {k: v for k, v in (("inverse", inverse), ("init_scale", init_scale), ("eps", eps)) if v is not None}
    if method not in _qn.MODELS:
        raise ValueError(f"method must be one of {tuple(_qn.MODELS)}, got {method!r}")
    inverse_rule, hessian_rule, default_scale, default_eps, extra_rule, check_own, own = _qn.MODELS[method]
    if inverse is None:
        inverse = hessian_rule is None
    if not isinstance(inverse, bool):
        raise ValueError(f"inverse must be True, False or None, got {inverse!r}")
    rule = inverse_rule if inverse else hessian_rule
    if rule is None:
        raise ValueError(f"inverse={inverse}: the method {method!r} has no {'inverse' if inverse else 'Hessian'} form")
    unknown = set(hyperparams) - set(own)
    if unknown:
        raise ValueError(f"{method!r} takes no argument {sorted(unknown)} (its own: {sorted(own) or 'none'})")
    for value in hyperparams.values():
        check_own(value)
    settings = {**own, **hyperparams}
    scale = default_scale if init_scale is None else init_scale
    tol = default_eps if eps is None else eps
    _qn._check_common(tol, scale, None)
    auto = isinstance(scale, str)

    def init(x0):
        n = x0.numel()
        return QuasiNewtonHessianState(
            count=new_count(), scaled=torch.tensor(not auto),
            matrix=_qn._initial(n, x0.dtype, x0.device, inverse, scale), grad=torch.zeros_like(x0),
            extra=(torch.zeros(0, dtype=x0.dtype, device=x0.device) if extra_rule is None
                   else extra_rule.init(n, x0.dtype, x0.device)))

    def update(state, s, y):
        g = state.grad + y
        more = dict(settings)
        if extra_rule is not None:
            more.update(extra=state.extra, extra_rule=extra_rule)
        m, scaled, extra = _qn.advance(state.matrix, state.scaled.to(s.device), state.count.to(s.device), s, y,
                                       state.grad, g, rule, inverse=inverse, init_scale=scale, eps=tol, **more)
        return QuasiNewtonHessianState(state.count + 1, scaled.to(state.scaled.device), m, g,
                                       state.extra if extra is None else extra)

    out = _Rebuilt(init, update, functools.partial(_model_matrix, inverse))
    out.__dict__["recipe"] = (quasi_newton_hessian, (method,), {**given, **hyperparams})
    return out


def _model_matrix(inverse: bool, state: QuasiNewtonHessianState) -> torch.Tensor:
    m = state.matrix
    if inverse:
        b, info = torch.linalg.inv_ex(m)
        fine = (info == 0) & torch.isfinite(b).all()
        m = torch.where(fine, b, torch.eye(m.shape[0], dtype=m.dtype, device=m.device))
    return 0.5 * (m + m.T)


class LBFGSHessianState(NamedTuple):
    count: torch.Tensor  # int32 0-dim: pairs kept so far (the next goes to slot count % m)
    s: torch.Tensor  # (m, n): the kept steps, a ring buffer (zeros: empty slot)
    y: torch.Tensor  # (m, n): their gradient changes


def lbfgs_hessian(memory_size: int = 10) -> HessianApproximation:
    """The L-BFGS model of the Hessian for :func:`scale_by_trust_region`, never formed: the
    BFGS matrix built from ``B_0 = sigma I`` by the last ``memory_size`` pairs ``(s, y)``,
    held in its compact form (Byrd, Nocedal & Schnabel 1994, Thm 2.3)

    ``B = sigma I - Psi K^{-1} Psi^T``, ``Psi = [sigma S, Y]``,
    ``K = [[sigma S^T S, L], [L^T, -D]]``,

    ``S``, ``Y`` the pairs as columns (oldest first), ``L`` the strictly lower triangle of
    ``S^T Y``, ``D`` its diagonal, ``sigma = y^T y / s^T y`` of the newest pair (N&W eq.
    7.20's scale, ``1`` before any). A pair is kept when ``y^T s > sqrt(eps) |s| |y|``
    (as :func:`bfgs_hessian`), so ``B`` is positive definite. The subproblems use it without
    an ``n x n`` matrix: ``B v`` from the compact form (``O(mn)``), the dogleg's Newton point
    ``-B^{-1} g`` by the two-loop recursion from ``H_0 = I / sigma`` (N&W Alg. 7.4), and
    Levenberg–Marquardt's ``(B + mu I)^{-1} g`` from ``B``'s eigendecomposition on the span of
    ``Psi`` (a thin QR of ``Psi`` and a ``2m x 2m`` eigenproblem; ``sigma`` on the rest:
    Burdakov, Gong, Zikrin & Yuan 2017), the same subproblem solutions as the dense
    :func:`bfgs_hessian`-style path given the same ``B``. ``model.matrix(state)`` returns this
    operator (its ``dense()`` forms ``B``, for inspection). Memory: ``2 m n``; per step
    ``O(m n + m^3)``. Default ``memory_size=10`` (optax's ``lbfgs``).

    Example: ``gx.scale_by_trust_region("dogleg", hessian=gx.lbfgs_hessian(memory_size=10))``.
    """
    if isinstance(memory_size, bool) or not isinstance(memory_size, int) or memory_size < 1:
        raise ValueError(f"memory_size must be a positive int, got {memory_size!r}")

    def init(x0):
        zeros = torch.zeros(memory_size, x0.numel(), dtype=x0.dtype, device=x0.device)
        return LBFGSHessianState(count=new_count(), s=zeros, y=zeros.clone())

    def update(state, s, y):
        sy = torch.dot(s, y)
        ok = sy > torch.finfo(s.dtype).eps ** 0.5 * torch.linalg.vector_norm(s) * torch.linalg.vector_norm(y)
        slot = (torch.arange(memory_size, device=s.device) == (state.count.to(s.device) % memory_size)) & ok
        new_s = torch.where(slot.unsqueeze(-1), s.unsqueeze(0), state.s)
        new_y = torch.where(slot.unsqueeze(-1), y.unsqueeze(0), state.y)
        return LBFGSHessianState(state.count + ok.to(state.count.device).int(), new_s, new_y)

    out = _Rebuilt(init, update, _compact)
    out.__dict__["recipe"] = (lbfgs_hessian, (), {} if memory_size == 10 else {"memory_size": memory_size})
    return out


def _compact(state: LBFGSHessianState) -> CompactBFGS:
    return CompactBFGS(state)


class CompactBFGS:
    """The L-BFGS matrix of :func:`lbfgs_hessian` as an operator (``mv``, ``newton``,
    ``spectral``, ``dense``), built from its state; nothing of size ``n x n``."""

    def __init__(self, state: LBFGSHessianState):
        m = state.s.shape[0]
        count = state.count.to(state.s.device)
        order = (count + torch.arange(m, device=state.s.device)) % m  # oldest slot first
        self.s, self.y = state.s[order], state.y[order]
        self.valid = torch.arange(m, device=state.s.device) >= m - count.clamp(max=m)
        sy = (self.s * self.y).sum(-1)
        self.rho, _ = safe_div(torch.ones_like(sy), sy)
        sigma, ok = safe_div((self.y[-1] * self.y[-1]).sum(), sy[-1])
        self.sigma = torch.where(ok & self.valid[-1], sigma, torch.ones_like(sigma))
        self.psi = torch.cat([self.sigma * self.s, self.y]).T  # (n, 2m)
        sty = self.s @ self.y.T
        lower = torch.tril(sty, diagonal=-1)
        absent = torch.cat([~self.valid, ~self.valid]).to(sty.dtype)
        # an empty slot's columns of Psi are 0: a unit diagonal there keeps K invertible and adds nothing
        k = torch.cat([torch.cat([self.sigma * (self.s @ self.s.T), lower], 1),
                       torch.cat([lower.T, -torch.diag(torch.diagonal(sty))], 1)])
        k = k + torch.diag(absent * torch.cat([torch.ones(m, dtype=k.dtype, device=k.device),
                                               -torch.ones(m, dtype=k.dtype, device=k.device)]))
        # K is invertible while every kept pair has s'y > 0 (BNS Thm 2.3); should round-off make it
        # singular, B falls back to sigma I rather than raise mid-training
        self.lu, self.pivots, info = torch.linalg.lu_factor_ex(k)
        self.singular = info != 0

    def _k_solve(self, rhs: torch.Tensor) -> torch.Tensor:
        """``K^{-1} rhs`` (0 where ``K`` is singular)."""
        out = torch.linalg.lu_solve(self.lu, self.pivots, rhs if rhs.dim() == 2 else rhs.unsqueeze(-1))
        out = out if rhs.dim() == 2 else out.squeeze(-1)
        return torch.where(self.singular, torch.zeros_like(out), out)

    def mv(self, v: torch.Tensor) -> torch.Tensor:
        """``B v = sigma v - Psi K^{-1} Psi^T v``."""
        return self.sigma * v - self.psi @ self._k_solve(self.psi.T @ v)

    def newton(self, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(-B^{-1} g, True)`` by the two-loop recursion (the kept pairs keep ``B`` definite)."""
        q = g.clone()
        alphas = []
        for j in reversed(range(self.s.shape[0])):  # newest first; an empty slot has rho = 0
            alpha = self.rho[j] * torch.dot(self.s[j], q)
            q = q - alpha * self.y[j]
            alphas.append(alpha)
        r = q / self.sigma
        for j, alpha in zip(range(self.s.shape[0]), reversed(alphas)):
            beta = self.rho[j] * torch.dot(self.y[j], r)
            r = r + (alpha - beta) * self.s[j]
        r = torch.where(self.singular, g / self.sigma, r)  # the same fallback as mv's
        return -r, torch.ones((), dtype=torch.bool, device=g.device)

    def spectral(self, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``B``'s eigenpairs on ``span(Psi)`` (thin QR ``Psi = Q R``, ``R K^{-1} R^T = U T U^T``:
        eigenvalues ``sigma - T``, vectors ``Q U``) and ``sigma`` with the unit vector of ``g``'s
        part outside the span (0 when there is none), sorted ascending."""
        q, r = torch.linalg.qr(self.psi)
        inner = r @ self._k_solve(r.T)
        theta, u = torch.linalg.eigh(0.5 * (inner + inner.T))
        vectors = q @ u
        rest = g - vectors @ (vectors.T @ g)
        rest = rest - vectors @ (vectors.T @ rest)  # twice is enough (Kahan–Parlett)
        rest_norm = torch.linalg.vector_norm(rest)
        # a remainder at round-off is no direction (its unit vector would not be orthogonal)
        real = rest_norm > 1e3 * torch.finfo(g.dtype).eps * torch.linalg.vector_norm(g)
        scale, _ = safe_div(real.to(g.dtype), rest_norm)
        lam = torch.cat([self.sigma - theta, self.sigma.reshape(1)])
        vectors = torch.cat([vectors, (scale * rest).unsqueeze(-1)], 1)
        order = torch.argsort(lam)
        return lam[order], vectors[:, order]

    def dense(self) -> torch.Tensor:
        """``B`` as an ``(n, n)`` matrix (``O(n^2)`` memory: for inspection and tests)."""
        n = self.psi.shape[0]
        eye = torch.eye(n, dtype=self.psi.dtype, device=self.psi.device)
        return self.sigma * eye - self.psi @ self._k_solve(self.psi.T)


class TrustRegionState(NamedTuple):
    radius: torch.Tensor  # 0-dim: Delta_k, on the params' device
    count: torch.Tensor  # int32 0-dim: updates so far
    prev_params: torch.Tensor  # flat x_{k-1}, for the model's (s, y)
    prev_grad: torch.Tensor  # flat g_{k-1}
    model: Any  # the HessianApproximation's state (EmptyState for the linear model)


# a predicted decrease below this many ulps of the loss is not measured by f(x) - f(x + p)
_ROUNDOFF = 100.0

_SUBPROBLEMS = ("cauchy", "dogleg", "levenberg_marquardt")


def _sqrt(x: torch.Tensor) -> torch.Tensor:
    """``sqrt(max(x, 0))`` whose gradient is 0 (not inf) at 0: no NaN reaches a hyperparameter
    through a branch ``torch.where`` did not take."""
    positive = x > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, x, torch.ones_like(x))), torch.zeros_like(x))


def _to_boundary(g: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """``-radius g / |g|`` (0 for ``g = 0``)."""
    scale, _ = safe_div(radius, torch.linalg.vector_norm(g))
    return -scale * g


class _Dense:
    """A model given as its ``(n, n)`` matrix: the operations the subproblems need."""

    def __init__(self, b: torch.Tensor):
        self.b = b

    def mv(self, v: torch.Tensor) -> torch.Tensor:
        return self.b @ v

    def newton(self, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(-B^{-1} g, B positive definite)`` (0 where it is not)."""
        chol, info = torch.linalg.cholesky_ex(self.b)
        definite = info == 0
        full = -torch.cholesky_solve(g.unsqueeze(-1), chol).squeeze(-1)
        return torch.where(definite, full, torch.zeros_like(full)), definite  # no NaN from a failed factorisation

    def spectral(self, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(lambda, Q)``: eigenvalues ascending and orthonormal eigenvectors whose span holds ``g``."""
        return torch.linalg.eigh(self.b)


def _cauchy(g, b, radius):
    """N&W Alg. 4.2: the minimiser of the model along -g within the radius."""
    step = _to_boundary(g, radius)
    if b is None:  # linear model: always to the boundary
        return step, torch.ones((), dtype=torch.bool, device=g.device)
    gbg = torch.dot(g, b.mv(g))
    g_norm = torch.linalg.vector_norm(g)
    tau, ok = safe_div(g_norm ** 3, radius * gbg)
    tau = torch.where(ok & (gbg > 0), tau.clamp(max=1.0), torch.ones_like(tau))
    return tau * step, tau >= 1.0


def _dogleg(g, b, radius):
    """N&W §4.1, eq. 4.16, for a positive definite ``B``; for any other, the Cauchy point
    (Alg. 4.2), the step the dogleg path starts along."""
    full, definite = b.newton(g)
    gbg = torch.dot(g, b.mv(g))
    coef, ok = safe_div(torch.dot(g, g), gbg)
    unconstrained = -coef * g  # the model's minimiser along -g
    edge = full - unconstrained
    a2 = torch.dot(edge, edge)
    a1 = 2 * torch.dot(unconstrained, edge)
    a0 = torch.dot(unconstrained, unconstrained) - radius ** 2
    tau, _ = safe_div(-a1 + _sqrt(a1 * a1 - 4 * a2 * a0), 2 * a2)
    dogleg = unconstrained + tau.clamp(0.0, 1.0) * edge
    positive = definite & ok & (gbg > 0)
    inside = positive & (torch.linalg.vector_norm(full) <= radius)
    past = torch.linalg.vector_norm(unconstrained) >= radius
    cauchy, cauchy_boundary = _cauchy(g, b, radius)
    step = torch.where(inside, full, torch.where(positive & past, _to_boundary(g, radius), dogleg))
    step = torch.where(positive, step, cauchy)
    return step, torch.where(positive, ~inside, cauchy_boundary)


_LM_ITERATIONS = 40


def _levenberg_marquardt(g, b, radius):
    """The step ``(B + mu I) p = -g`` with ``mu >= max(0, -lambda_min(B))`` and ``|p| <= radius``,
    ``mu (radius - |p|) = 0`` (Moré 1978; N&W §4.3, Alg. 4.3), on the eigendecomposition of
    ``B`` (over the eigenvectors whose span holds ``g``): Newton's iteration on
    ``1/|p(mu)| - 1/radius`` from the left of the root, a fixed number of times (no
    data-dependent branch); the hard case adds the lowest eigenvector."""
    lam, q = b.spectral(g)
    a = q.T @ g
    tiny = torch.finfo(g.dtype).eps * lam.abs().max().clamp_min(1.0)
    low = (-lam[0]).clamp_min(0.0)
    mu = torch.where(lam[0] > 0, torch.zeros_like(low), low + tiny)

    def norms(mu):
        denom = lam + mu
        p2 = torch.sum((a / denom) ** 2)
        q2 = torch.sum(a * a / denom ** 3)
        return p2, q2

    p2, _ = norms(mu)
    interior = (lam[0] > 0) & (p2.sqrt() <= radius)
    start_inside = p2.sqrt() <= radius  # with mu > 0 here: the hard case
    for _ in range(_LM_ITERATIONS):
        p2, q2 = norms(mu)
        p_norm = p2.sqrt()
        delta_mu, _ = safe_div(p2 * (p_norm - radius), q2 * radius)
        mu = torch.where(interior | start_inside, mu, (mu + delta_mu).clamp_min(low))
    step = -q @ (a / (lam + mu))
    hard = ~interior & start_inside
    extra = _sqrt(radius ** 2 - torch.dot(step, step))
    step = torch.where(hard, step + extra * q[:, 0], step)
    return step, ~interior


_SOLVERS = {"cauchy": _cauchy, "dogleg": _dogleg, "levenberg_marquardt": _levenberg_marquardt}


@transform(inplace=True)
def scale_by_trust_region(subproblem: str = "dogleg", hessian: HessianApproximation | None = None,
                          init_radius: float = 1.0, max_radius: float = 1000.0, eta: float = 0.15,
                          shrink_below: float = 0.25, expand_above: float = 0.75, shrink_factor: float = 0.25,
                          expand_factor: float = 2.0) -> GradientTransformation:
    """A trust-region step (Nocedal & Wright, *Numerical Optimization*, 2nd ed., ch. 4,
    Alg. 4.1), the radius in state; needs ``params`` and ``value_fn`` (``value`` saves one
    evaluation). The output is the step itself, to be added: the last member of a chain.

    With ``g`` the update that reaches it (the gradient at ``x = params``) and the model
    ``m(p) = f(x) + g.p + p.B p / 2`` over the flattened parameters, each update:

    1. updates ``B`` with ``s = x_k - x_{k-1}``, ``y = g_k - g_{k-1}`` (``hessian.update``);
    2. solves the subproblem ``min m(p), |p| <= Delta`` approximately (``subproblem``):
       ``"cauchy"`` (N&W Alg. 4.2; with ``hessian=None`` on the linear model ``B = 0``:
       ``p = -Delta g / |g|``, a first-order trust region), ``"dogleg"`` (N&W §4.1, ``B``
       positive definite; the Cauchy point for any other ``B``) or ``"levenberg_marquardt"``
       (``(B + mu I) p = -g``, ``mu >= 0`` making ``|p| = Delta`` when the model's minimiser
       lies outside: Moré 1978, N&W §4.3);
       ``hessian=None`` is :func:`bfgs_hessian` for the last two; any quasi-Newton update of
       :mod:`gradtx.search.quasi_newton` is a model through :func:`quasi_newton_hessian`
       (SR1, PSB, ...: ``"levenberg_marquardt"`` for an indefinite ``B``), and L-BFGS,
       never forming ``B``, through :func:`lbfgs_hessian` (for large models);
    3. ``rho = (f(x) - f(x + p)) / (m(0) - m(p))`` with ``f(x + p) = value_fn(params + p)``
       (``rho = 1`` when ``m(0) - m(p)`` is below ``100`` ulps of ``max(|f(x)|, 1)``, where
       ``f(x) - f(x + p)`` is round-off, as :func:`gradtx.scale_by_newton_cg_trust_region`);
    4. the radius (Alg. 4.1): ``rho < shrink_below``: ``Delta <- shrink_factor Delta``;
       ``rho > expand_above`` and ``|p| = Delta``: ``Delta <- min(expand_factor Delta,
       max_radius)``; otherwise kept;
    5. ``u <- p`` when ``rho > eta``, else ``u <- 0`` (the step is refused; the next update,
       at the same point, tries a smaller radius).

    Defaults: Alg. 4.1's thresholds and factors, scipy's ``trust-*`` methods'
    ``init_radius=1``, ``max_radius=1000`` and ``eta=0.15``. A non-finite ``f(x + p)``
    counts as ``rho = -inf``. Loss values and params are read detached. ``x``, ``g`` and
    ``B`` are one vector / matrix over all leaves in their widest dtype (at least float32),
    so under ``gx.Optimizer`` every parameter needs a gradient at every step. Complex
    parameters are refused (the model is over real coordinates; optimise their real views).

    Example::

        tx = gx.scale_by_trust_region("dogleg")
        updates, state = tx.update(grads, state, params, value=loss, value_fn=loss_fn)
    """
    if subproblem not in _SOLVERS:
        raise ValueError(f"subproblem must be one of {_SUBPROBLEMS}, got {subproblem!r}")
    if hessian is not None and not isinstance(hessian, HessianApproximation):
        raise ValueError("hessian must be a gx.HessianApproximation (e.g. gx.bfgs_hessian(), "
                         f"gx.quasi_newton_hessian('sr1')) or None, got {type(hessian).__name__}")
    check_radius_args(init_radius, max_radius, eta, shrink_below, expand_above, shrink_factor, expand_factor)
    model = hessian if hessian is not None or subproblem == "cauchy" else bfgs_hessian()
    solve = _SOLVERS[subproblem]

    def init(params):
        refuse_complex("scale_by_trust_region", params, "its model is a matrix over real coordinates")
        ps, _ = leaves(params)
        dtype, device = wide(ps), first_device(ps)
        x0 = concat([p.detach() for p in ps], dtype).to(device)
        radius = (init_radius if isinstance(init_radius, torch.Tensor)
                  else torch.tensor(float(init_radius), dtype=torch.float64))
        return TrustRegionState(radius=radius.to(dtype=dtype, device=device).clone(),
                                count=new_count(), prev_params=x0,
                                prev_grad=torch.zeros_like(x0),
                                model=EmptyState() if model is None else model.init(x0))

    def update(updates, state, params=None, *, inplace=False, value=None, value_fn=None, **extra_args):
        del inplace, extra_args
        need_params("scale_by_trust_region", params)
        if value_fn is None:
            raise ValueError("scale_by_trust_region needs value_fn (params -> loss) to evaluate the trial point: "
                             "call update(grads, state, params, value_fn=...), or gx.Optimizer.step(closure)")
        gs, treedef = leaves(updates)
        ps = [p.detach() for p in leaves_like(params, treedef, "params")]
        dtype, device = state.prev_params.dtype, state.prev_params.device
        g, x = concat(gs, dtype).to(device), concat(ps, dtype).to(device)
        if g.numel() != state.prev_params.numel():
            raise ValueError(f"scale_by_trust_region: the updates hold {g.numel()} elements but the state was built "
                             f"for {state.prev_params.numel()}: its model is over all parameters together, so every "
                             "parameter needs a gradient at every step")
        started = (state.count > 0).to(device)
        model_state = state.model
        if model is not None:
            s = torch.where(started, x - state.prev_params, torch.zeros_like(x))
            model_state = model.update(model_state, s, g - state.prev_grad)
        b = None if model is None else model.matrix(model_state)
        b = b if b is None or isinstance(b, CompactBFGS) else _Dense(b)
        radius = state.radius
        step, on_boundary = solve(g, b, radius)
        predicted = -torch.dot(g, step) - (0.0 if b is None else 0.5 * torch.dot(step, b.mv(step)))
        f0 = (value_fn(params) if value is None else value)
        f0 = torch.as_tensor(f0).detach().reshape(()).to(dtype=dtype, device=device)
        trial = [p + piece for p, piece in zip(ps, split(step, ps))]
        f1 = torch.as_tensor(value_fn(unflatten(treedef, trial))).detach().reshape(()).to(dtype=dtype, device=device)
        rho, informative = ratio(f0, f1, predicted, roundoff=_ROUNDOFF)
        new_radius = next_radius(radius, rho, on_boundary & informative, max_radius=max_radius,
                                 shrink_below=shrink_below, expand_above=expand_above, shrink_factor=shrink_factor,
                                 expand_factor=expand_factor)
        accept = accepted(rho, informative, eta)
        out = torch.where(accept, step, torch.zeros_like(step))
        new_state = TrustRegionState(new_radius, state.count + 1, x, g.clone(), model_state)
        return unflatten(treedef, split(out, gs)), new_state

    return GradientTransformation(init, update)
