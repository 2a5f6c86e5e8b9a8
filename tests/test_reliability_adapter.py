"""Issue 9, the adapter's part: nothing silently wrong, nothing lost.

- item 1: parameters and gradients of any memory layout (slices, transposes, channels-last,
  gradients of other strides) get torch.optim's numbers on every path, and nothing outside
  the parameter is written; a parameter whose elements share memory is refused;
- item 2: ``gx.Optimizer`` round-trips through pickle, ``copy.deepcopy`` and ``torch.save``
  and continues bit-identically; a chain that cannot be rebuilt is refused at save time;
- item 19: ``torch.optim`` state dicts load into the equivalent gradtx optimizer and back.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import gradtx as gx
from gradtx.optim import compiled as _compiled

F64 = dict(rtol=1e-9, atol=1e-12)

# --- item 1: memory layouts ---------------------------------------------------------------

# (name, gradtx chain, torch.optim reference, whether the reference sees clamped gradients)
CHAINS = {
    "sgd_momentum": (lambda: gx.sgd(0.05, momentum=0.9), lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9), None),
    "adam": (lambda: gx.adam(0.05), lambda ps: torch.optim.Adam(ps, lr=0.05), None),
    "adamw": (lambda: gx.adamw(0.05, weight_decay=0.1), lambda ps: torch.optim.AdamW(ps, lr=0.05, weight_decay=0.1),
              None),
    "mission": (lambda: gx.chain(gx.clip_value(10.0), gx.scale_by_adam(), gx.scale_by_lr(1e-3)),
                lambda ps: torch.optim.Adam(ps, lr=1e-3), 10.0),
}


def _layout_case(name: str) -> tuple[torch.Tensor, nn.Parameter, torch.Tensor, callable]:
    """``(base, param, mask of base elements outside the param, grad maker)``: the parameter
    is a view into ``base`` where possible, so writes outside it show in ``base``."""
    gen = torch.Generator().manual_seed(3)
    outside = None
    if name == "slice":  # not dense: every other column of base
        base = torch.randn(6, 8, generator=gen, dtype=torch.float64)
        p = nn.Parameter(base[:, ::2])
        outside = torch.ones(6, 8, dtype=torch.bool)
        outside[:, ::2] = False
    elif name == "slice_rows_cols":  # not dense, offset storage
        base = torch.randn(7, 9, generator=gen, dtype=torch.float64)
        p = nn.Parameter(base[1:6:2, 2:8])
        outside = torch.ones(7, 9, dtype=torch.bool)
        outside[1:6:2, 2:8] = False
    elif name == "transpose":  # dense, strides (1, 6); gradients contiguous
        base = torch.randn(6, 4, generator=gen, dtype=torch.float64)
        p = nn.Parameter(base.t())
    elif name == "grad_transposed":  # contiguous parameter, gradient g.t()
        base = torch.randn(4, 6, generator=gen, dtype=torch.float64)
        p = nn.Parameter(base)
    elif name in ("channels_last", "channels_last_both"):
        base = torch.randn(2, 3, 4, 5, generator=gen, dtype=torch.float64).to(memory_format=torch.channels_last)
        p = nn.Parameter(base)
    else:
        raise AssertionError(name)

    def grad(step: int) -> torch.Tensor:
        g = torch.randn(p.shape, generator=torch.Generator().manual_seed(100 + step), dtype=torch.float64) * 3
        if name == "grad_transposed":
            return g.t().contiguous().t()  # same values, strides (1, 4)
        if name == "channels_last_both":
            return g.contiguous(memory_format=torch.channels_last)
        return g.contiguous()

    return base, p, outside, grad


LAYOUTS = ["slice", "slice_rows_cols", "transpose", "grad_transposed", "channels_last", "channels_last_both"]


def _layout_run(chain: str, layout: str, steps: int = 6, **options) -> None:
    make_tx, make_ref, clip = CHAINS[chain]
    base, p, outside, grad = _layout_case(layout)
    before = base.clone()
    # a plain contiguous parameter in the same group, so both kinds share one kernel call
    plain = nn.Parameter(torch.randn(5, generator=torch.Generator().manual_seed(9), dtype=torch.float64))
    ref = [nn.Parameter(p.detach().clone(memory_format=torch.contiguous_format)), nn.Parameter(plain.detach().clone())]
    opt = gx.Optimizer([p, plain], make_tx(), **options)
    torch_opt = make_ref(ref)
    for step in range(steps):
        g = grad(step)
        gp = torch.full_like(plain, 0.5 * (step + 1))
        p.grad, plain.grad = g, gp
        ref[0].grad, ref[1].grad = g.contiguous(), gp.clone()
        if clip is not None:
            ref[0].grad.clamp_(-clip, clip)
            ref[1].grad.clamp_(-clip, clip)
        opt.step()
        torch_opt.step()
    torch.testing.assert_close(p.detach(), ref[0].detach(), **F64)
    torch.testing.assert_close(plain.detach(), ref[1].detach(), **F64)
    if outside is not None:
        assert torch.equal(base[outside], before[outside]), "memory outside the parameter was written"
    # the gradients are read, never written
    assert torch.equal(p.grad, grad(steps - 1))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("chain", sorted(CHAINS))
def test_fused_path_respects_layouts(chain, layout):
    _layout_run(chain, layout)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("chain", sorted(CHAINS))
def test_generic_inplace_path_respects_layouts(chain, layout):
    """fast=False: the chain runs in place on scratch copies of the gradients
    (``empty_like``, so of the gradient's layout) and state made by ``zeros_like``."""
    _layout_run(chain, layout, fast=False)


def test_fast_path_other_chains_respect_layouts():
    """A chain with no fused kernel on fast=True (in place, -lr folded into the update)."""
    base, p, outside, grad = _layout_case("slice")
    before = base.clone()
    ref = nn.Parameter(p.detach().clone(memory_format=torch.contiguous_format))
    opt = gx.Optimizer([p], gx.rmsprop(0.01, decay=0.99, eps_in_sqrt=False, momentum=0.9))
    torch_opt = torch.optim.RMSprop([ref], lr=0.01, alpha=0.99, momentum=0.9)
    for step in range(6):
        p.grad = grad(step).t().contiguous().t()
        ref.grad = grad(step)
        opt.step()
        torch_opt.step()
    torch.testing.assert_close(p.detach(), ref.detach(), **F64)
    assert torch.equal(base[outside], before[outside])


@pytest.mark.parametrize(("chain", "layout"), [("adam", "slice"), ("adamw", "grad_transposed"),
                                               ("mission", "channels_last")])
def test_compiled_path_respects_layouts(chain, layout, monkeypatch):
    # few slots and a low packing threshold: big parameters take flat views of their own
    monkeypatch.setattr(_compiled, "SLOTS", 3)
    monkeypatch.setattr(_compiled, "PACK_BELOW", 4)
    _layout_run(chain, layout, steps=4, compile={"backend": "eager"})


@pytest.mark.parametrize("options", [{}, {"fast": False}], ids=["fast", "generic"])
def test_parameter_sharing_memory_is_refused(options):
    base = torch.arange(4.0)
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['params'\]\[1\].*share memory"):
        gx.Optimizer([nn.Parameter(torch.zeros(3)), nn.Parameter(base.expand(3, 4))], gx.sgd(0.1), **options)
    opt = gx.Optimizer([nn.Parameter(torch.zeros(3))], gx.sgd(0.1), **options)
    with pytest.raises(ValueError, match="share memory"):
        opt.add_param_group({"params": [nn.Parameter(base.expand(2, 4))]})
    assert len(opt.param_groups) == 1  # the refused group is not kept


def test_parameter_data_replaced_by_an_expanded_tensor_is_refused_before_any_change():
    p = nn.Parameter(torch.zeros(3, 4))
    opt = gx.Optimizer([p], gx.adam(0.1))
    p.grad = torch.ones(3, 4)
    opt.step()
    saved = _tensors(copy.deepcopy(opt.state_dict()))
    base = torch.arange(4.0)
    p.data = base.expand(3, 4)
    with pytest.raises(ValueError, match="share memory"):
        opt.step()
    assert torch.equal(base, torch.arange(4.0))
    after = _tensors(opt.state_dict())
    assert len(after) == len(saved) and all(torch.equal(a, b) for a, b in zip(after, saved))


def _tensors(tree) -> list[torch.Tensor]:
    """Every tensor of a state dict, in a fixed order (whatever its format)."""
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, dict):
        return [t for key in sorted(tree, key=repr) for t in _tensors(tree[key])]
    if isinstance(tree, (list, tuple)):
        return [t for x in tree for t in _tensors(x)]
    return []
