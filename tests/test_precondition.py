"""gradtx.precondition in float64: SOAP and Shampoo against pytorch_optimizer's SOAP (a port of
Vyas et al.'s code) and Shampoo, Shampoo's and GGT's rules written out here with numpy,
full-matrix AdaGrad against torchzero's, PSGD Kron against pytorch_optimizer's Kron (kron_torch);
the shape rules; gx.Optimizer trajectories and
checkpoint resume in the middle of a refresh interval."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

import gradtx as gx
from gradtx.precondition._factors import merged_shape

F64 = dict(rtol=1e-10, atol=1e-12)


def _problem(shapes: dict[str, tuple], seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    p0 = {k: torch.randn(s, generator=gen, dtype=torch.float64) for k, s in shapes.items()}
    a = {k: torch.randn(s, generator=gen, dtype=torch.float64) for k, s in shapes.items()}

    def grad(params):  # of sum(a p^2 / 2 ... ) + a non-quadratic term: gradients that rotate
        return {k: a[k] * params[k] + torch.sin(3 * params[k]) for k in params}

    return p0, grad


def _reference_run(opt_cls, p0, grad, steps, **kwargs):
    ref = {k: v.clone().requires_grad_(True) for k, v in p0.items()}
    opt = opt_cls(list(ref.values()), **kwargs)
    out = []
    for _ in range(steps):
        g = grad({k: v.detach() for k, v in ref.items()})
        for k, v in ref.items():
            v.grad = g[k].clone()
        opt.step()
        out.append({k: v.detach().clone() for k, v in ref.items()})
    return out


def _functional_run(tx, p0, grad, steps):
    params = {k: v.clone() for k, v in p0.items()}
    state = tx.init(params)
    out = []
    for _ in range(steps):
        updates, state = tx.update(grad(params), state, params)
        params = gx.apply_updates(params, updates)
        out.append(params)
    return out


def _assert_trajectories(got, want, tol=F64):
    for t, (a, b) in enumerate(zip(got, want)):
        for k in b:
            torch.testing.assert_close(a[k], b[k], **tol, msg=lambda m, t=t, k=k: f"step {t}, {k}: {m}")


# --- SOAP ---------------------------------------------------------------------------------------

SOAP_SHAPES = {"w": (5, 4), "conv": (3, 2, 2, 2), "b": (4,), "s": ()}


@pytest.mark.parametrize("precondition_1d", [False, True])
def test_soap_matches_pytorch_optimizer_over_refreshes(precondition_1d):
    """30 steps with a refresh every 4 (7 QR refreshes after the first eigh), on a matrix, a
    conv weight (4 factors), a vector (a factor only with precondition_1d) and a 0-dim tensor."""
    po = pytest.importorskip("pytorch_optimizer")
    p0, grad = _problem(SOAP_SHAPES)
    want = _reference_run(po.SOAP, p0, grad, 30, lr=0.05, betas=(0.9, 0.95), shampoo_beta=0.9, weight_decay=0.0,
                          precondition_frequency=4, precondition_1d=precondition_1d, eps=1e-8)
    got = _functional_run(gx.soap(0.05, b1=0.9, b2=0.95, shampoo_beta=0.9, weight_decay=0.0, precondition_frequency=4,
                                  precondition_1d=precondition_1d), p0, grad, 30)
    assert not torch.equal(want[-1]["w"], p0["w"])
    _assert_trajectories(got, want)


def test_soap_normalized_and_uncorrected_match_pytorch_optimizer():
    po = pytest.importorskip("pytorch_optimizer")
    p0, grad = _problem({"w": (4, 6), "b": (3,)}, seed=1)
    want = _reference_run(po.SOAP, p0, grad, 12, lr=0.02, weight_decay=0.0, precondition_frequency=3,
                          correct_bias=False, normalize_gradient=True)
    tx = gx.chain(gx.scale_by_soap(precondition_frequency=3, correct_bias=False, normalize_grads=True),
                  gx.scale_by_lr(0.02))
    _assert_trajectories(_functional_run(tx, p0, grad, 12), want)


def test_soap_axis_longer_than_max_precond_dim_gets_no_factor():
    po = pytest.importorskip("pytorch_optimizer")
    p0, grad = _problem({"w": (6, 3)}, seed=2)
    want = _reference_run(po.SOAP, p0, grad, 10, lr=0.05, weight_decay=0.0, precondition_frequency=3,
                          max_precondition_dim=4)
    tx = gx.soap(0.05, weight_decay=0.0, precondition_frequency=3, max_precond_dim=4)
    _assert_trajectories(_functional_run(tx, p0, grad, 10), want)
    factors = tx.init(p0)[0].factors["w"]
    assert [tuple(f.shape) for f in factors] == [(0,), (3, 3)]


def test_merged_shape_rule():
    assert merged_shape(torch.Size([64, 32, 3, 3]), 1024) == [64, 288]
    assert merged_shape(torch.Size([64, 32, 3, 3]), 10000) == [6144, 3]
    assert merged_shape(torch.Size([4, 3, 2, 2]), 8) == [4, 6, 2]
    assert merged_shape(torch.Size([20000, 3]), 10000) == [20000, 3]
    assert merged_shape(torch.Size([1, 1]), 10) == [1]


def test_soap_merge_dims_is_soap_on_the_merged_tensor():
    """merge_dims on a (4, 3, 2, 2) weight with max_precond_dim=8 is SOAP (pytorch_optimizer's,
    unmerged) on the same numbers shaped (4, 6, 2)."""
    po = pytest.importorskip("pytorch_optimizer")
    p0, grad = _problem({"conv": (4, 3, 2, 2)}, seed=3)
    p_merged = {"conv": p0["conv"].reshape(4, 6, 2)}

    def grad_merged(params):
        return {"conv": grad({"conv": params["conv"].reshape(4, 3, 2, 2)})["conv"].reshape(4, 6, 2)}

    want = _reference_run(po.SOAP, p_merged, grad_merged, 10, lr=0.05, weight_decay=0.0, precondition_frequency=3,
                          max_precondition_dim=8)
    tx = gx.soap(0.05, weight_decay=0.0, precondition_frequency=3, max_precond_dim=8, merge_dims=True)
    got = _functional_run(tx, p0, grad, 10)
    _assert_trajectories([{"conv": g["conv"].reshape(4, 6, 2)} for g in got], want)
    assert [tuple(f.shape) for f in tx.init(p0)[0].factors["conv"]] == [(4, 4), (6, 6), (2, 2)]


def test_soap_first_step_is_zero_and_bases_refresh_on_schedule():
    p0, grad = _problem({"w": (4, 3)}, seed=4)
    tx = gx.scale_by_soap(precondition_frequency=3)
    params, state = p0, tx.init(p0)
    bases = []
    for t in range(8):
        updates, state = tx.update(grad(params), state, params)
        if t == 0:
            assert torch.equal(updates["w"], torch.zeros(4, 3, dtype=torch.float64))
        params = gx.apply_updates(params, updates)
        bases.append([q.clone() for q in state.bases["w"]])
        for q in state.bases["w"]:  # orthonormal columns
            torch.testing.assert_close(q.mT @ q, torch.eye(q.shape[0], dtype=torch.float64), atol=1e-6, rtol=0)
    changed = [t for t in range(1, 8) if not all(torch.equal(a, b) for a, b in zip(bases[t], bases[t - 1]))]
    assert changed == [3, 6]  # refreshed after steps t = 3 and t = 6 (the first call is t = 0)


def test_soap_weight_decay_skips_the_first_call_and_is_a_param_group_key():
    """As the authors' code: the first call (statistics only) leaves the parameters alone, the
    decay included; later calls decay by lr * weight_decay * p (before the step, as adamw)."""
    po = pytest.importorskip("pytorch_optimizer")
    p0, grad = _problem({"w": (4, 3)}, seed=16)
    got = _functional_run(gx.soap(0.05, weight_decay=0.1, precondition_frequency=3), p0, grad, 6)
    assert torch.equal(got[0]["w"], p0["w"])
    want = _reference_run(po.SOAP, p0, grad, 6, lr=0.05, weight_decay=0.1, precondition_frequency=3)
    # the reference decays the stepped parameter: a difference of lr^2 wd |u| per step
    _assert_trajectories(got, want, dict(rtol=0, atol=6 * 0.05**2 * 0.1 * 2))
    p = torch.nn.Parameter(p0["w"].clone())
    opt = gx.Optimizer([p], gx.soap(0.05, weight_decay=0.1))
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(0.1)


def test_shampoo_float32_roots_floor_at_eps():
    """eps I + g g^T in float32: eigh puts the null-space eigenvalues below eps (even below 0);
    the roots stay those of eps there, so the update stays near the float64 one (within float32
    round-off of the eigenvectors times eps^(-1/2); a root of a negative or tiny eigenvalue would
    put 1e15 there)."""
    gen = torch.Generator().manual_seed(17)
    g = {"b": torch.randn(64, generator=gen) * 10}
    tx = gx.scale_by_shampoo(eps=1e-6, **PLAIN)
    u32, _ = tx.update(g, tx.init(g))
    g64 = {"b": g["b"].double()}
    u64, _ = tx.update(g64, tx.init(g64))
    torch.testing.assert_close(u32["b"].double(), u64["b"], rtol=0, atol=5e-2)


def test_soap_float32_follows_pytorch_optimizer():
    po = pytest.importorskip("pytorch_optimizer")
    p0, grad = _problem({"w": (5, 4), "b": (3,)}, seed=5)
    p32 = {k: v.float() for k, v in p0.items()}

    def grad32(params):
        return {k: v.float() for k, v in grad({k: v.double() for k, v in params.items()}).items()}

    want = _reference_run(po.SOAP, p32, grad32, 8, lr=0.01, weight_decay=0.0, precondition_frequency=3)
    got = _functional_run(gx.soap(0.01, weight_decay=0.0, precondition_frequency=3), p32, grad32, 8)
    assert got[-1]["w"].dtype == torch.float32
    _assert_trajectories(got, want, dict(rtol=1e-4, atol=1e-5))


# --- Shampoo ------------------------------------------------------------------------------------

SHAMPOO_SHAPES = {"w": (5, 4), "t": (3, 2, 2), "b": (4,), "s": ()}
# the paper's rule (and pytorch_optimizer.Shampoo's): no grafting, roots from the first step
PLAIN = dict(graft=None, start_preconditioning_step=1)


def test_shampoo_matches_pytorch_optimizer():
    po = pytest.importorskip("pytorch_optimizer")
    p0, grad = _problem(SHAMPOO_SHAPES, seed=6)
    want = _reference_run(po.Shampoo, p0, grad, 20, lr=0.05, matrix_eps=1e-4, weight_decay=1e-2)
    got = _functional_run(gx.shampoo(0.05, eps=1e-4, weight_decay=1e-2, **PLAIN), p0, grad, 20)
    assert not torch.equal(want[-1]["t"], p0["t"])
    _assert_trajectories(got, want, dict(rtol=1e-9, atol=1e-11))


def _np_power(h: np.ndarray, power: float) -> np.ndarray:
    w, v = np.linalg.eigh(h)
    return (v * w**power) @ v.T


def _shampoo_rule(p0, grad, steps, lr, eps, update_freq, beta=None):
    """Gupta et al.'s Algorithm 2 with numpy: H_i from eps I, roots every update_freq steps."""
    params = {k: v.numpy().copy() for k, v in p0.items()}
    stats = {k: [eps * np.eye(n) for n in v.shape] for k, v in params.items()}
    roots = {k: [None] * v.ndim for k, v in params.items()}
    out = []
    for t in range(steps):
        g = {k: v.numpy() for k, v in grad({k: torch.from_numpy(v) for k, v in params.items()}).items()}
        for k, x in g.items():
            for i in range(x.ndim):
                unfolded = np.moveaxis(x, i, 0).reshape(x.shape[i], -1)
                gg = unfolded @ unfolded.T
                stats[k][i] = stats[k][i] + gg if beta is None else beta * stats[k][i] + (1 - beta) * gg
                if t % update_freq == 0:
                    roots[k][i] = _np_power(stats[k][i], -1.0 / (2 * x.ndim))
            u = x
            for i in range(x.ndim):
                u = np.moveaxis(np.tensordot(roots[k][i], np.moveaxis(u, i, 0), axes=1), 0, i)
            params[k] = np.asarray(params[k] - lr * u)
        out.append({k: torch.from_numpy(v.copy()) for k, v in params.items()})
    return out


@pytest.mark.parametrize("beta", [None, 0.9])
def test_shampoo_update_freq_and_ema_follow_the_paper_rule(beta):
    p0, grad = _problem(SHAMPOO_SHAPES, seed=7)
    want = _shampoo_rule(p0, grad, 12, lr=0.05, eps=1e-3, update_freq=3, beta=beta)
    got = _functional_run(gx.shampoo(0.05, eps=1e-3, update_freq=3, beta=beta, **PLAIN), p0, grad, 12)
    _assert_trajectories(got, want, dict(rtol=1e-9, atol=1e-11))


def test_shampoo_graft_takes_the_grafted_norm_per_leaf():
    p0, grad = _problem({"w": (4, 3), "s": ()}, seed=8)
    tx = gx.scale_by_shampoo(eps=1e-3, graft=gx.scale_by_rss(), start_preconditioning_step=1)
    plain, rss = gx.scale_by_shampoo(eps=1e-3, **PLAIN), gx.scale_by_rss()
    state, plain_state, rss_state = tx.init(p0), plain.init(p0), rss.init(p0)
    params = p0
    for _ in range(4):
        g = grad(params)
        u, state = tx.update(g, state, params)
        d, plain_state = plain.update(g, plain_state, params)
        r, rss_state = rss.update(g, rss_state, params)
        want_w = d["w"] * torch.linalg.vector_norm(r["w"]) / torch.linalg.vector_norm(d["w"])
        torch.testing.assert_close(u["w"], want_w, **F64)
        torch.testing.assert_close(u["s"], r["s"], **F64)  # no factor: the graft's own update
        params = gx.apply_updates(params, gx.tree_map(lambda x: -0.1 * x, u))


def _distributed_shampoo_rule(p0, grad, steps, lr, eps, update_freq, start):
    """Distributed Shampoo's defaults (Anil et al. 2020) over the paper's rule, with numpy:
    statistics from step 1; before step ``start`` the update is the gradient (SGD grafting's
    own step); from it, roots at ``start`` and every ``update_freq`` steps after, and the
    direction rescaled to the gradient's norm per tensor; a 0-dim tensor takes SGD steps."""
    params = {k: v.numpy().copy() for k, v in p0.items()}
    stats = {k: [eps * np.eye(n) for n in v.shape] for k, v in params.items()}
    roots = {k: [None] * v.ndim for k, v in params.items()}
    out = []
    for t in range(1, steps + 1):
        g = {k: v.numpy() for k, v in grad({k: torch.from_numpy(v) for k, v in params.items()}).items()}
        for k, x in g.items():
            u = x
            for i in range(x.ndim):
                unfolded = np.moveaxis(x, i, 0).reshape(x.shape[i], -1)
                stats[k][i] = stats[k][i] + unfolded @ unfolded.T
                if t >= start and (t - start) % update_freq == 0:
                    roots[k][i] = _np_power(stats[k][i], -1.0 / (2 * x.ndim))
            if t >= start and x.ndim:
                for i in range(x.ndim):
                    u = np.moveaxis(np.tensordot(roots[k][i], np.moveaxis(u, i, 0), axes=1), 0, i)
                u = u * np.linalg.norm(x) / np.linalg.norm(u)
            params[k] = np.asarray(params[k] - lr * u)
        out.append({k: torch.from_numpy(v.copy()) for k, v in params.items()})
    return out


def test_shampoo_defaults_follow_distributed_shampoo_sgd_grafting_and_start_step():
    p0, grad = _problem(SHAMPOO_SHAPES, seed=10)
    want = _distributed_shampoo_rule(p0, grad, 12, lr=0.05, eps=1e-3, update_freq=3, start=5)
    got = _functional_run(gx.shampoo(0.05, eps=1e-3, update_freq=3), p0, grad, 12)
    assert not torch.equal(got[3]["w"], got[4]["w"])
    _assert_trajectories(got, want, dict(rtol=1e-9, atol=1e-11))


def _cnn_losses(make_opt, steps: int = 30) -> list[float]:
    """Training losses of a small CNN (two 3x3 convolutions and a classifier) on 12x12 inputs
    labelled by a random linear teacher, batches of 32, stopping at the first non-finite loss."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 1, 12, 12, generator=gen)
    y = (x.flatten(1) @ torch.randn(10, 144, generator=gen).T).argmax(1)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 16, 3, padding=1, stride=2), torch.nn.ReLU(),
                              torch.nn.Flatten(), torch.nn.Linear(16 * 36, 10))
    opt, losses = make_opt(net.parameters()), []
    for i in range(steps):
        batch = slice(i * 32 % 256, i * 32 % 256 + 32)
        loss = torch.nn.functional.cross_entropy(net(x[batch]), y[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if not np.isfinite(losses[-1]):
            break
    return losses


def test_shampoo_defaults_train_a_small_cnn_where_the_plain_rule_diverges():
    """Roots from the first gradient, kept for 10 steps and ungrafted, blow the CNN up; the
    defaults (SGD grafting, roots from step 5) train it as far as AdamW does in 30 steps."""
    plain = _cnn_losses(lambda ps: gx.Optimizer(ps, gx.shampoo(0.1, update_freq=10, **PLAIN)))
    assert not np.isfinite(plain[-1])
    stable = _cnn_losses(lambda ps: gx.Optimizer(ps, gx.shampoo(0.1, update_freq=10)))
    adamw = _cnn_losses(lambda ps: torch.optim.AdamW(ps, 1e-3))
    assert len(stable) == 30 and np.isfinite(stable).all()
    assert np.mean(stable[-5:]) < stable[0] - 0.1
    assert np.mean(stable[-5:]) < 1.05 * np.mean(adamw[-5:])


def test_shampoo_float32_and_bfloat16_keep_dtypes_and_stay_finite():
    for dtype in (torch.float32, torch.bfloat16):
        p0, grad = _problem({"w": (5, 4), "b": (3,)}, seed=9)
        p = {k: v.to(dtype) for k, v in p0.items()}
        tx = gx.shampoo(0.05, eps=1e-4)
        state = tx.init(p)
        assert state[1].factors["w"][0].dtype == (torch.float32 if dtype == torch.bfloat16 else dtype)
        for _ in range(3):
            u, state = tx.update({k: v.to(dtype) for k, v in grad(p).items()}, state, p)
            assert all(x.dtype == dtype and torch.isfinite(x).all() for x in u.values())
            p = gx.apply_updates(p, u)


# --- validation and refusals --------------------------------------------------------------------

@pytest.mark.parametrize("build, name", [
    (lambda: gx.scale_by_soap(precondition_frequency=0), "precondition_frequency"),
    (lambda: gx.scale_by_soap(b2=1.0), "b2"),
    (lambda: gx.scale_by_soap(shampoo_beta=-0.1), "shampoo_beta"),
    (lambda: gx.scale_by_soap(precond_dtype=torch.float16), "precond_dtype"),
    (lambda: gx.scale_by_shampoo(update_freq=1.5), "update_freq"),
    (lambda: gx.scale_by_shampoo(eps=-1.0), "eps"),
    (lambda: gx.scale_by_shampoo(graft="adagrad"), "graft"),
    (lambda: gx.scale_by_shampoo(start_preconditioning_step=0), "start_preconditioning_step"),
    (lambda: gx.shampoo(0.1, momentum=1.0), "momentum"),
    (lambda: gx.scale_by_full_matrix_adagrad(init="ones"), "init"),
    (lambda: gx.scale_by_full_matrix_adagrad(inner=0.9), "inner"),
    (lambda: gx.scale_by_ggt(window=0), "window"),
    (lambda: gx.scale_by_ggt(eps=0.0), "eps"),
    (lambda: gx.scale_by_psgd_kron(seed=1.5), "seed"),
    (lambda: gx.scale_by_psgd_kron(update_prob=0.0), "update_prob"),
    (lambda: gx.scale_by_psgd_kron(precond_dtype=torch.bfloat16), "precond_dtype"),
])
def test_bad_hyperparameters_name_the_argument(build, name):
    with pytest.raises(ValueError, match=name):
        build()


def test_complex_params_are_refused_naming_view_as_real():
    for tx in (gx.soap(), gx.shampoo(0.1), gx.scale_by_full_matrix_adagrad(), gx.scale_by_ggt(),
               gx.scale_by_psgd_kron()):
        with pytest.raises(ValueError, match="view_as_real"):
            tx.init({"w": torch.zeros(2, 2, dtype=torch.complex64)})


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
        opt.zero_grad()
        _loss(params, t).backward()
        opt.step()
        out.append({k: v.detach().clone() for k, v in params.items()})
    return out


BUILDS = {
    "soap": lambda: gx.soap(0.02, precondition_frequency=3, weight_decay=1e-3, precondition_1d=True),
    "shampoo": lambda: gx.shampoo(0.02, eps=1e-3, update_freq=3, momentum=0.5, graft=gx.scale_by_rss(),
                                  start_preconditioning_step=2),
    "psgd_kron": lambda: gx.chain(gx.scale_by_psgd_kron(update_prob=0.5, balance_prob=0.5), gx.scale_by_lr(0.02)),
}


@pytest.mark.parametrize("name", list(BUILDS))
def test_optimizer_follows_the_functional_trajectory(name):
    got = _optimizer_run(BUILDS[name], 7)
    tx = BUILDS[name]()
    params = _model_params()
    state = tx.init(params)
    for t in range(7):
        p = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        grads = dict(zip(p, torch.autograd.grad(_loss(p, t), list(p.values()))))
        updates, state = tx.update(grads, state, params)
        params = gx.apply_updates(params, updates)
        for k in params:
            torch.testing.assert_close(got[t][k], params[k], **F64)


@pytest.mark.parametrize("name", list(BUILDS))
@pytest.mark.parametrize("split", [2, 4, 5])  # after the first call, mid-interval, right after a refresh
def test_checkpoint_resume_is_bit_identical(name, split):
    straight = _optimizer_run(BUILDS[name], 9)
    resumed = _optimizer_run(BUILDS[name], 9, split=split)
    for t in range(9):
        for k in straight[t]:
            assert torch.equal(straight[t][k], resumed[t][k]), f"step {t}, {k}"


# --- full-matrix AdaGrad and GGT ----------------------------------------------------------------

FULL_SHAPES = {"w": (3, 4), "b": (4,), "s": ()}


@pytest.mark.parametrize("kwargs, tz_kwargs", [
    ({}, {}),
    (dict(beta=0.9, update_freq=3), dict(beta=0.9, precond_freq=3)),
    (dict(beta=0.9, beta_debias=False, init="zeros", eps=1e-6), dict(beta=0.9, beta_debias=False, init="zeros",
                                                                     reg=1e-6)),
])
@pytest.mark.parametrize("with_inner", [False, True])
def test_full_matrix_adagrad_matches_torchzero(kwargs, tz_kwargs, with_inner):
    """torchzero's FullMatrixAdagrad per tensor (concat_params=False), inner EMA or none."""
    tz = pytest.importorskip("torchzero")
    p0, grad = _problem(FULL_SHAPES, seed=11)

    def build(params):
        inner = tz.m.EMA(0.9) if with_inner else None
        return tz.Optimizer(params, tz.m.FullMatrixAdagrad(concat_params=False, inner=inner, **tz_kwargs),
                            tz.m.LR(0.05))

    want = _reference_run(build, p0, grad, 15)
    inner = gx.ema(0.9, debias=False) if with_inner else None
    tx = gx.chain(gx.scale_by_full_matrix_adagrad(inner=inner, **kwargs), gx.scale_by_lr(0.05))
    _assert_trajectories(_functional_run(tx, p0, grad, 15), want, dict(rtol=1e-8, atol=1e-10))


def test_full_matrix_adagrad_large_leaf_is_diagonal_adagrad():
    p0, grad = _problem({"w": (3, 4)}, seed=12)
    tx = gx.scale_by_full_matrix_adagrad(max_dim=5, eps=1e-8)
    state, params, acc = tx.init(p0), p0, torch.ones(3, 4, dtype=torch.float64)
    for _ in range(4):
        g = grad(params)
        u, state = tx.update(g, state, params)
        acc = acc + g["w"] ** 2
        torch.testing.assert_close(u["w"], g["w"] / (acc + 1e-8).sqrt(), **F64)
        params = gx.apply_updates(params, gx.tree_map(lambda x: -0.1 * x, u))


def _ggt_rule(p0, grad, steps, lr, window, b2, eps):
    """Agarwal et al.'s update written with an n x n eigendecomposition: ((G G^T)^(1/2) + eps I)^-1 g."""
    params = {k: v.numpy().copy() for k, v in p0.items()}
    history = {k: [] for k in params}
    out = []
    for _ in range(steps):
        g = {k: v.numpy() for k, v in grad({k: torch.from_numpy(v) for k, v in params.items()}).items()}
        for k, x in g.items():
            history[k] = ([x.reshape(-1)] + history[k])[:window]
            m = np.stack([b2**i * h for i, h in enumerate(history[k])], axis=1)
            w, v = np.linalg.eigh(m @ m.T)
            root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
            u = np.linalg.solve(root + eps * np.eye(len(w)), x.reshape(-1)).reshape(x.shape)
            params[k] = np.asarray(params[k] - lr * u)
        out.append({k: torch.from_numpy(v.copy()) for k, v in params.items()})
    return out


@pytest.mark.parametrize("window, b2", [(3, 1.0), (4, 0.9)])
def test_ggt_follows_the_paper_rule(window, b2):
    p0, grad = _problem({"w": (3, 4), "b": (5,), "s": ()}, seed=13)
    want = _ggt_rule(p0, grad, 10, lr=0.01, window=window, b2=b2, eps=1e-2)
    got = _functional_run(gx.chain(gx.scale_by_ggt(window=window, b2=b2, eps=1e-2), gx.scale_by_lr(0.01)), p0, grad,
                          10)
    _assert_trajectories(got, want, dict(rtol=1e-8, atol=1e-10))


# --- PSGD Kron ----------------------------------------------------------------------------------

def _kron_reference(monkeypatch, shape, steps, seed, **kwargs):
    """pytorch_optimizer.Kron on one parameter, its triangular solves in float64 (they are
    float32 there whatever the dtype) and its noise the documented stream of gx's state seed."""
    po = pytest.importorskip("pytorch_optimizer")
    psgd_ref = pytest.importorskip("pytorch_optimizer.optimizer.psgd")
    from gradtx.transforms.perturb import _generator, _mix

    def solve64(x, a):
        return torch.linalg.solve_triangular(a, x.reshape(-1, x.size(-1)), upper=True, left=False).reshape_as(x)

    monkeypatch.setattr(psgd_ref, "solve_triangular_right", solve64)
    p0, grad = _problem({"p": shape}, seed=14)
    ref = p0["p"].clone().requires_grad_(True)
    opt = po.Kron([ref], lr=0.05, balance_prob=0.0, precondition_dtype=torch.float64, **kwargs)
    real_randn_like = torch.randn_like
    out = []
    for t in range(steps):
        noise = torch.randn(shape, dtype=torch.float64, generator=_generator(torch.device("cpu"), _mix(seed, t, 0)))
        monkeypatch.setattr(torch, "randn_like", lambda x, dtype=None, noise=noise, **kw: noise.clone())
        ref.grad = grad({"p": ref.detach()})["p"]
        opt.step()
        monkeypatch.setattr(torch, "randn_like", real_randn_like)
        out.append({"p": ref.detach().clone()})
    return p0, grad, out


@pytest.mark.parametrize("shape", [(5, 4), (3, 2, 2), (4,), ()])
@pytest.mark.parametrize("update_prob", [None, 0.5])
def test_psgd_kron_matches_pytorch_optimizer(monkeypatch, shape, update_prob):
    kwargs = {} if update_prob is None else dict(pre_conditioner_update_probability=update_prob)
    p0, grad, want = _kron_reference(monkeypatch, shape, 15, seed=3, **kwargs)
    tx = gx.chain(gx.scale_by_psgd_kron(precond_dtype=torch.float64, balance_prob=0.0, update_prob=update_prob,
                                        seed=3), gx.scale_by_lr(0.05))
    assert not torch.equal(want[-1]["p"], p0["p"])
    _assert_trajectories(_functional_run(tx, p0, grad, 15), want)


def test_psgd_kron_touches_no_global_rng_and_balancing_keeps_the_preconditioner():
    p0, grad = _problem({"w": (4, 3), "b": (3,)}, seed=15)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    plain = _functional_run(gx.scale_by_psgd_kron(balance_prob=0.0, precond_dtype=torch.float64), p0, grad, 6)
    balanced = _functional_run(gx.scale_by_psgd_kron(balance_prob=1.0, precond_dtype=torch.float64), p0, grad, 6)
    assert torch.equal(torch.get_rng_state(), before)
    _assert_trajectories(balanced, plain, dict(rtol=1e-9, atol=1e-11))
    tx = gx.scale_by_psgd_kron(balance_prob=1.0, precond_dtype=torch.float64)
    state = tx.init(p0)
    for _ in range(3):
        _, state = tx.update(grad(p0), state, p0)
    norms = [float(q.abs().max()) for q in state.qs["w"]]
    assert norms[0] != pytest.approx(1.0) and norms[0] == pytest.approx(norms[1], rel=0.3)
