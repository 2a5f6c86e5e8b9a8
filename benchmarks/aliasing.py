"""4K aliasing in an optimizer step: torch's fused AdamW kernel (or its SGD kernel) on one
large tensor, with its streams (parameter, gradient, first and second moment) starting at
chosen offsets past a 4 KiB boundary, on 4 KiB pages (with ``--huge-pages``, also on 2 MiB
ones). The evidence behind ``gradtx.optim.placement`` and the flat path's staggered buffers.

Usage::

    PYTHONPATH=src python benchmarks/aliasing.py            # 16.8M float32, 12 rounds
    PYTHONPATH=src python benchmarks/aliasing.py --numel 4194304 --rounds 20
    PYTHONPATH=src python benchmarks/aliasing.py --kernel sgd_momentum   # parameter, gradient, momentum
    PYTHONPATH=src python benchmarks/aliasing.py --huge-pages   # each layout also on 2 MiB pages

Every layout's tensors are allocated once, then each round times a few kernel calls on each
layout in a shuffled order (one process, one thread); the median and minimum per call are
reported with their ratio to the layout where all four streams start alike.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time

import torch

from gradtx.optim import placement
from gradtx.optim.placement import at_offset

# name -> byte offsets of (parameter, gradient, mu, nu) past a 4 KiB boundary
LAYOUTS = {
    "all at one offset": (64, 64, 64, 64),
    "mu 1 KiB off": (64, 64, 1088, 64),
    "nu 1 KiB off": (64, 64, 64, 1088),
    "gradient 1 KiB off": (64, 1088, 64, 64),
    "mu and nu 1 KiB off (together)": (64, 64, 1088, 1088),
    "mu 2, nu 3 KiB off (gradtx default path)": (64, 64, 2112, 3136),
    "p 1, g 2, mu 3, nu 0 KiB (gradtx flat=True)": (1088, 2112, 3136, 64),
}


def _adamw(p, g, m, v, step):
    # lr 0: the parameter's values stay as drawn; the kernel still reads and writes it
    torch._fused_adamw_([p], [g], [m], [v], [], [step], lr=0.0, beta1=0.9, beta2=0.999,
                        weight_decay=0.0, eps=1e-8, amsgrad=False, maximize=False)


def _sgd_momentum(p, g, m, v, step):
    torch._fused_sgd_([p], [g], [m], weight_decay=0.0, momentum=0.9, lr=0.0, dampening=0.0, nesterov=False,
                      maximize=False, is_first_step=False)


def _sgd(p, g, m, v, step):
    torch._fused_sgd_([p], [g], [], weight_decay=0.0, momentum=0.0, lr=0.0, dampening=0.0, nesterov=False,
                      maximize=False, is_first_step=False)


KERNELS = {"adamw": _adamw, "sgd_momentum": _sgd_momentum, "sgd": _sgd}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--numel", type=int, default=16 * 1024 * 1024)
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--calls", type=int, default=3, help="kernel calls per layout and round")
    parser.add_argument("--kernel", choices=list(KERNELS), default="adamw",
                        help="torch's fused AdamW (p, g, mu, nu), SGD with momentum (p, g, mu) or plain SGD (p, g)")
    parser.add_argument("--huge-pages", action="store_true",
                        help="also each layout on transparent huge pages (gradtx's default for large CPU buffers)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    shape = torch.Size((args.numel,))
    cpu = torch.device("cpu")
    tensors, layouts = {}, {}
    default_bytes = placement.HUGE_PAGE_BYTES
    for huge in (False, True) if args.huge_pages else (False,):
        placement.HUGE_PAGE_BYTES = default_bytes if huge else None  # 4 KiB pages unless asked
        for name, offsets in LAYOUTS.items():
            name = f"{name}, huge pages" if huge else name
            p, g, m, v = (at_offset(shape, torch.float32, cpu, o) for o in offsets)
            for x in (p, g, m):
                x.normal_()
            v.uniform_()
            tensors[name], layouts[name] = (p, g, m, v), offsets
    placement.HUGE_PAGE_BYTES = default_bytes
    step = torch.tensor(1.0)
    kernel = KERNELS[args.kernel]
    times: dict[str, list[float]] = {name: [] for name in layouts}
    for _ in range(args.rounds):
        order = list(layouts)
        random.shuffle(order)
        for name in order:
            start = time.perf_counter()
            for _ in range(args.calls):
                kernel(*tensors[name], step)
            times[name].append((time.perf_counter() - start) / args.calls * 1e3)
    base = statistics.median(times["all at one offset"])
    print(f"torch {torch.__version__}, 1 thread, {args.kernel} kernel, {args.numel} float32 elements, "
          f"{args.rounds} rounds x {args.calls} calls")
    print("| layout (p, g, mu, nu bytes past 4 KiB) | median ms | min ms | median / all at one offset |")
    print("|---|---:|---:|---:|")
    for name, offsets in layouts.items():
        med = statistics.median(times[name])
        print(f"| {name} {offsets} | {med:.2f} | {min(times[name]):.2f} | {med / base:.2f} |")


if __name__ == "__main__":
    main()
