"""Second order: the Hessian-vector product contract (functional builders, the closure
adapter's double backward, finite differences), optax's second_order utilities, and the
methods of src/gradtx/second_order/."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import assert_resume_bit_exact, leaf_copy, optimizer_trajectory

import gradtx as gx


def _loss(p):
    """A non-quadratic loss over a matrix, a vector and a scalar (float64)."""
    w, b, s = p["w"], p["b"], p["s"]
    return (torch.sin(w).sum() * b.square().sum() + torch.exp(0.3 * b).sum() * s + (w @ b).pow(4).sum()
            + s ** 3)


def _params(dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(4, 3, generator=g, dtype=dtype) * 0.5, "b": torch.randn(3, generator=g, dtype=dtype),
            "s": torch.randn((), generator=g, dtype=dtype)}


def _reference_hvp(params, v):
    keys = list(params)
    def flat_loss(*xs):
        return _loss(dict(zip(keys, xs)))
    _, hv = torch.autograd.functional.hvp(flat_loss, tuple(params[k] for k in keys), tuple(v[k] for k in keys))
    return dict(zip(keys, hv))


def _assert_tree_close(a, b, **tol):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], **tol)


# --- the contract: hvp_fn built functionally --------------------------------------------


@pytest.mark.parametrize("method", ["forward", "autograd"])
def test_exact_hvp_matches_torch_autograd_functional(method):
    params, v = _params(), _params(seed=1)
    got = gx.make_hvp_fn(_loss, method=method)(params, v)
    _assert_tree_close(got, _reference_hvp(params, v), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method,h,order", [("fd_forward", 1e-4, 1), ("fd_central", 1e-3, 2)])
def test_finite_difference_hvp_converges_at_its_order(method, h, order):
    params, v = _params(), _params(seed=1)
    want = torch.cat([x.reshape(-1) for x in _reference_hvp(params, v).values()])
    errors = []
    for step in (h, h / 2):
        got = gx.make_hvp_fn(_loss, method=method, h=step)(params, v)
        errors.append(float((torch.cat([x.reshape(-1) for x in got.values()]) - want).norm()))
    assert errors[0] < 1e-2 * float(want.norm())
    ratio = errors[0] / errors[1]
    assert 2 ** order * 0.7 < ratio < 2 ** order * 1.3  # halving h divides the error by 2^order


def test_fd_forward_reuses_the_gradient_at_the_same_params():
    params = _params()
    calls = []
    vg = gx.make_value_and_grad_fn(_loss)

    def counting(p):
        calls.append(1)
        return vg(p)

    hvp_fn = gx.hvp_from_grads(counting, "fd_forward", h=1e-5)
    for seed in range(3):
        hvp_fn(params, _params(seed=seed + 1))
    assert len(calls) == 4  # g(x) once, then one gradient per product
    params["b"].add_(1.0)  # the same tensors changed in place: g(x) computed again
    hvp_fn(params, _params(seed=1))
    assert len(calls) == 6


def test_zero_vector_gives_zero_and_a_scaled_vector_scales():
    params, v = _params(), _params(seed=1)
    fd = gx.make_hvp_fn(_loss, method="fd_central", h=1e-4)
    zero = fd(params, {k: torch.zeros_like(x) for k, x in v.items()})
    assert all(bool((x == 0).all()) for x in zero.values())
    big = fd(params, {k: 1e6 * x for k, x in v.items()})  # the step is h / ||v||: same accuracy
    _assert_tree_close({k: x / 1e6 for k, x in big.items()}, _reference_hvp(params, v), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("method", ["forward", "autograd", "fd_central"])
def test_batched_hvp_fn_is_the_stack_of_products(method):
    params = _params()
    vs = [_params(seed=s) for s in (1, 2, 3)]
    stacked = {k: torch.stack([v[k] for v in vs]) for k in params}
    got = gx.make_hvp_fn(_loss, method=method, batched=True)(params, stacked)
    looped = gx.batch_hvp(gx.make_hvp_fn(_loss, method=method))(params, stacked)
    for i, v in enumerate(vs):
        want = _reference_hvp(params, v)
        tol = {"rtol": 1e-12, "atol": 1e-12} if method != "fd_central" else {"rtol": 1e-4, "atol": 1e-5}
        _assert_tree_close({k: x[i] for k, x in got.items()}, want, **tol)
        _assert_tree_close({k: x[i] for k, x in looped.items()}, want, **tol)


def test_results_in_another_key_order_are_matched_by_key():
    """A hand-written hvp_fn or value_and_grad_fn may return its dict in another key order."""
    params, v = _params(), _params(seed=1)
    exact = gx.make_hvp_fn(_loss)

    def reordered(p, w):
        out = exact(p, w)
        return {k: out[k] for k in sorted(out, reverse=True)}

    def reordered_vg(p):
        value, grads = gx.make_value_and_grad_fn(_loss)(p)
        return value, {k: grads[k] for k in sorted(grads, reverse=True)}

    want = _reference_hvp(params, v)
    stacked = gx.batch_hvp(reordered)(params, {k: x[None] for k, x in v.items()})
    _assert_tree_close({k: x[0] for k, x in stacked.items()}, want, rtol=1e-12, atol=1e-12)
    for method in ("fd_forward", "fd_central"):
        got = gx.hvp_from_grads(reordered_vg, method, h=1e-6 if method == "fd_forward" else 1e-4)(params, v)
        _assert_tree_close(got, want, rtol=1e-4, atol=1e-4)


def test_hvp_fn_is_pure_and_keeps_dtypes():
    params = _params(torch.float32)
    v = _params(torch.float32, seed=1)
    before = {k: x.clone() for k, x in params.items()}
    for method in ("forward", "autograd", "fd_forward", "fd_central"):
        out = gx.make_hvp_fn(_loss, method=method)(params, v)
        assert all(out[k].dtype == torch.float32 and out[k].shape == params[k].shape for k in params)
    _assert_tree_close(params, before, rtol=0, atol=0)
    assert all(x.grad is None for x in params.values())


def test_evaluation_args_carry_the_hvp_functions():
    params, v = _params(), _params(seed=1)
    extra = gx.evaluation_args(_loss, params)
    _assert_tree_close(extra["hvp_fn"](params, v), _reference_hvp(params, v), rtol=1e-12, atol=1e-12)
    one = extra["batched_hvp_fn"](params, {k: x[None] for k, x in v.items()})
    _assert_tree_close({k: x[0] for k, x in one.items()}, _reference_hvp(params, v), rtol=1e-12, atol=1e-12)


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="method"):
        gx.make_hvp_fn(_loss, method="reverse")
    with pytest.raises(ValueError, match="h must be"):
        gx.make_hvp_fn(_loss, h=0.0)
    with pytest.raises(ValueError, match="method"):
        gx.hvp_from_grads(gx.make_value_and_grad_fn(_loss), "forward")
    with pytest.raises(ValueError, match="v must be a tree like params"):
        gx.make_hvp_fn(_loss)(_params(), {"w": torch.zeros(4, 3)})
    with pytest.raises(ValueError, match="leading batch dimension"):
        gx.batch_hvp(gx.make_hvp_fn(_loss))(_params(), _params())
    with pytest.raises(ValueError, match="needs hvp_fn"):
        gx.curvature_fns("autograd", 1e-3, {}, "newton_cg")
    with pytest.raises(ValueError, match="needs value_and_grad_fn"):
        gx.curvature_fns("fd_central", 1e-3, {}, "newton_cg")


def test_curvature_fns_picks_by_method():
    params, v = _params(), _params(seed=1)
    extra = {"hvp_fn": gx.make_hvp_fn(_loss), "value_and_grad_fn": gx.make_value_and_grad_fn(_loss)}
    exact, batched = gx.curvature_fns("autograd", 1e-3, extra, "t")
    assert exact is extra["hvp_fn"]
    _assert_tree_close({k: x[0] for k, x in batched(params, {k: x[None] for k, x in v.items()}).items()},
                       _reference_hvp(params, v), rtol=1e-12, atol=1e-12)
    fd, _ = gx.curvature_fns("fd_central", 1e-4, extra, "t")
    _assert_tree_close(fd(params, v), _reference_hvp(params, v), rtol=1e-5, atol=1e-6)


# --- the contract under gx.Optimizer: hvp_fn from the closure -----------------------------


class _Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        p = _params()
        self.w, self.b, self.s = (torch.nn.Parameter(p[k].clone()) for k in ("w", "b", "s"))

    def forward(self):
        return _loss({"w": self.w, "b": self.b, "s": self.s})


def _probe(record):
    """A transform that calls the closure's curvature functions at a trial point and returns
    a zero update."""
    def update(updates, state, params=None, **extra):
        trial = {k: p.detach() + 0.1 for k, p in params.items()}
        v = {k: torch.full_like(p, 0.5) for k, p in params.items()}
        record["hv"] = extra["hvp_fn"](trial, v)
        record["batched"] = extra["batched_hvp_fn"](trial, {k: torch.stack([x, 2 * x]) for k, x in v.items()})
        record["keys"] = list(params)
        return {k: torch.zeros_like(u) for k, u in updates.items()}, state

    return gx.GradientTransformation(lambda params: gx.EmptyState(), update)


def test_closure_hvp_fn_is_double_backward_and_restores_everything():
    model = _Model()
    record = {}
    opt = gx.Optimizer(model.parameters(), _probe(record), check_descent=False)

    def closure(backward=True):
        loss = model()
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

    opt.step(closure)
    grads = {k: p.grad.clone() for k, p in model.named_parameters()}
    values = {k: p.detach().clone() for k, p in model.named_parameters()}
    names = ["w", "b", "s"]
    trial = {k: values[k] + 0.1 for k in names}
    v = {k: torch.full_like(values[k], 0.5) for k in names}
    want = _reference_hvp(trial, v)
    got = dict(zip(names, (record["hv"][key] for key in record["keys"])))
    _assert_tree_close(got, want, rtol=1e-12, atol=1e-12)
    for i, scale in enumerate((1.0, 2.0)):
        row = dict(zip(names, (record["batched"][key][i] for key in record["keys"])))
        _assert_tree_close(row, {k: scale * x for k, x in want.items()}, rtol=1e-12, atol=1e-12)
    # the parameters are where the step left them (a zero update) and .grad the step's gradient
    start = _params()
    _assert_tree_close(values, start, rtol=0, atol=0)
    ref = {k: x.clone().requires_grad_(True) for k, x in start.items()}
    want_grads = dict(zip(ref, torch.autograd.grad(_loss(ref), list(ref.values()))))
    _assert_tree_close(grads, want_grads, rtol=1e-12, atol=1e-12)


def test_closure_without_the_flag_refuses_hvp_fn_clearly():
    model = _Model()
    opt = gx.Optimizer(model.parameters(), _probe({}), check_descent=False)

    def closure():
        opt.zero_grad()
        loss = model()
        loss.backward()
        return loss

    with pytest.raises(ValueError, match="backward flag"):
        opt.step(closure)
    _assert_tree_close(dict(model.named_parameters()), _params(), rtol=0, atol=0)


# --- optax's second_order -----------------------------------------------------------------


def _optax_problem():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    jnp = jax.numpy
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(6, 3)), rng.normal(size=(6,))
    params = {"a": rng.normal(size=(3,)), "c": rng.normal(size=())}  # sorted keys: the same ravel order

    def loss_jax(p, inputs, targets):
        return jnp.sum(jnp.log1p(jnp.exp(-(inputs @ p["a"] + p["c"]) * targets))) + 0.1 * jnp.sum(p["a"] ** 4)

    def loss_torch(p, inputs, targets):
        return (torch.nn.functional.softplus(-(inputs @ p["a"] + p["c"]) * targets).sum()
                + 0.1 * (p["a"] ** 4).sum())

    tp = {k: torch.tensor(v, dtype=torch.float64) for k, v in params.items()}
    jp = {k: jnp.asarray(v) for k, v in params.items()}
    return jnp, (loss_jax, jp, jnp.asarray(x), jnp.asarray(y)), (loss_torch, tp, torch.tensor(x), torch.tensor(y))


def test_optax_second_order_functions_match():
    optax = pytest.importorskip("optax")
    jnp, (lj, jp, jx, jy), (lt, tp, tx, ty) = _optax_problem()
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        v = np.linspace(-1.0, 1.0, 4)
        want = optax.second_order.hvp(lj, jnp.asarray(v), jp, jx, jy)
        got = gx.hvp(lt, torch.tensor(v), tp, tx, ty)
        for k in tp:
            np.testing.assert_allclose(got[k].numpy(), np.asarray(want[k]), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(gx.hessian_diag(lt, tp, tx, ty).numpy(),
                                   np.asarray(optax.second_order.hessian_diag(lj, jp, jx, jy)), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(gx.fisher_diag(lt, tp, tx, ty).numpy(),
                                   np.asarray(optax.second_order.fisher_diag(lj, jp, jx, jy)), rtol=1e-12, atol=1e-12)


def test_hessian_diag_is_the_diagonal_of_the_hessian():
    params = _params()
    keys = list(params)
    flat = torch.cat([params[k].reshape(-1) for k in keys])
    sizes = [params[k].numel() for k in keys]

    def f(x):
        pieces = torch.split(x, sizes)
        return _loss({k: piece.reshape(params[k].shape) for k, piece in zip(keys, pieces)})

    want = torch.diagonal(torch.autograd.functional.hessian(f, flat))
    torch.testing.assert_close(gx.hessian_diag(lambda p, x, y: _loss(p), params, None, None), want,
                               rtol=1e-12, atol=1e-12)


# --- Newton and Newton-CG ------------------------------------------------------------------


def _quadratic(n=6, seed=0, cond=None):
    """``f(x) = x.A x / 2 - b.x`` over a tree {"a": (2, 2), "b": (n - 4,)}, float64, ``A`` SPD."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    eig = torch.linspace(1.0, 10.0 if cond is None else cond, n, dtype=torch.float64)
    a = q @ torch.diag(eig) @ q.T
    b = torch.randn(n, generator=g, dtype=torch.float64)

    def flat(p):
        return torch.cat([p["a"].reshape(-1), p["b"]])

    def loss(p):
        x = flat(p)
        return 0.5 * x @ a @ x - b @ x

    params = {"a": torch.zeros(2, 2, dtype=torch.float64), "b": torch.zeros(n - 4, dtype=torch.float64)}
    return loss, params, a.numpy(), b.numpy(), flat


def _run(tx, loss, params, steps=1, **extra_kwargs):
    state = tx.init(params)
    for _ in range(steps):
        extra = gx.evaluation_args(loss, params, **extra_kwargs)
        updates, state = tx.update(extra["grad"], state, params, **extra)
        params = gx.apply_updates(params, updates)
    return params, state


@pytest.mark.parametrize("kwargs", [{}, {"hessian_method": "func"}, {"eigenvalues": "abs"}, {"eigenvalues": "clip"},
                                    {"hvp_method": "fd_central"}])
def test_newton_reaches_the_minimiser_of_a_quadratic_in_one_step(kwargs):
    loss, params, a, b, flat = _quadratic()
    out, _ = _run(gx.chain(gx.scale_by_newton(**kwargs), gx.scale_by_lr(1.0)), loss, params)
    tol = 1e-6 if kwargs.get("hvp_method") else 1e-10
    np.testing.assert_allclose(flat(out).numpy(), np.linalg.solve(a, b), rtol=tol, atol=tol)


def test_newton_damping_and_eigenvalue_modification_follow_their_formulas():
    """On an indefinite quadratic, each option's direction equals the formula written with numpy."""
    g = torch.Generator().manual_seed(3)
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=torch.float64))
    lam = np.array([-2.0, -0.5, 1e-12, 1.0, 4.0])
    a = (q.numpy() * lam) @ q.numpy().T
    x0 = torch.randn(5, generator=g, dtype=torch.float64)
    loss = lambda p: 0.5 * p["x"] @ torch.tensor(a) @ p["x"]  # noqa: E731
    params = {"x": x0}
    grad = a @ x0.numpy()
    qn = q.numpy()
    cases = {
        ("none", 0.3): np.linalg.solve(a + 0.3 * np.eye(5), grad),
        ("abs", 0.0): qn @ ((qn.T @ grad) / np.maximum(np.abs(lam), 1e-3)),
        ("clip", 0.1): qn @ ((qn.T @ grad) / (np.maximum(lam, 1e-3) + 0.1)),
    }
    for (eigenvalues, damping), want in cases.items():
        tx = gx.scale_by_newton(damping=damping, eigenvalues=eigenvalues, min_eigenvalue=1e-3)
        extra = gx.evaluation_args(loss, params)
        u, _ = tx.update(extra["grad"], tx.init(params), params, **extra)
        np.testing.assert_allclose(u["x"].numpy(), want, rtol=1e-8, atol=1e-8)


def test_newton_cg_solves_a_quadratic_in_n_iterations():
    loss, params, a, b, flat = _quadratic(n=7, cond=100.0)
    calls = []
    exact = gx.make_hvp_fn(loss)

    def counting(p, v):
        calls.append(1)
        return exact(p, v)

    tx = gx.chain(gx.scale_by_newton_cg(tol=0.0), gx.scale_by_lr(1.0))
    state = tx.init(params)
    extra = {**gx.evaluation_args(loss, params), "hvp_fn": counting}
    updates, state = tx.update(extra["grad"], state, params, **extra)
    out = gx.apply_updates(params, updates)
    np.testing.assert_allclose(flat(out).numpy(), np.linalg.solve(a, b), rtol=1e-9, atol=1e-9)
    assert len(calls) == 7 and int(state[0].iterations) == 7  # n products, no more


def test_newton_cg_stops_at_tolerance_and_at_negative_curvature():
    loss, params, a, b, flat = _quadratic(n=30, cond=10.0)
    _, state = _run(gx.scale_by_newton_cg(tol=1e-2), loss, params)
    assert 1 <= int(state.iterations) < 15
    # a negative-curvature first direction: the output is the gradient itself (steepest descent)
    neg = lambda p: -(p["x"] ** 2).sum() + p["x"].sum()  # noqa: E731
    x = {"x": torch.tensor([0.3, -0.2], dtype=torch.float64)}
    extra = gx.evaluation_args(neg, x)
    u, st = gx.scale_by_newton_cg().update(extra["grad"], gx.scale_by_newton_cg().init(x), x, **extra)
    torch.testing.assert_close(u["x"], extra["grad"]["x"])
    assert int(st.iterations) == 1


def test_steihaug_stays_in_the_radius_and_matches_newton_inside_it():
    loss, params, a, b, flat = _quadratic(n=6)
    newton_step = np.linalg.solve(a, b)  # from x = 0
    for radius in (0.05, 0.3, 1e3):
        tx = gx.scale_by_newton_cg_trust_region(init_radius=radius, tol=1e-12)
        extra = gx.evaluation_args(loss, params)
        u, state = tx.update(extra["grad"], tx.init(params), params, **extra)
        step = flat(u).numpy()
        assert np.linalg.norm(step) <= radius * (1 + 1e-12)
        if radius > np.linalg.norm(newton_step):
            np.testing.assert_allclose(step, newton_step, rtol=1e-9, atol=1e-9)
        else:
            assert np.isclose(np.linalg.norm(step), radius)  # on the boundary
            assert float(loss({"a": u["a"], "b": u["b"]})) < 0  # a decrease


def test_steihaug_goes_to_the_boundary_along_negative_curvature():
    lam = torch.tensor([-3.0, 1.0], dtype=torch.float64)  # d = -g = -(1, 1) has d.Hd = -2
    loss = lambda p: 0.5 * (lam * p["x"] ** 2).sum() + p["x"].sum()  # noqa: E731
    x = {"x": torch.tensor([0.0, 0.0], dtype=torch.float64)}
    tx = gx.scale_by_newton_cg_trust_region(init_radius=0.7)
    extra = gx.evaluation_args(loss, x)
    u, _ = tx.update(extra["grad"], tx.init(x), x, **extra)
    assert abs(float(u["x"].norm()) - 0.7) < 1e-12


def test_newton_cg_trust_region_minimises_rosenbrock_like_scipy_trust_ncg():
    scipy_optimize = pytest.importorskip("scipy.optimize")

    def rosen(p):
        x = p["x"]
        return ((1 - x[:-1]) ** 2).sum() + 100 * ((x[1:] - x[:-1] ** 2) ** 2).sum()

    x0 = np.array([-1.2, 1.0])  # (in 4-D there is a local minimum near (-0.78, 0.61, 0.38, 0.15))
    params = {"x": torch.tensor(x0)}
    tx = gx.scale_by_newton_cg_trust_region(init_radius=1.0)
    out, _ = _run(tx, rosen, params, steps=200)
    ref = scipy_optimize.minimize(scipy_optimize.rosen, x0, method="trust-ncg", jac=scipy_optimize.rosen_der,
                                  hessp=scipy_optimize.rosen_hess_prod)
    np.testing.assert_allclose(out["x"].numpy(), ref.x, atol=1e-6)
    assert float(rosen(out)) < 1e-12


def test_newton_cg_under_the_optimizer_gives_the_functional_trajectory_and_round_trips():
    def make():
        return gx.chain(gx.scale_by_newton_cg(max_iters=4), gx.scale(-1.0), gx.scale_by_backtracking())

    # checkpoint after two steps: a fresh optimizer from the saved state continues the same
    got = assert_resume_bit_exact(lambda leaves: gx.Optimizer(list(leaves.values()), make()), leaf_copy(_params()),
                                  lambda p, t: _loss(p), steps=4, split=2, closure="backward")
    params = _params()
    tx = make()
    state = tx.init(params)
    for step in range(4):
        extra = gx.evaluation_args(_loss, params)
        updates, state = tx.update(extra["grad"], state, params, **extra)
        params = gx.apply_updates(params, updates)
        _assert_tree_close(got[step], params, rtol=1e-10, atol=1e-12)


# --- Nyström ----------------------------------------------------------------------------


def _grad_at_zero(b):
    return -b  # the gradient of x.A x / 2 - b.x at x = 0


def test_nystrom_sketch_and_solve_is_exact_at_full_rank_and_on_low_rank_hessians():
    loss, params, a, b, flat = _quadratic(n=6)
    mu = 0.05
    _, st = _run(gx.scale_by_nystrom_sketch_and_solve(rank=6, damping=mu), loss, params)
    tx = gx.scale_by_nystrom_sketch_and_solve(rank=6, damping=mu)
    extra = gx.evaluation_args(loss, params)
    u, state = tx.update(extra["grad"], tx.init(params), params, **extra)
    np.testing.assert_allclose(flat(u).numpy(), np.linalg.solve(a + mu * np.eye(6), _grad_at_zero(b)), rtol=1e-8,
                               atol=1e-10)
    assert int(state.count) == 1
    # a rank-3 PSD Hessian: a rank-3 sketch recovers it, so the solve is exact too
    g = torch.Generator().manual_seed(5)
    f = torch.randn(8, 3, generator=g, dtype=torch.float64)
    low = f @ f.T
    c = torch.randn(8, generator=g, dtype=torch.float64)
    lossl = lambda p: 0.5 * p["x"] @ low @ p["x"] - c @ p["x"]  # noqa: E731
    x0 = {"x": torch.zeros(8, dtype=torch.float64)}
    extra = gx.evaluation_args(lossl, x0)
    tx = gx.scale_by_nystrom_sketch_and_solve(rank=3, damping=0.1, seed=7)
    u, _ = tx.update(extra["grad"], tx.init(x0), x0, **extra)
    np.testing.assert_allclose(u["x"].numpy(), np.linalg.solve(low.numpy() + 0.1 * np.eye(8), -c.numpy()),
                               rtol=1e-7, atol=1e-9)


def test_nystrom_sketch_is_reproducible_from_the_seed_and_count():
    loss, params, a, b, flat = _quadratic(n=10, cond=50.0)
    extra = gx.evaluation_args(loss, params)
    outs = []
    for seed in (0, 0, 1):
        tx = gx.scale_by_nystrom_sketch_and_solve(rank=3, seed=seed)
        outs.append(flat(tx.update(extra["grad"], tx.init(params), params, **extra)[0]))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
    assert not torch.allclose(outs[0], outs[2])
    state = tx.init(params)
    first, state = tx.update(extra["grad"], state, params, **extra)
    second, _ = tx.update(extra["grad"], state, params, **extra)  # the next count: another sketch
    assert not torch.allclose(flat(first), flat(second))


def test_nystrom_pcg_solves_the_damped_system_in_fewer_iterations_than_cg():
    n = 40
    g = torch.Generator().manual_seed(2)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    eig = torch.cat([torch.logspace(4, 2, 8, dtype=torch.float64), torch.linspace(1.0, 2.0, n - 8,
                                                                                 dtype=torch.float64)])
    a = q @ torch.diag(eig) @ q.T
    c = torch.randn(n, generator=g, dtype=torch.float64)
    loss = lambda p: 0.5 * p["x"] @ a @ p["x"] - c @ p["x"]  # noqa: E731
    x0 = {"x": torch.zeros(n, dtype=torch.float64)}
    mu = 1e-3
    want = np.linalg.solve(a.numpy() + mu * np.eye(n), -c.numpy())
    extra = gx.evaluation_args(loss, x0)
    pcg = gx.scale_by_nystrom_pcg(rank=10, damping=mu, tol=1e-10)
    u, state = pcg.update(extra["grad"], pcg.init(x0), x0, **extra)
    np.testing.assert_allclose(u["x"].numpy(), want, rtol=1e-8, atol=1e-10)
    cg = gx.scale_by_newton_cg(damping=mu, tol=1e-10)
    _, cg_state = cg.update(extra["grad"], cg.init(x0), x0, **extra)
    assert int(state.iterations) < int(cg_state.iterations)  # the sketch took the 8 large eigenvalues away


# --- Gauss-Newton -----------------------------------------------------------------------


def _exponential_fit():
    t = np.linspace(0.0, 2.0, 12)
    y = 2.5 * np.exp(-1.3 * t) + 0.3 + 0.01 * np.sin(7 * t)
    tt, yt = torch.tensor(t), torch.tensor(y)

    def residual_fn(p):
        return p["a"] * torch.exp(p["k"] * tt) + p["c"] - yt

    def residual_np(z):
        return z[0] * np.exp(z[1] * t) + z[2] - y

    return residual_fn, residual_np


def test_gauss_newton_step_is_the_least_squares_solution_of_the_linearisation():
    residual_fn, residual_np = _exponential_fit()
    params = {"a": torch.tensor(1.0, dtype=torch.float64), "k": torch.tensor(-0.5, dtype=torch.float64),
              "c": torch.tensor(0.0, dtype=torch.float64)}
    z = np.array([1.0, -0.5, 0.0])
    eps = 1e-6
    jac = np.stack([(residual_np(z + eps * e) - residual_np(z - eps * e)) / (2 * eps) for e in np.eye(3)], axis=1)
    want = np.linalg.lstsq(jac, residual_np(z), rcond=None)[0]  # J^+ r: the Gauss-Newton step is -this
    loss = lambda p: 0.5 * (residual_fn(p) ** 2).sum()  # noqa: E731
    for jacobian in ("reverse", "forward"):
        tx = gx.scale_by_gauss_newton(jacobian=jacobian)
        extra = gx.evaluation_args(loss, params)
        u, _ = tx.update(extra["grad"], tx.init(params), params, residual_fn=residual_fn)
        np.testing.assert_allclose([float(u[k]) for k in ("a", "k", "c")], want, rtol=1e-7, atol=1e-9)


def test_gauss_newton_converges_to_scipy_least_squares():
    scipy_optimize = pytest.importorskip("scipy.optimize")
    residual_fn, residual_np = _exponential_fit()
    params = {"a": torch.tensor(1.0, dtype=torch.float64), "k": torch.tensor(-0.5, dtype=torch.float64),
              "c": torch.tensor(0.0, dtype=torch.float64)}
    loss = lambda p: 0.5 * (residual_fn(p) ** 2).sum()  # noqa: E731
    tx = gx.chain(gx.scale_by_gauss_newton(), gx.scale(-1.0), gx.scale_by_backtracking())  # damped Gauss-Newton
    state = tx.init(params)
    for _ in range(30):
        extra = gx.evaluation_args(loss, params)
        updates, state = tx.update(extra["grad"], state, params, residual_fn=residual_fn, **extra)
        params = gx.apply_updates(params, updates)
    ref = scipy_optimize.least_squares(residual_np, np.array([1.0, -0.5, 0.0]), xtol=1e-15, ftol=1e-15, gtol=1e-15)
    np.testing.assert_allclose([float(params[k]) for k in ("a", "k", "c")], ref.x, rtol=1e-8, atol=1e-10)


def test_gauss_newton_needs_residual_fn():
    with pytest.raises(ValueError, match="residual_fn"):
        tx = gx.scale_by_gauss_newton()
        p = {"x": torch.zeros(2)}
        tx.update(p, tx.init(p), p)


# --- cubic regularisation -----------------------------------------------------------------


def _model(g, hess, sigma, s):
    return g @ s + 0.5 * s @ hess @ s + sigma / 3 * np.linalg.norm(s) ** 3


@pytest.mark.parametrize("lowest", [-2.0, 0.5])
def test_cubic_step_is_the_global_minimiser_of_the_model(lowest):
    """Nesterov-Polyak's step (adaptive=False) meets the global-minimiser conditions of the cubic
    model (Cartis, Gould & Toint 2011, Thm 3.1) and beats scipy's local minimisations of it."""
    scipy_optimize = pytest.importorskip("scipy.optimize")
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    hess = (q * np.array([lowest, 1.0, 2.0, 3.0, 5.0])) @ q.T
    g = rng.normal(size=5)
    sigma = 0.7
    x0 = {"x": torch.zeros(5, dtype=torch.float64)}
    ht, gt = torch.tensor(hess), torch.tensor(g)
    loss = lambda p: gt @ p["x"] + 0.5 * p["x"] @ ht @ p["x"]  # noqa: E731
    tx = gx.scale_by_cubic_regularization(sigma=sigma, adaptive=False)
    extra = gx.evaluation_args(loss, x0)
    u, state = tx.update(extra["grad"], tx.init(x0), x0, **extra)
    s = u["x"].numpy()
    lam = sigma * np.linalg.norm(s)
    np.testing.assert_allclose(g + hess @ s + lam * s, 0, atol=1e-9)  # stationary
    assert np.linalg.eigvalsh(hess + lam * np.eye(5)).min() >= -1e-9  # H + sigma |s| I is PSD
    best = min(scipy_optimize.minimize(lambda z: _model(g, hess, sigma, z), rng.normal(size=5), method="BFGS").fun
               for _ in range(5))
    assert _model(g, hess, sigma, s) <= best + 1e-9
    assert float(state.sigma) == sigma


def test_cubic_step_escapes_a_saddle_point_in_the_hard_case():
    hess = torch.diag(torch.tensor([-2.0, 1.0], dtype=torch.float64))
    loss = lambda p: 0.5 * p["x"] @ hess @ p["x"]  # noqa: E731
    x0 = {"x": torch.zeros(2, dtype=torch.float64)}  # g = 0 at the saddle
    tx = gx.scale_by_cubic_regularization(sigma=0.5, adaptive=False)
    extra = gx.evaluation_args(loss, x0)
    u, _ = tx.update(extra["grad"], tx.init(x0), x0, **extra)
    np.testing.assert_allclose(np.abs(u["x"].numpy()), [4.0, 0.0], atol=1e-12)  # |s| = -lambda_1 / sigma


def test_arc_adapts_sigma_and_minimises_rosenbrock():
    def rosen(p):
        x = p["x"]
        return (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2

    params = {"x": torch.tensor([-1.2, 1.0], dtype=torch.float64)}
    tx = gx.scale_by_cubic_regularization(sigma=1.0)
    out, state = _run(tx, rosen, params, steps=100)
    np.testing.assert_allclose(out["x"].numpy(), [1.0, 1.0], atol=1e-8)
    assert float(state.sigma) != 1.0 and int(state.count) == 100


# --- more under gx.Optimizer ---------------------------------------------------------------


@pytest.mark.parametrize("make,flag,tol", [
    (lambda: gx.scale_by_newton_cg_trust_region(init_radius=0.5), True, 1e-10),
    (lambda: gx.scale_by_cubic_regularization(sigma=2.0), True, 1e-10),
    (lambda: gx.chain(gx.scale_by_nystrom_pcg(rank=3, damping=0.1), gx.scale(-1.0), gx.scale_by_backtracking()),
     True, 1e-10),
    (lambda: gx.newton(eigenvalues="abs"), True, 1e-10),
    # finite differences of the closure's gradients: no backward flag needed
    (lambda: gx.newton_cg(hvp_method="fd_central", h=1e-4), False, 1e-6),
], ids=["trust_region", "arc", "nystrom_pcg", "newton", "newton_cg_fd"])
def test_under_the_optimizer_the_closure_gives_the_functional_trajectory(make, flag, tol):
    leaves = leaf_copy(_params())
    got = optimizer_trajectory(leaves, lambda p, t: _loss(p), gx.Optimizer(list(leaves.values()), make()), 3,
                               closure="backward" if flag else "plain")
    params = _params()
    tx = make()
    state = tx.init(params)
    for step in range(3):
        extra = gx.evaluation_args(_loss, params)
        updates, state = tx.update(extra["grad"], state, params, **extra)
        params = gx.apply_updates(params, updates)
        _assert_tree_close(got[step], params, rtol=tol, atol=tol)
    assert float(_loss(params)) < float(_loss(_params()))
