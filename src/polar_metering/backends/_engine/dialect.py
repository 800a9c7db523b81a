"""Everything that differs between SQLite and PostgreSQL, in one place: connecting, transaction
modes, insert-or-ignore, and mapping driver errors to the library's exceptions."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from typing import Any

from sqlalchemy import Engine, Table, create_engine, event, exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.pool import StaticPool

from polar_metering._exceptions import BackendUnavailable, ConfigurationError, MeteringError

__all__ = ["Database", "insert_ignore"]


def insert_ignore(engine: Engine, table: Table) -> Any:
    """``INSERT ... ON CONFLICT DO NOTHING`` for this dialect."""
    if engine.dialect.name == "postgresql":
        return postgresql.insert(table).on_conflict_do_nothing()
    return sqlite.insert(table).on_conflict_do_nothing()


class Database:
    """A SQLAlchemy engine plus the transaction discipline the engine relies on.

    SQLite: WAL, ``synchronous=NORMAL`` (a commit survives a process kill; perf floors: 16.7k commits/s),
    a busy timeout, and ``BEGIN IMMEDIATE`` for writes so that two processes never both read then both
    try to upgrade to a write lock (which would fail one of them with "database is locked").
    PostgreSQL: READ COMMITTED with row locks (``SELECT ... FOR UPDATE``) on the rollup rows a write or
    reservation touches.
    """

    def __init__(self, url: str, *, busy_timeout_ms: int = 10_000, echo: bool = False) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self.memory = self.is_sqlite and (":memory:" in url or url in ("sqlite://", "sqlite:///"))
        # One in-process lock serialises writers of a SQLite file: cheaper than contending on the file lock.
        self.write_lock = threading.RLock()
        try:
            if self.is_sqlite:
                kwargs: dict[str, Any] = {"connect_args": {"check_same_thread": False, "timeout": busy_timeout_ms / 1000}}
                if self.memory:
                    kwargs["poolclass"] = StaticPool
                else:
                    kwargs["pool_size"] = 8
                    kwargs["max_overflow"] = 16
                self.engine = create_engine(url, echo=echo, **kwargs)
                self._setup_sqlite(busy_timeout_ms)
            elif url.startswith(("postgresql", "postgres")):
                if url.startswith("postgres://"):
                    url = "postgresql://" + url[len("postgres://") :]
                if url.startswith("postgresql://"):
                    url = "postgresql+psycopg://" + url[len("postgresql://") :]
                self.engine = create_engine(url, echo=echo, pool_size=8, max_overflow=16, pool_pre_ping=True)
            else:
                raise ConfigurationError(f"url: the local engine takes sqlite:// or postgresql:// URLs, got {url!r}")
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
                cur.execute("PRAGMA journal_mode=WAL")
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

    @contextlib.contextmanager
    def read(self) -> Iterator[Connection]:
        """A read transaction: one consistent snapshot (WAL lets it run beside a writer)."""
        with self.errors():
            if self.memory:
                with self.write_lock, self.engine.connect() as conn, conn.begin():
                    yield conn
            else:
                with self.engine.connect() as conn, conn.begin():
                    yield conn

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        """The one place driver errors become ours (chained with ``from``)."""
        try:
            yield
        except MeteringError:
            raise
        except exc.OperationalError as e:
            raise BackendUnavailable(f"database unavailable: {_short(e)}") from e
        except exc.InterfaceError as e:
            raise BackendUnavailable(f"database connection failed: {_short(e)}") from e
        except exc.DBAPIError as e:
            raise BackendUnavailable(f"database error: {_short(e)}", retryable=False) from e

    def dispose(self) -> None:
        self.engine.dispose()


def _short(e: exc.DBAPIError) -> str:
    text = str(e.orig) if e.orig is not None else str(e)
    return text.splitlines()[0][:300]
