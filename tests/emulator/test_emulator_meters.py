"""Meters over polar-sdk against a real emulator process, after Polar's
server/polar/meter/endpoints.py, schemas.py and service.py."""

from __future__ import annotations

from typing import Any

import pytest
from polar.v2026_10 import Polar
from polar.v2026_10.errors import HTTPValidationError, ResourceNotFound
from polar.v2026_10.outputs import CountAggregation, FilterClause, PropertyAggregation, UniqueAggregation

GHOST = "0b0e6b1e-8f7c-4a55-9a77-3f4b0c1d2e3f"


def _flt(event: str) -> Any:
    return {"conjunction": "and", "clauses": [{"property": "name", "operator": "eq", "value": event}]}


def _detail(exc: pytest.ExceptionInfo[HTTPValidationError]) -> list[Any]:
    assert exc.value.status_code == 422
    assert exc.value.error.detail is not None
    return exc.value.error.detail


def test_create_get_and_list(polar: Polar, uid: str) -> None:
    created = polar.meters.create(
        name=f"{uid} tokens",
        filter={
            "conjunction": "or",
            "clauses": [
                {"property": "metadata.model", "operator": "like", "value": "gpt"},
                {"conjunction": "and", "clauses": [{"property": "n", "operator": "gte", "value": 2.0}]},
            ],
        },
        aggregation={"func": "sum", "property": "metadata.tokens"},
        unit="token",
        metadata={"team": "ai"},
    )
    assert created.name == f"{uid} tokens"
    assert created.unit == "token"
    assert created.archived_at is None
    assert created.metadata == {"team": "ai"}
    assert isinstance(created.aggregation, PropertyAggregation)
    # the metadata. prefix is stripped (_strip_metadata_prefix in server/polar/meter/aggregation.py)
    assert created.aggregation.property == "tokens"
    first = created.filter.clauses[0]
    assert isinstance(first, FilterClause)
    assert (first.property, first.operator, first.value) == ("model", "like", "gpt")
    nested = created.filter.clauses[1]
    assert not isinstance(nested, FilterClause)
    # 2.0 is coerced to 2 (FilterClause.value takes Int32, in server/polar/meter/filter.py)
    assert nested.clauses[0].value == 2  # type: ignore[union-attr]
    assert polar.meters.get(created.id) == created
    listed = polar.meters.list(query=uid.upper())  # case-insensitive substring on name
    assert [m.id for m in listed.items] == [created.id]
    by_meta = polar.meters.list(query=uid, metadata={"team": "ai"})
    assert by_meta.pagination.total_count == 1
    assert polar.meters.list(query=uid, metadata={"team": "ml"}).pagination.total_count == 0


def test_count_and_unique_aggregations_round_trip(polar: Polar, uid: str) -> None:
    count = polar.meters.create(name=f"{uid} c", filter=_flt(f"{uid}.c"), aggregation={"func": "count"})
    unique = polar.meters.create(
        name=f"{uid} u", filter=_flt(f"{uid}.u"), aggregation={"func": "unique", "property": "user"}
    )
    assert isinstance(count.aggregation, CountAggregation)
    assert isinstance(unique.aggregation, UniqueAggregation)
    assert unique.aggregation.property == "user"


def test_list_paging_and_sorting(polar: Polar, uid: str) -> None:
    ids = [
        polar.meters.create(name=f"{uid} m{i}", filter=_flt(f"{uid}.{i}"), aggregation={"func": "count"}).id
        for i in range(3)
    ]
    desc = polar.meters.list(query=uid, sorting=["-name"], limit=2)
    assert [m.id for m in desc.items] == [ids[2], ids[1]]
    assert (desc.pagination.total_count, desc.pagination.max_page) == (3, 2)
    assert [m.id for m in polar.meters.list(query=uid, sorting=["-name"], limit=2, page=2).items] == [ids[0]]
    assert [m.id for m in polar.meters.list(query=uid, sorting=["created_at"]).items] == ids


def test_update_and_archive(polar: Polar, uid: str) -> None:
    meter = polar.meters.create(name=f"{uid} a", filter=_flt(f"{uid}.a"), aggregation={"func": "count"})
    renamed = polar.meters.update(meter.id, name=f"{uid} renamed", metadata={"k": 1})
    assert (renamed.name, renamed.metadata) == (f"{uid} renamed", {"k": 1})
    archived = polar.meters.update(meter.id, is_archived=True)
    assert archived.archived_at is not None
    assert [m.id for m in polar.meters.list(query=uid, is_archived=True).items] == [meter.id]
    assert polar.meters.list(query=uid, is_archived=False).pagination.total_count == 0
    restored = polar.meters.update(meter.id, is_archived=False)
    assert restored.archived_at is None


def test_filter_is_locked_once_events_match_at_creation(polar: Polar, uid: str) -> None:
    """A meter created over existing matching events refuses filter/aggregation changes (``create``
    sets ``last_billed_event`` and ``update`` refuses, in server/polar/meter/service.py)."""
    polar.events.ingest(events=[{"name": f"{uid}.hit", "external_customer_id": uid}])
    meter = polar.meters.create(
        name=f"{uid} locked", filter=_flt(f"{uid}.hit"), aggregation={"func": "count"}
    )
    with pytest.raises(HTTPValidationError) as exc:
        polar.meters.update(meter.id, filter=_flt(f"{uid}.other"))
    (item,) = _detail(exc)
    assert (item.loc, item.type) == (["body", "filter"], "forbidden")
    assert item.msg == "This field can't be updated because the meter is already aggregating events."
    assert polar.meters.update(meter.id, name=f"{uid} still renamable").name == f"{uid} still renamable"


def test_unlocked_meter_can_change_its_filter(polar: Polar, uid: str) -> None:
    meter = polar.meters.create(name=f"{uid} free", filter=_flt(f"{uid}.none"), aggregation={"func": "count"})
    changed = polar.meters.update(
        meter.id, filter=_flt(f"{uid}.new"), aggregation={"func": "max", "property": "v"}
    )
    assert changed.filter.clauses[0].value == f"{uid}.new"  # type: ignore[union-attr]
    assert isinstance(changed.aggregation, PropertyAggregation)


@pytest.mark.parametrize(
    ("body", "loc", "type_"),
    [
        ({"name": "ab"}, ["body", "name"], "string_too_short"),
        ({"aggregation": {}}, ["body", "aggregation"], "union_tag_not_found"),
        ({"aggregation": {"property": "x"}}, ["body", "aggregation"], "union_tag_not_found"),
        ({"aggregation": {"func": "median"}}, ["body", "aggregation"], "union_tag_invalid"),
        ({"aggregation": {"func": "sum"}}, ["body", "aggregation", "sum", "property"], "missing"),
        ({"filter": {"conjunction": "xor", "clauses": []}}, ["body", "filter", "conjunction"], "enum"),
        (
            {
                "filter": {
                    "conjunction": "and",
                    "clauses": [{"property": "n", "operator": "eq", "value": 2**31}],
                }
            },
            ["body", "filter", "clauses", 0, "FilterClause", "value", "constrained-int"],
            "less_than_equal",
        ),
        (
            {
                "filter": {
                    "conjunction": "and",
                    "clauses": [{"property": "n", "operator": "eq", "value": 2.5}],
                }
            },
            ["body", "filter", "clauses", 0, "FilterClause", "value", "constrained-int"],
            "int_from_float",
        ),
        ({"metadata": {"x" * 41: "v"}}, ["body", "metadata", "x" * 41, "[key]"], "string_too_long"),
    ],
)
def test_create_validation_errors(
    polar: Polar, uid: str, body: dict[str, Any], loc: list[Any], type_: str
) -> None:
    full = {"name": f"{uid} bad", "filter": _flt("x"), "aggregation": {"func": "count"}, **body}
    with pytest.raises(HTTPValidationError) as exc:
        polar.meters.create(**full)
    assert (loc, type_) in [(d.loc, d.type) for d in _detail(exc)]


def test_organization_id_is_refused_on_create(polar: Polar, uid: str) -> None:
    with pytest.raises(HTTPValidationError) as exc:
        polar.meters.create(
            name=f"{uid} org",
            filter=_flt("x"),
            aggregation={"func": "count"},
            organization_id="1dbfc517-0bbf-4301-9ba8-555ca42b9737",
        )
    (item,) = _detail(exc)
    assert (item.loc, item.type) == (["body", "organization_id"], "organization_token")
    assert item.msg == "Setting organization_id is disallowed when using an organization token."
    assert polar.meters.list(query=f"{uid} org").pagination.total_count == 0


def test_unknown_meter_is_resource_not_found(polar: Polar) -> None:
    for call in (
        lambda: polar.meters.get(GHOST),
        lambda: polar.meters.update(GHOST, name="whatever"),
        lambda: polar.meters.quantities(
            GHOST,
            start_timestamp="2026-01-01T00:00:00Z",
            end_timestamp="2026-01-02T00:00:00Z",
            interval="day",
        ),
    ):
        with pytest.raises(ResourceNotFound) as exc:
            call()
        assert exc.value.status_code == 404
        assert (exc.value.error.error, exc.value.error.detail) == ("ResourceNotFound", "Not found")


def test_malformed_meter_id_is_422_at_the_path(polar: Polar) -> None:
    with pytest.raises(HTTPValidationError) as exc:
        polar.meters.get("not-a-uuid")
    (item,) = _detail(exc)
    assert item.loc == ["path", "id"]


def test_quantities_bucket_by_event_time(polar: Polar, uid: str) -> None:
    meter = polar.meters.create(
        name=f"{uid} q", filter=_flt(f"{uid}.q"), aggregation={"func": "sum", "property": "n"}
    )
    polar.events.ingest(
        events=[
            {
                "name": f"{uid}.q",
                "external_customer_id": f"{uid}-a",
                "timestamp": "2026-01-01T05:00:00Z",
                "metadata": {"n": 2},
            },
            {
                "name": f"{uid}.q",
                "external_customer_id": f"{uid}-b",
                "timestamp": "2026-01-01T23:00:00Z",
                "metadata": {"n": 3},
            },
            {
                "name": f"{uid}.q",
                "external_customer_id": f"{uid}-a",
                "timestamp": "2026-01-03T01:00:00Z",
                "metadata": {"n": 10},
            },
        ]
    )
    result = polar.meters.quantities(
        meter.id, start_timestamp="2026-01-01T00:00:00Z", end_timestamp="2026-01-03T00:00:00Z", interval="day"
    )
    assert [(q.timestamp, q.quantity) for q in result.quantities] == [
        ("2026-01-01T00:00:00Z", 5.0),
        ("2026-01-02T00:00:00Z", 0.0),
        ("2026-01-03T00:00:00Z", 10.0),
    ]
    assert result.total == 15.0
    only_a = polar.meters.quantities(
        meter.id,
        start_timestamp="2026-01-01T00:00:00Z",
        end_timestamp="2026-01-03T00:00:00Z",
        interval="day",
        external_customer_id=f"{uid}-a",
    )
    assert only_a.total == 12.0
    per_customer_max = polar.meters.quantities(
        meter.id,
        start_timestamp="2026-01-01T00:00:00Z",
        end_timestamp="2026-01-01T00:00:00Z",
        interval="day",
        customer_aggregation_function="max",
    )
    assert [q.quantity for q in per_customer_max.quantities] == [3.0]


@pytest.mark.parametrize(
    ("params", "loc", "msg"),
    [
        (
            {
                "start_timestamp": "2026-01-01T00:00:00Z",
                "end_timestamp": "2026-01-09T00:00:00Z",
                "interval": "hour",
            },
            ["query"],
            "The interval is too small for the given date range. Use a larger interval or reduce the "
            "date range.",
        ),
        (
            {
                "start_timestamp": "2026-01-05T00:00:00Z",
                "end_timestamp": "2026-01-01T00:00:00Z",
                "interval": "day",
            },
            ["query"],
            None,
        ),
        (
            {
                "start_timestamp": "2022-12-31T00:00:00Z",
                "end_timestamp": "2023-01-02T00:00:00Z",
                "interval": "day",
            },
            ["query", "start_timestamp"],
            None,
        ),
        (
            {
                "start_timestamp": "2026-01-01T00:00:00",
                "end_timestamp": "2026-01-02T00:00:00Z",
                "interval": "day",
            },
            ["query", "start_timestamp"],
            None,
        ),
        (
            {
                "start_timestamp": "2026-01-01T00:00:00Z",
                "end_timestamp": "2026-01-02T00:00:00Z",
                "interval": "fortnight",
            },
            ["query", "interval"],
            None,
        ),
        (
            {
                "start_timestamp": "2026-01-01T00:00:00Z",
                "end_timestamp": "2026-01-02T00:00:00Z",
                "interval": "day",
                "timezone": "Mars/Olympus",
            },
            ["query", "timezone"],
            None,
        ),
    ],
)
def test_quantities_validation(
    polar: Polar, uid: str, params: dict[str, Any], loc: list[str], msg: str | None
) -> None:
    meter = polar.meters.create(name=f"{uid} qv", filter=_flt(f"{uid}.qv"), aggregation={"func": "count"})
    with pytest.raises(HTTPValidationError) as exc:
        polar.meters.quantities(meter.id, **params)
    (item,) = _detail(exc)
    assert item.loc == loc
    if msg is not None:
        assert item.msg == msg
