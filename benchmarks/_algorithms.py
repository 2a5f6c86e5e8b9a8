"""The catalogue for benchmarks/optimizer_step.py: every ``torch.optim`` algorithm gradtx has,
against torch's forloop, foreach and (where torch has one) fused implementation, and the main
algorithms torch lacks against an AdamW foreach step (what they would replace).

Each gradtx alias is built with the options that make its numbers torch's (``eps_in_sqrt=False``
for Adagrad and RMSprop, ``momentum_decay`` for NAdam, ...) and run by ``gx.Optimizer`` with its
default options. Each entry: name -> (bytes moved per float32 element, {variant: factory(params)}).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

import gradtx as gx

LR = 1e-3


def _torch(cls, variants=("forloop", "foreach"), **kw) -> dict[str, Callable]:
    out = {}
    for v in variants:
        flag = {"forloop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}[v]
        out[f"torch {v}"] = (lambda ps, flag=flag: cls(ps, lr=LR, **kw, **flag))
    return out


def _gx(tx_fn: Callable[[], gx.GradientTransformation]) -> dict[str, Callable]:
    """The alias under ``gx.Optimizer`` with its defaults, and with ``flat=True`` where the
    chain is elementwise (contiguous storage; ``gradtx.optim.flat``)."""
    out = {"gradtx": lambda ps: gx.Optimizer(ps, tx_fn())}
    if gx.is_elementwise(tx_fn()):
        out["gradtx flat"] = lambda ps: gx.Optimizer(ps, tx_fn(), flat=True)
    return out


def _adamw_foreach() -> dict[str, Callable]:
    return {"torch foreach": lambda ps: torch.optim.AdamW(ps, lr=LR, weight_decay=0.01, foreach=True)}


O = torch.optim  # noqa: E741

# torch algorithms: the gradtx alias against torch's implementations of the same numbers
TORCH_ALGORITHMS: dict[str, tuple[int, dict[str, Callable]]] = {
    "adagrad": (20, {**_torch(O.Adagrad, ("forloop", "foreach", "fused")),
                     **_gx(lambda: gx.adagrad(LR, initial_accumulator_value=0.0, eps=1e-10, eps_in_sqrt=False))}),
    "adadelta": (28, {**_torch(O.Adadelta), **_gx(lambda: gx.adadelta(LR))}),
    "adamax": (28, {**_torch(O.Adamax), **_gx(lambda: gx.adamax(LR))}),
    "nadam": (28, {**_torch(O.NAdam), **_gx(lambda: gx.nadam(LR, momentum_decay=4e-3))}),
    "radam": (28, {**_torch(O.RAdam), **_gx(lambda: gx.radam(LR, eps_before_debias=True))}),
    "rmsprop": (20, {**_torch(O.RMSprop), **_gx(lambda: gx.rmsprop(LR, decay=0.99, eps_in_sqrt=False))}),
    "rprop": (28, {**_torch(O.Rprop), **_gx(lambda: gx.rprop(LR))}),
    "asgd": (20, {**_torch(O.ASGD), **_gx(lambda: gx.asgd(LR))}),
    "sgd": (12, {**_torch(O.SGD, ("forloop", "foreach", "fused")), **_gx(lambda: gx.sgd(LR))}),
    "sgd_momentum": (20, {**_torch(O.SGD, ("forloop", "foreach", "fused"), momentum=0.9),
                          **_gx(lambda: gx.sgd(LR, momentum=0.9))}),
}

# algorithms torch.optim lacks: against one AdamW foreach step
OTHER_ALGORITHMS: dict[str, tuple[int, dict[str, Callable]]] = {
    "lion": (20, {**_adamw_foreach(), **_gx(lambda: gx.lion(LR))}),
    "lamb": (28, {**_adamw_foreach(), **_gx(lambda: gx.lamb(LR))}),
    "lars": (20, {**_adamw_foreach(), **_gx(lambda: gx.lars(LR))}),
    "adan": (44, {**_adamw_foreach(), **_gx(lambda: gx.adan(LR))}),
    "muon": (28, {**_adamw_foreach(), **_gx(lambda: gx.muon(LR))}),
    "adafactor": (16, {**_adamw_foreach(), **_gx(lambda: gx.adafactor(LR))}),
}

CATALOGUE = {**TORCH_ALGORITHMS, **OTHER_ALGORITHMS}


GRADTX_VARIANTS = ("gradtx", "gradtx flat")


def summary(results: dict[tuple[str, str], dict[str, float]], sets: list[str],
            reference: str | None = "fastest") -> str:
    """The catalogue table: per algorithm, gradtx variant and set, the gradtx step time over
    torch's fastest implementation of the same algorithm (torch algorithms) or over an AdamW
    step; with ``reference=None`` the values are taken as they are (ratios already)."""
    algos = list(dict.fromkeys(a for a, _ in results))
    lines = ["| algorithm | variant | against | " + " | ".join(sets) + " |", "|---|---|---|" + "---:|" * len(sets)]
    for algo in algos:
        against = ("AdamW foreach" if algo in OTHER_ALGORITHMS else
                   "AdamW fastest" if algo in ("mission", "adamw_masked") else "torch fastest")
        if reference is None:
            against = "torch fused, else least"
        for variant in GRADTX_VARIANTS:
            cells = []
            for s in sets:
                times = results.get((algo, s))
                if times is None or variant not in times:
                    cells.append("-")
                    continue
                ref = min(t for name, t in times.items() if name.startswith("torch")) if reference else 1.0
                cells.append(f"{times[variant] / ref:.2f}")
            if any(c != "-" for c in cells):
                lines.append(f"| {algo} | {variant} | {against} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


__all__ = ["CATALOGUE", "GRADTX_VARIANTS", "OTHER_ALGORITHMS", "TORCH_ALGORITHMS", "summary"]
