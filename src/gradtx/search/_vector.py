"""Global vector arithmetic over the leaves of a tree, shared by the search methods.

The methods of this folder treat all leaves together as one vector: a dot product is a sum
over every leaf (never per leaf), computed in the widest precision of the tree (at least
float32), a complex leaf entering as its real view (torch.optim's view of complex params).
"""

from __future__ import annotations

import torch

from .. import _foreach as F  # noqa: N812


def wide(*lists: list[torch.Tensor]) -> torch.dtype:
    """The dtype of the global sums over ``lists``: float32, or the widest real dtype among them."""
    return F.wide_dtype(*{x.dtype for xs in lists for x in xs})


def dot(xs: list[torch.Tensor], ys: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """``sum_i <x_i, y_i>`` over all leaves, as a real 0-dim ``dtype`` tensor."""
    total = torch.zeros((), dtype=dtype, device=xs[0].device if xs else None)
    for x, y in zip(F.as_real(xs), F.as_real(ys)):
        total = total + torch.sum(x.to(dtype) * y.to(dtype)).to(total.device)
    return total


def safe_div(num: torch.Tensor, den: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(num / den, ok)`` with ``ok = |den| > tiny``; where not ok the quotient is 0 (and no NaN
    reaches autograd through the branch not taken)."""
    ok = den.abs() > torch.finfo(den.dtype).tiny
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(num)), ok


def concat(xs: list[torch.Tensor], dtype: torch.dtype, device: torch.device | None = None) -> torch.Tensor:
    """All leaves as one ``dtype`` vector (a complex leaf as its real view, torch.optim's view)."""
    if not xs:
        return torch.zeros(0, dtype=dtype, device=device)
    return torch.cat([x.reshape(-1).to(dtype) for x in F.as_real(xs)])


def split(flat: torch.Tensor, like: list[torch.Tensor]) -> list[torch.Tensor]:
    """``flat`` cut into tensors shaped like ``like``, each in its leaf's dtype (complex again)."""
    reals = F.as_real(like)
    pieces = torch.split(flat, [x.numel() for x in reals]) if like else []
    shaped = [p.reshape(r.shape).to(r.dtype).contiguous() for p, r in zip(pieces, reals)]
    return F.as_complex_like(shaped, like)
