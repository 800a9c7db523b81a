"""Fakes and child-process entry points shared by the delivery tests.

Transports here are in-process stand-ins for the Polar backend: they return or raise scripted
outcomes, exactly as the transport contract says a real one does. The ones used across processes
record into a SQLite "ledger" file so that every process's sends can be counted afterwards.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from polar_metering._clock import ManualClock
from polar_metering._events import Event, validate_event
from polar_metering.delivery import DeliveryConfig, Outbox, SendResult

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

Outcome = BaseException | Callable[[list[dict[str, Any]]], SendResult] | None


def make_events(count: int, *, prefix: str = "ev", start: int = 0, pad: int = 0) -> list[Event]:
    """``count`` valid events with ids ``{prefix}-{i}``; ``pad`` adds that many bytes of metadata."""
    meta: dict[str, Any] = {"endpoint": "/api/v1/generate"}
    if pad:
        meta["note"] = "x" * min(pad, 500)
    return [
        validate_event(
            "user_1", "api.request", meta, external_id=f"{prefix}-{i}", now=T0 + timedelta(seconds=i)
        )
        for i in range(start, start + count)
    ]


def fast_config(path: Path, **overrides: Any) -> DeliveryConfig:
    """A config for tests: no Polar rate ceiling, short waits."""
    options: dict[str, Any] = {
        "path": path,
        "environment": None,
        "rate_limit_per_minute": 6_000_000,
        "rate_limit_burst": 1000,
        "batch_max_age": 0.01,
        "backoff_base": 0.01,
        "max_backoff": 0.05,
        "poll_interval": 0.05,
        "exit_timeout": 10.0,
    }
    options.update(overrides)
    return DeliveryConfig(**options)


class ScriptedTransport:
    """Plays ``outcomes`` one per call (an exception to raise, a function of the events, or ``None``
    for success), then succeeds. Records every call, and every successful one, with the clock time."""

    def __init__(self, outcomes: Iterable[Outcome] = (), clock: ManualClock | None = None) -> None:
        self.outcomes = list(outcomes)
        self.clock = clock
        self.calls: list[tuple[float, list[dict[str, Any]]]] = []
        self.successes: list[tuple[float, list[dict[str, Any]]]] = []
        self.lock = threading.Lock()

    def send(self, events: list[dict[str, Any]]) -> SendResult:
        with self.lock:
            at = self.clock.now().timestamp() if self.clock else time.time()
            self.calls.append((at, events))
            outcome = self.outcomes.pop(0) if self.outcomes else None
        if isinstance(outcome, BaseException):
            raise outcome
        result = outcome(events) if outcome is not None else SendResult(inserted=len(events))
        with self.lock:
            self.successes.append((at, events))
        return result

    @property
    def delivered_ids(self) -> list[str]:
        """external_ids of every successful call, in order."""
        return [e["external_id"] for _, events in self.successes for e in events]


def drive(outbox: Outbox, clock: ManualClock, *, max_steps: int = 10_000) -> list[float]:
    """Run the sender by hand until it has nothing left to do, advancing the manual clock by each
    wait it asks for. Returns the waits."""
    sender = outbox.sender
    assert sender is not None
    waits = []
    for _ in range(max_steps):
        delay = sender.step()
        if delay == float("inf"):
            return waits
        if delay > 0:
            waits.append(delay)
            clock.advance(delay)
    raise AssertionError("the sender never went idle")


# -- cross-process ledger -----------------------------------------------------------------------------
def open_ledger(path: Path | str) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), timeout=30, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS sent (external_id TEXT NOT NULL, pid INTEGER NOT NULL)")
    return conn


class LedgerTransport:
    """Records every event it is asked to send into a SQLite ledger (one connection per call, so it
    survives fork and spawn). ``block_marker``: instead of sending, create that file and hang."""

    def __init__(self, ledger: Path | str, *, block_marker: str | None = None) -> None:
        self.ledger = str(ledger)
        self.block_marker = block_marker

    def send(self, events: list[dict[str, Any]]) -> SendResult:
        if self.block_marker is not None:
            Path(self.block_marker).write_text(str(os.getpid()))
            threading.Event().wait()  # hang until killed, holding the lease
        conn = open_ledger(self.ledger)
        try:
            conn.executemany(
                "INSERT INTO sent (external_id, pid) VALUES (?, ?)",
                [(e["external_id"], os.getpid()) for e in events],
            )
        finally:
            conn.close()
        return SendResult(inserted=len(events))


def ledger_ids(ledger: Path | str) -> list[str]:
    conn = open_ledger(ledger)
    try:
        return [row[0] for row in conn.execute("SELECT external_id FROM sent ORDER BY rowid")]
    finally:
        conn.close()


def producer(outbox_path: str, ledger: str, prefix: str, count: int, go: Any) -> None:
    """Child process: wait for ``go``, enqueue ``count`` events, drain everything, close."""
    config = fast_config(Path(outbox_path), batch_max_events=25, lease_seconds=30.0)
    outbox = Outbox(config, LedgerTransport(ledger))
    go.wait(30)
    for event in make_events(count, prefix=prefix):
        outbox.enqueue([event])
    ok = outbox.drain(timeout=60)
    outbox.close(timeout=10)
    if not ok:
        raise SystemExit(3)


def hanging_sender(outbox_path: str, ledger: str, marker: str, count: int, lease: float = 1.0) -> None:
    """Child process: enqueue ``count`` events and start sending them through a transport that hangs
    after taking the lease (held ``lease`` seconds), until the parent kills this process."""
    config = fast_config(Path(outbox_path), lease_seconds=lease, batch_max_events=count)
    outbox = Outbox(config, LedgerTransport(ledger, block_marker=marker))
    outbox.enqueue(make_events(count, prefix="killed"), durable=True)
    outbox.flush()  # never returns: the transport hangs
