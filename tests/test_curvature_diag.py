"""Diagonal curvature (Hutchinson, Sophia, SophiaH, AdaHessian), matrix momentum and
sharpness-aware minimisation, against optax (float64), pytorch_optimizer, torchzero and the
papers' rules written out here."""

from __future__ import annotations

import io
import math

import pytest
import torch

import gradtx as gx

D = torch.float64


def _params(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {"w": (0.5 * torch.randn(2, 3, generator=gen)).to(D), "b": (0.5 * torch.randn(3, generator=gen)).to(D)}


def separable(p):
    """sum of x^4/4 + x^2/2 + sin(x): a diagonal Hessian 3x^2 + 1 - sin x (> 0)."""
    return sum((x ** 4 / 4 + x ** 2 / 2 + torch.sin(x)).sum() for x in p.values())


def sep_diag(p):
    return {k: 3 * x ** 2 + 1 - torch.sin(x) for k, x in p.items()}


def sep_grad(p):
    return {k: x ** 3 + x + torch.cos(x) for k, x in p.items()}



def coupled(p):
    """a non-separable loss: a quadratic with a dense matrix plus a quartic."""
    x = torch.cat([p["w"].reshape(-1), p["b"]])
    gen = torch.Generator().manual_seed(7)
    m = torch.randn(9, 9, generator=gen, dtype=D)
    a = m @ m.T / 9 + torch.eye(9, dtype=D)
    return 0.5 * x @ a @ x + 0.1 * (x ** 4).sum()


def _oracle_hvp(loss):
    # independent of gx.make_hvp_fn: forward-over-reverse written here
    def hvp_fn(params, v):
        return torch.func.jvp(torch.func.grad(loss), (params,), (v,))[1]
    return hvp_fn


def _vg(loss):
    def value_and_grad_fn(params):
        g, v = torch.func.grad_and_value(loss)(params)
        return v, g
    return value_and_grad_fn


def _double_backward_hvp(loss):
    # reverse-over-reverse on detached copies (functional_call's jvp trips on ZeroTensors)
    def hvp_fn(params, v):
        xs = {k: x.detach().requires_grad_() for k, x in params.items()}
        with torch.enable_grad():
            gs = torch.autograd.grad(loss(xs), list(xs.values()), create_graph=True)
            hv = torch.autograd.grad(gs, list(xs.values()), grad_outputs=[v[k] for k in xs])
        return {k: h.detach() for k, h in zip(xs, hv)}
    return hvp_fn


def _run(tx, loss, params, steps, hvp=_oracle_hvp, **extra_fns):
    """The functional trajectory of tx on loss (hvp_fn, value_and_grad_fn given)."""
    state = tx.init(params)
    hvp_fn, vg = hvp(loss), _vg(loss)
    out = []
    for _ in range(steps):
        g = torch.func.grad(loss)(params)
        u, state = tx.update(g, state, params, grad=g, hvp_fn=hvp_fn, value_and_grad_fn=vg, **extra_fns)
        params = gx.apply_updates(params, u)
        out.append(params)
    return out


# --- Hutchinson ----------------------------------------------------------------------------------


def _dense_hessian(p):
    flat = torch.cat([p["w"].reshape(-1), p["b"]])

    def f(x):
        return coupled({"w": x[:6].reshape(2, 3), "b": x[6:]})
    return torch.autograd.functional.hessian(f, flat)


@pytest.mark.parametrize("distribution", ["rademacher", "gaussian"])
def test_hutchinson_converges_to_the_true_diagonal(distribution):
    """The mean of n seeded estimates is within 5 standard errors of diag H, the variance of
    one estimate being sum_{j != i} H_ij^2 (+ 2 H_ii^2 for Gaussian probes)."""
    p = _params(1)
    h = _dense_hessian(p)
    diag = torch.diagonal(h)
    off = (h ** 2).sum(1) - diag ** 2
    var = off + (2 * diag ** 2 if distribution == "gaussian" else 0)
    n = 400
    est = gx.hutchinson_estimator_diag_hessian(seed=5, n_samples=n, distribution=distribution)
    rng = torch.random.get_rng_state()
    d, _ = est.update(p, est.init(p), p, hvp_fn=_oracle_hvp(coupled))
    assert torch.equal(rng, torch.random.get_rng_state()), "the global generator was touched"
    got = torch.cat([d["w"].reshape(-1), d["b"]])
    assert (got - diag).abs().max() > 0  # a random estimate, not the exact diagonal
    assert ((got - diag).abs() <= 5 * torch.sqrt(var / n)).all(), (got, diag)


def test_hutchinson_probes_are_seeded_and_exact_on_a_diagonal_hessian():
    p = _params(2)
    est = gx.hutchinson_estimator_diag_hessian(seed=3)
    s = est.init(p)
    d1, s1 = est.update(p, s, p, hvp_fn=_oracle_hvp(coupled))
    d1b, _ = est.update(p, s, p, hvp_fn=_oracle_hvp(coupled))
    d2, _ = est.update(p, s1, p, hvp_fn=_oracle_hvp(coupled))
    assert all(torch.equal(d1[k], d1b[k]) for k in p)  # same state: same probes
    assert not torch.equal(d1["w"], d2["w"])  # the next step: new probes
    exact, _ = est.update(p, s, p, hvp_fn=_oracle_hvp(separable))
    for k in p:  # Rademacher z*Hz = diag H when H is diagonal
        torch.testing.assert_close(exact[k], sep_diag(p)[k], rtol=1e-12, atol=1e-12)


# --- optax (float64) -----------------------------------------------------------------------------


def _jax():
    jax = pytest.importorskip("jax")
    pytest.importorskip("optax")
    jax.config.update("jax_enable_x64", True)
    return jax


def _to_jax(p):
    import jax.numpy as jnp
    return {k: jnp.asarray(v.numpy()) for k, v in p.items()}


def _jax_separable(p):
    import jax.numpy as jnp
    return sum((x ** 4 / 4 + x ** 2 / 2 + jnp.sin(x)).sum() for x in p.values())


def _close_to_jax(ours, theirs, tol=1e-10):
    for k in ours:
        torch.testing.assert_close(ours[k], torch.from_numpy(__import__("numpy").asarray(theirs[k])), rtol=tol,
                                   atol=tol)


def test_hutchinson_and_sophia_match_optax_contrib():
    """On a separable loss Rademacher estimates are exact, so optax's and gradtx's draws agree:
    the estimator and 25 steps of contrib.sophia (update_interval 3, weight decay) match."""
    jax = _jax()
    import optax

    p = _params(3)
    est_ref = optax.contrib.hutchinson_estimator_diag_hessian()
    jp = _to_jax(p)
    d_ref, _ = est_ref.update(None, est_ref.init(jp), jp, obj_fn=_jax_separable)
    est = gx.hutchinson_estimator_diag_hessian()
    d, _ = est.update(p, est.init(p), p, hvp_fn=_oracle_hvp(separable))
    _close_to_jax(d, d_ref, 1e-12)

    kw = dict(b1=0.9, b2=0.95, eps=1e-8, weight_decay=1e-2, gamma=0.05, clip_threshold=1.0, update_interval=3)
    ref = optax.contrib.sophia(0.05, **kw)
    tx = gx.sophia(0.05, **kw)
    ours = _run(tx, separable, p, 25)
    state = ref.init(jp)
    step = jax.jit(lambda g, s, q: ref.update(g, s, q, obj_fn=_jax_separable))  # one compile, not one per step
    for t in range(25):
        g = jax.grad(_jax_separable)(jp)
        u, state = step(g, state, jp)
        jp = optax.apply_updates(jp, u)
        _close_to_jax(ours[t], jp)


def _jax_coupled_grad():
    import jax
    import jax.numpy as jnp
    gen = torch.Generator().manual_seed(7)
    m = torch.randn(9, 9, generator=gen, dtype=D)
    a = jnp.asarray((m @ m.T / 9 + torch.eye(9, dtype=D)).numpy())

    def f(p):
        x = jnp.concatenate([p["w"].reshape(-1), p["b"]])
        return 0.5 * x @ a @ x + 0.1 * (x ** 4).sum()
    return jax.grad(f)


@pytest.mark.parametrize("sync_period", [2, 3])
@pytest.mark.parametrize("inner", ["sgd", "adam"])
def test_sam_transparent_and_opaque_match_optax_contrib_sam(sync_period, inner):
    _jax()
    import optax

    grad_j = _jax_coupled_grad()
    opt_ref = optax.sgd(0.05, momentum=0.9) if inner == "sgd" else optax.adam(0.05)
    adv_ref = optax.chain(optax.contrib.normalize(), optax.sgd(0.1))
    opt = gx.sgd(0.05, momentum=0.9) if inner == "sgd" else gx.adam(0.05)
    for opaque in (False, True):
        ref = optax.contrib.sam(opt_ref, adv_ref, sync_period=sync_period, opaque_mode=opaque)
        tx = gx.sam(opt, sync_period=sync_period, opaque_mode=opaque, rho=0.1)
        p, jp = _params(4), _to_jax(_params(4))
        state, ref_state = tx.init(p), ref.init(jp)
        for _ in range(12):
            g = torch.func.grad(coupled)(p)
            u, state = tx.update(g, state, p, value_and_grad_fn=_vg(coupled))
            p = gx.apply_updates(p, u)
            extra = {"grad_fn": lambda q, i: grad_j(q)} if opaque else {}
            ju, ref_state = ref.update(grad_j(jp), ref_state, jp, **extra)
            jp = optax.apply_updates(jp, ju)
            _close_to_jax(p, jp)


# --- the papers' first steps, pytorch_optimizer, torchzero -----------------------------------------


def test_sophia_h_first_step_is_the_papers_rule_and_matches_pytorch_optimizer():
    """Liu et al. Alg. 3: m = (1-b1) g, h = (1-b2) z*Hz, x -= lr clip(m / max(gamma h, eps), 1); then
    20 steps of pytorch_optimizer.SophiaH(lr/gamma, p=gamma, eps/gamma) fed the exact diagonal."""
    po = pytest.importorskip("pytorch_optimizer")
    lr, b1, b2, gamma, eps, k = 0.1, 0.9, 0.95, 0.5, 1e-12, 3
    tx = gx.sophia_h(lr, b1, b2, gamma, eps, 1.0, k, distribution="rademacher")
    p0 = _params(5)
    ours = _run(tx, separable, p0, 20)
    g, h = sep_grad(p0), sep_diag(p0)
    for name in p0:
        m, hh = (1 - b1) * g[name], (1 - b2) * h[name]
        want = p0[name] - lr * torch.clamp(m / torch.clamp(gamma * hh, min=eps), -1, 1)
        torch.testing.assert_close(ours[0][name], want, rtol=1e-13, atol=1e-13)
    ps = [p0["w"].clone().requires_grad_(), p0["b"].clone().requires_grad_()]
    opt = po.SophiaH(ps, lr=lr / gamma, betas=(b1, b2), p=gamma, eps=eps / gamma, update_period=k)
    for t in range(20):
        q = {"w": ps[0].detach(), "b": ps[1].detach()}
        g = sep_grad(q)
        ps[0].grad, ps[1].grad = g["w"].clone(), g["b"].clone()
        hess = [sep_diag(q)["w"], sep_diag(q)["b"]] if t % k == 0 else None
        opt.step(hessian=hess)
        torch.testing.assert_close(ps[0].detach(), ours[t]["w"], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ps[1].detach(), ours[t]["b"], rtol=1e-12, atol=1e-12)


def test_adahessian_first_step_is_the_papers_rule_and_matches_pytorch_optimizer():
    """Yao et al. Alg. 1 first step: m_hat = g, v_hat = D^2, x -= lr g / (|D| + eps); then 20
    steps of pytorch_optimizer.AdaHessian fed the exact diagonal (no conv kernel here)."""
    po = pytest.importorskip("pytorch_optimizer")
    lr, eps = 0.1, 1e-4
    tx = gx.adahessian(lr, eps=eps)
    p0 = _params(6)
    ours = _run(tx, separable, p0, 20)
    g, h = sep_grad(p0), sep_diag(p0)
    for name in p0:
        torch.testing.assert_close(ours[0][name], p0[name] - lr * g[name] / (h[name].abs() + eps), rtol=1e-13,
                                   atol=1e-13)
    ps = [p0["w"].clone().requires_grad_(), p0["b"].clone().requires_grad_()]
    opt = po.AdaHessian(ps, lr=lr, eps=eps)
    for t in range(20):
        q = {"w": ps[0].detach(), "b": ps[1].detach()}
        g = sep_grad(q)
        ps[0].grad, ps[1].grad = g["w"].clone(), g["b"].clone()
        opt.step(hessian=[sep_diag(q)["w"], sep_diag(q)["b"]])
        torch.testing.assert_close(ps[0].detach(), ours[t]["w"], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ps[1].detach(), ours[t]["b"], rtol=1e-12, atol=1e-12)


def _tz_run(modules, loss, p0, steps):
    tz = pytest.importorskip("torchzero")
    ps = {k: v.clone().requires_grad_() for k, v in p0.items()}
    opt = tz.Optimizer(list(ps.values()), *modules)

    def closure(backward=True):
        value = loss(ps)
        if backward:
            opt.zero_grad()
            value.backward()
        return value

    out = []
    for _ in range(steps):
        opt.step(closure)
        out.append({k: v.detach().clone() for k, v in ps.items()})
    return out


def _same(ours, theirs, tol=1e-10):
    for a, b in zip(ours, theirs):
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=tol, atol=tol)


def test_adahessian_spatial_averaging_matches_torchzero_on_a_conv_kernel():
    tz = pytest.importorskip("torchzero")
    gen = torch.Generator().manual_seed(8)
    p0 = {"k": 0.5 * torch.randn(2, 3, 2, 2, generator=gen, dtype=D), "b": 0.5 * torch.randn(3, generator=gen,
                                                                                              dtype=D)}
    theirs = _tz_run([tz.m.AdaHessian(eps=1e-8), tz.m.LR(0.1)], separable, p0, 10)
    _same(_run(gx.adahessian(0.1, eps=1e-8), separable, p0, 10), theirs)


def test_sophia_h_matches_torchzero():
    tz = pytest.importorskip("torchzero")
    theirs = _tz_run([tz.m.SophiaH(beta1=0.9, beta2=0.95, update_freq=2, precond_scale=0.5, distribution="rademacher"),
                      tz.m.LR(0.1)], separable, _params(9), 10)
    tx = gx.sophia_h(0.1, 0.9, 0.95, gamma=0.5, update_interval=2, distribution="rademacher")
    _same(_run(tx, separable, _params(9), 10), theirs)


def test_matrix_momentum_second_step_is_the_rule():
    """x2 = x1 + (I - mu H(x1)) (x1 - x0) - lr g(x1), H the dense Hessian."""
    lr, mu = 0.05, 0.1
    p0 = _params(11)
    x = _run(gx.matrix_momentum(lr, mu=mu), coupled, p0, 2)
    flat = [torch.cat([q["w"].reshape(-1), q["b"]]) for q in (p0, x[0], x[1])]
    g1 = torch.func.grad(coupled)(x[0])
    s = flat[1] - flat[0]
    want = flat[1] + s - mu * _dense_hessian(x[0]) @ s - lr * torch.cat([g1["w"].reshape(-1), g1["b"]])
    torch.testing.assert_close(flat[2], want, rtol=1e-12, atol=1e-12)
    # the first step: -lr g0 scaled to l1 length <= 1 (torchzero's small first step)
    g0 = torch.cat([q.reshape(-1) for q in torch.func.grad(coupled)(p0).values()])
    torch.testing.assert_close(flat[1] - flat[0], -lr * g0 * min(1.0, 1 / float((lr * g0).abs().sum())))


def test_adaptive_matrix_momentum_second_step_is_the_rule():
    """mu_t = mu ||s|| / ||g1 - g0||, the secant estimate of 1 / lambda (torchzero's adaptive form)."""
    lr, mu = 0.05, 0.1
    p0 = _params(15)
    x = _run(gx.matrix_momentum(lr, mu=mu, adaptive=True), coupled, p0, 2)
    flat = [torch.cat([q["w"].reshape(-1), q["b"]]) for q in (p0, x[0], x[1])]
    g0, g1 = (torch.cat([q.reshape(-1) for q in torch.func.grad(coupled)(z).values()]) for z in (p0, x[0]))
    s = flat[1] - flat[0]
    mu_t = mu * s.norm() / (g1 - g0).norm()
    want = flat[1] + s - mu_t * _dense_hessian(x[0]) @ s - lr * g1
    torch.testing.assert_close(flat[2], want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("asam", [False, True])
def test_sam_and_asam_match_torchzero(asam):
    tz = pytest.importorskip("torchzero")
    module = tz.m.ASAM(rho=0.5) if asam else tz.m.SAM(rho=0.05)
    # one tensor: torchzero's denominator is a norm per tensor (TensorList.sum), the paper's global
    p0 = {"x": torch.cat([v.reshape(-1) for v in _params(12).values()])}

    def loss(p):
        return coupled({"w": p["x"][:6].reshape(2, 3), "b": p["x"][6:]})

    theirs = _tz_run([module, tz.m.LR(0.05)], loss, p0, 10)
    first = gx.asam_gradient(0.5, eta=0.0, eps=1e-10) if asam else gx.sam_gradient(0.05, eps=1e-10)
    _same(_run(gx.chain(first, gx.scale_by_lr(0.05)), loss, p0, 10), theirs)


@pytest.mark.parametrize("p_norm", [2.0, 3.0, math.inf])
def test_sam_gradient_first_step_is_the_rule(p_norm):
    """The gradient at x + e, e the maximiser of g.e on ||T^-1 e||_p <= rho (T = |x| + eta for ASAM):
    ||T^-1 e||_p = rho and g.e = rho ||T g||_q."""
    p0 = _params(13)
    g = torch.func.grad(coupled)(p0)
    for adaptive in (False, True):
        seen = []

        def vg(q, seen=seen):
            seen.append(q)
            return _vg(coupled)(q)

        tx = gx.sam_gradient(0.1, p_norm, adaptive=adaptive, eta=0.01)
        u, _ = tx.update(g, tx.init(p0), p0, value_and_grad_fn=vg)
        (at,) = seen
        t = {k: (p0[k].abs() + 0.01) if adaptive else torch.ones_like(p0[k]) for k in p0}
        e = torch.cat([(at[k] - p0[k]).reshape(-1) for k in p0])
        tt = torch.cat([t[k].reshape(-1) for k in p0])
        gg = torch.cat([g[k].reshape(-1) for k in p0])
        q = 1.0 if math.isinf(p_norm) else p_norm / (p_norm - 1)
        torch.testing.assert_close(torch.linalg.vector_norm(e / tt, p_norm), torch.tensor(0.1, dtype=D))
        torch.testing.assert_close(gg @ e, 0.1 * torch.linalg.vector_norm(tt * gg, q))
        want = torch.func.grad(coupled)(at)
        for k in p0:
            torch.testing.assert_close(u[k], want[k], rtol=0, atol=0)


def test_msam_matches_torchzero_msam_momentum():
    tz = pytest.importorskip("torchzero")
    theirs = _tz_run([tz.m.MSAMMomentum(0.05, momentum=0.9, rho=0.3)], coupled, _params(14), 15)
    tx = gx.msam(gx.chain(gx.trace(0.9), gx.scale_by_lr(0.05)), rho=0.3, momentum=0.9)
    _same(_run(tx, coupled, _params(14), 15), theirs)


# --- under gx.Optimizer --------------------------------------------------------------------------

CLOSURE_ENTRIES = {
    "sophia": lambda: gx.sophia(0.05, update_interval=2),
    "sophia_h": lambda: gx.sophia_h(0.05, update_interval=2),
    "adahessian": lambda: gx.adahessian(0.1),
    "matrix_momentum": lambda: gx.matrix_momentum(0.05, adaptive=True),
    # its factor is kept between adaptations: a running value, which the adapter once took
    # for a hyperparameter (param_groups["mu_scale"]) and reset to 1 before every step
    "matrix_momentum_interval": lambda: gx.matrix_momentum(0.05, adaptive=True, adapt_interval=2),
    "sam_gradient": lambda: gx.chain(gx.sam_gradient(0.05), gx.scale_by_adam(), gx.scale_by_lr(0.05)),
    "sam_opaque": lambda: gx.sam(gx.adam(0.05), opaque_mode=True),
    "sam": lambda: gx.sam(gx.sgd(0.05, momentum=0.9), sync_period=3),
    "msam": lambda: gx.msam(gx.adam(0.05), rho=0.1),
}


def _module_run(make, steps, opt=None, model=None):
    if model is None:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).double()
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 3, generator=gen, dtype=D), torch.randn(16, 1, generator=gen, dtype=D)
    opt = opt or gx.Optimizer(model.parameters(), make())

    def closure(backward=True):
        loss = torch.nn.functional.mse_loss(model(x), y)
        if backward:
            opt.zero_grad()
            loss.backward()
        return loss

    for _ in range(steps):
        opt.step(closure)
    return model, opt, x, y


@pytest.mark.parametrize("name", list(CLOSURE_ENTRIES))
def test_optimizer_with_a_closure_gives_the_functional_trajectory(name):
    make = CLOSURE_ENTRIES[name]
    model, _, x, y = _module_run(make, 0)
    start = {k: v.detach().clone() for k, v in model.named_parameters()}
    model, _, _, _ = _module_run(make, 6, model=model)
    loss_fn = gx.module_loss_fn(model, lambda out: torch.nn.functional.mse_loss(out, y), x)
    ours = _run(make(), loss_fn, start, 6, hvp=_double_backward_hvp)[-1]
    for k, v in model.named_parameters():
        torch.testing.assert_close(v.detach(), ours[k], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", list(CLOSURE_ENTRIES))
def test_state_dict_round_trip_continues_bit_identically(name):
    make = CLOSURE_ENTRIES[name]
    model, opt, _, _ = _module_run(make, 3)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    _module_run(make, 3, opt=opt, model=model)
    torch.manual_seed(0)
    twin = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).double()
    twin.load_state_dict(saved["model"])
    opt2 = gx.Optimizer(twin.parameters(), make())
    opt2.load_state_dict(saved["opt"])
    _module_run(make, 3, opt=opt2, model=twin)
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a, b)


def test_missing_curvature_is_a_clear_error():
    p = _params()
    tx = gx.sophia_h(0.1)
    with pytest.raises(ValueError, match="hvp_fn"):
        tx.update(p, tx.init(p), p)
    tx = gx.sam_gradient()
    with pytest.raises(ValueError, match="value_and_grad_fn"):
        tx.update(p, tx.init(p), p)
    with pytest.raises(ValueError, match="distribution"):
        gx.scale_by_adahessian(distribution="uniform")


@pytest.mark.parametrize("make", [lambda m: gx.adahessian(0.1, hvp_method=m, h=1e-4),
                                  lambda m: gx.sophia_h(0.1, update_interval=2, hvp_method=m, h=1e-4),
                                  lambda m: gx.matrix_momentum(0.05, hvp_method=m, h=1e-4)],
                         ids=["adahessian", "sophia_h", "matrix_momentum"])
def test_finite_difference_curvature_follows_the_exact_one(make):
    """hvp_method='fd_central' (from value_and_grad_fn only) stays within O(h^2) of the exact products."""
    exact = _run(make("autograd"), coupled, _params(16), 5)
    p, tx = _params(16), make("fd_central")
    state = tx.init(p)
    for t in range(5):
        g = torch.func.grad(coupled)(p)
        u, state = tx.update(g, state, p, grad=g, value_and_grad_fn=_vg(coupled))
        p = gx.apply_updates(p, u)
        for k in p:
            torch.testing.assert_close(p[k], exact[t][k], rtol=1e-6, atol=1e-7)
