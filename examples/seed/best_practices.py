"""Seed guide, "Best Practices", each one run and shown to matter.

1. Track after success: tracking before a failing operation bills for work that never happened.
2. Batch tracking: one call stores many events (one transaction here, one request to Polar).
3. Handle errors gracefully: tracking never raises; a failed ``TrackingResult`` is logged and the
   user is not blocked.
4. Organization id for team features: storage and seats go to the organization, and the billing
   entity picks the organization when there is one.
5. Check limits early: refuse before the expensive work starts; ``amount=`` asks whether *this*
   action fits.

Run it: ``python examples/seed/best_practices.py``
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import polar_metering as metering
from polar_metering import Aggregation, Filter, Meter, Plan, UsageLimitExceeded

logger = logging.getLogger("seed.best_practices")

# The seed tracks a generic 'operation' event; a meter must count it for it to show up as usage.
OPERATIONS = Meter("operations", "Operations", Filter.event("operation"), Aggregation.count())
PLAN = Plan("team", credits={"ai_tokens": 800, "storage_gb": 10})


class OperationFailed(Exception):
    pass


def perform_operation(succeed: bool) -> dict[str, str]:
    if not succeed:
        raise OperationFailed("the operation failed")
    return {"outcome": "done"}


# -- 1. Track after success ----------------------------------------------------------------------------
def good_operation(customer_id: str, succeed: bool) -> None:
    result = perform_operation(succeed)
    metering.track_usage(customer_id, "operation", {**result})


def bad_operation(customer_id: str, succeed: bool) -> None:
    metering.track_usage(customer_id, "operation", {})  # tracks even if the operation fails
    perform_operation(succeed)


# -- 2. Batch tracking ---------------------------------------------------------------------------------
def track_two_requests(customer_id: str, batched: bool) -> int:
    if batched:  # good: a single call
        return metering.track_usage_batch(
            [
                {"customer_id": customer_id, "event_name": "api.request", "metadata": {"endpoint": "/a"}},
                {"customer_id": customer_id, "event_name": "api.request", "metadata": {"endpoint": "/b"}},
            ]
        ).inserted
    # less efficient: one call each
    return sum(metering.track_api_request(customer_id, e).inserted for e in ("/a", "/b"))


# -- 3. Handle errors gracefully -----------------------------------------------------------------------
def handle_request(customer_id: str, endpoint: str) -> dict[str, Any]:
    result = metering.track_usage(customer_id, "api.request", {"endpoint": endpoint})
    if not result.success:
        # Log but don't block the user.
        logger.error("Failed to track usage: %s", result.error)
    return {"success": True, "tracked": result.success, "error": result.error}


# -- 4. Organization id for team features ----------------------------------------------------------------
@dataclass(frozen=True)
class CurrentCustomer:
    user_id: str
    organization_id: str | None = None

    @property
    def billing_entity_id(self) -> str:
        return self.organization_id or self.user_id


def record_upload(who: CurrentCustomer, size_gb: float, endpoint: str) -> None:
    # Organization-level features (storage, seats) belong to the organization when there is one...
    metering.track_storage_update(who.organization_id or who.user_id, size_gb)
    # ...and billing_entity_id picks the right one automatically.
    metering.track_api_request(who.billing_entity_id, endpoint)


# -- 5. Check limits early -------------------------------------------------------------------------------
EXPENSIVE_RUNS: list[str] = []


def run_expensive_ai(prompt: str) -> int:
    EXPENSIVE_RUNS.append(prompt)
    return 400  # tokens used


def expensive_ai_operation(prompt: str, *, estimate: int | None = None) -> int:
    customer_id = metering.get_current_customer()
    assert customer_id is not None
    status = metering.check_current_limit("ai_tokens", amount=estimate)  # check first
    if not status.allowed:
        raise UsageLimitExceeded(status, meter="ai_tokens", customer=customer_id)
    tokens = run_expensive_ai(prompt)  # then proceed with the expensive operation
    metering.track_ai_tokens(customer_id, tokens)
    return tokens


def main(url: str = "sqlite:///:memory:") -> dict[str, Any]:
    EXPENSIVE_RUNS.clear()
    metering.init(url, meters=[*metering.DEFAULT_METERS, OPERATIONS], plans=[PLAN])
    out: dict[str, Any] = {}
    try:
        # 1. A failing operation: the good pattern records nothing, the bad one bills it anyway.
        for pattern, customer in ((good_operation, "cust_good"), (bad_operation, "cust_bad")):
            try:
                pattern(customer, succeed=False)
            except OperationFailed:
                pass
            pattern(customer, succeed=True)
        out["operations"] = {
            c: metering.check_limit(c, "operations").current for c in ("cust_good", "cust_bad")
        }
        print("1. operations billed for one success and one failure:", out["operations"])

        # 2. Same usage either way; the batch is one call.
        out["batched"] = track_two_requests("cust_batch", batched=True)
        out["one_by_one"] = track_two_requests("cust_single", batched=False)
        out["batch_usage"] = {
            c: metering.check_limit(c, "api_requests").current for c in ("cust_batch", "cust_single")
        }
        print("2. requests tracked:", out["batch_usage"])

        # 3. An event Polar would refuse (an empty endpoint string): reported, not raised.
        out["graceful"] = handle_request("user_123", "")
        print("3. request still served:", out["graceful"])

        # 4. One user inside an organization, one on their own.
        record_upload(CurrentCustomer("user_123", "org_456"), 2.5, "/api/upload")
        record_upload(CurrentCustomer("user_999"), 1.0, "/api/upload")
        out["entities"] = {
            c: {s: u.current for s, u in metering.get_all_usage(c).items() if u.current}
            for c in ("org_456", "user_123", "user_999")
        }
        print("4. usage by billing entity:", out["entities"])

        # 5. 400 tokens per run against an 800 token plan.
        metering.subscribe("org_456", "team")
        refusals: list[str | None] = []
        with metering.current_customer("org_456"):
            steps: list[tuple[str, int | None]] = [
                ("draft", None),
                ("polish", 500),
                ("revise", None),
                ("extend", None),
            ]
            for prompt, estimate in steps:
                try:
                    expensive_ai_operation(prompt, estimate=estimate)
                except UsageLimitExceeded as e:
                    refusals.append(e.status.reason)
                    print(f"5. {prompt!r} refused before running:", e.status.reason)
        out["refusals"], out["expensive_runs"] = refusals, list(EXPENSIVE_RUNS)
        out["ai_tokens"] = metering.check_limit("org_456", "ai_tokens")
    finally:
        metering.shutdown()
    return out


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main()
