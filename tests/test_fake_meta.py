"""gx.Optimizer steps on meta-device parameters and under ``FakeTensorMode``, as ``torch.optim`` does:
memory estimators (``torch.distributed._tools.mem_tracker.MemTracker``, ``FSDPMemTracker``,
torchtitan's estimation) run a whole training step without data. What they count must be what a
real run keeps: the state made there has, tensor for tensor, the shapes, dtypes and devices of the
state the same optimizer makes on real tensors of the same shapes (computed here, on the CPU), and
its bytes are ``torch.optim.AdamW``'s for ``gx.adamw`` but for the step-count and hyperparameter
scalars (see ``test_mem_tracker_counts_adamw_state_as_torchs``)."""

from __future__ import annotations

import inspect
import re
import warnings

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

import gradtx as gx

ALIASES = {
    "adamw": lambda: gx.adamw(1e-3, weight_decay=0.01),
    "adam": lambda: gx.adam(1e-3),
    "sgd": lambda: gx.sgd(1e-2, momentum=0.9),
    "lion": lambda: gx.lion(1e-4),
    # factors the (32, 8) and (16, 32) matrices, not the (4, 16) one
    "adafactor": lambda: gx.adafactor(1e-3, min_dim_size_to_factor=8),
    "muon": lambda: gx.muon(1e-3),
    "lamb": lambda: gx.lamb(1e-3, weight_decay=0.01),
}
# the other fast paths (multi-tensor plans, the global-norm clip over fused kernels) and what
# reads a count or a product to build its step's numbers
MORE = {
    "adagrad": lambda: gx.adagrad(1e-2),
    "rmsprop": lambda: gx.rmsprop(1e-2),
    "adamax": lambda: gx.adamax(1e-3),
    "radam": lambda: gx.radam(1e-3),
    "nadam_torch": lambda: gx.nadam(1e-3, momentum_decay=4e-3),
    "asgd": lambda: gx.asgd(1e-2),
    "rprop": lambda: gx.rprop(1e-2),
    "clip_adamw": lambda: gx.chain(gx.clip_by_global_norm(1.0), gx.adamw(1e-3, weight_decay=0.01)),
    "clip_sgd": lambda: gx.chain(gx.clip_by_global_norm(1.0), gx.sgd(1e-2, momentum=0.9)),
    "clip_value_adam": lambda: gx.chain(gx.clip_value(0.5), gx.adam(1e-3)),
    "adamw_schedule": lambda: gx.adamw(gx.cosine_decay_schedule(1e-3, 10), weight_decay=0.01),
}
# Every alias in gx.aliases steps on meta and fake tensors but those that need what only a
# closure gives (gx.Optimizer.step(closure)): loss values, which meta and fake tensors have not
# (torch.optim.LBFGS cannot step there either), or Hessian-vector products built from the loss.
# Without one they refuse a step there as on real tensors (test_closure_aliases_refuse_as_on_real_tensors).
NEEDS_CLOSURE = {
    "bfgs": "a strong-Wolfe line search compares loss values",
    "lbfgs": "a zoom line search compares loss values",
    "nonlinear_cg": "a strong-Wolfe line search compares loss values",
    "polyak_sgd": "the Polyak step size divides by the loss",
    "polyak_linesearch": "the Polyak step size divides by the loss, a line search compares losses",
    "newton": "Hessian-vector products (hvp_fn) from the closure",
    "newton_cg": "Hessian-vector products (hvp_fn) from the closure",
    "adahessian": "Hessian-vector products (hvp_fn) from the closure",
    "sophia": "Hessian-vector products (hvp_fn) from the closure",
    "sophia_h": "Hessian-vector products (hvp_fn) from the closure",
}
EVERY_ALIAS = sorted(set(gx.aliases.__all__) - set(NEEDS_CLOSURE))


def _alias(name: str):
    """``gx.aliases.<name>`` built with a learning rate alone (its defaults otherwise)."""
    make = getattr(gx.aliases, name)
    return make(lr=1e-2) if "lr" in inspect.signature(make).parameters else make()


OPTIONS = {"default": {}, "generic": {"fast": False}, "flat": {"flat": True}}


def _mlp(device) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(8, 32, device=device), torch.nn.Tanh(),
                               torch.nn.Linear(32, 16, device=device), torch.nn.Tanh(),
                               torch.nn.Linear(16, 4, device=device))


def _stepped(make_tx, kind: str, options: dict, steps: int = 2):
    """The optimizer after ``steps`` steps of a small MLP: real CPU tensors (``"cpu"``), meta
    tensors (``"meta"``) or fake ones made under ``FakeTensorMode`` (``"fake"``)."""
    def run(device):
        torch.manual_seed(0)
        model = _mlp(device)
        opt = gx.Optimizer(model.parameters(), make_tx(), **options)
        for _ in range(steps):
            model(torch.randn(5, 8, device=device)).square().mean().backward()
            opt.step()
            opt.zero_grad()
        return opt, list(model.parameters())

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # flat=True's note that a global clip keeps the default path
        if kind == "fake":
            with FakeTensorMode():
                return run(None)
        return run(kind)


def _state(opt) -> dict[tuple[int, str], torch.Tensor]:
    """Every state tensor by (parameter index, path); the shared ones (``"shared:..."``) once,
    under the first parameter that lists them."""
    out, seen = {}, set()
    for index, entry in opt.state_dict()["state"].items():
        for path, value in entry.items():
            if isinstance(value, torch.Tensor) and id(value) not in seen:
                seen.add(id(value))
                out[index, path] = value
    return out


def _nbytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def _check_like_real(make_tx, kind: str, options: dict) -> None:
    opt, params = _stepped(make_tx, kind, options)
    real_opt, _ = _stepped(make_tx, "cpu", options)
    got, expected = _state(opt), _state(real_opt)
    assert sorted(got) == sorted(expected)
    assert got, "no state was made"
    for key, ref in expected.items():
        t = got[key]
        assert (t.shape, t.dtype) == (ref.shape, ref.dtype), key
        if kind == "fake":
            assert isinstance(t, FakeTensor) and t.device == ref.device, key
        else:
            # made like its parameter: on meta. Of the state shared by every parameter, the step
            # counts, seeds (int32, int64) and hyperparameters (float64) are CPU tensors as on any
            # device; the running values (the learning-rate-free estimates, in the params' float32)
            # are on the params' device, meta; a flag (bool) on either, where it is read
            index, path = key
            on_cpu = path.startswith("shared:") and t.dtype in (torch.int32, torch.int64, torch.float64)
            places = {torch.device("cpu"), params[index].device} if t.dtype == torch.bool else \
                {torch.device("cpu") if on_cpu else params[index].device}
            assert t.device in places, key
    assert _nbytes(got.values()) == _nbytes(expected.values())
    # the step ran: the counts moved as on real tensors (readable: made from numbers)
    counts = [k for k in expected if k[1].endswith(".count") and expected[k].dtype == torch.int32]
    for key in counts:
        assert int(got[key]) == int(expected[key]) == 2, key


@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("kind", ["meta", "fake"])
@pytest.mark.parametrize("alias", ALIASES)
def test_state_is_the_real_runs(alias, kind, option):
    _check_like_real(ALIASES[alias], kind, OPTIONS[option])


@pytest.mark.parametrize("kind", ["meta", "fake"])
@pytest.mark.parametrize("name", MORE)
def test_other_fast_paths_state_is_the_real_runs(name, kind):
    _check_like_real(MORE[name], kind, {})


@pytest.mark.parametrize("kind", ["meta", "fake"])
def test_adamw_state_bytes_are_torchs(kind):
    """gx.adamw keeps torch.optim.AdamW's two moments per parameter (its ``exp_avg`` and
    ``exp_avg_sq``); torch adds a float32 step per parameter, gradtx one int32 count and
    its float64 ``lr`` and ``weight_decay``."""
    opt, params = _stepped(ALIASES["adamw"], kind, {})

    def run(device):
        torch.manual_seed(0)
        model = _mlp(device)
        ref = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
        for _ in range(2):
            model(torch.randn(5, 8, device=device)).square().mean().backward()
            ref.step()
            ref.zero_grad()
        return [ref.state[p] for p in model.parameters()]

    if kind == "fake":
        with FakeTensorMode():
            torch_state = run(None)
    else:
        torch_state = run("meta")
    state = _state(opt)
    moments = [t for (_, path), t in state.items() if not path.startswith("shared:")]
    assert _nbytes(moments) == _nbytes(s[k] for s in torch_state for k in ("exp_avg", "exp_avg_sq"))
    assert _nbytes(moments) == 2 * _nbytes(params)
    assert _nbytes(s["step"] for s in torch_state) == 4 * len(params)
    scalars = [t for (_, path), t in state.items() if path.startswith("shared:")]
    assert sorted((str(t.dtype), t.dim()) for t in scalars) == [("torch.float64", 0), ("torch.float64", 0),
                                                                  ("torch.int32", 0)]


def test_mem_tracker_counts_adamw_state_as_torchs():
    """``MemTracker`` under ``FakeTensorMode`` (as its docs run it) counts as optimizer state what
    an optimizer's step makes and keeps: for gx.adamw, torch.optim.AdamW's bytes less torch's
    float32 ``step`` per parameter, plus gradtx's one int32 count and its two float64
    hyperparameters (``lr``, ``weight_decay``: 0-dim tensors, so schedulers never recompile)."""
    from torch.distributed._tools.mem_tracker import MemTracker, _MemRefType

    def optstate(make):
        with FakeTensorMode():
            torch.manual_seed(0)
            model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))
            opt = make(model.parameters())
            tracker = MemTracker()
            tracker.track_external(model, opt)
            with tracker:
                for _ in range(2):
                    model(torch.randn(16, 64)).sum().backward()
                    opt.step()
                    opt.zero_grad()
                    tracker.reset_mod_stats()  # MemTracker refuses a second iteration otherwise
            counted = tracker.get_tracker_snapshot()[torch.device("cpu")][_MemRefType.OPT]
            return counted, list(model.parameters())

    reference, params = optstate(lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.01))
    mine, _ = optstate(lambda ps: gx.Optimizer(ps, gx.adamw(1e-3, weight_decay=0.01)))
    assert reference == 2 * _nbytes(params) + 4 * len(params)  # exp_avg, exp_avg_sq, a float32 step each
    assert mine == reference - 4 * len(params) + 4 + 2 * 8


def test_descent_check_waits_for_real_tensors():
    """The first step's descent check reads values: on meta tensors it is left for the first
    step on real ones (a real parameter put in the group after a dry run), which still warns
    of an uphill chain."""
    meta = torch.nn.Parameter(torch.empty(3, device="meta"))
    opt = gx.Optimizer([meta], gx.scale(1e-2))  # uphill: adds the gradient
    meta.grad = torch.empty(3, device="meta")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.step()  # nothing to check, nothing warned
    real = torch.nn.Parameter(torch.ones(3))
    real.grad = torch.ones(3)
    opt.param_groups[0]["params"][0] = real
    with pytest.warns(UserWarning, match="uphill"):
        opt.step()
    torch.testing.assert_close(real.detach(), torch.full((3,), 1.01))


def test_no_data_pointer_read_under_fake_mode():
    """The state of a large CPU parameter is placed by its memory address (gradtx.optim.placement),
    which a fake tensor has not (torch warns that reading it will be an error): a fake one is
    left where it is made."""
    previous = torch._C._get_warnAlways()
    torch._C._set_warnAlways(True)  # torch warns of it once per process otherwise
    try:
        with FakeTensorMode(), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = torch.nn.Linear(256, 512)  # 512 KiB of weight: over placement.MIN_BYTES
            opt = gx.Optimizer(model.parameters(), gx.adamw(1e-3))
            model(torch.randn(2, 256)).sum().backward()
            opt.step()
    finally:
        torch._C._set_warnAlways(previous)
    assert not [w for w in caught if "data pointer" in str(w.message)]
    assert tuple(opt.state[model.weight]["[0].mu"].shape) == (512, 256)


def test_every_alias_is_listed():
    """The closure-only list names aliases that exist, and every other alias is stepped below."""
    assert set(NEEDS_CLOSURE) <= set(gx.aliases.__all__)
    assert len(EVERY_ALIAS) + len(NEEDS_CLOSURE) == len(gx.aliases.__all__)


@pytest.mark.parametrize("kind", ["meta", "fake"])
@pytest.mark.parametrize("name", EVERY_ALIAS)
def test_every_alias_state_is_the_real_runs(name, kind):
    """Every alias that steps without a closure, built with a learning rate alone: among them the
    learning-rate-free ones, whose step count moves when the step did (a flag on the params'
    device), and those that draw random numbers (noisy_sgd, the PSGD family: no generator on the
    meta device; host-side draws that decide a step, which fake tensors cannot be read for)."""
    _check_like_real(lambda: _alias(name), kind, {})


@pytest.mark.parametrize("kind", ["meta", "fake"])
@pytest.mark.parametrize("name", sorted(NEEDS_CLOSURE))
def test_closure_aliases_refuse_as_on_real_tensors(name, kind):
    """Without a closure these refuse the step on meta and fake tensors with the error they give on
    real ones, naming what is missing (not an error of a tensor without data)."""
    with pytest.raises(ValueError) as real:
        _stepped(lambda: _alias(name), "cpu", {}, steps=1)
    with pytest.raises(ValueError, match=re.escape(str(real.value))):
        _stepped(lambda: _alias(name), kind, {}, steps=1)
