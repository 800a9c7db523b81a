"""Time in the engine: billing windows on a wall clock that never runs backwards, and hold expiry on
a clock that every process sharing the database agrees on and that no wall-clock step moves.

Two clocks, for two different questions:

- **Which window is open?** Billing periods are calendar facts, so this is wall time. But a wall
  clock can step back (an NTP correction, a VM restored from a snapshot). Stepping back across a
  period's end would reopen a window that has closed, and the new period would lose what it had
  counted. So the engine's "now" is the latest wall time it has seen: after a step back it stands
  still until the wall clock catches up, and an event tracked meanwhile counts in the current window,
  as Polar counts a late event in the period it is ingested in. The latest time is kept per process
  and in the database (``pm_info``), so a process started after the step knows it too.
- **Has a hold expired?** A reservation's TTL is a duration, so this is monotonic time. On SQLite
  (one host) that is the host's monotonic clock, which every process of the machine shares and which
  only restarts at a reboot (holds from an earlier boot are dropped when the engine opens). On
  PostgreSQL with the system clock, processes may run on different hosts whose monotonic clocks have
  nothing in common, so holds run on the database server's clock (``clock_timestamp()``): one clock
  for every host. A custom clock (``ManualClock`` in tests) supplies its own ``monotonic()``.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

from sqlalchemy import BigInteger, ColumnElement, bindparam, cast, literal_column, select, update
from sqlalchemy.engine import Connection

from polar_metering._clock import Clock, SystemClock
from polar_metering.backends._engine import schema as t
from polar_metering.backends._engine.dialect import Database, insert_ignore

__all__ = ["EngineTime", "from_us", "to_us"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_us(when: datetime) -> int:
    """Microseconds since the epoch: exact integer time for both databases."""
    d = when - _EPOCH
    return (d.days * 86_400 + d.seconds) * 1_000_000 + d.microseconds


def from_us(us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=us)


_HIGH_WATER = "clock_high_water_us"
_HOLD_CLOCK = "hold_clock"
_US = 1_000_000
# The server's clock in microseconds, as PostgreSQL computes it at each statement.
_SERVER_NOW = "CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000000 AS BIGINT)"


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:  # not Linux: the clock's name only (a reboot there keeps old holds until expiry)
        return "unknown-boot"


class EngineTime:
    """The engine's two clocks (module docstring). Thread-safe."""

    def __init__(self, clock: Clock, db: Database) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._high: datetime | None = None  # the latest wall time handed out
        self._saved_us = 0  # the latest high-water mark this process wrote or read
        system = type(clock) is SystemClock
        self.server_holds = system and db.is_postgresql
        if self.server_holds:
            self.hold_clock_name = "postgresql-server"
        elif system:
            self.hold_clock_name = f"monotonic:{_boot_id()}"
        else:
            self.hold_clock_name = f"custom:{type(clock).__qualname__}"

    # -- wall time -------------------------------------------------------------------------------
    def now(self) -> datetime:
        """Wall time that never runs backwards: the clock's, or the latest seen when it stepped back."""
        now = self.clock.now()
        with self._lock:
            high = self._high
            if high is not None and now < high:
                return high
            self._high = now
            return now

    def _raise_to(self, when: datetime) -> None:
        with self._lock:
            if self._high is None or when > self._high:
                self._high = when

    def load(self, conn: Connection) -> None:
        """Adopt the high-water mark stored in the database and the hold clock's identity. Holds
        written on another hold clock (an earlier boot, an older version) cannot be compared with
        ours: they are dropped."""
        rows = dict(
            conn.execute(
                select(t.info.c.key, t.info.c.value).where(t.info.c.key.in_((_HIGH_WATER, _HOLD_CLOCK)))
            ).all()
        )
        stored = rows.get(_HIGH_WATER)
        if stored is not None:
            self._saved_us = int(stored)
            self._raise_to(from_us(self._saved_us))
        if rows.get(_HOLD_CLOCK) != self.hold_clock_name:
            conn.execute(t.holds.delete())
            conn.execute(
                insert_ignore(conn.engine, t.info).values(key=_HOLD_CLOCK, value=self.hold_clock_name)
            )
            conn.execute(update(t.info).where(t.info.c.key == _HOLD_CLOCK).values(value=self.hold_clock_name))

    def save(self, conn: Connection, now_us: int) -> None:
        """Inside a write: record ``now_us`` as the high-water mark, at most once a second per process,
        and adopt a later mark another process stored."""
        if now_us < self._saved_us + _US:
            return
        stored = conn.execute(select(t.info.c.value).where(t.info.c.key == _HIGH_WATER)).scalar()
        if stored is None:
            conn.execute(insert_ignore(conn.engine, t.info).values(key=_HIGH_WATER, value=str(now_us)))
        elif int(stored) < now_us:
            conn.execute(
                update(t.info)
                .where(t.info.c.key == _HIGH_WATER, cast(t.info.c.value, BigInteger) < now_us)
                .values(value=str(now_us))
            )
        else:
            self._raise_to(from_us(int(stored)))
        self._saved_us = max(now_us, int(stored or 0))

    # -- hold time -------------------------------------------------------------------------------
    @property
    def hold_sql(self) -> str:
        """SQL for "now" on the hold clock in microseconds, for hand-written statements: a ``?``
        parameter (``hold_params``), or the server's clock."""
        return _SERVER_NOW if self.server_holds else "?"

    def hold_params(self) -> tuple[int, ...]:
        """The parameter ``hold_sql`` takes (none for the server's clock)."""
        return () if self.server_holds else (self._hold_now_us(),)

    def hold_now(self) -> ColumnElement[int]:
        """ "Now" on the hold clock, for SQLAlchemy statements."""
        if self.server_holds:
            return literal_column(_SERVER_NOW, BigInteger())
        return bindparam("hold_now", self._hold_now_us(), BigInteger())

    def hold_expiry(self, ttl: float) -> ColumnElement[int]:
        """When a hold made now with ``ttl`` seconds expires, on the hold clock."""
        ttl_us = round(ttl * _US)
        if self.server_holds:
            return literal_column(f"({_SERVER_NOW} + {ttl_us})", BigInteger())
        return bindparam("hold_expiry", self._hold_now_us() + ttl_us, BigInteger())

    def hold_now_us(self) -> int:
        """ "Now" on the hold clock of this process (not the server's: SQLite only)."""
        return int(self.clock.monotonic() * _US)

    _hold_now_us = hold_now_us
