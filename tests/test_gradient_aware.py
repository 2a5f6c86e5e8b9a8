"""Gradient-aware members (cautious, copy_grad_sign, copy_update_sign, orthograd, cosine
similarity, sign-consistency masks) and the weight decay variants, against the papers' rules
written here, pytorch_optimizer and torchzero."""

from __future__ import annotations

import pytest
import torch

import gradtx as gx

F64 = torch.float64


def _tree(seed, dtype=F64):
    gen = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(4, 3, generator=gen, dtype=dtype), "b": torch.randn(3, generator=gen, dtype=dtype),
            "s": torch.randn((), generator=gen, dtype=dtype)}


def _once(tx, updates, params=None, grad=None, inplace=False):
    given = {k: x.clone() for k, x in updates.items()}
    out, _ = tx.update(given, tx.init(updates), params, grad=grad, inplace=inplace)
    if not inplace:
        for k in updates:
            assert torch.equal(given[k], updates[k])
    return out


@pytest.mark.parametrize("inplace", [False, True])
def test_cautious_matches_pytorch_optimizer_apply_cautious(inplace):
    base = pytest.importorskip("pytorch_optimizer.base.optimizer").BaseOptimizer
    u, g = _tree(1), _tree(2)
    out = _once(gx.cautious(), u, grad=g, inplace=inplace)
    for k in u:
        want = u[k].clone()
        base.apply_cautious(want, g[k])
        torch.testing.assert_close(out[k], want, rtol=1e-14, atol=0)
        # the paper's rule written here: mask, rescale by numel / (kept + 1)
        mask = (u[k] * g[k] > 0).to(F64)
        torch.testing.assert_close(out[k], u[k] * mask * mask.numel() / (mask.sum() + 1))


@pytest.mark.parametrize("inplace", [False, True])
def test_grams_and_update_sign(inplace):
    """copy_grad_sign: |u| sign(g) (Grams; pytorch_optimizer.Grams' rule); copy_update_sign:
    |g| sign(u) (torchzero UpdateSign, which uses copysign: equal away from zeros)."""
    u, g = _tree(1), _tree(2)
    g["w"][0, 0] = 0.0
    out = _once(gx.copy_grad_sign(), u, grad=g, inplace=inplace)
    for k in u:
        torch.testing.assert_close(out[k], u[k].abs() * torch.sign(g[k]), rtol=0, atol=0)
    out = _once(gx.copy_update_sign(), u, grad=g, inplace=inplace)
    for k in u:
        torch.testing.assert_close(out[k], g[k].abs() * torch.sign(u[k]), rtol=0, atol=0)


def test_grams_chain_matches_pytorch_optimizer_grams():
    """Adam then copy_grad_sign under gx.Optimizer is pytorch_optimizer.Grams (no weight decay)
    over 30 float64 steps, to 1e-10."""
    grams_cls = pytest.importorskip("pytorch_optimizer").Grams
    torch.manual_seed(0)
    ref_model = torch.nn.Linear(4, 3).double()
    model = torch.nn.Linear(4, 3).double()
    model.load_state_dict(ref_model.state_dict())
    lr = 1e-2
    ref = grams_cls(ref_model.parameters(), lr=lr, betas=(0.9, 0.999), weight_decay=0.0, eps=1e-8)
    opt = gx.Optimizer(model.parameters(), gx.chain(gx.scale_by_adam(0.9, 0.999, 1e-8), gx.copy_grad_sign(),
                                                    gx.scale_by_lr(lr)))
    gen = torch.Generator().manual_seed(1)
    for _ in range(30):
        x = torch.randn(8, 4, generator=gen, dtype=F64)
        for m, o in ((ref_model, ref), (model, opt)):
            o.zero_grad()
            m(x).sin().sum().backward()
            o.step()
    for p, q in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


def _orthograd_rule(u, w, eps=1e-30):
    # Prieto et al. 2025, per tensor, written from the paper
    uf, wf = u.reshape(-1), w.reshape(-1)
    perp = uf - (wf @ uf) / (wf @ wf + eps) * wf
    return (perp * uf.norm() / (perp.norm() + eps)).reshape(u.shape)


@pytest.mark.parametrize("inplace", [False, True])
def test_orthograd_is_the_papers_rule(inplace):
    u, p = _tree(1), _tree(2)
    out = _once(gx.orthograd(), u, params=p, inplace=inplace)
    for k in ("w", "b"):
        torch.testing.assert_close(out[k], _orthograd_rule(u[k], p[k]), rtol=1e-12, atol=1e-14)
        assert abs(float(out[k].reshape(-1) @ p[k].reshape(-1))) < 1e-12  # orthogonal to the weights
        torch.testing.assert_close(out[k].norm(), u[k].norm())
    assert float(out["s"]) == 0.0  # a 0-dim update is parallel to its weight: removed


def test_orthograd_under_optimizer_matches_pytorch_optimizer_orthograd():
    """chain(orthograd, sgd) under gx.Optimizer is pytorch_optimizer.OrthoGrad(SGD), 20 steps."""
    po = pytest.importorskip("pytorch_optimizer")
    torch.manual_seed(0)
    ref_model = torch.nn.Linear(4, 3).double()
    model = torch.nn.Linear(4, 3).double()
    model.load_state_dict(ref_model.state_dict())
    lr = 0.05
    ref = po.OrthoGrad(torch.optim.SGD(ref_model.parameters(), lr=lr))
    opt = gx.Optimizer(model.parameters(), gx.chain(gx.orthograd(), gx.scale_by_lr(lr)))
    gen = torch.Generator().manual_seed(1)
    for _ in range(20):
        x = torch.randn(8, 4, generator=gen, dtype=F64)
        for m, o in ((ref_model, ref), (model, opt)):
            o.zero_grad()
            m(x).sin().sum().backward()
            o.step()
    for p, q in zip(model.parameters(), ref_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


def test_cosine_similarity_scaling():
    """u <- u cos(u, g), the cosine over all leaves (torchzero's rule, written here)."""
    u, g = _tree(1), _tree(2)
    out = _once(gx.scale_by_grad_cosine_similarity(), u, grad=g)
    uf = torch.cat([x.reshape(-1) for x in u.values()])
    gf = torch.cat([x.reshape(-1) for x in g.values()])
    cos = (uf @ gf) / (uf.norm() * gf.norm())
    for k in u:
        torch.testing.assert_close(out[k], u[k] * cos, rtol=1e-12, atol=1e-14)
    # the gradient itself: unchanged
    out = _once(gx.scale_by_grad_cosine_similarity(), g, grad=g)
    for k in g:
        torch.testing.assert_close(out[k], g[k], rtol=1e-12, atol=1e-14)


def test_sign_consistency_masks():
    tx = gx.sign_consistency_mask()
    gs = [_tree(10 + t) for t in range(4)]
    state = tx.init(gs[0])
    prev = {k: torch.zeros_like(x) for k, x in gs[0].items()}
    for g in gs:
        out, state = tx.update(g, state)
        for k in g:
            assert torch.equal(out[k], (g[k] * prev[k] > 0).to(F64))
        prev = g
    u, g = _tree(1), _tree(2)
    out = _once(gx.sign_consistency_mask("grad"), u, grad=g)
    for k in u:
        assert torch.equal(out[k], (u[k] * g[k] > 0).to(F64))
    with pytest.raises(ValueError, match="against"):
        gx.sign_consistency_mask("nope")


def test_missing_grad_is_a_clear_error():
    u = _tree(1)
    with pytest.raises(ValueError, match="cautious needs the raw gradient"):
        gx.cautious().update(u, gx.EmptyState(), None)


def test_inside_masked_the_gradient_is_that_of_the_leaves_seen():
    """With or without mask_compatible_extra_args, a gradient-aware member inside masked
    compares each leaf it sees with the gradient of the same leaf."""
    u, g = _tree(1), _tree(2)
    for compatible in (False, True):
        tx = gx.masked(gx.copy_grad_sign(), lambda p: {"w": True, "b": False, "s": True},
                       mask_compatible_extra_args=compatible)
        out, _ = tx.update(u, tx.init(u), u, grad=g)
        torch.testing.assert_close(out["w"], u["w"].abs() * g["w"].sign())
        torch.testing.assert_close(out["s"], u["s"].abs() * g["s"].sign())
        assert torch.equal(out["b"], u["b"])
    tx = gx.partition({"c": gx.cautious(), "i": gx.identity()}, lambda name, p: "c" if p.dim() > 1 else "i")
    out, _ = tx.update(u, tx.init(u), u, grad=g)
    want = _once(gx.cautious(), {"w": u["w"]}, grad={"w": g["w"]})["w"]
    torch.testing.assert_close(out["w"], want)


def test_under_optimizer_grad_is_the_raw_gradient_in_any_position():
    """In gx.Optimizer, cautious after Adam masks by the raw gradient (.grad), not by its input."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3).double()
    params = {str(i): p.detach().clone() for i, p in enumerate(model.parameters())}
    make = lambda: gx.chain(gx.scale_by_adam(), gx.cautious(), gx.scale_by_lr(1e-2))  # noqa: E731
    opt = gx.Optimizer(model.parameters(), make())
    tx = make()
    state = tx.init(params)
    gen = torch.Generator().manual_seed(1)
    for _ in range(10):
        x = torch.randn(8, 4, generator=gen, dtype=F64)
        opt.zero_grad()
        model(x).sin().sum().backward()
        grads = {str(i): p.grad.clone() for i, p in enumerate(model.parameters())}
        opt.step()
        u, state = tx.update(grads, state, params, grad=grads)
        params = gx.apply_updates(params, u)
    for i, p in enumerate(model.parameters()):
        torch.testing.assert_close(p.detach(), params[str(i)], rtol=1e-12, atol=1e-14)


# --- weight decay variants ----------------------------------------------------------------


@pytest.mark.parametrize("inplace", [False, True])
def test_weight_decay_variants_closed_forms(inplace):
    u, p, g = _tree(1), _tree(2), _tree(3)
    wd = 0.1
    out = _once(gx.add_l1_decay(wd), u, params=p, inplace=inplace)
    for k in u:
        torch.testing.assert_close(out[k], u[k] + wd * p[k].sign())
    out = _once(gx.add_cautious_decayed_weights(wd), u, params=p, inplace=inplace)
    for k in u:  # Chen et al. 2025: decay where u * p >= 0
        torch.testing.assert_close(out[k], u[k] + wd * (u[k] * p[k] >= 0).to(F64) * p[k])
    out = _once(gx.decay_weights(wd), u, params=p, inplace=inplace)
    for k in u:
        torch.testing.assert_close(out[k], u[k] - wd * p[k])
    for relative_to, src in (("update", u), ("grad", g), ("params", p)):
        out = _once(gx.add_relative_decayed_weights(wd, relative_to), u, params=p, grad=g, inplace=inplace)
        mad = torch.cat([x.reshape(-1) for x in src.values()]).abs().mean()
        for k in u:
            torch.testing.assert_close(out[k], u[k] + wd * mad * p[k])


def test_weight_decay_variants_match_torchzero():
    tz = pytest.importorskip("torchzero")
    torch.manual_seed(0)
    wd, lr = 0.1, 0.05
    pairs = [
        (lambda: tz.m.WeightDecay(wd, ord=1), lambda: gx.add_l1_decay(wd)),
        (lambda: tz.m.RelativeWeightDecay(wd), lambda: gx.add_relative_decayed_weights(wd)),
    ]
    for make_tz, make_gx in pairs:
        ref_model = torch.nn.Linear(4, 3).double()
        model = torch.nn.Linear(4, 3).double()
        model.load_state_dict(ref_model.state_dict())
        ref = tz.Optimizer(ref_model.parameters(), make_tz(), tz.m.LR(lr))
        opt = gx.Optimizer(model.parameters(), gx.chain(make_gx(), gx.scale_by_lr(lr)))
        gen = torch.Generator().manual_seed(1)
        for _ in range(10):
            x = torch.randn(8, 4, generator=gen, dtype=F64)
            for m, o in ((ref_model, ref), (model, opt)):
                o.zero_grad()
                m(x).sin().sum().backward()
                o.step()
        for p, q in zip(model.parameters(), ref_model.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


def test_decay_after_lr_shrinks_by_one_minus_weight_decay():
    """decay_weights after scale_by_lr: p <- (1 - wd) p - lr u, whatever lr."""
    p, g = _tree(2), _tree(3)
    for lr in (1e-3, 1.0):
        tx = gx.chain(gx.scale_by_lr(lr), gx.decay_weights(0.01))
        u, _ = tx.update(g, tx.init(p), p)
        new = gx.apply_updates(p, u)
        for k in p:
            torch.testing.assert_close(new[k], 0.99 * p[k] - lr * g[k])


def test_weight_decay_is_a_param_group_key():
    """Under gx.Optimizer the variants' coefficient is param_groups[i]["weight_decay"]: setting
    it there changes the step as building with that value does."""
    torch.manual_seed(0)
    for make in (gx.add_l1_decay, gx.add_cautious_decayed_weights, gx.add_relative_decayed_weights):
        models = [torch.nn.Linear(3, 2).double() for _ in range(2)]
        models[1].load_state_dict(models[0].state_dict())
        opts = [gx.Optimizer(models[0].parameters(), gx.chain(make(0.0), gx.scale_by_lr(0.1))),
                gx.Optimizer(models[1].parameters(), gx.chain(make(0.5), gx.scale_by_lr(0.1)))]
        opts[0].param_groups[0]["weight_decay"] = 0.5
        x = torch.randn(4, 3, dtype=F64)
        for m, o in zip(models, opts):
            o.zero_grad()
            m(x).sum().backward()
            o.step()
        for p, q in zip(models[0].parameters(), models[1].parameters()):
            torch.testing.assert_close(p, q, rtol=1e-14, atol=0)
