"""The outbox file: one SQLite database in WAL mode, shared by every process that opens it.

Tables:

- ``outbox``: append-only, keyed by the integer rowid (append order, perf floors: ~200k rows/s in
  batches). No secondary index: claims walk the rowid order from the head, and the head is where
  the claimable rows are. A row is *leased* while ``lease_expires`` is in the future; *delayed*
  while ``next_attempt_at`` is. ``attempts`` counts sends, ``strikes`` the refusals that lead to
  the dead-letter table.
- ``dead_letters``: events Polar will not take, with its reason, until someone retries them.
- ``delivery_state``: the token bucket and the shared pause (``not_before``) every sender obeys.

Appends are one autocommit ``INSERT``; claims and settlements run in ``BEGIN IMMEDIATE`` so two
processes never interleave them. Claims look before they lock: the write lock is taken only when a
batch is due.
"""

from __future__ import annotations

import functools
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from polar_metering._exceptions import OutboxError
from polar_metering.delivery._codec import BIG_INT_MARK, dumps
from polar_metering.delivery._codec import loads as _loads
from polar_metering.delivery._policy import body_bytes, plan_batch, take_token

__all__ = ["Claim", "Row", "Store", "StoreUnavailable", "lease_owner", "unwritable"]

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY,
    external_id TEXT NOT NULL,
    payload TEXT NOT NULL,
    nbytes INTEGER NOT NULL,
    enqueued_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    strikes INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    lease_owner TEXT,
    lease_expires REAL NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY,
    external_id TEXT NOT NULL,
    payload TEXT NOT NULL,
    reason TEXT NOT NULL,
    errors TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    enqueued_at REAL NOT NULL,
    dead_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS delivery_state (key TEXT PRIMARY KEY, value REAL NOT NULL) WITHOUT ROWID;
"""

# Timestamps are float seconds since 1970 (~0.2 µs apart at today's magnitude) and clocks tick in
# microseconds: anything due within this slack counts as due, so a wait never rounds down to zero.
_SLACK = 1e-6
# Bounds the scan that looks for the next due row when nothing is claimable; the head of the
# table is where delayed and leased rows sit, so a prefix answers it.
_DUE_SCAN = 10_000


class Row(NamedTuple):
    """A claimed outbox row; ``event`` is its payload decoded (``None`` when the claim was asked
    not to decode: then :attr:`Claim.body` holds every payload)."""

    id: int
    external_id: str
    event: dict[str, Any] | None
    strikes: int
    enqueued_at: float


@dataclass(frozen=True, slots=True)
class Claim:
    """Rows leased to the caller, or none and ``wait``: seconds until something may be claimable
    (``inf`` when the outbox is empty). ``empty``: no row was claimable at all. ``body``: with
    ``decode=False``, the ingest request body ``{"events":[...]}`` made of the stored payloads as
    they are, in the order of ``rows``."""

    rows: list[Row]
    wait: float = 0.0
    empty: bool = False
    body: bytes | None = None


# One statement for any number of rows: (external_id, payload text, bytes) triples as a JSON array.
# json_extract returns a JSON string's text exactly as encoded, so the payload is stored verbatim.
_INSERT = (
    "INSERT INTO outbox (external_id, payload, nbytes, enqueued_at) "
    "SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), json_extract(value, '$[2]'), ? "
    "FROM json_each(?) ORDER BY key"
)
# Up to this many rows go in as a VALUES list (a statement per count, kept in sqlite3's cache).
_VALUES_MAX = 32


@functools.cache
def _values_insert(count: int) -> str:
    rows = ", ".join(["(?, ?, ?, ?)"] * count)
    return f"INSERT INTO outbox (external_id, payload, nbytes, enqueued_at) VALUES {rows}"


_USED_BYTES = (
    "((SELECT page_count FROM pragma_page_count()) - (SELECT freelist_count FROM pragma_freelist_count()))"
    " * (SELECT page_size FROM pragma_page_size())"
)


# One lock per outbox file per process, shared by every connection to it (the writer's, the
# senders'). Threads of one process then queue on it instead of meeting SQLITE_BUSY, whose handler
# sleeps in growing steps (1, 2, 5 ... 100 ms) and so may sleep long after the file came free. Other
# processes still meet the busy handler; there is nothing better between processes.
_FILE_LOCKS: dict[str, threading.RLock] = {}
_FILE_LOCKS_GUARD = threading.Lock()


def _file_lock(path: Path) -> threading.RLock:
    key = os.path.realpath(path)
    with _FILE_LOCKS_GUARD:
        lock = _FILE_LOCKS.get(key)
        if lock is None:
            lock = _FILE_LOCKS[key] = threading.RLock()
        return lock


def _forget_file_locks() -> None:
    # A forked child holds copies of locks some parent thread may have held at the fork.
    global _FILE_LOCKS_GUARD
    _FILE_LOCKS_GUARD = threading.Lock()
    _FILE_LOCKS.clear()


os.register_at_fork(after_in_child=_forget_file_locks)


class StoreUnavailable(OutboxError):
    """The file cannot be opened or written right now (read-only, disk full, I/O error, missing
    permissions): a state of the machine that may pass, unlike a file that is not an outbox."""


# SQLite's words for a file system that will not take writes (sqlite3 exceptions carry no errno).
_UNWRITABLE = ("readonly", "read-only", "disk is full", "disk i/o error", "unable to open", "permission")


def unwritable(exc: BaseException) -> bool:
    """Whether a SQLite error says the file cannot be written (see :class:`StoreUnavailable`)."""
    text = str(exc).lower()
    return any(word in text for word in _UNWRITABLE)


def _boot_id() -> str:
    """This host's boot: leases it wrote name it, so a later process on the same host can tell
    whether their owner still runs (process ids are reused only within a boot)."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        import socket

        return socket.gethostname()


_BOOT = _boot_id()


def lease_owner(pid: int, tag: str) -> str:
    """A lease owner name: this host's boot, the process id, and a tag unique to the sender."""
    return f"{_BOOT}/{pid}/{tag}"


def _owner_gone(owner: str) -> bool:
    """True only when ``owner`` names a process of this boot that no longer exists. Anything else
    (another host, an old owner format, a live or foreign process) keeps its lease until it expires."""
    boot, _, rest = owner.partition("/")
    pid_text = rest.partition("/")[0]
    if boot != _BOOT or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # it exists but is not ours to signal
        return False
    return False


def _ids(ids: Sequence[int]) -> str:
    return json.dumps(list(ids))


class Store:
    """One connection to the outbox file. Thread-safe: every call holds ``self.lock``, which every
    connection of this process to the same file shares."""

    def __init__(
        self, path: Path, *, busy_timeout: float, synchronous: str, checkpoints: bool = True
    ) -> None:
        """Open (creating if needed) the outbox at ``path``. ``checkpoints=False`` leaves WAL
        checkpoints (an fsync of the database file) to other connections: for the ones commits on
        callers' threads go through, so that a caller never pays for one."""
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(
                str(path), timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
        except (OSError, sqlite3.Error) as exc:
            raise StoreUnavailable(f"path: cannot open the outbox file {str(path)!r}: {exc}") from exc
        self.lock = _file_lock(path)
        try:
            self._setup(synchronous, busy_timeout)
            if not checkpoints:
                self.conn.execute("PRAGMA wal_autocheckpoint=0")
        except sqlite3.Error as exc:
            self.conn.close()
            if unwritable(exc):
                raise StoreUnavailable(f"path: cannot write the outbox file {str(path)!r}: {exc}") from exc
            raise OutboxError(f"path: {str(path)!r} is not a usable outbox: {exc}") from exc

    def _setup(self, synchronous: str, busy_timeout: float) -> None:
        deadline = time.monotonic() + busy_timeout
        while True:
            try:
                mode = self.conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                break
            except sqlite3.OperationalError:
                # Switching to WAL needs a moment alone with the file; another process may be opening it.
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        if str(mode).lower() != "wal":
            raise OutboxError(f"path: {str(self.path)!r} could not switch to WAL mode (got {mode!r})")
        self.conn.execute(f"PRAGMA synchronous={synchronous}")
        # Once the WAL can be reused from the start, cut a file grown during a backlog back down.
        self.conn.execute("PRAGMA journal_size_limit=16777216")
        with self.transaction():
            version = self.conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise OutboxError(
                    f"path: {str(self.path)!r} was written by a newer polar-metering (schema {version})"
                )
            if version == 0:
                # One statement at a time: executescript would commit our transaction first.
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self.conn.execute(statement)
                self.conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` under the lock; roll back on any error."""
        with self.lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
            self.conn.execute("COMMIT")

    def close(self) -> None:
        with self.lock:
            self.conn.close()

    # -- the hot path ---------------------------------------------------------------------------------
    def append(
        self, rows: Sequence[tuple[str, bytes]], now: float, *, measure: bool = True
    ) -> tuple[int, int | None]:
        """Append encoded events in order; returns the rowid of the last one and, when ``measure``,
        the bytes the file uses.

        The writer shares the GIL with request threads and each SQLite call releases it; while a
        request thread computes, taking it back costs up to the switch interval (5 ms). So a commit
        is one autocommit ``INSERT`` (atomic on its own) whatever its size, plus one ``SELECT`` when
        the size is wanted.
        """
        if len(rows) <= _VALUES_MAX:
            # Few rows (a durable commit shared by the callers of one moment): a VALUES list is
            # three times cheaper than decoding a JSON array in SQLite for one row.
            sql = _values_insert(len(rows))
            args: list[Any] = []
            for eid, payload in rows:
                args += (eid, payload.decode(), len(payload), now)
        else:
            sql = _INSERT
            args = [now, dumps([(eid, payload.decode(), len(payload)) for eid, payload in rows])]
        with self.lock:
            last = self.conn.execute(sql, args).lastrowid
            used = self.conn.execute(f"SELECT {_USED_BYTES}").fetchone()[0] if measure else None
        assert last is not None
        return last, None if used is None else int(used)

    def claim(
        self,
        owner: str,
        now: float,
        *,
        max_events: int,
        max_bytes: int,
        max_age: float,
        force: bool,
        lease_seconds: float,
        rate: float,
        burst: int,
        decode: bool = True,
    ) -> Claim:
        """Lease the next batch to ``owner``, if one is ready and the shared gate lets a request go.

        A batch is ready when it is full (by count or bytes), when its oldest event has waited
        ``max_age``, or when ``force`` (a flush) says so. ``decode=False`` leaves the payloads as
        the request body (``Claim.body``) instead of decoding each into ``Row.event``.
        """
        due_at = now + _SLACK
        with self.lock:
            # Look first without the write lock: most rounds find nothing due, and a sender that
            # loses the GIL mid-transaction would hold up every writer of the file meanwhile.
            conn = self.conn
            state = dict(conn.execute("SELECT key, value FROM delivery_state").fetchall())
            not_before = state.get("not_before", 0.0)
            if due_at < not_before:
                return Claim([], not_before - now)
            # One row back, not one per candidate: a cursor gives up the GIL for every row it steps
            # to, and while a request thread computes each return costs up to the switch interval
            # (5 ms): a thousand-row fetch could take seconds. Aggregates visit the rows in the same
            # order, so the two lists pair up; sorting restores rowid order whatever that order is.
            found = conn.execute(
                "SELECT json_group_array(id), json_group_array(nbytes), min(enqueued_at) FROM "
                "(SELECT id, nbytes, enqueued_at FROM outbox "
                "WHERE lease_expires <= ? AND next_attempt_at <= ? ORDER BY id LIMIT ?)",
                (due_at, due_at, max_events),
            ).fetchone()
            candidates = sorted(zip(_loads(found[0]), _loads(found[1]), strict=True))
            if not candidates:
                due = conn.execute(
                    "SELECT min(max(next_attempt_at, lease_expires)) FROM "
                    "(SELECT next_attempt_at, lease_expires FROM outbox ORDER BY id LIMIT ?)",
                    (_DUE_SCAN,),
                ).fetchone()[0]
                return Claim([], float("inf") if due is None else max(0.0, due - now), empty=True)
            sizes = [c[1] for c in candidates]
            count = plan_batch(sizes, max_events=max_events, max_bytes=max_bytes)
            full = count < len(candidates) or count == max_events or body_bytes(sizes[:count]) >= max_bytes
            age = now - found[2]
            if not (force or full or age + _SLACK >= max_age):
                return Claim([], max_age - age)
            _, _, wait = take_token(
                state.get("tokens", float(burst)), state.get("tokens_at", now), now, rate=rate, burst=burst
            )
            if wait > 0:
                return Claim([], wait)
            with self.transaction():
                # Under the write lock: the gate and the rows may have changed since we looked.
                state = dict(conn.execute("SELECT key, value FROM delivery_state").fetchall())
                if due_at < state.get("not_before", 0.0):
                    return Claim([], state["not_before"] - now)
                tokens, stamp, wait = take_token(
                    state.get("tokens", float(burst)),
                    state.get("tokens_at", now),
                    now,
                    rate=rate,
                    burst=burst,
                )
                if wait > 0:
                    return Claim([], wait)
                expires = now + lease_seconds
                # Exactly the planned rows, minus any another sender took meanwhile.
                leased = conn.execute(
                    "UPDATE outbox SET lease_owner = ?, lease_expires = ?, attempts = attempts + 1 "
                    "WHERE id IN (SELECT value FROM json_each(?)) "
                    "AND lease_expires <= ? AND next_attempt_at <= ?",
                    (owner, expires, _ids([c[0] for c in candidates[:count]]), due_at, due_at),
                ).rowcount
                if not leased:
                    return Claim([], 0.0)
                conn.execute(
                    "INSERT OR REPLACE INTO delivery_state (key, value) "
                    "VALUES ('tokens', ?), ('tokens_at', ?)",
                    (tokens, stamp),
                )
                # One row again (see above). Payloads are joined verbatim, never re-rendered by
                # SQLite's JSON functions, which print floats with 15 significant digits.
                meta, payloads, big_ints = conn.execute(
                    "SELECT json_group_array(json_array(id, external_id, strikes, enqueued_at)), "
                    "group_concat(payload, ','), max(substr(payload, 1, 1) = ?) FROM "
                    "(SELECT id, external_id, strikes, enqueued_at, payload FROM outbox "
                    "WHERE id BETWEEN ? AND ? AND lease_owner = ? AND lease_expires = ? ORDER BY id)",
                    (BIG_INT_MARK, candidates[0][0], candidates[count - 1][0], owner, expires),
                ).fetchone()
        ordered = [tuple(m) for m in _loads(meta)]
        in_order = all(ordered[i][0] < ordered[i + 1][0] for i in range(len(ordered) - 1))
        if not decode and payloads and in_order:
            # The payloads as stored are the request: nothing is decoded or encoded again.
            rows = [Row(rid, eid, None, strikes, at) for rid, eid, strikes, at in ordered]
            return Claim(rows, body=b'{"events":[' + payloads.encode() + b"]}")
        events = _loads(f"[{payloads}]", big_ints=bool(big_ints)) if payloads else []
        rows = [
            Row(rid, eid, event, strikes, at)
            for (rid, eid, strikes, at), event in zip(ordered, events, strict=True)
        ]
        rows.sort(key=lambda row: row.id)
        return Claim(rows)

    def settle(
        self,
        owner: str,
        now: float,
        *,
        ack: Sequence[int] = (),
        release: Sequence[int] = (),
        retry: Sequence[tuple[int, float, int]] = (),
        dead: Sequence[tuple[int, str, list[Any]]] = (),
        error: str | None = None,
        not_before: float | None = None,
    ) -> None:
        """Record a send's outcome in one transaction.

        ``ack``: delivered, deleted whoever holds them now (a resend is harmless,
        server/polar/event/repository.py). ``release``:
        lease dropped, sendable at once. ``retry``: ``(id, next_attempt_at, strike)`` with the lease
        dropped. ``dead``: ``(id, reason, errors)`` moved to the dead-letter table. Rows whose lease
        passed to another sender are left to it. ``not_before`` pauses every sender on the file.
        """
        if ack and not (release or retry or dead or not_before is not None):
            # The common case, a delivered batch: one statement is atomic on its own, and each
            # statement spared is one GIL hand-off spared (see ``claim``).
            with self.lock:
                self.conn.execute(
                    "DELETE FROM outbox WHERE id IN (SELECT value FROM json_each(?))", (_ids(ack),)
                )
            return
        with self.transaction() as conn:
            if ack:
                conn.execute("DELETE FROM outbox WHERE id IN (SELECT value FROM json_each(?))", (_ids(ack),))
            if release:
                conn.execute(
                    "UPDATE outbox SET lease_owner = NULL, lease_expires = 0 "
                    "WHERE id IN (SELECT value FROM json_each(?)) AND lease_owner = ?",
                    (_ids(release), owner),
                )
            if retry:
                conn.executemany(
                    "UPDATE outbox SET lease_owner = NULL, lease_expires = 0, next_attempt_at = ?, "
                    "strikes = strikes + ?, last_error = ? WHERE id = ? AND lease_owner = ?",
                    [(at, strike, error, rid, owner) for rid, at, strike in retry],
                )
            for rid, reason, errors in dead:
                moved = conn.execute(
                    "INSERT INTO dead_letters "
                    "(external_id, payload, reason, errors, attempts, enqueued_at, dead_at) "
                    "SELECT external_id, payload, ?, ?, attempts, enqueued_at, ? FROM outbox "
                    "WHERE id = ? AND lease_owner = ?",
                    (reason, json.dumps(errors, default=str), now, rid, owner),
                ).rowcount
                if moved:
                    conn.execute("DELETE FROM outbox WHERE id = ?", (rid,))
            if not_before is not None:
                conn.execute(
                    "INSERT INTO delivery_state (key, value) VALUES ('not_before', ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = max(value, excluded.value)",
                    (not_before,),
                )

    def reclaim_dead(self, now: float) -> int:
        """Free the leases of senders that died on this host (SIGKILL, OOM, a crash) so their rows
        go out now instead of after ``lease_seconds``; returns how many rows were freed. Polar drops
        whatever of them had arrived already (server/polar/event/repository.py), so sending them again is
        safe."""
        with self.lock:
            owners = [
                row[0]
                for row in self.conn.execute(
                    "SELECT DISTINCT lease_owner FROM (SELECT lease_owner FROM outbox "
                    "WHERE lease_expires > ? ORDER BY id LIMIT ?)",
                    (now, _DUE_SCAN),
                )
                if row[0] is not None
            ]
            dead = [owner for owner in owners if _owner_gone(owner)]
            if not dead:
                return 0
            freed: int = self.conn.execute(
                "UPDATE outbox SET lease_owner = NULL, lease_expires = 0 "
                "WHERE lease_owner IN (SELECT value FROM json_each(?))",
                (json.dumps(dead),),
            ).rowcount
        return freed

    # -- reads ----------------------------------------------------------------------------------------
    def any_between(self, first: int, last: int) -> bool:
        """Whether any row with ``first <= id <= last`` is still in the outbox (pending or leased)."""
        with self.lock:
            row = self.conn.execute(
                "SELECT EXISTS (SELECT 1 FROM outbox WHERE id BETWEEN ? AND ?)", (first, last)
            ).fetchone()
        return bool(row[0])

    def last_id(self) -> int:
        with self.lock:
            value = self.conn.execute("SELECT max(id) FROM outbox").fetchone()[0]
        return int(value or 0)

    def checkpoint(self) -> None:
        """Copy committed WAL pages into the database file, without waiting for anyone (PASSIVE)."""
        with self.lock:
            self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()

    def used_bytes(self) -> int:
        """Bytes the database uses (pages in use, not free ones): what the disk bound limits."""
        with self.lock:
            return int(self.conn.execute(f"SELECT {_USED_BYTES}").fetchone()[0])

    def counts(self, now: float) -> tuple[int, int, int, float | None, float]:
        """``(pending, leased, dead, oldest enqueued_at, not_before)``; scans the table, for operators."""
        with self.lock:
            total, leased, oldest = self.conn.execute(
                "SELECT count(*), coalesce(sum(lease_expires > ?), 0), min(enqueued_at) FROM outbox", (now,)
            ).fetchone()
            dead = self.conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0]
            row = self.conn.execute("SELECT value FROM delivery_state WHERE key = 'not_before'").fetchone()
        return total - leased, leased, dead, oldest, (row[0] if row else 0.0)

    def external_ids(self) -> list[str]:
        with self.lock:
            return [r[0] for r in self.conn.execute("SELECT external_id FROM outbox ORDER BY id")]

    def dead_letters(self, limit: int, offset: int) -> list[tuple[Any, ...]]:
        with self.lock:
            return self.conn.execute(
                "SELECT id, external_id, payload, reason, errors, attempts, enqueued_at, dead_at "
                "FROM dead_letters ORDER BY id LIMIT ? OFFSET ?",
                (limit, offset),
            ).fetchall()

    def retry_dead(self, ids: Sequence[int] | None) -> int:
        """Move dead letters (all, or these ids) back to the outbox tail; returns how many moved."""
        where, args = (
            ("", ()) if ids is None else ("WHERE id IN (SELECT value FROM json_each(?))", (_ids(ids),))
        )
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO outbox (external_id, payload, nbytes, enqueued_at) "
                "SELECT external_id, payload, length(CAST(payload AS BLOB)), enqueued_at "
                f"FROM dead_letters {where} ORDER BY id",
                args,
            )
            moved: int = conn.execute(f"DELETE FROM dead_letters {where}", args).rowcount
        return moved
