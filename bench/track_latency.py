"""Caller-side latency of ``track_usage`` on the Polar backend, beside a floor and posthog-python,
and throughput with 8 threads tracking at once.

All subjects run in this process, interleaved in rounds so machine noise falls on each alike:

- floor: build the event dict (with a fresh id) and append it to a ``deque``;
- posthog-python's ``capture()`` with its default settings (an in-memory queue and a consumer
  thread, which keeps nothing on disk; the host points at a closed local port, so nothing leaves
  the machine);
- ``track_usage`` on ``polar://`` with the default settings: durable, the event is committed to
  the outbox file before the call returns (callers at the same moment share one commit);
- ``track_usage`` with ``durable=False``, the opt-in group commit: an in-memory append that a
  writer thread commits within ~5 ms. The API it would deliver to is a closed local port:
  delivery keeps failing in the background, which must not show on the caller's side.

Then 8 threads call ``track_usage`` as fast as they can, in each mode, and the events per second
are compared.

    python bench/track_latency.py [--calls 20000] [--rounds 5] [--threads 8] [--thread-calls 5000]

Targets: the durable default's p50 at most posthog's p50 (ratio <= 1.0); with 8 threads, durable
throughput at least half of group-commit throughput (ratio >= 0.5).
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import percentile

CLOSED_PORT = "http://127.0.0.1:9"  # discard port: nothing listens, connections are refused


def measure(fn: Callable[[int], object], calls: int) -> list[float]:
    samples = []
    clock = time.perf_counter_ns
    for i in range(calls):
        t0 = clock()
        fn(i)
        samples.append((clock() - t0) / 1000)
    return samples


def threaded(fn: Callable[[int], object], threads: int, calls: int, rounds: int) -> float:
    """Events per second with ``threads`` threads each calling ``fn`` ``calls`` times (median of
    ``rounds`` rounds)."""
    rates = []
    for _ in range(rounds):
        start = threading.Barrier(threads + 1)

        def work(start: threading.Barrier = start) -> None:
            start.wait()
            for i in range(calls):
                fn(i)

        workers = [threading.Thread(target=work) for _ in range(threads)]
        for w in workers:
            w.start()
        start.wait()
        t0 = time.perf_counter()
        for w in workers:
            w.join()
        rates.append(threads * calls / (time.perf_counter() - t0))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--thread-calls", type=int, default=5000)
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)  # delivery failures to the closed port are expected here

    import posthog

    from polar_metering import Metering
    from polar_metering.emulator._cli import resolve_token  # noqa: F401  (ensures the extra is installed)

    tmp = tempfile.mkdtemp(prefix="track-latency-")
    queue: collections.deque[dict[str, object]] = collections.deque()

    def floor(i: int) -> None:
        queue.append(
            {
                "external_customer_id": "user_123",
                "name": "api.request",
                "external_id": os.urandom(16).hex(),
                "metadata": {"endpoint": "/api/v1/generate", "method": "POST", "n": i},
            }
        )
        if len(queue) > 100_000:
            queue.clear()

    ph = posthog.Posthog("phc_bench", host=CLOSED_PORT)

    def capture(i: int) -> None:
        ph.capture(
            "api.request",
            distinct_id="user_123",
            properties={"endpoint": "/api/v1/generate", "method": "POST", "n": i},
        )

    def client(durable: bool | None) -> Metering:
        options = {} if durable is None else {"durable": durable}
        return Metering(
            f"polar://?base_url={CLOSED_PORT}",
            access_token="polar_oat_bench_only",
            outbox_path=str(Path(tmp) / f"outbox-{durable}.db"),
            backend_options=options,
        )

    default, group = client(None), client(False)
    assert default.backend.outbox.config.durable and not group.backend.outbox.config.durable

    def tracker(c: Metering) -> Callable[[int], object]:
        def track(i: int) -> object:
            return c.track_usage(
                "user_123", "api.request", {"endpoint": "/api/v1/generate", "method": "POST", "n": i}
            )

        return track

    subjects = {
        "floor (dict + deque.append)": floor,
        "posthog capture()": capture,
        "track_usage (default, durable)": tracker(default),
        "track_usage (durable=False)": tracker(group),
    }
    samples: dict[str, list[float]] = {name: [] for name in subjects}
    for _ in range(args.rounds):
        for name, fn in subjects.items():
            measure(fn, 500)  # warm-up
            samples[name] += measure(fn, args.calls // args.rounds)

    throughput = {
        "default, durable": threaded(tracker(default), args.threads, args.thread_calls, args.rounds),
        "durable=False": threaded(tracker(group), args.threads, args.thread_calls, args.rounds),
    }
    default.close(timeout=0)
    group.close(timeout=0)

    print(f"caller-side latency, {args.calls:,} calls each, µs:")
    for name, values in samples.items():
        print(f"  {name:32s} p50 {percentile(values, 50):7.2f}   p99 {percentile(values, 99):8.2f}")
    ours, theirs = (
        percentile(samples["track_usage (default, durable)"], 50),
        percentile(samples["posthog capture()"], 50),
    )
    print(f"durable track_usage p50 / posthog capture() p50 = {ours / theirs:.2f} (target <= 1.0)")
    print(f"{args.threads} threads tracking at once, events/s (median of {args.rounds} rounds):")
    for name, rate in throughput.items():
        print(f"  {name:32s} {rate:10,.0f}")
    ratio = throughput["default, durable"] / throughput["durable=False"]
    print(f"durable / group-commit throughput = {ratio:.2f} (target >= 0.5)", flush=True)
    # posthog's exit hook would retry its queue against the closed port for minutes: skip exit hooks.
    os._exit(0)


if __name__ == "__main__":
    main()
