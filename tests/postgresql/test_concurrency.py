"""Several processes (and threads) writing one database at once: totals stay exact.

Each test runs on a SQLite file and on PostgreSQL. The processes are real (spawned interpreters with
their own connection pools), so PostgreSQL sees truly concurrent transactions.
"""

from __future__ import annotations

import multiprocessing
import random
import threading
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select

from polar_metering import Catalog, Metering, Plan, UsageLimitExceeded
from polar_metering._events import Event
from polar_metering.backends._engine import schema as t
from polar_metering.backends._engine.backend import LocalEngine
from polar_metering.backends._engine.migrations import VERSION_TABLE, current_version, revision_id

WORKERS = 4
EVENTS = 10_000  # tracked per worker
SHARED = 1_000  # external ids that every worker sends too: stored and counted once
BATCH = 500
SEATS = 250
LIMIT = 1_500
PLAN = Plan("pg-race", credits={"ai_tokens": LIMIT})


def _batches(worker: int) -> list[list[dict[str, Any]]]:
    """Twenty batches of 500: 475 events of the worker's own and 25 shared ones, whose order within the
    batch differs per worker so that concurrent inserts of one id meet in different orders."""
    rng = random.Random(worker)
    own_per_batch = BATCH - SHARED // (EVENTS // BATCH)
    batches: list[list[dict[str, Any]]] = []
    i = 0
    for b in range(EVENTS // BATCH):
        batch = [_own_event(worker, i + k) for k in range(own_per_batch)]
        i += own_per_batch
        shared = [
            {
                "customer_id": "acme",
                "event_name": "api.request",
                "metadata": {"endpoint": "/shared"},
                "external_id": f"shared-{b}-{k}",
            }
            for k in range(SHARED // (EVENTS // BATCH))
        ]
        rng.shuffle(shared)
        batches.append(batch + shared)
    return batches


def _own_event(worker: int, i: int) -> dict[str, Any]:
    kind = i % 9
    eid = f"w{worker}-{i}"
    if kind < 6:
        return {
            "customer_id": "acme",
            "event_name": "api.request",
            "metadata": {"endpoint": "/own"},
            "external_id": eid,
        }
    if kind < 8:
        return {
            "customer_id": "acme",
            "event_name": "ai.tokens",
            "metadata": {"tokens": i % 7 + 1},
            "external_id": eid,
        }
    return {
        "customer_id": "acme",
        "event_name": "seat.active",
        "metadata": {"user_id": f"user-{i % SEATS}"},
        "external_id": eid,
    }


def _expected() -> tuple[int, int, int]:
    """(api requests, ai tokens, seats) that the workers' events add up to."""
    requests = tokens = 0
    own_per_batch = BATCH - SHARED // (EVENTS // BATCH)
    for _ in range(WORKERS):
        for i in range(own_per_batch * (EVENTS // BATCH)):
            kind = i % 9
            if kind < 6:
                requests += 1
            elif kind < 8:
                tokens += i % 7 + 1
    return requests + SHARED, tokens, SEATS


def _worker(url: str, worker: int, start: Any, out: Any) -> None:
    rng = random.Random(1000 + worker)
    client = Metering(url, plans=[PLAN])
    inserted = duplicates = 0
    committed = 0.0
    granted = refused = 0
    errors: list[str] = []
    try:
        start.wait(60)
        for batch in _batches(worker):
            result = client.track_usage_batch(batch)
            if not result.success:
                errors.append(str(result.error))
            inserted += result.inserted
            duplicates += result.duplicates
            for _ in range(8):
                amount = rng.randint(1, 20)
                try:
                    with client.reserve("limited", "ai_tokens", amount) as r:
                        actual = rng.randint(1, amount)
                        r.commit(actual)
                        committed += actual
                        granted += 1
                except UsageLimitExceeded:
                    refused += 1
    except Exception as e:  # reported to the parent, which fails the test with it
        errors.append(f"{type(e).__name__}: {e}")
    finally:
        client.close()
    out.put((inserted, duplicates, committed, granted, refused, errors))


def test_four_processes_track_and_reserve_with_exact_totals(engine_url: str) -> None:
    """4 processes each track 10k events (1,000 of them shared ids racing in different orders) and
    reserve against one 1,500-token limit: every total is exact, duplicates are counted once, and the
    committed reservations add up to the consumed units without ever passing the limit."""
    setup = Metering(engine_url, plans=[PLAN])
    setup.subscribe("limited", "pg-race")
    setup.close()

    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(WORKERS)
    out = ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(engine_url, w, start, out)) for w in range(WORKERS)]
    for p in procs:
        p.start()
    results = [out.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0

    assert [e for *_, errors in results for e in errors] == []
    unique_events = WORKERS * (EVENTS - SHARED) + SHARED
    assert sum(r[0] for r in results) == unique_events, "each event stored once"
    assert sum(r[1] for r in results) == (WORKERS - 1) * SHARED, "the losers of each race saw a duplicate"

    requests, tokens, seats = _expected()
    check = Metering(engine_url, plans=[PLAN])
    try:
        assert check.check_limit("acme", "api_requests").current == requests
        assert check.check_limit("acme", "ai_tokens").current == tokens
        assert check.check_limit("acme", "team_seats").current == seats
        limited = check.check_limit("limited", "ai_tokens")
        committed = sum(r[2] for r in results)
        assert sum(r[4] for r in results) > 0, "the limit was reached, so reservations really competed"
        assert limited.current == committed, "every committed reservation counted once"
        assert committed <= LIMIT
        assert limited.reserved == 0

        engine = check.backend
        assert isinstance(engine, LocalEngine)
        with engine.db.read() as conn:
            stored = conn.execute(select(func.count()).select_from(t.events)).scalar_one()
        assert stored == unique_events + sum(r[3] for r in results), "one event per committed reservation"
        assert engine.active_holds("limited", Catalog().meter("ai_tokens")) == 0
        # The rollups equal a fresh aggregation of the raw events (read from the engine, no cache).
        engine.rebuild(customer="acme")
        engine.rebuild(customer="limited")
        rebuilt = [engine.reading("acme", Catalog().meter(m)).consumed for m in ("api_requests", "ai_tokens")]
        assert rebuilt == [requests, tokens]
        assert engine.reading("acme", Catalog().meter("team_seats")).consumed == seats
        assert engine.reading("limited", Catalog().meter("ai_tokens")).consumed == committed
    finally:
        check.close()


def _open_engine(url: str, start: Any, out: Any) -> None:
    try:
        start.wait(60)
        engine = LocalEngine.open(url, catalog=Catalog(plans=(PLAN,)))
        engine.close()
        out.put(None)
    except Exception as e:
        out.put(f"{type(e).__name__}: {e}")


def test_processes_opening_a_fresh_database_at_once_create_it_once(engine_url: str) -> None:
    """4 processes open the same empty database at the same moment: none fails, the schema is created
    once at the current version, and each catalog meter and plan is stored once."""
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(WORKERS)
    out = ctx.Queue()
    procs = [ctx.Process(target=_open_engine, args=(engine_url, start, out)) for _ in range(WORKERS)]
    for p in procs:
        p.start()
    outcomes = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert outcomes == [None] * WORKERS

    engine = LocalEngine.open(engine_url, catalog=Catalog(plans=(PLAN,)))
    try:
        assert current_version(engine.db) == t.SCHEMA_VERSION
        with engine.db.read() as conn:
            slugs = sorted(conn.execute(select(t.meters.c.slug)).scalars())
            plans = conn.execute(select(t.plans.c.name)).scalars().all()
            stamps = conn.exec_driver_sql(f"SELECT version_num FROM {VERSION_TABLE}").scalars().all()
        assert slugs == sorted(m.slug for m in Catalog().meters)
        assert plans == ["pg-race"]
        assert stamps == [revision_id(t.SCHEMA_VERSION)]
    finally:
        engine.close()


def test_threads_racing_on_the_same_external_ids_store_each_once(engine_url: str) -> None:
    """8 threads, each with its own connection, insert the same 100 ids per round in different orders:
    no insert fails, each id is inserted by exactly one thread, and the count meter counts it once."""
    engine = LocalEngine.open(engine_url)
    threads, rounds, ids = 8, 10, 100
    barrier = threading.Barrier(threads)
    inserted = [0] * threads
    failures: list[BaseException] = []
    now = datetime.now(UTC)

    def run(n: int) -> None:
        rng = random.Random(n)
        try:
            for r in range(rounds):
                events = [
                    Event("acme", "api.request", {"endpoint": "/x"}, now, f"r{r}-{i}") for i in range(ids)
                ]
                rng.shuffle(events)
                barrier.wait(30)
                inserted[n] += engine.ingest(events).inserted
        except BaseException as e:
            failures.append(e)
            barrier.abort()

    try:
        workers = [threading.Thread(target=run, args=(n,)) for n in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(120)
        assert failures == []
        assert sum(inserted) == rounds * ids
        assert engine.reading("acme", Catalog().meter("api_requests")).consumed == rounds * ids
    finally:
        engine.close()
