"""Issue 9, numerics: mixed dtypes (3, 14), float64 everywhere (5), complex parameters (6),
``requires_grad`` hyperparameters (12), 0-size leaves (13).

The registry-wide forms of these properties are in ``test_properties.py``
(``test_mixed_dtype_tree_matches_each_dtype_alone``, ``test_state_stable_and_dtype_kept[mixed-*]``,
...); this file holds the cases the issue names, each against a reference written here.
"""

from __future__ import annotations

import pytest
import torch
from conftest import optimizer_trajectory

import gradtx as gx

# --- 3. mixed dtypes in one tree / one param group ----------------------------------------------


def _two_dtype_run(make, fast: bool, together: bool) -> list[torch.Tensor]:
    """A bfloat16 matrix and a float32 vector, five steps: in one param group, or each in an
    optimizer of its own."""
    gen = torch.Generator().manual_seed(0)
    values = [torch.randn(5, 4, generator=gen).to(torch.bfloat16), torch.randn(7, generator=gen)]
    ps = [torch.nn.Parameter(v.clone()) for v in values]
    opts = [gx.Optimizer(ps, make(), fast=fast)] if together else [gx.Optimizer([p], make(), fast=fast) for p in ps]
    for t in range(5):
        g = torch.Generator().manual_seed(10 + t)
        for p in ps:
            p.grad = torch.randn(p.shape, generator=g).to(p.dtype)
        for opt in opts:
            opt.step()
    return [p.detach() for p in ps]


@pytest.mark.parametrize("fast", [False, True], ids=["generic", "fast"])
@pytest.mark.parametrize("name", ["lion", "adam", "lamb", "nadam", "adabelief", "rmsprop"])
def test_param_group_mixing_bf16_and_f32_steps_each_at_its_own_precision(name, fast):
    """A group holding a bfloat16 and a float32 parameter gives each the numbers it gets alone
    (the float32 one was stepped at bfloat16 precision: lion moved ~1e-4 off, adam ~6e-5)."""
    make = {"lion": lambda: gx.lion(0.01), "adam": lambda: gx.adam(0.01), "lamb": lambda: gx.lamb(0.01),
            "nadam": lambda: gx.nadam(0.01), "adabelief": lambda: gx.adabelief(0.01),
            "rmsprop": lambda: gx.rmsprop(0.01, momentum=0.9)}[name]
    together, alone = _two_dtype_run(make, fast, True), _two_dtype_run(make, fast, False)
    for a, b in zip(together, alone):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["trace", "ema", "sgd", "lion", "rmsprop", "adafactor", "lars", "signum",
                                  "lookahead", "partition"])
def test_functional_updates_keep_each_leafs_dtype(name):
    """The entries the issue lists returned every update in the first leaf's dtype."""
    tx = {"trace": lambda: gx.trace(0.9), "ema": lambda: gx.ema(0.9), "sgd": lambda: gx.sgd(0.1, momentum=0.9),
          "lion": lambda: gx.lion(0.01), "rmsprop": lambda: gx.rmsprop(0.01, momentum=0.5),
          "adafactor": lambda: gx.adafactor(0.01, min_dim_size_to_factor=2, momentum=0.5),
          "lars": lambda: gx.lars(0.1), "signum": lambda: gx.signum(0.01),
          "lookahead": lambda: gx.lookahead(gx.sgd(0.1, momentum=0.9), sync_period=1, slow_step_size=0.5),
          "partition": lambda: gx.partition({"a": gx.adam(0.1), "s": gx.sgd(0.1, momentum=0.9)},
                                            lambda name, p: "a" if p.dim() > 1 else "s")}[name]()
    params = {"w": torch.ones(3, 2, dtype=torch.bfloat16), "b": torch.ones(2, dtype=torch.float32),
              "s": torch.ones((), dtype=torch.float64)}
    state = tx.init(params)
    for _ in range(2):
        grads = {k: torch.full_like(p, 0.3) for k, p in params.items()}
        updates, state = tx.update(grads, state, params)
        assert {k: u.dtype for k, u in updates.items()} == {k: p.dtype for k, p in params.items()}
        params = gx.apply_updates(params, updates)


# --- 14. apply_every on float16 and bfloat16 leaves -----------------------------------------------


def test_apply_every_keeps_a_bf16_accumulator_beside_a_f16_one():
    """The bfloat16 accumulator turned float32 at step 2 (added to the float16 leaf's dtype);
    the sums it emits are the sums of the updates, in each leaf's dtype."""
    tx = gx.apply_every(3)
    params = {"h": torch.zeros(4, dtype=torch.float16), "b": torch.zeros(4, dtype=torch.bfloat16)}
    state = tx.init(params)
    dtypes = {k: a.dtype for k, a in state.grad_acc.items()}
    total = {k: torch.zeros(4, dtype=torch.float64) for k in params}
    for step in range(6):
        grads = {k: torch.full((4,), 0.25 * (step + 1), dtype=p.dtype) for k, p in params.items()}
        updates, state = tx.update(grads, state, params)
        assert {k: a.dtype for k, a in state.grad_acc.items()} == dtypes, f"step {step}"
        for k, g in grads.items():
            total[k] += g.double()
            assert updates[k].dtype == g.dtype
            if step % 3 == 2:
                torch.testing.assert_close(updates[k].double(), total[k], rtol=0, atol=0)
                total[k].zero_()
            else:
                assert torch.count_nonzero(updates[k]) == 0


# --- 12. hyperparameters as requires_grad 0-dim tensors -------------------------------------------


def _adam_loss(b1, *, b2=0.999, eps=1e-8) -> torch.Tensor:
    """``sum p^2`` after three steps of ``gx.adam(0.1, b1, b2, eps)`` from fixed params and
    gradients, float64."""
    gen = torch.Generator().manual_seed(0)
    params = {"w": torch.randn(4, 3, generator=gen, dtype=torch.float64),
              "b": torch.randn(3, generator=gen, dtype=torch.float64)}
    grads = [{k: torch.randn(v.shape, generator=gen, dtype=torch.float64) for k, v in params.items()}
             for _ in range(3)]
    tx = gx.adam(0.1, b1=b1, b2=b2, eps=eps)
    state = tx.init(params)
    for g in grads:
        updates, state = tx.update(g, state, params)
        params = gx.apply_updates(params, updates)
    return sum((p ** 2).sum() for p in params.values())


def _central_difference(fn, x: float, delta: float = 1e-6) -> float:
    with torch.no_grad():
        hi = fn(torch.tensor(x + delta, dtype=torch.float64))
        lo = fn(torch.tensor(x - delta, dtype=torch.float64))
    return float((hi - lo) / (2 * delta))


def test_hypergradient_through_b1_by_torch_func_grad_matches_finite_differences():
    grad = torch.func.grad(_adam_loss)(torch.tensor(0.8, dtype=torch.float64))
    torch.testing.assert_close(float(grad), _central_difference(_adam_loss, 0.8), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", ["b1", "b2", "eps"])
def test_hypergradient_through_adam_hyperparameters_by_autograd_matches_finite_differences(name):
    """``update`` failed with a raw ``_foreach_*`` TypeError for any requires_grad
    hyperparameter but ``lr``."""
    value = {"b1": 0.8, "b2": 0.99, "eps": 1e-3}[name]

    def loss(x):
        kwargs = {"b1": 0.9, name: x}
        return _adam_loss(**kwargs)

    hp = torch.tensor(value, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(loss(hp), hp)
    torch.testing.assert_close(float(grad), _central_difference(loss, value, 1e-7 if name == "eps" else 1e-6),
                               rtol=1e-5, atol=1e-9)


# --- 6. complex parameters ---------------------------------------------------------------------------
# torch.optim steps a complex parameter as its torch.view_as_real view; gradtx does the same.

# (name, gradtx factory, torch factory): every torch.optim algorithm that takes complex params
COMPLEX_CASES = [
    ("sgd", lambda: gx.sgd(0.05), lambda p: torch.optim.SGD(p, lr=0.05)),
    ("sgd_momentum", lambda: gx.sgd(0.05, momentum=0.9), lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)),
    ("sgd_nesterov_wd", lambda: gx.sgd(0.05, momentum=0.9, nesterov=True, weight_decay=0.01),
     lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01)),
    ("adam", lambda: gx.adam(1e-2), lambda p: torch.optim.Adam(p, lr=1e-2)),
    ("adam_amsgrad", lambda: gx.amsgrad(1e-2, debias_after_max=True),
     lambda p: torch.optim.Adam(p, lr=1e-2, amsgrad=True)),
    ("adamw", lambda: gx.adamw(1e-2, weight_decay=0.05), lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.05)),
    ("adamax", lambda: gx.adamax(2e-2), lambda p: torch.optim.Adamax(p, lr=2e-2)),
    ("nadam", lambda: gx.nadam(1e-2, momentum_decay=4e-3), lambda p: torch.optim.NAdam(p, lr=1e-2)),
    ("radam", lambda: gx.radam(1e-2, eps_before_debias=True), lambda p: torch.optim.RAdam(p, lr=1e-2)),
    ("adagrad", lambda: gx.adagrad(5e-2, 0.1, 1e-8, eps_in_sqrt=False, lr_decay=1e-2, weight_decay=1e-2),
     lambda p: torch.optim.Adagrad(p, lr=5e-2, lr_decay=1e-2, weight_decay=1e-2, initial_accumulator_value=0.1,
                                   eps=1e-8)),
    ("adadelta", lambda: gx.adadelta(0.5, rho=0.95, eps=1e-5, weight_decay=1e-2),
     lambda p: torch.optim.Adadelta(p, lr=0.5, rho=0.95, eps=1e-5, weight_decay=1e-2)),
    ("rmsprop", lambda: gx.rmsprop(1e-2, decay=0.99, eps_in_sqrt=False), lambda p: torch.optim.RMSprop(p, lr=1e-2)),
    ("rmsprop_centered_momentum",
     lambda: gx.rmsprop(1e-3, decay=0.95, eps_in_sqrt=False, centered=True, momentum=0.5, weight_decay=1e-2),
     lambda p: torch.optim.RMSprop(p, lr=1e-3, alpha=0.95, centered=True, momentum=0.5, weight_decay=1e-2)),
    ("rprop", lambda: gx.rprop(1e-2), lambda p: torch.optim.Rprop(p, lr=1e-2)),
    ("asgd", lambda: gx.asgd(5e-2, lambd=1e-2, alpha=0.6, t0=5, weight_decay=1e-3),
     lambda p: torch.optim.ASGD(p, lr=5e-2, lambd=1e-2, alpha=0.6, t0=5, weight_decay=1e-3)),
]
COMPLEX_STEPS = 30


class ComplexProblem:
    """``mean |x w + b - y|^2 + c_t |s|^2``, complex ``w``, ``b``, ``s``: a real loss of
    complex parameters, whose ``.grad`` torch gives as the conjugate Wirtinger derivative."""

    def __init__(self):
        gen = torch.Generator().manual_seed(3)

        def c(*shape):
            return torch.randn(shape, generator=gen, dtype=torch.complex128)

        self.params0 = {"w": c(4, 3), "b": c(3), "s": c()}
        self.xs = [c(5, 4) for _ in range(4)]
        self.ys = [c(5, 3) for _ in range(4)]

    def loss(self, p, t):
        x, y = self.xs[t % 4], self.ys[t % 4]
        return ((x @ p["w"] + p["b"] - y).abs() ** 2).mean() + (p["s"] * p["s"].conj() * (1 + 0.1 * t)).real

    def grads(self, params, t):
        leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        return dict(zip(leaves, torch.autograd.grad(self.loss(leaves, t), list(leaves.values()))))


def _torch_complex(problem, make_opt):
    params = {k: v.clone().requires_grad_(True) for k, v in problem.params0.items()}
    return optimizer_trajectory(params, problem.loss, make_opt(list(params.values())), COMPLEX_STEPS)


def _assert_trajectories(traj, ref):
    for t, (a, b) in enumerate(zip(traj, ref)):
        for k in b:
            assert a[k].dtype == torch.complex128
            torch.testing.assert_close(a[k], b[k], rtol=1e-9, atol=1e-12, msg=lambda m, t=t, k=k: f"step {t}, {k}: {m}")


@pytest.mark.parametrize("name,make_tx,make_opt", COMPLEX_CASES, ids=[c[0] for c in COMPLEX_CASES])
def test_complex_params_match_torch_optim(name, make_tx, make_opt):
    """Functional and gx.Optimizer (both paths) on complex128 params equal torch.optim on the
    same params over 30 steps (Adam squared a complex gradient, g*g, and was 0.05 off after 5)."""
    problem = ComplexProblem()
    from conftest import default_dtype  # NAdam keeps a scalar in the default dtype

    with default_dtype(torch.float64):
        ref = _torch_complex(problem, make_opt)
    tx, params = make_tx(), dict(problem.params0)
    state, traj = tx.init(params), []
    for t in range(COMPLEX_STEPS):
        updates, state = tx.update(problem.grads(params, t), state, params)
        params = gx.apply_updates(params, updates)
        traj.append(params)
    _assert_trajectories(traj, ref)
    for fast in (True, False):
        leaves = {k: v.clone().requires_grad_(True) for k, v in problem.params0.items()}
        opt, traj = gx.Optimizer(list(leaves.values()), make_tx(), fast=fast), []
        for t in range(COMPLEX_STEPS):
            opt.zero_grad()
            problem.loss(leaves, t).backward()
            opt.step()
            traj.append({k: v.detach().clone() for k, v in leaves.items()})
        _assert_trajectories(traj, ref)


@pytest.mark.parametrize("name,make_tx,make_opt", [c for c in COMPLEX_CASES if c[0] in ("adam", "sgd_momentum",
                                                                                          "rprop")],
                         ids=["sgd_momentum", "adam", "rprop"])
def test_view_as_real_params_work_and_equal_the_complex_run(name, make_tx, make_opt):
    """A parameter that is ``torch.view_as_real`` of a complex tensor (real, trailing axis 2,
    sharing its memory) steps under gx.Optimizer exactly as torch.optim steps the complex one."""
    problem = ComplexProblem()
    ref = _torch_complex(problem, make_opt)
    zs = {k: v.clone() for k, v in problem.params0.items()}
    real = {k: torch.nn.Parameter(torch.view_as_real(z)) for k, z in zs.items()}
    opt, traj = gx.Optimizer(list(real.values()), make_tx()), []
    for t in range(COMPLEX_STEPS):
        grads = problem.grads(zs, t)
        for k, p in real.items():
            p.grad = torch.view_as_real(grads[k]).clone()
        opt.step()
        traj.append({k: torch.view_as_complex(p.detach()).clone() for k, p in real.items()})
    _assert_trajectories(traj, ref)


@pytest.mark.parametrize("make,name,alias", [
    (lambda: gx.adafactor(1e-2), "scale_by_factored_rms", "adafactor"),
    (lambda: gx.scale_by_factored_rms(), "scale_by_factored_rms", None),
    (lambda: gx.sm3(0.1), "scale_by_sm3", "sm3"),
    (lambda: gx.scale_by_sm3(), "scale_by_sm3", None),
    (lambda: gx.muon(0.02), "scale_by_muon", "muon"),
    (lambda: gx.scale_by_muon(), "scale_by_muon", None),
], ids=["adafactor", "scale_by_factored_rms", "sm3", "scale_by_sm3", "muon", "scale_by_muon"])
def test_shape_reading_transforms_refuse_complex_params_at_init(make, name, alias):
    params = {"w": torch.zeros(4, 3, dtype=torch.complex64), "b": torch.zeros(3)}
    with pytest.raises(ValueError, match=rf"{alias + ': ' if alias else ''}{name} does not support complex "
                                         r"parameters.*\['w'\].*torch\.view_as_real"):
        make().init(params)
    make().init({"w": torch.view_as_real(params["w"]), "b": params["b"]})  # the real view is accepted


# --- 13. 0-size leaves; flatten and a parameter without a gradient --------------------------------


@pytest.mark.parametrize("make", [lambda: gx.sm3(0.1), lambda: gx.scale_by_sm3(), lambda: gx.muon(0.02),
                                  lambda: gx.scale_by_muon()], ids=["sm3", "scale_by_sm3", "muon", "scale_by_muon"])
@pytest.mark.parametrize("shape", [(0, 3), (3, 0), (2, 0, 3)], ids=["0x3", "3x0", "2x0x3"])
def test_sm3_and_muon_take_zero_size_matrices(make, shape):
    """sm3 failed on an empty tensor of rank >= 2 (amax over an empty axis), muon on one with
    no columns (its shape factor divided by 0). The empty leaf gets an empty update; the matrix
    beside it gets what it gets alone."""
    gen = torch.Generator().manual_seed(0)
    params = {"w": torch.randn(4, 3, generator=gen), "e": torch.zeros(shape)}
    tx, ref = make(), make()
    state, ref_state = tx.init(params), ref.init({"w": params["w"]})
    for _ in range(3):
        grads = {"w": torch.randn(4, 3, generator=gen), "e": torch.zeros(shape)}
        updates, state = tx.update(grads, state, params)
        want, ref_state = ref.update({"w": grads["w"]}, ref_state, {"w": params["w"]})
        assert updates["e"].shape == shape
        torch.testing.assert_close(updates["w"], want["w"], rtol=0, atol=0)


def test_flatten_says_why_when_a_parameter_has_no_gradient():
    """A parameter whose .grad is None is skipped by the adapter, so flatten's concatenated
    vector is shorter than its state: a ValueError saying so, not a size mismatch from
    inside Adam."""
    a, b = torch.nn.Parameter(torch.randn(3)), torch.nn.Parameter(torch.randn(2))
    opt = gx.Optimizer([a, b], gx.flatten(gx.adam(0.1)))
    a.grad, b.grad = torch.randn(3), torch.randn(2)
    opt.step()
    a.grad, b.grad = torch.randn(3), None
    with pytest.raises(ValueError, match=r"flatten: the updates hold 3 elements but the state was built for 5.*"
                                         r"\.grad is None.*zeros"):
        opt.step()
    tx = gx.flatten(gx.adam(0.1))  # the functional form says the same
    state = tx.init({"a": torch.zeros(3), "b": torch.zeros(2)})
    with pytest.raises(ValueError, match="flatten: the updates hold 3 elements but the state was built for 5"):
        tx.update({"a": torch.ones(3)}, state)


# --- 5. float64 everywhere ----------------------------------------------------------------------------
# Each against its rule written here in float64 (torch.optim.Adafactor is compared in
# test_rms_family.py): relative agreement to 1e-12, where a float32 quantity anywhere would
# show at 1e-7.

F64_STEPS = 20


def _f64_problem(seed: int = 5):
    gen = torch.Generator().manual_seed(seed)
    params = {"w": torch.randn(5, 4, generator=gen, dtype=torch.float64),
              "b": torch.randn(4, generator=gen, dtype=torch.float64),
              "s": torch.randn((), generator=gen, dtype=torch.float64)}
    grads = [{k: torch.randn(v.shape, generator=gen, dtype=torch.float64) for k, v in params.items()}
             for _ in range(F64_STEPS)]
    return params, grads


def _run(tx, params, grads):
    state, out = tx.init(params), []
    for g in grads:
        updates, state = tx.update(g, state, params)
        params = gx.apply_updates(params, updates)
        out.append(params)
    return out, state


def _adam_rule(params, grads, lrs, b1=0.9, b2=0.999, eps=1e-8):
    m = {k: torch.zeros_like(v) for k, v in params.items()}
    v = {k: torch.zeros_like(x) for k, x in params.items()}
    out = []
    for t, (g, lr) in enumerate(zip(grads, lrs), start=1):
        params = dict(params)
        for k in params:
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
            params[k] = params[k] - lr * (m[k] / (1 - b1 ** t)) / ((v[k] / (1 - b2 ** t)).sqrt() + eps)
        out.append(params)
    return out


def _close64(traj, ref):
    for t, (a, b) in enumerate(zip(traj, ref)):
        for k in b:
            assert a[k].dtype == torch.float64
            torch.testing.assert_close(a[k], b[k], rtol=1e-12, atol=1e-13,
                                       msg=lambda m, t=t, k=k: f"step {t}, {k}: {m}")


def _factored_rule(params, grads, *, lr, decay_rate=0.8, eps=1e-30, clip=None, momentum=None):
    """Adafactor (Shazeer & Stern, 2018), optax's form, every leaf of rank 2 factored: the
    row and column means of g^2 + eps, beta_t = 1 - (t+1)^-decay_rate (t from 0); with
    ``clip``, u / max(1, rms(u) / clip) and u * max(rms(p), 1e-3); with ``momentum``, an EMA."""
    rows = {k: torch.zeros(p.shape[1], dtype=torch.float64) for k, p in params.items() if p.dim() == 2}
    cols = {k: torch.zeros(p.shape[0], dtype=torch.float64) for k, p in params.items() if p.dim() == 2}
    full = {k: torch.zeros_like(p) for k, p in params.items() if p.dim() < 2}
    mom = {k: torch.zeros_like(p) for k, p in params.items()}
    out = []
    for t, g in enumerate(grads):
        beta = 1.0 - (t + 1.0) ** -decay_rate
        params = dict(params)
        for k, p in params.items():
            sq = g[k] ** 2 + eps
            if k in rows:  # (5, 4): the largest axis is 0, the second largest 1
                rows[k] = beta * rows[k] + (1 - beta) * sq.mean(0)
                cols[k] = beta * cols[k] + (1 - beta) * sq.mean(1)
                u = g[k] / torch.sqrt(torch.outer(cols[k], rows[k] / rows[k].mean()))
            else:
                full[k] = beta * full[k] + (1 - beta) * sq
                u = g[k] / full[k].sqrt()
            if clip is not None:
                u = u / max(1.0, float(u.pow(2).mean().sqrt()) / clip)
                u = u * max(float(p.pow(2).mean().sqrt()), 1e-3)
            if momentum is not None:
                mom[k] = momentum * mom[k] + (1 - momentum) * u
                u = mom[k]
            params[k] = p - lr * u
        out.append(params)
    return out


def test_scale_by_factored_rms_is_float64_throughout():
    params, grads = _f64_problem()
    traj, _ = _run(gx.chain(gx.scale_by_factored_rms(min_dim_size_to_factor=2), gx.scale_by_lr(0.01)), params, grads)
    _close64(traj, _factored_rule(params, grads, lr=0.01))


def test_adafactor_with_momentum_is_float64_throughout():
    """The momentum was kept in float32 (optax's dtype_momentum) on float64 params: 1e-7
    relative off a float64 run; it is now at least float32 and never below the params."""
    params, grads = _f64_problem()
    tx = gx.adafactor(0.05, min_dim_size_to_factor=2, momentum=0.5)
    traj, state = _run(tx, params, grads)
    assert all(m.dtype == torch.float64 for m in gx.tree_get_all(state, "ema")[0].values())
    _close64(traj, _factored_rule(params, grads, lr=0.05, clip=1.0, momentum=0.5))
    low = gx.adafactor(0.05, momentum=0.5).init({"w": torch.zeros(3, dtype=torch.bfloat16)})
    assert gx.tree_get_all(low, "ema")[0]["w"].dtype == torch.float32  # bfloat16 params: a float32 momentum


def test_multi_steps_adam_is_float64_throughout():
    params, grads = _f64_problem()
    traj, _ = _run(gx.multi_steps(gx.adam(0.05), 3), params, grads[:18])
    means = [{k: sum(grads[i + j][k] for j in range(3)) / 3 for k in params} for i in range(0, 18, 3)]
    _close64(traj[2::3], _adam_rule(params, means, [0.05] * 6))


def test_inject_hyperparams_adam_with_a_linear_schedule_is_float64_throughout():
    params, grads = _f64_problem()
    tx = gx.inject_hyperparams(gx.adam)(lr=gx.linear_schedule(0.05, 0.005, transition_steps=15))
    traj, _ = _run(tx, params, grads)
    lrs = [0.05 + (0.005 - 0.05) * min(t, 15) / 15 for t in range(F64_STEPS)]
    _close64(traj, _adam_rule(params, grads, lrs))


@pytest.mark.filterwarnings("ignore:Torchinductor does not support code generation for complex")
def test_complex_params_under_compile_match_torch_optim():
    """``compile=True`` steps complex params as torch.optim does too (Adam, elementwise)."""
    problem = ComplexProblem()
    ref = _torch_complex(problem, lambda p: torch.optim.Adam(p, lr=1e-2))
    leaves = {k: v.clone().requires_grad_(True) for k, v in problem.params0.items()}
    opt = gx.Optimizer(list(leaves.values()), gx.adam(1e-2), compile=True)
    _assert_trajectories(optimizer_trajectory(leaves, problem.loss, opt, COMPLEX_STEPS), ref)
