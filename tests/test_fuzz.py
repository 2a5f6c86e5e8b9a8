"""Hypothesis fuzzing over the whole registry: odd shapes, dtypes, group layouts and
gradient patterns. Bounded for the default run; ``GRADTX_FUZZ_EXAMPLES=2000 pytest
tests/test_fuzz.py`` runs deeper."""

from __future__ import annotations

import io
import os

import pytest
import torch
from registry import ENTRIES, extra_args

import gradtx as gx

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies

EXAMPLES = int(os.environ.get("GRADTX_FUZZ_EXAMPLES", "40"))
SETTINGS = hypothesis.settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                               suppress_health_check=list(hypothesis.HealthCheck))
PLAIN = [e for e in ENTRIES if not e.needs]  # entries that need a closure are fuzzed elsewhere

shapes = st.lists(st.integers(0, 4), min_size=0, max_size=3).map(tuple)


@st.composite
def trees(draw):
    n = draw(st.integers(1, 3))
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    seed = draw(st.integers(0, 2 ** 16))
    gen = torch.Generator().manual_seed(seed)
    return {f"p{i}": torch.randn(draw(shapes), generator=gen).to(dtype) for i in range(n)}


def _grads(params, seed):
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=gen).to(v.dtype) for k, v in params.items()}


def _layout(tree):
    return [(p, tuple(x.shape), x.dtype) if isinstance(x, torch.Tensor) else (p, type(x))
            for p, x in gx.tree_paths(tree)]


@SETTINGS
@hypothesis.given(entry=st.sampled_from(ENTRIES), params=trees())
def test_functional_update_is_pure_and_keeps_its_layout(entry, params):
    tx = entry.build()
    try:
        state = tx.init(params)
    except ValueError as error:  # a documented refusal (a shape the transform cannot take) names itself
        assert str(error)
        return
    layout = _layout(state)
    for step in range(2):
        grads = _grads(params, step)
        inputs = [(x, x.clone()) for x in gx.tree_leaves((grads, params, state)) if isinstance(x, torch.Tensor)]
        updates, state = tx.update(grads, state, params, **extra_args(entry, params))
        for x, before in inputs:
            assert torch.equal(x, before) or (x.isnan().any() and before.isnan().any()), "an input changed"
        assert _layout(state) == layout
        for k, u in updates.items():
            assert u.shape == grads[k].shape and u.dtype == grads[k].dtype
        params = gx.apply_updates(params, updates)


# State over all parameters as one vector (flatten, quasi-Newton matrices, a trust region's
# model): every parameter needs a gradient at every step, as their docstrings say.
ONE_VECTOR = {"flatten", "scale_by_bfgs", "scale_by_dfp", "scale_by_sr1", "scale_by_psb", "scale_by_broyden_good",
              "scale_by_broyden_bad", "scale_by_greenstadt1", "scale_by_greenstadt2", "scale_by_mccormick",
              "scale_by_pearson", "scale_by_icum", "scale_by_hoshino", "scale_by_ssvm", "scale_by_shor_r",
              "scale_by_lsr1", "scale_by_trust_region", "bfgs", "scale_by_thomas", "scale_by_projected_newton_raphson",
              "scale_by_new_ssm", "lbfgs_hessian"}


@SETTINGS
@hypothesis.given(entry=st.sampled_from(PLAIN), params=trees(), groups=st.integers(1, 2),
                  pattern=st.lists(st.lists(st.booleans(), min_size=3, max_size=3), min_size=4, max_size=4))
def test_adapter_paths_agree_and_resume(entry, params, groups, pattern):
    """Fused/in-place and generic paths give the same parameters, whatever the groups and
    whichever parameters have a gradient at each step, and a checkpoint taken midway resumes."""
    try:
        entry.build().init(params)
    except ValueError:
        return
    names = list(params)
    if entry.name in ONE_VECTOR:  # every parameter needs a gradient at every step (documented)
        pattern = [[True] * 3 for _ in pattern]

    def make(fast):
        ps = [torch.nn.Parameter(params[k].clone()) for k in names]
        cut = len(ps) if groups == 1 else max(1, len(ps) // 2)
        spec = [{"params": ps[:cut]}] + ([{"params": ps[cut:]}] if ps[cut:] else [])
        return ps, gx.Optimizer(spec, entry.build(), fast=fast, check_descent=False)

    runs = [make(True), make(False)]
    for step, has_grad in enumerate(pattern):
        if step == 2:  # checkpoint the fast run midway, resume it in a fresh optimizer
            ps, opt = runs[0]
            buffer = io.BytesIO()
            torch.save(opt.state_dict(), buffer)
            buffer.seek(0)
            resumed = make(True)
            for p, q in zip(resumed[0], ps):
                q_value = q.detach().clone()
                with torch.no_grad():
                    p.copy_(q_value)
            resumed[1].load_state_dict(torch.load(buffer, weights_only=True))
            runs[0] = resumed
        grads = _grads({k: params[k] for k in names}, 100 + step)
        for ps, opt in runs:
            for i, (p, k) in enumerate(zip(ps, names)):
                p.grad = grads[k].clone() if has_grad[i % 3] else None
            opt.step()
    for a, b in zip(runs[0][0], runs[1][0]):
        scale = max(1.0, float(b.detach().abs().max())) if b.numel() else 1.0
        tol = 1e-5 if a.dtype == torch.float32 else 1e-10
        torch.testing.assert_close(a.detach(), b.detach(), rtol=tol, atol=tol * scale, equal_nan=True)
