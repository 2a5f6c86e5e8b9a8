"""Registry entries: clipping per block / unit, normalisation, constraints, noise, LARS/LAMB/Fromage."""

from __future__ import annotations

from registry import Entry

import gradtx as gx

ENTRIES = [
    Entry("clip_by_block_rms", lambda: gx.chain(gx.clip_by_block_rms(0.5), gx.scale_by_lr(0.05)),
          "optax.clip_by_block_rms: u / max(1, rms(u) / threshold)"),
    Entry("adaptive_grad_clip", lambda: gx.chain(gx.adaptive_grad_clip(0.5), gx.scale_by_lr(0.1)),
          "Brock et al. 2021 (AGC), unit-wise"),
    Entry("scale_by_trust_ratio", lambda: gx.chain(gx.scale_by_trust_ratio(), gx.scale_by_lr(0.05)),
          "You et al. 2020 trust ratio, optax.scale_by_trust_ratio"),
    Entry("scale_by_param_block_norm", lambda: gx.chain(gx.scale_by_param_block_norm(0.1), gx.scale_by_lr(0.05)),
          "u * max(||p||, min_scale)"),
    Entry("scale_by_param_block_rms", lambda: gx.chain(gx.scale_by_param_block_rms(0.1), gx.scale_by_lr(0.1)),
          "u * max(rms(p), min_scale)"),
    Entry("centralize", lambda: gx.chain(gx.centralize(), gx.scale_by_lr(0.05)),
          "Yong et al. 2020 gradient centralization",
          skip={"rosenbrock": "centralized updates never change a row mean of a 2-d leaf; Rosenbrock's minimum "
                              "(x = 1) has row means 1 and the start (x = 0) has 0"}),
    Entry("normalize_by_update_norm", lambda: gx.chain(gx.normalize_by_update_norm(), gx.scale_by_lr(0.05)),
          "u * scale / (||u|| + eps)"),
    Entry("keep_params_nonnegative", lambda: gx.chain(gx.scale_by_lr(0.05), gx.keep_params_nonnegative()),
          "projection onto p >= 0: max(u, -p)"),
    Entry("zero_nans", lambda: gx.chain(gx.zero_nans(), gx.scale_by_lr(0.05)), "where(isnan(u), 0, u)"),
    Entry("add_noise", lambda: gx.chain(gx.add_noise(0.01, 0.55, seed=3), gx.scale_by_lr(0.05)),
          "Neelakantan et al. 2015: variance eta / (1 + t)^gamma"),
    Entry("lamb", lambda: gx.lamb(0.02, weight_decay=1e-3), "You et al. 2020, Algorithm 2 (optax.lamb)", kind="alias"),
    Entry("lars", lambda: gx.lars(5.0, weight_decay=1e-4), "You et al. 2017 (optax.lars)", kind="alias"),
    Entry("fromage", lambda: gx.fromage(0.02), "Bernstein et al. 2020", kind="alias"),
    Entry("noisy_sgd", lambda: gx.noisy_sgd(0.05, seed=1), "Neelakantan et al. 2015", kind="alias"),
]
