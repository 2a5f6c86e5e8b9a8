"""Muon: momentum followed by orthogonalization for matrix parameters, Adam elsewhere."""

from __future__ import annotations

__all__: list[str] = []
