"""``torch.compile`` around ``gx.Optimizer``: ``torch.compile(opt.step)`` and a compiled training
step (forward, backward and ``opt.step()`` in one compiled function) on every path of the
adapter (fused kernels, ``fast=False``, ``compile=True``), with schedulers moving the learning
rate and a momentum (under ``compile=True`` too, whose graph reads them as tensors): no recompile
after the first steps, and the eager numbers.

Recompiles are counted by dynamo itself: after warm-up ``torch._dynamo.config.error_on_recompile``
makes any recompile raise, and ``counters["stats"]["unique_graphs"]`` must not grow. The
reference is the same run uncompiled, and for Adam ``torch.optim.AdamW`` (so a step that lost
a scheduler's value would fail both ways: issue 14 found lost ``lr`` writes under Inductor).
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.utils import counters

import gradtx as gx

STEPS = 8
WARMUP = 2  # the first calls compile (the first sees no gradients, the second does)


def _model(dtype=torch.float32):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).to(dtype)


def _data(dtype=torch.float32):
    gen = torch.Generator().manual_seed(1)
    return torch.randn(16, 4, generator=gen, dtype=dtype), torch.randn(16, 2, generator=gen, dtype=dtype)


def _schedule(opt, momentum_key):
    """OneCycleLR: the learning rate moves every step, and (cycle_momentum) Adam's b1 or SGD's
    momentum with it, as torch's schedulers drive torch's optimizers."""
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=STEPS + 2,
                                               cycle_momentum=momentum_key is not None,
                                               base_momentum=0.8, max_momentum=0.95)


# (id, chain factory, adapter options, the param_groups key a momentum scheduler moves, torch.optim twin)
PATHS = [
    ("adamw-fused", lambda: gx.adamw(0.01, weight_decay=0.1), {}, "b1",
     lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1)),
    ("adamw-generic", lambda: gx.adamw(0.01, weight_decay=0.1), {"fast": False}, "b1",
     lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1)),
    ("sgd-fused", lambda: gx.sgd(0.01, momentum=0.9), {}, "momentum",
     lambda ps: torch.optim.SGD(ps, lr=0.01, momentum=0.9)),
    ("sgd-generic", lambda: gx.sgd(0.01, momentum=0.9), {"fast": False}, "momentum",
     lambda ps: torch.optim.SGD(ps, lr=0.01, momentum=0.9)),
    # compile=True: the learning rate, b1 and the momentum are tensor inputs of its graph
    ("adamw-compiled", lambda: gx.adamw(0.01, weight_decay=0.1), {"compile": True}, "b1",
     lambda ps: torch.optim.AdamW(ps, lr=0.01, weight_decay=0.1)),
    ("sgd-compiled", lambda: gx.sgd(0.01, momentum=0.9, nesterov=True), {"compile": True}, "momentum",
     lambda ps: torch.optim.SGD(ps, lr=0.01, momentum=0.9, nesterov=True)),
]


def _train(make_opt, momentum_key, how, dtype=torch.float32, steps=STEPS):
    """Parameters after ``steps`` scheduled steps; ``how`` is "eager", "step" (torch.compile of
    opt.step) or "train" (one compiled function: forward, backward, step)."""
    model = _model(dtype)
    x, y = _data(dtype)
    opt = make_opt(list(model.parameters()))
    sched = _schedule(opt, momentum_key)

    def train_step():
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
        return loss

    def eager_step():
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()

    if how == "eager":
        run = eager_step
    elif how == "step":
        compiled_step = torch.compile(opt.step, backend="inductor")

        def run():
            opt.zero_grad()
            ((model(x) - y) ** 2).mean().backward()
            compiled_step()
    else:
        run = torch.compile(train_step, backend="inductor")
    torch._dynamo.reset()
    seen = []
    for i in range(steps):
        if i == WARMUP:
            graphs = counters["stats"]["unique_graphs"]
            with torch._dynamo.config.patch(error_on_recompile=True):
                for _ in range(steps - WARMUP):
                    run()
                    seen.append(opt.param_groups[0]["lr"])
                    sched.step()
            assert counters["stats"]["unique_graphs"] == graphs, "a new graph after warm-up"
            break
        run()
        seen.append(opt.param_groups[0]["lr"])
        sched.step()
    assert len(set(seen)) == len(seen), "the scheduler did not move the learning rate every step"
    if momentum_key is not None and hasattr(opt, "tx"):
        assert opt.param_groups[0][momentum_key] != 0.9  # the scheduler moved the momentum too
    return [p.detach().clone() for p in model.parameters()]


def _gx(factory, options):
    return lambda ps: gx.Optimizer(ps, factory(), **options)


def _compare(got, want, rtol=1e-6, atol=1e-7):
    for i, (a, b) in enumerate(zip(got, want)):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m, i=i: f"param {i}: {m}")


def _check(path_id, how):
    _, factory, options, key, twin = next(p for p in PATHS if p[0] == path_id)
    eager = _train(_gx(factory, options), key, "eager")
    compiled = _train(_gx(factory, options), key, how)
    _compare(compiled, eager)
    # the same schedule drives torch.optim's twin to the same parameters
    _compare(eager, _train(twin, key, "eager"), rtol=1e-5, atol=1e-6)
    moved = _train(_gx(factory, options), key, "eager", steps=1)
    assert max(float((a - b).abs().max()) for a, b in zip(eager, moved)) > 1e-3  # not vacuous


def test_compiled_opt_step_on_the_default_path_with_a_scheduler():
    _check("adamw-fused", "step")


@pytest.mark.slow
@pytest.mark.parametrize("how", ["step", "train"])
@pytest.mark.parametrize("path_id", [p[0] for p in PATHS])
def test_compiled_step_on_every_path(path_id, how):
    if (path_id, how) == ("adamw-fused", "step"):
        pytest.skip("the quick test above")
    _check(path_id, how)


def test_a_closure_under_a_compiled_step():
    """``torch.compile(opt.step)(closure)``: the closure runs (with grad) and its loss is returned."""
    model = _model()
    x, y = _data()
    opt = gx.Optimizer(model.parameters(), gx.adam(0.01))
    ref = _model()
    ref_opt = torch.optim.Adam(ref.parameters(), lr=0.01)

    def closure(m, o):
        def run():
            o.zero_grad()
            loss = ((m(x) - y) ** 2).mean()
            loss.backward()
            return loss
        return run

    step = torch.compile(opt.step, backend="eager")
    for _ in range(3):
        loss = step(closure(model, opt))
        ref_loss = ref_opt.step(closure(ref, ref_opt))
        torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-7)
    _compare([p.detach() for p in model.parameters()], [p.detach() for p in ref.parameters()], 1e-5, 1e-6)


@pytest.mark.parametrize("path_id", ["adamw-compiled", pytest.param("sgd-compiled", marks=pytest.mark.slow)])
def test_compile_true_cycles_the_momentum_without_recompiling(path_id):
    """compile=True under OneCycleLR(cycle_momentum=True): the scheduler writes ``betas`` (or
    ``momentum``) and ``lr`` every step, the graph reads them as tensors (no recompile after
    warm-up, checked in ``_train``), and the parameters are the eager chain's, whose rebuilt
    chain takes each value as a float, and torch.optim's."""
    _, factory, options, key, twin = next(p for p in PATHS if p[0] == path_id)
    compiled = _train(_gx(factory, options), key, "eager")
    eager = _train(_gx(factory, {"fast": False}), key, "eager")
    _compare(compiled, eager)
    _compare(compiled, _train(twin, key, "eager"), rtol=1e-5, atol=1e-6)
    fixed = _train(_gx(factory, {"fast": False}), None, "eager")  # the same run without momentum cycling
    assert max(float((a - b).abs().max()) for a, b in zip(compiled, fixed)) > 1e-4  # the momentum took effect


def test_compile_true_per_group_momentum():
    """Two param groups with their own ``betas`` under compile=True: each group's step reads its
    own values (written into the graph's tensors before its call), as the eager path does."""
    runs = []
    for options in ({"compile": True}, {"fast": False}):
        model = _model()
        x, y = _data()
        opt = gx.Optimizer([{"params": model[0].parameters(), "betas": (0.5, 0.9)},
                            {"params": model[2].parameters()}], gx.adam(0.01), **options)
        for _ in range(4):
            opt.zero_grad()
            ((model(x) - y) ** 2).mean().backward()
            opt.step()
        runs.append([p.detach().clone() for p in model.parameters()])
    _compare(runs[0], runs[1])
