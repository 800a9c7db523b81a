"""``Outbox``: the durable queue between ``track_*`` and Polar.

Durable by default: ``enqueue`` returns only once its events are committed to the SQLite file (WAL),
so an acknowledged event survives a process kill (SIGKILL, OOM) and, with ``synchronous="FULL"``,
power loss. Callers that arrive while a commit is under way share the next one: each caller joins
the open *commit group*, the first to get the write lock commits the whole group in one INSERT,
and the others find their events already written when the lock comes to them (a group commit in
which every caller waits for the commit that holds its events). A failed commit fails every caller
of its group: nothing is reported kept that is not on disk.

``durable=False`` (opt-in, per call or in the config) trades that for speed: ``enqueue`` appends to
an in-memory buffer and a writer thread commits it at most every ``commit_interval`` (5 ms), so a
crash inside that window, or a disk that fails before the writer gets to it, loses the buffered
events (``docs/delivery.md`` gives the measured window; ``metrics()`` the observed one).

A store that fails (disk full, read-only, I/O error) makes ``enqueue`` refuse with
:class:`OutboxError` from then on, probing the file again at most once a second so that calls
succeed again when space returns. ``flush`` waits for this process's events, ``drain`` for every
event in the file, and ``close`` drains within its deadline; all three commit the buffer first. The
exit hook closes every open outbox within ``exit_timeout``. A forked child gets fresh threads,
connections and lease owner, and drops its copy of the parent's buffer (the parent commits those
events).
"""

from __future__ import annotations

import _thread
import atexit
import json
import logging
import math
import os
import random
import sqlite3
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from polar_metering._clock import Clock, SystemClock
from polar_metering._events import Event
from polar_metering._exceptions import ConfigurationError, OutboxError, ValidationError
from polar_metering._status import as_dict
from polar_metering.delivery._codec import dumps as _dumps
from polar_metering.delivery._config import DeliveryConfig
from polar_metering.delivery._pace import Pace, PaceState
from polar_metering.delivery._policy import ENVELOPE_BYTES
from polar_metering.delivery._sender import Counters, DeliveryMetrics, Sender, Transport
from polar_metering.delivery._store import Store, StoreUnavailable, lease_owner

__all__ = ["DeadLetter", "Outbox", "OutboxStatus"]

log = logging.getLogger("polar_metering.delivery")

_LIVE: weakref.WeakSet[Outbox] = weakref.WeakSet()
# Connections a forked child inherited. SQLite must not use them in the child, and closing them
# there could disturb the parent's locks, so they are kept alive and never touched.
_INHERITED: list[object] = []
# Store locks held across a fork. SQLite keeps per-file lock bookkeeping in process memory; a fork
# in the middle of a transaction would leave the child believing a lock is held forever.
_HELD_FOR_FORK: list[threading.RLock] = []
_MAX_RANGES = 1024


@dataclass(frozen=True, slots=True)
class OutboxStatus:
    """A snapshot of an outbox file, for ``polar-metering outbox status``.

    ``pending`` events wait to be sent (some may be delayed by backoff), ``leased`` are being sent
    by some process right now, ``dead`` sit in the dead-letter table. ``buffered`` are in this
    process's memory, not yet committed. ``bytes`` is what the file uses, against ``max_bytes``.
    ``paused_until`` is set while every sender waits (backoff, 429, rejected token).
    """

    path: str
    pending: int
    leased: int
    dead: int
    buffered: int
    oldest_age_s: float | None
    bytes: int
    max_bytes: int
    paused_until: datetime | None
    accepting: bool

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict of the fields (timestamps as ISO-8601 strings)."""
        return as_dict(self)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An event Polar would not take: ``reason`` in words, ``errors`` as Polar sent them (422 detail
    entries for this event), ``event`` as it was to be sent."""

    id: int
    external_id: str
    event: dict[str, Any]
    reason: str
    errors: list[Any]
    attempts: int
    enqueued_at: datetime
    dead_at: datetime

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict of the fields (timestamps as ISO-8601 strings)."""
        return as_dict(self)


def _timeout(name: str, value: object) -> float:
    if value is None:
        return math.inf
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value or value < 0:
        raise ValidationError(name, "must be None or a number of seconds >= 0", value)
    return float(value)


class _Group:
    """The callers whose events one durable commit writes. The first to join leads: it waits for
    the write lock, closes the group and commits it. Each of the others waits on a lock of its own,
    taken before it joined, which the leader releases when the commit is done (the cheapest wake-up
    CPython has). ``error`` is set when the commit failed. Fields change only under the outbox's
    group lock."""

    __slots__ = ("error", "led", "rows", "waiters")

    def __init__(self) -> None:
        self.rows: list[tuple[str, bytes]] = []
        self.led = False
        self.error: OutboxError | None = None
        self.waiters: list[Any] = []


# Commits between checkpoints (each commit adds at least a 4 KiB page to the WAL), and the size the
# WAL is cut back to once it can be reused from the start.
_CHECKPOINT_COMMITS = 1000
_WAL_SIZE_LIMIT = 16 * 1024 * 1024
# A refusing store is tried again at most this often (seconds), so calls succeed again soon after
# the disk has room or the file is writable again, without every call paying for a failed write.
_PROBE_INTERVAL = 1.0
# SQLite's messages for a lock it waited for in vain: another process is slow, the store is fine.
_TRANSIENT = ("database is locked", "database table is locked", "database is busy")


def _encode(index: int, event: object, max_bytes: int) -> tuple[str, bytes]:
    body: Any
    if isinstance(event, Event):
        body, eid = event.to_polar(), event.external_id
    elif isinstance(event, Mapping):
        body, raw = event, event.get("external_id")
        if not isinstance(raw, str) or not raw:
            raise ValidationError(
                f"events[{index}].external_id",
                "must be a non-empty string fixed at track time (Polar deduplicates resends by it)",
                raw,
            )
        eid = raw
    else:
        raise ValidationError(f"events[{index}]", "must be an Event or a dict in Polar's event shape", event)
    try:
        payload = _dumps(body)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"events[{index}]", f"must be JSON-serialisable ({exc})", None) from None
    if len(payload) + ENVELOPE_BYTES > max_bytes:
        raise ValidationError(
            f"events[{index}]",
            f"encodes to {len(payload)} bytes; one event must fit batch_max_bytes ({max_bytes})",
        )
    return eid, payload


class Outbox:
    """A durable outbox file with its writer and, given a transport, its background sender.

    ``Outbox(DeliveryConfig(path="var/outbox.db"), transport)``. Thread-safe. ``background=False``
    runs no threads: ``commit()`` writes, ``sender.step()`` sends (for tests and tools). ``clock`` and
    ``rand`` (uniform in [0, 1), for jitter) are injectable.
    """

    def __init__(
        self,
        config: DeliveryConfig | None = None,
        transport: Transport | None = None,
        *,
        clock: Clock | None = None,
        rand: Callable[[], float] | None = None,
        background: bool = True,
    ) -> None:
        if config is None:
            config = DeliveryConfig()
        if not isinstance(config, DeliveryConfig):
            raise ConfigurationError(f"config: must be a DeliveryConfig, got {type(config).__name__}")
        if transport is not None and not callable(getattr(transport, "send", None)):
            raise ConfigurationError("transport: must have a send(events) method (see delivery.Transport)")
        self.config = config
        self._transport = transport
        self._clock: Clock = clock or SystemClock()
        self._rand = rand or random.random
        self._background = background
        self._closed = False
        self._finished = False  # close() has released everything
        self._close_result = True
        self._setup_process()
        try:
            self._writer_store()
        except StoreUnavailable as exc:
            # The file cannot be written now (a read-only or full file system): start refusing,
            # with the reason, and keep probing, instead of failing the application's start.
            self._store_failed(exc)
        _LIVE.add(self)
        if background:
            for sender in self._senders:
                sender.start()

    def _setup_process(self) -> None:
        """Everything that belongs to one process: threads, locks, connections, buffer, lease owner."""
        self._pid = os.getpid()
        self._owner = lease_owner(self._pid, os.urandom(6).hex())
        self._buffer: deque[tuple[str, bytes]] = deque()
        self._close_lock = threading.Lock()
        self._wlock = threading.RLock()
        # Guards the open commit group; held only to append to it or swap it, never across I/O.
        self._glock = threading.Lock()
        self._group = _Group()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._progress = threading.Condition()
        self._writer: threading.Thread | None = None
        self._store: Store | None = None
        self._ckpt: sqlite3.Connection | None = None  # the writer thread's checkpoint connection
        self._unckpt = 0  # commits since the last checkpoint
        # Rowid ranges this process committed and has not yet seen leave the outbox: what flush waits
        # for. One commit is one INSERT statement, which holds the file's write lock throughout, so
        # its rows get consecutive rowids.
        self._ranges: deque[tuple[int, int]] = deque()
        self._first_at = 0.0  # perf_counter when the oldest buffered event arrived
        self._last_commit = -math.inf  # perf_counter of the last commit
        self._measured_at = -math.inf  # perf_counter of the last exact disk-usage reading
        self._lags: deque[float] = deque(maxlen=4096)
        self._counters = Counters()
        self._used = 0
        self._warned = False
        self._full = False
        self._disk_error: str | None = None
        self._probe_at = 0.0  # perf_counter after which a refusing store may be tried again
        self._refusal: str | None = "the outbox is closed" if self._closed else None
        # max_in_flight senders, each a thread with its own connection and lease owner, claiming
        # from the file as senders in separate processes do: while one waits for Polar's answer,
        # another claims and sends the next batch. Without threads one sender is driven by hand.
        transport = self._transport
        lanes = 0 if transport is None else self.config.max_in_flight if self._background else 1
        cfg = self.config
        # One pace for all of this process's senders: the requests in flight are theirs together.
        self._pace = Pace(
            max_in_flight=cfg.max_in_flight,
            max_batch=cfg.batch_max_events,
            request_timeout=cfg.timeout_seconds,
            lease_seconds=cfg.lease_seconds,
            adaptive=cfg.adaptive,
        )
        self._senders: list[Sender] = [
            Sender(
                cfg,
                transport,  # type: ignore[arg-type]  # lanes is 0 without one
                owner=f"{self._owner}-{lane}",
                clock=self._clock,
                rand=self._rand,
                counters=Counters(),
                on_progress=self._on_progress,
                pace=self._pace,
            )
            for lane in range(lanes)
        ]
        self._sender: Sender | None = self._senders[0] if self._senders else None

    def _after_fork(self) -> None:
        _INHERITED.append(self._store)
        _INHERITED.append(self._ckpt)
        for sender in self._senders:
            _INHERITED.append(sender.abandon())
        self._setup_process()

    # -- accepting events -------------------------------------------------------------------------
    def enqueue(self, events: Sequence[Event | Mapping[str, Any]], *, durable: bool | None = None) -> int:
        """Queue events for delivery; returns how many. Never does network I/O.

        Events are :class:`Event` objects or dicts shaped like ``Event.to_polar()`` with an
        ``external_id``. Raises :class:`ValidationError` (naming ``events[i]``) before queueing any of
        them when one cannot be encoded, and :class:`OutboxError` when the outbox is full, closed or
        its file unusable. With ``durable`` (default: the config's, itself true by default) the
        events are committed before this returns; otherwise within the group-commit window (module
        docstring).
        """
        if self._refusal is not None and not self._may_probe():
            raise OutboxError(self._refusal)
        if type(events) is not list and isinstance(events, Event | Mapping | str | bytes):
            raise ValidationError("events", "must be a list of events, not a single event", None)
        limit = self.config.batch_max_bytes
        rows = [_encode(i, event, limit) for i, event in enumerate(events)]
        if not rows:
            return 0
        if durable if durable is not None else self.config.durable:
            self._commit_group(rows)
            return len(rows)
        if len(self._buffer) + len(rows) > self.config.max_buffer_events:
            raise OutboxError(
                f"{len(self._buffer)} events wait for the outbox writer (max_buffer_events="
                f"{self.config.max_buffer_events}); the outbox file is not keeping up"
            )
        was_empty = not self._buffer
        self._buffer.extend(rows)
        if was_empty:
            self._first_at = time.perf_counter()
        if self._writer is None:
            self._start_writer()
        if not self._wake.is_set():
            self._wake.set()
        if self._closed:  # close() raced us: make sure these are written or reported
            with self._wlock:
                self._commit_locked()
        return len(rows)

    def _commit_group(self, rows: list[tuple[str, bytes]]) -> None:
        """Commit ``rows`` before returning, sharing the commit with every caller that arrives
        meanwhile; raise :class:`OutboxError` if the commit that held them failed.

        While one group commits, the next fills up behind its leader, who waits for the write
        lock; its followers sleep on locks of their own rather than queueing on the write lock, so
        a finished commit wakes them all instead of handing a lock from one to the next."""
        waiter = None
        with self._glock:
            group = self._group
            group.rows.extend(rows)
            lead = not group.led
            if lead:
                group.led = True
            else:
                waiter = _thread.allocate_lock()
                waiter.acquire()
                group.waiters.append(waiter)
        if waiter is not None:
            waiter.acquire()  # released by the leader once the group's commit is done
        else:
            try:
                with self._wlock:
                    with self._glock:
                        self._group = _Group()  # from here on, callers join the next group
                    self._commit_locked(group.rows)
            except Exception as exc:
                group.error = (
                    exc if isinstance(exc, OutboxError) else OutboxError(f"{type(exc).__name__}: {exc}")
                )
            finally:
                with self._glock:
                    if self._group is group:  # interrupted before closing it: never strand joiners
                        self._group = _Group()
                for follower in group.waiters:
                    follower.release()
        if group.error is not None:
            raise OutboxError(str(group.error))

    def _may_probe(self) -> bool:
        """While the store refuses because it failed, let one call through now and then to find out
        whether it works again (a closed or over-budget outbox is not probed: nothing to learn)."""
        if self._disk_error is None or self._closed or self._full:
            return False
        now = time.perf_counter()
        if now < self._probe_at:
            return False
        self._probe_at = now + _PROBE_INTERVAL
        return True

    def commit(self) -> int:
        """Write buffered events to the outbox file now; returns how many were written."""
        with self._wlock:
            return self._commit_locked()

    def _writer_store(self) -> Store:
        if self._store is None:
            if self._finished:
                raise OutboxError("the outbox is closed")
            self._store = Store(
                self.config.file,
                busy_timeout=self.config.busy_timeout,
                synchronous=self.config.synchronous,
                checkpoints=False,
            )
            self._set_usage(self._store.used_bytes())
        return self._store

    def _commit_locked(self, extra: Sequence[tuple[str, bytes]] = ()) -> int:
        """Commit the buffer (then ``extra``) in one statement. The caller holds ``_wlock``.

        On failure the buffer's events go back to the buffer (the writer tries them again) and
        ``extra``, a durable group, is not written at all: its callers are told so."""
        first_at = self._first_at
        buffer = self._buffer
        items: list[tuple[str, bytes]] = []
        if buffer:
            # Clear before draining: an event appended after this sets the flag again and wakes
            # the writer. Only as many as are there now: others may be appending meanwhile.
            self._wake.clear()
            items = [buffer.popleft() for _ in range(len(buffer))]
        elif not extra:
            return 0
        if self._finished:
            self._restore(items)
            raise OutboxError("the outbox is closed")
        rows = (items + list(extra) if items else extra) if extra else items
        size = sum(len(payload) for _, payload in rows)
        # An exact reading costs a statement; estimate between readings, except near the bound.
        estimate = self._used + size + 64 * len(rows)
        now = time.perf_counter()
        measure = (
            now - self._measured_at >= 1.0
            or estimate >= self.config.max_outbox_bytes * self.config.warn_outbox_fraction
        )
        try:
            last, used = self._writer_store().append(rows, self._clock.now().timestamp(), measure=measure)
        except (sqlite3.Error, OutboxError) as exc:
            self._restore(items)
            self._store_failed(exc)
            raise OutboxError(f"could not write to the outbox file {str(self.config.file)!r}: {exc}") from exc
        self._last_commit = now = time.perf_counter()
        if items:
            self._lags.append(now - first_at)
        count = len(rows)
        self._note_range(last - count + 1, last)
        self._counters.committed += count
        self._unckpt += 1
        if self._unckpt >= _CHECKPOINT_COMMITS and self._background and not self._closed:
            if self._writer is None:
                self._start_writer()
            self._wake.set()
        if self._disk_error is not None:
            log.warning("outbox %s is writable again; accepting events", self.config.file)
            self._disk_error = None
            self._refresh_refusal()
        if used is None:
            self._set_usage(estimate)
        else:
            self._measured_at = now
            self._set_usage(used)
        for sender in self._senders:
            sender.notify_committed(count)
        return count

    def _store_failed(self, exc: BaseException) -> None:
        """A write failed. Unless SQLite only waited in vain for another process's lock, the store
        itself is failing (disk full, read-only, I/O error): refuse events until a probe succeeds."""
        text = str(exc)
        low = text.lower()
        if any(t in low for t in _TRANSIENT):
            return
        if "full" in low:
            reason = f"the disk holding the outbox is full: {text}"
        elif "readonly" in low or "read-only" in low:
            reason = f"the outbox file is read-only: {text}"
        else:
            reason = f"the outbox file cannot be written: {text}"
        if self._disk_error is None:
            log.error(
                "outbox %s: %s; new events are refused (success=False) until it can be written again",
                self.config.file,
                reason,
            )
        self._disk_error = reason
        self._probe_at = time.perf_counter() + _PROBE_INTERVAL
        self._refresh_refusal()

    def _restore(self, items: list[tuple[str, bytes]]) -> None:
        """Put uncommitted events back, in order, ahead of newer ones, and make sure the writer returns."""
        if items:
            self._buffer.extendleft(reversed(items))
            self._wake.set()

    def _note_range(self, first: int, last: int) -> None:
        ranges = self._ranges
        if ranges and ranges[-1][1] + 1 == first:
            ranges[-1] = (ranges[-1][0], last)
        else:
            ranges.append((first, last))
            if len(ranges) > _MAX_RANGES:
                # Bounded memory: merge the oldest two. Flush may then also wait for rows other
                # processes wrote in between, which only makes it more conservative.
                older, newer = ranges.popleft(), ranges.popleft()
                ranges.appendleft((older[0], newer[1]))

    def _start_writer(self) -> None:
        with self._wlock:
            if self._writer is None and self._background and not self._closed:
                self._writer = threading.Thread(
                    target=self._write_loop, name="polar-metering-writer", daemon=True
                )
                self._writer.start()
                for sender in self._senders:
                    sender.start()  # lazily, e.g. in a forked child

    def _write_loop(self) -> None:
        failures = 0
        while True:
            self._wake.wait(1.0)
            if self._checkpoint_due():
                self._checkpoint()
            if not self._buffer:
                self._wake.clear()
                if self._buffer:  # an event arrived between the look and the clear
                    continue
                if self._stopping.is_set():
                    return
                continue
            # Group commit: commits are at least commit_interval apart, and events arriving meanwhile
            # share one. After a quiet spell the first event is committed at once.
            gap = self.config.commit_interval - (time.perf_counter() - self._last_commit)
            if gap > 0 and not self._stopping.is_set():
                self._stopping.wait(gap)
            try:
                with self._wlock:
                    self._commit_locked()
            except Exception as exc:
                failures += 1
                if failures in (1, 10, 100) or failures % 1000 == 0:
                    log.error(
                        "outbox writer failed %d time(s) in a row, %d events wait in memory: %s",
                        failures,
                        len(self._buffer),
                        exc,
                    )
                self._stopping.wait(min(1.0, 0.01 * 2.0 ** min(failures, 10)))
                if self._stopping.is_set() and failures >= 3:
                    return
                continue
            failures = 0
            if self._stopping.is_set() and not self._buffer:
                return

    # -- checkpoints ----------------------------------------------------------------------------------
    # Every commit appends at least one page to the WAL, and SQLite only reuses the WAL from the start
    # after a checkpoint. The connections commits go through never checkpoint (a caller would pay for
    # it), so this thread does: after _CHECKPOINT_COMMITS commits, or a second after the last one.
    def _checkpoint_due(self) -> bool:
        pending = self._unckpt
        return pending >= _CHECKPOINT_COMMITS or (
            pending > 0 and time.perf_counter() - self._last_commit >= 1.0
        )

    def _checkpoint(self) -> None:
        """A PASSIVE checkpoint on this thread's own connection, holding the process's file lock: with
        no commit of ours appending meanwhile it can copy the whole WAL, so the next commit starts
        the WAL over instead of growing it. (Without the lock, under steady tracking, it never
        catches up.) It never waits for another process: PASSIVE gives up instead."""
        seen = self._unckpt
        store = self._store
        if store is None:
            return
        try:
            if self._ckpt is None:
                self._ckpt = sqlite3.connect(
                    str(self.config.file), timeout=0, isolation_level=None, check_same_thread=False
                )
                self._ckpt.execute(f"PRAGMA journal_size_limit={_WAL_SIZE_LIMIT}")
            with store.lock:
                self._ckpt.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as exc:
            log.debug("outbox checkpoint skipped: %s", exc)
            return
        self._unckpt = max(0, self._unckpt - seen)

    # -- disk bound -----------------------------------------------------------------------------------
    def _set_usage(self, used: int) -> None:
        self._used = used
        limit = self.config.max_outbox_bytes
        warn_at = limit * self.config.warn_outbox_fraction
        if used >= warn_at and not self._warned:
            self._warned = True
            log.warning(
                "outbox %s uses %d of its %d bytes (max_outbox_bytes); new events will be refused once it "
                "is full. Is delivery to Polar stuck? See Outbox.status().",
                self.config.file,
                used,
                limit,
            )
        elif used < warn_at * 0.9:
            self._warned = False
        full = used >= limit
        if full != self._full:
            self._full = full
            if full:
                log.error(
                    "outbox %s is full (%d of %d bytes); new events are refused until delivery frees space",
                    self.config.file,
                    used,
                    limit,
                )
            else:
                log.warning(
                    "outbox %s has room again (%d of %d bytes); accepting events",
                    self.config.file,
                    used,
                    limit,
                )
            self._refresh_refusal()

    def _refresh_refusal(self) -> None:
        if self._closed:
            self._refusal = "the outbox is closed"
        elif self._disk_error is not None:
            self._refusal = self._disk_error
        elif self._full:
            self._refusal = (
                f"the outbox is full ({self._used} bytes used, max_outbox_bytes="
                f"{self.config.max_outbox_bytes}): events are not being delivered fast enough"
            )
        else:
            self._refusal = None

    def _on_progress(self, store: Store) -> None:
        self._set_usage(store.used_bytes())
        with self._progress:
            self._progress.notify_all()

    # -- waiting for delivery -------------------------------------------------------------------------
    def flush(self, timeout: float | None = None) -> bool:
        """Commit, then wait until every event this process queued so far has left the outbox
        (delivered, or dead-lettered); True if so within ``timeout`` seconds (``None``: no limit).
        Never raises because of delivery trouble."""
        limit = _timeout("timeout", timeout)
        self._check_process()
        if self._closed:
            return self._close_result
        try:
            self.commit()
        except OutboxError as exc:
            log.error("flush could not write buffered events: %s", exc)
            return False
        with self._wlock:
            mine = list(self._ranges)
        return self._wait_for(mine, time.monotonic() + limit)

    def drain(self, timeout: float | None = None) -> bool:
        """Like :meth:`flush`, for every event in the outbox file, whichever process queued it."""
        limit = _timeout("timeout", timeout)
        self._check_process()
        if self._closed:
            return self._close_result
        try:
            self.commit()
            last = self._writer_store().last_id()
        except (OutboxError, sqlite3.Error) as exc:
            log.error("drain could not read the outbox: %s", exc)
            return False
        return self._wait_for([(0, last)], time.monotonic() + limit)

    def _wait_for(self, ranges: list[tuple[int, int]], deadline: float) -> bool:
        """Wait until no row in ``ranges`` is left in the outbox (delivered or dead-lettered)."""
        for sender in self._senders:
            if self._background and not self._closed:
                sender.start()
            sender.request_flush()
        pending = ranges
        try:
            while True:
                try:
                    store = self._writer_store()
                    pending = [r for r in pending if store.any_between(*r)]
                except (OutboxError, sqlite3.Error) as exc:
                    if self._finished:
                        return False
                    log.warning("could not read the outbox while waiting for delivery: %s", exc)
                if not pending:
                    self._forget(ranges)
                    return True
                left = deadline - time.monotonic()
                if left <= 0 or not self._background:  # without threads nothing here moves: no wait
                    return False
                with self._progress:
                    # Other processes' senders do not notify us: poll as well.
                    self._progress.wait(min(left, 0.05))
        finally:
            for sender in self._senders:
                sender.end_flush()

    def _forget(self, delivered: list[tuple[int, int]]) -> None:
        """Stop tracking own ranges now known to be out of the outbox."""
        gone = set(delivered)
        spans = [last for first, last in delivered if first == 0]  # drain's "everything up to last"
        with self._wlock:
            self._ranges = deque(
                r for r in self._ranges if r not in gone and not any(r[1] <= last for last in spans)
            )

    def close(self, timeout: float | None = None) -> bool:
        """Stop accepting events, commit the buffer, then, with a transport, deliver like
        :meth:`drain` (every event in the file, including ones earlier processes left behind) for up
        to ``timeout`` seconds (default ``exit_timeout``), and stop the threads.

        True when everything was written and, with a transport, nothing was left in the file.
        Undelivered events stay there for the next sender. Safe to call more than once: later calls
        return the first call's answer."""
        limit = self.config.exit_timeout if timeout is None else _timeout("timeout", timeout)
        with self._close_lock:
            if self._closed:
                return self._close_result
            self._closed = True
            self._refresh_refusal()
        _LIVE.discard(self)
        deadline = time.monotonic() + limit
        self._stopping.set()
        self._wake.set()
        if self._writer is not None:
            self._writer.join(max(0.0, deadline - time.monotonic()))
        written = False
        if self._wlock.acquire(timeout=max(0.01, deadline - time.monotonic())):
            try:
                self._commit_locked()
                written = True
            except OutboxError as exc:
                # Only durable=False events can be here: acknowledged, never written, and the
                # process is about to drop them. Say so plainly.
                log.error(
                    "outbox %s: %d tracked events (durable=False) could not be written and are lost: %s",
                    self.config.file,
                    len(self._buffer),
                    exc,
                )
            finally:
                self._wlock.release()
        else:
            log.error(
                "outbox %s: the writer is stuck; %d tracked events (durable=False) were not written and "
                "are lost",
                self.config.file,
                len(self._buffer),
            )
        delivered = written
        if written and self._sender is not None:
            # The last chance this process has to deliver: leftovers of crashed processes too, not
            # only its own events (a short-lived job may never run long enough otherwise).
            try:
                last = self._writer_store().last_id()
            except (OutboxError, sqlite3.Error) as exc:
                log.error("close could not read the outbox: %s", exc)
                last = 0
            delivered = self._wait_for([(0, last)], deadline)
        for sender in self._senders:  # all at once: each may be in the middle of a request
            sender.request_stop()
        for sender in self._senders:
            sender.stop(max(0.0, deadline - time.monotonic()))
            sender.close_store()
        if written and not delivered:
            try:
                pending, leased, _, _, _ = self._writer_store().counts(self._clock.now().timestamp())
                left = f"{pending + leased} events"
            except (OutboxError, sqlite3.Error):
                left = "events"
            log.warning(
                "outbox %s closed with %s not yet delivered; they are in the file, and the next process "
                "to open it sends them",
                self.config.file,
                left,
            )
        with self._wlock:
            self._finished = True
            if self._store is not None:
                self._store.close()
                self._store = None
            if self._ckpt is not None and (self._writer is None or not self._writer.is_alive()):
                self._ckpt.close()
                self._ckpt = None
        self._close_result = delivered
        return delivered

    def _check_process(self) -> None:
        if os.getpid() != self._pid:  # forked without our at-fork hook (it always runs for os.fork)
            self._after_fork()

    def _open_store(self) -> Store:
        self._check_process()
        if self._closed:
            raise OutboxError("the outbox is closed")
        return self._writer_store()

    # -- operators ------------------------------------------------------------------------------------
    @property
    def sender(self) -> Sender | None:
        """The first sender (``None`` without a transport); ``sender.step()`` drives it by hand.
        An outbox made with ``background=False`` has exactly one."""
        return self._sender

    def pace(self) -> PaceState:
        """The adaptive delivery's current limits: requests in flight, events per request, timeout."""
        return self._pace.state()

    def metrics(self) -> DeliveryMetrics:
        """Counters for this process: committed, sent, duplicates, retries, dead-lettered, commit lag."""
        return self._counters.snapshot(list(self._lags), [sender.counters for sender in self._senders])

    def status(self) -> OutboxStatus:
        """Counts and sizes of the outbox file (scans it; for operators, not the request path)."""
        store = self._open_store()
        now = self._clock.now().timestamp()
        pending, leased, dead, oldest, not_before = store.counts(now)
        return OutboxStatus(
            path=str(self.config.file),
            pending=pending,
            leased=leased,
            dead=dead,
            buffered=len(self._buffer),
            oldest_age_s=None if oldest is None else max(0.0, now - oldest),
            bytes=store.used_bytes(),
            max_bytes=self.config.max_outbox_bytes,
            paused_until=datetime.fromtimestamp(not_before, UTC) if not_before > now else None,
            accepting=self._refusal is None,
        )

    def queued_external_ids(self) -> list[str]:
        """The ``external_id`` of every event waiting in the outbox file (pending or leased), in
        order; for ``polar-metering reconcile``, not the request path."""
        return self._open_store().external_ids()

    def dead_letters(self, limit: int = 100, *, offset: int = 0) -> list[DeadLetter]:
        """Dead-lettered events, oldest first, with Polar's reason."""
        for name, value, low in (("limit", limit, 1), ("offset", offset, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValidationError(name, f"must be an integer >= {low}", value)
        rows = self._open_store().dead_letters(limit, offset)
        return [
            DeadLetter(
                id=rid,
                external_id=eid,
                event=json.loads(payload),
                reason=reason,
                errors=json.loads(errors),
                attempts=attempts,
                enqueued_at=datetime.fromtimestamp(enqueued, UTC),
                dead_at=datetime.fromtimestamp(dead_at, UTC),
            )
            for rid, eid, payload, reason, errors, attempts, enqueued, dead_at in rows
        ]

    def retry_dead_letters(self, ids: Sequence[int] | None = None) -> int:
        """Put dead letters (all, or those with these ids) back in the outbox; returns how many."""
        if ids is not None:
            if isinstance(ids, str | bytes) or not isinstance(ids, Sequence):
                raise ValidationError("ids", "must be None or a list of dead-letter ids", ids)
            for i, value in enumerate(ids):
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ValidationError(f"ids[{i}]", "must be an integer dead-letter id", value)
        moved = self._open_store().retry_dead(ids)
        if moved:
            for sender in self._senders:
                sender.notify_committed(moved)
        return moved

    def __enter__(self) -> Outbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"Outbox({str(self.config.file)!r}, {state})"


def _before_fork() -> None:
    for outbox in list(_LIVE):
        stores = [outbox._store, *(sender._store for sender in outbox._senders)]
        for store in stores:
            if store is not None and store.lock.acquire(timeout=outbox.config.busy_timeout + 1.0):
                _HELD_FOR_FORK.append(store.lock)


def _after_fork_in_parent() -> None:
    while _HELD_FOR_FORK:
        _HELD_FOR_FORK.pop().release()


def _after_fork_in_child() -> None:
    _HELD_FOR_FORK.clear()  # they belong to the stores the child abandons
    for outbox in list(_LIVE):
        outbox._after_fork()


def _close_all_at_exit() -> None:
    """The exit hook: close every open outbox, each within its ``exit_timeout`` from now."""
    start = time.monotonic()
    for outbox in list(_LIVE):
        if outbox._pid != os.getpid():
            continue
        try:
            outbox.close(max(0.0, start + outbox.config.exit_timeout - time.monotonic()))
        except Exception:  # the interpreter is ending: report, never raise
            log.exception("closing outbox %s at exit failed", outbox.config.file)


os.register_at_fork(
    before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child
)
atexit.register(_close_all_at_exit)
