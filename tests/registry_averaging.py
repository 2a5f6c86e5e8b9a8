"""Registry entries: averaging over past updates, MARS correction, adaptive heavy ball, and clipping or
normalising by a moving average (torchzero's modules as references)."""

from __future__ import annotations

from registry import Entry

import gradtx as gx

ENTRIES = [
    Entry("average", lambda: gx.chain(gx.average(window=3), gx.scale_by_lr(0.05)),
          "torchzero Averaging (window); running mean, closed form"),
    Entry("weighted_average", lambda: gx.chain(gx.weighted_average([0.5, 1.0, 1.5]), gx.scale_by_lr(0.05)),
          "torchzero WeightedAveraging"),
    Entry("median_average", lambda: gx.chain(gx.median_average(3), gx.scale_by_lr(0.05)),
          "torchzero MedianAveraging"),
    Entry("mars_correction", lambda: gx.chain(gx.mars_correction(0.9), gx.scale_by_adam(), gx.scale_by_lr(0.05)),
          "torchzero MARSCorrection; Yuan et al. 2024"),
    Entry("scale_by_adaptive_heavy_ball",
          lambda: gx.chain(gx.scale_by_adaptive_heavy_ball(), gx.scale_by_lr(1.0)),
          "torchzero AdaptiveHeavyBall; Goujaud, Taylor & Dieuleveut 2024", needs=frozenset({"value"})),
]

ENTRIES += [
    Entry("normalize_per_tensor", lambda: gx.chain(gx.normalize_per_tensor(), gx.scale_by_lr(0.02)),
          "torchzero Normalize"),
    Entry("clip_norm_by_ema", lambda: gx.chain(gx.clip_norm_by_ema(0.9), gx.scale_by_lr(0.05)),
          "torchzero ClipNormByEMA"),
    Entry("normalize_by_ema", lambda: gx.chain(gx.normalize_by_ema(0.9), gx.scale_by_lr(0.05)),
          "torchzero NormalizeByEMA"),
    Entry("clip_value_by_ema", lambda: gx.chain(gx.clip_value_by_ema(0.9, init=0.5), gx.scale_by_lr(0.05)),
          "torchzero ClipValueByEMA"),
]

ENTRIES += [
    Entry("clip_value_growth", lambda: gx.chain(gx.clip_value_growth(add=0.5, mul=1.5), gx.scale_by_lr(0.05)),
          "torchzero ClipValueGrowth"),
    Entry("clip_norm_growth", lambda: gx.chain(gx.clip_norm_growth(mul=1.5), gx.scale_by_lr(0.05)),
          "torchzero ClipNormGrowth"),
]
