"""Result types handed back to callers: usage readings, tracking results, safe-call results."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Generic, TypeVar

__all__ = ["MeterReading", "SafeResult", "TrackingResult", "UsageStatus", "exceed_reason", "limit_reason"]

T = TypeVar("T")


def _fmt(value: float) -> str:
    """Render a quantity the way a person writes it: 10 not 10.0, 2.5 stays 2.5."""
    if math.isfinite(value) and value == int(value):
        return str(int(value))
    # 15 significant digits: what a float holds reliably. Plain :g keeps 6 and turns 1234567.5 into
    # "1.23457e+06", which misstates a customer's usage.
    return f"{value:.15g}"


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

    @property
    def balance(self) -> float | None:
        """Polar's balance: credited minus consumed; negative once usage has passed the limit."""
        return None if self.limit is None else self.limit - self.current

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict (timestamps as ISO-8601 strings), for HTTP bodies and dashboards."""
        return {
            "allowed": self.allowed,
            "current": self.current,
            "limit": self.limit,
            "remaining": self.remaining,
            "reason": self.reason,
            "meter": self.meter,
            "customer": self.customer,
            "period_start": self.period_start.isoformat() if self.period_start else None,
            "period_end": self.period_end.isoformat() if self.period_end else None,
            "reserved": self.reserved,
            "stale": self.stale,
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


@dataclass(frozen=True, slots=True)
class SafeResult(Generic[T]):
    """The outcome of ``with_usage_limit_safe``: ``data`` when it ran, ``error`` and ``status`` when not."""

    success: bool
    data: T | None = None
    error: str | None = None
    status: UsageStatus | None = None
