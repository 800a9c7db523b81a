"""The emulator reproduces what a side-by-side run against Polar's server (c6c3645) found, quirks
included (issue 13, rows 1, 2, 4, 5, 6), through the unmodified polar-sdk against real processes;
``--no-polar-quirks`` turns rows 4 and 5 off."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from polar.v2026_10 import Polar
from polar.v2026_10.errors import HTTPValidationError

from polar_metering import ManualClock
from polar_metering.backends._engine.backend import LocalEngine
from polar_metering.emulator import AdminClient, EmulatorHandle, emulator_thread, running_emulator


@pytest.fixture(scope="module")
def plain() -> Iterator[EmulatorHandle]:
    """An emulator with Polar's quirks turned off."""
    with running_emulator(polar_quirks=False) as handle:
        yield handle


def _flt(event: str) -> dict[str, Any]:
    return {"conjunction": "and", "clauses": [{"property": "name", "operator": "eq", "value": event}]}


def _rows(polar: Polar, external_id: str) -> dict[str, Any]:
    return {
        r.meter.name: r for r in polar.customer_meters.list(external_customer_id=external_id, limit=100).items
    }


def test_row1_a_credit_plan_adds_credit_and_resets_nothing(
    polar: Polar, emulator: EmulatorHandle, uid: str
) -> None:
    """5 events, a free subscription whose plan credits 10, 2 events: consumed 7, credited 10,
    balance 3, as on Polar (its reset_meters resets only meters with a metered price)."""
    admin = AdminClient(emulator.base_url, emulator.token)
    admin.create_customer(external_id=uid, email=f"{uid}@example.com")
    polar.events.ingest(events=[{"name": "api.request", "external_customer_id": uid}] * 5)
    admin.create_plan(f"{uid}-free", {"api_requests": 10})
    admin.subscribe(uid, f"{uid}-free")
    polar.events.ingest(events=[{"name": "api.request", "external_customer_id": uid}] * 2)
    row = _rows(polar, uid)["API Requests"]
    assert (row.consumed_units, row.credited_units, row.balance) == (7.0, 10, 3.0)


def test_row2_a_plan_keyed_by_an_api_meter_id_grants_its_units(
    polar: Polar, emulator: EmulatorHandle, uid: str
) -> None:
    """A plan whose credits name a meter created through the API (no catalog slug) grants them."""
    meter = polar.meters.create(name=f"{uid} jobs", filter=_flt(f"{uid}.job"), aggregation={"func": "count"})
    admin = AdminClient(emulator.base_url, emulator.token)
    admin.create_customer(external_id=uid, email=f"{uid}@example.com")
    admin.create_plan(f"{uid}-jobs", {meter.id: 25})
    admin.subscribe(uid, f"{uid}-jobs")
    polar.events.ingest(events=[{"name": f"{uid}.job", "external_customer_id": uid}] * 4)
    row = _rows(polar, uid)[f"{uid} jobs"]
    assert (row.consumed_units, row.credited_units, row.balance) == (4.0, 25, 21.0)


def test_row2_a_plan_naming_no_meter_is_refused(emulator: EmulatorHandle, uid: str) -> None:
    from polar_metering._exceptions import RemoteValidationError

    admin = AdminClient(emulator.base_url, emulator.token)
    with pytest.raises(RemoteValidationError) as info:
        admin.create_plan(f"{uid}-ghost", {str(uuid.uuid4()): 5})
    assert info.value.detail[0]["loc"] == ["body", "credits"]


def _catch_all_setup(polar: Polar, handle: EmulatorHandle, uid: str) -> None:
    polar.meters.create(
        name=f"{uid} everything", filter={"conjunction": "and", "clauses": []}, aggregation={"func": "count"}
    )
    admin = AdminClient(handle.base_url, handle.token)
    admin.create_customer(external_id=uid, email=f"{uid}@example.com")
    admin.grant(uid, "api_requests", 50)
    admin.grant(uid, "ai_tokens", 100)
    polar.events.ingest(events=[{"name": f"{uid}.any", "external_customer_id": uid}] * 10)


def test_row4_a_catch_all_meter_takes_in_every_meters_credits(
    polar: Polar, emulator: EmulatorHandle, uid: str
) -> None:
    """Polar matches a meter's own filter against meter.credited events, so an empty filter counts
    the other meters' credits as its own: credited 150 (50 + 100), balance 140."""
    _catch_all_setup(polar, emulator, uid)
    rows = _rows(polar, uid)
    everything = rows[f"{uid} everything"]
    assert (everything.consumed_units, everything.credited_units, everything.balance) == (10.0, 150, 140.0)
    assert (rows["API Requests"].credited_units, rows["AI Tokens"].credited_units) == (50, 100)
    state = polar.customers.get_state_external(external_id=uid)
    by_meter = {m.meter_id: m.credited_units for m in state.active_meters}
    assert by_meter[everything.meter_id] == 150


def test_row4_without_quirks_a_catch_all_meter_has_no_credit(plain: EmulatorHandle, uid: str) -> None:
    with Polar(plain.token, base_url=plain.base_url) as polar:
        _catch_all_setup(polar, plain, uid)
        everything = _rows(polar, uid)[f"{uid} everything"]
    assert (everything.consumed_units, everything.credited_units, everything.balance) == (10.0, 0, -10.0)


def _llm_setup(polar: Polar, uid: str) -> dict[str, str]:
    meters = {}
    for func in ("max", "min", "avg", "unique"):
        aggregation: dict[str, Any] = {"func": func, "property": "_llm.total_tokens"}
        meters[func] = polar.meters.create(
            name=f"{uid} {func}", filter=_flt(f"{uid}.llm"), aggregation=aggregation
        ).id
    llm = {"vendor": "openai", "model": "gpt-4o", "input_tokens": 1, "output_tokens": 1}
    polar.events.ingest(
        events=[
            {
                "name": f"{uid}.llm",
                "external_customer_id": uid,
                "metadata": {"_llm": {**llm, "total_tokens": n}},
            }
            for n in (100, 200)
        ]
    )
    return meters


@pytest.mark.parametrize("quirks", [True, False])
def test_row5_dotted_property_in_customer_meters(
    quirks: bool, emulator: EmulatorHandle, plain: EmulatorHandle, uid: str
) -> None:
    """Polar's customer meter reads ``user_metadata["_llm.total_tokens"]`` as one key for
    max/min/avg/unique: 0 / 0 / 0 / 0. Quantities follow the dots: 200 / 100 / 150 / 2."""
    handle = emulator if quirks else plain
    with Polar(handle.token, base_url=handle.base_url) as polar:
        AdminClient(handle.base_url, handle.token).create_customer(
            external_id=uid, email=f"{uid}@example.com"
        )
        meters = _llm_setup(polar, uid)
        rows = _rows(polar, uid)
        consumed = {func: rows[f"{uid} {func}"].consumed_units for func in meters}
        now = datetime.now(UTC)
        totals = {
            func: polar.meters.quantities(
                id=meter_id, start_timestamp=now - timedelta(days=1), end_timestamp=now, interval="day"
            ).total
            for func, meter_id in meters.items()
        }
    sensible = {"max": 200.0, "min": 100.0, "avg": 150.0, "unique": 2.0}
    assert consumed == ({"max": 0.0, "min": 0.0, "avg": 0.0, "unique": 0.0} if quirks else sensible)
    assert totals == sensible


# -- row 6: the billing pass freezes a meter's filter and aggregation ---------------------------------
@pytest.fixture
def clocked(tmp_path: Path) -> Iterator[tuple[EmulatorHandle, ManualClock]]:
    clock = ManualClock(datetime(2026, 3, 2, 10, 7, tzinfo=UTC))
    engine = LocalEngine.open(f"sqlite:///{tmp_path / 'billing.db'}", clock=clock)
    try:
        with emulator_thread(engine) as handle:  # Polar's default: a pass every quarter hour
            yield handle, clock
    finally:
        engine.close()


def test_row6_a_meter_created_before_its_events_can_change_until_the_billing_pass(
    clocked: tuple[EmulatorHandle, ManualClock],
) -> None:
    handle, clock = clocked
    with Polar(handle.token, base_url=handle.base_url) as polar:
        meter = polar.meters.create(name="early", filter=_flt("job"), aggregation={"func": "count"})
        polar.events.ingest(events=[{"name": "job", "external_customer_id": "c1"}] * 3)
        changed = polar.meters.update(
            meter.id, filter=_flt("job"), aggregation={"func": "unique", "property": "n"}
        )
        assert changed.aggregation.func == "unique"
        clock.advance(minutes=8)  # 10:15: the scheduler's pass sets the last billed event
        with pytest.raises(HTTPValidationError) as exc:
            polar.meters.update(meter.id, filter=_flt("job"), aggregation={"func": "count"})
        raw = httpx.patch(
            f"{handle.base_url}/v1/meters/{meter.id}", json={"filter": _flt("job")}, headers=handle.headers
        )
        assert (raw.status_code, raw.json()["error"]) == (422, "PolarRequestValidationError")
        detail = exc.value.error.detail
        assert [(d.type, d.loc) for d in detail] == [
            ("forbidden", ["body", "filter"]),
            ("forbidden", ["body", "aggregation"]),
        ]
        assert detail[0].msg == "This field can't be updated because the meter is already aggregating events."
        assert polar.meters.update(meter.id, name="early, renamed").name == "early, renamed"


def test_row6_the_admin_billing_pass_and_creation_over_existing_events(
    emulator: EmulatorHandle, uid: str
) -> None:
    with Polar(emulator.token, base_url=emulator.base_url) as polar:
        idle = polar.meters.create(
            name=f"{uid} idle", filter=_flt(f"{uid}.none"), aggregation={"func": "count"}
        )
        busy = polar.meters.create(
            name=f"{uid} busy", filter=_flt(f"{uid}.hit"), aggregation={"func": "count"}
        )
        polar.events.ingest(events=[{"name": f"{uid}.hit", "external_customer_id": uid}])
        frozen = AdminClient(emulator.base_url, emulator.token).billing()["frozen"]
        assert busy.id in frozen and idle.id not in frozen
        with pytest.raises(HTTPValidationError):
            polar.meters.update(busy.id, filter=_flt(f"{uid}.hit"))  # even the same filter is refused
        assert polar.meters.update(idle.id, filter=_flt(f"{uid}.other")).id == idle.id
        late = polar.meters.create(
            name=f"{uid} late", filter=_flt(f"{uid}.hit"), aggregation={"func": "count"}
        )
        with pytest.raises(HTTPValidationError):  # matching events at creation freeze it at once
            polar.meters.update(late.id, aggregation={"func": "unique", "property": "x"})


def test_billing_interval_zero_runs_passes_only_on_demand(tmp_path: Path) -> None:
    clock = ManualClock(datetime(2026, 3, 2, 10, 7, tzinfo=UTC))
    engine = LocalEngine.open(f"sqlite:///{tmp_path / 'ondemand.db'}", clock=clock)
    try:
        with (
            emulator_thread(engine, billing_interval=0) as handle,
            Polar(handle.token, base_url=handle.base_url) as polar,
        ):
            meter = polar.meters.create(name="lazy", filter=_flt("job"), aggregation={"func": "count"})
            polar.events.ingest(events=[{"name": "job", "external_customer_id": "c1"}])
            clock.advance(hours=5)
            assert (
                polar.meters.update(meter.id, aggregation={"func": "unique", "property": "n"}).id == meter.id
            )
            AdminClient(handle.base_url, handle.token).billing()
            with pytest.raises(HTTPValidationError):
                polar.meters.update(meter.id, aggregation={"func": "count"})
    finally:
        engine.close()
