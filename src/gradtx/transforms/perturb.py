"""Perturbations of updates: annealed Gaussian gradient noise."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch._subclasses.fake_tensor import unset_fake_temporarily

from .. import _foreach as F  # noqa: N812
from .._hparams import check, increment, new_count
from ..base import GradientTransformation, transform
from ._common import leaves, unflatten

__all__ = ["AddNoiseState", "add_noise"]

_MASK64 = (1 << 64) - 1


class AddNoiseState(NamedTuple):
    count: torch.Tensor  # int32, steps taken
    seed: torch.Tensor  # int64 0-dim; the noise of step t, leaf j is drawn from a generator seeded by (seed, t, j)


def _splitmix64(x: int) -> int:
    # Steele, Lea & Flood's SplitMix64 finaliser: neighbouring inputs give unrelated seeds.
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def _mix(*values: int) -> int:
    h = 0
    for v in values:
        h = _splitmix64(h ^ (v & _MASK64))
    return h


def _generator(device: torch.device, seed: int) -> torch.Generator | None:
    """A generator on ``device`` seeded by ``seed``; ``None`` on the meta device, which has no
    generator and draws no values (``torch.randn(..., generator=None)`` there makes the shape
    alone and reads no other generator)."""
    try:
        gen = torch.Generator(device=device)
    except RuntimeError:
        if torch.device(device).type != "meta":
            raise
        return None
    gen.manual_seed(seed)
    return gen


def _uniform(seed: int) -> float:
    """A uniform draw in [0, 1) from a CPU generator seeded by ``seed``, as a number: a decision
    taken on the host. Under ``FakeTensorMode`` (a memory estimate) the draw would be a fake
    tensor without a value, so it is drawn again outside that mode: the decision a real run
    takes (the same generator, the same number), which fixes the state that run makes."""
    draw = torch.rand((), generator=_generator(torch.device("cpu"), seed), dtype=torch.float64)
    try:
        return float(draw)
    except RuntimeError:
        if not F.without_data(draw):
            raise
    with unset_fake_temporarily():
        return float(torch.rand((), generator=_generator(torch.device("cpu"), seed), dtype=torch.float64))


@transform(inplace=True)
def add_noise(eta: float, gamma: float, seed: int = 0) -> GradientTransformation:
    """Add annealed Gaussian noise (Neelakantan et al., 2015):
    ``u <- u + sqrt(eta / (1 + t)^gamma) * n``, ``n ~ N(0, I)``, t = 0, 1, ... the step.

    The noise is a function of ``(seed, t, leaf index)`` only: the state keeps ``seed`` and
    the step count as tensors, so the pure path is pure, the in-place path gives the same
    numbers, and a resumed checkpoint continues the same noise. Each step seeds a
    ``torch.Generator`` from those integers (read with ``.item()``: under ``torch.compile``
    this is a graph break, and ``torch.func.vmap`` needs ``randomness='same'`` or
    ``'different'``). CPU and CUDA generators give different (equally valid) noise.

    Example: ``gx.chain(gx.add_noise(0.01, 0.55, seed=0), gx.scale_by_lr(1e-2))``.
    """
    check("eta", eta, low=0.0)
    check("gamma", gamma, low=0.0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    if not -(1 << 63) <= seed < (1 << 63):
        raise ValueError(f"seed must fit in int64, got {seed!r}")

    def init(params):
        del params
        return AddNoiseState(count=new_count(), seed=torch.tensor(seed, dtype=torch.int64))

    def update(updates, state, params=None, *, inplace=False, **extra_args):
        del params, extra_args
        us, treedef = leaves(updates)
        count = increment(state.count, inplace)
        step, base = int(count), int(state.seed)
        rv = F.real_views(us)  # a complex update: independent noise on real and imaginary parts
        if rv:
            (us,) = rv.real
        noise = [torch.randn(u.shape, dtype=u.dtype, device=u.device,
                             generator=_generator(u.device, _mix(base, step, j))) for j, u in enumerate(us)]
        std = torch.sqrt(eta / count.to(torch.float64) ** gamma)
        F.mul(noise, std, inplace=True)
        out = F.add(us, noise, inplace=inplace)
        if rv:
            (out,) = rv.back(out)
        return unflatten(treedef, out), AddNoiseState(count, state.seed)

    return GradientTransformation(init, update)
