"""Wrappers: transforms that modify how another transform is applied."""

from __future__ import annotations

__all__: list[str] = []
