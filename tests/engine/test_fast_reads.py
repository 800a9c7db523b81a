"""The limit-check read path (``backends/_engine/fastread.py``): one statement per reading, and on a
SQLite file a per-process cache that must stay exact. Every way a reading can change is exercised
with the cache warm: a write by another process, a write by this process, a hold made, a hold
expiring with no write at all, the window ending, a cancelation taking effect, a reset, and a fork.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest

from polar_metering import BackendUnavailable, ManualClock, Metering, Plan
from polar_metering.backends._engine.fastread import FastReads

PLAN = Plan("pro", credits={"api_requests": 100, "ai_tokens": 1000})


@pytest.fixture(params=["sqlite", "postgresql"])
def engine_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(f"{request.param}_url"))


def reads(client: Metering) -> FastReads:
    return client.backend.reads  # type: ignore[attr-defined,no-any-return]


def warm(client: Metering, customer: str, meter: str = "api_requests") -> float:
    """Check twice (the second from the cache, on SQLite files) and return what was seen."""
    first = client.check_limit(customer, meter).current
    assert client.check_limit(customer, meter).current == first
    return first


def test_repeated_checks_are_answered_from_the_cache(sqlite_url: str) -> None:
    c = Metering(sqlite_url, plans=[PLAN])
    c.subscribe("c1", "pro")
    c.track_api_request("c1", "/a")
    c.check_limit("c1", "api_requests")
    before = reads(c).hits
    for _ in range(50):
        assert c.check_limit("c1", "api_requests").current == 1
    assert reads(c).hits - before == 50
    c.close()


def test_a_write_by_another_process_is_seen_by_the_next_check(sqlite_url: str, tmp_path: Path) -> None:
    c = Metering(sqlite_url, plans=[PLAN])
    c.subscribe("c1", "pro")
    c.track_api_request("c1", "/a")
    assert warm(c, "c1") == 1
    script = textwrap.dedent(
        f"""
        from polar_metering import Metering, Plan
        c = Metering({sqlite_url!r}, plans=[Plan("pro", credits={{"api_requests": 100, "ai_tokens": 1000}})])
        for _ in range(7):
            assert c.track_api_request("c1", "/other").success
        c.close()
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    status = c.check_limit("c1", "api_requests")
    assert status.current == 8
    assert status.remaining == 92
    c.close()


def test_writes_of_this_process_and_of_another_client_invalidate(engine_url: str) -> None:
    a = Metering(engine_url, plans=[PLAN])
    b = Metering(engine_url, plans=[PLAN])
    a.subscribe("c1", "pro")
    assert warm(a, "c1") == 0
    b.track_api_request("c1", "/b")  # another connection pool, same process
    assert a.check_limit("c1", "api_requests").current == 1
    a.track_api_request("c1", "/a")
    assert a.check_limit("c1", "api_requests").current == 2
    a.close()
    b.close()


def test_a_hold_counts_at_once_and_stops_counting_when_it_expires(engine_url: str) -> None:
    clock = ManualClock("2026-03-10T12:00:00+00:00")
    c = Metering(engine_url, plans=[PLAN], clock=clock)
    c.subscribe("c1", "pro", started_at=datetime(2026, 3, 1, tzinfo=UTC))
    assert c.check_limit("c1", "ai_tokens").remaining == 1000
    c.reserve("c1", "ai_tokens", 300, ttl=60)
    assert c.check_limit("c1", "ai_tokens").remaining == 700
    assert c.check_limit("c1", "ai_tokens").remaining == 700
    clock.advance(59)
    assert c.check_limit("c1", "ai_tokens").remaining == 700
    clock.advance(1)  # the hold's TTL is over; nothing was written
    assert c.check_limit("c1", "ai_tokens").remaining == 1000
    c.close()


def test_the_end_of_a_window_is_seen_without_a_write(engine_url: str) -> None:
    clock = ManualClock("2026-03-31T23:59:58+00:00")
    c = Metering(engine_url, plans=[PLAN], clock=clock)
    c.subscribe("c1", "pro", started_at=datetime(2026, 3, 1, tzinfo=UTC))
    for _ in range(3):
        c.track_api_request("c1", "/a")
    assert warm(c, "c1") == 3
    clock.advance(2)  # April 1st: a new period
    status = c.check_limit("c1", "api_requests")
    assert status.current == 0
    assert status.period_start == datetime(2026, 4, 1, tzinfo=UTC)
    c.close()


def test_a_cancelation_at_period_end_takes_effect_without_a_write(engine_url: str) -> None:
    clock = ManualClock("2026-03-31T23:59:50+00:00")
    c = Metering(engine_url, plans=[PLAN], clock=clock)
    c.subscribe("c1", "pro", started_at=datetime(2026, 3, 1, tzinfo=UTC))
    c.track_api_request("c1", "/a")
    c.cancel("c1")
    assert c.check_limit("c1", "api_requests").limit == 100
    assert c.check_limit("c1", "api_requests").limit == 100
    clock.advance(10)  # the subscription ended: no plan, no credits
    after = c.check_limit("c1", "api_requests")
    assert after.limit != 100
    assert after.current == 0
    c.close()


def test_a_reset_is_seen_by_the_next_check(engine_url: str) -> None:
    c = Metering(engine_url, plans=[PLAN])
    c.subscribe("c1", "pro")
    c.track_api_request("c1", "/a")
    assert warm(c, "c1") == 1
    c.backend.reset_meters("c1")  # type: ignore[attr-defined]
    assert c.check_limit("c1", "api_requests").current == 0
    c.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX-only")
def test_a_forked_child_reads_on_its_own_connection_and_sees_new_writes(sqlite_url: str) -> None:
    c = Metering(sqlite_url, plans=[PLAN])
    c.subscribe("c1", "pro")
    c.track_api_request("c1", "/a")
    assert warm(c, "c1") == 1
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        code = 1
        try:
            seen = [c.check_limit("c1", "api_requests").current]
            c.track_api_request("c1", "/child")
            seen.append(c.check_limit("c1", "api_requests").current)
            os.write(write, repr(seen).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert os.read(read, 100) == b"[1.0, 2.0]"
    os.close(read)
    # The parent's connection still works after the child went away, and sees the child's event.
    assert c.check_limit("c1", "api_requests").current == 2
    c.close()


def test_a_customer_never_seen_reads_without_creating_anything(engine_url: str) -> None:
    c = Metering(engine_url, plans=[PLAN])
    status = c.check_limit("nobody", "api_requests")
    assert status.current == 0
    assert tuple(c.list_customers().items) == ()
    c.close()


def test_a_new_window_of_a_rollover_plan_reads_its_carried_credit(engine_url: str) -> None:
    clock = ManualClock("2026-03-31T23:59:50+00:00")
    plan = Plan("roll", credits={"api_requests": 10}, rollover=True)
    c = Metering(engine_url, plans=[plan], clock=clock)
    c.subscribe("c1", "roll", started_at=datetime(2026, 3, 1, tzinfo=UTC))
    for _ in range(4):
        c.track_api_request("c1", "/a")
    assert c.check_limit("c1", "api_requests").limit == 10
    clock.advance(20)  # April: no row yet; 6 unused units roll over
    assert c.check_limit("c1", "api_requests").limit == 16
    c.close()


def test_a_database_that_cannot_be_read_fails_with_the_librarys_error(tmp_path: Path) -> None:
    path = tmp_path / "gone.db"
    c = Metering(f"sqlite:///{path}", plans=[PLAN])
    c.subscribe("c1", "pro")
    c.close()
    reopened = Metering(f"sqlite:///{path}", plans=[PLAN])
    path.write_bytes(b"not a database" * 512)  # clobbered under the open engine
    status = reopened.check_limit("c1", "api_requests")  # fail-open: allowed, marked stale, says why
    assert status.stale and status.allowed
    assert status.reason is not None and "file is not a database" in status.reason
    Metering(f"sqlite:///{tmp_path / 'other.db'}", plans=[PLAN]).close()
    strict = Metering(f"sqlite:///{tmp_path / 'other.db'}", plans=[PLAN], fail_open=False)
    (tmp_path / "other.db").write_bytes(b"not a database" * 512)
    with pytest.raises(BackendUnavailable, match="database"):
        strict.check_limit("c1", "api_requests")
    reopened.close()
    strict.close()
