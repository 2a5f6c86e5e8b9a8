"""Properties every registered transform and alias must have."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import pytest
import torch
from registry import ENTRIES, NOT_TRANSFORMS, example_params, extra_args, quadratic_value

import gradtx as gx

IDS = [e.name for e in ENTRIES]


def _grads(params, seed=2):
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=gen).to(v.dtype) for k, v in params.items()}


def _signature(tree):
    leaves = gx.tree_paths(tree)
    return [(path, tuple(x.shape), x.dtype) if isinstance(x, torch.Tensor) else (path, type(x)) for path, x in leaves]


def test_registry_is_complete():
    registered = {e.name for e in ENTRIES}
    public = {name for name in gx.__all__ if callable(getattr(gx, name)) and not name.startswith("tree_")
              and not inspect.isclass(getattr(gx, name)) and "schedule" not in name and name != "exponential_decay"}
    missing = public - registered - NOT_TRANSFORMS
    assert not missing, f"public transforms missing from tests/registry*.py: {sorted(missing)}"
    assert registered <= set(gx.__all__), f"registered but not public: {sorted(registered - set(gx.__all__))}"


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_update_is_pure(entry):
    tx = entry.build()
    params = example_params()
    grads = _grads(params)
    state = tx.init(params)
    before = [(x.clone() if isinstance(x, torch.Tensor) else x) for x in
              gx.tree_leaves(params) + gx.tree_leaves(grads) + gx.tree_leaves(state)]
    tx.update(grads, state, params, **extra_args(entry, params))
    after = gx.tree_leaves(params) + gx.tree_leaves(grads) + gx.tree_leaves(state)
    for a, b in zip(before, after):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b), "update mutated its inputs"


# A tree of four leaves of four dtypes, the lowest precision first (a cast to "the first
# leaf's dtype" shows at once); values rounded to bfloat16, so every dtype holds them exactly.
MIXED = {"w": ((6, 5), torch.bfloat16), "h": ((3,), torch.float16), "b": ((4,), torch.float32),
         "s": ((), torch.float64), "v": ((2, 5), torch.float64)}


def mixed_tree(seed: int, dtypes: dict | None = None) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=gen).to(torch.bfloat16).to((dtypes or {}).get(k, dtype))
            for k, (shape, dtype) in MIXED.items()}


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, "mixed"],
                         ids=["f32", "f64", "bf16", "mixed"])
def test_state_stable_and_dtype_kept(entry, dtype):
    """Three updates keep the state's structure, shapes and dtypes and each update's dtype,
    on a tree of one dtype and on a tree mixing float16, bfloat16, float32 and float64."""
    if dtype in entry.skip.get("dtypes", ()):
        pytest.skip(entry.skip.get("why", "dtype not supported"))
    tx = entry.build()
    params = mixed_tree(1) if dtype == "mixed" else example_params(dtype)
    state = tx.init(params)
    sig = _signature(state)
    for step in range(3):
        grads = _grads(params, seed=step)
        updates, state = tx.update(grads, state, params, **extra_args(entry, params))
        assert _signature(state) == sig, f"state changed structure at step {step}"
        for k in grads:
            assert updates[k].dtype == grads[k].dtype and updates[k].shape == grads[k].shape
        params = gx.apply_updates(params, updates)


# Round-off of one update in each dtype: float64 and float32 to a few units in the last
# place; bfloat16 to two (8 bits of mantissa), as a wider computation rounded once may differ
# from the all-bfloat16 one by that much.
DTYPE_TOL = {torch.bfloat16: dict(rtol=1.6e-2, atol=1e-4), torch.float16: dict(rtol=2e-3, atol=1e-5),
             torch.float32: dict(rtol=1e-5, atol=1e-7), torch.float64: dict(rtol=1e-12, atol=1e-14)}


# Entries whose update of one leaf depends on the others: global norms, one vector over all
# leaves, a loss, noise drawn by leaf position.
COUPLES_LEAVES = {"clip_by_global_norm", "normalize_by_update_norm", "flatten", "scale_by_polyak", "polyak_sgd",
                  "scale_by_dog", "dog", "add_noise", "noisy_sgd", "scale_by_conjugate_gradient", "mars_correction",
                  "scale_by_adaptive_heavy_ball", "scale_by_grad_cosine_similarity", "add_relative_decayed_weights",
                  "scale_by_barzilai_borwein", "scale_by_bold_driver", "scale_by_trust_region", "scale_by_prodigy",
                  "lbfgs_hessian",
                  "prodigy", "scale_by_dadapt_adam", "dadapt_adam", "scale_by_dadapt_sgd", "dadapt_sgd",
                  "scale_by_dowg", "dowg", "mechanize", "momo", "momo_adam"}
# quasi-Newton matrices over all leaves as one vector
COUPLES_LEAVES |= {"scale_by_bfgs", "scale_by_dfp", "scale_by_sr1", "scale_by_psb", "scale_by_broyden_good",
                   "scale_by_broyden_bad", "scale_by_greenstadt1", "scale_by_greenstadt2", "scale_by_mccormick",
                   "scale_by_pearson", "scale_by_icum", "scale_by_hoshino", "scale_by_shor_r", "scale_by_lsr1",
                   "scale_by_ssvm", "scale_by_thomas", "scale_by_projected_newton_raphson", "scale_by_new_ssm"}
# diagonal quasi-Newton: sums over all leaves (s.y, sum s^4)
COUPLES_LEAVES |= {"scale_by_diagonal_bfgs", "scale_by_diagonal_sr1", "scale_by_quasi_cauchy",
                   "scale_by_weighted_quasi_cauchy", "scale_by_dnrtr", "scale_by_new_dqn"}
# finite differences of one loss over all leaves (its round-off is the whole tree's)
COUPLES_LEAVES |= {"fdm"}
# PSGD's dense and low-rank preconditioners over all leaves as one vector
COUPLES_LEAVES |= {"scale_by_psgd_dense", "psgd_dense", "scale_by_psgd_lra", "psgd_lra"}

# Hutchinson probes drawn by leaf position; global norms (SAM, MSAM); matrix momentum's first step
COUPLES_LEAVES |= {"scale_by_sophia_h", "sophia_h", "matrix_momentum", "sam_gradient", "asam_gradient", "sam", "msam"}


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_mixed_dtype_tree_matches_each_dtype_alone(entry):
    """Each leaf keeps its own dtype: on a tree mixing bfloat16, float16, float32 and float64
    leaves (the lowest precision first), every update has its gradient's dtype and equals, to
    that dtype's round-off, the update of the same entry on the tree where that leaf keeps its
    dtype and every leaf of another dtype is float64: for a leafwise entry, the leaf alone in
    its own dtype; for one that couples the leaves (a global norm), the others held exactly.
    Every run gets the same params, gradients and loss each step (values that every dtype
    holds exactly, at first). A leafwise entry is also run on each leaf alone."""
    if "mixed" in entry.skip:
        pytest.skip(entry.skip["mixed"])
    tx = entry.build()
    params = mixed_tree(1)
    state = tx.init(params)
    dtypes = sorted({x.dtype for x in params.values()}, key=str)

    def alone(tree, dtype):  # the leaves of `dtype` as they are, the others (exactly) in float64
        return {k: x if x.dtype == dtype else x.to(torch.float64) for k, x in tree.items()}

    ref_states = {d: tx.init(alone(params, d)) for d in dtypes}
    single = entry.name not in COUPLES_LEAVES
    single_states = {k: tx.init({k: x}) for k, x in params.items()} if single else {}
    for step in range(3):
        grads = mixed_tree(10 + step)
        extra = extra_args(entry, params)  # the loss of the mixed tree, given to every run
        updates, state = tx.update(grads, state, params, **extra)
        for d in dtypes:
            ref, ref_states[d] = tx.update(alone(grads, d), ref_states[d], alone(params, d), **extra)
            for k, g in grads.items():
                if g.dtype == d:
                    assert updates[k].dtype == d, f"step {step}, {k}: update {updates[k].dtype}, gradient {d}"
                    torch.testing.assert_close(updates[k], ref[k], **DTYPE_TOL[d],
                                               msg=lambda m, k=k, step=step: f"step {step}, {k}: {m}")
        for k in single_states:  # a leafwise entry: each leaf alone in a tree of its own
            ref, single_states[k] = tx.update({k: grads[k]}, single_states[k], {k: params[k]},
                                              **extra_args(entry, {k: params[k]}))
            torch.testing.assert_close(updates[k], ref[k], **DTYPE_TOL[grads[k].dtype],
                                       msg=lambda m, k=k, step=step: f"alone, step {step}, {k}: {m}")
        params = gx.apply_updates(params, updates)


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_low_precision_grads_on_wider_params_keep_their_dtype(entry):
    """Mixed precision: bfloat16 gradients on float32 params (state follows the params)
    give bfloat16 updates with finite values, pure and in place."""
    if torch.bfloat16 in entry.skip.get("dtypes", ()):
        pytest.skip(entry.skip.get("why", "dtype not supported"))
    tx = entry.build()
    params = example_params(torch.float32)
    for inplace in (False, True):
        state = tx.init(params)
        for step in range(2):
            grads = {k: g.to(torch.bfloat16) for k, g in _grads(params, seed=step).items()}
            updates, state = tx.update(grads, state, params, inplace=inplace, **extra_args(entry, params))
            for k in grads:
                assert updates[k].dtype == torch.bfloat16, f"{k}: {updates[k].dtype} (inplace={inplace})"
                assert torch.isfinite(updates[k]).all()


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_inplace_matches_pure(entry):
    tx = entry.build()
    params = example_params(torch.float64)
    pure_state = tx.init(params)
    in_state = tx.init(params)
    p_pure, p_in = params, {k: v.clone() for k, v in params.items()}
    for step in range(4):
        grads = _grads(p_pure, seed=step)
        u_pure, pure_state = tx.update(grads, pure_state, p_pure, **extra_args(entry, p_pure))
        u_in, in_state = tx.update({k: g.clone() for k, g in grads.items()}, in_state, p_in, inplace=True,
                                   **extra_args(entry, p_in))
        p_pure = gx.apply_updates(p_pure, u_pure)
        p_in = gx.apply_updates(p_in, u_in, inplace=True)
        for k in params:
            torch.testing.assert_close(p_in[k], p_pure[k], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_accepts_unknown_extra_args(entry):
    tx = entry.build()
    params = example_params()
    state = tx.init(params)
    updates, _ = tx.update(_grads(params), state, params, some_unknown_arg=3, **extra_args(entry, params))
    assert set(updates) == set(params)


@pytest.mark.parametrize("entry", [e for e in ENTRIES if e.converges], ids=[e.name for e in ENTRIES if e.converges])
def test_descends_on_a_quadratic(entry):
    """200 steps on f(x) = sum x^2 reduce the loss (a full alias must reach near zero)."""
    tx = entry.build()
    params = example_params(torch.float64)
    start = float(quadratic_value(params))
    state = tx.init(params)
    for _ in range(200):
        grads = {k: 2 * v for k, v in params.items()}
        updates, state = tx.update(grads, state, params, **extra_args(entry, params))
        params = gx.apply_updates(params, updates)
    end = float(quadratic_value(params))
    assert end < 0.5 * start
    if entry.kind == "alias":
        assert end < 1e-2 * start


def _rosenbrock_value(params):
    """Chained Rosenbrock over all coordinates (a = 1, b = 10, scaled by 1/10), minimum 0 at
    x = 1: a curved narrow valley, unlike the quadratic."""
    x = torch.cat([params[k].double().reshape(-1) for k in sorted(params)])
    return (((1 - x[:-1]) ** 2).sum() + 10 * ((x[1:] - x[:-1] ** 2) ** 2).sum()) / 10


def _rosenbrock_value_and_grad(params):
    leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    value = _rosenbrock_value(leaves)
    return value.detach(), dict(zip(leaves, torch.autograd.grad(value, list(leaves.values()))))


def _rosenbrock_hvp(params, v):
    """The Hessian of ``_rosenbrock_value`` times ``v``, in closed form (tridiagonal: ``H_ii =
    (0.2 - 4 x_{i+1} + 12 x_i^2) [i < n-1] + 2 [i > 0]``, ``H_{i,i+1} = -4 x_i``)."""
    keys = sorted(params)
    x = torch.cat([params[k].double().reshape(-1) for k in keys])
    w = torch.cat([v[k].double().reshape(-1) for k in keys])
    diag = torch.zeros_like(x)
    diag[:-1] += 0.2 - 4 * x[1:] + 12 * x[:-1] ** 2
    diag[1:] += 2
    hv = diag * w
    hv[:-1] -= 4 * x[:-1] * w[1:]
    hv[1:] -= 4 * x[:-1] * w[:-1]
    out, start = {}, 0
    for k in keys:
        n = params[k].numel()
        out[k] = hv[start:start + n].reshape(params[k].shape).to(params[k].dtype)
        start += n
    return out


def _rosenbrock_residuals(params):
    """Residuals ``r`` with ``||r||^2 / 2 = _rosenbrock_value``."""
    x = torch.cat([params[k].double().reshape(-1) for k in sorted(params)])
    return torch.cat([0.2 ** 0.5 * (1 - x[:-1]), 2 ** 0.5 * (x[1:] - x[:-1] ** 2)])


@pytest.mark.slow  # 1000 steps for each of ~260 entries: minutes; CI runs it (.ci/run)
@pytest.mark.parametrize("entry", [e for e in ENTRIES if e.converges], ids=[e.name for e in ENTRIES if e.converges])
def test_descends_on_rosenbrock(entry):
    """1000 steps from x = 0 reduce the Rosenbrock value; a full alias reaches a tenth of it."""
    if "rosenbrock" in entry.skip:
        pytest.skip(entry.skip["rosenbrock"])
    tx = entry.build()
    params = {k: torch.zeros_like(v, dtype=torch.float64) for k, v in example_params().items()}
    start = float(_rosenbrock_value(params))
    state = tx.init(params)
    extra = {}
    for _ in range(1000):
        leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        value = _rosenbrock_value(leaves)
        grads = dict(zip(leaves, torch.autograd.grad(value, list(leaves.values()))))
        if "value" in entry.needs:
            extra["value"] = value.detach()
        if "grad" in entry.needs:
            extra["grad"] = grads
        if "value_fn" in entry.needs:
            extra["value_fn"] = _rosenbrock_value
        if "value_and_grad_fn" in entry.needs:
            extra["value_and_grad_fn"] = _rosenbrock_value_and_grad
        if "hvp_fn" in entry.needs:
            extra["hvp_fn"] = _rosenbrock_hvp
        if "residual_fn" in entry.needs:
            extra["residual_fn"] = _rosenbrock_residuals
        updates, state = tx.update(grads, state, params, **extra)
        params = gx.apply_updates(params, updates)
    end = float(_rosenbrock_value(params))
    assert end < 0.5 * start
    if entry.kind == "alias":
        assert end < 0.1 * start


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_works_through_the_adapter(entry):
    """gx.Optimizer gives the functional trajectory."""
    if entry.needs:
        pytest.skip("needs a closure; covered in the adapter tests")
    params = example_params(torch.float64)
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    opt = gx.Optimizer(list(leaves.values()), entry.build())
    tx = entry.build()
    state = tx.init(params)
    for step in range(5):
        grads = _grads(params, seed=step)
        updates, state = tx.update(grads, state, params)
        params = gx.apply_updates(params, updates)
        for k, p in leaves.items():
            p.grad = grads[k].clone()
        opt.step()
        for k, p in leaves.items():
            torch.testing.assert_close(p.detach(), params[k], rtol=1e-12, atol=1e-14)


def _injectable(factory) -> bool:
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return False
    return not any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in parameters)


def _with_injected_hyperparams(tx) -> tuple[gx.GradientTransformation, int]:
    """``tx`` rebuilt with its hyperparameters injected, and how many parts were rebuilt.

    The rule: a transform built by a public ``@transform`` constructor (it carries ``name``
    and ``args``, and ``gx.<name>`` takes no ``*args``/``**kwargs``) is rebuilt as
    ``gx.inject_hyperparams(gx.<name>, static_args=...)(**args)``, its callable arguments
    (masks, labels, schedules, predicates) static, so only numbers and 0-dim tensors become
    state; a plain chain (``parts`` but no ``name``) is rebuilt part by part; anything else
    (``stateless``, hand-written pairs) is kept as is.
    """
    name, args = getattr(tx, "name", None), getattr(tx, "args", None)
    factory = getattr(gx, name, None) if name else None
    if factory is not None and args is not None and _injectable(factory):
        static = [k for k, v in args.items() if callable(v) and not isinstance(v, torch.Tensor)]
        return gx.inject_hyperparams(factory, static_args=static)(**args), 1
    parts = getattr(tx, "parts", None)
    if parts is not None and name is None:
        rebuilt = [_with_injected_hyperparams(part) for part in parts]
        return gx.chain(*(part for part, _ in rebuilt)), sum(n for _, n in rebuilt)
    return tx, 0


INJECT_SKIP = {"inject_hyperparams": "already an inject_hyperparams transform, whose factory is not a public name "
                                    "(tested against the plain transform in test_wrappers.py)",
               "wrap_optimizer": "its hyperparameters are the wrapped optimizer's **kwargs, which inject_hyperparams "
                                 "does not see (a torch optimizer takes a tensor lr itself)"}


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_inject_hyperparams_gives_the_same_numbers(entry):
    """Wrapping an entry's parts in inject_hyperparams (rule in _with_injected_hyperparams)
    leaves its updates unchanged over a few steps, float64."""
    if entry.name in INJECT_SKIP:
        pytest.skip(INJECT_SKIP[entry.name])
    tx = entry.build()
    injected, rebuilt = _with_injected_hyperparams(tx)
    assert rebuilt > 0, "nothing in this entry was built by a public @transform constructor"
    params = example_params(torch.float64)
    state, injected_state = tx.init(params), injected.init(params)
    p1 = p2 = params
    for step in range(4):
        grads = _grads(p1, seed=step)
        u1, state = tx.update(grads, state, p1, **extra_args(entry, p1))
        u2, injected_state = injected.update({k: g.clone() for k, g in grads.items()}, injected_state, p2,
                                             **extra_args(entry, p2))
        for k in params:
            torch.testing.assert_close(u2[k], u1[k], rtol=1e-12, atol=1e-14)
        p1, p2 = gx.apply_updates(p1, u1), gx.apply_updates(p2, u2)


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_multi_steps_zero_then_inner_on_mean(entry):
    """multi_steps(tx, 3): zero updates on mini-steps 1 and 2, then tx's first update on the
    mean of the three gradients."""
    k = 3
    tx = gx.multi_steps(entry.build(), every_k_schedule=k)
    params = example_params(torch.float64)
    state = tx.init(params)
    grads = [_grads(params, seed=i) for i in range(k)]
    for i, g in enumerate(grads):
        updates, state = tx.update(g, state, params, **extra_args(entry, params))
        if i < k - 1:
            for key, u in updates.items():
                assert torch.count_nonzero(u) == 0, f"mini-step {i + 1} of {k} updated {key}"
    inner = entry.build()
    mean = {key: sum(g[key] for g in grads) / k for key in params}
    want, _ = inner.update(mean, inner.init(params), params, **extra_args(entry, params))
    for key in params:
        torch.testing.assert_close(updates[key], want[key], rtol=1e-12, atol=1e-14)


# --- hyperparameters as requires_grad 0-dim tensors -------------------------------------------


def _hyperparameter_sites(tx) -> list[tuple[str, float, Callable]]:
    """``(label, value, rebuild)`` for every float argument of every part of ``tx`` built by
    a public ``@transform`` constructor (the rule of :func:`_with_injected_hyperparams`,
    descending into arguments that are transforms or dicts of them); ``rebuild(v)`` builds the
    whole of ``tx`` again with that one argument set to ``v``."""
    out = []
    name, args = getattr(tx, "name", None), getattr(tx, "args", None)
    factory = getattr(gx, name, None) if name else None
    if factory is not None and args is not None and _injectable(factory):
        for key, value in args.items():
            if isinstance(value, float):
                out.append((f"{name}.{key}", value, lambda v, key=key: factory(**{**args, key: v})))
            elif isinstance(value, gx.GradientTransformation):
                out += [(f"{name}.{key}.{label}", v0, lambda v, fn=fn, key=key: factory(**{**args, key: fn(v)}))
                        for label, v0, fn in _hyperparameter_sites(value)]
            elif isinstance(value, dict) and value and all(isinstance(x, gx.GradientTransformation)
                                                           for x in value.values()):
                for label_key, inner in value.items():
                    out += [(f"{name}.{key}[{label_key}].{label}", v0,
                             lambda v, fn=fn, key=key, lk=label_key: factory(**{**args, key: {**args[key], lk: fn(v)}}))
                            for label, v0, fn in _hyperparameter_sites(inner)]
        return out
    parts = getattr(tx, "parts", None)
    if parts is not None and name is None:
        for i, part in enumerate(parts):
            out += [(label, v0, lambda v, fn=fn, i=i: gx.chain(*parts[:i], fn(v), *parts[i + 1:]))
                    for label, v0, fn in _hyperparameter_sites(part)]
    return out


def _traced(value: float) -> torch.Tensor:
    return torch.tensor(value, dtype=torch.float64, requires_grad=True)


# Hyperparameters that select between formulas rather than enter one: no gradient reaches them.
NOT_DIFFERENTIABLE = {
    "scale_by_radam.threshold": "compared with rho_t: switches rectification on or off",
    "radam.threshold": "compared with rho_t: switches rectification on or off",
    "scale_by_lion.smooth_beta": "read only with mode='smooth' (the entry uses mode='hard')",
    "reduce_on_plateau.rtol": "compared with the loss: decides whether it improved",
    "reduce_on_plateau.atol": "compared with the loss: decides whether it improved",
    "scale_by_sm3.b2": "b2 = 1 selects the paper's rule, a constant",
    "scale_by_conjugate_gradient.restart_threshold": "compared with |g_k.g_{k-1}| / |g_k|^2: restarts or not",
    "scale_by_trust_region.eta": "compared with rho: accepts the step or not",
    "scale_by_trust_region.shrink_below": "compared with rho: shrinks the radius or not",
    "scale_by_trust_region.expand_above": "compared with rho: expands the radius or not",
    "scale_by_psgd_kron.balance_prob": "compared with a uniform draw: switches balancing on or off",
    "psgd_kron.balance_prob": "compared with a uniform draw: switches balancing on or off",
    **{f"{name}.update_prob": "compared with a uniform draw: switches the preconditioner's fit on or off"
       for name in ("scale_by_psgd_dense", "psgd_dense", "scale_by_psgd_lra", "psgd_lra")},
}

# finite-difference steps read only with hvp_method="fd_*" (the entries take the given hvp_fn)
NOT_DIFFERENTIABLE.update({f"{name}.h": "finite-difference step: read only with hvp_method='fd_forward' or 'fd_central'"
                           for name in ("hutchinson_estimator_diag_hessian", "scale_by_sophia_h", "sophia_h",
                                        "scale_by_adahessian", "adahessian", "matrix_momentum")})
NOT_DIFFERENTIABLE.update({f"{name}.p": "selects the dual norm: p = 2 takes the closed form rho T^2 g / ||T g||"
                           for name in ("sam_gradient", "asam_gradient")})
NOT_DIFFERENTIABLE["sam_gradient.eta"] = "ASAM's offset: read only with adaptive=True (the entry is plain SAM)"


def _not_differentiable(entry, label: str) -> bool:
    """Whether ``label`` selects a formula (``NOT_DIFFERENTIABLE``) or belongs to a transform
    the entry lists in ``skip["numbers_only"]`` (one that reads its hyperparameters as numbers,
    as a line search does in its comparisons)."""
    return label in NOT_DIFFERENTIABLE or bool(set(label.split(".")) & set(entry.skip.get("numbers_only", ())))


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_requires_grad_hyperparameters_give_the_float_numbers(entry):
    """Every float hyperparameter of the entry, given as a float64 0-dim tensor with
    ``requires_grad``, gives the updates of the float over three steps, and a gradient reaches
    it from the updates and states (finite; none only where it selects a formula)."""
    sites = _hyperparameter_sites(entry.build())
    if not sites:
        pytest.skip("no float hyperparameter in a public constructor's arguments")
    for label, value, rebuild in sites:
        hp = _traced(value)
        tx, ref = rebuild(hp), rebuild(value)
        params = example_params(torch.float64)
        state, ref_state = tx.init(params), ref.init(params)
        outputs = []
        for step in range(3):
            grads = _grads(params, seed=step)
            updates, state = tx.update(grads, state, params, **extra_args(entry, params))
            want, ref_state = ref.update(grads, ref_state, params, **extra_args(entry, params))
            for k in params:
                torch.testing.assert_close(updates[k].detach(), want[k], rtol=1e-12, atol=1e-14,
                                           msg=lambda m, label=label: f"{label}: {m}")
            outputs += [x for x in gx.tree_leaves(updates) + gx.tree_leaves(state)
                        if isinstance(x, torch.Tensor) and x.requires_grad and x.is_floating_point()]
            params = gx.apply_updates(params, want)
        if _not_differentiable(entry, label):
            continue
        assert outputs, f"{label}: no update or state depends on it through autograd"
        (grad,) = torch.autograd.grad(sum(x.sum() for x in outputs), hp, allow_unused=True)
        assert grad is not None and torch.isfinite(grad), f"{label}: gradient {grad}"


# the quasi-Newton skip thresholds (a curvature test) only select whether the matrix is updated
NOT_DIFFERENTIABLE.update({f"{name}.eps": "compared in the curvature test: selects whether to update the matrix"
                           for name in ("scale_by_bfgs", "scale_by_dfp", "scale_by_sr1", "scale_by_broyden_good",
                                        "scale_by_broyden_bad", "scale_by_greenstadt1", "scale_by_greenstadt2",
                                        "scale_by_mccormick", "scale_by_pearson", "scale_by_icum", "scale_by_hoshino",
                                        "scale_by_lsr1", "scale_by_ssvm", "scale_by_thomas",
                                        "scale_by_projected_newton_raphson", "scale_by_new_ssm",
                                        "scale_by_diagonal_bfgs", "scale_by_diagonal_sr1")})
# the diagonal quasi-Newton truncation bounds only select which elements are replaced by 1
NOT_DIFFERENTIABLE.update({f"{name}.{b}": "compared with the diagonal: selects which elements are truncated to 1"
                           for name in ("scale_by_dnrtr", "scale_by_new_dqn") for b in ("lb", "ub")})


# Entries that read params (or the loss) detached, as documented: their step size is a
# constant of autograd, so a hypergradient is checked over one step (params independent of it).
READS_PARAMS_DETACHED = {"dog", "scale_by_dog", "scale_by_distance_over_gradients", "scale_by_polyak", "polyak_sgd",
                         "scale_by_barzilai_borwein", "scale_by_bold_driver", "scale_by_trust_region", "lbfgs_hessian",
                         "scale_by_adaptive_heavy_ball", "momo", "momo_adam", "scale_by_new_ssm"}
AT_A_KINK = {
    "adafactor.clipping_threshold": "Adafactor's normalised step has rms ~1 = the threshold: clipping's kink",
    "adafactor.eps": "moves the step's rms across the clipping threshold (1.0): clipping's kink",
    "orthograd.eps": "a 0-dim leaf's update is parallel to its weight and removed; eps + delta tilts it off that",
}


def _weighted_updates(entry, tx, steps: int) -> torch.Tensor:
    """``sum_t <u_t, r_t>`` over ``steps`` updates, the params following them (with autograd)."""
    params = example_params(torch.float64)
    state = tx.init(params)
    total = torch.zeros((), dtype=torch.float64)
    for step in range(steps):
        grads, weights = _grads(params, seed=step), _grads(params, seed=100 + step)
        updates, state = tx.update(grads, state, params, **extra_args(entry, params))
        total = total + sum((updates[k] * weights[k]).sum() for k in params)
        params = gx.apply_updates(params, updates)
    return total


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_hypergradients_match_finite_differences(entry):
    """For every float hyperparameter h of the entry: d/dh of ``sum_t <u_t, r_t>`` over three
    steps (params following the updates) by autograd equals a finite difference in float64
    (central; forward, second order, where h - delta would leave h's range)."""
    sites = [s for s in _hyperparameter_sites(entry.build()) if not _not_differentiable(entry, s[0])]
    if not sites:
        pytest.skip("no differentiable float hyperparameter in a public constructor's arguments")
    steps = 1 if entry.name in READS_PARAMS_DETACHED else 3
    for label, value, rebuild in sites:
        if label in AT_A_KINK:
            continue
        hp = _traced(value)
        total = _weighted_updates(entry, rebuild(hp), steps)
        # a hyperparameter of the state only (ASGD's t0 starts the average) leaves updates alone
        grad = torch.autograd.grad(total, hp)[0] if total.requires_grad else torch.zeros(())

        def at(v, rebuild=rebuild):
            with torch.no_grad():
                return float(_weighted_updates(entry, rebuild(torch.tensor(v, dtype=torch.float64)), steps))

        delta = 1e-6 * max(abs(value), 1e-2)
        if value - delta > 0:
            fd = (at(value + delta) - at(value - delta)) / (2 * delta)
        else:  # a non-negative hyperparameter at (or near) 0
            delta = 1e-9
            fd = (-3 * at(value) + 4 * at(value + delta) - at(value + 2 * delta)) / (2 * delta)
        assert abs(float(grad) - fd) <= 1e-4 * abs(fd) + 1e-6 * max(1.0, abs(fd)), \
            f"{label}: autograd {float(grad)!r}, finite difference {fd!r}"


# --- complex parameters ------------------------------------------------------------------------
# torch.optim steps a complex parameter as its torch.view_as_real view (real and imaginary
# parts as independent reals); every entry does the same or refuses complex params at init.

REFUSES_COMPLEX = {"scale_by_factored_rms", "adafactor", "scale_by_sm3", "sm3", "scale_by_muon", "muon",
                   "scale_by_trust_region", "lbfgs_hessian", "scale_by_soap", "soap", "scale_by_shampoo", "shampoo",
                   "scale_by_full_matrix_adagrad", "scale_by_ggt", "scale_by_psgd_kron", "in_eigenbasis",
                   "psgd_kron", "scale_by_psgd_dense", "psgd_dense", "scale_by_psgd_lra", "psgd_lra"}
# Hessian diagonals and curvature of a real loss; ASAM's |x|
REFUSES_COMPLEX |= {"hutchinson_estimator_diag_hessian", "scale_by_sophia", "sophia", "scale_by_sophia_h", "sophia_h",
                    "scale_by_adahessian", "adahessian", "matrix_momentum", "asam_gradient"}
# Entries whose masks or units read a leaf's shape, which the real view changes (a vector
# becomes a matrix): checked on a tree of leaves where both shapes give the same decisions.
COMPLEX_READS_SHAPE = {"masked", "partition", "multi_transform", "freeze", "adaptive_grad_clip"}
# centralize subtracts the mean over the complex tensor's dims 1..: its real and imaginary
# parts are each centralized, as two tensors of the complex one's shape.
COMPLEX_AS_TWO_PARTS = {"centralize"}


def _complex_tree(seed: int, entry) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    shapes = {"w": (4, 3), "c": (2, 3, 2)} if entry.name in COMPLEX_READS_SHAPE else {"w": (4, 3), "b": (3,), "s": ()}
    return {k: torch.randn(shape, generator=gen, dtype=torch.complex128) for k, shape in shapes.items()}


def _as_real_tree(tree, entry):
    if entry.name in COMPLEX_AS_TWO_PARTS:
        return {f"{k}.{part}": getattr(x, part) for k, x in tree.items() for part in ("real", "imag")}
    return {k: torch.view_as_real(x) for k, x in tree.items()}


def _from_real_tree(tree, like, entry):
    if entry.name in COMPLEX_AS_TWO_PARTS:
        return {k: torch.complex(tree[f"{k}.real"], tree[f"{k}.imag"]) for k in like}
    return {k: torch.view_as_complex(tree[k].contiguous()) for k in like}


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_complex_params_step_as_their_real_views(entry):
    """On complex128 params every entry gives complex updates equal to its updates on the
    params' real views (torch.optim's rule), pure and in place, over three steps; or refuses
    complex params at init with a ValueError naming itself and torch.view_as_real."""
    if "complex" in entry.skip:
        pytest.skip(entry.skip["complex"])
    params = _complex_tree(1, entry)
    if entry.name in REFUSES_COMPLEX:
        with pytest.raises(ValueError, match="does not support complex parameters.*torch.view_as_real"):
            entry.build().init(params)
        return
    tx, ref = entry.build(), entry.build()
    state, in_state, ref_state = tx.init(params), tx.init(params), ref.init(_as_real_tree(params, entry))
    for step in range(3):
        grads = _complex_tree(10 + step, entry)
        extra = extra_args(entry, _as_real_tree(params, entry))  # the loss of the real values
        updates, state = tx.update(grads, state, params, **extra)
        in_updates, in_state = tx.update({k: g.clone() for k, g in grads.items()}, in_state, params, inplace=True,
                                         **extra)
        want, ref_state = ref.update(_as_real_tree(grads, entry), ref_state, _as_real_tree(params, entry), **extra)
        want = _from_real_tree(want, params, entry)
        for k in params:
            assert updates[k].dtype == torch.complex128, f"step {step}, {k}: {updates[k].dtype}"
            torch.testing.assert_close(updates[k], want[k], rtol=1e-10, atol=1e-13,
                                       msg=lambda m, k=k, step=step: f"step {step}, {k}: {m}")
            torch.testing.assert_close(in_updates[k], updates[k], rtol=1e-12, atol=1e-14,
                                       msg=lambda m, k=k, step=step: f"in place, step {step}, {k}: {m}")
        params = gx.apply_updates(params, updates)


# --- 0-size leaves ------------------------------------------------------------------------------

# the non-empty leaves first: add_noise draws each leaf's noise by its position
ZERO_SIZE = {"w": (4, 3), "s": (), "e": (0,), "rows": (0, 3), "cols": (3, 0), "mid": (2, 0, 3)}


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
def test_zero_size_leaves_are_accepted(entry):
    """A tree with 0-size leaves (a zero-size axis in any position) steps three times, pure and
    in place: updates keep their shapes and are finite, the state keeps its structure, and the
    other leaves' updates are those of the tree without the empty ones."""
    gen = torch.Generator().manual_seed(0)
    params = {k: torch.randn(shape, generator=gen, dtype=torch.float64) for k, shape in ZERO_SIZE.items()}
    full = [k for k in params if params[k].numel()]
    for inplace in (False, True):
        tx, ref = entry.build(), entry.build()
        p, p_ref = dict(params), {k: params[k] for k in full}
        state, ref_state = tx.init(p), ref.init(p_ref)
        sig = _signature(state)
        for step in range(3):
            grads = _grads(p, seed=step)
            updates, state = tx.update({k: g.clone() for k, g in grads.items()}, state, p, inplace=inplace,
                                       **extra_args(entry, p))
            want, ref_state = ref.update({k: grads[k] for k in full}, ref_state, p_ref, **extra_args(entry, p_ref))
            assert _signature(state) == sig, f"state changed structure at step {step}"
            for k, g in grads.items():
                assert updates[k].shape == g.shape and torch.isfinite(updates[k]).all(), k
            for k in full:
                torch.testing.assert_close(updates[k], want[k], rtol=1e-12, atol=1e-14)
            p, p_ref = gx.apply_updates(p, updates), gx.apply_updates(p_ref, want)


@pytest.mark.parametrize("entry", ENTRIES, ids=IDS)
@pytest.mark.parametrize("fast", [True, False], ids=["fast", "generic"])
def test_strided_params_and_grads_step_as_contiguous_ones(entry, fast):
    """Non-dense parameters (a column slice of a larger tensor) and gradients with other
    strides (transposed) give, on every adapter path, the parameters a contiguous run
    gives, and nothing outside the parameters is written."""
    if entry.needs:
        pytest.skip("needs a closure; covered in the adapter tests")
    gen = torch.Generator().manual_seed(5)
    base = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    outside = base[:, 1::2].clone()
    strided = [torch.nn.Parameter(base[:, ::2]), torch.nn.Parameter(torch.randn(3, 5, dtype=torch.float64).t())]
    dense = [torch.nn.Parameter(p.detach().clone().contiguous()) for p in strided]
    runs = [(strided, gx.Optimizer(strided, entry.build(), fast=fast, check_descent=False)),
            (dense, gx.Optimizer(dense, entry.build(), fast=fast, check_descent=False))]
    for step in range(3):
        gen = torch.Generator().manual_seed(50 + step)
        grads = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in dense]
        for (ps, opt), transpose in zip(runs, (True, False)):
            for p, g in zip(ps, grads):
                p.grad = g.t().contiguous().t() if transpose else g.clone()  # same values, other strides
            opt.step()
    for a, b in zip(strided, dense):
        torch.testing.assert_close(a.detach(), b.detach(), rtol=1e-12, atol=1e-14)
    assert torch.equal(base[:, 1::2], outside), "memory outside a parameter was written"
