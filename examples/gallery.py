"""The gallery's figures: optimizer trajectories on Rosenbrock's function and on an ill-conditioned
quadratic, and the loss curves of a small training run.

Run: ``python examples/gallery.py [out_dir]`` (default ``docs/gallery``; needs matplotlib). The site's
build runs it (docs/hooks.py), so the figures always show the library as it is. Every run is
functional (``tx.init``/``tx.update``/``gx.apply_updates``) except the training run, which uses
``gx.Optimizer`` in an ordinary torch loop. A few seconds in all.
"""

from __future__ import annotations

import math
import pathlib
import sys

import torch

import gradtx as gx

DTYPE = torch.float64


def rosenbrock(p):
    x, y = p["xy"][0], p["xy"][1]
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


# 0.5 z^T A z with A's eigenvalues 1 and 50, its axes turned by 30 degrees (no coordinate axis helps)
_c, _s = math.cos(math.pi / 6), math.sin(math.pi / 6)
_R = torch.tensor([[_c, -_s], [_s, _c]], dtype=DTYPE)
QUAD_A = _R @ torch.diag(torch.tensor([1.0, 50.0], dtype=DTYPE)) @ _R.T


def quadratic(p):
    z = p["xy"]
    return 0.5 * z @ QUAD_A @ z


def trajectory(tx: gx.GradientTransformation, loss_fn, start, steps: int) -> torch.Tensor:
    """The iterates of ``tx`` from ``start``; every extra argument is given, so methods that
    evaluate again (L-BFGS's line search) run in the same loop as the others."""
    params = {"xy": torch.tensor(start, dtype=DTYPE)}
    state = tx.init(params)
    points = [params["xy"]]
    for _ in range(steps):
        extra = gx.evaluation_args(loss_fn, params, backend="autograd")
        if extra["grad"]["xy"].norm() < 1e-10:
            break  # converged: nothing more to draw
        updates, state = tx.update(extra["grad"], state, params, **extra)
        params = gx.apply_updates(params, updates)
        points.append(params["xy"])
    return torch.stack(points).detach()


TRAJECTORIES = {
    "rosenbrock": (rosenbrock, (-1.2, 1.6), 300, ((-2.0, 2.0), (-0.6, 3.0)), {
        "SGD, momentum 0.9 (lr 1e-3)": gx.sgd(1e-3, momentum=0.9),
        "Adam (lr 0.05)": gx.adam(0.05),
        "Lion (lr 0.01)": gx.lion(0.01),
        "AdaBelief (lr 0.05)": gx.adabelief(0.05),
        "L-BFGS (zoom line search)": gx.lbfgs(),
    }),
    "quadratic": (quadratic, (-1.8, 1.2), 80, ((-2.2, 1.2), (-2.2, 1.5)), {
        "SGD (lr 0.035)": gx.sgd(0.035),
        "SGD, Nesterov 0.7 (lr 0.02)": gx.sgd(0.02, momentum=0.7, nesterov=True),
        "Adam (lr 0.1)": gx.adam(0.1),
        "AdaGrad (lr 0.5)": gx.adagrad(0.5),
        "L-BFGS (zoom line search)": gx.lbfgs(),
    }),
}


def plot_trajectories(name: str, out: pathlib.Path) -> pathlib.Path:
    import matplotlib.pyplot as plt

    loss_fn, start, steps, (xlim, ylim), optimizers = TRAJECTORIES[name]
    xs, ys = torch.meshgrid(torch.linspace(*xlim, 200, dtype=DTYPE), torch.linspace(*ylim, 200, dtype=DTYPE),
                            indexing="xy")
    zs = torch.vmap(torch.vmap(lambda a, b: loss_fn({"xy": torch.stack([a, b])})))(xs, ys)
    fig, ax = plt.subplots(figsize=(7, 5))
    levels = torch.logspace(-2, math.log10(zs.max().item()), 18).tolist()
    ax.contour(xs, ys, zs, levels=levels, colors="0.7", linewidths=0.6)
    for label, tx in optimizers.items():
        path = trajectory(tx, loss_fn, start, steps)
        ax.plot(path[:, 0], path[:, 1], ".-", ms=2.5, lw=1, label=f"{label}: f = {loss_fn({'xy': path[-1]}):.1e}")
    minimum = (1.0, 1.0) if name == "rosenbrock" else (0.0, 0.0)
    ax.plot(*minimum, "k*", ms=12)
    ax.set(xlim=xlim, ylim=ylim, title=f"{name.capitalize()}: {steps} steps from {start}")
    ax.legend(fontsize=8, loc="lower right" if name == "rosenbrock" else "upper right")
    path = out / f"{name}.png"
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path


def training_losses(tx: gx.GradientTransformation, steps: int = 300, seed: int = 0) -> list[float]:
    """Full-batch loss of a small MLP regressing a noisy sine, trained through ``gx.Optimizer``."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(256, 8, generator=gen)
    y = torch.sin(x @ torch.randn(8, 1, generator=gen)) + 0.05 * torch.randn(256, 1, generator=gen)
    torch.manual_seed(seed)  # every optimizer starts from the same weights
    model = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))
    opt = gx.Optimizer(model.parameters(), tx)
    losses = []
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


TRAINING = {
    "SGD, momentum 0.9 (lr 0.05)": lambda: gx.sgd(0.05, momentum=0.9),
    "Adam (lr 3e-3)": lambda: gx.adam(3e-3),
    "AdamW (lr 3e-3, decay 0.01)": lambda: gx.adamw(3e-3, weight_decay=0.01),
    "Lion (lr 1e-3)": lambda: gx.lion(1e-3),
    "Prodigy (no lr to tune)": lambda: gx.prodigy(),
    "clip, Adam, cosine lr (the mission chain)": lambda: gx.chain(
        gx.clip_value(10.0), gx.scale_by_adam(), gx.scale_by_lr(gx.cosine_decay_schedule(3e-3, 300))),
}


def plot_training(out: pathlib.Path) -> pathlib.Path:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, build in TRAINING.items():
        ax.semilogy(training_losses(build()), lw=1.2, label=label)
    ax.set(xlabel="step", ylabel="training loss (MSE)", title="A 2-layer MLP, full batch, through gx.Optimizer")
    ax.legend(fontsize=8)
    path = out / "training.png"
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    return path


def main(out: pathlib.Path | str = "docs/gallery") -> list[pathlib.Path]:
    import matplotlib

    matplotlib.use("Agg")
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: more threads only add synchronisation
    try:
        return [plot_trajectories("rosenbrock", out), plot_trajectories("quadratic", out), plot_training(out)]
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    for written in main(sys.argv[1] if len(sys.argv) > 1 else "docs/gallery"):
        print("wrote", written)
