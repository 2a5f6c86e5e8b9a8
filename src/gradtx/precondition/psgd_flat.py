"""PSGD with one preconditioner over all parameters flattened into a vector (Li, 2015/2018):
the dense form (``Q`` an ``n x n`` matrix) and the low-rank approximation
``Q = (I + U V^T) diag(d)``, the rules of Xi-Lin Li's psgd_torch (``DenseNewton``,
``LRAWhiten``, ``LRANewton``; September 2025)."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .. import _foreach as F  # noqa: N812
from .._hparams import check, check_beta, check_int, new_count
from .._tree import Tree
from ..base import GradientTransformation, transform
from ..transforms._common import leaves, leaves_like, refuse_complex, unflatten
from ..transforms.perturb import _generator, _mix
from ..transforms.perturb import _uniform as _uniform_of_seed

__all__ = ["ScaleByPsgdDenseState", "ScaleByPsgdLraState", "scale_by_psgd_dense", "scale_by_psgd_lra"]

# step t's random numbers: one generator per use, seeded by (seed, t, stream); the initial U
# and V of the low-rank form by (seed, stream)
_PROBE, _DRAW, _SIDE, _DAMP, _SUBSPACE, _INIT_U, _INIT_V = 0, -1, -2, -3, -4, -5, -6
_TYPES = ("whitening", "newton")
_DQS = ("Q0.5EQ1.5", "Q0p5EQ1p5", "EQ", "QEQ", "QEP", "QUAD", "QUAD4P")


class ScaleByPsgdDenseState(NamedTuple):
    """State of :func:`scale_by_psgd_dense`."""

    count: torch.Tensor  # int32, steps taken
    seed: torch.Tensor  # int64; step t's random numbers come from generators seeded by (seed, t)
    q: torch.Tensor  # (n, n) over the parameters flattened (P itself for dQ="QUAD4P")
    lipschitz: torch.Tensor  # (1,): the running estimate L of the fitting criterion's smoothness
    mu: Tree  # momentum, a tree like the params; () without momentum


class ScaleByPsgdLraState(NamedTuple):
    """State of :func:`scale_by_psgd_lra`."""

    count: torch.Tensor  # int32, steps taken
    seed: torch.Tensor  # int64
    u: Tree  # per parameter (*shape, rank): its rows of U
    v: Tree  # per parameter (*shape, rank): its rows of V
    d: Tree  # per parameter, like it: its entries of d
    lipschitz: torch.Tensor  # (3,): the estimates L_U, L_V, L_d
    mu: Tree  # momentum, a tree like the params; () without momentum


# --- shared pieces ------------------------------------------------------------------------------

def _flat_dtype(xs: list[torch.Tensor]) -> torch.dtype:
    """The widest floating dtype of ``xs``, at least float32 (Li's ``lift2single``)."""
    dtype = torch.float32
    for x in xs:
        dtype = torch.promote_types(dtype, x.dtype)
    return dtype


def _flatten(xs: list[torch.Tensor], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if not xs:
        return torch.zeros(0, 1, dtype=dtype, device=device)
    return torch.cat([x.reshape(-1).to(device=device, dtype=dtype) for x in xs]).reshape(-1, 1)


def _split(flat: torch.Tensor, like: list[torch.Tensor], dtype: bool = True) -> list[torch.Tensor]:
    out, start = [], 0
    for x in like:
        part = flat[start:start + x.numel()].reshape(x.shape)
        out.append(part.to(device=x.device, dtype=x.dtype) if dtype else part.to(x.device))
        start += x.numel()
    return out


def _split_rows(mat: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    """``mat``'s rows as one ``(*shape, k)`` block per tensor of ``like``."""
    out, start = [], 0
    for x in like:
        out.append(mat[start:start + x.numel()].reshape(*x.shape, mat.shape[1]).to(x.device))
        start += x.numel()
    return out


def _randn(base: int, t: int, stream: int, shape, dtype, device) -> torch.Tensor:
    return torch.randn(shape, dtype=dtype, device=device, generator=_generator(device, _mix(base, t, stream)))


def _uniform(base: int, t: int, stream: int) -> float:
    return _uniform_of_seed(_mix(base, t, stream))


def _scalar(x, dtype: torch.dtype, device: torch.device):
    """A hyperparameter as a number, or (a tensor, kept for autograd) 0-dim in ``dtype``."""
    return torch.as_tensor(x, device=device).to(dtype).reshape(()) if isinstance(x, torch.Tensor) else x


def _check_common(precond_lr, precond_init_scale, beta_l, damping, momentum, update_prob, preconditioner_type,
                  whiten_grad, seed):
    check("precond_lr", precond_lr, low=0.0)
    if precond_init_scale is not None:
        check("precond_init_scale", precond_init_scale, low=0.0, low_open=True)
    check_beta("beta_l", beta_l)
    check("damping", damping, low=0.0)
    check_beta("momentum", momentum)
    check("update_prob", update_prob, low=0.0, high=1.0)
    if preconditioner_type not in _TYPES:
        raise ValueError(f"preconditioner_type must be one of {_TYPES}, got {preconditioner_type!r}")
    if not isinstance(whiten_grad, bool) or (not whiten_grad and momentum == 0):
        raise ValueError(f"whiten_grad must be a bool, and False only with momentum > 0, got {whiten_grad!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not -(1 << 63) <= seed < (1 << 63):
        raise ValueError(f"seed must be an int that fits in int64, got {seed!r}")


def _setup(name: str, params) -> tuple[list[torch.Tensor], object, torch.dtype, torch.device, int]:
    """``(leaves, treedef, dtype, device, n)`` of the parameters one flat preconditioner spans
    (complex ones refused): the widest dtype (at least float32), the first leaf's device and
    the number of entries."""
    refuse_complex(name, params, "its preconditioner acts on the parameters flattened to one real vector")
    ps, treedef = leaves(params)
    device = ps[0].device if ps else torch.device("cpu")
    return ps, treedef, _flat_dtype(ps), device, sum(p.numel() for p in ps)


def _update_leaves(updates, params) -> tuple[list[torch.Tensor], object, int]:
    """``(leaves, treedef, n)`` of the updates, ``params`` checked to have their structure."""
    gs, treedef = leaves(updates)
    if params is not None:
        leaves_like(params, treedef, "params")
    return gs, treedef, sum(g.numel() for g in gs)


def _momentum(mu, gs, t: int, momentum: float, dtype):
    """Li's momentum: ``m <- beta m + (1 - beta) g`` with ``beta = min(t / (t + 1), momentum)``
    at step ``t`` (from 0), so ``m_0 = g_0``."""
    if momentum == 0:
        return mu, None
    beta = min(t / (1 + t), momentum)
    new = [m * beta + g.to(m.dtype) * (1 - beta) for m, g in zip(mu, gs)]
    return new, new


def _probe_pair(name, preconditioner_type, target, gs, params, treedef, extra_args, base, t, damping):
    """``(v, h, h_raw)``: whitening pairs a normal ``v`` with ``h = target + damping v``; the
    Newton type pairs it with ``h = H v + damping n`` (``n`` a second normal draw)."""
    n, dtype, device = target.shape[0], target.dtype, target.device
    v = _randn(base, t, _PROBE, (n, 1), dtype, device)
    if preconditioner_type == "whitening":
        return v, target + damping * v, target
    hvp_fn = extra_args.get("hvp_fn")
    if hvp_fn is None or params is None:
        raise ValueError(f"{name}(preconditioner_type='newton') needs params and the hvp_fn extra argument "
                         f"(hvp_fn(params, v) -> Hv; gx.Optimizer passes it from step's closure, gx.make_hvp_fn "
                         f"builds one)")
    hv = hvp_fn(params, unflatten(treedef, _split(v, gs)))
    hv = _flatten(leaves_like(hv, treedef, "hvp_fn's result"), dtype, device)
    return v, hv + damping * _randn(base, t, _DAMP, (n, 1), dtype, device), hv


def _init_scale(preconditioner_type, v, h_raw, g, damping) -> torch.Tensor:
    """Li's on-the-fly initial scale of ``Q``: ``(mean(v^2))^(1/4) (mean(h^4) + damping^4)^(-1/8)``
    for the Newton type, ``(mean(g^4) + damping^4)^(-1/8)`` for whitening."""
    if preconditioner_type == "whitening":
        return (torch.mean(g ** 4) + damping ** 4) ** (-1 / 8)
    return torch.mean(v * v) ** (1 / 4) * (torch.mean(h_raw ** 4) + damping ** 4) ** (-1 / 8)


def _smooth(lip: torch.Tensor, ell: torch.Tensor, beta_l: float) -> torch.Tensor:
    return torch.maximum(beta_l * lip + (1 - beta_l) * ell, ell)


# --- dense ----------------------------------------------------------------------------------------

def _norm_lower_bound_skh(a: torch.Tensor, gen: torch.Generator, k: int = 32, half_iters: int = 2) -> torch.Tensor:
    """Li's subspace-iteration lower bound of the spectral norm of the skew-symmetric ``a``:
    ``k`` normal vectors turned towards ``a``'s largest row, ``2 half_iters`` products."""
    tiny = torch.finfo(a.dtype).smallest_normal
    scale = a.abs().amax() + tiny
    a = a / scale
    # the largest row, picked on the device (indexing by a tensor would read it on the host)
    row = torch.index_select(a, 0, torch.argmax(torch.linalg.vector_norm(a, dim=1)).reshape(1))
    x = torch.randn(k, a.shape[1], dtype=a.dtype, device=a.device, generator=gen)
    x = row + torch.sgn(torch.sum(row * x, dim=1, keepdim=True)) * x
    for _ in range(half_iters):
        x = x @ a
        x = x / (torch.linalg.vector_norm(x, dim=1, keepdim=True) + tiny)
        x = x @ a
    return scale * torch.amax(torch.linalg.vector_norm(x, dim=1))


def _procrustes_step(q: torch.Tensor, gen: torch.Generator, max_step: float = 1 / 8) -> torch.Tensor:
    """One rotation ``exp(a R) Q`` (to second order), ``R = Q^T - Q`` normalised, towards the
    nearest symmetric positive definite ``Q`` (Li's online orthogonal Procrustes step); none
    when ``max |R| <= n eps max |Q|`` (a round-off asymmetry)."""
    r = q.mT - q
    # Q symmetric to round-off (always after a step from a scaled identity): the rotation would
    # be of round-off size too, and its derivative a ratio of round-offs; skip it
    try:
        symmetric = float(r.detach().abs().amax()) <= q.shape[0] * torch.finfo(q.dtype).eps * float(
            q.detach().abs().amax())
    except RuntimeError:
        if not F.without_data(q):
            raise
        symmetric = False  # no values (meta, fake: a memory estimate): the rotation, the larger step of the two
    if symmetric:
        return q
    r = r / (_norm_lower_bound_skh(r, gen) + torch.finfo(r.dtype).smallest_normal)
    rq = r @ q
    rrq = r @ rq
    tr_rq, tr_rrq = rq.diagonal().sum(), rrq.diagonal().sum()
    a = torch.where(tr_rrq < 0, torch.clamp(-tr_rq / tr_rrq, min=0, max=max_step), max_step)
    return q + a * (rq + 0.5 * a * rrq)


def _dense_step(dq: str, q, lip, v, h, lr, beta_l, gen):
    """One step of ``Q`` towards ``P h h^T P = v v^T`` in the local coordinates ``dq``."""
    if dq == "EQ":
        a = q @ h
        b = torch.linalg.solve_triangular(q.mT, v, upper=False)
        lip = _smooth(lip, torch.sum(a * a + b * b), beta_l)
        return q - lr / lip * torch.triu(a @ a.mT - b @ b.mT) @ q, lip
    if dq == "QEP":
        a = q @ (q.mT @ (q @ h))
        b = q @ v
        lip = _smooth(lip, torch.sum(a * a + b * b), beta_l)
        return q - lr / lip * (a @ (a.mT @ q) - b @ (b.mT @ q)), lip
    if dq == "QUAD4P":  # q is P
        a = q @ h
    elif dq == "QUAD":  # q is symmetric
        a = q @ (q @ h)
    else:
        a = q.mT @ (q @ h)
    lip = _smooth(lip, torch.sum(a * a + v * v), beta_l)
    if dq == "QEQ":
        return q - lr / lip * ((q @ a) @ a.mT - (q @ v) @ v.mT), lip
    if dq in ("QUAD", "QUAD4P"):
        step = lr / 2 / lip if dq == "QUAD" else lr / lip
        p = q - step * (a @ (a.mT @ q) - v @ (v.mT @ q))
        p = p - step * ((p @ a) @ a.mT - (p @ v) @ v.mT)
        return (p + p.mT) / 2, lip
    q = q - lr / lip * (a @ (a.mT @ q) - v @ (v.mT @ q))  # Q^0.5 E Q^1.5
    return _procrustes_step(q, gen), lip


@transform
def scale_by_psgd_dense(precond_lr: float = 0.1, precond_init_scale: float | None = None, beta_l: float = 0.9,
                        damping: float = 1e-9, momentum: float = 0.0, update_prob: float = 1.0,
                        dq: str = "Q0.5EQ1.5", preconditioner_type: str = "whitening", whiten_grad: bool = True,
                        seed: int = 0) -> GradientTransformation:
    """PSGD with a dense preconditioner (Li, 2015/2018, "Preconditioned Stochastic Gradient
    Descent"; Li 2024, arXiv:2402.11858): one ``n x n`` matrix ``Q`` over all parameters
    flattened (in tree order) into ``g`` of length ``n``, ``P = Q^T Q``, update ``u = P g``
    (``u = P m`` with ``momentum``). The rules of Xi-Lin Li's psgd_torch ``DenseNewton``.

    Fitting ``Q`` (a step on the criterion ``E[h^T P h + v^T P^-1 v]``, solved by
    ``P h h^T P = v v^T``): ``v ~ N(0, I)`` and, for ``preconditioner_type="whitening"`` (the
    default), ``h = g + damping v`` (``m`` instead of ``g`` unless ``whiten_grad``), so ``P``
    tends to ``E[g g^T]^(-1/2)``; for ``"newton"``, ``h = H v + damping n`` with the
    ``hvp_fn`` extra argument and a second normal ``n``, so ``P`` tends to ``|H|^-1``. With
    ``a = Q^T Q h`` and ``L <- max(beta_l L + (1 - beta_l) l, l)``, ``l = ||a||^2 + ||v||^2``,
    the default ``dq="Q0.5EQ1.5"`` takes
    ``Q <- Q - precond_lr / L (a a^T - v v^T) Q`` followed by one Procrustes rotation that
    keeps ``Q`` near symmetric positive definite. ``dq="EQ"`` is the original Lie-group rule
    on an upper-triangular ``Q`` (a Cholesky factor of ``P``):
    ``a = Q h``, ``b = Q^-T v``, ``Q <- Q - precond_lr / L triu(a a^T - b b^T) Q``;
    ``"QEQ"``, ``"QEP"``, ``"QUAD"`` and ``"QUAD4P"`` (``Q`` holds ``P``) are Li's other
    coordinates. ``Q`` starts at ``precond_init_scale I``, or (``None``, the default) at Li's
    scale from the first probes: ``(mean(g^4) + damping^4)^(-1/8)`` for whitening,
    ``mean(v^2)^(1/4) (mean((Hv)^4) + damping^4)^(-1/8)`` for Newton. ``Q`` is fitted on a
    step with probability ``update_prob`` (always on the first step without an initial scale).
    Momentum is Li's: ``m <- beta m + (1 - beta) g``, ``beta = min(t / (t + 1), momentum)``.

    Randomness comes from the state (generators seeded by ``(seed, t, stream)``), never the
    global RNG. ``Q`` has the widest dtype of the parameters, at least float32. Every
    parameter needs an update on every step (``Q`` spans them all); complex parameters are
    refused. The reference's optional clipping of the preconditioned step is a chain member
    here (``gx.clip_by_global_norm``). Li's class is Newton-only; whitening (the gradient
    only, no Hessian-vector product) is the default here, with the probe of Li's whitening
    classes (``LRAWhiten``, ``KronWhiten``). Memory ``n^2``: for small models.

    Example: ``gx.chain(gx.scale_by_psgd_dense(), gx.scale_by_lr(1e-3))``.
    """
    _check_common(precond_lr, precond_init_scale, beta_l, damping, momentum, update_prob, preconditioner_type,
                  whiten_grad, seed)
    if dq not in _DQS:
        raise ValueError(f"dq must be one of {_DQS}, got {dq!r}")
    name = "scale_by_psgd_dense"

    def init(params):
        ps, treedef, dtype, device, n = _setup(name, params)
        scale = 1.0 if precond_init_scale is None else precond_init_scale
        if dq == "QUAD4P":  # Q holds P
            scale = scale * scale
        q = torch.eye(n, dtype=dtype, device=device) * _scalar(scale, dtype, device)
        mu = unflatten(treedef, [torch.zeros_like(p, dtype=dtype) for p in ps]) if momentum > 0 else ()
        return ScaleByPsgdDenseState(new_count(), torch.tensor(seed, dtype=torch.int64), q,
                                     torch.zeros(1, dtype=dtype, device=device), mu)

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del inplace
        gs, treedef, n = _update_leaves(updates, params)
        q, lip = state.q, state.lipschitz
        if n != q.shape[0]:
            raise ValueError(f"{name}: the updates hold {n} numbers but the preconditioner spans {q.shape[0]}: "
                             f"every parameter needs an update on every step")
        t, base = int(state.count), int(state.seed)
        lr, beta, damp, mom = (_scalar(x, q.dtype, q.device) for x in (precond_lr, beta_l, damping, momentum))
        mus = leaves_like(state.mu, treedef) if momentum > 0 else []
        mus, new_mu = _momentum(mus, gs, t, mom, q.dtype)
        g = _flatten(gs, q.dtype, q.device)
        first = t == 0 and precond_init_scale is None
        if n and (_uniform(base, t, _DRAW) < update_prob or first):
            target = g if whiten_grad else _flatten(mus, q.dtype, q.device)
            v, h, h_raw = _probe_pair(name, preconditioner_type, target, gs, params, treedef, extra_args, base, t,
                                      damp)
            if first:
                scale = _init_scale(preconditioner_type, v, h_raw, g, damp)
                q = torch.eye(n, dtype=q.dtype, device=q.device) * (scale * scale if dq == "QUAD4P" else scale)
            q, lip = _dense_step(dq, q, lip, v, h, lr, beta,
                                 _generator(q.device, _mix(base, t, _SUBSPACE)))
        x = _flatten(mus, q.dtype, q.device) if momentum > 0 else g
        if dq == "QUAD4P":
            out = q @ x
        elif dq == "QUAD":
            out = q @ (q @ x)
        else:
            out = q.mT @ (q @ x)
        mu = unflatten(treedef, new_mu) if momentum > 0 else ()
        return unflatten(treedef, _split(out, gs)), ScaleByPsgdDenseState(state.count + 1, state.seed, q, lip, mu)

    return GradientTransformation(init, update)


# --- low-rank approximation ---------------------------------------------------------------------

def _ip_uvt(u: torch.Tensor, v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``(I + U V^T) x``."""
    return x + u @ (v.mT @ x)


def _lra_step(u, v, d, lip, x, h, lr, beta_l, update_u: bool):
    """One step of ``Q = (I + U V^T) diag(d)`` towards ``P h h^T P = x x^T`` (``x`` the normal
    probe): ``U`` and ``V`` rebalanced, then ``d``, then ``U`` or ``V`` (``update_u``)."""
    rank = u.shape[1]
    if rank:  # rescale and rotate U, V towards U^T U = V^T V (P unchanged to first order)
        utu, vtv = u.mT @ u, v.mT @ v
        tr_u, tr_v = utu.diagonal().sum(), vtv.diagonal().sum()
        rho = (tr_u / tr_v) ** (1 / 4)
        rho2 = rho * rho
        e = 0.1 * (utu / rho2 - vtv * rho2) / (tr_u / rho2 + tr_v * rho2)
        e2 = 0.5 * e @ e
        u, v = u / rho, v * rho
        u, v = u - u @ (e - e2), v + v @ (e + e2)
    qh = _ip_uvt(u, v, d * h)
    ph = d * _ip_uvt(v, u, qh)
    ip_vtu = v.mT @ u + torch.eye(rank, dtype=u.dtype, device=u.device)
    inv_qt_x = x / d
    if rank:  # Woodbury: (I + U V^T)^-1 = I - U (I + V^T U)^-1 V^T, one LU of the rank x rank matrix
        lu, pivots, _ = torch.linalg.lu_factor_ex(ip_vtu)
        inv_qt_x = inv_qt_x - v @ torch.linalg.lu_solve(lu, pivots, u.mT @ inv_qt_x, adjoint=True)
        inv_p_x = inv_qt_x - u @ torch.linalg.lu_solve(lu, pivots, v.mT @ inv_qt_x)
    else:
        inv_p_x = inv_qt_x
    inv_p_x = inv_p_x / d
    phh, x_inv_px = ph * h, x * inv_p_x
    l_u, l_v, l_d = lip.unbind()
    l_d = _smooth(l_d, phh.abs().max() + x_inv_px.abs().max(), beta_l)
    d = d - lr / l_d * (phh - x_inv_px) * d
    if rank:
        a, b = qh, inv_qt_x
        if update_u:
            at_v, bt_v = a.mT @ v, b.mT @ v
            ell = torch.linalg.vector_norm(a) * torch.linalg.vector_norm(at_v @ v.mT) + \
                torch.linalg.vector_norm(b) * torch.linalg.vector_norm(bt_v @ v.mT)
            l_u = _smooth(l_u, ell, beta_l)
            u = u - lr / l_u * (a @ (at_v @ ip_vtu) - b @ (bt_v @ ip_vtu))
        else:
            at_u, bt_u = a.mT @ u, b.mT @ u
            ell = torch.linalg.vector_norm(a) * torch.linalg.vector_norm(u @ at_u.mT) + \
                torch.linalg.vector_norm(b) * torch.linalg.vector_norm(u @ bt_u.mT)
            l_v = _smooth(l_v, ell, beta_l)
            v = v - lr / l_v * ((a + v @ at_u.mT) @ at_u - (b + v @ bt_u.mT) @ bt_u)
    return u, v, d, torch.stack([l_u, l_v, l_d])


@transform
def scale_by_psgd_lra(rank: int = 10, precond_lr: float = 0.1, precond_init_scale: float | None = None,
                      beta_l: float = 0.9, damping: float = 1e-9, momentum: float = 0.0, update_prob: float = 1.0,
                      preconditioner_type: str = "whitening", whiten_grad: bool = True,
                      seed: int = 0) -> GradientTransformation:
    """PSGD with a low-rank-approximation preconditioner (Li, 2018; Li 2024,
    arXiv:2402.11858): ``Q = (I + U V^T) diag(d)`` over all parameters flattened (in tree
    order) into ``g`` of length ``n``, ``U, V`` of shape ``(n, rank)``, ``P = Q^T Q``, update
    ``u = P g = d (I + V U^T)(I + U V^T)(d g)`` (``m`` instead of ``g`` with ``momentum``).
    The rules of Xi-Lin Li's psgd_torch ``LRAWhiten`` (default) and ``LRANewton``.

    Fitting ``Q`` towards ``P h h^T P = v v^T`` (``v ~ N(0, I)``; ``h = g + damping v`` for
    ``preconditioner_type="whitening"``, ``m`` instead of ``g`` unless ``whiten_grad``;
    ``h = H v + damping n`` with the ``hvp_fn`` extra argument for ``"newton"``): ``U`` and
    ``V`` are first rescaled and rotated towards ``U^T U = V^T V``; with ``Qh``, ``Ph``,
    ``Q^-T v`` and ``P^-1 v`` (Woodbury, one ``rank x rank`` LU)
    ``d <- d - precond_lr / L_d (Ph * h - v * P^-1 v) * d``, then, with probability 1/2 each,
    ``U <- U - precond_lr / L_U (a a^T V - b b^T V)(I + V^T U)`` or the matching step of ``V``
    (``a = Qh``, ``b = Q^-T v``), each ``L`` a running maximum
    ``L <- max(beta_l L + (1 - beta_l) l, l)`` of the step's normaliser ``l``. ``U`` and ``V``
    start as normal draws scaled to Frobenius norm ``sqrt(0.1)`` each; ``d`` at
    ``precond_init_scale``, or (``None``) at Li's scale from the first step
    (``(mean(g^4) + damping^4)^(-1/8)`` for whitening,
    ``mean(v^2)^(1/4) (mean((Hv)^4) + damping^4)^(-1/8)`` for Newton). ``Q`` is fitted on a
    step with probability ``update_prob`` (Newton: always on the first step without an
    initial scale). ``rank=0`` is a diagonal preconditioner; a rank of ``n`` or more is
    taken as ``n - 1`` (Li's bound). Momentum is Li's:
    ``beta = min(t / (t + 1), momentum)``.

    State: each parameter's rows of ``U``, ``V`` (``(*shape, rank)``) and entries of ``d``
    sit in trees like the params (the math runs on them concatenated); ``U, V, d`` have the
    widest dtype of the parameters, at least float32. Randomness comes from generators seeded
    by ``(seed, t, stream)`` in the state, never the global RNG. Complex parameters are
    refused. The reference's optional clipping of the step is a chain member here.
    heavyball's ``PSGDLRA`` is the same family with other normalisers (no running ``L``) and
    heavyball's schedule and clipping; this follows Li's code.

    Example: ``gx.chain(gx.scale_by_psgd_lra(rank=10), gx.scale_by_lr(1e-3))``.
    """
    check_int("rank", rank, low=0)
    _check_common(precond_lr, precond_init_scale, beta_l, damping, momentum, update_prob, preconditioner_type,
                  whiten_grad, seed)
    name = "scale_by_psgd_lra"

    def init(params):
        ps, treedef, dtype, device, n = _setup(name, params)
        r = min(rank, max(n - 1, 0))  # Li's bound: rank < n
        factors = []
        for stream in (_INIT_U, _INIT_V):
            gen = _generator(device, _mix(seed, stream))
            x = torch.randn(n, r, dtype=dtype, device=device, generator=gen)
            x = x * (0.1 ** 0.5 / torch.linalg.vector_norm(x)) if x.numel() else x
            factors.append(unflatten(treedef, _split_rows(x, ps)))
        scale = 1.0 if precond_init_scale is None else precond_init_scale
        d = unflatten(treedef, [torch.ones_like(p, dtype=dtype) * _scalar(scale, dtype, p.device) for p in ps])
        mu = unflatten(treedef, [torch.zeros_like(p, dtype=dtype) for p in ps]) if momentum > 0 else ()
        return ScaleByPsgdLraState(new_count(), torch.tensor(seed, dtype=torch.int64), factors[0], factors[1], d,
                                   torch.zeros(3, dtype=dtype, device=device), mu)

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del inplace
        gs, treedef, n = _update_leaves(updates, params)
        us, vs, ds = (leaves_like(x, treedef) for x in (state.u, state.v, state.d))
        lip = state.lipschitz
        dtype, device = lip.dtype, lip.device
        t, base = int(state.count), int(state.seed)
        r = us[0].shape[-1] if us else 0
        u, v = (torch.cat([x.reshape(g.numel(), r).to(device) for x, g in zip(xs, gs)]) if xs else
                torch.zeros(0, r, dtype=dtype, device=device) for xs in (us, vs))
        d = _flatten(ds, dtype, device)
        lr, beta, damp, mom = (_scalar(x, dtype, device) for x in (precond_lr, beta_l, damping, momentum))
        mus = leaves_like(state.mu, treedef) if momentum > 0 else []
        mus, new_mu = _momentum(mus, gs, t, mom, dtype)
        g = _flatten(gs, dtype, device)
        first = t == 0 and precond_init_scale is None
        newton = preconditioner_type == "newton"
        if n and first and not newton:  # Li's whitening form sets d before (and whether or not) it fits Q
            d = torch.ones_like(d) * _init_scale("whitening", None, None, g, damp)
        if n and (_uniform(base, t, _DRAW) < update_prob or (first and newton)):
            target = g if whiten_grad else _flatten(mus, dtype, device)
            probe, h, h_raw = _probe_pair(name, preconditioner_type, target, gs, params, treedef, extra_args, base,
                                          t, damp)
            if first and newton:
                d = torch.ones_like(d) * _init_scale("newton", probe, h_raw, g, damp)
            u, v, d, lip = _lra_step(u, v, d, lip, probe, h, lr, beta, _uniform(base, t, _SIDE) < 0.5)
        x = _flatten(mus, dtype, device) if momentum > 0 else g
        out = d * _ip_uvt(v, u, _ip_uvt(u, v, d * x))
        new_u, new_v = (unflatten(treedef, _split_rows(x, gs)) for x in (u, v))
        new_d = unflatten(treedef, _split(d, gs, dtype=False))
        mu = unflatten(treedef, new_mu) if momentum > 0 else ()
        return unflatten(treedef, _split(out, gs)), ScaleByPsgdLraState(state.count + 1, state.seed, new_u, new_v,
                                                                         new_d, lip, mu)

    return GradientTransformation(init, update)
