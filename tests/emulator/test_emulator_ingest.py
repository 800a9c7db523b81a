"""POST /v1/events/ingest and GET /v1/events/ through polar-sdk against a real emulator process, after
Polar's server/polar/event/endpoints.py, schemas.py, service.py and repository.py."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from polar.v2026_10 import Polar
from polar.v2026_10.errors import HTTPValidationError
from polar.v2026_10.outputs import UserEvent

from polar_metering.emulator import EmulatorHandle

FUTURE = "2999-01-01T00:00:00Z"


def _detail(exc: pytest.ExceptionInfo[HTTPValidationError]) -> list[Any]:
    assert exc.value.status_code == 422
    assert exc.value.error.detail is not None
    return exc.value.error.detail


def _count(polar: Polar, external: str) -> int:
    return polar.events.list(external_customer_id=external, limit=100).pagination.total_count


def test_ingest_counts_inserted_and_duplicates_forever(polar: Polar, uid: str) -> None:
    """external_id dedups forever, in-batch repeats included; events without one never dedup
    (``insert_batch`` in server/polar/event/repository.py)."""
    who = f"{uid}-u"
    first = polar.events.ingest(
        events=[
            {"name": "api.request", "external_customer_id": who, "external_id": f"{uid}-1"},
            {"name": "api.request", "external_customer_id": who, "external_id": f"{uid}-2"},
            {"name": "api.request", "external_customer_id": who, "external_id": f"{uid}-1"},
        ]
    )
    assert (first.inserted, first.duplicates) == (2, 1)
    again = polar.events.ingest(
        events=[{"name": "other", "external_customer_id": who, "external_id": f"{uid}-1"}]
    )
    assert (again.inserted, again.duplicates) == (0, 1)
    for _ in range(2):
        plain = polar.events.ingest(events=[{"name": "api.request", "external_customer_id": who}])
        assert (plain.inserted, plain.duplicates) == (1, 0)
    assert _count(polar, who) == 4


def test_empty_batch_is_accepted(polar: Polar) -> None:
    result = polar.events.ingest(events=[])
    assert (result.inserted, result.duplicates) == (0, 0)


def test_future_timestamp_fails_both_branches_at_its_index_and_stores_nothing(polar: Polar, uid: str) -> None:
    """Three errors at index 1 (``is_past_timestamp`` in server/polar/event/schemas.py, per union
    branch), and the valid event 0 is not stored either (``ingest`` in server/polar/event/service.py)."""
    who = f"{uid}-u"
    with pytest.raises(HTTPValidationError) as exc:
        polar.events.ingest(
            events=[
                {"name": "ok", "external_customer_id": who},
                {"name": "late", "external_customer_id": who, "timestamp": FUTURE},
            ]
        )
    detail = _detail(exc)
    assert [d.loc for d in detail] == [
        ["body", "events", 1, "EventCreateCustomer", "timestamp"],
        ["body", "events", 1, "EventCreateCustomer", "customer_id"],
        ["body", "events", 1, "EventCreateExternalCustomer", "timestamp"],
    ]
    assert detail[0].msg == "Value error, Timestamp must be in the past."
    assert detail[0].type == "value_error"
    assert detail[1].type == "missing"
    assert _count(polar, who) == 0


@pytest.mark.parametrize(
    ("event", "loc_tail", "type_"),
    [
        ({"timestamp": "2026-01-01T00:00:00"}, ["timestamp"], "timezone_aware"),
        ({"name": "x" * 129}, ["name"], "string_too_long"),
        ({"metadata": {"k": ""}}, ["metadata", "k", "constrained-str"], "string_too_short"),
        ({"metadata": {"k": None}}, ["metadata", "k", "bool"], "bool_type"),
        ({"metadata": {"k": [1]}}, ["metadata", "k", "int"], "int_type"),
        ({"metadata": {"_other": {"a": 1}}}, ["metadata", "_other", "float"], "float_type"),
        (
            {"metadata": {"_cost": {"amount": 1, "currency": "USD"}}},
            ["metadata", "_cost", "currency"],
            "string_pattern_mismatch",
        ),
        (
            {"metadata": {"_cost": {"amount": "123456.5", "currency": "usd"}}},
            ["metadata", "_cost", "amount"],
            "decimal_whole_digits",
        ),
        (
            {"metadata": {"_cost": {"amount": "1.1234567890123", "currency": "usd"}}},
            ["metadata", "_cost", "amount"],
            "decimal_max_places",
        ),
        (
            {"metadata": {"_llm": {"vendor": "v", "model": "m", "input_tokens": 1, "output_tokens": 2}}},
            ["metadata", "_llm", "total_tokens"],
            "missing",
        ),
    ],
)
def test_schema_errors_are_located_per_branch(
    polar: Polar, uid: str, event: dict[str, Any], loc_tail: list[str], type_: str
) -> None:
    body = {"name": "e", "external_customer_id": f"{uid}-u", **event}
    with pytest.raises(HTTPValidationError) as exc:
        polar.events.ingest(events=[body])  # type: ignore[list-item]
    found = {(tuple(d.loc), d.type) for d in _detail(exc)}
    assert (("body", "events", 0, "EventCreateExternalCustomer", *loc_tail), type_) in found
    assert (("body", "events", 0, "EventCreateCustomer", *loc_tail), type_) in found


def test_null_metadata_value_fails_all_four_value_types(polar: Polar, uid: str) -> None:
    """null is none of str/int/float/bool (``MetadataValue`` in server/polar/kit/metadata.py), so each
    branch reports four errors for it."""
    with pytest.raises(HTTPValidationError) as exc:
        polar.events.ingest(events=[{"name": "e", "external_customer_id": uid, "metadata": {"k": None}}])
    tails = [d.loc[-1] for d in _detail(exc) if d.loc[3] == "EventCreateExternalCustomer"]
    assert tails == ["constrained-str", "int", "float", "bool"]


def test_metadata_limits_documented_but_not_enforced_for_events(polar: Polar, uid: str) -> None:
    """A 41-character key, 60 keys and any ``usd``-containing currency pass: ``EventMetadataInput`` in
    server/polar/event/schemas.py bounds neither keys nor pairs, and ``CostMetadata`` matches ``usd``
    unanchored."""
    metadata: dict[str, Any] = {f"k{i}": i for i in range(60)}
    metadata["x" * 41] = "long key"
    metadata["_cost"] = {"amount": "1.5", "currency": "xusdx"}
    result = polar.events.ingest(events=[{"name": "e", "external_customer_id": uid, "metadata": metadata}])
    assert result.inserted == 1
    (event,) = polar.events.list(external_customer_id=uid).items
    assert event.metadata["x" * 41] == "long key"


def test_integers_beyond_64_bits_are_accepted(polar: Polar, uid: str) -> None:
    """``10**30`` is a valid metadata value (``MetadataValue`` in server/polar/kit/metadata.py is an
    unbounded ``int``); it is stored exactly."""
    result = polar.events.ingest(
        events=[{"name": "e", "external_customer_id": uid, "metadata": {"n": 10**30}}]
    )
    assert result.inserted == 1
    (event,) = polar.events.list(external_customer_id=uid).items
    assert event.metadata["n"] == 10**30


def test_nul_character_is_refused(polar: Polar, uid: str) -> None:
    """Polar's Schema refuses a NUL in a whole field: one error per union branch, ``loc`` ending at
    the field, no final full stop (server/polar/kit/schemas.py at c6c3645; issue 13, row 7)."""
    with pytest.raises(HTTPValidationError) as exc:
        polar.events.ingest(events=[{"name": "bad\x00name", "external_customer_id": uid}])
    detail = _detail(exc)
    assert [(d.type, d.loc) for d in detail] == [
        ("value_error", ["body", "events", 0, "EventCreateCustomer", "name"]),
        ("missing", ["body", "events", 0, "EventCreateCustomer", "customer_id"]),
        ("value_error", ["body", "events", 0, "EventCreateExternalCustomer", "name"]),
    ]
    assert detail[0].msg == detail[2].msg == "Value error, This value contains invalid characters"


def test_organization_id_is_refused_with_an_organization_token(polar: Polar, uid: str) -> None:
    org = "1dbfc517-0bbf-4301-9ba8-555ca42b9737"
    with pytest.raises(HTTPValidationError) as exc:
        polar.events.ingest(
            events=[
                {"name": "e", "external_customer_id": uid},
                {"name": "e", "external_customer_id": uid, "organization_id": org},
            ]
        )
    (item,) = _detail(exc)
    assert item.loc == ["body", "events", 1, "organization_id"]
    assert item.type == "organization_token"
    assert item.msg == "Setting organization_id is disallowed when using an organization token."
    assert _count(polar, uid) == 0


def test_unknown_customer_id_is_refused_and_the_batch_is_atomic(polar: Polar, uid: str) -> None:
    known = polar.customers.create(email=f"{uid}@example.com", external_id=f"{uid}-c")
    ghost = "0b0e6b1e-8f7c-4a55-9a77-3f4b0c1d2e3f"
    with pytest.raises(HTTPValidationError) as exc:
        polar.events.ingest(
            events=[
                {"name": "e", "customer_id": known.id},
                {"name": "e", "customer_id": ghost},
            ]
        )
    (item,) = _detail(exc)
    assert (item.loc, item.type, item.msg, item.input) == (
        ["body", "events", 1, "customer_id"],
        "customer_id",
        "Customer not found.",
        ghost,
    )
    assert polar.events.list(customer_id=known.id).pagination.total_count == 0
    assert polar.events.ingest(events=[{"name": "e", "customer_id": known.id}]).inserted == 1
    listed = polar.events.list(customer_id=known.id)
    assert listed.pagination.total_count == 1
    assert listed.items[0].customer_id == known.id


def test_missing_events_field(polar: Polar) -> None:
    with pytest.raises(HTTPValidationError) as exc:
        polar.events.ingest()  # type: ignore[call-arg]
    (item,) = _detail(exc)
    assert (item.loc, item.type) == (["body", "events"], "missing")


def test_structured_metadata_round_trips_in_sdk_types(polar: Polar, uid: str) -> None:
    """``_llm`` drops unknown keys and null-fills prompt/response; ``_cost.amount`` comes back a string."""
    llm = {
        "vendor": "openai",
        "model": "gpt",
        "input_tokens": 3,
        "output_tokens": 4,
        "total_tokens": 7,
        "x": 1,
    }
    polar.events.ingest(
        events=[
            {
                "name": "ai.tokens",
                "external_customer_id": uid,
                "timestamp": "2026-03-01T10:00:00+02:00",
                "metadata": {
                    "tokens": 7,
                    "flag": True,
                    "ratio": 0.5,
                    "s": "5",
                    "_llm": llm,
                    "_cost": {"amount": 12.5, "currency": "usd"},
                },
            }
        ]
    )
    (event,) = polar.events.list(external_customer_id=uid).items
    assert isinstance(event, UserEvent)
    assert event.timestamp == "2026-03-01T08:00:00Z"
    assert event.metadata["tokens"] == 7
    assert event.metadata["flag"] is True
    assert event.metadata["s"] == "5"
    assert event.metadata["_cost"].amount == "12.5"
    assert event.metadata["_llm"].total_tokens == 7
    assert event.metadata["_llm"].prompt is None
    assert not hasattr(event.metadata["_llm"], "x")


def test_both_customer_ids_resolve_as_external_customer(polar: Polar, uid: str) -> None:
    """With both ids the external-customer variant wins (the customer id is then ignored), as
    pydantic resolves the ``EventCreate`` union of server/polar/event/schemas.py."""
    ghost = "0b0e6b1e-8f7c-4a55-9a77-3f4b0c1d2e3f"
    result = polar.events.ingest(
        events=[
            {"name": "e", "external_customer_id": uid, "customer_id": ghost}  # type: ignore[typeddict-unknown-key]
        ]
    )
    assert result.inserted == 1
    (event,) = polar.events.list(external_customer_id=uid).items
    assert (event.customer_id, event.external_customer_id) == (None, uid)


def test_list_filters_paging_and_sorting(polar: Polar, uid: str) -> None:
    stamps = [f"2026-02-0{d}T00:00:00Z" for d in range(1, 6)]
    polar.events.ingest(
        events=[
            {"name": "a" if i % 2 else "b", "external_customer_id": uid, "timestamp": ts}
            for i, ts in enumerate(stamps)
        ]
    )
    page = polar.events.list(external_customer_id=uid, limit=2, page=3)
    assert page.pagination.total_count == 5
    assert page.pagination.max_page == 3
    assert [e.timestamp for e in page.items] == [stamps[0]]
    newest = polar.events.list(external_customer_id=uid, limit=2)
    assert [e.timestamp for e in newest.items] == [stamps[4], stamps[3]]
    oldest = polar.events.list(external_customer_id=uid, limit=2, sorting=["timestamp"])
    assert [e.timestamp for e in oldest.items] == [stamps[0], stamps[1]]
    named = polar.events.list(external_customer_id=uid, name="a")
    assert {e.name for e in named.items} == {"a"}
    assert named.pagination.total_count == 2
    ranged = polar.events.list(external_customer_id=uid, start_timestamp=stamps[1], end_timestamp=stamps[3])
    assert sorted(e.timestamp for e in ranged.items) == stamps[1:4]
    clamped = polar.events.list(external_customer_id=uid, limit=500)
    assert clamped.pagination.max_page == 1
    assert len(clamped.items) == 5


def test_list_refuses_non_positive_paging(polar: Polar) -> None:
    with pytest.raises(HTTPValidationError) as exc:
        polar.events.list(page=0)
    (item,) = _detail(exc)
    assert (item.loc, item.type) == (["query", "page"], "greater_than")


def test_external_events_show_their_customer_once_it_exists(polar: Polar, uid: str) -> None:
    """The customer is resolved at read time (the ``Event.customer`` relationship in
    server/polar/models/event.py); customer_id stays null."""
    polar.events.ingest(events=[{"name": "e", "external_customer_id": uid}])
    (before,) = polar.events.list(external_customer_id=uid).items
    assert before.customer is None
    created = polar.customers.create(email=f"{uid}@example.com", external_id=uid)
    (after,) = polar.events.list(external_customer_id=uid).items
    assert after.customer is not None
    assert after.customer.id == created.id
    assert after.customer_id is None


def test_missing_content_length_is_411(emulator: EmulatorHandle) -> None:
    def chunks() -> Any:
        yield b'{"events": []}'

    response = httpx.post(f"{emulator.base_url}/v1/events/ingest", content=chunks(), headers=emulator.headers)
    assert response.status_code == 411
    assert response.json()["error"] == "LengthRequired"


def test_body_over_10_mib_is_413(emulator: EmulatorHandle) -> None:
    body = b'{"events": [], "pad": "' + b"x" * (10 * 1024 * 1024) + b'"}'
    response = httpx.post(
        f"{emulator.base_url}/v1/events/ingest",
        content=body,
        headers={**emulator.headers, "Content-Type": "application/json"},
        timeout=30,
    )
    assert response.status_code == 413
    assert response.json()["error"] == "RequestBodyTooLarge"


def test_malformed_json_is_422(emulator: EmulatorHandle) -> None:
    response = httpx.post(
        f"{emulator.base_url}/v1/events/ingest",
        content=b'{"events": [',
        headers={**emulator.headers, "Content-Type": "application/json"},
    )
    assert response.status_code == 422
    (item,) = response.json()["detail"]
    assert item["type"] == "json_invalid"
    assert item["loc"][0] == "body"
