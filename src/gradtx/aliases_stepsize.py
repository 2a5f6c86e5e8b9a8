"""Optimizers with adaptive step sizes: Polyak SGD, optimistic gradient descent, DoG."""

from __future__ import annotations

__all__: list[str] = []
