"""The Flask integration, driven through examples/flask_app.py with Flask's test client."""

from __future__ import annotations

import math
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

import polar_metering as metering
from polar_metering import (
    DEFAULT_METERS,
    Aggregation,
    ConfigurationError,
    Filter,
    ManualClock,
    Meter,
    Metering,
    Plan,
    ValidationError,
)
from polar_metering.integrations import flask as flask_integration
from polar_metering.integrations.flask import usage_limit

from .conftest import import_error_without, load_example

example = load_example("flask_app.py", "flask_example_app")
ORG = {"X-Org-Id": "org_1"}


@pytest.fixture
def app(sqlite_url: str, clock: ManualClock) -> Flask:
    built: Flask = example.create_app(sqlite_url, clock=clock)

    @built.get("/whoami")
    def whoami() -> dict[str, Any]:
        return {"customer": metering.get_current_customer()}

    return built


def used(customer: str, meter: str = "api_requests") -> float:
    metering.flush()
    return metering.check_limit(customer, meter).current


def test_allowed_requests_pass_and_are_tracked_until_the_limit_answers_429(
    app: Flask, clock: ManualClock
) -> None:
    client = app.test_client()
    assert client.post("/signup", headers=ORG).status_code == 200

    responses = [client.post("/api/process", headers=ORG) for _ in range(6)]

    assert [r.status_code for r in responses] == [200] * 5 + [429]
    assert all(r.get_json() == {"success": True, "customer": "org_1"} for r in responses[:5])
    assert used("org_1") == 5  # signup is excluded and the refusal is not metered
    status = metering.check_limit("org_1", "api_requests")
    refused = responses[5]
    assert refused.get_json() == {"error": "Usage limit exceeded", **status.to_dict()}
    assert refused.headers["RateLimit-Limit"] == "5"
    assert refused.headers["RateLimit-Remaining"] == "0"
    assert status.period_end is not None
    assert refused.headers["Retry-After"] == str(math.ceil((status.period_end - clock.now()).total_seconds()))


def test_the_customer_comes_from_the_resolver_and_anonymous_requests_are_not_metered(app: Flask) -> None:
    client = app.test_client()
    bodies = [
        client.post("/api/process", headers={"X-Org-Id": "org_9", "X-User-Id": "u_1"}).get_json(),
        client.post("/api/process", headers={"X-User-Id": "u_1"}).get_json(),
        client.post("/api/process").get_json(),
    ]
    assert [b["customer"] for b in bodies] == ["org_9", "u_1", None]
    assert used("org_9") == 1
    assert used("u_1") == 1
    assert metering.get_current_customer() is None


def test_tracked_requests_carry_the_url_rule_method_and_status(sqlite_url: str, clock: ManualClock) -> None:
    probes = [
        Meter(
            "item_reads",
            "Item reads",
            Filter.event("api.request", endpoint="/items/<int:item_id>", method="GET"),
            Aggregation.count(),
        ),
        Meter(
            "item_misses", "Item misses", Filter.event("api.request", status_code=404), Aggregation.count()
        ),
        Meter("slowest_call", "Slowest call", Filter.event("api.request"), Aggregation.max("duration_ms")),
    ]
    app: Flask = example.create_app(sqlite_url, clock=clock, meters=[*DEFAULT_METERS, *probes])

    @app.get("/items/<int:item_id>")
    def item(item_id: int) -> Any:
        return ({"id": item_id}, 200) if item_id <= 100 else ({"error": "no such item"}, 404)

    client = app.test_client()
    for item_id in (1, 2, 3, 404):
        client.get(f"/items/{item_id}", headers=ORG)

    assert used("org_1", "item_reads") == 4
    assert used("org_1", "item_misses") == 1
    assert used("org_1", "slowest_call") >= 0


def test_threaded_requests_for_different_customers_never_mix(app: Flask) -> None:
    # Five worker threads serve forty requests, so every thread is reused for several customers.
    def call(i: int) -> tuple[Any, Any]:
        headers = {} if i % 4 == 0 else {"X-Org-Id": f"org_{i}"}
        expected = None if i % 4 == 0 else f"org_{i}"
        return expected, app.test_client().get("/whoami", headers=headers).get_json()["customer"]

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
    assert used("org_4") == 0


def test_a_reservation_refused_in_a_view_becomes_429(app: Flask) -> None:
    client = app.test_client()
    client.post("/signup", headers={"X-User-Id": "u_1"})
    prompt = {"prompt": "word " * 30}  # 300 tokens per call against 2000 credits, 500 held each time

    responses = [client.post("/api/generate", json=prompt, headers={"X-User-Id": "u_1"}) for _ in range(7)]

    assert [r.status_code for r in responses] == [200] * 6 + [429]
    assert used("u_1", "ai_tokens") == 1800
    assert responses[6].get_json()["remaining"] == 200
    assert responses[6].headers["RateLimit-Limit"] == "2000"
    assert used("u_1") == 6  # the refused request is not metered
    assert metering.check_limit("u_1", "ai_tokens").reserved == 0


def test_the_decorator_on_an_async_view_with_an_amount(app: Flask) -> None:
    @app.post("/api/async-summary")
    @usage_limit("ai_tokens", amount=1500)
    async def summary() -> dict[str, Any]:
        customer = metering.get_current_customer()
        assert customer is not None
        metering.track_ai_tokens(customer, 1000)
        return {"customer": customer}

    client = app.test_client()
    client.post("/signup", headers=ORG)
    responses = [client.post("/api/async-summary", headers=ORG) for _ in range(2)]

    assert [r.status_code for r in responses] == [200, 429]  # after 1000 used, 1500 more do not fit
    assert responses[0].get_json() == {"customer": "org_1"}
    assert used("org_1", "ai_tokens") == 1000


def test_an_explicit_client_and_a_resolver_from_app_config(tmp_path: Path) -> None:
    client = Metering(f"sqlite:///{tmp_path / 'own.db'}", plans=[Plan("tiny", credits={"api_requests": 1})])
    client.subscribe("u_1", "tiny")
    app = Flask(__name__)
    app.config["POLAR_METERING_RESOLVER"] = "flask_example_app.billing_entity"
    extension = flask_integration.Metering(client=client)
    extension.init_app(app)

    @app.get("/limited")
    @usage_limit("api_requests")
    def limited() -> dict[str, bool]:
        return {"ok": True}

    statuses = [app.test_client().get("/limited", headers={"X-User-Id": "u_1"}).status_code for _ in range(2)]

    assert statuses == [200, 429]
    assert extension.flush() is True
    assert client.check_limit("u_1", "api_requests").current == 1
    with pytest.raises(ConfigurationError):
        metering.get_client()  # the default client was never needed
    client.close()


def test_misconfiguration_is_reported_with_the_setting_named(sqlite_url: str) -> None:
    with pytest.raises(ConfigurationError, match="POLAR_METERING_RESOLVER"):
        flask_integration.Metering(Flask(__name__))
    with pytest.raises(ValidationError) as resolver_error:
        flask_integration.Metering(resolver="not callable")  # type: ignore[arg-type]
    assert resolver_error.value.field == "resolver"
    with pytest.raises(ValidationError) as meter_error:
        usage_limit("")
    assert meter_error.value.field == "meter"

    metering.init(sqlite_url)
    bare = Flask(__name__)

    @bare.get("/")
    @usage_limit("api_requests")
    def index() -> str:
        return "ok"

    bare.testing = True
    with pytest.raises(ConfigurationError, match="extension"):
        bare.test_client().get("/")


def test_flush_at_exit_is_quiet_once_the_default_client_is_gone(app: Flask) -> None:
    extension = app.extensions["polar_metering"]
    metering.shutdown()
    flask_integration._flush_at_exit(weakref.ref(extension))  # must not raise


def test_import_without_flask_names_the_extra() -> None:
    message = import_error_without("flask", "polar_metering.integrations.flask")
    assert "install polar-metering[flask]" in message
