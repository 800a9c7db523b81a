"""The limit-check read path: one statement per reading, and on a SQLite file a cache that stays exact.

A ``check_limit`` needs the customer's account (which window is open), the rollup row of that window
and the active holds. ``READING_SQL`` fetches all three in one statement, on a connection of this
module's own: a raw driver connection in autocommit mode, so a check costs one statement and no
``BEGIN``/``COMMIT`` (a single statement already reads one consistent snapshot, in SQLite's WAL mode
and in PostgreSQL alike).

On a SQLite file the readings are also cached per process. An entry is exact while nothing has been
committed to the database since it was read, which SQLite answers cheaply: ``PRAGMA data_version``
on a connection changes whenever *any other* connection commits, in this process or another
(https://www.sqlite.org/pragma.html#pragma_data_version). This module's connection never writes, so
every write anywhere (tracking, a hold, a reset, a plan change) bumps it and empties the cache. Time
alone can also change a reading without a write: a window ends, a cancelation or a reset takes effect,
or a hold expires. Each entry therefore also carries the earliest of those instants, on the clock each
is kept on (wall time for windows, the hold clock for holds), and is not used from then on.

PostgreSQL has no such counter, so there every check runs the statement (one round trip, prepared on
the server once per connection). The window computed from an account row is memoised either way
(``WindowMemo``): working out a billing period from its anchor costs more than the statement's own
client-side work.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import weakref
from dataclasses import dataclass
from typing import Any

from polar_metering._status import MeterReading
from polar_metering.backends._engine.dialect import Database
from polar_metering.backends._engine.timekeeping import EngineTime

__all__ = ["Account", "FastReads", "WindowMemo", "reading_sql"]

# Entries kept at most; past it the cache starts again empty (cheaper than an LRU on the hot path, and
# a process checking more distinct (customer, meter) pairs than this between two writes is rare).
_MAX_ENTRIES = 65_536
# Raw PostgreSQL connections kept for reuse; more threads than this open short-lived extra ones.
_PG_POOL = 8


@dataclass(frozen=True, slots=True)
class Account:
    """The ``pm_accounts`` columns a window is computed from (all None: no account row)."""

    customer: str
    plan: str | None
    anchor_us: int | None
    reset_us: int | None
    ends_us: int | None


def reading_sql(hold_now: str, dialect: str) -> str:
    """The one statement of a reading. Parameters: customer, customer, meter_id, now_us, customer,
    meter_id, then ``hold_now``'s own (see ``EngineTime.hold_params``).

    The rollup row is the latest one that starts at or before now: the current window's row when it
    exists. The caller checks that its ``window_us`` is the window it computes from the account row
    and reads the slow way otherwise, so a row of another window is never taken for the current one.
    PostgreSQL finds it with one descent of the primary key (``LATERAL ... LIMIT 1``); SQLite, which
    has no ``LATERAL``, with a ``MAX`` subquery on the same key.
    """
    if dialect == "postgresql":
        usage = (
            "LEFT JOIN LATERAL (SELECT window_us, n, total, vmax, vmin, credited FROM pm_usage "
            "WHERE customer = ? AND meter_id = ? AND window_us <= ? ORDER BY window_us DESC LIMIT 1) AS u "
            "ON true "
        )
    else:
        usage = (
            "LEFT JOIN pm_usage AS u ON u.customer = ?1 AND u.meter_id = ?2 AND u.window_us = ("
            "SELECT MAX(w.window_us) FROM pm_usage AS w WHERE w.customer = ?1 AND w.meter_id = ?2 "
            "AND w.window_us <= ?3) "
        )
        usage = usage.replace("?1", "?").replace("?2", "?").replace("?3", "?")
    sql = (
        "SELECT a.plan, a.anchor_us, a.reset_us, a.ends_us, "
        "u.window_us, u.n, u.total, u.vmax, u.vmin, u.credited, h.held_sum, h.held_max, h.held_until "
        "FROM (SELECT 1 AS one) AS x "
        "LEFT JOIN pm_accounts AS a ON a.customer = ? "
        f"{usage}"
        "CROSS JOIN (SELECT COALESCE(SUM(amount), 0.0) AS held_sum, COALESCE(MAX(amount), 0.0) AS held_max, "
        "MIN(expires_us) AS held_until FROM pm_holds WHERE customer = ? AND meter_id = ? "
        f"AND expires_us > {hold_now}) AS h"
    )
    return sql if dialect != "postgresql" else sql.replace("?", "%s")


class WindowMemo:
    """Windows by account state, each with the span of engine time it holds for: ``[computed at,
    until)``. Engine time never runs backwards, so a window computed at ``t0`` stays the window at every
    ``t`` in ``[t0, until)``; ``until`` is the window's end or the first account mark after ``t0``."""

    def __init__(self) -> None:
        self._memo: dict[tuple[Any, ...], tuple[int, int, Any]] = {}

    def get(self, key: tuple[Any, ...], now_us: int) -> tuple[Any, int] | None:
        found = self._memo.get(key)
        if found is not None and found[0] <= now_us < found[1]:
            return found[2], found[1]
        return None

    def put(self, key: tuple[Any, ...], since_us: int, until_us: int, window: Any) -> None:
        if len(self._memo) >= _MAX_ENTRIES:
            self._memo = {}
        self._memo[key] = (since_us, until_us, window)  # one dict store: safe without a lock

    def clear(self) -> None:
        self._memo = {}


@dataclass(frozen=True, slots=True)
class _Entry:
    reading: MeterReading
    wall_until_us: int  # engine (wall) time from which the reading may have changed
    hold_until_us: int | None  # hold-clock time the earliest active hold expires at


class FastReads:
    """The read connection(s) and, on a SQLite file, the cache (module docstring). Thread-safe and
    fork-safe: a child process opens its own connections and starts with an empty cache."""

    def __init__(self, db: Database, time: EngineTime) -> None:
        self.db = db
        self.time = time
        self._sql = reading_sql(time.hold_sql, "postgresql" if db.is_postgresql else "sqlite")
        self._sqlite_params = not db.is_postgresql
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._version: int | None = None
        self._sqlite: sqlite3.Connection | None = None
        self._sqlite_cursor: sqlite3.Cursor | None = None
        self._pg: list[Any] = []
        self._orphans: list[Any] = []  # a parent's connections, never closed from a child (see _forked)
        self.cached = db.is_sqlite and not db.memory
        self.hits = 0
        self.misses = 0
        _instances.add(self)

    # -- the cache (SQLite files) -------------------------------------------------------------------
    def lookup(self, key: tuple[str, str], now_us: int) -> tuple[MeterReading | None, int | None]:
        """A cached reading still exact at ``now_us``, and the data version to store a fresh one under
        (``None``: no cache here). Costs one ``PRAGMA data_version``."""
        if not self.cached:
            return None, None
        with self._lock, self.db.errors():
            cur = self._sqlite_cur()
            cur.execute("PRAGMA data_version")
            version = cur.fetchone()[0]
            if version != self._version:
                self._entries.clear()
                self._version = version
                self.misses += 1
                return None, version
            entry = self._entries.get(key)
            if entry is not None and now_us < entry.wall_until_us:
                held = entry.hold_until_us
                if held is None or self.time.hold_now_us() < held:
                    self.hits += 1
                    return entry.reading, version
            self.misses += 1
            return None, version

    def store(
        self,
        version: int | None,
        key: tuple[str, str],
        reading: MeterReading,
        wall_until_us: int,
        hold_until_us: int | None,
    ) -> None:
        """Keep ``reading`` if the database is still at ``version`` (the version read *before* the
        reading's statement ran: a commit in between makes the next lookup refetch)."""
        if version is None:
            return
        with self._lock:
            if version != self._version:
                return
            if len(self._entries) >= _MAX_ENTRIES:
                self._entries.clear()
            self._entries[key] = _Entry(reading, wall_until_us, hold_until_us)

    # -- the statement ----------------------------------------------------------------------------------
    def fetch(self, customer: str, meter_id: str, now_us: int) -> tuple[Any, ...]:
        """Run the reading statement (``reading_sql``) and return its one row."""
        if self._sqlite_params:
            params: tuple[Any, ...] = (customer, customer, meter_id, customer, meter_id, now_us)
        else:
            params = (customer, customer, meter_id, now_us)
        params += (customer, meter_id, *self.time.hold_params())
        with self.db.errors():
            if self.cached:
                with self._lock:
                    cur = self._sqlite_cur()
                    cur.execute(self._sql, params)
                    row: tuple[Any, ...] = cur.fetchone()
                    return row
            if self.db.is_postgresql:
                return self._fetch_pg(params)
            with self.db.read() as sa_conn:  # in-memory SQLite: the one shared connection
                return tuple(sa_conn.exec_driver_sql(self._sql, params).one())

    def _fetch_pg(self, params: tuple[Any, ...]) -> tuple[Any, ...]:
        """One statement on a pooled raw connection. A pooled connection the server has dropped (a
        restart, a failover, an idle timeout) fails on use: it is discarded and the statement runs
        once more on a new connection, as SQLAlchemy's pre-ping does for the engine's own pool."""
        import psycopg

        with self._lock:
            conn = self._pg.pop() if self._pg else None
        fresh = conn is None
        while True:
            if conn is None:
                conn = self.db.raw_postgresql_connection()
            try:
                row: tuple[Any, ...] = conn.execute(self._sql, params, prepare=True).fetchone()
                break
            except psycopg.OperationalError:
                conn.close()
                if fresh:
                    raise
                conn, fresh = None, True
            except BaseException:
                conn.close()  # its state is unknown after an error: never reuse it
                raise
        with self._lock:
            if len(self._pg) < _PG_POOL:
                self._pg.append(conn)
                return row
        conn.close()
        return row

    def _sqlite_cur(self) -> sqlite3.Cursor:
        if self._sqlite_cursor is None:
            path = self.db.engine.url.database
            timeout = self.db.busy_timeout_ms / 1000
            conn = sqlite3.connect(path or "", timeout=timeout, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA query_only=ON")  # this connection must never write (module docstring)
            self._sqlite, self._sqlite_cursor = conn, conn.cursor()
        return self._sqlite_cursor

    # -- lifecycle --------------------------------------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            sqlite_conn, pg = self._sqlite, self._pg
            self._sqlite = self._sqlite_cursor = None
            self._pg = []
            self._entries.clear()
            self._version = None
        if sqlite_conn is not None:
            sqlite_conn.close()
        for conn in pg:
            conn.close()

    def _forked(self) -> None:
        # The parent's connections belong to the parent: closing a PostgreSQL one here would end the
        # parent's session, so they are kept unreferenced by the pool and never closed.
        self._lock = threading.Lock()
        self._orphans += [c for c in (self._sqlite, *self._pg) if c is not None]
        self._sqlite = self._sqlite_cursor = None
        self._pg = []
        self._entries = {}
        self._version = None


_instances: weakref.WeakSet[FastReads] = weakref.WeakSet()


def _after_fork() -> None:
    for reads in list(_instances):
        reads._forked()


os.register_at_fork(after_in_child=_after_fork)
