"""What the pages show, as plain values: built by a source (engine or Polar), rendered by templates.

Levels follow the issue's rule for the overview: *over* once usage reaches the limit, *near* from 80%
of it, *ok* below, *none* without a limit.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from polar_metering._catalog import Aggregation, Filter, Meter
from polar_metering._status import UsageStatus

__all__ = [
    "INTERVALS",
    "ChartSeries",
    "CustomerPage",
    "CustomerRow",
    "DeliveryPage",
    "EventView",
    "HoldView",
    "MeterTotals",
    "MeterUse",
    "OverviewPage",
    "aggregation_words",
    "chart_range",
    "filter_words",
    "level_of",
    "meter_use",
    "period_to_date",
    "uses_for",
]

Level = Literal["over", "near", "ok", "none"]
NEAR = 0.8

#: chart intervals and how far back each looks (Polar's quantities allow hour ranges up to 7 days)
INTERVALS: dict[str, timedelta] = {
    "hour": timedelta(hours=48),
    "day": timedelta(days=31),
    "week": timedelta(weeks=16),
    "month": timedelta(days=365),
}


def level_of(status: UsageStatus) -> tuple[Level, float | None]:
    """The overview level of a status, and its use of the limit as a fraction (None: no limit)."""
    if status.limit is None:
        return "none", None
    if status.limit <= 0:
        return "over", 1.0 if status.current <= 0 else float("inf")
    ratio = status.current / status.limit
    if ratio >= 1.0:
        return "over", ratio
    return ("near" if ratio >= NEAR else "ok"), ratio


@dataclass(frozen=True, slots=True)
class MeterUse:
    """One meter's status for one customer, with the overview level."""

    slug: str
    name: str
    status: UsageStatus
    level: Level
    ratio: float | None

    @property
    def percent(self) -> float | None:
        """Use of the limit in percent, capped at 100 for drawing (the label shows the real one)."""
        if self.ratio is None:
            return None
        return min(100.0, max(0.0, self.ratio * 100.0)) if self.ratio != float("inf") else 100.0


def meter_use(meter: Meter, status: UsageStatus) -> MeterUse:
    level, ratio = level_of(status)
    return MeterUse(meter.slug, meter.name, status, level, ratio)


@dataclass(frozen=True, slots=True)
class CustomerRow:
    customer: str
    uses: list[MeterUse]

    @property
    def level(self) -> Level:
        order: tuple[Level, ...] = ("over", "near", "ok", "none")
        return min((u.level for u in self.uses), key=order.index, default="none")


@dataclass(frozen=True, slots=True)
class OverviewPage:
    rows: list[CustomerRow]
    total: int
    page: int
    pages: int
    per_page: int
    search: str
    over: int
    near: int
    customers: int
    meters: list[Meter]
    #: e.g. "Loading from Polar: 300 of 1,000 customer meters"
    notice: str | None = None


@dataclass(frozen=True, slots=True)
class ChartSeries:
    """A meter's usage over time for the chart: bucket starts (epoch seconds) and quantities, the
    period-to-date line where the aggregation allows one, the limit and the period's boundaries."""

    slug: str
    name: str
    func: str
    x: list[float]
    y: list[float]
    to_date: list[float | None] | None
    limit: float | None
    period_start: float | None
    period_end: float | None
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "slug": self.slug,
            "name": self.name,
            "func": self.func,
            "x": self.x,
            "y": self.y,
            "toDate": self.to_date,
            "limit": self.limit,
            "periodStart": self.period_start,
            "periodEnd": self.period_end,
        }


@dataclass(frozen=True, slots=True)
class EventView:
    name: str
    timestamp: datetime
    external_id: str | None
    metadata: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class HoldView:
    id: str
    meter: str
    amount: float
    created_at: datetime | None
    expires_at: datetime


@dataclass(frozen=True, slots=True)
class CustomerPage:
    customer: str
    uses: list[MeterUse]
    charts: list[ChartSeries]
    interval: str
    events: list[EventView] | None
    holds: list[HoldView] | None
    #: why events or holds are not shown, when they are not
    notes: list[str] = field(default_factory=list)
    can_grant: bool = False


@dataclass(frozen=True, slots=True)
class MeterTotals:
    slug: str
    name: str
    filter_words: str
    aggregation_words: str
    definition: dict[str, Any]
    unit: str
    #: (label, epoch seconds of the bucket, total)
    totals: list[tuple[str, float, float]]
    totals_label: str
    current_total: float | None = None
    customers_with_usage: int | None = None
    error: str | None = None


@dataclass(frozen=True, slots=True)
class DeliveryPage:
    path: str
    pending: int
    leased: int
    dead: int
    buffered: int
    oldest_age_s: float | None
    bytes_used: int
    max_bytes: int
    paused_until: datetime | None
    accepting: bool
    #: events a minute leaving the outbox, measured from the file between page views
    send_rate_per_min: float | None
    sent: int
    retries: int
    rate_limited: int
    dead_lettered: int
    last_error: str | None
    dead_letters: list[Any]
    server: str


_OPERATORS = {
    "eq": "eq",
    "ne": "ne",
    "gt": "gt",
    "gte": "gte",
    "lt": "lt",
    "lte": "lte",
    "like": "like",
    "not_like": "not_like",
}


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


def filter_words(flt: Filter | Mapping[str, Any]) -> str:
    """A filter as Polar writes it: ``name eq "api.request" and model like "gpt"``; nested groups
    in parentheses; an empty filter matches every event."""
    raw = flt.to_polar() if isinstance(flt, Filter) else dict(flt)
    return _group(raw, top=True) or "every event"


def _group(raw: Mapping[str, Any], *, top: bool = False) -> str:
    parts: list[str] = []
    for clause in raw.get("clauses", []):
        if "clauses" in clause:
            inner = _group(clause)
            if inner:
                parts.append(f"({inner})")
        else:
            op = _OPERATORS.get(str(clause.get("operator")), str(clause.get("operator")))
            parts.append(f"{clause.get('property')} {op} {_value(clause.get('value'))}")
    return f" {raw.get('conjunction', 'and')} ".join(parts)


def aggregation_words(agg: Aggregation | Mapping[str, Any]) -> str:
    """Polar's aggregation: ``count``, ``sum(tokens)``, ``max(size_gb)``, ``unique(user_id)``."""
    raw = agg.to_polar() if isinstance(agg, Aggregation) else dict(agg)
    prop = raw.get("property")
    return f"{raw['func']}({prop})" if prop else str(raw["func"])


def period_to_date(
    func: str, x: Sequence[float], y: Sequence[float], period_start: float | None
) -> list[float | None] | None:
    """What the meter has reached since the period began, per bucket: a running sum for count and
    sum meters, a running maximum for max meters; ``None`` for aggregations that do not add up
    across buckets (min, avg, unique)."""
    if func not in ("count", "sum", "max") or period_start is None:
        return None
    out: list[float | None] = []
    acc: float | None = None
    for when, value in zip(x, y, strict=True):
        if when < period_start and not _contains(when, x, period_start):
            out.append(None)
            continue
        acc = value if acc is None else (acc + value if func != "max" else max(acc, value))
        out.append(acc)
    return out


def _contains(when: float, xs: Sequence[float], point: float) -> bool:
    """Whether the bucket starting at ``when`` holds ``point`` (the next bucket starts after it)."""
    later = [v for v in xs if v > when]
    return bool(later) and later[0] > point


def chart_range(interval: str, now: datetime) -> datetime:
    return now - INTERVALS[interval]


def uses_for(meters: Iterable[Meter], statuses: Mapping[str, UsageStatus]) -> list[MeterUse]:
    return [meter_use(m, statuses[m.slug]) for m in meters if m.slug in statuses]
