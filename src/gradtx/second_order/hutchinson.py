"""Hutchinson's estimator of the Hessian diagonal, and the sampling every diagonal-curvature
method here shares.

For a random vector ``z`` with independent entries of mean 0 and variance 1,
``E[z * (H z)] = diag(H)`` (Bekas, Kokiopoulou & Saad, 2007): one Hessian-vector product gives
an unbiased estimate of the whole diagonal. Rademacher entries (+-1) give the smallest
variance, ``Var[(z * Hz)_i] = sum_{j != i} H_ij^2``, and are exact for a diagonal Hessian.

The vectors are a function of ``(seed, step, sample, leaf)`` only, drawn from a
``torch.Generator`` seeded from those integers, as ``gx.add_noise`` draws its noise: the
state keeps the seed and the step count as tensors, so an update is pure, a resumed
checkpoint draws the same vectors, and no global random state is touched.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch

from .._hparams import check, check_int, increment, new_count
from .._tree import Tree, tensor_leaves, tree_unflatten
from ..base import GradientTransformation, transform
from ..evaluation import curvature_fns
from ..transforms._common import leaves_like, need_params, refuse_complex
from ..transforms.perturb import _generator, _mix

__all__ = ["HutchinsonState", "hutchinson_estimator_diag_hessian"]

#: the distributions of the probe vectors' entries (mean 0, variance 1)
DISTRIBUTIONS = ("rademacher", "gaussian")


class HutchinsonState(NamedTuple):
    count: torch.Tensor  # int32, estimates drawn
    seed: torch.Tensor  # int64 0-dim; step t's probe vectors come from (seed, t, sample, leaf)


def check_seed(seed: Any) -> None:
    check_int("seed", seed)
    if not -(1 << 63) <= seed < (1 << 63):
        raise ValueError(f"seed must fit in int64, got {seed!r}")


def check_sampling(n_samples: Any, distribution: Any, hvp_method: Any, h: Any) -> None:
    """Validate the arguments every Hutchinson-based transform takes."""
    check_int("n_samples", n_samples, low=1)
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
    if hvp_method not in ("autograd", "fd_forward", "fd_central"):
        raise ValueError(f"hvp_method must be 'autograd' (the hvp_fn given), 'fd_forward' or 'fd_central' (finite "
                         f"differences of value_and_grad_fn), got {hvp_method!r}")
    check("h", h, low=0.0, low_open=True)


def probes(ps: list[torch.Tensor], seed: int, step: int, sample: int, distribution: str) -> list[torch.Tensor]:
    """One probe vector, a tensor per leaf of ``ps`` (its shape, dtype and device)."""
    out = []
    for j, p in enumerate(ps):
        gen = _generator(p.device, _mix(seed, step, sample, j))
        if distribution == "rademacher":
            z = torch.randint(0, 2, p.shape, generator=gen, device=p.device).to(p.dtype) * 2 - 1
        else:
            z = torch.randn(p.shape, generator=gen, device=p.device, dtype=p.dtype)
        out.append(z)
    return out


def diagonal_estimate(params: Tree, extra: dict, *, seed: int, step: int, n_samples: int, distribution: str,
                      hvp_method: str, h: float, where: str) -> tuple[list[torch.Tensor], Any]:
    """``mean_k z_k * (H z_k)`` over ``n_samples`` probes, as a list over the leaves of
    ``params`` (and their structure). One ``batched_hvp_fn`` call for several probes when the
    caller gave one, else a product per probe."""
    hvp_fn, batched_hvp_fn = curvature_fns(hvp_method, h, extra, where)
    ps, treedef = tensor_leaves(params)
    ps = [p.detach() for p in ps]
    params = tree_unflatten(ps, treedef)
    zs = [probes(ps, seed, step, k, distribution) for k in range(n_samples)]
    if n_samples == 1:
        hzs = leaves_like(hvp_fn(params, tree_unflatten(zs[0], treedef)), treedef, "hvp_fn's result")
        return [(z * hz).to(p.dtype) for z, hz, p in zip(zs[0], hzs, ps)], treedef
    stacked = [torch.stack(col) for col in zip(*zs)]
    hzs = leaves_like(batched_hvp_fn(params, tree_unflatten(stacked, treedef)), treedef, "batched_hvp_fn's result")
    return [(z * hz).mean(0).to(p.dtype) for z, hz, p in zip(stacked, hzs, ps)], treedef


@transform(inplace=True)
def hutchinson_estimator_diag_hessian(seed: int = 0, n_samples: int = 1, distribution: str = "rademacher",
                                      hvp_method: str = "autograd", h: float = 1e-3) -> GradientTransformation:
    """Hutchinson's estimate of the Hessian diagonal as the update (optax.contrib's
    ``hutchinson_estimator_diag_hessian``): ``u <- (1/k) sum_i z_i * (H z_i)``, the incoming
    updates ignored, ``k = n_samples`` fresh probe vectors each call.

    ``H`` is the Hessian of the loss at ``params``, reached through the extra argument
    ``hvp_fn(params, v) -> Hv`` (``hvp_method="autograd"``, the default; ``gx.Optimizer`` builds
    it from ``step``'s closure, ``gx.make_hvp_fn(loss_fn)`` functionally) or finite
    differences of ``value_and_grad_fn`` (``"fd_forward"``, ``"fd_central"`` with step ``h``).
    optax passes ``obj_fn`` and differentiates it; gradtx's vocabulary is ``hvp_fn``.

    Defaults: ``seed=0``, one Rademacher probe (``distribution="gaussian"`` for N(0, 1)
    entries). The probes are a function of ``(seed, step, sample, leaf)`` (see the module), so
    two calls draw different probes and a checkpoint resumes the same sequence. It is the
    default ``hessian_diagonal_fn`` of :func:`scale_by_sophia`.

    Reference: Hutchinson (1990), "A stochastic estimator of the trace of the influence
    matrix"; Bekas, Kokiopoulou & Saad (2007) for the diagonal; optax.contrib.

    Example::

        est = gx.hutchinson_estimator_diag_hessian(seed=1)
        d, state = est.update(grads, est.init(params), params, hvp_fn=gx.make_hvp_fn(loss_fn))
    """
    check_seed(seed)
    check_sampling(n_samples, distribution, hvp_method, h)

    def init(params):
        refuse_complex("hutchinson_estimator_diag_hessian", params, "the estimate is of a real Hessian's diagonal")
        return HutchinsonState(count=new_count(), seed=torch.tensor(seed, dtype=torch.int64))

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del inplace  # it allocates: writes into nothing it is given, returns fresh tensors
        need_params("hutchinson_estimator_diag_hessian", params)
        us, treedef = tensor_leaves(updates)
        count = increment(state.count, False)
        d, _ = diagonal_estimate(params, extra_args, seed=int(state.seed), step=int(count), n_samples=n_samples,
                                 distribution=distribution, hvp_method=hvp_method, h=h,
                                 where="hutchinson_estimator_diag_hessian")
        out = [x.to(u.dtype) for x, u in zip(d, us)]
        return tree_unflatten(out, treedef), HutchinsonState(count, state.seed)

    return GradientTransformation(init, update)
