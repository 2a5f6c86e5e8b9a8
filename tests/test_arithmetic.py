"""Branching combinators (gx.sum_of, difference, product, ratio, lerp, copysign, graft): each
branch sees the same update and keeps its own state; the result is the closed-form
combination of the branches run alone. Ownership: optax-style branches that return or keep
their state are never written into."""

from __future__ import annotations

from typing import NamedTuple

import pytest
import torch
from conftest import assert_resume_bit_exact, leaf_copy

import gradtx as gx

F64 = torch.float64


def _tree(seed, dtype=F64):
    gen = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(4, 3, generator=gen, dtype=dtype), "b": torch.randn(3, generator=gen, dtype=dtype),
            "s": torch.randn((), generator=gen, dtype=dtype)}


class _SumState(NamedTuple):
    total: dict


def optax_style_running_sum() -> gx.GradientTransformation:
    """An undeclared (optax-style) transform returning its own state tensors as the update."""

    def init(params):
        return _SumState({k: torch.zeros_like(v) for k, v in params.items()})

    def update(updates, state, params=None):
        total = {k: state.total[k] + u for k, u in updates.items()}
        return total, _SumState(total)

    return gx.GradientTransformation(init, update)


def _alone(tx, steps, params):
    """The updates ``tx`` gives by itself, step by step."""
    state = tx.init(params)
    out = []
    for t in range(steps):
        u, state = tx.update(_tree(50 + t), state, params)
        out.append(u)
    return out


CASES = {
    "sum_of": (lambda a, b: gx.sum_of(a, b, gx.scale(0.5)), lambda x, y, g: x + y + 0.5 * g),
    "difference": (gx.difference, lambda x, y, g: x - y),
    "product": (lambda a, b: gx.product(a, b), lambda x, y, g: x * y),
    "ratio": (lambda a, b: gx.ratio(a, b, eps=0.1), lambda x, y, g: x / (y + 0.1)),
    "lerp": (lambda a, b: gx.lerp(a, b, 0.3), lambda x, y, g: x + 0.3 * (y - x)),
    "copysign": (gx.copysign, lambda x, y, g: torch.copysign(x, y)),
}


def _branches():
    # stateful branches of each kind: declared (ema, trace) and an optax-style one
    return [(lambda: gx.ema(0.8), lambda: gx.trace(0.5)),
            (lambda: optax_style_running_sum(), lambda: gx.scale_by_adam()),
            (lambda: gx.scale_by_rms(0.9), lambda: optax_style_running_sum())]


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("inplace", [False, True])
def test_combination_of_branches_is_the_closed_form(name, inplace):
    """10 float64 steps: the combinator's update is the closed form of the branches' updates
    run alone (to 1e-12), on the pure and the in-place path, with declared and optax-style
    branches; the pure path writes into nothing it is given."""
    build, closed = CASES[name]
    params = _tree(0)
    for make_a, make_b in _branches():
        ua, ub = _alone(make_a(), 10, params), _alone(make_b(), 10, params)
        tx = build(make_a(), make_b())
        state = tx.init(params)
        for t in range(10):
            g = _tree(50 + t)
            given = {k: x.clone() for k, x in g.items()}
            u, state = tx.update(given, state, params, inplace=inplace)
            for k in g:
                torch.testing.assert_close(u[k], closed(ua[t][k], ub[t][k], g[k]), rtol=1e-12, atol=1e-14)
                if not inplace:
                    assert torch.equal(given[k], g[k])


def test_state_is_the_branches_states():
    tx = gx.ratio(gx.ema(0.9), gx.scale_by_adam())
    state = tx.init(_tree(0))
    assert isinstance(state, gx.BranchesState) and len(state.branches) == 2
    assert isinstance(state.branches[1], type(gx.scale_by_adam().init(_tree(0))))


def test_graft_is_per_tensor_norm_of_one_direction_of_other():
    """graft(m, d)_i = d_i ||m_i|| / ||d_i||, per leaf (Agarwal et al. 2020); checked with the
    rule written here and against torchzero's Graft (tensorwise) on the same branch outputs."""
    params = _tree(0)
    um, ud = _alone(gx.scale_by_adam(), 5, params), _alone(gx.scale_by_sign(), 5, params)
    for inplace in (False, True):
        tx = gx.graft(gx.scale_by_adam(), gx.scale_by_sign())
        state = tx.init(params)
        for t in range(5):
            u, state = tx.update({k: x.clone() for k, x in _tree(50 + t).items()}, state, params, inplace=inplace)
            for k in params:
                want = ud[t][k] * torch.linalg.vector_norm(um[t][k]) / torch.linalg.vector_norm(ud[t][k])
                torch.testing.assert_close(u[k], want, rtol=1e-12, atol=1e-14)
                torch.testing.assert_close(torch.linalg.vector_norm(u[k]), torch.linalg.vector_norm(um[t][k]))
    tz_list = pytest.importorskip("torchzero.utils").TensorList
    m, d = [x.clone() for x in um[0].values()], [x.clone() for x in ud[0].values()]
    want = tz_list(d).graft_(tz_list(m), tensorwise=True, ord=2, eps=1e-16)
    tx = gx.graft(gx.scale_by_adam(), gx.scale_by_sign())
    u, _ = tx.update(_tree(50), tx.init(params), params)
    for got, ref in zip(u.values(), want):
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-14)


def test_branches_get_the_extra_arguments():
    """A gradient-aware branch reads ``grad`` inside a combinator."""
    params = _tree(0)
    g = _tree(5)
    raw = _tree(6)
    tx = gx.sum_of(gx.copy_grad_sign(), gx.identity())
    u, _ = tx.update(g, tx.init(params), params, grad=raw)
    for k in g:
        torch.testing.assert_close(u[k], g[k].abs() * raw[k].sign() + g[k])


def test_declarations_follow_the_branches():
    assert gx.is_elementwise(gx.ratio(gx.ema(0.9), gx.sqrt_ema_squared()))
    assert not gx.is_elementwise(gx.sum_of(gx.ema(0.9), gx.scale_by_trust_ratio()))
    assert gx.is_leafwise(gx.sum_of(gx.ema(0.9), gx.scale_by_trust_ratio()))
    assert not gx.is_leafwise(gx.sum_of(gx.ema(0.9), gx.clip_by_global_norm(1.0)))
    assert not gx.is_elementwise(gx.graft(gx.ema(0.9), gx.scale_by_sign()))
    assert gx.is_leafwise(gx.graft(gx.ema(0.9), gx.scale_by_sign()))
    assert gx.supports_inplace(gx.product(optax_style_running_sum(), gx.ema(0.9)))


def test_under_optimizer_matches_functional_and_round_trips():
    """gx.Optimizer over a combinator chain gives the functional trajectory, and its state_dict
    reloads (torch.load(weights_only=True)) to continue bit-identically."""
    def make():
        return gx.chain(gx.lerp(gx.scale_by_adam(), gx.chain(gx.trace(0.9), gx.scale(0.1)), 0.25),
                        gx.scale_by_lr(1e-2))

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2).double()
    gen = torch.Generator().manual_seed(1)
    xs = [torch.randn(8, 3, generator=gen, dtype=F64) for _ in range(11)]

    def loss(ps, t):
        return torch.func.functional_call(model, ps, (xs[t],)).pow(2).sum()

    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    got = assert_resume_bit_exact(lambda leaves: gx.Optimizer(list(leaves.values()), make()), leaf_copy(params),
                                  loss, steps=11, split=10)
    tx = make()
    state = tx.init(params)
    for t in range(10):
        ps = leaf_copy(params)
        grads = dict(zip(ps, torch.autograd.grad(loss(ps, t), list(ps.values()))))
        u, state = tx.update(grads, state, params)
        params = gx.apply_updates(params, u)
    for n in params:
        torch.testing.assert_close(got[9][n], params[n], rtol=1e-12, atol=1e-14)


def test_bad_arguments_raise_naming_them():
    with pytest.raises(TypeError, match="argument 1"):
        gx.sum_of(gx.ema(0.9), 3.0)
    with pytest.raises(ValueError, match="at least"):
        gx.product()
    with pytest.raises(ValueError, match="weight"):
        gx.lerp(gx.identity(), gx.ema(0.9), float("nan"))
    with pytest.raises(ValueError, match="eps"):
        gx.graft(gx.identity(), gx.ema(0.9), eps=0.0)
