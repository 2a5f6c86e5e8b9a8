"""Reliability under bad input (issue 9, items 11, 15, 17, 18, 21, 22, 23): clear errors that
name what the user typed, and the torch.optim settings that had no counterpart.

Registry-wide checks iterate every registered transform and alias, so a new one is held to
the same rules the moment it is registered.
"""

from __future__ import annotations

import inspect

import pytest
import torch
from conftest import MLPProblem, assert_same, default_dtype, functional_trajectory, optimizer_trajectory
from registry import ENTRIES, example_params, extra_args

import gradtx as gx

IDS = [e.name for e in ENTRIES]


# --- item 15: every numeric argument is validated, and the error names it ---------------------


def _example_arguments(tx, name: str) -> dict | None:
    """The arguments (defaults included) the registry's example gave the constructor ``name``:
    the part of ``tx`` built by it, found by the ``name``/``args`` the decorator records."""
    attrs = getattr(tx, "__dict__", {})
    if attrs.get("name") == name:
        return dict(attrs["args"])
    for part in attrs.get("parts", ()):
        found = _example_arguments(part, name)
        if found is not None:
            return found
    for value in attrs.get("args", {}).values():  # a model argument built by gx.<name> (gx.lbfgs_hessian)
        recipe = getattr(value, "__dict__", {}).get("recipe")
        if recipe is not None and recipe[0].__name__ == name:
            bound = inspect.signature(recipe[0]).bind(*recipe[1], **recipe[2])
            bound.apply_defaults()
            return dict(bound.arguments)
    return None


def _numeric_parameters(fn) -> dict[str, bool]:
    """``{argument: None allowed}`` for every argument annotated as a number (or a schedule of
    one); bools, dtypes, tuples, masks, callables and transforms are left out."""
    out = {}
    for name, parameter in inspect.signature(fn).parameters.items():
        annotation = str(parameter.annotation)
        if annotation.startswith("Callable") or any(w in annotation for w in ("bool", "tuple", "dtype")):
            continue
        if any(w in annotation for w in ("float", "int", "ScalarOrSchedule")):
            out[name] = "None" in annotation
    return out


# Arguments where +inf is a meaningful value ("no bound"): everything else must be finite.
INF_ALLOWED = {
    ("clip_value", "max_delta"), ("clip_by_global_norm", "max_norm"), ("clip_by_block_rms", "threshold"),
    ("adaptive_grad_clip", "clipping"), ("adafactor", "clipping_threshold"),
    ("scale_by_rprop", "max_step_size"), ("rprop", "max_step_size"),
    ("scale_by_polyak", "max_learning_rate"), ("polyak_sgd", "max_learning_rate"),
    ("polyak_linesearch", "max_learning_rate"),
    ("scale_by_asgd", "t0"), ("asgd", "t0"),  # t0 = inf: never start averaging
    # no largest step; increase_factor = inf: start at max_learning_rate; curv_rtol = inf: no curvature condition
    ("scale_by_strong_wolfe", "max_step_size"), ("scale_by_more_thuente", "max_step_size"),
    ("scale_by_backtracking_linesearch", "increase_factor"),
    ("scale_by_zoom_linesearch", "max_learning_rate"), ("scale_by_zoom_linesearch", "curv_rtol"),
    # growth_rate = inf (the default): d grows without a cap
    *((name, "growth_rate") for name in ("scale_by_prodigy", "prodigy", "scale_by_dadapt_adam", "dadapt_adam",
                                         "scale_by_dadapt_sgd", "dadapt_sgd")),
    # clip_threshold = inf: Sophia unclipped; p = inf: SAM's l_inf ball, e = rho sign(g)
    *((name, "clip_threshold") for name in ("scale_by_sophia", "sophia", "scale_by_sophia_h", "sophia_h")),
    ("sam_gradient", "p"), ("asam_gradient", "p"),
}

# Registered constructors with no numeric argument of their own (combinators, parameter-free
# transforms); inject_hyperparams is checked through the factory it returns, below.
NO_NUMERIC = {"identity", "scale_by_sign", "scale_by_schedule", "chain", "named_chain", "masked", "partition",
              "multi_transform", "freeze", "inject_hyperparams", "conditionally_transform", "flatten", "centralize",
              "keep_params_nonnegative", "zero_nans", "sign_sgd",
              "set_to_zero", "selective_transform", "conditionally_mask", "snapshot", "monitor", "project_params",
              # the authoring helpers take the author's functions; their hyperparameters are **kwargs
              "per_tensor", "multi_tensor", "stateless_with_tree_map",
              # its numbers are the wrapped optimizer's **kwargs, checked by that optimizer's constructor
              "wrap_optimizer",
              # its numbers belong to the projection it is given (gx.galore_projection checks rank...)
              "in_projected_space",
              # blocks, combinators and gradient-aware members with no number to set
              "sum_of", "difference", "product", "copysign", "abs", "sqrt", "reciprocal", "accumulate_maximum",
              "accumulate_minimum", "accumulate_sum", "accumulate_mean", "cautious", "copy_grad_sign",
              "copy_update_sign", "sign_consistency_mask"}

BAD_VALUES = [("nan", float("nan")), ("inf", float("inf")), ("string", "abc"), ("None", None)]


def _validation_cases():
    for entry in ENTRIES:
        fn = getattr(gx, entry.name)
        numeric = _numeric_parameters(fn)
        if entry.name in NO_NUMERIC:
            assert not numeric or entry.name == "sign_sgd", f"{entry.name} has numeric arguments {numeric}"
            continue
        for argument, none_ok in numeric.items():
            for label, value in BAD_VALUES:
                if label == "None" and none_ok:
                    continue
                yield pytest.param(entry, argument, value, (entry.name, argument) in INF_ALLOWED and label == "inf",
                                   id=f"{entry.name}-{argument}-{label}")


def test_every_constructor_with_numbers_is_covered():
    """The table above is exact: a registered constructor has numeric arguments unless listed."""
    for entry in ENTRIES:
        numeric = _numeric_parameters(getattr(gx, entry.name))
        if entry.name not in NO_NUMERIC | {"sign_sgd"}:
            assert numeric, f"{entry.name}: no numeric argument found; list it in NO_NUMERIC"
    for name, argument in INF_ALLOWED:
        assert argument in _numeric_parameters(getattr(gx, name)), (name, argument)


@pytest.mark.parametrize("entry,argument,value,accepted", list(_validation_cases()))
def test_bad_numeric_argument_raises_naming_it(entry, argument, value, accepted):
    """nan, inf (where infinity is not "no bound"), a string and None (where None is not a
    documented setting) raise ValueError at construction, and the message names the argument
    as the user typed it; a legitimate inf builds."""
    fn = getattr(gx, entry.name)
    arguments = _example_arguments(entry.build(), entry.name)
    assert arguments is not None, f"the registry's example does not call gx.{entry.name}"
    arguments[argument] = value
    if accepted:
        fn(**arguments)
        return
    with pytest.raises(ValueError) as info:
        fn(**arguments)
    assert argument in str(info.value), f"gx.{entry.name}({argument}={value!r}) raised {info.value!r}"


def _range_cases():
    for entry in ENTRIES:
        if entry.name in NO_NUMERIC:
            continue
        for argument in _numeric_parameters(getattr(gx, entry.name)):
            for value in (-1.0, -1, 0.0, 0.5, 1.0, 1.5, 1e9):
                yield pytest.param(entry, argument, value, id=f"{entry.name}-{argument}-{value!r}")


@pytest.mark.parametrize("entry,argument,value", list(_range_cases()))
def test_out_of_range_error_names_the_argument(entry, argument, value):
    """Any number in any numeric argument either builds or raises ValueError naming that
    argument: never another argument's name (sgd's momentum reported as trace's decay) nor
    a raw TypeError from arithmetic on it."""
    arguments = _example_arguments(entry.build(), entry.name)
    arguments[argument] = value
    try:
        getattr(gx, entry.name)(**arguments)
    except ValueError as error:
        assert argument in str(error), f"gx.{entry.name}({argument}={value!r}) raised {error!r}"


@pytest.mark.parametrize("call,argument", [
    (lambda: gx.sgd(0.1, momentum=-1), "momentum"),
    (lambda: gx.sgd(0.1, momentum=1.0), "momentum"),
    (lambda: gx.trace(1.0), "decay"),
    (lambda: gx.lars(0.1, momentum=1.5), "momentum"),
    (lambda: gx.rmsprop(0.1, momentum=1.0), "momentum"),
    (lambda: gx.muon(0.1, adam_b1=1.5), "adam_b1"),
    (lambda: gx.muon(0.1, adam_b2=-0.5), "adam_b2"),
    (lambda: gx.muon(0.1, adam_eps_root=-1.0), "adam_eps_root"),
    (lambda: gx.muon(0.1, adam_weight_decay=-1.0), "adam_weight_decay"),
    (lambda: gx.adafactor(weight_decay_rate=-1), "weight_decay_rate"),
    (lambda: gx.adafactor(decay_offset=-1), "decay_offset"),
    (lambda: gx.adafactor(decay_offset=0.5), "decay_offset"),
    (lambda: gx.scale_by_factored_rms(step_offset=-2), "step_offset"),
    (lambda: gx.scale_by_factored_rms(step_offset=1.5), "step_offset"),
    (lambda: gx.fromage(float("inf")), "lr"),
    (lambda: gx.rprop(0.1, min_step_size=None), "min_step_size"),
    (lambda: gx.rprop(0.1, max_step_size=None), "max_step_size"),
    (lambda: gx.rprop(0.1, min_step_size=1.0, max_step_size=0.5), "max_step_size"),
    (lambda: gx.signum(0.1, momentum=1.0), "momentum"),
    (lambda: gx.sm3(0.1, momentum=-0.1), "momentum"),
])
def test_error_names_the_argument_the_user_typed(call, argument):
    """Out-of-range values that aliases hand to a transform under another name (sgd's momentum
    is trace's decay, muon's adam_b1 is scale_by_adam's b1) are reported under the alias's name."""
    with pytest.raises(ValueError) as info:
        call()
    message = str(info.value)
    assert message.split()[0].strip(":") == argument, message


def test_inject_hyperparams_names_the_argument():
    for argument, value in [("lr", float("inf")), ("b1", float("nan")), ("eps", "abc")]:
        with pytest.raises(ValueError, match=argument):
            gx.inject_hyperparams(gx.adam)(**{"lr": 1e-3, argument: value})


def test_infinite_lr_weight_decay_momentum_refused():
    """inf was accepted for these and turned every parameter into inf/NaN at the first step."""
    for make in (lambda: gx.sgd(float("inf")), lambda: gx.adamw(1e-3, weight_decay=float("inf")),
                 lambda: gx.sgd(0.1, momentum=float("inf"))):
        with pytest.raises(ValueError, match="finite"):
            make()


# --- item 22: adafactor(eps=0.0), torch's setting, clamps as torch.optim.Adafactor ------------


def test_adafactor_eps_zero_matches_torch_on_zero_and_normal_gradients():
    """``gx.adafactor(eps=0.0)``, the setting its docstring maps torch.optim.Adafactor to, gave
    NaN on an all-zero gradient (0 / 0 in the factored estimate), where torch clamps."""
    gen = torch.Generator().manual_seed(0)
    p0 = {"w": torch.randn(5, 3, generator=gen, dtype=torch.float64),
          "b": torch.randn(3, generator=gen, dtype=torch.float64)}
    zero = {k: torch.zeros_like(v) for k, v in p0.items()}
    grads = [zero, {k: torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in p0.items()}, zero,
             {k: torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in p0.items()}]
    lr = 1e-2

    with default_dtype(torch.float64):
        leaves = {k: v.clone().requires_grad_(True) for k, v in p0.items()}
        opt = torch.optim.Adafactor(list(leaves.values()), lr=lr)
        expected = []
        for g in grads:
            for k, leaf in leaves.items():
                leaf.grad = g[k].clone()
            opt.step()
            expected.append({k: v.detach().clone() for k, v in leaves.items()})

    # torch's relative step min(lr, 1/sqrt(t)), t from 1, written as a schedule of gradtx's count
    tx = gx.adafactor(lambda count: torch.clamp((count.to(torch.float64) + 1.0) ** -0.5, max=lr),
                      min_dim_size_to_factor=1, eps=0.0)
    params = {k: v.clone() for k, v in p0.items()}
    state = tx.init(params)
    for step, g in enumerate(grads):
        updates, state = tx.update(g, state, params)
        params = gx.apply_updates(params, updates)
        for k in p0:
            assert torch.isfinite(params[k]).all(), f"non-finite {k} after step {step}"
            torch.testing.assert_close(params[k], expected[step][k], rtol=1e-10, atol=1e-12)
    assert torch.equal(expected[0]["w"], p0["w"])  # a zero gradient moves nothing in torch
    assert not torch.allclose(expected[-1]["w"], p0["w"])


# --- item 23: torch.optim.SGD's dampening -----------------------------------------------------


SGD_DAMPENING = [
    ("momentum_dampening_wd", dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=1e-2)),
    ("full_dampening", dict(lr=0.1, momentum=0.5, dampening=1.0)),
    # dampening given as 0: the counted state, torch's numbers, nesterov allowed as in torch
    ("zero_dampening_nesterov", dict(lr=0.05, momentum=0.9, dampening=0.0, nesterov=True, weight_decay=1e-2)),
]


def _torch_sgd_trajectory(problem, kwargs, steps):
    params = problem.leaf_params()
    return optimizer_trajectory(params, problem.loss, torch.optim.SGD(list(params.values()), **kwargs), steps)


def _adapter_trajectory(problem, tx, steps, fast):
    params = problem.leaf_params()
    opt = gx.Optimizer(list(params.values()), tx, fast=fast)
    return optimizer_trajectory(params, problem.loss, opt, steps), opt


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name,kwargs", SGD_DAMPENING, ids=[c[0] for c in SGD_DAMPENING])
def test_sgd_dampening_matches_torch(name, kwargs, dtype, monkeypatch):
    """gx.sgd(..., dampening=d) and chain(trace(m, dampening=d), scale_by_lr) follow
    torch.optim.SGD(dampening=d) (buf = g at the first step, then m buf + (1-d) g), on the
    functional path, the adapter's generic in-place path and its fused kernel."""
    steps = 60
    problem = MLPProblem(dtype)
    ref = _torch_sgd_trajectory(problem, kwargs, steps)
    assert_same(functional_trajectory(problem, gx.sgd(**kwargs), steps), ref, dtype)
    plain = dict(kwargs)
    lr, momentum, dampening = plain.pop("lr"), plain.pop("momentum"), plain.pop("dampening")
    chain = gx.chain(gx.add_decayed_weights(plain.get("weight_decay", 0.0)),
                     gx.trace(momentum, nesterov=plain.get("nesterov", False), dampening=dampening),
                     gx.scale_by_lr(lr))
    assert_same(functional_trajectory(problem, chain, steps), ref, dtype)

    generic, _ = _adapter_trajectory(problem, gx.sgd(**kwargs), steps, fast=False)
    assert_same(generic, ref, dtype)

    calls = []
    kernel = torch._fused_sgd_

    def counting(*args, **kw):
        calls.append(kw["dampening"])
        return kernel(*args, **kw)

    monkeypatch.setattr(torch, "_fused_sgd_", counting)
    fused, opt = _adapter_trajectory(problem, gx.sgd(**kwargs), steps, fast=True)
    assert len(calls) == steps and set(calls) == {dampening}, "the fused kernel did not run with the dampening"
    assert_same(fused, ref, dtype)


def test_dampening_with_nesterov_is_refused_as_torch():
    with pytest.raises(ValueError, match="Nesterov"):
        torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1, momentum=0.9, dampening=0.5, nesterov=True)
    for make in (lambda: gx.sgd(0.1, momentum=0.9, nesterov=True, dampening=0.5),
                 lambda: gx.trace(0.9, nesterov=True, dampening=0.5)):
        with pytest.raises(ValueError, match="dampening"):
            make()
    with pytest.raises(ValueError, match="dampening"):
        gx.sgd(0.1, momentum=0.9, dampening=1.5)



# --- item 18: schedules are checked when the transform is built ---------------------------------


def _lr_schedule_aliases():
    return [e for e in ENTRIES if "ScalarOrSchedule" in str(inspect.signature(getattr(gx, e.name)).parameters
                                                             .get("lr", inspect.Parameter("lr", 1)).annotation)]


BAD_SCHEDULES = [
    ("no_argument", lambda: 1e-3),
    ("two_arguments", lambda count, other: 1e-3),
    ("returns_string", lambda count: "abc"),
    ("returns_none", lambda count: None),
    ("returns_vector", lambda count: torch.full((2,), 1e-3)),
    ("raises", lambda count: 1 / 0),
]


@pytest.mark.parametrize("label,schedule", BAD_SCHEDULES, ids=[b[0] for b in BAD_SCHEDULES])
@pytest.mark.parametrize("entry", _lr_schedule_aliases(), ids=lambda e: e.name)
def test_bad_lr_schedule_is_refused_at_construction(entry, label, schedule):
    """Every constructor that takes ``lr`` as a schedule calls it at step 0 when built: a
    schedule that cannot be called with the step, or gives no number, raises ValueError
    naming ``lr`` there, not at the first step (``bad operand type for unary -``)."""
    arguments = _example_arguments(entry.build(), entry.name)
    arguments["lr"] = schedule
    with pytest.raises(ValueError) as info:
        getattr(gx, entry.name)(**arguments)
    assert str(info.value).startswith("lr"), str(info.value)


@pytest.mark.parametrize("label,schedule", BAD_SCHEDULES, ids=[b[0] for b in BAD_SCHEDULES])
@pytest.mark.parametrize("build,argument", [
    (lambda s: gx.scale_by_schedule(s), "step_size_fn"),
    (lambda s: gx.inject_hyperparams(gx.adam)(lr=s), "lr"),
    (lambda s: gx.inject_hyperparams(gx.adam)(lr=1e-3, b1=s), "b1"),
    (lambda s: gx.multi_steps(gx.sgd(0.1), every_k_schedule=s), "every_k_schedule"),
], ids=["scale_by_schedule", "inject_lr", "inject_b1", "multi_steps"])
def test_bad_schedule_is_refused_by_wrappers(build, argument, label, schedule):
    with pytest.raises(ValueError) as info:
        build(schedule)
    assert str(info.value).startswith(argument), str(info.value)


def test_multi_steps_schedule_giving_zero_is_refused_at_construction():
    with pytest.raises(ValueError, match="every_k_schedule"):
        gx.multi_steps(gx.sgd(0.1), every_k_schedule=lambda step: 0)


def test_good_schedules_are_called_with_the_step_and_still_work():
    seen = []

    def schedule(count):
        seen.append(count)
        return 0.1 / (1 + count)

    tx = gx.sgd(schedule)
    assert len(seen) == 1 and seen[0].dtype == torch.int32 and seen[0].dim() == 0 and int(seen[0]) == 0
    params = {"w": torch.ones(3)}
    state = tx.init(params)
    for step in range(3):
        updates, state = tx.update({"w": torch.ones(3)}, state, params)
        torch.testing.assert_close(updates["w"], torch.full((3,), -0.1 / (1 + step)))
    for ok in (lambda c: 1e-3, lambda c: torch.tensor(1e-3), gx.cosine_decay_schedule(1e-3, 10), lambda c: 1):
        gx.adam(ok)


# --- item 21: 1-element tensors of any shape are hyperparameters, taken as 0-dim ------------------


def _float_arguments(arguments: dict) -> list[str]:
    return [k for k, v in arguments.items() if isinstance(v, float)]


@pytest.mark.parametrize("entry", [e for e in ENTRIES if e.name not in NO_NUMERIC], ids=lambda e: e.name)
def test_one_element_tensor_hyperparameters_act_as_numbers(entry):
    """Every float argument given as ``torch.tensor([[x]])`` (torch takes any 1-element tensor
    for lr) builds, and gives the updates and state the 0-dim tensor gives, with every update
    shaped like its gradient (a (1, 1) factor would broadcast a 0-dim leaf to (1, 1))."""
    fn = getattr(gx, entry.name)
    arguments = _example_arguments(entry.build(), entry.name)
    names = _float_arguments(arguments) if arguments is not None else []
    if not names:
        pytest.skip("no float argument")
    scalar = {**arguments, **{k: torch.tensor(arguments[k], dtype=torch.float64) for k in names}}
    shaped = {**arguments, **{k: torch.tensor([[arguments[k]]], dtype=torch.float64) for k in names}}
    params = example_params()
    grads = {k: torch.randn(v.shape, generator=torch.Generator().manual_seed(3)) for k, v in params.items()}
    results = []
    for kwargs in (scalar, shaped):
        tx = fn(**kwargs)
        state = tx.init(params)
        for _ in range(2):
            updates, state = tx.update(grads, state, params, **extra_args(entry, params))
        results.append((updates, state))
    (u0, s0), (u1, s1) = results
    for k in grads:
        assert u1[k].shape == grads[k].shape, f"{k}: update of shape {tuple(u1[k].shape)}"
        torch.testing.assert_close(u1[k], u0[k], rtol=0, atol=0)
    for (p0, x0), (p1, x1) in zip(gx.tree_paths(s0), gx.tree_paths(s1)):
        assert p0 == p1
        if isinstance(x0, torch.Tensor):
            assert x1.shape == x0.shape, f"state {p1}: {tuple(x1.shape)} instead of {tuple(x0.shape)}"


def test_one_element_lr_as_torch_takes_it():
    """torch.optim.SGD(lr=torch.tensor([0.1])) works; so does gx.sgd / gx.adam with it."""
    torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=torch.tensor([0.1]))
    params = {"w": torch.ones(2, 2), "s": torch.tensor(1.0)}
    grads = {"w": torch.ones(2, 2), "s": torch.tensor(1.0)}
    for make, number in ((gx.sgd, 0.1), (gx.adam, 1e-3)):
        tx = make(torch.tensor([number]))
        updates, state = tx.update(grads, tx.init(params), params)
        expected, _ = make(number).update(grads, make(number).init(params), params)
        assert gx.tree_get(state, "lr").dim() == 0
        for k in params:
            assert updates[k].shape == params[k].shape
            torch.testing.assert_close(updates[k], expected[k])
    with pytest.raises(ValueError, match="lr"):
        gx.sgd(torch.tensor([0.1, 0.2]))
    tx = gx.inject_hyperparams(gx.adam)(lr=torch.tensor([1e-3]))
    assert tx.init(params).hyperparams["lr"].dim() == 0


# --- item 11: a None leaf is refused at the entry, naming its path -------------------------------

# identity returns its input untouched (a placeholder in chains, free on every step): a None
# leaf passes through it to the next transform, which refuses it.
NONE_PASSES = {"identity"}


def _grads(params, seed=2):
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=gen).to(v.dtype) for k, v in params.items()}


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_none_update_leaf_is_refused_naming_its_path(entry):
    """Every transform refuses a None update leaf with a ValueError naming the leaf's path and
    what to use for "no update for this parameter", not a raw error from deep inside."""
    tx = entry.build()
    params = example_params()
    grads = {**_grads(params), "b": None}
    state = tx.init(params)
    if entry.name in NONE_PASSES:
        updates, _ = tx.update(grads, state, params)
        assert updates["b"] is None
        return
    with pytest.raises(ValueError) as info:
        tx.update(grads, state, params, **extra_args(entry, params))
    message = str(info.value)
    assert "['b']" in message and "gx.masked" in message and "gx.freeze" in message, message


def test_apply_updates_still_takes_none_as_no_change():
    params = {"w": torch.ones(2), "b": torch.zeros(3)}
    out = gx.apply_updates(params, {"w": torch.ones(2), "b": None})
    assert torch.equal(out["w"], torch.full((2,), 2.0)) and out["b"] is params["b"]


def test_none_param_leaf_is_refused_at_init():
    with pytest.raises(ValueError, match=r"\['b'\]"):
        gx.adam(1e-3).init({"w": torch.ones(2), "b": None})


# --- item 17: a tree that does not match names the key paths that differ ----------------------


def test_update_with_missing_leaf_names_it():
    w, b = torch.ones(2, 2), torch.ones(2)
    tx = gx.adam(1e-3)
    with pytest.raises(ValueError) as info:
        tx.update({"w": w}, tx.init({"w": w, "b": b}))
    message = str(info.value)
    assert "arity" not in message and "only in the state: ['b']" in message, message
    with pytest.raises(ValueError) as info:
        tx.update({"w": w, "b": b, "c": b}, tx.init({"w": w, "b": b}))
    assert "only in the updates: ['c']" in str(info.value), str(info.value)
    tx = gx.adamw(1e-3)  # params are matched against the updates too
    with pytest.raises(ValueError, match=r"only in params: \['b'\]"):
        tx.update({"w": w}, tx.init({"w": w}), {"w": w, "b": b})


def test_apply_updates_mismatch_names_it():
    with pytest.raises(ValueError, match=r"only in params: \['b'\]"):
        gx.apply_updates({"w": torch.ones(2), "b": torch.ones(2)}, {"w": torch.ones(2)})


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_structure_mismatch_is_named_for_every_entry(entry):
    """Updates missing a leaf that the state (or params) holds: every registered transform either
    raises ValueError naming that leaf's path, or keeps nothing for it (a stateless transform
    that ignores params may serve any tree)."""
    tx = entry.build()
    params = example_params()
    state = tx.init(params)
    grads = {k: v for k, v in _grads(params).items() if k != "b"}
    try:
        tx.update(grads, state, params, **extra_args(entry, params))
    except ValueError as error:
        assert "['b']" in str(error) and "arity" not in str(error), str(error)
    else:
        held = [path for path, _ in gx.tree_paths(state) if "['b']" in path]
        assert not held, f"{entry.name} keeps state for b ({held}) but served updates without it"


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "generic"])
def test_one_element_lr_in_param_groups_as_torch(fast):
    """A param group's lr given (or set by hand mid-run) as a 1-element tensor of any shape
    steps as torch.optim.SGD does with it."""
    def run(make_opt):
        p = torch.nn.Parameter(torch.linspace(-1.0, 1.0, 4, dtype=torch.float64))
        opt = make_opt([{"params": [p], "lr": torch.tensor([0.1], dtype=torch.float64)}])
        for step in range(4):
            if step == 2:
                opt.param_groups[0]["lr"] = torch.tensor([[0.05]], dtype=torch.float64)
            p.grad = p.detach() * 2.0 + 1.0
            opt.step()
        return p.detach()

    expected = run(lambda groups: torch.optim.SGD(groups, lr=0.01, momentum=0.9))
    actual = run(lambda groups: gx.Optimizer(groups, gx.sgd(0.01, momentum=0.9), fast=fast))
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)
