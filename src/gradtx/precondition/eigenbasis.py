"""Any rule run in the eigenbasis of Shampoo's Kronecker factors: :func:`in_eigenbasis`
(SOAP's idea, Vyas et al., 2024; torchzero's ``SOAPBasis``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import torch

from .._hparams import check_beta, check_int, new_count
from .._tree import Tree, TreeDef, flatten_up_to, tree_leaves, tree_structure, tree_unflatten
from ..base import GradientTransformation, is_leafwise, transform, updater
from ..transforms._common import leaves, leaves_like, refuse_complex, unflatten
from ._factors import empty_like_factor, factor_sizes, gram, multiply_axes
from .soap import _eigenbasis, _lerp, _new_bases, _permute

__all__ = ["InEigenbasisState", "in_eigenbasis"]

_KINDS = ("rotate", "permute", "keep")

# How each built-in diagonal rule's per-parameter state moves when the basis is refreshed:
# "rotate" for what is linear in the update (moments, momentum, previous updates), carried to
# the new basis exactly; "permute" for diagonal statistics of squares (or magnitudes), which a
# rotation would turn into a full matrix: SOAP keeps each entry with its eigen-direction.
_BUILT_IN: dict[str, str] = {
    "ScaleByAdamState.mu": "rotate", "ScaleByAdamState.nu": "permute",
    "ScaleByAmsgradState.mu": "rotate", "ScaleByAmsgradState.nu": "permute", "ScaleByAmsgradState.nu_max": "permute",
    "ScaleByNadamState.mu": "rotate", "ScaleByNadamState.nu": "permute",
    "ScaleByBeliefState.mu": "rotate", "ScaleByBeliefState.nu": "permute",
    "ScaleByLionState.mu": "rotate",
    "ScaleByAdanState.m": "rotate", "ScaleByAdanState.v": "rotate", "ScaleByAdanState.g": "rotate",
    "ScaleByAdanState.n": "permute",
    "ScaleByRmsState.nu": "permute", "ScaleByRmsBiasCorrectedState.nu": "permute",
    "ScaleByRssState.sum_of_squares": "permute",
    "ScaleByAdaDeltaState.e_g": "permute", "ScaleByAdaDeltaState.e_x": "permute",
    "ScaleByRStdDevState.mu": "rotate", "ScaleByRStdDevState.nu": "permute",
    "ScaleByRStdDevBiasCorrectedState.mu": "rotate", "ScaleByRStdDevBiasCorrectedState.nu": "permute",
    "TraceState.trace": "rotate", "DampenedTraceState.trace": "rotate", "EmaState.ema": "rotate",
    "EmaSquaredState.nu": "permute", "CenteredEmaSquaredState.mu": "rotate", "CenteredEmaSquaredState.nu": "permute",
    "AccumulateMeanState.acc": "rotate",
    "MarsCorrectionState.prev": "rotate", "SignConsistencyState.previous": "rotate",
    "ClipValueGrowthState.prev": "rotate", "EmaNormClipState.ema": "rotate", "ClipValueByEmaState.ema": "permute",
}

# Rules written with gx.per_tensor keep a plain tuple per tensor: their entries are named by
# the constructor (found through chains by their parts).
_PER_TENSOR = "PerTensorState.per_tensor"
_BY_NAME: dict[str, dict[str, str]] = {
    name: {f"{_PER_TENSOR}.{i}": kind for i, kind in enumerate(kinds)}
    for name, kinds in {
        "scale_by_laprop": ("rotate", "permute"), "scale_by_adopt": ("rotate", "permute"),
        "scale_by_acprop": ("rotate", "permute"), "scale_by_simplified_ademamix": ("rotate", "permute"),
        "scale_by_ademamix": ("rotate", "rotate", "permute"),
    }.items()
}


class InEigenbasisState(NamedTuple):
    """State of :func:`in_eigenbasis`."""

    count: torch.Tensor  # int32, calls made (the first only collects statistics)
    factors: Tree  # per parameter, one (n, n) factor per axis of its working shape; (0,) where none
    bases: Tree  # per parameter, the eigenbasis Q of each factor; (0,) where none
    inner: Any  # the inner rule's state, over the rotated tree (each leaf in its working shape)


class _Carry:
    """Moves the inner state to a refreshed basis: finds each per-parameter tensor by the
    ``"StateClass.field"`` (or ``"StateClass.field.i"``, the ``i``-th entry of a per-tensor
    tuple) it sits under, and rotates, permutes or keeps it."""

    def __init__(self, rules: Mapping[str, str], user: Mapping[str, str], treedef: TreeDef, shapes: list[list[int]],
                 has: list[list[bool]]):
        self.base, self.user, self.treedef, self.shapes, self.has = rules, user, treedef, shapes, has
        self.rules = rules
        self.working = {tuple(s) for s, h in zip(shapes, has) if any(h)}

    def __call__(self, tx: GradientTransformation, state: Any, move) -> Any:
        """``state`` (``tx``'s) with ``move(kind, i, x)`` applied to each per-parameter tensor
        ``x`` of parameter ``i`` (``move=None`` only checks that every such tensor has a rule)."""
        return self._member(tx, state, move)

    def _member(self, tx: Any, state: Any, move) -> Any:
        attrs = getattr(tx, "__dict__", {})
        parts = attrs.get("parts")
        if parts is not None and type(state) is tuple and len(state) == len(parts):  # a chain's members
            return tuple(self._member(part, s, move) for part, s in zip(parts, state))
        # a built-in per_tensor rule's entries by its name; the user's moments win
        self.rules = {**self.base, **_BY_NAME.get(attrs.get("name"), {}), **self.user}
        try:
            return self._walk(state, move, "the inner state")
        finally:
            self.rules = self.base

    def _walk(self, node: Any, move, where: str) -> Any:
        if isinstance(node, tuple) and hasattr(node, "_fields"):
            cls = type(node).__name__
            values = []
            for field in node._fields:
                value = getattr(node, field)
                key = f"{cls}.{field}"
                if key in self.rules:
                    values.append(self._per_parameter(value, key, move, lambda i, x, k=key: self._one(k, i, x, move)))
                elif any(k.startswith(key + ".") for k in self.rules):
                    values.append(self._per_parameter(value, key, move,
                                                      lambda i, x, k=key: self._entries(k, i, x, move)))
                else:
                    self._refuse_unnamed(value, key)
                    values.append(self._walk(value, move, key))
            return type(node)(*values)
        if isinstance(node, (tuple, list)):
            return type(node)(self._walk(v, move, where) for v in node)
        if isinstance(node, dict):
            return {k: self._walk(v, move, where) for k, v in node.items()}
        if isinstance(node, torch.Tensor) and node.dim() > 0 and tuple(node.shape) in self.working:
            raise ValueError(
                f"in_eigenbasis: {where} holds a tensor shaped like a rotated parameter {tuple(node.shape)} with no "
                "rule for the basis refresh: name it in moments= as 'StateClass.field' (or 'StateClass.field.i' for "
                "the i-th entry of a per-tensor tuple) -> 'rotate' (linear in the update: a moment, a momentum), "
                "'permute' (a diagonal statistic of squares) or 'keep'")
        return node

    def _refuse_unnamed(self, value: Any, key: str) -> None:
        # a field holding a tree like the params with a tensor (not a 0-dim number) for a
        # rotated parameter is per-parameter state that the refresh would leave behind
        try:
            per = flatten_up_to(value, self.treedef)
        except ValueError:
            return
        for i, sub in enumerate(per):
            if any(self.has[i]) and any(isinstance(x, torch.Tensor) and x.dim() > 0 for x in tree_leaves(sub)):
                raise ValueError(
                    f"in_eigenbasis: {key} is per-parameter state with no rule for the basis refresh: name it in "
                    "moments= as 'StateClass.field' (or 'StateClass.field.i' for the i-th entry of a per-tensor "
                    "tuple) -> 'rotate' (linear in the update: a moment, a momentum), 'permute' (a diagonal "
                    "statistic of squares, shaped like the parameter) or 'keep'")

    def _per_parameter(self, value: Any, key: str, move, fn) -> Any:
        try:
            per = flatten_up_to(value, self.treedef, f"the inner state's {key}", "the params")
        except ValueError as error:
            raise ValueError(f"in_eigenbasis: moments names {key!r}, which is not a tree like the params "
                             f"(structure {tree_structure(value)})") from error
        return tree_unflatten([fn(i, x) for i, x in enumerate(per)], self.treedef)

    def _entries(self, key: str, i: int, entries: Any, move) -> Any:
        if not isinstance(entries, (tuple, list)):
            raise ValueError(f"in_eigenbasis: moments names entries of {key!r}, whose per-parameter state is a "
                             f"{type(entries).__name__}, not a tuple")
        out = []
        for j, x in enumerate(entries):
            k = f"{key}.{j}"
            out.append(self._one(k, i, x, move) if k in self.rules else self._walk(x, move, k))
        return type(entries)(out) if not hasattr(entries, "_fields") else type(entries)(*out)

    def _one(self, key: str, i: int, x: Any, move) -> Any:
        kind = self.rules[key]
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"in_eigenbasis: moments names {key!r}, whose per-parameter entry is a "
                             f"{type(x).__name__}, not a tensor")
        if kind == "keep" or not any(self.has[i]):
            return x
        if list(x.shape) != self.shapes[i]:
            raise ValueError(f"in_eigenbasis: {key!r} of parameter {i} has shape {tuple(x.shape)}, not the rotated "
                             f"parameter's {tuple(self.shapes[i])}: only such tensors can be {kind}d")
        return x if move is None else move(kind, i, x)


def _check_moments(moments: Mapping[str, str] | None) -> dict[str, str]:
    if moments is None:
        return {}
    if not isinstance(moments, Mapping):
        raise ValueError(f"moments must be a mapping {{'StateClass.field': 'rotate' | 'permute' | 'keep'}}, got "
                         f"{moments!r}")
    for key, kind in moments.items():
        if not isinstance(key, str) or key.count(".") not in (1, 2):
            raise ValueError(f"moments: keys are 'StateClass.field' or 'StateClass.field.i', got {key!r}")
        if kind not in _KINDS:
            raise ValueError(f"moments[{key!r}] must be one of {_KINDS}, got {kind!r}")
    return dict(moments)


@transform(leafwise=lambda args: is_leafwise(args["inner"]))
def in_eigenbasis(inner: GradientTransformation, shampoo_beta: float = 0.95, precondition_frequency: int = 10,
                  max_precond_dim: int = 10000, merge_dims: bool = False, precondition_1d: bool = False,
                  precond_dtype: torch.dtype | None = None, moments: Mapping[str, str] | None = None
                  ) -> GradientTransformation:
    """``inner`` run in the eigenbasis of Shampoo's Kronecker factors: SOAP with any diagonal rule.

    Each parameter, in its working shape (as :func:`gradtx.scale_by_soap`'s: ``merge_dims``,
    ``max_precond_dim``, ``precondition_1d``), keeps one factor per axis,
    ``L_i <- shampoo_beta L_i + (1-shampoo_beta) G_(i) G_(i)^T``, and an orthonormal basis ``Q_i``
    of each. With ``rot(x) = x x_1 Q_1 ... x_k Q_k`` and ``unrot`` its inverse, a step is::

        v, inner_state <- inner(rot(g), inner_state, rot(p))       # grad= rotated too, value kept
        u <- unrot(v)

    then the factors take ``g`` and every ``precondition_frequency`` steps each ``Q_i`` is
    refreshed (one power iteration and a QR, columns sorted by estimated eigenvalue), and the
    inner state moves with it: what is linear in the update (first moments, momentum, previous
    updates) is rotated exactly, ``m <- rot_new(unrot_old(m))``; diagonal statistics of squares
    (second moments) are permuted with the sorted columns, as SOAP does for Adam's ``v``
    (a rotation would make them full matrices); anything else is kept. The first call only
    collects statistics, takes ``Q_i`` from an eigendecomposition and returns a zero update
    without calling ``inner`` (whose step count then starts at the second call), so the basis
    never depends on the gradient it rotates. Defaults are SOAP's authors'.

    Which state is which comes from ``moments``: ``{"StateClass.field": kind}`` with kind
    ``"rotate"``, ``"permute"`` or ``"keep"`` (``"StateClass.field.i"`` for the ``i``-th entry of a
    per-tensor tuple, e.g. ``"PerTensorState.per_tensor.0"`` for a rule written with
    :func:`gradtx.per_tensor`), added to the built-in table (Adam, AMSGrad, NAdam, AdaBelief,
    Lion, Adan, RMSprop, AdaGrad, AdaDelta, ``trace``, ``ema``, ``ema_squared``, MARS, growth
    and EMA clipping; LaProp, ADOPT, AcProp and AdEMAMix found by name, also as members of a
    chain). A tensor shaped like a rotated parameter that no rule names is refused at
    ``init``, so an inner state is never silently left in the old basis. Factored second moments
    (Adafactor's row and column statistics) are not param-shaped and have no exact or
    permutation rule: they are refused, as torchzero leaves them out of ``SOAPBasis``.

    Why a wrapper rather than an ``inner=`` argument of ``scale_by_soap``: the rule's own
    hyperparameters stay the rule's (``b1``, ``eps``, ``param_groups`` keys through its state),
    ``scale_by_soap`` keeps its numbers bit for bit, and it composes like
    :func:`gradtx.in_projected_space`. With ``inner=scale_by_adam(b1, b2, eps=0)`` it is
    ``scale_by_soap(b1, b2, eps=0)`` up to round-off (SOAP keeps ``m`` unrotated; here it is
    kept rotated and carried at each refresh, the same in exact arithmetic); SOAP adds ``eps``
    to ``sqrt(v)`` before the bias correction, Adam after it.

    Differences from torchzero's ``SOAPBasis``: its first call returns ``clip(g, -0.1, 0.1)``
    (zeros here, as SOAP's), its first refresh comes right after the first step (here at step
    ``precondition_frequency``, as SOAP's), and it gives no factor to a length-1 axis.
    Reference: Vyas et al., "SOAP: Improving and Stabilizing Shampoo using Adam", 2024.

    Example (Lion in Shampoo's eigenbasis)::

        tx = gx.chain(gx.in_eigenbasis(gx.scale_by_lion(b1=0.9, b2=0.99)), gx.scale_by_lr(3e-4))
    """
    if not isinstance(inner, GradientTransformation):
        raise ValueError(f"inner must be a GradientTransformation (e.g. gx.scale_by_adam()), got {inner!r}")
    check_beta("shampoo_beta", shampoo_beta)
    check_int("precondition_frequency", precondition_frequency, low=1)
    check_int("max_precond_dim", max_precond_dim, low=1)
    if precond_dtype is not None and precond_dtype not in (torch.float32, torch.float64):
        raise ValueError(f"precond_dtype must be None, torch.float32 or torch.float64, got {precond_dtype!r}")
    user_rules = _check_moments(moments)
    run_inner = updater(inner)

    def layout(p: torch.Tensor) -> tuple[list[int], list[bool]]:
        return factor_sizes(p.shape, max_dim=max_precond_dim, merge=merge_dims, precondition_1d=precondition_1d)

    def carry_for(ps: list[torch.Tensor], treedef: TreeDef) -> _Carry:
        shapes, has = zip(*(layout(p) for p in ps)) if ps else ((), ())
        return _Carry({**_BUILT_IN, **user_rules}, user_rules, treedef, list(shapes), list(has))

    def init(params):
        refuse_complex("in_eigenbasis", params, "its factors are built from each tensor's axes")
        ps, treedef = leaves(params)
        factors, bases, rotated = [], [], []
        for p in ps:
            shape, has = layout(p)
            factors.append([p.new_zeros(n, n) if on else empty_like_factor(p) for n, on in zip(shape, has)])
            bases.append([p.new_zeros(n, n) if on else empty_like_factor(p) for n, on in zip(shape, has)])
            rotated.append(p.new_zeros(shape))
        inner_state = inner.init(unflatten(treedef, rotated))
        carry_for(ps, treedef)(inner, inner_state, None)  # every rotated-shaped tensor has a rule
        return InEigenbasisState(new_count(), unflatten(treedef, factors), unflatten(treedef, bases), inner_state)

    def update(updates, state, params=None, **extra_args):
        gs, treedef = leaves(updates)
        all_factors = leaves_like(state.factors, treedef)
        all_bases = leaves_like(state.bases, treedef)
        t = int(state.count)  # the schedule of refreshes is Python control flow
        layouts = [layout(g) for g in gs]
        # the parameter's dtype (the factors'): low-precision grads on wider params, as SOAP
        works = [g.reshape(shape).to(f[0].dtype if f else g.dtype)
                 for g, (shape, _), f in zip(gs, layouts, all_factors)]
        inner_state = state.inner
        if t == 0:
            outs = [torch.zeros_like(g) for g in gs]
        else:
            def rot(x: torch.Tensor, i: int) -> torch.Tensor:
                shape, has = layouts[i]
                return multiply_axes(x.reshape(shape).to(works[i].dtype), all_bases[i], has, transpose=False)

            rotated = unflatten(treedef, [rot(w, i) for i, w in enumerate(works)])
            rotated_params = None
            if params is not None:
                rotated_params = unflatten(treedef, [rot(p, i) for i, p in enumerate(
                    flatten_up_to(params, treedef, "params"))])
            kept = {"value": extra_args["value"]} if "value" in extra_args else {}
            grad = extra_args.get("grad")
            if grad is not None and tree_structure(grad) == tree_structure(updates):
                kept["grad"] = unflatten(treedef, [rot(x, i) for i, x in enumerate(flatten_up_to(grad, treedef))])
            out, inner_state = run_inner(rotated, inner_state, rotated_params, False, kept)
            outs = [multiply_axes(v.to(works[i].dtype), all_bases[i], layouts[i][1], transpose=True)
                    .reshape(g.shape).to(g.dtype)
                    for i, (v, g) in enumerate(zip(flatten_up_to(out, treedef, "the inner updates"), gs))]
        new_factors, new_bases, orders = [], [], []
        for work, (_, has), factors, bases in zip(works, layouts, all_factors, all_bases):
            factors = [_lerp(f, gram(work, i).to(f.dtype), 1.0 - shampoo_beta) if on else f
                       for i, (f, on) in enumerate(zip(factors, has))]
            order = None
            if t == 0:
                bases = [_eigenbasis(f, precond_dtype) if on else q for f, q, on in zip(factors, bases, has)]
            elif t % precondition_frequency == 0:
                bases, order = _new_bases(factors, bases, has, precond_dtype)
            new_factors.append(factors)
            new_bases.append(bases)
            orders.append(order)
        if t > 0 and t % precondition_frequency == 0:
            def move(kind: str, i: int, x: torch.Tensor) -> torch.Tensor:
                has = layouts[i][1]
                if kind == "permute":
                    return _permute(x, orders[i])
                work = x.to(new_bases[i][has.index(True)].dtype)
                back = multiply_axes(work, all_bases[i], has, transpose=True)
                return multiply_axes(back, new_bases[i], has, transpose=False).to(x.dtype)

            inner_state = carry_for(gs, treedef)(inner, inner_state, move)
        new_state = InEigenbasisState(state.count + 1, unflatten(treedef, new_factors), unflatten(treedef, new_bases),
                                      inner_state)
        return unflatten(treedef, outs), new_state

    return GradientTransformation(init, update)
