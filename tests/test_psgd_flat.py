"""PSGD's dense and low-rank forms (gradtx.precondition.psgd_flat) in float64 against Xi-Lin Li's
psgd_torch (the September 2025 file torchzero vendors as torchzero.modules.adaptive.psgd.psgd):
``LRAWhiten`` and ``LRANewton`` over 25 steps, ``DenseNewton`` in each of its six coordinates,
and the dense whitening form against Li's own update functions driven with the whitening probe
(Li has no dense whitening class). The reference draws its random numbers from the global RNG;
here they are replaced, call by call, with gradtx's documented streams (generators seeded by
``(seed, t, stream)``). Also: the aliases (psgd_kron against pytorch_optimizer.Kron with weight
decay), gx.Optimizer trajectories and bit-exact checkpoint resume."""

from __future__ import annotations

import io

import pytest
import torch

import gradtx as gx
from gradtx.transforms.perturb import _generator, _mix

F64 = dict(rtol=1e-10, atol=1e-12)
SHAPES = {"b": (4,), "s": (), "w": (5, 4)}  # sorted keys: the flattening order of both sides
N = 25
PROBE, DRAW, SIDE, DAMP, SUBSPACE = 0, -1, -2, -3, -4  # gradtx's streams (psgd_flat's module comment)
CPU = torch.device("cpu")
RAND, RANDN = torch.rand, torch.randn  # the real ones, while the reference's are replaced


def _problem(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    p0 = {k: torch.randn(s, generator=gen, dtype=torch.float64) for k, s in SHAPES.items()}
    a = {k: torch.rand(s, generator=gen, dtype=torch.float64) + 0.5 for k, s in SHAPES.items()}

    def loss(params):  # a p^2 / 2 - cos(3 p) / 3: gradients a p + sin(3 p), an indefinite Hessian
        return sum((a[k] * params[k] ** 2 / 2 - torch.cos(3 * params[k]) / 3).sum() for k in params)

    def grad(params):
        return {k: a[k] * params[k] + torch.sin(3 * params[k]) for k in params}

    return p0, loss, grad


def _randn(seed, t, stream, shape):
    return RANDN(shape, dtype=torch.float64, generator=_generator(CPU, _mix(seed, t, stream)))


def _uniform(seed, t, stream):
    return RAND((), dtype=torch.float64, generator=_generator(CPU, _mix(seed, t, stream)))


def _flat(tree):
    return torch.cat([tree[k].reshape(-1) for k in SHAPES]).reshape(-1, 1)


def _per_param(flat):
    out, start = [], 0
    for s in SHAPES.values():
        n = int(torch.Size(s).numel())
        out.append(flat[start:start + n].reshape(s))
        start += n
    return out


class _Feed:
    """Replaces torch.rand / randn_like / randn with queued values for one reference step."""

    def __init__(self, monkeypatch):
        self.rand, self.like, self.randn = [], [], []
        monkeypatch.setattr(torch, "rand", lambda *a, **k: self.rand.pop(0))
        monkeypatch.setattr(torch, "randn_like", lambda x, **k: self.like.pop(0).clone().reshape(x.shape))
        monkeypatch.setattr(torch, "randn", lambda *a, **k: self.randn.pop(0).clone())

    def step(self, seed, t, newton: bool, lra: bool):
        self.rand[:] = [_uniform(seed, t, DRAW)] + ([_uniform(seed, t, SIDE)] if lra else [])
        probe = _randn(seed, t, PROBE, (N, 1))
        self.like[:] = (_per_param(probe) + [_randn(seed, t, DAMP, (N, 1))]) if newton else [probe]
        self.randn[:] = [_randn(seed, t, SUBSPACE, (32, N))]


def _li_run(monkeypatch, opt_factory, loss, p0, steps, seed, newton, lra, setup=None):
    params = [p0[k].clone().requires_grad_(True) for k in SHAPES]
    opt = opt_factory(params)
    if setup is not None:
        setup(opt)
    feed = _Feed(monkeypatch)
    out = []
    for t in range(steps):
        feed.step(seed, t, newton, lra)
        opt.step(lambda: loss(dict(zip(SHAPES, params))))
        out.append({k: p.detach().clone() for k, p in zip(SHAPES, params)})
    monkeypatch.undo()
    return out


def _functional_run(tx, p0, grad, steps, **extra):
    params = {k: v.clone() for k, v in p0.items()}
    state = tx.init(params)
    out = []
    for _ in range(steps):
        updates, state = tx.update(grad(params), state, params, **extra)
        params = gx.apply_updates(params, updates)
        out.append(params)
    return out, state


def _assert_trajectories(got, want, tol=F64):
    for t, (a, b) in enumerate(zip(got, want)):
        for k in b:
            torch.testing.assert_close(a[k], b[k], **tol, msg=lambda m, t=t, k=k: f"step {t}, {k}: {m}")


def _li():
    return pytest.importorskip("torchzero.modules.adaptive.psgd.psgd")


# --- low-rank approximation ---------------------------------------------------------------------

def _set_uv(tx, p0):
    """The reference's U and V set to gradtx's initial ones (both are normal draws scaled to
    Frobenius norm sqrt(0.1); checked here)."""
    state = tx.init(p0)[0]
    rank = state.u["w"].shape[-1]
    u = torch.cat([state.u[k].reshape(p0[k].numel(), rank) for k in SHAPES])
    v = torch.cat([state.v[k].reshape(p0[k].numel(), rank) for k in SHAPES])
    if rank:
        torch.testing.assert_close(torch.linalg.vector_norm(u), torch.tensor(0.1 ** 0.5, dtype=torch.float64))
        assert not torch.equal(u, v)

    def setup(opt):
        opt._UVd[0], opt._UVd[1] = u.clone(), v.clone()

    return setup


@pytest.mark.parametrize("rank, momentum, update_prob, whiten_grad", [
    (3, 0.0, 1.0, True), (3, 0.9, 0.5, False), (0, 0.0, 1.0, True), (10, 0.5, 1.0, True)])
def test_psgd_lra_whitening_matches_li(monkeypatch, rank, momentum, update_prob, whiten_grad):
    li = _li()
    p0, loss, grad = _problem(1)
    seed, lr = 4, 0.05
    tx = gx.chain(gx.scale_by_psgd_lra(rank=rank, momentum=momentum, update_prob=update_prob,
                                       whiten_grad=whiten_grad, seed=seed), gx.scale_by_lr(lr))
    want = _li_run(monkeypatch, lambda ps: li.LRAWhiten(ps, rank, None, lr_params=lr, momentum=momentum,
                                                         preconditioner_update_probability=update_prob,
                                                         whiten_grad=whiten_grad),
                   loss, p0, 25, seed, newton=False, lra=True, setup=_set_uv(tx, p0))
    got, state = _functional_run(tx, p0, grad, 25)
    assert not torch.equal(want[-1]["w"], p0["w"])
    _assert_trajectories(got, want)
    assert float(state[0].lipschitz[2]) > 0


@pytest.mark.parametrize("update_prob", [1.0, 0.5])
def test_psgd_lra_newton_matches_li(monkeypatch, update_prob):
    li = _li()
    p0, loss, grad = _problem(2)
    seed, lr = 5, 0.02
    tx = gx.chain(gx.scale_by_psgd_lra(rank=4, update_prob=update_prob, preconditioner_type="newton", seed=seed),
                  gx.scale_by_lr(lr))
    want = _li_run(monkeypatch, lambda ps: li.LRANewton(ps, 4, None, lr_params=lr,
                                                         preconditioner_update_probability=update_prob),
                   loss, p0, 25, seed, newton=True, lra=True, setup=_set_uv(tx, p0))
    got, _ = _functional_run(tx, p0, grad, 25, hvp_fn=gx.make_hvp_fn(loss))
    _assert_trajectories(got, want)


# --- dense --------------------------------------------------------------------------------------

# the default and the triangular (Cholesky-factor) coordinates in the default run, the others slow
DQS = ["Q0.5EQ1.5", "EQ"] + [pytest.param(dq, marks=pytest.mark.slow) for dq in ("QEQ", "QEP", "QUAD", "QUAD4P")]


@pytest.mark.parametrize("dq", DQS)
def test_psgd_dense_newton_matches_li(monkeypatch, dq):
    li = _li()
    p0, loss, grad = _problem(3)
    seed, lr = 6, 0.02
    want = _li_run(monkeypatch, lambda ps: li.DenseNewton(ps, None, lr_params=lr, dQ=dq), loss, p0, 25, seed,
                   newton=True, lra=False)
    tx = gx.chain(gx.scale_by_psgd_dense(dq=dq, preconditioner_type="newton", seed=seed), gx.scale_by_lr(lr))
    got, _ = _functional_run(tx, p0, grad, 25, hvp_fn=gx.make_hvp_fn(loss))
    assert not torch.equal(want[-1]["w"], p0["w"])
    _assert_trajectories(got, want)


def test_psgd_dense_newton_momentum_and_skipped_fits_match_li(monkeypatch):
    li = _li()
    p0, loss, grad = _problem(4)
    seed, lr = 7, 0.02
    want = _li_run(monkeypatch, lambda ps: li.DenseNewton(ps, 0.7, lr_params=lr, momentum=0.9,
                                                           preconditioner_update_probability=0.5),
                   loss, p0, 25, seed, newton=True, lra=False)
    tx = gx.chain(gx.scale_by_psgd_dense(precond_init_scale=0.7, momentum=0.9, update_prob=0.5,
                                         preconditioner_type="newton", seed=seed), gx.scale_by_lr(lr))
    got, _ = _functional_run(tx, p0, grad, 25, hvp_fn=gx.make_hvp_fn(loss))
    _assert_trajectories(got, want)


@pytest.mark.parametrize("dq", ["Q0.5EQ1.5", "EQ", "QUAD4P"])
def test_psgd_dense_whitening_follows_li_update_functions(monkeypatch, dq):
    """Li's dense update of ``dq`` with the pair (v, g + damping v) his whitening classes use,
    ``Q`` started at ``(mean(g^4) + damping^4)^(-1/8) I`` (LRAWhiten's initial scale)."""
    li = _li()
    update = {"Q0.5EQ1.5": li.update_precond_dense_q0p5eq1p5, "EQ": li.update_precond_dense_eq,
              "QUAD4P": li.update_precond_dense_quad4p}[dq]
    p0, _, grad = _problem(5)
    seed, lr, damping = 8, 0.01, 1e-9
    params = {k: v.clone() for k, v in p0.items()}
    q, lip, want = None, torch.zeros((), dtype=torch.float64), []
    for t in range(25):
        g = _flat(grad(params))
        if q is None:
            scale = (torch.mean(g ** 4) + damping ** 4) ** (-1 / 8)
            q = torch.eye(N, dtype=torch.float64) * (scale * scale if dq == "QUAD4P" else scale)
        v = _randn(seed, t, PROBE, (N, 1))
        subspace = _randn(seed, t, SUBSPACE, (32, N))
        monkeypatch.setattr(torch, "randn", lambda *a, s=subspace, **k: s.clone())
        update(q, lip, v, g + damping * v, lr=0.1, betaL=0.9, damping=0.0)
        monkeypatch.undo()
        pre = q @ g if dq == "QUAD4P" else q.T @ (q @ g)
        params = {k: params[k] - lr * x for k, x in zip(SHAPES, _per_param(pre))}
        want.append(params)
    tx = gx.chain(gx.scale_by_psgd_dense(dq=dq, seed=seed), gx.scale_by_lr(lr))
    got, _ = _functional_run(tx, p0, grad, 25)
    _assert_trajectories(got, want)


# --- aliases ------------------------------------------------------------------------------------

def test_psgd_kron_alias_matches_pytorch_optimizer_with_weight_decay(monkeypatch):
    """gx.psgd_kron = pytorch_optimizer.Kron (decoupled decay on tensors of rank >= 2)."""
    po = pytest.importorskip("pytorch_optimizer")
    psgd_ref = pytest.importorskip("pytorch_optimizer.optimizer.psgd")

    def solve64(x, a):  # the reference solves in float32 whatever the dtype
        return torch.linalg.solve_triangular(a, x.reshape(-1, x.size(-1)), upper=True, left=False).reshape_as(x)

    monkeypatch.setattr(psgd_ref, "solve_triangular_right", solve64)
    p0, _, grad = _problem(6)
    seed = 9
    ref = [p0[k].clone().requires_grad_(True) for k in SHAPES]
    opt = po.Kron(ref, lr=0.05, weight_decay=0.1, balance_prob=0.0, precondition_dtype=torch.float64)
    real_randn_like, want = torch.randn_like, []
    for t in range(15):
        # the reference draws each parameter's noise in turn; gradtx gives every leaf the start of one stream
        noises = [torch.randn(p.shape, dtype=torch.float64, generator=_generator(CPU, _mix(seed, t, 0))) for p in ref]
        monkeypatch.setattr(torch, "randn_like", lambda x, dtype=None, q=noises, **kw: q.pop(0))
        g = grad(dict(zip(SHAPES, (p.detach() for p in ref))))
        for k, p in zip(SHAPES, ref):
            p.grad = g[k]
        opt.step()
        monkeypatch.setattr(torch, "randn_like", real_randn_like)
        want.append({k: p.detach().clone() for k, p in zip(SHAPES, ref)})
    tx = gx.psgd_kron(0.05, weight_decay=0.1, balance_prob=0.0, precond_dtype=torch.float64, seed=seed)
    got, _ = _functional_run(tx, p0, grad, 15)
    _assert_trajectories(got, want)


def test_psgd_dense_and_lra_aliases_are_their_chains():
    p0, loss, grad = _problem(7)
    for alias, chain in [
        (gx.psgd_dense(), gx.chain(gx.scale_by_psgd_dense(), gx.scale_by_lr(1e-3))),
        (gx.psgd_lra(0.01, rank=2, momentum=0.5), gx.chain(gx.scale_by_psgd_lra(rank=2, momentum=0.5),
                                                           gx.scale_by_lr(0.01))),
    ]:
        a, _ = _functional_run(alias, p0, grad, 5)
        b, _ = _functional_run(chain, p0, grad, 5)
        _assert_trajectories(a, b, dict(rtol=0, atol=0))


# --- randomness, validation ---------------------------------------------------------------------

def test_no_global_rng_and_seeds_matter():
    p0, loss, grad = _problem(8)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    runs = {}
    for name, build in [("dense", gx.scale_by_psgd_dense), ("lra", gx.scale_by_psgd_lra)]:
        for seed in (0, 1):
            runs[name, seed], _ = _functional_run(gx.chain(build(seed=seed), gx.scale_by_lr(0.01)), p0, grad, 3)
    assert torch.equal(torch.get_rng_state(), before)
    assert not torch.equal(runs["dense", 0][-1]["w"], runs["dense", 1][-1]["w"])
    assert not torch.equal(runs["lra", 0][-1]["w"], runs["lra", 1][-1]["w"])


def test_lra_rank_is_clamped_below_the_parameter_count():
    state = gx.scale_by_psgd_lra(rank=10).init({"w": torch.zeros(2, 2)})
    assert state.u["w"].shape == (2, 2, 3) and state.v["w"].shape == (2, 2, 3)


def test_newton_without_hvp_fn_is_refused():
    p0, _, grad = _problem(9)
    for tx in (gx.scale_by_psgd_dense(preconditioner_type="newton"),
               gx.scale_by_psgd_lra(preconditioner_type="newton")):
        with pytest.raises(ValueError, match="hvp_fn"):
            tx.update(grad(p0), tx.init(p0), p0)


@pytest.mark.parametrize("build, name", [
    (lambda: gx.scale_by_psgd_dense(dq="EQQ"), "dq"),
    (lambda: gx.scale_by_psgd_dense(preconditioner_type="fisher"), "preconditioner_type"),
    (lambda: gx.scale_by_psgd_dense(whiten_grad=False), "whiten_grad"),
    (lambda: gx.scale_by_psgd_dense(beta_l=1.0), "beta_l"),
    (lambda: gx.scale_by_psgd_lra(rank=-1), "rank"),
    (lambda: gx.scale_by_psgd_lra(update_prob=1.5), "update_prob"),
    (lambda: gx.scale_by_psgd_lra(seed=0.5), "seed"),
    (lambda: gx.scale_by_psgd_lra(precond_init_scale=0.0), "precond_init_scale"),
    (lambda: gx.psgd_lra(momentum=1.0), "momentum"),
])
def test_bad_hyperparameters_name_the_argument(build, name):
    with pytest.raises(ValueError, match=name):
        build()


def test_complex_and_changed_structure_are_refused():
    for tx in (gx.psgd_dense(), gx.psgd_lra()):
        with pytest.raises(ValueError, match="view_as_real"):
            tx.init({"w": torch.zeros(2, 2, dtype=torch.complex64)})
    tx = gx.scale_by_psgd_dense()
    state = tx.init({"w": torch.zeros(2, 2)})
    with pytest.raises(ValueError, match="every parameter needs an update"):
        tx.update({"w": torch.zeros(3)}, state)


# --- through gx.Optimizer -----------------------------------------------------------------------

def _model_params():
    gen = torch.Generator().manual_seed(10)
    return {"conv": torch.randn(3, 2, 2, 2, generator=gen, dtype=torch.float64),
            "w": torch.randn(4, 5, generator=gen, dtype=torch.float64),
            "b": torch.randn(4, generator=gen, dtype=torch.float64)}


def _loss(params, t):
    x = torch.linspace(-1, 1, 5, dtype=torch.float64) * (1 + 0.1 * t)
    y = torch.tanh(params["w"] @ x + params["b"])
    return (y ** 2).sum() + (params["conv"] ** 2).sum() + torch.sin(params["conv"]).sum() * y.sum()


BUILDS = {
    "psgd_dense": lambda: gx.psgd_dense(0.02, momentum=0.5, update_prob=0.5),
    "psgd_lra": lambda: gx.psgd_lra(0.02, rank=3, momentum=0.5, update_prob=0.5),
    "psgd_lra_newton": lambda: gx.psgd_lra(0.02, rank=3, preconditioner_type="newton"),
}


def _optimizer_run(build, steps, split=None):
    params = {k: v.clone().requires_grad_(True) for k, v in _model_params().items()}
    opt = gx.Optimizer(list(params.values()), build())
    out = []
    for t in range(steps):
        if t == split:
            buf = io.BytesIO()
            torch.save(opt.state_dict(), buf)
            buf.seek(0)
            params = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
            opt = gx.Optimizer(list(params.values()), build())
            opt.load_state_dict(torch.load(buf, weights_only=True))

        def closure(backward=True, t=t, params=params, opt=opt):
            loss = _loss(params, t)
            if backward:
                opt.zero_grad()
                loss.backward()
            return loss

        opt.step(closure)
        out.append({k: v.detach().clone() for k, v in params.items()})
    return out


@pytest.mark.parametrize("name", list(BUILDS))
def test_optimizer_follows_the_functional_trajectory(name):
    got = _optimizer_run(BUILDS[name], 7)
    tx = BUILDS[name]()
    params = _model_params()
    state = tx.init(params)
    for t in range(7):
        p = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        grads = dict(zip(p, torch.autograd.grad(_loss(p, t), list(p.values()))))
        updates, state = tx.update(grads, state, params, hvp_fn=gx.make_hvp_fn(lambda q, t=t: _loss(q, t)))
        params = gx.apply_updates(params, updates)
        for k in params:
            torch.testing.assert_close(got[t][k], params[k], **F64)


@pytest.mark.parametrize("name", list(BUILDS))
@pytest.mark.parametrize("split", [1, 4])
def test_checkpoint_resume_is_bit_identical(name, split):
    straight = _optimizer_run(BUILDS[name], 7)
    resumed = _optimizer_run(BUILDS[name], 7, split=split)
    for t in range(7):
        for k in straight[t]:
            assert torch.equal(straight[t][k], resumed[t][k]), f"step {t}, {k}"
