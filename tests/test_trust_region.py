"""Trust region: scipy's dogleg iterates, Alg. 4.1 written here, the subproblems'
optimality conditions, the BFGS model's formula, Rosenbrock's minimiser and the adapter."""

from __future__ import annotations

import pytest
import torch
from conftest import regression_batch, round_trip, tanh_net

import gradtx as gx


def _rosen(p):
    x = p["x"]
    return (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2


def _value_and_grad(p):
    x = p["x"].detach().requires_grad_(True)
    f = _rosen({"x": x})
    return f.detach(), torch.autograd.grad(f, x)[0]


def _exact_hessian(fn):
    """The exact Hessian of ``fn`` as a HessianApproximation: the state is the point, moved by s."""
    return gx.HessianApproximation(init=lambda x0: x0.clone(), update=lambda x, s, y: x + s,
                                   matrix=lambda x: torch.autograd.functional.hessian(fn, x))


def _run(tx, x0, steps, record=None):
    p = {"x": torch.tensor(x0, dtype=torch.float64)}
    state = tx.init(p)
    for k in range(steps):
        f, g = _value_and_grad(p)
        if g.norm() < 1e-10:
            return p, k, state
        u, state = tx.update({"x": g}, state, p, value=f, value_fn=_rosen)
        p = gx.apply_updates(p, u)
        if record is not None:
            record.append((p["x"].clone(), state.radius.clone()))
    return p, steps, state


def test_dogleg_with_the_exact_hessian_follows_scipy_dogleg():
    """Same model, subproblem and radius rule (scipy's defaults are N&W Alg. 4.1's): the
    same iterates, every iteration (refused ones included), on Rosenbrock from (-1.2, 1)."""
    np = pytest.importorskip("numpy")
    optimize = pytest.importorskip("scipy.optimize")
    seen = []
    ref = optimize.minimize(optimize.rosen, np.array([-1.2, 1.0]), jac=optimize.rosen_der,
                            hess=optimize.rosen_hess, method="dogleg", callback=lambda x: seen.append(x.copy()),
                            options={"gtol": 1e-10})
    assert ref.success
    tx = gx.scale_by_trust_region("dogleg", hessian=_exact_hessian(lambda x: _rosen({"x": x})))
    mine = []
    p, _, _ = _run(tx, [-1.2, 1.0], len(seen), mine)
    for k, (x_ref, (x, _)) in enumerate(zip(seen, mine)):
        np.testing.assert_allclose(x.numpy(), x_ref, rtol=1e-9, atol=1e-10, err_msg=f"iteration {k}")
    np.testing.assert_allclose(p["x"].numpy(), [1.0, 1.0], atol=1e-8)


@pytest.mark.parametrize("subproblem", ["dogleg", "levenberg_marquardt"])
def test_reaches_the_rosenbrock_minimiser_with_bfgs(subproblem):
    tx = gx.scale_by_trust_region(subproblem, hessian=gx.bfgs_hessian())
    p, steps, _ = _run(tx, [-1.2, 1.0], 200)
    torch.testing.assert_close(p["x"], torch.ones(2, dtype=torch.float64), rtol=0, atol=1e-7)
    assert steps < 100


def test_levenberg_marquardt_with_the_exact_hessian_matches_scipy_trust_exact():
    """scipy's trust-exact solves the same subproblem to a tolerance: the same minimiser,
    iteration counts within 1.5x."""
    np = pytest.importorskip("numpy")
    optimize = pytest.importorskip("scipy.optimize")
    ref = optimize.minimize(optimize.rosen, np.array([-1.2, 1.0]), jac=optimize.rosen_der,
                            hess=optimize.rosen_hess, method="trust-exact", options={"gtol": 1e-10})
    tx = gx.scale_by_trust_region("levenberg_marquardt", hessian=_exact_hessian(lambda x: _rosen({"x": x})))
    p, steps, _ = _run(tx, [-1.2, 1.0], 200)
    np.testing.assert_allclose(p["x"].numpy(), ref.x, atol=1e-8)
    assert ref.nit / 1.5 <= steps <= 1.5 * ref.nit, (steps, ref.nit)


def test_first_order_radius_follows_algorithm_4_1():
    """The linear model's Cauchy step p = -Delta g / |g| and Alg. 4.1 (eta 0.15, 1/4, 3/4,
    factors 1/4 and 2, max 1000) written here: the same iterates and radii for 60 updates."""
    tx = gx.scale_by_trust_region("cauchy", init_radius=0.5)
    mine = []
    _run(tx, [-1.2, 1.0], 60, mine)
    x, radius = torch.tensor([-1.2, 1.0], dtype=torch.float64), 0.5
    shrunk = expanded = refused = 0
    for k in range(60):
        f, g = _value_and_grad({"x": x})
        p = -radius * g / g.norm()
        rho = (f - _rosen({"x": x + p})) / (radius * g.norm())
        if rho < 0.25:
            radius, shrunk = 0.25 * radius, shrunk + 1
        elif rho > 0.75:  # a linear model's step is always on the boundary
            radius, expanded = min(2 * radius, 1000.0), expanded + 1
        if rho > 0.15:
            x = x + p
        else:
            refused += 1
        torch.testing.assert_close(mine[k][0], x, rtol=1e-12, atol=1e-14, msg=f"iterate {k}")
        assert float(mine[k][1]) == pytest.approx(radius, rel=1e-12), k
    assert shrunk and expanded and refused  # every branch of the rule was taken


def test_subproblem_steps_satisfy_their_conditions():
    """Given B and g: the LM step solves (B + mu I) p = -g with mu >= 0, B + mu I positive
    semi-definite and mu (Delta - |p|) = 0 (N&W Thm 4.1), on a definite and an indefinite
    B; the dogleg step is Newton's inside the radius, else on the boundary between the
    Cauchy and Newton points, and the Cauchy point for an indefinite B; the quadratic Cauchy
    step is N&W Alg. 4.2's."""
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=gen, dtype=torch.float64))
    g = torch.randn(5, generator=gen, dtype=torch.float64)
    zero = {"x": torch.zeros(5, dtype=torch.float64)}

    def step(subproblem, b, radius):
        model = gx.HessianApproximation(init=lambda x: (), update=lambda st, s, y: st, matrix=lambda st: b)
        tx = gx.scale_by_trust_region(subproblem, hessian=model, init_radius=radius, max_radius=radius)

        def value_fn(p):  # the model itself: rho = 1, every step accepted
            return g @ p["x"] + 0.5 * p["x"] @ b @ p["x"]

        u, _ = tx.update({"x": g}, tx.init(zero), zero, value=torch.zeros((), dtype=torch.float64),
                         value_fn=value_fn)
        return u["x"]

    for eigenvalues in ([1.0, 2.0, 3.0, 5.0, 8.0], [-2.0, -0.5, 1.0, 3.0, 4.0]):
        b = q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T
        for radius in (0.05, 0.3, 10.0):
            p = step("levenberg_marquardt", b, radius)
            assert p.norm() <= radius * (1 + 1e-9)
            mu = float(-(g + b @ p) @ p / (p @ p))
            torch.testing.assert_close((b + mu * torch.eye(5, dtype=torch.float64)) @ p, -g, rtol=1e-8, atol=1e-9)
            assert mu >= -1e-9 and mu >= -min(eigenvalues) - 1e-9
            assert abs(mu * (radius - float(p.norm()))) < 1e-8
    b = q @ torch.diag(torch.tensor([1.0, 2.0, 3.0, 5.0, 8.0], dtype=torch.float64)) @ q.T
    newton = -torch.linalg.solve(b, g)
    cauchy = -(g @ g) / (g @ b @ g) * g
    for radius in (0.05, float((newton.norm() + cauchy.norm()) / 2), 10.0):
        p = step("dogleg", b, radius)
        if radius > newton.norm():
            torch.testing.assert_close(p, newton)
        elif radius < cauchy.norm():
            torch.testing.assert_close(p, -radius * g / g.norm())
        else:
            assert p.norm() == pytest.approx(radius, rel=1e-10)
            t = (p - cauchy) @ (newton - cauchy) / (newton - cauchy).norm() ** 2
            torch.testing.assert_close(p, cauchy + t * (newton - cauchy))
        tau = min(float(g.norm() ** 3 / (radius * (g @ b @ g))), 1.0)
        torch.testing.assert_close(step("cauchy", b, radius), -tau * radius * g / g.norm())
    # an indefinite B: the dogleg falls back to the Cauchy point (along -g, to the boundary
    # where g'Bg <= 0)
    for eigenvalues in ([-2.0, -0.5, 1.0, 3.0, 4.0], [-9.0, -8.0, -7.0, -6.0, 0.5]):
        b = q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T
        gbg = float(g @ b @ g)
        tau = 1.0 if gbg <= 0 else min(float(g.norm() ** 3) / (0.3 * gbg), 1.0)
        torch.testing.assert_close(step("dogleg", b, 0.3), -tau * 0.3 * g / g.norm())


def test_bfgs_hessian_update_is_the_formula():
    gen = torch.Generator().manual_seed(1)
    model = gx.bfgs_hessian(init_scale=2.0)
    state = model.init(torch.zeros(4, dtype=torch.float64))
    b = 2.0 * torch.eye(4, dtype=torch.float64)
    for _ in range(3):
        s = torch.randn(4, generator=gen, dtype=torch.float64)
        y = s + 0.3 * torch.randn(4, generator=gen, dtype=torch.float64)
        if s @ y <= 0:
            y = -y + 2 * s
        state = model.update(state, s, y)
        b = b - torch.outer(b @ s, b @ s) / (s @ b @ s) + torch.outer(y, y) / (y @ s)
        torch.testing.assert_close(model.matrix(state), b, rtol=1e-12, atol=1e-12)
    skipped = model.update(state, torch.ones(4, dtype=torch.float64), -torch.ones(4, dtype=torch.float64))
    assert torch.equal(skipped.matrix, state.matrix)  # y.s < 0: no update
    scaled = gx.bfgs_hessian()  # B_0 = (y.y / y.s) I before the first update
    s, y = torch.tensor([1.0, 0.0], dtype=torch.float64), torch.tensor([2.0, 1.0], dtype=torch.float64)
    b0 = 2.5 * torch.eye(2, dtype=torch.float64)
    want = b0 - torch.outer(b0 @ s, b0 @ s) / (s @ b0 @ s) + torch.outer(y, y) / (y @ s)
    torch.testing.assert_close(scaled.matrix(scaled.update(scaled.init(torch.zeros(2, dtype=torch.float64)), s, y)),
                               want)


def test_errors_name_the_argument():
    for call, name in ((lambda: gx.scale_by_trust_region("newton"), "subproblem"),
                       (lambda: gx.scale_by_trust_region(init_radius=0.0), "init_radius"),
                       (lambda: gx.scale_by_trust_region(max_radius=0.5), "max_radius"),
                       (lambda: gx.scale_by_trust_region(eta=1.0), "eta"),
                       (lambda: gx.scale_by_trust_region(shrink_below=0.8), "expand_above"),
                       (lambda: gx.scale_by_trust_region(hessian="bfgs"), "hessian"),
                       (lambda: gx.bfgs_hessian(init_scale=-1.0), "init_scale")):
        with pytest.raises(ValueError, match=name):
            call()
    tx = gx.scale_by_trust_region()
    p = {"x": torch.zeros(2)}
    with pytest.raises(ValueError, match="value_fn"):
        tx.update({"x": torch.ones(2)}, tx.init(p), p)
    with pytest.raises(ValueError, match="complex"):
        tx.init({"x": torch.zeros(2, dtype=torch.complex64)})


# --- through gx.Optimizer ---------------------------------------------------------------------


def _make_tx():
    return gx.scale_by_trust_region("dogleg", init_radius=0.5)


def test_optimizer_follows_the_functional_trajectory_and_resumes_bit_identically():
    model = tanh_net()
    x, y = regression_batch()
    names = [n for n, _ in model.named_parameters()]
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    tx = _make_tx()
    state = tx.init(params)

    def loss_of(ps):
        return torch.func.functional_call(model, ps, (x,)).sub(y).square().mean()

    def closure_for(m, o):
        def closure():
            o.zero_grad()
            loss = torch.nn.functional.mse_loss(m(x), y)
            loss.backward()
            return loss
        return closure

    # check_descent off: the adapter reads .grad after the step, which the trial closure
    # (called with backward) has overwritten with the gradient at the trial point
    opt = gx.Optimizer(model.parameters(), _make_tx(), check_descent=False)
    for _ in range(8):
        ps = {n: v.clone().requires_grad_(True) for n, v in params.items()}
        loss = loss_of(ps)
        grads = dict(zip(names, torch.autograd.grad(loss, list(ps.values()))))
        with torch.no_grad():
            updates, state = tx.update(grads, state, params, value=loss.detach(), value_fn=loss_of)
        params = gx.apply_updates(params, updates)
        opt.step(closure_for(model, opt))
        for n, p in model.named_parameters():
            torch.testing.assert_close(p.detach(), params[n], rtol=1e-12, atol=1e-14)

    twin = tanh_net()
    twin.load_state_dict(model.state_dict())
    opt2 = gx.Optimizer(twin.parameters(), _make_tx(), check_descent=False)
    opt2.load_state_dict(round_trip(opt.state_dict()))
    for _ in range(4):
        for m, o in ((model, opt), (twin, opt2)):
            o.step(closure_for(m, o))
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)


def test_bfgs_model_prints_and_pickles_as_its_call():
    import pickle

    tx = gx.scale_by_trust_region("levenberg_marquardt", hessian=gx.bfgs_hessian(2.0))
    assert repr(tx) == "scale_by_trust_region(subproblem='levenberg_marquardt', hessian=bfgs_hessian(2.0))"
    w = torch.nn.Parameter(torch.tensor([3.0, -4.0], dtype=torch.float64))
    opt = gx.Optimizer([w], tx, check_descent=False)

    def closure_for(w, opt):
        def closure():
            opt.zero_grad()
            loss = (w ** 2).sum() + w.prod() + w[0] ** 4
            loss.backward()
            return loss
        return closure

    opt.step(closure_for(w, opt))
    twin = pickle.loads(pickle.dumps(opt))
    w2 = twin.param_groups[0]["params"][0]
    for _ in range(3):
        opt.step(closure_for(w, opt))
        twin.step(closure_for(w2, twin))
    assert torch.equal(w, w2)


def test_without_value_the_loss_at_params_comes_from_value_fn():
    calls = []

    def counted(p):
        calls.append(1)
        return _rosen(p)

    tx = gx.scale_by_trust_region("dogleg")
    p = {"x": torch.tensor([-1.2, 1.0], dtype=torch.float64)}
    with_value, without = tx.init(p), tx.init(p)
    for _ in range(5):
        f, g = _value_and_grad(p)
        u, with_value = tx.update({"x": g}, with_value, p, value=f, value_fn=_rosen)
        v, without = tx.update({"x": g}, without, p, value_fn=counted)
        assert torch.equal(u["x"], v["x"]) and torch.equal(with_value.radius, without.radius)
        p = gx.apply_updates(p, u)
    assert len(calls) == 10  # the point and the trial, each update
