"""Dashboard response times at 1k and at 1M events, with 10k customers: the cost must be flat.

Two SQLite files hold the same 10,000 subscribed customers; one has 1,000 events, the other
1,000,000 (spread evenly over the customers and the last 30 days). The dashboard runs on uvicorn
on 127.0.0.1 and is asked over HTTP, as a browser would:

- the overview (page 1 and a page deep in the list), with its ranking recomputed for every request
  (the cache a live page relies on is cleared first, as after new usage);
- a customer page (numbers, the day chart of every meter, recent events, reservations).

    python bench/dashboard.py [--customers 10000] [--small 1000] [--big 1000000] [--requests 30] [--runs 3]

Prints each p50 and the ratio big / small per page, the median over ``--runs`` runs. Target: ratio
<= 1.5. ``--heavy N`` also times the page of one customer holding N of the big file's events.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import percentile

from polar_metering import Metering, Plan

TOKEN = "bench-dashboard-token-0123456789"
PLAN = Plan("team", credits={"api_requests": 500, "ai_tokens": 50_000, "storage_gb": 10, "team_seats": 5})


def customer_id(i: int) -> str:
    return f"cust_{i:05d}"


def add_events(
    client: Metering, count: int, customers: int, *, offset: int = 0, only: str | None = None
) -> None:
    now = datetime.now(UTC)
    batch: list[dict[str, Any]] = []
    for k in range(offset, offset + count):
        who = only or customer_id(k % customers)
        when = now - timedelta(seconds=(k * 7919) % (30 * 86400))
        if k % 10 == 9:
            batch.append(
                {
                    "customer_id": who,
                    "event_name": "ai.tokens",
                    "metadata": {"tokens": 100 + k % 50},
                    "timestamp": when,
                }
            )
        else:
            batch.append(
                {
                    "customer_id": who,
                    "event_name": "api.request",
                    "metadata": {"endpoint": "/v1/x"},
                    "timestamp": when,
                }
            )
        if len(batch) == 5000:
            assert client.track_usage_batch(batch).success
            batch = []
    if batch:
        assert client.track_usage_batch(batch).success


def build(path: Path, customers: int, small: int, big: int, heavy: int) -> tuple[str, str]:
    small_db, big_db = path / "small.db", path / "big.db"
    started = time.perf_counter()
    with Metering(f"sqlite:///{small_db}", plans=[PLAN]) as client:
        for i in range(customers):
            client.subscribe(customer_id(i), "team")
        add_events(client, small, customers)
    shutil.copy(small_db, big_db)
    with Metering(f"sqlite:///{big_db}", plans=[PLAN]) as client:
        add_events(client, big - small - heavy, customers, offset=small)
        if heavy:
            add_events(client, heavy, customers, offset=big, only="heavy")
    print(
        f"built {customers:,} customers, {small:,} and {big:,} events "
        f"in {time.perf_counter() - started:.0f} s"
    )
    return f"sqlite:///{small_db}", f"sqlite:///{big_db}"


class Served:
    def __init__(self, url: str) -> None:
        import uvicorn

        from polar_metering.dashboard import create_app

        self.client = Metering(url, plans=[PLAN])
        self.app = create_app(self.client, token=TOKEN)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        self.sock = sock
        self.base = f"http://127.0.0.1:{sock.getsockname()[1]}"
        config = uvicorn.Config(self.app, log_config=None, access_log=False, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()
        self.client.close()


def timed(served: Served, path: str, requests: int, *, cold: bool) -> float:
    import httpx

    source = served.app.state.source
    samples = []
    with httpx.Client(base_url=served.base, headers={"Authorization": f"token {TOKEN}"}, timeout=60) as http:
        first = http.get(path)  # warm the connection and the templates
        assert first.status_code == 200, (path, first.status_code, first.text[:300])
        for _ in range(requests):
            if cold:
                source._ranking = None  # as after new usage: the ranking is recomputed
            t0 = time.perf_counter()
            answer = http.get(path)
            samples.append(time.perf_counter() - t0)
            assert answer.status_code == 200, answer.status_code
    return percentile(samples, 50) * 1000.0


PAGES = {
    "overview": ("/", True),
    "overview page 200": ("/?page=200", True),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--small", type=int, default=1_000)
    parser.add_argument("--big", type=int, default=1_000_000)
    parser.add_argument("--heavy", type=int, default=0)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="pm-bench-dashboard-") as tmp:
        small_url, big_url = build(Path(tmp), args.customers, args.small, args.big, args.heavy)
        PAGES["customer"] = (f"/customers/{customer_id(args.customers * 3 // 7)}", False)
        results: dict[str, list[tuple[float, float]]] = {name: [] for name in PAGES}
        heavy: list[float] = []
        for _ in range(args.runs):
            small, big = Served(small_url), Served(big_url)
            try:
                for name, (path, cold) in PAGES.items():
                    results[name].append(
                        (
                            timed(small, path, args.requests, cold=cold),
                            timed(big, path, args.requests, cold=cold),
                        )
                    )
                if args.heavy:
                    heavy.append(timed(big, "/customers/heavy", max(3, args.requests // 10), cold=False))
            finally:
                small.close()
                big.close()
        worst = 0.0
        for name, runs in results.items():
            s = statistics.median(a for a, _ in runs)
            b = statistics.median(b for _, b in runs)
            ratios = [b_ / a_ for a_, b_ in runs]
            ratio = statistics.median(ratios)
            worst = max(worst, ratio)
            print(
                f"{name:>18}: p50 {s:7.1f} ms at {args.small:,} events, {b:7.1f} ms at {args.big:,}; "
                f"ratio {ratio:.2f} (runs: {', '.join(f'{r:.2f}' for r in ratios)})"
            )
        if heavy:
            print(
                f"{'heavy customer':>18}: p50 {statistics.median(heavy):7.1f} ms with {args.heavy:,} events"
            )
        print(f"worst ratio {worst:.2f} (target <= 1.5): {'met' if worst <= 1.5 else 'NOT met'}")


if __name__ == "__main__":
    main()
