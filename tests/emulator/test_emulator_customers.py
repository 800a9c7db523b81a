"""Customers, customer meters and customer state over polar-sdk against a real emulator, after
Polar's server/polar/customer_meter/service.py and server/polar/customer/service.py."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest
from polar.v2026_10 import Polar
from polar.v2026_10.errors import HTTPValidationError, ResourceNotFound
from polar.v2026_10.outputs import CustomerIndividual, CustomerStateIndividual, CustomerTeam

from polar_metering.emulator import AdminClient, EmulatorHandle

GHOST = "0b0e6b1e-8f7c-4a55-9a77-3f4b0c1d2e3f"


def _flt(event: str) -> Any:
    return {"conjunction": "and", "clauses": [{"property": "name", "operator": "eq", "value": event}]}


def _setup(polar: Polar, uid: str) -> tuple[str, str]:
    """A sum meter on ``{uid}.use`` and a customer ``{uid}-c`` with 7 units used."""
    meter = polar.meters.create(
        name=f"{uid} use", filter=_flt(f"{uid}.use"), aggregation={"func": "sum", "property": "n"}
    )
    customer = polar.customers.create(email=f"{uid}@example.com", external_id=f"{uid}-c", name="Ada")
    polar.events.ingest(
        events=[
            {"name": f"{uid}.use", "external_customer_id": f"{uid}-c", "metadata": {"n": 3}},
            {"name": f"{uid}.use", "customer_id": customer.id, "metadata": {"n": 4}},
        ]
    )
    return meter.id, customer.id


def test_customer_create_and_get(polar: Polar, uid: str) -> None:
    created = polar.customers.create(
        email=f"{uid}@example.com", external_id=uid, name="Ada", metadata={"plan": "pro"}
    )
    assert isinstance(created, CustomerIndividual)
    assert (created.email, created.external_id, created.name, created.metadata) == (
        f"{uid}@example.com",
        uid,
        "Ada",
        {"plan": "pro"},
    )
    assert polar.customers.get(created.id) == created
    assert polar.customers.get_external(uid) == created
    assert [c.id for c in polar.customers.list(query=uid).items] == [created.id]
    assert [c.id for c in polar.customers.list(email=f"{uid}@example.com").items] == [created.id]


def test_team_customer_without_email(polar: Polar, uid: str) -> None:
    team = polar.customers.create(type="team", external_id=uid, name="Team")
    assert isinstance(team, CustomerTeam)
    assert team.email is None


def test_customer_create_refusals(polar: Polar, uid: str) -> None:
    polar.customers.create(email=f"{uid}@example.com", external_id=uid)
    cases: list[tuple[dict[str, Any], list[Any], str]] = [
        (
            {"email": f"{uid}-2@example.com", "external_id": uid},
            ["body", "external_id"],
            "A customer with this external ID already exists.",
        ),
        (
            {"email": f"{uid}@example.com"},
            ["body", "email"],
            "A customer with this email address already exists.",
        ),
        ({"email": "not-an-email"}, ["body", "individual", "email"], ""),
        ({"external_id": f"{uid}-3"}, ["body", "individual", "email"], "Field required"),
        (
            {"email": f"{uid}-4@example.com", "organization_id": GHOST},
            ["body", "organization_id"],
            "Setting organization_id is disallowed when using an organization token.",
        ),
    ]
    for body, loc, msg in cases:
        with pytest.raises(HTTPValidationError) as exc:
            polar.customers.create(**body)
        assert exc.value.error.detail is not None
        (item,) = exc.value.error.detail
        assert item.loc == loc, body
        assert msg in item.msg


def test_unknown_customers_are_not_found(polar: Polar, uid: str) -> None:
    for call in (
        lambda: polar.customers.get(GHOST),
        lambda: polar.customers.get_external(f"{uid}-none"),
        lambda: polar.customers.get_state(GHOST),
        lambda: polar.customers.get_state_external(uid),
        lambda: polar.customer_meters.get(GHOST),
    ):
        with pytest.raises(ResourceNotFound) as exc:
            call()
        assert exc.value.error.detail == "Not found"


def test_customer_meters_report_consumed_credited_and_balance(
    polar: Polar, emulator: EmulatorHandle, uid: str
) -> None:
    meter_id, customer_id = _setup(polar, uid)
    AdminClient(emulator.base_url, emulator.token).grant(f"{uid}-c", meter_id, 10)
    listed = polar.customer_meters.list(customer_id=customer_id, meter_id=meter_id)
    (row,) = listed.items
    assert (row.consumed_units, row.credited_units, row.balance) == (7.0, 10, 3.0)
    assert (row.customer_id, row.meter_id, row.customer.id, row.meter.id) == (
        customer_id,
        meter_id,
        customer_id,
        meter_id,
    )
    assert polar.customer_meters.get(row.id) == row
    by_external = polar.customer_meters.list(external_customer_id=f"{uid}-c", meter_id=meter_id)
    assert [r.id for r in by_external.items] == [row.id]


def test_balance_goes_negative(polar: Polar, uid: str) -> None:
    """Polar never blocks usage; the balance simply goes below zero (``update_customer_meter`` in
    server/polar/customer_meter/service.py: credited minus consumed, unclamped)."""
    meter_id, customer_id = _setup(polar, uid)
    (row,) = polar.customer_meters.list(customer_id=customer_id, meter_id=meter_id).items
    assert (row.consumed_units, row.credited_units, row.balance) == (7.0, 0, -7.0)


def test_customer_meter_paging_clamp_sorting_and_errors(polar: Polar, uid: str) -> None:
    meters = [
        polar.meters.create(name=f"{uid} m{i}", filter=_flt(f"{uid}.m{i}"), aggregation={"func": "count"}).id
        for i in range(3)
    ]
    customer = polar.customers.create(email=f"{uid}@example.com", external_id=uid)
    polar.events.ingest(
        events=[{"name": f"{uid}.m{i}", "external_customer_id": uid} for i in range(3) for _ in range(i + 1)]
    )
    rows = polar.customer_meters.list(customer_id=customer.id, meter_id=meters, sorting=["-consumed_units"])
    assert [r.meter_id for r in rows.items] == list(reversed(meters))
    assert [r.consumed_units for r in rows.items] == [3.0, 2.0, 1.0]
    by_name = polar.customer_meters.list(
        customer_id=customer.id, meter_id=meters, sorting=["meter_name"], limit=2, page=2
    )
    assert [r.meter_id for r in by_name.items] == [meters[2]]
    assert (by_name.pagination.total_count, by_name.pagination.max_page) == (3, 2)
    clamped = polar.customer_meters.list(customer_id=customer.id, limit=1000)
    # a limit above 100 is clamped, not refused (get_pagination_params in server/polar/kit/pagination.py)
    assert clamped.pagination.max_page == 1
    for bad in ({"page": 0}, {"limit": 0}, {"sorting": ["-colour"]}):
        with pytest.raises(HTTPValidationError) as exc:
            polar.customer_meters.list(**bad)  # type: ignore[arg-type]
        assert exc.value.error.detail is not None
        assert exc.value.error.detail[0].loc[:2] == ["query", next(iter(bad))]


def test_archived_meters_are_hidden_unless_asked_for(polar: Polar, uid: str) -> None:
    meter_id, customer_id = _setup(polar, uid)
    polar.meters.update(meter_id, is_archived=True)
    assert meter_id not in [r.meter_id for r in polar.customer_meters.list(customer_id=customer_id).items]
    assert [
        r.meter_id for r in polar.customer_meters.list(customer_id=customer_id, meter_id=meter_id).items
    ] == [meter_id]
    state = polar.customers.get_state(customer_id)
    # no archived filter on state: get_state in server/polar/customer/service.py lists every row
    assert meter_id in [m.meter_id for m in state.active_meters]


def test_customer_state_by_id_and_external_id(polar: Polar, uid: str) -> None:
    meter_id, customer_id = _setup(polar, uid)
    state = polar.customers.get_state(customer_id)
    assert isinstance(state, CustomerStateIndividual)
    assert (state.id, state.external_id, state.active_subscriptions, state.granted_benefits) == (
        customer_id,
        f"{uid}-c",
        [],
        [],
    )
    (meter,) = [m for m in state.active_meters if m.meter_id == meter_id]
    assert (meter.consumed_units, meter.credited_units, meter.balance) == (7.0, 0, -7.0)
    assert polar.customers.get_state_external(f"{uid}-c") == state


def test_external_ids_with_reserved_characters_work_when_percent_encoded(polar: Polar, uid: str) -> None:
    """polar-sdk's ``polar/base.py`` (``build_request``) does not encode path params; callers who
    encode ``/ ? #`` reach the customer."""
    odd = f"{uid}/team?x=1#frag ü"
    created = polar.customers.create(email=f"{uid}@example.com", external_id=odd)
    encoded = quote(odd, safe="")
    assert polar.customers.get_external(encoded).id == created.id
    assert polar.customers.get_state_external(encoded).id == created.id


def test_customer_meter_rows_keep_their_sdk_types(polar: Polar, uid: str) -> None:
    _setup(polar, uid)
    for row in polar.customer_meters.iter_list(external_customer_id=f"{uid}-c"):
        assert isinstance(row.consumed_units, float)
        assert isinstance(row.credited_units, int)
        assert row.customer.organization_id == row.meter.organization_id


def test_customer_list_sorts_newest_first_by_default(polar: Polar, uid: str) -> None:
    ids = [polar.customers.create(email=f"{uid}-{letter}@example.com").id for letter in "bac"]
    assert [c.id for c in polar.customers.list(query=uid).items] == list(reversed(ids))
    by_email = polar.customers.list(query=uid, sorting=["email"], limit=2)
    assert [c.email for c in by_email.items] == [f"{uid}-a@example.com", f"{uid}-b@example.com"]
    assert (by_email.pagination.total_count, by_email.pagination.max_page) == (3, 2)
    assert [c.id for c in polar.customers.list(query=uid, sorting=["email"], limit=2, page=2).items] == [
        ids[2]
    ]
