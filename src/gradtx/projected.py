"""Any chain run in a projected space: :func:`in_projected_space` with a :class:`Projection`.

The updates (and params) are mapped into another space leaf by leaf, the inner chain runs
there with its state kept in that space's shapes, and its output is mapped back:
``u_out = unproject(inner(project(u)))``. The projections here:

- :func:`galore_projection`: each matrix onto its top-``rank`` singular subspace, refreshed
  every ``update_every`` steps from the gradient (GaLore, Zhao et al., 2024);
- :func:`dct_projection` and :func:`fft_projection`: each leaf, flattened, through the
  orthonormal DCT-II or the real FFT (torchzero's projections).

- :func:`block_projection`: each leaf, flattened, cut into blocks of a fixed size (each block
  a leaf of its own, or all of them as the rows of one matrix);
- :func:`flat_projection`: every leaf flattened and joined into one vector (a *joint*
  projection: it maps the whole tree at once; the same numbers as :func:`gradtx.flatten`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from ._foreach import as_complex_like, as_real
from ._hparams import check, check_int, increment, new_count
from ._tree import flatten_up_to, tensor_leaves, tree_unflatten
from .base import GradientTransformation, is_leafwise, transform

__all__ = ["InProjectedSpaceState", "Projection", "block_projection", "dct_projection", "fft_projection",
           "flat_projection", "galore_projection", "in_projected_space"]


class Projection(NamedTuple):
    """A map of each leaf into another space and back, with a state of its own per leaf.

    - ``init(p) -> s``: the state for a leaf like ``p`` (a tensor; empty when it has none);
    - ``refresh(g, s, count) -> s``: the state for this step, from the leaf's update ``g`` and
      the steps taken (GaLore's basis, recomputed every k steps);
    - ``project(x, s) -> y`` and ``unproject(y, s, like) -> x``: into the space and back
      (``like`` is the original leaf, for its shape and dtype);
    - ``projected_like(p) -> y``: zeros shaped as ``project`` would shape ``p``, for the inner
      chain's ``init``.

    ``y`` may be a tensor or a list of tensors (each then a leaf of the inner chain's tree, as
    :func:`block_projection`'s blocks). With ``joint=True`` the functions take the list of all
    leaves instead of one (``init(ps)``, ``refresh(gs, s, count)``, ``project(xs, s) -> y``,
    ``unproject(y, s, likes) -> xs``, ``projected_like(ps)``), for a projection that mixes
    leaves (:func:`flat_projection`); the inner chain then sees ``y`` as its whole tree.
    """

    name: str
    init: Callable[[torch.Tensor], torch.Tensor]
    refresh: Callable[[torch.Tensor, torch.Tensor, int], torch.Tensor]
    project: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    unproject: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    projected_like: Callable[[torch.Tensor], torch.Tensor]
    joint: bool = False

    def __repr__(self) -> str:
        return self.name


class InProjectedSpaceState(NamedTuple):
    """State of :func:`in_projected_space`."""

    count: torch.Tensor  # int32, steps taken
    projection: Any  # the projection's state per leaf, a tree like the params
    inner: Any  # the inner chain's state, over the projected tree


@transform(leafwise=lambda args: is_leafwise(args["inner"]) and not args["projection"].joint)
def in_projected_space(inner: GradientTransformation, projection: Projection) -> GradientTransformation:
    """``inner`` run on the updates mapped by ``projection``, its output mapped back.

    Update rule, per leaf with projection state ``s`` refreshed from the update ``u``:
    ``v, inner_state <- inner(project(u, s), inner_state, project(p, s))`` then
    ``u <- unproject(v, s)``. The inner chain's state lives in the projected shapes (GaLore's
    moments are ``rank x n``); the inner chain sees the projected params and ``value`` but not
    the evaluation functions, which work in the original space. A complex leaf is projected
    as its real view.

    Example (GaLore-Adam: Adam moments of rank 4 for each matrix)::

        tx = gx.chain(gx.in_projected_space(gx.scale_by_adam(), gx.galore_projection(rank=4)),
                      gx.scale_by_lr(1e-3))
    """
    if not isinstance(inner, GradientTransformation):
        raise ValueError(f"inner must be a GradientTransformation (e.g. gx.scale_by_adam()), got {inner!r}")
    if not isinstance(projection, Projection):
        raise ValueError(f"projection must be a gx.Projection (e.g. gx.galore_projection(rank=4)), got {projection!r}")

    def init(params):
        leaves, treedef = tensor_leaves(params)
        leaves = as_real(leaves)  # a complex leaf is projected as its real view, as every transform steps it
        if projection.joint:
            return InProjectedSpaceState(new_count(), projection.init(leaves),
                                         inner.init(projection.projected_like(leaves)))
        projected = tree_unflatten([projection.projected_like(p) for p in leaves], treedef)
        return InProjectedSpaceState(new_count(), tree_unflatten([projection.init(p) for p in leaves], treedef),
                                     inner.init(projected))

    def update(updates, state, params=None, **extra_args):
        given, treedef = tensor_leaves(updates)
        leaves = as_real(given)
        count = int(state.count)
        kept = {"value": extra_args["value"]} if "value" in extra_args else {}
        if projection.joint:
            proj = projection.refresh(leaves, state.projection, count)
            projected_params = None if params is None else projection.project(
                as_real(flatten_up_to(params, treedef, "params")), proj)
            out, inner_state = inner.update(projection.project(leaves, proj), state.inner, projected_params, **kept)
            back = projection.unproject(out, proj, leaves)
            new_state = InProjectedSpaceState(increment(state.count, False), proj, inner_state)
            return tree_unflatten(as_complex_like(back, given), treedef), new_state
        proj = [projection.refresh(u, s, count)
                for u, s in zip(leaves, flatten_up_to(state.projection, treedef, "the projection state"))]
        projected = tree_unflatten([projection.project(u, s) for u, s in zip(leaves, proj)], treedef)
        projected_params = None
        if params is not None:
            projected_params = tree_unflatten([projection.project(p, s) for p, s in zip(
                as_real(flatten_up_to(params, treedef, "params")), proj)], treedef)
        out, inner_state = inner.update(projected, state.inner, projected_params, **kept)
        back = [projection.unproject(v, s, u) for v, s, u in zip(flatten_up_to(out, treedef, "the inner updates"),
                                                                 proj, leaves)]
        new_state = InProjectedSpaceState(increment(state.count, False), tree_unflatten(proj, treedef), inner_state)
        return tree_unflatten(as_complex_like(back, given), treedef), new_state

    return GradientTransformation(init, update)


# --- GaLore ---------------------------------------------------------------------------------


def galore_projection(rank: int, update_every: int = 200, scale: float = 0.25) -> Projection:
    """GaLore's projection: a matrix ``G`` (m x n) onto its top-``rank`` singular subspace.

    With ``m <= n`` the basis is ``P`` (m x rank), the top left singular vectors of the
    gradient at the last refresh, ``project(G) = P^T G`` (rank x n) and
    ``unproject(N) = scale * P N``; with ``m > n`` the right singular vectors ``Q`` (n x rank),
    ``G Q`` and ``scale * N Q^T``. The basis is recomputed (SVD in at least float32) every
    ``update_every`` steps, the first at step 0, each singular vector signed so that its
    largest entry is positive (so the numbers do not depend on the SVD's implementation); the
    inner state is kept across refreshes, as the paper does. Leaves that are not matrices, or
    whose smaller side is at most ``rank``, pass through unchanged (and unscaled). Defaults:
    the paper's ``update_every=200`` and ``scale=0.25``.

    Reference: Zhao et al., "GaLore: Memory-Efficient LLM Training by Gradient Low-Rank
    Projection", ICML 2024.

    Example: ``gx.in_projected_space(gx.scale_by_adam(), gx.galore_projection(rank=128))``.
    """
    check_int("rank", rank, low=1)
    check_int("update_every", update_every, low=1)
    check("scale", scale, low=0.0, low_open=True)

    def projected(p: torch.Tensor) -> bool:
        return p.dim() == 2 and min(p.shape) > rank

    def init(p):
        if not projected(p):
            return torch.zeros(0, dtype=p.dtype, device=p.device)
        m, n = p.shape
        return torch.zeros((m, rank) if m <= n else (n, rank), dtype=p.dtype, device=p.device)

    def refresh(g, basis, count):
        if not projected(g) or count % update_every != 0:
            return basis
        work = g if g.dtype in (torch.float32, torch.float64) else g.float()
        u, _, vh = torch.linalg.svd(work, full_matrices=False)
        new = u[:, :rank] if g.shape[0] <= g.shape[1] else vh[:rank].mT
        # singular vectors are defined up to sign, and the sign LAPACK, cuSOLVER or another
        # release picks changes how the kept moments meet the new basis: fix it (largest entry > 0)
        largest = new.gather(0, new.abs().argmax(dim=0, keepdim=True))
        new = new * torch.where(largest < 0, -1.0, 1.0).to(new.dtype)
        return new.to(basis.dtype).contiguous()

    def project(x, basis):
        if basis.numel() == 0:
            return x
        x = x.to(basis.dtype)  # low-precision gradients are projected in the params' precision
        return basis.mT @ x if x.shape[0] <= x.shape[1] else x @ basis

    def unproject(y, basis, like):
        if basis.numel() == 0:
            return y
        y = y.to(basis.dtype)
        back = basis @ y if like.shape[0] <= like.shape[1] else y @ basis.mT
        return (scale * back).to(like.dtype)

    def projected_like(p):
        if not projected(p):
            return torch.zeros_like(p)
        m, n = p.shape
        return p.new_zeros((rank, n) if m <= n else (m, rank))

    return Projection(f"galore_projection(rank={rank}, update_every={update_every}, scale={scale})", init, refresh,
                      project, unproject, projected_like)


# --- orthonormal transforms of each flattened leaf --------------------------------------------


def _no_state(p: torch.Tensor) -> torch.Tensor:
    return torch.zeros(0, dtype=p.dtype, device=p.device)


def _keep(g: torch.Tensor, s: torch.Tensor, count: int) -> torch.Tensor:
    return s


def _dct(x: torch.Tensor) -> torch.Tensor:
    """Orthonormal DCT-II of a vector, through one FFT of the even-odd reordered vector (Makhoul, 1980)."""
    n = x.shape[0]
    v = torch.cat([x[0::2], x[1::2].flip(0)])
    k = torch.arange(n, dtype=x.dtype, device=x.device)
    out = (torch.fft.fft(v) * torch.exp(-1j * math.pi * k / (2 * n))).real * math.sqrt(2.0 / n)
    out[0] = out[0] / math.sqrt(2.0)
    return out


def _idct(y: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`_dct` (the orthonormal DCT-III)."""
    n = y.shape[0]
    scaled = y / math.sqrt(2.0 / n)
    scaled = torch.cat([scaled[:1] * math.sqrt(2.0), scaled[1:]])
    k = torch.arange(n, dtype=y.dtype, device=y.device)
    # V_k = exp(i pi k / 2n) (Y_k - i Y_{n-k}), Y_n = 0: the FFT of the reordered vector
    mirrored = torch.cat([scaled.new_zeros(1), scaled[1:].flip(0)])
    v = torch.fft.ifft(torch.exp(1j * math.pi * k / (2 * n)) * torch.complex(scaled, -mirrored)).real
    x = torch.empty_like(v)
    half = (n + 1) // 2
    x[0::2], x[1::2] = v[:half], v[half:].flip(0)
    return x


def dct_projection() -> Projection:
    """Each leaf, flattened, through the orthonormal DCT-II (``scipy.fft.dct(x, norm="ortho")``);
    back through its inverse. The projected leaf is a vector of the leaf's size: an inner chain's
    elementwise rule then acts on frequencies, not coordinates.

    Example: ``gx.in_projected_space(gx.scale_by_adam(), gx.dct_projection())``.
    """
    def project(x, s):
        return _dct(x.reshape(-1)) if x.numel() else x.reshape(-1)

    def unproject(y, s, like):
        return (_idct(y) if y.numel() else y).reshape(like.shape).to(like.dtype)

    return Projection("dct_projection()", _no_state, _keep, project, unproject, lambda p: p.new_zeros(p.numel()))


def fft_projection() -> Projection:
    """Each leaf, flattened (``n`` elements), through the real FFT with ``norm="ortho"``,
    stored as its real view (``n // 2 + 1`` frequencies x 2); back through ``irfft`` to ``n``
    elements. The map is invertible and linear (not orthogonal on the real view: the
    non-DC, non-Nyquist bins stand for two conjugate frequencies each).

    Example: ``gx.in_projected_space(gx.scale_by_rms(), gx.fft_projection())``.
    """
    def project(x, s):
        if x.numel() == 0:  # rfft refuses an empty signal
            return x.new_zeros((1, 2))
        return torch.view_as_real(torch.fft.rfft(x.reshape(-1), norm="ortho"))

    def unproject(y, s, like):
        if like.numel() == 0:
            return torch.zeros_like(like)
        full = torch.fft.irfft(torch.view_as_complex(y.contiguous()), n=like.numel(), norm="ortho")
        return full.reshape(like.shape).to(like.dtype)

    return Projection("fft_projection()", _no_state, _keep, project, unproject,
                      lambda p: p.new_zeros((p.numel() // 2 + 1, 2)))


# --- blocks of each leaf, and every leaf as one vector -------------------------------------------


def block_projection(block_size: int, batched: bool = False) -> Projection:
    """Each leaf, flattened (row-major), cut into blocks of ``block_size`` elements.

    By default each block is a leaf of its own for the inner chain (the last one shorter when
    ``block_size`` does not divide the leaf's size), so a rule per tensor (a norm, a trust
    ratio, a per-tensor learning rate) acts per block; an elementwise chain gives the numbers
    it gives without the projection. With ``batched=True`` the blocks are the rows of one
    ``(ceil(n / block_size), block_size)`` matrix, the last row padded with zeros (dropped when
    mapping back), for rules that read a matrix (Muon, SOAP, Adafactor's factored moments).
    A leaf of at most ``block_size`` elements is one block (a vector, or a one-row matrix when
    batched). torchzero's ``BlockPartition(max_size, batched)`` is the same map, except that
    it passes small tensors through in their own shape.

    Example (LAMB's trust ratio per block of 4096 elements)::

        gx.in_projected_space(gx.chain(gx.scale_by_adam(), gx.scale_by_trust_ratio()),
                              gx.block_projection(4096))
    """
    check_int("block_size", block_size, low=1)
    if not isinstance(batched, bool):
        raise ValueError(f"batched must be a bool, got {batched!r}")

    def rows(n: int) -> int:
        return max(1, -(-n // block_size))

    def project(x, s):
        flat = x.reshape(-1)
        if batched:
            pad = rows(flat.numel()) * block_size - flat.numel()
            return torch.cat([flat, flat.new_zeros(pad)]).reshape(-1, block_size)
        # clones: a block is a leaf the inner chain owns, not a view into the update
        return [b.clone() for b in torch.split(flat, block_size)] if flat.numel() else [flat.clone()]

    def unproject(y, s, like):
        flat = y.reshape(-1)[:like.numel()] if batched else torch.cat([b.reshape(-1) for b in y])
        return flat.reshape(like.shape).to(like.dtype)

    def projected_like(p):
        n = p.numel()
        if batched:
            return p.new_zeros((rows(n), block_size))
        return [p.new_zeros(min(block_size, n - start)) for start in range(0, n, block_size)] or [p.new_zeros(0)]

    return Projection(f"block_projection({block_size}{', batched=True' if batched else ''})", _no_state, _keep,
                      project, unproject, projected_like)


def _joint_no_state(ps: list[torch.Tensor]) -> torch.Tensor:
    return torch.zeros(0, dtype=ps[0].dtype if ps else torch.float32)


def _joint_keep(gs: list[torch.Tensor], s: torch.Tensor, count: int) -> torch.Tensor:
    return s


def flat_projection() -> Projection:
    """Every leaf flattened (row-major) and joined into one vector, in the order of the tree's
    leaves; back by cutting it into pieces of each leaf's size and shape, each in its dtype
    (leaves of mixed dtypes are joined in their promoted dtype). The inner chain sees one
    vector, so a norm, a line search's step or a trust ratio spans every parameter; the same
    numbers as :func:`gradtx.flatten` (which also carries ``grad`` and ``value_fn`` into the
    vector). A joint projection: the result is not leafwise, and under ``gx.Optimizer`` the
    inner state is one vector per param group, so every parameter needs a gradient at every step.
    torchzero's ``VectorProjection``.

    Example: ``gx.in_projected_space(gx.chain(gx.normalize_by_update_norm(), gx.scale_by_adam()),
    gx.flat_projection())``.
    """
    def project(xs, s):
        if not xs:
            return torch.zeros(0)
        return torch.cat([x.reshape(-1) for x in xs])

    def unproject(y, s, likes):
        pieces = torch.split(y, [x.numel() for x in likes]) if likes else []
        return [piece.reshape(x.shape).to(x.dtype) for piece, x in zip(pieces, likes)]

    def projected_like(ps):
        return torch.zeros_like(project(ps, None))

    return Projection("flat_projection()", _joint_no_state, _joint_keep, project, unproject, projected_like, joint=True)
