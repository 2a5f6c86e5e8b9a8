"""Registry entry for in_eigenbasis (precondition/eigenbasis.py): Lion in Shampoo's eigenbasis,
refreshed every 2 steps so the suite's few steps carry the inner state to a new basis."""

from __future__ import annotations

from registry import Entry

import gradtx as gx

ENTRIES = [
    Entry("in_eigenbasis",
          lambda: gx.chain(gx.in_eigenbasis(gx.scale_by_adam(b1=0.9, b2=0.95), precondition_frequency=2),
                           gx.scale_by_lr(0.05)),
          "torchzero SOAPBasis (test_eigenbasis.py); = scale_by_soap with inner Adam"),
]
NOT_TRANSFORMS = {"InEigenbasisState"}
