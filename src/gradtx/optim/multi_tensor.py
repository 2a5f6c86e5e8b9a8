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
- ``[add_decayed_weights(0)] + scale_by_asgd(...) + scale_by_lr(lr)`` (``gx.asgd``);
- ``scale_by_rprop(...) + scale_by_lr(lr)`` (``gx.rprop``).

torch's RMSprop runs torch's fused Adam kernel (``b1 = 0``: the first moment is the gradient,
in a scratch block; a step count of infinity makes both bias corrections 1), ASGD torch's
fused SGD kernel (its weight decay is ``lambd``): one pass each where the tensors are
contiguous. Rprop's three-way choice of factor (``eta_plus``, ``eta_minus``, 1 by the sign of
``g * u_prev``) has no multi-tensor ``where``: it is made of the sign ``q``, its positive
part ``P`` and its negative part ``N`` as ``(1 + (eta_plus - 1) P) (1 + N) - eta_minus N``,
exact (a product by 0 or 1, a sum with 0; the plan is refused for an ``eta_plus`` where
``1 + (eta_plus - 1)`` is not ``eta_plus`` in float32 or float64), so the step sizes are
the generic path's bit for bit. The kernels of several passes run them block by block (``cut``: ``_BLOCK``
elements, long tensors cut in pieces, runs of short ones together), so that a block's
tensors stay in cache between passes, as torch's for-loop implementations get by going one
tensor at a time; the scratch is one block's.

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
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import _foreach as F  # noqa: N812
from .fused import _attrs, _group_by_device_and_dtype, _linear_layout, _number, grads_match, state_matches, unnest

_DTYPES = (torch.float32, torch.float64)

# Mean elements per tensor from which a Python loop of ``op(x, out=buffer)`` (one pass) beats
# a copy into the buffer and an in-place foreach op (two passes, but one call for the list).
_LOOP_MIN = 1 << 15

# Elements per block: a kernel of several passes runs them block by block, so that a block's
# tensors stay in the cache from one pass to the next (torch's for-loop implementations get
# this from going one tensor at a time). Tensors longer than a block are cut into pieces and
# runs of shorter ones are taken together: 2^18 elements (1 MiB a stream in float32) keep a
# kernel's few streams in the L2/L3 caches with few enough calls that Python costs little.
_BLOCK = 1 << 18

_SHAPE = operator.attrgetter("shape")


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
    """This step's count; the state's moves on in ``_Kernel.advance``, once the passes ran."""
    return int(count) + 1


def _advance_count(hp, s) -> None:
    s.count.add_(1)


@dataclass
class _Kernel:
    """One algorithm: the state fields it updates, the scratch tensors a block needs, the
    step's scalars (``prepare``, once per step: counts, bias corrections; ``None`` refuses;
    it changes nothing), the passes over one block (``body(scalars, ps, gs, *fields,
    *scratch, numel)``) and what moves on after them (``advance(hp, state)``: the count), so
    that a step that raises midway leaves the counts as they were."""

    fields: tuple[str, ...]
    scratch: int
    prepare: Callable[..., Any]
    body: Callable[..., None]
    advance: Callable[..., None] | None = None


@dataclass
class MultiTensorPlan:
    """How to run one recognised chain as multi-tensor passes (see the module docstring)."""

    kind: str
    core: int  # index in the chain state of the scaling transform
    decay: int  # index of add_decayed_weights (-1: none)
    lr: int  # index of scale_by_lr
    hp: dict[str, Any] = field(default_factory=dict)  # the scaling transform's constructor arguments
    # the blocks of the last shapes seen: (shapes, device, dtype, blocks, scratch buffers)
    _blocks: Any = field(default=None, repr=False, compare=False)
    _verified: set = field(default_factory=set, repr=False, compare=False)  # see fused.state_matches
    nesting: tuple | None = None  # a chain of chains: how its state nests (see fused.unnest)

    def run(self, state: tuple, keys: list[int], params: dict, grads: dict,
            buffers: Callable[..., list[torch.Tensor]], segments: dict | None = None) -> bool:
        """One step in place on ``state``; ``False``, having changed nothing, when these
        tensors or hyperparameters do not suit the kernels (the caller then takes the
        generic path). ``buffers(like, slot)`` gives scratch tensors like ``like``, kept
        from step to step, one set per ``slot`` (used when the tensors cannot be blocked).
        ``segments`` (the flat path's) is not needed: these chains are elementwise."""
        state = unnest(state, self.nesting)
        # the adapter's dicts hold exactly ``keys``, in order: their values are the lists
        ps = list(params.values()) if len(params) == len(keys) else [params[k] for k in keys]
        gs = list(grads.values()) if len(grads) == len(keys) else [grads[k] for k in keys]
        if not ps:
            return False
        groups = _group_by_device_and_dtype(ps)
        if any(dtype not in _DTYPES for _, dtype in groups) or not grads_match(groups, ps, gs):
            return False
        uniform = len(groups) == 1  # one dtype and device: the tensors can be blocked
        lr = _number(state[self.lr].lr)
        wd = _number(state[self.decay].weight_decay) if self.decay >= 0 else 0.0
        if lr is None or wd is None or (wd != 0.0 and self.kind != "adagrad"):
            return False
        s = state[self.core]
        fused_adagrad = self.kind == "adagrad" and not self.hp["eps_in_sqrt"] and all(
            device.type == "cpu" for device, _ in groups)
        kernel = _KERNELS[self.kind]
        buffers_of = [[getattr(s, name)[k] for k in keys] for name in kernel.fields]
        if not state_matches(self._verified, groups, ps, buffers_of):
            return False
        if fused_adagrad:
            _fused_adagrad(self.hp, ps, gs, buffers_of[0], lr, wd)
            return True
        if self.kind == "rmsprop" and not self.hp["eps_in_sqrt"] and self.hp["decay"] < 1.0:
            kernel = _RMSPROP_ON_ADAM
        if wd != 0.0:  # only torch's fused Adagrad kernel takes a weight decay
            return False
        try:
            scalars = kernel.prepare(self.hp, s, lr)
        except RuntimeError:
            # a count or product that cannot be read (a meta or fake one, under FakeTensorMode,
            # not made from a number): the generic path steps it with tensor ops
            if not F.without_data(ps[0]):
                raise
            return False
        if scalars is None:
            return False
        lists = [ps, gs, *buffers_of]
        for block, scratch, numel in cut(self, lists, kernel.scratch, buffers, uniform):
            kernel.body(scalars, *block, *scratch, numel)
        if kernel.advance is not None:
            kernel.advance(self.hp, s)
        return True


def cut(owner: Any, lists: list[list[torch.Tensor]], nscratch: int, buffers: Callable, uniform: bool) -> Any:
    """``(lists of a block, its scratch lists, its element count)`` block by block (the blocks
    and their scratch kept on ``owner._blocks`` while the shapes stay); the whole lists at
    once, with the adapter's scratch ``buffers(like, slot)``, when they mix dtypes or devices
    (``uniform`` false)."""
    ps = lists[0]
    if not uniform:
        yield lists, [buffers(lists[1], slot) for slot in range(nscratch)], sum(p.numel() for p in ps)
        return
    shapes = list(map(_SHAPE, ps))
    cached = owner._blocks
    if cached is None or cached[0] != shapes or cached[1] != ps[0].device or cached[2] != ps[0].dtype:
        cached = owner._blocks = (shapes, ps[0].device, ps[0].dtype, *_layout(shapes))
    blocks, bufs = cached[3], cached[4]
    while len(bufs) < nscratch:
        bufs.append(torch.empty(_BLOCK, dtype=ps[0].dtype, device=ps[0].device))
    for lo, hi, numel, views in blocks:
        if views is not None:  # a run of whole tensors, scratch views shaped like them
            yield [x[lo:hi] for x in lists], views(bufs, nscratch), numel
            continue
        tensors = [x[lo] for x in lists]
        if not all(t.is_contiguous() for t in tensors):  # rare: the whole tensor, fresh scratch
            yield [[t] for t in tensors], [[torch.empty_like(tensors[1])] for _ in range(nscratch)], numel
            continue
        pieces = [t.view(-1).split(_BLOCK) for t in tensors]
        for j in range(len(pieces[0])):
            n = pieces[0][j].numel()
            yield [[x[j]] for x in pieces], [[b[:n]] for b in bufs[:nscratch]], n


class _Views:
    """Scratch tensors shaped like a run of whole tensors: views of the block buffers, made
    once per buffer."""

    def __init__(self, shapes: list[torch.Size], numels: list[int]) -> None:
        self.shapes, self.numels, self.made = shapes, numels, []

    def __call__(self, bufs: list[torch.Tensor], count: int) -> list[list[torch.Tensor]]:
        while len(self.made) < count:
            buf = bufs[len(self.made)]
            pieces = buf[:sum(self.numels)].split(self.numels)
            self.made.append([v.view(s) for v, s in zip(pieces, self.shapes)])
        return self.made[:count]


def _layout(shapes: list[torch.Size]) -> tuple[list, list]:
    """Blocks over tensors of ``shapes``: ``(lo, hi, numel, views)``, ``views`` making scratch
    tensors shaped like tensors ``lo:hi`` (``None``: one tensor cut into pieces)."""
    numels = [math.prod(s) for s in shapes]
    blocks, lo, total = [], 0, 0
    for i, n in enumerate(numels + [None]):
        if n is None or n > _BLOCK or total + n > _BLOCK:
            if i > lo:
                blocks.append((lo, i, total, _Views(shapes[lo:i], numels[lo:i])))
            lo, total = i, 0
            if n is not None and n > _BLOCK:
                blocks.append((i, i + 1, n, None))
                lo = i + 1
                continue
        if n is not None:
            total += n
    return blocks, []


def _contiguous(*lists: list[torch.Tensor]) -> bool:
    return all(all(map(torch.Tensor.is_contiguous, x)) for x in lists)


def _fused_adagrad(hp, ps, gs, ss, lr, wd) -> None:
    """torch's own kernel over parameters, gradients and sums of squares ``ss``: its numbers
    are Adagrad's, one pass per tensor."""
    ps, gs, (ss,), write_back = _linear_layout(ps, gs, [ss])
    step = torch.ones((), dtype=torch.float32)  # lr_decay 0: the kernel does not read the step
    for idx in _group_by_device_and_dtype(ps).values():
        torch._fused_adagrad_([ps[i] for i in idx], [gs[i] for i in idx], [ss[i] for i in idx],
                              [step] * len(idx), lr=lr, lr_decay=0.0, weight_decay=wd, eps=hp["eps"], maximize=False)
    if write_back:
        torch._foreach_copy_([dst for dst, _ in write_back], [src for _, src in write_back])


def _adagrad(hp, s, lr):
    return None if hp["eps"] == 0.0 else (lr, hp["eps"], hp["eps_in_sqrt"])  # eps 0: scale_by_rss zeroes 0/0


def _adagrad_body(sc, ps, gs, ss, denom, numel) -> None:
    lr, eps, in_sqrt = sc
    torch._foreach_addcmul_(ss, gs, gs)
    if in_sqrt:
        _into("add", denom, ss, numel, eps)
        torch._foreach_sqrt_(denom)
    else:
        _into("sqrt", denom, ss, numel)
        torch._foreach_add_(denom, eps)
    torch._foreach_addcdiv_(ps, gs, denom, -lr)


def _rmsprop(hp, s, lr):
    return (lr, hp["decay"], hp["eps"], None) if hp["eps_in_sqrt"] else (lr, hp["decay"], None, hp["eps"])


def _rmsprop_body(sc, ps, gs, nus, denom, numel) -> None:
    lr, decay, eps_in, eps_out = sc  # eps inside the root (gradtx's default) or outside (torch's)
    torch._foreach_mul_(nus, decay)
    torch._foreach_addcmul_(nus, gs, gs, 1.0 - decay)
    if eps_out is None:
        _into("add", denom, nus, numel, eps_in)
        torch._foreach_sqrt_(denom)
    else:
        _into("sqrt", denom, nus, numel)
        torch._foreach_add_(denom, eps_out)
    torch._foreach_addcdiv_(ps, gs, denom, -lr)


def _rmsprop_adam_body(sc, ps, gs, nus, ms, numel) -> None:
    """torch's RMSprop is Adam's kernel with b1 = 0 (the first moment is the gradient) and
    both bias corrections 1 (a step count of infinity): one pass. The first moment lands
    in scratch, zeroed first so that nothing non-finite carries over from another block."""
    lr, decay, _, eps = sc
    if not _contiguous(ps, gs, nus):  # the kernel walks memory linearly
        _rmsprop_body((lr, decay, None, eps), ps, gs, nus, ms, numel)
        return
    torch._foreach_zero_(ms)
    step = torch.full((), math.inf, dtype=torch.float32, device=ps[0].device)
    torch._fused_adam_(ps, gs, ms, nus, [], [step] * len(ps), lr=lr, beta1=0.0, beta2=decay, weight_decay=0.0,
                       eps=eps, amsgrad=False, maximize=False)


def _adamax(hp, s, lr):
    t = _step(s.count)
    return hp["b1"], hp["b2"], hp["eps"], -lr / (1.0 - hp["b1"] ** t)


def _adamax_body(sc, ps, gs, mus, nus, bound, numel) -> None:
    b1, b2, eps, alpha = sc
    torch._foreach_lerp_(mus, gs, 1.0 - b1)
    _into("abs", bound, gs, numel)  # |g| + eps
    torch._foreach_add_(bound, eps)
    torch._foreach_mul_(nus, b2)
    torch._foreach_maximum_(nus, bound)
    torch._foreach_addcdiv_(ps, mus, nus, alpha)


def _moments(mus, nus, gs, b1: float, b2: float) -> None:
    torch._foreach_lerp_(mus, gs, 1.0 - b1)
    torch._foreach_mul_(nus, b2)
    torch._foreach_addcmul_(nus, gs, gs, 1.0 - b2)


def _nadam_mu(hp, t: float) -> float:
    return hp["b1"] * (1.0 - 0.5 * 0.96 ** (t * hp["momentum_decay"]))


def _nadam(hp, s, lr):
    b1, b2 = hp["b1"], hp["b2"]
    t = _step(s.count)
    mu_t, mu_next = _nadam_mu(hp, t), _nadam_mu(hp, t + 1.0)
    product = float(s.mu_product * mu_t)  # as the in-place product _advance_nadam keeps
    # sqrt(v / bc2) + eps == (sqrt(v) + eps sqrt(bc2)) / sqrt(bc2): sqrt(bc2) joins the factors
    root_bc2 = math.sqrt(1.0 - b2 ** t)
    return (b1, b2, hp["eps"] * root_bc2, -lr * root_bc2 * (1.0 - mu_t) / (1.0 - product),
            -lr * root_bc2 * mu_next / (1.0 - product * mu_next))


def _advance_nadam(hp, s) -> None:
    s.mu_product.mul_(_nadam_mu(hp, _step(s.count)))
    s.count.add_(1)


def _nadam_body(sc, ps, gs, mus, nus, denom, numel) -> None:
    b1, b2, eps, alpha_g, alpha_m = sc
    _moments(mus, nus, gs, b1, b2)
    _into("sqrt", denom, nus, numel)
    torch._foreach_add_(denom, eps)
    torch._foreach_addcdiv_(ps, gs, denom, alpha_g)
    torch._foreach_addcdiv_(ps, mus, denom, alpha_m)


def _radam(hp, s, lr):
    b1, b2, eps = hp["b1"], hp["b2"], hp["eps"]
    t = _step(s.count)
    bc1, bc2 = 1.0 - b1 ** t, 1.0 - b2 ** t
    rho_inf = 2.0 / (1.0 - b2) - 1.0
    rho = rho_inf - 2.0 * t * b2 ** t / bc2
    if not rho >= hp["threshold"]:
        return b1, b2, None, -lr / bc1  # the update is m_hat itself
    r = math.sqrt(max((rho - 4.0) * (rho - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho), 0.0))
    root_bc2 = math.sqrt(bc2)
    # torch's denominator (sqrt(v) + eps) / sqrt(bc2); optax's sqrt(v / bc2) + eps, which is
    # (sqrt(v) + eps sqrt(bc2)) / sqrt(bc2)
    return b1, b2, eps if hp["eps_before_debias"] else eps * root_bc2, -lr * r * root_bc2 / bc1


def _radam_body(sc, ps, gs, mus, nus, denom, numel) -> None:
    b1, b2, eps, alpha = sc
    _moments(mus, nus, gs, b1, b2)
    if eps is None:
        torch._foreach_add_(ps, mus, alpha=alpha)
        return
    _into("sqrt", denom, nus, numel)
    torch._foreach_add_(denom, eps)
    torch._foreach_addcdiv_(ps, mus, denom, alpha)


def _adadelta(hp, s, lr):
    return hp["rho"], hp["eps"], lr


def _adadelta_body(sc, ps, gs, egs, exs, delta, std, numel) -> None:
    rho, eps, lr = sc
    torch._foreach_mul_(egs, rho)
    torch._foreach_addcmul_(egs, gs, gs, 1.0 - rho)
    _into("add", std, egs, numel, eps)
    torch._foreach_sqrt_(std)
    _into("add", delta, exs, numel, eps)
    torch._foreach_sqrt_(delta)
    torch._foreach_div_(delta, std)
    torch._foreach_mul_(delta, gs)
    torch._foreach_mul_(exs, rho)
    torch._foreach_addcmul_(exs, delta, delta, 1.0 - rho)
    torch._foreach_add_(ps, delta, alpha=-lr)


def _asgd(hp, s, lr):
    rate = _number(s.lr)
    if rate is None or rate != lr:  # the update is (g + lambd p) eta_t / lr, then times lr
        return None
    t = _step(s.count)
    eta = lr * (1.0 + hp["lambd"] * lr * (t - 1.0)) ** (-hp["alpha"])
    return hp["lambd"], eta, 1.0 / max(t - 1.0 - hp["t0"], 1.0)


def _asgd_body(sc, ps, gs, axs, numel) -> None:
    lambd, eta, mu = sc
    # p - eta (g + lambd p): torch's SGD kernel with weight decay lambd, one pass (it has no meta kernel)
    if _contiguous(ps, gs) and not ps[0].is_meta:
        torch._fused_sgd_(ps, gs, [], weight_decay=lambd, momentum=0.0, lr=eta, dampening=0.0, nesterov=False,
                          maximize=False, is_first_step=False)
    else:  # the kernel walks memory linearly; these tensors take two passes, in torch's order
        if lambd != 0.0:
            torch._foreach_mul_(ps, 1.0 - lambd * eta)
        torch._foreach_add_(ps, gs, alpha=-eta)
    if mu == 1.0:
        torch._foreach_copy_(axs, ps)
    else:
        torch._foreach_lerp_(axs, ps, mu)


def _rprop(hp, s, lr):
    return hp["eta_plus"] - 1.0, hp["eta_minus"], hp["min_step_size"], hp["max_step_size"], lr


def _rprop_body(sc, ps, gs, ds, us, factor, sign, numel) -> None:
    """``u_prev`` (``us``) is overwritten in turn by ``q = sign(g u_prev)``, its negative part
    ``N``, ``1 + N`` (0 where the sign flipped) and the new ``u = d sign(g) (1 + N)``; the
    factor is ``(1 + (eta_plus - 1) P) (1 + N) - eta_minus N`` with ``P`` the positive part."""
    up, eta_minus, lo, hi, lr = sc
    torch._foreach_mul_(us, gs)
    torch._foreach_sign_(us)
    _into("clamp_min", factor, us, numel, 0.0)  # P
    torch._foreach_sub_(us, factor)  # N
    torch._foreach_mul_(factor, up)
    torch._foreach_add_(factor, 1.0)
    torch._foreach_addcmul_(factor, factor, us)
    torch._foreach_add_(factor, us, alpha=-eta_minus)
    torch._foreach_mul_(ds, factor)
    torch._foreach_clamp_min_(ds, lo)
    torch._foreach_clamp_max_(ds, hi)
    torch._foreach_add_(us, 1.0)
    _into("sign", sign, gs, numel)
    torch._foreach_mul_(sign, ds)
    torch._foreach_mul_(us, sign)
    torch._foreach_add_(ps, us, alpha=-lr)


def _rprop_exact(eta_plus: float) -> bool:
    """Whether ``1 + (eta_plus - 1)`` is ``eta_plus`` in float32 and float64, with the scalar
    cast as the kernels cast it (true for ``eta_plus`` up to 2 in float64, and for the usual
    values in float32)."""
    # (tensors made from numbers: under FakeTensorMode they keep their values and can be read)
    return all(float(torch.tensor(1.0, dtype=dtype) + torch.tensor(eta_plus - 1.0, dtype=dtype))
               == float(torch.tensor(eta_plus, dtype=dtype)) for dtype in _DTYPES)


_KERNELS: dict[str, _Kernel] = {
    "adagrad": _Kernel(("sum_of_squares",), 1, _adagrad, _adagrad_body),
    "rmsprop": _Kernel(("nu",), 1, _rmsprop, _rmsprop_body),
    "adamax": _Kernel(("mu", "nu"), 1, _adamax, _adamax_body, _advance_count),
    "nadam": _Kernel(("mu", "nu"), 1, _nadam, _nadam_body, _advance_nadam),
    "radam": _Kernel(("mu", "nu"), 1, _radam, _radam_body, _advance_count),
    "adadelta": _Kernel(("e_g", "e_x"), 2, _adadelta, _adadelta_body),
    "asgd": _Kernel(("ax",), 0, _asgd, _asgd_body, _advance_count),
    "rprop": _Kernel(("step_sizes", "prev_updates"), 2, _rprop, _rprop_body),
}
_RMSPROP_ON_ADAM = _Kernel(("nu",), 1, _rmsprop, _rmsprop_adam_body)


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
    "scale_by_rprop": ("rprop", ("eta_minus", "eta_plus", "min_step_size", "max_step_size"), False),
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
    if kind == "rprop" and not _rprop_exact(hp["eta_plus"]):
        return None
    return MultiTensorPlan(kind, i, decay, len(parts) - 1, hp)
