"""Polar webhooks: payloads signed here the way Polar signs them (Standard Webhooks,
server/polar/webhook/tasks.py), verified by polar-sdk's validate_event, invalidating cached readings;
the ASGI and WSGI endpoints over real HTTP."""

from __future__ import annotations

import base64
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import httpx
import pytest
import uvicorn
from limits_helpers import CATALOG, METERS, ScriptedPolar, sign, state_changed, subscription_updated
from polar.v2026_10.webhooks import PolarWebhookError
from polar.v2026_10.webhooks import validate_event as sdk_validate_event

from polar_metering import ManualClock, ValidationError
from polar_metering._limits import Limits
from polar_metering.webhooks import SeenWebhooks, asgi_app, handle_webhook, wsgi_app

SECRET = "polar_whs_test_secret_0123456789"
API = METERS["api_requests"]


@pytest.fixture
def limits(clock: ManualClock) -> Limits:
    return Limits(CATALOG, clock, ttl=60, stale_after=300, size=100, fail_open=False)


@pytest.fixture
def polar() -> ScriptedPolar:
    return ScriptedPolar()


def _warm(limits: Limits, polar: ScriptedPolar, *customers: str) -> None:
    for customer in customers:
        limits.readings(customer, list(METERS.values()), polar.fetch)


def test_state_changed_invalidates_that_customer(limits: Limits, polar: ScriptedPolar) -> None:
    """A signed customer.state_changed makes the customer's readings stale: the next check asks Polar
    and sees the new balance; other customers keep their cached readings."""
    polar.set("u1", "api_requests", 3, 10, 1.0)
    _warm(limits, polar, "u1", "u2")
    polar.set("u1", "api_requests", 9, 10, 2.0)
    assert limits.reading("u1", API, polar.fetch).consumed == 3
    body = state_changed("u1", consumed=9)
    result = handle_webhook(body, sign(body, SECRET), SECRET, limits, seen=SeenWebhooks())
    assert (result.status, result.event_type, result.customer) == (200, "customer.state_changed", "u1")
    assert result.invalidated == len(METERS)
    calls = polar.calls
    assert limits.reading("u1", API, polar.fetch).consumed == 9
    limits.reading("u2", API, polar.fetch)
    assert polar.calls == calls + 1


def test_subscription_events_invalidate(limits: Limits, polar: ScriptedPolar) -> None:
    """Subscription changes move credits (server/polar/subscription/service.py resets meters, and
    server/polar/benefit/strategies/meter_credit/service.py grants), so they refresh the customer too."""
    _warm(limits, polar, "u1")
    body = subscription_updated("u1")
    result = handle_webhook(body, sign(body, SECRET), SECRET, limits, seen=SeenWebhooks())
    assert (result.status, result.customer, result.invalidated) == (200, "u1", len(METERS))
    assert limits.peek("u1", API) is None


@pytest.mark.parametrize(
    "tamper",
    ["wrong secret", "body changed", "too old", "no signature"],
)
def test_bad_signatures_are_rejected_and_logged_without_the_secret(
    tamper: str, limits: Limits, polar: ScriptedPolar, caplog: pytest.LogCaptureFixture
) -> None:
    """A wrong or missing signature, or a timestamp outside Polar's 5-minute tolerance, answers 403,
    refreshes nothing, and the log line names the reason but never the secret."""
    _warm(limits, polar, "u1")
    body = state_changed("u1")
    headers = sign(body, SECRET)
    if tamper == "wrong secret":
        headers = sign(body, "another-secret", webhook_id=headers["webhook-id"])
    elif tamper == "body changed":
        body = body.replace('"consumed_units": 3.0', '"consumed_units": 0.0')
    elif tamper == "too old":
        headers = sign(body, SECRET, timestamp=int(time.time()) - 301)
    else:
        del headers["webhook-signature"]
    with caplog.at_level(logging.DEBUG, logger="polar_metering"):
        result = handle_webhook(body, headers, SECRET, limits, seen=SeenWebhooks())
    assert result.status == 403
    assert not result.ok
    assert result.invalidated == 0
    assert limits.peek("u1", API) is not None
    assert "rejected a webhook" in caplog.text
    assert SECRET not in caplog.text
    assert SECRET not in result.detail


def test_whsec_secrets_use_the_decoded_key(limits: Limits) -> None:
    """New Polar secrets carry ``whsec_`` and base64; the HMAC key is then the decoded
    bytes (``_signing_keys`` in polar-sdk's ``polar/webhooks.py``)."""
    raw = b"\x01\x02binary-key-material\xff"
    secret = "whsec_" + base64.b64encode(raw).decode()
    body = state_changed("u1")
    result = handle_webhook(body, sign(body, secret, key=raw), secret, limits, seen=SeenWebhooks())
    assert result.status == 200


def test_repeats_of_a_webhook_id_are_handled_once(limits: Limits, polar: ScriptedPolar) -> None:
    """Polar retries until it gets a 2xx; a repeated webhook-id answers 200 and does nothing again."""
    seen = SeenWebhooks()
    body = state_changed("u1")
    headers = sign(body, SECRET)
    assert handle_webhook(body, headers, SECRET, limits, seen=seen).invalidated == 0  # nothing cached yet
    _warm(limits, polar, "u1")
    again = handle_webhook(body, headers, SECRET, limits, seen=seen)
    assert (again.status, again.duplicate, again.invalidated) == (200, True, 0)
    assert limits.peek("u1", API) is not None


def test_unknown_types_are_accepted_and_bad_payloads_refused(limits: Limits) -> None:
    """A validly signed type this library does not act on answers 202, known or not; signed bytes
    that are not a JSON event answer 400."""
    unknown = '{"type": "meter.exploded", "timestamp": "2026-01-01T00:00:00Z", "data": {}}'
    result = handle_webhook(unknown, sign(unknown, SECRET), SECRET, limits, seen=SeenWebhooks())
    assert (result.status, result.event_type) == (202, "meter.exploded")
    created = json.dumps({"type": "customer.created", "data": {"external_id": "u1"}})
    assert handle_webhook(created, sign(created, SECRET), SECRET, limits, seen=SeenWebhooks()).status == 202
    for garbage in ("{not json", "[1, 2]", '{"data": {}}', '{"type": 7}'):
        assert (
            handle_webhook(garbage, sign(garbage, SECRET), SECRET, limits, seen=SeenWebhooks()).status == 400
        )


def _server_shaped(event: str) -> str:
    """What Polar's server at c6c3645 sends where the SDK's v2026_10 models expect more: no
    ``api_version``, a product without ``is_deletable``, a status outside the SDK's literal."""
    payload = json.loads(event)
    del payload["api_version"]
    data = payload["data"]
    if "product" in data:
        del data["product"]["is_deletable"]
        data["status"] = "awaiting_first_payment"
    return json.dumps(payload)


@pytest.mark.parametrize("kind", ["state", "subscription", "grant-missing-fields"])
def test_server_shaped_payloads_the_sdk_cannot_parse_still_refresh(
    kind: str, limits: Limits, polar: ScriptedPolar
) -> None:
    """Schema drift: once the signature verifies, a payload the SDK's typed models refuse is read
    as JSON for its type and customer, acted on (200), and its replay is a repeat."""
    if kind == "state":
        body = _server_shaped(state_changed("u1"))
    elif kind == "subscription":
        body = _server_shaped(subscription_updated("u1"))
    else:
        body = json.dumps({"type": "benefit_grant.created", "data": {"customer": {"external_id": "u1"}}})
    headers = sign(body, SECRET)
    with pytest.raises(PolarWebhookError):  # the unmodified SDK refuses it
        sdk_validate_event(body, headers, SECRET)
    _warm(limits, polar, "u1", "u2")
    seen = SeenWebhooks()
    result = handle_webhook(body, headers, SECRET, limits, seen=seen)
    assert (result.status, result.customer, result.invalidated) == (200, "u1", len(METERS))
    assert limits.peek("u1", API) is None
    assert limits.peek("u2", API) is not None
    _warm(limits, polar, "u1")
    replay = handle_webhook(body, headers, SECRET, limits, seen=seen)
    assert (replay.status, replay.duplicate, replay.invalidated) == (200, True, 0)
    assert limits.peek("u1", API) is not None


def test_an_event_naming_only_a_polar_customer_id_refreshes_everyone(
    limits: Limits, polar: ScriptedPolar
) -> None:
    """Without the embedded customer there is no external id to pick: every cached reading goes."""
    _warm(limits, polar, "u1", "u2")
    body = json.dumps(
        {"type": "subscription.updated", "data": {"customer_id": "4b2c1c1e-0000-4000-8000-000000000000"}}
    )
    result = handle_webhook(body, sign(body, SECRET), SECRET, limits, seen=SeenWebhooks())
    assert (result.status, result.customer, result.invalidated) == (200, None, 2 * len(METERS))


def test_a_customer_without_external_id_refreshes_nothing(limits: Limits, polar: ScriptedPolar) -> None:
    _warm(limits, polar, "u1")
    body = _server_shaped(state_changed(None))
    result = handle_webhook(body, sign(body, SECRET), SECRET, limits, seen=SeenWebhooks())
    assert (result.status, result.invalidated) == (200, 0)
    assert limits.peek("u1", API) is not None


def test_an_unverified_delivery_is_not_remembered(limits: Limits) -> None:
    """Only a verified signature puts a webhook-id in the memory: a forged body (undecodable bytes
    included) carrying a real delivery's id cannot make that delivery look like a repeat."""
    seen = SeenWebhooks()
    body = state_changed("u1")
    headers = sign(body, SECRET)
    forged = dict(headers, **{"webhook-signature": sign(body, "not-the-secret")["webhook-signature"]})
    assert handle_webhook(b"\xff\xfe", forged, SECRET, limits, seen=seen).status == 400
    assert handle_webhook(body, forged, SECRET, limits, seen=seen).status == 403
    assert headers["webhook-id"] not in seen
    result = handle_webhook(body, headers, SECRET, limits, seen=seen)
    assert (result.status, result.duplicate) == (200, False)


def test_arguments_are_validated(limits: Limits) -> None:
    """Programming errors raise ValidationError naming the argument; bad requests never raise."""
    body = state_changed("u1")
    with pytest.raises(ValidationError) as info:
        handle_webhook(body, sign(body, SECRET), "", limits)
    assert info.value.field == "secret"
    with pytest.raises(ValidationError) as info:
        handle_webhook(123, {}, SECRET, limits)  # type: ignore[arg-type]
    assert info.value.field == "body"
    with pytest.raises(ValidationError) as info:
        handle_webhook(body, "webhook-id: x", SECRET, limits)  # type: ignore[arg-type]
    assert info.value.field == "headers"
    with pytest.raises(ValidationError) as info:
        handle_webhook(body, sign(body, SECRET), SECRET, object())
    assert info.value.field == "client"
    with pytest.raises(ValidationError):
        asgi_app("  ")


# -- the endpoints over real loopback HTTP --------------------------------------------------------------
def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def asgi_url(limits: Limits) -> Iterator[str]:
    port = _port()
    server = uvicorn.Server(
        uvicorn.Config(
            asgi_app(SECRET, limits), host="127.0.0.1", port=port, log_level="warning", lifespan="on"
        )
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive(), "uvicorn stopped"
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    yield f"http://127.0.0.1:{port}/"
    server.should_exit = True
    thread.join(10)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def wsgi_url(limits: Limits) -> Iterator[str]:
    server: WSGIServer = make_server("127.0.0.1", 0, wsgi_app(SECRET, limits), handler_class=_QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/"
    server.shutdown()
    server.server_close()
    thread.join(10)


@pytest.mark.parametrize("kind", ["asgi", "wsgi"])
def test_endpoints_over_http(
    kind: str, request: pytest.FixtureRequest, limits: Limits, polar: ScriptedPolar
) -> None:
    """Both endpoints: 200 and a refresh for a good delivery, 200 duplicate for its retry, 403 for a
    forged one, 202 for an unknown type, 405 for GET."""
    url = request.getfixturevalue(f"{kind}_url")
    _warm(limits, polar, "u1")
    body = state_changed("u1")
    headers = sign(body, SECRET)
    with httpx.Client(timeout=10) as http:
        good = http.post(url, content=body, headers=headers)
        assert good.status_code == 200
        assert good.json()["type"] == "customer.state_changed"
        assert limits.peek("u1", API) is None
        _warm(limits, polar, "u1")
        retry = http.post(url, content=body, headers=headers)
        assert (retry.status_code, retry.json()["duplicate"]) == (200, True)
        assert limits.peek("u1", API) is not None
        forged = http.post(url, content=body, headers=sign(body, "not-the-secret"))
        assert forged.status_code == 403
        assert SECRET not in forged.text
        unknown = '{"type": "meter.exploded", "data": {}}'
        assert http.post(url, content=unknown, headers=sign(unknown, SECRET)).status_code == 202
        wrong = http.get(url)
        assert (wrong.status_code, wrong.headers["allow"]) == (405, "POST")
