"""Delivery against a slow server: the emulator behind the fault proxy playing a server that takes
``--base`` seconds plus ``--per-event`` seconds per event for each ingest request and serves
``--workers`` requests at once (a real Polar server on loopback took ~1.5-2.4 ms per event with one
API worker). Events are queued first, then ``flush()`` is timed.

For each fixed setting (requests in flight x events per request, the SDK's 5 s timeout) and for the
adaptive default it reports events/s, requests the client abandoned while the server was still
working on them (the server did the work for nothing, and the batch was sent again), and Polar's
duplicate count (events that arrived twice).

    python bench/adaptive_delivery.py [--events 12000] [--per-event 0.002] [--base 0.02] [--workers 1]

Targets: the adaptive default abandons nothing and sends nothing twice, and its throughput is
within 10% of the best fixed setting (ratio >= 0.9).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from polar_metering import Metering
from polar_metering.delivery import DeliveryConfig
from polar_metering.emulator import running_emulator
from polar_metering.emulator._faults import FaultPlan, running_fault_proxy


@dataclass
class Run:
    name: str
    rate: float
    abandoned: int
    duplicates: int
    requests: int


def run_once(
    name: str, events: int, plan: FaultPlan, tmp: Path, delivery: dict[str, Any] | None, token: str, base: str
) -> Run:
    with running_fault_proxy(base, plan) as proxy:
        options: dict[str, Any] = {}
        outbox = tmp / f"{name.replace(' ', '_')}-{time.monotonic_ns()}.db"
        if delivery is not None:
            options["delivery"] = DeliveryConfig(
                path=outbox, environment=None, rate_limit_per_minute=60_000, rate_limit_burst=100, **delivery
            )
        client = Metering(
            f"polar://?base_url={proxy.base_url}",
            access_token=token,
            outbox_path=str(outbox),
            backend_options=options,
        )
        batch = [
            {"customer_id": f"c{i % 50}", "event_name": "api.request", "metadata": {"i": i}}
            for i in range(events)
        ]
        for i in range(0, events, 1000):
            assert client.track_usage_batch(batch[i : i + 1000]).success
        t0 = time.perf_counter()
        assert client.flush(timeout=900), "delivery did not finish"
        seconds = time.perf_counter() - t0
        metrics = client.backend.outbox.metrics()  # type: ignore[attr-defined]
        client.close(timeout=10)
        time.sleep(0.2)  # let the proxy see the last connection close
        return Run(name, events / seconds, proxy.counts.abandoned, metrics.duplicates, metrics.batches)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=12_000)
    parser.add_argument("--per-event", type=float, default=0.002)
    parser.add_argument("--base", type=float, default=0.02)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="fewer fixed settings")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    plan = FaultPlan(latency=args.base, latency_per_event=args.per_event, workers=args.workers)
    fixed: list[tuple[str, dict[str, Any]]] = [
        (f"fixed {k} in flight x {n}", {"max_in_flight": k, "batch_max_events": n, "adaptive": False})
        for k in (1, 2)
        for n in ((1000,) if args.quick else (250, 1000))
    ]
    results: dict[str, list[Run]] = {}
    with tempfile.TemporaryDirectory() as tmp, running_emulator() as emulator:
        for _ in range(args.runs):
            for name, delivery in [*fixed, ("adaptive (default)", None)]:
                run = run_once(
                    name, args.events, plan, Path(tmp), delivery, emulator.token, emulator.base_url
                )
                results.setdefault(name, []).append(run)
    print(
        f"{args.events:,} events; server: {args.base * 1000:.0f} ms + {args.per_event * 1000:.1f} ms/event "
        f"per request, {args.workers} worker(s)"
    )
    medians = {}
    for name, runs in results.items():
        rate = statistics.median(r.rate for r in runs)
        medians[name] = rate
        print(
            f"  {name:28s} {rate:8,.0f} events/s   abandoned {sum(r.abandoned for r in runs):3d}   "
            f"duplicates {sum(r.duplicates for r in runs):5d}   requests {runs[-1].requests}"
        )
    best = max(v for k, v in medians.items() if k.startswith("fixed"))
    ours = medians["adaptive (default)"]
    adaptive = results["adaptive (default)"]
    clean = all(r.abandoned == 0 and r.duplicates == 0 for r in adaptive)
    print(f"adaptive / best fixed = {ours / best:.2f} (target >= 0.9); abandoned or resent: {not clean}")
    sys.exit(0 if ours / best >= 0.9 and clean else 1)


if __name__ == "__main__":
    main()
