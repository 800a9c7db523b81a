"""Every result type has ``to_dict()``; ``jsonable`` makes results (and ``get_all_usage()``) something
``json.dumps`` takes; counts read as whole numbers where the aggregation makes them whole."""

from __future__ import annotations

import json
import math

import pytest

import polar_metering as metering
from polar_metering import Plan, SafeResult, TrackingResult, UsageStatus
from polar_metering._status import exceed_reason, limit_reason
from polar_metering.testing import metering_for_tests


@pytest.fixture
def client() -> metering.Metering:
    c, _ = metering_for_tests(
        plans=[Plan("free", credits={"api_requests": 5, "storage_gb": 10, "team_seats": 3, "ai_tokens": 99})]
    )
    c.subscribe("org", "free")
    return c


def test_usage_status_counts_are_whole_numbers(client: metering.Metering) -> None:
    client.track_api_request("org", "/x")
    client.track_storage_update("org", 2.0)
    client.track_seat_activity("org", "u1")
    usage = client.get_all_usage("org")
    api, storage, seats = (
        usage["api_requests"].to_dict(),
        usage["storage_gb"].to_dict(),
        usage["team_seats"].to_dict(),
    )
    assert (api["current"], api["limit"], api["remaining"], api["reserved"]) == (1, 5, 4, 0)
    assert all(type(api[k]) is int for k in ("current", "limit", "remaining", "reserved"))
    assert type(seats["current"]) is int and seats["aggregation"] == "unique"
    # max over sizes in GB: fractional by nature, so it stays a float even when it happens to be whole
    assert storage["current"] == 2.0 and type(storage["current"]) is float
    assert json.loads(json.dumps(api))["current"] == 1


def test_json_dumps_of_statuses_and_get_all_usage(client: metering.Metering) -> None:
    status = client.check_limit("org", "api_requests")
    text = json.dumps(status, default=metering.jsonable)
    assert json.loads(text) == status.to_dict()
    everything = json.loads(json.dumps(metering.jsonable(client.get_all_usage("org"))))
    assert set(everything) == {"api_requests", "storage_gb", "ai_tokens", "team_seats"}
    assert everything["api_requests"]["period_start"].startswith("2026-01-01")


def test_tracking_and_safe_results_to_dict() -> None:
    client, _ = metering_for_tests(plans=[Plan("free", credits={"ai_tokens": 99})], strict=False)
    client.subscribe("org", "free")
    tracked = client.track_usage_batch(
        [{"customer_id": "org", "event_name": "api.request"}, {"customer_id": "", "event_name": "x"}]
    )
    assert isinstance(tracked, TrackingResult)
    data = json.loads(json.dumps(tracked.to_dict()))
    assert data["inserted"] == 1 and data["rejected"] == [{"index": 1, "error": tracked.rejected[0][1]}]
    assert len(data["external_ids"]) == 1
    client.track_usage("org", "ai.tokens", {"tokens": 99})
    safe = client.with_usage_limit_safe("ai_tokens", lambda: {"ok": True}, customer_id="org")
    assert isinstance(safe, SafeResult)
    refused = json.loads(json.dumps(safe.to_dict()))
    assert (
        refused["success"] is False and refused["status"]["reason"] == "Usage limit reached: 99/99 units used"
    )
    ok = client.with_usage_limit_safe("api_requests", lambda: {"ok": True}, customer_id="org")
    assert ok.to_dict() == {"success": True, "data": {"ok": True}, "error": None, "status": None}


def test_every_public_result_type_has_to_dict() -> None:
    from polar_metering import MeterReading, MeterResult, SetupReport
    from polar_metering._meter_checks import MeterFinding
    from polar_metering.delivery import DeadLetter, DeliveryMetrics, OutboxStatus
    from polar_metering.webhooks import WebhookResult

    for cls in (
        UsageStatus,
        TrackingResult,
        SafeResult,
        MeterReading,
        MeterResult,
        SetupReport,
        MeterFinding,
        OutboxStatus,
        DeadLetter,
        DeliveryMetrics,
        WebhookResult,
    ):
        assert callable(getattr(cls, "to_dict", None)), cls
    reading = MeterReading("api_requests", "org", 3.0, None)
    assert json.loads(json.dumps(reading.to_dict()))["consumed"] == 3.0
    report = SetupReport((MeterResult("a", "Aaa", "exists"),), server="http://127.0.0.1:1")
    assert json.loads(json.dumps(report.to_dict()))["results"][0]["status"] == "exists"


def test_batch_error_names_the_item_once() -> None:
    client, _ = metering_for_tests()
    with pytest.raises(metering.BatchValidationError) as info:
        client.track_usage_batch(
            [
                {"customer_id": "a", "event_name": "api.request"},
                {"customer_id": "", "event_name": "api.request"},
            ]
        )
    assert str(info.value) == "events[1].customer_id: must be a non-empty string"


def test_huge_numbers_in_reasons_are_readable() -> None:
    assert limit_reason(1e30, 1e30) == "Usage limit reached: 1e+30/1e+30 units used"
    assert exceed_reason(1600000.5, 1500000) == (
        "Usage limit would be exceeded: 1600000.5/1500000 units after this action"
    )
    assert limit_reason(10, 10) == "Usage limit reached: 10/10 units used"
    assert limit_reason(999_999_999_999_999, 10**15).endswith("999999999999999/1e+15 units used")
    assert "inf" in limit_reason(math.inf, 5)
