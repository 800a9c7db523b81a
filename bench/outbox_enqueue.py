"""Caller-side latency of ``Outbox.enqueue`` for one event beside its floor, and the durability window
of group commit, in one run (~5 s).

Latency rows (each call timed alone with ``perf_counter_ns``; events are validated beforehand, as the
client does before it enqueues):

- ``floor``: build the event dict and append it to a deque (the floor in perf-floors.md);
- ``enqueue``: ``outbox.enqueue([event])`` back to back, group commit (the default), with the writer
  thread and a sender (no-op transport) running as in production;
- ``enqueue, cpu-paced``: the same with 100 µs of pure-Python work between calls (a request handler
  that keeps the GIL busy; the work is not timed);
- ``enqueue, io-paced``: the same with a 100 µs sleep between calls (a handler waiting on I/O);
- ``enqueue durable``: ``enqueue(..., durable=True)``: committed on the caller's thread.

Durability window: for each group commit, the time from the first of its events returning from
``enqueue`` to the commit being done (``DeliveryMetrics.commit_lag_*``): how long an event can sit in
memory, where a process kill would lose it.

Usage: ``python bench/outbox_enqueue.py [--events 20000] [--runs 3]``
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from polar_metering._events import Event, new_external_id, validate_event
from polar_metering.delivery import DeliveryConfig, DeliveryMetrics, Outbox, SendResult

PACE_US = 100.0


class NullTransport:
    def send(self, events: list[dict[str, Any]]) -> SendResult:
        return SendResult(inserted=len(events))


def busy() -> None:
    """Hold the GIL doing Python work for PACE_US, like a request handler between two track calls."""
    end = time.perf_counter() + PACE_US / 1e6
    while time.perf_counter() < end:
        pass


def nap() -> None:
    """Release the GIL for ~PACE_US, like a handler waiting on a database or the network."""
    time.sleep(PACE_US / 1e6)


def time_calls(
    call: Callable[[int], object], count: int, between: Callable[[], None] | None = None
) -> list[int]:
    """Nanoseconds of each call; ``between`` runs after each call, untimed."""
    samples = []
    clock = time.perf_counter_ns
    for i in range(count):
        start = clock()
        call(i)
        samples.append(clock() - start)
        if between is not None:
            between()
    return samples


def percentiles(samples: list[int]) -> tuple[float, float, float]:
    """p50, p99, p99.9 in µs."""
    ordered = sorted(samples)
    n = len(ordered)
    return ordered[n // 2] / 1e3, ordered[int(n * 0.99)] / 1e3, ordered[int(n * 0.999)] / 1e3


def run_outbox(
    path: Path, events: list[Event], between: Callable[[], None] | None, *, durable: int = 0
) -> tuple[list[int], DeliveryMetrics, list[int]]:
    config = DeliveryConfig(path=path, environment=None, rate_limit_per_minute=1e9, rate_limit_burst=1000)
    outbox = Outbox(config, NullTransport())
    try:
        samples = time_calls(lambda i: outbox.enqueue([events[i]]), len(events), between)
        if not outbox.flush(timeout=60):
            raise RuntimeError("the null transport should take everything")
        metrics = outbox.metrics()
        durable_samples = time_calls(lambda i: outbox.enqueue([events[i]], durable=True), durable)
    finally:
        outbox.close(timeout=30)
    return samples, metrics, durable_samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    now = datetime.now(UTC)
    meta = {"endpoint": "/api/v1/generate", "method": "POST"}
    events = [validate_event("user_123", "api.request", meta, now=now) for _ in range(args.events)]
    paced = events[: max(100, args.events // 10)]

    latency: dict[str, list[tuple[float, float, float]]] = {
        name: []
        for name in ("floor", "enqueue", "enqueue, cpu-paced", "enqueue, io-paced", "enqueue durable")
    }
    window: dict[str, list[tuple[float, float, float]]] = {
        "back-to-back": [],
        "cpu-paced": [],
        "io-paced": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        for run in range(args.runs):
            sink: deque[dict[str, Any]] = deque()

            def floor(i: int, sink: deque[dict[str, Any]] = sink) -> None:
                body = {
                    "name": "api.request",
                    "external_customer_id": "user_123",
                    "external_id": new_external_id(),
                    "timestamp": now.isoformat(),
                    "metadata": meta,
                }
                sink.append(body)

            latency["floor"].append(percentiles(time_calls(floor, args.events)))
            scenarios = (
                ("back-to-back", "enqueue", events, None, args.events // 4),
                ("cpu-paced", "enqueue, cpu-paced", paced, busy, 0),
                ("io-paced", "enqueue, io-paced", paced, nap, 0),
            )
            for name, row, batch, between, durable in scenarios:
                samples, metrics, durable_samples = run_outbox(
                    Path(tmp) / f"{name}-{run}.db", batch, between, durable=durable
                )
                latency[row].append(percentiles(samples))
                if durable_samples:
                    latency["enqueue durable"].append(percentiles(durable_samples))
                if metrics.commit_lag_p50 is not None:
                    assert metrics.commit_lag_p99 is not None
                    assert metrics.commit_lag_max is not None
                    lags = (metrics.commit_lag_p50, metrics.commit_lag_p99, metrics.commit_lag_max)
                    window[name].append((lags[0] * 1e3, lags[1] * 1e3, lags[2] * 1e3))

    def med(values: list[tuple[float, float, float]], k: int) -> float:
        return statistics.median(v[k] for v in values)

    base = med(latency["floor"], 0)
    print(
        f"enqueue, one event per call: µs, median of {args.runs} runs "
        f"({args.events} calls back to back, {len(paced)} paced by {PACE_US:g} µs)"
    )
    print(f"{'row':<20}{'p50':>9}{'p99':>9}{'p99.9':>9}{'p50 / floor':>13}")
    for name, values in latency.items():
        p50, p99, p999 = (med(values, k) for k in range(3))
        print(f"{name:<20}{p50:>9.2f}{p99:>9.2f}{p999:>9.2f}{p50 / base:>13.2f}")
    interval = DeliveryConfig().commit_interval * 1e3
    print(f"durability window (enqueue returned -> group commit done), ms; commit_interval = {interval:g} ms")
    for name, values in window.items():
        if values:
            p50, p99, top = (med(values, k) for k in range(3))
            print(f"  {name:<18}p50 {p50:7.2f}   p99 {p99:7.2f}   max {top:7.2f}")
        else:
            print(f"  {name:<18}(no commit by the writer: flush committed everything)")


if __name__ == "__main__":
    main()
