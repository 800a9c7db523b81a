"""Events/s through the Polar backend into a real emulator process, beside raw httpx posting the same
batches to the same emulator.

Ours: ``track_usage_batch`` in batches of ``--batch`` on a ``polar://`` client (outbox file, writer
thread, ``--in-flight`` sender threads, ``polar-sdk`` ``events.ingest``), then ``flush()``; the clock
stops when every event has been delivered. Validating and encoding the events is inside our time.

The floor: ``httpx.Client.post`` of the same events, pre-built as Polar dicts and encoded with
orjson before the clock starts, ``--batch`` per request, one after another on one connection. A
second floor posts the same bodies from ``--in-flight`` threads sharing one client, so that the
sender's concurrency is also compared with raw httpx doing the same.

    python bench/polar_ingest.py [--events 20000] [--batch 1000] [--runs 3] [--in-flight 2]

Target: ratio >= 0.8 against the sequential floor. The emulator's ingest is the common cost of
every side, so the ratios show what the outbox, the threads and the SDK add on top of bare HTTP.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import httpx
import orjson
from _common import now

import polar_metering as metering
from polar_metering._events import validate_event
from polar_metering.delivery import DeliveryConfig
from polar_metering.emulator import EmulatorHandle, running_emulator

CUSTOMERS = 100


def make_batches(events: int, batch: int, tag: str) -> list[list[dict[str, Any]]]:
    """API calls and token events over 100 customers (the same mix as bench/ingest.py)."""
    out: list[list[dict[str, Any]]] = []
    for start in range(0, events, batch):
        rows: list[dict[str, Any]] = []
        for i in range(start, min(events, start + batch)):
            customer = f"{tag}_cust_{i % CUSTOMERS}"
            if i % 4 == 3:
                rows.append(
                    {
                        "customer_id": customer,
                        "event_name": "ai.tokens",
                        "metadata": {"tokens": 100 + i % 900, "model": "gpt-4"},
                    }
                )
            else:
                rows.append(
                    {
                        "customer_id": customer,
                        "event_name": "api.request",
                        "metadata": {"endpoint": "/api/generate", "method": "POST", "status_code": 200},
                    }
                )
        out.append(rows)
    return out


def ours(
    emu: EmulatorHandle, batches: list[list[dict[str, Any]]], batch: int, outbox: Path, in_flight: int
) -> float:
    delivery = DeliveryConfig(
        max_in_flight=in_flight,
        path=outbox,
        environment=None,
        rate_limit_per_minute=600_000,
        rate_limit_burst=1000,
        batch_max_events=batch,
        batch_max_bytes=3 * 1024 * 1024,
    )
    client = metering.Metering(
        f"polar://?base_url={emu.base_url}", access_token=emu.token, backend_options={"delivery": delivery}
    )
    n = sum(len(b) for b in batches)
    t0 = now()
    for b in batches:
        result = client.track_usage_batch(b)
        assert result.success, result.error
    delivered = client.flush(timeout=600)
    elapsed = now() - t0
    client.close()
    # Read after close: the sender bumps its counters just after acknowledging a batch, so right
    # after flush() returns the last batch may not be counted yet.
    metrics = client.backend.outbox.metrics()  # type: ignore[attr-defined]
    assert delivered, "flush timed out"
    assert metrics.sent == n, f"delivered {metrics.sent} of {n}"
    return n / elapsed


def floor(emu: EmulatorHandle, batches: list[list[dict[str, Any]]], in_flight: int = 1) -> float:
    stamp = datetime.now(UTC)
    bodies = [
        orjson.dumps(
            {
                "events": [
                    validate_event(e["customer_id"], e["event_name"], e["metadata"], now=stamp).to_polar()
                    for e in b
                ]
            }
        )
        for b in batches
    ]
    n = sum(len(b) for b in batches)
    headers = {**emu.headers, "Content-Type": "application/json"}

    with httpx.Client(base_url=emu.base_url, headers=headers, timeout=60) as http:

        def post(body: bytes) -> None:
            http.post("/v1/events/ingest", content=body).raise_for_status()

        if in_flight == 1:
            t0 = now()
            for body in bodies:
                post(body)
            elapsed = now() - t0
        else:
            with ThreadPoolExecutor(in_flight) as pool:
                list(pool.map(post, bodies[:in_flight]))  # open the connections outside the timing
                t0 = now()
                list(pool.map(post, bodies[in_flight:]))
                elapsed = now() - t0
            n -= sum(len(b) for b in batches[:in_flight])
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--in-flight", type=int, default=DeliveryConfig().max_in_flight)
    args = parser.parse_args()
    results: list[tuple[float, float, float]] = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_emulator(db=f"sqlite:///{Path(tmp) / 'emu.db'}") as emu,
    ):
        # Warm both paths (imports, connections, the emulator's first requests) outside the timing.
        ours(emu, make_batches(args.batch, args.batch, "warm_a"), args.batch, Path(tmp) / "warm.db", 1)
        floor(emu, make_batches(args.batch, args.batch, "warm_b"))
        for run in range(args.runs):
            # Alternate the order so neither side always meets the bigger database.
            raw_first = run % 2 == 0
            mine_batches = make_batches(args.events, args.batch, f"ours{run}")
            raw_batches = make_batches(args.events, args.batch, f"raw{run}")
            wide_batches = make_batches(args.events, args.batch, f"wide{run}")
            if raw_first:
                raw = floor(emu, raw_batches)
                wide = floor(emu, wide_batches, args.in_flight)
            mine = ours(emu, mine_batches, args.batch, Path(tmp) / f"outbox{run}.db", args.in_flight)
            if not raw_first:
                wide = floor(emu, wide_batches, args.in_flight)
                raw = floor(emu, raw_batches)
            results.append((mine, raw, wide))
            print(
                f"run {run + 1}: polar backend {mine:,.0f} events/s; raw httpx {raw:,.0f} events/s "
                f"(ratio {mine / raw:.2f}); raw httpx x{args.in_flight} {wide:,.0f} events/s "
                f"(ratio {mine / wide:.2f})"
            )
    ratios = [m / r for m, r, _ in results]
    wide_ratios = [m / w for m, _, w in results]
    print(
        f"ratio vs raw httpx: best {max(ratios):.2f}, median {statistics.median(ratios):.2f} "
        "(target >= 0.8); "
        f"vs raw httpx with {args.in_flight} in flight: median {statistics.median(wide_ratios):.2f} "
        f"[{args.events} events, batches of {args.batch}, max_in_flight={args.in_flight}]"
    )


if __name__ == "__main__":
    main()
