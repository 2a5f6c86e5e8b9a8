"""Smooth test problems for the line searches and L-BFGS, written twice: in torch (for gradtx)
and in JAX (for optax), the same formulas, float64. Each takes a dict ``{"x": vector}``."""

from __future__ import annotations

import numpy as np
import torch


def rosenbrock_torch(p):
    x = p["x"]
    return torch.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)


def rosenbrock_start(n: int) -> np.ndarray:
    x = np.full(n, -1.2)
    x[1::2] = 1.0  # the classic start (-1.2, 1, -1.2, 1, ...)
    return x


def quadratic_data(n: int = 10):
    """An ill-conditioned quadratic: A = Q diag(logspace(0, 3)) Q^T (condition number 1000)."""
    rng = np.random.RandomState(0)
    q, _ = np.linalg.qr(rng.randn(n, n))
    a = q @ np.diag(np.logspace(0, 3, n)) @ q.T
    return a, rng.randn(n)


def logistic_data(m: int = 60, n: int = 6):
    rng = np.random.RandomState(1)
    x = rng.randn(m, n)
    y = np.sign(x @ rng.randn(n) + 0.5 * rng.randn(m))
    return x, y


def problems_torch():
    a, b = (torch.tensor(v) for v in quadratic_data())
    xs, ys = (torch.tensor(v) for v in logistic_data())

    def quadratic(p):
        x = p["x"]
        return 0.5 * x @ (a @ x) - b @ x

    def logistic(p):
        w = p["x"]
        return torch.logaddexp(torch.zeros(()), -ys * (xs @ w)).mean() + 1e-3 * (w @ w)

    return {"quadratic": (quadratic, np.zeros(10)), "logistic": (logistic, np.zeros(6)),
            **{f"rosenbrock{n}": (rosenbrock_torch, rosenbrock_start(n)) for n in (2, 10, 100)}}


def problems_jax():
    import jax.numpy as jnp

    a, b = (jnp.asarray(v) for v in quadratic_data())
    xs, ys = (jnp.asarray(v) for v in logistic_data())

    def quadratic(x):
        return 0.5 * x @ (a @ x) - b @ x

    def logistic(w):
        return jnp.logaddexp(0.0, -ys * (xs @ w)).mean() + 1e-3 * (w @ w)

    def rosenbrock(x):
        return jnp.sum(100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2)

    return {"quadratic": quadratic, "logistic": logistic, "rosenbrock2": rosenbrock, "rosenbrock10": rosenbrock,
            "rosenbrock100": rosenbrock}


def jax_x64():
    """jax with float64 (skips the test when jax or optax is missing)."""
    import pytest

    jax = pytest.importorskip("jax")
    pytest.importorskip("optax")
    jax.config.update("jax_enable_x64", True)
    return jax


def run_optax(jax, tx, fn, x0: np.ndarray, steps: int) -> list[np.ndarray]:
    """The iterates of optax's ``tx`` from ``x0``, value and gradient fresh at each step."""
    import jax.numpy as jnp
    import optax

    @jax.jit
    def step(x, state):
        value, grad = jax.value_and_grad(fn)(x)
        updates, state = tx.update(grad, state, x, value=value, grad=grad, value_fn=fn)
        return optax.apply_updates(x, updates), state

    x = jnp.asarray(x0)
    state = tx.init(x)
    out = []
    for _ in range(steps):
        x, state = step(x, state)
        out.append(np.asarray(x))
    return out


def run_gradtx(tx, fn, x0: np.ndarray, steps: int, states: list | None = None) -> list[np.ndarray]:
    """The iterates of gradtx's ``tx`` from ``x0``, every evaluation extra argument given."""
    import gradtx as gx

    params = {"x": torch.tensor(x0)}
    state = tx.init(params)
    out = []
    for _ in range(steps):
        extra = gx.evaluation_args(fn, params)
        updates, state = tx.update(extra["grad"], state, params, **extra)
        params = gx.apply_updates(params, updates)
        out.append(params["x"].numpy().copy())
        if states is not None:
            states.append(state)
    return out
