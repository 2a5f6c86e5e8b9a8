"""The pure path reuses the chain's own temporaries: fewer allocations, same bits, no mutation."""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import pytest
import torch
from registry import ENTRIES, example_params, extra_args
from torch.utils._python_dispatch import TorchDispatchMode

import gradtx as gx
from gradtx import _owned

N = 1000  # elements of the "big" tensor whose allocations are counted


class CountFresh(TorchDispatchMode):
    """Records each op output of ``numel`` elements whose memory is none of the op's
    inputs': the full-size tensors allocated inside the block."""

    def __init__(self, numel: int):
        super().__init__()
        self.numel = numel
        self.fresh: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in gx.tree_leaves((args, kwargs))
                  if isinstance(t, torch.Tensor)}
        for t in gx.tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.numel() == self.numel \
                    and t.untyped_storage().data_ptr() not in inputs:
                self.fresh.append(func.__name__)
        return out


def _big(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(N, generator=gen)], [torch.randn(N, generator=gen)]


def _count(tx, apply=False):
    params, grads = _big()
    state = tx.init(params)
    with torch.no_grad():
        _, state = tx.update(grads, state, params)  # a first step outside the count
        with CountFresh(N) as mode:
            updates, state = tx.update(grads, state, params)
            if apply:
                gx.apply_updates(params, updates)
    return mode.fresh


def test_adamw_pure_allocates_only_what_it_must():
    # the new mu and nu and the update; apply_updates adds the new params
    assert len(_count(gx.adamw(1e-3, weight_decay=0.01))) == 3
    assert len(_count(gx.adamw(1e-3, weight_decay=0.01), apply=True)) == 4
    assert len(_count(gx.adam(1e-3))) == 3


@pytest.mark.parametrize("middle", [
    gx.identity(),
    gx.masked(gx.add_decayed_weights(0.1), lambda name, p: True),
    gx.chain(gx.scale(2.0), gx.clip_value(0.5)),
], ids=["identity", "masked", "nested_chain"])
def test_reuse_goes_through_small_members(middle):
    tx = gx.chain(gx.scale_by_adam(), middle, gx.scale_by_lr(1e-3))
    assert len(_count(tx)) == 3


def test_reuse_after_a_first_allocating_member():
    # clip_value allocates (the caller's grads are not its to write), Adam allocates its
    # moments and direction, scale_by_lr writes into that direction
    tx = gx.chain(gx.clip_value(10.0), gx.scale_by_adam(), gx.scale_by_lr(1e-3))
    assert len(_count(tx)) == 4


def test_no_reuse_of_a_state_buffer():
    # trace returns its new state buffer as the update: scale_by_lr must allocate
    fresh = _count(gx.chain(gx.scale(1.0), gx.trace(0.9), gx.scale_by_lr(0.1)))
    assert len(fresh) == 3


# --- same bits as the members called one by one, inputs never touched ---------------------


class KeepState(NamedTuple):
    last: list


def keep_last():
    """Keeps the updates it returns in its state (unchanged): they are not the chain's."""
    def init(params):
        return KeepState([torch.zeros_like(p) for p in params])

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        return updates, KeepState(updates)

    return gx.GradientTransformation(init, update)


CONSTANT = [torch.full((N,), 0.5)]
_HOLDER = torch.nn.Parameter(torch.zeros(N))
_HOLDER.grad = torch.full((N,), 0.25)


class BaseState(NamedTuple):
    base: list


def view_of_state():
    """Returns views into buffers it keeps in its state: the memory is shared."""
    def init(params):
        return BaseState([torch.zeros(2 * p.numel()) for p in params])

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        bases = [torch.cat([u.reshape(-1), u.reshape(-1)]) for u in updates]
        return [b[:u.numel()].view_as(u) for b, u in zip(bases, updates)], BaseState(bases)

    return gx.GradientTransformation(init, update)


def _shared_twice():
    """Returns the same fresh tensor for every leaf: writing it once per leaf is wrong."""
    return gx.stateless(lambda u, p: [u[0] * 2.0] * len(u))


def _cpp_held():
    """Returns a tensor a parameter holds as its ``.grad`` (a C++ reference)."""
    return gx.stateless(lambda u, p: [_HOLDER.grad] + [x * 1.0 for x in u[1:]])


@contextlib.contextmanager
def no_reuse():
    """The chain's allocating form, as it was before temporaries were reused."""
    enabled = _owned.enabled
    _owned.enabled = lambda: False
    try:
        yield
    finally:
        _owned.enabled = enabled


def _chains():
    adam, lr, wd = gx.scale_by_adam, gx.scale_by_lr, gx.add_decayed_weights
    return {
        "adamw": [adam(), wd(0.1), lr(1e-2)],
        "adamw_masked": [adam(), wd(0.1, mask=lambda p: [True, False]), lr(1e-2)],
        "identity": [adam(), gx.identity(), lr(1e-2)],
        "identity_first": [gx.identity(), gx.scale(2.0), lr(1e-2)],
        "masked": [adam(), gx.masked(gx.scale(3.0), lambda name, p: name == "0"), lr(1e-2)],
        "partition": [adam(), gx.partition({"a": gx.scale(2.0), "b": gx.identity()}, ["a", "b"]), lr(1e-2)],
        "freeze": [adam(), gx.freeze(lambda name, p: name == "1"), gx.scale(2.0)],
        "trace": [gx.scale(1.0), gx.trace(0.9), lr(1e-2), gx.trace(0.5), gx.scale(2.0)],
        "keep_last": [adam(), gx.scale(2.0), keep_last(), gx.scale(3.0)],
        "closure_constant": [adam(), gx.stateless(lambda u, p: CONSTANT * len(u)), gx.scale(2.0)],
        "grad_held_in_cpp": [adam(), _cpp_held(), gx.scale(2.0)],
        "view_of_state": [adam(), gx.scale(2.0), view_of_state(), gx.scale(2.0), lr(1e-2)],
        "shared_leaf": [adam(), _shared_twice(), gx.scale(2.0)],
        "schedule": [adam(), gx.scale_by_schedule(lambda t: 1.0 / (t + 1)), gx.clip_value(0.5), gx.scale_by_sign()],
        "clip_rms": [gx.scale_by_rms(), gx.clip_by_global_norm(1.0), lr(1e-2)],
        "nested": [adam(), gx.chain(wd(0.1), gx.identity(), lr(1e-2)), gx.scale(-1.0)],
    }


CHAINS = _chains()


def _snapshot(*trees):
    return [(x, x.clone(), x._version) for x in gx.tree_leaves(trees) if isinstance(x, torch.Tensor)]


def _assert_untouched(snapshot):
    for x, value, version in snapshot:
        assert x._version == version, "an input was written into"
        assert torch.equal(x, value), "an input changed"


def _assert_equal_trees(a, b):
    assert [p for p, _ in gx.tree_paths(a)] == [p for p, _ in gx.tree_paths(b)]
    for (path, x), (_, y) in zip(gx.tree_paths(a), gx.tree_paths(b)):
        if isinstance(x, torch.Tensor):
            assert x.dtype == y.dtype and torch.equal(x, y), path
        else:
            assert x == y, path


@pytest.mark.parametrize("name", list(CHAINS))
@pytest.mark.parametrize("form", ["chain", "named_chain"])
def test_same_bits_as_members_one_by_one_and_pure(name, form):
    members = CHAINS[name]
    tx = gx.chain(*members) if form == "chain" else gx.named_chain(*((str(i), m) for i, m in enumerate(members)))
    gen = torch.Generator().manual_seed(3)
    params = [torch.randn(N, generator=gen), torch.randn(N, generator=gen)]
    state = tx.init(params)
    ref_states = [m.init(params) for m in members]
    keep = _snapshot(CONSTANT, _HOLDER.grad)
    for _ in range(3):
        grads = [torch.randn(N, generator=gen), torch.randn(N, generator=gen)]
        extra = {"grad": grads}
        before = _snapshot(grads, state, params, extra)
        with torch.no_grad():
            updates, state = tx.update(grads, state, params, **extra)
            _assert_untouched(before)
            ref = grads
            with no_reuse():
                for i, m in enumerate(members):
                    ref, ref_states[i] = m.update(ref, ref_states[i], params, **extra)
        _assert_equal_trees(updates, ref)
        got_states = list(state) if form == "chain" else [state[str(i)] for i in range(len(members))]
        _assert_equal_trees(got_states, ref_states)
        _assert_untouched(keep)
        for u in updates:
            assert all(u.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()
                       for x in grads + params), "an update aliases an input"
        params = gx.apply_updates(params, updates)
        # the previous step's results, still held by the caller, are inputs now
        keep += _snapshot(updates, state)


def test_small_state_keeps_the_callers_tensors():
    """scale_by_lr runs on a private copy of its state; unchanged, the state handed back
    holds the caller's ``lr`` tensor itself, as on the allocating path."""
    lr = torch.tensor(0.1)
    tx = gx.chain(gx.scale_by_adam(), gx.scale_by_lr(lr), gx.scale_by_schedule(lambda t: 2.0 ** -t))
    params, grads = _big()
    state = tx.init(params)
    with torch.no_grad():
        _, new_state = tx.update(grads, state, params)
    assert new_state[1] is state[1]
    assert int(new_state[2].count) == 1 and int(state[2].count) == 0


def test_autograd_keeps_the_allocating_form():
    """Recording through params (a hypergradient, say): nothing is written in place, and
    backward sees every temporary as it was."""
    params, grads = _big()
    params = [p.requires_grad_(True) for p in params]
    tx = gx.adamw(1e-2, weight_decay=0.1)
    state = tx.init(params)
    updates, _ = tx.update(grads, state, params)
    (g,) = torch.autograd.grad(updates[0].sum(), params[0])
    torch.testing.assert_close(g, torch.full_like(g, -1e-2 * 0.1))


def test_lr_requiring_grad_keeps_the_allocating_form():
    lr = torch.tensor(0.1, requires_grad=True)
    tx = gx.chain(gx.scale_by_adam(), gx.scale_by_lr(lr), gx.scale(2.0))
    params, grads = _big()
    state = tx.init(params)
    updates, _ = tx.update(grads, state, params)
    (g,) = torch.autograd.grad(updates[0].sum(), lr)
    ref, _ = gx.scale_by_adam().update(grads, gx.scale_by_adam().init(params))
    torch.testing.assert_close(g, -2.0 * ref[0].sum())


def test_under_function_transforms_nothing_is_owned():
    seen = []

    def probe(x):
        seen.append(_owned.enabled())
        return x

    torch.func.vmap(probe)(torch.zeros(2))
    torch.func.grad(lambda x: probe(x).sum())(torch.zeros(2))
    assert seen == [False, False]
    assert _owned.enabled()


def test_reuse_needs_no_reference_counts():
    """Ownership is known by construction: a chain of built-ins reuses its temporaries even
    while the caller holds extra references to everything (which a reference count would
    read as "shared"), and never reuses what an undeclared member returned."""
    tx = gx.chain(gx.scale_by_adam(), gx.scale_by_lr(1e-3))
    assert len(_count(tx)) == 3
    user = gx.GradientTransformation(lambda p: (), lambda u, s, p=None: ([x * 2.0 for x in u], s))
    # adam's moments and direction, the user's product, then scale_by_lr must allocate too
    assert len(_count(gx.chain(gx.scale_by_adam(), user, gx.scale_by_lr(1e-3)))) == 5


# --- every registered transform: through a chain that owns its input, the same bits --------


@pytest.mark.parametrize("entry", ENTRIES, ids=[e.name for e in ENTRIES])
def test_registry_same_bits_after_an_allocating_member(entry):
    """``chain(scale(1.0), tx)``: ``scale`` hands ``tx`` fresh copies of the grads, so a
    small-state ``tx`` runs in place on them; the result must be the allocating one, bit
    for bit (float32, bf16 grads too), and the inputs untouched."""
    for dtype in (torch.float32, torch.bfloat16):
        if dtype in entry.skip.get("dtypes", ()):
            continue
        tx = entry.build()
        wrapped = gx.chain(gx.scale(1.0), tx)
        params = example_params()
        state, ref_state = wrapped.init(params), tx.init(params)
        for step in range(3):
            gen = torch.Generator().manual_seed(10 + step)
            grads = {k: torch.randn(v.shape, generator=gen).to(dtype) for k, v in params.items()}
            extra = extra_args(entry, params)
            before = _snapshot(grads, state, params)
            with torch.no_grad():
                updates, state = wrapped.update(grads, state, params, **extra)
                with no_reuse():
                    ref, ref_state = tx.update({k: g.clone() for k, g in grads.items()}, ref_state, params, **extra)
            _assert_untouched(before)
            _assert_equal_trees(updates, ref)
            _assert_equal_trees(state[1], ref_state)
            params = gx.apply_updates(params, updates)
