"""Layer-wise and noisy SGD aliases: LARS, LAMB, Fromage, noisy SGD."""

from __future__ import annotations

__all__: list[str] = []
