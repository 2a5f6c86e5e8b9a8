"""Constraints on updates and params: non-negativity, NaN removal."""

from __future__ import annotations

__all__: list[str] = []
