"""The service's tests: they use only the pytest plugin's fixtures (``metering``, ``metering_clock``),
which polar-metering installs with the package. No database file, no network, no Polar account."""

from __future__ import annotations

from collections.abc import Iterator

import app as service
import pytest
from fastapi.testclient import TestClient

from polar_metering import ManualClock, Metering

ORG = {"X-Org-Id": "org_1"}


@pytest.fixture
def http(metering: Metering) -> Iterator[TestClient]:
    # The app's lifespan calls metering.init(): it gets the test's in-memory client back.
    with TestClient(service.app) as client:
        yield client


def test_a_summary_is_metered(http: TestClient, metering: Metering) -> None:
    metering.subscribe("org_1", "free")
    response = http.post("/api/summarize", json={"text": "one two three four five six"}, headers=ORG)
    assert response.status_code == 200
    assert response.json() == {"summary": "one two three four five", "tokens": 12}
    metering.flush()
    assert metering.check_limit("org_1", "ai_tokens").current == 12
    assert metering.check_limit("org_1", "api_requests").current == 1  # tracked by the middleware


def test_the_fourth_request_on_the_free_plan_is_refused(http: TestClient, metering: Metering) -> None:
    metering.subscribe("org_1", "free")
    codes = [http.post("/api/summarize", json={"text": "hi"}, headers=ORG).status_code for _ in range(4)]
    assert codes == [200, 200, 200, 429]
    refused = http.post("/api/summarize", json={"text": "hi"}, headers=ORG)
    assert refused.json()["reason"] == "Usage limit reached: 3/3 units used"
    assert refused.headers["RateLimit-Remaining"] == "0"


def test_tokens_are_reserved_before_the_model_runs(http: TestClient, metering: Metering) -> None:
    metering.subscribe("org_1", "free")  # 100 tokens
    metering.track_ai_tokens("org_1", 60)  # only 40 left: a 50-token hold does not fit
    response = http.post("/api/summarize", json={"text": "hi"}, headers=ORG)
    assert response.status_code == 429
    assert "would be exceeded" in response.json()["reason"]


def test_anonymous_callers_get_401_and_are_not_metered(http: TestClient, metering: Metering) -> None:
    response = http.post("/api/summarize", json={"text": "hi"})
    assert response.status_code == 401
    assert response.json()["error"] == "Authentication required"
    assert http.get("/health").status_code == 200  # unmetered routes stay open


def test_a_new_billing_period_renews_the_credits(
    http: TestClient, metering: Metering, metering_clock: ManualClock
) -> None:
    metering.subscribe("org_1", "free")
    for _ in range(3):
        http.post("/api/summarize", json={"text": "hi"}, headers=ORG)
    assert http.post("/api/summarize", json={"text": "hi"}, headers=ORG).status_code == 429
    metering_clock.advance(days=31)
    assert http.post("/api/summarize", json={"text": "hi"}, headers=ORG).status_code == 200
    usage = http.get("/api/usage", headers=ORG).json()
    assert usage["api_requests"]["current"] == 1  # /api/usage itself is tracked after it answers
    assert usage["api_requests"]["limit"] == 3


@pytest.mark.metering(start="2026-06-30T23:00:00+00:00")
def test_the_marker_sets_the_clock(metering_clock: ManualClock) -> None:
    assert metering_clock.now().isoformat() == "2026-06-30T23:00:00+00:00"
