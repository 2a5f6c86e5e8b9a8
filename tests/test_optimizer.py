"""The adapter's contract beyond trajectories: checkpoints, skipped params, closures, errors."""

from __future__ import annotations

import io

import pytest
import torch

import gradtx as gx
from gradtx import GradientTransformation


def _model(seed: int = 0, dtype=torch.float32) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 2)).to(dtype)


def _batch(step: int, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 + step)
    return torch.randn(16, 5, generator=gen, dtype=dtype), torch.randn(16, 2, generator=gen, dtype=dtype)


def _train(model, opt, sched, steps: range) -> None:
    for step in steps:
        x, y = _batch(step)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        if sched is not None:
            sched.step()


def _roundtrip(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _flat_tensors(obj) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _flat_tensors(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _flat_tensors(v)]
    return []


def _is_plain(obj) -> bool:
    if isinstance(obj, (torch.Tensor, int, float, str, bool, type(None))):
        return True
    if type(obj) in (dict, list, tuple):
        items = obj.items() if isinstance(obj, dict) else enumerate(obj)
        return all(_is_plain(k) and _is_plain(v) for k, v in items)
    return False


TXS = {
    "adamw": lambda: gx.adamw(1e-2, weight_decay=0.05),
    "sgd_nesterov": lambda: gx.sgd(5e-2, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "mission": lambda: gx.chain(gx.clip_value(10.0), gx.scale_by_adam(), gx.scale_by_lr(1e-2)),
}


@pytest.mark.parametrize("name", TXS)
def test_resume_from_checkpoint_is_bit_identical(name):
    """10 steps, save through torch.save / torch.load(weights_only=True), 10 more steps in a
    fresh process-like setting (new model, optimizer, scheduler) == 20 uninterrupted steps."""
    model = _model()
    opt = gx.Optimizer(model.parameters(), TXS[name]())
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=20)
    _train(model, opt, sched, range(20))

    first = _model()
    opt1 = gx.Optimizer(first.parameters(), TXS[name]())
    sched1 = torch.optim.lr_scheduler.CosineAnnealingLR(opt1, T_max=20)
    _train(first, opt1, sched1, range(10))
    checkpoint = _roundtrip({"model": first.state_dict(), "opt": opt1.state_dict(), "sched": sched1.state_dict()})

    resumed = _model(seed=123)  # different initial weights: everything must come from the checkpoint
    resumed.load_state_dict(checkpoint["model"])
    opt2 = gx.Optimizer(resumed.parameters(), TXS[name]())
    sched2 = torch.optim.lr_scheduler.CosineAnnealingLR(opt2, T_max=20)
    opt2.load_state_dict(checkpoint["opt"])
    sched2.load_state_dict(checkpoint["sched"])
    _train(resumed, opt2, sched2, range(10, 20))

    for a, b in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    for a, b in zip(_flat_tensors(opt.state_dict()), _flat_tensors(opt2.state_dict())):
        assert torch.equal(a, b)


def test_state_dict_holds_only_tensors_and_plain_containers():
    model = _model()
    opt = gx.Optimizer(model.parameters(), gx.adamw(1e-3))
    _train(model, opt, None, range(2))
    sd = opt.state_dict()
    assert _is_plain(sd)
    assert sd["format"] == "gradtx.Optimizer/2"
    assert sorted(sd["state"]) == list(range(4))  # one entry per parameter, by global index
    assert sd["param_groups"][0]["lr"] == 1e-3
    # moments have the parameter's shape and dtype
    for index, p in enumerate(model.parameters()):
        moments = [t for t in sd["state"][index].values() if t.dim() > 0]
        assert moments and all(t.shape == p.shape and t.dtype == p.dtype for t in moments)


def _snapshot(opt):
    return [t.clone() for t in _flat_tensors(opt.state_dict())], [dict(g, params=None) for g in opt.param_groups]


def _assert_unchanged(opt, snapshot):
    tensors, groups = snapshot
    now = _flat_tensors(opt.state_dict())
    assert len(now) == len(tensors) and all(torch.equal(a, b) for a, b in zip(now, tensors))
    assert [dict(g, params=None) for g in opt.param_groups] == groups


@pytest.mark.parametrize("source", ["other_chain", "other_model", "other_dtype", "not_gradtx"])
def test_foreign_state_is_refused_and_leaves_the_optimizer_unchanged(source):
    model = _model()
    opt = gx.Optimizer(model.parameters(), gx.adam(1e-2))
    _train(model, opt, None, range(3))
    snapshot = _snapshot(opt)

    if source == "other_chain":
        other = _model()
        other_opt = gx.Optimizer(other.parameters(), gx.sgd(1e-2, momentum=0.9))
    elif source == "other_model":
        other = torch.nn.Sequential(torch.nn.Linear(5, 9), torch.nn.Tanh(), torch.nn.Linear(9, 2))
        other_opt = gx.Optimizer(other.parameters(), gx.adam(1e-2))
    elif source == "other_dtype":
        other = _model(dtype=torch.float64)
        other_opt = gx.Optimizer(other.parameters(), gx.adam(1e-2))
    else:  # torch.optim's Adam state would load (see test_reliability_adapter): another algorithm's
        other = _model()
        other_opt = torch.optim.SGD(other.parameters(), lr=1e-2, momentum=0.9)
    for step in range(2):
        x, y = _batch(step, dtype=next(other.parameters()).dtype)
        other_opt.zero_grad()
        torch.nn.functional.mse_loss(other(x), y).backward()
        other_opt.step()

    with pytest.raises(ValueError) as err:
        opt.load_state_dict(_roundtrip(other_opt.state_dict()))
    assert any(hint in str(err.value) for hint in ("another model", "another chain", "gradtx.Optimizer",
                                                    "not torch.optim.SGD's equivalent"))
    _assert_unchanged(opt, snapshot)


def test_params_without_grad_are_skipped_and_get_no_state():
    a = torch.nn.Parameter(torch.randn(3, dtype=torch.float64))
    b = torch.nn.Parameter(torch.randn(2, dtype=torch.float64))
    a0, b0 = a.detach().clone(), b.detach().clone()
    opt = gx.Optimizer([a, b], gx.adam(0.1))
    tx = gx.adam(0.1)

    # steps 1-3: only a has a gradient
    state_a = tx.init({"a": a0})
    pa = {"a": a0}
    for step in range(3):
        grad = torch.full((3,), float(step + 1), dtype=torch.float64)
        a.grad, b.grad = grad.clone(), None
        opt.step()
        updates, state_a = tx.update({"a": grad}, state_a, pa)
        pa = gx.apply_updates(pa, updates)
    assert torch.equal(b.detach(), b0)
    assert b not in opt.state and a in opt.state
    torch.testing.assert_close(a.detach(), pa["a"], rtol=1e-12, atol=0)
    assert sorted(opt.state_dict()["state"]) == [0]

    # b gets a gradient: it gets fresh moments; a keeps its own
    b.grad = torch.ones(2, dtype=torch.float64)
    a.grad = None
    opt.step()
    assert b in opt.state
    assert not torch.equal(b.detach(), b0)
    torch.testing.assert_close(a.detach(), pa["a"], rtol=1e-12, atol=0)


def _recording(record: dict) -> GradientTransformation:
    """An identity transform that records the extra arguments it receives."""

    def update(updates, state, params=None, **extra_args):
        record.update(extra_args)
        return updates, state

    return GradientTransformation(lambda params: gx.EmptyState(), update)


def test_closure_is_evaluated_and_feeds_value_and_value_fn():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(4, dtype=torch.float64))
    target = torch.arange(4.0, dtype=torch.float64)
    calls = []

    def closure():
        calls.append(1)
        opt.zero_grad()
        loss = ((w - target) ** 2).sum()
        loss.backward()
        return loss

    record: dict = {}
    opt = gx.Optimizer([w], gx.chain(_recording(record), gx.sgd(0.1)))
    before = w.detach().clone()
    loss = opt.step(closure)
    assert len(calls) == 1
    torch.testing.assert_close(loss, ((before - target) ** 2).sum())
    torch.testing.assert_close(w.detach(), before - 0.1 * 2 * (before - target))
    assert torch.equal(record["value"], loss)
    (grad,) = record["grad"].values()
    torch.testing.assert_close(grad, 2 * (before - target))
    # value_fn re-evaluates the loss at a given point without touching the parameters
    (key,) = record["grad"].keys()
    probe = torch.zeros(4, dtype=torch.float64)
    torch.testing.assert_close(record["value_fn"]({key: probe}), (target ** 2).sum())
    torch.testing.assert_close(w.detach(), before - 0.1 * 2 * (before - target))


def test_step_without_closure_returns_none_and_passes_no_value():
    w = torch.nn.Parameter(torch.ones(2))
    record: dict = {}
    opt = gx.Optimizer([w], gx.chain(_recording(record), gx.sgd(0.1)))
    w.grad = torch.ones(2)
    assert opt.step() is None
    assert "value" not in record and "grad" in record


@pytest.mark.parametrize("build, argument", [
    (lambda: gx.adam(1e-3, b1=1.0), "b1"),
    (lambda: gx.adam(1e-3, b2=-0.1), "b2"),
    (lambda: gx.adam(1e-3, eps=-1e-8), "eps"),
    (lambda: gx.adam(-1e-3), "lr"),
    (lambda: gx.sgd(0.1, momentum=-0.9), "momentum"),
    (lambda: gx.adamw(1e-3, weight_decay=-0.1), "weight_decay"),
    (lambda: gx.clip_value(-1.0), "max_delta"),
    (lambda: gx.clip_by_global_norm(-1.0), "max_norm"),
    (lambda: gx.scale_by_lr(float("nan")), "lr"),
    (lambda: gx.scale_by_lr(torch.ones(2)), "lr"),
])
def test_bad_hyperparameters_raise_value_error_naming_the_argument(build, argument):
    with pytest.raises(ValueError, match=argument):
        build()


def test_bad_param_group_value_is_refused():
    w = torch.nn.Parameter(torch.ones(2))
    v = torch.nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match="lr"):
        gx.Optimizer([{"params": [w]}, {"params": [v], "lr": -1.0}], gx.adam(1e-3))


def test_optimizer_refuses_what_is_not_a_transformation():
    with pytest.raises(TypeError, match="tx"):
        gx.Optimizer([torch.nn.Parameter(torch.ones(1))], torch.optim.SGD)


def test_is_a_torch_optimizer_with_the_chain_hyperparameters_as_defaults():
    opt = gx.Optimizer([torch.nn.Parameter(torch.ones(1))], gx.adamw(3e-4, weight_decay=0.02))
    assert isinstance(opt, torch.optim.Optimizer)
    assert opt.param_groups[0]["lr"] == 3e-4
    assert opt.param_groups[0]["weight_decay"] == 0.02
