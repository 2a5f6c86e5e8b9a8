"""Issue 9, numerics: mixed dtypes (3, 14), float64 everywhere (5), complex parameters (6),
``requires_grad`` hyperparameters (12), 0-size leaves (13).

The registry-wide forms of these properties are in ``test_properties.py``
(``test_mixed_dtype_tree_matches_each_dtype_alone``, ``test_state_stable_and_dtype_kept[mixed-*]``,
...); this file holds the cases the issue names, each against a reference written here.
"""

from __future__ import annotations

import pytest
import torch

import gradtx as gx

# --- 3. mixed dtypes in one tree / one param group ----------------------------------------------


def _two_dtype_run(make, fast: bool, together: bool) -> list[torch.Tensor]:
    """A bfloat16 matrix and a float32 vector, five steps: in one param group, or each in an
    optimizer of its own."""
    gen = torch.Generator().manual_seed(0)
    values = [torch.randn(5, 4, generator=gen).to(torch.bfloat16), torch.randn(7, generator=gen)]
    ps = [torch.nn.Parameter(v.clone()) for v in values]
    opts = [gx.Optimizer(ps, make(), fast=fast)] if together else [gx.Optimizer([p], make(), fast=fast) for p in ps]
    for t in range(5):
        g = torch.Generator().manual_seed(10 + t)
        for p in ps:
            p.grad = torch.randn(p.shape, generator=g).to(p.dtype)
        for opt in opts:
            opt.step()
    return [p.detach() for p in ps]


@pytest.mark.parametrize("fast", [False, True], ids=["generic", "fast"])
@pytest.mark.parametrize("name", ["lion", "adam", "lamb", "nadam", "adabelief", "rmsprop"])
def test_param_group_mixing_bf16_and_f32_steps_each_at_its_own_precision(name, fast):
    """A group holding a bfloat16 and a float32 parameter gives each the numbers it gets alone
    (the float32 one was stepped at bfloat16 precision: lion moved ~1e-4 off, adam ~6e-5)."""
    make = {"lion": lambda: gx.lion(0.01), "adam": lambda: gx.adam(0.01), "lamb": lambda: gx.lamb(0.01),
            "nadam": lambda: gx.nadam(0.01), "adabelief": lambda: gx.adabelief(0.01),
            "rmsprop": lambda: gx.rmsprop(0.01, momentum=0.9)}[name]
    together, alone = _two_dtype_run(make, fast, True), _two_dtype_run(make, fast, False)
    for a, b in zip(together, alone):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["trace", "ema", "sgd", "lion", "rmsprop", "adafactor", "lars", "signum",
                                  "lookahead", "partition"])
def test_functional_updates_keep_each_leafs_dtype(name):
    """The entries the issue lists returned every update in the first leaf's dtype."""
    tx = {"trace": lambda: gx.trace(0.9), "ema": lambda: gx.ema(0.9), "sgd": lambda: gx.sgd(0.1, momentum=0.9),
          "lion": lambda: gx.lion(0.01), "rmsprop": lambda: gx.rmsprop(0.01, momentum=0.5),
          "adafactor": lambda: gx.adafactor(0.01, min_dim_size_to_factor=2, momentum=0.5),
          "lars": lambda: gx.lars(0.1), "signum": lambda: gx.signum(0.01),
          "lookahead": lambda: gx.lookahead(gx.sgd(0.1, momentum=0.9), sync_period=1, slow_step_size=0.5),
          "partition": lambda: gx.partition({"a": gx.adam(0.1), "s": gx.sgd(0.1, momentum=0.9)},
                                            lambda name, p: "a" if p.dim() > 1 else "s")}[name]()
    params = {"w": torch.ones(3, 2, dtype=torch.bfloat16), "b": torch.ones(2, dtype=torch.float32),
              "s": torch.ones((), dtype=torch.float64)}
    state = tx.init(params)
    for _ in range(2):
        grads = {k: torch.full_like(p, 0.3) for k, p in params.items()}
        updates, state = tx.update(grads, state, params)
        assert {k: u.dtype for k, u in updates.items()} == {k: p.dtype for k, p in params.items()}
        params = gx.apply_updates(params, updates)


# --- 14. apply_every on float16 and bfloat16 leaves -----------------------------------------------


def test_apply_every_keeps_a_bf16_accumulator_beside_a_f16_one():
    """The bfloat16 accumulator turned float32 at step 2 (added to the float16 leaf's dtype);
    the sums it emits are the sums of the updates, in each leaf's dtype."""
    tx = gx.apply_every(3)
    params = {"h": torch.zeros(4, dtype=torch.float16), "b": torch.zeros(4, dtype=torch.bfloat16)}
    state = tx.init(params)
    dtypes = {k: a.dtype for k, a in state.grad_acc.items()}
    total = {k: torch.zeros(4, dtype=torch.float64) for k in params}
    for step in range(6):
        grads = {k: torch.full((4,), 0.25 * (step + 1), dtype=p.dtype) for k, p in params.items()}
        updates, state = tx.update(grads, state, params)
        assert {k: a.dtype for k, a in state.grad_acc.items()} == dtypes, f"step {step}"
        for k, g in grads.items():
            total[k] += g.double()
            assert updates[k].dtype == g.dtype
            if step % 3 == 2:
                torch.testing.assert_close(updates[k].double(), total[k], rtol=0, atol=0)
                total[k].zero_()
            else:
                assert torch.count_nonzero(updates[k]) == 0


# --- 12. hyperparameters as requires_grad 0-dim tensors -------------------------------------------


def _adam_loss(b1, *, b2=0.999, eps=1e-8) -> torch.Tensor:
    """``sum p^2`` after three steps of ``gx.adam(0.1, b1, b2, eps)`` from fixed params and
    gradients, float64."""
    gen = torch.Generator().manual_seed(0)
    params = {"w": torch.randn(4, 3, generator=gen, dtype=torch.float64),
              "b": torch.randn(3, generator=gen, dtype=torch.float64)}
    grads = [{k: torch.randn(v.shape, generator=gen, dtype=torch.float64) for k, v in params.items()}
             for _ in range(3)]
    tx = gx.adam(0.1, b1=b1, b2=b2, eps=eps)
    state = tx.init(params)
    for g in grads:
        updates, state = tx.update(g, state, params)
        params = gx.apply_updates(params, updates)
    return sum((p ** 2).sum() for p in params.values())


def _central_difference(fn, x: float, delta: float = 1e-6) -> float:
    with torch.no_grad():
        hi = fn(torch.tensor(x + delta, dtype=torch.float64))
        lo = fn(torch.tensor(x - delta, dtype=torch.float64))
    return float((hi - lo) / (2 * delta))


def test_hypergradient_through_b1_by_torch_func_grad_matches_finite_differences():
    grad = torch.func.grad(_adam_loss)(torch.tensor(0.8, dtype=torch.float64))
    torch.testing.assert_close(float(grad), _central_difference(_adam_loss, 0.8), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", ["b1", "b2", "eps"])
def test_hypergradient_through_adam_hyperparameters_by_autograd_matches_finite_differences(name):
    """``update`` failed with a raw ``_foreach_*`` TypeError for any requires_grad
    hyperparameter but ``lr``."""
    value = {"b1": 0.8, "b2": 0.99, "eps": 1e-3}[name]

    def loss(x):
        kwargs = {"b1": 0.9, name: x}
        return _adam_loss(**kwargs)

    hp = torch.tensor(value, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(loss(hp), hp)
    torch.testing.assert_close(float(grad), _central_difference(loss, value, 1e-7 if name == "eps" else 1e-6),
                               rtol=1e-5, atol=1e-9)
