"""Caller-side latency of ``track_usage`` on the Polar backend, beside a floor and posthog-python.

All three run in this process, interleaved in rounds so machine noise falls on each alike:

- floor: build the event dict (with a fresh id) and append it to a ``deque``;
- posthog-python's ``capture()`` with its default settings (an in-memory queue and a consumer
  thread; the host points at a closed local port, so nothing leaves the machine);
- ``track_usage`` on ``polar://`` with the default durable outbox (group commit), and with
  ``durable=True`` (the event is committed to SQLite before the call returns). The API it would
  deliver to is a closed local port too: delivery keeps failing in the background, which must not
  show on the caller's side.

    python bench/track_latency.py [--calls 20000] [--rounds 5]

Target: our default p50 within 2x of posthog's, while the event is in a durable outbox.
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import sys
import tempfile
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


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    logging.disable(logging.CRITICAL)  # delivery failures to the closed port are expected here

    import posthog

    from polar_metering import Metering
    from polar_metering.delivery import DeliveryConfig
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

    def client(durable: bool) -> Metering:
        delivery = DeliveryConfig(
            path=str(Path(tmp) / f"outbox-{durable}.db"),
            durable=durable,
            environment=None,
            rate_limit_per_minute=600,
            max_outbox_bytes=4 << 30,
        )
        return Metering(
            f"polar://?base_url={CLOSED_PORT}",
            access_token="polar_oat_bench_only",
            backend_options={"delivery": delivery},
        )

    group, durable = client(False), client(True)

    def track_group(i: int) -> None:
        group.track_usage(
            "user_123", "api.request", {"endpoint": "/api/v1/generate", "method": "POST", "n": i}
        )

    def track_durable(i: int) -> None:
        durable.track_usage(
            "user_123", "api.request", {"endpoint": "/api/v1/generate", "method": "POST", "n": i}
        )

    subjects = {
        "floor (dict + deque.append)": floor,
        "posthog capture()": capture,
        "track_usage (group commit)": track_group,
        "track_usage (durable=True)": track_durable,
    }
    samples: dict[str, list[float]] = {name: [] for name in subjects}
    for _ in range(args.rounds):
        for name, fn in subjects.items():
            measure(fn, 500)  # warm-up
            samples[name] += measure(fn, args.calls // args.rounds)
    group.close(timeout=0)
    durable.close(timeout=0)

    print(f"caller-side latency, {args.calls:,} calls each, µs:")
    for name, values in samples.items():
        print(f"  {name:30s} p50 {percentile(values, 50):7.2f}   p99 {percentile(values, 99):8.2f}")
    ours, theirs = (
        percentile(samples["track_usage (group commit)"], 50),
        percentile(samples["posthog capture()"], 50),
    )
    print(f"track_usage p50 / posthog capture() p50 = {ours / theirs:.2f} (target <= 2.0)", flush=True)
    # posthog's exit hook would retry its queue against the closed port for minutes: skip exit hooks.
    os._exit(0)


if __name__ == "__main__":
    main()
