"""Bad input found by fuzzing the public API, one test per failure signature.

Each case once escaped as an internal exception (UnicodeEncodeError, OverflowError, TypeError,
RecursionError, AssertionError, AttributeError, ValueError) or sank a whole batch. Now every one is
refused by validation with the library's own error, naming the field and the rule, and the valid
items of a batch are kept. All run on a real SQLite file.
"""

from __future__ import annotations

import asyncio
import math
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import polar_metering as metering
from polar_metering import (
    Aggregation,
    Catalog,
    ConfigurationError,
    Filter,
    FilterClause,
    ManualClock,
    Meter,
    Metering,
    Plan,
    ValidationError,
)
from polar_metering.testing import capture_events, metering_for_tests

SURROGATE_RULE = "must be valid Unicode text (no lone surrogates)"
PLANS = [Plan("free", credits={"api_requests": 100, "ai_tokens": 1000, "team_seats": 10})]


def deep_dict(depth: int = 50_000) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = {"a": value}
    return value


def deep_list(depth: int = 50_000) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


@pytest.fixture
def client(tmp_path: Path, clock: ManualClock) -> Iterator[Metering]:
    c = Metering(f"sqlite:///{tmp_path / 'findings.db'}", plans=PLANS, clock=clock)
    c.subscribe("u", "free")
    yield c
    c.close()


def good(n: int = 1, name: str = "api.request") -> dict[str, Any]:
    return {"customer_id": "u", "event_name": name, "metadata": {"n": n}}


def assert_kept_and_rejected(
    client: Metering, batch: list[Any], bad: dict[int, str], *, rule: str | None = None
) -> None:
    """The batch stores its good items exactly once and lists each bad one with its field."""
    result = client.track_usage_batch(batch)
    assert not result.success
    assert [i for i, _ in result.rejected] == sorted(bad)
    for (i, message), (j, field) in zip(result.rejected, sorted(bad.items()), strict=True):
        assert i == j
        assert message.startswith(f"events[{i}].{field}: "), message
        if rule is not None:
            assert rule in message, message
        message.encode("utf-8")  # errors are printable text, whatever the input held
    assert result.inserted == len(batch) - len(bad)
    assert client.check_limit("u", "api_requests").current == len(batch) - len(bad)


# --- one bad item never sinks a batch ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("item", "field"),
    [
        ({"customer_id": "u", "event_name": "api.request", "metadata": {"a": "\udcff"}}, "metadata.a"),
        ({"customer_id": "u", "event_name": "api.request", "metadata": {"a": "ok \ud800"}}, "metadata.a"),
        ({"customer_id": "u", "event_name": "api.request", "metadata": {"\udcff": "x"}}, "metadata.\\udcff"),
        ({"customer_id": "u\ud800", "event_name": "api.request"}, "customer_id"),
        ({"customer_id": "u", "event_name": "api.\ud800"}, "name"),
        ({"customer_id": "u", "event_name": "api.request", "external_id": "\ud800"}, "external_id"),
        (
            {
                "customer_id": "u",
                "event_name": "api.request",
                "metadata": {
                    "_llm": {
                        "vendor": "\ud800",
                        "model": "m",
                        **dict.fromkeys(("input_tokens", "output_tokens", "total_tokens"), 1),
                    }
                },
            },
            "metadata._llm.vendor",
        ),
        (
            {
                "customer_id": "u",
                "event_name": "api.request",
                "metadata": {"_cost": {"amount": 1, "currency": "usd\udcff"}},
            },
            "metadata._cost.currency",
        ),
    ],
)
def test_lone_surrogates_are_rejected_per_item(client: Metering, item: dict[str, Any], field: str) -> None:
    """Was: UnicodeEncodeError when the batch was stored, losing the good events beside it."""
    assert_kept_and_rejected(client, [good(), item, good()], {1: field}, rule=SURROGATE_RULE)


def test_single_track_with_a_surrogate_is_a_validation_result(client: Metering) -> None:
    """track_usage reports the rule instead of a UnicodeEncodeError from the database driver."""
    result = client.track_usage("u", "api.request", {"k": "caf\udce9"})
    assert not result.success and result.error == f"metadata.k: {SURROGATE_RULE}"
    assert client.track_usage("u", "api.request", {"k": "café ☕ 😀"}).success  # real non-ASCII is fine


@pytest.mark.parametrize("value", [10**400, -(10**400), 10**309, int(sys.float_info.max) + 1])
def test_integers_beyond_a_double_are_rejected_per_item(client: Metering, value: int) -> None:
    """Was: OverflowError when the engine turned the value into a float, sinking the batch."""
    item = {"customer_id": "u", "event_name": "ai.tokens", "metadata": {"tokens": value}}
    assert_kept_and_rejected(client, [good(), item, good()], {1: "metadata.tokens"}, rule="double")
    assert client.check_limit("u", "ai_tokens").current == 0


def test_the_largest_double_sized_integer_is_kept(client: Metering) -> None:
    """The bound is the double range, inclusive: what both the engine and Polar can aggregate."""
    biggest = int(sys.float_info.max)
    assert client.track_usage("u", "ai.tokens", {"tokens": biggest}).success
    assert client.check_limit("u", "ai_tokens").current == sys.float_info.max


@pytest.mark.parametrize(
    ("item", "field"),
    [
        ({1: "x", "customer_id": "u"}, "event"),
        ({(1, 2): "x", "a": "y"}, "event"),
        ({"a": "y", 1: "x", "customer_id": "u", "event_name": "e"}, "event"),
        ({"customer_id": "u", "event_name": "api.request", "metadata": {1: "x"}}, "metadata"),
        ({"customer_id": "u", "event_name": "api.request", "metadata": {"a": 1, 2: "x"}}, "metadata"),
    ],
)
def test_non_string_keys_are_rejected_per_item(client: Metering, item: dict[Any, Any], field: str) -> None:
    """Was: TypeError from sorted() on mixed key types."""
    assert_kept_and_rejected(client, [good(), item], {1: field}, rule="keys must be strings")


def test_unknown_string_keys_are_named(client: Metering) -> None:
    """Several unknown keys: the error names the first in sorted order, as before."""
    result = client.track_usage_batch([{"zz": 1, "aa": 2, "customer_id": "u", "event_name": "e"}])
    assert result.rejected[0][1].startswith("events[0].aa: is not an event field")


def test_deep_nesting_in_llm_metadata_is_not_walked(client: Metering) -> None:
    """Was: RecursionError walking an unknown key of ``_llm`` (which Polar ignores and we drop)."""
    llm = {"vendor": "v", "model": "m", "input_tokens": 1, "output_tokens": 1, "total_tokens": 2}
    item = {
        "customer_id": "u",
        "event_name": "api.request",
        "metadata": {"_llm": {**llm, "junk": deep_dict()}},
    }
    result = client.track_usage_batch([item, good()])
    assert result.success and result.inserted == 2


def test_deep_unknown_cost_key_has_a_printable_error(client: Metering) -> None:
    """Error messages describe values briefly, whatever their depth."""
    key: Any = 1
    for _ in range(50_000):
        key = (key,)
    result = client.track_usage("u", "api.request", {"_cost": {"amount": 1, "currency": "usd", key: 1}})
    assert not result.success and result.error is not None and "unknown keys" in result.error
    assert len(result.error) < 500


# --- the convenience trackers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda c: c.track_ai_tokens("u", 10**400), "tokens"),
        (lambda c: c.track_ai_tokens("u", 10**309), "tokens"),
        (lambda c: c.track_storage_update("u", 10**400), "size_gb"),
        (lambda c: c.track_api_request("u", "/x", duration_ms=10**400), "duration_ms"),
        (lambda c: c.track_api_request("u", "/x\ud800"), "endpoint"),
        (lambda c: c.track_api_request("u", "/x", method="G\x00ET"), "method"),
        (lambda c: c.track_seat_activity("u", "\udcff"), "user_id"),
        (lambda c: c.track_ai_tokens("u", 5, model="gpt\ud800"), "model"),
    ],
)
def test_trackers_report_bad_arguments_by_name(
    client: Metering, call: Callable[[Metering], Any], field: str
) -> None:
    """Was: OverflowError (math.isfinite on a huge int) or UnicodeEncodeError from the driver."""
    result = call(client)
    assert not result.success
    assert result.error is not None and result.error.startswith(f"{field}: "), result.error
    strict = Metering(client.config.url, strict=True)
    try:
        with pytest.raises(ValidationError) as info:
            call(strict)
        assert info.value.field == field
    finally:
        strict.close()


# --- limit checks and reservations --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda c: c.check_limit("\ud800", "api_requests"), "customer_id"),
        (lambda c: c.check_limit("u\x00", "api_requests"), "customer_id"),
        (lambda c: c.get_all_usage("\ud800"), "customer_id"),
        (lambda c: c.check_limit("u", "api_requests", amount=10**400), "amount"),
        (lambda c: c.check_limit("u", "team_seats", value=deep_dict()), "value"),
        (lambda c: c.check_limit("u", "team_seats", value=deep_list()), "value"),
        (lambda c: c.check_limit("u", "team_seats", value="\ud800"), "value"),
        (lambda c: c.check_limit("u", "team_seats", value=math.nan), "value"),
        (lambda c: c.check_limit("u", "team_seats", value=10**400), "value"),
        (lambda c: c.reserve("u", "ai_tokens", None), "amount"),
        (lambda c: c.reserve("u", "ai_tokens", 10**400), "amount"),
        (lambda c: c.reserve("u", "ai_tokens", -1), "amount"),
        (lambda c: c.reserve("u", "ai_tokens", True), "amount"),
        (lambda c: c.reserve("u", "ai_tokens", "5"), "amount"),
        (lambda c: c.reserve("u", "ai_tokens", math.inf), "amount"),
        (lambda c: c.reserve("u", "ai_tokens", 1, ttl="x"), "ttl"),
        (lambda c: c.reserve("u", "ai_tokens", 1, ttl=-1), "ttl"),
        (lambda c: c.reserve("u", "ai_tokens", 1, ttl=0), "ttl"),
        (lambda c: c.reserve("u", "ai_tokens", 1, ttl=math.nan), "ttl"),
        (lambda c: c.reserve("u", "ai_tokens", 1, ttl=math.inf), "ttl"),
        (lambda c: c.reserve("u", "ai_tokens", 1, ttl=10**400), "ttl"),
        (lambda c: c.reserve("u", "ai_tokens", 1, ttl=1e300), "ttl"),
        (lambda c: c.reserve("u", "ai_tokens", 1, ttl=True), "ttl"),
        (lambda c: c.with_usage_limit("ai_tokens", lambda: 1, customer_id="u", amount=10**400), "amount"),
        (lambda c: c.with_usage_limit("ai_tokens", 5, customer_id="u"), "action"),
        (
            lambda c: c.usage_history(
                "u",
                "api_requests",
                start=datetime(9999, 12, 31, 20, tzinfo=UTC),
                end=datetime(9999, 12, 31, 23, tzinfo=UTC),
                interval="hour",
            ),
            "end",
        ),
        (
            lambda c: c.usage_history(
                "u",
                "api_requests",
                start=datetime(9999, 2, 1, tzinfo=UTC),
                end=datetime(9999, 3, 1, tzinfo=UTC),
                interval="month",
            ),
            "end",
        ),
        (
            lambda c: c.usage_history("\ud800", "api_requests", start=datetime(2026, 1, 1, tzinfo=UTC)),
            "customer_id",
        ),
        (lambda c: c.flush("soon"), "timeout"),
        (lambda c: c.flush(-1), "timeout"),
        (lambda c: c.flush(math.nan), "timeout"),
    ],
)
def test_limit_calls_raise_validation_errors(
    client: Metering, call: Callable[[Metering], Any], field: str
) -> None:
    """Was: UnicodeEncodeError, OverflowError, RecursionError, bare AssertionError, TypeError,
    ValueError, or (for a negative ttl, ttl=0, flush("soon")) silently accepted."""
    with pytest.raises(ValidationError) as info:
        call(client)
    assert info.value.field == field, info.value
    str(info.value).encode("utf-8")


def test_reservation_commit_checks_its_arguments(client: Metering) -> None:
    """Was: ValueError from dict("str"), OverflowError for a huge actual, RecursionError for a deep
    value. The reservation stays open after a refused commit, so it can still be committed."""
    r = client.reserve("u", "ai_tokens", 10)
    with pytest.raises(ValidationError) as info:
        r.commit(metadata="str")  # type: ignore[arg-type]
    assert info.value.field == "metadata"
    with pytest.raises(ValidationError) as info:
        r.commit(10**400)
    assert info.value.field == "actual"
    with pytest.raises(ValidationError) as info:
        r.commit(metadata={"k": "\ud800"})
    assert info.value.field == "metadata.k"
    assert r.commit(4).success
    assert client.check_limit("u", "ai_tokens").current == 4

    seat = client.reserve("u", "team_seats", 1)
    with pytest.raises(ValidationError) as info:
        seat.commit(value=deep_dict())
    assert info.value.field == "value"
    with pytest.raises(ValidationError) as info:
        seat.commit(value=10**400)
    assert info.value.field == "value"
    assert seat.commit(value="alice").success


def test_count_commit_is_bounded(client: Metering) -> None:
    """A count meter records one event per unit: an absurd ``actual`` is refused, not looped over
    (was: an endless loop building 1e300 events until memory ran out)."""
    r = client.reserve("u", "api_requests", 1)
    with pytest.raises(ValidationError) as info:
        r.commit(1e300)
    assert info.value.field == "actual"
    assert r.commit(3).success
    assert client.check_limit("u", "api_requests").current == 3


# --- plans, customers, configuration --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"started_at": 1}, "started_at"),
        ({"started_at": "yesterday"}, "started_at"),
        ({"started_at": datetime(2026, 1, 1)}, "started_at"),  # naive: was silently taken as local time
        ({"started_at": datetime(2027, 1, 1, tzinfo=UTC)}, "started_at"),  # in the future
    ],
)
def test_subscribe_started_at_must_be_an_aware_past_datetime(
    client: Metering, kwargs: dict[str, Any], field: str
) -> None:
    """Was: AttributeError for an int, and a naive datetime accepted as if it were local time."""
    with pytest.raises(ValidationError) as info:
        client.subscribe("u2", "free", **kwargs)
    assert info.value.field == field


@pytest.mark.parametrize(
    ("plan", "field"), [("fr\ud800ee", "plan"), (5, "plan"), (["free"], "plan"), ("\x00", "plan")]
)
def test_subscribe_plan_must_be_a_name_or_plan(client: Metering, plan: Any, field: str) -> None:
    """Was: UnicodeEncodeError from the driver for a surrogate in the plan name."""
    with pytest.raises(ValidationError) as info:
        client.subscribe("u2", plan)
    assert info.value.field == field


def test_subscribe_customer_must_be_valid_text(client: Metering) -> None:
    with pytest.raises(ValidationError) as info:
        client.subscribe("\ud800", "free")
    assert info.value.field == "customer_id"


@pytest.mark.parametrize("bad", ["\ud800", "a\x00", "", 5])
def test_current_customer_is_valid_text(bad: Any) -> None:
    """Was: a surrogate or NUL accepted, to fail later in a check."""
    with pytest.raises(ValidationError):
        metering.set_current_customer(bad)
    with pytest.raises(ValidationError), metering.current_customer(bad):
        pass


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"meters": 5}, "meters"),
        ({"meters": [5]}, "meters"),
        ({"plans": 5}, "plans"),
        ({"backend_options": 5}, "backend_options"),
        ({"backend_options": {"busy_timeout_ms": "x"}}, "busy_timeout_ms"),
        ({"strict": "yes"}, "strict"),
        ({"fail_open": "no"}, "fail_open"),
        ({"access_token": 5}, "access_token"),
        ({"access_token": "tok\ud800"}, "access_token"),
        ({"outbox_path": 5}, "outbox_path"),
        ({"base_url": 5}, "base_url"),
        ({"reservation_ttl": 10**400}, "reservation_ttl"),
        ({"reservation_ttl": 1e300}, "reservation_ttl"),
        ({"cache_ttl": 10**400}, "cache_ttl"),
        ({"stale_after": -(10**400)}, "stale_after"),
        ({"catalog": "cat\x00alog.toml"}, "catalog"),
        ({"catalog": "...:x"}, "catalog"),
        ({"config": 5}, "config"),
    ],
)
def test_client_options_raise_configuration_errors(
    tmp_path: Path, options: dict[str, Any], name: str
) -> None:
    """Was: TypeError ('int' object is not iterable), OverflowError, ValueError (embedded null
    byte), or a wrong type silently accepted."""
    url = None if "config" in options else f"sqlite:///{tmp_path / 'opts.db'}"
    with pytest.raises(ConfigurationError, match=name):
        Metering(url, **options)
    if "config" not in options:
        with pytest.raises(ConfigurationError, match=name):
            metering.init(url, **options)


@pytest.mark.parametrize("url", ["sqlite:////tmp/a\x00b.db", "polar://[::1", "sqlite://\ud800/x.db"])
def test_malformed_urls_raise_configuration_errors(url: str) -> None:
    """Was: ValueError (embedded null byte, invalid IPv6 URL) from the driver or urllib."""
    with pytest.raises(ConfigurationError, match="url"):
        Metering(url)


def test_close_and_flush_timeouts(tmp_path: Path) -> None:
    c = Metering(f"sqlite:///{tmp_path / 'c.db'}")
    with pytest.raises(ValidationError) as info:
        c.close("later")  # type: ignore[arg-type]
    assert info.value.field == "timeout"
    c.close(0.5)
    with pytest.raises(ValidationError):
        metering.shutdown("later")  # type: ignore[arg-type]


# --- catalog constructors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "words"),
    [
        (lambda: FilterClause("a", "eq", deep_dict()), "value"),
        (lambda: FilterClause("a", "eq", "x\ud800"), "value"),
        (lambda: FilterClause("a\ud800", "eq", "x"), "property"),
        (lambda: FilterClause("a\x00", "eq", "x"), "property"),
        (lambda: Aggregation("sum", "to\udcffkens"), "property"),
        (lambda: Meter("a_b", "Nam\ud800e", Filter(), Aggregation.count()), "name"),
        (lambda: Meter("a_b", "Nam\x00e", Filter(), Aggregation.count()), "name"),
        (lambda: Plan("p\ud800"), "name"),
        (lambda: Plan("p", credits={"a": 10**400}), "credits"),
        (lambda: Plan("p", credits={1: 1}), "credits"),
        (lambda: Plan("p", credits={"\ud800": 1}), "credits"),
        (lambda: Catalog(5), "meters"),  # type: ignore[arg-type]
        (lambda: Catalog(plans=5), "plans"),  # type: ignore[arg-type]
        (lambda: metering.load_catalog("a\x00b.toml"), "catalog"),
        (lambda: metering.load_catalog("...:x"), "catalog"),
        (lambda: metering.load_catalog("/"), "catalog"),
        (lambda: Filter.from_polar(deep_filter_json()), "filter"),
    ],
)
def test_catalog_constructors_raise_configuration_errors(build: Callable[[], Any], words: str) -> None:
    """Was: RecursionError from repr() of a deep value, OverflowError from math.isfinite, TypeError
    from tuple(5) or import_module, IsADirectoryError, or surrogates stored to fail at engine open."""
    with pytest.raises(ConfigurationError, match=words) as info:
        build()
    assert len(str(info.value)) < 1000


def deep_filter_json(depth: int = 5_000) -> dict[str, Any]:
    node: dict[str, Any] = {"conjunction": "and", "clauses": []}
    for _ in range(depth):
        node = {"conjunction": "and", "clauses": [node]}
    return node


def test_deeply_nested_filters_are_refused() -> None:
    """Was: RecursionError when the engine opened (to_polar and compile_filter recurse)."""
    flt = Filter()
    with pytest.raises(ConfigurationError, match="nest"):  # noqa: PT012 - the loop is what nests
        for _ in range(5_000):
            flt = Filter("and", (flt,))
    ok = Filter("and", (FilterClause("name", "eq", "deep.event"),))
    for _ in range(99):
        ok = Filter("and", (ok,))
    meter = Meter("deep", "Deep", ok, Aggregation.count())
    assert Filter.from_polar(ok.to_polar()) == ok
    # The deepest filter allowed works end to end: stored, compiled, evaluated.
    client = Metering("sqlite:///:memory:", meters=[meter])
    try:
        assert client.track_usage("u", "deep.event").success
        assert client.check_limit("u", "deep").current == 1
    finally:
        client.close()


def test_catalog_surrogates_never_reach_the_engine(tmp_path: Path) -> None:
    """Was: UnicodeEncodeError at Metering() from the meter's stored filter."""
    with pytest.raises(ConfigurationError):
        Metering(
            f"sqlite:///{tmp_path / 'x.db'}",
            meters=[Meter.for_event("a_b", "ev\ud800")],
        )


# --- testing helpers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda: ManualClock("x"), "start"),
        (lambda: ManualClock(datetime(2026, 1, 1)), "start"),
        (lambda: ManualClock(5), "start"),  # type: ignore[arg-type]
        (lambda: ManualClock("2026-01-01T00:00:00+00:00").advance(-1), "seconds"),
        (lambda: ManualClock("2026-01-01T00:00:00+00:00").advance(1e300), "seconds"),
        (lambda: ManualClock("2026-01-01T00:00:00+00:00").advance("1"), "seconds"),  # type: ignore[arg-type]
        (lambda: ManualClock("2026-01-01T00:00:00+00:00").advance(fortnights=1), "fortnights"),
        (lambda: ManualClock("2026-01-01T00:00:00+00:00").set(5), "when"),  # type: ignore[arg-type]
        (lambda: metering_for_tests(start="x"), "start"),
        (lambda: capture_events(5).__enter__(), "client"),  # type: ignore[arg-type]
    ],
)
def test_testing_helpers_raise_validation_errors(call: Callable[[], Any], field: str) -> None:
    """Was: ValueError, OverflowError, TypeError or AttributeError from inside datetime/timedelta."""
    with pytest.raises(ValidationError) as info:
        call()
    assert info.value.field == field


def test_metering_for_tests_meters_must_be_meters() -> None:
    with pytest.raises(ConfigurationError, match="meters"):
        metering_for_tests(meters=5)  # type: ignore[arg-type]


# --- async twins -----------------------------------------------------------------------------------------


def test_async_batch_of_a_non_list_is_a_validation_result(tmp_path: Path) -> None:
    """Was: TypeError from list(5) on the async path."""

    async def main() -> None:
        async with metering.AsyncMetering(f"sqlite:///{tmp_path / 'a.db'}") as c:
            result = await c.track_usage_batch(5)  # type: ignore[arg-type]
            assert not result.success and result.rejected and result.error is not None
            assert result.error.startswith("events: ")
            with pytest.raises(ValidationError) as info:
                await c.reserve("u", "ai_tokens", None)  # type: ignore[arg-type]
            assert info.value.field == "amount"
            with pytest.raises(ValidationError) as info:
                await c.subscribe("u", "free", started_at=datetime(2026, 1, 1))
            assert info.value.field == "started_at"

    asyncio.run(main())


def test_backdated_subscription_still_works(client: Metering, clock: ManualClock) -> None:
    """An aware ``started_at`` in the past anchors the periods as before."""
    client.subscribe("u3", "free", started_at=clock.now() - timedelta(days=3))
    status = client.check_limit("u3", "api_requests")
    assert status.period_start == clock.now() - timedelta(days=3)


@pytest.mark.parametrize("token", [5, None, "tok"])
def test_reset_current_customer_needs_a_token(token: Any) -> None:
    """Was: TypeError from ContextVar.reset."""
    with pytest.raises(ValidationError) as info:
        metering.reset_current_customer(token)
    assert info.value.field == "token"


def test_reset_current_customer_twice() -> None:
    """Was: RuntimeError (a token used twice)."""
    token = metering.set_current_customer("u")
    metering.reset_current_customer(token)
    with pytest.raises(ValidationError):
        metering.reset_current_customer(token)


def test_manual_clock_stays_before_the_year_9999() -> None:
    """Was: a clock at 9999-12-31 made every track fail and every check raise (the billing period
    would end in the year 10000, outside datetime's range)."""
    with pytest.raises(ValidationError) as info:
        ManualClock("9999-12-31T23:59:59+00:00")
    assert info.value.field == "start"
    clock = ManualClock("9998-12-31T00:00:00+00:00")
    with pytest.raises(ValidationError):
        clock.advance(days=1)
    client, _ = metering_for_tests(start="9998-12-31T00:00:00+00:00")
    try:
        assert client.track_api_request("u", "/x").success
        assert client.check_limit("u", "api_requests").current == 1
    finally:
        client.close()


def test_nul_in_a_customer_id_is_refused_before_postgresql_sees_it(postgresql_url: str) -> None:
    """Was: PostgreSQL refused the NUL and the check failed open (allowed, usage unknown)."""
    client = Metering(postgresql_url, plans=PLANS)
    try:
        with pytest.raises(ValidationError) as info:
            client.check_limit("u\x00", "api_requests")
        assert info.value.field == "customer_id"
        result = client.track_usage("u\x00", "api.request")
        assert result.error == "customer_id: must not contain NUL characters"
    finally:
        client.close()


def test_a_sum_past_the_double_range_reads_infinity(client: Metering) -> None:
    """Each value is in range, their sum is not: the engine keeps answering (Polar's SQL sum would
    fail with an overflow; see docs/semantics.md)."""
    for _ in range(2):
        assert client.track_usage("u", "ai.tokens", {"tokens": int(sys.float_info.max)}).success
    status = client.check_limit("u", "ai_tokens")
    assert status.current == math.inf and not status.allowed
    assert status.reason is not None


def test_emulator_answers_422_for_a_filter_the_catalog_refuses() -> None:
    """The catalog's depth bound applies to meters created through the emulator too: a 422 naming
    the filter (was a 500 once the bound existed), while a deep but allowed filter is created."""
    import httpx

    from polar_metering.emulator import running_emulator

    def nested(depth: int) -> dict[str, Any]:
        node: dict[str, Any] = {
            "conjunction": "and",
            "clauses": [{"property": "name", "operator": "eq", "value": "x"}],
        }
        for _ in range(depth):
            node = {"conjunction": "and", "clauses": [node]}
        return node

    with running_emulator() as emu:
        headers = {"Authorization": f"Bearer {emu.token}"}
        ok = httpx.post(
            f"{emu.base_url}/v1/meters/",
            json={"name": "Deep but fine", "filter": nested(40), "aggregation": {"func": "count"}},
            headers=headers,
        )
        assert ok.status_code == 201, ok.text
        refused = httpx.post(
            f"{emu.base_url}/v1/meters/",
            json={"name": "Too deep", "filter": nested(100), "aggregation": {"func": "count"}},
            headers=headers,
        )
        assert refused.status_code == 422, refused.text
        assert refused.json()["detail"][0]["loc"] == ["body", "filter"]
