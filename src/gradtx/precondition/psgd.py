"""PSGD with a Kronecker-factored preconditioner (Li, 2018), the "Kron" form of psgd_torch and
kron_torch."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .._hparams import check, check_beta, check_int, new_count
from .._tree import Tree
from ..base import GradientTransformation, transform
from ..transforms._common import leaves, leaves_like, refuse_complex, unflatten
from ..transforms.perturb import _generator, _mix, _uniform

__all__ = ["ScaleByPsgdKronState", "scale_by_psgd_kron"]

# the streams of step t: every leaf's noise is the start of one stream (each leaf's factors see
# only their own noise, so sharing the stream couples nothing and keeps the rule leafwise)
_NOISE, _BALANCE = 0, -1


class ScaleByPsgdKronState(NamedTuple):
    """State of :func:`scale_by_psgd_kron`."""

    count: torch.Tensor  # int32, steps taken
    update_counter: torch.Tensor  # int32, steps since the preconditioner was last updated
    seed: torch.Tensor  # int64; step t's noise and balancing draw come from generators seeded by (seed, t)
    mu: Tree  # momentum (mu_dtype or the parameter's)
    qs: Tree  # per parameter, one factor per axis: upper-triangular (n, n) or a diagonal (n,); 0-dim: a scalar


def _update_probability(step: torch.Tensor, max_prob: float = 1.0, min_prob: float = 0.03, decay: float = 0.001,
                        flat_start: int = 500) -> torch.Tensor:
    """kron_torch's default schedule: ``max_prob`` for ``flat_start`` steps, then decaying as
    ``max_prob exp(-decay (t - flat_start))`` down to ``min_prob`` (float32, as the reference)."""
    prob = max_prob * torch.exp(-decay * (step.to(torch.float32) - flat_start))
    return prob.clamp(min=min_prob, max=max_prob)


def _norm_lower_bound(a: torch.Tensor) -> torch.Tensor:
    """A cheap lower bound of the spectral norm of the symmetric ``a`` (Li's ``norm_lower_bound``):
    scale by the largest entry, take the row or column of largest norm as the start vector
    ``x`` and return ``|| (x / ||x||) A ||`` times the scale."""
    max_abs = a.abs().max()
    tiny = torch.finfo(a.dtype).tiny
    a = a / torch.where(max_abs > 0, max_abs, 1.0)
    squares = a * a
    value0, i = squares.sum(dim=0).max(0)
    value1, j = squares.sum(dim=1).max(0)
    x0 = a.index_select(1, i.reshape(1)).flatten() @ a
    bound0 = torch.linalg.vector_norm((x0 / torch.linalg.vector_norm(x0).clamp_min(tiny)) @ a.mT)
    x1 = a @ a.index_select(0, j.reshape(1)).flatten()
    bound1 = torch.linalg.vector_norm(a.mT @ (x1 / torch.linalg.vector_norm(x1).clamp_min(tiny)))
    return max_abs * torch.where(value0 > value1, bound0, bound1)


def _along(x: torch.Tensor, axis: int, mat: torch.Tensor) -> torch.Tensor:
    """``x`` with ``mat`` applied along ``axis``: ``y[.., a, ..] = sum_n mat[a, n] x[.., n, ..]``."""
    return torch.movedim(torch.tensordot(mat, x, dims=[[1], [axis]]), 0, axis)


def _contract_others(x: torch.Tensor, axis: int, diagonal: bool) -> torch.Tensor:
    others = [i for i in range(x.dim()) if i != axis]
    if diagonal:
        return (x * x).sum(dim=others) if others else x * x
    return torch.tensordot(x, x, dims=[others, others])


def _triangular_kinds(shape: torch.Size, max_size_triangular: int, min_ndim_triangular: int) -> list[bool]:
    return [not (n == 1 or n > max_size_triangular or len(shape) < min_ndim_triangular) for n in shape]


@transform(leafwise=True, inplace=True)
def scale_by_psgd_kron(b1: float = 0.9, precond_lr: float = 0.1, precond_init_scale: float = 1.0,
                       max_size_triangular: int = 8192, min_ndim_triangular: int = 2,
                       update_prob: float | None = None, balance_prob: float = 0.01,
                       momentum_into_precond_update: bool = True, mu_dtype: torch.dtype | None = None,
                       precond_dtype: torch.dtype = torch.float32, seed: int = 0) -> GradientTransformation:
    """PSGD Kron (Li, 2018, "Preconditioned Stochastic Gradient Descent"), kron_torch's form
    (``pytorch_optimizer.Kron``).

    Momentum ``m <- b1 m + (1-b1) g``, ``m_hat = m / (1 - b1^t)``. Each parameter keeps one
    factor ``Q_i`` per axis, started at ``precond_init_scale^(1/k) I`` (``k`` axes): upper
    triangular for an axis of size ``1 < n <= max_size_triangular`` of a tensor with at least
    ``min_ndim_triangular`` axes, else diagonal (a vector, so vectors get a diagonal
    preconditioner; a 0-dim tensor a scalar). The preconditioner is ``P = Q^T Q`` with
    ``Q = Q_1 (x) ... (x) Q_k``; the update is ``u = P m_hat`` (``Q_i^T Q_i`` applied along axis
    ``i``), scaled by ``min(1, 1.1 / (rms(u) + 1e-6))``.

    Updating ``Q`` (Li's Lie-group step, fitting ``P`` to ``E[h h^T]^(-1/2)``): with
    ``h = m_hat`` (``g`` unless ``momentum_into_precond_update``) and a noise ``v ~ N(0, I)``,
    ``A = Q h`` and ``B = Q^-T v`` (applied axis by axis); for each axis
    ``T1 = A_(i) A_(i)^T``, ``T2 = B_(i) B_(i)^T`` and
    ``Q_i <- Q_i - precond_lr triu(T1 - T2) Q_i / (||T1 + T2||_lb + tiny)`` (``||.||_lb`` a lower bound
    of the spectral norm; a diagonal factor takes the elementwise form over the max norm).
    The update happens on a step when the steps since the last one reach ``1 / p``, ``p`` =
    ``update_prob`` or kron_torch's schedule (1 for 500 steps, then ``exp(-0.001 (t - 500))``
    down to 0.03); on such steps, with probability ``balance_prob``, the factors of a tensor of
    rank >= 2 are rescaled to equal infinity norms (``P`` unchanged).

    Randomness comes from the state, never the global RNG: step ``t``'s noise (the first
    ``numel`` normals of one stream, the same for every leaf: each leaf's factors see only their
    own noise) and balancing draw come from ``torch.Generator`` seeded by ``(seed, t)``, so a
    resumed checkpoint continues the same numbers and the rule is leafwise. The reference draws
    from the global RNG (and ``numpy``'s for balancing). Factors are kept in ``precond_dtype``
    (float32, as the reference); the reference does its triangular solves in float32 even then.
    Complex parameters are refused at ``init``.

    Example: ``gx.chain(gx.scale_by_psgd_kron(), gx.scale_by_lr(3e-4))``.
    """
    check_beta("b1", b1)
    check("precond_lr", precond_lr, low=0.0)
    check("precond_init_scale", precond_init_scale, low=0.0, low_open=True)
    check_int("max_size_triangular", max_size_triangular, low=0)
    check_int("min_ndim_triangular", min_ndim_triangular, low=0)
    if update_prob is not None:
        check("update_prob", update_prob, low=0.0, high=1.0, low_open=True)
    check("balance_prob", balance_prob, low=0.0, high=1.0)
    if precond_dtype not in (torch.float32, torch.float64):
        raise ValueError(f"precond_dtype must be torch.float32 or torch.float64, got {precond_dtype!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not -(1 << 63) <= seed < (1 << 63):
        raise ValueError(f"seed must be an int that fits in int64, got {seed!r}")
    eps = torch.finfo(torch.bfloat16).tiny  # the reference's offset

    def init(params):
        refuse_complex("scale_by_psgd_kron", params, "its factors are built from each tensor's axes")
        ps, treedef = leaves(params)
        qs = []
        for p in ps:
            # a tensor scale keeps its autograd history (a hyperparameter of the initial state)
            if p.dim() == 0:
                one = torch.ones((), dtype=precond_dtype, device=p.device)
                qs.append([(one * precond_init_scale).to(precond_dtype)])
                continue
            scale = precond_init_scale ** (1.0 / p.dim())
            kinds = _triangular_kinds(p.shape, max_size_triangular, min_ndim_triangular)
            qs.append([(scale * (torch.eye(n, dtype=precond_dtype, device=p.device) if tri
                                 else torch.ones(n, dtype=precond_dtype, device=p.device))).to(precond_dtype)
                       for n, tri in zip(p.shape, kinds)])
        mu = [torch.zeros_like(p, dtype=mu_dtype) for p in ps]
        # the counter made from a number: under FakeTensorMode it keeps its value and can be read
        return ScaleByPsgdKronState(new_count(), torch.tensor(0, dtype=torch.int32),
                                    torch.tensor(seed, dtype=torch.int64), unflatten(treedef, mu),
                                    unflatten(treedef, qs))

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        # in place: the momentum and factors are written into, each update into g's buffer
        del params, extra_args
        gs, treedef = leaves(updates)
        mus = leaves_like(state.mu, treedef)
        all_qs = leaves_like(state.qs, treedef)
        t = int(state.count)
        base = int(state.seed)
        prob = torch.as_tensor(update_prob, dtype=torch.float32) if update_prob is not None else \
            _update_probability(state.count)
        counter = int(state.update_counter) + 1
        do_update = bool(prob > 0 and counter >= 1 / prob)
        new_counter = torch.tensor(0 if do_update else counter, dtype=torch.int32)
        device = gs[0].device if gs else torch.device("cpu")
        balance = do_update and _uniform(_mix(base, t, _BALANCE)) < balance_prob
        bc1 = 1.0 - b1 ** torch.tensor(float(t + 1), dtype=torch.float64)
        outs, new_mus, new_qs = [], [], []
        for g, mu, qs in zip(gs, mus, all_qs):
            step = g.to(mu.dtype) * (1.0 - b1)
            mu = mu.mul_(b1).add_(step) if inplace else mu * b1 + step
            del step
            if g.numel() == 0:  # nothing to precondition (and no norm of an empty factor)
                outs.append(g if inplace else torch.zeros_like(g))
                new_mus.append(mu)
                new_qs.append(list(qs))
                continue
            # made where used, so only the factor update holds it there (recomputed: the same bits)
            def debiased(mu=mu):
                return (mu / bc1.to(mu.dtype)).to(precond_dtype)

            old_qs, qs = qs, [q.clone() for q in qs] if not inplace else list(qs)
            if g.dim() > 1 and balance:
                norms = torch.stack([q.abs().max() for q in qs])
                mean = norms.prod() ** (1.0 / len(qs))
                qs = [q * (mean / n) for q, n in zip(qs, norms)]
            if do_update:
                # the noise is made in the call, so it is freed as soon as the factors are past it
                qs = _update_factors(qs, debiased() if momentum_into_precond_update else g.to(precond_dtype),
                                     torch.randn(g.shape, dtype=precond_dtype, device=device,
                                                 generator=_generator(device, _mix(base, t, _NOISE))),
                                     precond_lr, eps)
            if inplace:  # the new factors into the state's tensors
                qs = [old.copy_(q) if q is not old else q for old, q in zip(old_qs, qs)]
            out = debiased()
            if g.dim() == 0:
                out = qs[0] * qs[0] * out
            else:
                for axis, q in enumerate(qs):
                    if q.dim() == 2:
                        out = _along(out, axis, q.mT @ q)
                    else:
                        out = out * (q * q).reshape([-1 if i == axis else 1 for i in range(g.dim())])
            out = out.to(g.dtype)
            clip = torch.clamp(1.1 / (out.square().mean().sqrt() + 1e-6), max=1.0)
            out = g.copy_(out).mul_(clip) if inplace else out * clip
            outs.append(out)
            new_mus.append(mu)
            new_qs.append(qs)
        new_state = ScaleByPsgdKronState(state.count + 1, new_counter, state.seed, unflatten(treedef, new_mus),
                                         unflatten(treedef, new_qs))
        return unflatten(treedef, outs), new_state

    return GradientTransformation(init, update)


def _update_factors(qs: list[torch.Tensor], h: torch.Tensor, v: torch.Tensor, lr, eps: float) -> list[torch.Tensor]:
    """One Lie-group step of every factor towards ``P E[h h^T] P = E[v v^T]``."""
    if h.dim() == 0:
        q = qs[0]
        a, b = q * h, v / q
        t1, t2 = a * a, b * b
        step = (t1 - t2) * lr * q / ((t1 + t2).abs() + eps)
        return [q - step]
    a, b = h, v
    del h, v  # the caller's noise is freed once b moves past it
    for axis, q in enumerate(qs):
        shape = [-1 if i == axis else 1 for i in range(a.dim())]
        if q.dim() == 2:
            a = _along(a, axis, q)
            # B = V Q^-1 along the axis (a right triangular solve), as the reference
            moved = torch.movedim(b, axis, -1)
            solved = torch.linalg.solve_triangular(q, moved.reshape(-1, moved.shape[-1]), upper=True, left=False)
            b = torch.movedim(solved.reshape(moved.shape), -1, axis)
        else:
            a = a * q.reshape(shape)
            b = b / q.reshape(shape)
    new = []
    for axis, q in enumerate(qs):
        diagonal = q.dim() < 2
        t1, t2 = _contract_others(a, axis, diagonal), _contract_others(b, axis, diagonal)
        step = (t1 - t2) * lr
        if diagonal:
            step = step * q / ((t1 + t2).abs().max() + eps)
        else:
            step = torch.triu(step) / (_norm_lower_bound(t1 + t2) + eps) @ q
        new.append(q - step)
    return new
