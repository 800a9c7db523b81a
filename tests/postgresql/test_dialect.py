"""PostgreSQL specifics of the engine's database layer: URLs, isolation levels, retries, error text."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Connection

from polar_metering import Catalog, ConfigurationError
from polar_metering._events import Event
from polar_metering._exceptions import BackendUnavailable
from polar_metering.backends._engine import schema as t
from polar_metering.backends._engine.backend import LocalEngine
from polar_metering.backends._engine.dialect import Database, is_transient, postgresql_url


def test_url_spellings_map_to_psycopg_3() -> None:
    """``postgres://`` and ``postgresql://`` run on psycopg 3; another driver is refused by name."""
    assert postgresql_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert (
        postgresql_url("postgresql://u@h:5/db?sslmode=require")
        == "postgresql+psycopg://u@h:5/db?sslmode=require"
    )
    assert postgresql_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"
    with pytest.raises(ConfigurationError, match=r"url: .*psycopg 3.*'psycopg2'"):
        postgresql_url("postgresql+psycopg2://u@h/db")


@pytest.mark.postgresql
def test_postgres_scheme_opens_the_engine(postgresql_url: str) -> None:
    """A ``postgres://`` URL (the spelling many hosts hand out) opens the same engine."""
    url = "postgres://" + postgresql_url.partition("://")[2]
    engine = LocalEngine.open(url)
    try:
        assert engine.db.engine.dialect.name == "postgresql"
        assert engine.reading("acme", Catalog().meter("api_requests")).consumed == 0
    finally:
        engine.close()


@pytest.mark.postgresql
def test_unreachable_server_names_no_password() -> None:
    """Connection failures become BackendUnavailable, and the password never shows in the message."""
    with pytest.raises(BackendUnavailable) as info:
        LocalEngine.open("postgresql://metering:s3cr3t-pw@127.0.0.1:1/metering?connect_timeout=2")
    assert "s3cr3t-pw" not in str(info.value)
    assert info.value.retryable


def _setting(conn: Connection, name: str) -> str:
    return str(conn.exec_driver_sql(f"SHOW {name}").scalar_one())


@pytest.mark.postgresql
def test_reads_see_one_snapshot_and_writes_read_committed(postgresql_url: str) -> None:
    """Reads run REPEATABLE READ, READ ONLY; writes READ COMMITTED; a pooled connection carries
    neither setting into the other kind of transaction."""
    db = Database(postgresql_url)
    try:
        for _ in range(3):
            with db.read() as conn:
                assert _setting(conn, "transaction_isolation") == "repeatable read"
                assert _setting(conn, "transaction_read_only") == "on"
            with db.write() as conn:
                assert _setting(conn, "transaction_isolation") == "read committed"
                assert _setting(conn, "transaction_read_only") == "off"
    finally:
        db.dispose()


@pytest.mark.postgresql
def test_a_deadlock_victim_is_run_again(postgresql_url: str) -> None:
    """Two writers lock two rows in opposite orders: PostgreSQL aborts one as a deadlock victim, and
    ``run_write`` runs that one again, so both updates land."""
    db = Database(postgresql_url)
    with db.write() as conn:
        conn.exec_driver_sql("CREATE TABLE pm_test_pair (k INT PRIMARY KEY, v INT NOT NULL)")
        conn.exec_driver_sql("INSERT INTO pm_test_pair VALUES (1, 0), (2, 0)")
    both_locked_first = threading.Barrier(2)
    attempts = {1: 0, 2: 0}
    failures: list[BaseException] = []

    def writer(first: int, second: int) -> None:
        def work(conn: Connection) -> None:
            attempts[first] += 1
            conn.exec_driver_sql("UPDATE pm_test_pair SET v = v + 1 WHERE k = %s", (first,))
            if attempts[first] == 1:
                both_locked_first.wait(10)
            conn.exec_driver_sql("UPDATE pm_test_pair SET v = v + 1 WHERE k = %s", (second,))

        try:
            db.run_write(work)
        except BaseException as e:
            failures.append(e)

    try:
        threads = [threading.Thread(target=writer, args=(1, 2)), threading.Thread(target=writer, args=(2, 1))]
        for th in threads:
            th.start()
        for th in threads:
            th.join(30)
        assert failures == []
        assert sorted(attempts.values()) == [1, 2], "exactly one writer was the victim and ran again"
        with db.read() as conn:
            assert conn.exec_driver_sql("SELECT v FROM pm_test_pair ORDER BY k").scalars().all() == [2, 2]
    finally:
        db.dispose()


@pytest.mark.postgresql
def test_a_permanent_error_is_not_retried(postgresql_url: str) -> None:
    """A unique violation is not transient: ``run_write`` raises it at once as a non-retryable error."""
    db = Database(postgresql_url)
    with db.write() as conn:
        conn.exec_driver_sql("CREATE TABLE pm_test_once (k INT PRIMARY KEY)")
    calls = 0

    def work(conn: Connection) -> None:
        nonlocal calls
        calls += 1
        conn.exec_driver_sql("INSERT INTO pm_test_once VALUES (1), (1)")

    try:
        with pytest.raises(BackendUnavailable) as info:
            db.run_write(work)
        assert calls == 1
        assert not info.value.retryable
        assert not is_transient(info.value)
    finally:
        db.dispose()


@pytest.mark.postgresql
def test_the_engine_survives_its_connections_being_killed(postgresql_url: str) -> None:
    """After the server drops every pooled connection (a restart, a failover, an idle timeout), the
    next reading and the next ingest succeed on fresh connections: nothing tracked is lost to it."""
    import psycopg

    engine = LocalEngine.open(postgresql_url)
    api = Catalog().meter("api_requests")
    now = datetime.now(UTC)
    try:
        engine.ingest([Event("acme", "api.request", {}, now, "before")])
        assert engine.reading("acme", api).consumed == 1
        with psycopg.connect(postgresql_url, autocommit=True) as admin:
            row = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            ).fetchone()
        killed = row[0] if row else 0
        assert killed >= 1
        assert engine.ingest([Event("acme", "api.request", {}, now, "after")]).inserted == 1
        assert engine.reading("acme", api).consumed == 2
    finally:
        engine.close()


def test_events_keep_their_batch_order_and_dedup_within_the_batch(engine_url: str) -> None:
    """Rows are numbered in the order the batch gave them (PostgreSQL inserts them sorted by id to avoid
    deadlocks), a repeated id inside one batch is stored once (the first one), and a later batch's copy
    of a stored id is a duplicate."""
    engine = LocalEngine.open(engine_url)
    now = datetime.now(UTC)
    ids = ["zeta", "alpha", "mike", "alpha", "bravo"]
    try:
        first = engine.ingest([Event("acme", "api.request", {"n": k}, now, eid) for k, eid in enumerate(ids)])
        assert (first.inserted, first.duplicates) == (4, 1)
        again = engine.ingest([Event("acme", "api.request", {}, now, eid) for eid in ("mike", "new")])
        assert (again.inserted, again.duplicates) == (1, 1)
        with engine.db.read() as conn:
            rows = conn.execute(
                select(t.events.c.external_id, t.events.c.metadata).order_by(t.events.c.seq)
            ).all()
        assert [r.external_id for r in rows] == ["zeta", "alpha", "mike", "bravo", "new"]
        assert rows[1].metadata == '{"n":1}', "the first copy of a repeated id wins"
        assert engine.reading("acme", Catalog().meter("api_requests")).consumed == 5
    finally:
        engine.close()


@pytest.mark.postgresql
def test_reprs_mask_the_password(postgresql_url: str) -> None:
    """The engine, its URL and the client built on it show the URL with the password masked."""
    from polar_metering import Metering

    scheme, _, rest = postgresql_url.partition("://")
    user, _, host = rest.partition("@")
    url = f"{scheme}://{user}:pw-8c1f@{host}"  # the test server trusts loopback, so any password works
    client = Metering(url)
    try:
        engine = client.backend
        assert isinstance(engine, LocalEngine)
        shown = " ".join([repr(client), repr(engine), repr(engine.url), repr(engine.db.engine)])
        assert "pw-8c1f" not in shown
        assert "***" in repr(engine)
    finally:
        client.close()
