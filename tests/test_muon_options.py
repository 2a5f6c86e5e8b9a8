"""gx.muon's ``adam_lr`` and ``conv="matrix"`` against optax.contrib.muon (float64 via jax).

optax's ``adam_learning_rate`` is ``adam_lr``; its ``muon_weight_dimension_numbers`` with
torch's ``(out, in, ...)`` layout (reduction over every axis but the first, output axis 0) is
``conv="matrix"``: the weight taken as the ``out x prod(rest)`` matrix. The 2-D matrix gets
``MuonDimensionNumbers(1, 0)`` so that optax's shape factor is torch's.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_resume_bit_exact, functional_trajectory, optax_trajectory, optimizer_trajectory

import gradtx as gx

TOL = dict(rtol=1e-10, atol=1e-12)
STEPS = 25


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class ConvProblem:
    """A small CNN: a conv weight (4-D), its bias (1-D), a 3-D leaf, a linear weight (2-D),
    a scalar."""

    def __init__(self, seed=0):
        gen = torch.Generator().manual_seed(seed)
        d = torch.float64
        self.params0 = {"conv": torch.randn(4, 3, 2, 2, generator=gen, dtype=d) * 0.5,
                        "bias": torch.randn(4, generator=gen, dtype=d) * 0.1,
                        "stack": torch.randn(2, 3, 5, generator=gen, dtype=d),
                        "w": torch.randn(4, 4, generator=gen, dtype=d) * 0.5,
                        "s": torch.randn((), generator=gen, dtype=d)}
        self.xs = [torch.randn(8, 3, 5, 5, generator=gen, dtype=d) for _ in range(4)]
        self.ys = [torch.randn(8, 4, generator=gen, dtype=d) for _ in range(4)]
        self.stack_target = torch.randn(2, 3, 5, generator=gen, dtype=d)

    def loss(self, p, t):
        x, y = self.xs[t % 4], self.ys[t % 4]
        h = torch.tanh(F.conv2d(x, p["conv"], p["bias"])).mean(dim=(2, 3))
        out = h @ p["w"].T + p["s"]
        return ((out - y) ** 2).mean() + ((p["stack"] - self.stack_target) ** 2).sum() / 10 + p["s"] ** 4 / 10

    def grads(self, params, t):
        leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        return dict(zip(leaves, torch.autograd.grad(self.loss(leaves, t), list(leaves.values()))))

    def leaf_params(self, keys=None):
        return {k: v.clone().requires_grad_(True) for k, v in self.params0.items() if keys is None or k in keys}


def _optax_trajectory(jax, problem, tx, steps=STEPS):
    return optax_trajectory(jax, problem, tx, steps)


def _functional(problem, tx, steps=STEPS):
    return functional_trajectory(problem, tx, steps)


def _assert_same(got, want, keys=None, **tol):
    assert len(got) == len(want)
    for t, (g, w) in enumerate(zip(got, want)):
        for k in keys or w:
            torch.testing.assert_close(g[k], w[k], **(tol or TOL), msg=lambda m, t=t, k=k: f"step {t}, {k}: {m}")


def _dims(conv):
    """optax's dimension numbers for ConvProblem's leaves, in torch's layout; None: Adam."""
    from optax.contrib import MuonDimensionNumbers as D

    if conv == "adam":
        return {"conv": None, "bias": None, "stack": None, "w": D(1, 0), "s": None}
    return {"conv": D((1, 2, 3), 0), "bias": None, "stack": D((1, 2), 0), "w": D(1, 0), "s": None}


KW = dict(beta=0.9, weight_decay=0.05, adam_weight_decay=0.01)
OPTAX_KW = dict(beta=0.9, weight_decay=0.05, adam_weight_decay=0.01)


@pytest.mark.parametrize("conv,adam_lr", [("adam", 3e-3), ("matrix", None), ("matrix", 1e-3)],
                         ids=["adam_lr", "conv_matrix", "both"])
def test_muon_options_match_optax(jax_x64, conv, adam_lr):
    import optax.contrib

    problem = ConvProblem()
    want = _optax_trajectory(jax_x64, problem, optax.contrib.muon(
        0.02, adam_learning_rate=adam_lr, muon_weight_dimension_numbers=_dims(conv), **OPTAX_KW))
    got = _functional(problem, gx.muon(0.02, adam_lr=adam_lr, conv=conv, **KW))
    _assert_same(got, want)
    assert max(float((want[-1][k] - problem.params0[k]).abs().max()) for k in want[-1]) > 0.05


def test_adam_lr_none_is_lr_bit_for_bit():
    problem = ConvProblem()
    a = _functional(problem, gx.muon(0.02, **KW), 5)
    b = _functional(problem, gx.muon(0.02, adam_lr=0.02, **KW), 5)
    c = _functional(problem, gx.muon(0.02, adam_lr=1e-3, **KW), 5)
    assert all(torch.equal(x[k], y[k]) for x, y in zip(a, b) for k in x)
    # the first step of the matrix does not see adam_lr (later ones do, through the loss)
    assert not torch.equal(a[0]["bias"], c[0]["bias"]) and torch.equal(a[0]["w"], c[0]["w"])


def test_conv_matrix_matches_reshape_rule():
    """The rule written out: reshape to (out, in*kh*kw), the 2-D Muon of gx.scale_by_muon (itself
    checked against torch.optim.Muon and optax), reshape back; one step from zero momentum."""
    g = {"conv": torch.randn(4, 3, 2, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)}
    params = {"conv": torch.zeros_like(g["conv"])}
    tx = gx.muon(1.0, conv="matrix")
    u, _ = tx.update(g, tx.init(params), params)
    flat = {"conv": g["conv"].reshape(4, 12)}
    ref = gx.scale_by_muon()
    want, _ = ref.update(flat, ref.init(flat))
    torch.testing.assert_close(u["conv"], -want["conv"].reshape(4, 3, 2, 2), rtol=1e-12, atol=1e-14)
    # not the batch-of-(kh x kw)-matrices reading scale_by_muon gives a 4-D leaf
    batch, _ = ref.update(g, ref.init(g))
    assert not torch.allclose(u["conv"], -batch["conv"])


def test_param_group_keys_and_adam_lr_override(jax_x64):
    """A float adam_lr is a param_groups key (None: none); a group overriding it follows
    optax.partition of two optax.contrib.muon with those adam_learning_rates (w is square, so
    optax's default labelling and shape factor are torch's)."""
    import optax
    import optax.contrib

    assert "adam_lr" not in gx.Optimizer([torch.zeros(2, requires_grad=True)], gx.muon(0.02)).param_groups[0]
    problem = ConvProblem()
    params = problem.leaf_params()
    first, second = ["conv", "w"], ["bias", "stack", "s"]
    opt = gx.Optimizer([{"params": [params[k] for k in first]},
                        {"params": [params[k] for k in second], "adam_lr": 5e-3}],
                       gx.muon(0.02, adam_lr=1e-3, **KW))
    assert opt.param_groups[0]["adam_lr"] == 1e-3 and opt.param_groups[1]["adam_lr"] == 5e-3
    got = optimizer_trajectory(params, problem.loss, opt, STEPS)
    ref = optax.partition({"first": optax.contrib.muon(0.02, adam_learning_rate=1e-3, **OPTAX_KW),
                           "second": optax.contrib.muon(0.02, adam_learning_rate=5e-3, **OPTAX_KW)},
                          {k: "first" if k in first else "second" for k in problem.params0})
    want = _optax_trajectory(jax_x64, problem, ref)
    _assert_same(got, want)
    # the override is not vacuous: one adam_lr for both groups is another path
    one = _optax_trajectory(jax_x64, problem, optax.contrib.muon(0.02, adam_learning_rate=1e-3, **OPTAX_KW), 3)
    assert not torch.allclose(one[-1]["bias"], want[2]["bias"], rtol=1e-6, atol=1e-8)


def test_conv_matrix_under_optimizer_and_checkpoint_round_trip():
    problem = ConvProblem()
    tx = gx.muon(0.02, adam_lr=3e-3, conv="matrix", **KW)

    def make(params):
        return gx.Optimizer(list(params.values()), gx.muon(0.02, adam_lr=3e-3, conv="matrix", **KW))

    got = assert_resume_bit_exact(make, problem.leaf_params(), problem.loss, steps=15, split=10)
    _assert_same(got, _functional(problem, tx, 15), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("make,name", [(lambda: gx.muon(0.1, conv="batch"), "conv"),
                                       (lambda: gx.muon(0.1, adam_lr=-1.0), "adam_lr"),
                                       (lambda: gx.muon(0.1, adam_lr=lambda: 1.0), "adam_lr")])
def test_bad_options_are_refused(make, name):
    with pytest.raises(ValueError, match=name):
        make()
