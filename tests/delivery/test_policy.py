"""The sans-I/O delivery core: batch planning, backoff, token bucket, failure classification, 422 plans,
and DeliveryConfig validation."""

from __future__ import annotations

import dataclasses

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from polar_metering._exceptions import (
    AuthenticationError,
    BackendError,
    BackendUnavailable,
    ConfigurationError,
    NotFound,
    RateLimited,
    RemoteValidationError,
)
from polar_metering.delivery import DeliveryConfig
from polar_metering.delivery._policy import (
    Failure,
    backoff_delay,
    body_bytes,
    classify,
    describe_errors,
    errors_by_index,
    is_clock_skew,
    plan_batch,
    settle_refused,
    settle_rejection,
    settle_too_large,
    take_token,
)

SKEW = "Value error, Timestamp must be in the past."


def future_timestamp_errors(i: int) -> list[dict[str, object]]:
    """The three errors Polar returns for one event with a future timestamp: ``is_past_timestamp`` in
    server/polar/event/schemas.py fails, once per branch of the ``EventCreate`` union."""
    return [
        {
            "type": "value_error",
            "loc": ["body", "events", i, "EventCreateCustomer", "timestamp"],
            "msg": SKEW,
        },
        {
            "type": "missing",
            "loc": ["body", "events", i, "EventCreateCustomer", "customer_id"],
            "msg": "Field required",
        },
        {
            "type": "value_error",
            "loc": ["body", "events", i, "EventCreateExternalCustomer", "timestamp"],
            "msg": SKEW,
        },
    ]


def bad_name_error(i: int) -> dict[str, object]:
    return {
        "type": "string_too_long",
        "loc": ["body", "events", i, "EventCreateExternalCustomer", "name"],
        "msg": "String should have at most 128 characters",
    }


# -- batch planning ---------------------------------------------------------------------------------------
def test_body_bytes_matches_the_compact_json_body() -> None:
    """body_bytes predicts the exact size of {"events": [...]} encoded compactly."""
    events = [{"name": "a", "external_id": str(i), "metadata": {"k": "é" * i}} for i in range(7)]
    sizes = [len(orjson.dumps(e)) for e in events]
    assert body_bytes(sizes) == len(orjson.dumps({"events": events}))
    assert body_bytes([]) == len(orjson.dumps({"events": []}))


@given(
    sizes=st.lists(st.integers(min_value=1, max_value=5000), max_size=60),
    max_events=st.integers(min_value=1, max_value=50),
    max_bytes=st.integers(min_value=5014, max_value=40_000),
)
def test_plan_batch_is_the_longest_prefix_within_both_limits(
    sizes: list[int], max_events: int, max_bytes: int
) -> None:
    """A planned batch never exceeds the count or byte limit, and could not take one more event."""
    n = plan_batch(sizes, max_events=max_events, max_bytes=max_bytes)
    if not sizes:
        assert n == 0
        return
    assert 1 <= n <= max_events
    assert body_bytes(sizes[:n]) <= max_bytes
    if n < min(len(sizes), max_events):
        assert body_bytes(sizes[: n + 1]) > max_bytes


def test_plan_batch_sends_a_lone_oversized_event_alone() -> None:
    """An event bigger than the byte limit still goes, alone (enqueue keeps such events out)."""
    assert plan_batch([900, 10, 10], max_events=10, max_bytes=500) == 1


# -- backoff -------------------------------------------------------------------------------------------------
def test_backoff_is_full_jitter_under_an_exponential_cap() -> None:
    """The delay spans [0, min(cap, base*2**(n-1))] as rand spans [0, 1)."""
    assert backoff_delay(1, base=0.5, cap=60, rand=0.0) == 0.0
    assert backoff_delay(1, base=0.5, cap=60, rand=0.999) == pytest.approx(0.4995)
    assert backoff_delay(4, base=0.5, cap=60, rand=0.5) == pytest.approx(2.0)
    assert backoff_delay(30, base=0.5, cap=60, rand=0.999) == pytest.approx(59.94)
    assert backoff_delay(10_000, base=0.5, cap=60, rand=0.5) == pytest.approx(30.0)


def test_retry_after_is_a_floor_even_above_the_cap() -> None:
    """Retry-After raises the delay to at least its value, past max_backoff, up to max_retry_after."""
    assert backoff_delay(1, base=0.5, cap=10, rand=0.9, retry_after=60) == 60
    assert backoff_delay(8, base=0.5, cap=100, rand=0.99, retry_after=1) == pytest.approx(63.36)
    assert backoff_delay(1, base=0.5, cap=10, rand=0.0, retry_after=5000, max_retry_after=900) == 900
    assert backoff_delay(1, base=0.5, cap=10, rand=0.0, retry_after=None) == 0.0


# -- token bucket --------------------------------------------------------------------------------------------
def test_token_bucket_allows_a_burst_then_paces() -> None:
    """After ``burst`` requests the bucket says how long until the next token."""
    tokens, stamp = 3.0, 100.0
    for _ in range(3):
        tokens, stamp, wait = take_token(tokens, stamp, 100.0, rate=2.0, burst=3)
        assert wait == 0
    tokens, stamp, wait = take_token(tokens, stamp, 100.0, rate=2.0, burst=3)
    assert wait == pytest.approx(0.5)
    tokens, stamp, wait = take_token(tokens, stamp, 100.5, rate=2.0, burst=3)
    assert wait == 0


def test_token_bucket_ignores_a_clock_that_went_back() -> None:
    """A wall clock stepping backwards refills nothing and never yields a negative wait."""
    tokens, _stamp, wait = take_token(0.0, 500.0, 400.0, rate=1.0, burst=5)
    assert (tokens, wait) == (0.0, 1.0)


@given(gaps=st.lists(st.floats(min_value=0, max_value=3), min_size=1, max_size=300))
def test_token_bucket_never_exceeds_burst_plus_rate_in_any_window(gaps: list[float]) -> None:
    """Whatever the arrival pattern, any 60 s window holds at most burst + 60*rate granted requests."""
    rate, burst = 5 / 60, 3
    tokens, stamp, now = float(burst), 0.0, 0.0
    granted: list[float] = []
    for gap in gaps:
        now += gap
        tokens, stamp, wait = take_token(tokens, stamp, now, rate=rate, burst=burst)
        if wait == 0:
            granted.append(now)
    for i, start in enumerate(granted):
        in_window = [t for t in granted[i:] if t < start + 60]
        assert len(in_window) <= burst + 5 + 1e-9


# -- classification ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (AuthenticationError("401", status_code=401), Failure.AUTH),
        (BackendError("forbidden", status_code=403), Failure.AUTH),
        (RateLimited("429", retry_after=60), Failure.RATE_LIMITED),
        (BackendUnavailable("502", status_code=502), Failure.RETRY),
        (BackendUnavailable("connection reset"), Failure.RETRY),
        (BackendError("gateway", status_code=504), Failure.RETRY),
        (BackendError("timeout", status_code=408), Failure.RETRY),
        (RemoteValidationError("422", detail=[]), Failure.REJECTED),
        (BackendError("too large", status_code=413), Failure.TOO_LARGE),
        (NotFound("404", status_code=404), Failure.REFUSED),
        (TypeError("bug in a transport"), Failure.REFUSED),
    ],
)
def test_classify(exc: Exception, kind: Failure) -> None:
    """Each transport error maps to what the sender does about it."""
    assert classify(exc) is kind


# -- reading a 422 -------------------------------------------------------------------------------------------
def test_errors_are_grouped_by_event_index() -> None:
    """loc ["body","events",i,...] assigns an error to event i; anything else is stray."""
    detail = [
        bad_name_error(2),
        *future_timestamp_errors(0),
        {"loc": ["body"], "msg": "x"},
        bad_name_error(9),
    ]
    per_index, stray = errors_by_index(detail, 5)
    assert sorted(per_index) == [0, 2]
    assert len(per_index[0]) == 3
    assert [e["msg"] for e in stray] == ["x", "String should have at most 128 characters"]


def test_clock_skew_is_recognised_through_the_union_noise() -> None:
    """A future timestamp's three errors (one a missing customer_id from the other union branch) are
    clock skew; a real error next to it is not."""
    assert is_clock_skew(future_timestamp_errors(0))
    assert not is_clock_skew([*future_timestamp_errors(0), bad_name_error(0)])
    assert not is_clock_skew([bad_name_error(0)])
    assert describe_errors(future_timestamp_errors(0)) == f"timestamp: {SKEW}"
    assert describe_errors([bad_name_error(3)]) == "name: String should have at most 128 characters"


def test_rejection_plan_splits_good_bad_and_skewed() -> None:
    """Unnamed events are released, named ones dead-lettered with their reason, skewed ones retried."""
    detail = [bad_name_error(1), *future_timestamp_errors(3)]
    plan = settle_rejection(detail, [0, 0, 0, 0, 0], max_rejections=3, skew_delays=[5.0] * 5)
    assert plan.release == [0, 2, 4]
    assert [(i, reason) for i, reason, _ in plan.dead] == [
        (1, "name: String should have at most 128 characters")
    ]
    assert plan.dead[0][2] == [bad_name_error(1)]
    assert plan.retry == [(3, 5.0)]
    assert plan.split is None


def test_skew_retries_are_bounded() -> None:
    """A skewed event at its last allowed strike is dead-lettered, with a hint about the clock; the
    skew delay is at least a second."""
    plan = settle_rejection(future_timestamp_errors(0), [2], max_rejections=3, skew_delays=[0.01])
    assert plan.retry == []
    assert "check the clock" in plan.dead[0][1]
    plan = settle_rejection(future_timestamp_errors(0), [1], max_rejections=3, skew_delays=[0.01])
    assert plan.retry == [(0, 1.0)]


def test_unattributed_rejection_halves_the_batch() -> None:
    """Errors that name no event release the batch and halve it; a lone event is dead-lettered."""
    plan = settle_rejection(
        [{"loc": ["body"], "msg": "bad"}], [0] * 9, max_rejections=3, skew_delays=[1.0] * 9
    )
    assert plan.release == list(range(9))
    assert plan.split == 4
    plan = settle_rejection([{"loc": ["body"], "msg": "bad"}], [0], max_rejections=3, skew_delays=[1.0])
    assert [reason for _, reason, _ in plan.dead] == ["body: bad"]


def test_too_large_and_refused_plans() -> None:
    """413 halves (a lone event is dead); other refusals strike each event until max_rejections."""
    assert settle_too_large(10).split == 5
    assert settle_too_large(1).dead[0][0] == 0
    plan = settle_refused([0, 2, 1], "NotFound: 404", max_rejections=3, delay=4.0)
    assert plan.retry == [(0, 4.0), (2, 4.0)]
    assert plan.dead == [(1, "NotFound: 404 (after 3 attempts)", [])]


# -- configuration -------------------------------------------------------------------------------------------
def test_config_defaults_stay_under_polar_limits(tmp_path: object) -> None:
    """Default rates are 80% of Polar's per-environment limit (``_PRODUCTION_RULES`` and
    ``_SANDBOX_RULES`` in server/polar/rate_limit.py)."""
    assert DeliveryConfig().rate_limit_per_minute == 400
    assert DeliveryConfig(environment="sandbox").rate_limit_per_minute == 80
    assert DeliveryConfig().requests_per_second == pytest.approx(400 / 60)
    with pytest.raises(dataclasses.FrozenInstanceError):
        DeliveryConfig().batch_max_events = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"batch_max_events": 0}, "batch_max_events"),
        ({"max_in_flight": 0}, "max_in_flight"),
        ({"max_in_flight": 17}, "max_in_flight"),
        ({"max_in_flight": True}, "max_in_flight"),
        ({"max_in_flight": 2.0}, "max_in_flight"),
        ({"batch_max_events": 1.5}, "batch_max_events"),
        ({"batch_max_bytes": 11 * 1024 * 1024}, "batch_max_bytes"),
        ({"batch_max_age": -1}, "batch_max_age"),
        ({"rate_limit_per_minute": 495}, "rate_limit_per_minute"),
        ({"environment": "sandbox", "rate_limit_per_minute": 100}, "rate_limit_per_minute"),
        ({"environment": None}, "rate_limit_per_minute"),
        ({"environment": "staging"}, "environment"),
        ({"rate_limit_per_minute": 0}, "rate_limit_per_minute"),
        ({"max_backoff": 0.1}, "max_backoff"),
        ({"lease_seconds": 0}, "lease_seconds"),
        ({"max_outbox_bytes": 10}, "max_outbox_bytes"),
        ({"commit_interval": float("nan")}, "commit_interval"),
        ({"synchronous": "OFF"}, "synchronous"),
        ({"path": ":memory:"}, "path"),
        ({"durable": "yes"}, "durable"),
        ({"max_rejections": 0}, "max_rejections"),
    ],
)
def test_config_errors_name_the_field(options: dict[str, object], field: str) -> None:
    """A bad option raises ConfigurationError whose message starts with the field's name."""
    with pytest.raises(ConfigurationError) as info:
        DeliveryConfig(**options)  # type: ignore[arg-type]
    assert str(info.value).startswith(f"{field}:")


def test_config_fields_are_keyword_only() -> None:
    """Positional arguments are refused."""
    with pytest.raises(TypeError):
        DeliveryConfig("outbox.db")  # type: ignore[misc]
