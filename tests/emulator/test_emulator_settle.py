"""Polar's balance debounce (``update_customer`` in server/polar/customer_meter/tasks.py) as the
emulator plays it: stale until the customer goes quiet."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from polar.v2026_10 import Polar

from polar_metering import ManualClock
from polar_metering.backends._engine.backend import LocalEngine
from polar_metering.backends._engine.records import PolarEventIn
from polar_metering.emulator import AdminClient, EmulatorHandle, emulator_thread, running_emulator
from polar_metering.emulator._settle import MAX_WAIT_SECONDS, SettledBalances


def _consumed(polar: Polar, external_id: str, meter_name: str = "API Requests") -> float | None:
    rows = polar.customer_meters.list(external_customer_id=external_id, limit=100).items
    found = [r.consumed_units for r in rows if r.meter.name == meter_name]
    return found[0] if found else None


def _poll(predicate: object, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


@pytest.fixture(scope="module")
def debounced() -> Iterator[EmulatorHandle]:
    with running_emulator(settle_delay=3.0) as handle:
        yield handle


def test_balances_lag_until_the_customer_is_quiet(debounced: EmulatorHandle, uid: str) -> None:
    admin = AdminClient(debounced.base_url, debounced.token)
    with Polar(debounced.token, base_url=debounced.base_url) as polar:
        polar.customers.create(email=f"{uid}@example.com", external_id=uid)
        assert _consumed(polar, uid) is None  # a new customer has no rows until its first recompute
        assert admin.settle()["settled"] >= 1
        assert _consumed(polar, uid) == 0.0
        polar.events.ingest(events=[{"name": "api.request", "external_customer_id": uid}])
        assert _consumed(polar, uid) == 0.0
        state = polar.customers.get_state_external(uid)
        assert [m.consumed_units for m in state.active_meters if m.consumed_units] == []
        assert _poll(lambda: _consumed(polar, uid) == 1.0)
        polar.events.ingest(events=[{"name": "api.request", "external_customer_id": uid}])
        assert _consumed(polar, uid) == 1.0
        assert admin.settle(uid)["settled"] == 1
        assert _consumed(polar, uid) == 2.0


def test_a_credit_grant_recomputes_at_once(debounced: EmulatorHandle, uid: str) -> None:
    """Granting credits recomputes the customer meter synchronously, pending usage included
    (``_create_event`` in server/polar/benefit/strategies/meter_credit/service.py, ``activate_meter``)."""
    admin = AdminClient(debounced.base_url, debounced.token)
    with Polar(debounced.token, base_url=debounced.base_url) as polar:
        admin.create_customer(external_id=uid)
        admin.settle(uid)
        polar.events.ingest(events=[{"name": "api.request", "external_customer_id": uid}])
        admin.grant(uid, "api_requests", 5)
        (row,) = [
            r
            for r in polar.customer_meters.list(external_customer_id=uid).items
            if r.meter.name == "API Requests"
        ]
        assert (row.consumed_units, row.credited_units, row.balance) == (1.0, 5, 4.0)


@pytest.fixture
def manual_emulator(tmp_path: Path) -> Iterator[tuple[EmulatorHandle, ManualClock]]:
    clock = ManualClock("2026-01-15T12:00:00+00:00")
    engine = LocalEngine.open(f"sqlite:///{tmp_path / 'e.db'}", clock=clock)
    try:
        with emulator_thread(engine, settle_delay=15.0) as handle:
            yield handle, clock
    finally:
        engine.close()


def test_events_arriving_within_the_delay_keep_postponing_the_update(
    manual_emulator: tuple[EmulatorHandle, ManualClock],
) -> None:
    """Gaps under 15 s coalesce; the update lands 15 s after the last event, on the engine clock
    (``CUSTOMER_METER_UPDATE_DEBOUNCE_MIN_THRESHOLD`` in server/polar/config.py)."""
    handle, clock = manual_emulator
    with Polar(handle.token, base_url=handle.base_url) as polar:
        polar.customers.create(email="a@example.com", external_id="a")
        clock.advance(15)
        assert _consumed(polar, "a") == 0.0
        for _ in range(3):
            polar.events.ingest(events=[{"name": "api.request", "external_customer_id": "a"}])
            clock.advance(10)
            assert _consumed(polar, "a") == 0.0
        clock.advance(5)
        assert _consumed(polar, "a") == 3.0
        customer_meter = next(
            r
            for r in polar.customer_meters.list(external_customer_id="a").items
            if r.meter.name == "API Requests"
        )
        polar.events.ingest(events=[{"name": "api.request", "external_customer_id": "a"}])
        assert polar.customer_meters.get(customer_meter.id).consumed_units == 3.0
        clock.advance(15)
        assert polar.customer_meters.get(customer_meter.id).consumed_units == 4.0


def test_zero_delay_settles_every_event_at_once(tmp_path: Path) -> None:
    engine = LocalEngine.open(
        f"sqlite:///{tmp_path / 'e.db'}", clock=ManualClock("2026-01-15T12:00:00+00:00")
    )
    try:
        with emulator_thread(engine) as handle, Polar(handle.token, base_url=handle.base_url) as polar:
            polar.customers.create(email="b@example.com", external_id="b")
            polar.events.ingest(events=[{"name": "api.request", "external_customer_id": "b"}])
            assert _consumed(polar, "b") == 1.0
            health = httpx.get(f"{handle.base_url}/__emulator__/health").json()
            assert health["settle_delay"] == 0.0
    finally:
        engine.close()


def test_steady_traffic_is_forced_through_after_the_maximum_wait(tmp_path: Path) -> None:
    """Under constant traffic Polar still recomputes once the first pending update is 180 min old."""
    assert MAX_WAIT_SECONDS == 180 * 60
    clock = ManualClock("2026-01-15T12:00:00+00:00")
    engine = LocalEngine.open(f"sqlite:///{tmp_path / 'e.db'}", clock=clock)
    try:
        customer = engine.create_customer(external_id="c")
        balances = SettledBalances(engine, 15.0, max_wait=60.0)

        def consumed() -> float:
            rows = balances.rows(customer_ids=[customer.id])
            return next(r.consumed_units for r in rows if r.meter.name == "API Requests")

        event = PolarEventIn(name="api.request", timestamp=clock.now(), metadata={}, external_customer_id="c")
        for _ in range(5):
            balances.ingest([customer.id], lambda: engine.ingest_polar([event]))
            clock.advance(10)
            assert consumed() == 0.0
        balances.ingest([customer.id], lambda: engine.ingest_polar([event]))
        clock.advance(10)
        # The last event is only 10 s old, but the first unsettled one is 60 s old: forced through.
        assert consumed() == 6.0
    finally:
        engine.close()
