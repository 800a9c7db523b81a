"""The engine's lifecycle rules on a manual clock: plan changes across intervals, cancellation at the
period's end and what follows it, the default plan's calendar months, concurrent subscribes on
PostgreSQL, and the arguments every lifecycle call checks."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from polar_metering import ConfigurationError, ManualClock, Metering, Plan, ValidationError
from polar_metering.backends._engine.backend import LocalEngine

FREE = Plan("free", credits={"api_requests": 10, "ai_tokens": 1000})
PRO = Plan("pro", credits={"api_requests": 100})
YEARLY = Plan("yearly", credits={"api_requests": 5000}, interval="year")
ROLL = Plan("roll", credits={"ai_tokens": 100}, rollover=True)


@pytest.fixture
def client(sqlite_url: str, clock: ManualClock) -> Any:
    c = Metering(sqlite_url, plans=[FREE, PRO, YEARLY, ROLL], clock=clock)
    yield c
    c.close()


def _use(client: Metering, customer: str, n: int) -> None:
    for _ in range(n):
        client.track_api_request(customer, "/x")


def test_a_plan_change_to_another_interval_starts_a_new_period_and_keeps_usage(
    client: Metering, clock: ManualClock
) -> None:
    """Polar starts a new cycle when the interval changes (subscription/update.py); usage stays."""
    client.subscribe("i1", "free")
    clock.advance(days=10)
    _use(client, "i1", 4)
    sub = client.subscribe("i1", "yearly")
    assert (sub.period_start, sub.period_end) == (clock.now(), clock.now().replace(year=2027))
    status = client.check_limit("i1", "api_requests")
    assert (status.current, status.limit, status.period_start) == (4, 5000, clock.now())
    assert client.check_limit("i1", "ai_tokens").limit is None  # yearly names no tokens


def test_a_same_interval_change_keeps_the_period(client: Metering, clock: ManualClock) -> None:
    first = client.subscribe("i2", "free")
    clock.advance(days=40)  # a renewal later
    changed = client.subscribe("i2", "pro")
    assert changed.started_at == first.started_at
    assert changed.period_start == datetime(2026, 2, 15, 12, tzinfo=UTC)


def test_started_at_on_a_plan_change_reanchors_the_periods(client: Metering, clock: ManualClock) -> None:
    client.subscribe("i3", "free")
    _use(client, "i3", 2)
    anchor = clock.now() - timedelta(days=3)
    sub = client.subscribe("i3", "pro", started_at=anchor)
    assert sub.started_at == anchor
    assert client.check_limit("i3", "api_requests").current == 2
    again = client.subscribe("i3", "pro", started_at=anchor - timedelta(days=1))
    assert again.started_at == anchor  # the plan the customer is on: nothing changes


def test_cancel_holds_to_the_period_end_then_the_customer_has_no_plan(
    sqlite_url: str, clock: ManualClock
) -> None:
    with Metering(sqlite_url, plans=[FREE, PRO], default_plan="free", clock=clock) as c:
        c.subscribe("k1", "pro")
        _use(c, "k1", 30)
        canceled = c.cancel("k1")
        assert canceled is not None and canceled.period_end == datetime(2026, 2, 15, 12, tzinfo=UTC)
        clock.set(datetime(2026, 2, 15, 11, 59, tzinfo=UTC))
        assert c.check_limit("k1", "api_requests").limit == 100
        clock.set(datetime(2026, 2, 15, 12, tzinfo=UTC))
        assert c.get_subscription("k1") is None
        status = c.check_limit("k1", "api_requests")
        # The default plan now, counted from where the plan ended, in calendar months after that.
        assert (status.current, status.limit) == (0, 10)
        assert (status.period_start, status.period_end) == (
            datetime(2026, 2, 15, 12, tzinfo=UTC),
            datetime(2026, 3, 1, tzinfo=UTC),
        )
        _use(c, "k1", 10)
        assert not c.check_limit("k1", "api_requests").allowed
        clock.set(datetime(2026, 3, 1, tzinfo=UTC))
        assert c.check_limit("k1", "api_requests").current == 0
        back = c.subscribe("k1", "pro")
        assert (back.plan, back.cancel_at_period_end, back.started_at) == ("pro", False, clock.now())


def test_the_default_plan_renews_each_calendar_month(sqlite_url: str, clock: ManualClock) -> None:
    with Metering(sqlite_url, plans=[FREE], default_plan="free", clock=clock) as c:
        _use(c, "d1", 10)
        assert not c.check_limit("d1", "api_requests").allowed
        assert c.get_subscription("d1") is None
        clock.set(datetime(2026, 2, 1, tzinfo=UTC))
        status = c.check_limit("d1", "api_requests")
        assert (status.allowed, status.current, status.limit) == (True, 0, 10)
        assert c.subscribe("d1", "free").plan == "free"  # the default plan's credit, not twice
        assert c.check_limit("d1", "api_requests").limit == 10


def test_rollover_credit_survives_a_plan_change(client: Metering, clock: ManualClock) -> None:
    """Only the old plan's own units are taken back; what rolled over stays."""
    client.subscribe("r1", "roll")
    client.track_ai_tokens("r1", 30)
    clock.advance(days=31)
    assert client.check_limit("r1", "ai_tokens").limit == 170
    client.subscribe("r1", "free")
    assert client.check_limit("r1", "ai_tokens").limit == 1070  # 70 rolled over + free's 1000


def test_lifecycle_arguments_are_checked(client: Metering) -> None:
    for bad in ("", None, 5, "a\x00b"):
        with pytest.raises(ValidationError, match="customer_id"):
            client.get_subscription(bad)  # type: ignore[arg-type]
        with pytest.raises(ValidationError, match="customer_id"):
            client.cancel(bad)  # type: ignore[arg-type]
    for page, limit in ((0, 10), (1, 0), (1, 101), (True, 10), (1.5, 10), ("1", 10)):
        with pytest.raises(ValidationError):
            client.list_customers(page=page, limit=limit)  # type: ignore[arg-type]
        with pytest.raises(ValidationError):
            client.list_plans(page=page, limit=limit)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="email"):
        client.subscribe("x", "free", email="nope")
    with pytest.raises(ConfigurationError, match="unknown plan"):
        client.subscribe("x", "gold")
    with pytest.raises(ConfigurationError, match="default_plan"):
        Metering("sqlite:///:memory:", plans=[FREE], default_plan="gold")
    with pytest.raises(ConfigurationError, match="unknown_customer"):
        Metering("sqlite:///:memory:", unknown_customer="maybe")


def test_listings_page_through_everything(client: Metering) -> None:
    for i in range(7):
        client.subscribe(f"p{i}", "free")
    client.track_api_request("only_events", "/x")
    pages = [client.list_customers(page=n, limit=3) for n in (1, 2, 3)]
    assert [len(p.items) for p in pages] == [3, 3, 2]
    assert [p.has_next for p in pages] == [True, True, False]
    assert sorted(c.id for p in pages for c in p.items) == sorted(
        [f"p{i}" for i in range(7)] + ["only_events"]
    )
    assert {p.total for p in pages} == {8}
    plans = client.list_plans(limit=2)
    assert [p.name for p in plans.items] == ["free", "pro"] and plans.total == 4


def test_concurrent_subscribes_credit_once_on_postgresql(postgresql_url: str) -> None:
    """Eight threads subscribing one customer to one plan at once: one subscription, one credit."""
    engines = [Metering(postgresql_url, plans=[FREE]) for _ in range(4)]
    try:
        barrier = threading.Barrier(8)
        errors: list[BaseException] = []

        def go(c: Metering) -> None:
            try:
                barrier.wait()
                c.subscribe("race", "free")
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=go, args=(engines[i % 4],)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert engines[0].check_limit("race", "api_requests").limit == 10
        assert isinstance(engines[0].backend, LocalEngine)
    finally:
        for c in engines:
            c.close()


def test_the_async_twins(sqlite_url: str, clock: ManualClock) -> None:
    """``AsyncMetering`` and ``polar_metering.aio`` have every lifecycle call."""
    import asyncio

    import polar_metering as metering
    from polar_metering import AsyncMetering

    async def main() -> None:
        async with AsyncMetering(sqlite_url, plans=[FREE, PRO], clock=clock) as c:
            sub = await c.subscribe("a1", "free")
            assert (await c.get_subscription("a1")) == sub
            assert (await c.cancel("a1")) is not None
            assert [x.id for x in (await c.list_customers()).items] == ["a1"]
            assert [p.name for p in (await c.list_plans()).items] == ["free", "pro"]
        metering.init(sqlite_url, plans=[FREE, PRO], clock=clock)
        try:
            assert (await metering.aio.subscribe("a2", "pro")).plan == "pro"
            assert (await metering.aio.get_subscription("a2")).plan == "pro"  # type: ignore[union-attr]
            assert (await metering.aio.cancel("a2")).cancel_at_period_end  # type: ignore[union-attr]
            assert (await metering.aio.list_customers(limit=1)).total == 2
            assert (await metering.aio.list_plans()).total == 2
            assert metering.get_subscription("a2") is not None
            assert metering.list_plans(page=2, limit=1).items[0].name == "pro"
            assert metering.list_customers().total == 2
            assert metering.cancel("a1") is not None
        finally:
            metering.shutdown()

    asyncio.run(main())
