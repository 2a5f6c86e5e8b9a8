"""Limited-memory SR1 over all parameters as one vector, in the recursive form."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .._hparams import check, check_int
from .._tree import tensor_leaves, tree_unflatten
from ..base import GradientTransformation, transform
from ._vector import split, wide
from .quasi_newton import _check_init_scale, vector_inputs

__all__ = ["LSR1State", "scale_by_lsr1"]


class LSR1State(NamedTuple):
    count: torch.Tensor  # int32 0-dim: calls so far
    stored: torch.Tensor  # int32 0-dim: pairs stored so far (the newest at (stored - 1) % m)
    s_history: torch.Tensor  # (m, n): s pairs, a ring buffer
    y_history: torch.Tensor  # (m, n): y pairs
    prev_params: torch.Tensor  # (n,)
    prev_update: torch.Tensor  # (n,)


def _tiny(x: torch.Tensor) -> float:
    return torch.finfo(x.dtype).tiny


@transform
def scale_by_lsr1(memory_size: int = 10, init_scale: float | str = 1.0, eps: float = 1e-8) -> GradientTransformation:
    """Limited-memory SR1: ``u <- H_k g_k`` with ``H_k`` the SR1 inverse-Hessian approximation
    built from ``H_0 = I / init_scale`` and the last ``memory_size`` pairs, oldest first.

    Pairs as in :func:`scale_by_sr1` over all params as one vector: ``s = x_k - x_{k-1}``,
    ``y = g_k - g_{k-1}`` with ``g`` the incoming update (a pair with ``s = 0`` or ``y = 0`` is
    not stored). Recursive form (as torchzero's ``LSR1``; Nocedal & Wright 2006, sec. 7.2):
    for the stored pairs ``j = 1..m`` in order, ``w_j = s_j - H_{j-1} y_j`` with
    ``H_{j-1} v = H_0 v + sum_{i<j} (w_i.v / w_i.y_i) w_i``, a pair skipped when
    ``|w_j.y_j| <= eps ||w_j|| ||y_j||`` (N&W eq. 6.26); then
    ``u = H_0 g + sum_j (w_j.g / w_j.y_j) w_j``. This is exactly :func:`scale_by_sr1`'s
    inverse form (with a fixed ``H_0``) on the last ``m`` pairs: ``O(m^2 n)`` time and
    ``O(m n)`` memory per step instead of ``O(n^2)``. (The compact representation of Byrd,
    Nocedal & Schnabel 1994 is cheaper for large ``m`` but cannot skip single pairs.)
    ``init_scale="auto"`` takes ``H_0 = (s.y / y.y) I`` from the newest pair (the L-BFGS
    choice; for SR1 it makes a lone pair's ``w.y = 0``, so it is skipped). ``H`` need not be
    positive definite: use a line search or a trust region after it.

    Example: ``gx.chain(gx.scale_by_lsr1(memory_size=10), line_search)``.
    """
    check_int("memory_size", memory_size, low=1)
    _check_init_scale(init_scale)
    check("eps", eps, low=0.0)
    m = memory_size
    auto = isinstance(init_scale, str)

    def init(params):
        ps, _ = tensor_leaves(params)
        dtype = wide(ps)
        device = ps[0].device if ps else None
        n = sum(p.numel() * (2 if p.is_complex() else 1) for p in ps)
        count = torch.zeros((), dtype=torch.int32, device=device)
        return LSR1State(count=count, stored=count.clone(),
                         s_history=torch.zeros(m, n, dtype=dtype, device=device),
                         y_history=torch.zeros(m, n, dtype=dtype, device=device),
                         prev_params=torch.zeros(n, dtype=dtype, device=device),
                         prev_update=torch.zeros(n, dtype=dtype, device=device))

    def update(updates, state, params=None, **extra_args):
        del extra_args
        us, treedef, g, x = vector_inputs("scale_by_lsr1", updates, params, state.prev_params.numel())
        dtype = state.s_history.dtype
        g, x = g.to(dtype), x.to(dtype)
        s, y = x - state.prev_params, g - state.prev_update
        valid = (state.count > 0) & (s != 0).any() & (y != 0).any()
        slots = torch.arange(m, device=state.stored.device)
        here = (slots == state.stored % m) & valid
        S = torch.where(here[:, None], s, state.s_history)
        Y = torch.where(here[:, None], y, state.y_history)
        stored = state.stored + valid.to(torch.int32)
        # oldest first: slot (stored + j) % m holds the j-th oldest once the buffer is full
        start = torch.where(stored >= m, stored % m, torch.zeros_like(stored))
        order = (start + slots) % m
        active = slots < stored.clamp(max=m)
        S, Y = S[order], Y[order]
        if auto:
            newest = (stored - 1).clamp(min=0) % m
            s_new, y_new = S[(newest - start) % m], Y[(newest - start) % m]
            sy, yy = s_new @ y_new, y_new @ y_new
            good = (sy > _tiny(sy)) & (yy > _tiny(yy)) & (stored > 0)
            h0 = torch.where(good, sy / torch.where(good, yy, torch.ones_like(yy)), torch.ones_like(sy))
        else:
            h0 = 1 / init_scale
        ws, coefs = [], []
        for k in range(m):
            hy = h0 * Y[k]
            if ws:
                W, c = torch.stack(ws), torch.stack(coefs)
                hy = hy + W.T @ (c * (W @ Y[k]))
            w = S[k] - hy
            wy = w @ Y[k]
            ok = active[k] & (wy.abs() > eps * torch.linalg.vector_norm(w) * torch.linalg.vector_norm(Y[k])) & (
                wy.abs() > _tiny(wy))
            ws.append(w)
            coefs.append(torch.where(ok, 1 / torch.where(ok, wy, torch.ones_like(wy)), torch.zeros_like(wy)))
        W, c = torch.stack(ws), torch.stack(coefs)
        out = h0 * g + W.T @ (c * (W @ g))
        # back to slot order, so the ring buffer stays where it was written
        inverse_order = torch.argsort(order)
        new_state = LSR1State(count=state.count + 1, stored=stored, s_history=S[inverse_order],
                              y_history=Y[inverse_order], prev_params=x, prev_update=g)
        return tree_unflatten(split(out, us), treedef), new_state

    return GradientTransformation(init, update)
