"""Constraints on updates and params: non-negativity, NaN removal."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .. import _foreach as F  # noqa: N812
from .._tree import Tree
from ..base import EmptyState, GradientTransformation, transform
from ._common import leaves, leaves_like, need_params, unflatten

__all__ = ["ZeroNansState", "keep_params_nonnegative", "zero_nans"]


def _empty(params):
    del params
    return EmptyState()


def _toward_zero(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x`` (here ``-p <= 0``) cast to ``dtype``, rounded toward zero where the nearest value
    would overshoot: ``-p`` in a lower-precision update dtype could be below ``-p`` and leave
    ``p + u`` (computed in the param's dtype) slightly negative."""
    cast = x.to(dtype)
    overshoot = cast.to(x.dtype).abs() > x.abs()
    return torch.where(overshoot, torch.nextafter(cast, torch.zeros_like(cast)), cast)


@transform(elementwise=True, inplace=True)
def keep_params_nonnegative() -> GradientTransformation:
    """Keep parameters non-negative: ``u <- -p`` where ``p + u < 0``, else ``u``
    (that is ``u <- max(u, -p)``), so ``p + u >= 0``.

    Put it last in a chain (after ``scale_by_lr``): it constrains the final update.
    A parameter that is already negative is moved to 0. Needs ``params``. This is the
    projection onto the non-negative orthant of projected gradient descent (e.g. Bertsekas,
    1976, "On the Goldstein-Levitin-Polyak gradient projection method"); optax.keep_params_nonnegative.

    Example: ``gx.chain(gx.adam(1e-2), gx.keep_params_nonnegative())``.
    """

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del extra_args
        need_params("keep_params_nonnegative", params)
        us, treedef = leaves(updates)
        ps = leaves_like(params, treedef, "params")
        rv = F.real_views(us, ps)  # a complex parameter: real and imaginary parts kept >= 0
        if rv:
            us, ps = rv.real
        neg_p = F.neg([p.detach() if inplace else p for p in ps])
        neg_p = [n if n.dtype == u.dtype else _toward_zero(n, u.dtype) for n, u in zip(neg_p, us)]
        out = F.maximum(us, neg_p, inplace=inplace)
        return unflatten(treedef, rv.back(out)[0] if rv else out), state

    return GradientTransformation(_empty, update)


class ZeroNansState(NamedTuple):
    found_nan: Tree  # per leaf, a bool 0-dim tensor: whether the last update had a NaN there


@transform(leafwise=True, inplace=True)
def zero_nans() -> GradientTransformation:
    """Replace NaNs by zeros: ``u <- where(isnan(u), 0, u)`` (infinities are kept).

    The state's ``found_nan`` holds, per leaf, a bool 0-dim tensor telling whether the last
    update had a NaN in that leaf (for monitoring; the transform does not read it).
    As optax.zero_nans.

    Example: ``gx.chain(gx.zero_nans(), gx.adam(1e-3))``.
    """

    def init(params):
        ps, treedef = leaves(params)
        return ZeroNansState(unflatten(treedef, [torch.zeros((), dtype=torch.bool, device=p.device) for p in ps]))

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del params, extra_args
        us, treedef = leaves(updates)
        previous = leaves_like(state.found_nan, treedef)  # also checks the updates fit the state
        rv = F.real_views(us)  # a complex update: NaN real or imaginary parts zeroed apart
        if rv:
            (us,) = rv.real
        nan_masks = [torch.isnan(u) for u in us]
        found = [m.any() for m in nan_masks]
        if inplace:
            found = F.copy_(previous, found)
            out = [u.masked_fill_(m, 0) for u, m in zip(us, nan_masks)]
        else:
            out = [u.masked_fill(m, 0) for u, m in zip(us, nan_masks)]
        if rv:
            (out,) = rv.back(out)
        return unflatten(treedef, out), ZeroNansState(unflatten(treedef, found))

    return GradientTransformation(init, update)
