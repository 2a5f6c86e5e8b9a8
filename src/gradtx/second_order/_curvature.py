"""The Hessian as an operator over the flattened parameters, shared by the second-order methods.

A method sees all leaves as one real vector of ``n`` coordinates (in the order of the
update tree's leaves), in their widest dtype (at least float32); ``hvp_fn`` /
``batched_hvp_fn`` come from the extra arguments by the method's ``hvp_method``
(:func:`gradtx.curvature_fns`).
"""

from __future__ import annotations

from typing import Any

import torch

from .._hparams import check
from ..evaluation import curvature_fns
from ..search._vector import concat, split, wide
from ..transforms._common import first_device, leaves, leaves_like, need_params, refuse_complex, unflatten

_TRANSFORM_HVP_METHODS = ("autograd", "fd_forward", "fd_central")


def check_hvp_method(hvp_method: Any, h: Any) -> None:
    if hvp_method not in _TRANSFORM_HVP_METHODS:
        raise ValueError(f"hvp_method must be one of {_TRANSFORM_HVP_METHODS} ('autograd': the hvp_fn given to "
                         f"update; 'fd_*': finite differences of value_and_grad_fn), got {hvp_method!r}")
    check("h", h, low=0.0, low_open=True)


class Flat:
    """The update ``g`` and the params ``x`` of one ``update`` as flat vectors, and the
    Hessian at ``x`` as an operator on such vectors."""

    def __init__(self, name: str, updates: Any, params: Any, extra: dict, hvp_method: str = "autograd",
                 h: float = 1e-3, need_curvature: bool = True) -> None:
        need_params(name, params)
        refuse_complex(name, params, "its curvature model is over real coordinates")
        self.name = name
        self.gs, self.treedef = leaves(updates)
        self.ps = [p.detach() for p in leaves_like(params, self.treedef, "params")]
        self.dtype = wide(self.gs, self.ps)
        self.device = first_device(self.ps)
        self.g = concat(self.gs, self.dtype).to(self.device)
        self.n = self.g.numel()
        self.params = unflatten(self.treedef, self.ps)
        self.hvps = 0
        if need_curvature:
            self._hvp_fn, self._batched = curvature_fns(hvp_method, float(torch.as_tensor(h).detach()), extra, name)

    def tree(self, flat: torch.Tensor, like: list[torch.Tensor] | None = None) -> Any:
        """``flat`` as a tree like the updates, each leaf in its update's dtype."""
        return unflatten(self.treedef, split(flat, self.gs if like is None else like))

    def at(self, flat_step: torch.Tensor) -> Any:
        """The params moved by ``flat_step``, a tree like the params."""
        return unflatten(self.treedef, [p + piece for p, piece in zip(self.ps, split(flat_step, self.ps))])

    def hvp(self, v: torch.Tensor) -> torch.Tensor:
        """``H v`` for a flat ``v``."""
        self.hvps += 1
        out = self._hvp_fn(self.params, self.tree(v, self.ps))
        return concat(leaves_like(out, self.treedef, "hvp_fn's result"), self.dtype).to(self.device)

    def batched_hvp(self, vs: torch.Tensor) -> torch.Tensor:
        """``H vs[i]`` for every row of ``vs`` (``(k, n)``), as ``(k, n)``."""
        k = vs.shape[0]
        self.hvps += k
        pieces = torch.split(vs, [p.numel() for p in self.ps], dim=1) if self.ps else []
        tree = unflatten(self.treedef, [x.reshape(k, *p.shape).to(p.dtype) for x, p in zip(pieces, self.ps)])
        out = leaves_like(self._batched(self.params, tree), self.treedef, "batched_hvp_fn's result")
        if not out:
            return torch.zeros(k, 0, dtype=self.dtype, device=self.device)
        return torch.cat([x.reshape(k, -1).to(self.dtype).to(self.device) for x in out], dim=1)

    def hessian(self) -> torch.Tensor:
        """The dense ``(n, n)`` Hessian, ``n`` products with the unit vectors, symmetrised."""
        eye = torch.eye(self.n, dtype=self.dtype, device=self.device)
        hess = self.batched_hvp(eye)
        return 0.5 * (hess + hess.T)


def boundary_tau(z: torch.Tensor, d: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
    """The ``tau >= 0`` with ``|z + tau d| = radius`` (for ``|z| <= radius``)."""
    a = torch.dot(d, d)
    b = 2 * torch.dot(z, d)
    c = torch.dot(z, z) - radius ** 2
    disc = (b * b - 4 * a * c).clamp_min(0.0)
    return torch.where(a > 0, (-b + torch.sqrt(disc)) / (2 * torch.where(a > 0, a, torch.ones_like(a))),
                       torch.zeros_like(a))
