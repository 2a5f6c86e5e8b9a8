"""Randomized finite differences: SPSA, RDSA, Gaussian smoothing (one estimator, three
distributions and defaults).

Each sample ``k`` draws a direction ``z_k`` (Rademacher or Gaussian, from the state's seed)
and takes a finite difference of the loss along it; the estimate is

    g = (1/n) sum_k d_k z_k,    d_k = (f(x + h z_k) - f(x - h z_k)) / (2h)   (central)
                                    = (f(x + h z_k) - f(x)) / h              (forward)
                                    = (f(x) - f(x - h z_k)) / h              (backward)

``E[z z^T] = I`` for both distributions, so ``E[g] = grad f(x) + O(h^2)`` (central) for a
smooth ``f``, and exactly the gradient of the Gaussian-smoothed loss
``f_h(x) = E f(x + h z)`` for Gaussian ``z`` and the forward or central formula
(Nesterov & Spokoiny, 2017). These members make their own gradients: see
:mod:`gradtx.handover` for what they hand the members after them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .._hparams import check, check_int
from .._tree import Tree, tree_unflatten
from ..base import GradientTransformation, transform
from ..handover import declare_gradient_source
from ..transforms._common import leaves, leaves_like, need_params
from . import _perturb as P  # noqa: N812

__all__ = ["gaussian_smoothing", "randomized_fdm", "rdsa", "spsa"]

FORMULAS = ("central", "forward", "backward")


def check_formula(formula: str) -> None:
    if formula not in FORMULAS:
        raise ValueError(f"formula must be one of {FORMULAS}, got {formula!r}")


def need_value_fn(name: str, value_fn: Any) -> None:
    if value_fn is None:
        raise ValueError(f"{name} approximates the gradient from the loss alone: call update(updates, state, params, "
                         "value_fn=value_fn), or step gx.Optimizer with a closure(backward=False)")


def estimate(ps: list[torch.Tensor], treedef, value_fn: Callable, value: Any, directions: P.Directions, h: Any,
             n_samples: int, formula: str, in_place: bool, outs: list[torch.Tensor] | None = None,
             factor: Any = None) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
    """``(f(x) or None, [g_i])``: the randomized estimate at the params ``ps`` (the rule in the
    module docstring), times ``factor`` when given, each ``g_i`` in its leaf's wide dtype, or
    written into ``outs[i]`` (same values, for ``outs`` of that dtype) so nothing more than one
    leaf is allocated."""
    f0 = None
    if formula != "central":
        f0 = P.as_loss(value if value is not None else value_fn(tree_unflatten(list(ps), treedef)))
    grads: list[torch.Tensor] | None = None
    for k in range(n_samples):
        def direction(i, p, k=k):
            return directions(k, i, p)

        if formula == "central":
            fp, fm = P.losses_at(value_fn, ps, treedef, direction, [h, -h], in_place)
            d = (P.as_loss(fp) - P.as_loss(fm)) / (2 * h)
        elif formula == "forward":
            (fp,) = P.losses_at(value_fn, ps, treedef, direction, [h], in_place)
            d = (P.as_loss(fp) - f0) / h
        else:
            (fm,) = P.losses_at(value_fn, ps, treedef, direction, [-h], in_place)
            d = (f0 - P.as_loss(fm)) / h
        if n_samples > 1:
            d = d / n_samples
        if factor is not None:
            d = d * factor
        # d in each leaf's dtype: a 0-d leaf would otherwise promote to d's dtype out of place
        # but not in place, and the two paths must give the same bits
        if grads is None:
            grads = []
            for i, p in enumerate(ps):
                z = direction(i, p)
                dz = d.to(z.dtype)
                if outs is not None and outs[i].dtype == z.dtype and not z.requires_grad and not d.requires_grad:
                    grads.append(outs[i].copy_(z.mul_(dz)))
                else:
                    grads.append(z * dz)
        else:
            for i, p in enumerate(ps):
                z = direction(i, p)
                dz = d.to(z.dtype)
                mine = outs is not None and grads[i] is outs[i]
                grads[i] = grads[i].add_(z.mul_(dz)) if mine else grads[i] + z * dz
    if grads is None:  # n_samples is at least 1; only a tree without leaves gets here
        grads = []
    return f0, grads


def randomized_member(name: str, h_at: Callable[[torch.Tensor], Any], n_samples: int, formula: str,
                      distribution: str, seed: int, evaluate_in_place: bool,
                      scale: Callable[[Any], Any] | None = None, init_extra: Callable | None = None
                      ) -> GradientTransformation:
    """A randomized approximator as a transform: ``h_at(count)`` the step at step ``count``;
    ``scale(state)``, when given, multiplies the estimate (``-lr`` for ``gx.mezo``; its output
    is then not the gradient). ``init_extra``: a state of another NamedTuple, built from the
    :class:`~gradtx.approx._perturb.ApproxState` (``gx.mezo`` keeps its ``lr``)."""

    def init(params):
        del params
        base = P.new_state(seed)
        return base if init_extra is None else init_extra(base)

    def approx_state(state):
        return P.ApproxState(state.seed, state.count)

    def update(updates, state, params=None, *, inplace=False, value=None, value_fn=None, **extra_args):
        del extra_args
        need_params(name, params)
        need_value_fn(name, value_fn)
        us, treedef = leaves(updates)
        ps = leaves_like(params, treedef, "params")
        _, gs = estimate(ps, treedef, value_fn, value, P.Directions(approx_state(state), distribution),
                         h_at(state.count), n_samples, formula, evaluate_in_place, us if inplace else None,
                         None if scale is None else scale(state))
        out = []
        for g, u in zip(gs, us):
            if g is u:
                out.append(u)
            elif inplace and u.dtype == g.dtype and not g.requires_grad:
                out.append(u.copy_(g))
            else:
                out.append(g.to(u.dtype))
        new = P.advanced(approx_state(state), inplace)
        new_state = new if init_extra is None else state._replace(seed=new.seed, count=new.count)
        return unflatten_like(treedef, out), new_state

    def source(state, extra):
        value_fn = extra.get("value_fn")
        need_value_fn(name, value_fn)
        directions = P.Directions(approx_state(state), distribution)
        h = h_at(state.count)

        def value_and_grad_fn(params: Tree):
            ps, treedef = leaves(params)
            f0, gs = estimate(ps, treedef, value_fn, None, directions, h, n_samples, formula, False)
            loss = f0 if f0 is not None else P.as_loss(value_fn(params))
            return loss, tree_unflatten([g.to(p.dtype) for g, p in zip(gs, ps)], treedef)

        return value_and_grad_fn

    return declare_gradient_source(GradientTransformation(init, update), source, outputs_gradient=scale is None)


def unflatten_like(treedef, values):
    return tree_unflatten(values, treedef)


def _checked(h: Any, n_samples: int, formula: str, distribution: str, seed: int, evaluate_in_place: Any) -> None:
    check("h", h, low=0.0, low_open=True)
    check_int("n_samples", n_samples, low=1)
    check_formula(formula)
    P.check_distribution(distribution)
    check_int("seed", seed)
    if not isinstance(evaluate_in_place, bool):
        raise ValueError(f"evaluate_in_place must be a bool, got {evaluate_in_place!r}")


@transform(inplace=True)
def randomized_fdm(h: float = 1e-3, n_samples: int = 1, formula: str = "central", distribution: str = "rademacher",
                   *, seed: int = 0, evaluate_in_place: bool = False) -> GradientTransformation:
    """Randomized finite differences: the gradient from ``n_samples`` directional differences
    along random directions (the rule in the module docstring); needs ``value_fn`` (and
    ``value`` for the forward/backward formulas, else one more evaluation). Ignores the
    updates it is given: put it first in a chain.

    ``distribution``: ``"rademacher"`` (+-1 entries) or ``"gaussian"``; directions come from
    ``seed`` and the step count in the state (no global RNG). ``evaluate_in_place``: under
    ``gx.Optimizer`` move the parameters in place to evaluate (no copy of the params; the
    parameters come back to within round-off) instead of setting trial copies. Costs
    ``n_samples`` (one-sided) or ``2 n_samples`` (central) evaluations a step.

    Hands the members after it ``grad``, ``value_and_grad_fn`` and ``hvp_fn`` of the
    approximation (:mod:`gradtx.handover`). torchzero's ``RandomizedFDM`` (its ``h`` is ours).

    Example: ``gx.chain(gx.randomized_fdm(1e-3, n_samples=4), gx.scale_by_lr(0.01))``.
    """
    _checked(h, n_samples, formula, distribution, seed, evaluate_in_place)
    return randomized_member("randomized_fdm", lambda count: h, n_samples, formula, distribution, seed,
                             evaluate_in_place)


@transform(inplace=True)
def spsa(h: float = 1e-3, n_samples: int = 1, formula: str = "central", *, seed: int = 0,
         evaluate_in_place: bool = False) -> GradientTransformation:
    """Simultaneous perturbation stochastic approximation (Spall, 1992): randomized finite
    differences along Rademacher directions ``z`` (entries +-1),
    ``g = z (f(x + h z) - f(x - h z)) / (2h)`` (as ``1/z_i = z_i``), averaged over ``n_samples``.
    Unbiased up to ``O(h^2)``. Needs ``value_fn``; see :func:`randomized_fdm`. torchzero's ``SPSA``.

    Example: ``gx.chain(gx.spsa(1e-3), gx.scale_by_lr(0.01))``.
    """
    _checked(h, n_samples, formula, "rademacher", seed, evaluate_in_place)
    return randomized_member("spsa", lambda count: h, n_samples, formula, "rademacher", seed, evaluate_in_place)


@transform(inplace=True)
def rdsa(h: float = 1e-3, n_samples: int = 1, formula: str = "central", *, seed: int = 0,
         evaluate_in_place: bool = False) -> GradientTransformation:
    """Random-direction stochastic approximation (Kushner & Clark, 1978; Chen, 2021): randomized
    finite differences along Gaussian directions ``z ~ N(0, I)``,
    ``g = z (f(x + h z) - f(x - h z)) / (2h)``, averaged over ``n_samples``. Needs ``value_fn``;
    see :func:`randomized_fdm`. torchzero's ``RDSA``.

    Example: ``gx.chain(gx.rdsa(1e-3, n_samples=8), gx.scale_by_lr(0.01))``.
    """
    _checked(h, n_samples, formula, "gaussian", seed, evaluate_in_place)
    return randomized_member("rdsa", lambda count: h, n_samples, formula, "gaussian", seed, evaluate_in_place)


@transform(inplace=True)
def gaussian_smoothing(h: float = 1e-2, n_samples: int = 100, formula: str = "forward", *, seed: int = 0,
                       evaluate_in_place: bool = False) -> GradientTransformation:
    """Gaussian smoothing (Nesterov & Spokoiny, 2017): the gradient of the smoothed loss
    ``f_h(x) = E_z f(x + h z)``, ``z ~ N(0, I)``, estimated by
    ``g = (1/n) sum_k z_k (f(x + h z_k) - f(x)) / h`` (``formula="forward"``, the default;
    ``"central"`` halves the variance for twice the evaluations). Both are unbiased for
    ``grad f_h``; on a quadratic ``f_h = f + h^2 tr(A)/2`` so ``grad f_h = grad f``.
    Defaults as torchzero's ``GaussianSmoothing`` (``h=1e-2``, 100 samples, forward).

    Its hand-over makes ``gx.chain(gx.gaussian_smoothing(), gx.newton_cg(), gx.scale_by_backtracking())``
    a zeroth-order Newton method (:mod:`gradtx.handover`).

    Example: ``gx.chain(gx.gaussian_smoothing(1e-2, n_samples=20), gx.scale_by_lr(0.1))``.
    """
    _checked(h, n_samples, formula, "gaussian", seed, evaluate_in_place)
    return randomized_member("gaussian_smoothing", lambda count: h, n_samples, formula, "gaussian", seed,
                             evaluate_in_place)
