"""The Django integration, driven through examples/django_app/app.py with Django's test clients."""

from __future__ import annotations

import asyncio
import io
import math
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import django
import pytest
from django.conf import settings
from django.core.management import call_command, get_commands
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.test import AsyncClient, Client, override_settings
from django.urls import path

import polar_metering as metering
from polar_metering import ConfigurationError, ManualClock, Plan
from polar_metering.integrations import django as django_integration

from .conftest import import_error_without, load_example

example = load_example("django_app/app.py", "django_example_app")


def whoami(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"customer": metering.get_current_customer()})


async def whoami_async(request: HttpRequest) -> HttpResponse:
    before = metering.get_current_customer()
    # All requests of the concurrent test wait here together, so their contexts overlap.
    async with asyncio.timeout(10):
        await BARRIER.wait()
    status = await metering.aio.check_current_limit("api_requests")
    return JsonResponse(
        {"before": before, "after": metering.get_current_customer(), "status": status.customer}
    )


def big_summary(request: HttpRequest) -> HttpResponse:
    tokens = metering.with_usage_limit("ai_tokens", lambda: 1, amount=5000)
    return JsonResponse({"tokens": tokens})


BARRIER = asyncio.Barrier(20)
urlpatterns = [
    *example.urlpatterns,
    path("whoami", whoami),
    path("whoami-async", whoami_async),
    path("api/big", big_summary),
]

if not settings.configured:
    settings.configure(**{**example.SETTINGS, "ROOT_URLCONF": __name__})
    django.setup()

ORG = {"X-Org-Id": "org_1"}


@pytest.fixture(autouse=True)
def polar_settings(sqlite_url: str, clock: ManualClock) -> Iterator[dict[str, Any]]:
    """Each test meters into its own SQLite file; the integration reads the settings afresh."""
    configured = {**example.SETTINGS["POLAR_METERING"], "URL": sqlite_url, "CLOCK": clock}
    with override_settings(POLAR_METERING=configured):
        yield configured


def used(customer: str, meter: str = "api_requests") -> float:
    metering.flush()
    return metering.check_limit(customer, meter).current


def test_allowed_requests_pass_and_are_tracked_until_the_limit_answers_429(clock: ManualClock) -> None:
    client = Client()
    assert client.post("/signup", headers=ORG).status_code == 200

    responses = [client.post("/api/process", headers=ORG) for _ in range(6)]

    assert [r.status_code for r in responses] == [200] * 5 + [429]
    assert all(r.json() == {"success": True, "customer": "org_1"} for r in responses[:5])
    assert used("org_1") == 5  # signup is excluded and the refusal is not metered
    status = metering.check_limit("org_1", "api_requests")
    refused = responses[5]
    assert refused.json() == {"error": "Usage limit exceeded", **status.to_dict()}
    assert refused.headers["RateLimit-Limit"] == "5"
    assert refused.headers["RateLimit-Remaining"] == "0"
    assert status.period_end is not None
    assert refused.headers["Retry-After"] == str(math.ceil((status.period_end - clock.now()).total_seconds()))


def test_the_customer_comes_from_the_resolver_and_anonymous_requests_are_not_metered(
    polar_settings: dict[str, Any],
) -> None:
    client = Client()
    bodies = [
        client.post("/api/process", headers={"X-Org-Id": "org_9", "X-User-Id": "u_1"}).json(),
        client.post("/api/process", headers={"X-User-Id": "u_1"}).json(),
        client.post("/api/process").json(),
    ]
    assert [b["customer"] for b in bodies] == ["org_9", "u_1", None]
    assert used("org_9") == 1
    assert used("u_1") == 1

    with override_settings(
        POLAR_METERING={**polar_settings, "RESOLVER": "django_example_app.billing_entity"}
    ):
        assert Client().get("/whoami", headers={"X-User-Id": "u_7"}).json() == {"customer": "u_7"}


def test_the_route_pattern_is_tracked_and_track_requests_can_be_turned_off(
    polar_settings: dict[str, Any], clock: ManualClock
) -> None:
    from polar_metering import DEFAULT_METERS, Aggregation, Filter, Meter

    probe = Meter(
        "whoami_calls",
        "Whoami calls",
        Filter.event("api.request", endpoint="/whoami", method="GET", status_code=200),
        Aggregation.count(),
    )
    with override_settings(POLAR_METERING={**polar_settings, "METERS": [*DEFAULT_METERS, probe]}):
        Client().get("/whoami?x=1", headers=ORG)
        assert used("org_1", "whoami_calls") == 1
    with override_settings(POLAR_METERING={**polar_settings, "TRACK_REQUESTS": False}):
        Client().get("/whoami", headers=ORG)
        assert used("org_1") == 1  # only the earlier request


def test_threaded_requests_for_different_customers_never_mix() -> None:
    # Five worker threads serve forty requests, so every thread is reused: an anonymous request after
    # a customer's on the same thread would show a leaked customer if a request left its own behind.
    def call(i: int) -> tuple[Any, Any]:
        headers = {} if i % 4 == 0 else {"X-Org-Id": f"org_{i}"}
        expected = None if i % 4 == 0 else f"org_{i}"
        return expected, Client().get("/whoami", headers=headers).json()["customer"]

    def after_requests(_: int) -> str | None:
        # One task per worker thread (they all meet at the barrier): what each thread is left with.
        all_threads.wait(timeout=10)
        return metering.get_current_customer()

    all_threads = threading.Barrier(5)
    with ThreadPoolExecutor(max_workers=5) as pool:
        results = list(pool.map(call, range(40)))
        leftovers = list(pool.map(after_requests, range(5)))

    assert all(expected == seen for expected, seen in results)
    assert leftovers == [None] * 5
    assert used("org_1") == 1
    assert used("org_4") == 0  # anonymous request: nothing tracked for anyone


def test_concurrent_async_requests_never_mix() -> None:
    async def scenario() -> list[Any]:
        client = AsyncClient()
        return await asyncio.gather(
            *(client.get("/whoami-async", headers={"X-Org-Id": f"org_{i}"}) for i in range(20))
        )

    responses = asyncio.run(scenario())

    for i, response in enumerate(responses):
        assert response.json() == {"before": f"org_{i}", "after": f"org_{i}", "status": f"org_{i}"}
    assert all(used(f"org_{i}") == 1 for i in range(20))


def test_async_view_with_an_amount_is_refused_when_the_amount_no_longer_fits() -> None:
    text = " ".join(["word"] * 90)  # 900 tokens per call against 2000 credits; the check asks for 100

    async def scenario() -> list[Any]:
        client = AsyncClient()
        await client.post("/signup", headers={"X-User-Id": "u_1"})
        return [
            await client.post("/api/summarize", text, content_type="text/plain", headers={"X-User-Id": "u_1"})
            for _ in range(4)
        ]

    responses = asyncio.run(scenario())

    # 900 + 900 = 1800 used, 200 left: the third call fits 100 and uses 900; the fourth is refused.
    assert [r.status_code for r in responses] == [200, 200, 200, 429]
    assert used("u_1", "ai_tokens") == 2700
    assert responses[3].json()["meter"] == "ai_tokens"
    assert used("u_1") == 3  # the async middleware tracked the three served requests


def test_limit_exceeded_raised_inside_a_view_becomes_429() -> None:
    client = Client()
    client.post("/signup", headers=ORG)

    refused = client.get("/api/big", headers=ORG)

    assert refused.status_code == 429
    assert refused.json()["meter"] == "ai_tokens"
    assert refused.headers["RateLimit-Limit"] == "2000"
    assert used("org_1") == 0


def test_the_decorator_works_without_the_middleware() -> None:
    client = Client()
    client.post("/signup", headers=ORG)
    metering.track_usage_batch([{"customer_id": "org_1", "event_name": "api.request"}] * 5)

    with override_settings(MIDDLEWARE=[]):
        refused = Client().post("/api/process", headers=ORG)
        assert Client().get("/whoami", headers=ORG).json() == {"customer": None}

    assert refused.status_code == 429
    assert refused.json()["customer"] == "org_1"


def test_settings_init_the_default_client_once_unless_the_app_did(sqlite_url: str, tmp_path: Any) -> None:
    Client().get("/whoami", headers=ORG)
    first = metering.get_client()
    assert first.config.url == sqlite_url
    Client().get("/whoami", headers=ORG)
    assert metering.get_client() is first

    metering.shutdown()
    own = metering.init(f"sqlite:///{tmp_path / 'own.db'}")
    Client().get("/whoami", headers=ORG)
    assert metering.get_client() is own


def test_bad_settings_name_the_key(polar_settings: dict[str, Any]) -> None:
    with (
        override_settings(POLAR_METERING={**polar_settings, "RESOLVR": "x.y"}),
        pytest.raises(ConfigurationError, match="RESOLVR"),
    ):
        Client().get("/whoami")
    without_resolver = {k: v for k, v in polar_settings.items() if k != "RESOLVER"}
    with (
        override_settings(POLAR_METERING=without_resolver),
        pytest.raises(ConfigurationError, match="RESOLVER"),
    ):
        Client().get("/whoami")
    with (
        override_settings(POLAR_METERING={**polar_settings, "RESOLVER": "nowhere_module.resolve"}),
        pytest.raises(ConfigurationError, match="nowhere_module"),
    ):
        Client().get("/whoami")


def test_setup_command_runs_the_library_setup_on_the_configured_backend(sqlite_url: str) -> None:
    assert get_commands()["polar_metering_setup"] == "polar_metering.integrations.django"
    out = io.StringIO()

    call_command("polar_metering_setup", stdout=out)

    report = out.getvalue()
    assert all(slug in report for slug in ("api_requests", "storage_gb", "ai_tokens", "team_seats"))
    assert "0 created" in report  # the embedded engine keeps its meters with the catalog
    assert metering.get_client().config.url == sqlite_url  # configured from settings.POLAR_METERING


def test_import_without_django_names_the_extra() -> None:
    message = import_error_without("django", "polar_metering.integrations.django")
    assert "install polar-metering[django]" in message


# -- anonymous requests --------------------------------------------------------------------------------------
@django_integration.usage_limit("api_requests")
def dj_limited(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"ok": True})


@django_integration.usage_limit("api_requests", anonymous="deny")
def dj_limited_deny(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"ok": True})


@django_integration.usage_limit("api_requests", anonymous="allow")
async def dj_limited_allow_async(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"ok": True})


def dj_inside(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"tokens": metering.with_usage_limit("ai_tokens", lambda: 3)})


urlpatterns.extend(
    [
        path("limited", dj_limited),
        path("limited-deny", dj_limited_deny),
        path("limited-allow-async", dj_limited_allow_async),
        path("inside", dj_inside),
    ]
)
ANON_FREE = Plan("free", credits={"api_requests": 5, "ai_tokens": 100})


def org_resolver(request: Any) -> str | None:
    return request.headers.get("X-Org-Id")


@pytest.fixture
def django_policy(sqlite_url: str, clock: ManualClock) -> Any:
    def configure(policy: str | None) -> Any:
        configured: dict[str, Any] = {
            "RESOLVER": org_resolver,
            "URL": sqlite_url,
            "CLOCK": clock,
            "PLANS": [ANON_FREE],
        }
        if policy is not None:
            configured["ANONYMOUS"] = policy
        return override_settings(POLAR_METERING=configured)

    return configure


def test_django_policies(django_policy: Any) -> None:
    """ANONYMOUS: "allow" (default) lets anonymous requests past @usage_limit; "deny" answers 401."""
    with django_policy(None):  # the default: allow
        assert Client().post("/limited").status_code == 200
        assert Client().post("/limited-deny").status_code == 401
    with django_policy("deny"):
        denied = Client().post("/limited")
        assert denied.status_code == 401
        assert denied.json()["error"] == "Authentication required"
        assert Client().post("/limited", headers=ORG).status_code == 200
        assert asyncio.run(_async_post("/limited-allow-async")) == 200
    metering.flush()
    assert metering.check_limit("org_1", "api_requests").current == 1  # only org_1's request


async def _async_post(route: str) -> int:
    from django.test import AsyncClient

    return (await AsyncClient().post(route)).status_code


def test_django_a_call_needing_the_customer_answers_401_not_500(django_policy: Any) -> None:
    with django_policy("allow"):
        response = Client().post("/inside")
        assert response.status_code == 401
        assert "current customer" in response.json()["detail"]
        assert Client().post("/inside", headers=ORG).json() == {"tokens": 3}


def test_django_bad_policy_is_a_configuration_error(django_policy: Any) -> None:
    with django_policy("sometimes"), pytest.raises(metering.ConfigurationError, match="ANONYMOUS"):
        Client().post("/limited")
def test_on_polar_the_429_retry_after_counts_to_the_subscriptions_period_end(
    polar_settings: dict[str, Any], tmp_path: Any
) -> None:
    """The same app on ``polar://`` (the emulator, the plans provisioned by setup): signup subscribes
    through Polar, and the refusal's Retry-After counts to the subscription's period end."""
    from polar_metering import DEFAULT_METERS, Catalog
    from polar_metering._setup import run_setup
    from polar_metering.emulator import running_emulator

    with running_emulator() as emu:
        report = run_setup(
            Catalog(DEFAULT_METERS, (example.FREE,)), access_token=emu.token, base_url=emu.base_url
        )
        assert report.ok, str(report)
        configured = {k: v for k, v in polar_settings.items() if k != "CLOCK"}
        configured.update(
            URL=f"polar://?base_url={emu.base_url}",
            ACCESS_TOKEN=emu.token,
            OPTIONS={"outbox_path": str(tmp_path / "outbox.db"), "cache_ttl": 0, "subscription_ttl": 0},
        )
        metering.shutdown()
        with override_settings(POLAR_METERING=configured):
            client = Client()
            assert client.post("/signup", headers=ORG).status_code == 200
            responses = [client.post("/api/process", headers=ORG) for _ in range(6)]
            assert [r.status_code for r in responses] == [200] * 5 + [429]
            subscription = metering.get_subscription("org_1")
            assert subscription is not None and subscription.period_end is not None
            left = (subscription.period_end - datetime.now(UTC)).total_seconds()
            assert abs(int(responses[5].headers["Retry-After"]) - math.ceil(left)) <= 2
            metering.shutdown()
