"""Seed guide, "Tracking Usage": the core function, each convenience tracker, batch tracking.

Every call returns a ``TrackingResult`` (the seed's ``{success, inserted, error}``). The seed's
options objects become keyword arguments: ``{statusCode: 200, duration: 150}`` is
``status_code=200, duration_ms=150``.

Run it: ``python examples/seed/tracking_usage.py``
"""

from __future__ import annotations

from typing import Any

import polar_metering as metering
from polar_metering import TrackingResult


def core_function() -> TrackingResult:
    """``trackUsage(customerId, eventName, properties)``."""
    return metering.track_usage(
        "user_123",  # external customer id (user or org id)
        "api.request",  # event name: must match a meter's filter
        {"endpoint": "/api/v1/generate", "method": "POST"},  # metadata (the seed's "properties")
    )


def api_requests() -> list[TrackingResult]:
    return [
        metering.track_api_request("user_123", "/api/generate"),  # simple
        metering.track_api_request(
            "user_123", "/api/generate", method="POST", status_code=200, duration_ms=150
        ),
    ]


def storage_updates() -> list[TrackingResult]:
    return [
        metering.track_storage_update("org_456", 2.5),  # current size in GB (billed at the peak)
        metering.track_storage_update("org_456", 3.0, operation="upload"),
    ]


def ai_tokens() -> list[TrackingResult]:
    return [
        metering.track_ai_tokens("user_123", 1500),  # simple
        metering.track_ai_tokens(
            "user_123", 1500, model="gpt-4", type="total"
        ),  # "input" | "output" | "total"
    ]


def seat_activity() -> list[TrackingResult]:
    return [
        metering.track_seat_activity("org_456", "user_789"),  # unique users make seats
        metering.track_seat_activity("org_456", "user_789", action="login"),  # same user: still one seat
    ]


def batch() -> list[TrackingResult]:
    """``trackUsageBatch``: one call, one transaction (one request to Polar)."""
    pythonic = metering.track_usage_batch(
        [
            {"customer_id": "user_123", "event_name": "api.request", "metadata": {"endpoint": "/api/a"}},
            {"customer_id": "user_123", "event_name": "api.request", "metadata": {"endpoint": "/api/b"}},
            {"customer_id": "user_123", "event_name": "ai.tokens", "metadata": {"tokens": 500}},
        ]
    )
    # The seed's own spelling is accepted too, so pasted payloads keep working.
    seed_spelling = metering.track_usage_batch(
        [
            {
                "externalCustomerId": "user_123",
                "eventName": "api.request",
                "properties": {"endpoint": "/api/c"},
            },
        ]
    )
    return [pythonic, seed_spelling]


def main(url: str = "sqlite:///:memory:") -> dict[str, Any]:
    metering.init(url)
    try:
        results: dict[str, Any] = {
            "core": core_function(),
            "api_requests": api_requests(),
            "storage": storage_updates(),
            "ai_tokens": ai_tokens(),
            "seats": seat_activity(),
            "batch": batch(),
        }
        for name, value in results.items():
            for r in value if isinstance(value, list) else [value]:
                print(f"{name:<13} success={r.success} inserted={r.inserted}")
        usage = {c: metering.get_all_usage(c) for c in ("user_123", "org_456")}
        for customer, statuses in usage.items():
            print(customer, {slug: s.current for slug, s in statuses.items()})
    finally:
        metering.shutdown()
    results["usage"] = usage
    return results


if __name__ == "__main__":
    main()
