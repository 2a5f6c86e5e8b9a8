"""Full-matrix adaptive preconditioning per tensor: full-matrix AdaGrad and GGT's low-rank
window (Agarwal et al., 2019)."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from .._hparams import check, check_int, new_count
from .._tree import Tree
from ..base import GradientTransformation, is_leafwise, transform, updater
from ..transforms._common import leaves, leaves_like, refuse_complex, unflatten
from ._factors import symmetric_power

__all__ = ["ScaleByFullMatrixAdagradState", "ScaleByGgtState", "scale_by_full_matrix_adagrad", "scale_by_ggt"]


def _check_inner(inner: Any) -> None:
    if inner is not None and not isinstance(inner, GradientTransformation):
        raise ValueError(f"inner must be None or a GradientTransformation (e.g. gx.ema(0.9)), got {inner!r}")


def _inner_leafwise(args: dict) -> bool:
    return args["inner"] is None or is_leafwise(args["inner"])


def _run_inner(inner, run, updates, inner_state, params, extra_args):
    if inner is None:
        return updates, inner_state
    return run(updates, inner_state, params, False, extra_args)


class ScaleByFullMatrixAdagradState(NamedTuple):
    """State of :func:`scale_by_full_matrix_adagrad`."""

    count: torch.Tensor  # int32, steps taken
    accumulator: Tree  # per parameter: (n, n) sum (or EMA) of g g^T, n = numel; (n,) diagonal above max_dim
    root: Tree  # per parameter: the matrix power in use since the last refresh (like accumulator)
    inner_state: Any  # the state of ``inner`` (() when there is none)


def _symmetric_power_abs(matrix: torch.Tensor, power: float) -> torch.Tensor:
    """``|A|^power`` by ``eigh`` (absolute eigenvalues, floored at twice the dtype's tiny),
    torchzero's ``eigh_abs`` rule; a half-precision matrix is decomposed in float32."""
    work = matrix if matrix.dtype in (torch.float32, torch.float64) else matrix.float()
    return symmetric_power(work, power, absolute=True, floor=2 * torch.finfo(work.dtype).tiny).to(matrix.dtype)


@transform(leafwise=_inner_leafwise)
def scale_by_full_matrix_adagrad(eps: float = 1e-12, update_freq: int = 1, beta: float | None = None,
                                 beta_debias: bool = True, init: str = "identity", matrix_power: float = -0.5,
                                 max_dim: int = 4096, inner: GradientTransformation | None = None
                                 ) -> GradientTransformation:
    """Full-matrix AdaGrad per tensor (Duchi et al., 2011), torchzero's ``FullMatrixAdagrad``.

    Each parameter, flattened to ``g`` of length ``n``, keeps ``A`` (``I`` with
    ``init="identity"``, ``0`` with ``"zeros"``): ``A <- A + g g^T``, or ``A <- beta A +
    (1-beta) g g^T`` when ``beta`` is given. Every ``update_freq`` steps (the first included)
    ``B = |A + eps I|^matrix_power`` is recomputed by ``eigh`` (absolute eigenvalues, floored at
    twice the dtype's smallest normal); the update is ``u <- B inner(g)``, where ``inner`` (any
    transform, e.g. ``gx.ema(0.9, debias=False)`` for full-matrix Adam) sees the incoming
    updates and ``B`` multiplies its output, while ``A`` collects the incoming updates. With
    ``beta`` and ``beta_debias``, ``u <- u sqrt(1 - beta^t)``.

    A one-element parameter's root is recomputed every step (it costs nothing), as torchzero's.
    A parameter with more than ``max_dim`` elements (an ``(n, n)`` matrix would not fit) keeps
    the diagonal of ``A`` only: ``u <- inner(g) (a + eps)^matrix_power``, diagonal AdaGrad.
    torchzero concatenates all parameters into one vector by default; this is its
    ``concat_params=False`` (per tensor, so leafwise when ``inner`` is).

    Example: ``gx.chain(gx.scale_by_full_matrix_adagrad(beta=0.999, inner=gx.ema(0.9, debias=False)),
    gx.scale_by_lr(1e-2))``.
    """
    check("eps", eps, low=0.0)
    check_int("update_freq", update_freq, low=1)
    if beta is not None:
        check("beta", beta, low=0.0, high=1.0, high_open=True)
    if init not in ("identity", "zeros"):
        raise ValueError(f"init must be 'identity' or 'zeros', got {init!r}")
    check("matrix_power", matrix_power)
    check_int("max_dim", max_dim, low=1)
    _check_inner(inner)
    run_inner = None if inner is None else updater(inner)

    def full(p: torch.Tensor) -> bool:
        return p.numel() <= max_dim

    def init_fn(params):
        refuse_complex("scale_by_full_matrix_adagrad", params, "its accumulator is the outer product of the tensor")
        ps, treedef = leaves(params)
        accs, roots = [], []
        for p in ps:
            n = p.numel()
            if full(p):
                acc = torch.eye(n, dtype=p.dtype, device=p.device) if init == "identity" else p.new_zeros(n, n)
            else:
                acc = p.new_ones(n) if init == "identity" else p.new_zeros(n)
            accs.append(acc)
            roots.append(torch.zeros_like(acc))
        inner_state = () if inner is None else inner.init(params)
        return ScaleByFullMatrixAdagradState(new_count(), unflatten(treedef, accs), unflatten(treedef, roots),
                                             inner_state)

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del inplace  # not declared in-place: computes into fresh tensors
        gs, treedef = leaves(updates)
        accs = leaves_like(state.accumulator, treedef)
        roots = leaves_like(state.root, treedef)
        refresh = int(state.count) % update_freq == 0
        directions, inner_state = _run_inner(inner, run_inner, updates, state.inner_state, params, extra_args)
        ds = leaves_like(directions, treedef, "the inner transform's updates")
        outs, new_accs, new_roots = [], [], []
        for g, d, acc, root in zip(gs, ds, accs, roots):
            flat = g.reshape(-1).to(acc.dtype)
            stat = torch.outer(flat, flat) if acc.dim() == 2 else flat * flat
            acc = acc + stat if beta is None else torch.lerp(acc, stat, 1.0 - beta)
            if refresh or g.numel() == 1:  # a scalar's root costs nothing: every step, as torchzero
                if acc.dim() == 2:
                    shifted = acc + eps * torch.eye(acc.shape[0], dtype=acc.dtype, device=acc.device)
                    root = _symmetric_power_abs(shifted, matrix_power)
                else:
                    root = (acc + eps) ** matrix_power
            flat_d = d.reshape(-1).to(acc.dtype)
            out = root @ flat_d if acc.dim() == 2 else root * flat_d
            if beta is not None and beta_debias:
                out = out * (1.0 - beta ** (state.count + 1).to(torch.float64)).sqrt()
            outs.append(out.reshape(g.shape).to(g.dtype))
            new_accs.append(acc)
            new_roots.append(root)
        new_state = ScaleByFullMatrixAdagradState(state.count + 1, unflatten(treedef, new_accs),
                                                  unflatten(treedef, new_roots), inner_state)
        return unflatten(treedef, outs), new_state

    return GradientTransformation(init_fn, update)


class ScaleByGgtState(NamedTuple):
    """State of :func:`scale_by_ggt`."""

    count: torch.Tensor  # int32, steps taken
    history: Tree  # per parameter: (window, n) last gradients, row t % window the newest; zeros before
    inner_state: Any  # the state of ``inner`` (() when there is none)


@transform(leafwise=_inner_leafwise)
def scale_by_ggt(window: int = 200, b2: float = 1.0, eps: float = 1e-4,
                 inner: GradientTransformation | None = None) -> GradientTransformation:
    """GGT (Agarwal et al., 2019, "Efficient Full-Matrix Adaptive Regularization", Algorithm 1):
    full-matrix AdaGrad over a window of the last ``window`` gradients, per tensor.

    Each parameter keeps its last ``r = window`` flattened gradients; with the newest first,
    ``G = [g_t, b2 g_{t-1}, ..., b2^(r-1) g_{t-r+1}]`` (``n x r``, missing columns zero) and the
    update is ``u <- ((G G^T)^(1/2) + eps I)^(-1) inner(g)``, computed from the small ``r x r``
    matrix: ``G^T G = V S^2 V^T``, ``U = G V S^-1`` (columns with ``S > 0``), so
    ``u = U diag(1/(S + eps)) U^T x + (x - U U^T x) / eps`` for ``x = inner(g)``. ``inner``
    (e.g. ``gx.ema(0.9, debias=False)``, the paper's ``beta1`` momentum) sees the incoming
    updates; the window holds the incoming updates. The paper's defaults: ``b2 = 1``,
    ``eps = 1e-4``, ``r = 200``. The ``r x r`` eigendecomposition runs in float64 for float64
    parameters and float32 otherwise.

    Example: ``gx.chain(gx.scale_by_ggt(window=20, inner=gx.ema(0.9, debias=False)), gx.scale_by_lr(1e-2))``.
    """
    check_int("window", window, low=1)
    check("b2", b2, low=0.0, high=1.0)
    check("eps", eps, low=0.0, low_open=True)
    _check_inner(inner)
    run_inner = None if inner is None else updater(inner)

    def init_fn(params):
        refuse_complex("scale_by_ggt", params, "its window holds each tensor flattened")
        ps, treedef = leaves(params)
        history = [p.new_zeros(window, p.numel()) for p in ps]
        inner_state = () if inner is None else inner.init(params)
        return ScaleByGgtState(new_count(), unflatten(treedef, history), inner_state)

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del inplace  # not declared in-place: computes into fresh tensors
        gs, treedef = leaves(updates)
        hs = leaves_like(state.history, treedef)
        t = int(state.count)
        slot = t % window
        # age of each row: 0 for the newest; rows never written are zero anyway
        ages = (slot - torch.arange(window)) % window
        directions, inner_state = _run_inner(inner, run_inner, updates, state.inner_state, params, extra_args)
        ds = leaves_like(directions, treedef, "the inner transform's updates")
        outs, new_hs = [], []
        for g, d, h in zip(gs, ds, hs):
            h = h.clone()
            h[slot] = g.reshape(-1).to(h.dtype)
            dtype = torch.float64 if h.dtype == torch.float64 else torch.float32
            weights = torch.as_tensor(b2, dtype=dtype) ** ages.to(dtype)
            m = (h.to(dtype) * weights.unsqueeze(1)).mT  # n x r
            x = d.reshape(-1).to(dtype)
            values, vectors = torch.linalg.eigh(m.mT @ m)
            # directions whose singular value is round-off are left to the 1/eps part
            keep = values > values.max().clamp_min(0) * torch.finfo(dtype).eps * window
            sing = torch.where(keep, values, 1.0).sqrt()  # no infinite sqrt' at 0 to mask in backward
            scale = torch.where(keep, 1.0 / torch.where(keep, sing, 1.0), 0.0)
            u_basis = (m @ vectors) * scale  # n x r, zero columns where not kept
            coeff = u_basis.mT @ x
            shrink = torch.where(keep, 1.0 / (sing + eps), 0.0)
            out = u_basis @ (coeff * shrink) + (x - u_basis @ coeff) / eps
            outs.append(out.reshape(g.shape).to(g.dtype))
            new_hs.append(h)
        return unflatten(treedef, outs), ScaleByGgtState(state.count + 1, unflatten(treedef, new_hs), inner_state)

    return GradientTransformation(init_fn, update)
