"""Properties every registered transform and alias must have."""

from __future__ import annotations

import inspect

import pytest
import torch
from registry import ENTRIES, NOT_TRANSFORMS, Entry

import gradtx as gx

IDS = [e.name for e in ENTRIES]


def _params(dtype=torch.float32):
    gen = torch.Generator().manual_seed(1)
    return {"w": torch.randn(4, 3, generator=gen).to(dtype), "b": torch.randn(3, generator=gen).to(dtype),
            "s": torch.randn((), generator=gen).to(dtype)}


def _grads(params, seed=2):
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=gen).to(v.dtype) for k, v in params.items()}


def _quadratic_value(params):
    return sum((v.double() ** 2).sum() for v in params.values())


def _extra(entry: Entry, params):
    extra = {}
    if "value" in entry.needs:
        extra["value"] = _quadratic_value(params)
    if "value_fn" in entry.needs:
        extra["value_fn"] = _quadratic_value
    return extra


def _signature(tree):
    leaves = gx.tree_paths(tree)
    return [(path, tuple(x.shape), x.dtype) if isinstance(x, torch.Tensor) else (path, type(x)) for path, x in leaves]


def test_registry_is_complete():
    registered = {e.name for e in ENTRIES}
    public = {name for name in gx.__all__ if callable(getattr(gx, name)) and not name.startswith("tree_")
              and not inspect.isclass(getattr(gx, name)) and "schedule" not in name and name != "exponential_decay"}
    missing = public - registered - NOT_TRANSFORMS
    assert not missing, f"public transforms missing from tests/registry*.py: {sorted(missing)}"
    assert registered <= set(gx.__all__), f"registered but not public: {sorted(registered - set(gx.__all__))}"


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_update_is_pure(entry):
    tx = entry.build()
    params = _params()
    grads = _grads(params)
    state = tx.init(params)
    before = [(x.clone() if isinstance(x, torch.Tensor) else x) for x in
              gx.tree_leaves(params) + gx.tree_leaves(grads) + gx.tree_leaves(state)]
    tx.update(grads, state, params, **_extra(entry, params))
    after = gx.tree_leaves(params) + gx.tree_leaves(grads) + gx.tree_leaves(state)
    for a, b in zip(before, after):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b), "update mutated its inputs"


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=["f32", "f64", "bf16"])
def test_state_stable_and_dtype_kept(entry, dtype):
    if dtype in entry.skip.get("dtypes", ()):
        pytest.skip(entry.skip.get("why", "dtype not supported"))
    tx = entry.build()
    params = _params(dtype)
    state = tx.init(params)
    sig = _signature(state)
    for step in range(3):
        grads = _grads(params, seed=step)
        updates, state = tx.update(grads, state, params, **_extra(entry, params))
        assert _signature(state) == sig, f"state changed structure at step {step}"
        for k in grads:
            assert updates[k].dtype == grads[k].dtype and updates[k].shape == grads[k].shape
        params = gx.apply_updates(params, updates)


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_inplace_matches_pure(entry):
    tx = entry.build()
    params = _params(torch.float64)
    pure_state = tx.init(params)
    in_state = tx.init(params)
    p_pure, p_in = params, {k: v.clone() for k, v in params.items()}
    for step in range(4):
        grads = _grads(p_pure, seed=step)
        u_pure, pure_state = tx.update(grads, pure_state, p_pure, **_extra(entry, p_pure))
        u_in, in_state = tx.update({k: g.clone() for k, g in grads.items()}, in_state, p_in, inplace=True,
                                   **_extra(entry, p_in))
        p_pure = gx.apply_updates(p_pure, u_pure)
        p_in = gx.apply_updates(p_in, u_in, inplace=True)
        for k in params:
            torch.testing.assert_close(p_in[k], p_pure[k], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_accepts_unknown_extra_args(entry):
    tx = entry.build()
    params = _params()
    state = tx.init(params)
    updates, _ = tx.update(_grads(params), state, params, some_unknown_arg=3, **_extra(entry, params))
    assert set(updates) == set(params)


@pytest.mark.parametrize("entry", [e for e in ENTRIES if e.converges], ids=[e.name for e in ENTRIES if e.converges])
def test_descends_on_a_quadratic(entry):
    """200 steps on f(x) = sum x^2 reduce the loss (a full alias must reach near zero)."""
    tx = entry.build()
    params = _params(torch.float64)
    start = float(_quadratic_value(params))
    state = tx.init(params)
    for _ in range(200):
        grads = {k: 2 * v for k, v in params.items()}
        updates, state = tx.update(grads, state, params, **_extra(entry, params))
        params = gx.apply_updates(params, updates)
    end = float(_quadratic_value(params))
    assert end < 0.5 * start
    if entry.kind == "alias":
        assert end < 1e-2 * start


def _rosenbrock_value(params):
    """Chained Rosenbrock over all coordinates (a = 1, b = 10, scaled by 1/10), minimum 0 at
    x = 1: a curved narrow valley, unlike the quadratic."""
    x = torch.cat([params[k].double().reshape(-1) for k in sorted(params)])
    return (((1 - x[:-1]) ** 2).sum() + 10 * ((x[1:] - x[:-1] ** 2) ** 2).sum()) / 10


@pytest.mark.parametrize("entry", [e for e in ENTRIES if e.converges], ids=[e.name for e in ENTRIES if e.converges])
def test_descends_on_rosenbrock(entry):
    """1000 steps from x = 0 reduce the Rosenbrock value; a full alias reaches a tenth of it."""
    if "rosenbrock" in entry.skip:
        pytest.skip(entry.skip["rosenbrock"])
    tx = entry.build()
    params = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in _params().items()}
    start = float(_rosenbrock_value(params))
    state = tx.init(params)
    extra = {}
    for _ in range(1000):
        leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        value = _rosenbrock_value(leaves)
        grads = dict(zip(leaves, torch.autograd.grad(value, list(leaves.values()))))
        if "value" in entry.needs:
            extra["value"] = value.detach()
        if "value_fn" in entry.needs:
            extra["value_fn"] = _rosenbrock_value
        updates, state = tx.update(grads, state, params, **extra)
        params = gx.apply_updates(params, updates)
    end = float(_rosenbrock_value(params))
    assert end < 0.5 * start
    if entry.kind == "alias":
        assert end < 0.1 * start


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_works_through_the_adapter(entry):
    """gx.Optimizer gives the functional trajectory."""
    if entry.needs:
        pytest.skip("needs a closure; covered in the adapter tests")
    params = _params(torch.float64)
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    opt = gx.Optimizer(list(leaves.values()), entry.build())
    tx = entry.build()
    state = tx.init(params)
    for step in range(5):
        grads = _grads(params, seed=step)
        updates, state = tx.update(grads, state, params)
        params = gx.apply_updates(params, updates)
        for k, p in leaves.items():
            p.grad = grads[k].clone()
        opt.step()
        for k, p in leaves.items():
            torch.testing.assert_close(p.detach(), params[k], rtol=1e-12, atol=1e-14)
