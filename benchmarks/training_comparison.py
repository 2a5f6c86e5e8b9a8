"""Training comparison: a small CNN on procedurally rendered digits, trained by AdamW, SOAP,
Shampoo, Muon (two ways), schedule-free AdamW and Prodigy through ``gx.Optimizer``.

Usage::

    PYTHONPATH=src python benchmarks/training_comparison.py             # the figure of the docs, ~5 min
    PYTHONPATH=src python benchmarks/training_comparison.py --quick     # 100 steps, one lr each

**Task.** 16x16 grey images of the ten digits, each glyph of a 5x7 bitmap font drawn through a
random affine map (rotation up to 25 degrees, shear, scale 0.7-1.1, shift), blurred, at a random
contrast, over Gaussian noise and a random distractor stroke. Everything is generated from a
fixed seed by torch on the CPU (no download, no file): 8192 training images, 1024 validation
images (to choose the learning rate) and 2048 test images (reported).

**Model.** Four 3x3 convolutions (1-8-16-16-32 channels, the second and fourth with stride 2, ReLU),
a 2x2 average pool and a linear classifier (128 -> 10): 16k parameters, four 4-D conv weights,
one matrix, five bias vectors.

**Protocol.** Every optimizer starts from the same initial weights and sees the same 500
batches of 64 images. Each runs at three learning rates (in ``OPTIMIZERS``, a factor ~3 apart around its
usual value; for Prodigy the multiplier of its estimate); the one with the lowest validation loss
at the end is kept and plotted. No weight decay, no schedule beyond what a method builds in
(schedule-free's warmup), every other setting the alias's default except where ``OPTIMIZERS``
says: Shampoo grafts Adam's step size (its practical form, Anil et al. 2020) and refreshes its
roots every 10 steps; Muon runs twice, as ``gx.muon`` (orthogonalized steps for the classifier's
matrix only, Adam at the same lr for the 4-D conv weights and the biases, as
``optax.contrib.muon`` by default) and inside ``gx.in_projected_space`` with each conv weight
seen as an ``out x (in kh kw)`` matrix (Keller Jordan's rule for convolutions).
Schedule-free AdamW is evaluated at its averaged point (``opt.eval()``). Training loss is
smoothed by an exponential moving average (debiased, half-life ~14 steps); test accuracy is
measured every 25 steps. ``torch.set_num_threads(1)``.

Outputs: ``--figure`` (default ``docs/figures/training_comparison.png``), ``--json``
(default ``docs/figures/training_comparison.json``: the losses, accuracies, sweep and times of
each kept run; ``--replot`` redraws the figure from it) and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import statistics
import time
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F

import gradtx as gx

SIZE = 16
BATCH = 64
STEPS = 500
EVAL_EVERY = 25

# a 5x7 bitmap font: rows top to bottom, '#' is ink
_FONT = {
    0: [" ### ", "#   #", "#  ##", "# # #", "##  #", "#   #", " ### "],
    1: ["  #  ", " ##  ", "# #  ", "  #  ", "  #  ", "  #  ", "#####"],
    2: [" ### ", "#   #", "    #", "   # ", "  #  ", " #   ", "#####"],
    3: ["#####", "   # ", "  #  ", "   # ", "    #", "#   #", " ### "],
    4: ["   # ", "  ## ", " # # ", "#  # ", "#####", "   # ", "   # "],
    5: ["#####", "#    ", "#### ", "    #", "    #", "#   #", " ### "],
    6: ["  ## ", " #   ", "#    ", "#### ", "#   #", "#   #", " ### "],
    7: ["#####", "    #", "   # ", "  #  ", " #   ", " #   ", " #   "],
    8: [" ### ", "#   #", "#   #", " ### ", "#   #", "#   #", " ### "],
    9: [" ### ", "#   #", "#   #", " ####", "    #", "   # ", " ##  "],
}


def _glyphs() -> torch.Tensor:
    """(10, 1, 9, 9): each glyph centred in a square, so the affine map keeps its aspect."""
    out = torch.zeros(10, 1, 9, 9)
    for digit, rows in _FONT.items():
        out[digit, 0, 1:8, 2:7] = torch.tensor([[c == "#" for c in row] for row in rows], dtype=torch.float32)
    return out


def render(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images (n, 1, SIZE, SIZE) with their labels, a function of ``seed`` alone."""
    gen = torch.Generator().manual_seed(seed)

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, *shape, generator=gen)

    labels = torch.randint(0, 10, (n,), generator=gen)
    angle = uniform(-25, 25) * math.pi / 180
    scale = uniform(0.7, 1.1)
    shear = uniform(-0.3, 0.3)
    shift = uniform(-0.2, 0.2, 2)
    # theta maps output coordinates to glyph coordinates: the inverse of the drawing map
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    shr = torch.eye(2).repeat(n, 1, 1)
    shr[:, 0, 1] = shear
    linear = torch.linalg.inv(rot @ shr * scale[:, None, None])
    theta = torch.cat([linear, -(linear @ shift[:, :, None])], dim=2)
    grid = F.affine_grid(theta, [n, 1, SIZE, SIZE], align_corners=False)
    ink = F.grid_sample(_glyphs()[labels], grid, align_corners=False)
    # a distractor: a straight stroke at a random place and angle
    ts = torch.linspace(-1, 1, 2 * SIZE)
    start, direction = uniform(-0.8, 0.8, 2), uniform(-0.5, 0.5, 2)
    points = start[:, None, :] + ts[None, :, None] * direction[:, None, :]
    cols = ((points[..., 0] + 1) * SIZE / 2).long().clamp(0, SIZE - 1)
    rows = ((points[..., 1] + 1) * SIZE / 2).long().clamp(0, SIZE - 1)
    stroke = torch.zeros(n, SIZE * SIZE)
    stroke.scatter_(1, rows * SIZE + cols, 1.0)
    ink = torch.maximum(ink, 0.6 * stroke.view(n, 1, SIZE, SIZE))
    blur = torch.tensor([0.15, 0.7, 0.15])
    ink = F.conv2d(ink, (blur[:, None] * blur[None, :]).view(1, 1, 3, 3), padding=1)
    images = uniform(0.5, 1.0, 1, 1, 1) * ink + 0.15 * torch.randn(n, 1, SIZE, SIZE, generator=gen)
    return (images - 0.1) / 0.4, labels


def model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, padding=1, stride=2), torch.nn.ReLU(),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(32, 32, 3, padding=1, stride=2), torch.nn.ReLU(),
        torch.nn.AvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(128, 10))


class Data:
    """The three splits and the batch order, shared by every run."""

    def __init__(self, n_train: int = 8192, n_val: int = 1024, n_test: int = 2048, seed: int = 0) -> None:
        self.train = render(n_train, seed)
        self.val = render(n_val, seed + 1)
        self.test = render(n_test, seed + 2)
        self.seed = seed

    def batches(self, steps: int) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(self.seed + 3)
        x, y = self.train
        order = torch.empty(0, dtype=torch.long)
        for _ in range(steps):
            if len(order) < BATCH:
                order = torch.cat([order, torch.randperm(len(y), generator=gen)])
            take, order = order[:BATCH], order[BATCH:]
            yield x[take], y[take]


@torch.no_grad()
def evaluate(net: torch.nn.Module, split: tuple[torch.Tensor, torch.Tensor]) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) on ``split``."""
    logits = net(split[0])
    return F.cross_entropy(logits, split[1]).item(), (logits.argmax(1) == split[1]).float().mean().item()


def train(make_opt: Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer], data: Data,
          steps: int = STEPS, eval_every: int = EVAL_EVERY, seed: int = 0) -> dict:
    """Train a fresh :func:`model` for ``steps`` batches with the optimizer ``make_opt(params)``
    (any ``torch.optim.Optimizer``; ``eval()``/``train()`` are called around evaluations when
    it has them, as schedule-free needs). Returns the per-step training losses, the test
    accuracy every ``eval_every`` steps, the final validation and test (loss, accuracy), and the
    median wall time of a whole step and of ``opt.step()`` alone and the CPU time of
    ``opt.step()`` (less disturbed by other processes on a shared machine), in ms."""
    net = model(seed)
    opt = make_opt(net.parameters())
    swaps = hasattr(opt, "eval") and hasattr(opt, "train")

    def held_out(split):
        if swaps:
            opt.eval()
        try:
            return evaluate(net, split)
        finally:
            if swaps:
                opt.train()

    losses, curve, step_ms, opt_ms, opt_cpu_ms = [], [], [], [], []
    for i, (x, y) in enumerate(data.batches(steps), start=1):
        t0 = time.perf_counter()
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        t1, c1 = time.perf_counter(), time.process_time()
        opt.step()
        t2, c2 = time.perf_counter(), time.process_time()
        losses.append(loss.item())
        step_ms.append(1e3 * (t2 - t0))
        opt_ms.append(1e3 * (t2 - t1))
        opt_cpu_ms.append(1e3 * (c2 - c1))
        if not math.isfinite(losses[-1]):
            break  # diverged: the rest would be NaN
        if eval_every and i % eval_every == 0:
            curve.append((i, held_out(data.test)[1]))
    test = held_out(data.test)
    if eval_every and (not curve or curve[-1][0] != len(losses)):
        curve.append((len(losses), test[1]))
    return {"losses": losses, "test_curve": curve, "val": held_out(data.val), "test": test,
            "step_ms": statistics.median(step_ms), "opt_step_ms": statistics.median(opt_ms),
            "opt_step_cpu_ms": statistics.median(opt_cpu_ms)}


def smooth(values: list[float], half_life: float = 14.0) -> list[float]:
    """Debiased exponential moving average (as TensorBoard's smoothing, debiased)."""
    beta = 0.5 ** (1 / half_life)
    out, avg = [], 0.0
    for i, v in enumerate(values, start=1):
        avg = beta * avg + (1 - beta) * v
        out.append(avg / (1 - beta**i))
    return out


def _conv_as_matrix() -> gx.Projection:
    """Each leaf of more than two dimensions (a conv weight ``(out, in, kh, kw)``) as the matrix
    ``out x (in kh kw)``, Keller Jordan's rule for Muon on convolutions; other leaves as they are."""

    def project(x, s):
        return x.reshape(x.shape[0], -1) if x.dim() > 2 else x

    def projected_like(p):
        return p.new_zeros(p.shape[0], p[0].numel()) if p.dim() > 2 else torch.zeros_like(p)

    return gx.Projection("conv_as_matrix()", lambda p: p.new_zeros((0,)), lambda g, s, count: s, project,
                         lambda y, s, like: y.reshape(like.shape), projected_like)


# name -> (label, build(lr) -> transform, learning rates tried)
OPTIMIZERS: dict[str, tuple[str, Callable[[float], gx.GradientTransformation], list[float]]] = {
    "adamw": ("AdamW", lambda lr: gx.adamw(lr, weight_decay=0.0), [3e-3, 1e-2, 3e-2]),
    "soap": ("SOAP", lambda lr: gx.soap(lr, weight_decay=0.0), [1e-3, 3e-3, 1e-2]),
    # without grafting, Shampoo's step size follows its statistics (tiny here); with update_freq > 1
    # the roots of step 1 amplify every later direction by up to eps^(-1/2k): the practical
    # form (Anil et al., 2020) grafts Adam's step norm onto Shampoo's direction
    "shampoo": ("Shampoo (Adam grafting, roots every 10 steps)",
                lambda lr: gx.shampoo(lr, update_freq=10, graft=gx.scale_by_adam(), start_preconditioning_step=1),
                [3e-3, 1e-2, 3e-2]),
    "muon": ("Muon (as gx.muon: Adam on conv weights and biases)", lambda lr: gx.muon(lr), [1e-3, 3e-3, 1e-2]),
    "muon_conv": ("Muon, conv weights as out x (in kh kw) matrices",
                  lambda lr: gx.in_projected_space(gx.muon(lr), _conv_as_matrix()), [1e-2, 3e-2, 1e-1]),
    "schedule_free_adamw": ("Schedule-free AdamW (warmup 25)",
                            lambda lr: gx.schedule_free_adamw(lr, warmup_steps=25), [1e-2, 3e-2, 1e-1]),
    "prodigy": ("Prodigy (lr multiplies the estimate)", lambda lr: gx.prodigy(lr), [0.1, 0.3, 1.0]),
}

# how each is written, for the table
CODE = {
    "adamw": "gx.adamw(lr, weight_decay=0)",
    "soap": "gx.soap(lr, weight_decay=0)",
    "shampoo": "gx.shampoo(lr, update_freq=10, graft=gx.scale_by_adam(), start_preconditioning_step=1)",
    "muon": "gx.muon(lr)",
    "muon_conv": "gx.in_projected_space(gx.muon(lr), conv_as_matrix)",
    "schedule_free_adamw": "gx.schedule_free_adamw(lr, warmup_steps=25)",
    "prodigy": "gx.prodigy(lr)",
}


def run(names: list[str], data: Data, steps: int, quick: bool = False) -> dict:
    results = {}
    for name in names:
        label, build, lrs = OPTIMIZERS[name]
        tried = {}
        for lr in lrs[1:2] if quick else lrs:
            t0 = time.perf_counter()
            got = train(lambda ps, lr=lr, build=build: gx.Optimizer(ps, build(lr)), data, steps)
            tried[lr] = got
            print(f"{name:>20} lr {lr:<6g} val loss {got['val'][0]:.4f}  test acc {got['test'][1]:.4f}  "
                  f"{got['step_ms']:.1f} ms/step  ({time.perf_counter() - t0:.0f} s)", flush=True)
        best = min(tried, key=lambda lr: tried[lr]["val"][0] if math.isfinite(tried[lr]["val"][0]) else math.inf)
        results[name] = {"label": label, "lr": best, **tried[best],
                         "sweep": {f"{lr:g}": {"val_loss": r["val"][0], "final_train_loss": smooth(r["losses"])[-1]}
                                   for lr, r in tried.items()}}
    return results


def table(results: dict) -> str:
    lines = ["| optimizer | lr (best of) | train loss | test loss | test accuracy "
             "| ms/step | `opt.step()` ms | `opt.step()` CPU ms |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in results.items():
        tried = ", ".join(f"**{lr}**" if float(lr) == r["lr"] else lr for lr in r["sweep"])
        lines.append(f"| `{CODE[name]}` | {tried} | {smooth(r['losses'])[-1]:.3f} | {r['test'][0]:.3f} | "
                     f"{100 * r['test'][1]:.1f}% | {r['step_ms']:.1f} | {r['opt_step_ms']:.1f} | "
                     f"{r['opt_step_cpu_ms']:.1f} |")
    return "\n".join(lines)


def figure(results: dict, path: pathlib.Path, steps: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for r in results.values():
        line, = left.plot(range(1, len(r["losses"]) + 1), smooth(r["losses"]), lw=1.3)
        xs, accs = zip(*r["test_curve"]) if r["test_curve"] else ((), ())
        right.plot(xs, [100 * a for a in accs], ".-", lw=1.2, ms=3, color=line.get_color(),
                   label=f"{r['label']}, lr {r['lr']:g}")
    left.set(yscale="log", xlabel="step", ylabel="training loss (cross-entropy, smoothed)", xlim=(0, steps),
             title="Training loss")
    right.set(xlabel="step", ylabel="test accuracy (%)", xlim=(0, steps), title="Held-out accuracy (2048 images)")
    accuracies = [100 * a for r in results.values() for _, a in r["test_curve"]]
    if accuracies:
        right.set_ylim(bottom=max(0, min(accuracies) - 5), top=100)
    right.legend(fontsize=7, loc="lower right")  # the empty corner once accuracy has risen
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.suptitle(f"A 16k-parameter CNN on rendered digits, batch {BATCH}, best of 3 learning rates each", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int)
    parser.add_argument("--quick", action="store_true", help="100 steps, the middle learning rate only")
    parser.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=list(OPTIMIZERS))
    parser.add_argument("--figure", default="docs/figures/training_comparison.png")
    parser.add_argument("--json", default="docs/figures/training_comparison.json")
    parser.add_argument("--replot", metavar="JSON", help="redraw the figure and table of a saved run; no training")
    args = parser.parse_args(argv)
    if args.replot:
        saved = json.loads(pathlib.Path(args.replot).read_text())
        steps, results = saved["steps"], saved["results"]
        args.json = None
    else:
        steps = args.steps or (100 if args.quick else STEPS)
        torch.set_num_threads(1)  # small tensors; and the machine is shared
        t0 = time.perf_counter()
        data = Data()
        results = run(args.optimizers, data, steps, args.quick)
        print(f"\ntorch {torch.__version__}, 1 thread, {steps} steps of batch {BATCH}, "
              f"total {time.perf_counter() - t0:.0f} s\n")
    print(table(results))
    if args.figure:
        figure(results, pathlib.Path(args.figure), steps)
        print(f"\nfigure written to {args.figure}")
    if args.json:
        summary = {name: r | {"losses": [round(v, 4) for v in r["losses"]],
                              "final_train_loss_smoothed": smooth(r["losses"])[-1]} for name, r in results.items()}
        pathlib.Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(args.json).write_text(json.dumps({"torch": torch.__version__, "steps": steps, "batch": BATCH,
                                                       "results": summary}, indent=1) + "\n")
        print(f"summary written to {args.json}")
    return results


if __name__ == "__main__":
    main()
