"""Read-only queries for the dashboard and the ``usage`` reports, over the rollups.

Nothing here aggregates ``pm_events``: rankings read ``pm_usage`` (one row per customer, meter and
billing window), and the only event reads are bounded index lookups (a customer's newest events
through ``ix_pm_events_customer_ts``, the highest ``seq`` through the primary key). So the cost of
each query follows the number of customers and meters, never the number of events.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Float, and_, case, cast, func, literal, or_, select, union
from sqlalchemy.sql.elements import ColumnElement

from polar_metering.backends._engine import schema as t

if TYPE_CHECKING:
    from polar_metering.backends._engine.backend import LocalEngine
    from polar_metering.backends._engine.rollups import CompiledMeter

__all__ = [
    "EventRow",
    "HoldRow",
    "PeriodTotal",
    "active_holds",
    "change_marker",
    "current_totals",
    "customer_exists",
    "period_totals",
    "ranking",
    "recent_events",
]

# The ratio given to a customer with usage on a meter whose credit is 0: past any real ratio.
_OVER = 1e9


@dataclass(frozen=True, slots=True)
class EventRow:
    seq: int
    name: str
    timestamp: datetime
    ingested_at: datetime
    external_id: str | None
    metadata: dict[str, Any]


@dataclass(frozen=True, slots=True)
class HoldRow:
    id: str
    meter: str
    amount: float
    created_at: datetime
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class PeriodTotal:
    """A meter's usage summed over customers for billing windows starting in one month."""

    meter: str
    month: datetime
    total: float
    customers: int


def _consumed(meters: Sequence[CompiledMeter]) -> ColumnElement[Any]:
    """Polar's consumed units of a rollup row, by the row's meter aggregation (``consumed_of`` in SQL)."""
    u = t.usage.c
    n = cast(u.n, Float)
    by_func: dict[str, ColumnElement[Any]] = {
        "count": n,
        "unique": n,
        "sum": u.total,
        "max": func.coalesce(u.vmax, 0.0),
        "min": func.coalesce(u.vmin, 0.0),
        "avg": case((u.n > 0, u.total / n), else_=0.0),
    }
    return case({m.id: by_func[m.func] for m in meters}, value=u.meter_id, else_=0.0)


def _current_rows(now_us: int) -> ColumnElement[bool]:
    """Rollup rows of the window a customer is in now: the window contains ``now`` and does not
    start before a manual reset that already happened."""
    u, a = t.usage.c, t.accounts.c
    return and_(
        u.window_us <= now_us,
        or_(u.window_end_us.is_(None), u.window_end_us > now_us),
        or_(a.reset_us.is_(None), a.reset_us > now_us, u.window_us >= a.reset_us),
    )


def ranking(
    engine: LocalEngine, meters: Sequence[CompiledMeter], *, now_us: int
) -> list[tuple[str, float | None]]:
    """Every customer with the highest ``consumed / credited`` of its current windows, ordered: over
    the limit first, then nearest to it, customers without a limit last, ties by id.

    One pass over ``pm_usage`` (rows per customer, meter and window: no events). The ratio orders
    the list; the numbers a page shows come from the exact readings of its rows.
    """
    u, a, c = t.usage.c, t.accounts.c, t.customers.c
    consumed = _consumed(meters)
    ratio = case(
        (u.credited > 0, consumed / u.credited),
        (consumed > 0, literal(_OVER)),
        else_=literal(1.0),
    )
    worst = (
        select(u.customer.label("customer"), func.max(ratio).label("worst"))
        .select_from(t.usage.outerjoin(t.accounts, a.customer == u.customer))
        .where(u.meter_id.in_([m.id for m in meters]), u.credited.is_not(None), _current_rows(now_us))
        .group_by(u.customer)
        .subquery()
    )
    everyone = union(
        select(a.customer.label("customer")),
        select(u.customer.label("customer")),
        select(func.coalesce(c.external_id, c.id).label("customer")),
    ).subquery()
    query = (
        select(everyone.c.customer, worst.c.worst)
        .select_from(everyone.outerjoin(worst, worst.c.customer == everyone.c.customer))
        .order_by(case((worst.c.worst.is_(None), 1), else_=0), worst.c.worst.desc(), everyone.c.customer)
    )
    with engine.db.read() as conn:
        return [(str(r[0]), None if r[1] is None else float(r[1])) for r in conn.execute(query)]


def customer_exists(engine: LocalEngine, customer: str) -> bool:
    """Whether the engine has anything for ``customer``: an account, a rollup, or a customer record."""
    u, a, c = t.usage.c, t.accounts.c, t.customers.c
    with engine.db.read() as conn:
        for query in (
            select(a.customer).where(a.customer == customer),
            select(u.customer).where(u.customer == customer).limit(1),
            select(c.id).where(or_(c.external_id == customer, c.id == customer)),
        ):
            if conn.execute(query).first() is not None:
                return True
    return False


def change_marker(engine: LocalEngine) -> str:
    """Changes when usage, holds or subscriptions change, cheaply: the newest event's ``seq`` (a
    primary-key lookup), the hold table (small: active holds only), and the accounts' count."""
    with engine.db.read() as conn:
        seq = conn.execute(select(func.max(t.events.c.seq))).scalar()
        holds = conn.execute(select(func.count(), func.max(t.holds.c.created_us))).one()
        accounts = conn.execute(select(func.count()).select_from(t.accounts)).scalar()
    return f"{seq or 0}.{holds[0]}.{holds[1] or 0}.{accounts or 0}"


def recent_events(engine: LocalEngine, customer: str, *, limit: int = 20) -> list[EventRow]:
    """The customer's newest events by timestamp: a backward walk of the (customer, ts) index."""
    from polar_metering.backends._engine.backend import from_us

    e = t.events.c
    query = (
        select(e.seq, e.name, e.ts_us, e.ingested_us, e.external_id, e.metadata)
        .where(e.customer == customer)
        .order_by(e.ts_us.desc(), e.seq.desc())
        .limit(limit)
    )
    with engine.db.read() as conn:
        rows = conn.execute(query).all()
    return [
        EventRow(
            r.seq, r.name, from_us(r.ts_us), from_us(r.ingested_us), r.external_id, json.loads(r.metadata)
        )
        for r in rows
    ]


def active_holds(engine: LocalEngine, customer: str) -> list[HoldRow]:
    """Reservations of ``customer`` that have not expired, newest first. Holds expire on the engine's
    hold clock (``timekeeping``); the expiry shown is that moment in wall time."""
    from datetime import timedelta

    from polar_metering.backends._engine.backend import from_us

    h = t.holds.c
    slugs = {m.id: m.slug or m.id for m in engine._meters.values()}
    hold_now = engine.time.hold_now()
    query = (
        select(h.id, h.meter_id, h.amount, h.created_us, (h.expires_us - hold_now).label("left_us"))
        .where(and_(h.customer == customer, h.expires_us > hold_now))
        .order_by(h.created_us.desc())
    )
    with engine.db.read() as conn:
        rows = conn.execute(query).all()
    now = engine.time.now()
    return [
        HoldRow(
            r.id,
            slugs.get(r.meter_id, r.meter_id),
            float(r.amount),
            from_us(r.created_us),
            now + timedelta(microseconds=int(r.left_us)),
        )
        for r in rows
    ]


def period_totals(
    engine: LocalEngine, meters: Sequence[CompiledMeter], *, since_us: int
) -> list[PeriodTotal]:
    """Each meter's usage summed over customers, per month in which billing windows started, from
    the rollups (windows are per customer, anchored at their subscription, so a month gathers the
    windows that began in it)."""
    from polar_metering.backends._engine.backend import from_us

    u = t.usage.c
    consumed = _consumed(meters)
    query = (
        select(u.meter_id, u.window_us, func.sum(consumed), func.sum(case((consumed != 0, 1), else_=0)))
        .where(and_(u.meter_id.in_([m.id for m in meters]), u.window_us >= since_us))
        .group_by(u.meter_id, u.window_us)
    )
    with engine.db.read() as conn:
        rows = conn.execute(query).all()
    slugs = {m.id: m.slug or m.id for m in meters}
    merged: dict[tuple[str, datetime], list[float]] = {}
    for meter_id, window_us, total, customers in rows:
        start = from_us(window_us)
        month = start.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        acc = merged.setdefault((slugs[meter_id], month), [0.0, 0])
        acc[0] += float(total or 0.0)
        acc[1] += int(customers or 0)
    return sorted(
        (PeriodTotal(meter, month, total, int(n)) for (meter, month), (total, n) in merged.items()),
        key=lambda p: (p.meter, p.month),
    )


def current_totals(
    engine: LocalEngine, meters: Sequence[CompiledMeter], *, now_us: int
) -> dict[str, tuple[float, int]]:
    """Per meter slug: usage summed over every customer's current window, and how many customers
    have some (from the rollups)."""
    u, a = t.usage.c, t.accounts.c
    consumed = _consumed(meters)
    query = (
        select(u.meter_id, func.sum(consumed), func.sum(case((consumed != 0, 1), else_=0)))
        .select_from(t.usage.outerjoin(t.accounts, a.customer == u.customer))
        .where(u.meter_id.in_([m.id for m in meters]), _current_rows(now_us))
        .group_by(u.meter_id)
    )
    slugs = {m.id: m.slug or m.id for m in meters}
    with engine.db.read() as conn:
        return {slugs[r[0]]: (float(r[1] or 0.0), int(r[2] or 0)) for r in conn.execute(query)}
