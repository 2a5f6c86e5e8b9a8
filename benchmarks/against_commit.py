"""gradtx now against gradtx at an earlier commit, in one process: each algorithm's default path
then, its default path now and ``flat=True`` now, interleaved round by round.

Issue 15 sets targets for ``gx.lamb`` and ``gx.muon`` with ``flat=True`` against "their current
gradtx path", the path when the issue was filed; that path has since changed (muon's stacked
Newton-Schulz, lamb's fused plan), so this script imports the package as it was at ``--commit``
(default: the last commit before ``flat=True`` landed) beside today's. For muon a fourth
variant times its Newton-Schulz products alone (``bound / then``): the same products run on
every path, so no muon step goes below them.

Usage::

    PYTHONPATH=src python benchmarks/against_commit.py                       # muon and lamb, every set
    PYTHONPATH=src python benchmarks/against_commit.py --algos muon --sets tiny-many --rounds 5
    PYTHONPATH=src python benchmarks/against_commit.py --commit 425f1dd~1 --then-flat --algos lion adan

The old tree is taken with ``git archive`` into a temporary folder and imported as
``gradtx_then`` (its absolute imports and its ``torch.library`` namespace renamed, so both
packages load in one process). The parameter sets are ``optimizer_step.py``'s.
"""

from __future__ import annotations

import argparse
import importlib
import io
import pathlib
import subprocess
import sys
import tarfile
import tempfile

import torch

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from optimizer_step import param_shapes, time_variants  # noqa: E402

import gradtx as gx  # noqa: E402
from gradtx.transforms.orthogonalize import _batches  # noqa: E402 - muon's grouping of matrices

BEFORE_FLAT = "c95a6a0"  # the last commit before flat=True (5b68c56): issue 15's "current gradtx path"
LR = 1e-3
# renames that let the old package load beside today's
_RENAMES = (("import gradtx as gx", "import gradtx_then as gx"), ("from gradtx.", "from gradtx_then."),
            ('Library("gradtx",', 'Library("gradtx_then",'), ('"gradtx::', '"gradtx_then::'),
            ("torch.ops.gradtx.", "torch.ops.gradtx_then."))


def import_at(commit: str, folder: pathlib.Path):
    """The package ``src/gradtx`` at ``commit``, imported as ``gradtx_then``."""
    archive = subprocess.run(["git", "archive", commit, "src/gradtx"], check=True, capture_output=True,
                             cwd=pathlib.Path(__file__).parent.parent).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    package = folder / "gradtx_then"
    (folder / "src" / "gradtx").rename(package)
    for path in package.rglob("*.py"):
        text = path.read_text()
        for old, new in _RENAMES:
            text = text.replace(old, new)
        path.write_text(text)
    sys.path.insert(0, str(folder))
    return importlib.import_module("gradtx_then")


class NewtonSchulzAlone:
    """The Newton-Schulz products of a muon step and nothing else: on the gradients of the
    set's matrices (the leaves ``gx.muon`` orthogonalizes; the others go to Adam), batched as
    muon batches them, with no momentum, copies or Adam part. A muon step, flat or not, cannot
    take less; its ratio to the earlier path bounds ``flat / then`` from below."""

    def __init__(self, params: list[torch.Tensor]) -> None:
        grads = [p.grad for p in params if p.dim() == 2]
        # muon's own grouping (stacks of small matrices of one shape, larger ones alone),
        # made here, untimed
        self.blocks = [block for _, block, _ in _batches(list(range(len(grads))), grads)]

    def step(self) -> None:
        for block in self.blocks:
            gx.orthogonalize_via_newton_schulz(block)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commit", default=BEFORE_FLAT)
    parser.add_argument("--algos", nargs="+", default=["muon", "lamb"])
    parser.add_argument("--sets", nargs="+", default=["big", "resnet", "small", "tiny-many"])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--then-flat", action="store_true",
                        help="time the earlier commit with flat=True (a change to the flat path), not its default path")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        then = import_at(args.commit, pathlib.Path(folder))
        then_path = "flat" if args.then_flat else "default"
        print(f"torch {torch.__version__}, {args.threads} thread(s), float32; median ms of {args.rounds} "
              f"interleaved rounds of 2 steps; ratios to the {then_path} path at {args.commit}")
        print("(muon's bound: its Newton-Schulz products alone, timed in the same rounds)")
        print(f"| algorithm | set | {then_path} at {args.commit} | default now | flat now | now / then | flat / then "
              f"| bound / then |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        for algo in args.algos:
            for name in args.sets:
                # optimizer_step's interleaved rounds (the gradients marked written before
                # each step, as backward marks them; the variants' order rotating)
                variants = {
                    "then": lambda ps, algo=algo: then.Optimizer(ps, getattr(then, algo)(LR), flat=args.then_flat),
                    "now": lambda ps, algo=algo: gx.Optimizer(ps, getattr(gx, algo)(LR)),
                    "flat": lambda ps, algo=algo: gx.Optimizer(ps, getattr(gx, algo)(LR), flat=True),
                }
                if algo == "muon" and any(len(shape) == 2 for shape in param_shapes(name)):
                    variants["bound"] = NewtonSchulzAlone  # (no matrix, nothing to bound: "-")
                t = {k: seconds * 1e3 for k, seconds in time_variants(variants, name, args.rounds, 2, None).items()}
                bound = f"{t['bound'] / t['then']:.2f}" if "bound" in t else "-"
                print(f"| {algo} | {name} | {t['then']:.1f} | {t['now']:.1f} | {t['flat']:.1f} | "
                      f"{t['now'] / t['then']:.2f} | {t['flat'] / t['then']:.2f} | {bound} |", flush=True)


if __name__ == "__main__":
    main()
