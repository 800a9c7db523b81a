"""The customer lifecycle, the same tests on every backend: the embedded engine on SQLite (file and
memory) and PostgreSQL, and ``polar://`` against the emulator, where ``setup`` provisioned the plans
as Polar products with meter-credit benefits and ``subscribe`` goes through Polar's subscriptions.

Rules under test (``docs/semantics.md``, "Plans and subscriptions"): subscribing adds the plan's
credit and keeps usage; the same plan again changes nothing; another plan is a plan change (old
credits taken back, new ones granted, usage kept); cancelling keeps the plan to the period's end;
a customer without a subscription is limited by the default plan; a 429 says when to retry.
"""

from __future__ import annotations

import asyncio
import importlib.util
import math
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from flask import Flask
from tests.conformance.harness import factories, open_harness

from polar_metering import DEFAULT_METERS, Catalog, Plan, Subscription
from polar_metering.integrations import flask as flask_integration
from polar_metering.integrations.fastapi import install, usage_limit

_polar = Path(__file__).with_name("polar_harness.py")
if _polar.exists() and "polar-emulator" not in factories():
    spec = importlib.util.spec_from_file_location("tests.conformance.polar_harness", _polar)
    assert spec is not None and spec.loader is not None
    spec.loader.exec_module(importlib.util.module_from_spec(spec))

BACKENDS = sorted(factories())
FREE = Plan("free", credits={"api_requests": 10, "ai_tokens": 1000})
PRO = Plan("pro", credits={"api_requests": 100})
TINY = Plan("tiny", credits={"api_requests": 2})
CATALOG = Catalog(DEFAULT_METERS, (FREE, PRO, TINY), default_plan="free")


@pytest.fixture(params=BACKENDS)
def h(request: pytest.FixtureRequest) -> Iterator[Any]:
    with open_harness(request, request.param, catalog=CATALOG) as harness:
        yield harness


def _requests(h: Any, customer: str, n: int) -> None:
    for _ in range(n):
        assert h.client.track_api_request(customer, "/x").success


def _now() -> datetime:
    return datetime.now(UTC)


def test_subscribe_twice_keeps_usage_and_credits_once(h: Any) -> None:
    """5 requests, then the free plan (10): 5 of 10; subscribing again changes nothing, where Polar
    alone would open a second subscription and credit 20 (our idempotency, docs/semantics.md)."""
    _requests(h, "life_twice", 5)
    h.settle()
    first = h.client.subscribe("life_twice", "free")
    _requests(h, "life_twice", 2)
    h.settle()
    status = h.client.check_limit("life_twice", "api_requests")
    assert (status.current, status.limit, status.remaining) == (7, 10, 3)
    again = h.client.subscribe("life_twice", "free")
    assert (again.plan, again.period_start, again.period_end) == (
        first.plan,
        first.period_start,
        first.period_end,
    )
    h.settle()
    status = h.client.check_limit("life_twice", "api_requests")
    assert (status.current, status.limit) == (7, 10)
    assert h.client.check_limit("life_twice", "ai_tokens").limit == 1000


def test_plan_change_swaps_credits_and_keeps_usage(h: Any) -> None:
    """free -> pro: the free plan's credits are taken back and pro's granted (Polar's product
    change), usage is kept, the period continues (same interval); a meter pro does not name has
    no limit any more."""
    _requests(h, "life_change", 3)
    h.settle()
    before = h.client.subscribe("life_change", "free")
    after = h.client.subscribe("life_change", "pro")
    assert after.plan == "pro"
    assert after.period_start == before.period_start and after.period_end == before.period_end
    h.settle()
    status = h.client.check_limit("life_change", "api_requests")
    assert (status.current, status.limit) == (3, 100)
    assert h.client.check_limit("life_change", "ai_tokens").limit is None
    back = h.client.subscribe("life_change", "free")
    assert back.plan == "free"
    h.settle()
    status = h.client.check_limit("life_change", "api_requests")
    assert (status.current, status.limit) == (3, 10)


def test_get_subscription_and_cancel_at_period_end(h: Any) -> None:
    """No subscription reads None; then plan, status and the current period; cancelling keeps the
    plan (and its limit) until the period ends, and subscribing again undoes it."""
    assert h.client.get_subscription("life_get") is None
    made = h.client.subscribe("life_get", "free")
    sub = h.client.get_subscription("life_get")
    assert isinstance(sub, Subscription)
    assert (sub.plan, sub.status, sub.cancel_at_period_end) == ("free", "active", False)
    assert sub.period_start is not None and sub.period_end is not None
    assert sub.period_start <= _now() < sub.period_end
    assert timedelta(days=28) <= sub.period_end - sub.period_start <= timedelta(days=31)
    assert (sub.period_start, sub.period_end) == (made.period_start, made.period_end)
    canceled = h.client.cancel("life_get")
    assert canceled is not None and canceled.cancel_at_period_end
    assert h.client.cancel("life_get") == h.client.get_subscription("life_get")  # safe to repeat
    assert h.client.check_limit("life_get", "api_requests").limit == 10  # credit kept to period end
    resumed = h.client.subscribe("life_get", "free")
    assert not resumed.cancel_at_period_end
    assert h.client.cancel("nobody_here") is None


def test_default_plan_limits_an_unknown_customer(h: Any) -> None:
    """A customer no backend has seen is limited by the default plan, and refused at its limit."""
    status = h.client.check_limit("life_stranger", "api_requests")
    assert (status.allowed, status.current, status.limit) == (True, 0, 10)
    assert h.client.check_limit("life_stranger", "team_seats").limit is None  # the plan names no seats
    _requests(h, "life_stranger", 10)
    h.settle()
    refused = h.client.check_limit("life_stranger", "api_requests")
    assert not refused.allowed
    assert refused.reason == "Usage limit reached: 10/10 units used"


def test_period_of_a_subscribed_customer(h: Any) -> None:
    """UsageStatus carries the subscription's period on every backend."""
    sub = h.client.subscribe("life_period", "pro")
    status = h.client.check_limit("life_period", "api_requests")
    assert (status.period_start, status.period_end) == (sub.period_start, sub.period_end)


def test_list_customers_and_plans(h: Any) -> None:
    """Both listings page; the plans are the catalog's, with their credits."""
    for name in ("life_list_a", "life_list_b", "life_list_c"):
        h.client.subscribe(name, "tiny")
    first = h.client.list_customers(limit=2)
    assert len(first.items) == 2 and first.total >= 3 and first.has_next
    seen = {c.id for page in (1, 2, 3) for c in h.client.list_customers(page=page, limit=2).items}
    assert {"life_list_a", "life_list_b", "life_list_c"} <= seen
    plans = {p.name: p for p in h.client.list_plans().items}
    assert {"free", "pro", "tiny"} <= set(plans)
    assert dict(plans["free"].credits) == {"api_requests": 10, "ai_tokens": 1000}
    assert plans["pro"].interval == "month"


def _retry_after_expected(status_end: datetime | None) -> int:
    assert status_end is not None
    return math.ceil((status_end - _now()).total_seconds())


def test_fastapi_429_has_retry_after_until_the_period_end(h: Any) -> None:
    """The FastAPI integration refuses at the limit with Retry-After = seconds to the period end."""
    h.client.subscribe("life_429", "tiny")
    _requests(h, "life_429", 2)
    h.settle()
    app = FastAPI()
    install(app, resolver=lambda request: request.headers.get("x-org-id"), client=h.client)

    @app.get("/work", dependencies=[Depends(usage_limit("api_requests", client=h.client))])
    async def work() -> dict[str, bool]:
        return {"ok": True}

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return await client.get("/work", headers={"X-Org-Id": "life_429"})

    refused = asyncio.run(call())
    assert refused.status_code == 429
    expected = _retry_after_expected(h.client.get_subscription("life_429").period_end)
    assert abs(int(refused.headers["Retry-After"]) - expected) <= 2
    assert (
        refused.json()["period_end"]
        == h.client.check_limit("life_429", "api_requests").to_dict()["period_end"]
    )


def test_flask_429_has_retry_after_until_the_period_end(h: Any) -> None:
    """The Flask integration's 429 carries the same Retry-After."""
    h.client.subscribe("life_flask", "tiny")
    _requests(h, "life_flask", 2)
    h.settle()
    app = Flask(__name__)
    flask_integration.Metering(
        app, resolver=lambda request: request.headers.get("X-Org-Id"), client=h.client, flush_on_exit=False
    )

    @app.get("/work")
    @flask_integration.usage_limit("api_requests")
    def work() -> dict[str, bool]:
        return {"ok": True}

    refused = app.test_client().get("/work", headers={"X-Org-Id": "life_flask"})
    assert refused.status_code == 429
    expected = _retry_after_expected(h.client.get_subscription("life_flask").period_end)
    assert abs(int(refused.headers["Retry-After"]) - expected) <= 2
