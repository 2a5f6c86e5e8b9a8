"""Scenarios of tests/test_distributed.py, each run on every rank of a 2-process gloo group.

``run_scenarios(names, ...)`` spawns the processes once for many scenarios (starting them is
most of the cost); each scenario returns normally or raises, and its outcome per rank is
written to ``outdir`` as ``{name}.{rank}.txt`` (``"ok"`` or the traceback).

Every scenario compares against a reference computed on the same rank without sharding: the
same chain (or the torch.optim class) on an unsharded copy of the model, fed the batches of
both ranks at once, whose mean loss has the gradient that DDP and FSDP average.
"""

from __future__ import annotations

import os
import socket
import traceback

import torch

import gradtx as gx

WORLD = 2
STEPS = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    # odd sizes: FSDP2 shards dim 0 unevenly (and one rank's bias shard of size 5 is 2 rows)
    return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))


def batch(step: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * step + rank)
    return torch.randn(4, 6, generator=g), torch.randn(4, 3, generator=g)


def full_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*(batch(step, r) for r in range(WORLD)))
    return torch.cat(xs), torch.cat(ys)


def loss_fn(m: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.mse_loss(m(x), y)


def train(m: torch.nn.Module, opt: torch.optim.Optimizer, steps: range, rank: int | None,
          closure: bool = False) -> None:
    """``rank=None``: the unsharded reference on both ranks' batches."""
    for step in steps:
        x, y = full_batch(step) if rank is None else batch(step, rank)
        if closure:
            def fn(backward=True, x=x, y=y):
                loss = loss_fn(m, x, y)
                if backward:
                    opt.zero_grad()
                    loss.backward()
                return loss
            opt.step(fn)
        else:
            opt.zero_grad()
            loss_fn(m, x, y).backward()
            opt.step()


def full_params(m: torch.nn.Module) -> list[torch.Tensor]:
    from torch.distributed.tensor import DTensor

    return [p.full_tensor().detach() if isinstance(p, DTensor) else p.detach().clone() for p in m.parameters()]


def assert_close(actual: list[torch.Tensor], expected: list[torch.Tensor], exact: bool = False, **tol) -> None:
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        if exact:
            assert torch.equal(a, e), (a - e).abs().max()
        else:
            torch.testing.assert_close(a, e, **(tol or {"rtol": 1e-5, "atol": 1e-6}))


def sharded() -> torch.nn.Module:
    from torch.distributed.fsdp import fully_shard

    m = model()
    fully_shard(m)
    return m


# --- FSDP2 on every path, against the same chain unsharded ------------------------------------


def fsdp_against_unsharded(rank: int, make_tx, closure: bool = False, **options) -> None:
    m = sharded()
    opt = gx.Optimizer(m.parameters(), make_tx(), **options)
    train(m, opt, range(STEPS), rank, closure)
    ref = model()
    ref_opt = gx.Optimizer(ref.parameters(), make_tx(), fast=False)
    train(ref, ref_opt, range(STEPS), None, closure)
    moved = [not torch.equal(a, b) for a, b in zip(full_params(ref), full_params(model()))]
    assert all(moved), "the reference did not move"
    assert_close(full_params(m), full_params(ref))


def scenario_fsdp_adamw_generic(rank):
    fsdp_against_unsharded(rank, lambda: gx.adamw(1e-2, weight_decay=0.1), fast=False)


def scenario_fsdp_adamw_fused(rank):
    fsdp_against_unsharded(rank, lambda: gx.adamw(1e-2, weight_decay=0.1))


def scenario_fsdp_adamw_against_torch(rank):
    m, ref = sharded(), sharded()
    opt = gx.Optimizer(m.parameters(), gx.adamw(1e-2, weight_decay=0.1), fast=False)
    ref_opt = torch.optim.AdamW(ref.parameters(), 1e-2, weight_decay=0.1)
    train(m, opt, range(STEPS), rank)
    train(ref, ref_opt, range(STEPS), rank)
    assert_close(full_params(m), full_params(ref))


def scenario_fsdp_lion_clip_value(rank):  # elementwise, not Adam-shaped: on local shards
    fsdp_against_unsharded(rank, lambda: gx.chain(gx.clip(0.5), gx.lion(1e-2)))


def scenario_fsdp_lamb(rank):  # a norm per tensor: on full tensors
    fsdp_against_unsharded(rank, lambda: gx.lamb(1e-2))


def scenario_fsdp_clip_by_global_norm(rank):  # a norm over every shard of every parameter
    fsdp_against_unsharded(rank, lambda: gx.chain(gx.clip_by_global_norm(0.05), gx.adamw(1e-2)))


def scenario_fsdp_normalize_by_update_norm(rank):
    fsdp_against_unsharded(rank, lambda: gx.chain(gx.normalize_by_update_norm(), gx.scale_by_lr(1e-2)))


def scenario_fsdp_muon(rank):  # Newton-Schulz on the whole (sharded) matrices
    fsdp_against_unsharded(rank, lambda: gx.muon(1e-2))


def scenario_fsdp_shampoo(rank):  # preconditioners of the whole matrices
    fsdp_against_unsharded(rank, lambda: gx.shampoo(1e-2, start_preconditioning_step=1))  # Shampoo from step 1


def scenario_fsdp_lbfgs(rank):  # a line search through the closure: losses averaged over ranks
    fsdp_against_unsharded(rank, lambda: gx.lbfgs(memory_size=3), closure=True)


def scenario_fsdp_flat(rank):  # DTensor parameters cannot be laid out: the default path, its numbers
    fsdp_against_unsharded(rank, lambda: gx.adamw(1e-2, weight_decay=0.1), flat=True)


def scenario_fsdp1_flat(rank):
    """``flat=True`` under FSDP1 (``FullyShardedDataParallel``): its FlatParameter's ``.data`` is
    set back to the local shard FSDP keeps after each forward and backward, so a step into the
    buffer was lost; FlatParameters stay where they are (and with ``use_orig_params`` the
    parameters are views of one): torch's AdamW's numbers."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    for orig in (False, True):
        out = []
        for make in (lambda ps: gx.Optimizer(ps, gx.adamw(1e-2, weight_decay=0.1), flat=True),
                     lambda ps: torch.optim.AdamW(ps, 1e-2, weight_decay=0.1)):
            m = FSDP(model(), device_id=torch.device("cpu"), use_orig_params=orig)
            train(m, make(m.parameters()), range(STEPS), rank)
            with FSDP.summon_full_params(m):
                out.append([p.detach().clone() for p in m.parameters()])
        assert_close(*out)


def scenario_fsdp_compiled(rank):
    fsdp_against_unsharded(rank, lambda: gx.adamw(1e-2, weight_decay=0.1), compile=True)


# --- DDP and ZeRO -----------------------------------------------------------------------------


def scenario_ddp_adamw(rank):
    from torch.nn.parallel import DistributedDataParallel as DDP

    m, ref = DDP(model()), DDP(model())
    train(m, gx.Optimizer(m.parameters(), gx.adamw(1e-2, weight_decay=0.1)), range(STEPS), rank)
    train(ref, torch.optim.AdamW(ref.parameters(), 1e-2, weight_decay=0.1), range(STEPS), rank)
    assert_close(full_params(m), full_params(ref))


def scenario_ddp_flat(rank):
    """``flat=True`` under DDP, with DDP's gradients copied into ``.grad`` (they land in the flat
    buffer) and as views of its buckets (copied into the buffer each step): torch's numbers,
    and the parameters laid out in one buffer either way."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    for bucket_view in (False, True):
        m, ref = DDP(model(), gradient_as_bucket_view=bucket_view), DDP(model())
        train(m, gx.Optimizer(m.parameters(), gx.adamw(1e-2, weight_decay=0.1), flat=True), range(STEPS), rank)
        train(ref, torch.optim.AdamW(ref.parameters(), 1e-2, weight_decay=0.1), range(STEPS), rank)
        assert_close(full_params(m), full_params(ref))
        assert len({p.untyped_storage().data_ptr() for p in m.parameters()}) == 1, "not laid out flat"
        if not bucket_view:
            grads = {p.grad.untyped_storage().data_ptr() for p in m.parameters()}
            assert len(grads) == 1, "gradients not in the buffer"


def scenario_ddp_flat_no_sync(rank):
    """``flat=True`` under DDP with gradient accumulation: a varying number of micro-batches per
    step, all but the last under ``no_sync()`` (local gradients accumulate in the flat buffer,
    the last backward's all-reduce averages them), zeroing either way, and a step whose
    micro-batches miss the first layer on every rank (``find_unused_parameters``): the default
    path's numbers (torch's AdamW counts steps per parameter, so it differs from both after the
    skipped step), laid out in one buffer."""
    import contextlib

    from torch.nn.parallel import DistributedDataParallel as DDP

    def run(m, opt):
        for step in range(6):
            opt.zero_grad(set_to_none=step % 2 == 0)
            micro = 1 + step % 3
            for i in range(micro):
                x, y = batch(10 * step + i, rank)
                with m.no_sync() if i < micro - 1 else contextlib.nullcontext():
                    if step == 4:  # the first layer unused: its gradient stays as zero_grad left it
                        loss_fn(m.module[2], torch.tanh(x[:, :5]), y).backward()
                    else:
                        loss_fn(m, x, y).backward()
            opt.step()

    for bucket_view in (False, True):
        m = DDP(model(), gradient_as_bucket_view=bucket_view, find_unused_parameters=True)
        ref = DDP(model(), gradient_as_bucket_view=bucket_view, find_unused_parameters=True)
        run(m, gx.Optimizer(m.parameters(), gx.adamw(1e-2, weight_decay=0.1), flat=True))
        run(ref, gx.Optimizer(ref.parameters(), gx.adamw(1e-2, weight_decay=0.1)))
        assert_close(full_params(m), full_params(ref), rtol=1e-6, atol=1e-7)
        assert len({p.untyped_storage().data_ptr() for p in m.parameters()}) == 1, "not laid out flat"


def scenario_zero_flat(rank):
    """``flat=True`` as ZeroRedundancyOptimizer's optimizer: with ``parameters_as_bucket_view``
    the parameters are views of ZeRO's buckets, which it broadcasts after each step (a rank
    whose bucket held one parameter had it moved out, so its steps never reached the other
    rank); without, the rank's parameters are laid out flat: torch's AdamW's numbers."""
    from torch.distributed.optim import ZeroRedundancyOptimizer as ZeRO
    from torch.nn.parallel import DistributedDataParallel as DDP

    for bucket_view in (False, True):
        m, ref = DDP(model()), DDP(model())
        train(m, ZeRO(m.parameters(), optimizer_class=gx.Optimizer, tx=gx.adamw(1e-2, weight_decay=0.1), flat=True,
                      parameters_as_bucket_view=bucket_view), range(STEPS), rank)
        train(ref, ZeRO(ref.parameters(), optimizer_class=torch.optim.AdamW, lr=1e-2, weight_decay=0.1,
                        parameters_as_bucket_view=bucket_view), range(STEPS), rank)
        assert_close(full_params(m), full_params(ref))


def scenario_zero_checkpoint(rank, outdir):
    from torch.distributed.optim import ZeroRedundancyOptimizer as ZeRO
    from torch.nn.parallel import DistributedDataParallel as DDP

    def make(cls=gx.Optimizer, **kw):
        m = DDP(model())
        kw = kw or {"tx": gx.adamw(1e-2, weight_decay=0.1)}
        return m, ZeRO(m.parameters(), optimizer_class=cls, **kw)

    m, opt = make()
    ref, ref_opt = make(torch.optim.AdamW, lr=1e-2, weight_decay=0.1)
    train(m, opt, range(3), rank)
    train(ref, ref_opt, range(3), rank)
    assert_close(full_params(m), full_params(ref))
    opt.consolidate_state_dict(to=0)
    path = os.path.join(outdir, "zero.pt")
    if rank == 0:
        torch.save(opt.state_dict(), path)
    torch.distributed.barrier()
    m2, opt2 = make()
    m2.load_state_dict(m.state_dict())
    opt2.load_state_dict(torch.load(path, weights_only=True))
    train(m, opt, range(3, 6), rank)
    train(m2, opt2, range(3, 6), rank)
    assert_close(full_params(m2), full_params(m), exact=True)


# --- distributed checkpoints --------------------------------------------------------------------


class AppState:
    """The Stateful of torch's DCP tutorial."""

    def __init__(self, m, opt):
        self.m, self.opt = m, opt

    def state_dict(self):
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(self.m, self.opt)
        return {"model": model_sd, "optim": optim_sd}

    def load_state_dict(self, sd):
        from torch.distributed.checkpoint.state_dict import set_state_dict

        set_state_dict(self.m, self.opt, model_state_dict=sd["model"], optim_state_dict=sd["optim"])


def dcp_tx():
    return gx.chain(gx.clip_by_global_norm(1.0), gx.adamw(1e-2, weight_decay=0.1))


def scenario_dcp_resume(rank, outdir, make_tx=lambda: gx.adamw(1e-2, weight_decay=0.1), name="dcp"):
    import torch.distributed.checkpoint as dcp

    m = sharded()
    opt = gx.Optimizer(m.parameters(), make_tx())
    train(m, opt, range(3), rank)
    dcp.save({"app": AppState(m, opt)}, checkpoint_id=os.path.join(outdir, name))
    train(m, opt, range(3, 6), rank)

    m2 = sharded()
    opt2 = gx.Optimizer(m2.parameters(), make_tx())
    dcp.load({"app": AppState(m2, opt2)}, checkpoint_id=os.path.join(outdir, name))
    train(m2, opt2, range(3, 6), rank)
    after = full_params(m)  # a collective: on every rank
    assert_close(full_params(m2), after, exact=True)
    if rank == 0:  # the 2-rank continuation, for the 1-process reshard test
        torch.save(after, os.path.join(outdir, f"{name}_after.pt"))


def scenario_dcp_resume_global_norm(rank, outdir):  # a chain run on full tensors: replicated state
    scenario_dcp_resume(rank, outdir, dcp_tx, "dcp_global")


# --- running them -------------------------------------------------------------------------------


def _entry(rank: int, port: int, names: list[str], outdir: str) -> None:
    import inspect

    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        for name in names:
            fn = globals()[f"scenario_{name}"]
            try:
                kwargs = {"outdir": outdir} if "outdir" in inspect.signature(fn).parameters else {}
                fn(rank, **kwargs)
                result = "ok"
            except Exception:  # noqa: BLE001 - reported to the test, which fails with it
                result = traceback.format_exc()
            with open(os.path.join(outdir, f"{name}.{rank}.txt"), "w") as f:
                f.write(result)
            dist.barrier()
    finally:
        dist.destroy_process_group()


def run_scenarios(names: list[str], outdir: str) -> dict[str, str]:
    """``{name: "ok" or the tracebacks}`` of running ``names`` on a 2-process gloo group."""
    import torch.multiprocessing as mp

    mp.spawn(_entry, args=(free_port(), names, outdir), nprocs=WORLD, join=True)
    out = {}
    for name in names:
        results = []
        for rank in range(WORLD):
            path = os.path.join(outdir, f"{name}.{rank}.txt")
            results.append(open(path).read() if os.path.exists(path) else "no result (the process died)")
        out[name] = "ok" if all(r == "ok" for r in results) else "\n".join(
            f"rank {r}: {text}" for r, text in enumerate(results) if text != "ok")
    return out
