"""The embedded engine's billing semantics: windows, credits, rollover, resets, late events, dedup,
and rollups that always equal a fresh aggregation of the raw events."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from polar_metering import Aggregation, Catalog, Filter, ManualClock, Meter, Metering, Plan
from polar_metering._catalog import DEFAULT_METERS
from polar_metering._evaluate import compile_filter, compile_value_reader, lookup, unique_key
from polar_metering.backends._engine.backend import LocalEngine
from polar_metering.backends._engine.polar_surface import aggregate_values

PLANS = (
    Plan("free", credits={"api_requests": 10, "ai_tokens": 1000}),
    Plan("roll", credits={"ai_tokens": 100}, rollover=True),
    Plan("yearly", credits={"api_requests": 5}, interval="year"),
)


@pytest.fixture
def client(sqlite_url: str, clock: ManualClock) -> Any:
    c = Metering(sqlite_url, plans=PLANS, clock=clock)
    yield c
    c.close()


def test_no_subscription_means_calendar_month_and_no_limit(client: Metering, clock: ManualClock) -> None:
    """Without a plan, usage is counted per UTC calendar month and never limited."""
    client.track_api_request("anon", "/x")
    status = client.check_limit("anon", "api_requests")
    assert (status.current, status.limit, status.allowed) == (1, None, True)
    assert status.period_start == datetime(2026, 1, 1, tzinfo=UTC)
    assert status.period_end == datetime(2026, 2, 1, tzinfo=UTC)
    clock.set(datetime(2026, 2, 1, tzinfo=UTC))
    assert client.check_limit("anon", "api_requests").current == 0


def test_period_boundary_resets_usage_and_renews_credits(client: Metering, clock: ManualClock) -> None:
    """Crossing the anchored period boundary starts from zero with the plan's credits again."""
    client.subscribe("c1", "free")
    for _ in range(10):
        client.track_api_request("c1", "/x")
    assert not client.check_limit("c1", "api_requests").allowed
    clock.advance(days=30, hours=23, minutes=59)  # Jan 15 12:00 + 31 days - 1 min: still the first period
    assert client.check_limit("c1", "api_requests").current == 10
    clock.advance(minutes=1)
    status = client.check_limit("c1", "api_requests")
    assert (status.current, status.limit, status.allowed) == (0, 10, True)
    assert status.period_start == datetime(2026, 2, 15, 12, tzinfo=UTC)


def test_backdated_event_counts_in_the_window_it_arrives_in(client: Metering, clock: ManualClock) -> None:
    """Polar keys windows on ingestion time (``_build_events_statement`` in
    server/polar/customer_meter/service.py): an event dated last period but sent now counts now."""
    client.subscribe("c2", "free")
    clock.advance(days=31)
    late = clock.now() - timedelta(days=20)
    client.track_usage("c2", "api.request", {"endpoint": "/late"}, timestamp=late)
    assert client.check_limit("c2", "api_requests").current == 1


def test_subscribe_keeps_earlier_usage_and_adds_credit(client: Metering, clock: ManualClock) -> None:
    """Subscribing to a plan of credits resets nothing: Polar's reset_meters only resets meters with
    a metered price, and a credit benefit adds credit (subscription/service.py at c6c3645). 5 events,
    a 10-unit plan, 2 events: consumed 7, credited 10, balance 3 (issue 13, row 1)."""
    for _ in range(5):
        client.track_api_request("c3", "/x")
    clock.advance(hours=1)
    client.subscribe("c3", "free")
    for _ in range(2):
        client.track_api_request("c3", "/x")
    status = client.check_limit("c3", "api_requests")
    assert (status.current, status.limit, status.balance) == (7, 10, 3)
    assert status.period_start == clock.now()  # the billing period is the subscription's
    clock.advance(days=31)  # the renewal starts a new window with the plan's credits
    status = client.check_limit("c3", "api_requests")
    assert (status.current, status.limit) == (0, 10)


def test_subscribe_keeps_earlier_grants(sqlite_url: str, clock: ManualClock) -> None:
    """Credit granted before subscribing stays: the plan's grant is added to the running sum."""
    with Metering(sqlite_url, plans=PLANS, clock=clock) as client:
        engine = client.backend
        assert isinstance(engine, LocalEngine)
        meter_id = engine._meter_id("api_requests").id
        engine.grant_credits("c3b", meter_id, 50)
        client.track_api_request("c3b", "/x")
        client.subscribe("c3b", "free")
        status = client.check_limit("c3b", "api_requests")
        assert (status.current, status.limit) == (1, 60)


def test_backdated_subscription_keeps_usage_in_its_first_period(client: Metering, clock: ManualClock) -> None:
    """A subscription started in the past, still in its first period, resets nothing either."""
    for _ in range(3):
        client.track_api_request("c4", "/x")
    clock.advance(days=2)
    client.track_api_request("c4", "/x")
    client.subscribe("c4", "free", started_at=clock.now() - timedelta(days=1))
    assert client.check_limit("c4", "api_requests").current == 4


def test_subscription_renewed_since_its_start_counts_from_the_renewal(
    client: Metering, clock: ManualClock
) -> None:
    """Started two months ago, a subscription has renewed since; each renewal reset the credited
    meters (Polar's benefit cycle), so only usage since the latest renewal counts."""
    clock.advance(days=10)
    client.track_api_request("c4b", "/x")  # Jan 25
    clock.advance(days=20)
    client.track_api_request("c4b", "/x")  # Feb 14
    client.subscribe("c4b", "free", started_at=datetime(2025, 12, 1, tzinfo=UTC))
    status = client.check_limit("c4b", "api_requests")
    assert status.period_start == datetime(2026, 2, 1, tzinfo=UTC)
    assert (status.current, status.limit) == (1, 10)


def test_rollover_carries_unused_credit(client: Metering, clock: ManualClock) -> None:
    """With rollover, unused credit carries into the next period: max(0, min(int(R - U), R))
    (``get_rollover_units`` in server/polar/customer_meter/service.py)."""
    client.subscribe("c5", "roll")
    client.track_ai_tokens("c5", 30)
    clock.advance(days=31)
    status = client.check_limit("c5", "ai_tokens")
    assert (status.current, status.limit) == (0, 170)  # 100 new + 70 rolled over
    client.track_ai_tokens("c5", 200)  # overspend: nothing rolls
    clock.advance(days=31)
    assert client.check_limit("c5", "ai_tokens").limit == 100


def test_rollover_across_idle_periods(client: Metering, clock: ManualClock) -> None:
    """Periods with no activity still roll their whole credit forward."""
    client.subscribe("c6", "roll")
    client.track_ai_tokens("c6", 50)
    clock.advance(days=31 + 28 + 31)  # three boundaries later: 50 + 100 + 100 carried, plus 100 new
    assert client.check_limit("c6", "ai_tokens").limit == 350


def test_no_rollover_by_default(client: Metering, clock: ManualClock) -> None:
    """Without rollover the credit is the plan's, whatever was left."""
    client.subscribe("c7", "free")
    client.track_ai_tokens("c7", 1)
    clock.advance(days=31)
    assert client.check_limit("c7", "ai_tokens").limit == 1000


def _grant(client: Metering, customer: str, units: float, *, rollover: bool) -> None:
    client.backend.grant_credits(customer, "ai_tokens", units, rollover=rollover)  # type: ignore[attr-defined]


def test_only_rollover_flagged_credit_carries_over(client: Metering, clock: ManualClock) -> None:
    """The flag is per credit (``get_rollover_units``): a plain grant on a rollover plan does not carry,
    a flagged grant on a plain plan does, and unflagged credit is used up first."""
    client.subscribe("r1", "roll")  # 100, flagged
    _grant(client, "r1", 50, rollover=False)
    assert client.check_limit("r1", "ai_tokens").limit == 150
    client.subscribe("r2", "free")  # 1000, not flagged
    _grant(client, "r2", 50, rollover=True)
    client.subscribe("r3", "free")
    _grant(client, "r3", 50, rollover=True)
    client.track_ai_tokens("r3", 1020)  # 1000 unflagged go first, then 20 of the flagged 50
    clock.advance(days=31)
    assert client.check_limit("r1", "ai_tokens").limit == 200  # min(150 - 0, 100) rolls: 100 + 100
    assert client.check_limit("r2", "ai_tokens").limit == 1050  # min(1050 - 0, 50) rolls
    assert client.check_limit("r3", "ai_tokens").limit == 1030  # min(1050 - 1020, 50) rolls


def test_carried_credit_stays_flagged_and_revoking_a_flagged_grant_unflags_it(
    client: Metering, clock: ManualClock
) -> None:
    """What rolls over arrives flagged, so unused it keeps rolling; a flagged grant revoked in the
    same window leaves nothing to carry."""
    client.subscribe("r4", "free")
    _grant(client, "r4", 50, rollover=True)
    client.subscribe("r5", "free")
    _grant(client, "r5", 50, rollover=True)
    _grant(client, "r5", -50, rollover=True)
    clock.advance(days=31 + 28 + 31)  # three boundaries, nothing used
    assert client.check_limit("r4", "ai_tokens").limit == 1050
    assert client.check_limit("r5", "ai_tokens").limit == 1000


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    windows=st.lists(
        st.tuples(
            st.lists(st.tuples(st.integers(0, 300), st.booleans()), max_size=3),  # grants: units, flag
            st.integers(0, 1500),  # tokens used
        ),
        min_size=1,
        max_size=4,
    ),
    plan_rolls=st.booleans(),
)
def test_credit_matches_polars_rollover_formula(
    tmp_path: Path, windows: list[tuple[list[tuple[int, bool]], int]], plan_rolls: bool
) -> None:
    """Against a direct model of ``get_rollover_units`` (server/polar/customer_meter/service.py) over
    several windows: each window starts with the plan's 1000 (flagged when the plan rolls over) plus
    max(0, min(int(NR + R - U), R)) of the window before, that carry flagged; grants add to NR or R."""
    clock = ManualClock(datetime(2026, 1, 15, 12, tzinfo=UTC))
    plan = Plan("p", credits={"ai_tokens": 1000}, rollover=plan_rolls)
    # tmp_path outlives the examples hypothesis runs: a fresh file for each.
    client = Metering(f"sqlite:///{tmp_path / f'model-{uuid.uuid4().hex}.db'}", plans=[plan], clock=clock)
    try:
        client.subscribe("m", "p")
        plain, flagged = (0.0, 1000.0) if plan_rolls else (1000.0, 0.0)
        for grants, used in windows:
            for units, flag in grants:
                _grant(client, "m", units, rollover=flag)
                plain, flagged = (plain, flagged + units) if flag else (plain + units, flagged)
            assert client.check_limit("m", "ai_tokens").limit == plain + flagged
            if used:
                client.track_ai_tokens("m", used)
            carry = max(0, min(int(plain + flagged - used), flagged))
            plain, flagged = (0.0, 1000.0 + carry) if plan_rolls else (1000.0, float(carry))
            clock.advance(days=31)
        assert client.check_limit("m", "ai_tokens").limit == plain + flagged
    finally:
        client.close()


def test_yearly_plan(client: Metering, clock: ManualClock) -> None:
    """A yearly plan keeps one window for twelve months."""
    client.subscribe("c8", "yearly")
    for _ in range(5):
        client.track_api_request("c8", "/x")
    clock.advance(days=200)
    assert not client.check_limit("c8", "api_requests").allowed
    clock.advance(days=166)
    assert client.check_limit("c8", "api_requests").allowed


def test_grants_and_revokes_clamp_at_zero(sqlite_url: str, clock: ManualClock) -> None:
    """Credits are a running sum clamped at 0: [100, -150, 50] gives 50
    (``non_negative_running_sum`` in server/polar/kit/math.py)."""
    engine = LocalEngine.open(sqlite_url, clock=clock)
    for units in (100, -150, 50):
        engine.grant_credits("c9", "ai_tokens", units)
    reading = engine.reading("c9", engine.catalog.meter("ai_tokens"))
    assert reading.credited == 50
    engine.close()


def test_manual_reset_starts_a_new_window(sqlite_url: str, clock: ManualClock) -> None:
    """A reset mid-period starts counting from zero at once."""
    client = Metering(sqlite_url, plans=PLANS, clock=clock)
    client.subscribe("c10", "free")
    client.track_api_request("c10", "/x")
    clock.advance(hours=1)
    assert isinstance(client.backend, LocalEngine)
    client.backend.reset_meters("c10")
    assert client.check_limit("c10", "api_requests").current == 0
    client.track_api_request("c10", "/x")
    assert client.check_limit("c10", "api_requests").current == 1
    client.close()


def test_dedup_survives_restart(sqlite_url: str, clock: ManualClock) -> None:
    """external_id dedup is permanent: a resend after reopening the file is still a duplicate."""
    first = Metering(sqlite_url, clock=clock)
    assert first.track_usage("c11", "ai.tokens", {"tokens": 5}, external_id="once").inserted == 1
    first.close()
    second = Metering(sqlite_url, clock=clock)
    result = second.track_usage("c11", "ai.tokens", {"tokens": 5}, external_id="once")
    assert (result.inserted, result.duplicates) == (0, 1)
    batch = second.track_usage_batch(
        [
            {
                "customer_id": "c11",
                "event_name": "ai.tokens",
                "metadata": {"tokens": 1},
                "external_id": "twice",
            },
            {
                "customer_id": "c11",
                "event_name": "ai.tokens",
                "metadata": {"tokens": 1},
                "external_id": "twice",
            },
        ]
    )
    assert (batch.inserted, batch.duplicates) == (1, 1)  # in-batch duplicates count too
    assert second.check_limit("c11", "ai_tokens").current == 6
    second.close()


def test_changing_a_meter_in_code_recomputes_its_rollups(sqlite_url: str, clock: ManualClock) -> None:
    """The code catalog is the source of truth: a changed aggregation is rebuilt from the events."""
    first = Metering(sqlite_url, clock=clock)
    for tokens in (10, 30):
        first.track_ai_tokens("c12", tokens)
    first.close()
    as_max = tuple(
        Meter("ai_tokens", "AI Tokens", Filter.event("ai.tokens"), Aggregation.max("tokens"))
        if m.slug == "ai_tokens"
        else m
        for m in DEFAULT_METERS
    )
    second = Metering(sqlite_url, clock=clock, catalog=Catalog(as_max))
    assert second.check_limit("c12", "ai_tokens").current == 30
    second.close()


# -- rollups equal a fresh aggregation of the raw events ------------------------------------------
values = st.one_of(
    st.integers(-50, 50), st.floats(-50, 50, allow_nan=False), st.sampled_from(["1", "a", "5"]), st.booleans()
)
events = st.lists(
    st.tuples(
        st.sampled_from(["a", "b"]),
        st.sampled_from(["m.x", "m.y"]),
        st.dictionaries(st.sampled_from(["v", "k"]), values, max_size=2),
    ),
    min_size=1,
    max_size=40,
)
FUZZ_METERS = tuple(
    Meter(f"{func}_{i}", f"{func} meter {i}", flt, Aggregation(func, None if func == "count" else "v"))
    for i, flt in enumerate(
        [
            Filter.event("m.x"),
            Filter("or", (Filter.event("m.y"), Filter("and", ()))),
            Filter.event("m.x", k="1"),
        ]
    )
    for func in ("count", "sum", "max", "min", "avg", "unique")
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(events, st.integers(1, 7))
def test_rollups_match_raw_aggregation(tmp_path: Path, batch: list[Any], split: int) -> None:
    """Whatever events arrive, in whatever batches, each meter reads what aggregating the raw events
    with Polar's rules gives."""
    clock = ManualClock("2026-01-15T12:00:00+00:00")
    url = f"sqlite:///{tmp_path / f'fuzz-{abs(hash((tuple(map(str, batch)), split)))}.db'}"
    client = Metering(url, catalog=Catalog(FUZZ_METERS), clock=clock)
    items = [{"customer_id": c, "event_name": n, "metadata": md} for c, n, md in batch]
    for i in range(0, len(items), split):
        assert client.track_usage_batch(items[i : i + split]).inserted == len(items[i : i + split])
    ts = int(clock.now().timestamp())
    for meter in FUZZ_METERS:
        match = compile_filter(meter.filter)
        read = compile_value_reader(meter.aggregation)
        for customer in ("a", "b"):
            got = client.check_limit(customer, meter.slug).current
            hits = [md for c, n, md in batch if c == customer and match(n, "user", ts, md)]
            func = meter.aggregation.func
            if func == "unique":
                expected = aggregate_values("unique", [unique_key(lookup(md, "v")) for md in hits])
            elif func == "count":
                expected = float(len(hits))
            else:
                expected = aggregate_values(func, [read(n, "user", ts, md) for md in hits for n in ["x"]])
            assert got == pytest.approx(expected), (meter.slug, customer, json.dumps(batch))
    client.close()
