"""Plans as code on Polar: ``setup`` provisions each catalog plan as a free recurring product with one
meter-credit benefit per meter, once, and reports drift; ``subscribe`` on ``polar://`` then gives the
plan's credits. Against a real emulator that starts with no meters, through the unmodified SDK."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from polar.v2026_10 import Polar
from typer.testing import CliRunner

from polar_metering import (
    DEFAULT_METERS,
    Catalog,
    CheckoutRequired,
    ConfigurationError,
    Metering,
    NotFound,
    Plan,
    ValidationError,
)
from polar_metering._cli_setup import setup as setup_command
from polar_metering._setup import run_setup
from polar_metering._setup_plans import PLAN_KEY
from polar_metering.emulator import EmulatorHandle, running_emulator

FREE = Plan("free", credits={"api_requests": 100, "ai_tokens": 5000})
PRO = Plan("pro", credits={"api_requests": 10_000, "ai_tokens": 250_000, "team_seats": 25}, rollover=True)
CATALOG = Catalog(DEFAULT_METERS, (FREE, PRO), default_plan="free")


@pytest.fixture(scope="module")
def empty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorHandle]:
    toml = tmp_path_factory.mktemp("catalog") / "empty.toml"
    toml.write_text("defaults = false\n", encoding="utf-8")
    with running_emulator(catalog=str(toml)) as handle:
        yield handle


@pytest.fixture
def sdk(empty: EmulatorHandle) -> Iterator[Polar]:
    with Polar(empty.token, base_url=empty.base_url) as polar:
        yield polar


@pytest.fixture
def client(empty: EmulatorHandle, tmp_path: Path) -> Iterator[Callable[..., Metering]]:
    made: list[Metering] = []

    def make(catalog: Catalog = CATALOG, **options: Any) -> Metering:
        options.setdefault("access_token", empty.token)
        options.setdefault("outbox_path", str(tmp_path / f"outbox-{len(made)}.db"))
        options.setdefault("cache_ttl", 0)
        options.setdefault("subscription_ttl", 0)
        options.setdefault("fail_open", False)
        c = Metering(f"polar://?base_url={empty.base_url}", catalog=catalog, **options)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close(timeout=2)


def _setup(empty: EmulatorHandle, catalog: Catalog = CATALOG, **kwargs: Any) -> Any:
    return run_setup(catalog, access_token=empty.token, base_url=empty.base_url, **kwargs)


def test_setup_creates_meters_and_plans_once_then_reports_changed_units(
    empty: EmulatorHandle, sdk: Polar
) -> None:
    """First run: the four meters, two products, five benefits. Second: nothing. A catalog whose
    free plan now says 50 requests: drift, and Polar's product is left as it was."""
    dry = _setup(empty, dry_run=True)
    assert dry.created == [m.slug for m in DEFAULT_METERS]
    assert dry.plans_created == ["free", "pro"] and dry.benefits_created == 5
    assert list(sdk.products.iter_list(limit=100)) == []
    first = _setup(empty)
    assert first.ok, str(first)
    assert first.created == [m.slug for m in DEFAULT_METERS]
    assert first.plans_created == ["free", "pro"]
    assert first.benefits_created == 5
    products = {p.metadata[PLAN_KEY]: p for p in sdk.products.iter_list(limit=100)}
    assert set(products) == {"free", "pro"}
    meters = {m.id: m.name for m in sdk.meters.iter_list(limit=100)}
    free = products["free"]
    assert (free.name, free.recurring_interval, free.is_recurring) == ("free", "month", True)
    assert [(p.amount_type, p.price_amount) for p in free.prices] == [("fixed", 0)]  # type: ignore[union-attr]
    credits = {
        meters[b.properties.meter_id]: (b.properties.units, b.properties.rollover) for b in free.benefits
    }  # type: ignore[union-attr]
    assert credits == {"API Requests": (100, False), "AI Tokens": (5000, False)}
    pro_benefits = {b.properties.units for b in products["pro"].benefits}  # type: ignore[union-attr]
    assert pro_benefits == {10_000, 250_000, 25}
    assert all(b.properties.rollover for b in products["pro"].benefits)  # type: ignore[union-attr]

    second = _setup(empty)
    assert (second.created, second.plans_created, second.benefits_created) == ([], [], 0)
    assert [p.status for p in second.plans] == ["exists", "exists"]
    assert len(list(sdk.products.iter_list(limit=100))) == 2
    assert len(list(sdk.benefits.iter_list(limit=100))) == 5

    changed = Catalog(DEFAULT_METERS, (Plan("free", credits={"api_requests": 50, "ai_tokens": 5000}), PRO))
    drifted = _setup(empty, changed)
    assert [p.name for p in drifted.plan_drift] == ["free"]
    assert drifted.plan_drift[0].drift == ("api_requests: the plan credits 50 units, Polar 100",)
    assert "DRIFT" in str(drifted)
    again = sdk.products.get(free.id)
    assert sorted(b.properties.units for b in again.benefits) == [100, 5000]  # type: ignore[union-attr]


def test_subscribe_on_polar_gives_the_plans_credits(
    empty: EmulatorHandle, client: Callable[..., Metering], sdk: Polar
) -> None:
    """After setup, subscribe creates the Polar customer and the subscription; check_limit's limit is
    the plan's credit, usage tracked before counts, and repeating it changes nothing."""
    _setup(empty)
    c = client()
    who = f"cust_{uuid.uuid4().hex[:8]}"
    for _ in range(4):
        c.track_api_request(who, "/gen")
    assert c.flush(10)
    sub = c.subscribe(who, "free")
    assert (sub.plan, sub.status, sub.product_id is not None, sub.id is not None) == (
        "free",
        "active",
        True,
        True,
    )
    status = c.check_limit(who, "api_requests")
    assert (status.limit, status.current) == (FREE.credits["api_requests"], 4)
    assert (status.period_start, status.period_end) == (sub.period_start, sub.period_end)
    assert c.check_limit(who, "ai_tokens").limit == FREE.credits["ai_tokens"]
    assert c.subscribe(who, "free").id == sub.id
    assert len(sdk.subscriptions.list(external_customer_id=who).items) == 1
    customer = sdk.customers.get_external(who)
    assert (customer.external_id, customer.type) == (who, "team")
    changed = c.subscribe(who, "pro")
    assert (changed.id, changed.plan) == (sub.id, "pro")
    assert c.check_limit(who, "team_seats").limit == 25


def test_subscribe_with_an_email_creates_an_individual_customer(
    empty: EmulatorHandle, client: Callable[..., Metering], sdk: Polar
) -> None:
    _setup(empty)
    who = f"cust_{uuid.uuid4().hex[:8]}"
    client().subscribe(who, "free", email=f"{who}@example.com")
    customer = sdk.customers.get_external(who)
    assert (customer.type, customer.email) == ("individual", f"{who}@example.com")
    with pytest.raises(ValidationError, match="email"):
        client().subscribe(who, "free", email="not an address")


def test_a_paid_plan_is_checked_and_points_to_checkout(
    empty: EmulatorHandle, client: Callable[..., Metering], sdk: Polar
) -> None:
    _setup(empty)
    meters = {m.name: m.id for m in sdk.meters.iter_list(limit=100)}
    paid = sdk.products.create(
        name="Business", recurring_interval="month", prices=[{"amount_type": "fixed", "price_amount": 4900}]
    )
    benefit = sdk.benefits.create(
        type="meter_credit",
        description="1M tokens",
        properties={"meter_id": meters["AI Tokens"], "units": 1_000_000, "rollover": False},
    )
    sdk.products.update_benefits(paid.id, benefits=[benefit.id])
    business = Plan("business", credits={"ai_tokens": 1_000_000, "api_requests": 5}, product_id=paid.id)
    catalog = Catalog(DEFAULT_METERS, (FREE, PRO, business))
    report = _setup(empty, catalog)
    result = next(p for p in report.plans if p.name == "business")
    assert (result.status, result.paid, result.product_id) == ("drift", True, paid.id)
    assert result.drift == ("api_requests: Polar's product has no meter-credit benefit for it",)
    assert sdk.products.get(paid.id).benefits[0].id == benefit.id  # checked, never changed
    with pytest.raises(CheckoutRequired, match="checkout") as info:
        client(catalog).subscribe(f"cust_{uuid.uuid4().hex[:8]}", "business")
    assert (info.value.plan, info.value.product_id) == ("business", paid.id)


def test_plans_that_cannot_be_provisioned_are_errors(empty: EmulatorHandle) -> None:
    catalog = Catalog(
        DEFAULT_METERS,
        (
            Plan("zero", credits={"api_requests": 0}),
            Plan("ab", credits={"api_requests": 3}),
            Plan("half", credits={"ai_tokens": 2.5}),
        ),
    )
    report = _setup(empty, catalog)
    assert not report.ok
    problems = dict(line.split(": ", 1) for line in report.errors)
    assert "whole number of units from 1" in problems["plan zero"]
    assert "3 to 64 characters" in problems["plan ab"]
    assert "whole number" in problems["plan half"]


def test_an_unprovisioned_plan_is_reported(
    empty: EmulatorHandle, client: Callable[..., Metering], caplog: pytest.LogCaptureFixture
) -> None:
    """``init(plans=...)`` on polar:// names plans setup provisioned; one it did not is reported
    with the fix, and subscribing to it says so."""
    _setup(empty)
    extra = Plan(f"later-{uuid.uuid4().hex[:6]}", credits={"api_requests": 7})
    c = client(Catalog(DEFAULT_METERS, (FREE, PRO, extra)))
    with caplog.at_level(logging.WARNING, logger="polar_metering"):
        assert c.backend.unprovisioned_plans() == [extra.name]  # type: ignore[attr-defined]
    assert [r.getMessage() for r in caplog.records if extra.name in r.getMessage()] == [
        f"polar_metering: plan {extra.name!r} is not provisioned in Polar (no product for it); "
        "run `polar-metering setup`"
    ]
    with pytest.raises(NotFound, match="polar-metering setup"):
        c.subscribe("someone", extra.name)
    with pytest.raises(ConfigurationError, match="unknown plan"):
        c.subscribe("someone", "no-such-plan")
    with pytest.raises(ConfigurationError, match="started_at"):
        c.subscribe("someone", "free", started_at=c.config.clock.now())


def test_unknown_customer_policies(empty: EmulatorHandle, client: Callable[..., Metering]) -> None:
    """A customer Polar does not know: the default plan by default; ``allow`` lifts the limit,
    ``deny`` refuses. A known customer without a subscription gets the default plan either way."""
    _setup(empty)
    stranger = f"nobody_{uuid.uuid4().hex[:8]}"
    assert client().check_limit(stranger, "api_requests").limit == 100
    allow = client(unknown_customer="allow")
    assert allow.check_limit(stranger, "api_requests").limit is None
    deny = client(unknown_customer="deny")
    refused = deny.check_limit(stranger, "api_requests")
    assert (refused.allowed, refused.limit) == (False, 0)
    known = f"known_{uuid.uuid4().hex[:8]}"
    with Polar(empty.token, base_url=empty.base_url) as sdk:
        sdk.customers.create(type="team", external_id=known)
    assert deny.check_limit(known, "api_requests").limit == 100
    assert allow.check_limit(known, "api_requests").limit == 100
    no_default = client(Catalog(DEFAULT_METERS, (FREE, PRO)))
    assert no_default.check_limit(stranger, "api_requests").limit is None  # today's behaviour
    with pytest.raises(ConfigurationError, match="default plan"):
        client(Catalog(DEFAULT_METERS, (FREE,)), unknown_customer="default_plan")


def test_cancel_and_listings_on_polar(empty: EmulatorHandle, client: Callable[..., Metering]) -> None:
    _setup(empty)
    c = client()
    who = f"cust_{uuid.uuid4().hex[:8]}"
    assert c.cancel(who) is None
    c.subscribe(who, "pro")
    canceled = c.cancel(who)
    assert canceled is not None and canceled.cancel_at_period_end
    assert c.check_limit(who, "api_requests").limit == 10_000
    assert c.subscribe(who, "pro").cancel_at_period_end is False  # subscribing again resumes it
    plans = c.list_plans()
    assert [p.name for p in plans.items] == ["free", "pro"]
    assert all(p.product_id for p in plans.items)
    assert dict(plans.items[1].credits) == dict(PRO.credits) and plans.items[1].rollover
    ids = {x.id for page in range(1, 20) for x in c.list_customers(page=page, limit=5).items}
    assert who in ids


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.command()(setup_command)
    return app


def test_cli_lists_plans_and_strict_fails_on_plan_drift(empty: EmulatorHandle, tmp_path: Path) -> None:
    _setup(empty)
    toml = tmp_path / "metering.toml"
    toml.write_text(
        '[defaults]\nplan = "free"\n'
        "[plans.free]\ncredits = { api_requests = 100, ai_tokens = 5000 }\n"
        "[plans.pro]\ncredits = { api_requests = 9, ai_tokens = 250000, team_seats = 25 }\nrollover = true\n",
        encoding="utf-8",
    )
    env = {"POLAR_ACCESS_TOKEN": empty.token, "POLAR_BASE_URL": empty.base_url}
    runner = CliRunner()
    lenient = runner.invoke(_cli(), ["--catalog", str(toml)], env=env)
    assert lenient.exit_code == 0, lenient.output
    assert "4 meters, 2 plans (default: free)" in lenient.output
    assert "Polar products for plans" in lenient.output
    assert "api_requests: the plan credits 9 units, Polar 10000" in lenient.output
    strict = runner.invoke(_cli(), ["--catalog", str(toml), "--strict"], env=env)
    assert strict.exit_code == 1


def test_customer_ids_with_slashes_and_percent_signs(
    empty: EmulatorHandle, client: Callable[..., Metering]
) -> None:
    """Every lifecycle call sends the customer id in a body or a query string, never a path."""
    _setup(empty)
    c = client(unknown_customer="deny")
    for who in (f"org/{uuid.uuid4().hex[:6]}", f"50%_{uuid.uuid4().hex[:6]}?x#y"):
        assert not c.check_limit(who, "api_requests").allowed  # unknown: denied
        sub = c.subscribe(who, "free")
        assert c.get_subscription(who) == sub
        assert c.check_limit(who, "api_requests").limit == 100
        assert c.cancel(who) is not None
