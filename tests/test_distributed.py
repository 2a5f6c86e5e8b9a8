"""gx.Optimizer under torch.distributed: DDP, FSDP2 on every path, ZeRO and distributed checkpoints.

The 2-process scenarios live in tests/distributed_worker.py (gloo on CPU); each compares with
torch.optim or with the same chain on an unsharded model fed both ranks' batches. One spawn
runs many scenarios, since starting the processes is most of the cost.
"""

import pytest
import torch

import gradtx as gx

dist = pytest.importorskip("torch.distributed")
if not dist.is_available():
    pytest.skip("torch without distributed", allow_module_level=True)

import distributed_worker as worker  # noqa: E402

DEFAULT = ["ddp_adamw", "ddp_flat", "ddp_flat_no_sync", "fsdp_flat", "fsdp1_flat", "fsdp_adamw_generic",
           "fsdp_adamw_fused", "fsdp_adamw_against_torch", "fsdp_lion_clip_value", "fsdp_lamb",
           "fsdp_clip_by_global_norm", "fsdp_normalize_by_update_norm", "fsdp_muon", "fsdp_shampoo", "fsdp_lbfgs",
           "zero_flat", "zero_checkpoint", "dcp_resume", "dcp_resume_global_norm"]
SLOW = ["fsdp_compiled"]  # an Inductor compile per rank


@pytest.fixture(scope="module")
def outdir(tmp_path_factory):
    return tmp_path_factory.mktemp("dist")


@pytest.fixture(scope="module")
def default_results(outdir):
    return worker.run_scenarios(DEFAULT, str(outdir))


@pytest.fixture(scope="module")
def slow_results(tmp_path_factory):
    return worker.run_scenarios(SLOW, str(tmp_path_factory.mktemp("dist_slow")))


@pytest.mark.parametrize("name", DEFAULT)
def test_two_ranks(name, default_results):
    assert default_results[name] == "ok", default_results[name]


@pytest.mark.parametrize(("name", "make_tx"), [("dcp", lambda: gx.adamw(1e-2, weight_decay=0.1)),
                                               ("dcp_global", worker.dcp_tx)])
def test_dcp_checkpoint_of_two_ranks_loads_in_one_process(name, make_tx, default_results, outdir):
    import torch.distributed.checkpoint as dcp

    assert default_results[f"{name}_resume" if name == "dcp" else "dcp_resume_global_norm"] == "ok"
    m = worker.model()
    opt = gx.Optimizer(m.parameters(), make_tx())
    dcp.load({"app": worker.AppState(m, opt)}, checkpoint_id=str(outdir / name))
    _train(m, opt, range(3, 6))
    # the 2-rank run averaged the ranks' gradients: the same numbers up to round-off
    worker.assert_close([p.detach() for p in m.parameters()], torch.load(outdir / f"{name}_after.pt"))


@pytest.mark.slow
@pytest.mark.parametrize("name", SLOW)
def test_two_ranks_slow(name, slow_results):
    assert slow_results[name] == "ok", slow_results[name]


def _train(model, opt, steps):
    for step in steps:
        x, y = worker.full_batch(step)
        opt.zero_grad()
        worker.loss_fn(model, x, y).backward()
        opt.step()


@pytest.mark.parametrize("make_tx", [lambda: gx.adamw(1e-2, weight_decay=0.1),
                                     lambda: gx.chain(gx.clip_by_global_norm(0.05), gx.adamw(1e-2))])
def test_get_and_set_optimizer_state_dict_resume_bit_exact(make_tx):
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

    m = worker.model()
    opt = gx.Optimizer(m.parameters(), make_tx())
    _train(m, opt, range(3))
    osd = get_optimizer_state_dict(m, opt)
    assert all(isinstance(k, str) for k in osd["state"])  # keyed by parameter name, as torch's
    saved = {k: {p: v.clone() for p, v in e.items()} for k, e in osd["state"].items()}
    m2 = worker.model()
    m2.load_state_dict(m.state_dict())
    opt2 = gx.Optimizer(m2.parameters(), make_tx())
    set_optimizer_state_dict(m2, opt2, {"state": saved, "param_groups": osd["param_groups"]})
    _train(m, opt, range(3, 6))
    _train(m2, opt2, range(3, 6))
    for a, b in zip(m.parameters(), m2.parameters()):
        assert torch.equal(a, b)


def test_state_dict_is_torch_shaped_and_loads_with_weights_only(tmp_path):
    m = worker.model()
    opt = gx.Optimizer(m.parameters(), gx.adamw(1e-2))
    _train(m, opt, range(2))
    sd = opt.state_dict()
    assert sorted(sd["state"]) == [0, 1, 2, 3]
    assert all(int(e["shared:[0].count"]) == 2 for e in sd["state"].values())  # Adam's count in every entry
    torch.save(sd, tmp_path / "o.pt")
    m2 = worker.model()
    m2.load_state_dict(m.state_dict())
    opt2 = gx.Optimizer(m2.parameters(), gx.adamw(1e-2))
    opt2.load_state_dict(torch.load(tmp_path / "o.pt", weights_only=True))
    _train(m, opt, range(2, 4))
    _train(m2, opt2, range(2, 4))
    assert all(torch.equal(a, b) for a, b in zip(m.parameters(), m2.parameters()))


def test_the_old_format_still_loads():
    m = worker.model()
    opt = gx.Optimizer(m.parameters(), gx.adamw(1e-2))
    _train(m, opt, range(2))
    old = opt._old_state_dict()
    assert old["format"] == "gradtx.Optimizer/1"
    opt2 = gx.Optimizer(worker.model().parameters(), gx.adamw(1e-2))
    opt2.load_state_dict(old)
    for a, b in zip(opt.state_dict()["state"].values(), opt2.state_dict()["state"].values()):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_writing_opt_state_loads_the_entry():
    # what ZeroRedundancyOptimizer.load_state_dict does
    m = worker.model()
    opt = gx.Optimizer(m.parameters(), gx.adam(1e-2))
    _train(m, opt, range(3))
    sd = opt.state_dict()
    opt2 = gx.Optimizer(worker.model().parameters(), gx.adam(1e-2))
    for p, entry in zip(opt2.param_groups[0]["params"], sd["state"].values()):
        opt2.state[p] = {k: v.clone() for k, v in entry.items()}
    for a, b in zip(sd["state"].values(), opt2.state_dict()["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in a)
