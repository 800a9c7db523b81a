"""Hostile input against every emulator route, public and admin, over real HTTP on loopback: the
emulator never answers 5xx, never drops the connection, and every 4xx body is Polar-shaped
(issue 11, item 5). Raw httpx requests, so bodies, paths and query strings can be anything: invalid
UTF-8, lone surrogates, NUL, 4400-digit integers, NaN and Infinity, nesting past any limit, dates
at the edges of 0001 and 9999, pages of 40 nines.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from polar_metering.emulator import AdminClient, EmulatorHandle, running_emulator

# (method, path template, body?) for every route the emulator serves.
ROUTES: list[tuple[str, str, bool]] = [
    ("POST", "/v1/events/ingest", True),
    ("GET", "/v1/events/", False),
    ("GET", "/v1/meters/", False),
    ("POST", "/v1/meters/", True),
    ("GET", "/v1/meters/{meter}", False),
    ("PATCH", "/v1/meters/{meter}", True),
    ("GET", "/v1/meters/{meter}/quantities", False),
    ("GET", "/v1/customer-meters/", False),
    ("GET", "/v1/customer-meters/{any}", False),
    ("GET", "/v1/customers/external/{external}", False),
    ("GET", "/v1/customers/external/{external}/state", False),
    ("GET", "/v1/customers/", False),
    ("POST", "/v1/customers/", True),
    ("GET", "/v1/customers/{customer}", False),
    ("GET", "/v1/customers/{customer}/state", False),
    ("GET", "/v1/products/", False),
    ("POST", "/v1/products/", True),
    ("GET", "/v1/products/{product}", False),
    ("PATCH", "/v1/products/{product}", True),
    ("POST", "/v1/products/{product}/benefits", True),
    ("GET", "/v1/benefits/", False),
    ("POST", "/v1/benefits/", True),
    ("GET", "/v1/benefits/{benefit}", False),
    ("PATCH", "/v1/benefits/{benefit}", True),
    ("GET", "/v1/subscriptions/", False),
    ("POST", "/v1/subscriptions/", True),
    ("GET", "/v1/subscriptions/{subscription}", False),
    ("PATCH", "/v1/subscriptions/{subscription}", True),
    ("DELETE", "/v1/subscriptions/{subscription}", False),
    ("GET", "/__emulator__/health", False),
    ("POST", "/__emulator__/customers", True),
    ("POST", "/__emulator__/credits", True),
    ("POST", "/__emulator__/plans", True),
    ("POST", "/__emulator__/subscriptions", True),
    ("POST", "/__emulator__/reset", True),
    ("POST", "/__emulator__/settle", True),
    ("POST", "/__emulator__/billing", True),
    ("GET", "/__emulator__/webhooks", False),
]

# Field and parameter names the routes read, so hostile values reach the code behind them.
FIELDS = [
    "events", "name", "external_customer_id", "customer_id", "timestamp", "metadata", "external_id",
    "organization_id", "member_id", "filter", "aggregation", "conjunction", "clauses", "property",
    "operator", "value", "func", "unit", "custom_label", "custom_multiplier", "is_archived", "email",
    "type", "meter_id", "units", "rollover", "credits", "plan", "started_at", "interval", "_llm",
    "_cost", "amount", "currency", "total_tokens", "prices", "amount_type", "price_amount",
    "recurring_interval", "benefits", "properties", "description", "product_id",
    "cancel_at_period_end", "revoke", "visibility", "minimum_amount",
]  # fmt: skip
PARAMS = [
    "page", "limit", "sorting", "start_timestamp", "end_timestamp", "interval", "timezone",
    "customer_id", "external_customer_id", "meter_id", "organization_id", "name", "source",
    "customer_aggregation_function", "is_archived", "query", "email", "metadata[k]", "filter",
    "product_id", "status", "active", "benefit_id", "is_recurring", "cancel_at_period_end", "type",
    "id", "exclude_id", "visibility",
]  # fmt: skip

NASTY_TEXT = [
    "", " ", "\x00", "a\x00b", "\ud800", "\udcff", "x\ud83d", "é", "\U0001f600", "%", "%ff", "../..",
    "9" * 40, "-" + "9" * 40, "0", "-1", "1.5", "1e400", "NaN", "Infinity", "true", "null",
    "0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00", "9999-12-31T23:59:59Z",
    "2023-01-01T00:00:00Z", "2026-01-01", "2026-13-45T99:99:99Z", "year", "hour", "minute",
    "UTC", "utc", "Pacific/Kiritimati", "Etc/GMT-14", "count", "max", "unique", "-name", "name",
    "system", "user", "00000000-0000-4000-8000-000000000000", "{" + "0" * 36 + "}", "x" * 5000,
]  # fmt: skip
# JSON texts no Python value serialises to: literals past the decoder's limits.
RAW_JSON_ATOMS = [
    "7" * 4400,
    "-" + "9" * 4301,
    "NaN",
    "Infinity",
    "-Infinity",
    "1e999",
    '"\\ud800"',
    '"\\u0000"',
]


def _text() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(NASTY_TEXT), st.text(max_size=30))


def _atoms() -> st.SearchStrategy[str]:
    """JSON text of one scalar, including the ones only hand-written JSON can carry."""
    return st.one_of(
        st.sampled_from(RAW_JSON_ATOMS),
        st.integers(min_value=-(2**70), max_value=2**70).map(str),
        st.floats(allow_nan=False, allow_infinity=False).map(repr),
        st.booleans().map(lambda b: "true" if b else "false"),
        st.just("null"),
        _text().map(lambda t: json.dumps(t)),
    )


def _json_text() -> st.SearchStrategy[str]:
    return st.recursive(
        _atoms(),
        lambda inner: st.one_of(
            st.lists(inner, max_size=4).map(lambda xs: "[" + ",".join(xs) + "]"),
            st.dictionaries(
                st.one_of(st.sampled_from(FIELDS), _text()).map(json.dumps), inner, max_size=5
            ).map(lambda d: "{" + ",".join(f"{k}:{v}" for k, v in d.items()) + "}"),
        ),
        max_leaves=12,
    )


def _bodies() -> st.SearchStrategy[bytes]:
    return st.one_of(
        _json_text().map(lambda t: t.encode("utf-8", "surrogatepass")),
        st.binary(max_size=60),
        st.integers(min_value=1, max_value=3).map(lambda k: b"[" * (50_000 * k)),
        st.integers(min_value=2, max_value=200).map(lambda n: b'{"filter":' * n + b"{}" + b"}" * n),
        st.just(b""),
    )


def _encoded(value: str) -> str:
    return quote(value.encode("utf-8", "surrogatepass"), safe="")


@st.composite
def _requests(draw: st.DrawFn, route: tuple[str, str, bool], known: dict[str, str]) -> dict[str, Any]:
    method, template, has_body = route
    segment = draw(
        st.one_of(
            st.sampled_from(list(known.values())),
            st.uuids().map(str),
            _text().map(_encoded),
            st.binary(min_size=1, max_size=8).map(lambda b: quote(b, safe="")),
        )
    )
    path = template
    for slot in ("{meter}", "{customer}", "{any}", "{external}", "{product}", "{benefit}", "{subscription}"):
        path = path.replace(slot, segment if draw(st.booleans()) else known.get(slot.strip("{}"), segment))
    params = draw(st.lists(st.tuples(st.sampled_from(PARAMS) | _text(), _text()), max_size=6))
    query = "&".join(f"{_encoded(k)}={_encoded(v)}" for k, v in params)
    content_type = draw(st.sampled_from(["application/json", "application/json", None, "text/plain"]))
    return {
        "method": method,
        "url": path + (f"?{query}" if query else ""),
        "content": draw(_bodies()) if has_body else None,
        "content_type": content_type,
    }


def _assert_polar_shaped(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text[:500]
    if response.status_code < 400:
        response.json()
        return
    body = response.json()
    assert isinstance(body, dict) and "detail" in body, body
    if response.status_code == 422:
        assert body["error"] in ("RequestValidationError", "PolarRequestValidationError")
        assert isinstance(body["detail"], list) and body["detail"]
        for item in body["detail"]:
            assert isinstance(item["type"], str) and isinstance(item["msg"], str)
            assert isinstance(item["loc"], list) and item["loc"][0] in ("body", "query", "path")
    else:
        assert isinstance(body["detail"], str)
        assert isinstance(body.get("error", ""), str)


@pytest.fixture(scope="module")
def fuzzed() -> Iterator[tuple[EmulatorHandle, dict[str, str]]]:
    with running_emulator(settle_delay=0.5) as emu:
        admin = AdminClient(emu.base_url, emu.token)
        customer = admin.create_customer(external_id="fuzz-customer", email="fuzz@example.com")
        meter = httpx.get(f"{emu.base_url}/v1/meters/", headers=emu.headers).json()["items"][0]["id"]
        known = _commerce(emu, meter, customer["id"])
        ids = {"meter": meter, "customer": customer["id"], "external": "fuzz-customer", "any": meter}
        yield emu, {**ids, **known}


def _commerce(emu: EmulatorHandle, meter: str, customer: str) -> dict[str, str]:
    """A free product with a meter-credit benefit and a subscription to it, for the routes that
    take their ids."""
    with httpx.Client(base_url=emu.base_url, headers=emu.headers) as http:
        product = http.post(
            "/v1/products/",
            json={"name": "Fuzz plan", "recurring_interval": "month", "prices": [{"amount_type": "free"}]},
        ).json()
        benefit = http.post(
            "/v1/benefits/",
            json={
                "type": "meter_credit",
                "description": "10 units",
                "properties": {"meter_id": meter, "units": 10, "rollover": False},
            },
        ).json()
        attach = {"benefits": [benefit["id"]]}
        http.post(f"/v1/products/{product['id']}/benefits", json=attach).raise_for_status()
        created = {"product_id": product["id"], "customer_id": customer}
        sub = http.post("/v1/subscriptions/", json=created).json()
    return {"product": product["id"], "benefit": benefit["id"], "subscription": sub["id"]}


@pytest.fixture(scope="module")
def http(fuzzed: tuple[EmulatorHandle, dict[str, str]]) -> Iterator[httpx.Client]:
    emu, _ = fuzzed
    with httpx.Client(base_url=emu.base_url, headers=emu.headers, timeout=30) as client:
        yield client


def _send(http: httpx.Client, request: dict[str, Any]) -> httpx.Response:
    headers = {"content-type": request["content_type"]} if request["content_type"] else {}
    try:
        return http.request(request["method"], request["url"], content=request["content"], headers=headers)
    except httpx.TransportError as exc:  # a dropped or reset connection
        pytest.fail(f"connection lost on {request['method']} {request['url'][:200]}: {exc!r}")


@pytest.mark.parametrize("route", ROUTES, ids=[f"{m} {p}" for m, p, _ in ROUTES])
def test_route_never_fails_and_answers_like_polar(
    route: tuple[str, str, bool], fuzzed: tuple[EmulatorHandle, dict[str, str]], http: httpx.Client
) -> None:
    _, known = fuzzed

    @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    @given(request=_requests(route, known))
    def run(request: dict[str, Any]) -> None:
        _assert_polar_shaped(_send(http, request))

    run()


# The cases measured in issue 11, each once, exactly.
_BIG = "1" * 4400


def _meter(name: str, clause: str = "") -> str:
    flt = '{"conjunction":"and","clauses":[' + clause + "]}"
    return '{"name":"' + name + '","filter":' + flt + ',"aggregation":{"func":"count"}}'


def _clause(value: str) -> str:
    return '{"property":"a","operator":"eq","value":' + value + "}"


def _q(interval: str, start: str, end: str) -> str:
    return f"/v1/meters/{{meter}}/quantities?interval={interval}&start_timestamp={start}&end_timestamp={end}"


MEASURED = [
    (
        "POST",
        "/v1/events/ingest",
        '{"events":[{"name":"x","external_customer_id":"c","metadata":{"n":' + _BIG + "}}]}",
    ),
    (
        "POST",
        "/v1/meters/",
        _meter("abc", _clause(_BIG)),
    ),
    ("POST", "/v1/events/ingest", "[" * 100_000),
    ("POST", "/v1/events/ingest", '{"events":[{"name":"\\ud800","external_customer_id":"c"}]}'),
    ("POST", "/v1/events/ingest", '{"events":[{"name":"a","external_customer_id":"\\ud800"}]}'),
    ("POST", "/v1/customers/", '{"email":"a@b.co","external_id":"\\ud800"}'),
    ("POST", "/v1/meters/", _meter("ab\\ud800")),
    ("POST", "/v1/events/ingest", b'{"events":[{"name":"\xff","external_customer_id":"c"}]}'),
    ("POST", "/v1/meters/", _meter("abc", _clause("NaN"))),
    ("GET", "/v1/customers/external/%ff", None),
    ("GET", "/v1/customers/external/%ff/state", None),
    ("GET", "/v1/events/?page=" + "9" * 40, None),
    ("GET", "/v1/meters/?page=" + "9" * 40, None),
    ("GET", "/v1/customers/?page=" + "9" * 40, None),
    ("GET", "/v1/events/?start_timestamp=" + quote("0001-01-01T00:00:00+05:00"), None),
    ("POST", "/__emulator__/plans", '{"name":"p","credits":{"api_requests":Infinity}}'),
    (
        "POST",
        "/__emulator__/credits",
        '{"external_customer_id":"c","meter_id":"api_requests","units":Infinity}',
    ),
    ("GET", _q("year", "9990-01-01T00:00:00Z", "9999-12-31T23:59:59Z"), None),
    (
        "GET",
        _q("day", "9999-12-30T00:00:00Z", "9999-12-31T23:00:00Z") + "&timezone=Pacific/Kiritimati",
        None,
    ),
    ("GET", _q("year", "2023-01-01T00:00:00Z", quote("9999-12-31T23:59:59-05:00")), None),
    (
        "POST",
        "/__emulator__/subscriptions",
        '{"external_customer_id":"c","plan":"x","started_at":"0001-01-01T00:00:00+05:00"}',
    ),
]


@pytest.mark.parametrize(("method", "path", "content"), MEASURED)
def test_the_measured_failures_are_polar_shaped_4xx(
    method: str,
    path: str,
    content: str | bytes | None,
    fuzzed: tuple[EmulatorHandle, dict[str, str]],
    http: httpx.Client,
) -> None:
    _, known = fuzzed
    raw = content.encode("utf-8", "surrogatepass") if isinstance(content, str) else content
    request = {
        "method": method,
        "url": path.replace("{meter}", known["meter"]),
        "content": raw,
        "content_type": "application/json",
    }
    response = _send(http, request)
    assert 400 <= response.status_code < 500
    _assert_polar_shaped(response)


def test_every_route_is_fuzzed() -> None:
    """The table above is every route the app serves."""
    from polar_metering.backends._engine.backend import LocalEngine
    from polar_metering.emulator import create_app

    engine = LocalEngine.open("sqlite:///:memory:")
    try:
        app = create_app(engine, token="t")
        served = {(m, r.path) for r in app.routes for m in (getattr(r, "methods", None) or ()) if m != "HEAD"}
    finally:
        engine.close()
    table = {
        (
            m,
            p.replace("{meter}", "{id}")
            .replace("{customer}", "{id}")
            .replace("{any}", "{id}")
            .replace("{product}", "{id}")
            .replace("{benefit}", "{id}")
            .replace("{subscription}", "{id}"),
        )
        for m, p, _ in ROUTES
    }
    table = {
        (
            m,
            p.replace("/external/{external}/state", "/external/{rest:path}").replace(
                "/external/{external}", "/external/{rest:path}"
            ),
        )
        for m, p in table
    }
    assert served == table
