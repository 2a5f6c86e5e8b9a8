"""benchmarks/training_comparison.py on short runs: its task is deterministic, gx.adamw follows
torch.optim.AdamW on it step for step, and each optimizer of the figure, at the middle of its
learning-rate sweep, makes most of the progress torch.optim.AdamW makes over the same 80 batches
(a regression in one of them on conv weights, or in the adapter's eval/train swap, shows here)."""

from __future__ import annotations

import importlib.util
import json
import math
import pathlib

import pytest
import torch

import gradtx as gx

_PATH = pathlib.Path(__file__).resolve().parent.parent / "benchmarks" / "training_comparison.py"
_spec = importlib.util.spec_from_file_location("training_comparison", _PATH)
tc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tc)

STEPS = 30  # gx.adamw against torch.optim.AdamW
LONG = 80  # the catalogue against torch.optim.AdamW


@pytest.fixture(scope="module")
def data():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tc.Data(n_train=1024, n_val=128, n_test=128)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def torch_adamw(data):
    return tc.train(lambda ps: torch.optim.AdamW(ps, lr=3e-3, weight_decay=0.0), data, LONG, eval_every=0)


def _tail(losses, n=10):
    return sum(losses[-n:]) / n


def test_task_is_deterministic_and_learnable():
    x1, y1 = tc.render(256, seed=5)
    x2, y2 = tc.render(256, seed=5)
    x3, _ = tc.render(256, seed=6)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(x1, x3)
    assert x1.shape == (256, 1, tc.SIZE, tc.SIZE) and set(y1.tolist()) == set(range(10))
    # standardised images, ink brighter than the background
    assert abs(x1.mean().item()) < 0.5 and 0.5 < x1.std().item() < 2.0


def test_gx_adamw_follows_torch_adamw(data, torch_adamw):
    got = tc.train(lambda ps: gx.Optimizer(ps, gx.adamw(3e-3, weight_decay=0.0)), data, STEPS, eval_every=0)
    torch.testing.assert_close(torch.tensor(got["losses"]), torch.tensor(torch_adamw["losses"][:STEPS]),
                               rtol=1e-4, atol=1e-5)


# ~2 s each on one core
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(tc.OPTIMIZERS) - {"adamw"}))
def test_catalogue_trains_the_cnn(name, data, torch_adamw):
    # at the middle of the benchmark's sweep: AdamW's loss falls 2.31 -> ~1.12 (tail mean) over
    # these 80 batches; at this horizon every method here reaches a drop of 0.78-1.5x that
    # (Prodigy and SOAP start slowest: d grows from d0, SOAP's first step only gathers statistics)
    _, build, lrs = tc.OPTIMIZERS[name]
    got = tc.train(lambda ps: gx.Optimizer(ps, build(lrs[1])), data, LONG, eval_every=0)
    assert all(math.isfinite(v) for v in got["losses"]) and len(got["losses"]) == LONG
    start = torch_adamw["losses"][0]
    assert got["losses"][0] == pytest.approx(start, rel=1e-6)  # same weights, same first batch
    ref_drop = start - _tail(torch_adamw["losses"])
    assert ref_drop > 0.8
    assert start - _tail(got["losses"]) > 0.6 * ref_drop, (name, _tail(got["losses"]), _tail(torch_adamw["losses"]))
    # held out, at the parameters the method reports (schedule-free: its average, by opt.eval())
    assert got["val"][1] > 0.3


@pytest.mark.slow  # renders the full data set
def test_script_writes_figure_and_summary(tmp_path):
    pytest.importorskip("matplotlib")
    png, summary = tmp_path / "fig.png", tmp_path / "summary.json"
    results = tc.main(["--steps", "4", "--quick", "--optimizers", "adamw", "schedule_free_adamw",
                       "--figure", str(png), "--json", str(summary)])
    assert png.stat().st_size > 10_000
    saved = json.loads(summary.read_text())
    assert saved["steps"] == 4 and set(saved["results"]) == {"adamw", "schedule_free_adamw"}
    assert saved["results"]["adamw"]["lr"] == tc.OPTIMIZERS["adamw"][2][1]
    assert len(results["adamw"]["losses"]) == 4
