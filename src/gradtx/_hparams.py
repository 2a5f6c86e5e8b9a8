"""Hyperparameters: validation at build time, and values that may be schedules.

A hyperparameter is a Python number, a 1-element tensor (taken as 0-dim, as torch takes
``torch.tensor([1e-3])`` for a learning rate), or a schedule ``step -> value``. It must be
finite unless infinity means "no bound" (``check(..., allow_inf=True)``); schedules are
called once at step 0 when the transform is built. Numbers kept in state become float64
0-dim CPU tensors, so a float64 run sees exactly the value given, and writing a new value in
place never recompiles a compiled step.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Callable
from typing import Union

import torch

Schedule = Callable[[torch.Tensor], torch.Tensor]
ScalarOrSchedule = Union[float, int, torch.Tensor, Schedule]

HPARAM_DTYPE = torch.float64


def _as_float(value) -> float | None:
    """The Python value of a number or plain tensor, ``None`` when it cannot be read
    without breaking a transform (a traced or functorch-wrapped tensor)."""
    if isinstance(value, numbers.Real):
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


def as_scalar(value):
    """``value`` with a 1-element tensor of any shape as a 0-dim tensor (torch accepts
    ``torch.tensor([1e-3])`` as a learning rate); anything else unchanged."""
    if (isinstance(value, torch.Tensor) and value.dim() > 0 and value.numel() == 1
            and value.dtype != torch.bool):
        return value.reshape(())
    return value


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
          low_open: bool = False, high_open: bool = False, allow_schedule: bool = False,
          allow_inf: bool = False) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is a finite number (or a
    1-element real tensor) in the given interval.

    ``allow_inf`` accepts an infinite value where infinity means "no bound" (a maximum
    clip, ``max_norm=inf``); NaN is never accepted. ``allow_schedule`` accepts a schedule,
    which is called once at step 0 (:func:`check_schedule`).
    """
    if is_schedule(value):
        if allow_schedule:
            check_schedule(name, value)
            return
        raise ValueError(f"{name} must be a number or a 0-dim tensor, got a callable {value!r}")
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a number or a 1-element tensor, got a tensor of shape "
                             f"{tuple(value.shape)}")
        if value.dtype == torch.bool or value.is_complex():
            raise ValueError(f"{name} must be a real number, got a tensor of dtype {value.dtype}")
    elif isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    x = _as_float(value)
    if x is None:
        return
    if math.isnan(x):
        raise ValueError(f"{name} must not be NaN")
    if math.isinf(x) and not allow_inf:
        raise ValueError(f"{name} must be finite, got {x!r}")
    lo_bad = low is not None and (x <= low if low_open else x < low)
    hi_bad = high is not None and (x >= high if high_open else x > high)
    if lo_bad or hi_bad:
        lo = "" if low is None else ("(" if low_open else "[") + f"{low:g}"
        hi = "" if high is None else f"{high:g}" + (")" if high_open else "]")
        where = f"in {lo}, {hi}" if low is not None and high is not None else (
            f"{'>' if low_open else '>='} {low:g}" if low is not None else f"{'<' if high_open else '<='} {high:g}")
        raise ValueError(f"{name} must be {where}, got {x!r}")


def check_order(low_name: str, low, high_name: str, high) -> None:
    """Raise ``ValueError`` naming both arguments unless ``low <= high`` (each already checked)."""
    lo, hi = _as_float(low), _as_float(high)
    if lo is not None and hi is not None and hi < lo:
        raise ValueError(f"{high_name} must be >= {low_name}, got {high_name}={hi!r} < {low_name}={lo!r}")


def check_int(name: str, value, *, low: int | None = None) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is a Python int (not a bool)
    ``>= low``: a count, a size or a seed."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if low is not None and value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def check_schedule(name: str, schedule) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``schedule`` can be called as the
    transforms call it, with the step count (an int32 0-dim tensor), and gives a number
    or a 0-dim tensor there: called once, at step 0."""
    try:
        inspect.signature(schedule).bind(new_count())
    except TypeError:
        raise ValueError(f"{name} must be a number, a 0-dim tensor or a schedule step -> value called with one "
                         f"argument (the step count); {schedule!r} cannot be called that way") from None
    except ValueError:  # no signature to read (some builtins): the call below tells
        pass
    try:
        value = schedule(new_count())
    except Exception as error:  # noqa: BLE001 - any failure of the user's schedule is reported as such
        raise ValueError(f"{name}: the schedule {schedule!r} raised {type(error).__name__}: {error} when called "
                         "at step 0 (an int32 0-dim tensor)") from error
    if isinstance(value, torch.Tensor):
        good = value.dim() == 0 and value.dtype != torch.bool and not value.is_complex()
    else:
        good = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not good:
        shown = f"a tensor of shape {tuple(value.shape)} and dtype {value.dtype}" if isinstance(
            value, torch.Tensor) else f"{type(value).__name__} {value!r}"
        raise ValueError(f"{name}: the schedule {schedule!r} must return a number or a 0-dim tensor, "
                         f"but at step 0 returned {shown}")


def check_beta(name: str, value) -> None:
    """A decay rate: in ``[0, 1)``."""
    check(name, value, low=0.0, high=1.0, high_open=True)


def to_state(value) -> torch.Tensor:
    """A number or 1-element tensor as the 0-dim tensor kept in state.

    A tensor is cloned (so the state never aliases the caller's tensor), keeping its dtype,
    device and autograd history; a number becomes a float64 CPU tensor.
    """
    if isinstance(value, torch.Tensor):
        return as_scalar(value).clone()
    return torch.tensor(float(value), dtype=HPARAM_DTYPE)


def is_schedule(value) -> bool:
    return callable(value) and not isinstance(value, torch.Tensor)


def at(value: ScalarOrSchedule, count: torch.Tensor):
    """The value of a hyperparameter at step ``count`` (schedules are called)."""
    return value(count) if is_schedule(value) else value


def new_count(like: torch.Tensor | None = None) -> torch.Tensor:
    """A fresh step counter: an int32 0-dim tensor on the CPU. Made from a number, so that
    under ``FakeTensorMode`` (memory estimation) it is a fake tensor that keeps its value
    through ``add_(1)`` and can be read, as torch.optim's step counts are."""
    return torch.tensor(0, dtype=torch.int32)


def increment(count: torch.Tensor, inplace: bool) -> torch.Tensor:
    """``count + 1``, written into ``count`` when ``inplace``."""
    return count.add_(1) if inplace else count + 1
