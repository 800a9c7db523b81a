"""``GET /v1/meters/{id}/quantities`` on the engine: usage per time bucket, by event timestamp, as
Polar's ``MeterService.get_quantities`` computes it (``server/polar/meter/service.py`` at c6c3645:
``generate_series`` over the range, ``date_trunc`` in the requested time zone)."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from sqlalchemy import and_, select

from polar_metering._evaluate import json_text, lookup, unique_key
from polar_metering._exceptions import NotFound, ValidationError
from polar_metering._periods import add_months
from polar_metering.backends._engine import schema as t

if TYPE_CHECKING:
    from polar_metering.backends._engine.dialect import Database
    from polar_metering.backends._engine.rollups import CompiledMeter

__all__ = ["QuantitiesSurface", "aggregate_values", "bucket_start", "series", "step"]


def _us(when: datetime) -> int:
    from polar_metering.backends._engine.backend import to_us

    return to_us(when)


def bucket_start(when: datetime, interval: str, tz: ZoneInfo) -> datetime:
    """PostgreSQL's ``date_trunc(interval, when)`` in ``tz`` (weeks start on Monday)."""
    local = when.astimezone(tz)
    if interval == "hour":
        local = local.replace(minute=0, second=0, microsecond=0)
    elif interval == "day":
        local = local.replace(hour=0, minute=0, second=0, microsecond=0)
    elif interval == "week":
        local = (local - timedelta(days=local.weekday())).replace(hour=0, minute=0, second=0, microsecond=0)
    elif interval == "month":
        local = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    elif interval == "year":
        local = local.replace(month=1, day=1, hour=0, minute=0, second=0, microsecond=0)
    else:
        raise ValidationError("interval", "must be one of year, month, week, day, hour", interval)
    return local.replace(tzinfo=None).replace(tzinfo=tz)


def step(when: datetime, interval: str, k: int = 1) -> datetime | None:
    """``when`` plus ``k`` intervals, or None past what ``datetime`` holds (year 9999)."""
    try:
        if interval in ("month", "year"):
            return add_months(when, k * (12 if interval == "year" else 1))
        unit = {"hour": timedelta(hours=1), "day": timedelta(days=1), "week": timedelta(weeks=1)}[interval]
        return when + k * unit
    except (OverflowError, ValueError):
        return None


def series(start: datetime, end: datetime, interval: str) -> list[datetime]:
    """``generate_series(start, end, '1 interval')``: start, start + 1 interval, ... up to end inclusive."""
    points: list[datetime] = []
    k = 0
    while True:
        point = step(start, interval, k)
        if point is None or point > end:
            return points
        points.append(point)
        k += 1


def aggregate_values(func_name: str, values: Sequence[Any]) -> float:
    """Aggregate raw per-event inputs: numbers for count/sum/max/min/avg, keys for unique
    (``server/polar/meter/aggregation.py``)."""
    if func_name == "count":
        return float(len(values))
    if func_name == "unique":
        return float(len({v for v in values if v is not None}))
    nums = [v for v in values if v is not None]
    if not nums:
        return 0.0
    if func_name == "sum":
        return float(sum(nums))
    if func_name == "max":
        return float(max(nums))
    if func_name == "min":
        return float(min(nums))
    if func_name == "avg":
        return float(sum(nums) / len(nums))
    raise ValidationError(
        "customer_aggregation_function", "must be one of count, sum, max, min, avg, unique", func_name
    )


class QuantitiesSurface:
    """Mixed into :class:`PolarSurface`."""

    if TYPE_CHECKING:  # provided by LocalEngine
        db: Database
        _meters: dict[str, CompiledMeter]

    def quantities(
        self,
        meter_id: str,
        *,
        start: datetime,
        end: datetime,
        interval: str,
        timezone: str = "UTC",
        customer_ids: Sequence[str] | None = None,
        external_customer_ids: Sequence[str] | None = None,
        metadata: Mapping[str, Sequence[str]] | None = None,
        customer_aggregation: str | None = None,
    ) -> tuple[list[tuple[datetime, float]], float]:
        """Usage per time bucket by event timestamp. ``total`` for avg/unique is computed over
        the raw events of the range (Polar's query is unbounded there; we bound it by the range)."""
        compiled = self._meters.get(meter_id)
        if compiled is None:
            raise NotFound("meter not found", status_code=404)
        try:
            tz = ZoneInfo(timezone)
        except Exception:
            raise ValidationError("timezone", "must be an IANA time zone name", timezone) from None
        points = series(start, end, interval)
        try:
            buckets = [bucket_start(p, interval, tz) for p in points]
        except (OverflowError, ValueError):
            raise ValidationError(
                "timezone", "the range reaches past year 9999 in this time zone", timezone
            ) from None
        if not points:
            return [], 0.0
        first = buckets[0]
        # The end of the last bucket; past year 9999 nothing can be stored anyway.
        last_end = step(buckets[-1], interval) or datetime.max.replace(tzinfo=UTC)
        keys: set[str] = set()
        with self.db.read() as conn:
            if customer_ids:
                for row in conn.execute(select(t.customers).where(t.customers.c.id.in_(list(customer_ids)))):
                    keys.add(row.external_id or row.id)
            if external_customer_ids:
                keys.update(external_customer_ids)
            conds = [t.events.c.ts_us >= _us(first), t.events.c.ts_us < _us(last_end)]
            if customer_ids or external_customer_ids:
                conds.append(t.events.c.customer.in_(sorted(keys)))
            rows = conn.execute(
                select(
                    t.events.c.customer,
                    t.events.c.name,
                    t.events.c.source,
                    t.events.c.ts_us,
                    t.events.c.metadata,
                ).where(and_(*conds))
            ).all()
        wanted = set(buckets)
        per: dict[datetime, dict[str, list[Any]]] = defaultdict(lambda: defaultdict(list))
        raw: list[Any] = []
        from polar_metering.backends._engine.backend import from_us

        for customer, name, source, ts_us, md_text in rows:
            md = json.loads(md_text)
            if metadata and not all(
                (v := lookup(md, k)) is not None and not isinstance(v, dict) and json_text(v) in set(vals)
                for k, vals in metadata.items()
            ):
                continue
            ts_s = ts_us // 1_000_000
            if not compiled.matcher(name, source, ts_s, md):
                continue
            bucket = bucket_start(from_us(ts_us), interval, tz)
            if bucket not in wanted:
                continue
            value: Any = (
                unique_key(lookup(md, compiled.aggregation.property or ""))
                if compiled.func == "unique"
                else None
                if compiled.func == "count"
                else compiled.reader(name, source, ts_s, md)
            )
            per[bucket][customer].append(value)
            raw.append(value)
        func_name = compiled.func
        quantities: list[tuple[datetime, float]] = []
        present: list[float] = []
        for point, bucket in zip(points, buckets, strict=True):
            groups = per.get(bucket)
            if not groups:
                quantities.append((point, 0.0))
                continue
            if customer_aggregation:
                q = aggregate_values(
                    customer_aggregation, [aggregate_values(func_name, v) for v in groups.values()]
                )
            else:
                q = aggregate_values(func_name, [x for v in groups.values() for x in v])
            quantities.append((point, q))
            present.append(q)
        if func_name in ("count", "sum") or customer_aggregation:
            total = float(sum(q for _, q in quantities))
        elif func_name == "max":
            total = max(present) if present else 0.0
        elif func_name == "min":
            total = min(present) if present else 0.0
        else:
            total = aggregate_values(func_name, raw)
        return quantities, total
