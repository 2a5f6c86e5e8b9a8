"""Normalisation: trust ratios, block norms, centralisation."""

from __future__ import annotations

__all__: list[str] = []
