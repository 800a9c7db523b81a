"""Billing period arithmetic: anchored months and years, clamped days, calendar months."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from polar_metering._periods import add_months, calendar_month, period_containing

anchors = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2090, 1, 1), timezones=st.just(UTC))
offsets = st.integers(min_value=0, max_value=60 * 60 * 24 * 365 * 5)


def test_month_end_anchor_clamps_without_drifting() -> None:
    """An anchor on Jan 31 gives Feb 29 in a leap year, then Mar 31 again (counted from the anchor)."""
    anchor = datetime(2024, 1, 31, 10, tzinfo=UTC)
    assert add_months(anchor, 1) == datetime(2024, 2, 29, 10, tzinfo=UTC)
    assert add_months(anchor, 2) == datetime(2024, 3, 31, 10, tzinfo=UTC)
    assert add_months(anchor, 13) == datetime(2025, 2, 28, 10, tzinfo=UTC)


def test_period_boundaries_are_half_open() -> None:
    """A moment exactly at a boundary belongs to the period that starts there."""
    anchor = datetime(2026, 1, 15, tzinfo=UTC)
    start, end = period_containing(anchor, "month", datetime(2026, 2, 15, tzinfo=UTC))
    assert (start, end) == (datetime(2026, 2, 15, tzinfo=UTC), datetime(2026, 3, 15, tzinfo=UTC))
    start, _ = period_containing(
        anchor, "month", datetime(2026, 2, 15, tzinfo=UTC) - timedelta(microseconds=1)
    )
    assert start == anchor


def test_yearly_periods() -> None:
    """Yearly plans step twelve months from the anchor."""
    anchor = datetime(2024, 2, 29, tzinfo=UTC)
    assert period_containing(anchor, "year", datetime(2025, 6, 1, tzinfo=UTC)) == (
        datetime(2025, 2, 28, tzinfo=UTC),
        datetime(2026, 2, 28, tzinfo=UTC),
    )


def test_calendar_month_is_utc() -> None:
    """Customers without a plan are billed by UTC calendar month, whatever the offset of the moment."""
    from datetime import timezone

    when = datetime(2026, 3, 1, 0, 30, tzinfo=timezone(timedelta(hours=2)))  # still February in UTC
    assert calendar_month(when) == (datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC))


@given(anchors, offsets, st.sampled_from(["month", "year"]))
def test_period_contains_the_moment(anchor: datetime, offset: int, interval: str) -> None:
    """For any anchor and later moment, the period found contains it and is one interval long."""
    when = anchor + timedelta(seconds=offset)
    start, end = period_containing(anchor, interval, when)
    assert start <= when < end
    step = 12 if interval == "year" else 1
    k = (start.year - anchor.year) * 12 + start.month - anchor.month
    assert add_months(anchor, k) == start and add_months(anchor, k + step) == end
