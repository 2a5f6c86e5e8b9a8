"""``gx.Optimizer(..., flat=True)``: contiguous storage gives the default path's numbers.

Every elementwise alias of the registry runs 50 steps both ways (f32 to 1e-6 and f64 to
1e-12 relative); each thing users do to parameters and gradients (zeroing them either way,
replacing or adding parameters, tied and frozen ones, gradients of another dtype, moving
or loading the model, compiled models, checkpoints both ways) is checked against the
default path's numbers, and the fast path is checked to be taken (one buffer).
"""

from __future__ import annotations

import io
import sys
import weakref
from typing import Any, NamedTuple

import pytest
import torch
from conftest import assert_close_to_scale, in_one_buffer, seeded_backward, seeded_params
from registry import ENTRIES
from torch.utils._python_dispatch import TorchDispatchMode

import gradtx as gx
from gradtx._tree import tree_structure
from gradtx.optim import compiled as _compiled
from gradtx.optim import flat as _flat

ALIASES = [e for e in ENTRIES if e.kind == "alias" and gx.is_elementwise(e.build())]
SHAPES = [(7, 5), (30,), (3, 4, 2), (), (1,), (6, 6)]
REL = {torch.float32: 1e-6, torch.float64: 1e-12}








@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("entry", ALIASES, ids=[e.name for e in ALIASES])
def test_elementwise_alias_flat_matches_default(entry, dtype):
    results = []
    for flat in (False, True):
        params = seeded_params(SHAPES, dtype)
        opt = gx.Optimizer(params, entry.build(), flat=flat)
        for step in range(50):
            opt.zero_grad()
            seeded_backward(params, step)
            opt.step()
        if flat:
            assert in_one_buffer(params)
        results.append(params)
    assert_close_to_scale(results[1], results[0], REL[dtype])


@gx.transform(elementwise=True)  # not declared in place: each block's update is a fresh tensor
def _scale_by_counted_ema(decay: float = 0.8):
    """A user's elementwise transform with a shared count: ``m <- d m + (1-d) g``, ``u <- m / (1 - d^t)``."""
    class State(NamedTuple):
        count: torch.Tensor
        m: dict

    def init(params):
        return State(torch.zeros((), dtype=torch.int32), {k: torch.zeros_like(p) for k, p in params.items()})

    def update(updates, state, params=None, **extra):
        count = state.count + 1
        m = {k: decay * state.m[k] + (1 - decay) * g for k, g in updates.items()}
        return {k: v / (1 - decay ** count.double()) for k, v in m.items()}, State(count, m)

    return gx.GradientTransformation(init, update)


BLOCKED = {
    "lion": lambda: gx.lion(0.01, weight_decay=0.1),
    "adan": lambda: gx.adan(0.01),
    "user_ema": lambda: gx.chain(_scale_by_counted_ema(), gx.scale_by_lr(0.05)),
}


@pytest.mark.parametrize("dtypes", ["f64", "f32_and_f64"])
@pytest.mark.parametrize("name", list(BLOCKED))
def test_generic_chain_over_blocks_of_the_buffers_matches_default(monkeypatch, name, dtypes):
    """A chain with no fused or multi-tensor plan steps a long CPU buffer a block at a time
    (FlatStorage._run_blocks); the numbers and the state, counts included, are the default
    path's. Blocks of 16 elements here: the buffers hold 127 (and 127 float32 beside them,
    a second buffer of the same length whose later blocks are empty only at the end)."""
    monkeypatch.setattr(_flat, "_BLOCK", 16)
    shapes = SHAPES + ([(9, 2)] if dtypes == "f32_and_f64" else [])
    runs = []
    for flat in (False, True):
        params = seeded_params(shapes, torch.float64)
        if dtypes == "f32_and_f64":
            params[-1].data = params[-1].data.float()
        opt = gx.Optimizer(params, BLOCKED[name](), flat=flat)
        for step in range(20):
            opt.zero_grad()
            seeded_backward(params, step)
            opt.step()
        if flat:
            layouts = list(opt._flat._layouts.values())
            assert all(lay.block_plan[1] is not None for lay in layouts), "the blocks did not run"
        runs.append((params, opt.state_dict()))
    (default, default_state), (flat_params, flat_state) = runs
    assert_close_to_scale(flat_params, default, 1e-12 if dtypes == "f64" else 1e-6)
    for index, entry in default_state["state"].items():
        for key, value in entry.items():
            got = flat_state["state"][index][key]
            if value.dim() == 0:  # a count: exactly the steps taken, once per step, not per block
                assert torch.equal(got, value), (index, key)
            else:
                assert_close_to_scale([got], [value], 1e-12 if value.dtype == torch.float64 else 1e-6)


class _Tally:
    """A user's mutable Python counter in a state (not a tensor): a block given it would count too."""

    def __init__(self):
        self.n = 0


@gx.transform(elementwise=True, inplace=True)
def _scale_by_shared_count(hold: str = "twice"):
    """``u <- t g`` with ``t`` the steps taken, counted in place in a shared leaf held ``twice``
    (one tensor at two paths: written through one, read through the other), as a ``view`` of a
    tensor also held (written through the whole, read through the view), or in a mutable
    ``python`` object."""
    class State(NamedTuple):
        written: Any
        read: Any

    def init(params):
        if hold == "python":
            tally = _Tally()
            return State(tally, tally)
        if hold == "view":
            whole = torch.zeros(2, dtype=torch.float64)
            return State(whole, whole[1])
        count = torch.zeros((), dtype=torch.float64)
        return State(count, count)

    def update(updates, state, params=None, *, inplace=False, **extra):
        if hold == "python":
            state.written.n += 1
            t = state.read.n
        else:
            state.written.add_(1)
            t = state.read
        return {k: g * t for k, g in updates.items()}, state

    return gx.GradientTransformation(init, update)


@pytest.mark.parametrize("hold", ["twice", "view", "python"])
def test_blocks_keep_a_shared_leaf_held_twice_or_mutable_as_one(monkeypatch, hold):
    """The blocks copy the shared state for all but the last: a tensor held at two paths is
    copied once (a write through one path is read through the other, as over the whole
    buffer), and state that copies would split (views of one memory, a mutable Python object)
    runs the whole buffer. Without that, each block but the last read a count one behind (the
    numbers then differ from the first step) or counted once per block."""
    monkeypatch.setattr(_flat, "_BLOCK", 16)
    runs = []
    for flat in (False, True):
        params = seeded_params(SHAPES, torch.float64)
        opt = gx.Optimizer(params, gx.chain(_scale_by_shared_count(hold), gx.scale_by_lr(0.01)), flat=flat)
        for step in range(5):
            opt.zero_grad()
            seeded_backward(params, step)
            opt.step()
        runs.append(params)
    assert_close_to_scale(runs[1], runs[0], 1e-12)


@gx.transform(elementwise=True, inplace=True)
def _refuse_above(limit: float):
    """Raises when an update element exceeds ``limit`` (a user's check, elementwise in its numbers)."""
    def update(updates, state, params=None, *, inplace=False, **extra):
        if any(u.numel() and bool(u.abs().max() > limit) for u in updates.values()):
            raise FloatingPointError("update too large")
        return updates, state

    return gx.GradientTransformation(lambda params: (), update)


def test_a_chain_raising_in_a_later_block_says_which_elements_were_stepped(monkeypatch):
    """A chain that raises in a block after the first has stepped the blocks before it (their
    parameters and state; the counts are not moved): the error says so and from which element,
    so that the step is not retried as if nothing had moved (flat=False moves no parameter)."""
    monkeypatch.setattr(_flat, "_BLOCK", 16)
    params = seeded_params(SHAPES, torch.float64)
    opt = gx.Optimizer(params, gx.chain(_refuse_above(100.0), gx.adan(0.01)), flat=True)
    opt.zero_grad()
    seeded_backward(params, 0)
    opt.step()
    opt.zero_grad()
    seeded_backward(params, 1)
    params[-1].grad[5, 5] = 1e3  # the buffer's last element (127 of them): in its last block, from 112
    before = [p.detach().clone() for p in params]
    with pytest.raises(FloatingPointError, match="update too large") as raised:
        opt.step()
    if sys.version_info >= (3, 11):  # exceptions take notes from 3.11 on
        assert any("raised in the block from element 112" in note and "load a checkpoint" in note
                   for note in getattr(raised.value, "__notes__", [])), getattr(raised.value, "__notes__", None)
    moved = torch.cat([(p != b).reshape(-1) for p, b in zip(params, before)])
    assert moved[:112].all() and not moved[112:].any()
    assert all(int(v) == 1 for v in opt.state_dict()["state"][0].values() if v.dim() == 0 and not v.is_floating_point())


def test_flat_refuses_a_chain_that_is_not_elementwise_or_segmented():
    # a user's transform has no per-segment form (lamb has: test_flat_norms; muon and adafactor
    # too: test_flat_muon, test_flat_adafactor)
    user = gx.stateless(lambda u, p: u)
    with pytest.raises(ValueError, match="flat=True runs chains.*use flat=False"):
        gx.Optimizer(seeded_params(SHAPES, torch.float32), gx.chain(user, gx.adam(1e-3)), flat=True)
    with pytest.raises(ValueError, match="flat must be a bool"):
        gx.Optimizer(seeded_params(SHAPES, torch.float32), gx.adam(1e-3), flat=1)


def _both(train, tx=lambda: gx.adamw(0.05, weight_decay=0.1), dtype=torch.float64, **kw):
    """``train(opt, params)`` with the default path and with flat storage; their params."""
    out = []
    for flat in (False, True):
        params = seeded_params(SHAPES, dtype)
        opt = gx.Optimizer(params, tx(), flat=flat, **kw)
        out.append(train(opt, params))
    return out


def _check(train, **kw):
    default, flat = _both(train, **kw)
    assert_close_to_scale(flat, default, 1e-12)
    return default, flat


def test_model_zero_grad_set_to_none_gathers_and_keeps_stepping():
    def train(opt, params):
        for step in range(6):
            for p in params:  # model.zero_grad(): gradients set to None, backward makes new ones
                p.grad = None
            seeded_backward(params, step)
            opt.step()
        return params
    _check(train)


def test_a_parameter_backward_does_not_reach_after_zero_grad_is_skipped():
    def train(opt, params):
        for step in range(8):
            opt.zero_grad()  # set_to_none=True: a parameter without gradient is not stepped
            seeded_backward(params, step, skip=(1, 3) if step % 3 == 1 else ())
            opt.step()
            if opt._flat is not None and step % 3 == 1:
                assert params[1].grad is None and params[3].grad is None
        return params
    _check(train)


def test_zero_grad_without_set_to_none_steps_zero_gradients():
    def train(opt, params):
        for step in range(6):
            opt.zero_grad(set_to_none=False)
            seeded_backward(params, step, skip=(2,) if step == 3 else ())
            opt.step()
        return params
    _check(train)


def test_gradients_assigned_each_step():
    def train(opt, params):
        gen = torch.Generator().manual_seed(5)
        for _ in range(5):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            opt.step()
        return params
    _check(train)


def test_replaced_and_added_parameters_start_afresh():
    def train(opt, params):
        for step in range(4):
            opt.zero_grad()
            seeded_backward(params, step)
            opt.step()
        new = torch.nn.Parameter(torch.full((30,), 0.5, dtype=torch.float64))
        opt.param_groups[0]["params"][1] = new
        params[1] = new
        extra = torch.nn.Parameter(torch.ones(4, 4, dtype=torch.float64))
        opt.add_param_group({"params": [extra], "lr": 0.01})
        for step in range(4, 8):
            opt.zero_grad()
            seeded_backward(params + [extra], step)
            opt.step()
        return params + [extra]
    _check(train)


def test_frozen_parameters_and_a_parameter_frozen_later():
    def train(opt, params):
        params[2].requires_grad_(False)
        for step in range(8):
            if step == 4:
                params[0].requires_grad_(False)
            opt.zero_grad()
            seeded_backward(params, step, skip=(0, 2) if step >= 4 else (2,))
            opt.step()
        return params
    _check(train)


@pytest.mark.parametrize("set_to_none", [True, False])
def test_a_parameter_frozen_later_leaves_the_others_flat(monkeypatch, set_to_none):
    """Freezing a parameter after the layout was made (fine-tuning in stages) lays the others out
    again without it, rather than sending every later step to the default path; unfrozen, it
    joins a layout again. The numbers are the default path's throughout."""
    flat_steps = []
    run = _flat.FlatStorage._run
    monkeypatch.setattr(_flat.FlatStorage, "_run", lambda self, *args: (flat_steps.append(1), run(self, *args))[1])

    def train(opt, params):
        for step in range(12):
            if step == 3:
                params[0].requires_grad_(False)
            if step == 8:
                params[0].requires_grad_(True)
            opt.zero_grad(set_to_none=set_to_none)
            seeded_backward(params, step, skip=(0,) if 3 <= step < 8 else ())
            opt.step()
            if opt._flat is not None and step == 7:
                # with zeroed gradients kept, the frozen one has a gradient and is stepped, as by torch
                assert in_one_buffer(params[1:]) and in_one_buffer(params) is not set_to_none
        if opt._flat is not None:
            assert in_one_buffer(params)
        return params
    _check(train)
    assert len(flat_steps) == 12


@pytest.mark.parametrize("groups", [False, True], ids=["one_group", "weight_decay_groups"])
def test_tied_weights(groups):
    """One Parameter in two modules (a tied embedding and output layer), in one group or in a
    weight-decay group of matrices beside a bias group without decay."""
    def run(flat):
        torch.manual_seed(0)
        emb = torch.nn.Embedding(11, 6).double()
        head = torch.nn.Linear(6, 11, bias=True).double()
        head.weight = emb.weight  # tied: one Parameter in two modules
        model = torch.nn.ModuleList([emb, head])
        if groups:
            matrices = [p for p in model.parameters() if p.ndim == 2]
            opt = gx.Optimizer([{"params": matrices}, {"params": [head.bias], "weight_decay": 0.0}],
                               gx.adamw(0.01, weight_decay=0.1), flat=flat)
        else:
            opt = gx.Optimizer(model.parameters(), gx.adam(0.01), flat=flat)
        tokens = torch.arange(11)
        for _ in range(6):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(head(emb(tokens)), tokens).backward()
            opt.step()
        assert head.weight is emb.weight
        return list(model.parameters())
    assert_close_to_scale(run(True), run(False), 1e-12)


def test_gradients_of_another_dtype_fall_back():
    def train(opt, params):
        gen = torch.Generator().manual_seed(3)
        params[0].grad_dtype = torch.float32
        for _ in range(4):
            for p in params:
                p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.grad_dtype or p.dtype)
            opt.step()
        return params
    _check(train)


def _mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()


def _train_model(model, opt, steps, start=0):
    for step in range(start, start + steps):
        gen = torch.Generator().manual_seed(step)
        x = torch.randn(16, 5, generator=gen, dtype=next(model.parameters()).dtype)
        opt.zero_grad()
        (model(x) ** 2).mean().backward()
        opt.step()


@pytest.mark.parametrize("change", ["moved", "load_model_state", "data_assigned"])
def test_model_moved_or_loaded_after_the_optimizer_was_made(change):
    results = []
    for flat in (False, True):
        model = _mlp()
        opt = gx.Optimizer(model.parameters(), gx.adamw(0.01, weight_decay=0.1), flat=flat)
        _train_model(model, opt, 3)
        if change == "moved":  # what .to(another device) does: new memory for params and grads
            model._apply(lambda t: t.clone())
        elif change == "load_model_state":
            model.load_state_dict({k: v * 0.9 for k, v in model.state_dict().items()})
        else:
            model[0].weight.data = model[0].weight.detach() * 1.5
        _train_model(model, opt, 3, start=3)
        results.append(list(model.parameters()))
    assert_close_to_scale(results[1], results[0], 1e-12)


@pytest.mark.slow  # a dynamo trace of the model and its backward: ~10 s
def test_compiled_model():
    results = []
    for flat in (False, True):
        model = _mlp()
        opt = gx.Optimizer(model.parameters(), gx.adam(0.01), flat=flat)
        compiled = torch.compile(model, backend="aot_eager")
        _train_model(compiled, opt, 5)
        if flat:
            assert in_one_buffer(list(model.parameters()))
        results.append(list(model.parameters()))
    assert_close_to_scale(results[1], results[0], 1e-12)


@pytest.mark.slow  # a dynamo trace of the chain: ~20 s
def test_compile_true_with_flat_storage(monkeypatch):
    monkeypatch.setattr(_compiled, "PACK_BELOW", 16)
    eager, flat = _both(lambda opt, params: _steps(opt, params, 5), dtype=torch.float64)
    params = seeded_params(SHAPES, torch.float64)
    opt = gx.Optimizer(params, gx.adamw(0.05, weight_decay=0.1), flat=True, compile={"backend": "eager"})
    assert_close_to_scale(_steps(opt, params, 5), eager, 1e-12)
    assert in_one_buffer(params)


def _steps(opt, params, n, start=0):
    for step in range(start, start + n):
        opt.zero_grad()
        seeded_backward(params, step)
        opt.step()
    return params


def test_lr_scheduler_and_group_settings_reach_the_flat_step():
    def train(opt, params):
        opt.param_groups[0]["b1"] = 0.8
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
        for step in range(6):
            _steps(opt, params, 1, start=step)
            sched.step()
        return params
    _check(train)


@pytest.mark.parametrize("direction", ["flat_to_default", "default_to_flat"])
def test_checkpoints_move_between_flat_and_default(direction):
    src_flat = direction == "flat_to_default"
    params = seeded_params(SHAPES, torch.float64)
    opt = gx.Optimizer(params, gx.adamw(0.05, weight_decay=0.1), flat=src_flat)
    _steps(opt, params, 4)
    buf = io.BytesIO()
    torch.save({"params": [p.detach() for p in params], "opt": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    _steps(opt, params, 4, start=4)

    restored = [torch.nn.Parameter(p.clone()) for p in saved["params"]]
    other = gx.Optimizer(restored, gx.adamw(0.05, weight_decay=0.1), flat=not src_flat)
    other.load_state_dict(saved["opt"])
    _steps(other, restored, 4, start=4)
    assert_close_to_scale(restored, params, 1e-12)
    # and the state dicts agree in layout and values
    a, b = opt.state_dict(), other.state_dict()
    assert a["state"].keys() == b["state"].keys()
    for k in a["state"]:
        for path in a["state"][k]:
            torch.testing.assert_close(a["state"][k][path], b["state"][k][path], rtol=1e-12, atol=1e-14)


def test_state_clear_starts_afresh_as_on_the_default_path():
    def train(opt, params):
        _steps(opt, params, 3)
        opt.state.clear()
        _steps(opt, params, 3, start=3)
        return params
    _check(train)


def test_opt_state_shows_views_of_the_flat_state():
    params = seeded_params(SHAPES, torch.float32)
    opt = gx.Optimizer(params, gx.adam(0.05), flat=True)
    _steps(opt, params, 2)
    mus = [opt.state[p]["[0].mu"] for p in params]
    assert len({m.untyped_storage().data_ptr() for m in mus}) == 1
    assert all(m.shape == p.shape for m, p in zip(mus, params))


def test_closure_steps_on_the_default_path_with_the_same_numbers():
    def train(opt, params):
        for step in range(4):
            def closure(step=step):
                opt.zero_grad()
                seeded_backward(params, step)
                return torch.zeros(())
            opt.step(closure)
        return params
    _check(train)


def test_parameter_and_gradient_buffers_start_apart_from_the_state_modulo_4k():
    """The buffers are staggered (no 4K aliasing in the step's kernel: docs/benchmarks.md):
    parameters 1088 and gradients 2112 bytes past a 4 KiB boundary, wherever the allocator's
    block starts, and the moments (gradtx.optim.placement) elsewhere: the four differ."""
    p = torch.nn.Parameter(torch.randn(1 << 20))
    p.grad = torch.randn(1 << 20)
    opt = gx.Optimizer([p], gx.adamw(1e-3, weight_decay=0.01), flat=True)
    opt.step()
    mu, nu = opt.state[p]["[0].mu"], opt.state[p]["[0].nu"]
    assert p.data_ptr() % 4096 == 1088 and p.grad.data_ptr() % 4096 == 2112
    offsets = {x.data_ptr() % 4096 for x in (p, p.grad, mu, nu)}
    assert len(offsets) == 4


class _LiveMeta(TorchDispatchMode):
    """Counts the meta tensors alive at once while it is on (the fresh state's template)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = self.most = 0
        self.counted: weakref.WeakSet = weakref.WeakSet()

    def _freed(self) -> None:
        self.live -= 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if isinstance(out, torch.Tensor) and out.is_meta and out not in self.counted:
            self.counted.add(out)
            self.live += 1
            self.most = max(self.most, self.live)
            weakref.finalize(out, self._freed)
        return out


def test_fresh_flat_state_template_is_made_a_few_parameters_at_a_time(monkeypatch):
    """The structure of a fresh flat state comes from ``init`` over meta tensors, a chunk of
    parameters at a time: at most a chunk's meta tensors (a parameter and its two moments
    each, for adamw) are alive at once, not the whole group's (its memory was the group's
    peak beyond the state: benchmarks/optimizer_step.py --memory-only --sets small)."""
    monkeypatch.setattr(_flat, "_TEMPLATE_CHUNK", 4)
    params = seeded_params([(3,)] * 12, torch.float32)
    opt = gx.Optimizer(params, gx.adamw(0.05, weight_decay=0.1), flat=True)
    seeded_backward(params, 0)
    with _LiveMeta() as meta:
        opt.step()
    assert in_one_buffer(params)
    assert meta.most == 3 * 4  # the whole group's at once: 3 * 12


@pytest.mark.parametrize("chunk", [2, 4])
def test_fresh_flat_state_made_in_chunks_is_the_default_paths(monkeypatch, chunk):
    """Chunks of 2 (three parts, one left over when merging pairwise) and of 4 (a part of 4 and
    one of 2) give the default path's state: the same tree, keys, values and numbers."""
    monkeypatch.setattr(_flat, "_TEMPLATE_CHUNK", chunk)
    opts = []

    def train(opt, params):
        opts.append(opt)
        return _steps(opt, params, 4)
    _check(train)
    default, flat = opts
    assert tree_structure(flat._chain_states[0]) == tree_structure(default._chain_states[0])
    a, b = default.state_dict()["state"], flat.state_dict()["state"]
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].keys() == b[k].keys()
        for path in a[k]:
            torch.testing.assert_close(b[k][path], a[k][path], rtol=1e-12, atol=1e-14)


def test_build_moves_each_gradient_with_its_parameter_and_hands_back_the_heap_as_it_goes(monkeypatch):
    """The build copies a parameter, then its gradient, and frees both before the next copy
    (all parameters before any gradient kept every old 4 KiB tensor resident until the
    gradients moved: small tensors between live ones hold no whole page to hand back), and
    hands the freed heap back every ``_TRIM_EVERY`` bytes moved."""
    monkeypatch.setattr(_flat, "_TRIM_EVERY", 200)
    events = []
    monkeypatch.setattr(_flat, "_release_freed_heap", lambda device: events.append("trim"))
    params = seeded_params(SHAPES, torch.float64)
    seeded_backward(params, 0)
    for i, p in enumerate(params):
        weakref.finalize(p.grad, events.append, f"grad {i} freed")
    opt = gx.Optimizer(params, gx.sgd(0.1), flat=True)

    class Copies(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten.copy_.default:
                events.append("copy")
            return func(*args, **(kwargs or {}))
    with Copies():
        opt.step()
    assert in_one_buffer(params)
    # bytes moved per parameter (its data and its gradient, float64): 560, 480, 384, 16, 16, 576
    expected = []
    since = 0
    for i, shape in enumerate(SHAPES):
        expected += ["copy", "copy", f"grad {i} freed"]
        since += 2 * 8 * torch.Size(shape).numel()
        if since >= 200:
            expected.append("trim")
            since = 0
    expected.append("trim")  # the last hand-back, after every move
    assert events[:len(expected)] == expected
