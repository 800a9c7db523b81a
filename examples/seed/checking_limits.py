"""Seed guide, "Checking Limits": the current customer's limit, a given customer's, all usage.

The numbers are the seed's: the current customer (``org_456``) has used 150 of 1000 API requests,
peaked at 2.5 of 10 GB, used all 10000 AI tokens and has 3 of 5 seats; ``user_123`` has stored
10 of 10 GB and is refused with ``Usage limit reached: 10/10 units used``.

Run it: ``python examples/seed/checking_limits.py``
"""

from __future__ import annotations

from pprint import pprint
from typing import Any

import polar_metering as metering
from polar_metering import Plan, UsageStatus

PRO = Plan("pro", credits={"api_requests": 1000, "storage_gb": 10, "ai_tokens": 10_000, "team_seats": 5})


def seed_view(status: UsageStatus) -> dict[str, Any]:
    """The four fields the seed logs, with whole numbers shown as integers (150, not 150.0)."""

    def num(x: float | None) -> float | int | None:
        return int(x) if x is not None and x == int(x) else x

    return {
        "allowed": status.allowed,
        "current": num(status.current),
        "limit": num(status.limit),
        "remaining": num(status.remaining),
    }


def record_usage() -> None:
    """The usage behind the seed's outputs."""
    metering.track_usage_batch(
        [
            {"customer_id": "org_456", "event_name": "api.request", "metadata": {"endpoint": f"/api/{i}"}}
            for i in range(150)
        ]
    )
    metering.track_storage_update("org_456", 1.0)
    metering.track_storage_update("org_456", 2.5)  # the peak this period
    metering.track_storage_update("org_456", 2.0)
    metering.track_ai_tokens("org_456", 6_000)
    metering.track_ai_tokens("org_456", 4_000)
    for user in ("user_1", "user_2", "user_3", "user_2"):
        metering.track_seat_activity("org_456", user)
    metering.track_storage_update("user_123", 10)


def check_current_customer() -> UsageStatus:
    """``checkCurrentLimit('api_requests')``: the customer comes from the request context."""
    status = metering.check_current_limit("api_requests")
    print(seed_view(status))
    # {'allowed': True, 'current': 150, 'limit': 1000, 'remaining': 850}
    return status


def check_specific_customer() -> UsageStatus:
    """``checkLimit('user_123', 'storage_gb')``."""
    status = metering.check_limit("user_123", "storage_gb")
    if not status.allowed:
        print(status.reason)
        # Usage limit reached: 10/10 units used
    return status


def all_usage() -> dict[str, UsageStatus]:
    """``getAllUsage()``: every meter for the current customer."""
    usage = metering.get_all_usage()
    pprint({slug: seed_view(s) for slug, s in usage.items()}, sort_dicts=False, width=100)
    # {'api_requests': {'allowed': True, 'current': 150, 'limit': 1000, 'remaining': 850},
    #  'storage_gb': {'allowed': True, 'current': 2.5, 'limit': 10, 'remaining': 7.5},
    #  'ai_tokens': {'allowed': False, 'current': 10000, 'limit': 10000, 'remaining': 0},
    #  'team_seats': {'allowed': True, 'current': 3, 'limit': 5, 'remaining': 2}}
    return usage


def main(url: str = "sqlite:///:memory:") -> dict[str, Any]:
    metering.init(url, plans=[PRO])
    try:
        metering.subscribe("org_456", "pro")
        metering.subscribe("user_123", "pro")
        record_usage()
        with metering.current_customer("org_456"):  # what a framework integration does per request
            current = check_current_customer()
            usage = all_usage()
        specific = check_specific_customer()
    finally:
        metering.shutdown()
    return {
        "current": current,
        "specific": specific,
        "usage": usage,
        "views": {slug: seed_view(s) for slug, s in usage.items()},
    }


if __name__ == "__main__":
    main()
