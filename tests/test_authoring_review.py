"""A new user's transforms, written from the guide, and what went wrong with them.

Each test is a transform a user writes at one of the three levels (docs/guides/
writing_transforms.md), run where the guide says it runs, against the same rule written out
in plain torch, or a mistake in it that must raise an error naming what to fix.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import pytest
import torch

import gradtx as gx


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2))


def _train(opt, model, steps, scale=lambda t: 1.0 + 3.0 * (t % 2)):
    """``steps`` steps on a fixed batch; the gradients of each step, as the optimizer saw them."""
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(1))
    grads = []
    for t in range(steps):
        opt.zero_grad()
        model(x * scale(t)).square().mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        opt.step()
    return grads


# --- a running scalar in the state (level 3) ------------------------------------------------


class _EmaClipState(NamedTuple):
    ema: torch.Tensor  # a running value: the EMA of the global gradient norm
    count: torch.Tensor


def _clip_by_norm_ema(decay=0.9, factor=2.0):
    """``u <- g min(1, factor ema_hat / ||g||)`` from the second step, ``ema`` the debiased EMA
    of ``||g||`` including this step: a user's level-3 transform, its EMA a 0-dim float
    tensor made as a user makes one, ``torch.zeros(())``."""

    def init(params):
        return _EmaClipState(torch.zeros(()), torch.zeros((), dtype=torch.int32))

    def update(updates, state, params=None, **extra_args):
        norm = gx.tree_l2_norm(updates)
        count = state.count + 1
        ema = decay * state.ema + (1 - decay) * norm
        bound = factor * ema / (1 - decay ** count.double())
        scale = torch.where(state.count > 0, torch.clamp(bound / norm, max=1.0), torch.ones(()))
        return gx.tree_map(lambda g: g * scale.to(g.dtype), updates), _EmaClipState(ema.float(), count)

    return gx.GradientTransformation(init, update)


@pytest.mark.parametrize("fast", [True, False])
def test_a_running_scalar_in_the_state_is_not_reset_by_the_adapter(fast):
    # A 0-dim float tensor in a NamedTuple field looks like a hyperparameter; the adapter wrote
    # the group's value (the initial 0.0) into it before every step, so the EMA restarted at
    # each step and every step but the first was clipped to the wrong bound, without a word.
    model = _model()
    p0 = [p.detach().clone() for p in model.parameters()]
    opt = gx.Optimizer(model.parameters(), gx.chain(_clip_by_norm_ema(), gx.scale_by_lr(0.1)), fast=fast)
    with pytest.warns(UserWarning, match="key 'ema' does not set ema: the transform changes"):
        grads = _train(opt, model, 6)
    ps, ema = [p.clone() for p in p0], 0.0
    for t, gs in enumerate(grads):  # the rule in plain torch
        norm = float(torch.sqrt(sum((g.double() ** 2).sum() for g in gs)))
        ema = 0.9 * ema + 0.1 * norm
        scale = min(2.0 * ema / (1 - 0.9 ** (t + 1)) / norm, 1.0) if t > 0 else 1.0
        ps = [p - 0.1 * scale * g for p, g in zip(ps, gs)]
    for p, ref in zip(model.parameters(), ps):
        torch.testing.assert_close(p.detach(), ref, rtol=1e-5, atol=1e-6)
    # a real hyperparameter next to it is still driven by param_groups
    opt.param_groups[0]["lr"] = 0.0
    before = [p.detach().clone() for p in model.parameters()]
    _train(opt, model, 1)
    for p, b in zip(model.parameters(), before):
        torch.testing.assert_close(p.detach(), b, rtol=0, atol=0)


def test_a_hyperparameter_kept_in_the_state_warns_nothing():
    model = _model()
    opt = gx.Optimizer(model.parameters(), gx.chain(gx.clip_by_global_norm(1.0), gx.adamw(1e-2, weight_decay=0.1)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _train(opt, model, 4)


# --- an update or a state of another shape (levels 1 and 3) ------------------------------------


def _sum_update(g, state, param):  # a slip: the update of one tensor reduced to a number
    return g.sum(), state


def test_an_update_of_another_shape_is_refused_not_broadcast():
    # p + u broadcast a 0-dim update over the whole parameter: every element moved alike.
    params = {"w": torch.ones(2, 3), "b": torch.ones(3)}
    grads = {"w": torch.ones(2, 3), "b": torch.ones(3)}
    per_tensor = gx.per_tensor(lambda p: (), _sum_update)
    with pytest.raises(ValueError, match=r"_sum_update returned an update of shape \(\)"):
        per_tensor.update(grads, per_tensor.init(params), params)
    mapped = gx.stateless_with_tree_map(lambda g, p: g.mean(0))
    with pytest.raises(ValueError, match=r"returned shape \(3,\) for an update of shape \(2, 3\)"):
        mapped.update(grads, mapped.init(params), params)
    with pytest.raises(ValueError, match=r"update of 'w' has shape \(\), its parameter \(2, 3\)"):
        gx.apply_updates(params, {"w": torch.ones(()), "b": torch.ones(3)})

    def update(updates, state, params=None):
        return gx.tree_map(lambda g: -0.1 * g.sum(), updates), state

    @gx.transform(leafwise=True)
    def leafwise():  # run per param group
        return gx.GradientTransformation(lambda params: (), update)

    full_control = gx.GradientTransformation(lambda params: (), update)  # runs over all groups at once
    for tx in (full_control, leafwise()):
        for fast in (True, False):
            model = _model()
            before = [p.detach().clone() for p in model.parameters()]
            opt = gx.Optimizer(model.parameters(), tx, fast=fast)
            model(torch.ones(1, 4)).sum().backward()
            with pytest.raises(ValueError, match=r"parameter 0.* an update of shape \(\), the parameter has shape "
                                                 r"\(8, 4\)"):
                opt.step()
            for p, b in zip(model.parameters(), before):  # nothing moved
                torch.testing.assert_close(p.detach(), b, rtol=0, atol=0)


def test_per_tensor_refuses_a_state_of_another_shape():
    def update_fn(g, m, param):  # a slip: the state reduced to a number, where init gave a tensor
        return g, (m + g).sum()

    tx = gx.per_tensor(torch.zeros_like, update_fn)
    params = {"w": torch.ones(2, 3)}
    with pytest.raises(ValueError, match=r"update_fn update_fn returned a state tensor of shape \(\), but init_fn "
                                         r"gave shape \(2, 3\)"):
        tx.update({"w": torch.ones(2, 3)}, tx.init(params), params)


# --- an update that is not a pair ------------------------------------------------------------


def test_an_update_that_does_not_return_a_pair_names_the_transform():
    def update(updates, state, params=None):  # a slip: returns the updates alone
        return gx.tree_map(lambda g: -g, updates)

    bad = gx.GradientTransformation(lambda params: (), update)
    params = {"w": torch.ones(2), "b": torch.ones(2)}  # two leaves: a dict that unpacks into a "pair"
    for tx in (gx.chain(bad, gx.scale(0.1)), gx.chain(gx.scale(-1.0), bad)):
        with pytest.raises(ValueError, match=r"GradientTransformation\(update=update\) must return a pair "
                                             r"\(updates, new_state\), got dict"):
            tx.update(params, tx.init(params), params)
    model = _model()
    opt = gx.Optimizer(model.parameters(), gx.chain(bad, gx.sgd(0.1)))
    model(torch.ones(1, 4)).sum().backward()
    with pytest.raises(ValueError, match="must return a pair"):
        opt.step()

    per_tensor = gx.per_tensor(torch.zeros_like, lambda g, m, p: g)  # the state forgotten
    with pytest.raises(ValueError, match=r"update_fn <lambda> must return a pair \(update, state\), got shape \(2,\)"):
        per_tensor.update(params, per_tensor.init(params), params)


# --- a rule that reads the raw gradient, inside a mask or a partition (levels 1 and 2) ---------


def _cautious_update(u, state, param, *, grad):  # keep the elements where u and the gradient agree
    return torch.where(u * grad > 0, u, torch.zeros_like(u)), state


@gx.transform(elementwise=True)
def _cautious_per_tensor():
    return gx.per_tensor(lambda p: (), _cautious_update)


@gx.transform(elementwise=True)
def _cautious_multi_tensor():
    def update_fn(us, state, ps, *, grad):
        return [torch.where(u * g > 0, u, torch.zeros_like(u)) for u, g in zip(us, grad)], state

    return gx.multi_tensor(lambda ps: (), update_fn)


@pytest.mark.parametrize("rule", [_cautious_per_tensor, _cautious_multi_tensor])
def test_a_rule_reading_grad_works_inside_masked_and_partition(rule):
    # Inside gx.masked the updates hide the other leaves while grad is the whole gradient; the
    # helpers refused it ("grad must have the structure of updates") where the built-in
    # gradient-aware members take the leaves at the updates' key paths.
    params = {"a": torch.ones(3), "b": torch.ones(2)}
    grad = {"a": torch.tensor([1.0, -1.0, 2.0]), "b": torch.tensor([1.0, -1.0])}
    updates = {"a": torch.tensor([1.0, 1.0, -1.0]), "b": torch.tensor([1.0, 1.0])}
    for tx in (gx.masked(rule(), {"a": True, "b": False}),
               gx.partition({"c": rule(), "i": gx.identity()}, {"a": "c", "b": "i"})):
        out, _ = tx.update(updates, tx.init(params), params, grad=grad)
        torch.testing.assert_close(out["a"], torch.tensor([1.0, 0.0, 0.0]))
        torch.testing.assert_close(out["b"], updates["b"])

    # under gx.Optimizer, after momentum, against the rule written out
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    opt = gx.Optimizer([a, b], gx.chain(gx.trace(0.9), gx.masked(rule(), lambda name, p: p.numel() == 3),
                                        gx.scale_by_lr(0.1)))
    ref_a, ref_b, ma, mb = torch.ones(3), torch.ones(2), torch.zeros(3), torch.zeros(2)
    for t in range(4):
        ga, gb = torch.tensor([1.0, -1.0, 2.0]) * (-1) ** t, torch.tensor([1.0, -1.0]) * (-1) ** t
        a.grad, b.grad = ga.clone(), gb.clone()
        opt.step()
        ma, mb = 0.9 * ma + ga, 0.9 * mb + gb
        ref_a, ref_b = ref_a - 0.1 * torch.where(ma * ga > 0, ma, torch.zeros(3)), ref_b - 0.1 * mb
    torch.testing.assert_close(a.detach(), ref_a)
    torch.testing.assert_close(b.detach(), ref_b)


# --- compile=True and a rule torch.compile cannot trace (level 1) ------------------------------


def _first_step_plain(g, m, param, *, step, beta):  # a Python branch on a tensor's value
    if int(step) == 1:
        return g, g.clone()
    m = beta * m + (1 - beta) * g
    return m.clone(), m


@gx.transform(elementwise=True)
def _ema_after_first(beta=0.9):
    return gx.per_tensor(torch.zeros_like, _first_step_plain, beta=beta)


def test_compile_names_what_to_change_when_the_rule_cannot_be_traced():
    # torch.compile's own error ("Could not guard on data-dependent expression Eq(u0, 1)")
    # said nothing of compile=True or of the fix
    w = torch.nn.Parameter(torch.ones(5))
    opt = gx.Optimizer([w], gx.chain(_ema_after_first(), gx.scale_by_lr(0.1)), compile=True)
    w.grad = torch.ones(5)
    with pytest.raises(ValueError, match=r"compile=True traces .* torch.where, or build the optimizer with "
                                         r"compile=False") as info:
        opt.step()
    assert "int(step) == 1" in str(info.value.__cause__)  # torch's error, where it points
    torch.testing.assert_close(w.detach(), torch.ones(5), rtol=0, atol=0)  # nothing moved


# --- a user's constructor under inject_hyperparams (level 1) -----------------------------------


def _momentum_update(g, m, param, *, beta):
    m = beta * m + g
    return m.clone(), m


@gx.transform(elementwise=True)
def _momentum(beta=0.9):
    return gx.per_tensor(torch.zeros_like, _momentum_update, beta=beta)


def test_inject_hyperparams_shows_each_hyperparameter_once():
    # The inner state's copy of beta, written from inject's at every update, was a second key
    # "beta#1" that set nothing (the same for any built-in: "weight_decay#1").
    w = torch.nn.Parameter(torch.ones(3))
    opt = gx.Optimizer([w], gx.chain(gx.inject_hyperparams(_momentum)(beta=0.5), gx.scale_by_lr(0.1)))
    assert set(opt.param_groups[0]) == {"params", "beta", "lr"}
    builtin = gx.Optimizer([torch.nn.Parameter(torch.ones(3))],
                           gx.inject_hyperparams(gx.adamw)(lr=1e-3, weight_decay=1e-2))
    assert not any("#" in key for key in builtin.param_groups[0])
    ref, m = torch.ones(3), torch.zeros(3)
    for t in range(4):
        beta = 0.5 if t < 2 else 0.0
        opt.param_groups[0]["beta"] = beta
        g = torch.tensor([1.0, -2.0, 0.5]) * (t + 1)
        w.grad = g.clone()
        opt.step()
        m = beta * m + g
        ref = ref - 0.1 * m
    torch.testing.assert_close(w.detach(), ref)
