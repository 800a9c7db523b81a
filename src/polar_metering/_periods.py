"""Billing periods: anchored months or years for subscribed customers, calendar months otherwise.

Months are added the way billing systems do it: the anchor's day of month is kept and clamped to the
length of shorter months (an anchor on Jan 31 gives Feb 28/29, then Mar 31), always counted from the
anchor itself so that clamping never drifts.
"""

from __future__ import annotations

import calendar
from datetime import UTC, datetime

__all__ = ["add_months", "calendar_month", "period_containing"]


def add_months(anchor: datetime, months: int) -> datetime:
    """``anchor`` moved by ``months`` calendar months, day clamped to the target month's length."""
    total = anchor.month - 1 + months
    year, month = anchor.year + total // 12, total % 12 + 1
    day = min(anchor.day, calendar.monthrange(year, month)[1])
    return anchor.replace(year=year, month=month, day=day)


def period_containing(anchor: datetime, interval: str, when: datetime) -> tuple[datetime, datetime]:
    """The ``[start, end)`` period of a subscription anchored at ``anchor`` that contains ``when``.

    Before the anchor there is no period of the subscription; the first period is returned then.
    """
    step = 12 if interval == "year" else 1
    if when < anchor:
        return anchor, add_months(anchor, step)
    # Estimate the index from the month difference, then correct by at most one step either way.
    months = (when.year - anchor.year) * 12 + (when.month - anchor.month)
    k = max(0, months // step)
    while k > 0 and add_months(anchor, k * step) > when:
        k -= 1
    while add_months(anchor, (k + 1) * step) <= when:
        k += 1
    return add_months(anchor, k * step), add_months(anchor, (k + 1) * step)


def calendar_month(when: datetime) -> tuple[datetime, datetime]:
    """The UTC calendar month containing ``when``: the period of customers with no subscription."""
    when = when.astimezone(UTC)
    start = datetime(when.year, when.month, 1, tzinfo=UTC)
    return start, add_months(start, 1)
