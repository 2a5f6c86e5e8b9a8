"""Optimizer step time and peak memory: gradtx side by side with torch.optim, in one process.

Usage::

    PYTHONPATH=src python benchmarks/optimizer_step.py            # full run (a few minutes on 2 cores)
    PYTHONPATH=src python benchmarks/optimizer_step.py --quick    # fewer repetitions
    PYTHONPATH=src python benchmarks/optimizer_step.py --no-memory --sets big --algos adamw
    PYTHONPATH=src python benchmarks/optimizer_step.py --no-memory --algos catalogue  # every algorithm
    PYTHONPATH=src python benchmarks/optimizer_step.py --sets tiny-many      # flat=True's set
    PYTHONPATH=src python benchmarks/optimizer_step.py --memory-only --algos adamw --sets small \
        --variants "torch fused" "gradtx flat" --memory-runs 5                 # peak memory, 5 runs each
    PYTHONPATH=src python benchmarks/optimizer_step.py --python-time          # per-step Python cost
    PYTHONPATH=src python benchmarks/optimizer_step.py --small-pages --algos adamw --no-memory  # huge pages' gain
    PYTHONPATH=src python benchmarks/optimizer_step.py --figure docs/figures/step_time_vs_tensors.png

An optimizer step is memory-bound, so every variant of one (algorithm, parameter set) is
timed in turn, round after round (interleaved), and the median per-step time is reported
with its ratio to each ``torch.optim`` variant, the bandwidth it reaches (the bytes the
algorithm must move divided by the time) and the lower bound (those bytes at the in-place
bandwidth measured in the same run). Peak memory is measured per optimizer in a fresh
process (the peak RSS over a few steps, ``VmHWM`` after resetting it once the params exist,
minus the RSS then, after a first optimizer of the same kind on a tiny tensor has paid for
lazy imports), so one variant's freed memory cannot hide another's.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

import gradtx as gx
from gradtx.optim import placement

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import _memory  # noqa: E402 - beside this script
from _algorithms import CATALOGUE, summary  # noqa: E402 - the catalogue table, beside this script

LR = 1e-3

# --- parameter sets ------------------------------------------------------------------------


def param_shapes(name: str) -> list[tuple[int, ...]]:
    if name in FLAT_SETS:
        return FLAT_SETS[name]()
    if name == "big":
        return [(16 * 1024 * 1024,)]
    if name == "resnet":
        convs = [(c, c, 3, 3) for c in (64, 128, 256) for _ in range(8)] + [(512, 512, 3, 3)] * 2
        vectors = [(64 * 2 ** (i % 4),) for i in range(134)]  # 64, 128, 256, 512, ...
        return convs + vectors
    if name == "small":
        return [(32, 32)] * 2000
    raise ValueError(f"unknown parameter set {name!r}")


def make_params(name: str, dtype=torch.float32) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    params = []
    for shape in param_shapes(name):
        p = torch.nn.Parameter(torch.randn(shape, generator=gen, dtype=dtype) * 0.1)
        p.grad = torch.randn(shape, generator=gen, dtype=dtype)
        params.append(p)
    return params


# --- optimizers --------------------------------------------------------------------------------
# Each algorithm: bytes moved per element (float32) and its variants, name -> factory(params).

def _torch(cls, **kw) -> Callable:
    return lambda ps: cls(ps, lr=LR, **kw)


def _torch_no_decay_1d(cls, **kw) -> Callable:
    """torch's way to skip weight decay on biases and norms: a second param group."""
    def make(ps):
        return cls([{"params": [p for p in ps if p.dim() > 1]},
                    {"params": [p for p in ps if p.dim() <= 1], "weight_decay": 0.0}], lr=LR, **kw)
    return make


def _gx(tx_fn, **kw) -> Callable:
    return lambda ps: gx.Optimizer(ps, tx_fn(), **kw)


def _gx_inplace(tx_fn) -> Callable:
    """The adapter's generic in-place path: the fused kernels switched off, the rest on."""
    def make(ps):
        opt = gx.Optimizer(ps, tx_fn())
        opt._plan = None
        return opt
    return make


def mission() -> gx.GradientTransformation:
    return gx.chain(gx.clip_value(10.0), gx.scale_by_adam(), gx.scale_by_lr(LR))


def clip_norm_adamw() -> gx.GradientTransformation:
    return gx.chain(gx.clip_by_global_norm(1.0), gx.adamw(LR, weight_decay=0.01))


def algorithms(with_compile: bool) -> dict[str, tuple[int, dict[str, Callable]]]:
    A, S = torch.optim.AdamW, torch.optim.SGD  # noqa: N806
    adamw_torch = {"torch forloop": _torch(A, weight_decay=0.01, foreach=False),
                   "torch foreach": _torch(A, weight_decay=0.01, foreach=True),
                   "torch fused": _torch(A, weight_decay=0.01, fused=True)}
    out = {
        "adamw": (28, {**adamw_torch, "gradtx": _gx(lambda: gx.adamw(LR, weight_decay=0.01))}),
        "adam": (28, {"torch forloop": _torch(torch.optim.Adam, foreach=False),
                      "torch foreach": _torch(torch.optim.Adam, foreach=True),
                      "torch fused": _torch(torch.optim.Adam, fused=True),
                      "gradtx": _gx(lambda: gx.adam(LR))}),
        "sgd_nesterov": (20, {"torch forloop": _torch(S, momentum=0.9, nesterov=True, foreach=False),
                              "torch foreach": _torch(S, momentum=0.9, nesterov=True, foreach=True),
                              "torch fused": _torch(S, momentum=0.9, nesterov=True, fused=True),
                              "gradtx": _gx(lambda: gx.sgd(LR, momentum=0.9, nesterov=True))}),
        # no decay on 1-d parameters: gradtx's mask against torch's two param groups
        "adamw_masked": (28, {
            "torch forloop": _torch_no_decay_1d(A, weight_decay=0.01, foreach=False),
            "torch foreach": _torch_no_decay_1d(A, weight_decay=0.01, foreach=True),
            "torch fused": _torch_no_decay_1d(A, weight_decay=0.01, fused=True),
            "gradtx": _gx(lambda: gx.adamw(LR, weight_decay=0.01,
                                           mask=lambda p: gx.tree_map(lambda x: x.dim() > 1, p)))}),
        # the mission chain is Adam after an elementwise clip: compared with torch's AdamW
        "mission": (28, {**adamw_torch, "gradtx": _gx(mission), "gradtx in-place": _gx_inplace(mission),
                         "gradtx unfolded": _gx(mission, fast=False)}),
    }
    # Adam after a global-norm clip (the usual transformer recipe): torch's variants call
    # clip_grad_norm_ before their step (it scales .grad in place; gradtx leaves .grad as it was)
    out["adamw_clip_norm"] = (28, {
        "torch foreach": lambda ps: _ClipNormThenStep(A(ps, lr=LR, weight_decay=0.01, foreach=True), 1.0),
        "torch fused": lambda ps: _ClipNormThenStep(A(ps, lr=LR, weight_decay=0.01, fused=True), 1.0),
        "gradtx": _gx(clip_norm_adamw), "gradtx unfolded": _gx(clip_norm_adamw, fast=False)})
    if with_compile:
        for name in ("adamw", "mission"):
            tx = (lambda: gx.adamw(LR, weight_decay=0.01)) if name == "adamw" else mission
            out[name][1]["gradtx compiled"] = _gx(tx, compile=True)
    add_flat_variants(out, with_compile)
    return add_segmented_flat_variants({**out, **CATALOGUE})


class PureStep:
    """The functional path: ``tx.update`` and ``apply_updates`` on fresh tensors every step."""

    def __init__(self, params: list[torch.Tensor], tx: gx.GradientTransformation) -> None:
        self.tx = tx
        self.params = [p.detach().clone() for p in params]
        self.grads = [p.grad for p in params]
        self.state = tx.init(self.params)

    def step(self) -> None:
        with torch.no_grad():
            updates, self.state = self.tx.update(self.grads, self.state, self.params)
            self.params = gx.apply_updates(self.params, updates)


# --- contiguous storage: gx.Optimizer(..., flat=True) ------------------------------------------
# The flat variants (columns), the tiny-many set, the per-step Python time and the figure of
# step time against the number of tensors at a fixed total size.

FLAT_SETS = {
    # many tiny tensors (norm scales, biases, per-layer adapters) beside some big ones
    "tiny-many": lambda: [()] * 20_000 + [(256, 256)] * 200,
}


def _gx_small_pages(make: Callable) -> Callable:
    """``make``'s optimizer with its buffers and state on 4 KiB pages (made at its first step with
    ``placement.HUGE_PAGE_BYTES`` off): the variant before transparent huge pages."""
    def small(ps):
        opt = make(ps)
        saved, placement.HUGE_PAGE_BYTES = placement.HUGE_PAGE_BYTES, None
        try:
            opt.step()
        finally:
            placement.HUGE_PAGE_BYTES = saved
        return opt
    return small


def add_small_pages_variants(algos: dict) -> None:
    """``..., 4 KiB pages`` beside each gradtx and gradtx flat variant (``--small-pages``)."""
    for _, variants in algos.values():
        for name in [n for n in variants if n in ("gradtx", "gradtx flat")]:
            variants[f"{name}, 4 KiB pages"] = _gx_small_pages(variants[name])


# The variant that bounds ``gradtx flat`` from below: torch's kernel with no per-tensor cost
ONE_TENSOR = "bound: torch fused, one tensor"


def _one_tensor(make: Callable) -> Callable:
    """``make``'s optimizer over one parameter holding every element of the set, its gradient
    likewise: the same kernel as a flat step's, on one tensor per stream, with none of a
    layout's costs (what ``flat=True`` can reach with that kernel)."""
    def one(ps):
        p = torch.nn.Parameter(torch.cat([q.detach().reshape(-1) for q in ps]))
        p.grad = torch.cat([q.grad.reshape(-1) for q in ps])
        return make([p])
    return one


def add_flat_variants(out: dict, with_compile: bool) -> None:
    """``gradtx flat`` (and ``gradtx flat compiled``) beside each elementwise gradtx variant,
    and for AdamW torch fused on one tensor (:func:`_one_tensor`)."""
    makers = {"adamw": lambda: gx.adamw(LR, weight_decay=0.01), "adam": lambda: gx.adam(LR),
              "sgd_nesterov": lambda: gx.sgd(LR, momentum=0.9, nesterov=True), "mission": mission}
    for name, tx in makers.items():
        if name in out:
            out[name][1]["gradtx flat"] = _gx(tx, flat=True)
            if with_compile:
                out[name][1]["gradtx flat compiled"] = _gx(tx, flat=True, compile=True)
    out["adamw"][1][ONE_TENSOR] = _one_tensor(out["adamw"][1]["torch fused"])


class _ClipThenStep:
    """torch's way to clip elementwise before a step: ``clip_grad_value_`` then the optimizer."""

    def __init__(self, opt: torch.optim.Optimizer, bound: float) -> None:
        self.opt, self.bound = opt, bound
        self.params = [p for group in opt.param_groups for p in group["params"]]

    def step(self) -> None:
        torch.nn.utils.clip_grad_value_(self.params, self.bound)
        self.opt.step()


class _ClipNormThenStep:
    """torch's way to clip the global norm before a step: ``clip_grad_norm_`` (foreach) then
    the optimizer."""

    def __init__(self, opt: torch.optim.Optimizer, max_norm: float) -> None:
        self.opt, self.max_norm = opt, max_norm
        self.params = [p for group in opt.param_groups for p in group["params"]]

    def step(self) -> None:
        torch.nn.utils.clip_grad_norm_(self.params, self.max_norm, foreach=True)
        self.opt.step()


def add_segmented_flat_variants(algos: dict) -> dict:
    """``gradtx flat`` beside the gradtx path of the chains with per-tensor norms (lamb, lars:
    norms per segment of the flat buffer) and of muon and adafactor (batched over runs of equal
    shapes in the buffers), and torch fused Adam after ``clip_grad_value_`` beside the mission
    chain (its torch equivalent)."""
    out = dict(algos)
    segmented = {"lamb": lambda: gx.lamb(LR), "lars": lambda: gx.lars(LR), "muon": lambda: gx.muon(LR),
                 "adafactor": lambda: gx.adafactor(LR)}
    for name, tx in segmented.items():
        if name in out:
            nbytes, variants = out[name]
            out[name] = (nbytes, {**variants, "gradtx flat": _gx(tx, flat=True)})
    if "mission" in out:
        nbytes, variants = out["mission"]
        clip = {"torch fused + clip_grad_value_": lambda ps: _ClipThenStep(torch.optim.Adam(ps, lr=LR, fused=True),
                                                                           10.0)}
        out["mission"] = (nbytes, {**variants, **clip})
    return out


def flat_summary(results: dict[tuple[str, str], dict[str, float]], sets: list[str]) -> str:
    """``gradtx flat`` over the default gradtx path, over torch fused (after
    ``clip_grad_value_`` for the mission chain) and over torch fused on one tensor (its
    bound), per algorithm and set."""
    refs = ["gradtx", "torch fused", "torch fused + clip_grad_value_", ONE_TENSOR]
    lines = ["## gradtx flat / reference", "| algorithm | reference | " + " | ".join(sets) + " |",
             "|---|---|" + "---:|" * len(sets)]
    for algo in dict.fromkeys(a for a, _ in results):
        for ref in refs:
            cells = [f"{times['gradtx flat'] / times[ref]:.2f}" if "gradtx flat" in times and ref in times else "-"
                     for times in (results.get((algo, s), {}) for s in sets)]
            if any(c != "-" for c in cells):
                lines.append(f"| {algo} | {ref} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _grads_of(opt: Any) -> list[torch.Tensor]:
    return [p.grad for group in opt.param_groups for p in group["params"]]


def _loop_step(opt: Any, grads: dict[int, list], n: int, pad: list[torch.Tensor], zero: bool,
               prof: Any = None) -> float:
    """Seconds of ``opt.step()`` (after ``opt.zero_grad()`` when ``zero``, timed too), after
    every gradient is written once in place (``grads[n]``), as backward writes them; the timed
    calls profiled by ``prof`` (a ``cProfile.Profile``) if given."""
    if prof:
        prof.enable()
    t0 = time.perf_counter()
    if zero:
        opt.zero_grad()
    t1 = time.perf_counter()
    if prof:
        prof.disable()
    if any(g is None for g in _grads_of(opt)):  # zero_grad set them to None: backward makes new ones
        for group in opt.param_groups:
            for p in group["params"]:
                p.grad = torch.zeros(())
    if zero:
        grads[n] = _grads_of(opt)
    torch._foreach_add_(grads[n], 1.0)
    if pad:
        torch._foreach_add_(pad, 1.0)
    if prof:
        prof.enable()
    t2 = time.perf_counter()
    opt.step()
    t3 = time.perf_counter()
    if prof:
        prof.disable()
    return (t1 - t0) + (t3 - t2)


def python_time(rounds: int) -> None:
    """Per-step time over 20 and over 20,000 scalars (the kernels' work is nothing: what is
    left is per-step Python), gradtx flat against the default path and torch fused.

    Each timed step follows a stand-in for backward: every gradient written once in place
    (one ``_foreach_add_``, padded to 20,000 tensors for both counts so that caches are
    alike), as backward writes them; a second table times ``zero_grad()`` + step, the usual
    loop. The Python function calls of one step (counted by ``cProfile``) say whether any
    work grows with the count, whatever the machine's load."""
    import cProfile
    import pstats

    def scalars(n: int) -> list[torch.Tensor]:
        params = [torch.nn.Parameter(torch.zeros(())) for _ in range(n)]
        for p in params:
            p.grad = torch.ones(())
        return params
    makers = {"torch fused": _torch(torch.optim.AdamW, weight_decay=0.01, fused=True),
              "gradtx": _gx(lambda: gx.adamw(LR, weight_decay=0.01)),
              "gradtx flat": _gx(lambda: gx.adamw(LR, weight_decay=0.01), flat=True)}
    counts, most = (20, 20_000), 20_000
    for zero in (False, True):
        print(f"## per-step time of adamw over n scalars (Python cost), median ms: "
              f"{'zero_grad() + step' if zero else 'step'} after every gradient is written")
        print("| variant | n = 20 | n = 20,000 | ratio | calls/step n = 20 | calls/step n = 20,000 |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, make in makers.items():
            opts = {n: make(scalars(n)) for n in counts}
            grads = {}
            for n, opt in opts.items():
                opt.step()  # the flat buffers are built at the first step
                grads[n] = _grads_of(opt)
            pads = {n: [torch.zeros(()) for _ in range(most - n)] for n in counts}

            def one(n: int) -> float:
                return _loop_step(opts[n], grads, n, pads[n], zero)  # noqa: B023 - called in this iteration
            for n in counts:
                for _ in range(3):
                    one(n)
            samples: dict[int, list[float]] = {n: [] for n in counts}
            for _ in range(rounds):
                for n in counts:
                    reps = 20 if n == 20 else 5
                    samples[n].append(sum(one(n) for _ in range(reps)) / reps)
            calls = {}
            for n in counts:
                prof = cProfile.Profile()
                _loop_step(opts[n], grads, n, pads[n], zero, prof)
                calls[n] = pstats.Stats(prof).total_calls
            small, many = (statistics.median(samples[n]) for n in counts)
            print(f"| {name} | {small * 1e3:.3f} | {many * 1e3:.2f} | {many / small:.1f} | {calls[20]} | "
                  f"{calls[most]} |", flush=True)
        print()


def figure(path: str, rounds: int, with_compile: bool, total: int = 1 << 21) -> None:
    """ms/step of AdamW against the number of tensors at ``total`` elements, log-log: torch
    foreach and fused, gradtx default, flat (and compiled); a table, and a PNG with matplotlib."""
    adamw = lambda: gx.adamw(LR, weight_decay=0.01)  # noqa: E731
    variants = {"torch foreach": _torch(torch.optim.AdamW, weight_decay=0.01, foreach=True),
                "torch fused": _torch(torch.optim.AdamW, weight_decay=0.01, fused=True),
                "gradtx": _gx(adamw), "gradtx flat": _gx(adamw, flat=True)}
    if with_compile:
        variants["gradtx compiled"] = _gx(adamw, compile=True)
        variants["gradtx flat compiled"] = _gx(adamw, flat=True, compile=True)
    counts = [1, 16, 256, 4096, 16384]
    times: dict[str, list[float]] = {name: [] for name in variants}
    print(f"## adamw, {total / 1e6:.1f}M elements in n tensors: median ms/step")
    print("| n | " + " | ".join(variants) + " |")
    print("|---:|" + "---:|" * len(variants))
    for n in counts:
        FLAT_SETS["_figure"] = lambda n=n: [(total // n,)] * n
        got = time_variants(variants, "_figure", rounds, 1 if n >= 4096 else 3, None)
        for name in variants:
            times[name].append(got[name] * 1e3)
        print(f"| {n} | " + " | ".join(f"{times[name][-1]:.2f}" for name in variants) + " |", flush=True)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib not installed: no figure)")
        return
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for name, ys in times.items():
        ax.loglog(counts, ys, marker="o", linestyle="--" if name.startswith("torch") else "-", label=name)
    ax.set_xlabel(f"number of tensors ({total / 1e6:.1f}M float32 elements in all)")
    ax.set_ylabel("ms per AdamW step")
    ax.set_title(f"Step time against tensor count (torch {torch.__version__.split('+')[0]}, "
                 f"{torch.get_num_threads()} thread{'s' if torch.get_num_threads() > 1 else ''})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    print(f"figure written to {path}")


# --- timing -----------------------------------------------------------------------------------


def inplace_bandwidth(numel: int, reps: int) -> float:
    """Bytes per second of ``x += y`` (12 bytes per float32 element) on ``numel`` elements."""
    x, y = torch.zeros(numel), torch.ones(numel)
    x.add_(y)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        x.add_(y)
        times.append(time.perf_counter() - t0)
    return 12 * numel / statistics.median(times)


def time_variants(variants: dict[str, Callable], set_name: str, rounds: int, steps: int,
                  pure_tx: Callable | None) -> dict[str, float]:
    """Median seconds per step of each variant, the variants interleaved round by round.

    Before each step, untimed, every gradient is marked written once in place
    (``torch.autograd.graph.increment_version``), as backward's accumulation marks it: the
    step then sees what it sees in a training loop (``flat=True`` checks that the gradients
    were written since the last step, and checks them one by one when they were not)."""
    runners, grads = {}, {}
    for name, factory in variants.items():
        params = make_params(set_name)
        t0 = time.perf_counter()
        opt = factory(params)
        opt.step()  # state allocation (and compilation) outside the timing
        runners[name] = opt.step
        grads[name] = _grads_of(opt) if isinstance(opt, torch.optim.Optimizer) else []
        if time.perf_counter() - t0 > 5:
            print(f"    ({name}: first step {time.perf_counter() - t0:.1f} s)", flush=True)
    if pure_tx is not None:
        pure = PureStep(make_params(set_name), pure_tx())
        pure.step()
        runners["gradtx pure"], grads["gradtx pure"] = pure.step, []
    samples: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    for r in range(rounds):
        # each round starts one variant further on, every other one in reverse, so that no
        # variant always runs in the same place (first, last, after the same neighbour)
        order = names[r // 2 % len(names):] + names[:r // 2 % len(names)]
        for name in order[::-1] if r % 2 else order:
            run, written = runners[name], [g for g in grads[name] if g is not None]
            seconds = 0.0
            for _ in range(steps):
                torch.autograd.graph.increment_version(written)
                t0 = time.perf_counter()
                run()
                seconds += time.perf_counter() - t0
            samples[name].append(seconds / steps)
    return {name: statistics.median(s) for name, s in samples.items()}


def peak_memory(algo: str, variant: str, set_name: str) -> float:
    """Extra peak RSS (MiB) of a few steps of one optimizer, in a fresh process."""
    return _memory.peak_mib(__file__, ["--memory-one", algo, variant, set_name])


def memory_reference(mems: dict[str, float]) -> float | None:
    """The peak memory the ``mem / torch`` ratios divide by: torch fused's where torch has a
    fused implementation, else the least of torch's (the for-loop's, usually)."""
    if "torch fused" in mems:
        return mems["torch fused"]
    torch_mems = [m for name, m in mems.items() if name.startswith("torch")]
    return min(torch_mems) if torch_mems else None


def compile_seconds(algo: str, variant: str, set_name: str, threads: int) -> float:
    """Seconds to build the optimizer and take its first step, compilation included, in a
    fresh process with every compile cache off (what a user's first run costs)."""
    cmd = [sys.executable, __file__, "--compile-one", algo, variant, set_name, "--threads", str(threads)]
    env = dict(os.environ, TORCHINDUCTOR_FORCE_DISABLE_CACHES="1")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])["seconds"]


def _compile_one(algo: str, variant: str, set_name: str, threads: int) -> None:
    torch.set_num_threads(threads)
    params = make_params(set_name)
    t0 = time.perf_counter()
    algorithms(with_compile=True)[algo][1][variant](params).step()
    print(json.dumps({"seconds": time.perf_counter() - t0}))


def _memory_one(algo: str, variant: str, set_name: str) -> None:
    factory = algorithms(with_compile="compiled" in variant)[algo][1][variant]
    _memory.measure(factory, lambda: make_params(set_name))


def memory_table(algo_names: list[str], sets: list[str], variants: list[str] | None = None, runs: int = 1) -> None:
    """Peak memory of every variant (or of ``variants`` only; a fresh process each), and its
    ratio to torch's; with ``runs`` > 1 every variant runs that many times, the variants in
    turn, and each cell is the range over the runs (ratios taken within a round)."""
    algos = algorithms(with_compile=False)
    memories = {}
    print("## peak MiB (mem / torch fused, else / the least of torch's)")
    print("| algorithm | set | variants: peak MiB (ratio) |")
    print("|---|---|---|")
    for algo in [a for name in algo_names for a in (CATALOGUE if name == "catalogue" else [name])]:
        names = [name for name in algos[algo][1] if not variants or name in variants]
        for set_name in sets:
            rounds = []
            for _ in range(runs):
                mems = {name: peak_memory(algo, name, set_name) for name in names}
                ref = memory_reference(mems)
                rounds.append({name: (m, m / ref) for name, m in mems.items()})

            def span(name: str, i: int, digits: int) -> str:
                values = [r[name][i] for r in rounds]  # noqa: B023 - called in this iteration
                lo, hi = f"{min(values):.{digits}f}", f"{max(values):.{digits}f}"
                return lo if lo == hi else f"{lo}-{hi}"
            memories[algo, set_name] = {name: statistics.median([r[name][1] for r in rounds]) for name in names}
            cells = ", ".join(f"{name} {span(name, 0, 1)} ({span(name, 1, 2)})" for name in names)
            print(f"| {algo} | {set_name} | {cells} |", flush=True)
    print("\n## peak memory / torch's (torch fused's, else the least of torch's implementations"
          + (f"; median of {runs} runs" if runs > 1 else "") + ")")
    print(summary(memories, sets, reference=None))


# --- main -------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repetitions")
    parser.add_argument("--sets", nargs="+", default=["big", "resnet", "small"])
    parser.add_argument("--algos", nargs="+", default=["adamw", "adam", "sgd_nesterov", "adamw_masked", "mission",
                                                       "adamw_clip_norm"],
                        help=f"also: catalogue (every entry of _algorithms.py: {', '.join(CATALOGUE)}), or any of them")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    parser.add_argument("--memory-only", action="store_true", help="peak memory only (no step times)")
    parser.add_argument("--compile", action="store_true", help="also time gx.Optimizer(..., compile=True)")
    parser.add_argument("--small-pages", action="store_true",
                        help="also gradtx and gradtx flat with their buffers and state on 4 KiB pages, "
                             "not transparent huge pages")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--python-time", action="store_true", help="per-step time over 20 and 20,000 scalars")
    parser.add_argument("--figure", metavar="PNG", help="step time against tensor count (table and figure)")
    parser.add_argument("--rounds", type=int, help="rounds (default 7, --quick 3)")
    parser.add_argument("--steps", type=int, help="steps per round (default 3, --quick 2)")
    parser.add_argument("--variants", nargs="+", help="time (or measure) only these variants (names as in the tables)")
    parser.add_argument("--memory-runs", type=int, default=1,
                        help="with --memory-only: fresh processes per variant, in turn (ranges over them)")
    parser.add_argument("--memory-one", nargs=3, metavar=("ALGO", "VARIANT", "SET"), help=argparse.SUPPRESS)
    parser.add_argument("--compile-one", nargs=3, metavar=("ALGO", "VARIANT", "SET"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_one:
        _memory_one(*args.memory_one)
        return
    if args.compile_one:
        _compile_one(*args.compile_one, threads=args.threads)
        return
    torch.set_num_threads(args.threads)
    if args.memory_only:
        memory_table(args.algos, args.sets, args.variants, args.memory_runs)
        return
    rounds, steps = (3, 2) if args.quick else (7, 3)
    rounds, steps = args.rounds or rounds, args.steps or steps
    if args.python_time or args.figure:
        if args.python_time:
            python_time(rounds)
        if args.figure:
            figure(args.figure, rounds, args.compile)
        return
    bandwidth = inplace_bandwidth(16 * 1024 * 1024, 5 if args.quick else 15)
    print(f"torch {torch.__version__}, {args.threads} threads, float32; in-place bandwidth "
          f"{bandwidth / 1e9:.1f} GB/s; median of {rounds} rounds x {steps} steps\n")
    algos = algorithms(args.compile)
    if args.small_pages:
        add_small_pages_variants(algos)
    results, memories = {}, {}
    for algo in [a for name in args.algos for a in (CATALOGUE if name == "catalogue" else [name])]:
        nbytes, variants = algos[algo]
        if args.variants:
            variants = {name: make for name, make in variants.items() if name in args.variants}
        for set_name in args.sets:
            numel = sum(torch.Size(s).numel() for s in param_shapes(set_name))
            pure = (lambda: gx.adamw(LR, weight_decay=0.01)) if algo == "adamw" and set_name == "big" else None
            times = time_variants(variants, set_name, rounds, steps, pure)
            results[algo, set_name] = times
            bound = nbytes * numel / bandwidth
            print(f"## {algo} on {set_name} ({numel / 1e6:.1f}M elements, {nbytes} B/elem, "
                  f"lower bound {bound * 1e3:.1f} ms)")
            mems = {} if args.no_memory else {name: peak_memory(algo, name, set_name) for name in times
                                                if name not in ("gradtx pure", ONE_TENSOR)}
            mem_ref = memory_reference(mems)
            print("| variant | ms/step | / forloop | / foreach | / fused | GB/s | / bound | peak MiB | mem / torch |")
            print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
            for name, t in times.items():
                ratios = [f"{t / times[ref]:.2f}" if ref in times else "-"
                          for ref in ("torch forloop", "torch foreach", "torch fused")]
                mem = f"{mems[name]:.1f}" if name in mems else "-"
                mem_ratio = f"{mems[name] / mem_ref:.2f}" if name in mems and mem_ref else "-"
                print(f"| {name} | {t * 1e3:.1f} | {' | '.join(ratios)} | {nbytes * numel / t / 1e9:.1f} | "
                      f"{t / bound:.2f} | {mem} | {mem_ratio} |", flush=True)
            if mems:
                memories[algo, set_name] = {name: m / mem_ref for name, m in mems.items() if mem_ref}
            for name in times:
                if "compiled" in name:
                    seconds = compile_seconds(algo, name, set_name, args.threads)
                    print(f"\n{name}: first step {seconds:.1f} s in a fresh process, compilation included, "
                          "caches off", flush=True)
            print()
    print(flat_summary(results, args.sets))
    print("## gradtx / torch (each algorithm's fastest torch.optim implementation, or an AdamW step)")
    print(summary({k: v for k, v in results.items() if any(n.startswith("torch") for n in v)}, args.sets))
    if memories:
        print("\n## peak memory / torch's (torch fused's, else the least of torch's implementations)")
        print(summary(memories, args.sets, reference=None))


if __name__ == "__main__":
    main()
