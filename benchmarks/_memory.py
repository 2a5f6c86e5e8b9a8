"""Peak memory of one optimizer, measured in a fresh process (Linux), shared by
``optimizer_step.py`` and ``precondition_step.py``.

The parent runs the benchmark script again with a private flag (``peak_mib``); the child calls
``measure``: a first optimizer of the same kind on tiny tensors pays for lazy imports, the
parameters are built, the resident-set high-water mark (``VmHWM``) is reset, and the peak over
a few steps minus the RSS before the optimizer existed is printed as JSON. One process per
optimizer, so one variant's freed memory cannot hide another's.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from collections.abc import Callable, Sequence

import torch


def peak_mib(script: str, args: Sequence[str]) -> float:
    """Run ``script`` with ``args`` in a fresh process and read the ``peak_mib`` it prints last."""
    cmd = [sys.executable, script, *args]
    # A fixed mmap threshold: glibc otherwise raises it as large blocks are freed (building
    # the params frees some), after which big tensors come from the heap and the RSS peak
    # depends on that history (run to run, two optimizers swapped places by 30 MiB).
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]


def status_kib(field: str) -> int:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _warm_params(shapes: Sequence[tuple[int, ...]]) -> list[torch.nn.Parameter]:
    out = []
    for s in shapes:
        p = torch.nn.Parameter(torch.zeros(s))
        p.grad = torch.zeros(s)
        out.append(p)
    return out


def measure(factory: Callable, make_params: Callable[[], list], *, steps: int = 3,
            warm_shapes: Sequence[tuple[int, ...]] = ((8,),), warm_steps: int = 2) -> None:
    """In the child process: print ``{"peak_mib": ...}``, the extra peak RSS of ``steps`` steps
    of ``factory(make_params())``."""
    torch.set_num_threads(2)
    # A first optimizer of the same kind on small tensors, so that what any first use costs
    # once per process (lazy imports: ~70 MiB for torch.optim's first optimizer) is not
    # counted as this optimizer's memory.
    warm = _warm_params(warm_shapes)
    warm_opt = factory(warm)
    for _ in range(warm_steps):
        warm_opt.step()
    del warm_opt, warm
    params = make_params()
    # Reset the high-water mark (Linux: 5 into clear_refs): building the params made
    # temporaries as large as them, which would otherwise hide the optimizer's own peak.
    pathlib.Path("/proc/self/clear_refs").write_text("5")
    before = status_kib("VmRSS")
    opt = factory(params)
    for _ in range(steps):
        opt.step()
    print(json.dumps({"peak_mib": (status_kib("VmHWM") - before) / 1024}))
