"""Seed guide, "Troubleshooting", as checks that run.

- Events not showing: an event whose name does not match the meter's filter exactly is stored
  (``inserted=1``) but no meter counts it, so usage stays 0. Compare with the meter's event name.
- Limits not working: a customer without a plan (Polar: without a subscription granting meter
  credits) has no limit (``limit is None``) and is always allowed.
- Customer id issues: usage tracked on the user while limits are checked on the organization (or
  the reverse) never meet; use the billing entity for both.
- Setup failures: a missing token is a ``ConfigurationError`` naming ``POLAR_ACCESS_TOKEN`` before
  any request is made, and meter bodies never carry ``organization_id``, so an organization token
  is never refused with "Setting organization_id is disallowed".

Run it: ``python examples/seed/troubleshooting.py``
"""

from __future__ import annotations

from typing import Any

import polar_metering as metering
from polar_metering import ConfigurationError, Plan

FREE = Plan("free", credits={"api_requests": 100})


def event_name_mismatch() -> dict[str, Any]:
    expected = metering.get_client().catalog.meter("api_requests").event_name
    results = {
        name: metering.track_usage("user_123", name, {"endpoint": "/x"})
        for name in ("api_request", "API.request", "api.request ")
    }
    usage = metering.check_limit("user_123", "api_requests").current
    print(
        f"meter api_requests listens to {expected!r}; events sent as {list(results)} were stored "
        f"(inserted={sum(r.inserted for r in results.values())}) but usage is {usage:g}"
    )
    fixed = metering.track_usage("user_123", "api.request", {"endpoint": "/x"})
    after = metering.check_limit("user_123", "api_requests").current
    print(f"with the exact name {expected!r}: usage {after:g}")
    return {"expected": expected, "results": results, "usage": usage, "fixed": fixed, "after": after}


def no_subscription() -> dict[str, Any]:
    without = metering.check_limit("user_nosub", "api_requests")
    metering.subscribe("user_nosub", "free")
    with_plan = metering.check_limit("user_nosub", "api_requests")
    print(
        f"without a plan: limit={without.limit} allowed={without.allowed}; "
        f"after subscribe: limit={with_plan.limit:g}"
    )
    return {"without": without, "with_plan": with_plan}


def customer_id_mismatch() -> dict[str, Any]:
    metering.subscribe("org_456", "free")
    user_id, billing_entity_id = "user_789", "org_456"
    for _ in range(3):
        metering.track_api_request(user_id, "/api/process")  # wrong: the user, not the billing entity
    wrong = metering.check_limit(billing_entity_id, "api_requests").current
    metering.track_api_request(billing_entity_id, "/api/process")  # right
    right = metering.check_limit(billing_entity_id, "api_requests").current
    print(f"tracked on {user_id}, checked on {billing_entity_id}: {wrong:g}")
    print(f"tracked on the billing entity: {right:g}")
    return {"wrong": wrong, "right": right}


def setup_configuration() -> dict[str, Any]:
    from polar_metering._setup import run_setup  # the function behind `polar-metering setup`

    try:
        run_setup(None, env={})  # no POLAR_ACCESS_TOKEN anywhere: refused before any request
    except ConfigurationError as e:
        print("setup without a token:", e)
        missing_token: ConfigurationError | None = e
    else:
        missing_token = None
    bodies = [m.to_polar() for m in metering.get_client().catalog.meters]
    return {"missing_token": missing_token, "org_id_sent": any("organization_id" in b for b in bodies)}


def main(url: str = "sqlite:///:memory:") -> dict[str, Any]:
    metering.init(url, plans=[FREE])
    try:
        return {
            "mismatch": event_name_mismatch(),
            "no_subscription": no_subscription(),
            "customer": customer_id_mismatch(),
            "setup": setup_configuration(),
        }
    finally:
        metering.shutdown()


if __name__ == "__main__":
    main()
