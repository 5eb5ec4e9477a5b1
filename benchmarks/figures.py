"""Summary figures shared by the benchmark scripts."""

from __future__ import annotations

import math


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) by rank, ``int(q * n)``; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
