"""The embedded engine on one SQLite file at scale: 100k customers, 10M events, and what grows with them.

Traffic as in ``bench/ingest.py`` (``api.request`` and ``ai.tokens`` events, event ``i`` for customer
``i % customers``), generated batch by batch so the events are never all in memory, and tracked with
``track_usage_batch`` in batches of ``--batch``. A *window* is a tenth of the events (1M by default).

1. **Ingest rate**: events/s of the ``track_usage_batch`` calls (generating the events is not timed)
   over the first window and over the last one (after nine windows are stored); a line per window
   shows the curve in between. Target: first / last <= 1.3.
2. **check_limit p50** after the first window and after all events, on the same ``--checks``
   customers chosen at random (subscribed to a plan, so the limits are real). Each is checked once per
   round: after a write the per-process reading cache (``PRAGMA data_version``, see
   ``backends/_engine/fastread.py``) is empty, so these are first-time misses that run the reading
   statement. Also the p50 of one customer checked over and over (cache hits). Target:
   p50(all events) / p50(first window) <= 1.3 for the misses.
3. **Database size**: the file plus its ``-wal`` after ``client.close()``, in MB and MB per million
   events, after the first window and after all events.
4. **Rebuild**: ``client.backend.rebuild()`` of every customer's rollups on the full database, timed
   once, and the events/s it recomputes; the rollups must read the same afterwards.

    python bench/scale.py [--customers 100000] [--events 10000000]

For a quick run: ``python bench/scale.py --customers 10000 --events 1000000``. The file lives in a
temporary directory unless ``--path`` names one to keep (an existing file there is replaced).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import now, percentile

import polar_metering as metering
from polar_metering import Plan

PLANS = [Plan("bench", credits={"api_requests": 10**12})]


def traffic(start: int, stop: int, batch: int, customers: int) -> Iterator[list[dict[str, object]]]:
    """Events ``start`` to ``stop`` of ``bench/ingest.py``'s traffic over ``customers``, a batch at a time."""
    for first in range(start, stop, batch):
        rows: list[dict[str, object]] = []
        for i in range(first, min(stop, first + batch)):
            if i % 4 == 3:
                rows.append(
                    {
                        "customer_id": f"cust_{i % customers}",
                        "event_name": "ai.tokens",
                        "metadata": {"tokens": 100 + i % 900, "model": "gpt-4"},
                    }
                )
            else:
                rows.append(
                    {
                        "customer_id": f"cust_{i % customers}",
                        "event_name": "api.request",
                        "metadata": {"endpoint": "/api/generate", "method": "POST", "status_code": 200},
                    }
                )
        yield rows


def expected_requests(customer: int, events: int, customers: int) -> int:
    """``api.request`` events among the first ``events`` for ``cust_<customer>``."""
    return sum(1 for i in range(customer, events, customers) if i % 4 != 3)


def ingest(client: metering.Metering, start: int, stop: int, batch: int, customers: int) -> float:
    """Track events ``start`` to ``stop``; events/s of the ``track_usage_batch`` calls alone."""
    spent = 0.0
    for rows in traffic(start, stop, batch, customers):
        t0 = now()
        result = client.track_usage_batch(rows)
        spent += now() - t0
        assert result.success, result.error
    return (stop - start) / spent


def check_round(client: metering.Metering, customers: list[str]) -> float:
    """p50 (us) of one check of each of ``customers`` (distinct, not read since the last write)."""
    samples = []
    for c in customers:
        t0 = time.perf_counter()
        client.check_limit(c, "api_requests")
        samples.append(time.perf_counter() - t0)
    return percentile(samples, 50) * 1e6


def repeated_p50(client: metering.Metering, customer: str, checks: int) -> float:
    """p50 (us) of ``checks`` checks of one customer, after 200 to warm the cache."""
    for _ in range(200):
        client.check_limit(customer, "api_requests")
    samples = []
    for _ in range(checks):
        t0 = time.perf_counter()
        client.check_limit(customer, "api_requests")
        samples.append(time.perf_counter() - t0)
    return percentile(samples, 50) * 1e6


def size_mb(path: Path) -> tuple[float, float]:
    """Sizes of the database file and its ``-wal`` (0 if there is none), in MB."""
    wal = Path(f"{path}-wal")
    return path.stat().st_size / 1e6, (wal.stat().st_size / 1e6 if wal.exists() else 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--checks", type=int, default=2000, help="random customers checked at each point")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--path", default=None, help="SQLite file to keep (default: in a temp dir)")
    args = parser.parse_args()
    window = args.events // 10
    assert window >= args.batch, "--events must be at least 10 batches"
    checks = min(args.checks, args.customers)

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.path) if args.path else Path(tmp) / "scale.db"
        for leftover in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
            if leftover.exists():
                os.remove(leftover)
        url = f"sqlite:///{path}"
        rng = random.Random(args.seed)
        picked = rng.sample(range(args.customers), checks)
        checked = [f"cust_{i}" for i in picked]
        # The repeated customer is one of the checked ones, so it is subscribed too.
        repeated = checked[0]

        client = metering.Metering(url, plans=PLANS)
        t0 = now()
        for c in checked:
            client.subscribe(c, "bench")
        print(
            f"{args.customers:,} customers, {args.events:,} events in batches of {args.batch}, "
            f"{checks:,} subscribed and checked; subscribing took {now() - t0:.1f}s; file {path}"
        )

        rates: list[float] = []
        miss: dict[int, float] = {}
        hit: dict[int, float] = {}
        sizes: dict[int, tuple[float, float]] = {}
        start_all = now()
        for w in range(10):
            lo, hi = w * window, (w + 1) * window if w < 9 else args.events
            rates.append(ingest(client, lo, hi, args.batch, args.customers))
            print(
                f"  events {lo:>11,} to {hi:>11,}: {rates[-1]:>9,.0f} events/s "
                f"({now() - start_all:.0f}s since the start)",
                flush=True,
            )
            if w in (0, 9):
                miss[w] = check_round(client, checked)
                hit[w] = repeated_p50(client, repeated, checks)
                got = client.check_limit(checked[1], "api_requests").current
                want = expected_requests(picked[1], hi, args.customers)
                assert got == want, (got, want)
                client.close()
                sizes[w] = size_mb(path)
                client = metering.Metering(url, plans=PLANS)
        ingest_wall = now() - start_all

        first, last = rates[0], rates[9]
        at1, at10 = window, args.events
        print(f"ingest of {args.events:,} events took {ingest_wall:.0f}s (checks and reopening included)")
        print(
            f"1. ingest: first {at1:,} events {first:,.0f} events/s; last {at10 - 9 * window:,} "
            f"(after {9 * window:,} stored) {last:,.0f} events/s; ratio last/first {last / first:.2f}, "
            f"first/last {first / last:.2f} (target first/last <= 1.3)"
        )
        print(
            f"2. check_limit p50, {checks:,} random customers once each (cache misses): "
            f"at {at1:,} events {miss[0]:.1f} us; at {at10:,} events {miss[9]:.1f} us; "
            f"ratio {miss[9] / miss[0]:.2f} (target <= 1.3)"
        )
        print(
            f"   check_limit p50, one customer {checks:,} times (cache hits): at {at1:,} events "
            f"{hit[0]:.1f} us; at {at10:,} events {hit[9]:.1f} us; ratio {hit[9] / hit[0]:.2f}"
        )
        for w, n in ((0, at1), (9, at10)):
            db, wal = sizes[w]
            print(
                f"3. size at {n:,} events after close: file {db:,.1f} MB + wal {wal:,.1f} MB = "
                f"{db + wal:,.1f} MB; {(db + wal) / (n / 1e6):,.1f} MB per million events"
            )

        sample = checked[:50]
        before = {c: client.check_limit(c, "api_requests").current for c in sample}
        t0 = now()
        client.backend.rebuild()  # type: ignore[attr-defined]
        rebuilt = now() - t0
        after = {c: client.check_limit(c, "api_requests").current for c in sample}
        assert after == before, "rollups differ after the rebuild"
        print(
            f"4. rebuild of all rollups ({args.customers:,} customers, {args.events:,} events): "
            f"{rebuilt:.1f}s, {args.events / rebuilt:,.0f} events/s; {len(sample)} checked customers read "
            f"the same after it"
        )
        client.close()


if __name__ == "__main__":
    main()
