"""Registry entries for the matrix preconditioners (precondition/, aliases/preconditioned.py).

The suite's parameters are a (4, 3) matrix, a vector and a 0-dim tensor: SOAP is built with
``precondition_frequency=2`` so a few steps run its eigenbasis refresh (its vector factor,
``precondition_1d``, is tested in test_precondition.py: the first basis of a rank-1 factor is
arbitrary in its null space, so the hypergradient property, a finite difference, cannot hold
there). Shampoo grafts AdaGrad so the 0-dim leaf moves too; ``eps=1e-2`` keeps its roots well
conditioned enough for the finite differences of that property, and starts preconditioning at step 2
so the suite sees both phases (the graft alone, then Shampoo).
"""

from __future__ import annotations

import torch
from registry import Entry

import gradtx as gx

ENTRIES = [
    Entry("scale_by_soap",
          lambda: gx.chain(gx.scale_by_soap(precondition_frequency=2), gx.scale_by_lr(0.05)),
          "pytorch_optimizer.SOAP (port of Vyas et al. 2024's code)"),
    Entry("scale_by_shampoo",
          lambda: gx.chain(gx.scale_by_shampoo(eps=1e-2, update_freq=2, graft=gx.scale_by_rss(),
                                               start_preconditioning_step=2),
                           gx.scale_by_lr(0.1)),
          "pytorch_optimizer.Shampoo; Gupta et al. 2018 Alg. 2"),
    Entry("scale_by_full_matrix_adagrad",
          lambda: gx.chain(gx.scale_by_full_matrix_adagrad(eps=1e-8, update_freq=2, inner=gx.ema(0.5, debias=False)),
                           gx.scale_by_lr(0.05)),
          "torchzero FullMatrixAdagrad(concat_params=False)"),
    Entry("scale_by_ggt", lambda: gx.chain(gx.scale_by_ggt(window=2, b2=0.9, eps=1e-2), gx.scale_by_lr(0.01)),
          "Agarwal et al. 2019 Alg. 1 (numpy rule in test_precondition.py)"),
    Entry("scale_by_psgd_kron",
          lambda: gx.chain(gx.scale_by_psgd_kron(precond_dtype=torch.float64), gx.scale_by_lr(0.02)),
          "pytorch_optimizer.Kron (kron_torch); Li 2018"),
    Entry("scale_by_psgd_dense",
          lambda: gx.chain(gx.scale_by_psgd_dense(momentum=0.3), gx.scale_by_lr(0.02)),
          "Xi-Lin Li's psgd_torch DenseNewton (vendored in torchzero); Li 2018"),
    Entry("scale_by_psgd_lra",
          lambda: gx.chain(gx.scale_by_psgd_lra(rank=3, momentum=0.3), gx.scale_by_lr(0.02)),
          "Xi-Lin Li's psgd_torch LRAWhiten (vendored in torchzero); Li 2018"),
    Entry("psgd_kron", lambda: gx.psgd_kron(0.02, weight_decay=1e-3, precond_dtype=torch.float64),
          "pytorch_optimizer.Kron", kind="alias"),
    Entry("psgd_dense", lambda: gx.psgd_dense(0.02, momentum=0.3), "psgd_torch DenseNewton", kind="alias"),
    Entry("psgd_lra", lambda: gx.psgd_lra(0.02, rank=3, momentum=0.3), "psgd_torch LRAWhiten", kind="alias"),
    Entry("soap", lambda: gx.soap(0.05, precondition_frequency=2, weight_decay=1e-3),
          "pytorch_optimizer.SOAP", kind="alias"),
    Entry("shampoo", lambda: gx.shampoo(0.1, eps=1e-2, update_freq=2, momentum=0.5, graft=gx.scale_by_rss(),
                                         start_preconditioning_step=2),
          "pytorch_optimizer.Shampoo", kind="alias"),
]
