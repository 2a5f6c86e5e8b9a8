"""Sharpness-aware minimisation: descend on the loss at the worst point of a small neighbourhood.

- :func:`sam_gradient` / :func:`asam_gradient`: a chain member that replaces the update by the
  gradient at the adversarial point ``x + e`` (SAM, Foret et al., 2021; ASAM, Kwon et al.,
  2021), torchzero's ``SAM``/``ASAM``; any chain after it is the inner optimizer.
- :func:`sam`: optax.contrib's form, an outer optimizer and an adversarial optimizer taking
  turns (``sync_period``), across calls (no closure needed) or inside one (``opaque_mode``).
- :func:`msam`: Momentum-SAM (Becker, Altrock & Risse, 2024), the perturbation along the
  momentum, at no extra evaluation.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch

from ._hparams import check, check_int, new_count
from ._tree import Tree, tensor_leaves, tree_unflatten
from .base import EmptyState, GradientTransformation, supports_inplace, transform, updater
from .combine import chain
from .transforms._common import leaves_like, need_params, refuse_complex
from .transforms.normalize import normalize_by_update_norm
from .transforms.scaling import scale_by_lr

__all__ = ["MSAMState", "SAMState", "asam_gradient", "msam", "sam", "sam_gradient"]


def _check_inner(name: str, tx: Any) -> None:
    if not isinstance(tx, GradientTransformation):
        raise ValueError(f"{name} must be a GradientTransformation (e.g. gx.sgd(0.01)), got {tx!r}")


def _wide(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.complex128) if x.is_complex() else x.double()


def _guarded(tx: GradientTransformation):
    """``updater(tx)`` called without ``inplace``; an undeclared ``tx`` (an optax-style pair,
    which may return or keep what it is given) gets copies and its results are copied, so
    this wrapper keeps the in-place promise around it."""
    run = updater(tx)
    if supports_inplace(tx):
        return run

    def guarded(updates, state, params, inplace, extra_args):
        del inplace
        xs, treedef = tensor_leaves(updates)
        out, new_state = run(tree_unflatten([x.clone() for x in xs], treedef), state, params, False, extra_args)
        ys, out_def = tensor_leaves(out)
        return tree_unflatten([y.clone() for y in ys], out_def), new_state

    return guarded


def _global_norm(xs: list[torch.Tensor]) -> torch.Tensor:
    # in float64 over the real views (a complex leaf counts as its two parts)
    if not xs:
        return torch.zeros((), dtype=torch.float64)
    return torch.sqrt(sum(torch.view_as_real(x).double().square().sum().cpu() if x.is_complex()
                          else x.double().square().sum().cpu() for x in xs))


def _perturbation(gs: list[torch.Tensor], ps: list[torch.Tensor], rho: Any, p: float, adaptive: bool, eta: Any,
                  eps: Any) -> list[torch.Tensor]:
    """The maximiser of the linearised loss over ``||T^-1 e||_p <= rho``:
    ``e = rho T sign(Tg) |Tg|^(q-1) / (sum |Tg|^q)^(1/p)``, ``1/p + 1/q = 1``, ``T = |x| + eta``
    (ASAM) or ``1`` (SAM); for ``p = 2``, ``e = rho T^2 g / ||T g||``."""
    # in float64 at least, so every leaf's share of the norm is exact whatever its dtype
    gs = [_wide(g) for g in gs]
    ts = [x.double().abs() + eta for x in ps] if adaptive else [None] * len(gs)
    tgs = [g if t is None else t * g for g, t in zip(gs, ts)]
    if p == 2:
        denom = _global_norm(tgs)
        dirs = tgs
    elif math.isinf(p):  # q = 1: every coordinate at the edge of the box
        denom = torch.ones((), dtype=torch.float64)
        dirs = [torch.sign(x) for x in tgs]
    else:
        q = p / (p - 1)
        denom = sum(x.double().abs().pow(q).sum().cpu() for x in tgs) ** (1 / p) if tgs else torch.ones(())
        dirs = [torch.sign(x) * x.abs().pow(q - 1) for x in tgs]
    scale = rho / torch.clamp(denom, min=eps)
    return [(d * scale if t is None else t * d * scale).to(x.dtype) for d, t, x in zip(dirs, ts, ps)]


def _check_p(p: Any) -> None:
    check("p", p, low=1.0, low_open=True, allow_inf=True)


@transform(inplace=True)
def sam_gradient(rho: float = 0.05, p: float = 2.0, *, adaptive: bool = False, eta: float = 0.0,
                 eps: float = 1e-12) -> GradientTransformation:
    """SAM's gradient (Foret, Kleiner, Mobahi & Neyshabur, 2021, eq. 2): the update becomes
    the gradient at the adversarial point ``x + e``, ``e = rho g / ||g||`` for ``p = 2``; in
    general the maximiser of ``g.e`` over ``||e||_p <= rho``,
    ``e = rho sign(g) |g|^(q-1) / (sum |g|^q)^(1/p)`` with ``1/p + 1/q = 1`` (``p=inf``:
    ``rho sign(g)``). ``g`` is the incoming update (the gradient when first in the chain);
    the denominator is kept above ``eps``.

    ``adaptive=True`` is ASAM's scale-invariant neighbourhood (Kwon et al., 2021, eq. 5):
    with ``T = |x| + eta``, ``e = rho T sign(Tg) |Tg|^(q-1) / (sum |Tg|^q)^(1/p)``
    (``rho T^2 g / ||T g||`` for ``p = 2``); see :func:`asam_gradient` for its defaults.

    Needs the extra argument ``value_and_grad_fn`` (``gx.Optimizer`` builds it from
    ``step``'s closure): one more gradient per step. Put it first and any optimizer after
    it: ``gx.chain(gx.sam_gradient(0.05), gx.scale_by_adam(), gx.scale_by_lr(1e-3))`` is
    SAM-Adam (torchzero's ``SAM``; its ``p`` argument is this one).

    Example: ``gx.Optimizer(model.parameters(), gx.chain(gx.sam_gradient(0.05), gx.sgd(0.1)))``,
    stepped with a closure.
    """
    check("rho", rho, low=0.0)
    _check_p(p)
    check("eta", eta, low=0.0)
    check("eps", eps, low=0.0)
    if not isinstance(adaptive, bool):
        raise ValueError(f"adaptive must be a bool, got {adaptive!r}")
    p = float(p)
    name = "asam_gradient" if adaptive else "sam_gradient"

    def init(params):
        if adaptive or p != 2:
            refuse_complex(name, params, "ASAM's |x| and the l_p dual map read each real number on its own")
        return EmptyState()

    def update(updates, state, params=None, *, inplace=False, value_and_grad_fn=None, **extra_args):
        del inplace  # it allocates: writes into nothing it is given, returns fresh tensors
        del extra_args
        need_params(name, params)
        if value_and_grad_fn is None:
            raise ValueError(f"{name} needs value_and_grad_fn (params -> (loss, grads)) for the gradient at the "
                             "adversarial point: call update(..., value_and_grad_fn=gx.make_value_and_grad_fn("
                             "loss_fn)), or step(closure) under gx.Optimizer")
        gs, treedef = tensor_leaves(updates)
        ps = leaves_like(params, treedef, "params")
        es = _perturbation(gs, ps, rho, p, adaptive, eta, eps)
        at = tree_unflatten([(x + e.to(x.dtype)) for x, e in zip(ps, es)], treedef)
        grads = leaves_like(value_and_grad_fn(at)[1], treedef, "value_and_grad_fn's gradient")
        return tree_unflatten([g.to(u.dtype, copy=True) for g, u in zip(grads, gs)], treedef), state

    return GradientTransformation(init, update)


@transform(inplace=True)
def asam_gradient(rho: float = 0.5, p: float = 2.0, *, eta: float = 0.01, eps: float = 1e-12) -> GradientTransformation:
    """ASAM's gradient (Kwon, Kim, Park & Choi, 2021, "ASAM: Adaptive Sharpness-Aware
    Minimization for Scale-Invariant Learning of Deep Neural Networks"): the gradient at
    ``x + e``, ``e = rho T^2 g / ||T g||`` with ``T = |x| + eta`` for ``p = 2`` (the general
    ``p`` in :func:`sam_gradient`), so the neighbourhood scales with each weight.

    Defaults are the paper's (``rho=0.5``, ``eta=0.01``); torchzero's ``ASAM`` is ``eta=0``.
    Needs ``value_and_grad_fn``, as :func:`sam_gradient` (which this is with ``adaptive=True``).

    Example: ``gx.chain(gx.asam_gradient(0.5), gx.sgd(0.1, momentum=0.9))``.
    """
    tx = sam_gradient(rho, p, adaptive=True, eta=eta, eps=eps)
    return GradientTransformation(tx.init, tx.update)


class SAMState(NamedTuple):
    steps_since_sync: torch.Tensor  # int32, adversarial steps since the last outer step
    opt_state: Any  # the outer optimizer's state
    adv_state: Any  # the adversarial optimizer's state
    cache: Tree  # the params of the last outer step (transparent mode); () in opaque mode


def _neg(tree: Tree) -> Tree:
    xs, treedef = tensor_leaves(tree)
    return tree_unflatten([-x for x in xs], treedef)


@transform(inplace=True)
def sam(optimizer: GradientTransformation, adv_optimizer: GradientTransformation | None = None,
        sync_period: int = 2, reset_state: bool = True, opaque_mode: bool = False, *,
        rho: float = 0.05) -> GradientTransformation:
    """SAM in optax.contrib's form (Foret et al., 2021): ``sync_period - 1`` ascent steps of
    ``adv_optimizer``, then one step of ``optimizer`` from the params before them.

    ``adv_optimizer`` is a descent optimizer whose update is negated (an ascent step); by
    default ``chain(normalize_by_update_norm(eps=0), scale_by_lr(rho))``, optax's
    ``chain(normalize(), sgd(rho))``: ``e = rho g / ||g||``, the paper's step.

    - Transparent mode (default): one step per call, no closure needed. The first call of a
      period stores the params (``cache``); calls ``1 .. sync_period-1`` return the ascent
      steps; the last runs ``optimizer`` on the gradient it gets (at the adversarial point)
      with ``params=cache`` and returns ``cache - params + u``, so the params land on the
      outer step. With ``reset_state`` the adversarial state is re-initialised then.
    - ``opaque_mode=True``: the whole period in one call, the adversarial gradients from the
      extra argument ``value_and_grad_fn`` (or optax's ``grad_fn(params, i)``); the params
      never hold an adversarial point.

    Same numbers as ``optax.contrib.sam`` for ``sync_period >= 2``; with ``sync_period=1``
    optax's outer step reads the previous call's cache, here the current params (plain
    ``optimizer``). ``batch_axis_name`` (pmap) has no counterpart. See :func:`sam_gradient`
    for SAM as a chain member.

    Example: ``gx.sam(gx.sgd(0.01), rho=0.05)`` (transparent, two calls per SAM step);
    ``gx.sam(gx.adam(1e-3), opaque_mode=True)`` stepped with a closure.
    """
    _check_inner("optimizer", optimizer)
    if adv_optimizer is None:
        check("rho", rho, low=0.0)
        adv_optimizer = chain(normalize_by_update_norm(eps=0.0), scale_by_lr(rho))
    _check_inner("adv_optimizer", adv_optimizer)
    check_int("sync_period", sync_period, low=1)
    for flag, value in (("reset_state", reset_state), ("opaque_mode", opaque_mode)):
        if not isinstance(value, bool):
            raise ValueError(f"{flag} must be a bool, got {value!r}")
    run_opt, run_adv = _guarded(optimizer), _guarded(adv_optimizer)

    def init(params):
        cache = () if opaque_mode else tree_unflatten([x.detach().clone() for x in tensor_leaves(params)[0]],
                                                      tensor_leaves(params)[1])
        return SAMState(new_count(), optimizer.init(params), adv_optimizer.init(params), cache)

    def transparent(updates, state, params, extra_args):
        since = int(state.steps_since_sync)
        first, last = since == 0, since == sync_period - 1
        us, treedef = tensor_leaves(updates)
        ps = leaves_like(params, treedef, "params")
        cache = tree_unflatten([x.clone() for x in ps], treedef) if first else state.cache
        steps = torch.tensor((since + 1) % sync_period, dtype=torch.int32)
        if not last:
            adv, adv_state = run_adv(updates, state.adv_state, params, False, extra_args)
            return _neg(adv), SAMState(steps, state.opt_state, adv_state, cache)
        out, opt_state = run_opt(updates, state.opt_state, cache, False, extra_args)
        outs = leaves_like(out, treedef)
        cs = leaves_like(cache, treedef)
        new = [(c - x + o.to(c.dtype)).to(u.dtype) for c, x, o, u in zip(cs, ps, outs, us)]
        adv_state = adv_optimizer.init(params) if reset_state else state.adv_state
        return tree_unflatten(new, treedef), SAMState(steps, opt_state, adv_state, cache)

    def opaque(updates, state, params, extra_args):
        grad_fn = extra_args.get("grad_fn")
        value_and_grad_fn = extra_args.get("value_and_grad_fn")
        if sync_period > 1 and grad_fn is None and value_and_grad_fn is None:
            raise ValueError("sam with opaque_mode=True needs value_and_grad_fn (params -> (loss, grads)) or optax's "
                             "grad_fn(params, i): call update(..., value_and_grad_fn=...), or step(closure) under "
                             "gx.Optimizer")
        us, treedef = tensor_leaves(updates)
        adv_params = leaves_like(params, treedef, "params")
        adv_updates, adv_state = updates, state.adv_state
        for i in range(sync_period - 1):
            at = tree_unflatten(adv_params, treedef)
            step, adv_state = run_adv(adv_updates, adv_state, at, False, extra_args)
            adv_params = [x - s.to(x.dtype) for x, s in zip(adv_params, leaves_like(step, treedef))]
            at = tree_unflatten(adv_params, treedef)
            grads = grad_fn(at, i) if grad_fn is not None else value_and_grad_fn(at)[1]
            adv_updates = tree_unflatten([g.to(u.dtype, copy=True) for g, u in zip(leaves_like(grads, treedef), us)],
                                         treedef)
        if reset_state:
            adv_state = adv_optimizer.init(params)
        out, opt_state = run_opt(adv_updates, state.opt_state, params, False, extra_args)
        return out, SAMState(new_count(), opt_state, adv_state, ())

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del inplace  # it allocates: writes into nothing it is given, returns fresh tensors
        need_params("sam", params)
        return (opaque if opaque_mode else transparent)(updates, state, params, extra_args)

    return GradientTransformation(init, update)


class MSAMState(NamedTuple):
    velocity: Tree  # v <- momentum v + g, whose direction is the perturbation's
    inner_state: Any  # the inner optimizer's state


@transform(inplace=True)
def msam(optimizer: GradientTransformation, rho: float = 0.3, momentum: float = 0.9) -> GradientTransformation:
    """Momentum-SAM (Becker, Altrock & Risse, 2024, "Momentum-SAM: Sharpness Aware Minimization
    without Computational Overhead"): the params hold the perturbed point
    ``x~ = x - rho v / ||v||``, ``v`` a heavy-ball momentum of the gradients, so the
    gradient the step gets is already the sharpness-aware one and no extra evaluation is needed.

    Each step: ``v' = momentum v + g``; ``u <- inner(g) + rho v / ||v|| - rho v' / ||v'||``:
    remove the old perturbation, take ``optimizer``'s step, apply the new one (torchzero's
    ``MSAM``; ``v = 0`` gives no perturbation). ``msam(chain(trace(m), scale_by_lr(lr)), rho,
    m)`` is the paper's SGD-MSAM (torchzero's ``MSAMMomentum``). The params are the perturbed
    ones: the unperturbed weights, to evaluate, are ``params + rho v / ||v||`` with ``v`` the
    state's ``velocity``.

    Defaults: ``rho=0.3``, ``momentum=0.9`` (torchzero's). Any weight decay inside
    ``optimizer`` sees the perturbed params.

    Example: ``gx.msam(gx.sgd(0.1, momentum=0.9), rho=0.3)``.
    """
    _check_inner("optimizer", optimizer)
    check("rho", rho, low=0.0)
    check("momentum", momentum, low=0.0, high=1.0)
    run_inner = _guarded(optimizer)

    def init(params):
        ps, treedef = tensor_leaves(params)
        return MSAMState(tree_unflatten([torch.zeros_like(x) for x in ps], treedef), optimizer.init(params))

    def perturbation(vs):
        denom = torch.clamp(_global_norm(vs) / rho, min=torch.finfo(torch.float64).tiny * 2) if rho else None
        return [torch.zeros_like(v) if denom is None else (_wide(v) / denom).to(v.dtype) for v in vs]

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del inplace  # it allocates: writes into nothing it is given, returns fresh tensors
        gs, treedef = tensor_leaves(updates)
        vs = leaves_like(state.velocity, treedef)
        old = perturbation(vs)
        vs = [momentum * v + g.to(v.dtype) for v, g in zip(vs, gs)]
        new = perturbation(vs)
        inner, inner_state = run_inner(updates, state.inner_state, params, False, extra_args)
        out = [(i + (o - n).to(i.dtype)).to(g.dtype)
               for i, o, n, g in zip(leaves_like(inner, treedef), old, new, gs)]
        return tree_unflatten(out, treedef), MSAMState(tree_unflatten(vs, treedef), inner_state)

    return GradientTransformation(init, update)


