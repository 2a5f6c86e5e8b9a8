"""``gradtx._foreach.drawing_from``: out-of-place ops over large CPU tensors write into kept
temporaries, with the numbers of torch's own ops; small tensors, autograd and in-place ops are
left alone."""

from __future__ import annotations

import torch

from gradtx import _foreach as F  # noqa: N812


def _big(seed: int, n: int = 1 << 17, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_drawn_outputs_equal_torchs_ops_and_are_reused():
    x, y, z = _big(0), _big(1), _big(2).abs() + 0.5
    pool = F.Temporaries()
    for _ in range(2):
        with F.drawing_from(pool):
            got = [F.mul([x], 0.3)[0], F.add([x], [y], alpha=0.7)[0], F.lerp([x], [y], 0.1)[0],
                   F.addcdiv([x], [y], [z], value=0.2)[0], F.sqrt([z])[0], F.div([x], torch.tensor(3.0))[0]]
        want = [torch.mul(x, 0.3), torch.add(x, y, alpha=0.7), torch.lerp(x, y, 0.1), torch.addcdiv(x, y, z, value=0.2),
                torch.sqrt(z), torch.div(x, 3.0)]
        for a, b in zip(got, want):
            assert torch.equal(a, b)
        # every output is one of the kept buffers, the same ones on the second pass
        assert [t.data_ptr() for t in got] == [t.data_ptr() for t in pool.buffers]
    assert len(pool.buffers) == 6


def test_an_empty_tensor_is_drawn_along():
    """The other side's leaf under muon's split is an empty tensor beside the large one."""
    x, pool = _big(7), F.Temporaries()
    with F.drawing_from(pool):
        got = F.mul([torch.zeros(0), x], 0.5)
    assert got[0].shape == (0,) and torch.equal(got[1], x * 0.5)
    assert got[1].data_ptr() == pool.buffers[1].data_ptr()


def test_small_recorded_and_in_place_ops_are_not_drawn():
    pool = F.Temporaries()
    small = torch.randn(100)
    leaf = _big(3).requires_grad_(True)
    x = _big(4)
    with F.drawing_from(pool):
        F.mul([small], 2.0)
        F.mul([leaf], 2.0)  # autograd records: an out= output would not be differentiable
        F.mul([x], 2.0, inplace=True)
        F.mul([x], [_big(5, dtype=torch.float64)])  # another dtype: the output would differ
    assert pool.buffers == []
    F.mul([_big(6)], 2.0)  # outside the block
    assert pool.buffers == []


def test_kept_empty_is_kept_only_for_large_cpu_floats_within_the_block():
    """Kept over 32 MiB (glibc's largest mmap threshold; the heap serves smaller ones)."""
    pool = F.Temporaries()
    big, small = torch.Size((2, (1 << 21) + 1)), torch.Size((1 << 22,))  # just over 32 MiB in f64; 16 MiB in f32
    outside = F.kept_empty(big, torch.float32, torch.device("cpu"))
    assert outside.shape == big and pool.buffers == []
    for _ in range(2):
        with F.drawing_from(pool):
            a = F.kept_empty(big, torch.float64, torch.device("cpu"))
            b = F.kept_empty(small, torch.float32, torch.device("cpu"))  # 16 MiB: a new tensor
            c = F.kept_empty(big, torch.int64, torch.device("cpu"))  # not a float: a new tensor
        assert a.shape == big and a.dtype == torch.float64 and a.is_contiguous()
        assert b.shape == small and c.dtype == torch.int64
        assert [t.data_ptr() for t in pool.buffers] == [a.data_ptr()]  # the same buffer both times
