"""Helpers shared by the benchmarks: timing, percentiles, and printing a result line."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def best_of(runs: int, fn: Callable[[], float]) -> float:
    """The best (highest) of ``runs`` throughput measurements: least disturbed by a noisy machine."""
    return max(fn() for _ in range(runs))


def median_of(runs: int, fn: Callable[[], float]) -> float:
    return statistics.median(fn() for _ in range(runs))


def now() -> float:
    return time.perf_counter()
