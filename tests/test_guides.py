"""The guides' code runs, and the Adam written at each level of docs/guides/writing_transforms.md
is Adam: equal to ``gx.adam`` and ``torch.optim.Adam`` to float64 round-off over 50 steps,
functionally and through ``gx.Optimizer`` with an LR scheduler, two param groups and a
``torch.save``/``torch.load(weights_only=True)`` checkpoint round trip midway."""

from __future__ import annotations

import io
import linecache
import pathlib
import re
import sys
import types

import pytest
import torch
from conftest import CountingBackend, MLPProblem

import gradtx as gx

GUIDE = pathlib.Path(__file__).parent.parent / "docs" / "guides" / "writing_transforms.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```", GUIDE.read_text(), re.S | re.M)
ADAMS = ["adam_per_tensor", "adam_multi_tensor", "adam_full_control"]
STEPS = 50
LR, B1, B2, EPS = 0.05, 0.8, 0.95, 1e-6  # not the defaults, so every argument must reach the rule
TOL = {"rtol": 1e-12, "atol": 1e-14}  # float64 round-off: the rules differ in the order of operations


def _run_block(index: int) -> dict:
    filename = f"<{GUIDE.name} block {index}>"
    # registered so that a failure's traceback shows the guide's lines
    linecache.cache[filename] = (len(BLOCKS[index]), None, BLOCKS[index].splitlines(True), filename)
    # a real module: torch.compile looks a function's globals up by module name
    module = types.ModuleType(f"guide_block_{index}")
    sys.modules[module.__name__] = module
    exec(compile(BLOCKS[index], filename, "exec"), module.__dict__)  # noqa: S102 - the guide's code
    return module.__dict__


_DEFINED: dict[str, object] = {}


def _adam(name: str):
    """The constructor ``name`` as the guide defines it (each defined in exactly one block)."""
    if name not in _DEFINED:
        found = [i for i, block in enumerate(BLOCKS) if re.search(rf"^def {name}\(", block, re.M)]
        assert len(found) == 1, f"{name} is defined in blocks {found}, expected one"
        _DEFINED[name] = _run_block(found[0])[name]
    return _DEFINED[name]


def test_the_guide_has_its_blocks():
    assert len(BLOCKS) >= 5
    for name in ADAMS:
        _adam(name)


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_every_block_runs(index):
    """Each block is a complete program (its own imports), and its asserts hold."""
    _run_block(index)


def _grads(params: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
    # depends on the parameters, so a wrong update changes every later gradient
    return {k: torch.sin(3 * v + step) + 0.1 * v for k, v in params.items()}


@pytest.mark.parametrize("name", ADAMS)
def test_adam_matches_gx_adam_functionally(name):
    gen = torch.Generator().manual_seed(0)
    params0 = {"w": torch.randn(4, 3, generator=gen, dtype=torch.float64),
               "b": torch.randn(3, generator=gen, dtype=torch.float64),
               "s": torch.randn((), generator=gen, dtype=torch.float64)}
    mine, ref = _adam(name)(lr=LR, b1=B1, b2=B2, eps=EPS), gx.adam(LR, b1=B1, b2=B2, eps=EPS)
    p_mine, p_ref = dict(params0), dict(params0)
    s_mine, s_ref = mine.init(p_mine), ref.init(p_ref)
    for step in range(STEPS):
        grads = _grads(p_mine, step)
        kept = {k: g.clone() for k, g in grads.items()}
        u_mine, s_mine = mine.update(grads, s_mine, p_mine)
        for k in grads:
            assert torch.equal(grads[k], kept[k]), "the guide's update wrote into its input"
        u_ref, s_ref = ref.update(_grads(p_ref, step), s_ref, p_ref)
        p_mine, p_ref = gx.apply_updates(p_mine, u_mine), gx.apply_updates(p_ref, u_ref)
        for k in params0:
            torch.testing.assert_close(p_mine[k], p_ref[k], **TOL, msg=lambda m, k=k, s=step: f"{k} step {s}: {m}")


def _groups(params: list[torch.Tensor]) -> list[dict]:
    # the usual two groups; the second with its own learning rate
    return [{"params": params[:2]}, {"params": params[2:], "lr": LR / 5}]


def _step(opt, sched, params, problem, step):
    opt.zero_grad()
    problem.loss(dict(zip(problem.params0, params)), step).backward()
    opt.step()
    sched.step()


def _scheduler(opt):
    return torch.optim.lr_scheduler.StepLR(opt, step_size=10, gamma=0.5)


def _torch_adam_trajectory(problem) -> list[torch.Tensor]:
    params = [v.clone().requires_grad_(True) for v in problem.params0.values()]
    opt = torch.optim.Adam(_groups(params), lr=LR, betas=(B1, B2), eps=EPS)
    sched = _scheduler(opt)
    for step in range(STEPS):
        _step(opt, sched, params, problem, step)
    return [p.detach() for p in params]


def _gx_trajectory(build, problem, fast: bool = True) -> tuple[list[torch.Tensor], gx.Optimizer]:
    """50 steps under gx.Optimizer, the optimizer and scheduler rebuilt from a checkpoint
    (torch.save, then torch.load with weights_only=True) after 25."""
    params = [v.clone().requires_grad_(True) for v in problem.params0.values()]
    opt = gx.Optimizer(_groups(params), build(), fast=fast)
    sched = _scheduler(opt)
    for step in range(STEPS // 2):
        _step(opt, sched, params, problem, step)
    buffer = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "sched": sched.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)
    params = [p.detach().clone().requires_grad_(True) for p in params]
    opt = gx.Optimizer(_groups(params), build(), fast=fast)
    opt.load_state_dict(checkpoint["opt"])
    sched = _scheduler(opt)
    sched.load_state_dict(checkpoint["sched"])
    for step in range(STEPS // 2, STEPS):
        _step(opt, sched, params, problem, step)
    return [p.detach() for p in params], opt


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "generic"])
@pytest.mark.parametrize("name", ADAMS)
def test_adam_through_the_optimizer_with_a_checkpoint(name, fast):
    """The guide's Adam under gx.Optimizer equals torch.optim.Adam and gx.adam under the same
    groups, scheduler and checkpoint: its ``lr`` is a group key the scheduler drives."""
    problem = MLPProblem()
    want = _torch_adam_trajectory(problem)
    got, opt = _gx_trajectory(lambda: _adam(name)(lr=LR, b1=B1, b2=B2, eps=EPS), problem, fast)
    builtin, _ = _gx_trajectory(lambda: gx.adam(LR, b1=B1, b2=B2, eps=EPS), problem, fast)
    for i, (g, b, w) in enumerate(zip(got, builtin, want)):
        torch.testing.assert_close(b, w, **TOL, msg=lambda m, i=i: f"gx.adam param {i}: {m}")
        torch.testing.assert_close(g, w, **TOL, msg=lambda m, i=i: f"{name} param {i}: {m}")
    assert [group["lr"] for group in opt.param_groups] == pytest.approx([LR / 32, LR / 160])
    # per-parameter state is filed under each parameter, shaped like it
    for group in opt.param_groups:
        for p in group["params"]:
            entries = opt.state[p]
            assert len(entries) == 2, entries.keys()  # mu and nu
            assert all(t.shape == p.shape for t in entries.values())


@pytest.mark.parametrize("name", ADAMS)
def test_adam_is_declared_elementwise_and_compiles(name):
    """``@gx.transform(elementwise=True)`` admits the guide's Adam to ``compile=True``, one graph
    for the whole run, with the numbers of the eager path."""
    build = _adam(name)
    assert gx.is_elementwise(build())
    problem = MLPProblem()
    runs = []
    backend = CountingBackend()
    for compile_arg in ({"backend": backend}, False):
        params = [v.clone().requires_grad_(True) for v in problem.params0.values()]
        opt = gx.Optimizer(params, build(lr=LR), compile=compile_arg, fast=False)
        for step in range(5):
            opt.zero_grad()
            problem.loss(dict(zip(problem.params0, params)), step).backward()
            opt.step()
        runs.append([p.detach() for p in params])
    for got, want in zip(*runs):
        torch.testing.assert_close(got, want, **TOL)
    assert backend.graphs == 1


def test_reprs_and_declarations_are_as_the_guide_says():
    assert repr(_adam("adam_per_tensor")(lr=0.01)) == "adam_per_tensor(lr=0.01)"
    assert repr(_adam("adam_multi_tensor")(lr=0.01)) == "adam_multi_tensor(lr=0.01)"
    assert gx.supports_inplace(_adam("adam_multi_tensor")())
    assert not gx.supports_inplace(_adam("adam_per_tensor")())
    assert not gx.supports_inplace(_adam("adam_full_control")())


def test_multi_tensor_adam_in_place_matches_pure_and_pure_writes_nothing():
    """The level-2 Adam keeps the in-place promise: with ``inplace=True`` it gives the pure
    numbers, with ``inplace=False`` it leaves its state and updates as they were."""
    tx = _adam("adam_multi_tensor")(lr=LR, b1=B1, b2=B2, eps=EPS)
    gen = torch.Generator().manual_seed(3)
    params = {"w": torch.randn(5, 2, generator=gen, dtype=torch.float64),
              "b": torch.randn(2, generator=gen, dtype=torch.float64)}
    pure, inplace = tx.init(params), tx.init(params)
    for step in range(4):
        grads = _grads(params, step)
        before = [t.clone() for t in gx.tree_leaves((grads, pure))]
        u_pure, new_pure = tx.update(grads, pure, params)
        for a, b in zip(before, gx.tree_leaves((grads, pure))):
            assert torch.equal(a, b), "inplace=False wrote into its inputs"
        given = {k: g.clone() for k, g in grads.items()}
        u_in, inplace = tx.update(given, inplace, params, inplace=True)
        held = {t.data_ptr() for t in gx.tree_leaves(inplace)}
        assert not any(u.data_ptr() in held for u in u_in.values()), "an update is a state tensor"
        assert not any(g.data_ptr() in held for g in given.values()), "the state keeps an update tensor"
        for k in params:
            torch.testing.assert_close(u_in[k], u_pure[k], rtol=0, atol=0)
        pure = new_pure
        params = gx.apply_updates(params, u_pure)


def test_the_readme_transform_is_heavy_ball():
    """README's "Your own transform" block, run on a model, steps as torch.optim.SGD(momentum=0.9)."""
    readme = (pathlib.Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("## Your own transform", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert len(block.strip().splitlines()) <= 7, "the README's example grew"
    model = torch.nn.Linear(4, 3).double()
    reference = torch.nn.Linear(4, 3).double()
    reference.load_state_dict(model.state_dict())
    namespace = {"torch": torch, "gx": gx, "model": model}
    exec(block, namespace)  # noqa: S102 - the README's code
    opt, torch_opt = namespace["opt"], torch.optim.SGD(reference.parameters(), lr=1e-2, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        x = torch.randn(8, 4, generator=gen, dtype=torch.float64)
        for net, optimizer in ((model, opt), (reference, torch_opt)):
            optimizer.zero_grad()
            net(x).sin().sum().backward()
            optimizer.step()
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, **TOL)
    assert opt.param_groups[0]["beta"] == 0.9


def test_the_guides_line_search_is_scale_by_backtracking():
    """The guide's Armijo backtracking takes gx.scale_by_backtracking's steps, to float64
    round-off, over 60 steps on Rosenbrock's function (where every search accepts a step)."""
    found = [i for i, block in enumerate(BLOCKS) if re.search(r"^def armijo_backtracking\(", block, re.M)]
    assert len(found) == 1
    namespace = _run_block(found[0])
    guide, loss_fn = namespace["armijo_backtracking"], namespace["loss_fn"]
    runs = []
    for search in (guide(init=1.0, beta=0.5, c=1e-4), gx.scale_by_backtracking(init=1.0, beta=0.5, c=1e-4)):
        tx = gx.chain(gx.scale(-1.0), search)
        params = {"x": torch.tensor(-1.2, dtype=torch.float64), "y": torch.tensor(1.0, dtype=torch.float64)}
        state = tx.init(params)
        trajectory = []
        for _ in range(60):
            extra = gx.evaluation_args(loss_fn, params)
            updates, state = tx.update(extra["grad"], state, params, **extra)
            params = gx.apply_updates(params, updates)
            trajectory.append(torch.stack([params["x"], params["y"]]))
        runs.append(torch.stack(trajectory))
    torch.testing.assert_close(runs[0], runs[1], **TOL)
    with pytest.raises(ValueError, match="value_fn"):
        guide().update({"x": torch.ones(())}, (), {"x": torch.ones(())})


# The other guides read top to bottom: their python blocks run in order in one namespace, as a
# reader pasting them into one session would, and the asserts in them are the guide's claims.
# distributed.md's snippets need a process group: tests/test_distributed.py runs them on two gloo processes
FRAGMENT_GUIDES = {"distributed.md"}
GUIDES = sorted(p for p in GUIDE.parent.glob("*.md") if p.name != GUIDE.name and p.name not in FRAGMENT_GUIDES)
SLOW_GUIDES = {"torch_func.md"}  # compiles with Inductor (tens of seconds): CI's slow step runs it


def _run_guide(path: pathlib.Path) -> dict:
    blocks = re.findall(r"^```python\n(.*?)^```", path.read_text(), re.S | re.M)
    module = types.ModuleType(f"guide_{path.stem}")
    sys.modules[module.__name__] = module  # torch.compile looks globals up by module name
    for index, block in enumerate(blocks):
        filename = f"<{path.name} block {index}>"
        linecache.cache[filename] = (len(block), None, block.splitlines(True), filename)
        exec(compile(block, filename, "exec"), module.__dict__)  # noqa: S102 - the guide's code
    return module.__dict__


def test_every_guide_has_code():
    runnable = {"getting_started.md", "param_groups.md", "masks.md", "accumulation.md", "checkpoints.md",
                "torch_func.md", "closures.md", "migration.md", "faq.md", "performance.md"}
    by_name = {p.name: p for p in GUIDES}
    assert runnable <= set(by_name), sorted(runnable - set(by_name))
    for name in runnable:
        assert re.search(r"^```python\n", by_name[name].read_text(), re.M), f"{name} has no python block"


@pytest.mark.parametrize("path", [pytest.param(p, marks=[pytest.mark.slow] if p.name in SLOW_GUIDES else [])
                                  for p in GUIDES], ids=lambda p: p.stem)
def test_guide_runs(path, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # a guide that saves a checkpoint writes here
    torch.manual_seed(0)
    _run_guide(path)
