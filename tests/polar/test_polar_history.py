"""``usage_history`` on ``polar://``: Polar's meter quantities through polar-sdk (on the emulator),
cached, within a read budget; and the module-level and ``aio`` twins."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from polar.v2026_10 import Polar

import polar_metering as metering
from polar_metering import Metering, RateLimited
from polar_metering.backends._polar._history import RequestBudget


def _events(customer: str, days_ago: list[int], now: datetime) -> list[dict[str, object]]:
    return [
        {
            "customer_id": customer,
            "event_name": "api.request",
            "metadata": {"endpoint": "/h"},
            "timestamp": now - timedelta(days=d, minutes=5),
        }
        for d in days_ago
    ]


def test_history_is_polars_meter_quantities(
    make_client: Callable[..., Metering], sdk: Polar, customer: str
) -> None:
    client = make_client()
    now = datetime.now(UTC)
    assert client.track_usage_batch(_events(customer, [0, 0, 1, 3, 3, 3], now)).success
    assert client.flush(20)
    start = now - timedelta(days=5)
    history = client.usage_history(customer, "api_requests", start=start, interval="day")
    meter_id = next(m.id for m in sdk.meters.list(limit=100).items if m.name == "API Requests")
    answer = sdk.meters.quantities(
        id=meter_id,
        start_timestamp=history[0][0].isoformat(),
        end_timestamp=history[-1][0].isoformat(),
        interval="day",
        external_customer_id=customer,
    )
    polar = [
        (datetime.fromisoformat(q.timestamp.replace("Z", "+00:00")), q.quantity) for q in answer.quantities
    ]
    assert history == polar
    assert [q for _, q in history][-4:] == [3.0, 0.0, 1.0, 2.0]
    assert history[0][0] == start.replace(hour=0, minute=0, second=0, microsecond=0)


def test_history_is_cached_and_kept_within_the_budget(
    make_client: Callable[..., Metering], customer: str
) -> None:
    client = make_client()
    now = datetime.now(UTC)
    client.track_usage_batch(_events(customer, [0], now))
    assert client.flush(20)
    start = now - timedelta(days=2)
    first = client.usage_history(customer, "api_requests", start=start, interval="day")
    client.track_usage_batch(_events(customer, [0, 0], now))
    assert client.flush(20)
    assert client.usage_history(customer, "api_requests", start=start, interval="day") == first  # cached
    reader = client.backend._history  # type: ignore[attr-defined]
    reader.ttl = 0.0
    fresh = client.usage_history(customer, "api_requests", start=start, interval="day")
    assert fresh[-1][1] == first[-1][1] + 2
    # Past the budget: the cached answer is served, and an uncached question is refused.
    reader.budget = RequestBudget(1, burst=1, monotonic=lambda: 0.0)
    assert reader.budget.take()
    assert client.usage_history(customer, "api_requests", start=start, interval="day") == fresh
    with pytest.raises(RateLimited, match="read budget") as refused:
        client.usage_history(customer, "ai_tokens", start=start, interval="day")
    assert refused.value.retry_after is not None and refused.value.retry_after > 0


def test_module_level_and_async_twins(sqlite_url: str) -> None:
    metering.init(sqlite_url)
    metering.track_api_request("u1", "/x")
    start = datetime.now(UTC) - timedelta(days=1)
    sync = metering.usage_history("u1", "api_requests", start=start, interval="hour")
    assert sum(q for _, q in sync) == 1.0
    twin = asyncio.run(metering.aio.usage_history("u1", "api_requests", start=start, interval="hour"))
    assert twin == sync
    with pytest.raises(metering.ValidationError, match="interval"):
        metering.usage_history("u1", "api_requests", start=start, interval="minute")  # type: ignore[arg-type]
