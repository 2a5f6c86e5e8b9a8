"""Param groups mean what torch users mean: one chain over every group, per-group settings
for their group only, keys named so that an override never touches another transform."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from conftest import assert_resume_bit_exact, leaf_copy

import gradtx as gx

STEPS = 20


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)).double()


def _groups(model, **bias_overrides):
    """The usual two groups: weights (decayed) and biases (of a model or a dict by name)."""
    named = list(model.items() if isinstance(model, dict) else model.named_parameters())
    weights = [p for n, p in named if n.endswith("weight")]
    biases = [p for n, p in named if n.endswith("bias")]
    return [{"params": weights}, {"params": biases, **bias_overrides}]


def _data():
    gen = torch.Generator().manual_seed(1)
    return torch.randn(32, 4, generator=gen, dtype=torch.float64), torch.randn(32, 2, generator=gen,
                                                                                dtype=torch.float64)


def _loss(model, x, y):
    return 30 * ((model(x) - y) ** 2).mean()  # large gradients: clipping is active at every step


def _clip_global(params, max_norm):
    """optax's rule, written out: scale every gradient by max_norm / ||g|| when ||g|| > max_norm,
    the norm over all parameters together."""
    grads = [p.grad for p in params]
    norm = torch.sqrt(sum((g ** 2).sum() for g in grads))
    if norm > max_norm:
        for g in grads:
            g.mul_(max_norm / norm)
    return norm


def test_global_norm_clipping_sees_every_group():
    model, twin = _model(), _model()
    opt = gx.Optimizer(_groups(model, weight_decay=0.0),
                       gx.chain(gx.clip_by_global_norm(1.0), gx.adamw(1e-2, weight_decay=0.1)))
    ref = torch.optim.AdamW(_groups(twin, weight_decay=0.0), lr=1e-2, weight_decay=0.1)
    x, y = _data()
    for _ in range(STEPS):
        for m, o in ((model, opt), (twin, ref)):
            o.zero_grad()
            _loss(m, x, y).backward()
        assert _clip_global(list(twin.parameters()), 1.0) > 1.0
        opt.step()
        ref.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_global_norm_clipping_matches_torch_clip_grad_norm():
    # torch's clip_grad_norm_ divides by norm + 1e-6: the same to 1e-6 relative
    model, twin = _model(), _model()
    opt = gx.Optimizer(_groups(model), gx.chain(gx.clip_by_global_norm(1.0), gx.adamw(1e-2, weight_decay=0.1)))
    ref = torch.optim.AdamW(_groups(twin), lr=1e-2, weight_decay=0.1)
    x, y = _data()
    for _ in range(STEPS):
        for m, o in ((model, opt), (twin, ref)):
            o.zero_grad()
            _loss(m, x, y).backward()
        torch.nn.utils.clip_grad_norm_(twin.parameters(), 1.0)
        opt.step()
        ref.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_group_override_applies_to_its_group_only_beside_a_global_part():
    model, twin = _model(), _model()
    opt = gx.Optimizer(_groups(model, lr=1e-3), gx.chain(gx.clip_by_global_norm(1.0), gx.adam(1e-2)))
    ref = torch.optim.Adam(_groups(twin, lr=1e-3), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.5)
    ref_sched = torch.optim.lr_scheduler.StepLR(ref, step_size=5, gamma=0.5)
    x, y = _data()
    for _ in range(STEPS):
        for m, o in ((model, opt), (twin, ref)):
            o.zero_grad()
            _loss(m, x, y).backward()
        _clip_global(list(twin.parameters()), 1.0)
        opt.step()
        ref.step()
        sched.step()
        ref_sched.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_a_global_setting_that_groups_disagree_on_is_refused():
    model = _model()
    opt = gx.Optimizer(_groups(model), gx.chain(gx.normalize_by_update_norm(), gx.scale_by_lr(0.1)))
    x, y = _data()
    _loss(model, x, y).backward()
    opt.step()
    # A transform that is not leafwise runs once over all groups: one value for everyone.
    tx = gx.chain(gx.inject_hyperparams(gx.clip_by_global_norm)(max_norm=1.0), gx.adam(1e-2))
    opt = gx.Optimizer(_groups(model), tx)
    assert opt.param_groups[0]["max_norm"] == 1.0
    opt.param_groups[1]["max_norm"] = 2.0
    with pytest.raises(ValueError, match="max_norm.*every group"):
        opt.step()


def test_one_chain_checkpoint_resumes_bit_exact():
    def make(params):
        return gx.Optimizer(_groups(params, weight_decay=0.0, lr=3e-3),
                            gx.chain(gx.clip_by_global_norm(1.0), gx.adamw(1e-2, weight_decay=0.1)))

    model = _model()
    x, y = _data()
    straight = assert_resume_bit_exact(make, leaf_copy(dict(model.named_parameters())),
                                       lambda p, t: _loss(lambda v: torch.func.functional_call(model, p, (v,)), x, y),
                                       steps=10, split=5)
    assert not torch.equal(straight[-1]["0.weight"], model[0].weight)


def test_state_from_another_chain_with_the_same_layout_is_refused():
    model = _model()
    opt = gx.Optimizer(model.parameters(), gx.adam(1e-2))
    x, y = _data()
    _loss(model, x, y).backward()
    opt.step()
    saved = opt.state_dict()
    for other in (gx.adamax(1e-2), gx.yogi(1e-2), gx.radam(1e-2), gx.adabelief(1e-2)):
        target = gx.Optimizer(model.parameters(), other)
        with pytest.raises(ValueError, match="another chain"):
            target.load_state_dict(saved)
    # the same chain with other settings still loads
    gx.Optimizer(model.parameters(), gx.adam(5e-2, b1=0.8)).load_state_dict(saved)


def test_shared_names_get_qualified_keys_and_do_not_move_each_other():
    tx = gx.chain(gx.add_decayed_weights(1e-3), gx.scale_by_adam(), gx.add_decayed_weights(1e-2), gx.scale_by_lr(0.1))
    model = _model()
    opt = gx.Optimizer(_groups(model), tx)
    keys = set(opt.param_groups[0]) - {"params"}
    assert keys == {"lr", "add_decayed_weights.weight_decay", "add_decayed_weights.weight_decay#1",
                    "b1", "b2", "betas", "eps", "eps_root"}  # scale_by_adam's settings, unshared
    # overriding one leaves the other as it was: the second decay is the only one
    twin = copy.deepcopy(model)
    for group in opt.param_groups:
        group["add_decayed_weights.weight_decay"] = 0.0
    ref = gx.Optimizer(_groups(twin), gx.chain(gx.scale_by_adam(), gx.add_decayed_weights(1e-2), gx.scale_by_lr(0.1)))
    x, y = _data()
    for m, o in ((model, opt), (twin, ref)):
        for _ in range(3):
            o.zero_grad()
            _loss(m, x, y).backward()
            o.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_named_chain_and_partition_names_scope_the_keys():
    tx = gx.named_chain(("l2", gx.add_decayed_weights(1e-3)), ("adam", gx.adamw(1e-3, weight_decay=0.1)))
    opt = gx.Optimizer(_model().parameters(), tx)
    assert {"l2.weight_decay", "add_decayed_weights.weight_decay", "lr"} <= set(opt.param_groups[0])
    tx = gx.partition({"a": gx.adamw(1e-3, weight_decay=0.1), "b": gx.adamw(1e-2, weight_decay=0.0)},
                      lambda name, p: "a" if p.dim() > 1 else "b")
    opt = gx.Optimizer(_model().named_parameters(), tx)
    settings = {f"{label}.{name}" for label in "ab" for name in ("b1", "b2", "eps", "eps_root")}
    assert {"a.weight_decay", "b.weight_decay", "lr"} | settings == set(opt.param_groups[0]) - {"params", "param_names"}


def test_a_key_nothing_reads_is_warned_about():
    with pytest.warns(UserWarning, match=r"\['lrr'\].*no transform"):
        gx.Optimizer([{"params": _model().parameters(), "lrr": 0.1}], gx.adam(1e-3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gx.Optimizer([{"params": _model().parameters(), "lr": 0.1, "name": "all"}], gx.adam(1e-3))


def test_lr_schedule_and_torch_scheduler_conflict_is_explained():
    model = _model()
    opt = gx.Optimizer(model.parameters(), gx.adam(gx.linear_schedule(1e-2, 0.0, 100)))
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)  # needs the 'lr' key
    x, y = _data()
    _loss(model, x, y).backward()
    opt.step()
    sched.step()
    with pytest.raises(ValueError, match="gradtx schedule"):
        opt.step()


@pytest.mark.parametrize("tx", [gx.scale_by_adam(1e-3), gx.chain(), gx.chain(gx.scale_by_adam(), gx.scale(1e-3))],
                         ids=["no_lr", "empty", "positive_scale"])
def test_uphill_first_step_is_warned_about(tx):
    model = _model()
    opt = gx.Optimizer(model.parameters(), tx)
    x, y = _data()
    _loss(model, x, y).backward()
    with pytest.warns(UserWarning, match="uphill"):
        opt.step()


def test_descent_is_quiet_and_the_check_can_be_turned_off():
    model = _model()
    x, y = _data()
    _loss(model, x, y).backward()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gx.Optimizer(model.parameters(), gx.adam(1e-3)).step()
        gx.Optimizer(model.parameters(), gx.scale(1e-3), check_descent=False).step()


@pytest.mark.parametrize("direction", [1.0, 1j, 1 - 2j])
def test_the_uphill_check_uses_the_real_inner_product_on_complex_params(direction):
    """For a complex parameter the slope of a step ``u`` is ``Re <g, u>``: a step along the
    gradient warns and one against it is quiet, whatever the gradient's phase (the imaginary
    parts count), and no ComplexWarning is raised on the way."""
    for dtype in (torch.complex64, torch.complex128):
        p = torch.nn.Parameter(torch.tensor([0.5 - 0.25j, -1.0 + 2.0j], dtype=dtype))
        p.grad = direction * torch.tensor([1.0j, -0.5j], dtype=dtype)  # purely imaginary when direction is 1
        with pytest.warns(UserWarning, match="uphill") as record:
            gx.Optimizer([p], gx.scale(1e-3)).step()
        assert not [w for w in record if "imaginary" in str(w.message) or "Complex" in type(w.message).__name__]
        p.grad = direction * torch.tensor([1.0j, -0.5j], dtype=dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            gx.Optimizer([p], gx.sgd(1e-3)).step()
