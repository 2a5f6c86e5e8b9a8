"""Fast paths for the adapter: the other ``torch.optim`` algorithms, as few multi-tensor passes.

``plan(parts)`` recognises, by the ``name`` and ``args`` each part records (as
``gradtx.optim.fused`` does), chains with the numbers of a ``torch.optim`` algorithm that
torch has no fused kernel for, and runs them in place on the chain's own state tensors:

- ``[add_decayed_weights(wd)] + scale_by_rss(...) + scale_by_lr(lr)`` (``gx.adagrad``): torch's
  fused Adagrad kernel on the CPU when ``eps`` is outside the root (torch's form), else
  three passes;
- ``[add_decayed_weights(0)] + scale_by_rms(...) + [identity()] + scale_by_lr(lr)`` (``gx.rmsprop``);
- ``scale_by_adamax(...) + scale_by_lr(lr)`` (``gx.adamax``);
- ``scale_by_nadam(...) + scale_by_lr(lr)`` (``gx.nadam`` with ``momentum_decay``, torch's NAdam);
- ``scale_by_radam(...) + scale_by_lr(lr)`` (``gx.radam``, both denominators);
- ``[add_decayed_weights(0)] + scale_by_adadelta(...) + scale_by_lr(lr)`` (``gx.adadelta``);
- ``[add_decayed_weights(0)] + scale_by_asgd(...) + scale_by_lr(lr)`` (``gx.asgd``).

What makes them faster than the generic in-place path: the gradients are read where they
are (no copy into scratch first), ``-lr`` and the step's bias corrections are folded into
the one pass that updates the parameters (``addcdiv_``), a weight decay of zero costs no
pass, and the temporaries live in the adapter's scratch buffers, reused from step to step
(fresh memory costs page faults every step). The state layout is the chain's, so
``state_dict`` and checkpoints move freely between these paths and the generic one; the
numbers are the generic path's to round-off (the same formulas, a few factors moved between
the scalar and the tensor side). Parameters of other dtypes than float32 and float64, complex
ones, gradients of another dtype or device, a nonzero weight decay where the kernel has none,
and hyperparameters that carry autograd history take the generic path.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .fused import _attrs, _group_by_device_and_dtype, _linear_layout, _number

_DTYPES = (torch.float32, torch.float64)

# Mean elements per tensor from which a Python loop of ``op(x, out=buffer)`` (one pass) beats
# a copy into the buffer and an in-place foreach op (two passes, but one call for the list).
_LOOP_MIN = 1 << 15


def _into(op: str, dst: list[torch.Tensor], src: list[torch.Tensor], numel: int, *args: Any) -> list[torch.Tensor]:
    """``dst[i] <- op(src[i], *args)`` for a unary op (``sqrt``, ``abs``) or ``add`` of a number."""
    if numel >= _LOOP_MIN * len(src):
        fn = getattr(torch, op)
        for d, s in zip(dst, src):
            fn(s, *args, out=d)
        return dst
    torch._foreach_copy_(dst, src)
    getattr(torch, f"_foreach_{op}_")(dst, *args)
    return dst


def _step(count: torch.Tensor) -> int:
    count.add_(1)
    return int(count)


@dataclass
class MultiTensorPlan:
    """How to run one recognised chain as multi-tensor passes (see the module docstring)."""

    kind: str
    core: int  # index in the chain state of the scaling transform
    decay: int  # index of add_decayed_weights (-1: none)
    lr: int  # index of scale_by_lr
    hp: dict[str, Any] = field(default_factory=dict)  # the scaling transform's constructor arguments

    def run(self, state: tuple, keys: list[int], params: dict, grads: dict,
            buffers: Callable[..., list[torch.Tensor]]) -> bool:
        """One step in place on ``state``; ``False``, having changed nothing, when these
        tensors or hyperparameters do not suit the kernels (the caller then takes the
        generic path). ``buffers(like, slot)`` gives scratch tensors like ``like``, kept
        from step to step, one set per ``slot``."""
        ps = [params[k] for k in keys]
        gs = [grads[k] for k in keys]
        for p, g in zip(ps, gs):
            if p.dtype not in _DTYPES or g.dtype != p.dtype or g.device != p.device:
                return False
        lr = _number(state[self.lr].lr)
        wd = _number(state[self.decay].weight_decay) if self.decay >= 0 else 0.0
        if lr is None or wd is None or (wd != 0.0 and self.kind != "adagrad"):
            return False
        s = state[self.core]
        numel = sum(p.numel() for p in ps)
        return _KERNELS[self.kind](self.hp, s, keys, ps, gs, lr, wd, numel, buffers)


def _fields(s: Any, keys: list[int], *names: str) -> list[list[torch.Tensor]]:
    return [[getattr(s, name)[k] for k in keys] for name in names]


def _adagrad(hp, s, keys, ps, gs, lr, wd, numel, buffers) -> bool:
    (ss,) = _fields(s, keys, "sum_of_squares")
    eps = hp["eps"]
    if not hp["eps_in_sqrt"] and all(p.device.type == "cpu" for p in ps):
        # torch's own kernel: its numbers are Adagrad's, one pass per tensor
        ps, gs, (ss,), write_back = _linear_layout(ps, gs, [ss])
        step = torch.ones((), dtype=torch.float32)  # lr_decay 0: the kernel does not read the step
        for idx in _group_by_device_and_dtype(ps).values():
            torch._fused_adagrad_([ps[i] for i in idx], [gs[i] for i in idx], [ss[i] for i in idx],
                                  [step] * len(idx), lr=lr, lr_decay=0.0, weight_decay=wd, eps=eps, maximize=False)
        if write_back:
            torch._foreach_copy_([dst for dst, _ in write_back], [src for _, src in write_back])
        return True
    if wd != 0.0 or eps == 0.0:  # eps 0 zeroes 0/0 (scale_by_rss' convention): the generic path
        return False
    torch._foreach_addcmul_(ss, gs, gs)
    if hp["eps_in_sqrt"]:
        denom = _into("add", buffers(gs, 0), ss, numel, eps)
        torch._foreach_sqrt_(denom)
    else:
        denom = _into("sqrt", buffers(gs, 0), ss, numel)
        torch._foreach_add_(denom, eps)
    torch._foreach_addcdiv_(ps, gs, denom, -lr)
    return True


def _rmsprop(hp, s, keys, ps, gs, lr, wd, numel, buffers) -> bool:
    (nus,) = _fields(s, keys, "nu")
    decay, eps = hp["decay"], hp["eps"]
    torch._foreach_mul_(nus, decay)
    torch._foreach_addcmul_(nus, gs, gs, 1.0 - decay)
    if hp["eps_in_sqrt"]:
        denom = _into("add", buffers(gs, 0), nus, numel, eps)
        torch._foreach_sqrt_(denom)
    else:
        denom = _into("sqrt", buffers(gs, 0), nus, numel)
        torch._foreach_add_(denom, eps)
    torch._foreach_addcdiv_(ps, gs, denom, -lr)
    return True


def _adamax(hp, s, keys, ps, gs, lr, wd, numel, buffers) -> bool:
    mus, nus = _fields(s, keys, "mu", "nu")
    b1, b2 = hp["b1"], hp["b2"]
    torch._foreach_lerp_(mus, gs, 1.0 - b1)
    bound = _into("abs", buffers(gs, 0), gs, numel)  # |g| + eps
    torch._foreach_add_(bound, hp["eps"])
    torch._foreach_mul_(nus, b2)
    torch._foreach_maximum_(nus, bound)
    t = _step(s.count)
    torch._foreach_addcdiv_(ps, mus, nus, -lr / (1.0 - b1 ** t))
    return True


def _moments(mus, nus, gs, b1: float, b2: float) -> None:
    torch._foreach_lerp_(mus, gs, 1.0 - b1)
    torch._foreach_mul_(nus, b2)
    torch._foreach_addcmul_(nus, gs, gs, 1.0 - b2)


def _nadam(hp, s, keys, ps, gs, lr, wd, numel, buffers) -> bool:
    mus, nus = _fields(s, keys, "mu", "nu")
    b1, b2, decay = hp["b1"], hp["b2"], hp["momentum_decay"]
    _moments(mus, nus, gs, b1, b2)
    t = _step(s.count)
    mu_t = b1 * (1.0 - 0.5 * 0.96 ** (t * decay))
    mu_next = b1 * (1.0 - 0.5 * 0.96 ** ((t + 1.0) * decay))
    product = float(s.mu_product.mul_(mu_t))
    # sqrt(v / bc2) + eps == (sqrt(v) + eps sqrt(bc2)) / sqrt(bc2): sqrt(bc2) joins the factors
    root_bc2 = math.sqrt(1.0 - b2 ** t)
    denom = _into("sqrt", buffers(gs, 0), nus, numel)
    torch._foreach_add_(denom, hp["eps"] * root_bc2)
    torch._foreach_addcdiv_(ps, gs, denom, -lr * root_bc2 * (1.0 - mu_t) / (1.0 - product))
    torch._foreach_addcdiv_(ps, mus, denom, -lr * root_bc2 * mu_next / (1.0 - product * mu_next))
    return True


def _radam(hp, s, keys, ps, gs, lr, wd, numel, buffers) -> bool:
    mus, nus = _fields(s, keys, "mu", "nu")
    b1, b2, eps = hp["b1"], hp["b2"], hp["eps"]
    _moments(mus, nus, gs, b1, b2)
    t = _step(s.count)
    bc1, bc2 = 1.0 - b1 ** t, 1.0 - b2 ** t
    rho_inf = 2.0 / (1.0 - b2) - 1.0
    rho = rho_inf - 2.0 * t * b2 ** t / bc2
    if not rho >= hp["threshold"]:
        torch._foreach_add_(ps, mus, alpha=-lr / bc1)  # the update is m_hat itself
        return True
    r = math.sqrt(max((rho - 4.0) * (rho - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho), 0.0))
    root_bc2 = math.sqrt(bc2)
    # torch's denominator (sqrt(v) + eps) / sqrt(bc2); optax's sqrt(v / bc2) + eps, which is
    # (sqrt(v) + eps sqrt(bc2)) / sqrt(bc2)
    denom = _into("sqrt", buffers(gs, 0), nus, numel)
    torch._foreach_add_(denom, eps if hp["eps_before_debias"] else eps * root_bc2)
    torch._foreach_addcdiv_(ps, mus, denom, -lr * r * root_bc2 / bc1)
    return True


def _adadelta(hp, s, keys, ps, gs, lr, wd, numel, buffers) -> bool:
    egs, exs = _fields(s, keys, "e_g", "e_x")
    rho, eps = hp["rho"], hp["eps"]
    torch._foreach_mul_(egs, rho)
    torch._foreach_addcmul_(egs, gs, gs, 1.0 - rho)
    std = _into("add", buffers(gs, 1), egs, numel, eps)
    torch._foreach_sqrt_(std)
    delta = _into("add", buffers(gs, 0), exs, numel, eps)
    torch._foreach_sqrt_(delta)
    torch._foreach_div_(delta, std)
    torch._foreach_mul_(delta, gs)
    torch._foreach_mul_(exs, rho)
    torch._foreach_addcmul_(exs, delta, delta, 1.0 - rho)
    torch._foreach_add_(ps, delta, alpha=-lr)
    return True


def _asgd(hp, s, keys, ps, gs, lr, wd, numel, buffers) -> bool:
    (axs,) = _fields(s, keys, "ax")
    rate = _number(s.lr)
    if rate is None or rate != lr:  # the update is (g + lambd p) eta_t / lr, then times lr
        return False
    lambd, t0 = hp["lambd"], hp["t0"]
    t = _step(s.count)
    eta = lr * (1.0 + lambd * lr * (t - 1.0)) ** (-hp["alpha"])
    # p - eta (g + lambd p), in torch's order
    if lambd != 0.0:
        torch._foreach_mul_(ps, 1.0 - lambd * eta)
    torch._foreach_add_(ps, gs, alpha=-eta)
    mu = 1.0 / max(t - 1.0 - t0, 1.0)
    if mu == 1.0:
        torch._foreach_copy_(axs, ps)
    else:
        torch._foreach_lerp_(axs, ps, mu)
    return True


_KERNELS: dict[str, Callable[..., bool]] = {
    "adagrad": _adagrad, "rmsprop": _rmsprop, "adamax": _adamax, "nadam": _nadam, "radam": _radam,
    "adadelta": _adadelta, "asgd": _asgd,
}


def _numbers(args: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any] | None:
    out = {}
    for name in names:
        value = args.get(name)
        out[name] = value if isinstance(value, bool) else _number(value)
        if out[name] is None:
            return None
    return out


# name of the scaling transform -> (plan kind, the arguments it reads, whether a decay may precede it)
_SHAPES: dict[str, tuple[str, tuple[str, ...], bool]] = {
    "scale_by_rss": ("adagrad", ("initial_accumulator_value", "eps", "eps_in_sqrt"), True),
    "scale_by_rms": ("rmsprop", ("decay", "eps", "initial_scale", "eps_in_sqrt", "bias_correction"), True),
    "scale_by_adamax": ("adamax", ("b1", "b2", "eps"), False),
    "scale_by_nadam": ("nadam", ("b1", "b2", "eps", "momentum_decay", "eps_root"), False),
    "scale_by_radam": ("radam", ("b1", "b2", "eps", "eps_root", "threshold", "nesterov", "eps_before_debias"), False),
    "scale_by_adadelta": ("adadelta", ("rho", "eps"), True),
    "scale_by_asgd": ("asgd", ("lambd", "alpha", "t0"), True),
}


def plan(parts: tuple) -> MultiTensorPlan | None:
    """The plan for a chain's ``parts`` (ending in ``scale_by_lr(number)``), or ``None``."""
    names = [_attrs(p)[0] for p in parts]
    args = [_attrs(p)[1] for p in parts]
    i = 0
    decay = -1
    if names[0] == "add_decayed_weights":
        if args[0].get("mask") is not None or _number(args[0].get("weight_decay")) is None:
            return None
        decay, i = 0, 1
    if i >= len(parts) - 1 or names[i] not in _SHAPES:
        return None
    kind, wanted, decay_ok = _SHAPES[names[i]]
    hp = _numbers(args[i], wanted)
    if hp is None or (decay >= 0 and not decay_ok):
        return None
    rest = names[i + 1:]
    if rest == ["identity", "scale_by_lr"] and kind == "rmsprop":
        rest = ["scale_by_lr"]
    if rest != ["scale_by_lr"]:
        return None
    if kind == "rmsprop" and hp["bias_correction"]:
        return None
    if kind in ("nadam", "radam") and (hp["eps_root"] != 0.0 or args[i].get("mu_dtype") is not None
                                       or hp.get("nesterov")):
        return None
    return MultiTensorPlan(kind, i, decay, len(parts) - 1, hp)
