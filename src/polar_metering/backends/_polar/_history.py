"""Usage history on ``polar://``: Polar's meter quantities, cached, within a request budget.

``GET /v1/meters/{id}/quantities`` (``server/polar/meter/endpoints.py`` of polarsource/polar at
c6c3645) buckets a meter's events by timestamp for one customer. Every read spends from the same
per-token rate limit as event ingestion (500 requests a minute in production, 100 in the sandbox:
``server/polar/rate_limit.py`` at c6c3645), so history reads here take a small share of it:
answers are cached for ``ttl`` seconds, and past the budget a cached answer is served even if old,
or :class:`RateLimited` says when to ask again. Delivery is never starved by a dashboard.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from polar_metering._exceptions import RateLimited
from polar_metering.backends._polar._sdk import Polar, PolarSettings, polar_errors

__all__ = ["HistoryReader", "RequestBudget", "read_budget_per_minute"]

History = list[tuple[datetime, float]]

# The share of Polar's per-token rate limit that reads (history, dashboards) may take.
_READ_SHARE = 0.125
_POLAR_LIMITS = {"production": 500.0, "sandbox": 100.0}
_LOCAL_READS_PER_MINUTE = 6000.0


def read_budget_per_minute(settings: PolarSettings) -> float:
    """Requests a minute reads may make: an eighth of Polar's limit, generous on the emulator."""
    if settings.is_local:
        return _LOCAL_READS_PER_MINUTE
    return _POLAR_LIMITS[settings.environment] * _READ_SHARE


class RequestBudget:
    """A token bucket: ``per_minute`` requests a minute, up to ``burst`` at once. Thread-safe."""

    def __init__(
        self, per_minute: float, *, burst: float | None = None, monotonic: Callable[[], float]
    ) -> None:
        if per_minute <= 0:
            raise ValueError("per_minute must be > 0")
        self.per_minute = per_minute
        self.burst = burst if burst is not None else max(1.0, per_minute / 6)
        self._monotonic = monotonic
        self._tokens = self.burst
        self._at = monotonic()
        self._lock = threading.Lock()

    def _refill(self) -> None:
        now = self._monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.per_minute / 60.0)
        self._at = now

    def take(self) -> bool:
        """Spend one request if one is available."""
        with self._lock:
            self._refill()
            if self._tokens >= 1.0:
                self._tokens -= 1.0
                return True
            return False

    def wait_s(self) -> float:
        """Seconds until one request is available."""
        with self._lock:
            self._refill()
            return max(0.0, (1.0 - self._tokens) * 60.0 / self.per_minute)


def _iso(when: datetime) -> str:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value.astimezone(UTC)
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


class HistoryReader:
    """Meter quantities for one customer, by Polar meter id, through a TTL cache and a budget."""

    def __init__(
        self,
        client: Polar,
        settings: PolarSettings,
        monotonic: Callable[[], float],
        *,
        ttl: float = 30.0,
        budget: RequestBudget | None = None,
        size: int = 1024,
    ) -> None:
        self._client = client
        self._settings = settings
        self._monotonic = monotonic
        self.ttl = ttl
        self.budget = budget or RequestBudget(read_budget_per_minute(settings), monotonic=monotonic)
        self._size = size
        self._cache: OrderedDict[tuple[str, str, str, str, str], tuple[float, History]] = OrderedDict()
        self._lock = threading.Lock()

    def quantities(
        self, meter_id: str, customer: str, *, start: datetime, end: datetime, interval: str
    ) -> History:
        from polar_metering.backends._engine.polar_surface import series

        # Polar's points are start, start + 1 interval, ... up to end: any end inside the last
        # bucket asks the same question, so the cache keys on the last point, not on "now".
        points = series(start, end, interval)
        last = points[-1] if points else start
        key = (meter_id, customer, _iso(start), _iso(last), interval)
        now = self._monotonic()
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None and now - cached[0] < self.ttl:
            return cached[1]
        if not self.budget.take():
            if cached is not None:
                return cached[1]  # past the budget: an older answer beats spending Polar's limit
            wait = self.budget.wait_s()
            raise RateLimited(
                f"usage_history: the read budget for Polar ({self.budget.per_minute:g} requests a "
                f"minute) is spent; retry after {wait:.1f} s",
                retry_after=wait,
            )
        try:
            with polar_errors("read meter quantities", self._settings):
                answer = self._client.meters.quantities(
                    id=meter_id,
                    start_timestamp=key[2],
                    end_timestamp=key[3],
                    interval=interval,  # type: ignore[arg-type]
                    external_customer_id=customer,
                )
        except RateLimited:
            if cached is not None:
                return cached[1]
            raise
        history = [(_parse(q.timestamp), float(q.quantity)) for q in answer.quantities]
        with self._lock:
            self._cache[key] = (self._monotonic(), history)
            self._cache.move_to_end(key)
            while len(self._cache) > self._size:
                self._cache.popitem(last=False)
        return history
