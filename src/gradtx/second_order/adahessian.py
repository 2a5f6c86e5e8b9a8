"""AdaHessian (Yao, Gholami, Shen, Mustafa, Keutzer & Mahoney, 2021, "ADAHESSIAN: An Adaptive
Second Order Optimizer for Machine Learning"): Adam with the squared gradient replaced by the
squared Hutchinson estimate of the Hessian diagonal, spatially averaged over convolution kernels."""

from __future__ import annotations

from typing import NamedTuple

import torch

from .._hparams import check, check_beta, check_int, increment, new_count
from .._tree import Tree, tensor_leaves, tree_unflatten
from ..base import GradientTransformation, transform
from ..transforms._common import leaves_like, need_params, refuse_complex
from .hutchinson import check_sampling, check_seed, diagonal_estimate

__all__ = ["ScaleByAdaHessianState", "scale_by_adahessian"]


class ScaleByAdaHessianState(NamedTuple):
    count: torch.Tensor  # int32, steps taken
    hessian_count: torch.Tensor  # int32, Hessian-diagonal estimates taken (the second moment's debiasing)
    seed: torch.Tensor  # int64 0-dim: the Hutchinson probes' seed
    mu: Tree  # first moment of the updates
    nu: Tree  # second moment of the Hessian-diagonal estimates


def _spatial_average(d: torch.Tensor) -> torch.Tensor:
    # a convolution kernel (out, in, *spatial): |D| averaged over its spatial positions
    if d.dim() < 3:
        return d
    return d.abs().mean(dim=tuple(range(2, d.dim())), keepdim=True).expand_as(d)


@transform(inplace=True)
def scale_by_adahessian(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-4, hessian_power: float = 1.0,
                        update_interval: int = 1, *, spatial_averaging: bool = True, n_samples: int = 1,
                        distribution: str = "rademacher", seed: int = 0, hvp_method: str = "autograd",
                        h: float = 1e-3) -> GradientTransformation:
    """AdaHessian's rescaling (Yao et al., 2021, Algorithm 1).

    ``m <- b1 m + (1-b1) g``; every ``update_interval`` steps, starting with the first,
    ``D = z*(Hz)`` (Hutchinson, ``n_samples`` Rademacher probes), for tensors of 3 or more
    dimensions (convolution kernels) ``D <- mean |D|`` over the dimensions after the second
    (``spatial_averaging``), ``v <- b2 v + (1-b2) D^2`` and ``n <- n + 1``; then
    ``u <- (m / (1 - b1^t)) / ((v / (1 - b2^n))^(hessian_power/2) + eps)``.
    ``n`` counts the estimates, so ``v`` is debiased by the number of terms it averages (the
    same as ``1 - b2^t`` when ``update_interval=1``, the paper's setting). Followed by
    ``scale_by_lr(lr)`` it is :func:`gradtx.adahessian`.

    ``H`` is reached through the extra argument ``hvp_fn`` (``hvp_method="autograd"``) or
    finite differences of ``value_and_grad_fn`` (``"fd_forward"``/``"fd_central"``, step
    ``h``). Defaults are the authors' code's (``eps=1e-4``; torchzero takes 1e-8,
    pytorch_optimizer 1e-16). pytorch_optimizer's ``AdaHessian`` has no spatial averaging.

    Example: ``gx.chain(gx.scale_by_adahessian(), gx.scale_by_lr(0.15))`` with
    ``update(..., hvp_fn=gx.make_hvp_fn(loss_fn))`` or under ``gx.Optimizer.step(closure)``.
    """
    check_beta("b1", b1)
    check_beta("b2", b2)
    check("eps", eps, low=0.0)
    check("hessian_power", hessian_power, low=0.0, low_open=True)  # the paper takes (0, 1]
    check_int("update_interval", update_interval, low=1)
    if not isinstance(spatial_averaging, bool):
        raise ValueError(f"spatial_averaging must be a bool, got {spatial_averaging!r}")
    check_sampling(n_samples, distribution, hvp_method, h)
    check_seed(seed)

    def init(params):
        refuse_complex("scale_by_adahessian", params, "the Hessian diagonal of a real loss")
        ps, treedef = tensor_leaves(params)
        zeros = tree_unflatten([torch.zeros_like(p) for p in ps], treedef)
        return ScaleByAdaHessianState(new_count(), new_count(), torch.tensor(seed, dtype=torch.int64), zeros,
                                      tree_unflatten([torch.zeros_like(p) for p in ps], treedef))

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del inplace  # it allocates: writes into nothing it is given, returns fresh tensors
        need_params("scale_by_adahessian", params)
        gs, treedef = tensor_leaves(updates)
        mus = [torch.lerp(m, g.to(m.dtype), 1.0 - b1) for m, g in zip(leaves_like(state.mu, treedef), gs)]
        nus = leaves_like(state.nu, treedef)
        count = increment(state.count, False)
        hessian_count = state.hessian_count
        if (int(count) - 1) % update_interval == 0:
            d, _ = diagonal_estimate(params, extra_args, seed=int(state.seed), step=int(count), n_samples=n_samples,
                                     distribution=distribution, hvp_method=hvp_method, h=h,
                                     where="scale_by_adahessian")
            if spatial_averaging:
                d = [_spatial_average(x) for x in d]
            nus = [torch.lerp(v, (x * x).to(v.dtype), 1.0 - b2) for v, x in zip(nus, d)]
            hessian_count = increment(hessian_count, False)
        bc1 = 1.0 - b1 ** count.double()
        bc2 = 1.0 - b2 ** hessian_count.double()
        out = [((m / bc1.to(m.dtype)) / ((v / bc2.to(v.dtype)) ** (hessian_power / 2) + eps)).to(g.dtype)
               for m, v, g in zip(mus, nus, gs)]
        new_state = ScaleByAdaHessianState(count, hessian_count, state.seed, tree_unflatten(mus, treedef),
                                           tree_unflatten(nus, treedef))
        return tree_unflatten(out, treedef), new_state

    return GradientTransformation(init, update)
