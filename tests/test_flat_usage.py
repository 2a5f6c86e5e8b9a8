"""``gx.Optimizer(..., flat=True)`` under what training code does around the optimizer.

Each test runs one loop twice, with ``flat=False`` (the default path) and with ``flat=True``,
from the same model, and asserts the parameters agree to round-off (``assert_close_to_scale``:
1e-12 of the largest entry in float64, 1e-6 where float32 is involved): accumulation over a
varying number of micro-batches that miss parameters, a first step under ``inference_mode``,
parameters in shared memory (Hogwild) or with another tensor over their memory, gradient
scaling with a skipped step, clipping on some steps, gradient hooks and an optimizer stepped
from them, parametrizations, a model cast to another dtype, layers frozen and thawed, groups
added, schedules that cycle the betas, checkpoints loaded before the first step or rolled
back, copies of the optimizer and model (deepcopy, torch.save), averaged models, mixed
dtypes, Inductor. What test_flat.py and test_flat_checks.py check (zeroing, replaced, frozen
and moved parameters, tied weights, StepLR, compiled models with aot_eager, checkpoints across
the two paths) is not repeated. The two-process loops are tests/distributed_worker.py's
``ddp_flat_no_sync``, ``fsdp1_flat`` and ``zero_flat``.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch
from conftest import assert_close_to_scale, in_one_buffer, round_trip

import gradtx as gx
from gradtx.optim import flat as _flat

REL = 1e-12


def _mlp(dtype=torch.float64):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).to(dtype)


def _x(step, dtype=torch.float64):
    return torch.randn(16, 5, generator=torch.Generator().manual_seed(step), dtype=dtype)


def _loss(model, step, dtype=torch.float64):
    return (model(_x(step, dtype)) ** 2).mean()


def _step(model, opt, step):
    """One step of the usual loop: zero_grad, the step's backward, step."""
    opt.zero_grad()
    _loss(model, step).backward()
    opt.step()


def _adamw(params, flat, **kw):
    return gx.Optimizer(params, gx.adamw(0.01, weight_decay=0.1), flat=flat, **kw)


@pytest.fixture
def flat_steps(monkeypatch):
    """Per flat optimizer step of each group, whether the flat path ran it."""
    taken = []
    step = _flat.FlatStorage.step

    def counted(self, opt, gi, group):
        ran = step(self, opt, gi, group)
        taken.append(ran)
        return ran
    monkeypatch.setattr(_flat.FlatStorage, "step", counted)
    return taken


def _both(train, rel=REL):
    """``train(flat)`` for both settings (each returns tensors); asserts they agree."""
    default, flat = train(False), train(True)
    assert_close_to_scale(flat, default, rel)
    return flat


# -- fixed: each failed before its fix ----------------------------------------------------


def test_accumulation_over_a_varying_number_of_micro_batches_that_miss_parameters(flat_steps):
    # two micro-batches over every parameter write each gradient view twice: 8 writes; four
    # micro-batches over half of them write as often, so the write count alone took the
    # unreached ones (still -0.0 from zero_grad) for stepped gradients of zero
    def train(flat):
        model = _mlp()
        opt = _adamw(model.parameters(), flat)
        for step in range(8):
            opt.zero_grad()
            for i in range(4 if step == 5 else 2):
                if step == 5:  # the first layer left out (a branch not taken)
                    (model[2](torch.tanh(_x(10 * step + i).repeat(1, 2)[:, :8])) ** 2).mean().backward()
                else:
                    _loss(model, 10 * step + i).backward()
            opt.step()
            if step == 5:
                assert model[0].weight.grad is None  # as torch's zero_grad left it
        return list(model.parameters())
    _both(train)
    assert all(flat_steps[:5]) and all(flat_steps[6:])  # only the step that missed a layer left the flat path


@pytest.mark.parametrize("size", [3, 40], ids=["small", "large"])  # the two ways the step looks for -0.0
def test_gradients_left_by_zero_grad_told_from_ones_with_zero_ends(size):
    # step 3: two backward passes over half the parameters write as often as one over all;
    # step 5: a gradient that is -0.0 at both ends but not throughout is stepped
    def train(flat):
        ps = [torch.nn.Parameter(torch.full((size,), 0.5 + i, dtype=torch.float64)) for i in range(4)]
        opt = _adamw(ps, flat)
        for step in range(8):
            opt.zero_grad()
            for _ in range(2 if step == 3 else 1):
                loss = 0.0
                for i, p in enumerate(ps):
                    if step == 3 and i >= 2:
                        continue
                    w = torch.linspace(-1.0, 2.0, size, dtype=torch.float64) * (step + i + 1)
                    if step == 5 and i == 0:  # gradient w: -0.0 + -0.0 at the ends
                        w[0] = w[-1] = -0.0
                        loss = loss + (w * p).sum()
                        continue
                    loss = loss + (w * p).sum() + (p * p).sum() * 0.1 * (i + 1)
                loss.backward()
            opt.step()
        return ps
    _both(train)


def test_first_step_under_inference_mode(flat_steps):
    # the buffers made there were inference tensors: no version counter (the step raised),
    # and parameters over them could not be used in a later forward with autograd
    def train(flat):
        model = _mlp()
        opt = _adamw(model.parameters(), flat)
        for step in range(4):
            opt.zero_grad()
            _loss(model, step).backward()
            with torch.inference_mode():
                opt.step()
        assert not model[0].weight.is_inference()
        return list(model.parameters())
    _both(train)
    assert all(flat_steps)


def test_a_tensor_kept_over_a_parameter_keeps_the_group_in_place_until_dropped(flat_steps):
    # what ZeRO's bucket views and FSDP1's local shard are (tests/distributed_worker.py):
    # moved, the parameter would leave the tensor holding memory the steps no longer write
    def train(flat):
        model = _mlp()
        opt = _adamw(model.parameters(), flat)
        kept = model[2].bias.detach()
        for step in range(12):
            if step == 6:
                assert torch.equal(kept, model[2].bias.detach())  # it saw every step
                del kept
            _step(model, opt, step)
        return list(model.parameters())
    _both(train)
    assert flat_steps[:6] == [False] * 6 and flat_steps[-1]  # tried again after 1, 2, 4, ... steps


def _train_shared(model, flat):
    opt = _adamw(model.parameters(), flat)
    for step in range(4):
        _step(model, opt, step)


def test_parameters_in_shared_memory_stay_there_for_other_processes():
    # Hogwild (model.share_memory(), workers stepping it): moved into a buffer of its own, a
    # worker's steps never reached the parent's model
    mp = pytest.importorskip("torch.multiprocessing")
    reference = _mlp()
    _train_shared(reference, False)
    model = _mlp()
    model.share_memory()
    worker = mp.get_context("fork").Process(target=_train_shared, args=(model, True))
    worker.start()
    try:
        worker.join(60)
        assert worker.exitcode == 0
    finally:
        if worker.is_alive():
            worker.kill()
    assert_close_to_scale(list(model.parameters()), list(reference.parameters()), REL)
    assert all(p.is_shared() for p in model.parameters())


# -- patterns that keep the default path's numbers -----------------------------------------


def test_grad_scaler_with_unscale_clip_and_a_skipped_step(flat_steps):
    def train(flat):
        model = _mlp(torch.float32)
        opt = _adamw(model.parameters(), flat)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8, growth_interval=2)
        skipped = []
        for step in range(8):
            opt.zero_grad()
            loss = _loss(model, step, torch.float32)
            scaler.scale(loss * (float("inf") if step == 4 else 1.0)).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
            before = scaler.get_scale()
            scaler.step(opt)
            scaler.update()
            skipped.append(scaler.get_scale() < before)
        assert skipped == [False] * 4 + [True] + [False] * 3
        if flat:
            assert in_one_buffer(list(model.parameters()), grads_required=True)
        return list(model.parameters())
    _both(train, rel=1e-6)
    assert len(flat_steps) == 7 and all(flat_steps)


def test_clipping_on_some_steps_with_zeroing_both_ways_and_varying_accumulation():
    def train(flat):
        model = _mlp()
        opt = _adamw(model.parameters(), flat)
        for step in range(10):
            opt.zero_grad(set_to_none=step % 2 == 0)
            for i in range(1 + step % 3):
                _loss(model, 10 * step + i).backward()
            if step % 3 == 1:
                torch.nn.utils.clip_grad_value_(model.parameters(), 0.01)
            if step % 4 == 2:
                torch.nn.utils.clip_grad_norm_(model.parameters(), 0.05)
            opt.step()
        return list(model.parameters())
    _both(train)


def test_gradient_hooks_that_scale_and_replace_gradients():
    def train(flat):
        model = _mlp()
        ps = list(model.parameters())
        opt = _adamw(ps, flat)
        ps[0].register_hook(lambda g: g * 3)

        def halve(p):
            p.grad.mul_(0.5)

        def replace(p):
            p.grad = p.grad * 2
        ps[1].register_post_accumulate_grad_hook(halve)
        ps[2].register_post_accumulate_grad_hook(replace)
        model[2].register_full_backward_hook(lambda module, grad_in, grad_out: (grad_in[0] * 0.5,))
        for step in range(6):
            _step(model, opt, step)
        return ps
    _both(train)


def test_an_optimizer_per_parameter_stepped_from_a_post_accumulate_hook():
    # the optimizer-in-backward pattern: each parameter's optimizer steps as its gradient is ready
    def train(flat):
        model = _mlp()
        opts = {p: _adamw([p], flat) for p in model.parameters()}

        def step_now(p):
            opts[p].step()
            opts[p].zero_grad()
        for p in model.parameters():
            p.register_post_accumulate_grad_hook(step_now)
        for step in range(6):
            _loss(model, step).backward()
        return list(model.parameters())
    _both(train)


def test_parametrized_layers():
    def train(flat):
        torch.manual_seed(0)
        first = torch.nn.utils.parametrizations.orthogonal(torch.nn.Linear(5, 5).double())
        last = torch.nn.utils.parametrizations.weight_norm(torch.nn.Linear(5, 3).double())
        model = torch.nn.Sequential(first, torch.nn.Tanh(), last)
        opt = _adamw(model.parameters(), flat)
        for step in range(6):
            _step(model, opt, step)
        return list(model.parameters())
    _both(train)


def test_model_cast_to_another_dtype_and_back(flat_steps):
    # the state keeps its dtype: the steps after the cast run on the default path, its numbers
    def train(flat):
        model = _mlp(torch.float32)
        opt = _adamw(model.parameters(), flat)
        for step in range(8):
            if step == 3:
                model.double()
            if step == 6:
                model.float()
            dtype = next(model.parameters()).dtype
            opt.zero_grad()
            _loss(model, step, dtype).backward()
            opt.step()
        return list(model.parameters())
    _both(train, rel=1e-6)
    assert flat_steps == [True] * 3 + [False] * 5


def test_layer_frozen_then_thawed_and_a_group_added():
    def train(flat):
        model = _mlp()
        opt = _adamw(model[0].parameters(), flat)
        for step in range(10):
            if step == 2:
                opt.add_param_group({"params": list(model[2].parameters()), "lr": 0.02})
            if step == 4:
                model[0].requires_grad_(False)
            if step == 7:
                model[0].requires_grad_(True)
            _step(model, opt, step)
        return list(model.parameters())
    _both(train)


def test_one_cycle_schedule_cycles_lr_and_betas_and_weight_decay_changes():
    def train(flat):
        model = _mlp()
        opt = _adamw(model.parameters(), flat)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=12)
        for step in range(10):
            _step(model, opt, step)
            sched.step()
            opt.param_groups[0]["weight_decay"] = 0.05 * (step + 1)
        assert opt.param_groups[0]["betas"][0] != 0.9  # the schedule moved it
        return list(model.parameters())
    _both(train)


@pytest.mark.parametrize("into_flat", [True, False], ids=["into_flat", "into_default"])
def test_checkpoint_loaded_before_the_first_step(into_flat):
    def train(flat):
        model = _mlp()
        opt = _adamw(model.parameters(), flat)
        for step in range(4):
            _step(model, opt, step)
        saved = round_trip({"model": model.state_dict(), "opt": opt.state_dict()})
        resumed = _mlp()
        resumed.load_state_dict(saved["model"])
        opt = _adamw(resumed.parameters(), into_flat)
        opt.load_state_dict(saved["opt"])
        for step in range(4, 8):
            opt.zero_grad()
            _loss(resumed, step).backward()
            opt.step()
        return list(resumed.parameters())
    _both(train)


def test_rolled_back_to_a_checkpoint_of_the_same_optimizer():
    def train(flat):
        model = _mlp()
        opt = _adamw(model.parameters(), flat)
        for step in range(10):
            _step(model, opt, step)
            if step == 3:
                saved = round_trip({"model": model.state_dict(), "opt": opt.state_dict()})
            if step == 6:
                model.load_state_dict(saved["model"])
                opt.load_state_dict(saved["opt"])
        return list(model.parameters())
    _both(train)


def test_copies_of_the_optimizer_share_no_memory_and_keep_stepping(flat_steps):
    def train(flat):
        model = _mlp()
        opt = _adamw(model.parameters(), flat)
        for step in range(3):
            _step(model, opt, step)
        copied = copy.deepcopy(opt)
        buf = io.BytesIO()
        torch.save({"model": model, "opt": opt}, buf)
        buf.seek(0)
        loaded = torch.load(buf, weights_only=False)
        assert all(a is b for a, b in zip(loaded["model"].parameters(), loaded["opt"].param_groups[0]["params"]))
        copied_params = copied.param_groups[0]["params"]
        originals = {p.untyped_storage().data_ptr() for p in model.parameters()}
        assert not originals & {p.untyped_storage().data_ptr() for p in copied_params}
        assert not originals & {p.untyped_storage().data_ptr() for p in loaded["model"].parameters()}
        for step in range(3, 6):  # the copy on its own parameters, a functional forward
            copied.zero_grad()
            w1, b1, w2, b2 = copied_params
            ((torch.tanh(_x(step) @ w1.T + b1) @ w2.T + b2) ** 2).mean().backward()
            copied.step()
            loaded["opt"].zero_grad()
            _loss(loaded["model"], step).backward()
            loaded["opt"].step()
        return [*model.parameters(), *copied_params, *loaded["model"].parameters()]
    _both(train)
    assert all(flat_steps)  # the pickled copy's parameters too, views of one loaded storage


@pytest.mark.parametrize("base_kept", [True, False], ids=["base_kept", "base_dropped"])
def test_parameters_that_are_views_of_one_storage(flat_steps, base_kept):
    # views of one tensor that is kept (and read) stay where they are, their group on the
    # default path; once nothing else holds the storage they are moved like any parameter
    def train(flat):
        base = torch.randn(40, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        ps = [torch.nn.Parameter(base[:10]), torch.nn.Parameter(base[10:30].view(4, 5))]
        opt = _adamw(ps, flat)
        if not base_kept:
            del base
        for step in range(5):
            opt.zero_grad()
            w = torch.randn(30, generator=torch.Generator().manual_seed(step), dtype=torch.float64)
            ((w[:10] * ps[0]).sum() + (w[10:].view(4, 5) * ps[1] ** 2).sum()).backward()
            opt.step()
        if base_kept:
            assert torch.equal(base[:10], ps[0].detach())  # still aliased
        return ps
    _both(train)
    assert flat_steps == [not base_kept] * 5


def test_averaged_model_and_ema_read_the_parameters_between_steps():
    def train(flat):
        model = _mlp()
        opt = _adamw(model.parameters(), flat)
        swa = torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(0.9))
        ema = None
        for step in range(8):
            _step(model, opt, step)
            swa.update_parameters(model)
            if ema is None:
                ema = copy.deepcopy(model)
            else:
                with torch.no_grad():
                    torch._foreach_lerp_(list(ema.parameters()), [p.data for p in model.parameters()], 0.1)
        return [*model.parameters(), *swa.parameters(), *ema.parameters()]
    _both(train)


def test_mixed_dtypes_and_complex_parameters_with_a_skipped_one():
    def train(flat):
        gen = torch.Generator().manual_seed(0)
        ps = [torch.nn.Parameter(torch.randn(shape, generator=gen, dtype=dtype))
              for shape, dtype in [((5, 3), torch.float32), ((4,), torch.float64), ((3, 2), torch.complex128),
                                   ((7,), torch.float64)]]
        opt = _adamw(ps, flat)
        for step in range(6):
            opt.zero_grad()
            sum(((p.abs() ** 2).sum().double() * (step + i + 1) for i, p in enumerate(ps)
                 if not (step == 3 and i == 1))).backward()
            opt.step()
        return ps
    _both(train, rel=1e-6)


@pytest.mark.slow  # an Inductor compile of the model and its backward: ~10 s
def test_inductor_compiled_model_and_compiled_step():
    def train(flat):
        model = _mlp()
        opt = _adamw(model.parameters(), flat)
        compiled, step_fn = torch.compile(model), torch.compile(opt.step)
        for step in range(5):
            opt.zero_grad()
            (compiled(_x(step)) ** 2).mean().backward()
            step_fn()
        if flat:
            assert in_one_buffer(list(model.parameters()), grads_required=True)
        return list(model.parameters())
    _both(train)
