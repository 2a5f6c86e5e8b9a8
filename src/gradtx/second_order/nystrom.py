"""Randomized Nyström approximations of the Hessian: sketch-and-solve, and as the
preconditioner of conjugate gradients (Frangella, Tropp & Udell, 2023)."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .._hparams import check, check_int, new_count
from ..base import GradientTransformation, transform
from ._curvature import Flat, check_hvp_method

__all__ = ["NystromPCGState", "NystromState", "scale_by_nystrom_pcg", "scale_by_nystrom_sketch_and_solve"]


class NystromState(NamedTuple):
    seed: torch.Tensor  # int64 0-dim: the sketches' seed (each update draws from seed and count)
    count: torch.Tensor  # int32 0-dim: updates so far


class NystromPCGState(NamedTuple):
    seed: torch.Tensor  # int64 0-dim
    count: torch.Tensor  # int32 0-dim
    iterations: torch.Tensor  # int32 0-dim: PCG iterations of the last solve


def _state_fields(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(seed, dtype=torch.int64), new_count()


def _generator(seed: torch.Tensor, count: torch.Tensor) -> torch.Generator:
    """A CPU generator for update ``count`` of the stream ``seed``: reproducible, checkpointed
    by the state, the global RNG untouched."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + int(count)) % (2 ** 63 - 1))


def nystrom(flat: Flat, rank: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``(U, lam)`` with ``H ~ U diag(lam) U^T``, ``U`` ``(n, r)`` orthonormal, ``lam >= 0``:
    the stable randomized Nyström approximation (Frangella, Tropp & Udell, 2023, Alg. 2.1)
    from ``r = min(rank, n)`` Hessian-vector products with an orthonormalised Gaussian
    sketch. The core ``Omega^T Y`` is factored by its eigendecomposition (its positive part),
    which is Alg. 2.1's Cholesky factor when ``H`` is positive semi-definite and stays defined
    when it is not."""
    n, dtype, device = flat.n, flat.dtype, flat.device
    r = min(rank, n)
    omega = torch.randn(n, r, generator=generator, dtype=torch.float64).to(dtype=dtype, device=device)
    omega, _ = torch.linalg.qr(omega)
    y = flat.batched_hvp(omega.T).T  # (n, r)
    nu = (n ** 0.5) * torch.finfo(dtype).eps * torch.linalg.matrix_norm(y, ord=2)
    y_nu = y + nu * omega
    core = omega.T @ y_nu
    m, v = torch.linalg.eigh(0.5 * (core + core.T))
    keep = m > torch.finfo(dtype).eps * r * m.abs().max().clamp_min(torch.finfo(dtype).tiny)
    b = (y_nu @ v[:, keep]) / torch.sqrt(m[keep])
    u, s, _ = torch.linalg.svd(b, full_matrices=False)
    lam = (s * s - nu).clamp_min(0.0)
    return u, lam


def _check_common(rank, damping, seed, hvp_method, h) -> None:
    check_int("rank", rank, low=1)
    check_int("seed", seed, low=0)
    check_hvp_method(hvp_method, h)


@transform(inplace=True)  # writes into nothing it is given; its updates are fresh tensors
def scale_by_nystrom_sketch_and_solve(rank: int = 100, damping: float = 1e-2, seed: int = 0,
                                      hvp_method: str = "autograd", h: float = 1e-3) -> GradientTransformation:
    """Nyström sketch-and-solve: ``u <- (H_nys + damping I)^{-1} g`` (Frangella, Tropp & Udell,
    2023, §2 and eq. 1.3; SketchySGD, Frangella et al., 2024; torchzero's
    ``NystromSketchAndSolve``); needs ``params`` and ``hvp_fn`` (or ``batched_hvp_fn``; or
    ``value_and_grad_fn`` with ``hvp_method="fd_*"``).

    Each update draws a Gaussian sketch ``Omega`` (``n x r``, ``r = min(rank, n)``,
    orthonormalised) from ``seed`` and the update count (reproducible and checkpointed, no
    global RNG), forms ``Y = H Omega`` with ``r`` Hessian-vector products, and the rank-``r``
    approximation ``H_nys = U diag(lam) U^T`` (stable Nyström, Alg. 2.1). Then, with ``g`` the
    update that reaches it: ``u = U diag(1 / (lam + damping)) U^T g + (g - U U^T g) / damping``.
    ``damping > 0`` (the solve is unstable for small values; torchzero's default ``1e-2``).
    Exact (``= (H + damping I)^{-1} g``) when ``rank >= n`` and ``H`` is positive semi-definite.
    The output is the preconditioned gradient: follow with ``scale_by_lr`` or ``scale(-1.0)``
    and a line search. Complex parameters are refused.

    Example::

        tx = gx.chain(gx.scale_by_nystrom_sketch_and_solve(rank=20), gx.scale(-1.0), gx.scale_by_backtracking())
        extra = gx.evaluation_args(loss_fn, params)
        updates, state = tx.update(extra["grad"], state, params, **extra)
    """
    _check_common(rank, damping, seed, hvp_method, h)
    check("damping", damping, low=0.0, low_open=True)

    def init(params):
        del params
        return NystromState(*_state_fields(seed))

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del inplace
        flat = Flat("scale_by_nystrom_sketch_and_solve", updates, params, extra_args, hvp_method, h)
        u, lam = nystrom(flat, rank, _generator(state.seed, state.count))
        mu = torch.as_tensor(damping, dtype=flat.dtype).to(flat.device)
        g = flat.g
        ug = u.T @ g
        x = u @ (ug / (lam + mu)) + (g - u @ ug) / mu
        return flat.tree(x), NystromState(state.seed, state.count + 1)

    return GradientTransformation(init, update)


@transform(inplace=True)  # writes into nothing it is given; its updates are fresh tensors
def scale_by_nystrom_pcg(rank: int = 100, damping: float = 0.0, max_iters: int | None = None, tol: float = 1e-5,
                         seed: int = 0, hvp_method: str = "autograd", h: float = 1e-3) -> GradientTransformation:
    """Newton's system ``(H + damping I) x = g`` solved by conjugate gradients preconditioned with
    a Nyström approximation of ``H`` (Nyström PCG: Frangella, Tropp & Udell, 2023, Alg. 5.3;
    torchzero's ``NystromPCG``); needs ``params`` and ``hvp_fn`` (or ``value_and_grad_fn`` with
    ``hvp_method="fd_*"``).

    ``H_nys = U diag(lam) U^T`` from ``r = min(rank, n)`` Hessian-vector products on a seeded
    Gaussian sketch (as :func:`scale_by_nystrom_sketch_and_solve`), and the preconditioner
    ``P^{-1} = (lam_r + damping) U diag(1 / (lam + damping)) U^T + (I - U U^T)`` (``lam_r`` the
    smallest kept eigenvalue; the identity if ``lam_r + damping <= 0``). PCG from ``x = 0``,
    one more Hessian-vector product per iteration, stops at ``|r| <= tol |g|``, after
    ``max_iters`` (``None``: ``n``), or at negative curvature (the ``x`` so far; at the first
    iteration the preconditioned gradient ``P^{-1} g``). ``state.iterations`` counts the last
    solve's. The output is the preconditioned gradient: follow with ``scale_by_lr`` or
    ``scale(-1.0)`` and a line search. Complex parameters are refused.

    Example::

        tx = gx.chain(gx.scale_by_nystrom_pcg(rank=20), gx.scale_by_lr(1.0))
        extra = gx.evaluation_args(loss_fn, params)
        updates, state = tx.update(extra["grad"], state, params, **extra)
    """
    _check_common(rank, damping, seed, hvp_method, h)
    check("damping", damping, low=0.0)
    if max_iters is not None:
        check_int("max_iters", max_iters, low=1)
    check("tol", tol, low=0.0)

    def init(params):
        del params
        return NystromPCGState(*_state_fields(seed), new_count())

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del inplace
        flat = Flat("scale_by_nystrom_pcg", updates, params, extra_args, hvp_method, h)
        u, lam = nystrom(flat, rank, _generator(state.seed, state.count))
        mu = float(damping)
        lowest = float(lam[-1]) + mu if lam.numel() else 0.0

        def precondition(r):
            if not lowest > 0:
                return r
            ur = u.T @ r
            return lowest * (u @ (ur / (lam + mu))) + r - u @ ur

        g = flat.g
        x = torch.zeros_like(g)
        r = g.clone()
        z = precondition(r)
        p = z.clone()
        rz = torch.dot(r, z)
        threshold = float(tol) * float(torch.linalg.vector_norm(g))
        limit = flat.n if max_iters is None else max_iters
        done = 0
        if float(torch.linalg.vector_norm(g)) > 0:
            for i in range(limit):
                ap = flat.hvp(p) + mu * p
                done = i + 1
                pap = torch.dot(p, ap)
                if not float(pap) > 0:
                    if i == 0:
                        x = z
                    break
                alpha = rz / pap
                x = x + alpha * p
                r = r - alpha * ap
                if float(torch.linalg.vector_norm(r)) <= threshold:
                    break
                z = precondition(r)
                rz_new = torch.dot(r, z)
                p = z + (rz_new / rz) * p
                rz = rz_new
        new_state = NystromPCGState(state.seed, state.count + 1, torch.tensor(done, dtype=torch.int32))
        return flat.tree(x), new_state

    return GradientTransformation(init, update)
