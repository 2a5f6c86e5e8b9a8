"""CUDA: every registered transform and alias on a GPU gives the numbers it gives on the CPU, and the adapter's fast,
compiled and checkpoint paths hold there. Skipped without a GPU (CI has none); run on a machine
with one: ``pytest tests/test_cuda.py``."""

from __future__ import annotations

import io

import pytest
import torch
from conftest import MLPProblem
from registry import ENTRIES

import gradtx as gx

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

CUDA = torch.device("cuda")
# Their updates draw random numbers, which a CUDA generator draws differently from a CPU one.
RANDOM_DRAWS = {"add_noise", "noisy_sgd", "scale_by_psgd_kron", "psgd_kron", "scale_by_psgd_dense", "psgd_dense",
                "scale_by_psgd_lra", "psgd_lra"}
# SOAP rotates into the eigenbasis of rank-deficient factors: within their null space any basis is
# an eigenbasis, and cuSOLVER and LAPACK pick different ones, which Adam's diagonal then tells apart.
BASIS_DEPENDENT = {"soap", "scale_by_soap"}
GRADIENT_ONLY = [e for e in ENTRIES if not e.needs and e.name not in RANDOM_DRAWS | BASIS_DEPENDENT]


def _functional_run(tx: gx.GradientTransformation, device: torch.device, steps: int) -> dict[str, torch.Tensor]:
    problem = MLPProblem(dtype=torch.float64)
    problem.xs, problem.ys = [x.to(device) for x in problem.xs], [y.to(device) for y in problem.ys]
    params = {k: v.to(device) for k, v in problem.params0.items()}
    state = tx.init(params)
    for step in range(steps):
        grads = problem.grads(params, step)
        updates, state = tx.update(grads, state, params)
        params = gx.apply_updates(params, updates)
    return {k: v.cpu() for k, v in params.items()}


@pytest.mark.parametrize("entry", GRADIENT_ONLY, ids=[e.name for e in GRADIENT_ONLY])
def test_entry_on_cuda_matches_cpu_in_float64(entry):
    """Float64 leaves the kernels' rounding differences at ~1e-16, so 10 steps on the GPU and on
    the CPU agree far below any algorithm's own scale."""
    cpu = _functional_run(entry.build(), torch.device("cpu"), 10)
    gpu = _functional_run(entry.build(), CUDA, 10)
    for k in cpu:
        torch.testing.assert_close(gpu[k], cpu[k], rtol=1e-9, atol=1e-11, msg=f"{entry.name}: {k}")


def _model(seed: int = 0, device: torch.device = CUDA, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.Tanh(), torch.nn.Linear(64, 64),
                                torch.nn.LayerNorm(64), torch.nn.Linear(64, 1))
    return model.to(device=device, dtype=dtype)


def _train(make_opt, steps: int = 20, model=None) -> torch.nn.Module:
    model = model or _model()
    opt = make_opt(model.parameters())
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x, y = torch.randn(16, 32, generator=gen).to(CUDA), torch.randn(16, 1, generator=gen).to(CUDA)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
    return model


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("name, make_gx, make_torch", [
    ("adamw", lambda p, fast: gx.Optimizer(p, gx.adamw(1e-2, weight_decay=0.1), fast=fast),
     lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1, fused=True)),
    ("adam", lambda p, fast: gx.Optimizer(p, gx.adam(1e-2), fast=fast),
     lambda p: torch.optim.Adam(p, lr=1e-2, fused=True)),
    ("sgd", lambda p, fast: gx.Optimizer(p, gx.sgd(1e-2, momentum=0.9, nesterov=True), fast=fast),
     lambda p: torch.optim.SGD(p, lr=1e-2, momentum=0.9, nesterov=True, fused=True)),
])
def test_adapter_on_cuda_matches_torch_fused(name, make_gx, make_torch, fast):
    ours = _train(lambda p: make_gx(p, fast))
    theirs = _train(make_torch)
    for a, b in zip(ours.parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_compiled_path_on_cuda_matches_eager():
    eager = _train(lambda p: gx.Optimizer(p, gx.chain(gx.clip_value(1.0), gx.adamw(1e-2)), fast=False))
    compiled = _train(lambda p: gx.Optimizer(p, gx.chain(gx.clip_value(1.0), gx.adamw(1e-2)), compile=True))
    for a, b in zip(eager.parameters(), compiled.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _steps(model: torch.nn.Module, opt: torch.optim.Optimizer, seed: int, steps: int) -> None:
    device, dtype = next(model.parameters()).device, next(model.parameters()).dtype
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = torch.randn(16, 32, generator=gen, dtype=dtype), torch.randn(16, 1, generator=gen, dtype=dtype)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x.to(device)), y.to(device)).backward()
        opt.step()


def test_checkpoint_moves_from_cuda_to_cpu_and_continues():
    """A float64 state saved on the GPU loads (map_location="cpu", weights_only) into the same
    model and optimizer on the CPU, and both continue to the same parameters."""
    gpu_model = _model(dtype=torch.float64)
    gpu_opt = gx.Optimizer(gpu_model.parameters(), gx.adamw(1e-2))
    _steps(gpu_model, gpu_opt, seed=0, steps=5)
    buffer = io.BytesIO()
    torch.save({"model": gpu_model.state_dict(), "opt": gpu_opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, map_location="cpu", weights_only=True)

    cpu_model = _model(seed=1, device=torch.device("cpu"), dtype=torch.float64)
    cpu_model.load_state_dict(saved["model"])
    cpu_opt = gx.Optimizer(cpu_model.parameters(), gx.adamw(1e-2))
    cpu_opt.load_state_dict(saved["opt"])
    _steps(gpu_model, gpu_opt, seed=1, steps=5)
    _steps(cpu_model, cpu_opt, seed=1, steps=5)
    for a, b in zip(gpu_model.parameters(), cpu_model.parameters()):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-9, atol=1e-11)


def test_global_norm_clipping_over_parameters_on_two_devices():
    """One chain over a CPU and a GPU parameter: the global norm counts both, as
    ``clip_grad_norm_`` over the same two tensors does."""
    a_cpu, b_gpu = torch.randn(5, dtype=torch.float64), torch.randn(3, dtype=torch.float64, device=CUDA)
    ga, gb = torch.full((5,), 3.0, dtype=torch.float64), torch.full((3,), 4.0, dtype=torch.float64, device=CUDA)
    ours = [a_cpu.clone().requires_grad_(), b_gpu.clone().requires_grad_()]
    theirs = [a_cpu.clone().requires_grad_(), b_gpu.clone().requires_grad_()]
    opt = gx.Optimizer(ours, gx.chain(gx.clip_by_global_norm(1.0), gx.sgd(0.1)))
    ref = torch.optim.SGD(theirs, lr=0.1)
    for params, grads in ((ours, (ga, gb)), (theirs, (ga, gb))):
        for p, g in zip(params, grads):
            p.grad = g.clone()
    opt.step()
    torch.nn.utils.clip_grad_norm_(theirs, 1.0)
    ref.step()
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)
