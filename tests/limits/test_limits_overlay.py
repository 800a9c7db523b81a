"""The usage overlay (per aggregation, the settle rule, horizons) and the hold ledger, on a manual clock."""

from __future__ import annotations

import threading

import pytest
from limits_helpers import CATALOG, METERS, ScriptedPolar, event

from polar_metering import Aggregation, Filter, ManualClock, Meter
from polar_metering._limits import HoldLedger, Limits, MarkingTransport, UsageOverlay
from polar_metering.backends._base import IngestResult


def overlay(clock: ManualClock, **options: float) -> UsageOverlay:
    return UsageOverlay(CATALOG.meters, monotonic=clock.monotonic, **options)  # type: ignore[arg-type]


def test_each_aggregation_combines_its_own_way(clock: ManualClock) -> None:
    """count adds events, sum adds values, max keeps the largest, unique counts distinct new values."""
    ov = overlay(clock)
    ov.track([event("u", "api.request"), event("u", "api.request")])
    ov.track([event("u", "ai.tokens", {"tokens": 1500}), event("u", "ai.tokens", {"tokens": 500})])
    ov.track([event("u", "storage.update", {"size_gb": 2.5}), event("u", "storage.update", {"size_gb": 1.0})])
    ov.track([event("u", "seat.active", {"user_id": s}) for s in ("ann", "bob", "ann")])
    assert ov.extra("u", "api_requests") == 2
    assert ov.extra("u", "ai_tokens") == 2000
    assert ov.extra("u", "storage_gb") == 2.5
    assert ov.extra("u", "team_seats") == 2
    assert ov.extra("other", "api_requests") is None


def test_only_matching_numeric_usage_counts(clock: ManualClock) -> None:
    """Polar's rules (server/polar/meter/filter.py, server/polar/meter/aggregation.py): other event
    names do not match; a sum takes JSON numbers only."""
    meters = [
        Meter("paid_calls", "Paid calls", Filter.event("api.request", tier="paid"), Aggregation.count()),
        Meter("bytes", "Bytes sent", Filter.event("upload"), Aggregation.sum("bytes")),
        Meter("latency", "Average latency", Filter.event("api.request"), Aggregation.avg("ms")),
    ]
    ov = UsageOverlay(meters, monotonic=clock.monotonic)
    ov.track(
        [
            event("u", "api.request", {"tier": "paid"}),
            event("u", "api.request", {"tier": "free"}),
            event("u", "upload", {"bytes": 10}),
            event("u", "upload", {"bytes": "10"}),
            event("u", "upload", {"bytes": True}),
            event("u", "api.request", {"ms": 5}),
        ]
    )
    assert ov.extra("u", "paid_calls") == 1
    assert ov.extra("u", "bytes") == 10
    assert ov.extra("u", "latency") is None, "avg meters are not overlaid"


def test_settle_rule_needs_delivery_before_modified_at(clock: ManualClock) -> None:
    """An entry leaves only once this process saw it delivered, in a request that started no later
    than the reading's modified_at."""
    ov = overlay(clock)
    first = [event("u", "api.request") for _ in range(3)]
    second = [event("u", "api.request") for _ in range(2)]
    ov.track(first + second)
    assert ov.settle("u", "api_requests", modified_at=10_000.0) == 0, "nothing delivered yet"
    assert ov.extra("u", "api_requests") == 5
    assert ov.sent([e.external_id for e in first], 100.0) == 3
    assert ov.sent([e.external_id for e in second], 200.0) == 2
    assert ov.settle("u", "api_requests", modified_at=99.0) == 0
    assert ov.extra("u", "api_requests") == 5
    assert ov.settle("u", "api_requests", modified_at=150.0) == 1
    assert ov.extra("u", "api_requests") == 2
    assert ov.settle("u", "api_requests", modified_at=None) == 0
    assert ov.settle("u", "api_requests", modified_at=200.0) == 1
    assert ov.extra("u", "api_requests") is None


def test_settle_margin_waits_for_skew(clock: ManualClock) -> None:
    """With a margin, a delivery counts as settled only if modified_at is later by at least the margin."""
    ov = overlay(clock, settle_margin=2.0)
    e = event("u", "ai.tokens", {"tokens": 7})
    ov.track([e])
    ov.sent([e.external_id], 100.0)
    ov.settle("u", "ai_tokens", 101.0)
    assert ov.extra("u", "ai_tokens") == 7
    ov.settle("u", "ai_tokens", 102.0)
    assert ov.extra("u", "ai_tokens") is None


def test_horizons_drop_entries(clock: ManualClock) -> None:
    """Unconfirmed entries go after unconfirmed_horizon, delivered ones after settle_horizon."""
    ov = overlay(clock, unconfirmed_horizon=60, settle_horizon=600)
    queued, delivered = event("u", "api.request"), event("u", "api.request")
    ov.track([queued, delivered])
    ov.sent([delivered.external_id], 1.0)
    clock.advance(59)
    assert ov.extra("u", "api_requests") == 2
    clock.advance(1)
    assert ov.extra("u", "api_requests") == 1
    assert ov.sent([queued.external_id], 2.0) == 0, "an expired entry is gone for good"
    clock.advance(539)
    assert ov.extra("u", "api_requests") == 1
    clock.advance(1)
    assert ov.extra("u", "api_requests") is None
    assert len(ov) == 0


def test_a_repeated_external_id_counts_once(clock: ManualClock) -> None:
    """Polar keeps the first event with an external_id (``insert_batch`` in
    server/polar/event/repository.py); the overlay does the same."""
    ov = overlay(clock)
    assert len(ov.track([event("u", "api.request", external_id="req-1")])) == 1
    assert ov.track([event("u", "api.request", external_id="req-1")]) == []
    assert ov.extra("u", "api_requests") == 1


def test_failed_ingest_removes_its_entries(clock: ManualClock) -> None:
    """If the outbox refuses the events, they are taken back out of the overlay."""
    limits = Limits(CATALOG, clock, ttl=5, stale_after=60, size=10, fail_open=False)
    limits.track([event("u", "api.request", external_id="kept")], lambda evs: IngestResult(1))

    def refuse(evs: object) -> IngestResult:
        raise OSError("disk full")

    with pytest.raises(OSError):
        limits.track([event("u", "api.request", external_id="kept"), event("u", "api.request")], refuse)
    assert limits.overlay.extra("u", "api_requests") == 1, "only the refused batch's new entry left"


def test_unique_values_known_to_be_counted(clock: ManualClock) -> None:
    """A seat that settled is known to be counted: seen again, it adds nothing; a reset forgets it."""
    ov = overlay(clock)
    ann = event("u", "seat.active", {"user_id": "ann"})
    ov.track([ann])
    assert ov.is_counted("u", "team_seats", "ann")
    assert not ov.is_counted("u", "team_seats", "bob")
    ov.sent([ann.external_id], 10.0)
    ov.settle("u", "team_seats", 20.0, consumed=1.0)
    assert ov.extra("u", "team_seats") is None
    ov.track([event("u", "seat.active", {"user_id": "ann"}), event("u", "seat.active", {"user_id": "bob"})])
    assert ov.extra("u", "team_seats") == 1, "ann is already counted by Polar; bob is new"
    assert ov.is_counted("u", "team_seats", "ann")
    # the period reset (reset_meter in server/polar/subscription/service.py)
    ov.settle("u", "team_seats", 30.0, consumed=0.0)
    assert ov.extra("u", "team_seats") == 2


def test_marking_transport_reports_the_request_start(clock: ManualClock) -> None:
    """The delivery hook reports the ids of a successful batch with the time its request started, and
    nothing for a failed one."""
    ov = overlay(clock)
    e = event("u", "api.request")
    ov.track([e])
    ticks = iter([100.0, 200.0])

    class Inner:
        fail = True

        def send(self, events: list[dict[str, object]]) -> str:
            if self.fail:
                raise ConnectionError("down")
            return "sent"

    inner = Inner()
    transport = MarkingTransport(inner, ov.sent, lambda: next(ticks))
    with pytest.raises(ConnectionError):
        transport.send([e.to_polar()])
    ov.settle("u", "api_requests", 1_000.0)
    assert ov.extra("u", "api_requests") == 1
    inner.fail = False
    assert transport.send([e.to_polar()]) == "sent"
    ov.settle("u", "api_requests", 199.0)
    assert ov.extra("u", "api_requests") == 1, "the successful request started at 200"
    ov.settle("u", "api_requests", 200.0)
    assert ov.extra("u", "api_requests") is None


def test_hold_ledger_sums_or_peaks_and_expires(clock: ManualClock) -> None:
    """Holds add up on additive meters, the largest counts on max meters, and they end at their TTL."""
    ledger = HoldLedger(clock.monotonic)
    ledger.add("h1", "u", "ai_tokens", 100, ttl=10)
    ledger.add("h2", "u", "ai_tokens", 50, ttl=20)
    assert ledger.reserved("u", "ai_tokens", "sum") == 150
    assert ledger.reserved("u", "ai_tokens", "max") == 100
    clock.advance(10)
    assert ledger.reserved("u", "ai_tokens", "sum") == 50
    assert ledger.remove("h2") is True
    assert ledger.remove("h2") is False
    assert ledger.reserved("u", "ai_tokens", "sum") == 0
    with pytest.raises(ValueError, match="ttl"):
        ledger.add("h3", "u", "ai_tokens", 1, ttl=0)


def test_threads_never_hold_more_than_the_limit(clock: ManualClock) -> None:
    """16 threads reserve 1 unit at a time against a limit of 100 on the core: exactly 100 granted."""
    polar = ScriptedPolar()
    polar.set("u", "api_requests", 0, 100, 1.0)
    limits = Limits(CATALOG, clock, ttl=60, stale_after=60, size=10, fail_open=False)
    granted: list[int] = []
    start = threading.Barrier(16)

    def worker() -> None:
        start.wait()
        mine = 0
        while True:
            hold, _ = limits.hold("u", METERS["api_requests"], 1, 60, polar.fetch)
            if hold is None:
                break
            limits.settle(hold, [event("u", "api.request")], lambda evs: IngestResult(len(evs)))
            mine += 1
        granted.append(mine)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(granted) == 100
    assert limits.reading("u", METERS["api_requests"], polar.fetch).consumed == 100


def test_readings_follow_the_overlay_after_a_key_is_forgotten(clock: ManualClock) -> None:
    """Composed readings are reused while nothing changes; a key that expired, was swept away and came
    back is recomposed, never confused with its earlier self."""
    polar = ScriptedPolar()
    polar.set("u", "ai_tokens", 100, 1000, 1.0)
    limits = Limits(
        CATALOG, clock, ttl=10_000, stale_after=10_000, size=10, fail_open=False, unconfirmed_horizon=60
    )
    tokens = METERS["ai_tokens"]
    ingest = lambda evs: IngestResult(len(evs))  # noqa: E731
    limits.track([event("u", "ai.tokens", {"tokens": 5})], ingest)
    first = limits.reading("u", tokens, polar.fetch)
    assert first.consumed == 105
    assert limits.reading("u", tokens, polar.fetch) is first
    clock.advance(61)
    assert limits.reading("u", tokens, polar.fetch).consumed == 100
    limits.track([event("other", "ai.tokens", {"tokens": 1})], ingest)  # the periodic sweep forgets "u"
    limits.track([event("u", "ai.tokens", {"tokens": 7})], ingest)
    assert limits.reading("u", tokens, polar.fetch).consumed == 107
    limits.track([event("u", "ai.tokens", {"tokens": 1})], ingest)
    assert limits.reading("u", tokens, polar.fetch).consumed == 108
