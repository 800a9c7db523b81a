"""Turning a meter reading into a decision: may an action of ``amount`` units go ahead?

This is the one place the answer is computed, for every backend, the cache and reservations alike.
The projected reading after the action depends on the aggregation:

- ``count`` and ``sum``: the amount adds (``current + reserved + amount``);
- ``max``: the larger wins (``max(current, largest hold, amount)``): storing 3 GB under a 10 GB peak
  limit is fine even if 9 GB were stored earlier this month;
- ``min``: the smaller wins;
- ``avg``: one more sample of ``amount`` (``(current * n + amount) / (n + 1)``);
- ``unique``: adds ``amount`` new values, or, when the value is given, 1 only if it is not yet counted
  (a seat that is already active takes no new seat).

Without an amount the question is "is there room for more": ``current + reserved < limit``, so a
customer at 10/10 is refused with ``Usage limit reached: 10/10 units used``.
"""

from __future__ import annotations

from polar_metering._status import MeterReading, UsageStatus, exceed_reason, limit_reason

__all__ = ["decide", "project"]


def project(func: str, reading: MeterReading, amount: float, *, already_counted: bool = False) -> float:
    """The reading the meter would show after an action of ``amount`` (holds included)."""
    current, reserved = reading.consumed, reading.reserved
    if func in ("count", "sum"):
        return current + reserved + amount
    if func == "max":
        return max(current, reserved, amount)
    if func == "min":
        return amount if reading.samples == 0 else min(current, amount)
    if func == "avg":
        n = reading.samples
        return (current * n + amount) / (n + 1)
    if func == "unique":
        return current + reserved + (0 if already_counted else amount)
    raise ValueError(f"func: unknown aggregation {func!r}")


def decide(
    func: str,
    reading: MeterReading,
    amount: float | None = None,
    *,
    already_counted: bool = False,
    stale: bool = False,
) -> UsageStatus:
    """A :class:`UsageStatus` for ``reading``, answering for an action of ``amount`` when given."""
    current, limit = reading.consumed, reading.credited
    common = {
        "meter": reading.meter,
        "customer": reading.customer,
        "period_start": reading.period_start,
        "period_end": reading.period_end,
        "reserved": reading.reserved,
        "stale": stale,
        "aggregation": func,
    }
    if limit is None:
        return UsageStatus(True, current, None, None, None, **common)  # type: ignore[arg-type]
    held = reading.reserved if func in ("count", "sum", "unique") else 0.0
    remaining = max(0.0, limit - current - held)
    if amount is None:
        # Units held by reservations count as used: "used or held" is what a newcomer competes with.
        shown = current + held if func != "max" else max(current, reading.reserved)
        allowed = shown < limit
        reason = None if allowed else limit_reason(shown, limit)
    else:
        projected = project(func, reading, amount, already_counted=already_counted)
        allowed = projected <= limit
        if allowed:
            reason = None
        elif current >= limit:
            reason = limit_reason(current, limit)
        else:
            reason = exceed_reason(projected, limit)
    return UsageStatus(allowed, current, limit, remaining, reason, **common)  # type: ignore[arg-type]
