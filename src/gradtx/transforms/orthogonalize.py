"""Orthogonalized updates for matrix parameters (Muon's Newton-Schulz iteration)."""

from __future__ import annotations

__all__: list[str] = []
