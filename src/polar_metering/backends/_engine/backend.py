"""The local engine: events, meters, billing windows, credits and reservations in SQLite or PostgreSQL.

Semantics follow Polar's customer meters (``server/polar/customer_meter/service.py``,
``benefit/strategies/meter_credit/service.py``, ``subscription/service.py`` in polarsource/polar):

- A customer's usage on a meter is aggregated over a *window* that starts at the latest reset.
  Windows follow the subscription's billing periods (anchored at ``started_at``), a calendar month
  (UTC) for customers without one, and a manual reset starts a new window at once.
- Which window an event counts in is decided by when it is *ingested*, not its timestamp: a backdated
  event that arrives after a reset counts in the new window, as in Polar
  (server/polar/customer_meter/service.py).
- ``credited`` is the plan's credit for the meter plus any rollover and grants, a running sum clamped
  at 0; ``balance = credited - consumed`` and may go negative.

Every write updates the rollups in the same transaction as the events, so readers never see one
without the other and a limit check reads one row.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import and_, delete, func, insert, select, update
from sqlalchemy.engine import Connection

from polar_metering._catalog import Aggregation, Catalog, Filter, Meter, Plan
from polar_metering._clock import Clock, SystemClock
from polar_metering._evaluate import unique_key
from polar_metering._events import Event, describe
from polar_metering._exceptions import ConfigurationError, NotFound
from polar_metering._periods import calendar_month, period_containing
from polar_metering._projection import project
from polar_metering._status import MeterReading
from polar_metering.backends._base import Backend, BackendURL, Hold, IngestResult, parse_backend_url
from polar_metering.backends._engine import schema as t
from polar_metering.backends._engine.dialect import Database, insert_ignore
from polar_metering.backends._engine.fastread import Account, FastReads, WindowMemo
from polar_metering.backends._engine.lifecycle import Lifecycle
from polar_metering.backends._engine.polar_surface import PolarSurface
from polar_metering.backends._engine.records import PolarEventIn
from polar_metering.backends._engine.rollups import (
    CompiledMeter,
    Delta,
    MeterIndex,
    RowState,
    accumulate,
    consumed_of,
    dumps,
    merge,
)
from polar_metering.backends._engine.timekeeping import EngineTime, from_us, to_us

__all__ = ["LocalEngine", "Window", "from_us", "plan_units", "to_us", "usage_since"]

_IN_CHUNK = 500  # bound on IN (...) lists; SQLite's default variable limit is far above this


def _event_rows(events: Sequence[Event]) -> list[tuple[Any, ...]]:
    """Rows for ``_ingest_rows``. Events of one batch usually share one timestamp object: convert once."""
    rows = []
    last_ts: datetime | None = None
    last_us = 0
    for e in events:
        ts = e.timestamp
        if ts is not last_ts:
            last_ts, last_us = ts, to_us(ts)
        rows.append((e.external_id, e.customer_id, e.customer_id, None, e.name, last_us, e.metadata, "user"))
    return rows


@dataclass(frozen=True, slots=True)
class Window:
    """The billing window a customer is in: ``[start, end)``; ``end`` None for open-ended windows."""

    start_us: int
    end_us: int | None
    plan: Plan | None


class Credit(NamedTuple):
    """A window's credit: ``units`` in all (Polar's NR + R), ``rollover`` the flagged part (R,
    server/polar/customer_meter/service.py)."""

    units: float
    rollover: float


def _credit_columns(credit: Credit | None) -> dict[str, float | None]:
    """The rollup row's credit columns; both NULL when the plan grants nothing (no limit)."""
    if credit is None:
        return {"credited": None, "credited_rollover": None}
    return {"credited": credit.units, "credited_rollover": credit.rollover}


def flagged_credit(row: Any, plan: Plan | None) -> float:
    """The rollover-flagged part of a rollup row's credit. Rows from before schema 2 have none
    recorded; then, as the engine then treated them, a rollover plan's credit was flagged whole."""
    if row.credited_rollover is not None:
        return float(row.credited_rollover)
    return float(row.credited or 0.0) if plan is not None and plan.rollover else 0.0


def plan_units(plan: Plan | None, meter: CompiledMeter) -> float | None:
    """The units ``plan`` credits ``meter`` each period, or None. A plan names a meter by its catalog
    slug, or by its id (meters created through the emulator's API have no slug)."""
    if plan is None:
        return None
    for key in (meter.slug, meter.id):
        if key is not None and key in plan.credits:
            return float(plan.credits[key])
    return None


def usage_since(acct: Any, window: Window) -> int:
    """Where the usage of ``window`` begins. Usually its start; in a subscription's first period,
    the start of the window the customer was in when subscribing (``reset_us`` before the anchor):
    subscribing does not reset usage, so what was counted before still counts (see ``subscribe``)."""
    if (
        acct is not None
        and window.plan is not None
        and acct.anchor_us is not None
        and acct.reset_us is not None
        and acct.reset_us < window.start_us == acct.anchor_us
    ):
        return int(acct.reset_us)
    return window.start_us


def _meter_reading(
    customer: str,
    meter: CompiledMeter,
    state: RowState,
    credited: float | None,
    window: Window,
    held_sum: float,
    held_max: float,
) -> MeterReading:
    """A reading from a rollup row's state and the window's active holds: what ``max``/``min``
    meters hold back is the largest hold, what the others hold back is the sum."""
    return MeterReading(
        meter=meter.slug or meter.id,
        customer=customer,
        consumed=consumed_of(meter.func, state),
        credited=None if credited is None else float(credited),
        period_start=from_us(window.start_us),
        period_end=from_us(window.end_us) if window.end_us is not None else None,
        reserved=float(held_max if meter.func in ("max", "min") else held_sum),
        samples=state.n,
    )


@dataclass(slots=True)
class _Row:
    customer: str
    meter_id: str
    window_us: int
    ext: str | None
    cid: str | None
    name: str
    ts_us: int
    metadata: Mapping[str, Any]
    source: str
    external_id: str | None


class LocalEngine(Lifecycle, PolarSurface, Backend):
    """The embedded engine behind ``sqlite://`` and ``postgresql://`` URLs; subscriptions and plan
    changes are in ``lifecycle.py``."""

    schemes = ("sqlite", "postgresql", "postgres")
    supports_plans = True
    supports_holds = True
    settles_immediately = True

    def __init__(self, url: BackendURL, *, catalog: Catalog, clock: Clock, **options: Any) -> None:
        unknown = set(options) - {"busy_timeout_ms", "echo", "create_schema"}
        if unknown:
            raise ConfigurationError(f"options: unknown options for the local engine: {sorted(unknown)}")
        busy = options.get("busy_timeout_ms", 10_000)
        if isinstance(busy, bool) or not isinstance(busy, int) or not 0 <= busy <= 2**31 - 1:
            raise ConfigurationError(
                f"busy_timeout_ms: must be an integer of milliseconds >= 0, got {describe(busy, 40)}"
            )
        for flag in ("echo", "create_schema"):
            if not isinstance(options.get(flag, False), bool):
                raise ConfigurationError(f"{flag}: must be true or false")
        super().__init__(url, catalog=catalog, clock=clock)
        self.db = Database(url.raw, busy_timeout_ms=busy, echo=options.get("echo", False))
        self._plans: dict[str, Plan] = {}
        self._default_plan: Plan | None = catalog.default
        self._meters: dict[str, CompiledMeter] = {}
        self._slugs: dict[str, str] = {}
        self._windows_memo = WindowMemo()
        # Set by a polar:// ledger (``_polar/_ledger.py``): every stored event is also queued for its
        # relay, in the same transaction.
        self.relay = False
        self._locked_meters: set[str] = set()
        self.time = EngineTime(clock, self.db)
        held = (
            f"FROM pm_holds h WHERE h.customer = ? AND h.meter_id = ? AND h.expires_us > {self.time.hold_sql}"
        )
        self._sql_account = self._sql(
            "SELECT customer, plan, anchor_us, reset_us, ends_us FROM pm_accounts WHERE customer = ?"
        )
        self._sql_reading = self._sql(
            f"SELECT u.n, u.total, u.vmax, u.vmin, u.credited, (SELECT COALESCE(SUM(h.amount), 0.0) {held}), "
            f"(SELECT COALESCE(MAX(h.amount), 0.0) {held}), u.window_us "
            "FROM (SELECT 1 AS one) AS x LEFT JOIN pm_usage u "
            "ON u.customer = ? AND u.meter_id = ? AND u.window_us = ?"
        )
        if options.get("create_schema", True):
            self._create_schema()
        with self.db.errors(), self.db.write() as conn:
            self.time.load(conn)
        self._sync_catalog()
        self.reads = FastReads(self.db, self.time)

    def _sql(self, text: str) -> str:
        """Portable SQL written with ``?`` placeholders, in this driver's parameter style."""
        return text if self.db.engine.dialect.paramstyle == "qmark" else text.replace("?", "%s")

    @classmethod
    def open(
        cls,
        url: str = "sqlite:///metering.db",
        *,
        catalog: Catalog | None = None,
        clock: Clock | None = None,
        **options: Any,
    ) -> LocalEngine:
        """Open (creating if needed) the engine at ``url``."""
        return cls(
            parse_backend_url(url), catalog=catalog or Catalog(), clock=clock or SystemClock(), **options
        )

    # -- schema and catalog ---------------------------------------------------------------------
    def _create_schema(self) -> None:
        from polar_metering.backends._engine.migrations import upgrade_schema

        with self.db.errors():
            upgrade_schema(self.db)

    def _sync_catalog(self) -> None:
        """Store the code catalog's meters (by slug) and plans: code is the source of truth here."""
        now = to_us(self.time.now())
        changed: list[str] = []
        with self.db.write() as conn:
            self.db.serialize_setup(conn)  # processes opening one PostgreSQL database at once
            existing = {r.slug: r for r in conn.execute(select(t.meters).where(t.meters.c.slug.is_not(None)))}
            for meter in self.catalog.meters:
                flt, agg = dumps(meter.filter.to_polar()), dumps(meter.aggregation.to_polar())
                row = existing.get(meter.slug)
                if row is None:
                    conn.execute(
                        insert(t.meters).values(
                            id=str(uuid.uuid4()),
                            slug=meter.slug,
                            name=meter.name,
                            filter=flt,
                            aggregation=agg,
                            unit=meter.unit,
                            metadata="{}",
                            created_us=now,
                            modified_us=None,
                            locked=False,
                        )
                    )
                elif (row.filter, row.aggregation, row.name, row.unit, row.archived_us) != (
                    flt,
                    agg,
                    meter.name,
                    meter.unit,
                    None,
                ):
                    conn.execute(
                        update(t.meters)
                        .where(t.meters.c.id == row.id)
                        .values(
                            name=meter.name,
                            filter=flt,
                            aggregation=agg,
                            unit=meter.unit,
                            modified_us=now,
                            archived_us=None,
                        )
                    )
                    if (row.filter, row.aggregation) != (flt, agg):
                        changed.append(row.id)
            for plan in self.catalog.plans:
                self._store_plan(conn, plan)
        self._load_meters()
        for meter_id in changed:
            self.rebuild(meter_id=meter_id)

    def _store_plan(self, conn: Connection, plan: Plan) -> None:
        values = {"credits": dumps(dict(plan.credits)), "interval": plan.interval, "rollover": plan.rollover}
        # Insert-if-missing then update: safe when another process stores the same plan at once.
        conn.execute(insert_ignore(self.db.engine, t.plans).values(name=plan.name, **values))
        conn.execute(update(t.plans).where(t.plans.c.name == plan.name).values(**values))
        self._plans[plan.name] = plan
        self._windows_memo.clear()  # memoised windows may hold the plan's old version

    def _load_meters(self) -> None:
        with self.db.read() as conn:
            rows = conn.execute(select(t.meters).order_by(t.meters.c.created_us, t.meters.c.id)).all()
        meters: dict[str, CompiledMeter] = {}
        for r in rows:
            meters[r.id] = CompiledMeter.build(
                r.id,
                r.slug,
                r.name,
                Filter.from_polar(json.loads(r.filter)),
                Aggregation.from_polar(json.loads(r.aggregation)),
                archived=r.archived_us is not None,
            )
        self._meters = meters
        self._locked_meters = {r.id for r in rows if r.locked}
        self._index = MeterIndex(meters.values())
        self._slugs = {m.slug: m.id for m in meters.values() if m.slug}

    def _meter_id(self, meter: Meter | str) -> CompiledMeter:
        slug = meter.slug if isinstance(meter, Meter) else meter
        meter_id = self._slugs.get(slug)
        if meter_id is None:
            if slug in self._meters:
                return self._meters[slug]
            raise ConfigurationError(f"meter: unknown meter {slug!r}; known meters are {sorted(self._slugs)}")
        return self._meters[meter_id]

    def _plan(self, conn: Connection | None, name: str | None) -> Plan | None:
        if name is None:
            return None
        plan = self._plans.get(name)
        if plan is None:
            assert conn is not None, "a plan unknown to this process is read from the database"
            row = conn.execute(select(t.plans).where(t.plans.c.name == name)).first()
            if row is None:
                return None
            plan = Plan(
                row.name, credits=json.loads(row.credits), interval=row.interval, rollover=row.rollover
            )
            self._plans[name] = plan
        return plan

    # -- windows and credits --------------------------------------------------------------------
    def _window(self, conn: Connection, customer: str, now: datetime) -> Window:
        acct = conn.execute(select(t.accounts).where(t.accounts.c.customer == customer)).first()
        return self._window_of(conn, acct, now)

    def _window_of(self, conn: Connection | None, acct: Any, now: datetime) -> Window:
        """The window ``acct`` is in at ``now``. ``conn`` may be None when the account's plan is
        already known to this process (``self._plans``)."""
        plan = self._plan(conn, acct.plan) if acct is not None else None
        now_us = to_us(now)
        # A plan canceled at period end stops at ``ends_us``; usage after it starts a new window.
        ended = None
        if acct is not None and acct.ends_us is not None and now_us >= acct.ends_us:
            ended = acct.ends_us
        if plan is not None and ended is None and acct is not None and acct.anchor_us is not None:
            start, end = period_containing(from_us(acct.anchor_us), plan.interval, now)
        else:
            start, end = calendar_month(now)
            plan = self._default_plan  # None unless the catalog names one (docs/semantics.md)
        start_us, end_us = to_us(start), to_us(end)
        for mark in (acct.reset_us if acct is not None else None, ended):
            if mark is not None and start_us <= mark <= now_us:
                start_us = max(start_us, mark)
        return Window(start_us, end_us, plan)

    def _window_at(self, conn: Connection, customer: str, at_us: int) -> Window:
        return self._window(conn, customer, from_us(at_us))

    def _initial_credit(
        self, conn: Connection, customer: str, meter: CompiledMeter, window: Window
    ) -> Credit | None:
        """Credit at the start of a window: the plan's units plus what rolls over from the window
        before (server/polar/benefit/strategies/meter_credit/service.py). ``None``: the plan grants nothing
        for this meter, so it has no limit."""
        base = plan_units(window.plan, meter)
        if base is None:
            return None
        plan = window.plan
        assert plan is not None
        # The plan's own grant is flagged as the plan says; what rolls over arrives flagged (Polar
        # re-grants it as a rollover credit), so it can keep rolling while it goes unused.
        fresh = base if plan.rollover else 0.0
        prev = conn.execute(
            select(t.usage)
            .where(
                and_(
                    t.usage.c.customer == customer,
                    t.usage.c.meter_id == meter.id,
                    t.usage.c.window_us < window.start_us,
                )
            )
            .order_by(t.usage.c.window_us.desc())
            .limit(1)
        ).first()
        if prev is None or prev.credited is None:
            return Credit(base, fresh)
        # Polar: rollover = max(0, min(int(NR + R - U), R)). Non-rollover credit is used up first;
        # of what is left, only the flagged part carries over, truncated to whole units.
        credited, flagged = float(prev.credited), flagged_credit(prev, plan)
        used = consumed_of(meter.func, RowState(prev.n, prev.total, prev.vmax, prev.vmin))
        end_us = prev.window_end_us
        while True:
            rollover = max(0.0, min(float(int(credited - used)), flagged))
            if end_us is None or end_us >= window.start_us:
                return Credit(base + rollover, fresh + rollover)
            # An idle window in between: nothing used, so its flagged credit rolls on whole.
            credited, flagged, used = base + rollover, fresh + rollover, 0.0
            nxt = self._window_at(conn, customer, end_us)
            if nxt.end_us is None or nxt.end_us <= end_us:
                return Credit(base + rollover, fresh + rollover)
            end_us = nxt.end_us

    def _usage_row(
        self, conn: Connection, customer: str, meter: CompiledMeter, window: Window, *, lock: bool
    ) -> Any:
        """The rollup row for (customer, meter, window), created with its initial credit if missing."""
        where = and_(
            t.usage.c.customer == customer,
            t.usage.c.meter_id == meter.id,
            t.usage.c.window_us == window.start_us,
        )
        query = select(t.usage).where(where)
        if lock:
            query = query.with_for_update()
        row = conn.execute(query).first()
        if row is not None:
            return row
        now = to_us(self.time.now())
        conn.execute(
            insert_ignore(self.db.engine, t.usage).values(
                customer=customer,
                meter_id=meter.id,
                window_us=window.start_us,
                window_end_us=window.end_us,
                n=0,
                total=0.0,
                vmax=None,
                vmin=None,
                **_credit_columns(self._initial_credit(conn, customer, meter, window)),
                created_us=now,
                modified_us=None,
            )
        )
        return conn.execute(query).first()

    # -- ingest ---------------------------------------------------------------------------------------
    def ingest(self, events: Sequence[Event]) -> IngestResult:
        """Store validated events (library path: external customer ids) and update rollups."""
        if not events:
            return IngestResult(0, 0)
        rows = _event_rows(events)
        return self.db.run_write(lambda conn: self._ingest_rows(conn, rows))

    def ingest_polar(self, events: Sequence[PolarEventIn]) -> IngestResult:
        """Store events in Polar's ingest shape (the emulator's path); ``customer_id`` must exist."""
        if not events:
            return IngestResult(0, 0)
        return self.db.run_write(lambda conn: self._ingest_polar_rows(conn, events))

    def _ingest_polar_rows(self, conn: Connection, events: Sequence[PolarEventIn]) -> IngestResult:
        keys: dict[str, str] = {}
        rows = []
        for e in events:
            if e.customer_id is not None:
                if e.customer_id not in keys:
                    c = conn.execute(select(t.customers).where(t.customers.c.id == e.customer_id)).first()
                    if c is None:
                        raise NotFound(f"customer_id: customer {e.customer_id} not found", status_code=404)
                    keys[e.customer_id] = c.external_id or c.id
                key = keys[e.customer_id]
            else:
                key = e.external_customer_id or ""
            rows.append(
                (
                    e.external_id,
                    key,
                    e.external_customer_id,
                    e.customer_id,
                    e.name,
                    to_us(e.timestamp),
                    e.metadata,
                    e.source,
                )
            )
        return self._ingest_rows(conn, rows)

    def _ingest_rows(self, conn: Connection, rows: Sequence[tuple[Any, ...]]) -> IngestResult:
        now_us = to_us(self.time.now())
        self.time.save(conn, now_us)
        # server/polar/event/repository.py: first write wins, within the batch too.
        seen: set[str] = set()
        fresh: list[tuple[Any, ...]] = []
        for row in rows:
            eid = row[0]
            if eid is not None:
                if eid in seen:
                    continue
                seen.add(eid)
            fresh.append(row)
        if not fresh:
            return IngestResult(0, len(rows))
        inserted = self.db.insert_events(
            conn, [(r[0], r[1], r[2], r[3], r[4], r[5], dumps(r[6]), r[7]) for r in fresh], now_us
        )
        if inserted is not None:  # some were already stored: a resend
            fresh = [r for r in fresh if r[0] is None or r[0] in inserted]
        if fresh:
            self._apply(conn, fresh, now_us)
            if self.relay:
                self.db.queue_for_relay(conn, [r[0] for r in fresh if r[0] is not None])
        return IngestResult(len(fresh), len(rows) - len(fresh))

    def _apply(self, conn: Connection, rows: Iterable[tuple[Any, ...]], now_us: int) -> None:
        index = self._index
        deltas: dict[tuple[str, str], Delta] = {}
        for r in rows:
            accumulate(deltas, index.candidates(r[4]), r[1], r[4], r[7], r[5] // 1_000_000, r[6])
        if deltas:
            self._add_many(conn, deltas, now_us)

    def _windows(self, conn: Connection, customers: Iterable[str], now: datetime) -> dict[str, Window]:
        """Current windows of many customers with one query (customers without an account row get
        the calendar month)."""
        wanted = sorted(set(customers))
        accounts = {acct.customer: acct for acct in self.db.accounts(conn, wanted)}
        return {c: self._window_of(conn, accounts.get(c), now) for c in wanted}

    def _add_many(self, conn: Connection, deltas: Mapping[tuple[str, str], Delta], now_us: int) -> None:
        """Fold ``deltas`` into the rollups with a fixed number of statements per batch: read the
        rows (locked, in key order so concurrent writers never deadlock), create the missing ones,
        then one executemany update."""
        windows = self._windows(conn, (c for c, _ in deltas), from_us(now_us))
        keys = sorted((c, m, windows[c].start_us) for (c, m) in deltas)
        states = self._lock_rows(conn, keys)
        missing = [k for k in keys if k not in states]
        if missing:
            conn.execute(
                insert_ignore(self.db.engine, t.usage),
                [
                    {
                        "customer": c,
                        "meter_id": m,
                        "window_us": w,
                        "window_end_us": windows[c].end_us,
                        "n": 0,
                        "total": 0.0,
                        "vmax": None,
                        "vmin": None,
                        **_credit_columns(self._initial_credit(conn, c, self._meters[m], windows[c])),
                        "created_us": now_us,
                        "modified_us": None,
                    }
                    for c, m, w in missing
                ],
            )
            states.update(self._lock_rows(conn, missing))
        new_unique = self._insert_unique_values(conn, deltas, windows)
        updates = []
        for c, m, w in keys:
            delta = deltas[(c, m)]
            state = merge(states[(c, m, w)], delta, new_unique.get((c, m), 0))
            updates.append(
                {
                    "k_c": c,
                    "k_m": m,
                    "k_w": w,
                    "n": state.n,
                    "total": state.total,
                    "vmax": state.vmax,
                    "vmin": state.vmin,
                    "modified_us": now_us,
                }
            )
        self.db.update_usage(conn, updates, now_us)
        self._lock_meters(conn, {m for _, m in deltas})

    def _lock_rows(
        self, conn: Connection, keys: Sequence[tuple[str, str, int]]
    ) -> dict[tuple[str, str, int], RowState]:
        """Read, and on PostgreSQL lock, the rollup rows for ``keys`` (see ``Database.lock_usage_rows``)."""
        return {
            (r[0], r[1], r[2]): RowState(r[3], r[4], r[5], r[6]) for r in self.db.lock_usage_rows(conn, keys)
        }

    def _insert_unique_values(
        self, conn: Connection, deltas: Mapping[tuple[str, str], Delta], windows: Mapping[str, Window]
    ) -> dict[tuple[str, str], int]:
        """Record distinct values of unique meters; returns how many were new per (customer, meter)."""
        counts: dict[tuple[str, str], int] = {}
        v = t.usage_values.c
        for (c, m), d in sorted(deltas.items()):
            if not d.keys:
                continue
            w = windows[c].start_us
            keys = sorted(d.keys)
            have: set[str] = set()
            for i in range(0, len(keys), _IN_CHUNK):
                have.update(
                    conn.execute(
                        select(v.value_key).where(
                            and_(
                                v.customer == c,
                                v.meter_id == m,
                                v.window_us == w,
                                v.value_key.in_(keys[i : i + _IN_CHUNK]),
                            )
                        )
                    ).scalars()
                )
            fresh = [k for k in keys if k not in have]
            if fresh:
                conn.execute(
                    insert_ignore(self.db.engine, t.usage_values),
                    [{"customer": c, "meter_id": m, "window_us": w, "value_key": k} for k in fresh],
                )
                counts[(c, m)] = len(fresh)
        return counts

    def _lock_meters(self, conn: Connection, meter_ids: set[str]) -> None:
        # server/polar/meter/service.py: a meter that has aggregated an event can no longer change its filter
        # or aggregation.
        # A meter is remembered as locked only once the database showed it locked before this
        # transaction (the UPDATE changed nothing): remembering our own UPDATE would be wrong if the
        # transaction rolled back. Locks are never taken back, so after the first batches this costs
        # no statement at all.
        known = [m for m in meter_ids if m in self._meters and m not in self._locked_meters]
        if known:
            marks = ", ".join("?" * len(known))
            sql = self._sql(f"UPDATE pm_meters SET locked = ? WHERE id IN ({marks}) AND locked = ?")
            if conn.exec_driver_sql(sql, (True, *known, False)).rowcount == 0:
                self._locked_meters.update(known)

    def _add(
        self, conn: Connection, customer: str, meter: CompiledMeter, window: Window, delta: Delta, now_us: int
    ) -> None:
        self._add_many(conn, {(customer, meter.id): delta}, now_us)

    # -- readings -------------------------------------------------------------------------------------
    def _reading(self, conn: Connection, customer: str, meter: CompiledMeter, now: datetime) -> MeterReading:
        """One customer's reading: the account row, then the rollup row with active holds in one
        statement. Plain SQL through the driver: this is the limit-check hot path, and building
        SQLAlchemy expressions would cost several times the database's own work."""
        acct = conn.exec_driver_sql(self._sql_account, (customer,)).first()
        window = self._window_of(conn, acct, now)
        held = (customer, meter.id, *self.time.hold_params())
        row = conn.exec_driver_sql(
            self._sql_reading, (*held, *held, customer, meter.id, window.start_us)
        ).one()
        n, total, vmax, vmin, credited, held_sum, held_max, exists = row
        if exists is None:
            credit = self._initial_credit(conn, customer, meter, window)
            state, credited = RowState(), None if credit is None else credit.units
        else:
            state = RowState(n, total, vmax, vmin)
        return _meter_reading(customer, meter, state, credited, window, held_sum, held_max)

    def reading(self, customer: str, meter: Meter) -> MeterReading:
        return self._fast_reading(customer, self._meter_id(meter))

    def readings(self, customer: str) -> dict[str, MeterReading]:
        return {m.slug: self._fast_reading(customer, self._meter_id(m)) for m in self.catalog.meters}

    def peek(self, customer: str, meter: Meter) -> MeterReading | None:
        """A cached reading that is still exact (SQLite files; one ``PRAGMA data_version``, no I/O
        that can wait on a lock), so the async client answers on the event loop."""
        compiled = self._meter_id(meter)
        return self.reads.lookup((customer, compiled.id), to_us(self.time.now()))[0]

    def _fast_reading(self, customer: str, meter: CompiledMeter) -> MeterReading:
        """The limit-check path (``fastread.py``): a cached reading, or one statement on a connection
        of the read path's own, or (rarely) the full ``_reading``."""
        now = self.time.now()
        now_us = to_us(now)
        key = (customer, meter.id)
        hit, version = self.reads.lookup(key, now_us)
        if hit is not None:
            return hit
        row = self.reads.fetch(customer, meter.id, now_us)
        plan_name, anchor_us, reset_us, ends_us, window_us, n, total, vmax, vmin, credited = row[:10]
        held_sum, held_max, held_until = row[10:13]
        if plan_name is not None and plan_name not in self._plans:
            return self._slow_reading(customer, meter, now)  # a plan stored by another process: load it
        memo_key = (plan_name, anchor_us, reset_us, ends_us)
        memo = self._windows_memo.get(memo_key, now_us)
        if memo is not None:
            window, until = memo
        else:
            window = self._window_of(None, Account(customer, plan_name, anchor_us, reset_us, ends_us), now)
            # The window holds until it ends or a mark of the account (a cancelation's end, a reset,
            # an anchor) is reached, whichever comes first.
            until = window.end_us if window.end_us is not None else 2**63 - 1
            for mark in (anchor_us, reset_us, ends_us):
                if mark is not None and now_us < mark < until:
                    until = mark
            self._windows_memo.put(memo_key, now_us, until, window)
        if window_us == window.start_us:
            state = RowState(n, total, vmax, vmin)
        else:
            units = plan_units(window.plan, meter)
            if units is not None:
                # No row for this window yet, and the plan credits the meter: the credit may include a
                # rollover from the window before, which ``_initial_credit`` works out.
                return self._slow_reading(customer, meter, now)
            state, credited = RowState(), None
        reading = _meter_reading(customer, meter, state, credited, window, held_sum, held_max)
        # Cached (SQLite files) until the window changes or the earliest active hold expires.
        self.reads.store(version, key, reading, until, None if held_until is None else int(held_until))
        return reading

    def _slow_reading(self, customer: str, meter: CompiledMeter, now: datetime) -> MeterReading:
        with self.db.read() as conn:
            return self._reading(conn, customer, meter, now)

    def is_counted(self, customer: str, meter: Meter, value: Any) -> bool:
        compiled = self._meter_id(meter)
        key = unique_key(value)
        if key is None:
            return True  # a null value is never counted, so it never takes a new unit
        with self.db.read() as conn:
            window = self._window(conn, customer, self.time.now())
            return (
                conn.execute(
                    select(t.usage_values.c.value_key).where(
                        and_(
                            t.usage_values.c.customer == customer,
                            t.usage_values.c.meter_id == compiled.id,
                            t.usage_values.c.window_us == window.start_us,
                            t.usage_values.c.value_key == key,
                        )
                    )
                ).first()
                is not None
            )

    def history(
        self, customer: str, meter: Meter, *, start: datetime, end: datetime, interval: str
    ) -> list[tuple[datetime, float]]:
        compiled = self._meter_id(meter)
        points, _ = self.quantities(
            compiled.id, start=start, end=end, interval=interval, external_customer_ids=[customer]
        )
        return points

    # -- plans ------------------------------------------------------------------------------------------
    def create_plan(self, plan: Plan) -> None:
        for slug in plan.credits:
            self._meter_id(slug)
        with self.db.write() as conn:
            self._store_plan(conn, plan)

    def reset_meters(self, customer_id: str, meter_id: str | None = None) -> None:
        """Start a new window now for a customer (Polar's ``meter.reset``,
        server/polar/subscription/service.py). Accepts a Polar
        customer id or a customer key; resets every meter of the customer."""
        with self.db.write() as conn:
            key = self._customer_key(conn, customer_id)
            now_us = to_us(self.time.now())
            conn.execute(
                insert_ignore(self.db.engine, t.accounts).values(
                    customer=key, plan=None, anchor_us=None, reset_us=now_us
                )
            )
            conn.execute(update(t.accounts).where(t.accounts.c.customer == key).values(reset_us=now_us))

    def grant_credits(self, customer_id: str, meter_id: str, units: float, *, rollover: bool = False) -> None:
        """Add ``units`` (negative to revoke) to the current window's credit, clamped at 0
        (server/polar/kit/math.py).
        ``rollover`` flags them: at the window's end the flagged part of what is left carries over
        (server/polar/benefit/strategies/meter_credit/service.py); the rest does not."""
        with self.db.write() as conn:
            key = self._customer_key(conn, customer_id)
            meter = self._meters.get(meter_id) or self._meter_id(meter_id)
            window = self._window(conn, key, self.time.now())
            row = self._usage_row(conn, key, meter, window, lock=True)
            credited = max(0.0, (row.credited or 0.0) + float(units))
            flagged = flagged_credit(row, window.plan)
            if rollover:
                # Polar sums flagged and unflagged credit events apart (R and NR,
                # server/polar/customer_meter/service.py); each is
                # a running sum, clamped here at 0 like the total.
                flagged = max(0.0, flagged + float(units))
            conn.execute(
                update(t.usage)
                .where(
                    and_(
                        t.usage.c.customer == key,
                        t.usage.c.meter_id == meter.id,
                        t.usage.c.window_us == window.start_us,
                    )
                )
                .values(credited=credited, credited_rollover=flagged, modified_us=to_us(self.time.now()))
            )

    def _customer_key(self, conn: Connection, customer_id: str) -> str:
        row = conn.execute(
            select(t.customers.c.id, t.customers.c.external_id).where(t.customers.c.id == customer_id)
        ).first()
        if row is not None:
            return str(row.external_id or row.id)
        return customer_id

    # -- rebuilds -------------------------------------------------------------------------------------
    def rebuild(self, *, customer: str | None = None, meter_id: str | None = None) -> None:
        """Recompute rollups of current windows from the raw events (after a meter or plan change)."""
        with self.db.write() as conn:
            if customer is not None:
                self._rebuild_customer(conn, customer, meter_id)
                return
            # Sorted in Python, as ingest sorts its lock keys (a database collation may order differently).
            customers = sorted(conn.execute(select(t.events.c.customer).distinct()).scalars())
            for c in customers:
                self._rebuild_customer(conn, c, meter_id)

    def _rebuild_customer(self, conn: Connection, customer: str, meter_id: str | None = None) -> None:
        now = self.time.now()
        acct = conn.execute(select(t.accounts).where(t.accounts.c.customer == customer)).first()
        window = self._window_of(conn, acct, now)
        since = usage_since(acct, window)
        # Sorted: rollup rows are locked in key order everywhere, so writers never deadlock on them.
        targets = sorted(
            (m for m in self._meters.values() if not m.archived and meter_id in (None, m.id)),
            key=lambda m: m.id,
        )
        for m in targets:
            row = self._usage_row(conn, customer, m, window, lock=True)
            conn.execute(
                delete(t.usage_values).where(
                    and_(
                        t.usage_values.c.customer == customer,
                        t.usage_values.c.meter_id == m.id,
                        t.usage_values.c.window_us == window.start_us,
                    )
                )
            )
            conn.execute(
                update(t.usage)
                .where(
                    and_(
                        t.usage.c.customer == customer,
                        t.usage.c.meter_id == m.id,
                        t.usage.c.window_us == window.start_us,
                    )
                )
                .values(
                    n=0,
                    total=0.0,
                    vmax=None,
                    vmin=None,
                    **_credit_columns(
                        self._initial_credit(conn, customer, m, window) if row is not None else None
                    ),
                )
            )
        deltas: dict[tuple[str, str], Delta] = {}
        result = conn.execute(
            select(t.events.c.name, t.events.c.source, t.events.c.ts_us, t.events.c.metadata).where(
                and_(t.events.c.customer == customer, t.events.c.ingested_us >= since)
            )
        )
        for name, source, ts_us, md in result:
            accumulate(deltas, targets, customer, name, source, ts_us // 1_000_000, json.loads(md))
        now_us = to_us(now)
        for (_, mid), delta in deltas.items():
            self._add(conn, customer, self._meters[mid], window, delta, now_us)

    def mirror_account(
        self, customer: str, plan: str | None, anchor_us: int | None, ends_us: int | None
    ) -> bool:
        """Set the customer's account to ``plan`` anchored at ``anchor_us`` (a ``polar://`` ledger
        mirroring Polar's subscription), and rebuild the customer's rollups for the window that gives,
        in one transaction. Returns whether anything changed (a no-op when another process did it)."""
        if plan is not None and plan not in self._plans:
            raise ConfigurationError(f"plan: unknown plan {plan!r}")
        with self.db.write() as conn:
            acct = conn.execute(select(t.accounts).where(t.accounts.c.customer == customer)).first()
            if acct is not None and (acct.plan, acct.anchor_us, acct.reset_us, acct.ends_us) == (
                plan,
                anchor_us,
                None,
                ends_us,
            ):
                return False
            conn.execute(
                insert_ignore(self.db.engine, t.accounts).values(
                    customer=customer, plan=None, anchor_us=None, reset_us=None, ends_us=None
                )
            )
            conn.execute(
                update(t.accounts)
                .where(t.accounts.c.customer == customer)
                .values(plan=plan, anchor_us=anchor_us, reset_us=None, ends_us=ends_us)
            )
            self._rebuild_customer(conn, customer)
        return True

    # -- reservations -----------------------------------------------------------------------------------
    def hold(
        self,
        customer: str,
        meter: Meter,
        amount: float,
        *,
        ttl: float,
        adjust: Callable[[MeterReading], MeterReading] | None = None,
    ) -> tuple[Hold | None, MeterReading]:
        """Reserve ``amount`` if the reading leaves room for it, atomically against every other hold
        and write on the database. ``adjust`` (a ``polar://`` ledger) turns the engine's reading into
        the one the decision is taken on, inside the same transaction (Polar's credit, for one)."""
        compiled = self._meter_id(meter)
        now = self.time.now()
        now_us = to_us(now)
        with self.db.write() as conn:
            window = self._window(conn, customer, now)
            # Locking the rollup row serialises every hold and write on this (customer, meter) (PostgreSQL);
            # on SQLite the write transaction is already exclusive.
            self._usage_row(conn, customer, compiled, window, lock=True)
            conn.execute(
                delete(t.holds).where(
                    and_(
                        t.holds.c.customer == customer,
                        t.holds.c.meter_id == compiled.id,
                        t.holds.c.expires_us <= self.time.hold_now(),
                    )
                )
            )
            reading = self._reading(conn, customer, compiled, now)
            if adjust is not None:
                reading = adjust(reading)
            if reading.credited is not None and project(compiled.func, reading, amount) > reading.credited:
                return None, reading
            hold = Hold(
                str(uuid.uuid4()),
                customer,
                compiled.slug or compiled.id,
                float(amount),
                now + timedelta(seconds=ttl),
            )
            conn.execute(
                insert(t.holds).values(
                    id=hold.id,
                    customer=customer,
                    meter_id=compiled.id,
                    amount=float(amount),
                    expires_us=self.time.hold_expiry(ttl),  # on the hold clock, not the wall clock
                    created_us=now_us,
                )
            )
            return hold, reading

    def settle(self, hold: Hold, events: Sequence[Event]) -> IngestResult:
        rows = _event_rows(events)

        def work(conn: Connection) -> IngestResult:
            # Usage that happened is recorded even if the hold expired meanwhile: losing it would
            # under-bill, and the action already ran. Rollup rows are locked before the hold row, the
            # order ``hold()`` uses too, so the two cannot deadlock on PostgreSQL.
            result = self._ingest_rows(conn, rows) if rows else IngestResult(0, 0)
            conn.execute(delete(t.holds).where(t.holds.c.id == hold.id))
            return result

        return self.db.run_write(work)

    def release(self, hold: Hold) -> None:
        with self.db.write() as conn:
            conn.execute(delete(t.holds).where(t.holds.c.id == hold.id))

    def active_holds(self, customer: str, meter: Meter) -> int:
        compiled = self._meter_id(meter)
        with self.db.read() as conn:
            return int(
                conn.execute(
                    select(func.count())
                    .select_from(t.holds)
                    .where(
                        and_(
                            t.holds.c.customer == customer,
                            t.holds.c.meter_id == compiled.id,
                            t.holds.c.expires_us > self.time.hold_now(),
                        )
                    )
                ).scalar_one()
            )

    # -- lifecycle --------------------------------------------------------------------------------------
    def close(self, timeout: float | None = None) -> None:
        self.reads.close()
        self.db.dispose()
