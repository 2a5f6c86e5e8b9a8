"""Upstream report (PyTorch, Inductor): a write into a 0-dim float64 CPU tensor inside a compiled
function is lost.

``fill_`` or ``copy_`` into a 0-dim ``float64`` CPU tensor (a global or an attribute: here the
kind of tensor an optimizer keeps a hyperparameter in) inside ``torch.compile`` leaves it as it
was, with no error; and an in-place ``p.add_(hp)`` after it in the same graph is lost too.
The same code with a ``float32`` 0-dim tensor, or a 1-element ``float64`` tensor of shape
``(1,)``, writes correctly. Seen with torch 2.13.0 (CPU, Inductor). Run: ``python
docs/upstream/compile_fill_lost.py``; it prints what each case wrote and exits non-zero when a
write was lost.

gradtx works around it: ``gx.Optimizer.step`` under ``torch.compile`` runs outside the graph
(see ``Optimizer._step_outside_graph``), so its hyperparameter tensors are written eagerly.
"""

from __future__ import annotations

import torch


def case(dtype: torch.dtype, shape: tuple[int, ...]) -> bool:
    hp = torch.zeros(shape, dtype=dtype)
    p = torch.zeros(3)

    def step(lr: float) -> None:
        hp.fill_(lr)
        p.add_(hp)

    compiled = torch.compile(step)
    compiled(0.5)
    ok = hp.flatten().tolist() == [0.5] and p.tolist() == [0.5, 0.5, 0.5]
    print(f"{str(dtype):14} shape {str(shape):5}: hp = {hp.flatten().tolist()}, p = {p.tolist()} "
          f"-> {'ok' if ok else 'LOST (expected hp = [0.5], p = [0.5, 0.5, 0.5])'}")
    return ok


if __name__ == "__main__":
    results = [case(torch.float64, ()), case(torch.float32, ()), case(torch.float64, (1,))]
    raise SystemExit(0 if all(results) else 1)
