"""Second order: the Hessian-vector product contract (functional builders, the closure
adapter's double backward, finite differences), optax's second_order utilities, and the
methods of src/gradtx/second_order/."""

from __future__ import annotations

import numpy as np
import pytest
import torch

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
