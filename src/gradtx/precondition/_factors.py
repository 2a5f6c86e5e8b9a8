"""Shared pieces of the matrix preconditioners: which axes of a tensor get a factor, the
Kronecker-factor statistics, and multiplying a tensor by one matrix per axis."""

from __future__ import annotations

import torch


def merged_shape(shape: torch.Size, max_dim: int) -> list[int]:
    """The shape SOAP's ``merge_dims`` reshapes a tensor to (Vyas et al.'s rule): walk the axes
    in order, multiplying neighbours together while the product stays ``<= max_dim``; an axis
    that would overflow starts a new group. A conv weight ``(64, 32, 3, 3)`` with ``max_dim=1024``
    becomes ``(64, 288)`` (``64*32 > 1024``; ``32*3*3 = 288``), the usual ``(out, in*kh*kw)``
    matrix; with ``max_dim=10000`` it becomes ``(6144, 3)``."""
    out: list[int] = []
    current = 1
    for n in shape:
        product = current * n
        if product > max_dim:
            if current > 1:
                out.append(current)
                current = n
            else:
                out.append(n)
                current = 1
        else:
            current = product
    if current > 1 or not out:
        out.append(current)
    return out


def factor_sizes(shape: torch.Size, *, max_dim: int, merge: bool,
                 precondition_1d: bool) -> tuple[list[int], list[bool]]:
    """``(working shape, which of its axes get a factor)``: the shape the preconditioner sees
    (``merged_shape`` when ``merge``, else the tensor's) and, per axis, whether it is at most
    ``max_dim`` long. A vector gets a factor only with ``precondition_1d``; a 0-dim tensor none."""
    if len(shape) == 0:
        return [], []
    if len(shape) == 1:
        return list(shape), [bool(precondition_1d) and shape[0] <= max_dim]
    work = merged_shape(shape, max_dim) if merge else list(shape)
    return work, [n <= max_dim for n in work]


def empty_like_factor(p: torch.Tensor) -> torch.Tensor:
    """The placeholder kept where an axis has no factor (so the state keeps one entry per axis)."""
    return p.new_zeros((0,))


def gram(x: torch.Tensor, axis: int) -> torch.Tensor:
    """``X_(axis) X_(axis)^T``: the outer product of ``x`` with itself over every other axis."""
    others = [i for i in range(x.dim()) if i != axis]
    return torch.tensordot(x, x, dims=[others, others])


def multiply_axes(x: torch.Tensor, mats: list[torch.Tensor], has: list[bool], transpose: bool) -> torch.Tensor:
    """``x`` with axis ``i`` multiplied by ``mats[i]^T`` (``mats[i]`` when ``transpose``) for each
    axis that has a factor: ``Q_1^T ... Q_k^T . x`` in the Tucker sense. Each contraction takes
    axis 0 and appends the result as the last axis, so after all axes the order is restored;
    an axis without a factor is moved to the end unchanged."""
    for mat, on in zip(mats, has):
        if on:
            x = torch.tensordot(x, mat, dims=[[0], [1 if transpose else 0]])
        else:
            x = x.permute([*range(1, x.dim()), 0])
    return x


class _SymmetricPower(torch.autograd.Function):
    """``H^p`` of a symmetric positive definite ``H`` by ``eigh``, with the Daleckii-Krein
    backward: ``dH = V (F o (V^T dP V)) V^T``, ``F_ij = (l_i^p - l_j^p) / (l_i - l_j)`` and
    ``p l_i^(p-1)`` where the eigenvalues (nearly) coincide. ``eigh``'s own backward divides
    by ``l_i - l_j`` and fails on the repeated eigenvalues of ``eps I + G G^T``, although the
    power is smooth there (a hyperparameter's gradient reaches it through the parameters)."""

    @staticmethod
    def forward(ctx, matrix, power, absolute, floor):
        values, vectors = torch.linalg.eigh(matrix)
        # round-off can push a PSD statistic's eigenvalue below 0: torchzero takes |l|, the
        # others clamp; either way the floor keeps the root finite
        signs = values.sign() if absolute else torch.ones_like(values)
        values = (values.abs() if absolute else values).clamp_min(floor)
        power = power.to(values.dtype)
        powered = values.pow(power)
        ctx.save_for_backward(values, vectors, signs, power, powered)
        return (vectors * powered.unsqueeze(-2)) @ vectors.mT

    @staticmethod
    def backward(ctx, grad):
        values, vectors, signs, p, powered = ctx.saved_tensors
        li, lj = values.unsqueeze(-1), values.unsqueeze(-2)
        gap = li - lj
        close = gap.abs() <= 1e-6 * torch.maximum(li.abs(), lj.abs())
        derivative = p * values.pow(p - 1.0) * signs
        mean_derivative = 0.5 * (derivative.unsqueeze(-1) + derivative.unsqueeze(-2))
        divided = torch.where(close, mean_derivative,
                              (powered.unsqueeze(-1) - powered.unsqueeze(-2)) / torch.where(close, 1.0, gap))
        sym = 0.5 * (grad + grad.mT)
        inner = vectors.mT @ sym @ vectors
        grad_matrix = vectors @ (divided * inner) @ vectors.mT if ctx.needs_input_grad[0] else None
        # d/dp V diag(l^p) V^T = V diag(l^p log l) V^T
        grad_power = (inner.diagonal(dim1=-2, dim2=-1) * powered * values.log()).sum() if ctx.needs_input_grad[1] \
            else None
        return grad_matrix, grad_power, None, None


def symmetric_power(matrix: torch.Tensor, power, *, absolute: bool = False, floor: float | None = None
                    ) -> torch.Tensor:
    """``matrix^power`` of a symmetric PSD matrix by ``eigh``: eigenvalues (their absolute
    values with ``absolute``) floored at ``floor`` (default the dtype's smallest normal), with a
    backward that holds at repeated eigenvalues (see ``_SymmetricPower``)."""
    floor = torch.finfo(matrix.dtype).tiny if floor is None else floor
    # a tensor power (a hyperparameter with autograd history) gets its gradient too
    power = power if isinstance(power, torch.Tensor) else torch.tensor(float(power), dtype=torch.float64)
    return _SymmetricPower.apply(matrix, power, absolute, floor)
