"""Factored second moments: Adafactor, SM3."""

from __future__ import annotations

__all__: list[str] = []
