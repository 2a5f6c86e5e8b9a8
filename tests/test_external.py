"""gx.wrap_optimizer: a torch optimizer as a chain member, against the optimizer run directly."""

from __future__ import annotations

import pytest
import torch
from conftest import MLPProblem, assert_resume_bit_exact

import gradtx as gx


def _direct(optimizer, problem: MLPProblem, steps: int, *, clip: float | None = None, scheduler=None):
    """``optimizer(leaf params)`` stepped on the problem's gradients (clipped first when asked)."""
    leaves = problem.leaf_params()
    opt = optimizer(list(leaves.values()))
    sched = scheduler(opt) if scheduler else None
    for step in range(steps):
        opt.zero_grad()
        problem.loss(leaves, step).backward()
        if clip is not None:  # optax's rule (clip_grad_norm_ adds 1e-6 to the norm)
            norm = torch.sqrt(sum((v.grad ** 2).sum() for v in leaves.values()))
            for v in leaves.values():
                v.grad.mul_(torch.clamp(clip / norm, max=1.0))
        opt.step()
        if sched:
            sched.step()
    return {k: v.detach() for k, v in leaves.items()}


def _adapter(tx, problem: MLPProblem, steps: int, *, scheduler=None):
    leaves = problem.leaf_params()
    opt = gx.Optimizer(list(leaves.values()), tx)
    sched = scheduler(opt) if scheduler else None
    for step in range(steps):
        opt.zero_grad()
        problem.loss(leaves, step).backward()
        opt.step()
        if sched:
            sched.step()
    return {k: v.detach() for k, v in leaves.items()}


def _functional(tx, problem: MLPProblem, steps: int):
    params = dict(problem.params0)
    state = tx.init(params)
    for step in range(steps):
        updates, state = tx.update(problem.grads(params, step), state, params)
        params = gx.apply_updates(params, updates)
    return params


def _assert_same(ours, theirs, **tol):
    for k in theirs:
        torch.testing.assert_close(ours[k], theirs[k], **(tol or dict(rtol=1e-12, atol=1e-14)), msg=k)


# Adagrad and Rprop make their first state from hyperparameters (initial accumulator, initial
# step sizes), so they check that the member lets the optimizer start its own state.
@pytest.mark.parametrize("cls, kwargs", [
    (torch.optim.Adam, dict(lr=0.01, amsgrad=True)),
    (torch.optim.AdamW, dict(lr=0.01, weight_decay=0.1)),
    (torch.optim.Adagrad, dict(lr=0.1, initial_accumulator_value=0.5)),
    (torch.optim.Rprop, dict(lr=0.01)),
    (torch.optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True)),
], ids=["adam", "adamw", "adagrad", "rprop", "sgd"])
def test_functional_member_takes_the_optimizers_steps(cls, kwargs):
    problem = MLPProblem()
    theirs = _direct(lambda p: cls(p, **kwargs), problem, 12)
    _assert_same(_functional(gx.wrap_optimizer(cls, **kwargs), problem, 12), theirs)


def test_after_clipping_in_a_chain_under_the_adapter():
    problem = MLPProblem()
    theirs = _direct(lambda p: torch.optim.Adam(p, lr=0.01), problem, 10, clip=0.1)
    tx = gx.chain(gx.clip_by_global_norm(0.1), gx.wrap_optimizer(torch.optim.Adam, lr=0.01))
    _assert_same(_adapter(tx, problem, 10), theirs, rtol=1e-12, atol=1e-14)


def test_checkpoint_resumes_bit_identically_with_a_group_step_count():
    """pytorch_optimizer's LaProp counts steps in its param group: the count goes through a
    weights_only checkpoint with the per-parameter moments."""
    laprop = pytest.importorskip("pytorch_optimizer").LaProp
    problem = MLPProblem()
    theirs = _direct(lambda p: laprop(p, lr=0.01), problem, 10)
    tx = gx.wrap_optimizer(laprop, lr=0.01)
    assert set(tx.init(dict(problem.params0)).group) == {"step"}
    # resumed after 4 steps from a weights_only checkpoint in a fresh optimizer
    ours = assert_resume_bit_exact(lambda leaves: gx.Optimizer(list(leaves.values()), tx), problem.leaf_params(),
                                   problem.loss, steps=10, split=4)
    _assert_same(ours[-1], theirs)


def test_scheduler_moves_the_wrapped_optimizers_lr():
    """The wrapped optimizer's float hyperparameters are param_groups keys: StepLR on
    gx.Optimizer reaches torch.optim.Adam's lr as it does on Adam itself."""
    problem = MLPProblem()
    step_lr = lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)  # noqa: E731
    theirs = _direct(lambda p: torch.optim.Adam(p, lr=0.02), problem, 9, scheduler=step_lr)
    ours = _adapter(gx.wrap_optimizer(torch.optim.Adam, lr=0.02), problem, 9, scheduler=step_lr)
    _assert_same(ours, theirs, rtol=1e-12, atol=1e-14)


class _PolyakStep(torch.optim.Optimizer):
    """x <- x - f(x) / |g|^2 g, the loss from the closure: an optimizer that needs one."""

    def __init__(self, params):
        super().__init__(params, {})

    def step(self, closure):
        loss = closure()
        params = self.param_groups[0]["params"]
        norm2 = sum((p.grad ** 2).sum() for p in params)
        for p in params:
            p.data.add_(p.grad, alpha=-(loss / norm2).item())
        return loss


def test_closure_gives_the_optimizer_the_loss_and_gradient_at_its_copies():
    target = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)

    def loss_fn(params):
        return ((params["x"] - target) ** 2).sum() + 0.25

    params = {"x": torch.zeros(3, dtype=torch.float64)}
    tx = gx.wrap_optimizer(_PolyakStep, closure=True)
    extra = gx.evaluation_args(loss_fn, params)
    updates, _ = tx.update(extra["grad"], tx.init(params), params, **extra)
    g = 2 * (params["x"] - target)
    expected = -loss_fn(params) / (g ** 2).sum() * g
    torch.testing.assert_close(updates["x"], expected, rtol=1e-14, atol=0)


def test_closure_member_refuses_a_step_without_evaluations():
    params = {"x": torch.zeros(3)}
    tx = gx.wrap_optimizer(_PolyakStep, closure=True)
    with pytest.raises(ValueError, match="value_and_grad_fn"):
        tx.update({"x": torch.ones(3)}, tx.init(params), params)


def test_refusals_name_what_is_wrong():
    with pytest.raises(ValueError, match="optimizer_class must be a torch.optim.Optimizer subclass"):
        gx.wrap_optimizer(torch.optim.Adam(torch.nn.Linear(1, 1).parameters()))
    with pytest.raises(ValueError, match=r"Adam\(params, lr=-1.0\) failed"):
        gx.wrap_optimizer(torch.optim.Adam, lr=-1.0)
    with pytest.raises(ValueError, match="betaz"):
        gx.wrap_optimizer(torch.optim.Adam, betaz=(0.9, 0.99))
    # LBFGS keeps lists of past steps: not a fixed-shape state
    with pytest.raises(ValueError, match="LBFGS keeps list"):
        gx.wrap_optimizer(torch.optim.LBFGS, closure=True).init({"x": torch.zeros(2)})
    tx = gx.wrap_optimizer(torch.optim.Adam)
    with pytest.raises(ValueError, match="needs params"):
        tx.update({"x": torch.ones(2)}, tx.init({"x": torch.zeros(2)}))


def test_update_leaves_its_inputs_untouched():
    params = {"x": torch.linspace(-1, 1, 5, dtype=torch.float64)}
    grads = {"x": torch.full((5,), 0.3, dtype=torch.float64)}
    tx = gx.wrap_optimizer(torch.optim.Adam, lr=0.1)
    state = tx.init(params)
    _, state = tx.update(grads, state, params)
    before = [t.clone() for t in (params["x"], grads["x"], *gx.tree_leaves(state))]
    tx.update(grads, state, params)
    after = (params["x"], grads["x"], *gx.tree_leaves(state))
    assert all(torch.equal(a, b) for a, b in zip(before, after))


# --- allocations: one copy of the params, the update handed over without a copy in place -------

N = 1000


def _fresh_allocations(tx, inplace=False):
    from test_pure_reuse import CountFresh

    gen = torch.Generator().manual_seed(0)
    params, grads = [torch.randn(N, generator=gen)], [torch.randn(N, generator=gen)]
    state = tx.init(params)
    with torch.no_grad():
        _, state = tx.update(grads, state, params)  # the optimizer makes its state outside the count
        with CountFresh(N) as mode:
            tx.update(grads, state, params, inplace=inplace)
    return mode.fresh


def test_only_the_params_copy_is_allocated():
    """SGD with momentum steps its buffer and the copy in place, and the update is computed in
    the copy: in place (as gx.Optimizer calls it) the member allocates only the copy of the
    params; on the pure path also the update's and the state's copies, which the caller owns."""
    sgd = lambda: gx.wrap_optimizer(torch.optim.SGD, lr=0.1, momentum=0.9, foreach=False)  # noqa: E731
    assert len(_fresh_allocations(sgd(), inplace=True)) == 1
    assert len(_fresh_allocations(gx.chain(gx.scale(0.5), sgd(), gx.scale_by_lr(1.0)), inplace=True)) == 1
    assert len(_fresh_allocations(sgd())) == 3  # the copy, the update's copy, the momentum's copy


class _KeepsGrad(torch.optim.Optimizer):
    """Keeps p.grad itself (not a copy) in its state and writes into it: what a careless
    optimizer may do."""

    def __init__(self, params, lr=0.1):
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                p.grad.mul_(2.0)
                self.state[p]["last"] = p.grad
                p.add_(p.grad, alpha=-group["lr"])


def test_state_never_holds_the_update_it_was_given():
    params = {"x": torch.linspace(-1, 1, N, dtype=torch.float64)}
    grads = {"x": torch.full((N,), 0.5, dtype=torch.float64)}
    tx = gx.chain(gx.scale(1.0), gx.wrap_optimizer(_KeepsGrad, lr=0.1), gx.scale(3.0))
    state = tx.init(params)
    for _ in range(2):
        buffer = grads["x"].clone()
        updates, state = tx.update({"x": buffer}, state, params, inplace=True)
        buffer.fill_(99.0)  # the caller reuses its buffer (supports_inplace's promise 3)
        kept = state[1].slots["last"]["x"]
        assert kept.untyped_storage().data_ptr() != updates["x"].untyped_storage().data_ptr()
        torch.testing.assert_close(kept, torch.full((N,), 1.0, dtype=torch.float64), rtol=0, atol=0)
        torch.testing.assert_close(updates["x"], torch.full((N,), -0.3, dtype=torch.float64), rtol=0, atol=1e-15)
    pure, _ = tx.update(grads, state, params)  # the pure path writes into nothing it is given
    assert torch.equal(grads["x"], torch.full((N,), 0.5, dtype=torch.float64))
    torch.testing.assert_close(pure["x"], updates["x"], rtol=0, atol=0)
