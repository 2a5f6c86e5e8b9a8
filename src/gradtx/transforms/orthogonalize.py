"""Orthogonalized updates for matrix parameters (Muon's Newton-Schulz iteration)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Union

import torch

from .. import _foreach as F  # noqa: N812
from .._hparams import check, check_beta, increment, new_count
from .._tree import Tree
from ..base import GradientTransformation, transform
from ._common import leaves, leaves_like, refuse_complex, unflatten
from .momentum import _bias_correction

__all__ = ["ScaleByMuonState", "orthogonalize_via_newton_schulz", "scale_by_muon"]

NsCoeffs = Union[tuple[float, float, float], Sequence[tuple[float, float, float]]]
AdjustLrFn = Union[str, Callable[[int, int], float], None]

MUON_NS_COEFFS = (3.4445, -4.7750, 2.0315)


def _coefficient_schedule(ns_coeffs: NsCoeffs, ns_steps: int) -> list[tuple[float, float, float]]:
    """One ``(a, b, c)`` per iteration: a single triple repeated ``ns_steps`` times, or a
    sequence of triples used as given (``ns_steps`` is then ignored, as in optax)."""
    bad = ValueError(f"ns_coeffs must be (a, b, c) or a sequence of (a, b, c), got {ns_coeffs!r}")
    try:
        rows = [tuple(float(v) for v in ns_coeffs)]
        repeat = True
    except (TypeError, ValueError, RuntimeError):
        try:
            rows = [tuple(float(v) for v in row) for row in ns_coeffs]
        except (TypeError, ValueError, RuntimeError):
            raise bad from None
        repeat = False
    if not rows or any(len(row) != 3 for row in rows):
        raise bad
    if not repeat:
        return rows
    if isinstance(ns_steps, bool) or not isinstance(ns_steps, int) or ns_steps < 0:
        raise ValueError(f"ns_steps must be an int >= 0, got {ns_steps!r}")
    return rows * ns_steps


def _newton_schulz(x: torch.Tensor, coeffs: list[tuple[float, float, float]], eps: float) -> torch.Tensor:
    # Work on the wide orientation so the Gram matrix X X^T is the small one.
    tall = x.shape[-2] > x.shape[-1]
    if tall:
        x = x.mT
    if x.dim() == 2:
        x = x / (torch.linalg.vector_norm(x) + eps)
        for a, b, c in coeffs:
            gram = x @ x.mT
            # b A + c A A and a X + B X each as one fused multiply-add: one rounding per
            # step in low precision, as torch.optim.Muon does.
            poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)
            x = torch.addmm(x, poly, x, beta=a)
    else:
        batch = x.shape[:-2]
        x = x.reshape(-1, *x.shape[-2:])
        x = x / (torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=True) + eps)
        for a, b, c in coeffs:
            gram = x @ x.mT
            poly = torch.baddbmm(gram, gram, gram, beta=b, alpha=c)
            x = torch.baddbmm(x, poly, x, beta=a)
        x = x.reshape(*batch, *x.shape[-2:])
    return x.mT if tall else x


def orthogonalize_via_newton_schulz(x: torch.Tensor, ns_coeffs: NsCoeffs = MUON_NS_COEFFS, ns_steps: int = 5,
                                    eps: float = 1e-8, *, ns_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Approximate the orthogonal factor ``U V^T`` of ``x = U S V^T`` by a Newton-Schulz iteration.

    ``X <- x / (||x||_F + eps)`` (transposed when it has more rows than columns), then
    ``ns_steps`` times ``A = X X^T``, ``X <- a X + (b A + c A^2) X``. With Muon's
    coefficients ``(3.4445, -4.7750, 2.0315)`` (Jordan, 2024) five steps bring every
    singular value into roughly ``[0.7, 1.2]``: ``U S' V^T`` rather than exactly ``U V^T``.

    ``x`` has at least two dimensions; leading dimensions are a batch of matrices, each
    orthogonalized on its own. ``ns_coeffs`` is one ``(a, b, c)`` or a sequence of triples,
    one per step (``ns_steps`` is then ignored). The iteration runs in ``ns_dtype``
    (default: ``x``'s dtype; ``torch.optim.Muon`` always uses ``torch.bfloat16``) and the
    result has ``x``'s dtype. ``x`` is never modified.

    Example: ``o = gx.orthogonalize_via_newton_schulz(torch.randn(64, 32), ns_dtype=torch.bfloat16)``.
    """
    if x.dim() < 2:
        raise ValueError(f"x must have at least 2 dimensions (a matrix or a batch of them), got shape {tuple(x.shape)}")
    check("eps", eps, low=0.0)
    return _orthogonalize(x, _coefficient_schedule(ns_coeffs, ns_steps), eps, ns_dtype)


def _orthogonalize(x: torch.Tensor, coeffs: list[tuple[float, float, float]], eps: float,
                   ns_dtype: torch.dtype | None) -> torch.Tensor:
    # Always a new tensor (the normalization is out of place), so callers may scale it in place.
    return _newton_schulz(x.to(ns_dtype) if ns_dtype is not None else x, coeffs, eps).to(x.dtype)


def _shape_factor(adjust_lr_fn: AdjustLrFn, rows: int, cols: int) -> float:
    if adjust_lr_fn is None or adjust_lr_fn == "original":
        return math.sqrt(max(1.0, rows / cols))
    if adjust_lr_fn == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    return float(adjust_lr_fn(rows, cols))


# Matrices of up to _BATCH_NUMEL elements run the iteration stacked with the others of their
# shape, dtype and device, at most _BATCH_TOTAL elements a stack: many small matrices then
# cost a few batched products per step instead of a few per matrix (Python and dispatch
# dominate there); larger ones run one by one, with no stacked copy.
_BATCH_NUMEL = 1 << 14
_BATCH_TOTAL = 1 << 18


def _batches(idx: list[int], hats: list[torch.Tensor]):
    """``(positions, tensor, stacked)``: each small matrix with the others of its kind in a
    stack (``stacked``: its first dimension runs over ``positions``), every other alone."""
    kinds: dict[tuple, list[tuple[int, torch.Tensor]]] = {}
    for i, h in zip(idx, hats):
        if 0 < h.numel() <= _BATCH_NUMEL:
            kinds.setdefault((h.shape, h.dtype, h.device), []).append((i, h))
        else:
            yield [i], h, False
    for members in kinds.values():
        per = max(_BATCH_TOTAL // members[0][1].numel(), 1)
        for start in range(0, len(members), per):
            chunk = members[start:start + per]
            if len(chunk) == 1:
                yield [chunk[0][0]], chunk[0][1], False
            else:
                yield [i for i, _ in chunk], torch.stack([h for _, h in chunk]), True


def _chunks(count: int, numel: int):
    """``(start, stop)`` over a run of ``count`` matrices of ``numel`` elements each, as
    :func:`_batches` groups them: small ones at most ``_BATCH_TOTAL`` elements a batch,
    larger ones one by one (so a flat leaf's numbers are those of the separate tensors)."""
    per = max(_BATCH_TOTAL // numel, 1) if 0 < numel <= _BATCH_NUMEL else 1
    for start in range(0, count, per):
        yield start, min(start + per, count)


def _all_matrices(seg: Any) -> bool:
    """Whether the tensors a flat leaf is made of (its ``Segments``) have two or more
    dimensions; the flat layout never mixes them with vectors in one leaf."""
    kinds = {len(shape) >= 2 for _, _, shape in seg.shape_runs}
    if len(kinds) > 1:
        raise RuntimeError(f"internal error: a flat leaf holds both matrices and vectors ({seg!r})")
    return kinds == {True}


class ScaleByMuonState(NamedTuple):
    count: torch.Tensor  # int32, steps taken
    mu: Tree  # momentum of each matrix leaf (mu_dtype or its dtype); an empty tensor for other leaves


@transform(leafwise=True, inplace=True, segmented=True)
def scale_by_muon(ns_coeffs: NsCoeffs = MUON_NS_COEFFS, ns_steps: int = 5, beta: float = 0.95, eps: float = 1e-8,
                  mu_dtype: torch.dtype | None = None, *, nesterov: bool = True, adaptive: bool = False,
                  bias_correction: bool = True, adjust_lr_fn: AdjustLrFn = None,
                  ns_dtype: torch.dtype | None = None) -> GradientTransformation:
    """Muon's rescaling (Jordan, 2024; optax.contrib.scale_by_muon): momentum, then
    orthogonalization by Newton-Schulz, for every leaf with two or more dimensions.

    ``m <- beta m + (1-beta) g``; with ``bias_correction`` (optax) ``m_hat = m / (1 - beta^t)``,
    or with ``nesterov`` ``m_hat = beta m / (1 - beta^(t+1)) + (1-beta) g / (1 - beta^t)``;
    without it (``torch.optim.Muon``) ``m_hat = m``, or ``beta m + (1-beta) g``.
    ``O = NS(m_hat)`` (:func:`orthogonalize_via_newton_schulz` with ``ns_coeffs``,
    ``ns_steps``, ``eps``, ``ns_dtype``); ``adaptive`` scales ``O <- <m_hat, O>_F O``
    (Bernstein et al., 2024); finally ``u <- s O`` with the shape factor ``s`` of a
    ``rows x cols`` matrix given by ``adjust_lr_fn``: ``None``/``"original"``
    ``sqrt(max(1, rows/cols))`` (Keller Jordan's, torch's default), ``"match_rms_adamw"``
    ``0.2 sqrt(max(rows, cols))`` (Moonshot's), or a callable ``(rows, cols) -> s``.

    Small matrices (up to 2^14 elements) of one shape run the iteration together, stacked
    (the numbers of one at a time to round-off, with a few batched products per step instead
    of a few per matrix). Leaves with more than two dimensions are batches of matrices over
    their last two dimensions; leaves with fewer pass through unchanged (the ``muon`` alias sends them, and
    every leaf that is not 2-D, to Adam, as optax.contrib.muon does by default). A conv weight
    ``(out, in, kh, kw)`` would thus be taken as ``out * in`` matrices of ``kh x kw``: to treat
    it as one ``out x (in kh kw)`` matrix, reshape its gradient first (``muon(conv="matrix")``).

    Under ``gx.Optimizer(..., flat=True)`` (declared segmented) a leaf may be a flat buffer
    holding many matrices end to end, described by the extra argument ``segments``: the
    momentum then runs over the whole buffer, and Newton-Schulz over each run of equal shapes
    viewed as ``(count, m, n)`` in the buffer (no stacked copy), in the same batches as above
    (a matrix alone as a 2-D view), so the numbers are those of the separate tensors. A flat
    leaf holds matrices only or no matrix at all (the flat layout separates them).

    ``torch.optim.Muon`` is ``chain(scale_by_muon(beta=momentum, eps=1e-7, bias_correction=False,
    ns_dtype=torch.bfloat16), add_decayed_weights(weight_decay), scale_by_lr(lr))`` with
    ``adjust_lr_fn`` as given to torch.

    Differs from optax: ``ns_coeffs`` are constants, not state; the default shape factor
    uses rows/cols of torch's ``(out, in)`` weights, where optax's ``sqrt(max(1, cols/rows))``
    is the same fan-out/fan-in ratio for JAX's ``(in, out)`` kernels.

    Example: ``gx.chain(gx.scale_by_muon(), gx.scale_by_lr(0.02))``.
    """
    coeffs = _coefficient_schedule(ns_coeffs, ns_steps)
    check_beta("beta", beta)
    check("eps", eps, low=0.0)
    if not (adjust_lr_fn is None or adjust_lr_fn in ("original", "match_rms_adamw") or callable(adjust_lr_fn)):
        raise ValueError(f"adjust_lr_fn must be None, 'original', 'match_rms_adamw' or a callable (rows, cols) -> "
                         f"float, got {adjust_lr_fn!r}")

    def init(params):
        refuse_complex("scale_by_muon", params, "it orthogonalizes each matrix, a real matrix iteration")
        ps, treedef = leaves(params)
        mu = [torch.zeros_like(p, dtype=mu_dtype) if p.dim() >= 2 else p.new_zeros((0,), dtype=mu_dtype or p.dtype)
              for p in ps]
        return ScaleByMuonState(count=new_count(), mu=unflatten(treedef, mu))

    def orthogonal(h):
        if h.numel() == 0:  # an empty matrix (a zero-size axis) has nothing to orthogonalize
            return torch.zeros_like(h)
        o = _orthogonalize(h, coeffs, eps, ns_dtype)
        if adaptive:
            o.mul_((h * o).sum(dim=(-2, -1), keepdim=True))
        return o.mul_(_shape_factor(adjust_lr_fn, h.shape[-2], h.shape[-1]))

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del params
        us, treedef = leaves(updates)
        mus = leaves_like(state.mu, treedef)
        segments = extra_args.get("segments")
        segs = None if segments is None else leaves_like(segments, treedef, "segments")
        if segs is None:
            idx = [i for i, u in enumerate(us) if u.dim() >= 2]
        else:  # flat leaves (gx.Optimizer(..., flat=True)): each the tensors of its segments end to end
            idx = [i for i, (u, seg) in enumerate(zip(us, segs)) if u.numel() and _all_matrices(seg)]
        gs = [us[i] for i in idx]
        ms = F.lerp([mus[i] for i in idx], F.cast_like(gs, [mus[i] for i in idx]), 1.0 - beta, inplace=inplace)
        count = increment(state.count, inplace)
        if bias_correction:
            bc = _bias_correction(beta, count)
            if nesterov:
                hat = F.mul(gs, (1.0 - beta) / bc, inplace=inplace)
                F.add(hat, F.mul(F.cast_like(ms, gs), beta / _bias_correction(beta, count + 1)), inplace=True)
            else:
                hat = F.div(F.cast_like(ms, gs), bc)
        elif nesterov:
            hat = F.lerp(gs, F.cast_like(ms, gs), beta, inplace=inplace)
        else:
            hat = F.cast_like(ms, gs)  # may be the state's buffers: nothing below writes into hat
        out = list(us)
        if segs is not None:
            for i, h in zip(idx, hat):
                # written run by run into the update (each run's hat is read before its
                # region is written; hat may be the state's momentum, never the update)
                dest = us[i] if inplace else torch.empty_like(us[i])
                for (_, runs, shape, block), (_, _, _, target) in zip(segs[i].blocks(h), segs[i].blocks(dest)):
                    for start, stop in _chunks(runs, shape.numel()):
                        # one matrix alone as a 2-D view, as the default path runs it
                        if stop - start == 1:
                            target[start].copy_(orthogonal(block[start]))
                        else:
                            target[start:stop].copy_(orthogonal(block[start:stop]))
                out[i] = dest
        else:
            for positions, h, stacked in _batches(idx, hat):
                o = orthogonal(h)
                if not stacked:
                    out[positions[0]] = o
                    continue
                # unbind's views may not be written in place with grad mode on (a later part's
                # in-place scaling by a traced lr); select's may
                pieces = [o[k] for k in range(len(positions))] if torch.is_grad_enabled() else o.unbind(0)
                for i, piece in zip(positions, pieces):
                    out[i] = piece
        new_mu = list(mus)
        for i, m in zip(idx, ms):
            new_mu[i] = m
        return unflatten(treedef, out), ScaleByMuonState(count, unflatten(treedef, new_mu))

    return GradientTransformation(init, update)


