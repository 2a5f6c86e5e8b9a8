"""``gx.Optimizer(..., flat=True)``'s per-step checks: constant cost when nothing changed, and
each shortcut they take undone by what would make it wrong.

The step trusts the buffers without a pass over the parameters when the storages' use counts,
the params list (changes in place noted) and the gradient views' shared write count are as in
the last step checked in full; these tests change each of those in turn (and what would leave
them unchanged while a gradient went elsewhere) and compare with the default path's numbers,
written out as the plain loop would run it.
"""

from __future__ import annotations

import pytest
import torch
from conftest import seeded_backward, seeded_params

import gradtx as gx
from gradtx.optim import flat as _flat

SHAPES = [(7, 5), (30,), (3, 4, 2), (), (1,), (6, 6)]






def _both(train, tx=lambda: gx.adamw(0.05, weight_decay=0.1)):
    out = []
    for flat in (False, True):
        params = seeded_params(SHAPES)
        opt = gx.Optimizer(params, tx(), flat=flat)
        out.append(train(opt, params))
    for a, b in zip(*out):
        torch.testing.assert_close(b.detach(), a.detach(), rtol=1e-12, atol=1e-12)
    return out


@pytest.fixture
def full_checks(monkeypatch):
    """How many times the flat step checked its buffers in full."""
    calls = []
    check = _flat.FlatStorage._check

    def counted(self, lay, writes):
        calls.append(writes)
        return check(self, lay, writes)
    monkeypatch.setattr(_flat.FlatStorage, "_check", counted)
    return calls


@pytest.mark.parametrize("loop", ["zero_grad", "zero_grad_keep", "clip", "accumulate", "no_zero_grad",
                                  "parameters_kept"])
def test_the_usual_loops_take_the_constant_cost_path(loop, full_checks):
    def train(opt, params):
        for step in range(8):
            if step == 4 and opt._flat is not None:
                full_checks.clear()
            if loop == "parameters_kept":  # a model.state_dict() made after the step, alive at zero_grad
                kept = [p.detach() for p in params]
                opt.zero_grad()
                kept.clear()
            elif loop == "zero_grad":
                opt.zero_grad()
            elif loop in ("zero_grad_keep", "clip", "accumulate"):
                opt.zero_grad(set_to_none=loop != "zero_grad_keep")
            elif step:  # no zero_grad: gradients written anew in place, as a hook or DDP would
                for p in params:
                    p.grad.mul_(0.0)
            seeded_backward(params, step)
            if loop == "accumulate":
                seeded_backward(params, step + 50)
            if loop == "clip":
                torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
        return params
    _both(train)
    assert full_checks == []


def test_gradients_kept_aside_then_replaced(full_checks):
    """``model.zero_grad()`` sets the gradients to ``None`` while the old ones are still held
    (their views stay alive, so the use counts do not move): backward writes new gradients
    elsewhere, and the write count tells."""
    def train(opt, params):
        kept = []
        for step in range(6):
            kept.append([p.grad for p in params])
            if step == 3:
                for p in params[::2]:
                    p.grad = None
            else:
                opt.zero_grad()
            seeded_backward(params, step)
            opt.step()
        return params
    _both(train)
    assert full_checks  # step 3 was checked in full


@pytest.mark.parametrize("when", ["after_backward", "before_backward_held"])
def test_a_gradient_assigned_between_steps(when):
    """``p.grad = other``: after backward the old view is dropped (the use count tells); before
    backward with the old view still held, backward adds into ``other`` (the write count tells).
    (Assigned after backward while the old view is kept referenced, it is not seen: see the
    module's docstring.)"""
    def train(opt, params):
        for step in range(6):
            opt.zero_grad()
            held = params[1].grad
            if step == 3 and when == "before_backward_held":
                params[1].grad = torch.zeros_like(params[1])
            seeded_backward(params, step)
            if step == 3 and when == "after_backward":
                del held
                params[1].grad = params[1].grad * 2.0
            opt.step()
        return params
    _both(train)


@pytest.mark.parametrize("change", ["append", "remove", "setitem", "assign_list"])
def test_params_list_changed_in_place(change):
    def train(opt, params):
        extra = torch.nn.Parameter(torch.ones(4, 3, dtype=torch.float64))
        group = opt.param_groups[0]["params"]
        ps = list(params)
        for step in range(6):
            if step == 3:
                if change == "append":
                    group.append(extra)
                    ps.append(extra)
                elif change == "remove":
                    del group[2]
                    del ps[2]
                elif change == "setitem":
                    group[0] = extra
                    ps[0] = extra
                else:
                    opt.param_groups[0]["params"] = list(group[1:])
                    ps = ps[1:]
            opt.zero_grad()
            for p in params + [extra]:
                p.grad = None
            seeded_backward(ps, step)
            opt.step()
        return params + [extra]
    _both(train)


def test_unreached_parameters_with_accumulation_and_clipping():
    """After ``zero_grad()``, a parameter that no backward of the step reached has no gradient
    and is not stepped, whatever else wrote into the gradients (two backward passes, clipping)."""
    def train(opt, params):
        for step in range(8):
            opt.zero_grad()
            skip = (1, 3) if step % 3 == 1 else ()
            seeded_backward(params, step, skip)
            seeded_backward(params, step + 50, skip + ((0,) if step == 5 else ()))
            torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], 1.0)
            opt.step()
            if opt._flat is not None and skip:
                assert params[1].grad is None and params[3].grad is None
        return params
    _both(train)


def test_a_zero_gradient_is_stepped():
    """A gradient backward wrote as exactly zero is a gradient (weight decay, moments decay):
    only one never written since ``zero_grad()`` is none."""
    def train(opt, params):
        for _ in range(6):
            opt.zero_grad()
            loss = sum((p * p).sum() for p in params[1:]) + (params[0] * 0.0).sum()
            loss.backward()
            opt.step()
            assert params[0].grad is not None
        return params
    _both(train)


def test_a_parameter_moved_after_the_fast_path_started():
    def train(opt, params):
        for step in range(8):
            if step == 4:
                params[2].data = params[2].detach() * 0.5
            opt.zero_grad()
            seeded_backward(params, step)
            opt.step()
        return params
    _both(train)
