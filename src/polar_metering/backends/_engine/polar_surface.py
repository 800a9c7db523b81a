"""The engine's Polar-shaped surface: meters, customers, customer meters, events and quantities.

This is what the emulator serves over HTTP. It reads the same tables as the library path, so an
event tracked by the library and one ingested through the emulator count alike.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, func, insert, or_, select, update
from sqlalchemy.engine import Connection

from polar_metering._catalog import Aggregation, Filter, Plan
from polar_metering._exceptions import NotFound, ValidationError
from polar_metering._meter_checks import aggregation_takes
from polar_metering.backends._engine import schema as t
from polar_metering.backends._engine.dialect import insert_ignore
from polar_metering.backends._engine.quantities import (
    QuantitiesSurface,
    aggregate_values,
    bucket_start,
    series,
    step,
)
from polar_metering.backends._engine.records import (
    CustomerMeterRecord,
    CustomerRecord,
    MeterRecord,
    StoredEvent,
)
from polar_metering.backends._engine.rollups import CompiledMeter, RowState, consumed_of, dumps

if TYPE_CHECKING:
    from polar_metering._clock import Clock
    from polar_metering.backends._engine.backend import Credit, Window
    from polar_metering.backends._engine.dialect import Database

__all__ = ["PolarSurface", "aggregate_values", "billable", "bucket_start", "series", "step"]

_NS = uuid.UUID("6f1c2d4e-8a5b-4c3d-9e7f-0a1b2c3d4e5f")
_BILLED = "emulator.meter.last_billed_event:"
_LOCKED_RULE = "This field can't be updated because the meter is already aggregating events."


def _us(when: datetime) -> int:
    from polar_metering.backends._engine.backend import to_us

    return to_us(when)


def _dt(us: int | None) -> datetime | None:
    from polar_metering.backends._engine.backend import from_us

    return None if us is None else from_us(us)


def _at(us: int) -> datetime:
    from polar_metering.backends._engine.backend import from_us

    return from_us(us)


def event_uuid(seq: int) -> str:
    """A stable UUID-shaped id for an event row (Polar ids are UUIDs; ours derive from the row key)."""
    return str(uuid.UUID(int=(0x4000 << 64) | (0x8000 << 48) | seq))


def billable(meter: CompiledMeter, name: str, source: str, ts_seconds: int, metadata: dict[str, Any]) -> bool:
    """Whether Polar's billing counts the event on ``meter``: the meter's own credit and reset
    events, or an event its filter matches whose aggregated property has the right type
    (``server/polar/event/service.py`` ``_event_matches_meter``, ``meter/aggregation.py``)."""
    if source == "system" and name in ("meter.credited", "meter.reset"):
        return str(metadata.get("meter_id")) == meter.id
    return meter.matcher(name, source, ts_seconds, metadata) and aggregation_accepts(meter, metadata)


def aggregation_accepts(meter: CompiledMeter, metadata: dict[str, Any]) -> bool:
    """The aggregation's own clause (``_meter_checks.aggregation_takes``)."""
    return aggregation_takes(meter.aggregation, metadata)


class PolarSurface(QuantitiesSurface):
    """Mixed into :class:`LocalEngine`; see ``records.py`` for the shapes returned."""

    if TYPE_CHECKING:  # provided by LocalEngine
        db: Database
        clock: Clock
        _meters: dict[str, CompiledMeter]

        def _load_meters(self) -> None: ...

        def rebuild(self, *, customer: str | None = None, meter_id: str | None = None) -> None: ...

        def _window(self, conn: Connection, customer: str, now: datetime) -> Window: ...

        def _window_of(self, conn: Connection, acct: Any, now: datetime) -> Window: ...

        def _plan(self, conn: Connection, name: str | None) -> Plan | None: ...

        def _initial_credit(
            self, conn: Connection, customer: str, meter: CompiledMeter, window: Window
        ) -> Credit | None: ...

    # -- meters -----------------------------------------------------------------------------------
    def _meter_record(self, row: Any, billed: bool = False) -> MeterRecord:
        return MeterRecord(
            id=row.id,
            name=row.name,
            filter=Filter.from_polar(json.loads(row.filter)),
            aggregation=Aggregation.from_polar(json.loads(row.aggregation)),
            unit=row.unit,
            created_at=_at(row.created_us),
            modified_at=_dt(row.modified_us),
            archived_at=_dt(row.archived_us),
            slug=row.slug,
            custom_label=row.custom_label,
            custom_multiplier=row.custom_multiplier,
            metadata=json.loads(row.metadata or "{}"),
            locked=billed,
        )

    def create_meter(
        self,
        *,
        name: str,
        filter: Filter,
        aggregation: Aggregation,
        unit: str = "scalar",
        custom_label: str | None = None,
        custom_multiplier: int | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> MeterRecord:
        """Create a meter; usage since each customer's last reset counts at once."""
        meter_id = str(uuid.uuid4())
        now_us = _us(self.clock.now())
        compiled = CompiledMeter.build(meter_id, None, name, filter, aggregation)
        with self.db.write() as conn:
            conn.execute(
                insert(t.meters).values(
                    id=meter_id,
                    slug=None,
                    name=name,
                    filter=dumps(filter.to_polar()),
                    aggregation=dumps(aggregation.to_polar()),
                    unit=unit,
                    custom_label=custom_label,
                    custom_multiplier=custom_multiplier,
                    metadata=dumps(dict(metadata or {})),
                    created_us=now_us,
                    modified_us=None,
                    locked=False,
                )
            )
            # Polar sets the meter's last billed event at creation to the latest matching event,
            # which freezes filter and aggregation at once (server/polar/meter/service.py create).
            latest = self._latest_billable(conn, compiled, after_seq=0, by_timestamp=True)
            if latest is not None:
                self._set_billed(conn, meter_id, latest)
        self._load_meters()
        self.rebuild(meter_id=meter_id)
        found = self.get_meter(meter_id)
        assert found is not None
        return found

    def compiled_meters(self) -> dict[str, CompiledMeter]:
        """The engine's meters, compiled, by id (replaced as a whole when meters change)."""
        return self._meters

    def get_plan(self, name: str) -> Plan | None:
        with self.db.read() as conn:
            return self._plan(conn, name)

    # -- Polar's billing watermark ------------------------------------------------------------------
    # Polar keeps ``Meter.last_billed_event``: set at creation when a matching event exists, and
    # moved by the billing pass its scheduler runs every 15 minutes (server/polar/meter/tasks.py,
    # ``MeterService.create_billing_entries``). Once set, filter and aggregation can no longer be
    # changed. Stored per meter in ``pm_info`` as the event's row number.

    def _billed(self, conn: Connection) -> dict[str, int]:
        rows = conn.execute(select(t.info.c.key, t.info.c.value).where(t.info.c.key.like(_BILLED + "%")))
        return {key[len(_BILLED) :]: int(value) for key, value in rows}

    def _set_billed(self, conn: Connection, meter_id: str, seq: int) -> None:
        key = _BILLED + meter_id
        conn.execute(insert_ignore(self.db.engine, t.info).values(key=key, value=str(seq)))
        conn.execute(update(t.info).where(t.info.c.key == key).values(value=str(seq)))

    def _latest_billable(
        self, conn: Connection, meter: CompiledMeter, *, after_seq: int, by_timestamp: bool = False
    ) -> int | None:
        """The row number of the latest event Polar would bill on ``meter``: its filter and
        aggregation match (``EventService._event_matches_meter``), latest by ingestion, or by
        timestamp as at creation."""
        best: tuple[int, int] | None = None
        for seq, name, source, ts_us, md in conn.execute(
            select(
                t.events.c.seq, t.events.c.name, t.events.c.source, t.events.c.ts_us, t.events.c.metadata
            ).where(t.events.c.seq > after_seq)
        ):
            if billable(meter, name, source, ts_us // 1_000_000, json.loads(md)):
                rank = (ts_us, seq) if by_timestamp else (seq, seq)
                if best is None or rank > best:
                    best = rank
        return None if best is None else best[1]

    def meter_billed(self, meter_id: str) -> bool:
        """Whether the meter has a last billed event (its filter and aggregation are frozen)."""
        with self.db.read() as conn:
            return (
                conn.execute(select(t.info.c.key).where(t.info.c.key == _BILLED + meter_id)).first()
                is not None
            )

    def billing_pass(self) -> list[str]:
        """Polar's billing pass: every meter that is not archived moves its last billed event to the
        latest event billed on it. Returns the meters that had none before."""
        with self.db.write() as conn:
            billed = self._billed(conn)
            newly = []
            for m in sorted(self._meters.values(), key=lambda m: m.id):
                if m.archived:
                    continue
                latest = self._latest_billable(conn, m, after_seq=billed.get(m.id, 0))
                if latest is not None:
                    self._set_billed(conn, m.id, latest)
                    if m.id not in billed:
                        newly.append(m.id)
            return newly

    def list_meters(self, *, include_archived: bool = False, query: str | None = None) -> list[MeterRecord]:
        with self.db.read() as conn:
            rows = conn.execute(select(t.meters)).all()
            billed = self._billed(conn)
        records = [self._meter_record(r, r.id in billed) for r in rows]
        if not include_archived:
            records = [r for r in records if r.archived_at is None]
        if query:
            q = query.lower()
            records = [r for r in records if q in r.name.lower()]
        return sorted(records, key=lambda r: (r.name, r.created_at))

    def get_meter(self, meter_id: str) -> MeterRecord | None:
        with self.db.read() as conn:
            row = conn.execute(select(t.meters).where(t.meters.c.id == meter_id)).first()
            billed = (
                row is not None
                and conn.execute(select(t.info.c.key).where(t.info.c.key == _BILLED + meter_id)).first()
                is not None
            )
        return None if row is None else self._meter_record(row, billed)

    def update_meter(self, meter_id: str, **changes: Any) -> MeterRecord:
        """Apply a Polar ``MeterUpdate``; filter/aggregation are refused once the meter has a last
        billed event (``MeterService.update``)."""
        allowed = {
            "name",
            "unit",
            "filter",
            "aggregation",
            "metadata",
            "is_archived",
            "custom_label",
            "custom_multiplier",
        }
        unknown = set(changes) - allowed
        if unknown:
            raise ValidationError(sorted(unknown)[0], "is not a meter field", None)
        values: dict[str, Any] = {}
        redefine = False
        with self.db.write() as conn:
            row = conn.execute(select(t.meters).where(t.meters.c.id == meter_id)).first()
            if row is None:
                raise NotFound("meter not found", status_code=404)
            frozen = conn.execute(select(t.info.c.key).where(t.info.c.key == _BILLED + meter_id)).first()
            for key in ("filter", "aggregation"):
                if key in changes and frozen is not None:
                    # Polar refuses the field once billed, even when the value is unchanged.
                    raise ValidationError(key, _LOCKED_RULE, None)
                if changes.get(key) is not None:
                    new = dumps(changes[key].to_polar())
                    if new != getattr(row, key):
                        values[key] = new
                        redefine = True
            for key in ("name", "unit", "custom_label", "custom_multiplier"):
                if key in changes and changes[key] is not None:
                    values[key] = changes[key]
            if changes.get("metadata") is not None:
                values["metadata"] = dumps(dict(changes["metadata"]))
            archived = changes.get("is_archived")
            if archived is True and row.archived_us is None:
                values["archived_us"] = _us(self.clock.now())
            elif archived is False:
                values["archived_us"] = None
            if values:
                values["modified_us"] = _us(self.clock.now())
                conn.execute(update(t.meters).where(t.meters.c.id == meter_id).values(**values))
        self._load_meters()
        if redefine or archived is False:
            self.rebuild(meter_id=meter_id)
        found = self.get_meter(meter_id)
        assert found is not None
        return found

    # -- customers ------------------------------------------------------------------------------------
    @staticmethod
    def _customer_record(row: Any) -> CustomerRecord:
        return CustomerRecord(
            id=row.id,
            external_id=row.external_id,
            email=row.email,
            name=row.name,
            created_at=_at(row.created_us),
            modified_at=_dt(row.modified_us),
            metadata=json.loads(row.metadata or "{}"),
        )

    def create_customer(
        self,
        *,
        external_id: str | None = None,
        email: str | None = None,
        name: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> CustomerRecord:
        cid = str(uuid.uuid4())
        with self.db.write() as conn:
            # Insert-or-ignore on the unique external_id: two concurrent creates of one customer give
            # one row and a clear error for the other, on PostgreSQL as on SQLite.
            conn.execute(
                insert_ignore(self.db.engine, t.customers).values(
                    id=cid,
                    external_id=external_id,
                    email=email,
                    name=name,
                    metadata=dumps(dict(metadata or {})),
                    created_us=_us(self.clock.now()),
                    modified_us=None,
                )
            )
            row = conn.execute(select(t.customers).where(t.customers.c.id == cid)).first()
        if row is None:
            raise ValidationError(
                "external_id", "A customer with this external ID already exists.", external_id
            )
        return self._customer_record(row)

    def get_customer(self, customer_id: str) -> CustomerRecord | None:
        with self.db.read() as conn:
            row = conn.execute(select(t.customers).where(t.customers.c.id == customer_id)).first()
        return None if row is None else self._customer_record(row)

    def get_customer_by_external_id(self, external_id: str) -> CustomerRecord | None:
        with self.db.read() as conn:
            row = conn.execute(select(t.customers).where(t.customers.c.external_id == external_id)).first()
        return None if row is None else self._customer_record(row)

    def polar_customers(
        self, *, page: int = 1, limit: int = 10, query: str | None = None
    ) -> tuple[list[CustomerRecord], int]:
        """Polar customer records (the emulator's ``/v1/customers``), matching ``query``."""
        cond = None
        if query:
            like = f"%{query}%"
            cond = or_(
                t.customers.c.email.ilike(like),
                t.customers.c.name.ilike(like),
                t.customers.c.external_id.ilike(like),
            )
        with self.db.read() as conn:
            base = select(t.customers)
            count = select(func.count()).select_from(t.customers)
            if cond is not None:
                base, count = base.where(cond), count.where(cond)
            total = int(conn.execute(count).scalar_one())
            rows = conn.execute(
                base.order_by(t.customers.c.created_us, t.customers.c.id)
                .offset((page - 1) * limit)
                .limit(limit)
            ).all()
        return [self._customer_record(r) for r in rows], total

    # -- customer meters --------------------------------------------------------------------------------
    def customer_meter_id(self, customer_id: str, meter_id: str) -> str:
        """A stable id per (customer, meter), shaped as a version-4 UUID like Polar's ids, so that
        the ``UUID4`` path check Polar applies accepts it."""
        derived = uuid.uuid5(_NS, f"{customer_id}|{meter_id}")
        return str(uuid.UUID(bytes=derived.bytes, version=4))

    def customer_meters(
        self,
        *,
        customer_ids: Sequence[str] | None = None,
        external_customer_ids: Sequence[str] | None = None,
        meter_ids: Sequence[str] | None = None,
    ) -> list[CustomerMeterRecord]:
        """Every (customer, meter) pair with its current window's numbers."""
        now = self.clock.now()
        with self.db.read() as conn:
            query = select(t.customers)
            conds = []
            if customer_ids:
                conds.append(t.customers.c.id.in_(list(customer_ids)))
            if external_customer_ids:
                conds.append(t.customers.c.external_id.in_(list(external_customer_ids)))
            if conds:
                query = query.where(or_(*conds))
            customers = [self._customer_record(r) for r in conn.execute(query).all()]
            meter_rows = conn.execute(select(t.meters)).all()
            meters = [self._meter_record(r) for r in meter_rows]
            if meter_ids:
                meters = [m for m in meters if m.id in set(meter_ids)]
            else:
                meters = [m for m in meters if m.archived_at is None]  # hidden unless asked for
            out: list[CustomerMeterRecord] = []
            for c in customers:
                key = c.external_id or c.id
                window = self._window(conn, key, now)
                for m in meters:
                    compiled = self._meters[m.id]
                    row = conn.execute(
                        select(t.usage).where(
                            and_(
                                t.usage.c.customer == key,
                                t.usage.c.meter_id == m.id,
                                t.usage.c.window_us == window.start_us,
                            )
                        )
                    ).first()
                    if row is None:
                        initial = self._initial_credit(conn, key, compiled, window)
                        state, credited = RowState(), None if initial is None else initial.units
                        created, modified = c.created_at, None
                    else:
                        state, credited = RowState(row.n, row.total, row.vmax, row.vmin), row.credited
                        created, modified = _at(row.created_us), _dt(row.modified_us)
                    consumed = consumed_of(compiled.func, state)
                    credit = float(credited or 0.0)
                    out.append(
                        CustomerMeterRecord(
                            id=self.customer_meter_id(c.id, m.id),
                            customer=c,
                            meter=m,
                            consumed_units=consumed,
                            credited_units=credit,
                            balance=credit - consumed,
                            created_at=created or c.created_at,
                            modified_at=modified,
                        )
                    )
        return out

    def get_customer_meter(self, customer_meter_id: str) -> CustomerMeterRecord | None:
        with self.db.read() as conn:
            meter_ids = list(conn.execute(select(t.meters.c.id)).scalars())
        for record in self.customer_meters(meter_ids=meter_ids):
            if record.id == customer_meter_id:
                return record
        return None

    def window_events(self, customer_key: str) -> list[tuple[str, str, int, dict[str, Any]]]:
        """``(name, source, timestamp seconds, metadata)`` of the events that count in the customer's
        current window (the ones its customer meters aggregate)."""
        from polar_metering.backends._engine.backend import usage_since

        with self.db.read() as conn:
            acct = conn.execute(select(t.accounts).where(t.accounts.c.customer == customer_key)).first()
            since = usage_since(acct, self._window_of(conn, acct, self.clock.now()))
            rows = conn.execute(
                select(t.events.c.name, t.events.c.source, t.events.c.ts_us, t.events.c.metadata).where(
                    and_(t.events.c.customer == customer_key, t.events.c.ingested_us >= since)
                )
            ).all()
        return [(name, source, ts_us // 1_000_000, json.loads(md)) for name, source, ts_us, md in rows]

    # -- events -----------------------------------------------------------------------------------------
    def list_events(
        self,
        *,
        customer_id: str | None = None,
        external_customer_id: str | None = None,
        name: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        page: int = 1,
        limit: int = 10,
        source: str | None = None,
    ) -> tuple[list[StoredEvent], int]:
        conds = []
        if customer_id is not None:
            conds.append(t.events.c.customer_id == customer_id)
        if external_customer_id is not None:
            conds.append(t.events.c.customer == external_customer_id)
        if name is not None:
            conds.append(t.events.c.name == name)
        if start is not None:
            conds.append(t.events.c.ts_us >= _us(start))
        if end is not None:
            conds.append(t.events.c.ts_us <= _us(end))
        if source is not None:
            conds.append(t.events.c.source == source)
        where = and_(True, *conds)
        with self.db.read() as conn:
            total = int(conn.execute(select(func.count()).select_from(t.events).where(where)).scalar_one())
            rows = conn.execute(
                select(t.events)
                .where(where)
                .order_by(t.events.c.ts_us.desc(), t.events.c.seq.desc())
                .offset((page - 1) * limit)
                .limit(limit)
            ).all()
        return [
            StoredEvent(
                id=event_uuid(r.seq),
                name=r.name,
                timestamp=_at(r.ts_us),
                ingested_at=_at(r.ingested_us),
                metadata=json.loads(r.metadata),
                external_id=r.external_id,
                external_customer_id=r.external_customer_id,
                customer_id=r.customer_id,
                source=r.source,
            )
            for r in rows
        ], total
