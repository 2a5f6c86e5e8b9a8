"""in_eigenbasis in float64: with Adam it is scale_by_soap (pytorch_optimizer's SOAP port, tested
in test_precondition.py); with Lion and Adam against torchzero's SOAPBasis; a per_tensor rule's
tuple state through moments=; refusals; gx.Optimizer trajectory and a checkpoint resumed in the
middle of a refresh interval."""

from __future__ import annotations

import io

import pytest
import torch

import gradtx as gx

F64 = dict(rtol=1e-10, atol=1e-12)
SHAPES = {"w": (5, 4), "c": (3, 2, 4), "b": (3,), "s": ()}


def _grads(shapes, steps, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [{k: torch.randn(s, generator=gen, dtype=torch.float64) for k, s in shapes.items()} for _ in range(steps)]


def _zeros(shapes):
    return {k: torch.zeros(s, dtype=torch.float64) for k, s in shapes.items()}


def _outputs(tx, shapes, grads):
    params = _zeros(shapes)
    state = tx.init(params)
    out = []
    for g in grads:
        u, state = tx.update(g, state, params)
        out.append(u)
    return out


@pytest.mark.parametrize("precondition_1d", [False, True])
def test_with_adam_it_is_soap(precondition_1d):
    """SOAP keeps Adam's first moment unrotated; here it is kept rotated and carried at each
    refresh: equal in exact arithmetic (eps=0: SOAP adds eps before the bias correction)."""
    kw = dict(precondition_frequency=3, precondition_1d=precondition_1d, precond_dtype=torch.float64)
    grads = _grads(SHAPES, 14)
    want = _outputs(gx.scale_by_soap(b1=0.9, b2=0.95, eps=0.0, **kw), SHAPES, grads)
    got = _outputs(gx.in_eigenbasis(gx.scale_by_adam(b1=0.9, b2=0.95, eps=0.0), **kw), SHAPES, grads)
    for t, (a, b) in enumerate(zip(got, want)):
        for k in SHAPES:
            torch.testing.assert_close(a[k], b[k], **F64, msg=lambda m, t=t, k=k: f"step {t}, {k}: {m}")


def test_with_default_float32_qr_the_carried_moment_keeps_float32_orthogonality():
    """By default the refresh's QR runs in float32 (as SOAP's): rotating m back through such a
    basis is exact only to float32, so the outputs agree with SOAP to ~1e-6 after a refresh."""
    grads = _grads({"w": (5, 4)}, 10)
    want = _outputs(gx.scale_by_soap(b1=0.9, b2=0.95, eps=0.0, precondition_frequency=3), {"w": (5, 4)}, grads)
    got = _outputs(gx.in_eigenbasis(gx.scale_by_adam(b1=0.9, b2=0.95, eps=0.0), precondition_frequency=3),
                   {"w": (5, 4)}, grads)
    for a, b in zip(got, want):
        torch.testing.assert_close(a["w"], b["w"], rtol=1e-5, atol=1e-5)


def _torchzero_run(basis_opt, shapes, grads):
    tz = pytest.importorskip("torchzero")
    ps = [torch.zeros(s, dtype=torch.float64, requires_grad=True) for s in shapes.values()]
    opt = tz.Optimizer(ps, tz.m.SOAPBasis(basis_opt(tz), shampoo_beta=0.95, precond_freq=1, merge_small=False,
                                          max_dim=10000, precondition_1d=True))
    out = []
    for g in grads:
        before = [p.detach().clone() for p in ps]
        for p, k in zip(ps, shapes):
            p.grad = g[k].clone()
        opt.step()
        out.append({k: before_p - p.detach() for k, p, before_p in zip(shapes, ps, before)})  # tz subtracts
    return out


@pytest.mark.parametrize("rule", ["lion", "adam"])
def test_matches_torchzero_soap_basis(rule):
    """torchzero's SOAPBasis refreshes right after its first step and then every precond_freq:
    with precondition_frequency=1 both refresh after every step. Its first call returns
    clip(g, -0.1, 0.1) (zeros here): compared from the second call. torchzero's Adam adds eps
    before the bias correction (as SOAP), so eps=0."""
    shapes = {"w": (5, 4), "c": (3, 2, 4), "b": (6,)}
    grads = _grads(shapes, 9, seed=1)
    if rule == "lion":
        want = _torchzero_run(lambda tz: tz.m.Lion(0.9, 0.99), shapes, grads)
        inner = gx.scale_by_lion(b1=0.9, b2=0.99)
    else:
        want = _torchzero_run(lambda tz: tz.m.Adam(0.9, 0.95, eps=0.0), shapes, grads)
        inner = gx.scale_by_adam(b1=0.9, b2=0.95, eps=0.0)
    got = _outputs(gx.in_eigenbasis(inner, precondition_frequency=1, precondition_1d=True), shapes, grads)
    for t in range(1, len(grads)):
        for k in shapes:
            torch.testing.assert_close(got[t][k], want[t][k], **F64, msg=lambda m, t=t, k=k: f"step {t}, {k}: {m}")


def _adam_rule(g, state, p, *, step, b1, b2):
    m, v = state
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    return (m / (1 - b1 ** step)) / (v / (1 - b2 ** step)).sqrt(), (m, v)


def _my_adam(b1=0.9, b2=0.95):
    return gx.per_tensor(lambda p: (torch.zeros_like(p), torch.zeros_like(p)), _adam_rule, b1=b1, b2=b2)


def test_per_tensor_tuple_state_through_moments():
    """A user's rule with a tuple state (m, v): moments names its entries; swapping the kinds
    (m permuted, v rotated) gives other numbers, so the test sees which rule was applied."""
    kw = dict(precondition_frequency=2, precond_dtype=torch.float64)
    grads = _grads(SHAPES, 8)
    want = _outputs(gx.in_eigenbasis(gx.scale_by_adam(b1=0.9, b2=0.95, eps=0.0), **kw), SHAPES, grads)
    moments = {"PerTensorState.per_tensor.0": "rotate", "PerTensorState.per_tensor.1": "permute"}
    got = _outputs(gx.in_eigenbasis(_my_adam(), moments=moments, **kw), SHAPES, grads)
    for a, b in zip(got, want):
        for k in SHAPES:
            torch.testing.assert_close(a[k], b[k], **F64)
    swapped = {"PerTensorState.per_tensor.0": "permute", "PerTensorState.per_tensor.1": "rotate"}
    other = _outputs(gx.in_eigenbasis(_my_adam(), moments=swapped, **kw), SHAPES, grads)
    assert not torch.allclose(other[-1]["w"], want[-1]["w"], rtol=1e-6)


def _laprop_rule(g, m, v, t, b1=0.9, b2=0.999, eps=1e-15, eps_root=1e-15):
    v = b2 * v + (1 - b2) * g * g
    m = b1 * m + (1 - b1) * g / ((v + eps_root).sqrt() + eps) * (1 - b2 ** t) ** 0.5
    return m / (1 - b1 ** t), m, v


def test_laprop_in_the_eigenbasis_is_the_rule_rotated():
    """LaProp (found by name inside a chain) on one matrix, written out here: rotate by the
    bases, LaProp, rotate back; at each refresh m is carried to the new basis exactly and v
    permuted with the sorted columns. The bases are read from the state (their computation is
    SOAP's, tested against pytorch_optimizer in test_precondition.py)."""
    kw = dict(precondition_frequency=2, precond_dtype=torch.float64)
    tx = gx.chain(gx.in_eigenbasis(gx.scale_by_laprop(b1=0.9, b2=0.99), **kw), gx.scale(1.0))
    params = _zeros({"w": (5, 4)})
    state = tx.init(params)
    m = v = torch.zeros(5, 4, dtype=torch.float64)
    for t, g in enumerate(_grads({"w": (5, 4)}, 8)):
        q1, q2 = state[0].bases["w"]
        u, state = tx.update(g, state, params)
        if t == 0:
            torch.testing.assert_close(u["w"], torch.zeros(5, 4, dtype=torch.float64), rtol=0, atol=0)
            continue
        step, m, v = _laprop_rule(q1.T @ g["w"] @ q2, m, v, t, b2=0.99)
        torch.testing.assert_close(u["w"], q1 @ step @ q2.T, **F64)
        if t % 2 == 0:  # refreshed: carry m, permute v as the new columns were sorted
            n1, n2 = state[0].bases["w"]
            m = n1.T @ (q1 @ m @ q2.T) @ n2
            f1, f2 = state[0].factors["w"]
            o1 = torch.argsort(((q1 * (f1 @ q1)).sum(0)), descending=True)
            o2 = torch.argsort(((q2 * (f2 @ q2)).sum(0)), descending=True)
            v = v[o1][:, o2]


def test_refusals():
    with pytest.raises(ValueError, match="no rule for the basis refresh"):
        gx.in_eigenbasis(_my_adam()).init(_zeros(SHAPES))
    with pytest.raises(ValueError, match="no rule for the basis refresh"):
        gx.in_eigenbasis(gx.scale_by_factored_rms(min_dim_size_to_factor=1)).init(_zeros({"w": (5, 4)}))
    with pytest.raises(ValueError, match="inner must be a GradientTransformation"):
        gx.in_eigenbasis("adam")
    with pytest.raises(ValueError, match="precondition_frequency"):
        gx.in_eigenbasis(gx.scale_by_adam(), precondition_frequency=0)
    with pytest.raises(ValueError, match="shampoo_beta"):
        gx.in_eigenbasis(gx.scale_by_adam(), shampoo_beta=1.5)
    with pytest.raises(ValueError, match="must be one of"):
        gx.in_eigenbasis(gx.scale_by_adam(), moments={"ScaleByAdamState.mu": "spin"})


def _loss(params, step):
    gen = torch.Generator().manual_seed(step)
    x = torch.randn(16, 6, generator=gen, dtype=torch.float64)
    return ((torch.tanh(x @ params["w"]) @ params["v"] - 1.0) ** 2).mean()


def test_adapter_matches_functional_and_resumes_mid_interval():
    torch.manual_seed(0)
    init = {"w": torch.randn(6, 5, dtype=torch.float64) * 0.3, "v": torch.randn(5, dtype=torch.float64)}
    make = lambda: gx.chain(gx.in_eigenbasis(gx.scale_by_lion(), precondition_frequency=3),  # noqa: E731
                            gx.scale_by_lr(0.01))
    tx = make()
    params, state = dict(init), tx.init(init)
    for step in range(10):
        updates, state = tx.update(torch.func.grad(_loss)(params, step), state, params)
        params = gx.apply_updates(params, updates)

    leaves = {k: v.clone().requires_grad_(True) for k, v in init.items()}
    opt = gx.Optimizer(list(leaves.values()), make())
    for step in range(10):
        if step == 5:  # mid refresh interval: factors, bases and the rotated moments travel
            buffer = io.BytesIO()
            torch.save(opt.state_dict(), buffer)
            buffer.seek(0)
            opt = gx.Optimizer(list(leaves.values()), make())
            opt.load_state_dict(torch.load(buffer, weights_only=True))
        opt.zero_grad()
        _loss(leaves, step).backward()
        opt.step()
    for k in init:
        torch.testing.assert_close(leaves[k].detach(), params[k], rtol=1e-12, atol=1e-14)
