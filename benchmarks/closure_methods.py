"""Methods that evaluate the loss again: evaluations and time to a gradient norm of 1e-8.

For each problem (float64) and method: the function and gradient evaluations, iterations
and wall time until ``||grad|| <= tol`` (or an iteration/time budget), side by side with
``scipy.optimize.minimize`` and ``torch.optim.LBFGS`` in the same process, one run each.
gradtx runs functionally (``tx.update`` with ``value_fn``/``value_and_grad_fn``), reusing
the loss and gradient a line search keeps in its state where it keeps them
(``gx.value_and_grad_from_state``), as optax's loop does; otherwise each iteration
evaluates once more at the new point.

The zeroth-order table runs issue 12's gradient-free methods (the zeroth-order Newton chain
``chain(gaussian_smoothing, newton_cg, backtracking)``, SPSA with backtracking, MeZO) given
``value_fn`` only, to a gradient norm of ``--zo-tol``, counting every loss evaluation.

The last table is the per-iteration time and overhead (outside the closure) of
``gx.Optimizer(model, gx.lbfgs())`` against ``torch.optim.LBFGS(line_search_fn="strong_wolfe")``
on a model with about a million parameters, the same closure (:func:`overhead`).

Run: ``PYTHONPATH=src python benchmarks/closure_methods.py [--quick] [--problem rosenbrock-10]
[--only lbfgs scipy torch] [--tables-only | --overhead-only]``.
"""

from __future__ import annotations

import argparse
import inspect
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

import gradtx as gx

torch.set_default_dtype(torch.float64)


# --- problems ------------------------------------------------------------------------------


@dataclass
class Problem:
    name: str
    loss: Callable[[torch.Tensor], torch.Tensor]
    x0: torch.Tensor
    residuals: Callable[[torch.Tensor], torch.Tensor] | None = None  # loss = ||r||^2 / 2, for Gauss-Newton


def rosenbrock(n: int) -> Problem:
    def loss(x):
        return (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum()

    def residuals(x):
        return 2 ** 0.5 * torch.cat([10 * (x[1:] - x[:-1] ** 2), 1 - x[:-1]])

    x0 = torch.tensor([-1.2 if i % 2 == 0 else 1.0 for i in range(n)])
    return Problem(f"rosenbrock-{n}", loss, x0, residuals)


def ill_conditioned_quadratic(n: int = 50, condition: float = 1e4) -> Problem:
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen))
    a = q @ torch.diag(torch.logspace(0, math.log10(condition), n)) @ q.T
    b = torch.randn(n, generator=gen)
    return Problem(f"quadratic-{n} (cond {condition:.0e})", lambda x: 0.5 * x @ a @ x - b @ x, torch.zeros(n))


def logistic_regression(samples: int = 500, features: int = 20) -> Problem:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(samples, features, generator=gen)
    w_true = torch.randn(features, generator=gen)
    y = (torch.rand(samples, generator=gen) < torch.sigmoid(x @ w_true)).double()

    def loss(w):
        return torch.nn.functional.binary_cross_entropy_with_logits(x @ w, y) + 1e-3 * (w ** 2).sum()

    return Problem(f"logistic-{samples}x{features}", loss, torch.zeros(features))


def mlp_regression(samples: int = 100, inputs: int = 5, hidden: int = 10, weight_decay: float = 1e-2) -> Problem:
    """A small tanh MLP (``inputs``-``hidden``-1) regressing a noisy sine of a projection, its
    weights one vector, with an L2 penalty: non-convex, converging to a local minimiser."""
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(samples, inputs, generator=gen)
    y = torch.sin(x @ torch.randn(inputs, generator=gen)).unsqueeze(-1) + 0.1 * torch.randn(samples, 1, generator=gen)
    shapes = [(hidden, inputs), (hidden,), (1, hidden), (1,)]
    sizes = [math.prod(shape) for shape in shapes]

    def loss(w):
        w1, b1, w2, b2 = (part.reshape(shape) for part, shape in zip(torch.split(w, sizes), shapes))
        prediction = torch.tanh(x @ w1.T + b1) @ w2.T + b2
        return 0.5 * ((prediction - y) ** 2).mean() + weight_decay * (w @ w)

    return Problem(f"mlp-{inputs}-{hidden}-1 ({samples} samples)", loss, 0.5 * torch.randn(sum(sizes), generator=gen))


PROBLEMS = [rosenbrock(2), rosenbrock(10), rosenbrock(100), ill_conditioned_quadratic(), logistic_regression(),
            mlp_regression()]


# --- counting evaluations ----------------------------------------------------------------


@dataclass
class Counted:
    """The problem's loss with evaluation counters."""

    problem: Problem
    f: int = 0
    g: int = 0
    h: int = 0  # Hessian-vector products
    trace: list[tuple[int, float]] = field(default_factory=list)  # (f count, grad norm) at each gradient

    def first_below(self, target: float) -> int | None:
        """The evaluations made when the gradient norm first fell to ``target`` (None: never)."""
        return next((f for f, norm in self.trace if norm <= target), None)

    def hvp(self, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        self.h += 1
        return torch.func.jvp(torch.func.grad(self.problem.loss), (x,), (v,))[1]

    def value(self, x: torch.Tensor) -> float:
        self.f += 1
        with torch.no_grad():
            return float(self.problem.loss(x))

    def value_and_grad(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.f += 1
        self.g += 1
        x = x.detach().requires_grad_(True)
        value = self.problem.loss(x)
        (grad,) = torch.autograd.grad(value, x)
        self.trace.append((self.f, float(grad.norm())))
        return value.detach(), grad


@dataclass
class Result:
    method: str
    problem: str
    iterations: int
    f: int
    g: int
    final: float
    grad_norm: float
    seconds: float
    hvps: int = 0
    counted: Counted | None = None


def run_gradtx(name: str, tx: gx.GradientTransformation, problem: Problem, tol: float, max_iter: int,
               budget: float) -> Result:
    counted = Counted(problem)
    params = {"x": problem.x0.clone()}
    state = tx.init(params)

    def value_fn(p):
        return torch.tensor(counted.value(p["x"]))

    def value_and_grad_fn(p):
        value, grad = counted.value_and_grad(p["x"])
        return value, {"x": grad}

    def hvp_fn(p, v):
        return {"x": counted.hvp(p["x"], v["x"])}

    curvature = {"hvp_fn": hvp_fn}
    if problem.residuals is not None:
        curvature["residual_fn"] = lambda p: problem.residuals(p["x"])

    try:  # (probed with a function that counts nothing: before the first step it is called)
        gx.value_and_grad_from_state(lambda p: (None, None))(params, state)
        from_state = gx.value_and_grad_from_state(value_and_grad_fn)
    except ValueError:
        from_state = None  # no line search that keeps the point's value and gradient
    start = time.perf_counter()
    value, grad = value_and_grad_fn(params)
    iterations = 0
    while float(grad["x"].norm()) > tol and iterations < max_iter and time.perf_counter() - start < budget:
        updates, state = tx.update(grad, state, params, value=value, grad=grad, value_fn=value_fn,
                                   value_and_grad_fn=value_and_grad_fn, **curvature)
        params = gx.apply_updates(params, updates)
        value, grad = from_state(params, state) if from_state is not None else value_and_grad_fn(params)
        iterations += 1
    return Result(name, problem.name, iterations, counted.f, counted.g, float(value), float(grad["x"].norm()),
                  time.perf_counter() - start, counted.h, counted)


def run_scipy(method: str, problem: Problem, tol: float, max_iter: int) -> Result:
    import scipy.optimize

    counted = Counted(problem)

    def fun(x):
        value, grad = counted.value_and_grad(torch.from_numpy(x))
        return float(value), grad.numpy()

    def hessp(x, v):
        return counted.hvp(torch.from_numpy(x), torch.from_numpy(v)).numpy()

    options = {"maxiter": max_iter, "gtol": tol}
    extra = {}
    if method == "L-BFGS-B":
        options = {"maxiter": max_iter, "gtol": tol, "ftol": 0.0}
    if method == "Newton-CG":
        options = {"maxiter": max_iter, "xtol": 1e-14}
        extra = {"hessp": hessp}
    if method == "trust-ncg":
        extra = {"hessp": hessp}
    start = time.perf_counter()
    out = scipy.optimize.minimize(fun, problem.x0.numpy(), jac=True, method=method, options=options, **extra)
    seconds = time.perf_counter() - start
    _, grad = counted.value_and_grad(torch.from_numpy(out.x))  # not counted against it below
    counted.trace.pop()
    return Result(f"scipy {method}", problem.name, int(out.nit), counted.f - 1, counted.g - 1, float(out.fun),
                  float(grad.norm()), seconds, counted.h, counted)


def run_torch_lbfgs(problem: Problem, tol: float, max_iter: int) -> Result:
    counted = Counted(problem)
    x = problem.x0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([x], lr=1, max_iter=max_iter, max_eval=10 * max_iter, tolerance_grad=tol,
                            tolerance_change=0.0, history_size=10, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        counted.f += 1
        counted.g += 1
        loss = problem.loss(x)
        loss.backward()
        counted.trace.append((counted.f, float(x.grad.norm())))
        return loss

    start = time.perf_counter()
    opt.step(closure)
    seconds = time.perf_counter() - start
    iterations = opt.state[x]["n_iter"]
    value, grad = counted.value_and_grad(x)
    counted.trace.pop()
    return Result("torch LBFGS (strong_wolfe)", problem.name, iterations, counted.f - 1, counted.g - 1,
                  float(value), float(grad.norm()), seconds, counted=counted)


MORE_THUENTE = "gx.lbfgs (More-Thuente, first_step='unit')"
LBFGS_ROWS = ("gx.lbfgs (zoom)", MORE_THUENTE, "scipy L-BFGS-B", "torch LBFGS (strong_wolfe)")


def gradtx_methods() -> dict[str, Callable[[], gx.GradientTransformation]]:
    methods = {"gx.lbfgs (zoom)": lambda: gx.lbfgs()}
    if "first_step" in inspect.signature(gx.lbfgs).parameters:
        methods["gx.lbfgs (zoom, first_step='unit')"] = lambda: gx.lbfgs(first_step="unit")
    if hasattr(gx, "scale_by_more_thuente"):
        methods[MORE_THUENTE] = lambda: gx.lbfgs(first_step="unit",
                                                 linesearch=gx.scale_by_more_thuente(approx_dec_rtol=1e-6))
    wolfe = getattr(gx, "scale_by_strong_wolfe", None)
    if wolfe is not None:
        methods["lbfgs + strong Wolfe"] = lambda: gx.chain(gx.scale_by_lbfgs(), gx.scale(-1.0), wolfe())
        if "approx_dec_rtol" in inspect.signature(wolfe).parameters:
            methods["lbfgs + strong Wolfe (approx_dec_rtol=1e-6)"] = lambda: gx.chain(
                gx.scale_by_lbfgs(), gx.scale(-1.0), wolfe(approx_dec_rtol=1e-6))
        if hasattr(gx, "scale_by_bfgs"):
            methods["bfgs + strong Wolfe"] = lambda: gx.chain(gx.scale_by_bfgs(), gx.scale(-1.0), wolfe())
        if hasattr(gx, "scale_by_conjugate_gradient"):
            methods["cg (PR+) + strong Wolfe"] = lambda: gx.chain(
                gx.scale_by_conjugate_gradient("polak_ribiere_plus"), gx.scale(-1.0), wolfe(c2=0.1))
    if hasattr(gx, "scale_by_newton_cg"):  # second order (hvp_fn; Gauss-Newton: residual_fn)
        methods["gx.newton (abs eigenvalues, damping 1e-3)"] = lambda: gx.newton(eigenvalues="abs", damping=1e-3)
        methods["gx.newton_cg"] = lambda: gx.newton_cg()
        methods["newton_cg trust region (Steihaug)"] = lambda: gx.scale_by_newton_cg_trust_region()
        methods["nystrom pcg (rank 10) + backtracking"] = lambda: gx.chain(
            gx.scale_by_nystrom_pcg(rank=10, damping=1e-6), gx.scale(-1.0), gx.scale_by_backtracking())
        methods["cubic regularisation (ARC)"] = lambda: gx.scale_by_cubic_regularization()
        methods["gauss-newton + backtracking"] = lambda: gx.chain(
            gx.scale_by_gauss_newton(), gx.scale(-1.0), gx.scale_by_backtracking())
    return methods


# --- zeroth order: value_fn only ------------------------------------------------------------


def run_zeroth_order(name: str, tx: gx.GradientTransformation, problem: Problem, tol: float, max_iter: int,
                     budget: float) -> Result:
    """``tx`` given ``value_fn`` alone (no gradient, no ``hvp_fn``): the true gradient norm is
    computed for the stopping test only, outside the counts. "f evals" counts every loss
    evaluation, those the hand-over's Hessian-vector products make included."""
    counted = Counted(problem)
    params = {"x": problem.x0.clone()}
    state = tx.init(params)

    def value_fn(p):
        return torch.tensor(counted.value(p["x"]))

    def grad_norm(p):
        x = p["x"].detach().requires_grad_(True)
        (g,) = torch.autograd.grad(problem.loss(x), x)
        return float(g.norm())

    start = time.perf_counter()
    iterations = 0
    while grad_norm(params) > tol and iterations < max_iter and time.perf_counter() - start < budget:
        updates, state = tx.update({"x": torch.zeros_like(params["x"])}, state, params, value_fn=value_fn)
        params = gx.apply_updates(params, updates)
        iterations += 1
    seconds = time.perf_counter() - start
    with torch.no_grad():
        final = float(problem.loss(params["x"]))
    return Result(name, problem.name, iterations, counted.f, 0, final, grad_norm(params), seconds)


def zeroth_order_methods() -> dict[str, Callable[[], gx.GradientTransformation]]:
    """Issue 12's gradient-free methods: the zeroth-order Newton chain, SPSA and MeZO."""
    if not hasattr(gx, "gaussian_smoothing"):
        return {}
    return {
        "chain(gaussian_smoothing(1e-3, 20, central), newton_cg, backtracking)": lambda: gx.chain(
            gx.gaussian_smoothing(1e-3, 20, "central"), gx.newton_cg(), gx.scale_by_backtracking()),
        "chain(spsa(1e-4, 4), scale(-1), backtracking)": lambda: gx.chain(
            gx.spsa(1e-4, n_samples=4), gx.scale(-1.0), gx.scale_by_backtracking()),
        # plain MeZO-SGD needs lr below ~2 / (L (n + 2)) (the estimate's variance grows with n):
        # 1e-6 is stable on every problem here; with a line search it needs no lr
        "mezo(lr 1e-6, eps 1e-3)": lambda: gx.mezo(1e-6, 1e-3),
        "chain(scale_by_mezo(1e-3), scale(-1), backtracking)": lambda: gx.chain(
            gx.scale_by_mezo(1e-3), gx.scale(-1.0), gx.scale_by_backtracking()),
    }


def zeroth_order_table(tol: float, max_iter: int, budget: float, problems: list[Problem]) -> list[Result]:
    return [run_zeroth_order(name, make(), problem, tol, max_iter, budget)
            for problem in problems for name, make in zeroth_order_methods().items()]


def convergence_table(tol: float, max_iter: int, budget: float, problems: list[Problem],
                      only: list[str] | None = None) -> Iterator[Result]:
    """A row per method and problem, as they finish; ``only``: methods whose name holds one of these."""

    def wanted(name: str) -> bool:
        return not only or any(part in name for part in only)

    for problem in problems:
        for name, make in gradtx_methods().items():
            if ("gauss-newton" in name and problem.residuals is None) or not wanted(name):
                continue
            yield run_gradtx(name, make(), problem, tol, max_iter, budget)
        for method in ("L-BFGS-B", "BFGS", "CG", "Newton-CG", "trust-ncg"):
            if wanted(f"scipy {method}"):
                yield run_scipy(method, problem, tol, max_iter)
        if wanted("torch LBFGS"):
            yield run_torch_lbfgs(problem, tol, max_iter)


# --- closure calls through gx.Optimizer ------------------------------------------------------


def closure_calls(tol: float = 1e-8) -> list[tuple[str, int, int, float]]:
    """Closure calls to bring an L2-regularised logistic regression (``nn.Linear(10, 1)``,
    200 samples, float64) to a gradient norm of ``tol``: ``gx.Optimizer`` stepped in a loop
    with one closure (with and without ``reuse_evaluations``) and ``torch.optim.LBFGS`` in one
    ``step`` (``max_iter`` large, ``tolerance_grad=tol``). Rows: (method, steps or
    iterations, closure calls, final gradient norm)."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(200, 10, generator=gen)
    y = (torch.rand(200, generator=gen) < torch.sigmoid(x @ torch.randn(10, generator=gen))).double()

    def loss_of(model):
        logits = model(x).squeeze(-1)
        return torch.nn.functional.binary_cross_entropy_with_logits(logits, y) + 1e-2 * model.weight.pow(2).sum()

    def grad_norm(model):
        grads = torch.autograd.grad(loss_of(model), list(model.parameters()))
        return float(torch.cat([g.reshape(-1) for g in grads]).norm())

    def make_model():
        torch.manual_seed(0)
        return torch.nn.Linear(10, 1)

    rows = []
    model, calls = make_model(), [0]
    ref = torch.optim.LBFGS(model.parameters(), lr=1, max_iter=500, tolerance_grad=tol, tolerance_change=0,
                            history_size=10, line_search_fn="strong_wolfe")

    def ref_closure():
        calls[0] += 1
        ref.zero_grad()
        loss = loss_of(model)
        loss.backward()
        return loss

    ref.step(ref_closure)
    rows.append(("torch LBFGS (strong_wolfe)", ref.state[model.weight]["n_iter"], calls[0], grad_norm(model)))
    wolfe = getattr(gx, "scale_by_strong_wolfe", None)
    makers = {"gx.lbfgs (zoom)": gx.lbfgs}
    if wolfe is not None:
        makers["lbfgs + strong Wolfe"] = lambda: gx.chain(gx.scale_by_lbfgs(), gx.scale(-1.0), wolfe())
    for name, make in makers.items():
        for reuse in (True, False):
            model, calls, steps = make_model(), [0], 0
            try:
                opt = gx.Optimizer(model.parameters(), make(), reuse_evaluations=reuse)
            except TypeError:  # a gradtx without reuse_evaluations
                if not reuse:
                    continue
                opt = gx.Optimizer(model.parameters(), make())

            def closure(backward=True, model=model, opt=opt, calls=calls):
                calls[0] += 1
                loss = loss_of(model)
                if backward:
                    opt.zero_grad()
                    loss.backward()
                return loss

            while grad_norm(model) > tol and steps < 500:
                opt.step(closure)
                steps += 1
            rows.append((f"{name}, reuse_evaluations={reuse}", steps, calls[0], grad_norm(model)))
    return rows


# --- per-iteration overhead on a large model -------------------------------------------------


@dataclass
class Overhead:
    name: str
    iterations: int
    calls: int  # closure calls
    seconds: float  # all iterations
    closure_seconds: float  # one closure call with backward, measured apart

    @property
    def per_iteration(self) -> float:
        return self.seconds / self.iterations

    @property
    def overhead(self) -> float:
        """Seconds per iteration outside the closure calls."""
        return (self.seconds - self.calls * self.closure_seconds) / self.iterations


def overhead(iterations: int, repeats: int = 3) -> list[Overhead]:
    """``iterations`` L-BFGS iterations on an MLP of 1.01M parameters (1000-1000-10, float32,
    a batch of 64, one thread), through ``torch.optim.LBFGS(line_search_fn="strong_wolfe")``
    (one ``step`` of ``max_iter=iterations``: its loop reuses the search's last evaluation)
    and ``gx.Optimizer`` stepped ``iterations`` times (``gx.lbfgs()``, and with the
    Moré-Thuente search; both reuse it too), the same closure; history 10; timed after 10
    iterations of warm-up (the history full). The closure's own time (one
    call with backward, measured apart) times the calls is subtracted to give the optimizer's
    overhead per iteration. Runs alternate, ``repeats`` times; the fastest is kept."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(1000, 1000), torch.nn.Tanh(), torch.nn.Linear(1000, 10)).float()
    x = torch.randn(64, 1000, dtype=torch.float32)
    y = torch.randn(64, 10, dtype=torch.float32)
    threads, history = torch.get_num_threads(), 10
    torch.set_num_threads(1)
    # fixed steps first (one closure call per iteration in both: the recursion's and the adapter's
    # overhead alone), then the line searches (their trials add evaluations and their overhead)
    makers = {"torch LBFGS (fixed lr 0.1)": "torch", "gx.lbfgs(lr=0.1, linesearch=None)":
              lambda: gx.lbfgs(lr=0.1, linesearch=None), "torch LBFGS (strong_wolfe)": "torch",
              "gx.lbfgs (zoom)": lambda: gx.lbfgs()}
    if hasattr(gx, "scale_by_more_thuente"):
        makers[MORE_THUENTE] = lambda: gx.lbfgs(first_step="unit", linesearch=gx.scale_by_more_thuente())
    best: dict[str, Overhead] = {}
    try:
        for _ in range(repeats):
            for name, make in makers.items():
                params = [p.detach().clone().requires_grad_(True) for p in model.parameters()]
                fixed = "fixed" in name
                if make == "torch":
                    opt = torch.optim.LBFGS(params, lr=0.1 if fixed else 1, max_iter=iterations,
                                            max_eval=10 * iterations, tolerance_grad=0.0, tolerance_change=0.0,
                                            history_size=history, line_search_fn=None if fixed else "strong_wolfe")
                else:
                    opt = gx.Optimizer(params, make())
                calls = [0]

                def closure(backward=True, opt=opt, params=params, calls=calls):
                    calls[0] += 1
                    h = torch.tanh(x @ params[0].T + params[1])
                    loss = torch.nn.functional.mse_loss(h @ params[2].T + params[3], y)
                    if backward:
                        opt.zero_grad()
                        loss.backward()
                    return loss

                # warm up: the history filled (torch's state persists across steps)
                if make == "torch":
                    opt.param_groups[0]["max_iter"] = history
                    opt.step(closure)
                    opt.param_groups[0]["max_iter"] = iterations
                    before = opt.state[params[0]]["n_iter"]
                else:
                    for _ in range(history):
                        opt.step(closure)
                start = time.perf_counter()
                for _ in range(5):
                    closure()
                closure_seconds = (time.perf_counter() - start) / 5
                calls[0] = 0
                start = time.perf_counter()
                if make == "torch":
                    opt.step(closure)
                    done = opt.state[params[0]]["n_iter"] - before
                else:
                    for _ in range(iterations):
                        opt.step(closure)
                    done = iterations
                row = Overhead(name, done, calls[0], time.perf_counter() - start, closure_seconds)
                if name not in best or row.overhead < best[name].overhead:
                    best[name] = row
    finally:
        torch.set_num_threads(threads)
    return list(best.values())


def common_target_table(results: list[Result], tol: float) -> None:
    """Per problem, the evaluations each L-BFGS needed until its gradient norm first fell to
    the loosest final norm among scipy's and torch's (at least ``tol``): scipy and torch stop
    on their largest gradient entry or a failed search, some above ``tol``."""
    by_problem: dict[str, dict[str, Result]] = {}
    for r in results:
        if r.method in LBFGS_ROWS and r.counted is not None:
            by_problem.setdefault(r.problem, {})[r.method] = r
    if not by_problem:
        return
    print("\n| problem | target grad norm | " + " | ".join(LBFGS_ROWS) + " |")
    print("|---|---:|" + "---:|" * len(LBFGS_ROWS))
    for problem, rows in by_problem.items():
        target = max([tol] + [rows[m].grad_norm for m in LBFGS_ROWS[2:] if m in rows])
        cells = []
        for m in LBFGS_ROWS:
            hit = rows[m].counted.first_below(target) if m in rows else None
            cells.append("-" if m not in rows else str(hit) if hit is not None else f"> {rows[m].f}")
        print(f"| {problem} | {target:.1e} | " + " | ".join(cells) + " |")


def _named(problem: str, name: str) -> bool:
    """``name`` starts the problem's name, and does not run into its number ("rosenbrock-10" is
    not "rosenbrock-100")."""
    return problem.startswith(name) and not problem[len(name):len(name) + 1].isdigit()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller budgets, no 100-dim Rosenbrock")
    parser.add_argument("--tol", type=float, default=1e-8)
    parser.add_argument("--only", nargs="*", help="methods whose name holds one of these (all by default)")
    parser.add_argument("--problem", nargs="*", help="problems whose name starts with one of these (all by default)")
    parser.add_argument("--zo-tol", type=float, default=1e-3, help="gradient norm the zeroth-order methods stop at")
    parser.add_argument("--zeroth-order-only", action="store_true", help="only the zeroth-order table")
    parser.add_argument("--overhead-only", action="store_true", help="only the 1M-parameter per-iteration table")
    parser.add_argument("--tables-only", action="store_true",
                        help="only the convergence tables (no closure calls, zeroth order or overhead)")
    args = parser.parse_args()
    problems = [p for p in PROBLEMS if not (args.quick and p.name == "rosenbrock-100")
                and (not args.problem or any(_named(p.name, name) for name in args.problem))]
    max_iter, budget = (500, 5.0) if args.quick else (2000, 30.0)
    print(f"torch {torch.__version__}, numpy {np.__version__}, tol {args.tol:g}, max_iter {max_iter}\n")
    if args.zeroth_order_only:
        zeroth_order_report(args.zo_tol, max_iter, budget, problems)
        return
    if not args.overhead_only:
        print("| problem | method | iterations | f evals | g evals | Hv products | final loss | grad norm | seconds |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        results = []
        for r in convergence_table(args.tol, max_iter, budget, problems, args.only):
            results.append(r)
            print(f"| {r.problem} | {r.method} | {r.iterations} | {r.f} | {r.g} | {r.hvps} | {r.final:.3e} | "
                  f"{r.grad_norm:.1e} | {r.seconds:.3f} |", flush=True)
        common_target_table(results, args.tol)
        if args.tables_only:
            return
        print("\n| gx.Optimizer / torch.optim, logistic model | steps (iterations) | closure calls | grad norm |")
        print("|---|---:|---:|---:|")
        for name, steps, calls, norm in closure_calls(args.tol):
            print(f"| {name} | {steps} | {calls} | {norm:.1e} |", flush=True)
        zeroth_order_report(args.zo_tol, max_iter, budget, problems)
    rows = overhead(5 if args.quick else 10)
    print("\n| model (1.01M params, float32, 1 thread) | iterations | closure calls | ms / iteration | "
          "closure ms | overhead ms / iteration | overhead / torch's |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    reference, base = {}, rows[0]
    for r in rows:  # each against the torch row above it (fixed steps, then strong Wolfe)
        base = r if r.name.startswith("torch") else base
        reference[r.name] = base.overhead
    for r in rows:
        print(f"| {r.name} | {r.iterations} | {r.calls} | {1e3 * r.per_iteration:.1f} | "
              f"{1e3 * r.closure_seconds:.1f} | {1e3 * r.overhead:.1f} | {r.overhead / reference[r.name]:.2f} |")


def zeroth_order_report(tol: float, max_iter: int, budget: float, problems: list[Problem]) -> None:
    print(f"\nzeroth order (value_fn only), to a gradient norm of {tol:g}:\n")
    print("| problem | method | iterations | f evals | final loss | grad norm | seconds |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in zeroth_order_table(tol, max_iter, budget, problems):
        print(f"| {r.problem} | {r.method} | {r.iterations} | {r.f} | {r.final:.3e} | {r.grad_norm:.1e} | "
              f"{r.seconds:.3f} |")


if __name__ == "__main__":
    main()
