"""A user's transform needs nothing but the optax contract, wherever it is put.

Each transform below is written the naive way optax users write them: an ``update`` with no
``inplace`` keyword (some without ``**extra_args``), returning the same tensor as update and
as state, returning its input, one tensor for two leaves, a plain-dict state, a Python
counter. Put at every position of the mission chain and of ``gx.adamw``'s chain, it must
give the numbers of a reference that runs each member on private copies (optax's
semantics written out in the test), on the pure path and under ``gx.Optimizer``, and must
never change its inputs.
"""

from __future__ import annotations

import copy
import inspect

import pytest
import torch

import gradtx as gx

STEPS = 6


def heavy_ball():
    """optax's ``trace`` as a user writes it: the new momentum is the update and the state."""
    def init(params):
        return gx.tree_map(torch.zeros_like, params)

    def update(updates, state, params=None):
        momentum = gx.tree_map(lambda m, u: 0.9 * m + u, state, updates)
        return momentum, momentum

    return gx.GradientTransformation(init, update)


def passthrough():
    """Returns its input and keeps it as its state."""
    def init(params):
        return {"last": gx.tree_map(torch.zeros_like, params)}

    def update(updates, state, params=None, **extra_args):
        return updates, {"last": updates}

    return gx.GradientTransformation(init, update)


def shared_leaf():
    """One tensor for the first two leaves (of equal shape): their mean."""
    def init(params):
        return ()

    def update(updates, state, params=None):
        leaves, treedef = torch.utils._pytree.tree_flatten(updates)  # a, b first (both functional and adapter)
        mean = (leaves[0] + leaves[1]) / 2
        return torch.utils._pytree.tree_unflatten([mean, mean, *leaves[2:]], treedef), state

    return gx.GradientTransformation(init, update)


def counted_scale():
    """A plain-dict state with a Python-number counter: scales by 1 / (1 + 0.1 t)."""
    def init(params):
        return {"count": 0}

    def update(updates, state, params=None):
        factor = 1.0 / (1.0 + 0.1 * state["count"])
        return gx.tree_map(lambda u: u * factor, updates), {"count": state["count"] + 1}

    return gx.GradientTransformation(init, update)


def keeps_params():
    """Needs params and an extra argument it names (``grad``): adds 0.01 * (p - grad)."""
    def init(params):
        return ()

    def update(updates, state, params=None, grad=None):
        return gx.tree_map(lambda u, p, g: u + 0.01 * (p - g), updates, params, grad), state

    return gx.GradientTransformation(init, update)


NAIVE = {"heavy_ball": heavy_ball, "passthrough": passthrough, "shared_leaf": shared_leaf,
         "counted_scale": counted_scale, "keeps_params": keeps_params}


def mission():
    return [gx.clip_value(10.0), gx.scale_by_adam(), gx.scale_by_lr(1e-2)]


def adamw_parts():
    return list(gx.adamw(1e-2, weight_decay=0.1).__dict__["parts"])


BASES = {"mission": mission, "adamw": adamw_parts}


def _params():
    gen = torch.Generator().manual_seed(0)
    return {"a": torch.randn(3, generator=gen, dtype=torch.float64),
            "b": torch.randn(3, generator=gen, dtype=torch.float64),
            "w": torch.randn(4, 3, generator=gen, dtype=torch.float64)}


def _grads(step, params):
    gen = torch.Generator().manual_seed(100 + step)
    return {k: torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in params.items()}


def _reference(members, steps):
    """optax's semantics, spelled out: every member gets private copies of everything."""
    params = _params()
    states = [m.init(copy.deepcopy(params)) for m in members]
    for step in range(steps):
        grads = _grads(step, params)
        updates = grads
        for i, m in enumerate(members):
            accepted = inspect.signature(m.update).parameters
            takes_grad = "grad" in accepted or any(p.kind is p.VAR_KEYWORD for p in accepted.values())
            kwargs = {"grad": copy.deepcopy(grads)} if takes_grad else {}
            updates, states[i] = m.update(copy.deepcopy(updates), copy.deepcopy(states[i]), copy.deepcopy(params),
                                          **kwargs)
        params = {k: params[k] + updates[k] for k in params}
    return params


def _snapshot(tree):
    return [(x, x.clone()) for x in gx.tree_leaves(tree) if isinstance(x, torch.Tensor)]


def _pure(tx, steps):
    params = _params()
    state = tx.init(params)
    for step in range(steps):
        grads = _grads(step, params)
        before = _snapshot((grads, params, state))
        updates, state = tx.update(grads, state, params, grad=grads)
        for x, value in before:
            assert torch.equal(x, value), "update changed one of its inputs"
        params = gx.apply_updates(params, updates)
    return params


def _adapter(tx, steps, fast):
    start = _params()
    names = list(start)
    params = [torch.nn.Parameter(start[k].clone()) for k in names]
    opt = gx.Optimizer(list(zip(names, params)), tx, fast=fast)
    for step in range(steps):
        current = {k: p.detach() for k, p in zip(names, params)}
        for p, g in zip(params, _grads(step, current).values()):
            p.grad = g
        opt.step()
    return {k: p.detach() for k, p in zip(names, params)}


def _cases():
    for base in BASES:
        for name in NAIVE:
            for position in range(len(BASES[base]()) + 1):
                yield pytest.param(base, name, position, id=f"{base}-{name}-at{position}")


@pytest.mark.parametrize("base,name,position", list(_cases()))
@pytest.mark.parametrize("path", ["pure", "adapter_fast", "adapter_generic"])
def test_naive_transform_anywhere(base, name, position, path):
    members = BASES[base]()
    members.insert(position, NAIVE[name]())
    expected = _reference(members, STEPS)
    tx = gx.chain(*members)
    if path == "pure":
        got = _pure(tx, STEPS)
    else:
        got = _adapter(tx, STEPS, fast=path == "adapter_fast")
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", list(NAIVE))
def test_naive_transform_alone_under_the_adapter(name):
    tx = gx.chain(NAIVE[name](), gx.scale_by_lr(0.1))
    expected = _reference([NAIVE[name](), gx.scale_by_lr(0.1)], STEPS)
    got = _adapter(tx, STEPS, fast=True)
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=1e-12, atol=1e-12)
    # and as the whole transform, not inside a chain
    if name != "keeps_params":
        alone = _adapter(NAIVE[name](), STEPS, fast=True)
        ref = _reference([NAIVE[name]()], STEPS)
        for k in ref:
            torch.testing.assert_close(alone[k], ref[k], rtol=1e-12, atol=1e-12)


def test_heavy_ball_matches_torch_sgd_momentum():
    """The issue's example: chain(heavy_ball, scale(0.5), scale_by_lr(1e-2)) is torch's SGD
    with momentum 0.9 and lr 5e-3, under the adapter's default path."""
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3).double()
    twin = copy.deepcopy(model)
    opt = gx.Optimizer(model.parameters(), gx.chain(heavy_ball(), gx.scale(0.5), gx.scale_by_lr(1e-2)))
    ref = torch.optim.SGD(twin.parameters(), lr=5e-3, momentum=0.9)
    x, y = torch.randn(16, 5, dtype=torch.float64), torch.randn(16, 3, dtype=torch.float64)
    for _ in range(30):
        for m, o in ((model, opt), (twin, ref)):
            o.zero_grad()
            ((m(x) - y) ** 2).sum().backward()
            o.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_user_transform_checkpoint_round_trip(tmp_path):
    """A plain-dict state with a Python counter survives state_dict / weights_only load."""
    tx = lambda: gx.chain(counted_scale(), heavy_ball(), gx.scale_by_lr(0.1))  # noqa: E731
    a = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))
    opt = gx.Optimizer([a], tx())
    for step in range(3):
        a.grad = torch.full((3,), float(step + 1), dtype=torch.float64)
        opt.step()
    torch.save(opt.state_dict(), tmp_path / "opt.pt")
    b = torch.nn.Parameter(a.detach().clone())
    resumed = gx.Optimizer([b], tx())
    resumed.load_state_dict(torch.load(tmp_path / "opt.pt", weights_only=True))
    for step in range(3, 6):
        for p, o in ((a, opt), (b, resumed)):
            p.grad = torch.full((3,), float(step + 1), dtype=torch.float64)
            o.step()
    torch.testing.assert_close(b, a, rtol=0, atol=0)
