"""``gx.Optimizer`` on ``DTensor`` parameters (FSDP2's ``fully_shard``, tensor parallelism).

A ``DTensor`` holds one shard of a parameter on each rank; torch's multi-tensor kernels
(``_foreach_*``) have no sharding rules for it, and the chain's maths would run on the
shards as if each were the whole tensor. The adapter therefore never hands the chain a
``DTensor``: during a step (and a state load) each param group's ``params`` list holds plain
tensors standing in for them, chosen by what the chain needs:

- **an elementwise chain** (:func:`gradtx.is_elementwise`: Adam, SGD, Lion, ... every output
  element depends on the same element of the inputs) runs on each rank's local shard and
  local gradient shard (``DTensor._local_tensor``), on every path (fused, compiled,
  generic). Elementwise maths on a shard is the maths on the whole tensor, restricted to the
  shard: the numbers are exactly the unsharded ones, and the state is sharded like the
  parameters (``state_dict`` gives it back as ``DTensor``s with the parameters' placements).
- **any other chain** (a global norm, a line search, L-BFGS, Muon's and Shampoo's matrix
  steps, a per-tensor norm) needs the whole tensors: every rank gathers the full parameters
  and gradients (``DTensor.full_tensor``), runs the chain on them as on an unsharded model,
  and writes back its shard of the result. Every rank computes the same numbers, so the state
  (full-size, on every rank) stays identical across ranks; the cost is the gather (what FSDP
  does for each forward) and the state's memory, which is not sharded. A closure (line
  searches) sets the trial parameters' shards, and the losses it returns are averaged over
  the ranks (as FSDP averages the gradients), so every rank makes the same decisions.

Checkpoints: :func:`for_checkpoint` wraps sharded state as ``DTensor``s for torch's
distributed checkpoint (which saves each shard once and reshards on load), and
:func:`localize` turns what is loaded back into what the chain holds.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from ..base import is_elementwise
from . import closure as _closure
from .checkpoint import SHARED

try:
    from torch.distributed.tensor import DTensor
except ImportError:  # a torch built without distributed, or torch < 2.5 (DTensor was not public yet)
    DTensor = None

__all__ = ["chain_params", "for_checkpoint", "has_dtensors", "is_dtensor", "localize"]


def is_dtensor(t: Any) -> bool:
    return DTensor is not None and isinstance(t, DTensor)


def has_dtensors(params: Any) -> bool:
    if DTensor is None:
        # torch < 2.5 has DTensor only as torch.distributed._tensor, untested here: refuse it
        # clearly rather than step its shards as plain tensors.
        if any(type(p).__name__ == "DTensor" for p in params):
            raise RuntimeError(f"gx.Optimizer on DTensor parameters (FSDP2's fully_shard, tensor parallelism) needs "
                               f"torch >= 2.5, where DTensor is torch.distributed.tensor.DTensor; this is torch "
                               f"{torch.__version__}")
        return False
    return any(isinstance(p, DTensor) for p in params)


def on_shards(opt: Any) -> bool:
    """Whether ``opt``'s chain runs on local shards (it is elementwise) rather than on full tensors."""
    return is_elementwise(opt.tx)


def _local_slice(full: torch.Tensor, p: Any) -> torch.Tensor:
    """This rank's shard of ``full`` (a tensor of ``p``'s global shape), laid out as ``p``'s."""
    local = p._local_tensor
    try:
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

        shape, offset = compute_local_shape_and_global_offset(p.shape, p.device_mesh, p.placements)
        piece = full[tuple(slice(o, o + s) for o, s in zip(offset, shape))]
        if piece.shape == local.shape:
            return piece
    except (ImportError, RuntimeError, TypeError, ValueError):
        pass
    from torch.distributed.tensor import distribute_tensor  # placements the offsets do not describe

    return distribute_tensor(full, p.device_mesh, p.placements).to_local()


class Evaluations(_closure.Evaluations):
    """The closure's evaluations where the chain sees stand-ins for ``DTensor`` parameters:
    trial values reach the real parameters' shards, gradients come back as the chain's
    tensors (shards or full), and losses are averaged over the ranks."""

    def __init__(self, pairs: list[tuple[Any, torch.Tensor]], shards: bool, closure: Any,
                 stepped: dict[Any, torch.Tensor], everything: list[torch.Tensor]) -> None:
        real = {id(s): p for p, s in pairs}
        super().__init__(closure, stepped, [real.get(id(t), t) for t in everything])
        self._real = [real.get(id(s)) for s in stepped.values()]
        self._shards = shards

    def _set(self, new_params: Any) -> None:
        super()._set(new_params)
        self._write_back()

    def _restore(self) -> None:
        super()._restore()
        self._write_back()

    def _write_back(self) -> None:
        if not self._shards:  # shards are the parameters' own storage; full copies are not
            for s, p in zip(self.stepped.values(), self._real):
                if p is not None:
                    p._local_tensor.copy_(_local_slice(s, p))

    def new_grads(self) -> list[torch.Tensor | None]:
        out = []
        for s, p in zip(self.stepped.values(), self._real):
            g = s.grad if p is None else p.grad
            if is_dtensor(g):
                g = g._local_tensor if self._shards else g.full_tensor()
            out.append(g)
        return out

    def reduced(self, loss: Any) -> Any:
        return mean_over_ranks(super().reduced(loss))


def mean_over_ranks(loss: Any) -> Any:
    """``loss`` averaged over the ranks of the default process group (each rank's closure
    sees its own batch; FSDP averages the gradients the same way)."""
    import torch.distributed as dist

    if loss is None or not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return loss
    t = loss.detach().clone() if isinstance(loss, torch.Tensor) else torch.tensor(float(loss), dtype=torch.float64)
    dist.all_reduce(t)
    t = t / dist.get_world_size()
    return t if isinstance(loss, torch.Tensor) else float(t)


def _translate_ids(opt: Any, ids: dict[int, int]) -> None:
    """Rewrite the ``id()`` records the adapter keeps of its parameters (to notice a
    replaced one) from the real parameters to their stand-ins, or back."""
    for row in opt._param_ids:
        for k, value in enumerate(row):
            row[k] = ids.get(value, value)
    for index, value in opt._one_ids.items():
        opt._one_ids[index] = ids.get(value, value)


@contextlib.contextmanager
def chain_params(opt: Any, purpose: str) -> Iterator[None]:
    """Within: ``opt.param_groups`` hold plain stand-ins for ``DTensor`` parameters, with
    their gradients (``purpose="step"``), or of the shape the chain's state takes
    (``purpose="load"``). At exit a step's full-tensor results are written to the shards."""
    if not getattr(opt, "_has_dtensors", False):
        yield
        return
    shards = on_shards(opt)
    step = purpose == "step"
    groups = opt.param_groups
    originals = [g["params"] for g in groups]
    pairs: list[tuple[Any, torch.Tensor]] = []
    rows = []
    for group in groups:
        row = []
        for p in group["params"]:
            if is_dtensor(p):
                if shards:
                    s = p._local_tensor
                elif step:
                    s = p.full_tensor()
                else:
                    s = torch.empty(p.shape, dtype=p.dtype, device=p._local_tensor.device)
                pairs.append((p, s))
                p = s
            row.append(p)
        rows.append(row)
    if step:
        for p, s in pairs:
            if p.grad is not None:
                s.grad = p.grad._local_tensor if shards else p.grad.full_tensor()
    ids = {id(p): id(s) for p, s in pairs}
    _translate_ids(opt, ids)
    for group, row in zip(groups, rows):
        group["params"] = row
    opt._step_params = [None] * len(groups)
    if step:
        opt._evaluations = lambda *args: Evaluations(pairs, shards, *args)
    done = False
    try:
        yield
        done = True
    finally:
        for group, row in zip(groups, originals):
            group["params"] = row
        opt._step_params = [None] * len(groups)
        _translate_ids(opt, {v: k for k, v in ids.items()})
        opt._evaluations = None
        for p, s in pairs:
            if step and done and not shards:
                p._local_tensor.copy_(_local_slice(s, p))
            if step:
                s.grad = None


def for_checkpoint(opt: Any, sd: dict[str, Any]) -> dict[str, Any]:
    """``sd`` (a state dict of format 2) with each sharded state tensor of a ``DTensor``
    parameter wrapped as a ``DTensor`` of the parameter's placements, as torch's optimizers
    keep it under FSDP2, so a distributed checkpoint saves each shard once."""
    if not getattr(opt, "_has_dtensors", False) or not on_shards(opt):
        return sd
    params = opt._all_params()
    for index, entry in sd["state"].items():
        p = params[index]
        if not is_dtensor(p):
            continue
        local_shape = p._local_tensor.shape
        for path, value in entry.items():
            if (not path.startswith(SHARED) and isinstance(value, torch.Tensor) and not is_dtensor(value)
                    and value.dim() > 0 and value.shape == local_shape):
                entry[path] = DTensor.from_local(value, p.device_mesh, p.placements, run_check=False,
                                                 shape=p.shape, stride=p.stride())
    return sd


def localize(opt: Any, sd: dict[str, Any]) -> dict[str, Any]:
    """``sd`` (a state dict of format 1, keyed by global parameter index) with its
    per-parameter tensors as the chain holds them: a ``DTensor`` becomes this rank's shard
    (redistributed to the parameter's placements) where the chain runs on shards, else the
    full tensor; a full tensor for a sharded parameter becomes its shard."""
    params = opt._all_params()
    has_params = getattr(opt, "_has_dtensors", False)
    if not has_params and not any(is_dtensor(v) for entry in sd["state"].values() for v in entry.values()):
        return sd
    shards = on_shards(opt)

    def local(value: Any, p: Any) -> Any:
        if not isinstance(value, torch.Tensor):
            return value
        if is_dtensor(value):
            if is_dtensor(p) and shards:
                if value.placements != p.placements or value.device_mesh != p.device_mesh:
                    value = value.redistribute(p.device_mesh, p.placements)
                return value.to_local()
            return value.full_tensor()
        if (is_dtensor(p) and shards and value.dim() > 0 and value.shape == p.shape
                and p._local_tensor.shape != p.shape):
            return _local_slice(value, p)
        return value

    state = {index: {path: local(v, params[index] if isinstance(index, int) and index < len(params) else None)
                     for path, v in entry.items()} for index, entry in sd["state"].items()}
    return {**sd, "state": state}
