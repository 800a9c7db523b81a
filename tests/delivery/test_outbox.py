"""The outbox file: what enqueue writes and when, validation, the disk bound, leases, dead letters,
status, and opening bad files."""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from delivery_helpers import T0, ScriptedTransport, drive, fast_config, make_events

from polar_metering._clock import ManualClock
from polar_metering._exceptions import ConfigurationError, OutboxError, ValidationError
from polar_metering.delivery import DeliveryConfig, Outbox
from polar_metering.delivery._store import Store


def rows(path: Path) -> list[tuple[int, str, bytes]]:
    """What another connection (another process) sees in the outbox file."""
    conn = sqlite3.connect(str(path))
    try:
        return conn.execute("SELECT id, external_id, payload FROM outbox ORDER BY id").fetchall()
    finally:
        conn.close()


def test_commit_writes_each_event_as_the_json_polar_receives(tmp_path: Path) -> None:
    """Rows hold the external_id and the exact Event.to_polar() JSON, in enqueue order."""
    outbox = Outbox(fast_config(tmp_path / "o.db", durable=False), background=False)
    events = make_events(3)
    assert outbox.enqueue(events) == 3
    assert rows(tmp_path / "o.db") == []  # buffered, not yet committed
    assert outbox.commit() == 3
    stored = rows(tmp_path / "o.db")
    assert [r[1] for r in stored] == [e.external_id for e in events]
    assert [orjson.loads(r[2]) for r in stored] == [e.to_polar() for e in events]
    assert [r[0] for r in stored] == sorted(r[0] for r in stored)
    outbox.close()


def test_durable_enqueue_is_on_disk_when_it_returns(tmp_path: Path) -> None:
    """Durable is the default: enqueue commits before it returns (also per call on a durable=False
    outbox)."""
    assert DeliveryConfig(path=tmp_path / "x.db").durable is True
    outbox = Outbox(fast_config(tmp_path / "o.db", durable=False), background=False)
    outbox.enqueue(make_events(2), durable=True)
    assert [r[1] for r in rows(tmp_path / "o.db")] == ["ev-0", "ev-1"]
    always = Outbox(fast_config(tmp_path / "o.db"), background=False)
    always.enqueue(make_events(1, prefix="d"))
    assert [r[1] for r in rows(tmp_path / "o.db")] == ["ev-0", "ev-1", "d-0"]
    outbox.close()
    always.close()


def test_group_commit_reaches_disk_without_any_flush(tmp_path: Path) -> None:
    """With the writer thread, enqueued events appear in the file on their own, and the commit lag is
    measured."""
    outbox = Outbox(fast_config(tmp_path / "o.db", commit_interval=0.002, durable=False))
    outbox.enqueue(make_events(5))
    for _ in range(2000):
        if len(rows(tmp_path / "o.db")) == 5:
            break
        time.sleep(0.005)
    assert [r[1] for r in rows(tmp_path / "o.db")] == [f"ev-{i}" for i in range(5)]
    metrics = outbox.metrics()
    assert metrics.committed == 5
    assert metrics.commit_lag_max is not None
    assert metrics.commit_lag_max > 0
    outbox.close()


def test_enqueue_validates_before_queueing_anything(tmp_path: Path) -> None:
    """A bad event anywhere in the list raises ValidationError naming it, and none of the list is queued."""
    outbox = Outbox(fast_config(tmp_path / "o.db", batch_max_bytes=2048), background=False)
    good = make_events(1)[0]
    with pytest.raises(ValidationError) as info:
        outbox.enqueue([good, {"name": "x", "external_customer_id": "u"}])
    assert info.value.field == "events[1].external_id"
    with pytest.raises(ValidationError) as info:
        outbox.enqueue([good, 42])  # type: ignore[list-item]
    assert info.value.field == "events[1]"
    with pytest.raises(ValidationError) as info:
        outbox.enqueue(good)  # type: ignore[arg-type]
    assert info.value.field == "events"
    huge = make_events(1, pad=500)[0].to_polar()
    huge["metadata"] = {f"k{i}": "y" * 100 for i in range(30)}
    with pytest.raises(ValidationError, match="batch_max_bytes"):
        outbox.enqueue([huge])
    assert outbox.commit() == 0
    assert outbox.enqueue([]) == 0
    outbox.close()


def test_dicts_with_big_integers_are_stored(tmp_path: Path) -> None:
    """Polar takes integers of any size (``MetadataValue`` in server/polar/kit/metadata.py is a plain
    ``int``); they survive encoding even past 64 bits."""
    outbox = Outbox(fast_config(tmp_path / "o.db"), background=False)
    body = {"name": "n", "external_customer_id": "u", "external_id": "big", "metadata": {"n": 10**30}}
    outbox.enqueue([body])
    outbox.commit()
    assert json.loads(rows(tmp_path / "o.db")[0][2]) == body
    outbox.close()


def test_full_memory_buffer_refuses(tmp_path: Path) -> None:
    """When the writer cannot keep up, enqueue raises OutboxError rather than growing without bound."""
    outbox = Outbox(fast_config(tmp_path / "o.db", max_buffer_events=10, durable=False), background=False)
    outbox.enqueue(make_events(10))
    with pytest.raises(OutboxError, match="max_buffer_events"):
        outbox.enqueue(make_events(1, prefix="over"))
    assert outbox.commit() == 10
    outbox.close()


def test_disk_bound_warns_then_refuses_then_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A warning is logged before the first refusal; past max_outbox_bytes enqueue raises OutboxError;
    once delivery frees space events are accepted again."""
    clock = ManualClock(T0)
    transport = ScriptedTransport(clock=clock)
    config = fast_config(
        tmp_path / "o.db", max_outbox_bytes=96 * 1024, warn_outbox_fraction=0.6, durable=True
    )
    outbox = Outbox(config, transport, clock=clock, background=False)
    accepted = 0
    refusal: OutboxError | None = None
    with caplog.at_level(logging.WARNING, logger="polar_metering.delivery"):
        for event in make_events(2000, pad=500):
            try:
                outbox.enqueue([event])
            except OutboxError as exc:
                refusal = exc
                break
            accepted += 1
    assert refusal is not None
    assert "full" in str(refusal)
    assert 20 < accepted < 2000
    messages = [r.getMessage() for r in caplog.records]
    warn_at = next(i for i, m in enumerate(messages) if "new events will be refused once it is full" in m)
    full_at = next(i for i, m in enumerate(messages) if "is full" in m and "refused until" in m)
    assert warn_at < full_at
    assert "max_outbox_bytes" in str(refusal)
    assert not outbox.status().accepting
    drive(outbox, clock)
    assert len(transport.delivered_ids) == accepted
    assert outbox.status().accepting
    assert outbox.enqueue(make_events(1, prefix="after")) == 1
    outbox.close()


def test_leases_keep_two_senders_apart_until_they_expire(tmp_path: Path) -> None:
    """A claimed batch is invisible to another owner while leased, claimable after expiry; the first
    owner's late ack still deletes it (the resend is harmless: Polar dedups by external_id)."""
    outbox = Outbox(fast_config(tmp_path / "o.db"), background=False)
    outbox.enqueue(make_events(5), durable=True)
    a = Store(tmp_path / "o.db", busy_timeout=5, synchronous="NORMAL")
    b = Store(tmp_path / "o.db", busy_timeout=5, synchronous="NORMAL")
    opts = {"max_events": 10, "max_bytes": 1 << 20, "max_age": 0, "force": True, "rate": 1e6, "burst": 100}
    now = T0.timestamp()
    first = a.claim("A", now, lease_seconds=30, **opts)  # type: ignore[arg-type]
    assert [r.external_id for r in first.rows] == [f"ev-{i}" for i in range(5)]
    assert b.claim("B", now + 29, lease_seconds=30, **opts).rows == []  # type: ignore[arg-type]
    second = b.claim("B", now + 31, lease_seconds=30, **opts)  # type: ignore[arg-type]
    assert [r.id for r in second.rows] == [r.id for r in first.rows]
    a.settle("A", now + 32, ack=[r.id for r in first.rows])
    assert rows(tmp_path / "o.db") == []
    a.close()
    b.close()
    outbox.close()


def test_dead_letters_can_be_listed_and_retried(tmp_path: Path) -> None:
    """dead_letters() lists reason and event; retry_dead_letters(ids) puts exactly those back."""
    from polar_metering._exceptions import RemoteValidationError

    clock = ManualClock(T0)
    detail = [
        {"loc": ["body", "events", i, "EventCreateExternalCustomer", "name"], "msg": f"bad {i}", "type": "x"}
        for i in range(3)
    ]
    transport = ScriptedTransport([RemoteValidationError("422", detail=detail)], clock=clock)
    outbox = Outbox(fast_config(tmp_path / "o.db", batch_max_age=0), transport, clock=clock, background=False)
    outbox.enqueue(make_events(3))
    outbox.commit()
    drive(outbox, clock)
    dead = outbox.dead_letters(limit=10)
    assert [(d.external_id, d.reason) for d in dead] == [(f"ev-{i}", f"name: bad {i}") for i in range(3)]
    assert outbox.dead_letters(limit=1, offset=1)[0].external_id == "ev-1"
    assert outbox.status().dead == 3
    assert outbox.retry_dead_letters([dead[1].id]) == 1
    drive(outbox, clock)
    assert transport.delivered_ids == ["ev-1"]
    assert outbox.retry_dead_letters() == 2
    drive(outbox, clock)
    assert sorted(transport.delivered_ids) == ["ev-0", "ev-1", "ev-2"]
    assert outbox.status().dead == 0
    with pytest.raises(ValidationError) as info:
        outbox.retry_dead_letters(["1"])  # type: ignore[list-item]
    assert info.value.field == "ids[0]"
    with pytest.raises(ValidationError):
        outbox.dead_letters(limit=0)
    outbox.close()


def test_status_reports_counts_age_and_size(tmp_path: Path) -> None:
    """status() counts pending, leased and buffered events and the oldest one's age."""
    clock = ManualClock(T0)
    outbox = Outbox(fast_config(tmp_path / "o.db", durable=False), clock=clock, background=False)
    outbox.enqueue(make_events(4))
    outbox.commit()
    outbox.enqueue(make_events(2, prefix="mem"))
    clock.advance(7)
    status = outbox.status()
    assert (status.pending, status.leased, status.dead, status.buffered) == (4, 0, 0, 2)
    assert status.oldest_age_s == pytest.approx(7)
    assert 0 < status.bytes < status.max_bytes
    assert status.paused_until is None
    assert status.accepting
    outbox.close()
    with pytest.raises(OutboxError, match="closed"):
        outbox.status()


def test_bad_arguments_and_files(tmp_path: Path) -> None:
    """Wrong config or transport types raise ConfigurationError; a file that is not SQLite, or from a
    newer schema, raises OutboxError naming the path."""
    with pytest.raises(ConfigurationError, match="config"):
        Outbox({"path": "x"})  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="transport"):
        Outbox(fast_config(tmp_path / "o.db"), object())  # type: ignore[arg-type]
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database" * 100)
    with pytest.raises(OutboxError, match="path"):
        Outbox(fast_config(junk), background=False)
    newer = tmp_path / "newer.db"
    conn = sqlite3.connect(str(newer))
    conn.execute("PRAGMA user_version=99")
    conn.close()
    with pytest.raises(OutboxError, match="newer"):
        Outbox(fast_config(newer), background=False)
    outbox = Outbox(fast_config(tmp_path / "o.db"), background=False)
    with pytest.raises(ValidationError) as info:
        outbox.flush(timeout=-1)
    assert info.value.field == "timeout"
    outbox.close()


def test_writer_keeps_events_while_the_file_is_locked(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """While another connection holds the file's write lock the writer's commits fail; the events stay
    in memory, in order, and are committed once the lock is gone."""
    path = tmp_path / "o.db"
    outbox = Outbox(fast_config(path, busy_timeout=0.05, durable=False))
    blocker = sqlite3.connect(str(path), isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    with caplog.at_level(logging.ERROR, logger="polar_metering.delivery"):
        outbox.enqueue(make_events(5))
        for _ in range(2000):
            if any("outbox writer failed" in r.getMessage() for r in caplog.records):
                break
            time.sleep(0.005)
    assert any("outbox writer failed" in r.getMessage() for r in caplog.records)
    assert outbox.metrics().committed == 0
    assert rows(path) == []
    blocker.execute("ROLLBACK")
    blocker.close()
    assert outbox.commit() >= 0
    for _ in range(2000):
        if len(rows(path)) == 5:
            break
        time.sleep(0.005)
    assert [r[1] for r in rows(path)] == [f"ev-{i}" for i in range(5)]
    outbox.close()


def test_durable_commits_keep_the_wal_bounded(tmp_path: Path) -> None:
    """Each durable commit appends a page to the WAL; the writer thread checkpoints so that the WAL
    starts over instead of growing by ~4 KiB per event (10k events would be ~40 MB)."""
    path = tmp_path / "o.db"
    outbox = Outbox(fast_config(path))
    for event in make_events(10_000):
        outbox.enqueue([event])
    wal = Path(f"{path}-wal").stat().st_size
    assert wal < 8 * 1024 * 1024, f"the WAL grew to {wal} bytes"
    assert len(rows(path)) == 10_000
    outbox.close()


def test_concurrent_durable_callers_share_commits_and_each_returns_on_disk(tmp_path: Path) -> None:
    """Eight threads enqueue at once: each call returns only once its own event is in the file, and
    callers of one moment share a commit (fewer commits than events)."""
    import threading

    path = tmp_path / "o.db"
    outbox = Outbox(fast_config(path))
    commits: list[int] = []
    inner = outbox._commit_locked

    def counting(extra: Any = ()) -> int:
        count = inner(extra)
        commits.append(count)
        return count

    outbox._commit_locked = counting  # type: ignore[method-assign]
    missing: list[str] = []

    def worker(n: int) -> None:
        reader = sqlite3.connect(str(path))
        try:
            for event in make_events(300, prefix=f"t{n}"):
                outbox.enqueue([event])
                row = reader.execute(
                    "SELECT 1 FROM outbox WHERE external_id = ?", (event.external_id,)
                ).fetchone()
                if row is None:
                    missing.append(event.external_id)
        finally:
            reader.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert missing == []
    assert sum(commits) == 2400 == len(rows(path))
    assert len(commits) < 2400, "no commit was shared"
    outbox.close()


def test_a_failed_durable_commit_fails_every_caller_and_stores_none_of_them(tmp_path: Path) -> None:
    """While another connection holds the write lock, durable callers get OutboxError, and their
    events are not written later behind their backs: what was refused stays refused."""
    import threading

    path = tmp_path / "o.db"
    outbox = Outbox(fast_config(path, busy_timeout=0.05))
    blocker = sqlite3.connect(str(path), isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    outcomes: dict[str, bool] = {}

    def worker(n: int) -> None:
        for event in make_events(5, prefix=f"b{n}"):
            try:
                outbox.enqueue([event])
                outcomes[event.external_id] = True
            except OutboxError:
                outcomes[event.external_id] = False

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    blocker.execute("ROLLBACK")
    blocker.close()
    assert outcomes and not any(outcomes.values())
    outbox.enqueue(make_events(1, prefix="after"))  # a lock timeout does not mark the store failed
    time.sleep(0.2)
    assert [r[1] for r in rows(path)] == ["after-0"]
    outbox.close()
