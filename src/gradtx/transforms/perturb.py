"""Perturbations of updates: annealed Gaussian gradient noise."""

from __future__ import annotations

__all__: list[str] = []
