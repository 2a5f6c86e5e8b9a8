"""Shared fixtures: a small MLP problem whose loss is a pure function of a params dict."""

from __future__ import annotations

import contextlib
import io

import pytest
import torch

import gradtx as gx

# One intra-op thread per test process: the suite runs as 2 xdist workers on 2 cores, and
# more threads than cores make small-tensor steps several times slower.
torch.set_num_threads(1)


class MLPProblem:
    """Two-layer tanh MLP regression; ``loss(params)`` is pure, so the same problem drives
    ``torch.optim`` (on leaf tensors) and gradtx (functional and adapter)."""

    def __init__(self, dtype: torch.dtype = torch.float64, seed: int = 0, batches: int = 8):
        gen = torch.Generator().manual_seed(seed)
        self.dtype = dtype
        self.params0 = {
            "w1": torch.randn(6, 16, generator=gen, dtype=dtype) * 0.5,
            "b1": torch.randn(16, generator=gen, dtype=dtype) * 0.1,
            "w2": torch.randn(16, 3, generator=gen, dtype=dtype) * 0.5,
            "b2": torch.zeros(3, dtype=dtype),
        }
        self.xs = [torch.randn(32, 6, generator=gen, dtype=dtype) for _ in range(batches)]
        true_w = torch.randn(6, 3, generator=gen, dtype=dtype)
        self.ys = [torch.sin(x @ true_w) for x in self.xs]

    def loss(self, params: dict[str, torch.Tensor], step: int) -> torch.Tensor:
        x, y = self.xs[step % len(self.xs)], self.ys[step % len(self.ys)]
        hidden = torch.tanh(x @ params["w1"] + params["b1"])
        return ((hidden @ params["w2"] + params["b2"] - y) ** 2).mean()

    def grads(self, params: dict[str, torch.Tensor], step: int) -> dict[str, torch.Tensor]:
        leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        loss = self.loss(leaves, step)
        grads = torch.autograd.grad(loss, list(leaves.values()))
        return dict(zip(leaves, grads))

    def leaf_params(self) -> dict[str, torch.Tensor]:
        return {k: v.clone().requires_grad_(True) for k, v in self.params0.items()}


TOL = {torch.float64: dict(rtol=1e-9, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-6)}


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    """torch's default dtype set to ``dtype`` inside the block (torch optimizers keep some
    scalars, NAdam's mu_product or ASGD's eta, in the default dtype)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def functional_trajectory(problem: MLPProblem, tx, steps: int = 200) -> list[dict[str, torch.Tensor]]:
    """The params after each of ``steps`` functional updates of ``tx`` on ``problem``."""
    params = {k: v.clone() for k, v in problem.params0.items()}
    state = tx.init(params)
    out = []
    for t in range(steps):
        updates, state = tx.update(problem.grads(params, t), state, params)
        params = gx.apply_updates(params, updates)
        out.append(params)
    return out


def optax_trajectory(jax, problem, tx, steps: int) -> list[dict[str, torch.Tensor]]:
    """The params after each of ``steps`` updates of the optax transform ``tx`` on ``problem``
    (``params0`` and ``grads(params, t)``, as ``MLPProblem``), the gradients from torch, the
    arithmetic in jax (float64 where ``jax_enable_x64`` is set)."""
    import numpy as np
    import optax

    params = {k: jax.numpy.asarray(v.numpy()) for k, v in problem.params0.items()}
    state = tx.init(params)
    step = jax.jit(tx.update)
    out = []
    for t in range(steps):
        torch_params = {k: torch.from_numpy(np.asarray(v).copy()) for k, v in params.items()}
        grads = {k: jax.numpy.asarray(g.numpy()) for k, g in problem.grads(torch_params, t).items()}
        updates, state = step(grads, state, params)
        params = optax.apply_updates(params, updates)
        out.append({k: torch.from_numpy(np.asarray(v).copy()) for k, v in params.items()})
    return out


def optimizer_trajectory(params: dict[str, torch.Tensor], loss, opt, steps: int, *, start: int = 0,
                         closure: str | None = None) -> list[dict[str, torch.Tensor]]:
    """The params after each of ``steps`` steps of the torch optimizer ``opt`` (a
    ``torch.optim`` one or ``gx.Optimizer``) over ``params``, with ``loss(params, t)`` for
    ``t`` from ``start``. ``closure``: None steps after ``backward()``; ``"backward"`` steps with
    ``def closure(backward=True)``; ``"plain"`` with ``def closure()`` (its own backward)."""
    out = []
    for t in range(start, start + steps):
        if closure is None:
            opt.zero_grad()
            loss(params, t).backward()
            opt.step()
        elif closure == "backward":
            def flagged(backward=True, t=t):
                value = loss(params, t)
                if backward:
                    opt.zero_grad()
                    value.backward()
                return value
            opt.step(flagged)
        elif closure == "plain":
            def plain(t=t):
                opt.zero_grad()
                value = loss(params, t)
                value.backward()
                return value
            opt.step(plain)
        else:
            raise ValueError(f"closure must be None, 'backward' or 'plain', got {closure!r}")
        out.append({k: v.detach().clone() for k, v in params.items()})
    return out


def tanh_net() -> torch.nn.Module:
    """A small float64 net (3 -> 4 -> 1, tanh), the same weights every call (seed 0)."""
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).double()


def regression_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """``(x, y)``: 16 float64 inputs of 3 features and targets, from generator seed 1."""
    gen = torch.Generator().manual_seed(1)
    return (torch.randn(16, 3, generator=gen, dtype=torch.float64),
            torch.randn(16, 1, generator=gen, dtype=torch.float64))


def round_trip(obj):
    """``obj`` through ``torch.save`` and ``torch.load(weights_only=True)``."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def leaf_copy(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fresh leaf tensors (``requires_grad``) with the values of ``params``."""
    return {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}


def assert_resume_bit_exact(make_opt, params: dict[str, torch.Tensor], loss, steps: int, split: int, *,
                            closure: str | None = None) -> list[dict[str, torch.Tensor]]:
    """Checkpoint-resume check: ``make_opt(params)`` runs ``steps`` steps of ``loss(params, t)``
    (see ``optimizer_trajectory``); after ``split`` its ``state_dict`` goes through ``round_trip``
    into ``make_opt`` over a ``leaf_copy`` of the params then, which runs the remaining steps; every
    one of them must equal the uninterrupted run's bit for bit. Returns the uninterrupted
    trajectory (``steps`` params dicts), for the caller to compare with a reference."""
    opt = make_opt(params)
    first = optimizer_trajectory(params, loss, opt, split, closure=closure)
    resumed = leaf_copy(params)
    opt2 = make_opt(resumed)
    opt2.load_state_dict(round_trip(opt.state_dict()))
    rest = optimizer_trajectory(params, loss, opt, steps - split, start=split, closure=closure)
    again = optimizer_trajectory(resumed, loss, opt2, steps - split, start=split, closure=closure)
    assert len(again) == len(rest) == steps - split > 0
    for t, (a, b) in enumerate(zip(again, rest), start=split):
        for k in b:
            assert torch.equal(a[k], b[k]), f"resumed step {t}, {k}: not bit-identical to the uninterrupted run"
    return first + rest


def assert_same(traj, ref, dtype=torch.float64) -> None:
    """Two trajectories (lists of params dicts) agree step by step within ``TOL[dtype]``."""
    assert len(traj) == len(ref)
    for t, (a, b) in enumerate(zip(traj, ref)):
        for k in b:
            torch.testing.assert_close(a[k], b[k], **TOL[dtype], msg=lambda m, t=t, k=k: f"step {t}, {k}: {m}")


@pytest.fixture(scope="module")
def jax_x64():
    """jax with float64 enabled (the optax references in float64); skips without jax or optax."""
    jax = pytest.importorskip("jax")
    pytest.importorskip("optax")
    jax.config.update("jax_enable_x64", True)
    return jax


@pytest.fixture
def problem64():
    return MLPProblem(torch.float64)


@pytest.fixture
def problem32():
    return MLPProblem(torch.float32)


class CountingBackend:
    """A ``torch.compile`` backend that runs the traced graph as it is and counts graphs."""

    def __init__(self) -> None:
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        del example_inputs
        self.graphs += 1
        return gm.forward


def assert_close_to_scale(got, expected, rel: float) -> None:
    """Each tensor of ``got`` equals ``expected``'s to ``rel`` times the larger of 1 and the
    expected tensor's largest entry (how the flat and default paths are compared)."""
    for i, (a, b) in enumerate(zip(got, expected)):
        a, b = a.detach(), b.detach()
        assert a.dtype == b.dtype and a.shape == b.shape
        scale = max(float(b.abs().max()), 1.0) if b.numel() else 1.0
        err = float((a - b).abs().max()) if b.numel() else 0.0
        assert err <= rel * scale, f"param {i}: |flat - default| = {err:.3g} > {rel:g} * {scale:.3g}"


def in_one_buffer(params, *, grads_required: bool = False) -> bool:
    """Whether the parameters live in one storage, and their gradients in at most one (exactly
    one with ``grads_required``)."""
    p_storages = {p.untyped_storage().data_ptr() for p in params}
    g_storages = {p.grad.untyped_storage().data_ptr() for p in params if p.grad is not None}
    return len(p_storages) == 1 and (len(g_storages) == 1 if grads_required else len(g_storages) <= 1)


def seeded_params(shapes, dtype: torch.dtype = torch.float64, seed: int = 0) -> list[torch.nn.Parameter]:
    """Parameters of ``shapes`` drawn from a seeded normal (the flat-storage tests' models)."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=dtype)) for s in shapes]


def flat_and_default(make_tx, shapes, dtype: torch.dtype, train, steps: int = 50, skip_at: int | None = 7):
    """``[(params, opt) of the default path, (params, opt) of flat=True]``, each trained
    ``steps`` steps from the same seeded parameters by ``train(opt, params, steps,
    skip_at=...)`` (``skip_at``: one step where backward reaches not every parameter)."""
    runs = []
    for flat in (False, True):
        params = seeded_params(shapes, dtype)
        opt = gx.Optimizer(params, make_tx(), flat=flat)
        train(opt, params, steps, skip_at=skip_at)
        runs.append((params, opt))
    return runs


def checkpoint_across_flat(make_tx, shapes, train, source_flat: bool):
    """A checkpoint moved between ``flat=True`` and the default path: a reference of 20 steps on
    the default path; then 10 steps with ``flat=source_flat``, the parameters and state through
    ``round_trip`` into an optimizer with the other setting, 10 more (``train(opt, params,
    steps, start=...)``). Returns ``(resumed params, reference params, that optimizer)``."""
    ref = seeded_params(shapes, torch.float64)
    train(gx.Optimizer(ref, make_tx()), ref, 20)
    params = seeded_params(shapes, torch.float64)
    opt = gx.Optimizer(params, make_tx(), flat=source_flat)
    train(opt, params, 10)
    saved = round_trip({"params": [p.detach().clone() for p in params], "opt": opt.state_dict()})
    resumed = [torch.nn.Parameter(x) for x in saved.pop("params")]  # nothing else over their memory
    moved = gx.Optimizer(resumed, make_tx(), flat=not source_flat)
    moved.load_state_dict(saved["opt"])
    train(moved, resumed, 10, start=10)
    return resumed, ref, moved


def seeded_backward(params, step: int, skip=(), *, cubic: bool = False) -> None:
    """Backward of ``sum w_i . p_i + p_i^2 / 2`` (``p_i^3 / 3`` with ``cubic``: a curvature that
    varies) over the parameters not in ``skip``, ``w`` drawn for ``step``; the gradients
    accumulate into what ``.grad`` holds."""
    gen = torch.Generator().manual_seed(100 + step)
    loss = 0.0
    for i, p in enumerate(params):
        if i in skip:
            continue
        w = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype)
        loss = loss + (w * p).sum() + ((p * p * p).sum() / 3 if cubic else 0.5 * (p * p).sum())
    loss.backward()
