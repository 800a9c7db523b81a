"""Seed guide, "Quick Start": import the library, track usage in an API route, check limits.

The seed's route handlers become plain functions returning ``(body, status)``; the customer comes
from ``metering.get_current_customer()``, which a framework integration sets per request (here the
``with metering.current_customer(...)`` block plays that part).

Run it: ``python examples/seed/quick_start.py``
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

# 1. Install and configure: everything is importable from the package.
import polar_metering as metering
from polar_metering import Plan

Response = tuple[dict[str, Any], int]

# A tiny plan so the example reaches its limit after three calls.
STARTER = Plan("starter", credits={"api_requests": 3})


def generate() -> Response:
    """2. Track usage: the seed's ``POST /api/generate``."""
    billing_entity_id = metering.get_current_customer()
    if billing_entity_id is None:
        return {"error": "sign in first"}, 401
    metering.track_api_request(billing_entity_id, "/api/generate")
    # Your logic here...
    return {"success": True}, 200


def limited() -> Response:
    """3. Check limits: refuse with 429 and the reason once the plan's requests are used up."""
    status = metering.check_current_limit("api_requests")
    if not status.allowed:
        return {"error": status.reason}, 429
    return {"success": True}, 200


def main(url: str | None = None) -> dict[str, Any]:
    """Run the quick start on a fresh SQLite file in a temporary directory (or on ``url``)."""
    with tempfile.TemporaryDirectory(prefix="seed-quick-start-") as tmp:
        db_url = url or f"sqlite:///{Path(tmp) / 'metering.db'}"
        metering.init(db_url, plans=[STARTER])
        try:
            metering.subscribe("user_123", "starter")
            with metering.current_customer("user_123"):
                before = limited()
                calls = [generate() for _ in range(3)]
                after = limited()
            anonymous = generate()
            for label, (body, code) in (
                ("limited()", before),
                *(("generate()", c) for c in calls),
                ("limited()", after),
                ("generate() signed out", anonymous),
            ):
                print(f"{label} -> {code} {body}")
            usage = metering.check_limit("user_123", "api_requests")
            print(f"user_123 used {usage.current:g} of {usage.limit:g} API requests")
        finally:
            metering.shutdown()
        return {
            "url": db_url,
            "before": before,
            "calls": calls,
            "after": after,
            "anonymous": anonymous,
            "current": usage.current,
            "db_file_existed": Path(tmp, "metering.db").exists(),
        }


if __name__ == "__main__":
    main()
