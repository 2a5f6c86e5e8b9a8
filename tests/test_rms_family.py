"""The RMS / accumulator family: trajectories equal to torch.optim, update rules written out
independently (optax's / the papers' formulas), and hyperparameter validation."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from conftest import TOL, MLPProblem, assert_same, default_dtype

import gradtx as gx

STEPS = 200


def adafactor_relative_step(a):
    # torch's Adafactor step size: min(lr, 1/sqrt(t)), t counting from 1
    return lambda count: torch.clamp((count.to(torch.float64) + 1.0) ** -0.5, max=a)


# (name, gradtx alias factory, torch optimizer factory, dtypes)
F64 = (torch.float64,)
BOTH = (torch.float64, torch.float32)
CASES = [
    ("adagrad_torch_defaults", lambda: gx.adagrad(1e-2, initial_accumulator_value=0.0, eps=1e-10, eps_in_sqrt=False),
     lambda p: torch.optim.Adagrad(p, lr=1e-2), BOTH),
    ("adagrad_all_options", lambda: gx.adagrad(5e-2, 0.1, 1e-8, eps_in_sqrt=False, lr_decay=1e-2, weight_decay=1e-2),
     lambda p: torch.optim.Adagrad(p, lr=5e-2, lr_decay=1e-2, weight_decay=1e-2, initial_accumulator_value=0.1,
                                   eps=1e-8), BOTH),
    ("adadelta", lambda: gx.adadelta(), lambda p: torch.optim.Adadelta(p), BOTH),
    ("adadelta_options", lambda: gx.adadelta(0.5, rho=0.95, eps=1e-5, weight_decay=1e-2),
     lambda p: torch.optim.Adadelta(p, lr=0.5, rho=0.95, eps=1e-5, weight_decay=1e-2), BOTH),
    ("rmsprop", lambda: gx.rmsprop(1e-2, decay=0.99, eps_in_sqrt=False),
     lambda p: torch.optim.RMSprop(p, lr=1e-2), BOTH),
    ("rmsprop_centered", lambda: gx.rmsprop(1e-3, decay=0.99, eps_in_sqrt=False, centered=True),
     lambda p: torch.optim.RMSprop(p, lr=1e-3, centered=True), BOTH),
    ("rmsprop_momentum", lambda: gx.rmsprop(1e-3, decay=0.9, eps=1e-6, eps_in_sqrt=False, momentum=0.9),
     lambda p: torch.optim.RMSprop(p, lr=1e-3, alpha=0.9, eps=1e-6, momentum=0.9), BOTH),
    ("rmsprop_centered_momentum_wd",
     lambda: gx.rmsprop(1e-3, decay=0.95, eps_in_sqrt=False, centered=True, momentum=0.5, weight_decay=1e-2),
     lambda p: torch.optim.RMSprop(p, lr=1e-3, alpha=0.95, centered=True, momentum=0.5, weight_decay=1e-2), BOTH),
    ("rprop", lambda: gx.rprop(1e-2), lambda p: torch.optim.Rprop(p, lr=1e-2), BOTH),
    ("rprop_options", lambda: gx.rprop(1e-3, eta_minus=0.3, eta_plus=1.5, min_step_size=1e-5, max_step_size=0.02),
     lambda p: torch.optim.Rprop(p, lr=1e-3, etas=(0.3, 1.5), step_sizes=(1e-5, 0.02)), BOTH),
    ("asgd", lambda: gx.asgd(1e-2), lambda p: torch.optim.ASGD(p, lr=1e-2), BOTH),
    ("asgd_options", lambda: gx.asgd(5e-2, lambd=1e-2, alpha=0.6, t0=50, weight_decay=1e-3),
     lambda p: torch.optim.ASGD(p, lr=5e-2, lambd=1e-2, alpha=0.6, t0=50, weight_decay=1e-3), BOTH),
    ("adafactor", lambda: gx.adafactor(adafactor_relative_step(1e-2), min_dim_size_to_factor=1, eps=0.0),
     lambda p: torch.optim.Adafactor(p, lr=1e-2), BOTH),
    # float64 only: at this step size float32 round-off grows past rtol 1e-5 by step 40
    ("adafactor_options",
     lambda: gx.adafactor(adafactor_relative_step(0.3), decay_rate=0.5, min_dim_size_to_factor=1,
                          clipping_threshold=2.0, eps=0.0),
     lambda p: torch.optim.Adafactor(p, lr=0.3, beta2_decay=-0.5, d=2.0), F64),
    # torch decays by lr * weight_decay with its lr a; here the decay is multiplied by the
    # relative step min(a, 1/sqrt(t)), which is a for the 200 steps (t <= 1/a^2 = 1e4)
    ("adafactor_weight_decay",
     lambda: gx.adafactor(adafactor_relative_step(1e-2), min_dim_size_to_factor=1, eps=0.0, weight_decay_rate=0.1),
     lambda p: torch.optim.Adafactor(p, lr=1e-2, weight_decay=0.1), BOTH),
]
PARAMS = [pytest.param(name, tx, opt, dtype, id=f"{name}-{str(dtype)[6:]}")
          for name, tx, opt, dtypes in CASES for dtype in dtypes]


def torch_trajectory(problem, make_opt, steps=STEPS):
    # torch keeps ASGD's eta (and Adafactor's step) as default-dtype scalars: make them float64
    # in a float64 run, so that the reference is not rounded to float32.
    with default_dtype(problem.dtype):
        params = problem.leaf_params()
        opt = make_opt(list(params.values()))
        out = []
        for t in range(steps):
            opt.zero_grad()
            problem.loss(params, t).backward()
            opt.step()
            out.append({k: v.detach().clone() for k, v in params.items()})
    return out, opt


def functional_trajectory(problem, tx, steps=STEPS):
    params = {k: v.clone() for k, v in problem.params0.items()}
    state = tx.init(params)
    out = []
    for t in range(steps):
        updates, state = tx.update(problem.grads(params, t), state, params)
        params = gx.apply_updates(params, updates)
        out.append(params)
    return out, state


def adapter_trajectory(problem, tx, steps=STEPS, groups=None):
    params = problem.leaf_params()
    opt = gx.Optimizer(list(params.values()), tx)
    for key, value in (groups or {}).items():
        opt.param_groups[0][key] = value
    out = []
    for t in range(steps):
        opt.zero_grad()
        problem.loss(params, t).backward()
        opt.step()
        out.append({k: v.detach().clone() for k, v in params.items()})
    return out, opt


@functools.cache
def reference(name, dtype):
    make_opt = next(c[2] for c in CASES if c[0] == name)
    return torch_trajectory(MLPProblem(dtype), make_opt)


@pytest.mark.parametrize("name,make_tx,make_opt,dtype", PARAMS)
def test_functional_matches_torch(name, make_tx, make_opt, dtype):
    ref, _ = reference(name, dtype)
    traj, _ = functional_trajectory(MLPProblem(dtype), make_tx())
    assert_same(traj, ref, dtype)
    # the trajectory moved: a no-op optimizer would not pass by accident
    assert not torch.allclose(ref[-1]["w1"], MLPProblem(dtype).params0["w1"])


@pytest.mark.parametrize("name,make_tx,make_opt,dtype", PARAMS)
def test_adapter_matches_torch(name, make_tx, make_opt, dtype):
    ref, _ = reference(name, dtype)
    traj, _ = adapter_trajectory(MLPProblem(dtype), make_tx())
    assert_same(traj, ref, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
def test_asgd_average_matches_torch(dtype):
    """The averaged iterate ``ax`` (averaging from step t0 = 50 on) equals torch's."""
    problem = MLPProblem(dtype)
    _, opt = reference("asgd_options", dtype)
    _, state = functional_trajectory(problem, gx.asgd(5e-2, lambd=1e-2, alpha=0.6, t0=50, weight_decay=1e-3))
    ax = state[1].ax
    torch_params = opt.param_groups[0]["params"]
    for k, p in zip(problem.params0, torch_params):
        torch.testing.assert_close(ax[k], opt.state[p]["ax"], **TOL[dtype])
        assert not torch.allclose(ax[k], p.detach())  # averaging is on: ax is not the last iterate


def test_lr_from_param_groups_drives_both_asgd_rates():
    """Setting ``lr`` on the group before stepping is ASGD with that lr (eta_t and the step)."""
    problem = MLPProblem(torch.float64)
    ref, _ = torch_trajectory(problem, lambda p: torch.optim.ASGD(p, lr=3e-2, lambd=1e-1), steps=60)
    traj, opt = adapter_trajectory(problem, gx.asgd(1e-2, lambd=1e-1), steps=60, groups={"lr": 3e-2})
    assert opt.param_groups[0]["lr"] == 3e-2
    assert_same(traj, ref, torch.float64)


@pytest.mark.parametrize("shape,same", [((3, 6, 5), True), ((6, 5, 2), False)], ids=["last-two-largest", "other"])
def test_adafactor_higher_rank_against_torch(shape, same):
    """The documented difference on tensors of rank 3: torch factors the last two axes, gradtx
    (as optax) the two largest. The factored estimate ``R C / mean(R)`` does not depend on
    which of the two axes is called the row, so the two agree when the two largest axes are
    the last two, and differ otherwise."""
    gen = torch.Generator().manual_seed(0)
    p0 = torch.randn(shape, generator=gen, dtype=torch.float64)
    targets = [torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(4)]

    def grad(p, t):
        p = p.detach().requires_grad_(True)
        return torch.autograd.grad(((torch.tanh(p) - targets[t % 4]) ** 2).sum(), p)[0]

    with default_dtype(torch.float64):
        leaf = p0.clone().requires_grad_(True)
        opt = torch.optim.Adafactor([leaf], lr=1e-2)
        for t in range(50):
            leaf.grad = grad(leaf, t)
            opt.step()
    tx = gx.adafactor(adafactor_relative_step(1e-2), min_dim_size_to_factor=1, eps=0.0)
    params = {"k": p0.clone()}
    state = tx.init(params)
    for t in range(50):
        updates, state = tx.update({"k": grad(params["k"], t)}, state, params)
        params = gx.apply_updates(params, updates)
    assert not torch.allclose(leaf.detach(), p0)
    if same:
        torch.testing.assert_close(params["k"], leaf.detach(), **TOL[torch.float64])
    else:
        assert float(((params["k"] - leaf.detach()).abs() / leaf.detach().abs()).max()) > 1e-6


@pytest.mark.parametrize("make_tx,lr", [
    (lambda: gx.adagrad(0.1), 0.1), (lambda: gx.adadelta(), 1.0), (lambda: gx.rmsprop(0.01), 0.01),
    (lambda: gx.rprop(0.02), 0.02), (lambda: gx.adafactor(), 1.0), (lambda: gx.adafactor(0.3), 0.3),
    (lambda: gx.sm3(0.5), 0.5), (lambda: gx.sign_sgd(0.1), 0.1), (lambda: gx.signum(0.1), 0.1),
    (lambda: gx.asgd(0.2), 0.2)])
def test_aliases_expose_lr(make_tx, lr):
    opt = gx.Optimizer([torch.zeros(2, requires_grad=True)], make_tx())
    assert opt.param_groups[0]["lr"] == lr


# -- update rules written out per tensor --------------------------------------------------------------------------

def _tree(dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {"t": torch.randn(3, 5, 4, generator=gen, dtype=dtype), "w": torch.randn(6, 4, generator=gen, dtype=dtype),
            "b": torch.randn(4, generator=gen, dtype=dtype), "s": torch.randn((), generator=gen, dtype=dtype)}


def _grads(step, dtype=torch.float64):
    # varied magnitudes and signs, some exact zeros
    g = _tree(dtype, seed=100 + step)
    g["w"][0, 0] = 0.0
    return {k: v * (1.0 + 0.5 * math.sin(step)) for k, v in g.items()}


def run_tx(tx, steps, params=None, **extra):
    params = _tree() if params is None else params
    state = tx.init(params)
    outs = []
    for t in range(steps):
        updates, state = tx.update(_grads(t), state, params, **extra)
        outs.append(updates)
        params = gx.apply_updates(params, updates)
    return outs, params


def run_rule(rule, steps, params=None):
    """``rule(g, p, t, state_dict) -> u`` per tensor, ``t`` counting from 1."""
    params = _tree() if params is None else params
    states = {k: {} for k in params}
    outs = []
    for t in range(steps):
        grads = _grads(t)
        updates = {k: rule(grads[k], params[k], t + 1, states[k]) for k in params}
        outs.append(updates)
        params = {k: params[k] + updates[k] for k in params}
    return outs, params


def assert_updates_close(outs, ref, rtol=1e-12, atol=1e-14):
    for t, (a, b) in enumerate(zip(outs, ref)):
        for k in b:
            torch.testing.assert_close(a[k], b[k], rtol=rtol, atol=atol, msg=lambda m, t=t, k=k: f"step {t}, {k}: {m}")


def test_scale_by_rss_optax_defaults():
    def rule(g, p, t, st):
        st["s"] = st.get("s", torch.full_like(g, 0.1)) + g * g
        return g / torch.sqrt(st["s"] + 1e-7)

    assert_updates_close(run_tx(gx.scale_by_rss(), 30)[0], run_rule(rule, 30)[0])


def test_scale_by_rss_zero_accumulator_gives_zero():
    zero = {"w": torch.zeros(3, 2)}
    for eps_in_sqrt in (True, False):
        tx = gx.scale_by_rss(initial_accumulator_value=0.0, eps=0.0, eps_in_sqrt=eps_in_sqrt)
        updates, _ = tx.update(zero, tx.init(zero))
        assert torch.equal(updates["w"], torch.zeros(3, 2))
        updates, _ = tx.update(zero, tx.init(zero), inplace=True)
        assert torch.equal(updates["w"], torch.zeros(3, 2))


@pytest.mark.parametrize("eps_in_sqrt,bias_correction", [(True, False), (True, True), (False, True)])
def test_scale_by_stddev_formula(eps_in_sqrt, bias_correction):
    decay, eps, init = 0.8, 1e-6, 0.05

    def rule(g, p, t, st):
        st["m"] = decay * st.get("m", torch.zeros_like(g)) + (1 - decay) * g
        st["v"] = decay * st.get("v", torch.full_like(g, init)) + (1 - decay) * g * g
        m, v = st["m"], st["v"]
        if bias_correction:
            m, v = m / (1 - decay ** t), v / (1 - decay ** t)
        var = v - m * m
        return g / torch.sqrt(var + eps) if eps_in_sqrt else g / (torch.sqrt(var) + eps)

    tx = gx.scale_by_stddev(decay, eps, init, eps_in_sqrt, bias_correction)
    assert_updates_close(run_tx(tx, 30)[0], run_rule(rule, 30)[0], rtol=1e-10)


@pytest.mark.parametrize("b1,b2", [(0.9, 1.0), (0.5, 0.95), (0.0, 1.0)])
def test_scale_by_sm3_formula(b1, b2):
    """SM3-II with one cover set per row / column / fibre, written per tensor."""
    eps = 1e-8

    def rule(g, p, t, st):
        if g.dim() < 2:
            prev = st.get("acc", torch.zeros_like(g))
        else:
            # nu'(i) from the per-axis maxima: min over the axes of the previous maxima at i
            idx = torch.stack(torch.meshgrid(*[torch.arange(n) for n in g.shape], indexing="ij"), -1)
            accs = st.get("mu", [torch.zeros(n, dtype=g.dtype) for n in g.shape])
            prev = torch.stack([accs[a][idx[..., a]] for a in range(g.dim())]).amin(0)
        acc = g * g + prev if b2 == 1.0 else (1 - b2) * g * g + b2 * prev
        if g.dim() < 2:
            st["acc"] = acc
        else:
            st["mu"] = [acc.transpose(0, a).reshape(g.shape[a], -1).amax(1) for a in range(g.dim())]
        scaled = torch.where(acc > 0, g / torch.sqrt(acc + eps), torch.zeros_like(g))
        st["nu"] = b1 * st.get("nu", torch.zeros_like(g)) + (1 - b1) * scaled
        return st["nu"]

    outs, _ = run_tx(gx.scale_by_sm3(b1, b2), 30)
    assert_updates_close(outs, run_rule(rule, 30)[0])


def _factored_rule(decay_rate, min_dim, epsilon, factored=True):
    """Adafactor's factored second moment (Shazeer & Stern, 2018, Algorithm 4), per tensor."""

    def rule(g, p, t, st):
        beta = 1 - t ** (-decay_rate)
        sq = g * g + epsilon
        shape = list(g.shape)
        big = sorted(range(len(shape)), key=lambda i: shape[i])[-2:] if len(shape) >= 2 else []
        if factored and big and shape[big[0]] >= min_dim:
            a1, a0 = big  # second largest, largest
            st["r"] = beta * st.get("r", 0.0) + (1 - beta) * sq.mean(a0, keepdim=True)
            st["c"] = beta * st.get("c", 0.0) + (1 - beta) * sq.mean(a1, keepdim=True)
            v_hat = st["r"] * st["c"] / st["r"].mean(a1, keepdim=True)
        else:
            st["v"] = beta * st.get("v", 0.0) + (1 - beta) * sq
            v_hat = st["v"]
        return g / torch.sqrt(v_hat)

    return rule


@pytest.mark.parametrize("factored,min_dim", [(True, 1), (True, 5), (False, 1)])
def test_scale_by_factored_rms_formula(factored, min_dim):
    tx = gx.scale_by_factored_rms(factored, decay_rate=0.8, min_dim_size_to_factor=min_dim, epsilon=1e-30)
    outs, _ = run_tx(tx, 30)
    assert_updates_close(outs, run_rule(_factored_rule(0.8, min_dim, 1e-30, factored), 30)[0], rtol=1e-10)


def test_scale_by_factored_rms_state_is_factored():
    state = gx.scale_by_factored_rms(min_dim_size_to_factor=4).init(_tree())
    # t (3, 5, 4): the largest axes are 1 (5) and 2 (4); w (6, 4): 0 and 1
    assert state.v_row["t"].shape == (3, 4) and state.v_col["t"].shape == (3, 5) and state.v["t"].shape == (1,)
    assert state.v_row["w"].shape == (4,) and state.v_col["w"].shape == (6,)
    assert state.v["b"].shape == (4,) and state.v_row["b"].shape == (1,)


def test_adafactor_optax_formula():
    """The full optax-style chain with momentum and weight decay, written out."""
    lr, mom, wd, clip = 0.05, 0.8, 1e-2, 1.0
    inner = _factored_rule(0.8, 3, 1e-30)

    def rule(g, p, t, st):
        d = inner(g, p, t, st)
        d = d / max(1.0, float(d.pow(2).mean().sqrt()) / clip)
        d = d * max(float(p.pow(2).mean().sqrt()), 1e-3)
        st["m"] = mom * st.get("m", torch.zeros_like(g)) + (1 - mom) * d
        return -lr * (st["m"] + wd * p)

    tx = gx.adafactor(lr, min_dim_size_to_factor=3, momentum=mom, dtype_momentum=None, weight_decay_rate=wd)
    outs, params = run_tx(tx, 40)
    ref, ref_params = run_rule(rule, 40)
    assert_updates_close(outs, ref, rtol=1e-10)
    for k in params:
        torch.testing.assert_close(params[k], ref_params[k], rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("centered,nesterov", [(False, True), (True, False)], ids=["nesterov", "centered"])
def test_rmsprop_optax_form_formula(centered, nesterov):
    """optax's defaults (eps inside the root, v from initial_scale), with bias correction and a
    momentum trace (Nesterov's ``d + momentum b`` or plain ``b``), written out per tensor."""
    lr, decay, eps, init, mom = 0.02, 0.8, 1e-6, 0.05, 0.6

    def rule(g, p, t, st):
        st["v"] = decay * st.get("v", torch.full_like(g, init)) + (1 - decay) * g * g
        v = st["v"]
        if centered:
            st["m"] = decay * st.get("m", torch.zeros_like(g)) + (1 - decay) * g
            m, v = st["m"] / (1 - decay ** t), v / (1 - decay ** t)
            v = v - m * m
        else:
            v = v / (1 - decay ** t)
        d = g / torch.sqrt(v + eps)
        st["b"] = mom * st.get("b", torch.zeros_like(g)) + d
        return -lr * (d + mom * st["b"] if nesterov else st["b"])

    tx = gx.rmsprop(lr, decay, eps, init, centered=centered, momentum=mom, nesterov=nesterov, bias_correction=True)
    assert_updates_close(run_tx(tx, 30)[0], run_rule(rule, 30)[0], rtol=1e-10)


def test_sign_sgd_and_signum_formulas():
    lr, mom = 0.03, 0.7
    outs, _ = run_tx(gx.sign_sgd(lr), 20)
    assert_updates_close(outs, run_rule(lambda g, p, t, st: -lr * torch.sign(g), 20)[0])

    def signum_rule(g, p, t, st):
        st["m"] = mom * st.get("m", torch.zeros_like(g)) + (1 - mom) * g
        return -lr * torch.sign(st["m"])

    outs, _ = run_tx(gx.signum(lr, momentum=mom), 20)
    assert_updates_close(outs, run_rule(signum_rule, 20)[0])


def test_rprop_first_step_is_clamped_like_torch():
    """optax would take the first step at ``lr`` unclamped; torch (and gradtx) clamp it."""
    tx = gx.scale_by_rprop(lr=100.0, max_step_size=50.0)
    g = {"w": torch.tensor([1.0, -2.0, 0.0])}
    updates, state = tx.update(g, tx.init(g))
    assert torch.equal(updates["w"], torch.tensor([50.0, -50.0, 0.0]))
    assert torch.equal(state.step_sizes["w"], torch.full((3,), 50.0))
    # a sign flip: no move, the step shrinks, and the next step sees no history
    updates, state = tx.update({"w": torch.tensor([-1.0, -1.0, 1.0])}, state)
    assert torch.equal(updates["w"], torch.tensor([0.0, -50.0, 50.0]))
    assert torch.equal(state.step_sizes["w"], torch.tensor([25.0, 50.0, 50.0]))
    updates, state = tx.update({"w": torch.tensor([-1.0, -1.0, 1.0])}, state)
    assert torch.equal(updates["w"], torch.tensor([-25.0, -50.0, 50.0]))


# -- validation -----------------------------------------------------------------------------------------------------

BAD = [
    (lambda: gx.scale_by_rss(initial_accumulator_value=-1.0), "initial_accumulator_value"),
    (lambda: gx.scale_by_rss(eps=-1e-3), "eps"),
    (lambda: gx.scale_by_adadelta(rho=1.5), "rho"),
    (lambda: gx.scale_by_adadelta(eps=-1.0), "eps"),
    (lambda: gx.scale_by_rprop(0.0), "lr"),
    (lambda: gx.scale_by_rprop(0.1, eta_minus=1.0), "eta_minus"),
    (lambda: gx.scale_by_rprop(0.1, eta_plus=0.9), "eta_plus"),
    (lambda: gx.scale_by_rprop(0.1, min_step_size=-1.0), "min_step_size"),
    (lambda: gx.scale_by_rprop(0.1, min_step_size=1.0, max_step_size=0.5), "max_step_size"),
    (lambda: gx.scale_by_stddev(decay=1.0), "decay"),
    (lambda: gx.scale_by_stddev(eps=-1.0), "eps"),
    (lambda: gx.scale_by_stddev(initial_scale=-1.0), "initial_scale"),
    (lambda: gx.scale_by_asgd(-0.1), "lr"),
    (lambda: gx.scale_by_asgd(lambda c: 0.1), "lr"),
    (lambda: gx.scale_by_asgd(0.1, lambd=-1.0), "lambd"),
    (lambda: gx.scale_by_asgd(0.1, alpha=-1.0), "alpha"),
    (lambda: gx.scale_by_asgd(0.1, t0=-1.0), "t0"),
    (lambda: gx.scale_by_sm3(b1=1.0), "b1"),
    (lambda: gx.scale_by_sm3(b2=1.5), "b2"),
    (lambda: gx.scale_by_sm3(eps=-1.0), "eps"),
    (lambda: gx.scale_by_factored_rms(decay_rate=-0.8), "decay_rate"),
    (lambda: gx.scale_by_factored_rms(epsilon=-1.0), "epsilon"),
    (lambda: gx.scale_by_factored_rms(decay_rate_fn=0.8), "decay_rate_fn"),
    (lambda: gx.adagrad(-0.1), "lr"),
    (lambda: gx.adagrad(0.1, lr_decay=-1.0), "lr_decay"),
    (lambda: gx.adagrad(0.1, weight_decay=-1.0), "weight_decay"),
    (lambda: gx.adadelta(-1.0), "lr"),
    (lambda: gx.rmsprop(0.1, decay=1.0), "decay"),
    (lambda: gx.rmsprop(0.1, nesterov=True), "nesterov"),
    (lambda: gx.rmsprop(0.1, momentum=-0.5), "momentum"),
    (lambda: gx.rprop(0.0), "lr"),
    (lambda: gx.rprop(0.1, eta_plus=1.0), "eta_plus"),
    (lambda: gx.adafactor(0.1, clipping_threshold=0.0), "clipping_threshold"),
    (lambda: gx.adafactor(0.1, momentum=1.0), "momentum"),
    (lambda: gx.adafactor(-0.1), "lr"),
    (lambda: gx.adafactor(0.1, eps=-1.0), "eps"),
    (lambda: gx.adafactor(0.1, decay_rate=-0.8), "decay_rate"),
    (lambda: gx.adagrad(0.1, initial_accumulator_value=-1.0), "initial_accumulator_value"),
    (lambda: gx.adadelta(1.0, rho=1.5), "rho"),
    (lambda: gx.sm3(-0.1), "lr"),
    (lambda: gx.sm3(0.1, momentum=1.0), "momentum"),
    (lambda: gx.sign_sgd(-1.0), "lr"),
    (lambda: gx.signum(0.1, momentum=1.0), "momentum"),
    (lambda: gx.asgd(0.1, lambd=-1.0), "lambd"),
]


@pytest.mark.parametrize("build,name", BAD, ids=[f"{i}-{b[1]}" for i, b in enumerate(BAD)])
def test_bad_hyperparameters_raise(build, name):
    with pytest.raises(ValueError, match=name):
        build()
