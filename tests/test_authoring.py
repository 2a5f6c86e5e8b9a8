"""The authoring helpers: ``gx.per_tensor``, ``gx.stateless_with_tree_map``, ``gx.multi_tensor``,
``gx.foreach``, and the repr of a hand-written transform.

Expected values are closed forms written here (heavy ball, L2 decay, debiased EMA) or
``torch.optim.SGD``; the guide's Adams are checked against Adam in test_guides.py.
"""

from __future__ import annotations

import io
import pathlib
import re
from typing import NamedTuple

import pytest
import torch

import gradtx as gx
from gradtx import _foreach
from gradtx._tree import tree_structure


def _tree(dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return {"enc": {"w": torch.randn(3, 2, generator=gen, dtype=dtype)},
            "dec": [torch.randn((), generator=gen, dtype=dtype), torch.randn(4, generator=gen, dtype=dtype)]}


def _grads(tree, step):
    return gx.tree_map(lambda x: torch.cos(x + step), tree)


def _heavy_ball_update(g, m, p, *, beta):
    m = beta * m + g
    return m, m


# --- per_tensor ---------------------------------------------------------------------------


def test_per_tensor_loops_the_rule_and_keeps_state_shaped_like_params():
    tx = gx.per_tensor(torch.zeros_like, _heavy_ball_update, beta=0.7)
    params = _tree()
    state = tx.init(params)
    assert tree_structure(state.per_tensor) == tree_structure(params)
    assert state.hyperparams._fields == ("beta",)
    assert state.hyperparams.beta.dtype == torch.float64 and state.hyperparams.beta.dim() == 0
    momentum = gx.tree_map(torch.zeros_like, params)
    for step in range(4):
        grads = _grads(params, step)
        updates, state = tx.update(grads, state, params)
        momentum = gx.tree_map(lambda m, g: 0.7 * m + g, momentum, grads)  # heavy ball, closed form
        for got, want in zip(gx.tree_leaves(updates), gx.tree_leaves(momentum)):
            torch.testing.assert_close(got, want, rtol=1e-15, atol=0)
        for got, want in zip(gx.tree_leaves(state.per_tensor), gx.tree_leaves(momentum)):
            torch.testing.assert_close(got, want, rtol=1e-15, atol=0)
    assert int(state.count) == 4


def test_step_counts_updates_from_one_and_is_shared_by_all_tensors():
    seen = []

    def update_fn(g, s, p, *, step):
        seen.append(step)
        return g, s

    tx = gx.per_tensor(lambda p: (), update_fn)
    params = _tree()
    state = tx.init(params)
    for step in range(3):
        _, state = tx.update(_grads(params, step), state, params)
    assert [int(s) for s in seen] == [1] * 3 + [2] * 3 + [3] * 3
    assert all(s.dtype == torch.int32 and s.dim() == 0 for s in seen)


def test_a_schedule_hyperparameter_is_read_at_the_count_before_the_update_and_not_kept():
    # optax's convention, and every built-in's: the k-th update (from 0) reads schedule(k), so
    # a rule written with per_tensor and gx.scale_by_lr(schedule) take the same learning rates
    schedule = gx.linear_schedule(1.0, 0.0, 4)
    tx = gx.per_tensor(lambda p: (), lambda g, s, p, *, lr: (-lr * g, s), lr=schedule)
    builtin = gx.scale_by_lr(schedule)
    params = {"w": torch.ones(2, dtype=torch.float64)}
    state, builtin_state = tx.init(params), builtin.init(params)
    assert state.hyperparams._fields == ()
    for k, lr in enumerate([1.0, 0.75, 0.5, 0.25, 0.0, 0.0]):
        grads = {"w": torch.full((2,), float(k + 1), dtype=torch.float64)}
        updates, state = tx.update(grads, state, params)
        expected, builtin_state = builtin.update(grads, builtin_state, params)
        torch.testing.assert_close(updates["w"], torch.full((2,), -lr * (k + 1), dtype=torch.float64))
        torch.testing.assert_close(updates["w"], expected["w"])


def test_extra_arguments_reach_update_fn_by_name_and_grad_per_tensor():
    def update_fn(g, s, p, *, grad, value):
        return g + 10 * grad + value, s

    tx = gx.per_tensor(lambda p: (), update_fn)
    params = _tree()
    grads, raw = _grads(params, 0), _grads(params, 1)
    updates, _ = tx.update(grads, tx.init(params), params, grad=raw, value=torch.tensor(0.5), other=3)
    for u, g, r in zip(gx.tree_leaves(updates), gx.tree_leaves(grads), gx.tree_leaves(raw)):
        torch.testing.assert_close(u, g + 10 * r + 0.5)
    # a rule that names none of them gets none (no TypeError), one with **kwargs gets all
    plain = gx.per_tensor(lambda p: (), lambda g, s, p: (g, s))
    plain.update(grads, plain.init(params), params, grad=raw, value=1.0, inplace=True)
    got = {}
    anything = gx.per_tensor(lambda p: (), lambda g, s, p, **kw: (got.update(kw), (g, s))[1])
    anything.update(grads, anything.init(params), params, value=1.0, other=3)
    assert set(got) == {"step", "value", "other"}


def test_without_params_the_rule_gets_none_and_none_updates_are_refused():
    def update_fn(g, m, p):
        assert p is None
        return g + m, m + 1

    tx = gx.per_tensor(torch.zeros_like, update_fn)
    params = {"a": torch.zeros(2), "b": torch.zeros(3)}
    state = tx.init(params)
    updates, state = tx.update({"a": torch.ones(2), "b": torch.ones(3)}, state)
    assert torch.equal(state.per_tensor["a"], torch.ones(2)) and torch.equal(updates["b"], torch.ones(3))
    with pytest.raises(ValueError, match=r"None leaf at \['b'\]"):  # as every transform: gx.masked leaves one out
        tx.update({"a": torch.ones(2), "b": None}, state)


def test_updates_and_state_keep_their_dtypes():
    # bfloat16 gradients on float32 params: the rule's arithmetic promotes, the helper does not
    tx = gx.per_tensor(torch.zeros_like, lambda g, m, p: (g.double() + m, (m + g).double()))
    params = {"w": torch.ones(3)}
    state = tx.init(params)
    updates, state = tx.update({"w": torch.ones(3, dtype=torch.bfloat16)}, state, params)
    assert updates["w"].dtype == torch.bfloat16
    assert state.per_tensor["w"].dtype == torch.float32
    lists = gx.multi_tensor(lambda ps: (), lambda gs, s, ps: ([g.double() for g in gs], s))
    updates, _ = lists.update({"w": torch.ones(3, dtype=torch.bfloat16)}, (), params)
    assert updates["w"].dtype == torch.bfloat16


def test_per_tensor_under_the_optimizer_matches_torch_sgd_with_group_hyperparameters():
    """Heavy ball written per tensor with ``beta`` a hyperparameter: under gx.Optimizer
    ``beta`` is a group key (here overridden in one group), per-parameter state is filed under
    each parameter, and a checkpoint read with weights_only=True resumes the same run."""

    def update_fn(g, m, p, *, lr, beta):
        m = beta * m + g
        return -lr * m, m

    def build():
        return gx.per_tensor(torch.zeros_like, update_fn, lr=0.05, beta=0.9)

    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(s, generator=gen, dtype=torch.float64) for s in [(3, 2), (2,), (4,), ()]]
    mine = [x.clone().requires_grad_(True) for x in init]
    ref = [x.clone().requires_grad_(True) for x in init]
    def groups():  # the second group with its own beta
        return [{"params": mine[:2]}, {"params": mine[2:], "beta": 0.5}]

    opt = gx.Optimizer(groups(), build(), fast=False)
    torch_opt = torch.optim.SGD([{"params": ref[:2]}, {"params": ref[2:], "momentum": 0.5}], lr=0.05, momentum=0.9)
    assert opt.param_groups[0]["beta"] == 0.9 and opt.param_groups[1]["beta"] == 0.5
    assert opt.param_groups[0]["lr"] == 0.05
    for step in range(20):
        for p, q in zip(mine, ref):
            p.grad = torch.sin(p.detach() * (step + 1))
            q.grad = torch.sin(q.detach() * (step + 1))
        if step == 10:
            buffer = io.BytesIO()
            torch.save(opt.state_dict(), buffer)
            buffer.seek(0)
            opt = gx.Optimizer(groups(), build(), fast=False)
            opt.load_state_dict(torch.load(buffer, weights_only=True))
        opt.step()
        torch_opt.step()
    for p, q in zip(mine, ref):
        torch.testing.assert_close(p, q, rtol=1e-13, atol=1e-15)
    for p in mine:
        (entry,) = opt.state[p].values()
        assert entry.shape == p.shape


def test_per_tensor_bad_arguments_raise_value_error_naming_them():
    with pytest.raises(ValueError, match="hyperparameter beta.*takes no keyword 'beta'"):
        gx.per_tensor(torch.zeros_like, lambda g, m, p: (g, m), beta=0.9)
    with pytest.raises(ValueError, match="cannot be called 'step'"):
        gx.per_tensor(torch.zeros_like, lambda g, m, p, **kw: (g, m), step=1)
    with pytest.raises(ValueError, match="beta must be a number"):
        gx.per_tensor(torch.zeros_like, _heavy_ball_update, beta="0.9")
    with pytest.raises(ValueError, match="init_fn must be a function"):
        gx.per_tensor(None, _heavy_ball_update, beta=0.9)
    with pytest.raises(ValueError, match="init_fn <lambda> must return a tensor or a tree of tensors"):
        gx.per_tensor(lambda p: 0, lambda g, s, p: (g, s)).init({"w": torch.ones(2)})
    changes = gx.per_tensor(lambda p: (torch.zeros_like(p),), lambda g, s, p: (g, s + (g,)))
    with pytest.raises(ValueError, match="update_fn <lambda> returned a state of structure"):
        changes.update({"w": torch.ones(2)}, changes.init({"w": torch.ones(2)}))


# --- stateless_with_tree_map ---------------------------------------------------------------


def test_stateless_with_tree_map_applies_fn_per_tensor():
    tx = gx.stateless_with_tree_map(lambda g, p: g + 0.5 * p if p is not None else 2 * g)
    params = _tree()
    grads = _grads(params, 0)
    state = tx.init(params)
    assert state == gx.EmptyState()
    updates, _ = tx.update(grads, state, params)
    for u, g, p in zip(gx.tree_leaves(updates), gx.tree_leaves(grads), gx.tree_leaves(params)):
        torch.testing.assert_close(u, g + 0.5 * p)
    updates, _ = tx.update(grads, state)  # no params: fn gets None
    for u, g in zip(gx.tree_leaves(updates), gx.tree_leaves(grads)):
        torch.testing.assert_close(u, 2 * g)
    half = {"w": torch.ones(2, dtype=torch.bfloat16), "b": torch.ones(1)}
    updates, _ = tx.update(half, state, {"w": torch.ones(2), "b": torch.ones(1)})
    assert updates["w"].dtype == torch.bfloat16 and updates["b"].dtype == torch.float32


# --- multi_tensor -------------------------------------------------------------------------


class EmaState(NamedTuple):
    count: torch.Tensor
    decay: torch.Tensor  # a hyperparameter
    ema: list  # one per tensor
    pairs: list  # one (tensor, tensor) per tensor
    shared: tuple  # shared by all tensors, not per tensor


def _ema(decay=0.8, log=None):
    """Debiased EMA over lists, in place when allowed: ``m <- d m + (1-d) g``, ``u <- m / (1-d^t)``."""

    def init_fn(params):
        return EmaState(torch.zeros((), dtype=torch.int32), torch.tensor(decay, dtype=torch.float64),
                        gx.foreach.zeros_like(params), [(torch.zeros(()), torch.ones(())) for _ in params],
                        (torch.ones(()), torch.zeros(())))

    def update_fn(gs, state, params, *, inplace=False, grad=None):
        if log is not None:
            log.append({"gs": gs, "params": params, "grad": grad, "inplace": inplace, "ema": state.ema})
        count = state.count + 1
        ema = gx.foreach.lerp(state.ema, gs, 1 - state.decay.item(), inplace=inplace)
        out = gx.foreach.div(ema, 1 - state.decay ** count.double())
        return out, EmaState(count, state.decay, ema, state.pairs, state.shared)

    return gx.multi_tensor(init_fn, update_fn)


def test_multi_tensor_gives_lists_and_keeps_them_as_trees_shaped_like_params():
    log = []
    tx = _ema(0.8, log)
    params = _tree()
    state = tx.init(params)
    assert tree_structure(state.ema) == tree_structure(params)
    assert tree_structure(state.pairs) == tree_structure(gx.tree_map(lambda p: (p, p), params))
    assert len(state.shared) == 2 and state.shared[0].dim() == 0
    ema = gx.tree_map(torch.zeros_like, params)
    for step in range(1, 5):
        grads = _grads(params, step)
        raw = _grads(params, -step)
        updates, state = tx.update(grads, state, params, grad=raw)
        ema = gx.tree_map(lambda m, g: 0.8 * m + 0.2 * g, ema, grads)  # closed form
        for got, want in zip(gx.tree_leaves(updates), gx.tree_leaves(ema)):
            torch.testing.assert_close(got, want / (1 - 0.8**step), rtol=1e-14, atol=0)
        assert tree_structure(state.ema) == tree_structure(params)
    call = log[-1]
    assert isinstance(call["gs"], list) and isinstance(call["ema"], list) and isinstance(call["params"], list)
    assert [p is q for p, q in zip(call["params"], gx.tree_leaves(params))] == [True] * 3
    assert all(torch.equal(g, r) for g, r in zip(call["grad"], gx.tree_leaves(raw)))
    assert call["inplace"] is False


def test_multi_tensor_passes_inplace_only_to_a_rule_that_takes_it():
    log = []
    tx = _ema(0.8, log)
    params = {"w": torch.ones(3)}
    state = tx.init(params)
    given = state.ema["w"]
    tx.update({"w": torch.ones(3)}, state, params, inplace=True)
    assert log[-1]["inplace"] is True
    assert torch.equal(given, torch.full((3,), 0.2))  # written in place, as allowed
    pure = gx.multi_tensor(lambda ps: (), lambda gs, s, ps: (gs, s))
    pure.update({"w": torch.ones(3)}, (), params, inplace=True)  # no TypeError


def test_multi_tensor_under_the_optimizer_steps_subsets_and_checkpoints():
    """Per-tensor lists are filed under their parameters: a parameter without a gradient gets
    no state, one seen late joins, and a checkpoint resumes the uninterrupted run."""

    def run(checkpoint_at=None):
        params = [torch.nn.Parameter(torch.full(s, 1.0, dtype=torch.float64)) for s in [(2, 2), (3,), ()]]
        opt = gx.Optimizer(params, gx.chain(_ema(0.5), gx.scale_by_lr(0.1)), fast=False)
        for step in range(6):
            for i, p in enumerate(params):
                p.grad = None if (i == 2 and step < 3) else torch.full_like(p, float(step + i))
            if step == 1:
                assert params[2] not in opt.state and set(opt.state) == set(params[:2])
            if step == checkpoint_at:
                buffer = io.BytesIO()
                torch.save(opt.state_dict(), buffer)
                buffer.seek(0)
                opt = gx.Optimizer(params, gx.chain(_ema(0.5), gx.scale_by_lr(0.1)), fast=False)
                opt.load_state_dict(torch.load(buffer, weights_only=True))
            opt.step()
        return params, opt

    uninterrupted, opt = run()
    assert sorted(opt.state[uninterrupted[0]]) == ["[0].ema", "[0].pairs[0]", "[0].pairs[1]"]
    assert opt.param_groups[0]["decay"] == 0.5
    resumed, _ = run(checkpoint_at=4)
    for a, b in zip(uninterrupted, resumed):
        assert torch.equal(a, b)
    # closed form for the parameter with gradients 0..5 (i = 0): debiased EMA, d = 0.5
    m, p = 0.0, 1.0
    for t in range(1, 7):
        m = 0.5 * m + 0.5 * (t - 1)
        p -= 0.1 * m / (1 - 0.5**t)
    torch.testing.assert_close(uninterrupted[0], torch.full((2, 2), p, dtype=torch.float64))


def test_multi_tensor_learns_the_layout_without_init_on_this_instance():
    params = {"w": torch.ones(2, dtype=torch.float64)}
    state = _ema(0.5).init(params)
    updates, _ = _ema(0.5).update({"w": torch.ones(2, dtype=torch.float64)}, state, params)
    torch.testing.assert_close(updates["w"], torch.ones(2, dtype=torch.float64))


def test_multi_tensor_bad_states_raise_value_error():
    params = {"a": torch.ones(2), "b": torch.ones(3)}
    with pytest.raises(ValueError, match="each list in the state holds one entry per tensor \\(2\\)"):
        gx.multi_tensor(lambda ps: ([torch.tensor(0.9)] * 3,), lambda gs, s, ps: (gs, s)).init(params)
    with pytest.raises(ValueError, match="init_fn <lambda> must return a tensor or a tree of tensors.*got a leaf 0"):
        gx.multi_tensor(lambda ps: (0, list(ps)), lambda gs, s, ps: (gs, s)).init(params)
    swaps = gx.multi_tensor(lambda ps: (list(ps),), lambda gs, s, ps: (gs, (tuple(s[0]),)))
    with pytest.raises(ValueError, match="other containers than init_fn's"):
        swaps.update(params, swaps.init(params), params)
    drops = gx.multi_tensor(lambda ps: (), lambda gs, s, ps: (gs[:1], s))
    with pytest.raises(ValueError, match="returned 1 updates for 2 tensors"):
        drops.update(params, drops.init(params), params)
    with pytest.raises(ValueError, match="update_fn must be a function"):
        gx.multi_tensor(lambda ps: (), "not a function")


# --- reprs --------------------------------------------------------------------------------


def test_a_bare_transform_names_its_functions_and_points_to_the_decorator():
    def my_momentum():
        def init(params):
            return ()

        def update(updates, state, params=None):
            return updates, state

        return gx.GradientTransformation(init, update)

    assert repr(my_momentum()) == (
        "GradientTransformation(init=test_a_bare_transform_names_its_functions_and_points_to_the_decorator"
        ".<locals>.my_momentum.<locals>.init, update=test_a_bare_transform_names_its_functions_and_points_to_the"
        "_decorator.<locals>.my_momentum.<locals>.update)  # decorate the constructor with @gx.transform for a "
        "readable repr")
    assert repr(gx.transform(my_momentum)()) == "my_momentum()"


def test_helper_reprs_name_the_rule():
    assert repr(gx.per_tensor(torch.zeros_like, _heavy_ball_update, beta=0.9)) == \
        "per_tensor(zeros_like, _heavy_ball_update, beta=0.9)"
    assert repr(gx.stateless_with_tree_map(torch.sign)) == "stateless_with_tree_map(sign)"
    assert repr(_ema()) == "multi_tensor(init_fn, update_fn)"

    @gx.transform(elementwise=True)
    def heavy_ball(beta=0.9):
        return gx.per_tensor(torch.zeros_like, _heavy_ball_update, beta=beta)

    assert repr(heavy_ball(beta=0.8)) == "heavy_ball(beta=0.8)"
    assert gx.is_elementwise(heavy_ball()) and not gx.supports_inplace(heavy_ball())


def test_per_tensor_and_stateless_with_tree_map_are_leafwise_under_any_decorator():
    """A rule written per tensor is leafwise by construction, so gx.Optimizer runs it per param
    group; a decorator that declares nothing does not take that away. multi_tensor is not
    (its rule sees every tensor at once) until declared."""

    @gx.transform
    def heavy_ball(beta=0.9):
        return gx.per_tensor(torch.zeros_like, _heavy_ball_update, beta=beta)

    assert gx.is_leafwise(gx.per_tensor(torch.zeros_like, _heavy_ball_update, beta=0.9))
    assert gx.is_leafwise(heavy_ball()) and not gx.is_elementwise(heavy_ball())
    assert gx.is_leafwise(gx.stateless_with_tree_map(torch.sign))
    assert not gx.is_leafwise(_ema())
    assert gx.is_leafwise(gx.transform(leafwise=True)(_ema)())


# --- gx.foreach ---------------------------------------------------------------------------


def test_foreach_is_the_builtins_kernels_and_documented():
    from gradtx.transforms import _common

    for name in gx.foreach.__all__:
        fn = getattr(gx.foreach, name)
        assert fn is getattr(_foreach, name, None) or fn is getattr(_common, name), name
        assert (fn.__doc__ or "").strip(), f"gx.foreach.{name} has no docstring"
    api = (pathlib.Path(__file__).parent.parent / "docs" / "api.md").read_text()
    documented = set(re.findall(r"^\| \[`foreach\.([A-Za-z_][A-Za-z0-9_]*)`\]", api, re.M))
    assert documented == set(gx.foreach.__all__), "run python docs/make_api.py"
