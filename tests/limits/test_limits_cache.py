"""The reading cache and its policy with a manual clock: TTL, LRU, invalidation, stale-while-error,
back-off after failures, fail-open and fail-closed."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence

import pytest
from limits_helpers import CATALOG, METERS, ScriptedPolar, event

from polar_metering import ManualClock, Meter, MeterReading
from polar_metering._exceptions import AuthenticationError, BackendUnavailable, RateLimited
from polar_metering._limits import ERROR_BACKOFF, Limits, ReadingCache
from polar_metering.backends._base import IngestResult

API = METERS["api_requests"]


def make(
    clock: ManualClock,
    *,
    ttl: float = 5.0,
    stale_after: float = 300.0,
    size: int = 100,
    fail_open: bool = False,
) -> Limits:
    return Limits(CATALOG, clock, ttl=ttl, stale_after=stale_after, size=size, fail_open=fail_open)


def test_fresh_within_ttl_then_fetched_again(clock: ManualClock) -> None:
    """Within the TTL a reading comes from memory; once it has passed, Polar is asked again."""
    polar, limits = ScriptedPolar(), make(clock, ttl=5)
    polar.set("u", "api_requests", 3, 10, 1.0)
    assert limits.reading("u", API, polar.fetch).consumed == 3
    polar.set("u", "api_requests", 4, 10, 2.0)
    clock.advance(4.9)
    assert limits.reading("u", API, polar.fetch).consumed == 3
    assert limits.peek("u", API) is not None
    assert polar.calls == 1
    clock.advance(0.1)
    assert limits.peek("u", API) is None
    assert limits.reading("u", API, polar.fetch).consumed == 4
    assert polar.calls == 2
    stats = limits.cache.stats()
    assert (stats.hits, stats.misses) == (1, 2)


def test_zero_ttl_always_asks(clock: ManualClock) -> None:
    """cache_ttl=0 turns caching off for checks (every check asks Polar)."""
    polar, limits = ScriptedPolar(), make(clock, ttl=0)
    for _ in range(3):
        limits.reading("u", API, polar.fetch)
    assert polar.calls == 3
    assert limits.peek("u", API) is None


def test_lru_bound_evicts_least_recently_used(clock: ManualClock) -> None:
    """At most ``size`` readings are kept; the one used least recently goes first."""
    polar, limits = ScriptedPolar(), make(clock, size=3)
    for customer in ("a", "b", "c"):
        limits.reading(customer, API, polar.fetch)
    limits.reading("a", API, polar.fetch)  # a is now the most recently used
    limits.reading("d", API, polar.fetch)  # evicts b
    assert len(limits.cache) == 3
    calls = polar.calls
    limits.reading("a", API, polar.fetch)
    limits.reading("c", API, polar.fetch)
    assert polar.calls == calls
    limits.reading("b", API, polar.fetch)
    assert polar.calls == calls + 1
    assert limits.cache.stats().evictions == 2


def test_invalidate_by_customer_and_by_meter(clock: ManualClock) -> None:
    """Invalidation makes only the named entries ask Polar again."""
    polar, limits = ScriptedPolar(), make(clock)
    tokens = METERS["ai_tokens"]
    for customer in ("a", "b"):
        limits.readings(customer, [API, tokens], polar.fetch)
    assert polar.calls == 2
    assert limits.invalidate("a", "ai_tokens") == 1
    limits.reading("a", API, polar.fetch)
    assert polar.calls == 2
    limits.reading("a", tokens, polar.fetch)
    assert polar.calls == 3
    assert limits.invalidate("b") == 2
    limits.reading("b", API, polar.fetch)
    limits.reading("b", tokens, polar.fetch)
    assert polar.calls == 5
    assert limits.invalidate() == 4
    assert limits.peek("a", API) is None


def test_an_older_reading_never_replaces_a_newer_one(clock: ManualClock) -> None:
    """Polar's rows only move forward: a response with an earlier modified_at keeps the later reading."""
    cache = ReadingCache(ttl=5, stale_after=60, size=10, monotonic=clock.monotonic)
    cache.put(MeterReading("api_requests", "u", 7, 10), 200.0)
    kept = cache.put(MeterReading("api_requests", "u", 5, 10), 100.0)
    assert (kept.reading.consumed, kept.modified_at) == (7, 200.0)
    assert cache.put(MeterReading("api_requests", "u", 9, 10), 300.0).reading.consumed == 9


def test_stale_while_error_then_fail(clock: ManualClock) -> None:
    """When Polar fails, a reading up to stale_after old answers (marked stale) and Polar is not asked
    again during the back-off; past stale_after the error surfaces."""
    polar, limits = ScriptedPolar(), make(clock, ttl=5, stale_after=60)
    polar.set("u", "api_requests", 8, 10, 1.0)
    limits.reading("u", API, polar.fetch)
    clock.advance(10)
    polar.error = BackendUnavailable("cannot reach Polar")
    reading, stale = limits.read("u", API, polar.fetch)
    assert (reading.consumed, reading.credited, stale) == (8, 10, True)
    calls = polar.calls
    clock.advance(ERROR_BACKOFF / 2)
    assert limits.read("u", API, polar.fetch)[1] is True
    assert polar.calls == calls, "no new request during the back-off"
    clock.advance(60)
    with pytest.raises(BackendUnavailable):
        limits.reading("u", API, polar.fetch)
    polar.error = None
    clock.advance(ERROR_BACKOFF)
    reading, stale = limits.read("u", API, polar.fetch)
    assert (reading.consumed, stale) == (8, False)


def test_rate_limit_retry_after_is_honoured(clock: ManualClock) -> None:
    """After a 429 with Retry-After, Polar is not asked again before that many seconds."""
    polar, limits = ScriptedPolar(), make(clock, ttl=1)
    limits.reading("u", API, polar.fetch)
    clock.advance(2)
    polar.error = RateLimited("429", retry_after=30)
    assert limits.read("u", API, polar.fetch)[1] is True
    polar.error = None
    clock.advance(29)
    assert limits.read("u", API, polar.fetch)[1] is True
    assert polar.calls == 2
    clock.advance(1)
    assert limits.read("u", API, polar.fetch)[1] is False
    assert polar.calls == 3


def test_errors_that_retrying_cannot_fix_are_not_masked(clock: ManualClock) -> None:
    """A rejected token raises even when a stale reading exists: it needs fixing, not waiting out."""
    polar, limits = ScriptedPolar(), make(clock, ttl=1)
    limits.reading("u", API, polar.fetch)
    clock.advance(2)
    polar.error = AuthenticationError("token rejected", status_code=401)
    with pytest.raises(AuthenticationError):
        limits.reading("u", API, polar.fetch)


def test_fail_closed_raises_and_fail_open_allows_holds(
    clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    """With no usable reading, fail-closed raises the backend error (checks and holds alike);
    fail-open grants the hold against this process's own usage and logs it."""
    polar = ScriptedPolar()
    polar.error = BackendUnavailable("down")
    closed = make(clock, fail_open=False)
    with pytest.raises(BackendUnavailable):
        closed.reading("u", API, polar.fetch)
    with pytest.raises(BackendUnavailable):
        closed.hold("u", API, 1, 60, polar.fetch)
    assert closed.holds.active("u", "api_requests") == 0
    opened = make(clock, fail_open=True)
    with caplog.at_level(logging.WARNING, logger="polar_metering"):
        hold, reading = opened.hold("u", API, 1, 60, polar.fetch)
    assert hold is not None
    assert reading.credited is None
    assert "fail-open" in caplog.text
    assert opened.holds.active("u", "api_requests") == 1


def test_checks_and_holds_see_tracked_usage_without_refetching(clock: ManualClock) -> None:
    """Tracked usage counts at once (the overlay) and holds count while active; neither needs Polar."""
    polar, limits = ScriptedPolar(), make(clock)
    polar.set("u", "api_requests", 5, 10, 1.0)
    limits.reading("u", API, polar.fetch)
    limits.track([event("u", "api.request") for _ in range(3)], lambda evs: IngestResult(len(evs)))
    assert limits.reading("u", API, polar.fetch).consumed == 8
    hold, reading = limits.hold("u", API, 2, 60, polar.fetch)
    assert hold is not None
    assert reading.consumed == 8
    assert limits.reading("u", API, polar.fetch).reserved == 2
    refused, at = limits.hold("u", API, 1, 60, polar.fetch)
    assert refused is None
    assert (at.consumed, at.reserved) == (8, 2)
    limits.settle(hold, [event("u", "api.request")], lambda evs: IngestResult(len(evs)))
    after = limits.reading("u", API, polar.fetch)
    assert (after.consumed, after.reserved) == (9, 0)
    assert polar.calls == 1


def test_threads_that_miss_together_share_one_request(clock: ManualClock) -> None:
    """Eight threads missing the same customer at once send one request and all use its answer."""
    polar, limits = ScriptedPolar(), make(clock)
    polar.set("u", "api_requests", 4, 10, 1.0)
    gate = threading.Event()

    def slow(customer: str, meters: Sequence[Meter]) -> Mapping[str, tuple[MeterReading, float | None]]:
        gate.wait(10)
        return polar.fetch(customer, meters)

    seen: list[float] = []
    threads = [
        threading.Thread(target=lambda: seen.append(limits.reading("u", API, slow).consumed))
        for _ in range(8)
    ]
    for t in threads:
        t.start()
    time.sleep(0.2)  # let every thread reach the cache miss before Polar answers
    gate.set()
    for t in threads:
        t.join(10)
    assert seen == [4] * 8
    assert polar.calls == 1
    assert limits.cache.stats().misses == 1
