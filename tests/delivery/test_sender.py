"""The sender: exactly-once delivery, retries and backoff, 429, 422 splitting, clock skew, 401, batch and
rate limits. Deterministic cases drive ``sender.step()`` with a manual clock; the rest run real threads
against a real SQLite file."""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from delivery_helpers import T0, ScriptedTransport, drive, fast_config, make_events

from polar_metering._clock import ManualClock
from polar_metering._events import validate_event
from polar_metering._exceptions import (
    AuthenticationError,
    BackendError,
    BackendUnavailable,
    NotFound,
    RateLimited,
    RemoteValidationError,
)
from polar_metering.delivery import AsyncOutbox, Outbox, SendResult

SKEW = "Value error, Timestamp must be in the past."


def manual(
    tmp_path: Path, transport: ScriptedTransport, *, rand: float = 0.5, **options: Any
) -> tuple[Outbox, ManualClock]:
    """An outbox with no threads and a manual clock: the test drives the sender."""
    clock = ManualClock(T0)
    transport.clock = clock
    config = fast_config(tmp_path / "outbox.db", **{"batch_max_age": 0.0, **options})
    return Outbox(config, transport, clock=clock, rand=lambda: rand, background=False), clock


def ids(count: int, prefix: str = "ev") -> list[str]:
    return [f"{prefix}-{i}" for i in range(count)]


def gaps(transport: ScriptedTransport) -> list[float]:
    times = [at for at, _ in transport.calls]
    return [b - a for a, b in itertools.pairwise(times)]


def rejection(*entries: dict[str, Any]) -> RemoteValidationError:
    return RemoteValidationError("422", detail=list(entries))


def bad_name(i: int) -> dict[str, Any]:
    return {
        "type": "string_too_long",
        "loc": ["body", "events", i, "EventCreateExternalCustomer", "name"],
        "msg": "String should have at most 128 characters",
    }


def skewed(i: int) -> list[dict[str, Any]]:
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


# -- exactly once ----------------------------------------------------------------------------------
def test_enqueue_from_threads_then_drain_delivers_each_event_once(tmp_path: Path) -> None:
    """Events queued from four threads are all delivered, each exactly once, and the outbox ends empty."""
    transport = ScriptedTransport()
    outbox = Outbox(fast_config(tmp_path / "outbox.db", batch_max_events=100), transport)
    batches = [make_events(500, prefix=f"t{n}") for n in range(4)]

    def produce(events: list[Any]) -> None:
        for event in events:
            outbox.enqueue([event])

    threads = [threading.Thread(target=produce, args=(b,)) for b in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outbox.drain(timeout=60)
    delivered = transport.delivered_ids
    assert sorted(delivered) == sorted(e.external_id for b in batches for e in b)
    assert len(delivered) == len(set(delivered)) == 2000
    status = outbox.status()
    assert (status.pending, status.leased, status.dead, status.buffered) == (0, 0, 0, 0)
    metrics = outbox.metrics()
    assert (metrics.committed, metrics.sent, metrics.duplicates) == (2000, 2000, 0)
    assert outbox.close()


def test_events_arrive_as_polar_event_bodies(tmp_path: Path) -> None:
    """The transport receives exactly Event.to_polar() for each event, in order."""
    transport = ScriptedTransport()
    outbox, clock = manual(tmp_path, transport)
    events = make_events(3)
    outbox.enqueue(events)
    outbox.commit()
    drive(outbox, clock)
    assert [body for _, batch in transport.successes for body in batch] == [e.to_polar() for e in events]


def test_numbers_cross_the_outbox_exactly(tmp_path: Path) -> None:
    """Integers past 64 bits (which orjson alone would round to floats) and floats needing all 17
    digits reach the transport unchanged, beside ordinary events in the same batch."""
    transport = ScriptedTransport()
    outbox, clock = manual(tmp_path, transport)
    values = [2**70, -(2**64) - 1, 0.30000000000000004, 2**63 + 1, 12345678901234567890123]
    events = [
        validate_event("user_1", "big.numbers", {"n": value}, external_id=f"n-{i}", now=T0)
        for i, value in enumerate(values)
    ]
    plain = make_events(3)
    outbox.enqueue([plain[0], events[0], plain[1], *events[1:], plain[2]])
    outbox.commit()
    drive(outbox, clock)
    received = {body["external_id"]: body for _, batch in transport.successes for body in batch}
    for i, value in enumerate(values):
        got = received[f"n-{i}"]["metadata"]["n"]
        assert got == value and type(got) is type(value), (value, got)
    assert [received[e.external_id] for e in plain] == [e.to_polar() for e in plain]


def test_duplicates_reported_by_polar_count_as_delivered(tmp_path: Path) -> None:
    """A resend that Polar answers with duplicates is acknowledged and counted, not retried."""
    transport = ScriptedTransport([lambda events: SendResult(inserted=1, duplicates=len(events) - 1)])
    outbox, clock = manual(tmp_path, transport)
    outbox.enqueue(make_events(4))
    outbox.commit()
    drive(outbox, clock)
    assert len(transport.calls) == 1
    assert (outbox.metrics().sent, outbox.metrics().duplicates) == (1, 3)
    assert outbox.status().pending == 0


# -- retries ---------------------------------------------------------------------------------------
def test_429_waits_at_least_retry_after_and_pauses_every_sender(tmp_path: Path) -> None:
    """After a 429 with Retry-After: 60 the next request comes no sooner than 60 s later, even with zero
    jitter and a 1 s backoff cap, and another sender on the same file is held back too."""
    transport = ScriptedTransport([RateLimited("429", retry_after=60)])
    outbox, clock = manual(tmp_path, transport, rand=0.0, max_backoff=1.0)
    outbox.enqueue(make_events(3))
    outbox.commit()
    assert outbox.sender is not None
    assert outbox.sender.step() == 0.0  # sent, got 429
    other = Outbox(outbox.config, ScriptedTransport(clock=clock), clock=clock, background=False)
    assert other.sender is not None
    assert other.sender.step() == pytest.approx(60)
    assert outbox.status().paused_until is not None
    drive(outbox, clock)
    assert len(transport.calls) == 2
    assert gaps(transport)[0] >= 60
    assert transport.delivered_ids == ids(3)
    assert (outbox.metrics().rate_limited, outbox.metrics().retries) == (1, 1)
    other.close()


@pytest.mark.parametrize(
    "error", [BackendUnavailable("502 Bad Gateway", status_code=502), BackendUnavailable("connection reset")]
)
def test_server_and_network_errors_retry_with_growing_backoff(tmp_path: Path, error: Exception) -> None:
    """5xx and network failures are retried with exponential backoff up to the cap, never dead-lettered,
    and the batch is then delivered once."""
    transport = ScriptedTransport([error] * 5)
    outbox, clock = manual(tmp_path, transport, rand=0.999, backoff_base=0.5, max_backoff=3.0)
    outbox.enqueue(make_events(3))
    outbox.commit()
    drive(outbox, clock)
    assert gaps(transport) == pytest.approx([0.4995, 0.999, 1.998, 2.997, 2.997])
    assert transport.delivered_ids == ids(3)
    assert outbox.dead_letters() == []
    assert outbox.metrics().retries == 5


def test_refused_batches_are_dead_lettered_after_max_rejections(tmp_path: Path) -> None:
    """An error that is neither retryable nor a rejection (404, a transport bug) strikes the events;
    at max_rejections they move to the dead-letter table with the error as reason."""
    transport = ScriptedTransport(
        [NotFound("Not found", status_code=404), TypeError("bug"), NotFound("Not found")]
    )
    outbox, clock = manual(tmp_path, transport, max_rejections=3)
    outbox.enqueue(make_events(2))
    outbox.commit()
    drive(outbox, clock)
    assert len(transport.calls) == 3
    assert transport.delivered_ids == []
    dead = outbox.dead_letters()
    assert [d.external_id for d in dead] == ids(2)
    assert dead[0].reason == "NotFound: Not found (after 3 attempts)"
    assert dead[0].attempts == 3


# -- 422 -------------------------------------------------------------------------------------------
def test_422_good_events_go_bad_ones_are_dead_lettered_with_polars_reason(tmp_path: Path) -> None:
    """Indexes in loc map to the batch as sent: after a first split the second 422's index 1 is the
    third original event."""
    org_error = {
        "type": "organization_token",
        "loc": ["body", "events", 3, "organization_id"],
        "msg": "Setting organization_id is disallowed when using an organization token.",
    }
    transport = ScriptedTransport([rejection(bad_name(1), org_error), rejection(bad_name(1))])
    outbox, clock = manual(tmp_path, transport)
    outbox.enqueue(make_events(5))
    outbox.commit()
    drive(outbox, clock)
    sent = [[e["external_id"] for e in batch] for _, batch in transport.calls]
    assert sent == [ids(5), ["ev-0", "ev-2", "ev-4"], ["ev-0", "ev-4"]]
    assert transport.delivered_ids == ["ev-0", "ev-4"]
    dead = {d.external_id: d for d in outbox.dead_letters()}
    assert sorted(dead) == ["ev-1", "ev-2", "ev-3"]
    assert dead["ev-1"].reason == "name: String should have at most 128 characters"
    assert dead["ev-3"].reason == (
        "organization_id: Setting organization_id is disallowed when using an organization token."
    )
    assert dead["ev-3"].errors == [org_error]
    assert dead["ev-2"].event["external_id"] == "ev-2"
    assert outbox.metrics().dead_lettered == 3


def test_clock_skew_is_retried_not_dead_lettered(tmp_path: Path) -> None:
    """An event Polar finds in the future is retried at least a second later while its batch-mates go
    at once; once Polar's clock has caught up it is delivered."""
    transport = ScriptedTransport([rejection(*skewed(0))])
    outbox, clock = manual(tmp_path, transport, rand=0.0)
    outbox.enqueue(make_events(3))
    outbox.commit()
    drive(outbox, clock)
    sent = [[e["external_id"] for e in batch] for _, batch in transport.calls]
    assert sent == [ids(3), ["ev-1", "ev-2"], ["ev-0"]]
    assert transport.calls[2][0] - transport.calls[0][0] >= 1.0
    assert outbox.dead_letters() == []
    assert sorted(transport.delivered_ids) == ids(3)


def test_clock_skew_retries_are_bounded(tmp_path: Path) -> None:
    """An event that stays in Polar's future is dead-lettered after max_rejections attempts."""
    transport = ScriptedTransport([rejection(*skewed(0))] * 10)
    outbox, clock = manual(tmp_path, transport, max_rejections=3)
    outbox.enqueue(make_events(1))
    outbox.commit()
    drive(outbox, clock)
    assert len(transport.calls) == 3
    (dead,) = outbox.dead_letters()
    assert dead.reason.startswith("timestamp: Value error, Timestamp must be in the past.")
    assert "check the clock" in dead.reason


def test_unattributed_rejection_isolates_the_culprit(tmp_path: Path) -> None:
    """A 422 that names no event halves the batch until the bad event travels alone and is dead-lettered;
    every other event is delivered once."""

    def refuse_ev5(events: list[dict[str, Any]]) -> SendResult:
        if any(e["external_id"] == "ev-5" for e in events):
            raise RemoteValidationError("422", detail=[{"loc": ["body"], "msg": "malformed"}])
        return SendResult(len(events))

    transport = ScriptedTransport([refuse_ev5] * 50)
    outbox, clock = manual(tmp_path, transport)
    outbox.enqueue(make_events(8))
    outbox.commit()
    drive(outbox, clock)
    assert sorted(transport.delivered_ids) == sorted(set(ids(8)) - {"ev-5"})
    assert len(transport.delivered_ids) == 7
    assert [d.external_id for d in outbox.dead_letters()] == ["ev-5"]


def test_413_halves_the_batch(tmp_path: Path) -> None:
    """A 413 makes the sender send half as many events per request until one succeeds."""
    transport = ScriptedTransport([BackendError("Request body too large", status_code=413)])
    outbox, clock = manual(tmp_path, transport)
    outbox.enqueue(make_events(8))
    outbox.commit()
    drive(outbox, clock)
    assert [len(batch) for _, batch in transport.calls] == [8, 4, 4]
    assert transport.delivered_ids == ids(8)


# -- 401 -------------------------------------------------------------------------------------------
def test_401_keeps_events_pending_pauses_and_logs_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A rejected token dead-letters nothing: events stay pending, every sender pauses for max_backoff,
    the operator is told once, and delivery resumes when the token works again."""
    transport = ScriptedTransport(
        [AuthenticationError("401 invalid_token polar_oat_SECRET123", status_code=401)] * 3
    )
    outbox, clock = manual(tmp_path, transport, max_backoff=30.0)
    outbox.enqueue(make_events(3))
    outbox.commit()
    assert outbox.sender is not None
    with caplog.at_level(logging.ERROR, logger="polar_metering.delivery"):
        outbox.sender.step()
        assert outbox.sender.step() == pytest.approx(30.0)
        status = outbox.status()
        assert (status.pending, status.dead) == (3, 0)
        drive(outbox, clock)
    assert transport.delivered_ids == ids(3)
    assert gaps(transport) == pytest.approx([30.0, 30.0, 30.0])
    token_logs = [r for r in caplog.records if "access token" in r.getMessage()]
    assert len(token_logs) == 1
    assert "SECRET123" not in caplog.text
    assert outbox.metrics().auth_failures == 3
    assert outbox.metrics().last_error is not None
    assert "SECRET123" not in outbox.metrics().last_error


# -- limits ----------------------------------------------------------------------------------------
def test_batches_never_exceed_count_or_byte_limits(tmp_path: Path) -> None:
    """With events of mixed sizes every request stays within batch_max_events and batch_max_bytes (as
    the compact JSON body), and everything is delivered once, in order."""
    transport = ScriptedTransport()
    outbox, clock = manual(tmp_path, transport, batch_max_events=40, batch_max_bytes=8192)
    events = [e for i in range(60) for e in make_events(5, start=5 * i, pad=0 if i < 20 else (i * 97) % 480)]
    outbox.enqueue(events)
    outbox.commit()
    drive(outbox, clock)
    assert transport.delivered_ids == [e.external_id for e in events]
    for _, batch in transport.calls:
        assert len(batch) <= 40
        assert len(orjson.dumps({"events": batch})) <= 8192
    assert any(len(batch) == 40 for _, batch in transport.calls)
    assert any(len(orjson.dumps({"events": b})) > 8192 - 600 for _, b in transport.calls)


class GateTransport:
    """Holds every send until ``release`` is set, recording how many were waiting at once."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.waiting = 0
        self.most_waiting = 0
        self.two_waiting = threading.Event()
        self.delivered: list[str] = []

    def send(self, events: list[dict[str, Any]]) -> SendResult:
        with self.lock:
            self.waiting += 1
            self.most_waiting = max(self.most_waiting, self.waiting)
            if self.waiting >= 2:
                self.two_waiting.set()
        self.release.wait(30)
        with self.lock:
            self.waiting -= 1
            self.delivered.extend(e["external_id"] for e in events)
        return SendResult(inserted=len(events))


@pytest.mark.parametrize("in_flight", [1, 2, 4])
def test_max_in_flight_bounds_concurrent_requests(tmp_path: Path, in_flight: int) -> None:
    """With max_in_flight=n (fixed: adaptive=False), n batches wait on Polar at once while more are
    due (never more), and every event is still delivered exactly once; metrics add up across the
    sender threads. (Adaptive delivery starts with one in flight: tests/delivery/test_pace.py.)"""
    transport = GateTransport()
    config = fast_config(tmp_path / "outbox.db", batch_max_events=10, max_in_flight=in_flight, adaptive=False)
    outbox = Outbox(config, transport)
    events = make_events(100)
    outbox.enqueue(events, durable=True)
    if in_flight > 1:
        assert transport.two_waiting.wait(10), "a second request never started while the first waited"
    deadline = time.monotonic() + 10
    while transport.waiting < in_flight and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # room for a sender that would overstep the bound
    assert transport.waiting == in_flight
    transport.release.set()
    assert outbox.flush(timeout=10)
    assert outbox.close()
    assert sorted(transport.delivered) == sorted(e.external_id for e in events)
    assert transport.most_waiting == in_flight
    metrics = outbox.metrics()
    assert (metrics.sent, metrics.batches) == (100, 10)


def test_rate_limit_paces_requests(tmp_path: Path) -> None:
    """At 6 requests/min with a burst of 2, requests after the burst come 10 s apart and no 60 s window
    holds more than burst + rate."""
    transport = ScriptedTransport()
    outbox, clock = manual(
        tmp_path, transport, rate_limit_per_minute=6, rate_limit_burst=2, batch_max_events=1
    )
    outbox.enqueue(make_events(12))
    outbox.commit()
    drive(outbox, clock)
    times = [at for at, _ in transport.calls]
    assert len(times) == 12
    assert times[1] - times[0] == pytest.approx(0)
    assert all(g >= 10 - 1e-6 for g in gaps(transport)[1:])
    for i, start in enumerate(times):
        assert len([t for t in times[i:] if t < start + 60]) <= 8


def test_partial_batches_wait_for_batch_max_age_unless_flushed(tmp_path: Path) -> None:
    """A batch smaller than the limits waits until its oldest event is batch_max_age old; a flush sends
    it at once."""
    transport = ScriptedTransport()
    outbox, clock = manual(tmp_path, transport, batch_max_age=5.0)
    assert outbox.sender is not None
    outbox.enqueue(make_events(3))
    outbox.commit()
    assert outbox.sender.step() == pytest.approx(5.0)
    assert transport.calls == []
    clock.advance(5.0)
    assert outbox.sender.step() == 0.0
    assert len(transport.calls) == 1
    outbox.enqueue(make_events(2, prefix="late"))
    outbox.commit()
    outbox.sender.request_flush()
    outbox.sender.step()
    outbox.sender.end_flush()
    assert transport.delivered_ids[-2:] == ["late-0", "late-1"]


# -- flush and close with threads ------------------------------------------------------------------
class Switchable:
    """A transport that is down (503) until switched on."""

    def __init__(self) -> None:
        self.up = False
        self.sent: list[str] = []

    def send(self, events: list[dict[str, Any]]) -> SendResult:
        if not self.up:
            raise BackendUnavailable("503 Service Unavailable", status_code=503)
        self.sent.extend(e["external_id"] for e in events)
        return SendResult(len(events))


def test_flush_is_false_while_down_and_true_after_recovery(tmp_path: Path) -> None:
    """flush(timeout) reports False while Polar is down, without raising, and True once it recovers."""
    transport = Switchable()
    outbox = Outbox(fast_config(tmp_path / "outbox.db"), transport)
    assert outbox.enqueue(make_events(20)) == 20
    assert outbox.flush(timeout=0.3) is False
    assert transport.sent == []
    transport.up = True
    assert outbox.flush(timeout=30) is True
    assert sorted(transport.sent) == sorted(ids(20))
    assert outbox.metrics().retries >= 1
    assert outbox.close() is True


def test_close_is_idempotent_and_refuses_later_events(tmp_path: Path) -> None:
    """close() delivers, returns the same answer when called again, and enqueue afterwards raises
    OutboxError (which the client reports as a failed TrackingResult)."""
    from polar_metering._exceptions import OutboxError

    transport = ScriptedTransport()
    outbox = Outbox(fast_config(tmp_path / "outbox.db"), transport)
    outbox.enqueue(make_events(5))
    assert outbox.close(timeout=30) is True
    assert outbox.close() is True
    assert transport.delivered_ids == ids(5)
    with pytest.raises(OutboxError, match="closed"):
        outbox.enqueue(make_events(1, prefix="late"))
    assert outbox.flush(timeout=1) is True


def test_close_with_polar_down_keeps_events_for_the_next_process(tmp_path: Path) -> None:
    """close() gives up at its deadline, returns False, and the events are sent by the next outbox on
    the same file."""
    down = Switchable()
    outbox = Outbox(fast_config(tmp_path / "outbox.db"), down)
    outbox.enqueue(make_events(7))
    assert outbox.close(timeout=0.3) is False
    up = Switchable()
    up.up = True
    again = Outbox(fast_config(tmp_path / "outbox.db"), up)
    assert again.drain(timeout=30)
    assert sorted(up.sent) == sorted(ids(7))
    again.close()


def test_async_flush_does_not_block_the_event_loop(tmp_path: Path) -> None:
    """AsyncOutbox.flush waits for a slow transport while other tasks keep running on the loop."""

    class Slow:
        def __init__(self) -> None:
            self.sent: list[str] = []

        def send(self, events: list[dict[str, Any]]) -> SendResult:
            time.sleep(0.2)  # a slow network call, on the sender thread
            self.sent.extend(e["external_id"] for e in events)
            return SendResult(len(events))

    transport = Slow()

    async def main() -> tuple[bool, int]:
        async with AsyncOutbox(Outbox(fast_config(tmp_path / "outbox.db"), transport)) as outbox:
            assert await outbox.enqueue(make_events(5)) == 5
            ticks = 0
            done = asyncio.Event()

            async def ticker() -> None:
                nonlocal ticks
                while not done.is_set():
                    ticks += 1
                    await asyncio.sleep(0.005)

            task = asyncio.create_task(ticker())
            flushed = await outbox.flush(timeout=30)
            done.set()
            await task
            assert (await outbox.status()).pending == 0
            assert await outbox.enqueue(make_events(1, prefix="d"), durable=True) == 1
            return flushed, ticks

    flushed, ticks = asyncio.run(main())
    assert flushed
    assert ticks >= 2
    assert sorted(transport.sent) == sorted([*ids(5), "d-0"])


def test_flush_waits_for_this_processs_events_not_a_dead_senders_lease(tmp_path: Path) -> None:
    """Rows another process leased and abandoned (it crashed) do not hold up flush(), which covers this
    process's own events; drain(), which covers the whole file, waits for them."""
    from polar_metering.delivery._store import Store

    path = tmp_path / "outbox.db"
    crashed = Outbox(fast_config(path), background=False)
    crashed.enqueue(make_events(3, prefix="orphan"), durable=True)
    store = Store(path, busy_timeout=5, synchronous="NORMAL")
    claim = store.claim(
        "crashed-process",
        time.time(),
        max_events=10,
        max_bytes=1 << 20,
        max_age=0,
        force=True,
        lease_seconds=3600,
        rate=1e6,
        burst=10,
    )
    assert len(claim.rows) == 3
    store.close()
    transport = ScriptedTransport()
    outbox = Outbox(fast_config(path), transport)
    outbox.enqueue(make_events(4))
    assert outbox.flush(timeout=30) is True
    assert transport.delivered_ids == ids(4)
    assert outbox.drain(timeout=0.2) is False
    assert outbox.close(timeout=0.2) is False  # close drains too, and the orphans are still leased
    crashed.close()


def test_close_delivers_what_earlier_processes_left_behind(tmp_path: Path) -> None:
    """A short-lived process that tracks nothing still delivers, on close, the events an earlier
    process queued and never sent."""
    earlier = Outbox(fast_config(tmp_path / "outbox.db"), background=False)
    earlier.enqueue(make_events(6, prefix="left"), durable=True)
    earlier.close()
    transport = ScriptedTransport()
    later = Outbox(fast_config(tmp_path / "outbox.db", batch_max_age=60.0), transport)
    assert later.flush(timeout=5) is True  # nothing of its own to wait for
    assert later.close(timeout=30) is True
    assert transport.delivered_ids == [f"left-{i}" for i in range(6)]
