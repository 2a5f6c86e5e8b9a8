"""Step-size rules: Polyak, distance over gradients, optimistic gradient."""

from __future__ import annotations

__all__: list[str] = []
