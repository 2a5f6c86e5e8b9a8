"""Aliases of the Adam family (AMSGrad, AdaBelief, Yogi, RAdam, NAdam, Adan, Lion, ...): documented chains."""

from __future__ import annotations

__all__: list[str] = []
