"""Percentiles and CDF points of timed samples, the same way for every latency in the bench."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

# The CDF is kept at these fractions (dense in the tail, where p99 and p99.9 live) so that
# results.json can redraw the plot without storing every sample.
CDF_FRACTIONS = (
    [i / 100 for i in range(1, 99)]
    + [0.99 + i / 1000 for i in range(10)]
    + [0.999 + i / 10_000 for i in range(10)]
    + [1.0]
)


def quantile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank quantile of sorted samples: a value that was measured, never interpolated."""
    if not ordered:
        raise ValueError("no samples")
    rank = max(1, min(len(ordered), math.ceil(q * len(ordered) - 1e-9)))
    return ordered[rank - 1]


def latency_summary(seconds: Sequence[float]) -> dict[str, Any]:
    """p50/p99/p99.9 and max in ms, the sample count, and the CDF as [ms, fraction] points."""
    ordered = sorted(seconds)
    ms = [s * 1000 for s in ordered]
    return {
        "samples": len(ms),
        "p50_ms": quantile(ms, 0.50),
        "p99_ms": quantile(ms, 0.99),
        "p999_ms": quantile(ms, 0.999),
        "max_ms": ms[-1],
        "cdf_ms": [[quantile(ms, f), f] for f in CDF_FRACTIONS],
    }
