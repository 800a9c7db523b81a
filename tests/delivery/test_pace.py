"""Adaptive delivery's pace (``delivery._pace``): pure bookkeeping, driven here with the latencies a
serial server, a parallel server and a stalling server would show; then one end-to-end run against
the emulator behind the fault proxy playing a slow one-worker server."""

from __future__ import annotations

from pathlib import Path

import pytest

from polar_metering import Metering
from polar_metering.delivery._pace import Pace
from polar_metering.emulator import running_emulator
from polar_metering.emulator._faults import FaultPlan, running_fault_proxy


def pace(**overrides: object) -> Pace:
    options: dict[str, object] = {
        "max_in_flight": 4,
        "max_batch": 1000,
        "request_timeout": 5.0,
        "lease_seconds": 60.0,
        "adaptive": True,
    }
    options.update(overrides)
    return Pace(**options)  # type: ignore[arg-type]


def test_starts_with_one_request_and_the_configured_timeout() -> None:
    p = pace()
    assert p.acquire(0) == 1
    assert p.acquire(0.01) is None  # one slot until the server has shown what it can do
    p.release()
    assert p.timeout_for(1000) == 5.0
    assert p.batch == 1000


def test_quick_answers_open_more_slots_when_the_server_serves_in_parallel() -> None:
    p = pace()
    for _ in range(3):
        p.observe(1000, 0.1, 1, answered=True, timed_out=False)
    assert p.state().in_flight_limit == 2
    for _ in range(3):  # two at once take as long as one: parallel, worth it
        p.observe(1000, 0.1, 2, answered=True, timed_out=False)
    assert p.state().in_flight_limit == 3
    for _ in range(16):
        p.observe(1000, 0.1, 3, answered=True, timed_out=False)
    assert p.state().in_flight_limit == 4  # never past max_in_flight
    for _ in range(16):
        p.observe(1000, 0.1, 4, answered=True, timed_out=False)
    assert p.state().in_flight_limit == 4


def test_a_serial_server_is_sent_one_request_at_a_time() -> None:
    """With two in flight each takes twice as long as a lone one: no throughput gained, so back to one."""
    p = pace()
    for _ in range(3):
        p.observe(1000, 1.0, 1, answered=True, timed_out=False)
    assert p.state().in_flight_limit == 2
    p.observe(1000, 2.0, 2, answered=True, timed_out=False)
    assert p.state().in_flight_limit == 1


def test_timeouts_follow_latency_and_double_after_a_timeout() -> None:
    p = pace()
    p.observe(1000, 3.0, 1, answered=True, timed_out=False)
    assert p.timeout_for(1000) == pytest.approx(3 * 3.0 + 1.0)  # 3x the latency seen, plus a second
    assert p.timeout_for(100) == 5.0  # never below request_timeout
    before = p.timeout_for(500)
    p.observe(500, before, 2, answered=False, timed_out=True)
    assert p.state().in_flight_limit == 1
    assert p.batch == 500  # halved
    assert p.timeout_for(500) >= 2 * before  # doubled margin (and the estimate never shrinks)
    assert p.timeout_for(10_000_000) == 48.0  # capped at 80% of the lease


def test_slow_answers_shrink_the_batch_and_quick_ones_grow_it_back() -> None:
    p = pace()
    p.observe(1000, 8.0, 1, answered=True, timed_out=False)  # over request_timeout
    assert p.batch == 500
    p.observe(500, 6.0, 1, answered=True, timed_out=False)
    assert p.batch == 250
    for _ in range(20):
        p.observe(p.batch, 0.2, 1, answered=True, timed_out=False)
    assert p.batch == 1000


def test_fixed_settings_ignore_every_observation() -> None:
    p = pace(adaptive=False, max_in_flight=2)
    assert p.acquire(0) == 1 and p.acquire(0) == 2
    p.observe(1000, 50.0, 2, answered=False, timed_out=True)
    assert (p.batch, p.timeout_for(1000), p.state().in_flight_limit) == (1000, 5.0, 2)


def test_a_slow_one_worker_server_gets_every_batch_once(tmp_path: Path) -> None:
    """The emulator behind a proxy that takes 3 ms per event and serves one request at a time: two
    1000-event batches in flight would each wait past the 5 s timeout and be sent again. The default
    (adaptive) delivery sends each batch once and abandons none."""
    plan = FaultPlan(latency=0.02, latency_per_event=0.003, workers=1)
    with running_emulator() as emulator, running_fault_proxy(emulator.base_url, plan) as proxy:
        client = Metering(
            f"polar://?base_url={proxy.base_url}",
            access_token=emulator.token,
            outbox_path=str(tmp_path / "o.db"),
        )
        events = [
            {"customer_id": "c", "event_name": "api.request", "metadata": {"i": i}} for i in range(3000)
        ]
        assert client.track_usage_batch(events).success
        assert client.flush(timeout=120)
        metrics = client.backend.outbox.metrics()  # type: ignore[attr-defined]
        client.close(timeout=10)
        assert proxy.counts.abandoned == 0
        assert metrics.duplicates == 0
        assert metrics.sent == 3000
        assert metrics.batches == proxy.counts.passed == 3
