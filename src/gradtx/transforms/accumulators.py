"""Per-element accumulators: Adagrad's sum of squares, Adadelta, Rprop, stddev, averaging."""

from __future__ import annotations

__all__: list[str] = []
