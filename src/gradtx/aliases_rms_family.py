"""Aliases of the RMS and accumulator family (Adagrad, RMSprop, Adadelta, Adafactor, SM3, Rprop, ASGD, ...)."""

from __future__ import annotations

__all__: list[str] = []
