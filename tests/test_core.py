"""The core: GradientTransformation, chain, named_chain, apply_updates, tree helpers, repr."""

from __future__ import annotations

import pytest
import torch

import gradtx as gx


def _tree(seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return {"a": torch.randn(3, 2, generator=gen, dtype=dtype),
            "nested": [torch.randn(4, generator=gen, dtype=dtype), torch.randn((), generator=gen, dtype=dtype)]}


def test_gradient_transformation_is_a_named_pair():
    tx = gx.scale(2.0)
    init, update = tx
    assert init is tx.init and update is tx.update
    assert isinstance(tx, tuple) and tx._fields == ("init", "update")


def test_chain_equals_applying_its_members_in_sequence():
    first, second, third = gx.clip_value(0.5), gx.scale_by_adam(), gx.scale_by_lr(0.1)
    tx = gx.chain(first, second, third)
    params, grads = _tree(0), _tree(1)
    state = tx.init(params)
    assert isinstance(state, tuple) and len(state) == 3
    states = [first.init(params), second.init(params), third.init(params)]
    for _ in range(3):
        updates, state = tx.update(grads, state, params)
        u = grads
        for i, part in enumerate((first, second, third)):
            u, states[i] = part.update(u, states[i], params)
        for x, y in zip(gx.tree_leaves(updates), gx.tree_leaves(u)):
            assert torch.equal(x, y)
        for x, y in zip(gx.tree_leaves(state), gx.tree_leaves(tuple(states))):
            assert torch.equal(x, y)


def test_chain_refuses_non_transforms_and_wrong_states():
    with pytest.raises(TypeError, match="chain argument 1"):
        gx.chain(gx.identity(), lambda u: u)
    tx = gx.chain(gx.identity(), gx.scale(2.0))
    with pytest.raises(ValueError, match="state of length 1"):
        tx.update(_tree(), (gx.EmptyState(),))


def test_named_chain_keys_its_state_by_name():
    tx = gx.named_chain(("clip", gx.clip_value(1.0)), ("adam", gx.scale_by_adam()))
    state = tx.init(_tree())
    assert gx.tree_get(state, "mu") is not None
    plain = gx.chain(gx.clip_value(1.0), gx.scale_by_adam())
    u1, _ = tx.update(_tree(1), state, _tree())
    u2, _ = plain.update(_tree(1), plain.init(_tree()), _tree())
    for x, y in zip(gx.tree_leaves(u1), gx.tree_leaves(u2)):
        assert torch.equal(x, y)


def test_apply_updates_adds_casts_and_skips_none():
    params = {"w": torch.ones(2, dtype=torch.bfloat16), "b": torch.zeros(3), "frozen": torch.full((1,), 7.0)}
    updates = {"w": torch.full((2,), 0.5, dtype=torch.float32), "b": torch.arange(3.0), "frozen": None}
    new = gx.apply_updates(params, updates)
    assert new["w"].dtype == torch.bfloat16 and torch.equal(new["w"], torch.full((2,), 1.5, dtype=torch.bfloat16))
    assert torch.equal(new["b"], torch.arange(3.0))
    assert new["frozen"] is params["frozen"]
    assert torch.equal(params["w"], torch.ones(2, dtype=torch.bfloat16))  # pure
    same = gx.apply_updates(params, updates, inplace=True)
    assert same["b"] is params["b"] and torch.equal(params["b"], torch.arange(3.0))


def test_apply_updates_refuses_mismatched_trees():
    with pytest.raises(ValueError):
        gx.apply_updates({"a": torch.ones(1), "b": torch.ones(1)}, {"a": torch.ones(1)})


def test_tree_helpers_against_flat_tensors():
    a, b = _tree(0), _tree(1)
    flat_a = torch.cat([x.reshape(-1) for x in gx.tree_leaves(a)])
    flat_b = torch.cat([x.reshape(-1) for x in gx.tree_leaves(b)])
    torch.testing.assert_close(gx.tree_l2_norm(a), flat_a.norm())
    torch.testing.assert_close(gx.tree_l2_norm(a, squared=True), flat_a.dot(flat_a))
    torch.testing.assert_close(gx.tree_vdot(a, b), flat_a.dot(flat_b))
    for x, y, z in zip(gx.tree_leaves(gx.tree_add(a, b)), gx.tree_leaves(a), gx.tree_leaves(b)):
        assert torch.equal(x, y + z)
    for x, y, z in zip(gx.tree_leaves(gx.tree_sub(a, b)), gx.tree_leaves(a), gx.tree_leaves(b)):
        assert torch.equal(x, y - z)
    for x, y in zip(gx.tree_leaves(gx.tree_scale(3.0, a)), gx.tree_leaves(a)):
        assert torch.equal(x, 3.0 * y)
    zeros = gx.tree_zeros_like(a, dtype=torch.float32)
    assert all(z.dtype == torch.float32 and not z.any() for z in gx.tree_leaves(zeros))
    assert [p for p, _ in gx.tree_paths(a)] == ["['a']", "['nested'][0]", "['nested'][1]"]


def test_tree_get_finds_state_fields_by_name():
    tx = gx.chain(gx.clip_by_global_norm(1.0), gx.scale_by_adam(), gx.trace(0.9))
    state = tx.init(_tree())
    assert gx.tree_get(state, "count").dtype == torch.int32
    assert gx.tree_get(state, "nu")["a"].shape == (3, 2)
    assert gx.tree_get(state, "missing", default="none") == "none"
    assert len(gx.tree_get_all(state, "trace")) == 1


def test_leaf_names_follow_named_parameters():
    model = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.Linear(3, 1))
    expected = [name for name, _ in model.named_parameters()]
    named = {gx.ParamKey(i, n): p for i, (n, p) in enumerate(model.named_parameters())}
    assert gx.leaf_names(named) == expected
    assert gx.leaf_names(dict(model.named_parameters())) == expected


def test_identity_and_stateless():
    tree = _tree()
    updates, state = gx.identity().update(tree, gx.identity().init(tree))
    assert updates is tree and state == gx.EmptyState()
    double = gx.stateless(lambda u, p: gx.tree_scale(2.0, u))
    out, _ = double.update(tree, double.init(tree))
    for x, y in zip(gx.tree_leaves(out), gx.tree_leaves(tree)):
        assert torch.equal(x, 2 * y)


def test_repr_shows_an_alias_parts_and_hyperparameters():
    text = repr(gx.adamw(1e-3, weight_decay=0.01))
    assert text.startswith("adamw(lr=0.001, weight_decay=0.01) = chain(")
    for part in ("scale_by_adam(b1=0.9, b2=0.999, eps=1e-08", "add_decayed_weights(weight_decay=0.01",
                 "scale_by_lr(lr=0.001)"):
        assert part in text
    assert repr(gx.scale_by_adam(b1=0.8)) == "scale_by_adam(b1=0.8)"
    nested = repr(gx.chain(gx.clip_value(1.0), gx.sgd(0.1)))
    assert nested.splitlines()[0] == "chain(" and "  sgd(lr=0.1) = chain(" in nested


def test_transform_metadata_lets_fast_paths_recognise_a_chain():
    tx = gx.adamw(1e-3)
    assert tx.name == "adamw" and tx.args["weight_decay"] == 1e-4
    assert [part.name for part in tx.parts] == ["scale_by_adam", "add_decayed_weights", "scale_by_lr"]


def test_dicts_of_tensors_flatten_as_torchs_pytree_does_and_keep_their_keys():
    """The direct path for dicts of tensors gives torch's leaves and spec, and unflattens to the
    very keys flattened: a ParamKey (an int, equal to its index) stays a ParamKey with its name,
    an int-keyed dict of equal keys stays int-keyed, and flatten_up_to takes the spec's order."""
    import torch.utils._pytree as pytree

    from gradtx._tree import ParamKey, flatten_up_to, tree_flatten, tree_unflatten

    named = {ParamKey(1, "w", 0): torch.ones(2), ParamKey(0, "b", 0): torch.nn.Parameter(torch.zeros(3))}
    plain = {1: torch.ones(2), 0: torch.zeros(3)}
    for tree in (named, plain, named, {}):  # twice: made once, then taken from the kept specs
        leaves, spec = tree_flatten(tree)
        ref_leaves, ref_spec = pytree.tree_flatten(tree)
        assert spec == ref_spec and all(a is b for a, b in zip(leaves, ref_leaves, strict=True))
        back = tree_unflatten(leaves, spec)
        assert [type(k) for k in back] == [type(k) for k in tree] and all(a is b for a, b in zip(back, tree))
    assert [k.name for k in tree_unflatten(*tree_flatten(named))] == ["w", "b"]
    _, spec = tree_flatten(plain)
    assert flatten_up_to({0: "zero", 1: ["one", "state"]}, spec) == [["one", "state"], "zero"]  # the spec's order
    with pytest.raises(ValueError, match="only in the state"):
        flatten_up_to({0: 0, 1: 1, 2: 2}, spec)
    nested = {0: torch.ones(1), 1: [torch.ones(1), torch.ones(1)]}  # not flat: torch's path
    assert tree_flatten(nested)[1] == pytree.tree_flatten(nested)[1]
    # more key sets than are kept: the oldest specs go, every dict still comes back as it was
    many = [{ParamKey(i, f"p{j}"): torch.ones(1) for i in range(2)} for j in range(100)]
    for tree in many + many[:3]:
        back = tree_unflatten(*tree_flatten(tree))
        assert [k.name for k in back] == [k.name for k in tree]


def test_dicts_of_tensors_flatten_in_many_threads_at_once():
    """Threads flattening dicts of new key sets (more than are kept: each evicts the oldest)
    each get their own keys back, and none raises (an eviction that read the kept specs while
    another thread added one raised 'dictionary changed size during iteration')."""
    import sys
    import threading

    from gradtx._tree import ParamKey, tree_flatten, tree_unflatten

    errors, leaf = [], torch.ones(1)

    def work(thread):
        for j in range(3000):
            tree = {ParamKey(0, f"{thread}-{j}"): leaf}
            try:
                back = tree_unflatten(*tree_flatten(tree))
                assert [k.name for k in back] == [f"{thread}-{j}"]
            except Exception as e:  # noqa: BLE001 - every failure is collected and reported
                errors.append(repr(e))

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often: the window is a few bytecodes
    try:
        threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(switch)
    assert errors == []


def test_a_dict_keyed_by_tensors_does_not_keep_them_alive():
    """The TreeSpecs kept for dicts of tensors hold their keys: kept only for small keys
    (ParamKey, int, str), so that a dict keyed by a model's parameters lets them go with the
    model (they stayed alive until 64 other key sets had come by)."""
    import gc
    import weakref

    from gradtx._tree import flatten_up_to, tree_flatten, tree_leaves, tree_unflatten

    model = torch.nn.Linear(3, 2)
    tree = {p: p.detach() for p in model.parameters()}
    leaves, spec = tree_flatten(tree)
    assert tree_unflatten(leaves, spec) == tree and tree_leaves(tree) == leaves == flatten_up_to(tree, spec)
    alive = weakref.ref(model.weight)
    del model, tree, leaves, spec
    gc.collect()
    assert alive() is None
