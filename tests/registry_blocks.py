"""Registry entries: building blocks, branching combinators, gradient-aware members and weight
decay variants (issue 13 §2). Each is registered inside a small descending chain, since a
block alone (``sqrt``, ``accumulate_maximum``) is not a step."""

from __future__ import annotations

from registry import Entry

import gradtx as gx

_GRAD = frozenset({"grad"})


def _adam_blocks(b1=0.9, b2=0.999, eps=1e-8):
    return gx.ratio(gx.chain(gx.ema(b1, debias=False), gx.debias(b1)),
                    gx.chain(gx.ema_squared(b2), gx.debias(b2), gx.sqrt(), gx.add(eps)))


def _lr(tx, lr=0.05):
    return gx.chain(tx, gx.scale_by_lr(lr))


ENTRIES = [
    # branching combinators
    Entry("sum_of", lambda: _lr(gx.sum_of(gx.scale_by_adam(), gx.ema(0.9), gx.scale(0.1))), "sum of branches"),
    Entry("difference", lambda: _lr(gx.difference(gx.scale(2.0), gx.ema(0.5))), "a(u) - b(u)"),
    Entry("product", lambda: _lr(gx.product(gx.ema(0.9), gx.chain(gx.sqrt_ema_squared(0.99, debias=True),
                                                                   gx.add(1e-8), gx.reciprocal()))),
          "Adam as EMA times RMSprop's preconditioner"),
    Entry("ratio", lambda: _lr(_adam_blocks()), "Adam spelled out (gx.scale_by_adam)"),
    Entry("lerp", lambda: _lr(gx.lerp(gx.identity(), gx.trace(0.9), 0.5), 0.02), "torch.lerp of branches"),
    Entry("copysign", lambda: _lr(gx.copysign(gx.scale_by_adam(), gx.identity())), "torch.copysign of branches"),
    Entry("graft", lambda: _lr(gx.graft(gx.scale_by_adam(), gx.scale_by_sign())),
          "Agarwal et al. 2020 layer-wise grafting"),
    # blocks
    Entry("debias", lambda: _lr(gx.chain(gx.ema(0.9, debias=False), gx.debias(0.9))), "gx.ema(debias=True)"),
    # a variance estimate is no step: the descent tests run it within ratio (entries "sqrt", "ratio")
    Entry("ema_squared", lambda: gx.chain(gx.ema_squared(0.9, centered=True), gx.add(1e-3), gx.sqrt(),
                                          gx.scale_by_lr(0.01)),
          "centered RMSprop's variance (torch.optim.RMSprop(centered=True))", converges=False),
    Entry("sqrt_ema_squared", lambda: gx.chain(gx.sqrt_ema_squared(0.9, debias=True), gx.scale_by_lr(0.01)),
          "RMSprop's denominator", converges=False),
    Entry("accumulate_maximum",
          lambda: _lr(gx.ratio(gx.ema(0.9), gx.chain(gx.ema_squared(0.99), gx.accumulate_maximum(), gx.debias(0.99),
                                                     gx.sqrt(), gx.add(1e-8)))),
          "torch.optim.Adam(amsgrad=True)"),
    Entry("accumulate_minimum", lambda: _lr(gx.product(gx.identity(), gx.chain(gx.abs(), gx.add(1.0),
                                                                                gx.accumulate_minimum(),
                                                                                gx.reciprocal()))),
          "running minimum, closed form"),
    # the running sum of gradients is heavy ball without damping: it circles a quadratic's minimum
    Entry("accumulate_sum", lambda: _lr(gx.accumulate_sum(), 0.01), "running sum, closed form", converges=False),
    Entry("accumulate_mean", lambda: _lr(gx.accumulate_mean()), "running mean, closed form"),
    Entry("abs", lambda: _lr(gx.product(gx.identity(), gx.chain(gx.abs(), gx.add(1.0), gx.reciprocal()))),
          "|u|, closed form"),
    # a positive base, so that d(u^p)/dp = u^p log u is finite for the hypergradient tests
    Entry("pow", lambda: _lr(gx.chain(gx.scale_by_adam(), gx.add(10.0), gx.pow(1.0), gx.add(-10.0))),
          "u ** p, closed form"),
    Entry("sqrt", lambda: _lr(gx.ratio(gx.identity(), gx.chain(gx.ema_squared(0.9), gx.sqrt(), gx.add(1e-8))),
                              0.01), "RMSprop"),
    Entry("reciprocal", lambda: _lr(gx.product(gx.identity(), gx.chain(gx.abs(), gx.add(1.0), gx.reciprocal()))),
          "1 / u, closed form"),
    Entry("add", lambda: _lr(gx.chain(gx.scale_by_adam(), gx.add(0.0))), "u + c, closed form"),
    # gradient-aware members
    Entry("cautious", lambda: _lr(gx.chain(gx.scale_by_adam(), gx.cautious())), "pytorch_optimizer apply_cautious",
          needs=_GRAD),
    Entry("copy_grad_sign", lambda: _lr(gx.chain(gx.scale_by_adam(), gx.copy_grad_sign())), "Grams (Cao et al. 2024)",
          needs=_GRAD),
    Entry("copy_update_sign", lambda: _lr(gx.chain(gx.trace(0.5), gx.copy_update_sign()), 0.02),
          "torchzero UpdateSign", needs=_GRAD),
    # the quadratic's gradient 2x is parallel to the weights: OrthoGrad removes all of it
    Entry("orthograd", lambda: _lr(gx.orthograd()), "Prieto et al. 2025",
          converges=False),
    Entry("scale_by_grad_cosine_similarity",
          lambda: _lr(gx.scale_by_grad_cosine_similarity()),
          "torchzero ScaleByGradCosineSimilarity", needs=_GRAD),
    Entry("sign_consistency_mask",
          lambda: _lr(gx.sum_of(gx.scale(0.5), gx.product(gx.identity(), gx.sign_consistency_mask()))),
          "torchzero SignConsistencyMask"),
    # weight decay
    Entry("add_l1_decay", lambda: _lr(gx.chain(gx.scale_by_adam(), gx.add_l1_decay(1e-3))), "L1 subgradient"),
    Entry("add_relative_decayed_weights",
          lambda: _lr(gx.add_relative_decayed_weights(0.1)),
          "torchzero RelativeWeightDecay"),
    Entry("add_cautious_decayed_weights",
          lambda: _lr(gx.chain(gx.scale_by_adam(), gx.add_cautious_decayed_weights(0.1))),
          "Chen et al. 2025 cautious weight decay"),
    Entry("decay_weights", lambda: gx.chain(gx.scale_by_adam(), gx.scale_by_lr(0.05), gx.decay_weights(1e-3)),
          "torchzero DirectWeightDecay"),
]
