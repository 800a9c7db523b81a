"""Clocks: wall time for event timestamps and billing periods, monotonic time for caches and TTLs.

Both are injectable so tests can cross billing-period boundaries and expire caches without sleeping.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "ManualClock", "SystemClock"]


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

    ``advance`` moves wall time and monotonic time together; ``step`` moves wall time alone, either
    way, to test what a wall-clock correction does.
    """

    def __init__(self, start: datetime | str | None = None) -> None:
        if start is None:
            start = datetime.now(UTC)
        elif isinstance(start, str):
            start = datetime.fromisoformat(start)
        if start.tzinfo is None:
            raise ValueError("start: must be timezone-aware")
        self._now = start.astimezone(UTC)
        self._mono = 1_000.0
        self._lock = threading.Lock()

    def now(self) -> datetime:
        return self._now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float = 0.0, **kwargs: float) -> datetime:
        """Move both clocks forward by ``seconds`` plus any ``timedelta`` keywords (days=, hours=...)."""
        delta = timedelta(seconds=seconds, **kwargs)
        if delta < timedelta(0):
            raise ValueError("advance: a clock only moves forward")
        with self._lock:
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
        if when.tzinfo is None:
            raise ValueError("when: must be timezone-aware")
        return self.advance((when.astimezone(UTC) - self._now).total_seconds())

    def __repr__(self) -> str:
        return f"ManualClock({self._now.isoformat()!r})"
