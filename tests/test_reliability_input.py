"""Reliability under bad input (issue 9, items 11, 15, 17, 18, 21, 22, 23): clear errors that
name what the user typed, and the torch.optim settings that had no counterpart.

Registry-wide checks iterate every registered transform and alias, so a new one is held to
the same rules the moment it is registered.
"""

from __future__ import annotations

import inspect

import pytest
from registry import ENTRIES

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
    ("scale_by_asgd", "t0"), ("asgd", "t0"),  # t0 = inf: never start averaging
}

# Registered constructors with no numeric argument of their own (combinators, parameter-free
# transforms); inject_hyperparams is checked through the factory it returns, below.
NO_NUMERIC = {"identity", "scale_by_sign", "scale_by_schedule", "chain", "named_chain", "masked", "partition",
              "multi_transform", "freeze", "inject_hyperparams", "conditionally_transform", "flatten", "centralize",
              "keep_params_nonnegative", "zero_nans", "sign_sgd"}

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
