"""One behaviour suite, run over every backend: the embedded engine on SQLite (file and memory) and
PostgreSQL, and the Polar backend against the emulator over loopback HTTP."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.conformance.harness import factories, open_harness

from polar_metering import Aggregation, Filter, Meter, UsageLimitExceeded
from polar_metering._catalog import DEFAULT_METERS

# The Polar harness lives beside this file when the Polar backend is available.
_polar = Path(__file__).with_name("polar_harness.py")
if _polar.exists():
    spec = importlib.util.spec_from_file_location("tests.conformance.polar_harness", _polar)
    assert spec is not None and spec.loader is not None
    spec.loader.exec_module(importlib.util.module_from_spec(spec))

BACKENDS = sorted(factories())
CUSTOM = (
    *DEFAULT_METERS,
    Meter("gpu_minutes_avg", "GPU Minutes Avg", Filter.event("gpu.run"), Aggregation.avg("minutes")),
    Meter("gpu_minutes_min", "GPU Minutes Min", Filter.event("gpu.run"), Aggregation.min("minutes")),
    Meter("premium_calls", "Premium Calls", Filter.event("api.request", tier="premium"), Aggregation.count()),
)


@pytest.fixture(params=BACKENDS)
def h(request: pytest.FixtureRequest) -> Iterator[Any]:
    with open_harness(request, request.param, CUSTOM) as harness:
        yield harness


def test_count_meter_counts_tracked_requests(h: Any) -> None:
    """Three tracked API requests read back as 3 on api_requests, with no limit by default."""
    for _ in range(3):
        assert h.client.track_api_request("cust_a", "/api/generate", method="POST").success
    h.settle()
    status = h.client.check_limit("cust_a", "api_requests")
    assert (status.current, status.limit, status.remaining, status.allowed) == (3, None, None, True)


def test_duplicate_external_id_counts_once(h: Any) -> None:
    """A resent event with the same external_id is a duplicate, never counted twice (Polar §1.3)."""
    first = h.client.track_usage("cust_b", "ai.tokens", {"tokens": 40}, external_id="req-42")
    h.settle()
    again = h.client.track_usage("cust_b", "ai.tokens", {"tokens": 999}, external_id="req-42")
    h.settle()
    assert first.success and again.success
    assert h.client.check_limit("cust_b", "ai_tokens").current == 40


def test_batch_keeps_valid_events_and_names_bad_ones(h: Any) -> None:
    """Invalid events are rejected by index and field while the valid ones in the batch are stored."""
    result = h.client.track_usage_batch(
        [
            {"customer_id": "cust_c", "event_name": "ai.tokens", "metadata": {"tokens": 10}},
            {"customer_id": "cust_c", "event_name": "x" * 129, "metadata": {}},
            {"customer_id": "cust_c", "event_name": "ai.tokens", "metadata": {"tokens": [1, 2]}},
            {"externalCustomerId": "cust_c", "eventName": "ai.tokens", "properties": {"tokens": 5}},
        ]
    )
    assert not result.success
    assert result.inserted == 2
    assert [i for i, _ in result.rejected] == [1, 2]
    assert "events[1].name" in result.rejected[0][1] and "128" in result.rejected[0][1]
    assert "events[2].metadata.tokens" in result.rejected[1][1]
    h.settle()
    assert h.client.check_limit("cust_c", "ai_tokens").current == 15


def test_sum_max_unique_default_meters(h: Any) -> None:
    """Tokens sum, storage takes the peak, seats count distinct users."""
    c = h.client
    for tokens in (100, 250, 650):
        c.track_ai_tokens("org_1", tokens, model="gpt-4")
    for size in (2.5, 7.25, 3.0):
        c.track_storage_update("org_1", size, operation="upload")
    for user in ("u1", "u2", "u1", "u3", "u2"):
        c.track_seat_activity("org_1", user, action="login")
    h.settle()
    usage = c.get_all_usage("org_1")
    assert set(usage) == {m.slug for m in CUSTOM}
    assert usage["ai_tokens"].current == 1000
    assert usage["storage_gb"].current == 7.25
    assert usage["team_seats"].current == 3
    assert usage["api_requests"].current == 0


def test_avg_min_and_metadata_filter(h: Any) -> None:
    """avg and min read only numeric values; a metadata eq clause selects premium calls only."""
    c = h.client
    for minutes in (10, 20, 60):
        c.track_usage("lab", "gpu.run", {"minutes": minutes})
    c.track_usage("lab", "gpu.run", {"minutes": "not a number"})
    c.track_usage("lab", "api.request", {"endpoint": "/a", "tier": "premium"})
    c.track_usage("lab", "api.request", {"endpoint": "/b", "tier": "basic"})
    h.settle()
    usage = c.get_all_usage("lab")
    assert usage["gpu_minutes_avg"].current == pytest.approx(30.0)
    assert usage["gpu_minutes_min"].current == 10
    assert usage["premium_calls"].current == 1
    assert usage["api_requests"].current == 2


def test_limit_reached_reads_like_the_seed(h: Any) -> None:
    """At 5/5 the check refuses with the seed's reason text and nothing remaining."""
    h.give_credits("cust_d", "api_requests", 5)
    for _ in range(4):
        h.client.track_api_request("cust_d", "/x")
    h.settle()
    before = h.client.check_limit("cust_d", "api_requests")
    assert (before.allowed, before.current, before.limit, before.remaining) == (True, 4, 5, 1)
    h.client.track_api_request("cust_d", "/x")
    h.settle()
    status = h.client.check_limit("cust_d", "api_requests")
    assert not status.allowed
    assert status.reason == "Usage limit reached: 5/5 units used"
    assert (status.current, status.limit, status.remaining) == (5, 5, 0)


def test_amount_projection_per_aggregation(h: Any) -> None:
    """Sum adds the amount; max takes the larger; unique adds only a value not yet counted."""
    c = h.client
    h.give_credits("cust_e", "ai_tokens", 1000)
    c.track_ai_tokens("cust_e", 900)
    h.settle()
    assert c.check_limit("cust_e", "ai_tokens", amount=100).allowed
    refused = c.check_limit("cust_e", "ai_tokens", amount=101)
    assert not refused.allowed and refused.reason is not None

    h.give_credits("cust_f", "storage_gb", 10)
    c.track_storage_update("cust_f", 9.0)
    h.settle()
    assert c.check_limit("cust_f", "storage_gb", amount=3.0).allowed  # peak stays 9
    assert c.check_limit("cust_f", "storage_gb", amount=10.0).allowed
    assert not c.check_limit("cust_f", "storage_gb", amount=10.5).allowed

    h.give_credits("cust_g", "team_seats", 2)
    c.track_seat_activity("cust_g", "alice")
    c.track_seat_activity("cust_g", "bob")
    h.settle()
    assert not c.check_limit("cust_g", "team_seats").allowed
    assert c.check_limit("cust_g", "team_seats", value="alice").allowed
    assert not c.check_limit("cust_g", "team_seats", value="carol").allowed


def test_with_usage_limit_runs_or_raises(h: Any) -> None:
    """The action runs while under the limit and raises UsageLimitExceeded once it is reached."""
    c = h.client
    h.give_credits("cust_h", "api_requests", 2)
    calls: list[int] = []

    def action(n: int) -> int:
        calls.append(n)
        c.track_api_request("cust_h", "/gen")
        return n * 2

    assert c.with_usage_limit("api_requests", action, 1, customer_id="cust_h") == 2
    h.settle()
    assert c.with_usage_limit("api_requests", action, 2, customer_id="cust_h") == 4
    h.settle()
    with pytest.raises(UsageLimitExceeded) as info:
        c.with_usage_limit("api_requests", action, 3, customer_id="cust_h")
    assert info.value.status.reason == "Usage limit reached: 2/2 units used"
    assert calls == [1, 2]
    safe = c.with_usage_limit_safe("api_requests", action, 4, customer_id="cust_h")
    assert (safe.success, safe.data, safe.error) == (False, None, "Usage limit reached: 2/2 units used")


def test_reservations_hold_and_settle(h: Any) -> None:
    """A hold takes units from what others may reserve; commit records the actual usage."""
    c = h.client
    if not c.backend.supports_holds:
        pytest.fail(f"{h.name} must support reservations")
    h.give_credits("cust_i", "ai_tokens", 1000)
    with c.reserve("cust_i", "ai_tokens", 600) as r:
        with pytest.raises(UsageLimitExceeded):
            c.reserve("cust_i", "ai_tokens", 600)
        assert c.check_limit("cust_i", "ai_tokens").remaining == 400
        r.commit(450)
    h.settle()
    status = c.check_limit("cust_i", "ai_tokens")
    assert (status.current, status.remaining, status.reserved) == (450, 550, 0)
    with c.reserve("cust_i", "ai_tokens", 550):
        pass  # released without commit: nothing recorded
    h.settle()
    assert c.check_limit("cust_i", "ai_tokens").current == 450


def test_unknown_customer_has_no_limit(h: Any) -> None:
    """A customer the backend has never seen reads 0 with no limit, and is allowed."""
    status = h.client.check_limit("never_seen", "ai_tokens")
    assert (status.allowed, status.current, status.limit) == (True, 0, None)


def test_giving_credits_does_not_reset_usage(h: Any) -> None:
    """Credits only add (Polar: a meter-credit benefit emits ``meter.credited``; ``reset_meters``
    resets only meters with a metered price, subscription/service.py at c6c3645). 5 tracked, 10
    credited, 2 more: 7 of 10 (issue 13, row 1). ``test_lifecycle`` has the same for subscriptions."""
    for _ in range(5):
        h.client.track_api_request("cust_credit", "/x")
    h.settle()
    h.give_credits("cust_credit", "api_requests", 10)
    for _ in range(2):
        h.client.track_api_request("cust_credit", "/x")
    h.settle()
    status = h.client.check_limit("cust_credit", "api_requests")
    assert (status.current, status.limit, status.remaining) == (7, 10, 3)


# Where Polar's server differs from its own documentation (docs/semantics.md): the engine keeps the
# documented meaning; the Polar backend, against the emulator playing Polar's quirks, shows Polar's.
POLAR_QUIRK_METERS = (
    *DEFAULT_METERS,
    Meter("everything", "Everything", Filter("and", ()), Aggregation.count()),
    Meter("peak_tokens", "Peak tokens", Filter.event("llm.call"), Aggregation.max("_llm.total_tokens")),
)


@pytest.fixture(params=BACKENDS)
def hq(request: pytest.FixtureRequest) -> Iterator[Any]:
    with open_harness(request, request.param, POLAR_QUIRK_METERS) as harness:
        yield harness


def test_a_catch_all_meter_and_the_other_meters_credits(hq: Any) -> None:
    """Polar counts every ``meter.credited`` event a meter's own filter matches as its credit, so a
    catch-all meter shows the other meters' credits (customer_meter/service.py, issue 13 row 4)."""
    hq.give_credits("cust_all", "api_requests", 50)
    hq.give_credits("cust_all", "ai_tokens", 100)
    for _ in range(3):
        hq.client.track_api_request("cust_all", "/x")
    hq.settle()
    status = hq.client.check_limit("cust_all", "everything")
    assert status.current == 3
    assert status.limit == (150 if hq.name == "polar-emulator" else None)
    assert hq.client.check_limit("cust_all", "api_requests").limit == 50


def test_max_over_a_dotted_property(hq: Any) -> None:
    """Polar's customer meter reads ``_llm.total_tokens`` as one key for max/min/avg/unique and
    shows 0; the engine follows the dots (issue 13, row 5)."""
    llm = {"vendor": "openai", "model": "gpt-4o", "input_tokens": 1, "output_tokens": 1}
    for total in (100, 200):
        hq.client.track_usage("cust_llm", "llm.call", {"_llm": {**llm, "total_tokens": total}})
    hq.give_credits("cust_llm", "api_requests", 1)  # makes the customer known to Polar
    hq.settle()
    expected = 0 if hq.name == "polar-emulator" else 200
    assert hq.client.check_limit("cust_llm", "peak_tokens").current == expected
