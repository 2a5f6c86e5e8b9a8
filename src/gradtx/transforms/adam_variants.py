"""Variants of Adam: Adamax, AMSGrad, AdaBelief, Yogi, RAdam, NovoGrad, Lion, Adan."""

from __future__ import annotations

__all__: list[str] = []
