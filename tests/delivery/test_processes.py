"""Delivery across processes: fork safety, the exit hook, two processes on one outbox file, and a sender
killed with SIGKILL while holding a lease."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path

from delivery_helpers import (
    LedgerTransport,
    fast_config,
    hanging_sender,
    ledger_ids,
    make_events,
    open_ledger,
    producer,
)

from polar_metering.delivery import Outbox

HELPERS = str(Path(__file__).parent)


def run_script(body: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    code = f"import sys; sys.path.insert(0, {HELPERS!r})\n" + textwrap.dedent(body)
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, check=False
    )


def test_forked_child_gets_its_own_sender_and_drops_the_parents_buffer(tmp_path: Path) -> None:
    """After os.fork the child enqueues and flushes with its own writer and sender; events the parent
    had buffered but not committed are sent once (by the parent), never by the child too."""
    ledger = tmp_path / "ledger.db"
    # batch_max_age=30: the parent's sender only sends when someone flushes, so the child's events can
    # only go out through a sender of the child's own.
    config = fast_config(tmp_path / "o.db", commit_interval=0.5, batch_max_age=30.0)
    outbox = Outbox(config, LedgerTransport(ledger))
    outbox.enqueue(make_events(10, prefix="before"))
    assert outbox.flush(timeout=30)
    outbox.enqueue(make_events(5, prefix="buffered"))  # still in memory: commit_interval is 0.5 s
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+ warns about fork with threads
        pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            parent_buffer = outbox.status().buffered
            outbox.enqueue(make_events(10, prefix="child"))
            ok = outbox.flush(timeout=30)
            code = 0 if ok and parent_buffer == 0 else 2
        except BaseException:
            (tmp_path / "child-error.txt").write_text(traceback.format_exc())
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    error = tmp_path / "child-error.txt"
    assert os.waitstatus_to_exitcode(status) == 0, error.read_text() if error.exists() else ""
    outbox.enqueue(make_events(3, prefix="after"))
    assert outbox.flush(timeout=30)
    assert outbox.close()
    conn = open_ledger(ledger)
    child_senders = {
        row[0] for row in conn.execute("SELECT DISTINCT pid FROM sent WHERE external_id LIKE 'child-%'")
    }
    conn.close()
    assert child_senders == {pid}
    sent = Counter(ledger_ids(ledger))
    expected = {
        f"{p}-{i}"
        for p, n in (("before", 10), ("buffered", 5), ("child", 10), ("after", 3))
        for i in range(n)
    }
    assert set(sent) == expected
    assert set(sent.values()) == {1}


def test_exit_hook_delivers_what_was_left_open(tmp_path: Path) -> None:
    """A process that never calls close() still delivers its events at exit."""
    result = run_script(f"""
        from pathlib import Path
        from polar_metering.delivery import Outbox
        from delivery_helpers import LedgerTransport, fast_config, make_events
        outbox = Outbox(fast_config(Path({str(tmp_path / "o.db")!r}), batch_max_age=30.0),
                        LedgerTransport({str(tmp_path / "ledger.db")!r}))
        outbox.enqueue(make_events(50))
    """)
    assert result.returncode == 0, result.stderr
    assert sorted(ledger_ids(tmp_path / "ledger.db")) == sorted(f"ev-{i}" for i in range(50))


def test_exit_hook_gives_up_at_its_deadline_and_keeps_the_events(tmp_path: Path) -> None:
    """With a transport that hangs, the process still exits (after exit_timeout) and the events stay in
    the outbox file for the next process."""
    result = run_script(f"""
        from pathlib import Path
        from polar_metering.delivery import Outbox
        from delivery_helpers import LedgerTransport, fast_config, make_events
        transport = LedgerTransport({str(tmp_path / "ledger.db")!r}, block_marker={str(tmp_path / "m")!r})
        outbox = Outbox(fast_config(Path({str(tmp_path / "o.db")!r}), exit_timeout=0.5), transport)
        outbox.enqueue(make_events(20))
    """)
    assert result.returncode == 0, result.stderr
    assert "not yet delivered" in result.stderr
    assert ledger_ids(tmp_path / "ledger.db") == []
    outbox = Outbox(fast_config(tmp_path / "o.db"), background=False)
    status = outbox.status()
    assert status.pending + status.leased == 20
    outbox.close()


def test_two_processes_on_one_outbox_send_each_event_once(tmp_path: Path) -> None:
    """Two spawned processes enqueue into and send from the same file at the same time; every event is
    sent exactly once."""
    ctx = multiprocessing.get_context("spawn")
    go = ctx.Event()
    procs = [
        ctx.Process(
            target=producer, args=(str(tmp_path / "o.db"), str(tmp_path / "ledger.db"), name, 300, go)
        )
        for name in ("p1", "p2")
    ]
    for proc in procs:
        proc.start()
    go.set()
    for proc in procs:
        proc.join(120)
    assert [proc.exitcode for proc in procs] == [0, 0]
    sent = Counter(ledger_ids(tmp_path / "ledger.db"))
    assert set(sent) == {f"{p}-{i}" for p in ("p1", "p2") for i in range(300)}
    assert set(sent.values()) == {1}


def test_events_leased_by_a_killed_sender_are_sent_after_the_lease_expires(tmp_path: Path) -> None:
    """A sender SIGKILLed mid-send leaves its batch leased; another sender takes it over after the lease
    expires and delivers every event once."""
    ctx = multiprocessing.get_context("spawn")
    marker = tmp_path / "sending"
    proc = ctx.Process(
        target=hanging_sender, args=(str(tmp_path / "o.db"), str(tmp_path / "ledger.db"), str(marker), 20)
    )
    proc.start()
    for _ in range(6000):
        if marker.exists() or not proc.is_alive():
            break
        time.sleep(0.01)
    assert marker.exists(), "the child never started sending"
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(30)
    assert proc.exitcode == -signal.SIGKILL
    conn = sqlite3.connect(str(tmp_path / "o.db"))
    owners = {row[0] for row in conn.execute("SELECT lease_owner FROM outbox")}
    conn.close()
    assert len(owners) == 1
    assert None not in owners
    assert str(proc.pid) in next(iter(owners))
    outbox = Outbox(fast_config(tmp_path / "o.db"), LedgerTransport(tmp_path / "ledger.db"))
    assert outbox.drain(timeout=60)
    outbox.close()
    sent = Counter(ledger_ids(tmp_path / "ledger.db"))
    assert set(sent) == {f"killed-{i}" for i in range(20)}
    assert set(sent.values()) == {1}


def _start_hanging(tmp_path: Path, lease: float) -> multiprocessing.process.BaseProcess:
    ctx = multiprocessing.get_context("spawn")
    marker = tmp_path / "sending"
    proc = ctx.Process(
        target=hanging_sender,
        args=(str(tmp_path / "o.db"), str(tmp_path / "ledger.db"), str(marker), 20, lease),
    )
    proc.start()
    for _ in range(6000):
        if marker.exists() or not proc.is_alive():
            break
        time.sleep(0.01)
    assert marker.exists(), "the child never started sending"
    return proc


def test_leases_of_a_dead_process_are_taken_over_at_once(tmp_path: Path) -> None:
    """A restarted worker does not wait out the lease (here ten minutes) of a process that died on
    this machine: it delivers the batch right away, each event once."""
    proc = _start_hanging(tmp_path, lease=600.0)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(30)
    outbox = Outbox(fast_config(tmp_path / "o.db"), LedgerTransport(tmp_path / "ledger.db"))
    assert outbox.drain(timeout=30), "the dead sender's lease was not taken over"
    outbox.close()
    sent = Counter(ledger_ids(tmp_path / "ledger.db"))
    assert set(sent) == {f"killed-{i}" for i in range(20)}
    assert set(sent.values()) == {1}


def test_leases_of_a_live_process_are_left_alone(tmp_path: Path) -> None:
    """A sender that is slow, not dead, keeps its lease: another process does not send its batch."""
    proc = _start_hanging(tmp_path, lease=600.0)
    try:
        outbox = Outbox(fast_config(tmp_path / "o.db"), LedgerTransport(tmp_path / "ledger.db"))
        assert not outbox.drain(timeout=3)
        outbox.close(timeout=0.5)
        assert ledger_ids(tmp_path / "ledger.db") == []
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(30)
