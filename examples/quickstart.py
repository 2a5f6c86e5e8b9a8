"""Quickstart: train a small MLP with a gradtx chain through ``gx.Optimizer``.

Run: ``python examples/quickstart.py``. The chain clips gradients to [-10, 10], rescales
them as Adam does and steps with learning rate 1e-3; a torch LR scheduler drives the lr.
"""

from __future__ import annotations

import torch

import gradtx as gx


def make_data(n: int = 512, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=gen)
    y = torch.sin(x @ torch.randn(8, 1, generator=gen)) + 0.05 * torch.randn(n, 1, generator=gen)
    return x, y


def main(steps: int = 1000) -> None:
    torch.manual_seed(0)
    x, y = make_data()
    model = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))

    tx = gx.chain(gx.clip_value(10.0), gx.scale_by_adam(), gx.scale_by_lr(1e-3))
    print(tx)
    opt = gx.Optimizer(model.parameters(), tx)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)

    for step in range(steps + 1):
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 200 == 0:
            print(f"step {step:4d}  loss {loss.item():.5f}  lr {opt.param_groups[0]['lr']:.2e}")


if __name__ == "__main__":
    main()
