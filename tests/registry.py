"""The registry of every public transform and alias: the property suite iterates it.

Each entry names a public constructor, how to build an example, and its reference. Entries
live in this file (the core) and in ``registry_*.py`` beside it (one per family), each
defining ``ENTRIES``; ``test_registry_is_complete`` fails when a public constructor is not
registered, so a new transform is tested the moment it is exported.
"""

from __future__ import annotations

import importlib
import pathlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

import gradtx as gx


@dataclass(frozen=True)
class Entry:
    name: str  # the public name, gx.<name>
    build: Callable[[], gx.GradientTransformation]  # an example instance
    reference: str  # torch.optim class, paper or closed form it is checked against
    kind: str = "transform"  # "transform" | "alias" (a full optimizer: converges on its own)
    # extra args it needs: any of {"value", "grad", "value_fn", "value_and_grad_fn", "hvp_fn", "residual_fn"}
    needs: frozenset = field(default_factory=frozenset)
    # a transform whose output is zero or constant on purpose is not asked to descend
    converges: bool = True
    # known limitations, so the suite can skip one property with a reason:
    # {"dtypes": (...), "why": "..."}, {"rosenbrock": "why"}, {"mixed": "why"} (the mixed-dtype tree test),
    # {"complex": "why"}, {"numbers_only": (transform names whose hyperparameters are read as numbers)}
    skip: dict = field(default_factory=dict)


CORE = [
    Entry("identity", lambda: gx.identity(), "u <- u", converges=False),
    Entry("scale", lambda: gx.scale(-0.1), "u <- s u"),
    Entry("scale_by_lr", lambda: gx.scale_by_lr(0.1), "u <- -lr u"),
    Entry("scale_by_schedule", lambda: gx.scale_by_schedule(gx.linear_schedule(-0.1, -0.01, 100)),
          "u <- f(t) u"),
    Entry("scale_by_sign", lambda: gx.chain(gx.scale_by_sign(), gx.scale_by_lr(0.01)), "u <- sign(u)"),
    Entry("clip_value", lambda: gx.chain(gx.clip_value(1.0), gx.scale_by_lr(0.05)), "torch.clamp"),
    Entry("clip_by_global_norm", lambda: gx.chain(gx.clip_by_global_norm(1.0), gx.scale_by_lr(0.05)),
          "optax.clip_by_global_norm"),
    Entry("trace", lambda: gx.chain(gx.trace(0.9, nesterov=True), gx.scale_by_lr(0.01)), "torch.optim.SGD"),
    Entry("ema", lambda: gx.chain(gx.ema(0.9), gx.scale_by_lr(0.05)), "debiased EMA, closed form"),
    Entry("scale_by_adam", lambda: gx.chain(gx.scale_by_adam(), gx.scale_by_lr(0.05)), "torch.optim.Adam"),
    Entry("scale_by_rms", lambda: gx.chain(gx.scale_by_rms(), gx.scale_by_lr(0.01)), "torch.optim.RMSprop"),
    Entry("add_decayed_weights", lambda: gx.chain(gx.add_decayed_weights(1e-3), gx.scale_by_lr(0.05)),
          "AdamW decay"),
    Entry("sgd", lambda: gx.sgd(0.01, momentum=0.9, weight_decay=1e-4), "torch.optim.SGD", kind="alias"),
    Entry("adam", lambda: gx.adam(0.05), "torch.optim.Adam", kind="alias"),
    Entry("adamw", lambda: gx.adamw(0.05, weight_decay=1e-3), "torch.optim.AdamW", kind="alias"),
    Entry("chain", lambda: gx.chain(gx.clip_value(10.0), gx.scale_by_adam(), gx.scale_by_lr(0.05)),
          "composition"),
    Entry("named_chain", lambda: gx.named_chain(("adam", gx.scale_by_adam()), ("lr", gx.scale_by_lr(0.05))),
          "composition"),
]


# Public names that are not transform constructors, so need no entry; family files may add
# their own in a ``NOT_TRANSFORMS`` set.
NOT_TRANSFORMS = {"Optimizer", "GradientTransformation", "EmptyState", "apply_updates", "stateless", "describe",
                  "transform", "leaf_names", "ParamKey", "is_elementwise", "is_leafwise", "supports_inplace"}


# --- the inputs the property suites run every entry on ------------------------------------


def example_params(dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """A matrix, a vector and a 0-dim tensor."""
    gen = torch.Generator().manual_seed(1)
    return {"w": torch.randn(4, 3, generator=gen).to(dtype), "b": torch.randn(3, generator=gen).to(dtype),
            "s": torch.randn((), generator=gen).to(dtype)}


def quadratic_value(params: dict[str, torch.Tensor]) -> torch.Tensor:
    """``sum |x|^2`` over every leaf, in float64: the loss behind ``value`` and ``value_fn``."""
    return sum((v.to(torch.complex128).abs() ** 2 if v.is_complex() else v.double() ** 2).sum()
               for v in params.values())


def quadratic_value_and_grad(params: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """``quadratic_value`` and its gradient ``2 x``, each leaf in its own dtype."""
    return quadratic_value(params), {k: 2 * v for k, v in params.items()}


def quadratic_hvp(params: dict[str, torch.Tensor], v: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The Hessian of ``quadratic_value`` (``2 I``) times ``v``, each leaf in its own dtype."""
    return {k: 2 * v[k] for k in params}


def quadratic_residuals(params: dict[str, torch.Tensor]) -> torch.Tensor:
    """Residuals ``r`` with ``||r||^2 / 2 = quadratic_value`` (for least-squares methods)."""
    return torch.cat([(2 ** 0.5) * v.double().reshape(-1) for v in params.values()])


def extra_args(entry: Entry, params: dict[str, torch.Tensor]) -> dict:
    """The extra arguments ``entry`` needs at ``params``, all from ``quadratic_value``."""
    extra = {}
    if "value" in entry.needs:
        extra["value"] = quadratic_value(params)
    if "grad" in entry.needs:
        extra["grad"] = {k: 2 * v for k, v in params.items()}
    if "value_fn" in entry.needs:
        extra["value_fn"] = quadratic_value
    if "value_and_grad_fn" in entry.needs:
        extra["value_and_grad_fn"] = quadratic_value_and_grad
    if "hvp_fn" in entry.needs:
        extra["hvp_fn"] = quadratic_hvp
    if "residual_fn" in entry.needs:
        extra["residual_fn"] = quadratic_residuals
    return extra


def _collect() -> list[Entry]:
    entries = list(CORE)
    for path in sorted(pathlib.Path(__file__).parent.glob("registry_*.py")):
        module = importlib.import_module(path.stem)
        entries.extend(module.ENTRIES)
        NOT_TRANSFORMS.update(getattr(module, "NOT_TRANSFORMS", ()))
    names = [e.name for e in entries]
    duplicates = {n for n in names if names.count(n) > 1}
    if duplicates:
        raise ValueError(f"registered twice: {sorted(duplicates)}")
    return entries


ENTRIES = _collect()
