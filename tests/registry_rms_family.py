"""Registry entries for the RMS / accumulator family (transforms/accumulators.py, transforms/factored.py,
aliases/rms_family.py).

Each transform is followed by a learning rate so that it descends. The property suite's
parameters are a (4, 3) matrix, a vector and a scalar: Adafactor is built with
``min_dim_size_to_factor=2`` so that its factored path (and the unfactored one, for the vector
and the scalar) both run.
"""

from __future__ import annotations

from registry import Entry

import gradtx as gx

ENTRIES = [
    # transforms
    Entry("scale_by_rss", lambda: gx.chain(gx.scale_by_rss(), gx.scale_by_lr(0.1)),
          "torch.optim.Adagrad (eps_in_sqrt=False); optax.scale_by_rss"),
    Entry("scale_by_adadelta", lambda: gx.chain(gx.scale_by_adadelta(rho=0.99, eps=1e-5), gx.scale_by_lr(0.5)),
          "torch.optim.Adadelta; Zeiler 2012 Alg. 1"),
    Entry("scale_by_stddev", lambda: gx.chain(gx.scale_by_stddev(0.9, eps_in_sqrt=False), gx.scale_by_lr(0.01)),
          "torch.optim.RMSprop(centered=True); Graves 2013"),
    Entry("scale_by_rprop", lambda: gx.chain(gx.scale_by_rprop(0.01), gx.scale(-1.0)), "torch.optim.Rprop"),
    Entry("scale_by_asgd", lambda: gx.chain(gx.scale_by_asgd(0.05), gx.scale_by_lr(0.05)), "torch.optim.ASGD"),
    Entry("scale_by_sm3", lambda: gx.chain(gx.scale_by_sm3(), gx.scale_by_lr(0.1)),
          "SM3-II, Anil et al. 2019; optax.scale_by_sm3"),
    Entry("scale_by_factored_rms",
          lambda: gx.chain(gx.scale_by_factored_rms(min_dim_size_to_factor=2), gx.scale_by_lr(0.01)),
          "Adafactor, Shazeer & Stern 2018 Alg. 4; optax.scale_by_factored_rms"),
    # aliases: full optimizers
    Entry("adagrad", lambda: gx.adagrad(0.1), "torch.optim.Adagrad (eps_in_sqrt=False)", kind="alias"),
    Entry("adadelta", lambda: gx.adadelta(0.5, rho=0.99, eps=1e-5), "torch.optim.Adadelta", kind="alias"),
    Entry("rmsprop", lambda: gx.rmsprop(0.01, decay=0.99, eps_in_sqrt=False, centered=True, momentum=0.5),
          "torch.optim.RMSprop(centered=True, momentum)", kind="alias"),
    Entry("rprop", lambda: gx.rprop(0.01), "torch.optim.Rprop", kind="alias"),
    Entry("asgd", lambda: gx.asgd(0.05, weight_decay=1e-4), "torch.optim.ASGD", kind="alias"),
    Entry("adafactor", lambda: gx.adafactor(0.05, min_dim_size_to_factor=2, momentum=0.5),
          "optax.adafactor; torch.optim.Adafactor (matrices, see the docstring)", kind="alias"),
    Entry("sm3", lambda: gx.sm3(0.1), "SM3, Anil et al. 2019", kind="alias"),
    Entry("sign_sgd", lambda: gx.sign_sgd(0.01), "signSGD, Bernstein et al. 2018", kind="alias"),
    Entry("signum", lambda: gx.signum(0.01), "Signum, Bernstein et al. 2018 Alg. 3", kind="alias"),
]
