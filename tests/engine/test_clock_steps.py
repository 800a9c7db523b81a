"""Wall-clock steps on the embedded engine (SQLite and PostgreSQL): a reservation's TTL runs on a
monotonic clock, so stepping the wall clock either way neither lets a second reservation through
early nor keeps an old one alive; and a billing window, once closed, is never written again: an
event whose wall time falls back into a closed window counts in the current one."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from polar_metering import ManualClock, Metering, Plan, UsageLimitExceeded
from polar_metering.backends._engine import schema as t
from polar_metering.backends._engine.timekeeping import from_us

PLAN = Plan("tokens", credits={"ai_tokens": 100})


@pytest.fixture(params=["sqlite", "postgresql"])
def engine_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(f"{request.param}_url"))


def client(url: str, clock: ManualClock) -> Metering:
    c = Metering(url, clock=clock, plans=[PLAN])
    c.subscribe("c1", "tokens", started_at=datetime(2026, 1, 1, tzinfo=UTC))
    return c


def test_a_wall_clock_step_forward_does_not_expire_a_hold(engine_url: str) -> None:
    clock = ManualClock("2026-01-15T12:00:00+00:00")
    c = client(engine_url, clock)
    first = c.reserve("c1", "ai_tokens", 60, ttl=300)
    clock.step(400)  # the wall clock jumps past the hold's TTL; no time has passed
    with pytest.raises(UsageLimitExceeded):
        c.reserve("c1", "ai_tokens", 60, ttl=300)
    assert c.check_limit("c1", "ai_tokens").remaining == 40
    clock.advance(301)  # now the TTL has really passed
    second = c.reserve("c1", "ai_tokens", 60, ttl=300)
    second.commit(60)
    first.release()
    assert c.check_limit("c1", "ai_tokens").current == 60
    c.close()


def test_a_wall_clock_step_back_does_not_keep_a_hold_alive(engine_url: str) -> None:
    clock = ManualClock("2026-01-15T12:00:00+00:00")
    c = client(engine_url, clock)
    c.reserve("c1", "ai_tokens", 60, ttl=300)
    clock.step(-600)  # the wall clock goes back ten minutes
    clock.advance(301)  # the hold's 300 s have passed, on the monotonic clock
    assert c.check_limit("c1", "ai_tokens").remaining == 100, "the expired hold still counted"
    c.reserve("c1", "ai_tokens", 60, ttl=300).commit(60)
    assert c.check_limit("c1", "ai_tokens").current == 60
    c.close()


def _windows(url: str, customer: str) -> dict[datetime, int]:
    probe = Metering(url)
    try:
        with probe.backend.db.read() as conn:  # type: ignore[attr-defined]
            rows = conn.execute(
                select(t.usage.c.window_us, t.usage.c.n).where(t.usage.c.customer == customer)
            ).all()
    finally:
        probe.close()
    return {from_us(w): n for w, n in rows if n}


def test_a_closed_window_is_never_written_again(engine_url: str) -> None:
    clock = ManualClock("2026-01-31T23:59:50+00:00")
    c = Metering(engine_url, clock=clock)
    c.track_api_request("c2", "/a")  # January: 1
    clock.advance(20)  # February 1st, 00:00:10
    for _ in range(4):
        c.track_api_request("c2", "/b")
    clock.step(-30)  # the wall clock falls back into January
    for _ in range(5):
        result = c.track_api_request("c2", "/c")
        assert result.success
    status = c.check_limit("c2", "api_requests")
    assert status.current == 9, "the late events count in the current window"
    assert status.period_start == datetime(2026, 2, 1, tzinfo=UTC)
    windows = _windows(engine_url, "c2")
    assert windows == {datetime(2026, 1, 1, tzinfo=UTC): 1, datetime(2026, 2, 1, tzinfo=UTC): 9}
    # A process started after the step knows the latest time too (it is kept in the database).
    later = Metering(engine_url, clock=ManualClock("2026-01-31T23:59:45+00:00"))
    later.track_api_request("c2", "/d")
    assert later.check_limit("c2", "api_requests").current == 10
    later.close()
    c.close()


def test_holds_from_another_hold_clock_are_dropped_at_open(sqlite_url: str) -> None:
    """Monotonic time restarts at a reboot: a database whose holds were taken on another boot's clock
    (or by an older version, on the wall clock) opens with those holds gone rather than immortal."""
    clock = ManualClock("2026-01-15T12:00:00+00:00")
    c = client(sqlite_url, clock)
    c.reserve("c1", "ai_tokens", 90, ttl=300)
    with c.backend.db.write() as conn:  # type: ignore[attr-defined]
        conn.execute(t.info.update().where(t.info.c.key == "hold_clock").values(value="monotonic:other-boot"))
    c.close()
    again = Metering(sqlite_url, clock=clock)
    assert again.check_limit("c1", "ai_tokens").remaining == 100
    again.close()


def test_postgresql_holds_run_on_the_server_clock(postgresql_url: str) -> None:
    """With the system clock, holds on PostgreSQL expire by the database server's clock: one clock for
    every host that shares the database."""
    import time

    c = Metering(postgresql_url, plans=[PLAN])
    c.subscribe("c1", "tokens")
    assert c.backend.time.server_holds  # type: ignore[attr-defined]
    c.reserve("c1", "ai_tokens", 90, ttl=0.3)
    with pytest.raises(UsageLimitExceeded):
        c.reserve("c1", "ai_tokens", 20, ttl=0.3)
    time.sleep(0.5)
    c.reserve("c1", "ai_tokens", 20, ttl=30).commit(20)
    assert c.check_limit("c1", "ai_tokens").current == 20
    c.close()
