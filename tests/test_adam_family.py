"""The Adam family against torch.optim (Adamax, AMSGrad, RAdam, NAdam) and against the papers'
update rules written out per tensor (AdaBelief, Yogi, NovoGrad, Lion, Adan, optax's forms)."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from conftest import MLPProblem, assert_same, default_dtype, functional_trajectory

import gradtx as gx

STEPS = 200


# -- trajectories -------------------------------------------------------------------------


def torch_trajectory(problem: MLPProblem, make_opt, pre_step=None, steps=STEPS):
    """torch.optim on leaf tensors; ``pre_step(params)`` runs (without grad) before each step.

    torch keeps its per-parameter scalars (NAdam's ``mu_product``, the step) in the default
    dtype: run it with the problem's dtype as default, or a float64 run would carry NAdam's
    momentum product rounded to float32 (a 1e-8 relative error from the first step on).
    """
    with default_dtype(problem.dtype):
        params = problem.leaf_params()
        opt = make_opt(list(params.values()))
        out = []
        for t in range(steps):
            opt.zero_grad()
            problem.loss(params, t).backward()
            if pre_step is not None:
                with torch.no_grad():
                    pre_step(params)
            opt.step()
            out.append({k: v.detach().clone() for k, v in params.items()})
    return out


def adapter_trajectory(problem: MLPProblem, tx, steps=STEPS):
    params = problem.leaf_params()
    opt = gx.Optimizer(list(params.values()), tx)
    out = []
    for t in range(steps):
        opt.zero_grad()
        problem.loss(params, t).backward()
        opt.step()
        out.append({k: v.detach().clone() for k, v in params.items()})
    return out


def formula_trajectory(problem: MLPProblem, rule, steps):
    """``rule = (init, step)``: ``init(p) -> per-tensor state dict``,
    ``step(p, g, s, t) -> new p`` (t = 1, 2, ...), applied tensor by tensor."""
    init, step = rule
    params = {k: v.clone() for k, v in problem.params0.items()}
    states = {k: init(v) for k, v in params.items()}
    out = []
    for t in range(steps):
        grads = problem.grads(params, t)
        params = {k: step(params[k], grads[k], states[k], t + 1) for k in params}
        out.append(params)
    return out


def max_rel_gap(traj, ref):
    return max(float(((a[k] - b[k]).abs() / b[k].abs().clamp_min(1e-6)).max()) for a, b in zip(traj, ref) for k in b)


# -- torch.optim references ------------------------------------------------------------------


def _decay_before_step(lr, wd):
    def pre_step(params):
        for p in params.values():
            p.mul_(1 - lr * wd)
    return pre_step


# (name, gradtx factory, torch optimizer factory, pre-step hook for torch)
CASES = [
    ("adamax", lambda: gx.adamax(2e-2), lambda p: torch.optim.Adamax(p, lr=2e-2), None),
    ("adamax_betas", lambda: gx.adamax(1e-2, b1=0.8, b2=0.99, eps=1e-3),
     lambda p: torch.optim.Adamax(p, lr=1e-2, betas=(0.8, 0.99), eps=1e-3), None),
    # torch's Adamax weight decay is an L2 term added to the gradient
    ("adamax_l2", lambda: gx.chain(gx.add_decayed_weights(0.05), gx.scale_by_adamax(), gx.scale_by_lr(2e-2)),
     lambda p: torch.optim.Adamax(p, lr=2e-2, weight_decay=0.05), None),
    # adamaxw: decoupled decay, which torch.optim.Adamax lacks: decay the weights by hand
    ("adamaxw", lambda: gx.adamaxw(2e-2, weight_decay=0.1),
     lambda p: torch.optim.Adamax(p, lr=2e-2), _decay_before_step(2e-2, 0.1)),
    ("amsgrad", lambda: gx.amsgrad(1e-2, debias_after_max=True),
     lambda p: torch.optim.Adam(p, lr=1e-2, amsgrad=True), None),
    ("amsgrad_betas", lambda: gx.amsgrad(2e-2, b1=0.5, b2=0.9, eps=1e-6, debias_after_max=True),
     lambda p: torch.optim.Adam(p, lr=2e-2, betas=(0.5, 0.9), eps=1e-6, amsgrad=True), None),
    ("amsgradw", lambda: gx.chain(gx.scale_by_amsgrad(debias_after_max=True), gx.add_decayed_weights(0.05),
                                  gx.scale_by_lr(1e-2)),
     lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.05, amsgrad=True), None),
    ("radam", lambda: gx.radam(1e-2, eps_before_debias=True), lambda p: torch.optim.RAdam(p, lr=1e-2), None),
    # a large eps makes where torch adds it matter; b2 = 0.9 rectifies from rho_t > 5 on
    ("radam_eps", lambda: gx.radam(1e-2, b1=0.8, b2=0.9, eps=1e-3, eps_before_debias=True),
     lambda p: torch.optim.RAdam(p, lr=1e-2, betas=(0.8, 0.9), eps=1e-3), None),
    ("radam_l2", lambda: gx.chain(gx.add_decayed_weights(0.05), gx.scale_by_radam(eps_before_debias=True),
                                  gx.scale_by_lr(1e-2)),
     lambda p: torch.optim.RAdam(p, lr=1e-2, weight_decay=0.05), None),
    ("radamw", lambda: gx.chain(gx.scale_by_radam(eps_before_debias=True), gx.add_decayed_weights(0.05),
                                gx.scale_by_lr(1e-2)),
     lambda p: torch.optim.RAdam(p, lr=1e-2, weight_decay=0.05, decoupled_weight_decay=True), None),
    ("nadam", lambda: gx.nadam(2e-3, momentum_decay=4e-3), lambda p: torch.optim.NAdam(p, lr=2e-3), None),
    ("nadam_args", lambda: gx.nadam(1e-2, b1=0.8, b2=0.99, eps=1e-6, momentum_decay=0.05),
     lambda p: torch.optim.NAdam(p, lr=1e-2, betas=(0.8, 0.99), eps=1e-6, momentum_decay=0.05), None),
    ("nadam_l2", lambda: gx.chain(gx.add_decayed_weights(0.05), gx.scale_by_nadam(), gx.scale_by_lr(1e-2)),
     lambda p: torch.optim.NAdam(p, lr=1e-2, weight_decay=0.05), None),
    ("nadamw", lambda: gx.nadamw(1e-2, weight_decay=0.05, momentum_decay=4e-3),
     lambda p: torch.optim.NAdam(p, lr=1e-2, weight_decay=0.05, decoupled_weight_decay=True), None),
]
IDS = [c[0] for c in CASES]


@functools.cache
def reference(name):
    """torch's float64 trajectory for a case, computed once for the functional and adapter tests."""
    _, make_opt, pre_step = next(c[1:] for c in CASES if c[0] == name)
    return torch_trajectory(MLPProblem(torch.float64), make_opt, pre_step)


@pytest.mark.parametrize("name,make_tx,make_opt,pre_step", CASES, ids=IDS)
def test_functional_matches_torch(name, make_tx, make_opt, pre_step):
    problem = MLPProblem(torch.float64)
    ref = reference(name)
    assert_same(functional_trajectory(problem, make_tx()), ref)
    # the trajectory moved: a no-op optimizer would not pass by accident
    assert not torch.allclose(ref[-1]["w1"], problem.params0["w1"])


@pytest.mark.parametrize("name,make_tx,make_opt,pre_step", CASES, ids=IDS)
def test_adapter_matches_torch(name, make_tx, make_opt, pre_step):
    assert_same(adapter_trajectory(MLPProblem(torch.float64), make_tx()), reference(name))


@pytest.mark.parametrize("name,make_tx,make_opt,pre_step", CASES[::2], ids=IDS[::2])
def test_float32_matches_torch(name, make_tx, make_opt, pre_step):
    problem = MLPProblem(torch.float32)
    ref = torch_trajectory(problem, make_opt, pre_step, steps=50)
    assert_same(functional_trajectory(problem, make_tx(), steps=50), ref, torch.float32)


@pytest.mark.parametrize("optax_form,make_opt", [
    (lambda: gx.amsgrad(1e-2), lambda p: torch.optim.Adam(p, lr=1e-2, amsgrad=True)),
    (lambda: gx.radam(1e-2, b2=0.9, eps=1e-3), lambda p: torch.optim.RAdam(p, lr=1e-2, betas=(0.9, 0.9), eps=1e-3)),
    (lambda: gx.nadam(2e-3), lambda p: torch.optim.NAdam(p, lr=2e-3)),
], ids=["amsgrad", "radam", "nadam"])
def test_optax_forms_differ_from_torch(optax_form, make_opt):
    """The defaults are optax's forms, which are not torch's: the options above are needed."""
    problem = MLPProblem(torch.float64)
    assert max_rel_gap(functional_trajectory(problem, optax_form()), torch_trajectory(problem, make_opt)) > 1e-6


def test_nadam_mu_product_is_float64_closed_form():
    """``P_t = prod_{i<=t} b1 (1 - 0.5 * 0.96^(i psi))`` kept in float64 whatever the params' dtype."""
    b1, psi, steps = 0.8, 0.05, 30
    tx = gx.scale_by_nadam(b1=b1, momentum_decay=psi)
    params = {"w": torch.zeros(3, dtype=torch.float32)}
    state = tx.init(params)
    for _ in range(steps):
        _, state = tx.update({"w": torch.ones(3)}, state)
    expected = math.prod(b1 * (1 - 0.5 * 0.96 ** (i * psi)) for i in range(1, steps + 1))
    assert state.mu_product.dtype == torch.float64
    assert float(state.mu_product) == pytest.approx(expected, rel=1e-14)


def test_torch_nadam_rounds_mu_product_to_the_default_dtype():
    """The documented difference: under torch's default float32, torch.optim.NAdam rounds
    ``mu_product`` to float32, so a float64 run departs from gradtx's at ~1e-8 relative."""
    problem = MLPProblem(torch.float64)
    with default_dtype(torch.float32):
        params = problem.leaf_params()
        opt = torch.optim.NAdam(list(params.values()), lr=2e-3)
        problem.loss(params, 0).backward()
        opt.step()
    assert opt.state[params["w1"]]["mu_product"].dtype == torch.float32
    ours = functional_trajectory(problem, gx.nadam(2e-3, momentum_decay=4e-3), steps=1)
    gap = max_rel_gap(ours, [{k: v.detach() for k, v in params.items()}])
    assert 1e-10 < gap < 1e-6


def test_nadam_mu_product_is_not_a_hyperparameter():
    params = MLPProblem().leaf_params()
    opt = gx.Optimizer(list(params.values()), gx.nadam(1e-3, momentum_decay=4e-3))
    assert "mu_product" not in opt.param_groups[0]
    assert opt.param_groups[0]["lr"] == 1e-3


# -- update rules written out per tensor -----------------------------------------------------


def _bc(beta, t):
    return 1 - beta ** t


def amsgrad_optax_rule(lr, b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0):
    def init(p):
        return {"m": torch.zeros_like(p), "v": torch.zeros_like(p), "vmax": torch.zeros_like(p)}

    def step(p, g, s, t):
        s["m"] = b1 * s["m"] + (1 - b1) * g
        s["v"] = b2 * s["v"] + (1 - b2) * g * g
        s["vmax"] = torch.maximum(s["vmax"], s["v"] / _bc(b2, t))
        return p - lr * (s["m"] / _bc(b1, t)) / (torch.sqrt(s["vmax"] + eps_root) + eps)
    return init, step


def _look_ahead(m, g, b1, t, nesterov):
    if nesterov:
        return b1 * m / _bc(b1, t + 1) + (1 - b1) * g / _bc(b1, t)
    return m / _bc(b1, t)


def belief_rule(lr, b1=0.9, b2=0.999, eps=1e-16, eps_root=1e-16, nesterov=False):
    def init(p):
        return {"m": torch.zeros_like(p), "s": torch.zeros_like(p)}

    def step(p, g, st, t):
        st["m"] = b1 * st["m"] + (1 - b1) * g
        st["s"] = b2 * st["s"] + (1 - b2) * (g - st["m"]) ** 2 + eps_root
        m_hat = _look_ahead(st["m"], g, b1, t, nesterov)
        return p - lr * m_hat / (torch.sqrt(st["s"] / _bc(b2, t)) + eps)
    return init, step


def yogi_rule(lr, b1=0.9, b2=0.999, eps=1e-3, eps_root=0.0, init_value=1e-6):
    def init(p):
        return {"m": torch.full_like(p, init_value), "v": torch.full_like(p, init_value)}

    def step(p, g, s, t):
        s["m"] = b1 * s["m"] + (1 - b1) * g
        s["v"] = s["v"] - (1 - b2) * torch.sign(s["v"] - g * g) * g * g
        return p - lr * (s["m"] / _bc(b1, t)) / (torch.sqrt(s["v"] / _bc(b2, t) + eps_root) + eps)
    return init, step


def radam_optax_rule(lr, b1=0.9, b2=0.999, eps=1e-8, eps_root=0.0, threshold=5.0, nesterov=False):
    rho_inf = 2 / (1 - b2) - 1

    def init(p):
        return {"m": torch.zeros_like(p), "v": torch.zeros_like(p)}

    def step(p, g, s, t):
        s["m"] = b1 * s["m"] + (1 - b1) * g
        s["v"] = b2 * s["v"] + (1 - b2) * g * g
        m_hat = _look_ahead(s["m"], g, b1, t, nesterov)
        rho = rho_inf - 2 * t * b2 ** t / (1 - b2 ** t)
        if rho < threshold:
            return p - lr * m_hat
        r = math.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
        return p - lr * r * m_hat / (torch.sqrt(s["v"] / _bc(b2, t) + eps_root) + eps)
    return init, step


def nadam_optax_rule(lr, b1=0.9, b2=0.999, eps=1e-8, wd=0.0):
    def init(p):
        return {"m": torch.zeros_like(p), "v": torch.zeros_like(p)}

    def step(p, g, s, t):
        s["m"] = b1 * s["m"] + (1 - b1) * g
        s["v"] = b2 * s["v"] + (1 - b2) * g * g
        m_hat = _look_ahead(s["m"], g, b1, t, True)
        return p - lr * (m_hat / (torch.sqrt(s["v"] / _bc(b2, t)) + eps) + wd * p)
    return init, step


def novograd_rule(lr, b1=0.9, b2=0.25, eps=1e-6, eps_root=0.0, wd=0.0):
    # Ginsburg et al. 2019, Algorithm 1 (optax's form: the first step sets n = ||g||^2, m = its update)
    def init(p):
        return {"m": torch.zeros_like(p), "n": None}

    def step(p, g, s, t):
        sq = float((g * g).sum())
        s["n"] = sq if s["n"] is None else b2 * s["n"] + (1 - b2) * sq
        direction = g / (math.sqrt(s["n"] + eps_root) + eps) + wd * p
        s["m"] = direction if t == 1 else b1 * s["m"] + direction
        return p - lr * s["m"]
    return init, step


def lion_rule(lr, b1=0.9, b2=0.99, wd=0.0, mode="hard", smooth_beta=1.0):
    # Chen et al. 2023, Program 1
    def init(p):
        return {"m": torch.zeros_like(p)}

    def step(p, g, s, t):
        c = b1 * s["m"] + (1 - b1) * g
        if mode == "hard":
            direction = torch.sign(c)
        elif mode == "smooth":
            direction = torch.tanh(smooth_beta * c)
        else:
            direction = torch.where(c.abs() < 1, c, torch.sign(c))
        s["m"] = b2 * s["m"] + (1 - b2) * g
        return p - lr * (direction + wd * p)
    return init, step


def adan_rule(lr, beta1=0.02, beta2=0.08, beta3=0.01, eps=1e-8, eps_root=0.0, wd=0.0):
    # Xie et al. 2022, Algorithm 1, in the paper's own betas (beta_i = 1 - b_i), with the
    # bias-corrected moments of the authors' code and decoupled weight decay (their no_prox=True)
    def init(p):
        return {"m": torch.zeros_like(p), "v": torch.zeros_like(p), "n": torch.zeros_like(p), "prev": None}

    def step(p, g, s, t):
        diff = torch.zeros_like(g) if s["prev"] is None else g - s["prev"]
        s["prev"] = g
        s["m"] = (1 - beta1) * s["m"] + beta1 * g
        s["v"] = (1 - beta2) * s["v"] + beta2 * diff
        s["n"] = (1 - beta3) * s["n"] + beta3 * (g + (1 - beta2) * diff) ** 2
        m_hat, v_hat, n_hat = s["m"] / _bc(1 - beta1, t), s["v"] / _bc(1 - beta2, t), s["n"] / _bc(1 - beta3, t)
        eta = lr / (torch.sqrt(n_hat + eps_root) + eps)
        return p - eta * (m_hat + (1 - beta2) * v_hat) - lr * wd * p
    return init, step


FORMULA_STEPS = 50
FORMULAS = [
    ("amsgrad_optax", lambda: gx.amsgrad(1e-2, b2=0.9), amsgrad_optax_rule(1e-2, b2=0.9)),
    ("amsgrad_eps_root", lambda: gx.amsgrad(1e-2, eps_root=1e-6), amsgrad_optax_rule(1e-2, eps_root=1e-6)),
    ("adabelief", lambda: gx.adabelief(1e-2), belief_rule(1e-2)),
    ("adabelief_args", lambda: gx.adabelief(1e-2, b1=0.8, b2=0.95, eps=1e-8, eps_root=1e-10),
     belief_rule(1e-2, b1=0.8, b2=0.95, eps=1e-8, eps_root=1e-10)),
    ("adabelief_nesterov", lambda: gx.adabelief(1e-2, nesterov=True), belief_rule(1e-2, nesterov=True)),
    ("yogi", lambda: gx.yogi(1e-2), yogi_rule(1e-2)),
    ("yogi_transform", lambda: gx.chain(gx.scale_by_yogi(0.8, 0.99, 1e-4, 1e-8, 1e-3), gx.scale_by_lr(1e-2)),
     yogi_rule(1e-2, 0.8, 0.99, 1e-4, 1e-8, 1e-3)),
    ("radam_optax", lambda: gx.radam(1e-2, b2=0.9, eps=1e-3), radam_optax_rule(1e-2, b2=0.9, eps=1e-3)),
    ("radam_threshold", lambda: gx.radam(1e-2, threshold=12.0, eps_root=1e-8),
     radam_optax_rule(1e-2, threshold=12.0, eps_root=1e-8)),
    ("radam_nesterov", lambda: gx.radam(1e-2, b2=0.95, nesterov=True), radam_optax_rule(1e-2, b2=0.95, nesterov=True)),
    ("nadam_optax", lambda: gx.nadam(1e-2), nadam_optax_rule(1e-2)),
    ("nadamw_optax", lambda: gx.nadamw(1e-2, weight_decay=0.05), nadam_optax_rule(1e-2, wd=0.05)),
    ("novograd", lambda: gx.novograd(1e-2), novograd_rule(1e-2)),
    ("novograd_wd", lambda: gx.novograd(1e-2, b1=0.95, b2=0.5, eps=1e-8, eps_root=1e-6, weight_decay=0.05),
     novograd_rule(1e-2, b1=0.95, b2=0.5, eps=1e-8, eps_root=1e-6, wd=0.05)),
    ("lion", lambda: gx.lion(1e-3), lion_rule(1e-3, wd=1e-3)),
    ("lion_args", lambda: gx.lion(3e-3, b1=0.8, b2=0.95, weight_decay=0.1), lion_rule(3e-3, 0.8, 0.95, wd=0.1)),
    ("lion_smooth", lambda: gx.chain(gx.scale_by_lion(mode="smooth", smooth_beta=3.0), gx.scale_by_lr(1e-3)),
     lion_rule(1e-3, mode="smooth", smooth_beta=3.0)),
    ("lion_refined", lambda: gx.chain(gx.scale_by_lion(mode="refined"), gx.scale_by_lr(1e-2)),
     lion_rule(1e-2, mode="refined")),
    ("adan", lambda: gx.adan(1e-2), adan_rule(1e-2, eps_root=1e-8)),
    ("adan_args", lambda: gx.adan(1e-2, b1=0.9, b2=0.8, b3=0.95, eps=1e-6, eps_root=0.0, weight_decay=0.05),
     adan_rule(1e-2, 0.1, 0.2, 0.05, eps=1e-6, wd=0.05)),
]


@pytest.mark.parametrize("name,make_tx,rule", FORMULAS, ids=[f[0] for f in FORMULAS])
def test_matches_update_rule(name, make_tx, rule):
    problem = MLPProblem(torch.float64)
    ref = formula_trajectory(problem, rule, FORMULA_STEPS)
    assert_same(functional_trajectory(problem, make_tx(), steps=FORMULA_STEPS), ref)


@pytest.mark.parametrize("name,make_tx,rule", FORMULAS[::3], ids=[f[0] for f in FORMULAS[::3]])
def test_adapter_matches_update_rule(name, make_tx, rule):
    problem = MLPProblem(torch.float64)
    ref = formula_trajectory(problem, rule, FORMULA_STEPS)
    assert_same(adapter_trajectory(problem, make_tx(), steps=FORMULA_STEPS), ref)


def test_amsgrad_max_never_decreases():
    tx = gx.scale_by_amsgrad(b2=0.5)
    params = {"w": torch.zeros(5, dtype=torch.float64)}
    state = tx.init(params)
    previous = torch.zeros(5, dtype=torch.float64)
    for scale in [10.0, 1.0, 0.1, 5.0, 0.01]:
        _, state = tx.update({"w": torch.full((5,), scale, dtype=torch.float64)}, state)
        assert torch.all(state.nu_max["w"] >= previous)
        previous = state.nu_max["w"].clone()
    assert torch.all(state.nu["w"] < state.nu_max["w"])  # v itself decayed below its maximum


def test_radam_first_steps_are_momentum_sgd():
    """Before rho_t reaches the threshold the update is the bias-corrected momentum."""
    tx = gx.scale_by_radam()
    params = {"w": torch.zeros(3, dtype=torch.float64)}
    state = tx.init(params)
    g = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    for _ in range(3):
        u, state = tx.update({"w": g}, state)
        torch.testing.assert_close(u["w"], g, rtol=1e-12, atol=0)


# -- hyperparameter validation -----------------------------------------------------------------


BAD = [
    (gx.scale_by_adamax, dict(b1=1.0), "b1"), (gx.scale_by_adamax, dict(b2=-0.1), "b2"),
    (gx.scale_by_adamax, dict(eps=-1.0), "eps"),
    (gx.scale_by_amsgrad, dict(b2=1.5), "b2"), (gx.scale_by_amsgrad, dict(eps_root=-1e-3), "eps_root"),
    (gx.scale_by_belief, dict(b1=-0.5), "b1"), (gx.scale_by_belief, dict(eps=-1e-3), "eps"),
    (gx.scale_by_yogi, dict(initial_accumulator_value=-1.0), "initial_accumulator_value"),
    (gx.scale_by_yogi, dict(b2=1.0), "b2"),
    (gx.scale_by_radam, dict(b2=1.0), "b2"), (gx.scale_by_radam, dict(threshold=float("nan")), "threshold"),
    (gx.scale_by_nadam, dict(momentum_decay=-1.0), "momentum_decay"), (gx.scale_by_nadam, dict(b1=2.0), "b1"),
    (gx.scale_by_novograd, dict(weight_decay=-1.0), "weight_decay"), (gx.scale_by_novograd, dict(b2=1.0), "b2"),
    (gx.scale_by_lion, dict(b1=1.0), "b1"), (gx.scale_by_lion, dict(mode="soft"), "mode"),
    (gx.scale_by_lion, dict(smooth_beta=-1.0), "smooth_beta"),
    (gx.scale_by_adan, dict(b3=1.0), "b3"), (gx.scale_by_adan, dict(eps_root=-1.0), "eps_root"),
    (gx.adamax, dict(lr=-1.0), "lr"), (gx.adamaxw, dict(lr=1e-3, weight_decay=-1.0), "weight_decay"),
    (gx.amsgrad, dict(lr=1e-3, b1=1.0), "b1"), (gx.adabelief, dict(lr=-1e-3), "lr"),
    (gx.yogi, dict(lr=1e-3, eps=-1.0), "eps"), (gx.radam, dict(lr=1e-3, b1=-0.1), "b1"),
    (gx.novograd, dict(lr=1e-3, weight_decay=-0.1), "weight_decay"), (gx.lion, dict(lr=-1e-4), "lr"),
    (gx.lion, dict(lr=1e-4, weight_decay=-1.0), "weight_decay"), (gx.adan, dict(lr=1e-3, b2=1.0), "b2"),
    (gx.nadam, dict(lr=1e-3, momentum_decay=-4e-3), "momentum_decay"), (gx.nadam, dict(lr=1e-3, b2=1.0), "b2"),
    (gx.nadamw, dict(lr=1e-3, weight_decay=-1.0), "weight_decay"),
]


@pytest.mark.parametrize("fn,kwargs,name", BAD, ids=[f"{f.__name__}-{n}" for f, _, n in BAD])
def test_bad_hyperparameters_raise(fn, kwargs, name):
    with pytest.raises(ValueError, match=name):
        fn(**kwargs)


def test_novograd_with_weight_decay_needs_params():
    tx = gx.scale_by_novograd(weight_decay=0.1)
    params = {"w": torch.ones(2)}
    with pytest.raises(ValueError, match="params"):
        tx.update({"w": torch.ones(2)}, tx.init(params))


# -- low-precision first moments ---------------------------------------------------------------


@pytest.mark.parametrize("make_tx", [
    lambda dt: gx.scale_by_amsgrad(mu_dtype=dt), lambda dt: gx.scale_by_nadam(mu_dtype=dt),
    lambda dt: gx.scale_by_novograd(weight_decay=1e-3, mu_dtype=dt), lambda dt: gx.scale_by_lion(mu_dtype=dt),
], ids=["amsgrad", "nadam", "novograd", "lion"])
@pytest.mark.parametrize("inplace", [False, True], ids=["pure", "inplace"])
def test_mu_dtype(make_tx, inplace):
    """``mu_dtype=bfloat16`` keeps the first moment in bfloat16 and the updates in the params'
    dtype, and stays within bfloat16 round-off of the float32 moment (both fed the same
    gradients)."""
    problem = MLPProblem(torch.float32)
    params = {k: v.clone() for k, v in problem.params0.items()}
    low, full = make_tx(torch.bfloat16), make_tx(None)
    s_low, s_full = low.init(params), full.init(params)
    for t in range(5):
        grads = problem.grads(params, t)
        u_low, s_low = low.update({k: g.clone() for k, g in grads.items()}, s_low, params, inplace=inplace)
        u_full, s_full = full.update(grads, s_full, params)
        for k in params:
            assert s_low.mu[k].dtype == torch.bfloat16 and u_low[k].dtype == torch.float32
            # bfloat16 keeps 8 significant bits: errors of a few 2^-8 of the moment's scale
            scale = float(s_full.mu[k].abs().max())
            torch.testing.assert_close(s_low.mu[k].float(), s_full.mu[k], rtol=0, atol=2e-2 * scale)
        params = gx.apply_updates(params, u_full)
