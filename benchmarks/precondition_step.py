"""Step time and peak memory of the matrix preconditioners: gradtx's SOAP, Shampoo, PSGD Kron
and PSGD's dense and low-rank forms under ``gx.Optimizer`` against the torch implementations
installed beside it.

Usage::

    PYTHONPATH=src python benchmarks/precondition_step.py            # resnet-like set, 30 steps
    PYTHONPATH=src python benchmarks/precondition_step.py --steps 12 --set small
    PYTHONPATH=src python benchmarks/precondition_step.py --set tiny  # an MLP: PSGD dense runs too
    PYTHONPATH=src python benchmarks/precondition_step.py --memory-only  # peak memory only

Each optimizer runs ``--steps`` steps on the same parameters and gradients (a refresh of the
eigenbases / roots every 10 steps is included, so the median covers both kinds of step); the
variants of one algorithm are timed in turn, round after round, in one process, and the median
step time is reported with its ratio to each reference. One run. Peak memory is measured per
optimizer in a fresh process (``_memory.py``, as in ``optimizer_step.py``): the extra peak RSS
over ``MEMORY_STEPS`` steps (the first step, which builds the factors, and the first refresh),
after a first optimizer of the same kind on small tensors has paid for lazy imports; it is not
the same for every implementation, since the temporaries of a refresh (eigendecompositions,
matrix roots, QR) and what each keeps besides the factors differ. References missing from
the environment are skipped. ``--heavyball`` adds heavyball's SOAP and PSGDKron (it has no
plain Shampoo; its KLShampoo is another rule): they compile their step with inductor, which
takes tens of seconds (SOAP) to minutes (PSGDKron) per optimizer on a CPU, paid in the first
step (outside the timed steps; inside the memory measure). PSGD's forms over all parameters flattened run only where
they fit: dense (an n x n matrix) up to ``DENSE_MAX`` parameters, the low-rank form (rank 10)
up to ``LRA_MAX``; the low-rank reference is torchzero's ``PSGDLRAWhiten`` (Xi-Lin Li's code).
Li's dense class is Newton-only (Hessian-vector products from a closure), so the dense
whitening form has no reference here.
"""
from __future__ import annotations

import argparse
import pathlib
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

import gradtx as gx

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import _memory  # noqa: E402 - the peak-memory helper, beside this script

FREQ = 10
DENSE_MAX, LRA_MAX = 5_000, 2_000_000
# algorithms over all parameters at once: the largest parameter count they are run at
SIZE_LIMITS = {"psgd_dense": DENSE_MAX, "psgd_lra": LRA_MAX}
MEMORY_STEPS = FREQ + 1  # the first step and the first refresh


def shapes(name: str) -> list[tuple[int, ...]]:
    if name == "resnet":  # a narrow resnet-18: conv weights, batch-norm vectors, the classifier
        convs = [(64, 3, 7, 7)] + [(64, 64, 3, 3)] * 4 + [(128, 64, 3, 3)] + [(128, 128, 3, 3)] * 3 + \
            [(256, 128, 3, 3)] + [(256, 256, 3, 3)] * 3
        vectors = [(c,) for c in (64,) * 10 + (128,) * 8 + (256,) * 8]
        return convs + vectors + [(10, 256), (10,)]
    if name == "small":
        return [(64, 64, 3, 3)] * 2 + [(64,)] * 4 + [(10, 64)]
    if name == "tiny":  # a small MLP (874 parameters)
        return [(32, 16), (32,), (10, 32), (10,)]
    raise ValueError(f"unknown set {name!r}")


def make(name: str) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(0)
    out = []
    for s in shapes(name):
        p = torch.nn.Parameter(torch.randn(s, generator=gen) * 0.1)
        p.grad = torch.randn(s, generator=gen)
        out.append(p)
    return out


def variants(heavyball: bool = False) -> dict[str, dict[str, Callable]]:
    algos: dict[str, dict[str, Callable]] = {
        "soap": {"gradtx": lambda ps: gx.Optimizer(ps, gx.soap(3e-3, precondition_frequency=FREQ))},
        # the paper's rule, as pytorch_optimizer.Shampoo: no grafting, roots from the first step
        "shampoo": {"gradtx": lambda ps: gx.Optimizer(ps, gx.shampoo(1e-3, update_freq=FREQ, graft=None,
                                                                      start_preconditioning_step=1))},
        "psgd_kron": {"gradtx": lambda ps: gx.Optimizer(ps, gx.chain(gx.scale_by_psgd_kron(), gx.scale_by_lr(1e-3)))},
        "psgd_dense": {"gradtx": lambda ps: gx.Optimizer(ps, gx.psgd_dense(1e-3))},
        "psgd_lra": {"gradtx": lambda ps: gx.Optimizer(ps, gx.psgd_lra(1e-3))},
    }
    try:
        import torchzero as tz

        algos["psgd_lra"]["torchzero"] = lambda ps: tz.Optimizer(ps, tz.m.PSGDLRAWhiten(), tz.m.LR(1e-3))
    except ImportError:
        pass
    try:
        import pytorch_optimizer as po

        algos["soap"]["pytorch_optimizer"] = lambda ps: po.SOAP(ps, lr=3e-3, precondition_frequency=FREQ)
        algos["shampoo"]["pytorch_optimizer"] = lambda ps: po.Shampoo(ps, lr=1e-3,
                                                                      preconditioning_compute_steps=FREQ)
        algos["psgd_kron"]["pytorch_optimizer"] = lambda ps: po.Kron(ps, lr=1e-3)
    except ImportError:
        pass
    if heavyball:
        try:
            import heavyball as hb

            # the same hyperparameters as the other rows where heavyball has them
            algos["soap"]["heavyball"] = lambda ps: hb.SOAP(ps, lr=3e-3, betas=(0.95, 0.95), weight_decay=0.0,
                                                            precondition_frequency=FREQ, max_precond_dim=10000,
                                                            merge_dims=False)
            algos["psgd_kron"]["heavyball"] = lambda ps: hb.PSGDKron(ps, lr=1e-3, weight_decay=0.0)
        except ImportError:
            pass
    return algos


def run(set_name: str, steps: int, heavyball: bool = False) -> None:
    torch.manual_seed(0)
    count = sum(int(torch.Size(s).numel()) for s in shapes(set_name))
    for algo, impls in variants(heavyball).items():
        if count > SIZE_LIMITS.get(algo, count):
            print(f"{algo:10s} skipped: {count} parameters, above its limit of {SIZE_LIMITS[algo]}")
            continue
        opts, params = {}, {}
        for label, build in impls.items():
            params[label] = make(set_name)
            try:
                opts[label] = build(params[label])
                kept = [p.grad for p in params[label]]
                opts[label].step()  # first step: state, lazy imports, first decomposition (heavyball: compilation)
                for p, g in zip(params[label], kept):
                    p.grad = g
            except Exception as error:  # noqa: BLE001 - a reference that fails here is reported, not fatal
                print(f"{algo:10s} {label:18s} skipped: {type(error).__name__}: {error}")
                opts.pop(label, None)
        times: dict[str, list[float]] = {label: [] for label in opts}
        # heavyball sets p.grad to None once it has used it: every step gets the gradients back
        grads = {label: [p.grad for p in params[label]] for label in opts}
        for _ in range(steps):
            for label, opt in opts.items():
                for p, g in zip(params[label], grads[label]):
                    p.grad = g
                start = time.perf_counter()
                opt.step()
                times[label].append(time.perf_counter() - start)
        medians = {label: statistics.median(ts) for label, ts in times.items()}
        for label, t in medians.items():
            ratios = ", ".join(f"{t / medians[other]:.2f}x {other}" for other in medians if other != label)
            print(f"{algo:10s} {label:18s} {t * 1e3:9.2f} ms/step   {ratios}")


def _memory_one(algo: str, label: str, set_name: str) -> None:
    _memory.measure(variants(heavyball=True)[algo][label], lambda: make(set_name), steps=MEMORY_STEPS,
                    warm_shapes=[(4, 4, 3, 3), (8, 8), (8,)], warm_steps=MEMORY_STEPS)


def memory_table(set_name: str, heavyball: bool = False) -> None:
    """Peak memory of every implementation (a fresh process each), and its ratio to the others'."""
    count = sum(int(torch.Size(s).numel()) for s in shapes(set_name))
    print(f"## peak MiB over {MEMORY_STEPS} steps, set {set_name}")
    for algo, impls in variants(heavyball).items():
        if count > SIZE_LIMITS.get(algo, count):
            continue
        mems = {}
        for label in impls:
            try:
                mems[label] = _memory.peak_mib(__file__, ["--memory-one", algo, label, set_name])
            except subprocess.CalledProcessError as error:
                last = (error.stderr or "").strip().splitlines()[-1:] or ["?"]
                print(f"{algo:10s} {label:18s} skipped: {last[0]}")
        for label, m in mems.items():
            ratios = ", ".join(f"{m / mems[other]:.2f}x {other}" for other in mems
                               if other != label and mems[other] > 0)  # a tiny set can round to 0 MiB
            print(f"{algo:10s} {label:18s} {m:9.1f} MiB   {ratios}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", default="resnet", choices=["resnet", "small", "tiny"])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    parser.add_argument("--memory-only", action="store_true", help="peak memory only (no step times)")
    parser.add_argument("--heavyball", action="store_true",
                        help="also heavyball's SOAP and PSGDKron (inductor-compiled: minutes of compilation on a CPU)")
    parser.add_argument("--memory-one", nargs=3, metavar=("ALGO", "VARIANT", "SET"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_one:
        _memory_one(*args.memory_one)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, set {args.set}, {args.steps} steps")
    if not args.memory_only:
        run(args.set, args.steps, args.heavyball)
    if not args.no_memory:
        memory_table(args.set, args.heavyball)


if __name__ == "__main__":
    main()
