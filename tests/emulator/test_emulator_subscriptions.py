"""Products, meter-credit benefits and subscriptions on the emulator, through the unmodified
``polar-sdk``, with the credit rules measured on a real Polar server (issue 14): a subscription adds
its benefits' credit and keeps usage; a second subscription to one product doubles it; a product
change takes back the old benefit and grants the new; ``cancel_at_period_end`` keeps the credit to
the period's end; revoking takes it back; a renewal grants again (rollover included)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from polar.v2026_10 import Polar
from polar.v2026_10.errors import HTTPValidationError

from polar_metering import ManualClock
from polar_metering.backends._engine.backend import LocalEngine
from polar_metering.emulator import EmulatorHandle, emulator_thread


@dataclass
class World:
    handle: EmulatorHandle
    polar: Polar
    clock: ManualClock
    meters: dict[str, str]

    def product(self, name: str, units: int, *, meter: str = "API Requests", rollover: bool = False) -> Any:
        product = self.polar.products.create(
            name=name, recurring_interval="month", prices=[{"amount_type": "fixed", "price_amount": 0}]
        )
        benefit = self.polar.benefits.create(
            type="meter_credit",
            description=f"{units} units",
            properties={"meter_id": self.meters[meter], "units": units, "rollover": rollover},
        )
        return self.polar.products.update_benefits(product.id, benefits=[benefit.id])

    def customer(self, external_id: str) -> Any:
        return self.polar.customers.create(type="team", external_id=external_id)

    def use(self, external_id: str, n: int, name: str = "api.request") -> None:
        self.polar.events.ingest(events=[{"name": name, "external_customer_id": external_id}] * n)

    def meter(self, external_id: str, meter: str = "API Requests") -> tuple[float, int, float]:
        rows = self.polar.customer_meters.list(
            external_customer_id=external_id, meter_id=self.meters[meter]
        ).items
        if not rows:
            return (0.0, 0, 0.0)
        return (rows[0].consumed_units, rows[0].credited_units, rows[0].balance)

    def raw(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.request(method, self.handle.base_url + path, headers=self.handle.headers, **kwargs)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    clock = ManualClock(datetime(2026, 3, 10, 12, tzinfo=UTC))
    engine = LocalEngine.open(f"sqlite:///{tmp_path / 'subs.db'}", clock=clock)
    try:
        with (
            emulator_thread(engine, billing_interval=0) as handle,
            Polar(handle.token, base_url=handle.base_url) as polar,
        ):
            meters = {m.name: m.id for m in polar.meters.list(limit=100).items}
            yield World(handle, polar, clock, meters)
    finally:
        engine.close()


def test_a_subscription_adds_credit_and_keeps_usage(world: World) -> None:
    """5 used, then a 100-unit free product: credited 100, balance 95 (usage not reset)."""
    product = world.product("Starter", 100)
    world.customer("c1")
    world.use("c1", 5)
    sub = world.polar.subscriptions.create(product_id=product.id, external_customer_id="c1")
    assert (sub.status, sub.amount, sub.product_id) == ("active", 0, product.id)
    assert sub.current_period_start == "2026-03-10T12:00:00Z"
    assert sub.current_period_end == "2026-04-10T12:00:00Z"
    assert world.meter("c1") == (5.0, 100, 95.0)


def test_a_second_subscription_to_the_same_product_doubles_the_credit(world: World) -> None:
    product = world.product("Starter", 100)
    world.customer("c2")
    world.polar.subscriptions.create(product_id=product.id, external_customer_id="c2")
    world.polar.subscriptions.create(product_id=product.id, external_customer_id="c2")
    assert world.meter("c2") == (0.0, 200, 200.0)
    listed = world.polar.subscriptions.list(external_customer_id="c2", status=["active"])
    assert listed.pagination.total_count == 2


def test_a_product_change_takes_back_the_old_benefit_and_grants_the_new(world: World) -> None:
    """3 used, credited 100; changed to a 1000-unit product: credited 1000, usage kept, same period."""
    small, big = world.product("Small", 100), world.product("Big", 1000)
    world.customer("c3")
    sub = world.polar.subscriptions.create(product_id=small.id, external_customer_id="c3")
    world.use("c3", 3)
    changed = world.polar.subscriptions.update(sub.id, product_id=big.id)
    assert changed.product_id == big.id
    assert (changed.current_period_start, changed.current_period_end) == (
        sub.current_period_start,
        sub.current_period_end,
    )
    assert world.meter("c3") == (3.0, 1000, 997.0)


def test_cancel_at_period_end_keeps_the_credit_until_the_period_ends(world: World) -> None:
    product = world.product("Starter", 100)
    world.customer("c4")
    sub = world.polar.subscriptions.create(product_id=product.id, external_customer_id="c4")
    world.use("c4", 10)
    canceled = world.polar.subscriptions.update(sub.id, cancel_at_period_end=True)
    assert (canceled.status, canceled.cancel_at_period_end, canceled.ends_at) == (
        "active",
        True,
        sub.current_period_end,
    )
    assert world.meter("c4") == (10.0, 100, 90.0)
    again = world.raw("PATCH", f"/v1/subscriptions/{sub.id}", json={"cancel_at_period_end": True})
    assert (again.status_code, again.json()["error"]) == (403, "AlreadyCanceledSubscription")
    world.clock.set(datetime(2026, 4, 10, 12, 0, 1, tzinfo=UTC))
    ended = world.polar.subscriptions.get(sub.id)
    assert (ended.status, ended.ended_at) == ("canceled", "2026-04-10T12:00:00Z")
    assert world.meter("c4")[1] == 0  # the benefit was revoked at the period's end


def test_uncancel_and_its_refusals(world: World) -> None:
    product = world.product("Starter", 100)
    world.customer("c5")
    sub = world.polar.subscriptions.create(product_id=product.id, external_customer_id="c5")
    not_canceled = world.raw("PATCH", f"/v1/subscriptions/{sub.id}", json={"cancel_at_period_end": False})
    assert (not_canceled.status_code, not_canceled.json()) == (
        400,
        {"error": "BadRequest", "detail": "Bad request"},
    )
    world.polar.subscriptions.update(sub.id, cancel_at_period_end=True)
    resumed = world.polar.subscriptions.update(sub.id, cancel_at_period_end=False)
    assert (resumed.cancel_at_period_end, resumed.ends_at, resumed.canceled_at) == (False, None, None)
    other = world.product("Other", 5)
    world.polar.subscriptions.update(sub.id, cancel_at_period_end=True)
    refused = world.raw("PATCH", f"/v1/subscriptions/{sub.id}", json={"product_id": other.id})
    assert refused.status_code == 403
    assert (
        refused.json()["detail"]
        == "This subscription is already canceled or will be at the end of the period."
    )


def test_revoking_takes_the_credit_back(world: World) -> None:
    """Two 100-unit subscriptions and a 1000-unit one: 1200; revoking the big one: 200."""
    small, big = world.product("Small", 100), world.product("Big", 1000)
    world.customer("c6")
    for _ in range(2):
        world.polar.subscriptions.create(product_id=small.id, external_customer_id="c6")
    big_sub = world.polar.subscriptions.create(product_id=big.id, external_customer_id="c6")
    world.use("c6", 7)
    assert world.meter("c6") == (7.0, 1200, 1193.0)
    revoked = world.polar.subscriptions.revoke(big_sub.id)
    assert (revoked.status, revoked.ended_at is not None) == ("canceled", True)
    assert world.meter("c6") == (7.0, 200, 193.0)
    twice = world.raw("DELETE", f"/v1/subscriptions/{big_sub.id}")
    assert (twice.status_code, twice.json()["error"]) == (403, "AlreadyCanceledSubscription")


def test_a_renewal_grants_again_and_rolls_over_unused_credit(world: World) -> None:
    plain = world.product("Plain", 100)
    rolling = world.product("Rolling", 50, meter="AI Tokens", rollover=True)
    world.customer("c7")
    world.polar.subscriptions.create(product_id=plain.id, external_customer_id="c7")
    world.polar.subscriptions.create(product_id=rolling.id, external_customer_id="c7")
    world.use("c7", 30)
    world.polar.events.ingest(
        events=[{"name": "ai.tokens", "external_customer_id": "c7", "metadata": {"tokens": 20}}]
    )
    world.clock.set(datetime(2026, 4, 10, 12, 0, 1, tzinfo=UTC))
    subs = world.polar.subscriptions.list(external_customer_id="c7").items
    assert {s.current_period_start for s in subs} == {"2026-04-10T12:00:00Z"}
    assert world.meter("c7") == (0.0, 100, 100.0)  # a new period: usage from zero, the units again
    assert world.meter("c7", "AI Tokens")[1] == 80  # 50 new + the 30 left over, which roll over


def test_subscription_and_product_refusals(world: World) -> None:
    paid = world.polar.products.create(
        name="Paid", recurring_interval="month", prices=[{"amount_type": "fixed", "price_amount": 900}]
    )
    world.customer("c8")
    with pytest.raises(HTTPValidationError) as exc:
        world.polar.subscriptions.create(product_id=paid.id, external_customer_id="c8")
    assert exc.value.error.detail[0].loc == ["body", "product_id"]
    assert exc.value.error.detail[0].msg.startswith("Product is not free.")
    free = world.product("Free", 1)
    nobody = world.raw(
        "POST", "/v1/subscriptions/", json={"product_id": free.id, "external_customer_id": "ghost"}
    )
    assert nobody.status_code == 422
    assert nobody.json()["detail"][0]["loc"] == ["body", "external_customer_id"]
    assert nobody.json()["detail"][0]["msg"] == "Customer does not exist."
    legacy = world.polar.products.create(
        name="Legacy", recurring_interval="month", prices=[{"amount_type": "free"}]
    )  # type: ignore[typeddict-item]
    assert (legacy.prices[0].amount_type, legacy.prices[0].price_amount) == ("fixed", 0)  # type: ignore[union-attr]
    bad_meter = world.raw(
        "POST",
        "/v1/benefits/",
        json={
            "type": "meter_credit",
            "description": "nothing",
            "properties": {"meter_id": "00000000-0000-4000-8000-000000000000", "units": 1, "rollover": False},
        },
    )
    assert bad_meter.status_code == 422
    assert bad_meter.json()["detail"][0]["loc"] == ["body", "properties", "meter_id"]
    assert bad_meter.json()["detail"][0]["msg"] == "This meter does not exist."
    zero = world.raw(
        "POST",
        "/v1/benefits/",
        json={
            "type": "meter_credit",
            "description": "zero",
            "properties": {"meter_id": world.meters["API Requests"], "units": 0, "rollover": False},
        },
    )
    assert (zero.status_code, zero.json()["detail"][0]["type"]) == (422, "greater_than")
    other = world.raw(
        "POST", "/v1/benefits/", json={"type": "custom", "description": "a note", "properties": {}}
    )
    assert (other.status_code, other.json()["detail"][0]["type"]) == (422, "emulator_unsupported")
    weekly = world.raw(
        "POST",
        "/v1/products/",
        json={"name": "Weekly", "recurring_interval": "week", "prices": [{"amount_type": "free"}]},
    )
    assert (weekly.status_code, weekly.json()["detail"][0]["loc"]) == (422, ["body", "recurring_interval"])
    missing = world.raw("GET", "/v1/subscriptions/00000000-0000-4000-8000-000000000000")
    assert (missing.status_code, missing.json()) == (
        404,
        {"error": "ResourceNotFound", "detail": "Not found"},
    )
    unknown_benefit = world.raw(
        "POST",
        f"/v1/products/{free.id}/benefits",
        json={"benefits": ["00000000-0000-4000-8000-000000000000"]},
    )
    assert unknown_benefit.json()["detail"][0]["msg"] == "Benefit does not exist."


def test_customer_state_lists_subscriptions_and_grants(world: World) -> None:
    """Polar's state carries the active subscriptions and benefit grants (the SDK's own model for
    it rejects the ``active`` status Polar sends, so this reads the JSON)."""
    product = world.product("Starter", 100)
    customer = world.customer("c9")
    sub = world.polar.subscriptions.create(product_id=product.id, external_customer_id="c9")
    state = world.raw("GET", f"/v1/customers/{customer.id}/state").json()
    assert [s["id"] for s in state["active_subscriptions"]] == [sub.id]
    assert state["active_subscriptions"][0]["status"] == "active"
    assert state["active_subscriptions"][0]["current_period_end"] == sub.current_period_end
    grants = state["granted_benefits"]
    assert [g["benefit_type"] for g in grants] == ["meter_credit"]
    assert grants[0]["properties"]["last_credited_units"] == 100
    active = world.polar.customers.list(active=True).items
    assert [c.external_id for c in active] == ["c9"]
    world.customer("c10")
    assert "c10" in {c.external_id for c in world.polar.customers.list(active=False).items}


def test_products_list_filters_and_new_benefits_reach_subscribers(world: World) -> None:
    product = world.polar.products.create(
        name="Tagged",
        recurring_interval="month",
        prices=[{"amount_type": "fixed", "price_amount": 0}],
        metadata={"polar_metering_plan": "tagged"},
    )
    world.polar.products.create(name="Untagged", recurring_interval="year", prices=[{"amount_type": "free"}])  # type: ignore[typeddict-item]
    tagged = world.polar.products.list(metadata={"polar_metering_plan": "tagged"}).items
    assert [p.id for p in tagged] == [product.id]
    assert {p.recurring_interval for p in world.polar.products.list(is_recurring=True).items} == {
        "month",
        "year",
    }
    world.customer("c11")
    world.polar.subscriptions.create(product_id=product.id, external_customer_id="c11")
    assert world.meter("c11")[1] == 0
    benefit = world.polar.benefits.create(
        type="meter_credit",
        description="25 units",
        properties={"meter_id": world.meters["API Requests"], "units": 25, "rollover": False},
    )
    world.polar.products.update_benefits(product.id, benefits=[benefit.id])
    assert world.meter("c11")[1] == 25  # Polar grants a product's new benefit to its subscribers
    world.polar.benefits.update(
        benefit.id,
        type="meter_credit",
        properties={"meter_id": world.meters["API Requests"], "units": 99, "rollover": False},
    )
    assert world.meter("c11")[1] == 25  # a changed benefit applies to later grants only
