"""Building blocks (gx.debias, gx.ema_squared, gx.accumulate_maximum, ...): closed forms, and
Adam and AMSGrad composed from them four ways, checked against gx.scale_by_adam,
gx.scale_by_amsgrad and torch.optim (issue 13 §2)."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_resume_bit_exact, leaf_copy

import gradtx as gx

F64 = torch.float64


def _tree(seed, dtype=F64):
    gen = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(4, 3, generator=gen, dtype=dtype), "b": torch.randn(3, generator=gen, dtype=dtype),
            "s": torch.randn((), generator=gen, dtype=dtype)}


def _run(tx, steps=50, inplace=False, seed=0):
    params = _tree(seed)
    state = tx.init(params)
    out = []
    for t in range(steps):
        grads = _tree(100 + t)
        if inplace:
            grads = {k: g.clone() for k, g in grads.items()}
        updates, state = tx.update(grads, state, params, inplace=inplace)
        out.append({k: u.clone() for k, u in updates.items()})
    return out


def _assert_same(got, want, rtol=1e-12, atol=1e-14):
    for t, (g, w) in enumerate(zip(got, want)):
        for k in w:
            torch.testing.assert_close(g[k], w[k], rtol=rtol, atol=atol, msg=lambda m, t=t, k=k: f"step {t}, {k}: {m}")


B1, B2, EPS = 0.9, 0.999, 1e-8


def adam_ways():
    """The four ways torchzero writes Adam, in gradtx blocks."""
    return {
        "scale_by_adam": gx.scale_by_adam(B1, B2, EPS),
        # RMSprop's preconditioner 1 / (sqrt(v_hat) + eps) applied to the EMA
        "rmsprop_on_ema": gx.product(gx.ema(B1), gx.chain(gx.sqrt_ema_squared(B2, debias=True), gx.add(EPS),
                                                          gx.reciprocal())),
        # EMA over sqrt(EMA of squares) + eps
        "ema_over_sqrt": gx.ratio(gx.ema(B1), gx.chain(gx.ema_squared(B2, debias=True), gx.sqrt(), gx.add(EPS))),
        # spelled out: raw EMAs, debias, pow
        "spelled_out": gx.ratio(gx.chain(gx.ema(B1, debias=False), gx.debias(B1)),
                                gx.chain(gx.ema_squared(B2), gx.debias(B2), gx.pow(0.5), gx.add(EPS))),
        # ratio's own eps, and debias by a power of the square root
        "debias_power": gx.ratio(gx.chain(gx.ema(B1, debias=False), gx.debias(B1)),
                                 gx.chain(gx.sqrt_ema_squared(B2), gx.debias(B2, power=0.5)), eps=EPS),
    }


@pytest.mark.parametrize("way", list(adam_ways()))
@pytest.mark.parametrize("inplace", [False, True])
def test_adam_from_blocks_equals_scale_by_adam(way, inplace):
    """50 float64 steps: each composition gives gx.scale_by_adam's updates to round-off, on the
    pure and the in-place path."""
    want = _run(gx.scale_by_adam(B1, B2, EPS))
    _assert_same(_run(adam_ways()[way], inplace=inplace), want)


def _amsgrad_torch_form():
    # torch.optim.Adam(amsgrad=True): the maximum of the raw v, debiased afterwards
    return gx.ratio(gx.chain(gx.ema(B1, debias=False), gx.debias(B1)),
                    gx.chain(gx.ema_squared(B2), gx.accumulate_maximum(), gx.debias(B2), gx.pow(0.5), gx.add(EPS)))


def _amsgrad_optax_form():
    # optax.scale_by_amsgrad: the maximum of the debiased v_hat
    return gx.ratio(gx.chain(gx.ema(B1, debias=False), gx.debias(B1)),
                    gx.chain(gx.ema_squared(B2), gx.debias(B2), gx.accumulate_maximum(), gx.sqrt(), gx.add(EPS)))


@pytest.mark.parametrize("inplace", [False, True])
def test_amsgrad_from_blocks_equals_scale_by_amsgrad(inplace):
    _assert_same(_run(_amsgrad_torch_form(), inplace=inplace),
                 _run(gx.scale_by_amsgrad(B1, B2, EPS, debias_after_max=True)))
    _assert_same(_run(_amsgrad_optax_form(), inplace=inplace), _run(gx.scale_by_amsgrad(B1, B2, EPS)))


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).double()


def _train(opt, model, steps, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(16, 5, generator=gen, dtype=F64)
        y = torch.randn(16, 1, generator=gen, dtype=F64)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def test_amsgrad_from_blocks_under_optimizer_equals_torch_adam_amsgrad():
    """The spelled-out AMSGrad under gx.Optimizer follows torch.optim.Adam(amsgrad=True) for
    50 float64 steps (1e-10 relative); its state_dict round-trips through torch.save and
    torch.load(weights_only=True) and continues bit-identically."""
    lr = 1e-2
    ref_model, model = _model(), _model()
    ref = torch.optim.Adam(ref_model.parameters(), lr=lr, betas=(B1, B2), eps=EPS, amsgrad=True)
    _train(ref, ref_model, 50)
    gen = torch.Generator().manual_seed(0)  # _train's batches, then five more
    batches = [(torch.randn(16, 5, generator=gen, dtype=F64), torch.randn(16, 1, generator=gen, dtype=F64))
               for _ in range(55)]

    def loss(ps, t):
        x, y = batches[t]
        return torch.nn.functional.mse_loss(torch.func.functional_call(model, ps, (x,)), y)

    got = assert_resume_bit_exact(
        lambda leaves: gx.Optimizer(list(leaves.values()), gx.chain(_amsgrad_torch_form(), gx.scale_by_lr(lr))),
        leaf_copy(dict(model.named_parameters())), loss, steps=55, split=50)
    for n, q in ref_model.named_parameters():
        torch.testing.assert_close(got[49][n], q.detach(), rtol=1e-10, atol=1e-12)


def test_centered_ema_squared_is_torch_centered_rmsprop():
    """u / (sqrt(ema_squared(centered=True)) + eps) is torch.optim.RMSprop(centered=True)."""
    alpha, eps, lr = 0.9, 1e-8, 1e-2
    ref_model, model = _model(), _model()
    ref = torch.optim.RMSprop(ref_model.parameters(), lr=lr, alpha=alpha, eps=eps, centered=True)
    tx = gx.chain(gx.ratio(gx.identity(), gx.chain(gx.sqrt_ema_squared(alpha, centered=True), gx.add(eps))),
                  gx.scale_by_lr(lr))
    opt = gx.Optimizer(model.parameters(), tx)
    _train(ref, ref_model, 30)
    _train(opt, model, 30)
    for p, q in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


def test_ema_squared_closed_forms():
    """v_t = sum_i (1-d) d^(t-i) u_i^2; debiased v_t / (1 - d^t); centered v - m^2."""
    d = 0.8
    gs = [_tree(10 + t) for t in range(6)]
    for debias in (False, True):
        for centered in (False, True):
            for tx, root in ((gx.ema_squared(d, debias, centered), False), (gx.sqrt_ema_squared(d, debias, centered),
                                                                            True)):
                state = tx.init(gs[0])
                for t, g in enumerate(gs, start=1):
                    u, state = tx.update(g, state)
                    for k in g:
                        v = sum((1 - d) * d ** (t - i) * gs[i - 1][k] ** 2 for i in range(1, t + 1))
                        m = sum((1 - d) * d ** (t - i) * gs[i - 1][k] for i in range(1, t + 1))
                        if debias:
                            v, m = v / (1 - d ** t), m / (1 - d ** t)
                        want = (v - m ** 2).clamp_min(0) if centered else v
                        # the square root of a zero variance (the first debiased step) is that of round-off
                        atol = 1e-7 if root and centered else 1e-14
                        torch.testing.assert_close(u[k], want.sqrt() if root else want, rtol=1e-12, atol=atol)


def test_accumulators_and_stateless_blocks_closed_forms():
    gs = [_tree(20 + t) for t in range(5)]
    stacked = {k: torch.stack([g[k] for g in gs]) for k in gs[0]}
    cases = {
        "accumulate_maximum": (gx.accumulate_maximum(), lambda k, t: stacked[k][: t + 1].amax(0)),
        "accumulate_minimum": (gx.accumulate_minimum(), lambda k, t: stacked[k][: t + 1].amin(0)),
        "accumulate_sum": (gx.accumulate_sum(), lambda k, t: stacked[k][: t + 1].sum(0)),
        "accumulate_mean": (gx.accumulate_mean(), lambda k, t: stacked[k][: t + 1].mean(0)),
        "abs": (gx.abs(), lambda k, t: stacked[k][t].abs()),
        "pow": (gx.pow(3.0), lambda k, t: stacked[k][t] ** 3),
        "sqrt": (gx.chain(gx.abs(), gx.sqrt()), lambda k, t: stacked[k][t].abs().sqrt()),
        "reciprocal": (gx.reciprocal(), lambda k, t: 1 / stacked[k][t]),
        "add": (gx.add(-0.25), lambda k, t: stacked[k][t] - 0.25),
        "debias": (gx.debias(0.7, power=0.5), lambda k, t: stacked[k][t] / (1 - 0.7 ** (t + 1)) ** 0.5),
    }
    for name, (tx, want) in cases.items():
        for inplace in (False, True):
            state = tx.init(gs[0])
            for t, g in enumerate(gs):
                given = {k: x.clone() for k, x in g.items()}
                u, state = tx.update(given, state, inplace=inplace)
                for k in g:
                    torch.testing.assert_close(u[k], want(k, t), rtol=1e-12, atol=1e-14,
                                               msg=lambda m, name=name, t=t: f"{name} step {t}: {m}")
                if not inplace:
                    for k in g:  # the pure path writes into nothing it was given
                        assert torch.equal(given[k], g[k])


def test_blocks_on_complex_act_on_real_and_imaginary_parts():
    """Adam from blocks steps a complex parameter as scale_by_adam does (its real view)."""
    gen = torch.Generator().manual_seed(3)
    params = {"z": torch.randn(4, dtype=torch.complex128, generator=gen)}
    txs = [adam_ways()["spelled_out"], gx.scale_by_adam(B1, B2, EPS)]
    states = [tx.init(params) for tx in txs]
    for _ in range(10):
        g = {"z": torch.randn(4, dtype=torch.complex128, generator=gen)}
        outs = []
        for i, tx in enumerate(txs):
            u, states[i] = tx.update(g, states[i], params)
            outs.append(u["z"])
        torch.testing.assert_close(outs[0], outs[1], rtol=1e-12, atol=1e-14)


def test_blocks_refuse_bad_arguments_naming_them():
    with pytest.raises(ValueError, match="beta"):
        gx.debias(1.0)
    with pytest.raises(ValueError, match="decay"):
        gx.ema_squared(-0.1)
    with pytest.raises(ValueError, match="exponent"):
        gx.pow(float("nan"))
    with pytest.raises(ValueError, match="constant"):
        gx.add("1")
