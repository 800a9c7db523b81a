"""The ledger: exact limits on ``polar://`` across worker processes and machines.

Without a ledger, what a process has tracked but Polar has not yet counted is known to that process
alone (the overlay, ``_limits.py``), so N workers can each let a customer through on the same last
units. With one, every worker keeps usage in one database (SQLite for the workers of one machine,
PostgreSQL for several machines), and that database answers limit checks and reservations exactly,
as the embedded engine does. Polar stays the record for billing::

    track_*  --(one transaction)-->  ledger: pm_events + rollups + pm_relay_queue
                                         |
                                       relay (a thread in every process, any process may move any row)
                                         v
                                     outbox file  --sender-->  Polar events.ingest (deduplicated by
                                                               external_id)
    check_limit / reserve:  consumed  = max(ledger's usage this period, Polar's consumed units)
                            credited  = Polar's credited units (cached; webhooks and a TTL refresh it)
                            reserved  = the ledger's holds (exact across processes and hosts)

An event is in the ledger and its relay queue, or in neither: they are one transaction. The relay
copies queued events into the outbox, commits the outbox, then deletes them from the queue; a crash
between the two commits copies them again later, which Polar's ``external_id`` dedup makes harmless
(server/polar/event/repository.py: the first event with an id wins). So nothing tracked is lost and
nothing is counted twice.

Billing periods are Polar's: the customer's subscription (read through ``_lifecycle.py``) is mirrored
into the ledger's account row, so the ledger's windows are the subscription's periods; an event
counts in the period it is *ingested* in, as in Polar (server/polar/customer_meter/service.py). When
the mirrored period changes, the customer's rollups are rebuilt from the ledger's events in the same
transaction.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from polar_metering._events import Event
from polar_metering._exceptions import ConfigurationError
from polar_metering._status import MeterReading
from polar_metering.backends._base import Hold, IngestResult, parse_backend_url
from polar_metering.backends._engine.backend import LocalEngine
from polar_metering.backends._engine.timekeeping import from_us, to_us

if TYPE_CHECKING:
    from polar_metering._catalog import Catalog, Meter
    from polar_metering._clock import Clock
    from polar_metering._subscriptions import Subscription
    from polar_metering.delivery import Outbox

__all__ = ["Ledger", "check_ledger_url", "combine"]

log = logging.getLogger("polar_metering")

_RELAY_BATCH = 1000
_MAX_MIRRORED = 100_000
# How often an idle relay looks for events other processes stored (its own wake it at once).
_RELAY_POLL = 0.2


def check_ledger_url(url: object) -> str:
    """``url`` if it names a database the ledger can live in, else a ConfigurationError."""
    if not isinstance(url, str) or not url.startswith(("sqlite://", "postgresql://", "postgres://")):
        shown = parse_backend_url(url).masked if isinstance(url, str) and "://" in url else repr(url)[:60]
        raise ConfigurationError(
            "ledger: must be a sqlite:///path.db or postgresql://... URL (or None for no ledger), "
            f"got {shown}"
        )
    if url.startswith("sqlite") and (":memory:" in url or url in ("sqlite://", "sqlite:///")):
        raise ConfigurationError(
            "ledger: an in-memory SQLite database is private to one process; give a file (sqlite:///path.db)"
        )
    return url


def combine(polar: MeterReading, ledger: MeterReading) -> MeterReading:
    """The reading limits act on: the ledger's usage and holds, Polar's credit. Polar wins when it
    has counted more than the ledger holds (usage tracked before the ledger existed, or by code that
    sends to Polar directly), so the ledger never lets a customer past what Polar already shows."""
    # Positional construction: ``dataclasses.replace`` would cost a third of the whole check.
    return MeterReading(
        ledger.meter,
        ledger.customer,
        max(ledger.consumed, polar.consumed),
        polar.credited,
        polar.period_start or ledger.period_start,
        polar.period_end or ledger.period_end,
        ledger.reserved,
        ledger.samples,
        polar.stale,
    )


class Ledger:
    """One process's handle on the ledger database, and its relay to the outbox (module docstring)."""

    def __init__(self, url: str, *, catalog: Catalog, clock: Clock, outbox: Outbox) -> None:
        self.url = parse_backend_url(check_ledger_url(url))
        self.engine = LocalEngine(self.url, catalog=catalog, clock=clock)
        self.engine.relay = True
        self.catalog = catalog
        self._outbox = outbox
        self._mirrored: dict[str, tuple[str | None, int | None, int | None]] = {}
        # The subscription object each customer was last mirrored from: the lifecycle cache hands out
        # the same object until it reads Polar again, so most checks stop at an identity test.
        self._mirrored_from: dict[str, object] = {}
        self._plan_names = frozenset(p.name for p in catalog.plans)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        self._closed = False
        self.relayed = 0
        _ledgers.add(self)

    # -- tracking -----------------------------------------------------------------------------------
    def ingest(self, events: Sequence[Event]) -> IngestResult:
        """Store ``events`` in the ledger and its relay queue (one transaction), then wake the relay."""
        result = self.engine.ingest(events)
        self._kick()
        return result

    def _kick(self) -> None:
        if self._thread is None or self._pid != os.getpid():
            self._start()
        self._wake.set()

    def _start(self) -> None:
        with self._lock:
            if self._closed or (self._thread is not None and self._pid == os.getpid()):
                return
            self._pid = os.getpid()
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="polar-metering-relay", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                moved = self.relay_once()
            except Exception as exc:  # the ledger or the outbox refused: try again shortly
                log.warning("polar_metering: ledger relay failed, retrying: %s", exc)
                moved = 0
                self._stop.wait(1.0)
            if moved == 0:
                self._wake.wait(_RELAY_POLL)
                self._wake.clear()

    def relay_once(self, limit: int = _RELAY_BATCH) -> int:
        """Move up to ``limit`` queued events (any process's) into the outbox; returns how many."""
        db = self.engine.db
        sql = self.engine._sql
        with db.errors():
            with db.read() as conn:  # the common idle case: a read, no write lock taken
                if conn.exec_driver_sql("SELECT 1 FROM pm_relay_queue LIMIT 1").first() is None:
                    return 0
            with db.write() as conn:
                # PostgreSQL: processes on other machines relay at the same time; each takes rows
                # the others have not locked. SQLite's write transaction is exclusive already.
                lock = " FOR UPDATE OF q SKIP LOCKED" if db.is_postgresql else ""
                rows = conn.exec_driver_sql(
                    sql(
                        "SELECT q.seq, e.external_id, e.customer, e.name, e.ts_us, e.metadata "
                        "FROM pm_relay_queue q JOIN pm_events e ON e.seq = q.seq "
                        f"ORDER BY q.seq LIMIT ?{lock}"
                    ),
                    (limit,),
                ).fetchall()
                if not rows:
                    return 0
                events = [
                    Event(customer, name, json.loads(md), from_us(ts_us), eid)
                    for _, eid, customer, name, ts_us, md in rows
                ]
                # Durable whatever the outbox's default: the queue rows go only once the outbox has them.
                self._outbox.enqueue(events, durable=True)
                seqs = [r[0] for r in rows]
                for i in range(0, len(seqs), 500):
                    chunk = seqs[i : i + 500]
                    conn.exec_driver_sql(
                        sql(f"DELETE FROM pm_relay_queue WHERE seq IN ({', '.join('?' * len(chunk))})"),
                        tuple(chunk),
                    )
        self.relayed += len(rows)
        return len(rows)

    @property
    def relaying(self) -> bool:
        """Whether this process started its relay (it has tracked something)."""
        return self._thread is not None and self._pid == os.getpid()

    def queued(self) -> int:
        """Events in the relay queue (every process's)."""
        with self.engine.db.errors(), self.engine.db.read() as conn:
            return int(conn.exec_driver_sql("SELECT count(*) FROM pm_relay_queue").scalar_one())

    def drain(self, deadline: float, monotonic: Any) -> bool:
        """Relay until the queue is empty or ``deadline`` (on ``monotonic``) passes."""
        while True:
            if self.relay_once() == 0 and self.queued() == 0:
                return True
            if monotonic() >= deadline:
                return False

    # -- limits ------------------------------------------------------------------------------------
    def mirror(self, customer: str, subscription: Subscription | None) -> None:
        """Make the ledger's billing window for ``customer`` Polar's current period (once per change)."""
        if subscription is not None and self._mirrored_from.get(customer) is subscription:
            return
        plan = subscription.plan if subscription is not None else None
        if subscription is None or plan not in self._plan_names or subscription.period_start is None:
            key: tuple[str | None, int | None, int | None] = (None, None, None)
        else:
            ends = (
                to_us(subscription.period_end)
                if subscription.cancel_at_period_end and subscription.period_end is not None
                else None
            )
            # Anchored at the current period's start: the engine's period arithmetic then yields
            # exactly Polar's current period, whatever happened to the anchor before.
            key = (plan, to_us(subscription.period_start), ends)
        if self._mirrored.get(customer) != key:
            if len(self._mirrored) >= _MAX_MIRRORED:  # bounded memory; a miss only costs a read
                self._mirrored.clear()
                self._mirrored_from.clear()
            self.engine.mirror_account(customer, *key)
            self._mirrored[customer] = key
        if subscription is not None:
            self._mirrored_from[customer] = subscription

    def reading(self, customer: str, meter: Meter, polar: MeterReading) -> MeterReading:
        return combine(polar, self.engine.reading(customer, meter))

    def peek(self, customer: str, meter: Meter, polar: MeterReading) -> MeterReading | None:
        cached = self.engine.peek(customer, meter)
        return None if cached is None else combine(polar, cached)

    def hold(
        self, customer: str, meter: Meter, amount: float, ttl: float, polar: MeterReading
    ) -> tuple[Hold | None, MeterReading]:
        """Reserve ``amount`` in the ledger, atomically across every process that shares it."""
        return self.engine.hold(customer, meter, amount, ttl=ttl, adjust=lambda led: combine(polar, led))

    def settle(self, hold: Hold, events: Sequence[Event]) -> IngestResult:
        result = self.engine.settle(hold, events)
        self._kick()
        return result

    def release(self, hold: Hold) -> None:
        self.engine.release(hold)

    def is_counted(self, customer: str, meter: Meter, value: Any) -> bool:
        return self.engine.is_counted(customer, meter, value)

    # -- lifecycle ---------------------------------------------------------------------------------
    def close(self) -> None:
        with self._lock:
            self._closed = True
            thread = self._thread if self._pid == os.getpid() else None
        self._stop.set()
        self._wake.set()
        if thread is not None:
            thread.join(5.0)
        self.engine.close()

    def _forked(self) -> None:
        # The relay thread did not survive the fork; the child starts its own on first use.
        self._lock = threading.Lock()
        self._thread = None
        self._wake = threading.Event()
        self._stop = threading.Event()

    def __repr__(self) -> str:
        return f"Ledger({self.url.masked!r})"


_ledgers: weakref.WeakSet[Ledger] = weakref.WeakSet()


def _after_fork() -> None:
    for ledger in list(_ledgers):
        ledger._forked()


os.register_at_fork(after_in_child=_after_fork)
