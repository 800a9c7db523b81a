"""Clocks: wall time for event timestamps and billing periods, monotonic time for caches and TTLs.

Both are injectable so tests can cross billing-period boundaries and expire caches without sleeping.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable

from polar_metering._events import check_number, parse_timestamp
from polar_metering._exceptions import ValidationError

__all__ = ["Clock", "ManualClock", "SystemClock"]

# Billing periods and history buckets end after "now"; from 9999 on, that end would leave the range
# of datetime, so a manual clock stays before it.
_LAST = datetime(9999, 1, 1, tzinfo=UTC)
_RANGE_RULE = "must keep the clock before 9999-01-01T00:00:00Z"
_UNITS = ("days", "seconds", "microseconds", "milliseconds", "minutes", "hours", "weeks")


@runtime_checkable
class Clock(Protocol):
    """Where the library reads time. ``now`` is aware UTC; ``monotonic`` is seconds that never go back."""

    def now(self) -> datetime: ...

    def monotonic(self) -> float: ...


class SystemClock:
    """The real clocks: ``datetime.now(UTC)`` and ``time.monotonic()``."""

    __slots__ = ()

    def now(self) -> datetime:
        return datetime.now(UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    def __repr__(self) -> str:
        return "SystemClock()"


def _in_range(when: datetime, field: str) -> datetime:
    if when >= _LAST:
        raise ValidationError(field, "must be before 9999-01-01T00:00:00Z", when)
    return when


class ManualClock:
    """A clock that moves only when told to, for tests: ``clock.advance(days=31)``.

    ``advance`` moves wall time and monotonic time together; ``step`` moves wall time alone, either
    way, to test what a wall-clock correction does.
    """

    def __init__(self, start: datetime | str | None = None) -> None:
        # The same rules as event timestamps (aware, ISO-8601 when a string), future allowed.
        self._now = (
            datetime.now(UTC) if start is None else _in_range(parse_timestamp(start, "start"), "start")
        )
        self._mono = 1_000.0
        self._lock = threading.Lock()

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float = 0.0, **kwargs: float) -> datetime:
        """Move both clocks forward by ``seconds`` plus any ``timedelta`` keywords (days=, hours=...)."""
        parts = {"seconds": check_number(seconds, "seconds", minimum=None)}
        for unit, amount in kwargs.items():
            if unit not in _UNITS:
                raise ValidationError(unit, f"is not a unit of time; use one of {list(_UNITS)}", amount)
            parts[unit] = check_number(amount, unit, minimum=None)
        try:
            delta = timedelta(**parts)
        except OverflowError:
            raise ValidationError("seconds", _RANGE_RULE, seconds) from None
        if delta < timedelta(0):
            raise ValidationError("seconds", "a clock only moves forward", seconds)
        with self._lock:
            if delta >= _LAST - self._now:
                raise ValidationError("seconds", _RANGE_RULE, seconds)
            self._now += delta
            self._mono += delta.total_seconds()
            return self._now

    def step(self, seconds: float = 0.0, **kwargs: float) -> datetime:
        """Step the wall clock alone, forward or back, as an NTP correction or a restored VM snapshot
        does; monotonic time does not move. For testing code that must not trust wall time."""
        delta = timedelta(seconds=seconds, **kwargs)
        with self._lock:
            self._now += delta
            return self._now

    def set(self, when: datetime) -> datetime:
        """Jump to ``when`` (not earlier than now)."""
        target = _in_range(parse_timestamp(when, "when"), "when")
        if target < self._now:
            raise ValidationError("when", "a clock only moves forward", when)
        return self.advance((target - self._now).total_seconds())

    def __repr__(self) -> str:
        return f"ManualClock({self._now.isoformat()!r})"
