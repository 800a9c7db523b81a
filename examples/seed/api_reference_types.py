"""Seed guide, "API Reference / Types": ``UsageStatus``, ``TrackingResult``, ``MetadataValue``,
``MeterSlug`` and ``EventName`` in use.

- ``UsageStatus`` wraps Polar's CustomerMeter: ``current`` is ``consumed_units``, ``limit`` is
  ``credited_units``, ``remaining`` is the balance floored at 0 and ``balance`` is Polar's own
  balance, which goes negative because tracking never blocks (Polar does not either).
- ``TrackingResult`` wraps ``EventsIngestResponse``: ``inserted`` and ``duplicates`` as Polar
  counts them, ``error`` (and ``rejected``) when events were refused.
- ``MeterSlug``/``EventName`` are ``str`` aliases; an app narrows them with ``Literal``, the seed's
  union types, and the catalog still checks slugs at run time.

Run it: ``python examples/seed/api_reference_types.py``
"""

from __future__ import annotations

import json
from typing import Any, Literal, get_args

import polar_metering as metering
from polar_metering import (
    EventName,
    ManualClock,
    MetadataValue,
    MeterSlug,
    Plan,
    TrackingResult,
    UsageStatus,
    ValidationError,
)

# The seed's `type MeterSlug = 'api_requests' | ...`, as an app would write it in Python.
AppMeter = Literal["api_requests", "storage_gb", "ai_tokens", "team_seats"]
AppEvent = Literal["api.request", "storage.update", "ai.tokens", "seat.active"]

BASIC = Plan("basic", credits={"api_requests": 10})


def track(customer: str, event: EventName, **metadata: MetadataValue) -> TrackingResult:
    """A typed wrapper of the core function: metadata values are ``str | int | float | bool``."""
    return metering.track_usage(customer, event, metadata)


def status_of(customer: str, meter: MeterSlug) -> UsageStatus:
    return metering.check_limit(customer, meter)


def main(url: str = "sqlite:///:memory:") -> dict[str, Any]:
    # A fixed clock makes the billing period in the output the same on every run.
    metering.init(url, plans=[BASIC], clock=ManualClock("2026-03-10T09:00:00+00:00"))
    out: dict[str, Any] = {}
    try:
        metering.subscribe("user_123", "basic")
        # -- TrackingResult ----------------------------------------------------------------------------
        out["ok"] = track(
            "user_123",
            "api.request",
            endpoint="/api/a",
            method="POST",
            status_code=200,
            cached=False,
            duration_ms=12.5,
        )
        out["first"] = metering.track_usage(
            "user_123", "api.request", {"endpoint": "/api/b"}, external_id="req-42"
        )
        out["retry"] = metering.track_usage(
            "user_123", "api.request", {"endpoint": "/api/b"}, external_id="req-42"
        )
        out["null_value"] = metering.track_usage("user_123", "api.request", {"endpoint": None})  # type: ignore[dict-item]
        out["empty_string"] = track("user_123", "api.request", endpoint="")
        out["mixed_batch"] = metering.track_usage_batch(
            [
                {"customer_id": "user_123", "event_name": "api.request", "metadata": {"endpoint": "/api/c"}},
                {"customer_id": "user_123", "event_name": "api.request", "metadata": {"tags": ["a", "b"]}},
            ]
        )
        for name in ("ok", "first", "retry", "null_value", "empty_string", "mixed_batch"):
            r = out[name]
            print(
                f"{name:<13} success={r.success} inserted={r.inserted} duplicates={r.duplicates}",
                r.error or "",
            )

        # -- UsageStatus: 3 requests so far, then past the limit (tracking is never blocked) --------------
        out["under"] = status_of("user_123", "api_requests")
        metering.track_usage_batch([{"customer_id": "user_123", "event_name": "api.request"}] * 9)
        out["over"] = over = status_of("user_123", "api_requests")
        print(
            f"current={over.current:g} limit={over.limit:g} remaining={over.remaining:g} "
            f"balance={over.balance:g} reason={over.reason!r}"
        )
        out["json"] = json.dumps(over.to_dict())
        print(out["json"])

        # -- MeterSlug / EventName ------------------------------------------------------------------------
        out["catalog_slugs"] = metering.get_client().catalog.slugs
        out["literal_slugs"] = get_args(AppMeter)
        out["events"] = tuple(m.event_name for m in metering.get_client().catalog.meters)
        try:
            status_of("user_123", "gpu_minutes")
        except ValidationError as e:
            print(f"unknown slug -> ValidationError(field={e.field!r}): {e.rule}")
            out["unknown_slug"] = e
    finally:
        metering.shutdown()
    return out


if __name__ == "__main__":
    main()
