"""Gradient approximation (issue 12): finite differences, SPSA/RDSA/MeZO, Gaussian smoothing and
homotopy, forward gradients, Laplacian smoothing, the hand-over to later members, and the
adapter with backward=False closures."""

from __future__ import annotations

import io
import math

import pytest
import torch

import gradtx as gx
from gradtx.approx._perturb import ApproxState, Directions

D = torch.float64


def smooth_loss(p):
    """A smooth, non-quadratic loss of a dict {"w": (3,), "b": (2,)}."""
    w, b = p["w"], p["b"]
    return (torch.sin(w) * w ** 2).sum() + (w[:2] * b).sum() ** 2 + torch.exp(0.3 * b).sum()


def true_grad(p):
    return gx.make_value_and_grad_fn(smooth_loss)(p)[1]


def point():
    return {"w": torch.tensor([0.3, -0.2, 0.5], dtype=D), "b": torch.tensor([0.7, -0.4], dtype=D)}


def zeros(p):
    return {k: torch.zeros_like(v) for k, v in p.items()}


def estimate(tx, p, state=None, value_fn=smooth_loss, **extra):
    state = tx.init(p) if state is None else state
    return tx.update(zeros(p), state, p, value_fn=value_fn, **extra)


def flat(tree):
    return torch.cat([tree[k].reshape(-1) for k in sorted(tree)])


# --- finite differences -----------------------------------------------------------------------


@pytest.mark.parametrize("formula,order", [("central", 2), ("forward", 1), ("backward", 1)])
def test_fdm_error_shrinks_with_the_order_of_the_formula(formula, order):
    """Halving h divides the error by 2^order (central O(h^2), one-sided O(h))."""
    p = point()
    g = flat(true_grad(p))
    errors = [float((flat(estimate(gx.fdm(h, formula), p)[0]) - g).norm()) for h in (2e-2, 1e-2, 5e-3)]
    for big, small in zip(errors, errors[1:]):
        assert 2 ** order * 0.8 < big / small < 2 ** order * 1.25, errors


def test_fdm_matches_the_formula_and_torchzero():
    """Central differences written out here, and torchzero's FDM (same h, formula), to 1e-12."""
    tz = pytest.importorskip("torchzero")
    p, h = point(), 1e-3
    ours = flat(estimate(gx.fdm(h), p)[0])
    x0 = flat(p)
    want = []
    for j in range(x0.numel()):
        e = torch.zeros_like(x0)
        e[j] = h

        def at(x):
            return float(smooth_loss({"b": x[:2], "w": x[2:]}))

        want.append((at(x0 + e) - at(x0 - e)) / (2 * h))
    torch.testing.assert_close(ours, torch.tensor(want, dtype=D), rtol=1e-10, atol=1e-12)
    params = [torch.nn.Parameter(p["b"].clone()), torch.nn.Parameter(p["w"].clone())]
    opt = tz.Optimizer(params, tz.m.FDM(h=h, formula="central"), tz.m.LR(1.0))

    def closure(backward=True):
        loss = smooth_loss({"b": params[0], "w": params[1]})
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

    opt.step(closure)
    theirs = torch.cat([x0[:2] - params[0].detach(), x0[2:] - params[1].detach()])
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-12)


# --- randomized estimators: unbiased in expectation ------------------------------------------


@pytest.mark.parametrize("make", [lambda: gx.spsa(1e-4), lambda: gx.rdsa(1e-4), lambda: gx.scale_by_mezo(1e-4),
                                  lambda: gx.randomized_fdm(1e-4, 2, "central", "gaussian")],
                         ids=["spsa", "rdsa", "mezo", "randomized_fdm"])
def test_randomized_estimates_are_unbiased(make):
    """The mean of N seeded estimates (consecutive steps at the same params) is the gradient
    within 5 standard errors per coordinate (the bias, O(h^2) = 1e-8, is far below)."""
    p = point()
    g = flat(true_grad(p))
    tx = make()
    state = tx.init(p)
    samples = []
    for _ in range(1500):
        u, state = tx.update(zeros(p), state, p, value_fn=smooth_loss)
        samples.append(flat(u))
    s = torch.stack(samples)
    mean, stderr = s.mean(0), s.std(0) / math.sqrt(len(samples))
    assert (stderr > 0).all()
    assert ((mean - g).abs() < 5 * stderr).all(), (mean, g, stderr)


def test_spsa_uses_rademacher_directions_and_the_central_formula():
    """One sample: g = z (f(x + h z) - f(x - h z)) / (2h) with z in {-1, 1}: g / |g| has one
    magnitude and g . g = n d^2 for the directional difference d."""
    p, h = point(), 1e-3
    u, _ = estimate(gx.spsa(h, seed=7), p)
    g = flat(u)
    z = g.sign()
    x = flat(p)

    def at(v):
        return float(smooth_loss({"b": v[:2], "w": v[2:]}))

    d = (at(x + h * z) - at(x - h * z)) / (2 * h)
    torch.testing.assert_close(g, d * z, rtol=1e-12, atol=1e-14)


def test_gaussian_smoothing_matches_the_closed_form_on_a_quadratic():
    """f = x^T A x / 2 + b^T x: forward differences give exactly
    g = (1/n) sum_k z_k (z_k^T (A x + b) + h z_k^T A z_k / 2) for the drawn z_k; in expectation A x + b."""
    gen = torch.Generator().manual_seed(3)
    m = torch.randn(5, 5, generator=gen, dtype=D)
    a, b = m @ m.T + torch.eye(5, dtype=D), torch.randn(5, generator=gen, dtype=D)
    x = {"x": torch.randn(5, generator=gen, dtype=D)}

    def f(p):
        return 0.5 * p["x"] @ a @ p["x"] + b @ p["x"]

    h, n = 0.1, 16
    tx = gx.gaussian_smoothing(h, n, seed=5)
    state = tx.init(x)
    u, _ = tx.update(zeros(x), state, x, value_fn=f)
    directions = Directions(ApproxState(state.seed, state.count), "gaussian")
    grad = a @ x["x"] + b
    want = sum(z * (z @ grad + 0.5 * h * z @ a @ z) for z in (directions(k, 0, x["x"]) for k in range(n))) / n
    torch.testing.assert_close(u["x"], want, rtol=1e-9, atol=1e-11)
    # and unbiased for grad f_h = A x + b
    tx = gx.gaussian_smoothing(h, 100, seed=1)
    state = tx.init(x)
    samples = []
    for _ in range(64):
        u, state = tx.update(zeros(x), state, x, value_fn=f)
        samples.append(u["x"])
    s = torch.stack(samples)
    assert ((s.mean(0) - grad).abs() < 5 * s.std(0) / 8).all()


def test_gaussian_homotopy_is_gaussian_smoothing_with_a_shrinking_width():
    """Step t equals Gaussian smoothing with h = max(sigma decay^t, min_sigma) at the same seed and count."""
    p = point()
    sigma, decay, low = 0.5, 0.5, 0.1
    tx = gx.gaussian_homotopy(sigma, decay, low, 3, seed=2)
    state = tx.init(p)
    for t in range(4):
        u, new_state = tx.update(zeros(p), state, p, value_fn=smooth_loss)
        ref = gx.gaussian_smoothing(max(sigma * decay ** t, low), 3, "central", seed=2)
        want, _ = ref.update(zeros(p), state, p, value_fn=smooth_loss)
        for k in p:
            torch.testing.assert_close(u[k], want[k], rtol=1e-12, atol=1e-14)
        state = new_state


def test_forward_gradient_is_the_jvp_times_the_direction():
    """n_samples=1: g = (grad f . v) v, the directional derivative from torch.func.jvp."""
    p = point()
    tx = gx.forward_gradient(1, seed=11)
    state = tx.init(p)
    u, _ = tx.update(zeros(p), state, p, value_fn=smooth_loss)
    directions = Directions(state, "gaussian")
    keys = list(p)  # the order of the tree's leaves
    vs = {k: directions(0, i, p[k]) for i, k in enumerate(keys)}
    _, d = torch.func.jvp(smooth_loss, (p,), (vs,))
    for k in p:
        torch.testing.assert_close(u[k], d * vs[k], rtol=1e-12, atol=1e-14)


def test_randomness_comes_from_the_state_only():
    """The same state gives the same estimate; no global RNG is read or advanced."""
    p = point()
    rng = torch.get_rng_state()
    tx = gx.spsa(1e-3, seed=5)
    s0 = tx.init(p)
    u1, s1 = tx.update(zeros(p), s0, p, value_fn=smooth_loss)
    torch.manual_seed(123)  # a different global RNG changes nothing
    u2, _ = tx.update(zeros(p), s0, p, value_fn=smooth_loss)
    u3, _ = tx.update(zeros(p), s1, p, value_fn=smooth_loss)
    assert all(torch.equal(u1[k], u2[k]) for k in p)
    assert not all(torch.equal(u1[k], u3[k]) for k in p)
    torch.set_rng_state(rng)


def test_missing_value_fn_is_a_clear_error():
    p = point()
    tx = gx.spsa()
    with pytest.raises(ValueError, match="spsa approximates the gradient from the loss alone.*value_fn"):
        tx.update(zeros(p), tx.init(p), p)
    with pytest.raises(ValueError, match="formula must be one of"):
        gx.fdm(formula="centered")
    with pytest.raises(ValueError, match="h must be > 0"):
        gx.rdsa(0.0)


# --- Laplacian smoothing -----------------------------------------------------------------------


def test_laplacian_smoothing_matches_torchzero():
    pytest.importorskip("torchzero")
    from torchzero.modules.smoothing.laplacian import vector_laplacian_smoothing

    gen = torch.Generator().manual_seed(0)
    u = {"w": torch.randn(4, 5, generator=gen, dtype=D), "b": torch.randn(7, generator=gen, dtype=D),
         "s": torch.randn(2, generator=gen, dtype=D)}
    tx = gx.laplacian_smoothing(0.7)
    out, _ = tx.update(u, tx.init(u), u)
    for k in ("w", "b"):
        torch.testing.assert_close(out[k], vector_laplacian_smoothing(u[k], 0.7).view_as(u[k]), rtol=1e-12,
                                   atol=1e-14)
    assert torch.equal(out["s"], u["s"])  # fewer than min_numel elements
    tx = gx.laplacian_smoothing(0.7, layerwise=False)
    out, _ = tx.update(u, tx.init(u), u)
    whole = vector_laplacian_smoothing(torch.cat([u[k].reshape(-1) for k in ("b", "s", "w")]), 0.7)
    torch.testing.assert_close(torch.cat([out[k].reshape(-1) for k in ("b", "s", "w")]), whole, rtol=1e-12,
                               atol=1e-14)


# --- the hand-over ------------------------------------------------------------------------------


def test_later_members_get_the_approximated_gradient_and_functions():
    """After an approximator: grad is its output, value_and_grad_fn returns that same gradient at
    the step's params (same seed), hvp_fn differences it; a user's plain pair reads grad too."""
    seen = {}

    def init(params):
        return ()

    def update(updates, state, params=None, grad=None, value_and_grad_fn=None, hvp_fn=None, value=None):
        seen.update(grad=grad, vg=value_and_grad_fn, hvp=hvp_fn, value=value)
        return updates, state

    p = point()
    tx = gx.chain(gx.gaussian_smoothing(1e-2, 8, seed=3), gx.GradientTransformation(init, update))
    u, _ = tx.update(zeros(p), tx.init(p), p, value_fn=smooth_loss)
    assert all(torch.equal(seen["grad"][k], u[k]) for k in p)
    value, again = seen["vg"](p)
    assert all(torch.equal(again[k], u[k]) for k in p)
    assert float(value) == float(smooth_loss(p)) == float(seen["value"])
    # on a quadratic the approximated gradient is affine in x, so hvp_fn gives A v (up to round-off)
    a = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=D)

    def quad(q):
        return 0.5 * q["x"] @ a @ q["x"]

    x = {"x": torch.tensor([0.5, -1.0], dtype=D)}
    tx = gx.chain(gx.fdm(1e-4), gx.GradientTransformation(init, update))
    tx.update(zeros(x), tx.init(x), x, value_fn=quad)
    v = {"x": torch.tensor([1.0, -2.0], dtype=D)}
    torch.testing.assert_close(seen["hvp"](x, v)["x"], a @ v["x"], rtol=1e-6, atol=1e-6)


def test_a_nested_chain_hands_over_too():
    seen = {}

    def update(updates, state, params=None, grad=None):
        seen["grad"] = grad
        return updates, state

    p = point()
    inner = gx.chain(gx.spsa(1e-3, seed=4), gx.scale(2.0))
    tx = gx.chain(inner, gx.GradientTransformation(lambda params: (), update))
    assert gx.makes_gradients(tx) and gx.makes_gradients(inner) and not gx.makes_gradients(gx.adam(1e-3))
    u, _ = tx.update(zeros(p), tx.init(p), p, value_fn=smooth_loss)
    ref, _ = estimate(gx.spsa(1e-3, seed=4), p)
    for k in p:
        torch.testing.assert_close(u[k], 2 * ref[k])
        torch.testing.assert_close(seen["grad"][k], ref[k])


# --- gx.Optimizer with backward=False closures ----------------------------------------------------


def _functional_run(make, p, steps):
    tx = make()
    state = tx.init(p)
    out = []
    for _ in range(steps):
        u, state = tx.update(zeros(p), state, p, value_fn=smooth_loss, value=smooth_loss(p))
        p = gx.apply_updates(p, u)
        out.append({k: v.clone() for k, v in p.items()})
    return out


def _adapter(make, p):
    params = {k: torch.nn.Parameter(v.clone()) for k, v in p.items()}
    opt = gx.Optimizer(list(params.values()), make())
    flags = []

    def closure(backward=True):
        flags.append(backward)
        return smooth_loss(params)

    return params, opt, closure, flags


@pytest.mark.parametrize("make,tol", [
    (lambda: gx.chain(gx.spsa(1e-3, seed=1), gx.trace(0.5), gx.scale_by_lr(0.05)), 0.0),
    (lambda: gx.chain(gx.gaussian_smoothing(1e-2, 4, seed=2), gx.scale_by_lr(0.05)), 0.0),
    (lambda: gx.chain(gx.fdm(1e-4), gx.scale_by_lr(0.1)), 0.0),
    (lambda: gx.mezo(0.05, 1e-3, seed=3), 1e-10),  # in place: the moved params differ by round-off
], ids=["spsa", "gaussian_smoothing", "fdm", "mezo"])
def test_adapter_steps_params_without_grad_from_backward_false_closures(make, tol):
    p = point()
    want = _functional_run(make, p, 6)
    params, opt, closure, flags = _adapter(make, p)
    assert all(x.grad is None for x in params.values())
    for step in range(6):
        opt.step(closure)
        for k in p:
            torch.testing.assert_close(params[k].detach(), want[step][k], rtol=0, atol=tol)
    assert flags and not any(flags), "the closure was called with backward=True"
    assert all(x.grad is None for x in params.values())
    # both params were stepped, so both have an entry in the state dict (format 2)
    assert sorted(opt.state_dict()["state"]) == [0, 1]


def test_adapter_refuses_a_gradient_source_without_closure():
    params, opt, closure, _ = _adapter(lambda: gx.chain(gx.spsa(), gx.scale_by_lr(0.1)), point())
    with pytest.raises(ValueError, match="makes its own gradients.*closure"):
        opt.step()
    with pytest.raises(ValueError, match="backward=False only"):
        opt.step(lambda: smooth_loss(params))


def test_forward_gradient_refuses_the_adapters_closure():
    params, opt, closure, _ = _adapter(lambda: gx.chain(gx.forward_gradient(), gx.scale_by_lr(0.1)), point())
    with pytest.raises(ValueError, match="torch.func.jvp.*gx.rdsa"):
        opt.step(closure)


def test_checkpoint_mid_run_continues_bit_identically():
    """The seed and count are state: a state dict saved at step 3 (torch.load weights_only) gives
    the uninterrupted run's steps 4-6 exactly."""
    def make():
        return gx.chain(gx.rdsa(1e-3, 2, seed=9), gx.scale_by_adam(), gx.scale_by_lr(0.05))

    p = point()
    params, opt, closure, _ = _adapter(make, p)
    for _ in range(3):
        opt.step(closure)
    buffer = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "params": {k: v.detach().clone() for k, v in params.items()}}, buffer)
    for _ in range(3):
        opt.step(closure)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    params2, opt2, closure2, _ = _adapter(make, saved["params"])
    opt2.load_state_dict(saved["opt"])
    for _ in range(3):
        opt2.step(closure2)
    for k in p:
        assert torch.equal(params2[k].detach(), params[k].detach())


def test_zeroth_order_chain_with_a_line_search_under_the_adapter():
    """chain(fdm, scale(-1), backtracking): the line search reads the hand-over's grad and the
    closure's value_fn; it minimises a smooth loss with backward=False closures only."""
    p = {"w": torch.tensor([1.5, -1.0, 0.8], dtype=D), "b": torch.tensor([0.5, 0.5], dtype=D)}

    def loss(q):
        return (((q["w"] - 0.3) ** 2).sum() + 2 * ((q["b"] + 0.1) ** 2).sum()
                + 0.5 * ((q["w"][0] - 0.3) * (q["b"][0] + 0.1)) ** 2)

    params = {k: torch.nn.Parameter(v.clone()) for k, v in p.items()}
    opt = gx.Optimizer(list(params.values()), gx.chain(gx.fdm(1e-5), gx.scale(-1.0), gx.scale_by_backtracking()))
    flags = []

    def closure(backward=True):
        flags.append(backward)
        return loss(params)

    start = float(loss(params))
    for _ in range(30):
        opt.step(closure)
    assert float(loss(params)) < 1e-6 * start and not any(flags)


@pytest.mark.skipif(not hasattr(gx, "newton_cg"), reason="newton_cg comes with the second-order branch")
def test_zeroth_order_newton_minimises_rosenbrock_with_backward_false_closures():
    """chain(gaussian_smoothing, newton_cg, backtracking): torchzero's zeroth-order Newton, every
    closure call with backward=False."""
    x = torch.nn.Parameter(torch.tensor([-1.2, 1.0], dtype=D))

    def rosen(v):
        return (1 - v[0]) ** 2 + 100 * (v[1] - v[0] ** 2) ** 2

    tx = gx.chain(gx.gaussian_smoothing(1e-3, 20, "central"), gx.newton_cg(), gx.scale_by_backtracking())
    opt = gx.Optimizer([x], tx)
    flags = []

    def closure(backward=True):
        flags.append(backward)
        return rosen(x)

    for _ in range(100):
        opt.step(closure)
    assert float(rosen(x)) < 1e-6 and not any(flags)
