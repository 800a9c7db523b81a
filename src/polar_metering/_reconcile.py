"""Reconcile a ``polar://`` ledger with Polar: per customer and meter, what the ledger counted, what
Polar counted, and what explains the difference (events still in the ledger's relay queue, in the
outbox, or dead-lettered).

Polar is the record for billing; the ledger exists to make limits exact. They agree once every
event has been delivered and Polar has settled it (Polar updates balances ~15 s after ingest,
server/polar/customer_meter/tasks.py). A difference that nothing in flight explains means events
reached Polar by another path, or were lost on the way: ``polar-metering reconcile`` exits non-zero
then.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from polar_metering._exceptions import ConfigurationError

if TYPE_CHECKING:
    from polar_metering._client import Metering
    from polar_metering.backends._polar._backend import PolarBackend

__all__ = ["ReconcileRow", "reconcile"]

# Differences below this are float noise, not events.
_EPSILON = 1e-9


@dataclass(frozen=True, slots=True)
class ReconcileRow:
    """One customer and meter for one period. ``queued``: units in the ledger's relay queue;
    ``pending``: in the outbox, not yet accepted by Polar; ``dead``: dead-lettered (Polar refused them:
    they will not be billed unless retried). ``unexplained`` is what remains of ``ledger - polar``
    after those; ``None`` when the meter's aggregation (max, min, avg, unique) does not add up event
    by event and events are in flight."""

    customer: str
    meter: str
    period_start: datetime | None
    period_end: datetime | None
    ledger: float
    polar: float
    queued: float
    pending: float
    dead: float
    unexplained: float | None

    def to_dict(self) -> dict[str, object]:
        return {
            "customer": self.customer,
            "meter": self.meter,
            "period_start": None if self.period_start is None else self.period_start.isoformat(),
            "period_end": None if self.period_end is None else self.period_end.isoformat(),
            "ledger": self.ledger,
            "polar": self.polar,
            "queued": self.queued,
            "pending": self.pending,
            "dead": self.dead,
            "unexplained": self.unexplained,
        }

    @property
    def ok(self) -> bool:
        return self.unexplained is not None and abs(self.unexplained) <= _EPSILON


def _backend(client: Metering) -> PolarBackend:
    from polar_metering.backends._polar._backend import PolarBackend

    backend = client.backend
    if not isinstance(backend, PolarBackend) or backend.ledger is None:
        raise ConfigurationError(
            "reconcile: needs a polar:// client with a ledger (ledger= or METERING_LEDGER)"
        )
    return backend


def reconcile(
    client: Metering,
    *,
    period: Literal["current", "previous"] = "current",
    customers: Iterable[str] | None = None,
) -> list[ReconcileRow]:
    """Compare the ledger with Polar for ``customers`` (default: every customer the ledger has usage
    for in the period) on every catalog meter."""
    if period not in ("current", "previous"):
        raise ConfigurationError(f"period: must be 'current' or 'previous', got {period!r}")
    backend = _backend(client)
    ledger = backend.ledger
    assert ledger is not None
    engine = ledger.engine
    meters = list(client.catalog.meters)
    wanted = sorted(set(customers)) if customers is not None else _ledger_customers(engine)
    in_flight = _in_flight(backend)
    rows: list[ReconcileRow] = []
    for customer in wanted:
        polar = backend._fetch(customer, meters)  # Polar's own figures: no cache, no ledger
        backend._mirror(customer)
        for m in meters:
            polar_reading = polar[m.slug][0]
            led = engine.reading(customer, m)
            start_us, end_us = _us(led.period_start), _us(led.period_end)
            if period == "previous":
                led_value, start_us, end_us = _previous(engine, customer, m, start_us)
                polar_value = _polar_between(backend, customer, m, start_us, end_us)
            else:
                led_value, polar_value = led.consumed, polar_reading.consumed
            shares = _shares(engine, customer, m, in_flight, start_us, end_us)
            additive = engine._meter_id(m).func in ("count", "sum")
            difference = led_value - polar_value
            explained = shares["queued"] + shares["pending"] + shares["dead"]
            unexplained: float | None = difference - explained
            if not additive and any(shares.values()):
                unexplained = None
            rows.append(
                ReconcileRow(
                    customer=customer,
                    meter=m.slug,
                    period_start=_dt(start_us),
                    period_end=_dt(end_us),
                    ledger=led_value,
                    polar=polar_value,
                    queued=shares["queued"],
                    pending=shares["pending"],
                    dead=shares["dead"],
                    unexplained=unexplained,
                )
            )
    return rows


def _us(when: datetime | None) -> int | None:
    from polar_metering.backends._engine.timekeeping import to_us

    return None if when is None else to_us(when)


def _dt(us: int | None) -> datetime | None:
    from polar_metering.backends._engine.timekeeping import from_us

    return None if us is None else from_us(us)


def _ledger_customers(engine: Any) -> list[str]:
    with engine.db.read() as conn:
        return sorted(conn.exec_driver_sql("SELECT DISTINCT customer FROM pm_usage").scalars())


def _in_flight(backend: PolarBackend) -> dict[str, set[str]]:
    """External ids of events not (yet) counted by Polar, by where they are."""
    ledger = backend.ledger
    assert ledger is not None
    with ledger.engine.db.read() as conn:
        queued = set(
            conn.exec_driver_sql(
                "SELECT e.external_id FROM pm_relay_queue q JOIN pm_events e ON e.seq = q.seq"
            ).scalars()
        )
    pending = set(backend.outbox.queued_external_ids())
    dead: set[str] = set()
    offset = 0
    while True:
        page = backend.outbox.dead_letters(500, offset=offset)
        dead.update(d.external_id for d in page)
        if len(page) < 500:
            break
        offset += 500
    return {"queued": queued, "pending": pending - queued, "dead": dead - queued - pending}


def _shares(
    engine: Any,
    customer: str,
    meter: Any,
    in_flight: dict[str, set[str]],
    start_us: int | None,
    end_us: int | None,
) -> dict[str, float]:
    """The units each in-flight set contributes to ``meter`` for ``customer`` in the period, from
    the ledger's copies of the events (ingest time decides the period, as in Polar)."""
    from polar_metering.backends._engine.rollups import RowState, accumulate, consumed_of

    compiled = engine._meter_id(meter)
    out: dict[str, float] = {}
    for where, ids in in_flight.items():
        deltas: dict[Any, Any] = {}
        listed = sorted(ids)
        with engine.db.read() as conn:
            for i in range(0, len(listed), 500):
                chunk = listed[i : i + 500]
                marks = ", ".join("?" * len(chunk))
                sql = engine._sql(
                    "SELECT name, source, ts_us, metadata, ingested_us FROM pm_events "
                    f"WHERE customer = ? AND external_id IN ({marks})"
                )
                for name, source, ts_us, md, ingested_us in conn.exec_driver_sql(sql, (customer, *chunk)):
                    if start_us is not None and ingested_us < start_us:
                        continue
                    if end_us is not None and ingested_us >= end_us:
                        continue
                    accumulate(deltas, [compiled], customer, name, source, ts_us // 1_000_000, json.loads(md))
        delta = deltas.get((customer, compiled.id))
        if delta is None:
            out[where] = 0.0
        else:
            out[where] = (
                consumed_of(compiled.func, RowState(delta.n, delta.total, delta.vmax, delta.vmin))
                if compiled.func in ("count", "sum")
                else float(delta.matched)
            )
    return out


def _previous(
    engine: Any, customer: str, meter: Any, current_start: int | None
) -> tuple[float, int | None, int | None]:
    """The ledger's consumption in the window before the current one, and that window's bounds."""
    from polar_metering.backends._engine.rollups import RowState, consumed_of

    compiled = engine._meter_id(meter)
    if current_start is None:
        return 0.0, None, None
    with engine.db.read() as conn:
        row = conn.exec_driver_sql(
            engine._sql(
                "SELECT window_us, window_end_us, n, total, vmax, vmin FROM pm_usage "
                "WHERE customer = ? AND meter_id = ? AND window_us < ? ORDER BY window_us DESC LIMIT 1"
            ),
            (customer, compiled.id, current_start),
        ).first()
    if row is None:
        return 0.0, None, current_start
    start, end, n, total, vmax, vmin = row
    return consumed_of(compiled.func, RowState(n, total, vmax, vmin)), int(start), int(end or current_start)


def _polar_between(
    backend: PolarBackend, customer: str, meter: Any, start_us: int | None, end_us: int | None
) -> float:
    """Polar's quantity for the customer over ``[start, end)`` (meter quantities; Polar buckets them by
    the events' timestamps, so a late event can land in another period than the ledger's)."""
    if start_us is None or end_us is None:
        return 0.0
    from polar_metering.backends._engine.timekeeping import from_us

    points = backend.history(customer, meter, start=from_us(start_us), end=from_us(end_us), interval="day")
    return float(sum(v for _, v in points))
