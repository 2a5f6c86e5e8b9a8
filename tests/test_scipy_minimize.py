"""gx.ScipyMinimize: one step runs scipy.optimize on the flattened parameters; the same run
as calling scipy directly on the same function (same x, same evaluation counts)."""

from __future__ import annotations

import builtins
import io

import numpy as np
import pytest
import torch

import gradtx as gx

optimize = pytest.importorskip("scipy.optimize")


def _rosen_torch(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    x = torch.cat([a.reshape(-1), b.reshape(-1)])
    return (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum()


X0 = np.array([-1.2, 1.0, -0.5, 0.8, 1.3])


def _rosen_and_grad(x: np.ndarray) -> tuple[float, np.ndarray]:
    """The same function, for scipy directly: the same torch ops, so the same bits."""
    t = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    loss = _rosen_torch(t[:2].reshape(2, 1), t[2:])
    (g,) = torch.autograd.grad(loss, t)
    return float(loss.detach()), g.numpy()


def _rosen(x: np.ndarray) -> float:
    t = torch.tensor(x, dtype=torch.float64)
    return float(_rosen_torch(t[:2].reshape(2, 1), t[2:]))


def _params(dtype=torch.float64):
    t = torch.tensor(X0, dtype=dtype)
    return torch.nn.Parameter(t[:2].reshape(2, 1).clone()), torch.nn.Parameter(t[2:].clone())


def _run(method, backward_flag=True, **kwargs):
    a, b = _params()
    opt = gx.ScipyMinimize([a, b], method=method, **kwargs)
    calls = []

    if backward_flag:
        def closure(backward=True):
            calls.append(backward)
            loss = _rosen_torch(a, b)
            if backward:
                opt.zero_grad()
                loss.backward()
            return loss
    else:
        def closure():
            calls.append(True)
            opt.zero_grad()
            loss = _rosen_torch(a, b)
            loss.backward()
            return loss

    first = opt.step(closure)
    x = torch.cat([a.detach().reshape(-1), b.detach()]).numpy()
    return x, opt.result, first, calls


@pytest.mark.parametrize("method", ["L-BFGS-B", "BFGS", "CG", "TNC", "SLSQP"])
def test_gradient_methods_match_scipy_directly(method):
    """Same final x (1e-10), same nfev/nit as scipy.optimize.minimize on the same function."""
    ref = optimize.minimize(_rosen_and_grad, X0, jac=True, method=method)
    x, result, first, calls = _run(method)
    np.testing.assert_allclose(x, ref.x, rtol=1e-10, atol=1e-12)
    assert result.nfev == ref.nfev and result.nit == ref.nit
    assert all(calls)  # every evaluation asked for the gradient
    assert float(first) == pytest.approx(optimize.rosen(X0))  # torch.optim.LBFGS's convention


@pytest.mark.parametrize("method", ["Nelder-Mead", "Powell"])
def test_derivative_free_methods_match_scipy_and_never_ask_for_backward(method):
    ref = optimize.minimize(_rosen, X0, method=method, options={"maxiter": 400})
    x, result, _, calls = _run(method, options={"maxiter": 400})
    np.testing.assert_allclose(x, ref.x, rtol=1e-10, atol=1e-12)
    assert result.nfev == ref.nfev
    assert not any(calls)


def test_plain_closure_works():
    ref = optimize.minimize(_rosen_and_grad, X0, jac=True, method="L-BFGS-B")
    x, _, _, _ = _run("L-BFGS-B", backward_flag=False)
    np.testing.assert_allclose(x, ref.x, rtol=1e-10, atol=1e-12)
    x, _, _, _ = _run("Nelder-Mead", backward_flag=False)
    np.testing.assert_allclose(x, optimize.minimize(_rosen, X0, method="Nelder-Mead").x, rtol=1e-10)


def test_bounds_broadcast_and_per_element():
    lo_hi = [(-2.0, 0.5)] * 5
    ref = optimize.minimize(_rosen_and_grad, X0, jac=True, method="L-BFGS-B", bounds=lo_hi)
    x, _, _, _ = _run("L-BFGS-B", bounds=(-2.0, 0.5))
    np.testing.assert_allclose(x, ref.x, rtol=1e-10, atol=1e-12)
    x2, _, _, _ = _run("L-BFGS-B", bounds=lo_hi)
    np.testing.assert_array_equal(x, x2)
    assert x.max() <= 0.5


@pytest.mark.parametrize("method,kwargs", [
    ("differential_evolution", {"rng": 0, "maxiter": 10, "polish": False}),
    ("dual_annealing", {"rng": 0, "maxiter": 30}),
])
def test_global_methods_match_scipy_directly(method, kwargs):
    bounds = [(-2.0, 2.0)] * 5
    extra = {"x0": X0} if method == "dual_annealing" else {}
    ref = getattr(optimize, method)(_rosen, bounds, **extra, **kwargs)
    x, result, _, calls = _run(method, bounds=(-2.0, 2.0), **kwargs)
    np.testing.assert_allclose(x, ref.x, rtol=1e-10, atol=1e-12)
    assert result.nfev == ref.nfev
    assert not any(calls)


def test_float32_params_and_state_dict():
    """float32 parameters are stepped (written back in float32); the optimizer keeps no state,
    and its state_dict round-trips through torch.load(weights_only=True)."""
    a, b = _params(torch.float32)
    opt = gx.ScipyMinimize([a, b], method="L-BFGS-B")

    def closure(backward=True):
        loss = _rosen_torch(a, b)
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

    opt.step(closure)
    assert a.dtype == torch.float32 and float(_rosen_torch(a, b).detach()) < 1e-4
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    buffer.seek(0)
    opt.load_state_dict(torch.load(buffer, weights_only=True))


def test_errors():
    a, b = _params()
    with pytest.raises(ValueError, match="method must be one of"):
        gx.ScipyMinimize([a, b], method="nope")
    with pytest.raises(ValueError, match="needs the Hessian"):
        gx.ScipyMinimize([a, b], method="trust-ncg")
    with pytest.raises(ValueError, match="bounds"):
        gx.ScipyMinimize([a, b], method="differential_evolution")
    with pytest.raises(ValueError, match="closure"):
        gx.ScipyMinimize([a, b]).step()


def test_missing_scipy_names_the_extra(monkeypatch):
    real_import = builtins.__import__

    def no_scipy(name, *args, **kwargs):
        if name == "scipy" or name.startswith("scipy."):
            raise ImportError("no scipy")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_scipy)
    with pytest.raises(ImportError, match=r"pip install gradtx\[scipy\]"):
        gx.ScipyMinimize(list(_params()))
