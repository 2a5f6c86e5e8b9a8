"""Laplacian smoothing of the updates (Osher et al., 2022)."""

from __future__ import annotations

import math

import torch

from .._hparams import check, check_int
from ..base import EmptyState, GradientTransformation, transform
from ..transforms._common import leaves, unflatten

__all__ = ["laplacian_smoothing"]


def _smooth(u: torch.Tensor, sigma) -> torch.Tensor:
    """``(I - sigma L)^{-1} u`` over ``u`` flattened, ``L`` the periodic 1-D Laplacian."""
    flat = torch.view_as_real(u).reshape(-1) if u.is_complex() else u.reshape(-1)
    n = flat.numel()
    dtype = torch.float64 if flat.dtype == torch.float64 else torch.float32
    k = torch.arange(n, dtype=torch.float64, device=u.device)
    # eigenvalues of I - sigma L on the circulant [-2, 1, 0, ..., 0, 1]: 1 + 2 sigma (1 - cos(2 pi k / n))
    denominator = (1 + 2 * sigma * (1 - torch.cos(2 * math.pi * k / n))).to(dtype)
    out = torch.fft.ifft(torch.fft.fft(flat.to(dtype)) / denominator).real
    if u.is_complex():
        return torch.view_as_complex(out.to(torch.view_as_real(u).dtype).reshape(*u.shape, 2).contiguous())
    return out.reshape(u.shape).to(u.dtype)


@transform(inplace=True, leafwise=lambda args: args["layerwise"])
def laplacian_smoothing(sigma: float = 1.0, layerwise: bool = True, min_numel: int = 4) -> GradientTransformation:
    """Laplacian smoothing (Osher et al., 2022): ``u <- (I - sigma L)^{-1} u`` with ``L`` the
    periodic 1-D discrete Laplacian (stencil ``[1, -2, 1]``) over each leaf flattened
    (``layerwise=True``; leaves with fewer than ``min_numel`` elements pass unchanged) or over
    all leaves as one vector; solved by FFT: ``u <- ifft(fft(u) / (1 + 2 sigma (1 - cos(2 pi k / n))))``.
    It damps the high-frequency part of the update and keeps its mean. A complex leaf is
    smoothed as its real view. torchzero's ``LaplacianSmoothing``.

    Example: ``gx.chain(gx.laplacian_smoothing(1.0), gx.scale_by_lr(0.1))``.
    """
    check("sigma", sigma, low=0.0)
    if not isinstance(layerwise, bool):
        raise ValueError(f"layerwise must be a bool, got {layerwise!r}")
    check_int("min_numel", min_numel, low=3)

    def init(params):
        del params
        return EmptyState()

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del params, extra_args
        us, treedef = leaves(updates)
        if layerwise:
            out = [_smooth(u, sigma) if u.numel() >= min_numel else u for u in us]
        else:
            reals = [torch.view_as_real(u) if u.is_complex() else u for u in us]
            sizes = [r.numel() for r in reals]
            dtype = torch.float64 if any(r.dtype == torch.float64 for r in reals) else torch.float32
            smoothed = _smooth(torch.cat([r.reshape(-1).to(dtype) for r in reals]), sigma) if sum(sizes) else None
            out, at = [], 0
            for u, r, n in zip(us, reals, sizes):
                piece = smoothed[at:at + n].reshape(r.shape).to(r.dtype) if n else r
                out.append(torch.view_as_complex(piece.contiguous()) if u.is_complex() else piece)
                at += n
        if inplace:
            out = [u.copy_(o) if o is not u and not o.requires_grad else o for u, o in zip(us, out)]
        return unflatten(treedef, out), state

    return GradientTransformation(init, update)
