"""Hyperparameters: validation at build time, and values that may be schedules.

A hyperparameter is a Python number, a 0-dim tensor, or a schedule ``step -> value``.
Numbers kept in state become float64 0-dim CPU tensors, so a float64 run sees exactly the
value given, and writing a new value in place never recompiles a compiled step.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Union

import torch

Schedule = Callable[[torch.Tensor], torch.Tensor]
ScalarOrSchedule = Union[float, int, torch.Tensor, Schedule]

HPARAM_DTYPE = torch.float64


def _as_float(value) -> float | None:
    """The Python value of a number or plain tensor, ``None`` when it cannot be read
    without breaking a transform (a traced or functorch-wrapped tensor)."""
    if isinstance(value, (bool,)):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, torch.Tensor):
        if value.numel() != 1 or value.requires_grad or torch.compiler.is_compiling():
            return None
        if torch._C._functorch.maybe_current_level() is not None:
            return None
        try:
            return float(value.item())
        except RuntimeError:
            return None
    return None


def traced(value) -> bool:
    """Whether ``value`` is a tensor whose value must not be read in Python: it carries
    autograd history (a hyperparameter to differentiate through), is wrapped by ``torch.func``
    or is being compiled. Such a value always takes a transform's general formula."""
    if not isinstance(value, torch.Tensor):
        return False
    return (value.requires_grad or torch.compiler.is_compiling()
            or torch._C._functorch.is_functorch_wrapped_tensor(value))


def is_value(value, number: float) -> bool:
    """Whether the hyperparameter ``value`` is exactly ``number`` (and may be read), so that a
    transform may take a cheaper formula for it (``eps_root == 0``); a :func:`traced` tensor
    never is, so its gradient flows through the general formula."""
    if isinstance(value, (int, float)):
        return value == number
    x = _as_float(value)
    return x is not None and x == number


def full_like(p: torch.Tensor, value) -> torch.Tensor:
    """A tensor like ``p`` filled with ``value`` (a number or a 0-dim tensor, whose autograd
    history the result keeps). A complex ``p`` gets ``value`` in its real and its imaginary
    part: state that transforms keep per real component (torch.optim's view of complex
    parameters) starts at ``value`` in each."""
    if p.is_complex():
        return torch.view_as_complex(full_like(torch.view_as_real(p), value).contiguous())
    if traced(value):
        return (torch.zeros_like(p) + value.to(p.device)).to(p.dtype)
    return torch.full_like(p, float(value))


def check(name: str, value, *, low: float | None = None, high: float | None = None,
          low_open: bool = False, high_open: bool = False, allow_schedule: bool = False) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` lies in the given interval.

    Schedules are not evaluated here (their values are checked by nobody, as in optax).
    """
    if callable(value) and not isinstance(value, torch.Tensor):
        if allow_schedule:
            return
        raise ValueError(f"{name} must be a number or a 0-dim tensor, got a callable {value!r}")
    if isinstance(value, torch.Tensor) and value.dim() != 0:
        raise ValueError(f"{name} must be a number or a 0-dim tensor, got a tensor of shape {tuple(value.shape)}")
    if not isinstance(value, (int, float, torch.Tensor)) or isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    x = _as_float(value)
    if x is None:
        return
    if math.isnan(x):
        raise ValueError(f"{name} must not be NaN")
    lo_bad = low is not None and (x <= low if low_open else x < low)
    hi_bad = high is not None and (x >= high if high_open else x > high)
    if lo_bad or hi_bad:
        lo = "" if low is None else ("(" if low_open else "[") + f"{low:g}"
        hi = "" if high is None else f"{high:g}" + (")" if high_open else "]")
        where = f"in {lo}, {hi}" if low is not None and high is not None else (
            f"{'>' if low_open else '>='} {low:g}" if low is not None else f"{'<' if high_open else '<='} {high:g}")
        raise ValueError(f"{name} must be {where}, got {x!r}")


def check_beta(name: str, value) -> None:
    """A decay rate: in ``[0, 1)``."""
    check(name, value, low=0.0, high=1.0, high_open=True)


def to_state(value) -> torch.Tensor:
    """A number or 0-dim tensor as the 0-dim tensor kept in state.

    A tensor is cloned (so the state never aliases the caller's tensor), keeping its dtype,
    device and autograd history; a number becomes a float64 CPU tensor.
    """
    if isinstance(value, torch.Tensor):
        return value.clone()
    return torch.tensor(float(value), dtype=HPARAM_DTYPE)


def is_schedule(value) -> bool:
    return callable(value) and not isinstance(value, torch.Tensor)


def at(value: ScalarOrSchedule, count: torch.Tensor):
    """The value of a hyperparameter at step ``count`` (schedules are called)."""
    return value(count) if is_schedule(value) else value


def new_count(like: torch.Tensor | None = None) -> torch.Tensor:
    """A fresh step counter: an int32 0-dim tensor on the CPU."""
    return torch.zeros((), dtype=torch.int32)


def increment(count: torch.Tensor, inplace: bool) -> torch.Tensor:
    """``count + 1``, written into ``count`` when ``inplace``."""
    return count.add_(1) if inplace else count + 1
