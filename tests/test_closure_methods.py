"""Methods that evaluate the loss again, through ``gx.Optimizer.step(closure)``.

``gx.lbfgs`` on a model, driven by a closure with the ``backward`` flag, against
``torch.optim.LBFGS(line_search_fn="strong_wolfe")`` on the same strictly convex problem:
the same minimiser, and the closure evaluations compared.
"""

from __future__ import annotations

import pytest
import torch

import gradtx as gx

_gen = torch.Generator().manual_seed(3)
X = torch.randn(200, 10, generator=_gen, dtype=torch.float64)
Y = (torch.rand(200, generator=_gen, dtype=torch.float64) < torch.sigmoid(X @ torch.randn(10, generator=_gen,
                                                                                         dtype=torch.float64))).double()


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(10, 1).double()


def _loss(model):
    # L2-regularised logistic regression: strictly convex, one minimiser
    logits = model(X).squeeze(-1)
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, Y) + 1e-2 * model.weight.pow(2).sum()


def _grad_norm(model) -> float:
    grads = torch.autograd.grad(_loss(model), list(model.parameters()))
    return float(torch.cat([g.reshape(-1) for g in grads]).norm())


def _minimise_with_gradtx(tx, steps=100, tol=1e-10):
    model = _model()
    opt = gx.Optimizer(model.parameters(), tx)
    calls = {"backward": 0, "value": 0}

    def closure(backward=True):
        loss = _loss(model)
        calls["backward" if backward else "value"] += 1
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

    for _ in range(steps):
        opt.step(closure)
        if _grad_norm(model) < tol:
            break
    return model, calls


def test_lbfgs_reaches_torch_lbfgs_minimiser_in_as_few_evaluations():
    model, calls = _minimise_with_gradtx(gx.lbfgs())

    twin = _model()
    ref = torch.optim.LBFGS(twin.parameters(), lr=1, max_iter=200, tolerance_grad=1e-10, tolerance_change=0,
                            history_size=10, line_search_fn="strong_wolfe")
    ref_calls = [0]

    def ref_closure():
        ref_calls[0] += 1
        ref.zero_grad()
        loss = _loss(twin)
        loss.backward()
        return loss

    ref.step(ref_closure)
    assert _grad_norm(model) < 1e-9 and _grad_norm(twin) < 1e-9
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-7, atol=1e-8)
    # gx.Optimizer calls the closure once per step before the line search evaluates: at most
    # one evaluation per iteration more than torch, which reuses the line search's last one
    total = calls["backward"] + calls["value"]
    assert total <= 2 * ref_calls[0], (calls, ref_calls)


@pytest.mark.parametrize("make", [
    lambda: gx.chain(gx.scale_by_lbfgs(), gx.scale(-1.0), gx.scale_by_strong_wolfe()),
    lambda: gx.chain(gx.scale_by_bfgs(), gx.scale(-1.0), gx.scale_by_strong_wolfe()),
    lambda: gx.chain(gx.scale_by_conjugate_gradient(), gx.scale(-1.0), gx.scale_by_strong_wolfe(c2=0.1)),
    lambda: gx.chain(gx.scale_by_lbfgs(), gx.scale(-1.0), gx.scale_by_backtracking()),
    lambda: gx.bfgs(),
    lambda: gx.nonlinear_cg(),
    lambda: gx.nonlinear_cg("hager_zhang"),
], ids=["lbfgs_wolfe", "bfgs_wolfe", "cg_wolfe", "lbfgs_armijo", "bfgs", "nonlinear_cg", "nonlinear_cg_hz"])
def test_closure_methods_reach_the_minimiser(make):
    model, calls = _minimise_with_gradtx(make(), steps=300, tol=1e-8)
    assert _grad_norm(model) < 1e-8
    assert calls["backward"] >= 1
