"""Every function of the seed guide's API reference table takes the guide's positional form, on every
surface: module-level sync, ``Metering``, ``polar_metering.aio`` and ``AsyncMetering``.

The guide (``trackStorageUpdate(customerId, sizeGb, operation?)``, ``trackSeatActivity(customerId,
userId, action?)``, ``trackApiRequest(customerId, endpoint, options?)``, ``trackAiTokens(customerId,
tokens, options?)``) passes these positionally; a port that does the same must not raise TypeError.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import polar_metering as metering
from polar_metering import Plan, ValidationError
from polar_metering.testing import capture_events, metering_for_tests, use

Surface = Callable[[str], Callable[..., Any]]


def _surfaces() -> dict[str, Callable[[metering.Metering], Surface]]:
    def module(client: metering.Metering) -> Surface:
        return lambda name: getattr(metering, name)

    def sync(client: metering.Metering) -> Surface:
        return lambda name: getattr(client, name)

    def run(fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            result = fn(*args, **kwargs)
            assert inspect.iscoroutine(result), f"{fn} is not a coroutine function"
            return asyncio.run(result)

        return call

    def aio_module(client: metering.Metering) -> Surface:
        return lambda name: run(getattr(metering.aio, name))

    def async_client(client: metering.Metering) -> Surface:
        return lambda name: run(getattr(client.aio, name))

    return {"module": module, "Metering": sync, "aio": aio_module, "AsyncMetering": async_client}


@pytest.fixture(params=list(_surfaces()))
def surface(request: pytest.FixtureRequest) -> Iterator[tuple[metering.Metering, Surface]]:
    client, _ = metering_for_tests(plans=[Plan("free", credits={"api_requests": 10, "ai_tokens": 100})])
    # The module-level functions (sync and aio) act on the default client.
    with use(client):
        yield client, _surfaces()[request.param](client)
    client.close()


def test_tracking_functions_take_the_guides_positional_forms(
    surface: tuple[metering.Metering, Surface],
) -> None:
    client, fn = surface
    with capture_events(client) as events:
        assert fn("track_usage")("user_123", "api.request", {"endpoint": "/api/v1/generate"}).success
        assert fn("track_usage_batch")(
            [{"externalCustomerId": "user_123", "eventName": "ai.tokens", "properties": {"tokens": 500}}]
        ).success
        assert fn("track_api_request")("user_123", "/api/generate").success
        assert fn("track_api_request")(
            "user_123", "/api/generate", {"method": "POST", "statusCode": 200, "duration": 150}
        ).success
        assert fn("track_storage_update")("org_456", 2.5).success
        assert fn("track_storage_update")("org_456", 3.0, "upload").success
        assert fn("track_ai_tokens")("user_123", 1500).success
        assert fn("track_ai_tokens")("user_123", 1500, {"model": "gpt-4", "type": "total"}).success
        assert fn("track_seat_activity")("org_456", "user_789").success
        assert fn("track_seat_activity")("org_456", "user_789", "login").success
    seen = [(e.name, dict(e.metadata)) for e in events]
    assert seen == [
        ("api.request", {"endpoint": "/api/v1/generate"}),
        ("ai.tokens", {"tokens": 500}),
        ("api.request", {"endpoint": "/api/generate", "method": "GET"}),
        (
            "api.request",
            {"endpoint": "/api/generate", "method": "POST", "status_code": 200, "duration_ms": 150},
        ),
        ("storage.update", {"size_gb": 2.5}),
        ("storage.update", {"size_gb": 3.0, "operation": "upload"}),
        ("ai.tokens", {"tokens": 1500}),
        ("ai.tokens", {"tokens": 1500, "model": "gpt-4", "type": "total"}),
        ("seat.active", {"user_id": "user_789"}),
        ("seat.active", {"user_id": "user_789", "action": "login"}),
    ]


def test_keyword_forms_still_work(surface: tuple[metering.Metering, Surface]) -> None:
    client, fn = surface
    with capture_events(client) as events:
        fn("track_api_request")("u", "/x", method="post", status_code=201, duration_ms=1.5)
        fn("track_storage_update")("u", 1, operation="delete")
        fn("track_ai_tokens")("u", 7, model="m", type="input")
        fn("track_seat_activity")("u", "v", action="logout")
        fn("track_api_request")("u", "/y", {"status_code": 204}, method="PUT")  # snake_case keys too
    assert [dict(e.metadata) for e in events] == [
        {"endpoint": "/x", "method": "POST", "status_code": 201, "duration_ms": 1.5},
        {"size_gb": 1, "operation": "delete"},
        {"tokens": 7, "model": "m", "type": "input"},
        {"user_id": "v", "action": "logout"},
        {"endpoint": "/y", "method": "PUT", "status_code": 204},
    ]


def test_limit_functions_take_the_guides_positional_forms(surface: tuple[metering.Metering, Surface]) -> None:
    client, fn = surface
    client.subscribe("user_123", "free")
    assert fn("check_limit")("user_123", "api_requests").limit == 10
    with client.current_customer("user_123"):
        assert fn("check_current_limit")("api_requests").remaining == 10
        assert set(fn("get_all_usage")()) == {"api_requests", "storage_gb", "ai_tokens", "team_seats"}
        assert fn("with_usage_limit")("ai_tokens", lambda: "ran") == "ran"
        safe = fn("with_usage_limit_safe")("ai_tokens", lambda: "ran")
        assert (safe.success, safe.data) == (True, "ran")


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda c: c.track_api_request("u", "/x", {"verb": "GET"}), "options.verb"),
        (lambda c: c.track_api_request("u", "/x", {"method": "GET"}, method="POST"), "options.method"),
        (lambda c: c.track_api_request("u", "/x", ["POST"]), "options"),
        (lambda c: c.track_ai_tokens("u", 1, {"model": 5}), "model"),
        (lambda c: c.track_ai_tokens("u", 1, {"type": "all"}), "type"),
        (lambda c: c.track_storage_update("u", 1, 7), "operation"),
        (lambda c: c.track_seat_activity("u", "v", ""), "action"),
    ],
)
def test_bad_options_are_validation_errors(call: Callable[[metering.Metering], Any], field: str) -> None:
    client, _ = metering_for_tests()
    with pytest.raises(ValidationError) as info:
        call(client)
    assert info.value.field == field
