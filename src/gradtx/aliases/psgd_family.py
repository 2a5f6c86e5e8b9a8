"""PSGD optimizers (Li, 2015/2018): the Kronecker-factored, dense and low-rank forms, each
the preconditioning transform followed by the learning rate."""

from __future__ import annotations

import torch

from .._hparams import ScalarOrSchedule
from .._tree import tree_map
from ..base import GradientTransformation, transform
from ..combine import chain
from ..precondition.psgd import scale_by_psgd_kron
from ..precondition.psgd_flat import scale_by_psgd_dense, scale_by_psgd_lra
from ..transforms.regularize import Mask, add_decayed_weights
from ..transforms.scaling import scale_by_lr

__all__ = ["psgd_dense", "psgd_kron", "psgd_lra"]


def _matrices(params):
    return tree_map(lambda p: p.dim() >= 2, params)


@transform
def psgd_kron(lr: ScalarOrSchedule = 1e-3, b1: float = 0.9, weight_decay: float = 0.0, precond_lr: float = 0.1,
              precond_init_scale: float = 1.0, max_size_triangular: int = 8192, min_ndim_triangular: int = 2,
              update_prob: float | None = None, balance_prob: float = 0.01, momentum_into_precond_update: bool = True,
              mu_dtype: torch.dtype | None = None, precond_dtype: torch.dtype = torch.float32, seed: int = 0,
              mask: Mask | None = None) -> GradientTransformation:
    """PSGD Kron (Li, 2018) with decoupled weight decay, kron_torch's defaults
    (``pytorch_optimizer.Kron``).

    ``chain(scale_by_psgd_kron(b1, ...), add_decayed_weights(weight_decay, mask),
    scale_by_lr(lr))``: ``p <- p - lr (u + weight_decay p)`` with ``u`` the clipped
    preconditioned momentum of :func:`scale_by_psgd_kron`; the decay applies where ``mask``
    is true, by default (``None``) to tensors of rank >= 2 as the reference.

    Example: ``gx.Optimizer(model.parameters(), gx.psgd_kron(1e-3))``.
    """
    return chain(scale_by_psgd_kron(b1, precond_lr, precond_init_scale, max_size_triangular, min_ndim_triangular,
                                    update_prob, balance_prob, momentum_into_precond_update, mu_dtype, precond_dtype,
                                    seed),
                 add_decayed_weights(weight_decay, _matrices if mask is None else mask), scale_by_lr(lr))


@transform
def psgd_dense(lr: ScalarOrSchedule = 1e-3, precond_lr: float = 0.1, precond_init_scale: float | None = None,
               beta_l: float = 0.9, damping: float = 1e-9, momentum: float = 0.0, update_prob: float = 1.0,
               dq: str = "Q0.5EQ1.5", preconditioner_type: str = "whitening", whiten_grad: bool = True,
               seed: int = 0) -> GradientTransformation:
    """PSGD with one dense preconditioner over all parameters (Li, 2015/2018), Xi-Lin Li's
    psgd_torch defaults: ``chain(scale_by_psgd_dense(...), scale_by_lr(lr))``,
    ``p <- p - lr Q^T Q g``.

    Li's ``DenseNewton`` uses Hessian-vector products and ``lr_params=0.01``; here the
    default is the whitening form (gradients only), whose steps have about unit amplitude, so
    ``lr`` defaults to ``1e-3`` as Li's whitening classes. ``preconditioner_type="newton"``
    (with ``lr=0.01``) is his class; it needs ``hvp_fn``, which ``gx.Optimizer`` builds from
    ``step``'s closure. See :func:`scale_by_psgd_dense`.

    Example: ``gx.Optimizer(small_model.parameters(), gx.psgd_dense(1e-3))``.
    """
    return chain(scale_by_psgd_dense(precond_lr, precond_init_scale, beta_l, damping, momentum, update_prob, dq,
                                     preconditioner_type, whiten_grad, seed), scale_by_lr(lr))


@transform
def psgd_lra(lr: ScalarOrSchedule = 1e-3, rank: int = 10, precond_lr: float = 0.1,
             precond_init_scale: float | None = None, beta_l: float = 0.9, damping: float = 1e-9,
             momentum: float = 0.0, update_prob: float = 1.0, preconditioner_type: str = "whitening",
             whiten_grad: bool = True, seed: int = 0) -> GradientTransformation:
    """PSGD with a low-rank-approximation preconditioner ``Q = (I + U V^T) diag(d)`` over all
    parameters (Li, 2018), the defaults of Xi-Lin Li's ``LRAWhiten``:
    ``chain(scale_by_psgd_lra(...), scale_by_lr(lr))``, ``p <- p - lr Q^T Q g``.
    ``preconditioner_type="newton"`` is his ``LRANewton`` (whose ``lr_params`` is 0.01; it
    needs ``hvp_fn``). See :func:`scale_by_psgd_lra`.

    Example: ``gx.Optimizer(model.parameters(), gx.psgd_lra(1e-3, rank=10))``.
    """
    return chain(scale_by_psgd_lra(rank, precond_lr, precond_init_scale, beta_l, damping, momentum, update_prob,
                                   preconditioner_type, whiten_grad, seed), scale_by_lr(lr))
