"""SOAP: Adam run in the eigenbasis of Shampoo's Kronecker factors (Vyas et al., 2024)."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .._hparams import check, check_beta, check_int, new_count
from .._tree import Tree
from ..base import GradientTransformation, transform
from ..transforms._common import leaves, leaves_like, refuse_complex, unflatten
from ._factors import empty_like_factor, factor_sizes, gram, multiply_axes

__all__ = ["ScaleBySoapState", "scale_by_soap"]


class ScaleBySoapState(NamedTuple):
    """State of :func:`scale_by_soap`."""

    count: torch.Tensor  # int32, calls made (the first only collects statistics)
    mu: Tree  # first moment, in the parameter's own basis and shape
    nu: Tree  # second moment, in the eigenbasis (parameter's shape)
    factors: Tree  # per parameter, one (n, n) factor per axis of its working shape; (0,) where none
    bases: Tree  # per parameter, the eigenbasis Q of each factor; (0,) where none


def _lerp(start: torch.Tensor, end: torch.Tensor, weight, inplace: bool = False) -> torch.Tensor:
    """``start + weight (end - start)``, written into ``start`` when ``inplace``."""
    # a 0-dim tensor hyperparameter takes the state's dtype (torch.lerp needs one dtype)
    if isinstance(weight, torch.Tensor):
        weight = weight.to(start.dtype)
    return start.lerp_(end, weight) if inplace else torch.lerp(start, end, weight)


def _into(old: torch.Tensor, new: torch.Tensor, inplace: bool) -> torch.Tensor:
    """``new``, copied into the state tensor ``old`` when ``inplace`` (so the old and new state
    never coexist; a contiguous ``old`` keeps the checkpoint's row-major layout)."""
    return old.copy_(new) if inplace else new


def _decomposition_dtype(dtype: torch.dtype, precond_dtype: torch.dtype | None) -> torch.dtype:
    if precond_dtype is not None:
        return precond_dtype
    # torch.linalg.eigh has no kernel for half types: the references widen them to float32
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _eigenbasis(factor: torch.Tensor, precond_dtype: torch.dtype | None) -> torch.Tensor:
    """Eigenvectors of ``factor``, largest eigenvalue first (the initial basis)."""
    work = factor.to(_decomposition_dtype(factor.dtype, precond_dtype))
    # the references' tiny shift keeps eigh well defined for an all-zero factor
    work = work + 1e-30 * torch.eye(work.shape[0], device=work.device, dtype=work.dtype)
    _, q = torch.linalg.eigh(work)
    # contiguous: eigh and QR return column-major Q, and a checkpoint loads into row-major
    # state, whose products round differently (a resumed run would then sort ties differently)
    return torch.flip(q, dims=[1]).to(factor.dtype).contiguous()


def _new_bases(factors: list[torch.Tensor], bases: list[torch.Tensor], has: list[bool],
               precond_dtype: torch.dtype | None) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
    """One power iteration and a QR per factor (Vyas et al., Algorithm 4): the estimated
    eigenvalues ``diag(Q^T L Q)`` order the columns (largest first) and ``Q <- qr(L Q)``.
    Returns the new bases and, per axis, the column order (``None`` where no factor), with
    which a diagonal statistic kept in the old basis is permuted so each entry stays with its
    direction (:func:`_permute`)."""
    new_bases, orders = [], []
    for factor, q, on in zip(factors, bases, has):
        if not on:
            new_bases.append(q)
            orders.append(None)
            continue
        product = factor @ q
        estimate = (q * product).sum(dim=0)
        order = torch.argsort(estimate, descending=True)
        power = product.index_select(1, order)
        # QR in float32 unless asked otherwise, as the references: orthogonality of Q matters
        # more than the factor's precision, and torch has no QR for half types
        qr_dtype = precond_dtype if precond_dtype is not None else torch.float32
        new_q, _ = torch.linalg.qr(power.to(qr_dtype))
        new_bases.append(new_q.to(q.dtype).contiguous())
        orders.append(order)
    return new_bases, orders


def _permute(x: torch.Tensor, orders: list[torch.Tensor | None]) -> torch.Tensor:
    """``x`` (in the working shape) with each factored axis reordered as the refresh sorted it."""
    for axis, order in enumerate(orders):
        if order is not None:
            x = x.index_select(axis, order)
    return x


def _refresh(factors: list[torch.Tensor], bases: list[torch.Tensor], has: list[bool], nu: torch.Tensor,
             precond_dtype: torch.dtype | None) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The refreshed bases (:func:`_new_bases`), and the second moment permuted with them."""
    new_bases, orders = _new_bases(factors, bases, has, precond_dtype)
    return new_bases, _permute(nu, orders)


@transform(leafwise=True, inplace=True)
def scale_by_soap(b1: float = 0.95, b2: float = 0.95, shampoo_beta: float | None = None, eps: float = 1e-8,
                  precondition_frequency: int = 10, max_precond_dim: int = 10000, merge_dims: bool = False,
                  precondition_1d: bool = False, normalize_grads: bool = False, correct_bias: bool = True,
                  precond_dtype: torch.dtype | None = None) -> GradientTransformation:
    """SOAP's rescaling (Vyas et al., 2024, "SOAP: Improving and Stabilizing Shampoo using Adam").

    Each parameter (reshaped to its *working shape*, below) keeps one Kronecker factor per axis,
    ``L_i <- shampoo_beta L_i + (1-shampoo_beta) G_(i) G_(i)^T`` (``G_(i)``: ``g`` with axis ``i``
    first, the others flattened; ``shampoo_beta=None`` takes ``b2``), and an orthonormal basis
    ``Q_i`` of each. With ``rot(x) = x x_1 Q_1 ... x_k Q_k`` (``Q_i^T`` applied along axis ``i``)
    and ``unrot`` its inverse, step ``t`` is Adam in the rotated coordinates::

        m <- b1 m + (1-b1) g                      # kept unrotated
        v <- b2 v + (1-b2) rot(g)^2               # kept rotated
        u <- unrot(rot(m) / (sqrt(v) + eps)) * sqrt(1 - b2^t) / (1 - b1^t)

    (the bias factor only with ``correct_bias``; ``normalize_grads`` then divides ``u`` by
    ``sqrt(mean(u^2)) + eps``). After the step the factors take ``g``; every
    ``precondition_frequency`` steps each ``Q_i`` is refreshed by one power iteration and a QR
    decomposition, ``Q_i <- qr(L_i Q_i)``, its columns first sorted by the estimated eigenvalues
    ``diag(Q_i^T L_i Q_i)``, largest first, with ``v`` permuted along axis ``i`` to match.
    The very first call only collects statistics, takes ``Q_i`` from an eigendecomposition of
    ``L_i`` and returns a zero update (the step count ``t`` starts at the second call), so the
    basis never depends on the gradient it rotates.

    Shapes: a matrix gets two factors; a tensor of rank ``k > 2`` (a conv weight
    ``(out, in, kh, kw)``) gets ``k``, or with ``merge_dims`` one per group of neighbouring axes
    whose product stays ``<= max_precond_dim`` (the authors' rule: ``(64, 32, 3, 3)`` with
    ``max_precond_dim=1024`` works as a ``(64, 288)`` matrix). An axis longer than
    ``max_precond_dim`` gets no factor (identity along it). A vector gets a full ``(n, n)``
    factor only with ``precondition_1d``, else none (then SOAP is Adam on it, as on a 0-dim
    tensor). The decompositions run in ``precond_dtype``; by default the initial
    ``eigh`` in the factor's dtype (float32 for half types) and the QR in float32, as the
    reference implementations do. The factors have the parameter's dtype.

    Defaults are the authors' (``betas=(0.95, 0.95)``, ``precondition_frequency=10``,
    ``max_precond_dim=10000``). Matches ``pytorch_optimizer.SOAP`` (a port of the authors'
    code) step for step; the authors' code computes the first ``eigh`` of a float64 factor in
    float32 too. Complex parameters are refused at ``init`` (optimize ``torch.view_as_real(p)``).

    Example: ``gx.chain(gx.scale_by_soap(), gx.scale_by_lr(3e-3))``, or ``gx.soap(3e-3)``.
    """
    check_beta("b1", b1)
    check_beta("b2", b2)
    if shampoo_beta is not None:
        check_beta("shampoo_beta", shampoo_beta)
    check("eps", eps, low=0.0)
    check_int("precondition_frequency", precondition_frequency, low=1)
    check_int("max_precond_dim", max_precond_dim, low=1)
    if precond_dtype is not None and precond_dtype not in (torch.float32, torch.float64):
        raise ValueError(f"precond_dtype must be None, torch.float32 or torch.float64, got {precond_dtype!r}")
    stat_beta = b2 if shampoo_beta is None else shampoo_beta

    def layout(p: torch.Tensor) -> tuple[list[int], list[bool]]:
        return factor_sizes(p.shape, max_dim=max_precond_dim, merge=merge_dims, precondition_1d=precondition_1d)

    def init(params):
        refuse_complex("scale_by_soap", params, "its factors are built from each tensor's axes")
        ps, treedef = leaves(params)
        factors, bases = [], []
        for p in ps:
            shape, has = layout(p)
            factors.append([p.new_zeros(n, n) if on else empty_like_factor(p) for n, on in zip(shape, has)])
            bases.append([p.new_zeros(n, n) if on else empty_like_factor(p) for n, on in zip(shape, has)])
        zeros = [torch.zeros_like(p) for p in ps]
        return ScaleBySoapState(new_count(), unflatten(treedef, zeros), unflatten(treedef, [z.clone() for z in zeros]),
                                unflatten(treedef, factors), unflatten(treedef, bases))

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        # in place: the moments, factors and bases are written into, the update into g's buffer
        del params, extra_args
        gs, treedef = leaves(updates)
        mus = leaves_like(state.mu, treedef)
        nus = leaves_like(state.nu, treedef)
        all_factors = leaves_like(state.factors, treedef)
        all_bases = leaves_like(state.bases, treedef)
        t = int(state.count)  # the schedule of refreshes is Python control flow
        scale = None
        if t > 0 and correct_bias:
            tt = torch.tensor(float(t), dtype=torch.float64)
            scale = (1.0 - b2 ** tt).sqrt() / (1.0 - b1 ** tt)
        outs, new_mus, new_nus, new_factors, new_bases = [], [], [], [], []
        for g, mu, nu, factors, bases in zip(gs, mus, nus, all_factors, all_bases):
            shape, has = layout(g)
            work = g.reshape(shape).to(nu.dtype)  # low-precision grads on wider params: the state's dtype
            if t == 0:
                out = None
            else:
                rotated = multiply_axes(work, bases, has, transpose=False)
                mu = _lerp(mu, work.reshape(g.shape).to(mu.dtype), 1.0 - b1, inplace)
                nu_w = _lerp(nu.reshape(shape), rotated * rotated, 1.0 - b2, inplace)
                del rotated
                nu = nu_w.reshape(g.shape)
                denom = nu_w.sqrt() + eps
                direction = multiply_axes(multiply_axes(mu.reshape(shape), bases, has, transpose=False) / denom,
                                          bases, has, transpose=True)
                del denom
                if normalize_grads:
                    direction = direction / (direction.square().mean().sqrt() + eps)
                if scale is not None:
                    direction = direction * scale
                out = direction.reshape(g.shape)
            # the factors take g before the update overwrites its buffer
            factors = [_lerp(f, gram(work, i).to(f.dtype), 1.0 - stat_beta, inplace) if on else f
                       for i, (f, on) in enumerate(zip(factors, has))]
            del work
            if t == 0:
                bases = [_into(q, _eigenbasis(f, precond_dtype), inplace) if on else q
                         for f, q, on in zip(factors, bases, has)]
            elif t % precondition_frequency == 0:
                fresh, nu_w = _refresh(factors, bases, has, nu.reshape(shape), precond_dtype)
                bases = [_into(q, b, inplace) if on else q for q, b, on in zip(bases, fresh, has)]
                nu = _into(nu, nu_w.reshape(g.shape), inplace)
            if inplace:
                out = g.zero_() if out is None else g.copy_(out)
            else:
                out = torch.zeros_like(g) if out is None else out.to(g.dtype)
            outs.append(out)
            new_mus.append(mu)
            new_nus.append(nu)
            new_factors.append(factors)
            new_bases.append(bases)
        new_state = ScaleBySoapState(state.count + 1, unflatten(treedef, new_mus), unflatten(treedef, new_nus),
                                     unflatten(treedef, new_factors), unflatten(treedef, new_bases))
        return unflatten(treedef, outs), new_state

    return GradientTransformation(init, update)
