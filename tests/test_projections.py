"""Projections against optax.projections (0.2.8, float64 via jax x64), and project_params
against a step followed by the projection; rtol 1e-12."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch

import gradtx as gx

optax = pytest.importorskip("optax")
jax = pytest.importorskip("jax")
jax.config.update("jax_enable_x64", True)
jnp = jax.numpy

TOL = dict(rtol=1e-12, atol=1e-14)


def _tree(seed, scale=1.0):
    gen = torch.Generator().manual_seed(seed)
    out = {"a": torch.randn(4, 3, generator=gen, dtype=torch.float64) * scale,
           "b": torch.randn(5, generator=gen, dtype=torch.float64) * scale,
           "c": torch.randn((), generator=gen, dtype=torch.float64) * scale}
    return out  # keys in sorted order, as jax orders them


def _close(mine, theirs):
    for a, b in zip(gx.tree_leaves(mine), jax.tree.leaves(theirs)):
        torch.testing.assert_close(a, torch.as_tensor(np.array(b)), **TOL)


def _jax(tree):
    return jax.tree.map(lambda x: jnp.asarray(x.numpy()), tree)


@pytest.mark.parametrize("scale", [0.1, 1.0, 3.0, 50.0])
def test_projections_match_optax(scale):
    P = optax.projections
    for seed in range(3):
        x = _tree(seed)
        jx = _jax(x)
        _close(gx.projection_non_negative(x), P.projection_non_negative(jx))
        # optax's box and hypercube take number bounds for a single array only: compared leaf by leaf
        _close(gx.projection_box(x, -0.3 * scale, 0.5 * scale),
               jax.tree.map(lambda a: P.projection_box(a, -0.3 * scale, 0.5 * scale), jx))
        _close(gx.projection_hypercube(x, scale), jax.tree.map(lambda a: P.projection_hypercube(a, scale), jx))
        _close(gx.projection_linf_ball(x, scale), P.projection_linf_ball(jx, scale))
        _close(gx.projection_simplex(x, scale), P.projection_simplex(jx, scale))
        _close(gx.projection_l1_sphere(x, scale), P.projection_l1_sphere(jx, scale))
        _close(gx.projection_l1_ball(x, scale), P.projection_l1_ball(jx, scale))
        _close(gx.projection_l2_sphere(x, scale), P.projection_l2_sphere(jx, scale))
        _close(gx.projection_l2_ball(x, scale), P.projection_l2_ball(jx, scale))


def test_box_takes_trees_of_bounds_and_simplex_lands_on_it():
    x = _tree(4)
    lower = gx.tree_full_like(x, -0.1)
    upper = gx.tree_full_like(x, 0.2)
    _close(gx.projection_box(x, lower, upper), optax.projections.projection_box(_jax(x), _jax(lower), _jax(upper)))
    s = gx.projection_simplex(x, 2.0)
    assert all(bool((v >= 0).all()) for v in s.values())
    torch.testing.assert_close(gx.tree_sum(s), torch.tensor(2.0, dtype=torch.float64), **TOL)


@pytest.mark.parametrize("projection", [gx.projection_simplex, functools.partial(gx.projection_l2_ball, scale=0.5),
                                        functools.partial(gx.projection_box, lower=-0.2, upper=0.3)])
def test_project_params_is_projected_gradient_descent(projection):
    """Each step of chain(sgd, project_params(P)) lands on P(p - lr g), optax's projected
    gradient descent (apply_updates, then the projection)."""
    oprojection = {gx.projection_simplex: optax.projections.projection_simplex}.get(projection)
    if oprojection is None and projection.func is gx.projection_box:
        lo, hi = projection.keywords["lower"], projection.keywords["upper"]
        oprojection = functools.partial(jax.tree.map, lambda a: optax.projections.projection_box(a, lo, hi))
    elif oprojection is None:
        oprojection = functools.partial(getattr(optax.projections, projection.func.__name__), **projection.keywords)
    tx = gx.chain(gx.sgd(0.1, momentum=0.5), gx.project_params(projection))
    otx = optax.sgd(0.1, momentum=0.5)
    params = projection(_tree(5))
    oparams = _jax(params)
    state, ostate = tx.init(params), otx.init(oparams)
    for t in range(6):
        grads = _tree(10 + t)
        u, state = tx.update(grads, state, params)
        params = gx.apply_updates(params, u)
        ou, ostate = otx.update(_jax(grads), ostate, oparams)
        oparams = oprojection(optax.apply_updates(oparams, ou))
        _close(params, oparams)


def test_project_params_needs_params_and_a_callable():
    tx = gx.project_params(gx.projection_non_negative)
    with pytest.raises(ValueError, match="params"):
        tx.update({"w": torch.ones(2)}, tx.init({"w": torch.ones(2)}))
    with pytest.raises(ValueError, match="projection"):
        gx.project_params(3)
