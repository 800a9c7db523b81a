"""Everything that differs between SQLite and PostgreSQL, in one place: connecting, transaction
modes, insert-or-ignore, the bulk inserts that must be race-safe on a shared server, and mapping
driver errors to the library's exceptions."""

from __future__ import annotations

import contextlib
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from sqlalchemy import Engine, Table, create_engine, event, exc, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.pool import StaticPool

from polar_metering._exceptions import BackendUnavailable, ConfigurationError, MeteringError
from polar_metering.backends._engine.rollups import dumps

__all__ = ["Database", "insert_ignore", "is_transient", "postgresql_url"]

T = TypeVar("T")

# SQLSTATEs after which PostgreSQL has rolled the transaction back and running it again may succeed:
# serialization_failure and deadlock_detected.
_TRANSIENT_SQLSTATES = frozenset({"40001", "40P01"})
_WRITE_ATTEMPTS = 4

# pg_advisory_xact_lock key for schema upgrades and catalog sync: an arbitrary constant ("pm" + 1).
_SETUP_LOCK_KEY = 0x706D_0001

# Bulk writes on PostgreSQL are one statement and one round trip per batch, and ON CONFLICT makes the
# inserts safe when another process inserts the same keys at once.
#
# Events travel as one JSON array of rows: encoding it (orjson, in C) and unpacking it on the server
# cost less than psycopg's per-element array dumping, which was the largest client-side cost of an
# ingest. ``seq`` is drawn in the batch's own order, then rows are inserted in external_id order (byte
# order, whatever the database's collation): two transactions inserting overlapping ids meet them in
# the same order, so one waits for the other instead of each waiting on the other (a deadlock). Only
# the ids that were *not* inserted come back, usually none.
_PG_INSERT_EVENTS = (
    "WITH u AS (SELECT nextval('pm_events_seq_seq') AS seq, r->>0 AS e, r->>1 AS c, r->>2 AS x, r->>3 AS i, "
    "r->>4 AS n, (r->>5)::bigint AS ts, r->>6 AS md, r->>7 AS s FROM ("
    "SELECT r FROM jsonb_array_elements(%s::jsonb) WITH ORDINALITY AS a(r, ord) ORDER BY ord) AS o), "
    "ins AS (INSERT INTO pm_events (seq, external_id, customer, external_customer_id, customer_id, name, "
    "ts_us, ingested_us, metadata, source) SELECT seq, e, c, x, i, n, ts, %s::bigint, md, s FROM u "
    'ORDER BY e COLLATE "C" ON CONFLICT (external_id) DO NOTHING RETURNING external_id) '
    "SELECT e FROM u WHERE e IS NOT NULL "
    "AND e NOT IN (SELECT external_id FROM ins WHERE external_id IS NOT NULL)"
)
# Rollup rows are already locked (FOR UPDATE, in key order) when this runs. Floats go as binary
# arrays (``%b``): exact, and no text escaping per element.
_PG_UPDATE_USAGE = (
    "UPDATE pm_usage AS u SET n = v.n, total = v.total, vmax = v.vmax, vmin = v.vmin, modified_us = %b "
    "FROM unnest(%b::text[], %b::text[], %b::bigint[], %b::bigint[], %b::float8[], %b::float8[], "
    "%b::float8[]) AS v(c, m, w, n, total, vmax, vmin) "
    "WHERE u.customer = v.c AND u.meter_id = v.m AND u.window_us = v.w"
)
# The rollup rows of a batch, locked in one statement. ORDER BY fixes the order locks are taken in;
# COLLATE "C" makes it byte order, which is Python's ``sorted`` order too, so the statement and the
# engine's one-row locks (rebuilds, holds) agree on it whatever the database's collation.
_PG_LOCK_USAGE = (
    "SELECT u.customer, u.meter_id, u.window_us, u.n, u.total, u.vmax, u.vmin FROM pm_usage AS u "
    "JOIN unnest(%b::text[], %b::text[], %b::bigint[]) AS k(c, m, w) "
    "ON u.customer = k.c AND u.meter_id = k.m AND u.window_us = k.w "
    'ORDER BY u.customer COLLATE "C", u.meter_id COLLATE "C", u.window_us FOR UPDATE OF u'
)
_PG_ACCOUNTS = (
    "SELECT customer, plan, anchor_us, reset_us, ends_us FROM pm_accounts WHERE customer = ANY(%b::text[])"
)


_SQLITE_ACCOUNTS = (
    "SELECT customer, plan, anchor_us, reset_us, ends_us FROM pm_accounts WHERE customer IN ({marks})"
)
_SQLITE_INSERT_EVENTS = (
    "INSERT OR IGNORE INTO pm_events (external_id, customer, external_customer_id, customer_id, name, ts_us, "
    "ingested_us, metadata, source) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_SQLITE_UPDATE_USAGE = (
    "UPDATE pm_usage SET n = ?, total = ?, vmax = ?, vmin = ?, modified_us = ? "
    "WHERE customer = ? AND meter_id = ? AND window_us = ?"
)


def insert_ignore(engine: Engine, table: Table) -> Any:
    """``INSERT ... ON CONFLICT DO NOTHING`` for this dialect."""
    if engine.dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    return sqlite.insert(table).on_conflict_do_nothing()


def postgresql_url(url: str) -> str:
    """``postgres://`` and ``postgresql://`` URLs as SQLAlchemy URLs on psycopg 3."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ConfigurationError(f"url: not a PostgreSQL URL: {url!r}")
    base, _, driver = scheme.partition("+")
    if base not in ("postgresql", "postgres"):
        raise ConfigurationError(f"url: not a PostgreSQL URL: {url!r}")
    if driver not in ("", "psycopg"):
        raise ConfigurationError(
            f"url: the PostgreSQL engine runs on psycopg 3 ('postgresql://...'), not {driver!r}"
        )
    return f"postgresql+psycopg://{rest}"


def is_transient(error: BaseException) -> bool:
    """Whether ``error`` is PostgreSQL rolling a transaction back that may succeed when run again."""
    seen = 0
    current: BaseException | None = error
    while current is not None and seen < 5:
        orig = getattr(current, "orig", None)
        if getattr(orig, "sqlstate", None) in _TRANSIENT_SQLSTATES:
            return True
        current, seen = current.__cause__, seen + 1
    return False


class Database:
    """A SQLAlchemy engine plus the transaction discipline the engine relies on.

    SQLite: WAL, ``synchronous=NORMAL`` (a commit survives a process kill; perf floors: 16.7k commits/s),
    a busy timeout, and ``BEGIN IMMEDIATE`` for writes so that two processes never both read then both
    try to upgrade to a write lock (which would fail one of them with "database is locked").

    PostgreSQL: writes run in READ COMMITTED and lock the rollup rows they change with
    ``SELECT ... FOR UPDATE``, always in key order so that two writers cannot deadlock on them; reads run
    in REPEATABLE READ, READ ONLY, so the several statements of one reading see one snapshot (a read-only
    transaction at that level never fails with a serialization error).
    """

    def __init__(self, url: str, *, busy_timeout_ms: int = 10_000, echo: bool = False) -> None:
        self.url = url
        self.busy_timeout_ms = busy_timeout_ms
        self.is_sqlite = url.startswith("sqlite")
        self.is_postgresql = url.startswith(("postgresql", "postgres"))
        self.memory = self.is_sqlite and (":memory:" in url or url in ("sqlite://", "sqlite:///"))
        # One in-process lock serialises writers of a SQLite file: cheaper than contending on the file lock.
        self.write_lock = threading.RLock()
        try:
            if self.is_sqlite:
                kwargs: dict[str, Any] = {
                    "connect_args": {"check_same_thread": False, "timeout": busy_timeout_ms / 1000}
                }
                if self.memory:
                    kwargs["poolclass"] = StaticPool
                else:
                    kwargs["pool_size"] = 8
                    kwargs["max_overflow"] = 16
                self.engine = create_engine(url, echo=echo, **kwargs)
                self._setup_sqlite(busy_timeout_ms)
            elif self.is_postgresql:
                self.engine = create_engine(
                    postgresql_url(url),
                    echo=echo,
                    pool_size=8,
                    max_overflow=16,
                    pool_pre_ping=True,
                    isolation_level="READ COMMITTED",
                )
            else:
                raise ConfigurationError(
                    f"url: the local engine takes sqlite:// or postgresql:// URLs, got {url!r}"
                )
        except ImportError as e:
            raise ConfigurationError(
                f"url: the driver for this URL is not installed ({e.name}); "
                "for PostgreSQL install polar-metering[postgresql]"
            ) from None
        except exc.ArgumentError as e:
            raise ConfigurationError(f"url: {e}") from None

    def _setup_sqlite(self, busy_timeout_ms: int) -> None:
        memory = self.memory

        @event.listens_for(self.engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            if not memory:
                _enable_wal(cur, busy_timeout_ms)
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            cur.execute("PRAGMA foreign_keys=OFF")
            cur.close()

        @event.listens_for(self.engine, "begin")
        def _on_begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.info.get("pm_write") else "BEGIN")

    @contextlib.contextmanager
    def write(self) -> Iterator[Connection]:
        """A write transaction: exclusive against other writers of the same database."""
        with self.errors():
            if self.is_sqlite:
                with self.write_lock, self.engine.connect() as conn:
                    conn.info["pm_write"] = True
                    try:
                        with conn.begin():
                            yield conn
                    finally:
                        conn.info["pm_write"] = False
            else:
                with self.engine.begin() as conn:
                    yield conn

    def run_write(self, work: Callable[[Connection], T]) -> T:
        """``work`` in a write transaction, run again (a few times, after a short random pause) when
        PostgreSQL rolls it back as a deadlock victim or serialization failure.

        Rollup rows are locked in key order and events inserted in ``external_id`` order, so the
        engine's own writers should not deadlock; this is the safety net for what that does not cover
        (a server under other load, a future statement). ``work`` must keep its effects inside the
        transaction, since it may run more than once.
        """
        for attempt in range(1, _WRITE_ATTEMPTS + 1):
            try:
                with self.write() as conn:
                    return work(conn)
            except BackendUnavailable as e:
                if attempt == _WRITE_ATTEMPTS or not is_transient(e):
                    raise
            # Random pause so the two victims of one deadlock do not collide again in step.
            time.sleep(random.uniform(0.005, 0.05) * attempt)
        raise AssertionError("unreachable")  # pragma: no cover

    def serialize_setup(self, conn: Connection) -> None:
        """Make this write transaction the only one doing schema or catalog setup at a time.

        Processes that open the same PostgreSQL database at once would otherwise all see a table or a
        meter missing and all try to create it. The lock is released at commit. On SQLite the write
        transaction (``BEGIN IMMEDIATE``) is already exclusive.
        """
        if self.is_postgresql:
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SETUP_LOCK_KEY})

    def insert_events(
        self, conn: Connection, rows: Sequence[Sequence[Any]], ingested_us: int
    ) -> set[str] | None:
        """Insert event rows ``(external_id, customer, external_customer_id, customer_id, name, ts_us,
        metadata_json, source)``, skipping any whose ``external_id`` is already stored
        (server/polar/event/repository.py: the first
        write wins). Returns the ``external_id`` values inserted, or ``None`` when every row was.

        PostgreSQL: one statement with ``ON CONFLICT DO NOTHING``, which also skips ids a concurrent
        transaction is storing. SQLite: its write transaction is exclusive, so rows above the current
        maximum ``seq`` are exactly ours; insert-or-ignore lets the unique index do the dedup and only
        a resend (row count short) costs a second query. The driver's executemany is called directly:
        SQLAlchemy's per-row parameter processing would cost more than SQLite's own work.
        """
        if self.is_postgresql:
            skipped = conn.exec_driver_sql(_PG_INSERT_EVENTS, (dumps(rows), ingested_us)).scalars().all()
            if not skipped:
                return None
            inserted = {row[0] for row in rows if row[0] is not None}
            inserted.difference_update(skipped)
            return inserted
        before = conn.exec_driver_sql("SELECT COALESCE(MAX(seq), 0) FROM pm_events").scalar_one()
        result = conn.exec_driver_sql(
            _SQLITE_INSERT_EVENTS,
            [(r[0], r[1], r[2], r[3], r[4], r[5], ingested_us, r[6], r[7]) for r in rows],
        )
        if result.rowcount == len(rows):
            return None
        return set(
            conn.exec_driver_sql(
                "SELECT external_id FROM pm_events WHERE seq > ? AND external_id IS NOT NULL", (before,)
            ).scalars()
        )

    def queue_for_relay(self, conn: Connection, external_ids: Sequence[str]) -> None:
        """Queue the events of ``external_ids``, just stored by this transaction, for a ledger's relay."""
        if not external_ids:
            return
        if self.is_postgresql:
            conn.exec_driver_sql(
                "INSERT INTO pm_relay_queue (seq) SELECT seq FROM pm_events WHERE external_id = ANY(%s) "
                "ON CONFLICT DO NOTHING",
                (list(external_ids),),
            )
            return
        for i in range(0, len(external_ids), 500):
            chunk = external_ids[i : i + 500]
            conn.exec_driver_sql(
                "INSERT OR IGNORE INTO pm_relay_queue (seq) SELECT seq FROM pm_events "
                f"WHERE external_id IN ({', '.join('?' * len(chunk))})",
                tuple(chunk),
            )

    def update_usage(self, conn: Connection, rows: Sequence[Mapping[str, Any]], modified_us: int) -> None:
        """Write new rollup values ``{k_c, k_m, k_w, n, total, vmax, vmin}`` for rows this transaction
        holds: one array statement on PostgreSQL (no round trip per row), the driver's executemany on
        SQLite (no round trips to save, and no per-row parameter processing)."""
        if not rows:
            return
        if self.is_postgresql:
            columns = [[r[key] for r in rows] for key in ("k_c", "k_m", "k_w", "n", "total", "vmax", "vmin")]
            conn.exec_driver_sql(_PG_UPDATE_USAGE, (modified_us, *columns))
            return
        conn.exec_driver_sql(
            _SQLITE_UPDATE_USAGE,
            [
                (r["n"], r["total"], r["vmax"], r["vmin"], modified_us, r["k_c"], r["k_m"], r["k_w"])
                for r in rows
            ],
        )

    def lock_usage_rows(self, conn: Connection, keys: Sequence[tuple[str, str, int]]) -> list[Any]:
        """Read (and on PostgreSQL lock, ``FOR UPDATE`` in byte order) the rollup rows of
        ``(customer, meter_id, window_us)`` keys, as ``(customer, meter_id, window_us, n, total, vmax,
        vmin)``; missing keys are absent. SQLite's write transaction is already exclusive; it selects by
        customer and window, which the primary key indexes (a row-value IN list would make it scan)."""
        if not keys:
            return []
        if self.is_postgresql:
            columns = [[k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]]
            return list(conn.exec_driver_sql(_PG_LOCK_USAGE, tuple(columns)).fetchall())
        wanted = set(keys)
        customers = sorted({k[0] for k in keys})
        windows = sorted({k[2] for k in keys})
        rows: list[Any] = []
        for i in range(0, len(customers), 500):
            chunk = customers[i : i + 500]
            marks, window_marks = ", ".join("?" * len(chunk)), ", ".join("?" * len(windows))
            sql = (
                "SELECT customer, meter_id, window_us, n, total, vmax, vmin FROM pm_usage "
                f"WHERE customer IN ({marks}) AND window_us IN ({window_marks})"
            )
            rows += [r for r in conn.exec_driver_sql(sql, (*chunk, *windows)) if (r[0], r[1], r[2]) in wanted]
        return rows

    def accounts(self, conn: Connection, customers: Sequence[str]) -> Sequence[Any]:
        """The ``pm_accounts`` rows of ``customers`` (missing ones absent), as driver SQL: on
        PostgreSQL one array parameter, on SQLite ``IN`` lists of at most 500. SQLAlchemy's expanding
        ``IN`` would cost more than the query itself on the single-event path."""
        if not customers:
            return []
        if self.is_postgresql:
            return conn.exec_driver_sql(_PG_ACCOUNTS, (list(customers),)).fetchall()
        rows: list[Any] = []
        for i in range(0, len(customers), 500):
            chunk = customers[i : i + 500]
            sql = _SQLITE_ACCOUNTS.format(marks=", ".join("?" * len(chunk)))
            rows += conn.exec_driver_sql(sql, tuple(chunk)).fetchall()
        return rows

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        """A read transaction: one consistent snapshot (WAL lets it run beside a writer)."""
        with self.errors():
            if self.memory:
                with self.write_lock, self.engine.connect() as conn, conn.begin():
                    yield conn
            elif self.is_postgresql:
                with self.engine.connect() as conn, _snapshot(conn), conn.begin():
                    yield conn
            else:
                with self.engine.connect() as conn, conn.begin():
                    yield conn

    def raw_postgresql_connection(self) -> Any:
        """A psycopg connection of its own to this engine's database, in autocommit mode, with
        statements prepared on the server from their first run: for the one-statement reads of
        ``fastread.py``, where SQLAlchemy's pool (a ping per checkout) and a transaction's ``BEGIN`` and
        ``COMMIT`` would each cost a round trip of their own."""
        import psycopg

        cargs, cparams = self.engine.dialect.create_connect_args(self.engine.url)
        conn = psycopg.connect(*cargs, **cparams, autocommit=True, prepare_threshold=0)
        return conn

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        """The one place driver errors become ours (chained with ``from``): SQLAlchemy's wrappers, and
        the drivers' own errors from the raw connections of the read path."""
        try:
            yield
        except MeteringError:
            raise
        except sqlite3.Error as e:
            raise BackendUnavailable(f"database unavailable: {str(e).splitlines()[0][:300]}") from e
        except exc.OperationalError as e:
            raise BackendUnavailable(f"database unavailable: {_short(e)}") from e
        except exc.InterfaceError as e:
            raise BackendUnavailable(f"database connection failed: {_short(e)}") from e
        except exc.DBAPIError as e:
            raise BackendUnavailable(f"database error: {_short(e)}", retryable=is_transient(e)) from e
        except Exception as e:
            if type(e).__module__.partition(".")[0] != "psycopg":
                raise
            raise BackendUnavailable(
                f"database unavailable: {str(e).splitlines()[0][:300] if str(e) else type(e).__name__}"
            ) from e

    def dispose(self) -> None:
        self.engine.dispose()


def _enable_wal(cur: Any, busy_timeout_ms: int) -> None:
    """``PRAGMA journal_mode=WAL``, retried while another connection holds the file: switching a new
    file to WAL needs it alone, and SQLite reports "database is locked" at once instead of waiting
    (seen when several processes open one fresh file together). Once in WAL the pragma is a no-op."""
    deadline = time.monotonic() + busy_timeout_ms / 1000
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
        time.sleep(random.uniform(0.002, 0.02))


@contextlib.contextmanager
def _snapshot(conn: Connection) -> Iterator[None]:
    """Make the transaction about to begin on ``conn`` REPEATABLE READ, READ ONLY (PostgreSQL), and put the
    connection back to READ COMMITTED after. Set on the psycopg connection directly: going through
    SQLAlchemy's per-connection execution options cost more than the reading's own statements."""
    from psycopg import IsolationLevel

    raw: Any = conn.connection.dbapi_connection
    raw.isolation_level = IsolationLevel.REPEATABLE_READ
    raw.read_only = True
    try:
        yield
    finally:
        try:
            raw.isolation_level = IsolationLevel.READ_COMMITTED
            raw.read_only = False
        except Exception:
            # A broken connection refuses the change: drop it rather than pool it half-configured.
            conn.invalidate()


def _short(e: exc.DBAPIError) -> str:
    text = str(e.orig) if e.orig is not None else str(e)
    return text.splitlines()[0][:300]
