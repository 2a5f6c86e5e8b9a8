"""The adapter's state placement (gradtx.optim.placement): large constant state tensors are
moved to memory staggered against their parameter's modulo 4 KiB, with the same values, and
nothing else is moved."""

from __future__ import annotations

from typing import NamedTuple

import pytest
import torch
from conftest import round_trip, seeded_backward, seeded_params

import gradtx as gx
from gradtx.optim import placement

BIG = placement.MIN_BYTES // 4  # float32 elements of the smallest tensor that is moved


def _offsets(*tensors):
    return [t.data_ptr() % 4096 for t in tensors]


def _state_tensors(opt, p):
    return [v for k, v in sorted(opt.state[p].items()) if isinstance(v, torch.Tensor) and v.shape == p.shape]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("offset", [0, 64, 1024, 2112, 4032])
def test_at_offset_starts_where_asked(offset, dtype):
    x = placement.at_offset(torch.Size((3, 70000)), dtype, torch.device("cpu"), offset)
    assert x.data_ptr() % 4096 == offset and x.is_contiguous() and x.shape == (3, 70000) and x.dtype == dtype
    x.fill_(1.0)  # all of it is writable memory of its own
    assert bool(x.eq(1.0).all())


@pytest.mark.parametrize("flat", [False, True], ids=["default", "flat"])
def test_adam_moments_start_apart_from_the_parameter_gradient_and_each_other(flat):
    """Before: mu and nu from zeros_like(p) started at the parameter's offset (mmap'd blocks
    all start 64 bytes past a page), which stalls the fused kernel (4K aliasing)."""
    big, small = seeded_params([(BIG + 3,), (5,)], dtype=torch.float32)
    seeded_backward([big, small], 0)
    if not flat:  # the parameter and its gradient where the allocator puts a large block (64 bytes past a page)
        big.data = placement.at_offset(big.shape, big.dtype, big.device, 64).copy_(big.data)
        big.grad = placement.at_offset(big.shape, big.dtype, big.device, 64).copy_(big.grad)
    opt = gx.Optimizer([big, small], gx.adamw(1e-3, weight_decay=0.1), flat=flat)
    opt.step()
    moments = _offsets(*_state_tensors(opt, big))
    assert len(moments) == len(set(moments)) == 2
    assert set(moments).isdisjoint(_offsets(big, big.grad))  # where p and its gradient are: the user's
    if flat:
        assert len(set(_offsets(big, big.grad))) == 2


@pytest.mark.parametrize("flat", [False, True], ids=["default", "flat"])
@pytest.mark.parametrize("name", ["adamw", "rmsprop", "adagrad", "rprop"])
def test_placement_changes_no_number(name, flat, monkeypatch):
    """The same steps, bit for bit, with and without the moves (initial values: zeros, a
    constant accumulator, Rprop's step sizes equal to the learning rate)."""
    make = {"adamw": lambda: gx.adamw(1e-2, weight_decay=0.1), "rmsprop": lambda: gx.rmsprop(1e-2, momentum=0.9),
            "adagrad": lambda: gx.adagrad(1e-2, initial_accumulator_value=0.3), "rprop": lambda: gx.rprop(1e-2)}[name]

    def run():
        params = seeded_params([(BIG,), (BIG // 2, 2), (7,)], dtype=torch.float32)
        opt = gx.Optimizer(params, make(), flat=flat)
        for t in range(4):
            opt.zero_grad()
            seeded_backward(params, t)
            opt.step()
        return params, opt

    moved_params, moved_opt = run()
    monkeypatch.setattr(placement, "MIN_BYTES", 1 << 62)
    kept_params, kept_opt = run()
    for a, b in zip(moved_params, kept_params):
        assert torch.equal(a, b)
    for p, q in zip(moved_params, kept_params):
        for x, y in zip(_state_tensors(moved_opt, p), _state_tensors(kept_opt, q)):
            assert torch.equal(x, y)


def test_loaded_state_keeps_the_placement_and_the_values():
    params = seeded_params([(BIG,)], dtype=torch.float32)
    opt = gx.Optimizer(params, gx.adam(1e-3))
    seeded_backward(params, 0)
    opt.step()
    saved = round_trip(opt.state_dict())
    again = [torch.nn.Parameter(params[0].detach().clone())]
    opt2 = gx.Optimizer(again, gx.adam(1e-3))
    opt2.load_state_dict(saved)
    mu, nu = _state_tensors(opt2, again[0])
    assert torch.equal(mu, opt.state[params[0]]["[0].mu"]) and torch.equal(nu, opt.state[params[0]]["[0].nu"])
    assert len(set(_offsets(again[0], mu, nu))) == 3


def _init_with(fn):
    return gx.GradientTransformation(lambda params: {k: fn(p) for k, p in params.items()},
                                     lambda updates, state, params=None: (updates, state))


def test_what_is_not_a_constant_copy_stays():
    p = torch.randn(BIG)
    zero = torch.zeros(BIG)
    negative_zero = torch.full((BIG,), -0.0)
    assert placement._constant(p) is None
    assert placement._constant(torch.cat([zero[:-1], negative_zero[:1]])) is None  # -0.0 differs in bits
    assert str(placement._constant(negative_zero).item()) == "-0.0"
    for dtype in (torch.complex64, torch.complex128):
        assert placement._constant(torch.full((4, 3), 2 + 1j, dtype=dtype)).item() == 2 + 1j
        assert placement._constant(torch.tensor([2 + 1j, 2 + 2j], dtype=dtype)) is None
    params = {0: p}
    # a copy of the parameter, the parameter itself, a view of it, a non-contiguous tensor: as made
    for fn in (torch.clone, lambda x: x, lambda x: x[:], lambda x: torch.zeros(2, BIG // 2).t()):
        state = placement.staggered_init(_init_with(fn).init, params)
        made = fn(p)
        assert torch.equal(state[0], made) and state[0].stride() == made.stride()
    assert placement.staggered_init(_init_with(lambda x: x).init, params)[0] is p


def test_a_tensor_held_twice_stays_one_tensor():
    p = torch.randn(BIG)

    def init(params):
        shared = torch.zeros_like(params[0])
        return ({0: shared}, {0: shared}, {0: torch.zeros_like(params[0])})

    a, b, c = placement.staggered_init(init, {0: p})
    assert a[0] is b[0]
    assert c[0].data_ptr() % 4096 == (p.data_ptr() + 2048) % 4096 and not c[0].any()


def test_views_of_one_state_buffer_stay_aliased():
    """A state that keeps a buffer and views of it (or views of one buffer for several
    parameters) relies on their sharing memory: a view moved on its own no longer sees what
    is written through the buffer. Here the buffer halves every step and the views add the
    gradient: with ones for gradients the views hold 1, 1.5, 1.75 and the parameter, stepped
    by -0.1 times them, ends at -0.425 (moved, the view summed 1, 2, 3: -0.6)."""
    class State(NamedTuple):
        buffer: torch.Tensor
        views: dict

    def init(params):
        buffer = torch.zeros(sum(p.numel() for p in params.values()))
        views, start = {}, 0
        for k, p in params.items():
            views[k] = buffer[start:start + p.numel()].view(p.shape)
            start += p.numel()
        return State(buffer, views)

    def update(updates, state, params=None, **extra):
        state.buffer.mul_(0.5)
        for k, g in updates.items():
            state.views[k].add_(g)
        return {k: -0.1 * state.views[k] for k in updates}, state

    big, small = seeded_params([(BIG + 3,), (5,)], dtype=torch.float32)
    start = [big.detach().clone(), small.detach().clone()]
    opt = gx.Optimizer([big, small], gx.GradientTransformation(init, update))
    for _ in range(3):
        for p in (big, small):
            p.grad = torch.ones_like(p)
        opt.step()
    for p, p0 in zip((big, small), start):
        torch.testing.assert_close(p.detach(), p0 - 0.425)
    state = opt._chain_states[0] or opt._one_state  # per group, or over every group (not leafwise)
    assert state.views[0].data_ptr() == state.buffer.data_ptr()


def _huge_kib(x: torch.Tensor) -> int:
    """KiB of transparent huge pages in the mappings over ``x``'s memory (/proc/self/smaps; the
    advice splits a mapping, so its 2 MiB pages lie in one of their own)."""
    start, stop = x.data_ptr(), x.data_ptr() + x.numel() * x.element_size()
    kib, overlaps = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(a, 16) for a in head.split("-"))
                overlaps = lo < stop and start < hi
            elif overlaps and head == "AnonHugePages:":
                kib += int(line.split()[1])
    return kib


def _thp_mode() -> str:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return f.read().split("[")[1].split("]")[0]
    except (OSError, IndexError):
        return "unavailable"


@pytest.mark.skipif(_thp_mode() != "madvise", reason="huge pages only change where THP is in madvise mode")
def test_large_buffers_get_huge_pages_and_small_ones_do_not():
    """A buffer of at least HUGE_PAGE_BYTES is backed by 2 MiB pages once written; a smaller one,
    or any with HUGE_PAGE_BYTES None, keeps 4 KiB pages."""
    cpu = torch.device("cpu")
    numel = 4 * placement.HUGE_PAGE_BYTES // 4  # float32: four times the threshold
    big = placement.at_offset(torch.Size((numel,)), torch.float32, cpu, 1088).fill_(1.0)
    assert _huge_kib(big) >= 4 * placement.HUGE_PAGE_BYTES // 1024 - 4096  # all but a page at each end
    small = placement.at_offset(torch.Size((placement.HUGE_PAGE_BYTES // 8,)), torch.float32, cpu, 64).fill_(1.0)
    assert _huge_kib(small) == 0
    saved = placement.HUGE_PAGE_BYTES
    try:
        placement.HUGE_PAGE_BYTES = None
        off = placement.at_offset(torch.Size((numel,)), torch.float32, cpu, 1088).fill_(1.0)
    finally:
        placement.HUGE_PAGE_BYTES = saved
    assert _huge_kib(off) == 0


def test_huge_page_advice_stays_within_the_tensor(monkeypatch):
    """The advice covers only whole 2 MiB pages inside the tensor, never memory beside it (another
    allocation on the heap would otherwise be made resident in 2 MiB pieces)."""
    calls = []
    monkeypatch.setattr(placement, "_madvise", lambda start, length, advice: calls.append((start, length)) or 0)
    huge = 2 << 20
    for numel, offset in [(5 * huge // 4 + 77, 64), (huge // 4, 1088), (3 * huge // 4, 4032)]:
        base = placement.alias(torch.empty(numel + 1024), offset // 4, torch.Size((numel,)))
        calls.clear()
        taken = placement.huge_pages(base)
        lo, hi = base.data_ptr(), base.data_ptr() + 4 * numel
        whole = hi // huge - -(-lo // huge)  # 2 MiB pages wholly inside
        assert taken == (whole > 0) and len(calls) == (whole > 0)
        for start, length in calls:
            assert start % huge == 0 and length == whole * huge and lo <= start and start + length <= hi


def test_huge_page_advice_only_for_contiguous_cpu_tensors(monkeypatch):
    """A tensor whose elements do not lie end to end from its data pointer (expanded, or
    strided) or that is not in CPU memory gets no advice: numel times the element size
    from its data pointer would reach past its memory (an expanded 4-byte storage of 16 MiB
    elements: 64 MiB of other allocations)."""
    calls = []
    monkeypatch.setattr(placement, "_madvise", lambda start, length, advice: calls.append((start, length)) or 0)
    numel = 4 * (2 << 20)
    for x in (torch.zeros(1).expand(numel), torch.zeros(2 * numel)[::2], torch.zeros(numel, device="meta")):
        assert not placement.huge_pages(x)
    assert calls == []
    assert placement.huge_pages(torch.empty(numel)) and len(calls) == 1  # contiguous: advised
