"""Peak memory of MeZO against plain SGD on a 10M-parameter model, each in a fresh process.

MeZO (Malladi et al., 2023) trains from two forward passes a step and regenerates its random
direction from a seed instead of storing it; its goal is the memory of inference. This measures
each optimizer's peak resident set size (``ru_maxrss``) in a process of its own: the whole
process, and the part above the baseline (torch imported, the model and a batch built, before
the first step). Methods:

- ``torch_sgd``: ``torch.optim.SGD(lr)`` after ``loss.backward()`` (params + grads);
- ``gx_sgd``: ``gx.Optimizer(model.parameters(), gx.sgd(lr))`` after ``loss.backward()``;
- ``gx_mezo``: ``gx.Optimizer(model.parameters(), gx.mezo(lr))`` stepped with
  ``closure(backward=False)`` (no ``.grad``, no autograd graph), parameters moved in place;
- ``gx_mezo_copies``: the same with ``evaluate_in_place=False`` (trial copies set by the
  adapter's closure evaluations), to show what the in-place path saves.

Run: ``PYTHONPATH=src python benchmarks/mezo_memory.py`` (add ``--params 10`` for the
parameter count in millions, ``--steps``). Goal: gx_mezo's peak at most 1.1x torch_sgd's.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

METHODS = ("torch_sgd", "gx_sgd", "gx_mezo", "gx_mezo_copies")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def run_one(method: str, millions: float, steps: int) -> dict:
    import torch

    import gradtx as gx

    torch.set_num_threads(1)
    torch.manual_seed(0)
    width = int(round(millions * 1e6 / 2000))  # two layers of 1000 x width (+ biases): ~millions M
    model = torch.nn.Sequential(torch.nn.Linear(1000, width), torch.nn.Tanh(), torch.nn.Linear(width, 1000))
    n_params = sum(p.numel() for p in model.parameters())
    x, y = torch.randn(8, 1000), torch.randn(8, 1000)

    def loss_fn():
        return torch.nn.functional.mse_loss(model(x), y)

    baseline = _rss_bytes()
    lr = 1e-3
    if method == "torch_sgd":
        opt = torch.optim.SGD(model.parameters(), lr=lr)
    elif method == "gx_sgd":
        opt = gx.Optimizer(model.parameters(), gx.sgd(lr), check_descent=False)
    else:
        opt = gx.Optimizer(model.parameters(), gx.mezo(lr, 1e-3, evaluate_in_place=method == "gx_mezo"))
    losses = []
    for _ in range(steps):
        if method.startswith("gx_mezo"):
            losses.append(float(opt.step(lambda backward=False: loss_fn())))
        else:
            opt.zero_grad(set_to_none=False)
            loss = loss_fn()
            loss.backward()
            opt.step()
            losses.append(float(loss))
    peak = _maxrss_bytes()
    return {"method": method, "params": n_params, "param_mib": n_params * 4 / 2 ** 20,
            "baseline_mib": baseline / 2 ** 20, "peak_mib": peak / 2 ** 20,
            "peak_above_baseline_mib": max(0, peak - baseline) / 2 ** 20, "losses": losses}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", type=float, default=10.0, help="parameters, in millions")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--method", choices=METHODS, help="run one method in this process (internal)")
    args = parser.parse_args()
    if args.method:
        print(json.dumps(run_one(args.method, args.params, args.steps)))
        return
    results = {}
    for method in METHODS:
        out = subprocess.run([sys.executable, __file__, "--method", method, "--params", str(args.params),
                              "--steps", str(args.steps)], capture_output=True, text=True, check=True)
        results[method] = json.loads(out.stdout.strip().splitlines()[-1])
    ref = results["torch_sgd"]
    print(f"{results['torch_sgd']['params'] / 1e6:.1f}M parameters ({ref['param_mib']:.0f} MiB float32), "
          f"{args.steps} steps, fresh process each")
    print(f"{'method':16s} {'peak RSS MiB':>13s} {'x torch_sgd':>12s} {'above baseline MiB':>19s} "
          f"{'x torch_sgd':>12s}")
    for method, r in results.items():
        print(f"{method:16s} {r['peak_mib']:13.0f} {r['peak_mib'] / ref['peak_mib']:12.2f} "
              f"{r['peak_above_baseline_mib']:19.0f} "
              f"{r['peak_above_baseline_mib'] / max(ref['peak_above_baseline_mib'], 1e-9):12.2f}")


if __name__ == "__main__":
    main()
