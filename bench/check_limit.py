"""``check_limit`` p50 on the embedded engine, against the database's own floor, and flat with history.

Two customers share one database: one with 1k events in its billing period, one with 1M. Three
rounds each, interleaved; every figure is the median of the rounds' p50s.

1. **Flat cost:** p50(1M) / p50(1k). The engine keeps per-period rollups, so a check reads one row
   whatever the history. Target <= 1.5.
2. **Against the floor**, measured in the same run on the same database: on SQLite, a raw ``sqlite3``
   primary-key read of the checked customer's rollup row (a connection of its own, a prepared
   statement, ``fetchone``), target p50 <= 3x; on PostgreSQL, one raw psycopg single-row round trip
   (the same primary-key read on an autocommit connection, statement prepared), target p50 <= 1.5x.
3. **While another process writes** (SQLite): a second process tracks one event every ``--write-every``
   seconds into the same file; the p50 of checks then, and whether every check saw the count the
   writer had committed before it began (exactness, checked on every sample).

    python bench/check_limit.py [--big 1000000] [--small 1000] [--url sqlite:///path.db] [--checks 3000]

With ``--url postgresql://user@host/db`` the run uses a new database on that server (the user needs
CREATEDB) and drops it afterwards.

``--polar`` measures the ``polar://`` backend against an emulator process instead (see
:func:`polar_bench`): the p50 of a cached ``check_limit`` beside a plain dict lookup timed the same
way (the floor), and the cache hit ratio under a 10k-check load with usage tracked in between.

    python bench/check_limit.py --polar [--load 10000] [--customers 20] [--threads 4]

Targets: cached p50 <= 5 us; hit ratio >= 0.99.

``--polar --ledger`` measures ``polar://`` with a SQLite ledger (``docs/limits.md``, section 7): the
p50 of ``check_limit`` (Polar's cached credit, the ledger's reading, its holds) beside the embedded
engine's ``check_limit`` on the same ledger file, the same customer, in the same run.

    python bench/check_limit.py --polar --ledger [--checks 10000] [--rounds 3]

Target: p50(ledger) / p50(engine on the same file) <= 1.5.
"""

from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import percentile
from _pg import fresh_database, plain

import polar_metering as metering
from polar_metering import Plan


def fill(client: metering.Metering, customer: str, events: int, batch: int = 5000) -> None:
    done = 0
    while done < events:
        n = min(batch, events - done)
        result = client.track_usage_batch(
            [{"customer_id": customer, "event_name": "api.request", "metadata": {"endpoint": "/api/x"}}] * n
        )
        assert result.success, result.error
        done += n


def p50_of_checks(client: metering.Metering, customer: str, checks: int) -> float:
    samples = []
    for _ in range(200):
        client.check_limit(customer, "api_requests")  # warm caches and the connection pool
    for _ in range(checks):
        t0 = time.perf_counter()
        client.check_limit(customer, "api_requests")
        samples.append(time.perf_counter() - t0)
    return percentile(samples, 50) * 1e6


def p50_of_dict_lookups(lookups: int) -> float:
    """The floor: a dict lookup by (customer, meter), timed exactly like a check."""
    table = {(f"bench_{i}", "api_requests"): i for i in range(1000)}
    key = ("bench_0", "api_requests")
    samples = []
    for _ in range(lookups):
        t0 = time.perf_counter()
        table[key]
        samples.append(time.perf_counter() - t0)
    return percentile(samples, 50) * 1e6


def polar_bench(load: int, customers: int, threads: int, checks: int) -> None:
    """The ``polar://`` backend on a real emulator process (loopback HTTP, the real polar-sdk).

    1. Cached p50: one customer with usage tracked but not yet settled (so the overlay takes part),
       ``checks`` timed calls of ``check_limit``, best p50 of three rounds, beside the dict floor.
    2. Hit ratio: ``load`` checks from ``threads`` threads over ``customers`` customers and two meters,
       each thread tracking usage before every check; hits and Polar requests come from the cache's
       counters, cold misses included. Tracking does not invalidate: the overlay keeps readings current.
    """
    from polar_metering.emulator import AdminClient, running_emulator

    with running_emulator() as emu, tempfile.TemporaryDirectory() as tmp:
        admin = AdminClient(emu.base_url, emu.token)
        names = [f"bench_{i}" for i in range(customers)]
        for name in names:
            admin.create_customer(external_id=name)
            admin.grant(name, "api_requests", 10**9)
            admin.grant(name, "ai_tokens", 10**9)
        client = metering.Metering(
            f"polar://?base_url={emu.base_url}",
            access_token=emu.token,
            outbox_path=str(Path(tmp) / "outbox.db"),
            cache_ttl=5.0,
        )
        limits = client.backend.limits  # type: ignore[attr-defined]

        client.track_api_request(names[0], "/warm")
        cached = min(p50_of_checks(client, names[0], checks) for _ in range(3))
        floor = min(p50_of_dict_lookups(checks) for _ in range(3))

        before = limits.cache.stats()
        start = threading.Barrier(threads)

        def run(seed: int) -> None:
            rng = random.Random(seed)
            start.wait()
            for _ in range(load // threads):
                customer = rng.choice(names)
                if rng.random() < 0.5:
                    client.track_ai_tokens(customer, rng.randint(1, 500))
                    client.check_limit(customer, "ai_tokens", amount=100)
                else:
                    client.track_api_request(customer, "/bench")
                    client.check_limit(customer, "api_requests")

        workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
        t0 = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        elapsed = time.perf_counter() - t0
        after = limits.cache.stats()
        hits, misses = after.hits - before.hits, after.misses - before.misses
        assert client.flush(timeout=60), "delivery to the emulator did not finish"
        client.close()
    ratio = hits / max(1, hits + misses)
    print(
        f"polar cached check_limit p50 {cached:.2f} us; dict lookup floor {floor:.2f} us; "
        f"ratio {cached / floor:.1f}x (target: p50 <= 5 us)"
    )
    print(
        f"polar cache under {hits + misses:,} checks ({threads} threads, {customers} customers x 2 meters, "
        f"tracking before each, {elapsed:.2f}s): {hits:,} hits, {misses:,} Polar requests, "
        f"hit ratio {ratio:.4f} (target >= 0.99)"
    )


_FLOOR_SQL = (
    "SELECT n, total, vmax, vmin, credited FROM pm_usage "
    "WHERE customer = ? AND meter_id = ? AND window_us = ?"
)
_KEY_SQL = (
    "SELECT customer, meter_id, window_us FROM pm_usage WHERE customer = ? ORDER BY window_us DESC LIMIT 1"
)


def floor_reader(url: str, customer: str) -> Callable[[], object]:
    """The floor: a raw primary-key read of ``customer``'s current rollup row, on its own connection."""
    if url.startswith("sqlite"):
        import sqlite3

        conn = sqlite3.connect(url.removeprefix("sqlite:///"), isolation_level=None)
        sql = _FLOOR_SQL
        key = conn.execute(_KEY_SQL, (customer,)).fetchone()
        cur = conn.cursor()

        def read() -> object:
            cur.execute(sql, key)
            return cur.fetchone()

        return read
    import psycopg

    pg = psycopg.connect(plain(url), autocommit=True, prepare_threshold=0)
    key = pg.execute(_KEY_SQL.replace("?", "%s"), (customer,)).fetchone()
    sql = _FLOOR_SQL.replace("?", "%s")

    def read_pg() -> object:
        return pg.execute(sql, key, prepare=True).fetchone()

    return read_pg


def p50_of(fn: Callable[[], object], calls: int) -> float:
    for _ in range(200):
        fn()
    samples = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return percentile(samples, 50) * 1e6


_WRITER = """
import sys, time
from polar_metering import Metering, Plan
c = Metering(sys.argv[1], plans=[Plan("bench", credits={"api_requests": 10**12})])
every, stop = float(sys.argv[2]), time.monotonic() + float(sys.argv[3])
print("ready", flush=True)
while time.monotonic() < stop:
    assert c.track_api_request("small", "/w").success
    time.sleep(every)
c.close()
"""


def checks_beside_a_writer(
    client: metering.Metering, url: str, checks: int, every: float
) -> tuple[float, int, int]:
    """p50 of checks while another process writes, and how many checks read less than the writer had
    committed before the check began (must be 0), out of how many."""
    import sqlite3
    import subprocess

    path = url.removeprefix("sqlite:///")
    probe = sqlite3.connect(path, isolation_level=None)
    count_sql = "SELECT COALESCE(SUM(n), 0) FROM pm_usage WHERE customer = 'small'"
    writer = subprocess.Popen(
        [sys.executable, "-c", _WRITER, url, str(every), "30"], stdout=subprocess.PIPE, text=True
    )
    assert writer.stdout is not None and writer.stdout.readline().strip() == "ready"
    samples, stale = [], 0
    try:
        for _ in range(checks):
            committed = probe.execute(count_sql).fetchone()[0]  # what is committed before the check
            t0 = time.perf_counter()
            seen = client.check_limit("small", "api_requests").current
            samples.append(time.perf_counter() - t0)
            if seen < committed:
                stale += 1
    finally:
        writer.kill()
        writer.wait()
        probe.close()
    return percentile(samples, 50) * 1e6, stale, len(samples)


def ledger_bench(checks: int, rounds: int) -> None:
    """``polar://`` with a ledger against an emulator process, beside the engine on the ledger file."""
    from polar_metering.emulator import AdminClient, running_emulator

    with running_emulator() as emu, tempfile.TemporaryDirectory() as tmp:
        admin = AdminClient(emu.base_url, emu.token)
        admin.create_customer(external_id="bench_0")
        admin.grant("bench_0", "api_requests", 10**9)
        ledger = f"sqlite:///{Path(tmp) / 'ledger.db'}"
        client = metering.Metering(
            f"polar://?base_url={emu.base_url}",
            access_token=emu.token,
            outbox_path=str(Path(tmp) / "outbox.db"),
            ledger=ledger,
            cache_ttl=60.0,
        )
        result = client.track_usage_batch(
            [{"customer_id": "bench_0", "event_name": "api.request", "metadata": {"endpoint": "/x"}}] * 1000
        )
        assert result.success, result.error
        assert client.flush(timeout=60)
        engine = metering.Metering(ledger)  # the embedded engine on the very same file
        assert client.check_limit("bench_0", "api_requests").current == 1000
        assert engine.check_limit("bench_0", "api_requests").current == 1000
        ours, floors = [], []
        for _ in range(rounds):  # interleaved
            ours.append(p50_of_checks(client, "bench_0", checks))
            floors.append(p50_of_checks(engine, "bench_0", checks))
        engine.close()
        client.close()
    mine, floor = statistics.median(ours), statistics.median(floors)
    print(
        f"polar:// with a SQLite ledger: check_limit p50 {mine:.2f} us "
        f"(rounds {', '.join(f'{x:.2f}' for x in ours)}); "
        f"engine on the same file {floor:.2f} us (rounds {', '.join(f'{x:.2f}' for x in floors)}); "
        f"ratio {mine / floor:.2f} (target <= 1.5)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--big", type=int, default=1_000_000)
    parser.add_argument("--small", type=int, default=1_000)
    parser.add_argument("--checks", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write-every", type=float, default=0.001, help="writer's pause between events (s)")
    parser.add_argument("--url", default=None, help="engine URL (default: a SQLite file in a temp dir)")
    parser.add_argument("--polar", action="store_true", help="benchmark the polar:// backend on the emulator")
    parser.add_argument("--load", type=int, default=10_000, help="--polar: checks in the hit-ratio load")
    parser.add_argument("--customers", type=int, default=20, help="--polar: customers in the load")
    parser.add_argument("--threads", type=int, default=4, help="--polar: threads in the load")
    parser.add_argument("--ledger", action="store_true", help="--polar: with a SQLite ledger")
    args = parser.parse_args()
    if args.polar and args.ledger:
        ledger_bench(max(args.checks, 10_000), args.rounds)
        return
    if args.polar:
        polar_bench(args.load, args.customers, args.threads, max(args.checks, 10_000))
        return
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        url = args.url or f"sqlite:///{Path(tmp) / 'check.db'}"
        if url.startswith("postgres"):
            url = stack.enter_context(fresh_database(url))  # an empty database on that server per run
        client = metering.Metering(url, plans=[Plan("bench", credits={"api_requests": 10**12})])
        for customer in ("small", "big"):
            client.subscribe(customer, "bench")
        t0 = time.perf_counter()
        fill(client, "small", args.small)
        fill(client, "big", args.big)
        print(f"loaded {args.small + args.big:,} events in {time.perf_counter() - t0:.1f}s")
        assert client.check_limit("big", "api_requests").current == args.big
        floor_read = floor_reader(url, "small")
        smalls, bigs, floors = [], [], []
        for _ in range(args.rounds):  # interleaved, so machine noise hits every side alike
            smalls.append(p50_of_checks(client, "small", args.checks))
            bigs.append(p50_of_checks(client, "big", args.checks))
            floors.append(p50_of(floor_read, args.checks))
        small, big, floor = (statistics.median(x) for x in (smalls, bigs, floors))
        sqlite = url.startswith("sqlite")
        target = 3.0 if sqlite else 1.5
        print(
            f"check_limit p50 (median of {args.rounds} rounds): {args.small:,} events {small:.1f} us; "
            f"{args.big:,} events {big:.1f} us; ratio {big / small:.2f} (target <= 1.5)"
        )
        floor_name = "raw sqlite3 primary-key read" if sqlite else "raw psycopg single-row round trip"
        print(
            f"floor: {floor_name} of the same rollup row p50 {floor:.1f} us; "
            f"check_limit / floor {small / floor:.2f} (target <= {target:g}); "
            f"rounds: checks {', '.join(f'{x:.1f}' for x in smalls)}; "
            f"floor {', '.join(f'{x:.1f}' for x in floors)}"
        )
        if sqlite:
            p50, stale, total = checks_beside_a_writer(client, url, args.checks, args.write_every)
            print(
                f"beside a writer process (one event every {args.write_every * 1000:g} ms): check_limit p50 "
                f"{p50:.1f} us; {stale} of {total} checks read less than was committed before them (target 0)"
            )
        client.close()


if __name__ == "__main__":
    main()
