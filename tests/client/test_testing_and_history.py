"""The public testing helpers and the usage-history API."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from polar_metering import Plan, ValidationError
from polar_metering.testing import capture_events, metering_for_tests


def test_metering_for_tests_and_capture() -> None:
    """The test client is strict, uses a manual clock, and capture_events sees stored events."""
    client, clock = metering_for_tests(plans=[Plan("free", credits={"ai_tokens": 100})])
    client.subscribe("u", "free")
    with capture_events(client) as events:
        client.track_ai_tokens("u", 60, model="m")
        client.track_api_request("u", "/x")
    assert [(e.name, dict(e.metadata)) for e in events] == [
        ("ai.tokens", {"tokens": 60, "model": "m"}),
        ("api.request", {"endpoint": "/x", "method": "GET"}),
    ]
    with pytest.raises(ValidationError):
        client.track_ai_tokens("u", -1)
    clock.advance(days=31)
    assert client.check_limit("u", "ai_tokens").current == 0
    client.close()


def test_usage_history_buckets_by_event_time() -> None:
    """Usage per day, bucketed by event timestamp, aligned to whole days."""
    client, clock = metering_for_tests(start="2026-03-10T15:30:00+00:00")
    for day in range(3):
        for _ in range(day + 1):
            client.track_api_request("u", "/x")
        clock.advance(days=1)
    client.track_usage(
        "u", "api.request", {"endpoint": "/late"}, timestamp=clock.now() - timedelta(days=3, hours=1)
    )
    history = client.usage_history("u", "api_requests", start=datetime(2026, 3, 9, 20, tzinfo=UTC))
    assert history == [
        (datetime(2026, 3, 9, tzinfo=UTC), 0.0),
        (datetime(2026, 3, 10, tzinfo=UTC), 2.0),
        (datetime(2026, 3, 11, tzinfo=UTC), 2.0),
        (datetime(2026, 3, 12, tzinfo=UTC), 3.0),
        (datetime(2026, 3, 13, tzinfo=UTC), 0.0),
    ]
    hourly = client.usage_history(
        "u", "api_requests", start=clock.now() - timedelta(hours=2), interval="hour"
    )
    assert len(hourly) == 3
    with pytest.raises(ValidationError, match="interval"):
        client.usage_history("u", "api_requests", start=clock.now(), interval="minute")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="at most 7 days"):
        client.usage_history("u", "api_requests", start=clock.now() - timedelta(days=8), interval="hour")
    client.close()
