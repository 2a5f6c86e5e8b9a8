"""Segments of a flat buffer: per-tensor reductions without a pass per tensor.

``gx.Optimizer(..., flat=True)`` runs a chain over one flat tensor per buffer, each the
concatenation of many parameters' tensors (its *segments*). A transform with a per-leaf
reduction (a trust ratio's norms) declares ``segmented=True`` and, when the extra argument
``segments`` holds a :class:`Segments` for a leaf, reduces per segment of that leaf rather
than over the whole leaf. Consecutive segments of equal size form a *run*, reduced as one
``(count, size)`` matrix (one kernel per run; the flat path orders segments by size, so a
model has as many runs as distinct tensor sizes). Measured on CPU against
``torch.segment_reduce`` and ``index_add_`` over a segment-id vector, both slower than a
foreach norm over views on every parameter set; runs are 20x faster on 2000 tensors.
"""

from __future__ import annotations

import torch

from ._foreach import wide_dtype


class Segments:
    """How a flat tensor splits into tensors of ``shapes``, in order (no gaps).

    ``norms(x)``: the l2 norm of each segment (a 1-D tensor, float32 or wider);
    ``scale(x, factors)``: each segment times its factor; ``views(x)``: each segment shaped;
    ``blocks(x)``: each run of equal shapes as one ``(count, *shape)`` view (what a per-matrix
    transform such as ``scale_by_muon`` batches over).
    """

    __slots__ = ("count", "numels", "runs", "shape_runs", "shapes", "sizes")

    def __init__(self, shapes: list[torch.Size]) -> None:
        self.shapes = [torch.Size(s) for s in shapes]
        self.numels = [s.numel() for s in self.shapes]
        self.count = len(self.shapes)
        runs, offset, i = [], 0, 0
        while i < self.count:
            j = i
            while j < self.count and self.numels[j] == self.numels[i]:
                j += 1
            runs.append((i, offset, j - i, self.numels[i]))  # first segment, offset, count, size
            offset += (j - i) * self.numels[i]
            i = j
        self.runs = runs
        shape_runs, offset, i = [], 0, 0
        while i < self.count:
            j = i
            while j < self.count and self.shapes[j] == self.shapes[i]:
                j += 1
            shape_runs.append((offset, j - i, self.shapes[i]))  # offset, count, shape
            offset += (j - i) * self.numels[i]
            i = j
        self.shape_runs = shape_runs
        self.sizes = torch.tensor(self.numels, dtype=torch.float64)

    def __repr__(self) -> str:
        return f"Segments({self.count} tensors in {len(self.runs)} runs)"

    def _block(self, x: torch.Tensor, run: tuple[int, int, int, int]) -> torch.Tensor:
        _, offset, count, size = run
        return x[offset:offset + count * size].view(count, size)

    def norms(self, x: torch.Tensor) -> torch.Tensor:
        """``[||x_i||]`` over the segments, in :func:`gradtx._foreach.wide_dtype` of ``x``."""
        dtype = wide_dtype(x.dtype)
        kind = dtype.to_complex() if x.is_complex() else dtype
        # a run of one segment is reduced whole (the scalar reduction is the faster kernel)
        parts = [torch.linalg.vector_norm(self._block(x, run), dim=1, dtype=kind) if run[2] > 1 else
                 torch.linalg.vector_norm(self._block(x, run), dtype=kind).reshape(1) for run in self.runs]
        if not parts:
            return torch.zeros(0, dtype=dtype, device=x.device)
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def rms(self, x: torch.Tensor) -> torch.Tensor:
        """``[sqrt(mean(x_i^2))]`` over the segments (0 for an empty one); for a complex
        ``x`` the mean over real components, as over ``gradtx._foreach.as_real`` views."""
        n = self.norms(x)
        sizes = self.sizes.to(n.device, n.dtype) * (2 if x.is_complex() else 1)
        return n / sizes.clamp_min(1.0).sqrt()

    def scale(self, x: torch.Tensor, factors: torch.Tensor, inplace: bool) -> torch.Tensor:
        """``x`` with segment ``i`` times ``factors[i]`` (cast to ``x``'s dtype); a 0-dim
        ``factors`` scales all of ``x``."""
        factors = factors.to(x.dtype)
        if factors.dim() == 0:
            return x.mul_(factors) if inplace else x * factors
        out = x if inplace else torch.empty_like(x)
        for run in self.runs:
            first, _, count, _ = run
            # one segment: a 0-dim factor (torch's scalar path, not a broadcast)
            f = factors[first:first + count, None] if count > 1 else factors[first]
            torch.mul(self._block(x, run), f, out=self._block(out, run))
        return out

    def blocks(self, x: torch.Tensor) -> list[tuple[int, int, torch.Size, torch.Tensor]]:
        """``(offset, count, shape, view)`` per run of consecutive segments of equal shape:
        ``view`` is that stretch of ``x`` as ``(count, *shape)``, no copy."""
        return [(offset, count, shape, x[offset:offset + count * shape.numel()].view(count, *shape))
                for offset, count, shape in self.shape_runs]

    def views(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each segment of ``x`` as a view of its shape."""
        out, offset = [], 0
        for shape, n in zip(self.shapes, self.numels):
            out.append(x[offset:offset + n].view(shape))
            offset += n
        return out

