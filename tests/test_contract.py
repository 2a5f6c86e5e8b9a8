"""The authoring contract: declared transforms keep their promise, undeclared ones just work.

A transform that declares in-place reuse (``gx.supports_inplace``) promises that the updates
it returns are tensors it was given or fresh ones nothing else holds, and that its state
keeps none of the update tensors it was given. ``chain`` and ``gx.Optimizer`` write into
buffers on the strength of that promise alone, so every registered transform is checked
against it here, by memory: a broken promise is silent corruption under the adapter.
"""

from __future__ import annotations

import pytest
import torch
from registry import ENTRIES, example_params, extra_args

import gradtx as gx

IDS = [e.name for e in ENTRIES]


def _span(t: torch.Tensor) -> tuple[int, int]:
    """The bytes ``t`` can reach: [first, last)."""
    if t.numel() == 0:
        return t.data_ptr(), t.data_ptr()
    extent = sum((size - 1) * abs(stride) for size, stride in zip(t.shape, t.stride())) + 1
    return t.data_ptr(), t.data_ptr() + extent * t.element_size()


def _overlap(a: torch.Tensor, b: torch.Tensor) -> bool:
    (a0, a1), (b0, b1) = _span(a), _span(b)
    return a0 < b1 and b0 < a1


def _tensors(tree) -> list[torch.Tensor]:
    return [x for x in gx.tree_leaves(tree) if isinstance(x, torch.Tensor) and x.numel() > 0]


def _grads(params, seed):
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=gen).to(v.dtype) for k, v in params.items()}


def _check_promise(tx, updates, state, params, extra, inplace):
    given = _tensors(updates)
    out, new_state = tx.update(updates, state, params, inplace=inplace, **extra)
    returned = _tensors(out)
    held = _tensors(new_state) + _tensors(params) + _tensors(extra)
    for i, u in enumerate(returned):
        if any(u is g for g in given):
            continue  # passed through: the caller's to write as before
        assert not any(_overlap(u, g) for g in given), f"update {i} is a view of a given update"
        assert not any(_overlap(u, h) for h in held), f"update {i} shares memory with the state, params or extras"
    for i, u in enumerate(returned):
        assert not any(_overlap(u, v) for v in returned[i + 1:]), f"update {i} shares memory with another leaf"
    kept = _tensors(new_state)
    assert not any(_overlap(k, g) for k in kept for g in given), "the new state keeps a given update tensor"
    return out, new_state


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
@pytest.mark.parametrize("inplace", [False, True], ids=["pure", "inplace"])
def test_declared_transforms_keep_the_promise(entry, inplace):
    tx = entry.build()
    assert gx.supports_inplace(tx), "every built-in declares in-place reuse"
    params = example_params(torch.float64)
    state = tx.init(params)
    for step in range(4):  # wrappers change what they return from step to step
        grads = _grads(params, step)
        extra = {**extra_args(entry, params), "grad": grads}
        updates = {k: g.clone() for k, g in grads.items()}
        with torch.no_grad():
            out, state = _check_promise(tx, updates, state, params, extra, inplace)
        params = gx.apply_updates(params, out)


def _members(tx) -> list:
    """``tx`` and, for a chain, every member at any depth."""
    parts = getattr(tx, "__dict__", {}).get("parts", ())
    return [tx] + [m for part in parts for m in _members(part)]


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
@pytest.mark.parametrize("inplace", [False, True], ids=["pure", "inplace"])
def test_every_chain_member_keeps_the_promise_on_its_own(entry, inplace):
    # A member's broken promise can hide behind the members after it in the entry's chain.
    for member in _members(entry.build())[1:]:
        params = example_params(torch.float64)
        state = member.init(params)
        for step in range(4):
            grads = _grads(params, step)
            extra = {**extra_args(entry, params), "grad": grads}
            with torch.no_grad():
                out, state = _check_promise(member, {k: g.clone() for k, g in grads.items()}, state, params, extra,
                                            inplace)
            params = gx.apply_updates(params, out)
