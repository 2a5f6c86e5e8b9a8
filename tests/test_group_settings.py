"""Constructor hyperparameters (b1, b2, eps, momentum, ...) as param_groups keys.

Every float argument of a built-in is a key, torch's ``betas`` too, so per-group overrides
and torch's momentum-cycling schedulers drive them; checked against ``torch.optim`` with the
same groups and schedulers.
"""

from __future__ import annotations

import io

import pytest
import torch

import gradtx as gx


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).double()


_gen = torch.Generator().manual_seed(1)
X = torch.randn(32, 4, generator=_gen, dtype=torch.float64)
Y = torch.randn(32, 1, generator=_gen, dtype=torch.float64)


def _step(model, opt, clip=None):
    opt.zero_grad()
    torch.nn.functional.mse_loss(model(X), Y).backward()
    if clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    opt.step()


def _assert_same_params(a, b, tol=1e-12):
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=tol, atol=tol)


def _groups(model, **first):
    return [{"params": model[0].parameters(), **first}, {"params": model[2].parameters()}]


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "generic"])
@pytest.mark.parametrize("scheduler", ["onecycle", "cyclic"])
def test_adam_momentum_cycles_as_torch_adam(fast, scheduler):
    def sched(opt):
        if scheduler == "onecycle":
            return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=40)
        return torch.optim.lr_scheduler.CyclicLR(opt, 0.001, 0.05, step_size_up=5, base_momentum=0.8,
                                                 max_momentum=0.95)

    model, twin = _model(), _model()
    opt = gx.Optimizer(model.parameters(), gx.adam(1e-2), fast=fast)
    ref = torch.optim.Adam(twin.parameters(), lr=1e-2)
    s1, s2 = sched(opt), sched(ref)
    beta1s = set()
    for _ in range(30):
        _step(model, opt)
        _step(twin, ref)
        assert opt.param_groups[0]["b1"] == opt.param_groups[0]["betas"][0]  # the step synced them
        s1.step()
        s2.step()
        beta1s.add(opt.param_groups[0]["betas"][0])
    assert len(beta1s) > 5  # the momentum did cycle
    _assert_same_params(model, twin)


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "generic"])
def test_sgd_momentum_cycles_as_torch_sgd(fast):
    model, twin = _model(), _model()
    opt = gx.Optimizer(model.parameters(), gx.sgd(1e-2, momentum=0.9, nesterov=True), fast=fast)
    ref = torch.optim.SGD(twin.parameters(), lr=1e-2, momentum=0.9, nesterov=True)
    s1 = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=40)
    s2 = torch.optim.lr_scheduler.OneCycleLR(ref, max_lr=0.1, total_steps=40)
    for _ in range(30):
        _step(model, opt)
        _step(twin, ref)
        s1.step()
        s2.step()
    assert opt.param_groups[0]["momentum"] != 0.9
    _assert_same_params(model, twin)


@pytest.mark.parametrize("given", [{"betas": (0.5, 0.99)}, {"b1": 0.5, "b2": 0.99}, {"b1": 0.5, "b2": 0.99,
                                                                                     "eps": 1e-3}])
def test_group_settings_match_torch_groups(given):
    model, twin = _model(), _model()
    opt = gx.Optimizer(_groups(model, **given), gx.adamw(1e-2, weight_decay=0.1))
    torch_given = {"betas": (0.5, 0.99), **({"eps": given["eps"]} if "eps" in given else {})}
    ref = torch.optim.AdamW(_groups(twin, **torch_given), lr=1e-2, weight_decay=0.1)
    assert opt.param_groups[0]["betas"] == (0.5, 0.99) and opt.param_groups[0]["b1"] == 0.5
    assert opt.param_groups[1]["betas"] == (0.9, 0.999)
    for _ in range(20):
        _step(model, opt)
        _step(twin, ref)
    _assert_same_params(model, twin)


def test_sgd_group_momentum_and_a_change_mid_training():
    model, twin = _model(), _model()
    opt = gx.Optimizer(_groups(model, momentum=0.5), gx.sgd(1e-2, momentum=0.9))
    ref = torch.optim.SGD(_groups(twin, momentum=0.5), lr=1e-2, momentum=0.9)
    for i in range(20):
        if i == 10:
            for o in (opt, ref):
                o.param_groups[1]["momentum"] = 0.2
        _step(model, opt)
        _step(twin, ref)
    _assert_same_params(model, twin)


def test_one_chain_over_groups_takes_group_settings_of_its_leafwise_parts():
    # clip_by_global_norm sees every group; adam's b1 is the group's own
    model, twin = _model(), _model()
    opt = gx.Optimizer(_groups(model, betas=(0.5, 0.99)), gx.chain(gx.clip_by_global_norm(1.0), gx.adam(1e-2)))
    ref = torch.optim.Adam(_groups(twin, betas=(0.5, 0.99)), lr=1e-2)
    for _ in range(20):
        _step(model, opt)
        _step(twin, ref, clip=1.0)
    _assert_same_params(model, twin, tol=1e-6)  # torch adds 1e-6 to the norm it divides by


def test_a_global_setting_takes_one_value():
    model = _model()
    opt = gx.Optimizer(_groups(model), gx.chain(gx.clip_by_global_norm(1.0), gx.adam(1e-2)))
    assert opt.param_groups[0]["max_norm"] == 1.0
    opt.param_groups[0]["max_norm"] = 2.0
    with pytest.raises(ValueError, match="max_norm.*every group"):
        _step(model, opt)
    opt.param_groups[1]["max_norm"] = 2.0  # all groups alike: taken

    twin = _model()
    ref = gx.Optimizer(_groups(twin), gx.chain(gx.clip_by_global_norm(2.0), gx.adam(1e-2)))
    for _ in range(5):
        _step(model, opt)
        _step(twin, ref)
    _assert_same_params(model, twin)


def test_bad_group_values_are_refused_naming_the_key():
    model = _model()
    with pytest.raises(ValueError, match=r"param_groups\[0\].*b1 must be in \[0, 1\)"):
        gx.Optimizer([{"params": model.parameters(), "betas": (1.5, 0.9)}], gx.adam(1e-2))
    opt = gx.Optimizer(model[0].parameters(), gx.adam(1e-2))
    with pytest.raises(ValueError, match=r"param_groups\[1\].*b2"):
        opt.add_param_group({"params": model[2].parameters(), "b2": -0.1})
    assert len(opt.param_groups) == 1  # nothing added
    with pytest.raises(ValueError, match="disagree"):
        opt.add_param_group({"params": model[2].parameters(), "betas": (0.8, 0.9), "b1": 0.7})
    with pytest.raises(ValueError, match="pair"):
        opt.add_param_group({"params": model[2].parameters(), "betas": 0.8})


def test_a_value_that_needs_another_state_is_refused():
    @gx.transform
    def momentum_or_not(decay: float = 0.0) -> gx.GradientTransformation:
        return gx.trace(decay) if decay else gx.identity()

    model = _model()
    opt = gx.Optimizer(model.parameters(), gx.chain(momentum_or_not(0.0), gx.scale_by_lr(0.1)))
    opt.param_groups[0]["decay"] = 0.9
    with pytest.raises(ValueError, match="another state"):
        _step(model, opt)


@pytest.mark.parametrize("flat", [False, True])
def test_compiled_chains_take_a_changed_setting(flat):
    # compile=True builds the chain with its settings as tensors the graph reads: a changed b1
    # is used (tests/test_compile_step.py counts recompiles under Inductor); with flat=True the
    # small buffers run outside the graph, on the same tensors
    runs = []
    for options in ({"compile": {"backend": "eager"}, "flat": flat}, {"fast": False}):
        model = _model()
        opt = gx.Optimizer(model.parameters(), gx.adam(1e-2), **options)
        for step in range(3):
            opt.param_groups[0]["b1"] = 0.5 + 0.1 * step
            _step(model, opt)
        runs.append(model)
    _assert_same_params(*runs)


def test_compiled_chains_refuse_a_setting_their_constructor_takes_as_a_number_only():
    @gx.transform(elementwise=True)
    def times(factor: float = 2.0):  # a float argument, so a group key; no tensor taken
        if isinstance(factor, torch.Tensor):
            raise TypeError("factor must be a Python number")
        return gx.GradientTransformation(lambda params: (), lambda u, s, p=None, **kw: (
            {k: factor * v for k, v in u.items()}, s))

    model = _model()
    opt = gx.Optimizer(model.parameters(), gx.chain(times(0.5), gx.scale_by_lr(1e-2)),
                       compile={"backend": "eager"})
    _step(model, opt)  # its own value runs
    opt.param_groups[0]["factor"] = 0.25
    with pytest.raises(ValueError, match="inject_hyperparams"):
        _step(model, opt)


def test_tensor_hyperparameters_are_not_keys():
    # a 0-dim tensor is the user's to drive (hypergradients): the adapter leaves it alone
    model = _model()
    opt = gx.Optimizer(model.parameters(), gx.adam(1e-2, b1=torch.tensor(0.9)))
    assert "b1" not in opt.param_groups[0] and "betas" not in opt.param_groups[0]
    assert "b2" in opt.param_groups[0]


def test_group_settings_survive_a_checkpoint():
    model = _model()
    opt = gx.Optimizer(_groups(model, betas=(0.5, 0.99)), gx.adam(1e-2))
    for _ in range(3):
        _step(model, opt)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    twin = _model()
    twin.load_state_dict(saved["model"])
    resumed = gx.Optimizer(_groups(twin), gx.adam(1e-2))
    resumed.load_state_dict(saved["opt"])
    assert resumed.param_groups[0]["betas"] == (0.5, 0.99) and resumed.param_groups[0]["b1"] == 0.5
    for _ in range(5):
        _step(model, opt)
        _step(twin, resumed)
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)


def test_a_torch_adam_state_dict_brings_its_betas():
    model, twin = _model(), _model()
    ref = torch.optim.Adam(twin.parameters(), lr=1e-2, betas=(0.8, 0.99))
    for _ in range(3):
        _step(twin, ref)
    model.load_state_dict(twin.state_dict())
    opt = gx.Optimizer(model.parameters(), gx.adam(1e-2))
    opt.load_state_dict(ref.state_dict())
    assert opt.param_groups[0]["b1"] == 0.8 and opt.param_groups[0]["b2"] == 0.99
    for _ in range(5):
        _step(model, opt)
        _step(twin, ref)
    _assert_same_params(model, twin)


def test_a_user_per_tensor_transform_takes_a_group_value():
    # gx.per_tensor builds a NamedTuple class per call: the rebuilt chain's state is still the same
    @gx.transform
    def scaled_momentum(decay: float = 0.9) -> gx.GradientTransformation:
        def init_fn(p):
            return torch.zeros_like(p)

        def update_fn(g, m, p, *, step):
            m = decay * m + g
            return m.clone(), m

        return gx.per_tensor(init_fn, update_fn)

    model, twin = _model(), _model()
    opt = gx.Optimizer(_groups(model, decay=0.5), gx.chain(scaled_momentum(0.9), gx.scale_by_lr(1e-2)))
    ref = torch.optim.SGD(_groups(twin, momentum=0.5), lr=1e-2, momentum=0.9)
    for _ in range(10):
        _step(model, opt)
        _step(twin, ref)
    _assert_same_params(model, twin)


def test_numbers_given_as_ints_or_numpy_floats_are_keys_too():
    np = pytest.importorskip("numpy")
    opt = gx.Optimizer(_model().parameters(), gx.adam(1e-2, b1=0, b2=np.float64(0.99)))
    assert opt.param_groups[0]["betas"] == (0.0, 0.99)


def test_betas_for_chains_that_keep_b1_and_b2_in_state():
    opt = gx.Optimizer(_groups(_model(), betas=(0.8, 0.99)), gx.schedule_free_adamw(1e-2))
    assert opt.param_groups[0]["b1"] == 0.8 and opt.param_groups[1]["betas"][0] == 0.9


def test_a_checkpoint_between_scheduler_and_step_keeps_the_scheduled_betas():
    model = _model()
    opt = gx.Optimizer(model.parameters(), gx.adam(1e-2))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=40)
    for _ in range(3):
        _step(model, opt)
        sched.step()
    betas = opt.param_groups[0]["betas"]
    saved = opt.state_dict()
    resumed = gx.Optimizer(model.parameters(), gx.adam(1e-2))
    resumed.load_state_dict(saved)
    assert resumed.param_groups[0]["betas"] == betas and resumed.param_groups[0]["b1"] == betas[0]


def test_line_search_aliases_have_an_lr_for_torch_schedulers():
    for tx in (gx.lbfgs(), gx.bfgs(), gx.nonlinear_cg()):
        opt = gx.Optimizer(_model().parameters(), tx)
        assert opt.param_groups[0]["lr"] == 1.0
        torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)  # needs the lr key
