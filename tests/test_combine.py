"""masked, partition / multi_transform, freeze: against the inner transforms run on the
selected leaves alone, and through gx.Optimizer against torch.optim param groups."""

from __future__ import annotations

import pytest
import torch

import gradtx as gx


def _params():
    gen = torch.Generator().manual_seed(0)
    return {"enc": {"weight": torch.randn(4, 3, generator=gen, dtype=torch.float64),
                    "bias": torch.randn(3, generator=gen, dtype=torch.float64)},
            "dec": {"weight": torch.randn(3, 2, generator=gen, dtype=torch.float64),
                    "bias": torch.randn(2, generator=gen, dtype=torch.float64)}}


def _grads(params, step):
    gen = torch.Generator().manual_seed(100 + step)
    return gx.tree_map(lambda p: torch.randn(p.shape, generator=gen, dtype=p.dtype) + 0.3 * p, params)


def _flat(tree):
    return dict(zip(gx.leaf_names(tree), gx.tree_leaves(tree)))


def _run(tx, params, steps=5):
    """Functional run; returns the list of update trees (as {dotted name: tensor})."""
    state = tx.init(params)
    out = []
    for step in range(steps):
        updates, state = tx.update(_grads(params, step), state, params)
        out.append(_flat(updates))
        params = gx.apply_updates(params, updates)
    return out


def _run_reference(selected: dict[str, object], params, steps=5):
    """Each transform of ``selected`` ({name-set: tx}) run alone on its own leaves, the leaves
    of no set passed through; the params evolve with all updates."""
    flat = _flat(params)
    states = {names: tx.init({n: flat[n] for n in names}) for names, tx in selected.items()}
    out = []
    for step in range(steps):
        grads = _flat(_grads(params, step))
        updates = dict(grads)
        for names, tx in selected.items():
            sub, states[names] = tx.update({n: grads[n] for n in names}, states[names], {n: flat[n] for n in names})
            updates.update(sub)
        out.append(updates)
        flat = {n: flat[n] + updates[n] for n in flat}
        params = _nest(flat)
    return out


def _nest(flat):
    tree: dict = {}
    for name, x in flat.items():
        outer, inner = name.split(".")
        tree.setdefault(outer, {})[inner] = x
    return tree


def _assert_same(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert set(g) == set(w)
        for name in g:
            torch.testing.assert_close(g[name], w[name], rtol=1e-13, atol=1e-15, msg=name)


BIASES = ("enc.bias", "dec.bias")
ENCODER = ("enc.weight", "enc.bias")

MASKS = {
    "bool_tree": ({"enc": {"weight": False, "bias": True}, "dec": {"weight": False, "bias": True}}, BIASES),
    "prefix_tree": ({"enc": True, "dec": False}, ENCODER),
    "params_callable": (lambda p: gx.tree_map(lambda x: x.dim() == 1, p), BIASES),
    "name_predicate": (lambda name, p: name.startswith("enc"), ENCODER),
    "glob_suffix": ("*.bias", BIASES),
    "glob_prefix": ("enc.*", ENCODER),
    "all_true": (True, ("enc.weight", "enc.bias", "dec.weight", "dec.bias")),
    "all_false": (False, ()),
}


@pytest.mark.parametrize("form", list(MASKS))
def test_masked_equals_inner_on_masked_leaves_alone(form):
    mask, names = MASKS[form]
    params = _params()
    got = _run(gx.masked(gx.adam(0.1), mask), params)
    want = _run_reference({names: gx.adam(0.1)} if names else {}, params)
    _assert_same(got, want)


def test_masked_state_covers_only_masked_leaves():
    params = _params()
    state = gx.masked(gx.scale_by_adam(), "*.bias").init(params)
    assert isinstance(state, gx.MaskedState)
    mu = gx.tree_get(state, "mu")
    assert [tuple(x.shape) for x in gx.tree_leaves(mu)] == [(3,), (2,)]


def test_masked_extra_args():
    seen = {}

    def probe():
        def update(updates, state, params=None, *, inplace=False, **extra):
            seen.update(extra)
            return updates, state
        return gx.GradientTransformation(lambda p: gx.EmptyState(), update)

    params = _params()
    grads = _grads(params, 0)
    for compatible in (False, True):
        seen.clear()
        tx = gx.masked(probe(), "*.bias", mask_compatible_extra_args=compatible)
        tx.update(grads, tx.init(params), params, grad=grads, value=torch.tensor(1.0))
        n_grad = len(gx.tree_leaves(seen["grad"]))
        assert n_grad == (2 if compatible else 4)
        assert float(seen["value"]) == 1.0


def test_partition_equals_each_transform_on_its_leaves():
    params = _params()
    transforms = {"adam": gx.adam(0.05), "sgd": gx.sgd(0.1, momentum=0.9), "unused": gx.adam(1.0)}
    labels = {"enc": {"weight": "adam", "bias": "sgd"}, "dec": {"weight": "adam", "bias": "sgd"}}
    want = _run_reference({("enc.weight", "dec.weight"): gx.adam(0.05), BIASES: gx.sgd(0.1, momentum=0.9)}, params)
    for form in (labels, lambda p: labels, lambda name, p: "sgd" if name.endswith("bias") else "adam"):
        _assert_same(_run(gx.partition(transforms, form), params), want)
    state = gx.partition(transforms, labels).init(params)
    assert isinstance(state, gx.PartitionState) and set(state.inner_states) == {"adam", "sgd", "unused"}
    assert gx.tree_leaves(state.inner_states["unused"]) != []  # count etc. but no per-leaf moments
    assert gx.tree_get_all(state.inner_states["unused"], "mu") == [{"enc": {"weight": gx.MaskedNode(),
                                                                            "bias": gx.MaskedNode()},
                                                                    "dec": {"weight": gx.MaskedNode(),
                                                                            "bias": gx.MaskedNode()}}]


def test_multi_transform_is_partition():
    params = _params()
    transforms = {"a": gx.adam(0.05), "b": gx.sgd(0.1)}
    labels = {"enc": "a", "dec": "b"}
    _assert_same(_run(gx.multi_transform(transforms, labels), params),
                 _run(gx.partition(transforms, labels), params))


def test_freeze_zeroes_masked_leaves():
    params = _params()
    got = _run(gx.chain(gx.adam(0.1), gx.freeze("enc.*")), params, steps=4)
    want = _run_reference({("dec.weight", "dec.bias"): gx.adam(0.1)}, params, steps=4)
    for g, w in zip(got, want):
        for name in ENCODER:
            assert torch.count_nonzero(g[name]) == 0
        for name in ("dec.weight", "dec.bias"):
            torch.testing.assert_close(g[name], w[name], rtol=1e-13, atol=1e-15)


def test_bad_masks_and_labels_raise_naming_the_argument():
    params = _params()
    with pytest.raises(ValueError, match="mask"):
        gx.masked(gx.adam(0.1), 3)
    with pytest.raises(ValueError, match="mask"):
        gx.masked(gx.adam(0.1), {"enc": "yes", "dec": False})
    with pytest.raises(ValueError, match="mask"):
        gx.masked(gx.adam(0.1), {"encoder": True}).init(params)
    with pytest.raises(ValueError, match="mask"):
        gx.freeze(torch.ones(3))
    with pytest.raises(TypeError, match="inner"):
        gx.masked(lambda g: g, True)
    with pytest.raises(ValueError, match="param_labels"):
        gx.partition({"a": gx.adam(0.1)}, {"enc": "a", "dec": "b"})
    with pytest.raises(ValueError, match="param_labels"):
        gx.partition({"a": gx.adam(0.1)}, lambda name, p: "b").init(params)
    with pytest.raises(ValueError, match="transforms"):
        gx.partition({0: gx.adam(0.1)}, {"enc": 0, "dec": 0})
    with pytest.raises(ValueError, match="transforms"):
        gx.partition({}, "a")


def test_repr_of_a_combinator():
    text = repr(gx.masked(gx.adam(1e-3), "*.bias"))
    assert text.startswith("masked(inner=adam(lr=0.001) = chain(")
    assert "scale_by_adam(" in text and "scale_by_lr(lr=0.001)" in text and "mask='*.bias'" in text
    text = repr(gx.partition({"a": gx.sgd(0.1), "b": gx.scale(2.0)}, {"x": "a"}))
    assert text.startswith("partition(transforms={") and "sgd(lr=0.1)" in text and "scale(" in text


# --- through gx.Optimizer with parameter names ---------------------------------------------------


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double()


def _train(model, opt, steps=60):
    gen = torch.Generator().manual_seed(7)
    for _ in range(steps):
        x = torch.randn(16, 5, generator=gen, dtype=torch.float64)
        y = torch.randn(16, 3, generator=gen, dtype=torch.float64)
        opt.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        opt.step()


def _torch_adamw_reference(lr, wd):
    model = _model()
    decay = [p for n, p in model.named_parameters() if n.endswith("weight")]
    no_decay = [p for n, p in model.named_parameters() if n.endswith("bias")]
    _train(model, torch.optim.AdamW([{"params": decay, "weight_decay": wd},
                                     {"params": no_decay, "weight_decay": 0.0}], lr=lr))
    return model


@pytest.mark.parametrize("how", ["masked_glob_weight", "masked_predicate", "partition_glob_bias", "adamw_mask"])
def test_no_weight_decay_on_biases_by_name_matches_torch_adamw(how):
    lr, wd = 1e-2, 0.1
    if how == "adamw_mask":  # on torch's fused AdamW kernel, once per subset
        tx = gx.adamw(lr, weight_decay=wd, mask="*.weight")
    elif how == "masked_glob_weight":
        tx = gx.chain(gx.scale_by_adam(), gx.masked(gx.add_decayed_weights(wd), "*.weight"), gx.scale_by_lr(lr))
    elif how == "masked_predicate":
        tx = gx.chain(gx.scale_by_adam(), gx.masked(gx.add_decayed_weights(wd), lambda name, p: p.dim() > 1),
                      gx.scale_by_lr(lr))
    else:
        tx = gx.partition({"decay": gx.adamw(lr, weight_decay=wd), "plain": gx.adam(lr)},
                          lambda name, p: "plain" if name.endswith(".bias") else "decay")
    model = _model()
    opt = gx.Optimizer(model.named_parameters(), tx)
    assert (opt._plan is not None) == (how == "adamw_mask")
    _train(model, opt)
    reference = _torch_adamw_reference(lr, wd)
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12, msg=name)


def test_masked_glob_bias_through_the_adapter():
    """masked(..., "*.bias") decays only the biases (the reverse split), as torch param groups."""
    lr, wd = 1e-2, 0.3
    model = _model()
    tx = gx.chain(gx.scale_by_adam(), gx.masked(gx.add_decayed_weights(wd), "*.bias"), gx.scale_by_lr(lr))
    _train(model, gx.Optimizer(model.named_parameters(), tx))
    reference = _model()
    groups = [{"params": [p for n, p in reference.named_parameters() if n.endswith("bias")], "weight_decay": wd},
              {"params": [p for n, p in reference.named_parameters() if n.endswith("weight")], "weight_decay": 0.0}]
    _train(reference, torch.optim.AdamW(groups, lr=lr))
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12)


def test_freeze_by_name_through_the_adapter_and_skipped_params():
    model = _model()
    first = [p.detach().clone() for p in model[0].parameters()]
    model[2].bias.requires_grad_(False)  # never gets a gradient: skipped, the masks still fit
    opt = gx.Optimizer(model.named_parameters(), gx.chain(gx.adam(1e-2), gx.freeze("0.*")))
    _train(model, opt, steps=5)
    for p, p0 in zip(model[0].parameters(), first):
        assert torch.equal(p.detach(), p0)
    assert not torch.equal(model[2].weight.detach(), _model()[2].weight.detach())
    # adam before freeze keeps moments for frozen leaves too (documented); the skipped bias has none
    assert sorted(opt.state_dict()["state"]) == [0, 1, 2]


def test_glob_without_parameter_names_is_refused():
    model = _model()
    opt = gx.Optimizer(model.parameters(), gx.masked(gx.adam(1e-2), "*.bias"))
    with pytest.raises(ValueError, match="named_parameters"):
        _train(model, opt, steps=1)


def test_adamw_mask_glob_matches_torch_adamw():
    lr, wd = 1e-2, 0.1
    model = _model()
    _train(model, gx.Optimizer(model.named_parameters(), gx.adamw(lr, weight_decay=wd, mask="*.weight")))
    for p, q in zip(model.parameters(), _torch_adamw_reference(lr, wd).parameters()):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12)


def test_masked_checkpoint_resume_through_the_adapter(tmp_path):
    """state_dict of a masked chain round-trips (weights_only) and resumes bit for bit."""
    def tx():
        return gx.chain(gx.masked(gx.scale_by_adam(), "*.weight"), gx.scale_by_lr(1e-2))

    straight = _model()
    _train(straight, gx.Optimizer(straight.named_parameters(), tx()), steps=10)
    first = _model()
    opt = gx.Optimizer(first.named_parameters(), tx())
    _train(first, opt, steps=5)
    torch.save({"model": first.state_dict(), "opt": opt.state_dict()}, tmp_path / "ckpt.pt")
    saved = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    resumed = _model(seed=1)
    resumed.load_state_dict(saved["model"])
    opt = gx.Optimizer(resumed.named_parameters(), tx())
    opt.load_state_dict(saved["opt"])
    gen_state = torch.Generator().manual_seed(7)
    for _ in range(5):  # the same batches as steps 0..4 of _train: replay to reach 5..9
        torch.randn(16, 5, generator=gen_state, dtype=torch.float64)
        torch.randn(16, 3, generator=gen_state, dtype=torch.float64)
    for _ in range(5):
        x = torch.randn(16, 5, generator=gen_state, dtype=torch.float64)
        y = torch.randn(16, 3, generator=gen_state, dtype=torch.float64)
        opt.zero_grad()
        ((resumed(x) - y) ** 2).mean().backward()
        opt.step()
    for p, q in zip(resumed.parameters(), straight.parameters()):
        assert torch.equal(p, q)


def test_partition_with_different_learning_rates_through_the_adapter():
    model = _model()
    tx = gx.partition({"adam": gx.adam(1e-3), "sgd": gx.sgd(0.1)},
                      lambda name, p: "sgd" if name.endswith(".bias") else "adam")
    _train(model, gx.Optimizer(model.named_parameters(), tx), steps=10)
    reference = _model()
    named = list(reference.named_parameters())
    adam = torch.optim.Adam([p for n, p in named if not n.endswith(".bias")], lr=1e-3)
    sgd = torch.optim.SGD([p for n, p in named if n.endswith(".bias")], lr=0.1)

    class Both:
        def zero_grad(self):
            adam.zero_grad()
            sgd.zero_grad()

        def step(self):
            adam.step()
            sgd.step()

    _train(reference, Both(), steps=10)
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12)


def test_partition_learning_rates_keep_their_ratio_under_a_scheduler():
    """param_groups shows the first lr; the other keeps its 1:100 ratio when StepLR halves it,
    as two torch optimizers under two StepLRs do."""
    model = _model()
    tx = gx.partition({"adam": gx.adam(1e-3), "sgd": gx.sgd(0.1)},
                      lambda name, p: "sgd" if name.endswith(".bias") else "adam")
    opt = gx.Optimizer(model.named_parameters(), tx)
    assert opt.param_groups[0]["lr"] == 1e-3
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    reference = _model()
    named = list(reference.named_parameters())
    adam = torch.optim.Adam([p for n, p in named if not n.endswith(".bias")], lr=1e-3)
    sgd = torch.optim.SGD([p for n, p in named if n.endswith(".bias")], lr=0.1)
    scheds = [torch.optim.lr_scheduler.StepLR(o, step_size=3, gamma=0.5) for o in (adam, sgd)]
    gen = torch.Generator().manual_seed(7)
    for _ in range(10):
        x = torch.randn(16, 5, generator=gen, dtype=torch.float64)
        y = torch.randn(16, 3, generator=gen, dtype=torch.float64)
        for m, steppers in ((model, [opt]), (reference, [adam, sgd])):
            for o in steppers:
                o.zero_grad()
            ((m(x) - y) ** 2).mean().backward()
            for o in steppers:
                o.step()
        sched.step()
        for s in scheds:
            s.step()
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12)


def test_mask_tree_keyed_by_parameter_index_through_the_adapter():
    """Under gx.Optimizer the params are {index: tensor}: a dict keyed by index is a mask tree,
    and it still fits a step where some parameters have no gradient."""
    model = _model()
    model[0].bias.requires_grad_(False)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = gx.Optimizer(model.parameters(), gx.chain(gx.sgd(0.1), gx.freeze({0: True, 1: False, 2: True, 3: False})))
    _train(model, opt, steps=3)
    after = dict(model.named_parameters())
    assert torch.equal(after["0.weight"], before["0.weight"]) and torch.equal(after["2.weight"], before["2.weight"])
    assert torch.equal(after["0.bias"], before["0.bias"])  # no gradient
    assert not torch.equal(after["2.bias"], before["2.bias"])
