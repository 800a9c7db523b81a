"""Error bodies equal to Polar's (issue 13, rows 7 and 8): status, ``error``, and each ``detail``
entry's ``type``, ``loc`` and ``msg``, over real HTTP against a real emulator process.

The expected bodies were produced by Polar's own request models and FastAPI/pydantic releases
pinned at c6c3645 (``server/uv.lock``: FastAPI 0.136.3, pydantic 2.13.4 / pydantic-core 2.46.4,
pydantic-extra-types 2.11.1) and match what the side-by-side run against Polar's server recorded:
the 413 text of ``server/polar/middlewares.py``, the UUID wording of that pydantic-core (whatever
pydantic is installed here), the aggregation tags as enum members, the interval and timezone types.
"""

from __future__ import annotations

import json
import socket
from typing import Any

import httpx
import pytest

from polar_metering.emulator import EmulatorHandle

PARSE_ERROR = {"detail": "There was an error parsing the body"}
MISSING = [{"type": "missing", "loc": ["body"], "msg": "Field required", "input": None}]
# (method, path, query, body, status, error, [(type, loc, msg), ...])
POLAR_ANSWERS: list[tuple[Any, ...]] = [
    (
        "GET",
        "/v1/meters/abc",
        None,
        None,
        422,
        "RequestValidationError",
        [
            (
                "uuid_parsing",
                ["path", "id"],
                "Input should be a valid UUID, invalid length: expected length 32 for simple format, found 3",
            )
        ],
    ),
    (
        "GET",
        "/v1/meters/not-a-uuid",
        None,
        None,
        422,
        "RequestValidationError",
        [("uuid_parsing", ["path", "id"], "Input should be a valid UUID, invalid character: found `n` at 1")],
    ),
    (
        "POST",
        "/v1/meters/",
        None,
        '{"name":"abc","filter":{"conjunction":"and","clauses":[]},"aggregation":{"func":"median","property":"x"}}',
        422,
        "RequestValidationError",
        [
            (
                "union_tag_invalid",
                ["body", "aggregation"],
                "Input tag 'median' found using 'func' does not match any of the expected tags: "
                "<AggregationFunction.cnt: 'count'>, <AggregationFunction.sum: 'sum'>, "
                "<AggregationFunction.max: 'max'>, <AggregationFunction.min: 'min'>, "
                "<AggregationFunction.avg: 'avg'>, "
                "<AggregationFunction.unique: 'unique'>",
            )
        ],
    ),
    (
        "GET",
        "/v1/meters/0b6c4a8e-2b7e-4d3a-9c1e-5f2a7d9e1b3c/quantities",
        {
            "end_timestamp": "2026-01-02T00:00:00Z",
            "interval": "minute",
            "start_timestamp": "2026-01-01T00:00:00Z",
        },
        None,
        422,
        "RequestValidationError",
        [("enum", ["query", "interval"], "Input should be 'year', 'month', 'week', 'day' or 'hour'")],
    ),
    (
        "GET",
        "/v1/meters/0b6c4a8e-2b7e-4d3a-9c1e-5f2a7d9e1b3c/quantities",
        {
            "end_timestamp": "2026-01-02T00:00:00Z",
            "interval": "day",
            "start_timestamp": "2026-01-01T00:00:00Z",
            "timezone": "Mars/Olympus_Mons",
        },
        None,
        422,
        "RequestValidationError",
        [("TimeZoneName", ["query", "timezone"], "Invalid timezone name.")],
    ),
    (
        "GET",
        "/v1/customer-meters/",
        {"customer_id": "abc"},
        None,
        422,
        "RequestValidationError",
        [
            (
                "uuid_type",
                ["query", "customer_id", "uuid"],
                "UUID input should be a string, bytes or UUID object",
            ),
            (
                "uuid_parsing",
                [
                    "query",
                    "customer_id",
                    "json-or-python[json=list[uuid],python=chain[is-instance[Sequence],function-wrap[sequence_validator()]]]",
                    0,
                ],
                "Input should be a valid UUID, invalid length: expected length 32 for simple format, found 3",
            ),
        ],
    ),
    (
        "PATCH",
        "/v1/meters/not-a-uuid",
        None,
        '{"name":"x"}',
        422,
        "RequestValidationError",
        [
            (
                "uuid_parsing",
                ["path", "id"],
                "Input should be a valid UUID, invalid character: found `n` at 1",
            ),
            ("string_too_short", ["body", "name"], "String should have at least 3 characters"),
        ],
    ),
    (
        "GET",
        "/v1/meters/0b6c4a8e-2b7e-4d3a-9c1e-5f2a7d9e1b3c/quantities",
        {
            "customer_aggregation_function": "median",
            "end_timestamp": "2026-01-02T00:00:00Z",
            "interval": "day",
            "start_timestamp": "2026-01-01T00:00:00Z",
        },
        None,
        422,
        "RequestValidationError",
        [
            (
                "enum",
                ["query", "customer_aggregation_function"],
                "Input should be 'count', 'sum', 'max', 'min', 'avg' or 'unique'",
            )
        ],
    ),
    (
        "POST",
        "/v1/events/ingest",
        None,
        '{"events":[{"name":"bad\\u0000name","external_customer_id":"c1"}]}',
        422,
        "RequestValidationError",
        [
            (
                "value_error",
                ["body", "events", 0, "EventCreateCustomer", "name"],
                "Value error, This value contains invalid characters",
            ),
            ("missing", ["body", "events", 0, "EventCreateCustomer", "customer_id"], "Field required"),
            (
                "value_error",
                ["body", "events", 0, "EventCreateExternalCustomer", "name"],
                "Value error, This value contains invalid characters",
            ),
        ],
    ),
    (
        "POST",
        "/v1/events/ingest",
        None,
        '{"events":[{"name":"ok","external_customer_id":"c1","metadata":{"k\\u0000":1}}]}',
        422,
        "RequestValidationError",
        [
            (
                "value_error",
                ["body", "events", 0, "EventCreateCustomer", "metadata"],
                "Value error, This value contains invalid characters",
            ),
            ("missing", ["body", "events", 0, "EventCreateCustomer", "customer_id"], "Field required"),
            (
                "value_error",
                ["body", "events", 0, "EventCreateExternalCustomer", "metadata"],
                "Value error, This value contains invalid characters",
            ),
        ],
    ),
    (
        "POST",
        "/v1/events/ingest",
        None,
        '{"events":[{"name":"ok","external_customer_id":"c1","metadata":{"k":"v\\u0000"}}]}',
        422,
        "RequestValidationError",
        [
            (
                "value_error",
                ["body", "events", 0, "EventCreateCustomer", "metadata"],
                "Value error, This value contains invalid characters",
            ),
            ("missing", ["body", "events", 0, "EventCreateCustomer", "customer_id"], "Field required"),
            (
                "value_error",
                ["body", "events", 0, "EventCreateExternalCustomer", "metadata"],
                "Value error, This value contains invalid characters",
            ),
        ],
    ),
    (
        "POST",
        "/v1/events/ingest",
        None,
        '{"events":[{"name":"ok","external_customer_id":"c\\u00001"}]}',
        422,
        "RequestValidationError",
        [
            ("missing", ["body", "events", 0, "EventCreateCustomer", "customer_id"], "Field required"),
            (
                "value_error",
                ["body", "events", 0, "EventCreateExternalCustomer", "external_customer_id"],
                "Value error, This value contains invalid characters",
            ),
        ],
    ),
    (
        "POST",
        "/v1/meters/",
        None,
        '{"name":"abc","filter":{"conjunction":"and","clauses":[]},"aggregation":{"func":"sum"}}',
        422,
        "RequestValidationError",
        [("missing", ["body", "aggregation", "sum", "property"], "Field required")],
    ),
    (
        "POST",
        "/v1/meters/",
        None,
        '{"name":"ab","filter":{"conjunction":"xor","clauses":[{"property":"a","operator":"eq","value":3000000000}]},"aggregation":{}}',
        422,
        "RequestValidationError",
        [
            ("string_too_short", ["body", "name"], "String should have at least 3 characters"),
            ("enum", ["body", "filter", "conjunction"], "Input should be 'and' or 'or'"),
            (
                "string_type",
                ["body", "filter", "clauses", 0, "FilterClause", "value", "constrained-str"],
                "Input should be a valid string",
            ),
            (
                "less_than_equal",
                ["body", "filter", "clauses", 0, "FilterClause", "value", "constrained-int"],
                "Input should be less than or equal to 2147483647",
            ),
            (
                "bool_parsing",
                ["body", "filter", "clauses", 0, "FilterClause", "value", "bool"],
                "Input should be a valid boolean, unable to interpret input",
            ),
            ("missing", ["body", "filter", "clauses", 0, "Filter", "conjunction"], "Field required"),
            ("missing", ["body", "filter", "clauses", 0, "Filter", "clauses"], "Field required"),
            (
                "union_tag_not_found",
                ["body", "aggregation"],
                "Unable to extract tag using discriminator 'func'",
            ),
        ],
    ),
    (
        "POST",
        "/v1/meters/",
        None,
        '{"name":"abc","unit":"custom","filter":{"conjunction":"and","clauses":[]},"aggregation":{"func":"count"}}',
        422,
        "RequestValidationError",
        [("value_error", ["body"], "Value error, custom_label is required when unit is 'custom'.")],
    ),
    (
        "POST",
        "/v1/meters/",
        None,
        '{"name":"abc","custom_label":"x","filter":{"conjunction":"and","clauses":[]},"aggregation":{"func":"count"}}',
        422,
        "RequestValidationError",
        [
            (
                "value_error",
                ["body"],
                "Value error, custom_label and custom_multiplier are only allowed when unit is 'custom'.",
            )
        ],
    ),
    (
        "GET",
        "/v1/meters/0b6c4a8e-2b7e-4d3a-9c1e-5f2a7d9e1b3c/quantities",
        {"end_timestamp": "2026-01-02", "start_timestamp": "2022-01-01T00:00:00Z", "timezone": ""},
        None,
        422,
        "RequestValidationError",
        [
            (
                "greater_than_equal",
                ["query", "start_timestamp"],
                "Input should be greater than or equal to 2023-01-01T00:00:00Z",
            ),
            ("timezone_aware", ["query", "end_timestamp"], "Input should have timezone info"),
            ("missing", ["query", "interval"], "Field required"),
            ("string_too_short", ["query", "timezone"], "String should have at least 1 character"),
        ],
    ),
    (
        "POST",
        "/v1/events/ingest",
        None,
        '{"events":[{"name":"e","customer_id":"nope","timestamp":"2020-01-01T00:00:00"}]}',
        422,
        "RequestValidationError",
        [
            (
                "timezone_aware",
                ["body", "events", 0, "EventCreateCustomer", "timestamp"],
                "Input should have timezone info",
            ),
            (
                "uuid_parsing",
                ["body", "events", 0, "EventCreateCustomer", "customer_id"],
                "Input should be a valid UUID, invalid character: found `n` at 1",
            ),
            (
                "timezone_aware",
                ["body", "events", 0, "EventCreateExternalCustomer", "timestamp"],
                "Input should have timezone info",
            ),
            (
                "missing",
                ["body", "events", 0, "EventCreateExternalCustomer", "external_customer_id"],
                "Field required",
            ),
        ],
    ),
    (
        "POST",
        "/v1/events/ingest",
        None,
        "[]",
        422,
        "RequestValidationError",
        [
            (
                "model_attributes_type",
                ["body"],
                "Input should be a valid dictionary or object to extract fields from",
            )
        ],
    ),
    (
        "POST",
        "/v1/events/ingest",
        None,
        '{"events": [1',
        422,
        "RequestValidationError",
        [("json_invalid", ["body", 13], "JSON decode error")],
    ),
    (
        "POST",
        "/v1/events/ingest",
        None,
        '{"events":[{"name":"e","external_customer_id":"c","metadata":{"_cost":{"amount":"x","currency":"eur"},"n":[1]}}]}',
        422,
        "RequestValidationError",
        [
            (
                "decimal_parsing",
                ["body", "events", 0, "EventCreateCustomer", "metadata", "_cost", "amount"],
                "Input should be a valid decimal",
            ),
            (
                "string_pattern_mismatch",
                ["body", "events", 0, "EventCreateCustomer", "metadata", "_cost", "currency"],
                "String should match pattern 'usd'",
            ),
            (
                "string_type",
                ["body", "events", 0, "EventCreateCustomer", "metadata", "n", "constrained-str"],
                "Input should be a valid string",
            ),
            (
                "int_type",
                ["body", "events", 0, "EventCreateCustomer", "metadata", "n", "int"],
                "Input should be a valid integer",
            ),
            (
                "float_type",
                ["body", "events", 0, "EventCreateCustomer", "metadata", "n", "float"],
                "Input should be a valid number",
            ),
            (
                "bool_type",
                ["body", "events", 0, "EventCreateCustomer", "metadata", "n", "bool"],
                "Input should be a valid boolean",
            ),
            ("missing", ["body", "events", 0, "EventCreateCustomer", "customer_id"], "Field required"),
            (
                "decimal_parsing",
                ["body", "events", 0, "EventCreateExternalCustomer", "metadata", "_cost", "amount"],
                "Input should be a valid decimal",
            ),
            (
                "string_pattern_mismatch",
                ["body", "events", 0, "EventCreateExternalCustomer", "metadata", "_cost", "currency"],
                "String should match pattern 'usd'",
            ),
            (
                "string_type",
                ["body", "events", 0, "EventCreateExternalCustomer", "metadata", "n", "constrained-str"],
                "Input should be a valid string",
            ),
            (
                "int_type",
                ["body", "events", 0, "EventCreateExternalCustomer", "metadata", "n", "int"],
                "Input should be a valid integer",
            ),
            (
                "float_type",
                ["body", "events", 0, "EventCreateExternalCustomer", "metadata", "n", "float"],
                "Input should be a valid number",
            ),
            (
                "bool_type",
                ["body", "events", 0, "EventCreateExternalCustomer", "metadata", "n", "bool"],
                "Input should be a valid boolean",
            ),
        ],
    ),
]


def _ids(case: tuple[Any, ...]) -> str:
    return f"{case[0]} {case[1].split('/v1/')[1][:40]} {case[6][0][0]}"


@pytest.mark.parametrize("case", POLAR_ANSWERS, ids=[_ids(c) for c in POLAR_ANSWERS])
def test_error_bodies_equal_polars(case: tuple[Any, ...], emulator: EmulatorHandle) -> None:
    method, path, query, body, status, error, detail = case
    headers = dict(emulator.headers)
    if body is not None:
        headers["content-type"] = "application/json"
    response = httpx.request(
        method,
        emulator.base_url + path,
        params=query,
        content=body.encode() if body is not None else None,
        headers=headers,
        timeout=30,
    )
    got = response.json()
    assert (response.status_code, got["error"]) == (status, error)
    assert [(d["type"], d["loc"], d["msg"]) for d in got["detail"]] == [tuple(d) for d in detail]


def test_an_oversized_body_gets_polars_413(emulator: EmulatorHandle) -> None:
    """``MaxBodySizeMiddleware``: the Content-Length alone decides, before the token is read; the
    connection then stays usable (the client is still sending)."""
    host, port = emulator.base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            b"POST /v1/events/ingest HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            + f"content-length: {10 * 1024 * 1024 + 1}\r\n\r\n".encode()
            + b"{" * 4096
        )
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    head, _, payload = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")
    assert json.loads(payload) == {
        "error": "RequestBodyTooLarge",
        "detail": "Request body exceeded the maximum allowed size of 10485760 bytes.",
    }


@pytest.mark.parametrize(
    ("content", "content_type", "status", "body"),
    [
        (b"\xff", "application/json", 400, PARSE_ERROR),
        (b"[" * 100_000, "application/json", 400, PARSE_ERROR),
        (b'{"events": [' + b"7" * 4400 + b"]}", "application/json", 400, PARSE_ERROR),
        (b"", "application/json", 422, None),
        (b"null", "application/json", 422, None),
    ],
)
def test_bodies_fastapi_cannot_decode(
    content: bytes, content_type: str, status: int, body: Any, emulator: EmulatorHandle
) -> None:
    """FastAPI's own answers: 400 for what the JSON decoder cannot take (bad UTF-8, integers past
    4300 digits, nesting past the recursion limit); an empty or ``null`` body is a missing one."""
    response = httpx.post(
        f"{emulator.base_url}/v1/events/ingest",
        content=content,
        headers={**emulator.headers, "content-type": content_type},
        timeout=30,
    )
    assert response.status_code == status
    if body is not None:
        assert response.json() == body
    else:
        assert response.json()["detail"] == MISSING


def test_a_body_without_a_json_content_type_is_not_read_as_json(emulator: EmulatorHandle) -> None:
    response = httpx.post(
        f"{emulator.base_url}/v1/events/ingest",
        content=b'{"events": []}',
        headers={**emulator.headers, "content-type": "text/plain"},
        timeout=30,
    )
    (item,) = response.json()["detail"]
    assert (response.status_code, item["type"], item["loc"]) == (422, "model_attributes_type", ["body"])
    assert item["input"] == '{"events": []}'


# UUID messages of the pydantic-core Polar pins (2.46), whatever pydantic is installed here.
UUID_MESSAGES = [
    ("{" + "0" * 35 + "x}", "uuid_parsing", "invalid character: found `x` at 36"),
    ("urn:uuid:" + "0" * 34 + "x", "uuid_parsing", "invalid character: found `x` at 44"),
    ("0" * 31 + "g", "uuid_parsing", "invalid character: found `g` at 32"),
    (
        "00000000-0000-0000-0000-00000000000",
        "uuid_parsing",
        "invalid group length in group 4: expected 12, found 11",
    ),
    ("00000000-0000-0000-000000000000", "uuid_parsing", "invalid group count: expected 5, found 4"),
    ("{00000000-0000}", "uuid_parsing", "invalid group count: expected 5, found 2"),
    ("ééé", "uuid_parsing", "invalid character: found `é` at 1"),
    ("00000000-0000-1000-8000-000000000000", "uuid_version", None),
]


@pytest.mark.parametrize(("value", "type_", "reason"), UUID_MESSAGES)
def test_uuid_messages_are_polars(
    value: str, type_: str, reason: str | None, emulator: EmulatorHandle
) -> None:
    from urllib.parse import quote

    response = httpx.get(f"{emulator.base_url}/v1/meters/{quote(value, safe='')}", headers=emulator.headers)
    (item,) = response.json()["detail"]
    assert (response.status_code, item["type"], item["loc"]) == (422, type_, ["path", "id"])
    if reason is None:
        assert (item["msg"], item["ctx"]) == ("UUID version 4 expected", {"expected_version": 4})
    else:
        assert (item["msg"], item["ctx"]) == (f"Input should be a valid UUID, {reason}", {"error": reason})
