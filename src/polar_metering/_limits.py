"""Limits on a backend that lags: a reading cache, an overlay of unsettled usage, and in-process holds.

Polar recomputes a customer's meters about 15 s after the customer's last event, later under steady
traffic (server/polar/customer_meter/tasks.py), so a fresh read from Polar can still miss what this process
just tracked. A limit
check here answers from the *effective reading*::

    Polar's customer meter (cached: ReadingCache)
      + usage this process tracked that Polar has not counted yet (UsageOverlay)
      + this process's active reservations (HoldLedger)

No I/O happens in this module: :class:`Limits` ties the three together and is handed a ``fetch``
function (customer, meters -> readings with Polar's ``modified_at``) and an ``ingest`` function by
the backend. Every duration is measured on the injected clock's ``monotonic()``.

**How the overlay combines with a reading** (per aggregation, server/polar/meter/aggregation.py): ``count``
and ``sum`` add;
``max`` takes the larger of Polar's value and the largest unsettled value; ``unique`` adds the
unsettled values that are not known to be counted already (values this process saw settle this
period). ``min`` and ``avg`` are not overlaid: Polar reports no sample count, so one more value
cannot be folded in; their readings are Polar's alone.

**When an overlay entry stops counting** (the settle rule). An entry leaves the overlay when either:

1. *Settled*: this process's sender delivered the event in a request that **started** at wall time
   ``s``, and a reading of the (customer, meter) row carries Polar's ``modified_at`` ``M`` with
   ``s <= M``. Polar only counts an event in a recompute that runs after the event was stored, and
   the event is stored after its request started, so ``s <= M`` is necessary for the row to include
   it; it is taken as sufficient. It is wrong only when a recompute begins while the ingest request
   is in flight (milliseconds, at most the SDK timeout), which Polar's debounce makes rare: each
   ingest pushes the customer's recompute 15 s further out (server/polar/customer_meter/tasks.py). Clock skew
   between this machine
   and Polar widens the window by the skew; ``settle_margin`` (seconds) closes it at the cost of
   settling later.
2. *Expired*: an entry whose delivery this process saw is dropped after ``settle_horizon``
   (default 190 min: Polar forces a recompute at most 180 min after a customer's first pending
   event, server/polar/customer_meter/tasks.py). An entry whose delivery this process never saw (still
   queued, dead-lettered, or sent
   by another process sharing the outbox file) is dropped after ``unconfirmed_horizon`` (default
   60 s). Past the horizons the overlay under-counts (Polar down for longer, or a recompute that
   never came); before them it may over-count events another process delivered.

**Atomicity.** ``hold`` checks and holds under one lock, and ``settle`` records the usage and ends
the hold under the same lock, so threads of one process never oversubscribe a limit. Holds live in
this process only: two processes (or hosts) each see their own holds and their own unsettled usage,
and each other's only once Polar has counted it. Across processes a limit can therefore be exceeded
by what the other processes used within the last ~15-20 s (Polar's debounce plus delivery).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import threading
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import Any, TypeAlias

from polar_metering._catalog import Catalog, Meter
from polar_metering._clock import Clock
from polar_metering._evaluate import compile_filter, compile_value_reader, unique_key, unique_reader
from polar_metering._events import Event
from polar_metering._exceptions import BackendError, RateLimited
from polar_metering._projection import project
from polar_metering._status import MeterReading
from polar_metering.backends._base import Hold, IngestResult

__all__ = [
    "SETTLE_HORIZON",
    "UNCONFIRMED_HORIZON",
    "CacheStats",
    "CachedReading",
    "Fetch",
    "HoldLedger",
    "Limits",
    "MarkingTransport",
    "ReadingCache",
    "UsageOverlay",
]

log = logging.getLogger("polar_metering")

Key: TypeAlias = tuple[str, str]  # (customer, meter slug)
#: ``fetch(customer, meters)`` -> ``{slug: (reading, modified_at as epoch seconds or None)}``
Fetch: TypeAlias = Callable[[str, Sequence[Meter]], Mapping[str, tuple[MeterReading, float | None]]]

#: Polar forces a customer-meter recompute 180 min after the first pending event
#: (server/polar/customer_meter/tasks.py), plus slack.
SETTLE_HORIZON = 190 * 60.0
UNCONFIRMED_HORIZON = 60.0
#: After a failed fetch, wait this long before asking Polar again (unless it sent Retry-After), so a
#: down Polar costs one timeout per interval instead of one per limit check.
ERROR_BACKOFF = 1.0
_OVERLAID = frozenset({"count", "sum", "max", "unique"})
_MAX_BUCKETS = 64  # per key; past it the two oldest delivered buckets merge (see _Key.add_bucket)
_MAX_KNOWN = 10_000  # unique values remembered as counted, per key
# Overlay versions come from one counter, so a key forgotten and created again never repeats a
# version that a cached composition was built from.
_VERSIONS = itertools.count(1)
#: external_ids remembered after their entries left, so a resend with the same id is not overlaid
#: again (Polar drops it as a duplicate, server/polar/event/repository.py, and then never recomputes for it)
_RECENT_IDS = 50_000


# -- the reading cache ---------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CachedReading:
    """A reading as Polar served it: ``modified_at`` is the row's (epoch seconds, ``None`` without a
    row), ``fetched_at`` and ``fresh_until`` are monotonic seconds."""

    reading: MeterReading
    modified_at: float | None
    fetched_at: float
    fresh_until: float


@dataclass(frozen=True, slots=True)
class CacheStats:
    """Counters since the cache was made: ``hits``/``misses`` of fresh lookups, ``stale_served`` (a
    stale entry answered because Polar failed), ``evictions`` (LRU), ``invalidations``."""

    hits: int
    misses: int
    stale_served: int
    evictions: int
    invalidations: int
    size: int

    @property
    def hit_ratio(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class ReadingCache:
    """Readings per (customer, meter): fresh for ``ttl`` seconds, usable while Polar fails for
    ``stale_after`` seconds after the fetch, at most ``size`` entries (least recently used go first).

    ``ttl == 0`` keeps entries (for stale-while-error and for the overlay) but never serves them fresh.
    A newer fetch never replaces a reading with a later ``modified_at``: Polar's rows only move forward,
    and the overlay has already been settled against the later one.
    """

    def __init__(self, *, ttl: float, stale_after: float, size: int, monotonic: Callable[[], float]) -> None:
        for name, value in (("ttl", ttl), ("stale_after", stale_after)):
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
                raise ValueError(f"{name}: must be a finite number of seconds >= 0, got {value!r}")
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size: must be an integer >= 1, got {size!r}")
        self.ttl = float(ttl)
        self.stale_after = max(float(stale_after), self.ttl)
        self.size = size
        self._monotonic = monotonic
        self._entries: OrderedDict[Key, CachedReading] = OrderedDict()
        self._lock = threading.Lock()
        self._hits = self._misses = self._stale = self._evictions = self._invalidations = 0

    def fresh(self, customer: str, slug: str) -> CachedReading | None:
        """The entry if it is within its TTL (counted as a hit), else ``None``. A miss is counted by
        :meth:`missed` when Polar is actually asked, so a thread that waits for another's request and
        then finds the entry fresh counts as a hit.

        The hot path takes no lock: each dict operation is atomic under the GIL, and an entry evicted
        between the lookup and the LRU bump is simply returned once more. The counters may miss an
        increment under heavy concurrency; they are statistics, not state.
        """
        key = (customer, slug)
        entry = self._entries.get(key)
        if entry is not None and self._monotonic() < entry.fresh_until:
            try:
                self._entries.move_to_end(key)
            except KeyError:
                pass
            self._hits += 1
            return entry
        return None

    def missed(self, count: int = 1) -> None:
        """Count lookups that had to ask Polar."""
        self._misses += count

    def peek(self, customer: str, slug: str) -> CachedReading | None:
        """Like :meth:`fresh` without touching the counters or the LRU order."""
        entry = self._entries.get((customer, slug))
        if entry is not None and self._monotonic() < entry.fresh_until:
            return entry
        return None

    def usable(self, customer: str, slug: str) -> CachedReading | None:
        """The entry if it was fetched less than ``stale_after`` ago: what may stand in while Polar fails."""
        with self._lock:
            entry = self._entries.get((customer, slug))
            if entry is None or self._monotonic() - entry.fetched_at >= self.stale_after:
                return None
            self._stale += 1
            return entry

    def latest(self, customer: str, slug: str) -> CachedReading | None:
        """The entry whatever its age (what the overlay was last settled against)."""
        return self._entries.get((customer, slug))

    def put(self, reading: MeterReading, modified_at: float | None) -> CachedReading:
        """Store a fetched reading; returns the entry kept (the older-by-``modified_at`` one loses)."""
        key = (reading.customer, reading.meter)
        now = self._monotonic()
        with self._lock:
            old = self._entries.get(key)
            if (
                old is not None
                and old.modified_at is not None
                and (modified_at is None or modified_at < old.modified_at)
            ):
                reading, modified_at = old.reading, old.modified_at
            entry = CachedReading(reading, modified_at, now, now + self.ttl)
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
                self._evictions += 1
            return entry

    def invalidate(self, customer: str | None = None, slug: str | None = None) -> int:
        """Make entries of ``customer`` (and ``slug``), or all, stale so the next check asks Polar.

        They stay usable for stale-while-error: an old answer beats none when Polar is down.
        """
        with self._lock:
            if customer is not None and slug is not None:
                keys: Iterable[Key] = [(customer, slug)] if (customer, slug) in self._entries else []
            else:
                keys = [
                    k
                    for k in self._entries
                    if (customer is None or k[0] == customer) and (slug is None or k[1] == slug)
                ]
            count = 0
            for key in keys:
                self._entries[key] = replace(self._entries[key], fresh_until=-math.inf)
                count += 1
            self._invalidations += count
            return count

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(
                self._hits,
                self._misses,
                self._stale,
                self._evictions,
                self._invalidations,
                len(self._entries),
            )

    def __len__(self) -> int:
        return len(self._entries)


# -- the overlay ------------------------------------------------------------------------------------------
class _Entry:
    """One event's contribution to one (customer, meter), until its delivery is seen."""

    __slots__ = ("at", "external_id", "key", "live", "value")

    def __init__(self, key: _Key, external_id: str, value: float | str, at: float) -> None:
        self.key, self.external_id, self.value, self.at = key, external_id, value, at
        self.live = True


class _Bucket:
    """Delivered contributions to one key that share a send start time ``sent``."""

    __slots__ = ("at", "sent", "total", "values", "vmax")

    def __init__(self, sent: float, at: float) -> None:
        self.sent, self.at = sent, at
        self.total = 0.0
        self.vmax = -math.inf
        self.values: dict[str, int] = {}


class _Key:
    """The overlay of one (customer, meter): pending entries, delivered buckets, running aggregates."""

    __slots__ = (
        "buckets",
        "func",
        "known",
        "last_consumed",
        "memo",
        "pending",
        "total",
        "touched",
        "values",
        "version",
        "vmax",
    )

    def __init__(self, func: str) -> None:
        self.func = func
        self.pending: deque[_Entry] = deque()
        self.buckets: deque[_Bucket] = deque()
        self.total = 0.0  # count/sum of everything live
        self.values: dict[str, int] = {}  # unique: live occurrences of each value
        self.known: OrderedDict[str, None] = OrderedDict()  # unique: values Polar has counted
        self.vmax: float | None = -math.inf  # max: None means "recompute"
        self.last_consumed: float | None = None
        self.version = next(_VERSIONS)
        self.memo: tuple[int, float] = (-1, 0.0)  # (version, extra()) of the last computation
        self.touched = -math.inf  # monotonic time of the last tracked entry

    def _add(self, value: float | str, sign: int) -> None:
        if isinstance(value, str):
            count = self.values.get(value, 0) + sign
            if count > 0:
                self.values[value] = count
            else:
                self.values.pop(value, None)
        elif self.func == "max":
            if sign > 0:
                if self.vmax is not None and value > self.vmax:
                    self.vmax = value
            elif self.vmax is not None and value >= self.vmax:
                self.vmax = None
        else:
            self.total += sign * value
        # The version moves after the aggregate: a lock-free reader that reads the version first
        # can pair an old version with a new total (and rebuild later), never the reverse.
        self.version = next(_VERSIONS)

    def add_entry(self, entry: _Entry) -> None:
        self.pending.append(entry)
        self.touched = entry.at
        self._add(entry.value, 1)

    def drop_entry(self, entry: _Entry) -> None:
        if entry.live:
            entry.live = False
            self._add(entry.value, -1)

    def add_bucket_value(self, sent: float, at: float, value: float | str) -> None:
        """Move a delivered contribution into the bucket for ``sent`` (the newest, or a new one)."""
        bucket = self.buckets[-1] if self.buckets and self.buckets[-1].sent == sent else None
        if bucket is None:
            if len(self.buckets) >= _MAX_BUCKETS:
                # Merging keeps the later send time, so the merged bucket settles no earlier than
                # either part would have: the overlay errs towards counting, never towards losing.
                first, second = self.buckets.popleft(), self.buckets.popleft()
                second.at = min(first.at, second.at)
                second.total += first.total
                second.vmax = max(first.vmax, second.vmax)
                for v, c in first.values.items():
                    second.values[v] = second.values.get(v, 0) + c
                self.buckets.appendleft(second)
            bucket = _Bucket(sent, at)
            self.buckets.append(bucket)
        bucket.at = min(bucket.at, at)
        if isinstance(value, str):
            bucket.values[value] = bucket.values.get(value, 0) + 1
        elif self.func == "max":
            bucket.vmax = max(bucket.vmax, value)
        else:
            bucket.total += value

    def drop_bucket(self, bucket: _Bucket, *, counted: bool) -> None:
        if self.func == "max":
            if self.vmax is not None and bucket.vmax >= self.vmax:
                self.vmax = None
        elif self.func == "unique":
            for v, c in bucket.values.items():
                left = self.values.get(v, 0) - c
                if left > 0:
                    self.values[v] = left
                else:
                    self.values.pop(v, None)
                if counted:
                    self.known[v] = None
                    self.known.move_to_end(v)
            while len(self.known) > _MAX_KNOWN:
                self.known.popitem(last=False)
        else:
            self.total -= bucket.total
        self.version = next(_VERSIONS)

    def extra(self) -> float:
        """What this key adds to Polar's reading: a sum, a count of new values, or a max (``-inf``
        when there is none). Call with the overlay's lock held."""
        if self.func in ("count", "sum"):
            return self.total
        if self.memo[0] == self.version:
            return self.memo[1]
        if self.func == "unique":
            known = self.known
            value = float(sum(1 for v in self.values if v not in known))
        else:
            if self.vmax is None:
                values = [e.value for e in self.pending if e.live]
                values += [b.vmax for b in self.buckets]
                self.vmax = max((float(v) for v in values), default=-math.inf)
            value = self.vmax
        self.memo = (self.version, value)
        return value

    def due(self, unconfirmed_before: float, settled_before: float) -> bool:
        """Whether pruning would drop something (a moved or expired pending head, an old bucket).
        Called without the lock: a head another thread pops meanwhile just means "go and look"."""
        try:
            if self.pending and (not self.pending[0].live or self.pending[0].at <= unconfirmed_before):
                return True
            return bool(self.buckets) and self.buckets[0].at <= settled_before
        except IndexError:
            return True

    @property
    def empty(self) -> bool:
        return not self.buckets and not any(e.live for e in self.pending)


class UsageOverlay:
    """Usage this process tracked per (customer, meter) that Polar's reading may not include yet.

    ``track`` adds events (matched to the catalog's meters with Polar's filter rules,
    server/polar/meter/filter.py);
    ``sent`` records that this process's sender delivered some of them in a request that started at
    a wall time; ``settle`` drops what a reading with Polar's ``modified_at`` already counts (the rule
    is in the module docstring); ``extra`` is what a check adds to Polar's reading. Thread-safe.
    """

    def __init__(
        self,
        meters: Iterable[Meter],
        *,
        monotonic: Callable[[], float],
        settle_horizon: float = SETTLE_HORIZON,
        unconfirmed_horizon: float = UNCONFIRMED_HORIZON,
        settle_margin: float = 0.0,
        max_entries: int = 200_000,
    ) -> None:
        for name, value in (
            ("settle_horizon", settle_horizon),
            ("unconfirmed_horizon", unconfirmed_horizon),
            ("settle_margin", settle_margin),
        ):
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
                raise ValueError(f"{name}: must be a finite number of seconds >= 0, got {value!r}")
        self._monotonic = monotonic
        self.settle_horizon = float(settle_horizon)
        self.unconfirmed_horizon = float(unconfirmed_horizon)
        self.settle_margin = float(settle_margin)
        self.max_entries = max_entries
        self._by_name: dict[str | None, list[tuple[str, str, Any, Any]]] = {}
        for m in meters:
            func = m.aggregation.func
            if func not in _OVERLAID:
                continue
            reader: Any = (
                unique_reader(m.aggregation) if func == "unique" else compile_value_reader(m.aggregation)
            )
            self._by_name.setdefault(m.filter.event_template()[0], []).append(
                (m.slug, func, compile_filter(m.filter), reader)
            )
        self._keys: dict[Key, _Key] = {}
        self._by_id: dict[str, list[_Entry]] = {}
        self._recent: OrderedDict[int, None] = OrderedDict()  # hashes of recently tracked external_ids
        self._live = 0
        self._dropped = 0
        self._next_sweep = 0.0
        self._lock = threading.Lock()

    # -- feeding ------------------------------------------------------------------------------------
    def _contributions(self, event: Event) -> list[tuple[str, str, float | str]]:
        candidates = self._by_name.get(event.name, [])
        anywhere = self._by_name.get(None)
        if anywhere:
            candidates = candidates + anywhere
        out: list[tuple[str, str, float | str]] = []
        if not candidates:
            return out
        ts = int(event.timestamp.timestamp())
        md = event.metadata
        for slug, func, matcher, reader in candidates:
            if not matcher(event.name, "user", ts, md):
                continue
            if func == "count":
                out.append((slug, func, 1.0))
            elif func == "unique":
                key = reader(md)
                # a null or missing value is never counted (server/polar/meter/aggregation.py)
                if key is not None:
                    out.append((slug, func, key))
            else:
                number = reader(event.name, "user", ts, md)
                # only JSON numbers count for sum/max (server/polar/meter/aggregation.py)
                if number is not None:
                    out.append((slug, func, number))
        return out

    def track(self, events: Sequence[Event]) -> list[str]:
        """Add ``events``; returns the ``external_id`` of those added (events matching no overlaid meter
        are not). An ``external_id`` already in the overlay is skipped: Polar drops the repeat
        (server/polar/event/repository.py)."""
        now = self._monotonic()
        added: list[str] = []
        with self._lock:
            if now >= self._next_sweep:
                self._sweep(now)
            for event in events:
                eid = event.external_id
                if eid in self._by_id or hash(eid) in self._recent:
                    continue
                parts = self._contributions(event)
                if not parts:
                    continue
                if self._live + len(parts) > self.max_entries:
                    self._dropped += len(parts)
                    if self._dropped == len(parts):
                        log.warning(
                            "polar_metering: the usage overlay holds %d entries (max_entries); new usage "
                            "is not overlaid until Polar catches up",
                            self._live,
                        )
                    continue
                entries = []
                for slug, func, value in parts:
                    state = self._keys.get((event.customer_id, slug))
                    if state is None:
                        state = self._keys[(event.customer_id, slug)] = _Key(func)
                    entry = _Entry(state, event.external_id, value, now)
                    state.add_entry(entry)
                    entries.append(entry)
                self._by_id[eid] = entries
                self._recent[hash(eid)] = None
                if len(self._recent) > _RECENT_IDS:
                    self._recent.popitem(last=False)
                self._live += len(entries)
                added.append(eid)
        return added

    def forget(self, external_ids: Iterable[str]) -> None:
        """Remove events that never left this process (their enqueue failed)."""
        with self._lock:
            for eid in external_ids:
                self._recent.pop(hash(eid), None)
                for entry in self._by_id.pop(eid, ()):
                    if entry.live:
                        entry.key.drop_entry(entry)
                        self._live -= 1

    def sent(self, external_ids: Iterable[str], started_at: float, *, duplicates: bool = False) -> int:
        """Record that this process delivered these events in a request that started at ``started_at``
        (wall-clock epoch seconds); ids this overlay does not hold are ignored. Returns how many moved.

        ``duplicates`` says Polar already had every one of them (server/polar/event/repository.py): they were
        counted when first
        ingested, so they leave the overlay at once."""
        moved = 0
        with self._lock:
            for eid in external_ids:
                for entry in self._by_id.pop(eid, ()):
                    if entry.live:
                        state = entry.key
                        if duplicates:
                            state.drop_entry(entry)
                        else:
                            entry.live = False  # leaves `pending`; its value moves into a bucket
                            state.add_bucket_value(started_at, entry.at, entry.value)
                        self._live -= 1
                        moved += 1
        return moved

    # -- settling -----------------------------------------------------------------------------------
    def settle(
        self, customer: str, slug: str, modified_at: float | None, consumed: float | None = None
    ) -> int:
        """Drop what a reading with Polar's ``modified_at`` (epoch seconds) already counts; returns how
        many delivered buckets went. ``consumed`` lets unique meters notice a period reset
        (server/polar/subscription/service.py)."""
        with self._lock:
            state = self._keys.get((customer, slug))
            if state is None:
                return 0
            if consumed is not None:
                if state.last_consumed is not None and consumed < state.last_consumed:
                    state.known.clear()  # a reset: values counted before it count again
                    state.version = next(_VERSIONS)
                state.last_consumed = consumed
            if modified_at is None:
                return 0
            limit = modified_at - self.settle_margin
            keep: deque[_Bucket] = deque()
            dropped = 0
            for bucket in state.buckets:  # at most _MAX_BUCKETS
                if bucket.sent <= limit:
                    state.drop_bucket(bucket, counted=True)
                    dropped += 1
                else:
                    keep.append(bucket)
            state.buckets = keep
            return dropped

    def _prune(self, state: _Key, now: float) -> None:
        unconfirmed = now - self.unconfirmed_horizon
        pending = state.pending
        while pending and (not pending[0].live or pending[0].at <= unconfirmed):
            entry = pending.popleft()
            if entry.live:
                state.drop_entry(entry)
                self._live -= 1
                ids = self._by_id.get(entry.external_id)
                if ids is not None and all(not e.live for e in ids):
                    del self._by_id[entry.external_id]
        horizon = now - self.settle_horizon
        while state.buckets and state.buckets[0].at <= horizon:
            state.drop_bucket(state.buckets.popleft(), counted=False)

    def _sweep(self, now: float) -> None:
        """Prune every key and forget empty ones (keys that nobody checks are pruned here only)."""
        for key in list(self._keys):
            state = self._keys[key]
            self._prune(state, now)
            # Known unique values are kept while the customer is active; an idle key goes entirely.
            if state.empty and (not state.known or now - state.touched > self.settle_horizon):
                del self._keys[key]
        self._next_sweep = now + max(1.0, min(self.unconfirmed_horizon, self.settle_horizon) / 4)

    # -- reading ------------------------------------------------------------------------------------
    def view(self, customer: str, slug: str) -> tuple[int, float | None] | None:
        """``(version, extra)`` for a key, or ``None`` when the overlay has nothing for it. ``version``
        changes whenever ``extra`` may have, so callers can reuse what they built from it."""
        state = self._keys.get((customer, slug))
        if state is None:
            return None
        now = self._monotonic()
        if state.func in ("count", "sum") and not state.due(
            now - self.unconfirmed_horizon, now - self.settle_horizon
        ):
            version = state.version  # before the total: see _Key._add
            total = state.total
            return version, (total or None)
        with self._lock:
            self._prune(state, now)
            value = state.extra()
            version = state.version
        if state.func == "max":
            return version, (None if value == -math.inf else value)
        return version, (value or None)

    def extra(self, customer: str, slug: str) -> float | None:
        """What to add to Polar's reading (``None``: nothing unsettled). For ``max`` meters this is the
        largest unsettled value, to be combined with ``max()`` rather than added."""
        seen = self.view(customer, slug)
        return None if seen is None else seen[1]

    def is_counted(self, customer: str, slug: str, value: Any) -> bool:
        """For unique meters: ``value`` is unsettled here, or this process saw Polar count it."""
        key = unique_key(value)
        if key is None:
            # null is never counted, so it never takes a new unit (server/polar/meter/aggregation.py)
            return True
        state = self._keys.get((customer, slug))
        if state is None:
            return False
        with self._lock:
            return key in state.values or key in state.known

    def __len__(self) -> int:
        """Live pending entries plus delivered buckets, over every key."""
        with self._lock:
            return self._live + sum(len(s.buckets) for s in self._keys.values())


# -- holds ------------------------------------------------------------------------------------------------
class HoldLedger:
    """Reservations held by this process: ``(customer, meter) -> {hold id: (amount, expires)}``.

    Expiry is on the monotonic clock; expired holds stop counting at the next look. Thread-safe.
    """

    def __init__(self, monotonic: Callable[[], float]) -> None:
        self._monotonic = monotonic
        self._keys: dict[Key, dict[str, tuple[float, float]]] = {}
        self._where: dict[str, Key] = {}
        self._lock = threading.Lock()

    def add(self, hold_id: str, customer: str, slug: str, amount: float, ttl: float) -> None:
        if not ttl > 0 or not math.isfinite(ttl):
            raise ValueError(f"ttl: must be a finite number of seconds > 0, got {ttl!r}")
        with self._lock:
            self._keys.setdefault((customer, slug), {})[hold_id] = (amount, self._monotonic() + ttl)
            self._where[hold_id] = (customer, slug)

    def remove(self, hold_id: str) -> bool:
        """End a hold; False if it was unknown or already gone (released, settled, expired)."""
        with self._lock:
            key = self._where.pop(hold_id, None)
            if key is None:
                return False
            holds = self._keys.get(key, {})
            gone = holds.pop(hold_id, None)
            if not holds:
                self._keys.pop(key, None)
            return gone is not None and gone[1] > self._monotonic()

    def reserved(self, customer: str, slug: str, func: str) -> float:
        """Active holds on the key: their sum, or for ``max``/``min`` meters the largest one (a hold
        there is the peak the action may reach, not an addition)."""
        holds = self._keys.get((customer, slug))
        if not holds:
            return 0.0
        with self._lock:
            now = self._monotonic()
            for hid in [h for h, (_, exp) in holds.items() if exp <= now]:
                del holds[hid]
                self._where.pop(hid, None)
            if not holds:
                self._keys.pop((customer, slug), None)
                return 0.0
            amounts = [a for a, _ in holds.values()]
        return max(amounts) if func in ("max", "min") else sum(amounts)

    def active(self, customer: str, slug: str) -> int:
        """How many unexpired holds the key has."""
        now = self._monotonic()
        with self._lock:
            return sum(1 for _, exp in self._keys.get((customer, slug), {}).values() if exp > now)


# -- the delivery hook -----------------------------------------------------------------------------------
class MarkingTransport:
    """Wraps a delivery transport: after each successful ``send`` it reports the batch's
    ``external_id``s and the wall time the request started to ``on_sent`` (the overlay's ``sent``),
    with ``duplicates=True`` when Polar said it already had every event of the batch."""

    def __init__(self, inner: Any, on_sent: Callable[..., object], wall: Callable[[], float]) -> None:
        from polar_metering.delivery._sender import accepts_timeout

        self._inner, self._on_sent, self._wall = inner, on_sent, wall
        self._timeouts = accepts_timeout(inner)

    def send(self, events: list[dict[str, Any]], *, timeout: float | None = None) -> Any:
        started = self._wall()
        if self._timeouts and timeout is not None:
            result = self._inner.send(events, timeout=timeout)
        else:
            result = self._inner.send(events)
        self._mark([e["external_id"] for e in events if "external_id" in e], started, result)
        return result

    def _mark(self, ids: list[str], started: float, result: Any) -> None:
        known = getattr(result, "duplicates", 0) == len(ids) and getattr(result, "inserted", 1) == 0
        try:
            self._on_sent(ids, started, duplicates=bool(ids) and known)
        except Exception:  # the batch is delivered; a bookkeeping failure must not resend it
            log.exception("polar_metering: recording delivered events in the usage overlay failed")

    def __getattr__(self, name: str) -> Any:
        # ``send_encoded`` exactly when the inner transport has it (the sender looks for it).
        if name == "send_encoded" and callable(getattr(self._inner, "send_encoded", None)):
            return self._send_encoded
        raise AttributeError(name)

    def _send_encoded(self, body: bytes, external_ids: list[str], *, timeout: float | None = None) -> Any:
        started = self._wall()
        result = self._inner.send_encoded(body, external_ids, timeout=timeout)
        self._mark(list(external_ids), started, result)
        return result

    def close(self) -> None:
        close = getattr(self._inner, "close", None)
        if close is not None:
            close()

    def __repr__(self) -> str:
        return f"MarkingTransport({self._inner!r})"


# -- all three together -----------------------------------------------------------------------------------
class Limits:
    """The cache, overlay and holds of one backend, with the stale-while-error and fail-open policy.

    - A fresh cache entry answers without I/O. Otherwise ``fetch`` asks Polar; the answer is cached and
      settles the overlay, both under the lock ``hold`` uses.
    - When the fetch fails with a retryable error (unreachable, 5xx, 429), an entry fetched less than
      ``stale_after`` ago answers instead (marked stale), and Polar is not asked again for
      ``ERROR_BACKOFF`` seconds (or its ``Retry-After``). Other errors, or no usable entry, raise; the
      client then applies ``fail_open`` to checks. ``hold`` applies it itself: with ``fail_open`` it
      grants against this process's own usage and holds, without Polar's; without, it raises.
    """

    def __init__(
        self,
        catalog: Catalog,
        clock: Clock,
        *,
        ttl: float,
        stale_after: float,
        size: int,
        fail_open: bool,
        settle_horizon: float = SETTLE_HORIZON,
        unconfirmed_horizon: float = UNCONFIRMED_HORIZON,
        settle_margin: float = 0.0,
    ) -> None:
        self.clock = clock
        self.fail_open = fail_open
        self.cache = ReadingCache(ttl=ttl, stale_after=stale_after, size=size, monotonic=clock.monotonic)
        self.overlay = UsageOverlay(
            catalog.meters,
            monotonic=clock.monotonic,
            settle_horizon=settle_horizon,
            unconfirmed_horizon=unconfirmed_horizon,
            settle_margin=settle_margin,
        )
        self.holds = HoldLedger(clock.monotonic)
        self._lock = threading.Lock()
        self._down_until = -math.inf
        self._down_error: BackendError | None = None
        self._warned_stale = False
        self._memo: dict[Key, tuple[MeterReading, int, float, MeterReading]] = {}
        self._stripes = [threading.Lock() for _ in range(64)]  # one Polar request per customer at a time

    # -- composing ---------------------------------------------------------------------------------------
    def _compose(self, base: MeterReading, func: str) -> MeterReading:
        key = (base.customer, base.meter)
        seen = self.overlay.view(*key)
        held = self.holds.reserved(base.customer, base.meter, func)
        if (seen is None or seen[1] is None) and not held:
            return base
        version, extra = seen if seen is not None else (-1, None)
        # Checks far outnumber changes: reuse the reading built for the same cache entry, overlay
        # version and holds (building a frozen dataclass costs more than the rest of a cached check).
        memo = self._memo.get(key)
        if memo is not None and memo[0] is base and memo[1] == version and memo[2] == held:
            return memo[3]
        consumed = base.consumed
        if extra is not None:
            consumed = max(consumed, extra) if func == "max" else consumed + extra
        reading = MeterReading(
            base.meter,
            base.customer,
            consumed,
            base.credited,
            base.period_start,
            base.period_end,
            base.reserved + held,
            base.samples,
        )
        if len(self._memo) >= self.cache.size:
            self._memo.clear()
        self._memo[key] = (base, version, held, reading)
        return reading

    # -- fetching ----------------------------------------------------------------------------------------
    def _fetch(
        self, customer: str, meters: Sequence[Meter], fetch: Fetch
    ) -> dict[str, tuple[CachedReading, bool]]:
        """Cache entries for ``meters`` after asking Polar, or stale ones if it fails (see the class)."""
        now = self.clock.monotonic()
        error = self._down_error if now < self._down_until else None
        if error is None:
            self.cache.missed(len(meters))
            try:
                got = fetch(customer, meters)
            except BackendError as exc:
                if not exc.retryable:
                    raise
                error = exc
                wait = exc.retry_after if isinstance(exc, RateLimited) and exc.retry_after else ERROR_BACKOFF
                self._down_until, self._down_error = now + float(wait), exc
            else:
                out: dict[str, tuple[CachedReading, bool]] = {}
                with self._lock:
                    for m in meters:
                        reading, modified_at = got[m.slug]
                        entry = self.cache.put(reading, modified_at)
                        self.overlay.settle(customer, m.slug, entry.modified_at, entry.reading.consumed)
                        out[m.slug] = (entry, False)
                self._down_error, self._warned_stale = None, False
                return out
        stale: dict[str, tuple[CachedReading, bool]] = {}
        for m in meters:
            old = self.cache.usable(customer, m.slug)
            if old is None:
                raise error
            stale[m.slug] = (old, True)
        if not self._warned_stale:
            self._warned_stale = True
            log.warning(
                "polar_metering: Polar is unavailable (%s); serving cached readings up to %gs old",
                error,
                self.cache.stale_after,
            )
        return stale

    # -- the backend's operations ---------------------------------------------------------------------
    def _entries(
        self, customer: str, meters: Sequence[Meter], fetch: Fetch
    ) -> dict[str, tuple[CachedReading, bool]]:
        """Fresh entries, asking Polar for the others. One request per customer at a time: threads
        that miss together wait for the first one's answer instead of each sending their own (a
        burst after the TTL runs out would otherwise cost one request per thread, against Polar's
        rate limit, server/polar/rate_limit.py)."""
        out: dict[str, tuple[CachedReading, bool]] = {}
        missing = []
        for m in meters:
            entry = self.cache.fresh(customer, m.slug)
            if entry is None:
                missing.append(m)
            else:
                out[m.slug] = (entry, False)
        if missing:
            with self._stripes[hash(customer) % len(self._stripes)]:
                still = []
                for m in missing:
                    entry = self.cache.fresh(customer, m.slug)
                    if entry is None:
                        still.append(m)
                    else:
                        out[m.slug] = (entry, False)
                if still:
                    out.update(self._fetch(customer, still, fetch))
        return out

    def read(self, customer: str, meter: Meter, fetch: Fetch) -> tuple[MeterReading, bool]:
        """The effective reading and whether Polar's part of it is stale."""
        entry, stale = self._entries(customer, [meter], fetch)[meter.slug]
        return self._compose(entry.reading, meter.aggregation.func), stale

    def reading(self, customer: str, meter: Meter, fetch: Fetch) -> MeterReading:
        """The effective reading (the limit-check hot path: no I/O while the cache entry is fresh)."""
        entry = self.cache.fresh(customer, meter.slug)
        if entry is not None:
            return self._compose(entry.reading, meter.aggregation.func)
        entry, stale = self._entries(customer, [meter], fetch)[meter.slug]
        return _marked(self._compose(entry.reading, meter.aggregation.func), stale)

    def readings(self, customer: str, meters: Sequence[Meter], fetch: Fetch) -> dict[str, MeterReading]:
        """Effective readings for ``meters``, asking Polar once for all that are not fresh."""
        entries = self._entries(customer, meters, fetch)
        return {
            m.slug: _marked(self._compose(entries[m.slug][0].reading, m.aggregation.func), entries[m.slug][1])
            for m in meters
        }

    def peek(self, customer: str, meter: Meter) -> MeterReading | None:
        """The effective reading if Polar's part is fresh in the cache, else ``None`` (no I/O)."""
        entry = self.cache.peek(customer, meter.slug)
        if entry is None:
            return None
        return self._compose(entry.reading, meter.aggregation.func)

    def is_counted(self, customer: str, meter: Meter, value: Any) -> bool:
        return self.overlay.is_counted(customer, meter.slug, value)

    def hold(
        self, customer: str, meter: Meter, amount: float, ttl: float, fetch: Fetch
    ) -> tuple[Hold | None, MeterReading]:
        """Hold ``amount`` if the effective reading plus it fits the limit; check and hold are one step
        for every thread of this process (see the module docstring for other processes)."""
        func = meter.aggregation.func
        unknown = False
        if self.cache.fresh(customer, meter.slug) is None:
            try:
                self._entries(customer, [meter], fetch)
            except BackendError as exc:
                if not self.fail_open:
                    raise
                log.warning(
                    "polar_metering: reserve on %s without Polar's reading (fail-open): %s", meter.slug, exc
                )
                unknown = True
        with self._lock:
            entry = self.cache.latest(customer, meter.slug)
            if entry is None or unknown:
                base = MeterReading(meter.slug, customer, 0.0, None)
            else:
                base = entry.reading
            reading = self._compose(base, func)
            if reading.credited is not None and project(func, reading, amount) > reading.credited:
                return None, reading
            hold = Hold(
                str(uuid.uuid4()),
                customer,
                meter.slug,
                float(amount),
                self.clock.now() + timedelta(seconds=ttl),
            )
            self.holds.add(hold.id, customer, meter.slug, float(amount), ttl)
            return hold, reading

    def settle(
        self, hold: Hold, events: Sequence[Event], ingest: Callable[[Sequence[Event]], IngestResult]
    ) -> IngestResult:
        """Record ``events`` and end ``hold`` as one step for the checks and holds of this process.
        Usage is recorded even if the hold expired meanwhile: the action ran."""
        with self._lock:
            result = self.track(events, ingest)
            self.holds.remove(hold.id)
            return result

    def release(self, hold: Hold) -> None:
        self.holds.remove(hold.id)

    def track(
        self, events: Sequence[Event], ingest: Callable[[Sequence[Event]], IngestResult]
    ) -> IngestResult:
        """Overlay ``events`` and hand them to ``ingest``. The overlay goes first so a delivery report
        can never arrive before the entry it settles; if ``ingest`` fails, the entries are removed."""
        added = self.overlay.track(events)
        try:
            return ingest(events)
        except BaseException:
            self.overlay.forget(added)
            raise

    def invalidate(self, customer: str | None = None, meter: str | None = None) -> int:
        """Make cached readings stale (a webhook said the customer's state changed)."""
        return self.cache.invalidate(customer, meter)

    def delivered(self, external_ids: Iterable[str], started_at: float, *, duplicates: bool = False) -> int:
        """The delivery report (see :class:`MarkingTransport`)."""
        return self.overlay.sent(external_ids, started_at, duplicates=duplicates)


def _marked(reading: MeterReading, stale: bool) -> MeterReading:
    """``reading`` flagged as served past its TTL while Polar could not be reached."""
    return dataclasses.replace(reading, stale=True) if stale else reading
