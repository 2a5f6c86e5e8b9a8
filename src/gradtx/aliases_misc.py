"""Aliases built on normalisation and step-size rules (LARS, LAMB, Fromage, Polyak SGD, ...)."""

from __future__ import annotations

__all__: list[str] = []
