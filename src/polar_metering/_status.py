"""Result types handed back to callers: usage readings, tracking results, safe-call results."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar

__all__ = [
    "MeterReading",
    "SafeResult",
    "TrackingResult",
    "UsageStatus",
    "as_dict",
    "exceed_reason",
    "jsonable",
    "limit_reason",
    "whole",
]

T = TypeVar("T")

#: Aggregations whose readings are always whole numbers: counts of events and of distinct values.
WHOLE_AGGREGATIONS = frozenset({"count", "unique"})
# Past 10**15 a float no longer holds every integer, and printing all of its digits (1e30 is
# "1000000000000000019884624838656") states a precision the number does not have.
_EXACT = 1e15


def _fmt(value: float) -> str:
    """Render a quantity the way a person writes it: 10 not 10.0, 2.5 stays 2.5, 1e+30 not 31 digits."""
    if math.isfinite(value) and value == int(value) and abs(value) < _EXACT:
        return str(int(value))
    # 15 significant digits: what a float holds reliably. Plain :g keeps 6 and turns 1234567.5 into
    # "1.23457e+06", which misstates a customer's usage.
    return f"{value:.15g}"


def whole(value: float | None) -> float | int | None:
    """``value`` as an ``int`` when it is a whole number a float holds exactly, else unchanged."""
    if value is None or isinstance(value, int) or not math.isfinite(value):
        return value
    return int(value) if value == int(value) and abs(value) < _EXACT else value


def jsonable(value: Any) -> Any:
    """``value`` made of what ``json.dumps`` takes: result objects by their ``to_dict()``, other
    dataclasses field by field, datetimes as ISO-8601 text, tuples as lists, mappings as dicts.

    Works on one result, on ``get_all_usage()``'s dict of statuses, and as a ``default=`` hook::

        json.dumps(metering.jsonable(metering.get_all_usage()))
        json.dumps(status, default=metering.jsonable)
    """
    if value is None or isinstance(value, str | int | float | bool):
        return value
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict) and not isinstance(value, type):
        return to_dict()
    if isinstance(value, datetime):
        return value.isoformat()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return as_dict(value)
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    return value  # json.dumps reports what it cannot take, naming the type


def as_dict(obj: Any) -> dict[str, Any]:
    """Every dataclass field of ``obj``, JSON-ready (new fields are included without more code)."""
    return {f.name: jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.repr}


def exceed_reason(projected: float, limit: float) -> str:
    """Why an action of some amount is refused while usage itself is still under the limit."""
    return f"Usage limit would be exceeded: {_fmt(projected)}/{_fmt(limit)} units after this action"


def limit_reason(current: float, limit: float) -> str:
    """The refusal text kept from the seed guide: ``Usage limit reached: 10/10 units used``."""
    return f"Usage limit reached: {_fmt(current)}/{_fmt(limit)} units used"


@dataclass(frozen=True, slots=True)
class UsageStatus:
    """A customer's reading on one meter, and whether one more action may go ahead.

    - ``current``: units consumed this billing period (Polar's ``consumed_units``).
    - ``limit``: units credited this period (Polar's ``credited_units``), or ``None`` when the
      customer has no limit on this meter.
    - ``remaining``: ``limit - current`` floored at 0 (Polar's ``balance``, which may go negative,
      is kept in ``balance``), or ``None`` without a limit.
    - ``reason``: why ``allowed`` is false, e.g. ``Usage limit reached: 10/10 units used``.
    """

    allowed: bool
    current: float
    limit: float | None
    remaining: float | None
    reason: str | None = None
    meter: str | None = None
    customer: str | None = None
    period_start: datetime | None = None
    period_end: datetime | None = None
    reserved: float = 0.0
    stale: bool = False
    #: the meter's aggregation (``count``, ``sum``, ``max``, ``min``, ``avg``, ``unique``) when known
    aggregation: str | None = None

    @property
    def balance(self) -> float | None:
        """Polar's balance: credited minus consumed; negative once usage has passed the limit."""
        return None if self.limit is None else self.limit - self.current

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict (timestamps as ISO-8601 strings), for HTTP bodies, the CLI and dashboards.

        On ``count`` and ``unique`` meters the quantities are ``int`` (``5``, not ``5.0``): those
        aggregations only ever produce whole numbers.
        """
        number = whole if self.aggregation in WHOLE_AGGREGATIONS else _same
        return {
            "allowed": self.allowed,
            "current": number(self.current),
            "limit": number(self.limit),
            "remaining": number(self.remaining),
            "reason": self.reason,
            "meter": self.meter,
            "customer": self.customer,
            "period_start": self.period_start.isoformat() if self.period_start else None,
            "period_end": self.period_end.isoformat() if self.period_end else None,
            "reserved": number(self.reserved),
            "stale": self.stale,
            "aggregation": self.aggregation,
        }


@dataclass(frozen=True, slots=True)
class MeterReading:
    """What a backend knows about one customer on one meter: the raw material of a UsageStatus.

    ``consumed`` and ``credited`` follow Polar's customer-meter fields; ``credited`` is ``None`` when
    the customer has no limit on the meter (no plan credits, or no subscription at all).
    """

    meter: str
    customer: str
    consumed: float
    credited: float | None
    period_start: datetime | None = None
    period_end: datetime | None = None
    reserved: float = 0.0
    #: how many values the aggregation has seen (events for count, numeric values for sum/avg...);
    #: lets ``avg`` meters project the effect of one more value
    samples: int = 0
    #: served from a cache past its TTL because the backend could not be reached
    stale: bool = False

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict of every field (timestamps as ISO-8601 strings)."""
        return as_dict(self)


@dataclass(frozen=True, slots=True)
class TrackingResult:
    """What happened to tracked events.

    ``inserted`` counts events newly stored or queued for delivery; ``duplicates`` those whose
    ``external_id`` was already known (Polar's dedup, first write wins); ``rejected`` lists
    ``(index, message)`` for events that failed validation while the rest of the batch went ahead.
    """

    success: bool
    inserted: int = 0
    duplicates: int = 0
    error: str | None = None
    rejected: tuple[tuple[int, str], ...] = field(default=())
    external_ids: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict; ``rejected`` as ``[{"index": i, "error": message}, ...]``."""
        return {
            "success": self.success,
            "inserted": self.inserted,
            "duplicates": self.duplicates,
            "error": self.error,
            "rejected": [{"index": i, "error": message} for i, message in self.rejected],
            "external_ids": list(self.external_ids),
        }


@dataclass(frozen=True, slots=True)
class SafeResult(Generic[T]):
    """The outcome of ``with_usage_limit_safe``: ``data`` when it ran, ``error`` and ``status`` when not."""

    success: bool
    data: T | None = None
    error: str | None = None
    status: UsageStatus | None = None

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict: ``data`` through :func:`jsonable`, ``status`` by its ``to_dict()``."""
        return {
            "success": self.success,
            "data": jsonable(self.data),
            "error": self.error,
            "status": None if self.status is None else self.status.to_dict(),
        }


def _same(value: float | None) -> float | None:
    return value
