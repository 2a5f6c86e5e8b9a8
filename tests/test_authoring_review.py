"""A new user's transforms, written from the guide, and what went wrong with them.

Each test is a transform a user writes at one of the three levels (docs/guides/
writing_transforms.md), run where the guide says it runs, against the same rule written out
in plain torch, or a mistake in it that must raise an error naming what to fix.
"""

from __future__ import annotations

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
