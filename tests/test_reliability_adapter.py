"""Issue 9, the adapter's part: nothing silently wrong, nothing lost.

- item 1: parameters and gradients of any memory layout (slices, transposes, channels-last,
  gradients of other strides) get torch.optim's numbers on every path, and nothing outside
  the parameter is written; a parameter whose elements share memory is refused;
- item 2: ``gx.Optimizer`` round-trips through pickle, ``copy.deepcopy`` and ``torch.save``
  and continues bit-identically; a chain that cannot be rebuilt is refused at save time;
- item 19: ``torch.optim`` state dicts load into the equivalent gradtx optimizer and back.
"""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch
from registry import ENTRIES
from torch import nn

import gradtx as gx
from gradtx.optim import compiled as _compiled

F64 = dict(rtol=1e-9, atol=1e-12)

# --- item 1: memory layouts ---------------------------------------------------------------

# (name, gradtx chain, torch.optim reference, whether the reference sees clamped gradients)
CHAINS = {
    "sgd_momentum": (lambda: gx.sgd(0.05, momentum=0.9), lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9), None),
    "adam": (lambda: gx.adam(0.05), lambda ps: torch.optim.Adam(ps, lr=0.05), None),
    "adamw": (lambda: gx.adamw(0.05, weight_decay=0.1), lambda ps: torch.optim.AdamW(ps, lr=0.05, weight_decay=0.1),
              None),
    "mission": (lambda: gx.chain(gx.clip_value(10.0), gx.scale_by_adam(), gx.scale_by_lr(1e-3)),
                lambda ps: torch.optim.Adam(ps, lr=1e-3), 10.0),
}


def _layout_case(name: str) -> tuple[torch.Tensor, nn.Parameter, torch.Tensor, callable]:
    """``(base, param, mask of base elements outside the param, grad maker)``: the parameter
    is a view into ``base`` where possible, so writes outside it show in ``base``."""
    gen = torch.Generator().manual_seed(3)
    outside = None
    if name == "slice":  # not dense: every other column of base
        base = torch.randn(6, 8, generator=gen, dtype=torch.float64)
        p = nn.Parameter(base[:, ::2])
        outside = torch.ones(6, 8, dtype=torch.bool)
        outside[:, ::2] = False
    elif name == "slice_rows_cols":  # not dense, offset storage
        base = torch.randn(7, 9, generator=gen, dtype=torch.float64)
        p = nn.Parameter(base[1:6:2, 2:8])
        outside = torch.ones(7, 9, dtype=torch.bool)
        outside[1:6:2, 2:8] = False
    elif name == "transpose":  # dense, strides (1, 6); gradients contiguous
        base = torch.randn(6, 4, generator=gen, dtype=torch.float64)
        p = nn.Parameter(base.t())
    elif name == "grad_transposed":  # contiguous parameter, gradient g.t()
        base = torch.randn(4, 6, generator=gen, dtype=torch.float64)
        p = nn.Parameter(base)
    elif name in ("channels_last", "channels_last_both"):
        base = torch.randn(2, 3, 4, 5, generator=gen, dtype=torch.float64).to(memory_format=torch.channels_last)
        p = nn.Parameter(base)
    else:
        raise AssertionError(name)

    def grad(step: int) -> torch.Tensor:
        g = torch.randn(p.shape, generator=torch.Generator().manual_seed(100 + step), dtype=torch.float64) * 3
        if name == "grad_transposed":
            return g.t().contiguous().t()  # same values, strides (1, 4)
        if name == "channels_last_both":
            return g.contiguous(memory_format=torch.channels_last)
        return g.contiguous()

    return base, p, outside, grad


LAYOUTS = ["slice", "slice_rows_cols", "transpose", "grad_transposed", "channels_last", "channels_last_both"]


def _layout_run(chain: str, layout: str, steps: int = 6, **options) -> None:
    make_tx, make_ref, clip = CHAINS[chain]
    base, p, outside, grad = _layout_case(layout)
    before = base.clone()
    # a plain contiguous parameter in the same group, so both kinds share one kernel call
    plain = nn.Parameter(torch.randn(5, generator=torch.Generator().manual_seed(9), dtype=torch.float64))
    ref = [nn.Parameter(p.detach().clone(memory_format=torch.contiguous_format)), nn.Parameter(plain.detach().clone())]
    opt = gx.Optimizer([p, plain], make_tx(), **options)
    torch_opt = make_ref(ref)
    for step in range(steps):
        g = grad(step)
        gp = torch.full_like(plain, 0.5 * (step + 1))
        p.grad, plain.grad = g, gp
        ref[0].grad, ref[1].grad = g.contiguous(), gp.clone()
        if clip is not None:
            ref[0].grad.clamp_(-clip, clip)
            ref[1].grad.clamp_(-clip, clip)
        opt.step()
        torch_opt.step()
    torch.testing.assert_close(p.detach(), ref[0].detach(), **F64)
    torch.testing.assert_close(plain.detach(), ref[1].detach(), **F64)
    if outside is not None:
        assert torch.equal(base[outside], before[outside]), "memory outside the parameter was written"
    # the gradients are read, never written
    assert torch.equal(p.grad, grad(steps - 1))


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("chain", sorted(CHAINS))
def test_fused_path_respects_layouts(chain, layout):
    _layout_run(chain, layout)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("chain", sorted(CHAINS))
def test_generic_inplace_path_respects_layouts(chain, layout):
    """fast=False: the chain runs in place on scratch copies of the gradients
    (``empty_like``, so of the gradient's layout) and state made by ``zeros_like``."""
    _layout_run(chain, layout, fast=False)


def test_fast_path_other_chains_respect_layouts():
    """A chain with no fused kernel on fast=True (in place, -lr folded into the update)."""
    base, p, outside, grad = _layout_case("slice")
    before = base.clone()
    ref = nn.Parameter(p.detach().clone(memory_format=torch.contiguous_format))
    opt = gx.Optimizer([p], gx.rmsprop(0.01, decay=0.99, eps_in_sqrt=False, momentum=0.9))
    torch_opt = torch.optim.RMSprop([ref], lr=0.01, alpha=0.99, momentum=0.9)
    for step in range(6):
        p.grad = grad(step).t().contiguous().t()
        ref.grad = grad(step)
        opt.step()
        torch_opt.step()
    torch.testing.assert_close(p.detach(), ref.detach(), **F64)
    assert torch.equal(base[outside], before[outside])


@pytest.mark.parametrize(("chain", "layout"), [("adam", "slice"), ("adamw", "grad_transposed"),
                                               ("mission", "channels_last")])
def test_compiled_path_respects_layouts(chain, layout, monkeypatch):
    # few slots and a low packing threshold: big parameters take flat views of their own
    monkeypatch.setattr(_compiled, "SLOTS", 3)
    monkeypatch.setattr(_compiled, "PACK_BELOW", 4)
    _layout_run(chain, layout, steps=4, compile={"backend": "eager"})


@pytest.mark.parametrize("options", [{}, {"fast": False}], ids=["fast", "generic"])
def test_parameter_sharing_memory_is_refused(options):
    base = torch.arange(4.0)
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['params'\]\[1\].*share memory"):
        gx.Optimizer([nn.Parameter(torch.zeros(3)), nn.Parameter(base.expand(3, 4))], gx.sgd(0.1), **options)
    opt = gx.Optimizer([nn.Parameter(torch.zeros(3))], gx.sgd(0.1), **options)
    with pytest.raises(ValueError, match="share memory"):
        opt.add_param_group({"params": [nn.Parameter(base.expand(2, 4))]})
    assert len(opt.param_groups) == 1  # the refused group is not kept


def test_parameter_data_replaced_by_an_expanded_tensor_is_refused_before_any_change():
    p = nn.Parameter(torch.zeros(3, 4))
    opt = gx.Optimizer([p], gx.adam(0.1))
    p.grad = torch.ones(3, 4)
    opt.step()
    saved = _tensors(copy.deepcopy(opt.state_dict()))
    base = torch.arange(4.0)
    p.data = base.expand(3, 4)
    with pytest.raises(ValueError, match="share memory"):
        opt.step()
    assert torch.equal(base, torch.arange(4.0))
    after = _tensors(opt.state_dict())
    assert len(after) == len(saved) and all(torch.equal(a, b) for a, b in zip(after, saved))


def _tensors(tree) -> list[torch.Tensor]:
    """Every tensor of a state dict, in a fixed order (whatever its format)."""
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, dict):
        return [t for key in sorted(tree, key=repr) for t in _tensors(tree[key])]
    if isinstance(tree, (list, tuple)):
        return [t for x in tree for t in _tensors(x)]
    return []


# --- item 2: pickle, deepcopy, torch.save ---------------------------------------------------

ALIASES = {e.name: e.build for e in ENTRIES if e.kind == "alias"}
ALIASES["mission"] = lambda: gx.chain(gx.clip_value(10.0), gx.scale_by_adam(), gx.scale_by_lr(1e-3))


def _model_params() -> list[nn.Parameter]:
    gen = torch.Generator().manual_seed(5)
    return [nn.Parameter(torch.randn(s, generator=gen)) for s in [(4, 3), (3,), (5, 2), ()]]


def _train(opt: torch.optim.Optimizer, params: list[torch.Tensor], start: int, steps: int) -> None:
    """``steps`` steps on a loss that moves with the step number (grads, ``value``,
    ``value_fn`` and ``hvp_fn`` all come from the closure)."""
    for step in range(start, start + steps):
        targets = [torch.full_like(p, 0.3 * ((step + i) % 4) - 0.5) for i, p in enumerate(params)]

        def closure(backward=True, targets=targets):  # the backward flag: hvp_fn differentiates twice
            loss = sum(((p - t) ** 2 * (1 + i)).sum() + (p ** 4).sum() * 0.01
                       for i, (p, t) in enumerate(zip(params, targets)))
            if backward:
                for p in params:
                    p.grad = None
                loss.backward()
            return loss

        opt.step(closure)


def _assert_same(a: list[torch.Tensor], b: list[torch.Tensor]) -> None:
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b)):
        assert x.dtype == y.dtype and torch.equal(x, y), f"tensor {i} differs"


def _round_trip(how: str, obj):
    if how == "pickle":
        return pickle.loads(pickle.dumps(obj))
    if how == "torch.save":
        buffer = io.BytesIO()
        torch.save(obj, buffer)
        buffer.seek(0)
        return torch.load(buffer, weights_only=False)
    return copy.deepcopy(obj)


@pytest.mark.parametrize("how", ["pickle", "torch.save", "deepcopy"])
@pytest.mark.parametrize("name", sorted(ALIASES))
def test_round_trip_continues_bit_identically(name, how):
    """5 steps, a round trip of (params, optimizer), 5 more == 10 steps straight."""
    straight = _model_params()
    straight_opt = gx.Optimizer(straight, ALIASES[name]())
    _train(straight_opt, straight, 0, 10)

    params = _model_params()
    opt = gx.Optimizer(params, ALIASES[name]())
    _train(opt, params, 0, 5)
    params, opt = _round_trip(how, (params, opt))
    assert opt.param_groups[0]["params"][0] is params[0]  # the loaded optimizer steps the loaded params
    _train(opt, params, 5, 5)
    _assert_same(params, straight)
    _assert_same(_tensors(opt.state_dict()), _tensors(straight_opt.state_dict()))


def is_matrix(name, p):
    return p.dim() == 2


def label_of(name, p):
    return "adam" if p.dim() >= 2 else "sgd"


# chains whose arguments are schedules, transforms, module-level functions
REBUILDABLE = {
    "scheduled_sgd": lambda: gx.sgd(gx.warmup_cosine_decay_schedule(0.0, 0.1, 3, 20), momentum=0.9),
    "injected": lambda: gx.inject_hyperparams(gx.adam)(lr=gx.linear_schedule(1e-2, 1e-3, 8), b1=0.8),
    "multi_steps": lambda: gx.multi_steps(gx.adam(1e-2), 2),
    "partition": lambda: gx.partition({"adam": gx.adam(1e-2), "sgd": gx.sgd(0.1, momentum=0.5)}, label_of),
    "masked": lambda: gx.chain(gx.masked(gx.add_decayed_weights(0.1), is_matrix), gx.scale_by_adam(),
                               gx.scale_by_lr(gx.exponential_decay(1e-2, 3, 0.5))),
    "lookahead": lambda: gx.lookahead(gx.sgd(0.05, momentum=0.9), 3, 0.5),
}


@pytest.mark.parametrize("name", sorted(REBUILDABLE))
def test_round_trip_of_composed_chains(name):
    straight = _model_params()
    _train(gx.Optimizer(straight, REBUILDABLE[name]()), straight, 0, 8)
    params = _model_params()
    opt = gx.Optimizer(params, REBUILDABLE[name]())
    _train(opt, params, 0, 4)
    params, opt = _round_trip("pickle", (params, opt))
    assert repr(opt.tx) == repr(REBUILDABLE[name]())
    _train(opt, params, 4, 4)
    _assert_same(params, straight)


@pytest.mark.parametrize("options", [{"fast": False}, {"compile": {"backend": "eager"}}], ids=["generic", "compiled"])
def test_round_trip_keeps_the_constructor_options(options):
    make = ALIASES["mission"]
    straight = _model_params()
    _train(gx.Optimizer(straight, make(), **options), straight, 0, 6)
    params = _model_params()
    opt = gx.Optimizer(params, make(), **options)
    _train(opt, params, 0, 3)
    params, opt = _round_trip("pickle", (params, opt))
    assert opt._init_options == {"fast": True, "compile": False, "check_descent": True, **options}
    _train(opt, params, 3, 3)
    _assert_same(params, straight)


def _storages(opt: torch.optim.Optimizer) -> set[int]:
    out = {p.untyped_storage().data_ptr() for g in opt.param_groups for p in g["params"]}
    return out | {t.untyped_storage().data_ptr() for t in _tensors(opt.state_dict()) if t.numel()}


@pytest.mark.parametrize("name", ["adamw", "sgd", "mission", "lion"])
def test_deepcopy_shares_nothing(name):
    """As torch.optim's: the copy has its own parameters and state; stepping it leaves the
    original (parameters and state) untouched."""
    params = _model_params()
    opt = gx.Optimizer(params, ALIASES[name]())
    _train(opt, params, 0, 3)
    twin = copy.deepcopy(opt)
    assert not _storages(twin) & _storages(opt)
    before_params = [p.detach().clone() for p in params]
    before_state = [t.clone() for t in _tensors(opt.state_dict())]
    _train(twin, twin.param_groups[0]["params"], 3, 3)
    _assert_same([p.detach() for p in params], before_params)
    _assert_same(_tensors(opt.state_dict()), before_state)
    # and the copy moved as the original would have
    _train(opt, params, 3, 3)
    _assert_same(twin.param_groups[0]["params"], params)


def test_torch_save_model_and_optimizer_in_one_file(tmp_path):
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    opt = gx.Optimizer(model.named_parameters(), gx.adamw(1e-2, weight_decay=0.1))
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(0))

    def train(model, opt, sched, steps):
        for _ in range(steps):
            opt.zero_grad()
            model(x).pow(2).mean().backward()
            opt.step()
            sched.step()

    train(model, opt, sched, 3)
    torch.save({"model": model, "opt": opt, "sched": sched.state_dict()}, tmp_path / "ckpt.pt")
    saved = torch.load(tmp_path / "ckpt.pt", weights_only=False)
    model2, opt2 = saved["model"], saved["opt"]
    sched2 = torch.optim.lr_scheduler.StepLR(opt2, step_size=2, gamma=0.5)
    sched2.load_state_dict(saved["sched"])
    assert [p for g in opt2.param_groups for p in g["params"]] == list(model2.parameters())
    assert opt2.param_groups[0]["param_names"] == [n for n, _ in model.named_parameters()]
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    train(model, opt, sched, 3)
    train(model2, opt2, sched2, 3)
    _assert_same([p.detach() for p in model2.parameters()], [p.detach() for p in model.parameters()])


def module_level_init(params):
    return gx.EmptyState()


def module_level_update(updates, state, params=None, **extra_args):
    return gx.tree_map(lambda u: -0.1 * u, updates), state


def halve(updates, params):
    return gx.tree_map(lambda u: 0.5 * u, updates)


def test_user_transforms_of_module_level_functions_pickle():
    tx = gx.chain(gx.GradientTransformation(module_level_init, module_level_update), gx.stateless(halve),
                  gx.named_chain(("m", gx.trace(0.5)), ("s", gx.scale(1.0))))
    straight = _model_params()
    _train(gx.Optimizer(straight, tx), straight, 0, 4)
    params = _model_params()
    opt = gx.Optimizer(params, tx)
    _train(opt, params, 0, 2)
    params, opt = _round_trip("pickle", (params, opt))
    _train(opt, params, 2, 2)
    _assert_same(params, straight)


def _nested_update(updates, state, params=None, **extra_args):
    return updates, state


UNPICKLABLE = {
    # (chain, what the error must name)
    "stateless_lambda": (lambda: gx.chain(gx.stateless(lambda u, p: u), gx.adam(1e-3)), r"stateless\(<lambda>\)"),
    "closure_pair": (lambda: gx.chain(gx.GradientTransformation(lambda p: gx.EmptyState(), _nested_update),
                                      gx.sgd(0.1)), r"init of GradientTransformation"),
    "mask_lambda": (lambda: gx.adamw(1e-3, mask=lambda p: gx.tree_map(lambda x: x.dim() > 1, p)),
                    r"adamw\(lr=0.001, mask=<lambda>\), argument mask"),
    "schedule_lambda": (lambda: gx.adam(lambda count: 1e-3 * 0.5 ** count), r"adam\(lr=<lambda>\), argument lr"),
    "lambda_in_join": (lambda: gx.sgd(gx.join_schedules([gx.constant_schedule(0.1), lambda t: 0.01 + 0 * t], [3])),
                       r"join_schedules, argument schedules"),
}


@pytest.mark.parametrize("name", sorted(UNPICKLABLE))
def test_a_chain_that_cannot_be_rebuilt_is_refused_at_save_time(name, tmp_path):
    make, names = UNPICKLABLE[name]
    params = _model_params()
    opt = gx.Optimizer(params, make())
    _train(opt, params, 0, 2)
    with pytest.raises(pickle.PicklingError, match=names):
        pickle.dumps(opt)
    with pytest.raises(ValueError, match=names):
        torch.save({"params": params, "opt": opt}, tmp_path / "ckpt.pt")
    # deepcopy needs no file: the functions are shared, everything else copied
    twin = copy.deepcopy(opt)
    before = [p.detach().clone() for p in params]
    _train(twin, twin.param_groups[0]["params"], 2, 2)
    _assert_same([p.detach() for p in params], before)
    _train(opt, params, 2, 2)
    _assert_same(twin.param_groups[0]["params"], params)


# --- item 19: torch.optim state dicts, both ways ---------------------------------------------

# (torch.optim class and arguments, the gradtx equivalent)
MIGRATIONS = {
    "adam": (torch.optim.Adam, dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6), lambda: gx.adam(0.01, b1=0.8, b2=0.99,
                                                                                              eps=1e-6)),
    "adam_l2": (torch.optim.Adam, dict(lr=0.01, weight_decay=0.1),
                lambda: gx.chain(gx.add_decayed_weights(0.1), gx.scale_by_adam(), gx.scale_by_lr(0.01))),
    "adamw": (torch.optim.AdamW, dict(lr=0.01, weight_decay=0.1), lambda: gx.adamw(0.01, weight_decay=0.1)),
    "sgd_momentum": (torch.optim.SGD, dict(lr=0.02, momentum=0.9, weight_decay=0.01),
                     lambda: gx.sgd(0.02, momentum=0.9, weight_decay=0.01)),
    "sgd_nesterov": (torch.optim.SGD, dict(lr=0.02, momentum=0.9, nesterov=True),
                     lambda: gx.sgd(0.02, momentum=0.9, nesterov=True)),
    "sgd": (torch.optim.SGD, dict(lr=0.02), lambda: gx.sgd(0.02)),
    "rmsprop": (torch.optim.RMSprop, dict(lr=0.01, alpha=0.9, weight_decay=0.01),
                lambda: gx.rmsprop(0.01, decay=0.9, eps_in_sqrt=False, weight_decay=0.01)),
    "rmsprop_centered_momentum": (torch.optim.RMSprop, dict(lr=0.01, momentum=0.9, centered=True),
                                  lambda: gx.rmsprop(0.01, decay=0.99, eps_in_sqrt=False, centered=True,
                                                     momentum=0.9)),
    "adagrad": (torch.optim.Adagrad, dict(lr=0.1, initial_accumulator_value=0.1),
                lambda: gx.adagrad(0.1, 0.1, 1e-10, eps_in_sqrt=False)),
    "adagrad_lr_decay": (torch.optim.Adagrad, dict(lr=0.1, lr_decay=0.05, weight_decay=0.01),
                         lambda: gx.adagrad(0.1, 0.0, 1e-10, eps_in_sqrt=False, lr_decay=0.05, weight_decay=0.01)),
}
MIGRATION_TOL = {torch.float64: dict(rtol=1e-12, atol=1e-14), torch.float32: dict(rtol=1e-6, atol=1e-7)}


def _migration_params(dtype):
    gen = torch.Generator().manual_seed(11)
    return [nn.Parameter(torch.randn(s, generator=gen, dtype=torch.float64).to(dtype)) for s in [(4, 3), (3,), (2, 5)]]


def _migration_train(opt, params, start, stop):
    for step in range(start, stop):
        gen = torch.Generator().manual_seed(500 + step)
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype)
        opt.step()


def _groups(params):
    """Two param groups, the second with its own learning rate (a per-group override)."""
    return [{"params": params[:2]}, {"params": params[2:], "lr": 0.005}]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", sorted(MIGRATIONS))
def test_torch_to_gradtx_mid_training(name, dtype):
    """torch.optim 10 steps, its state dict into gx.Optimizer, 10 more == torch.optim 20 steps."""
    cls, kwargs, make_tx = MIGRATIONS[name]
    ref = _migration_params(dtype)
    _migration_train(cls(_groups(ref), **kwargs), ref, 0, 20)

    params = _migration_params(dtype)
    torch_opt = cls(_groups(params), **kwargs)
    _migration_train(torch_opt, params, 0, 10)
    opt = gx.Optimizer(_groups(params), make_tx())
    opt.load_state_dict(torch_opt.state_dict())  # detected as torch's and converted
    assert opt.param_groups[1]["lr"] == 0.005
    _migration_train(opt, params, 10, 20)
    for p, q in zip(params, ref):
        torch.testing.assert_close(p.detach(), q.detach(), **MIGRATION_TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", sorted(MIGRATIONS))
def test_gradtx_to_torch_mid_training(name, dtype, tmp_path):
    """gx.Optimizer 10 steps, its state as torch's (saved and read back with weights_only=True),
    torch.optim 10 more == torch.optim 20 steps."""
    cls, kwargs, make_tx = MIGRATIONS[name]
    ref = _migration_params(dtype)
    _migration_train(cls(_groups(ref), **kwargs), ref, 0, 20)

    params = _migration_params(dtype)
    opt = gx.Optimizer(_groups(params), make_tx())
    _migration_train(opt, params, 0, 10)
    torch.save(opt.torch_state_dict(cls), tmp_path / "opt.pt")
    torch_opt = cls(_groups(params), **kwargs)
    torch_opt.load_state_dict(torch.load(tmp_path / "opt.pt", weights_only=True))
    _migration_train(torch_opt, params, 10, 20)
    for p, q in zip(params, ref):
        torch.testing.assert_close(p.detach(), q.detach(), **MIGRATION_TOL[dtype])


@pytest.mark.parametrize("options", [{}, {"fast": False}], ids=["fused", "generic"])
def test_round_trip_through_torch_keeps_the_state_exactly(options):
    params = _migration_params(torch.float64)
    opt = gx.Optimizer(params, gx.adamw(0.01, weight_decay=0.1), **options)
    _migration_train(opt, params, 0, 5)
    twin = gx.Optimizer(params, gx.adamw(0.01, weight_decay=0.1), **options)
    twin.load_torch_state_dict(opt.torch_state_dict())  # kind found from the chain: AdamW
    _assert_same(_tensors(twin.state_dict()), _tensors(opt.state_dict()))
    assert opt.torch_state_dict()["param_groups"][0]["decoupled_weight_decay"] is True


@pytest.mark.parametrize("direction", ["to_gradtx", "to_torch"])
@pytest.mark.parametrize("name", ["adagrad", "adagrad_lr_decay", "adam", "sgd_momentum"])
def test_parameters_never_stepped_convert_both_ways(name, direction):
    """A parameter without a gradient so far has no state on either side (torch's Adagrad makes
    it at construction, with step 0) and starts fresh after the switch. Into gradtx, where a
    count is kept (Adam; Adagrad's lr_decay) it starts at its group's count, not at 0 as in
    torch (gradtx keeps one count per group): there only the others are compared."""
    cls, kwargs, make_tx = MIGRATIONS[name]
    ref, params = _migration_params(torch.float64), _migration_params(torch.float64)
    first = cls(ref, **kwargs) if direction == "to_gradtx" else gx.Optimizer(ref, make_tx())
    torch_ref = cls(params, **kwargs)

    def train(opt, ps, step, last_too):
        gen = torch.Generator().manual_seed(step)
        for p in ps[:2]:
            p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64)
        ps[2].grad = torch.ones_like(ps[2]) if last_too else None
        opt.step()

    for step in range(6):  # the last parameter gets no gradient for 6 steps
        train(first, ref, step, False)
        train(torch_ref, params, step, False)
    if direction == "to_gradtx":
        second = gx.Optimizer(ref, make_tx())
        second.load_torch_state_dict(first.state_dict())
    else:
        second = cls(ref, **kwargs)
        second.load_state_dict(first.torch_state_dict())
    for step in range(6, 9):
        train(second, ref, step, True)
        train(torch_ref, params, step, True)
    counted = direction == "to_gradtx" and name in ("adam", "adagrad_lr_decay")
    for p, q in list(zip(ref, params))[:2 if counted else 3]:
        torch.testing.assert_close(p.detach(), q.detach(), **MIGRATION_TOL[torch.float64])


def _torch_state(cls, kwargs, params, skip_second_after=None):
    opt = cls(params, **kwargs)
    for step in range(3):
        for i, p in enumerate(params):
            p.grad = None if skip_second_after is not None and i == 1 and step >= skip_second_after \
                else torch.ones_like(p)
        opt.step()
    return opt.state_dict()


REFUSED_LOADS = {
    # (torch class, kwargs, gradtx chain, what the error says)
    # (other betas load: b1, b2 are param_groups keys, taken from the torch groups; test_group_settings.py)
    "other_algorithm": (torch.optim.Adam, dict(lr=0.01), lambda: gx.lion(0.01), r"not torch.optim.Adam's equivalent"),
    "adamw_into_adam": (torch.optim.AdamW, dict(lr=0.01), lambda: gx.adam(0.01), r"torch.optim.AdamW's equivalent"),
    "eps_inside_root": (torch.optim.RMSprop, dict(lr=0.01), lambda: gx.rmsprop(0.01, decay=0.99),
                        r"eps_in_sqrt=True, expected False"),
    "dampening": (torch.optim.SGD, dict(lr=0.1, momentum=0.9, dampening=0.5), lambda: gx.sgd(0.1, momentum=0.9),
                  r"dampening=0.5 has no gradtx equivalent"),
    "amsgrad": (torch.optim.Adam, dict(lr=0.01, amsgrad=True), lambda: gx.adam(0.01), r"amsgrad=True"),
    "maximize": (torch.optim.SGD, dict(lr=0.1, maximize=True), lambda: gx.sgd(0.1), r"maximize=True"),
}


@pytest.mark.parametrize("name", sorted(REFUSED_LOADS))
def test_torch_state_of_another_algorithm_is_refused_and_changes_nothing(name):
    cls, kwargs, make_tx, message = REFUSED_LOADS[name]
    params = _migration_params(torch.float64)
    torch_sd = _torch_state(cls, kwargs, params)
    opt = gx.Optimizer(params, make_tx())
    _migration_train(opt, params, 0, 2)
    before = [t.clone() for t in _tensors(opt.state_dict())]
    lr = opt.param_groups[0]["lr"]
    for load in (opt.load_state_dict, opt.load_torch_state_dict):
        with pytest.raises(ValueError, match=message):
            load(torch_sd)
    _assert_same(_tensors(opt.state_dict()), before)
    assert opt.param_groups[0]["lr"] == lr


def test_torch_state_with_different_steps_per_parameter_is_refused():
    params = _migration_params(torch.float64)
    torch_sd = _torch_state(torch.optim.Adam, dict(lr=0.01), params, skip_second_after=1)
    opt = gx.Optimizer(params, gx.adam(0.01))
    with pytest.raises(ValueError, match=r"different step counts \(param 0: 3, param 1: 1, param 2: 3\).*one count"):
        opt.load_torch_state_dict(torch_sd)
    # where gradtx keeps no count, torch's steps are not used and may differ
    torch_sd = _torch_state(torch.optim.RMSprop, dict(lr=0.01), params, skip_second_after=1)
    gx.Optimizer(params, gx.rmsprop(0.01, decay=0.99, eps_in_sqrt=False)).load_torch_state_dict(torch_sd)


@pytest.mark.parametrize(("make_tx", "kind", "message"), [
    (lambda: gx.lion(0.01), None, r"lion\(lr=0.01\) is not the equivalent of any"),
    (lambda: gx.adam(0.01), "SGD", r"not torch.optim.SGD's equivalent"),
    (lambda: gx.adam(0.01), "Adamax", r"kind must be one of the torch.optim classes"),
    (lambda: gx.adam(gx.linear_schedule(0.1, 0.01, 10)), "Adam", r"lr is a schedule"),
    (lambda: gx.adamw(0.01, mask=is_matrix), "AdamW", r"mask=.*expected None"),
])
def test_torch_state_dict_of_a_chain_without_torch_equivalent_is_refused(make_tx, kind, message):
    params = _migration_params(torch.float64)
    opt = gx.Optimizer(params, make_tx())
    _migration_train(opt, params, 0, 2)
    with pytest.raises(ValueError, match=message):
        opt.torch_state_dict(kind)
