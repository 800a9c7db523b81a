"""Clocks: wall time for event timestamps and billing periods, monotonic time for caches and TTLs.

Both are injectable so tests can cross billing-period boundaries and expire caches without sleeping.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "ManualClock", "SystemClock"]

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


class ManualClock:
    """A clock that moves only when told to, for tests: ``clock.advance(days=31)``.

    Wall time and monotonic time advance together.
    """

    def __init__(self, start: datetime | str | None = None) -> None:
        from polar_metering._events import parse_timestamp

        # The same rules as event timestamps (aware, ISO-8601 when a string), future allowed.
        self._now = datetime.now(UTC) if start is None else parse_timestamp(start, "start")
        self._mono = 1_000.0
        self._lock = threading.Lock()

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float = 0.0, **kwargs: float) -> datetime:
        """Move both clocks forward by ``seconds`` plus any ``timedelta`` keywords (days=, hours=...)."""
        from polar_metering._events import check_number
        from polar_metering._exceptions import ValidationError

        parts = {"seconds": check_number(seconds, "seconds", minimum=None)}
        for unit, amount in kwargs.items():
            if unit not in _UNITS:
                raise ValidationError(unit, f"is not a unit of time; use one of {list(_UNITS)}", amount)
            parts[unit] = check_number(amount, unit, minimum=None)
        try:
            delta = timedelta(**parts)
        except OverflowError:
            raise ValidationError(
                "seconds", "moves the clock past what a datetime can hold", seconds
            ) from None
        if delta < timedelta(0):
            raise ValidationError("seconds", "a clock only moves forward", seconds)
        with self._lock:
            try:
                self._now += delta
            except OverflowError:
                raise ValidationError(
                    "seconds", "moves the clock past what a datetime can hold", seconds
                ) from None
            self._mono += delta.total_seconds()
            return self._now

    def set(self, when: datetime) -> datetime:
        """Jump to ``when`` (not earlier than now)."""
        from polar_metering._events import parse_timestamp
        from polar_metering._exceptions import ValidationError

        target = parse_timestamp(when, "when")
        if target < self._now:
            raise ValidationError("when", "a clock only moves forward", when)
        return self.advance((target - self._now).total_seconds())

    def __repr__(self) -> str:
        return f"ManualClock({self._now.isoformat()!r})"
