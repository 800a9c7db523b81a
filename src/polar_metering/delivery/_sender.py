"""The transport contract and the background sender: claim a batch, send it, settle the outcome.

An :class:`Outbox` runs ``max_in_flight`` senders per process, each a thread with its own connection
and lease owner (one when driven by hand). ``step`` does one claim-send-settle round and says
how long to wait; the thread around it only waits (on a ``threading.Event``, so stop and flush cut
any backoff short). Tests drive ``step`` directly with a manual clock.
"""

from __future__ import annotations

import inspect
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from polar_metering._clock import Clock
from polar_metering._exceptions import BackendUnavailable, RateLimited, RemoteValidationError, redact
from polar_metering._status import as_dict
from polar_metering.delivery._config import DeliveryConfig
from polar_metering.delivery._pace import Pace
from polar_metering.delivery._policy import (
    Failure,
    Settlement,
    backoff_delay,
    classify,
    settle_refused,
    settle_rejection,
    settle_too_large,
)
from polar_metering.delivery._store import Row, Store

__all__ = ["DeliveryMetrics", "SendResult", "Sender", "Transport", "accepts_timeout", "sends_encoded"]

log = logging.getLogger("polar_metering.delivery")

# How often (seconds) an idle sender looks for leases held by senders that died on this host.
_REAP_INTERVAL = 2.0
# How long a sender waits for a request slot before going round again (checking for stop).
_SLOT_WAIT = 0.05


@dataclass(frozen=True, slots=True)
class SendResult:
    """Polar's answer to one ingest request (server/polar/event/endpoints.py): events newly stored, and
    events skipped because
    their ``external_id`` was already known (server/polar/event/repository.py) — which after a resend is
    success, not loss."""

    inserted: int
    duplicates: int = 0


@runtime_checkable
class Transport(Protocol):
    """Sends one batch of events to Polar (or anything that speaks its ingest API).

    ``events`` are ``EventCreateExternalCustomer`` dicts (``Event.to_polar()``), at most
    ``batch_max_events`` of them and at most ``batch_max_bytes`` as compact JSON. Called from the
    sender threads, up to ``max_in_flight`` calls at once (each with its own batch), so it must be
    thread-safe. Failures are raised as the library's exceptions:

    - :class:`RateLimited` for 429, with ``retry_after`` from the header (server/polar/rate_limit.py);
    - :class:`BackendUnavailable` for 5xx, network errors and timeouts;
    - :class:`RemoteValidationError` for 422 with ``detail`` as Polar sent it
      (``loc == ["body", "events", i, ...]``, server/polar/event/service.py);
    - :class:`AuthenticationError` for 401/403;
    - :class:`BackendError` with ``status_code=413`` when the body was too large
    (server/polar/middlewares.py).

    Anything else counts as a refusal: retried, and dead-lettered after ``max_rejections``.

    ``send`` may take a keyword ``timeout`` (seconds): the sender then passes each request's
    timeout, which adaptive delivery raises for big batches on a slow server.
    """

    def send(self, events: list[dict[str, Any]]) -> SendResult: ...


def sends_encoded(transport: object) -> bool:
    """Whether the transport can send a ready ingest body (``send_encoded(body, external_ids, *,
    timeout=None)``): then the sender hands it the payloads as stored, with nothing decoded or
    encoded again."""
    return callable(getattr(transport, "send_encoded", None))


def accepts_timeout(transport: object) -> bool:
    """Whether ``transport.send`` takes a ``timeout=`` keyword (seconds for this request). Transports
    written before it existed keep working; they just keep their own timeout."""
    try:
        params = inspect.signature(transport.send).parameters  # type: ignore[attr-defined]
    except (TypeError, ValueError, AttributeError):
        return False
    return "timeout" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


@dataclass(frozen=True, slots=True)
class DeliveryMetrics:
    """Counters since the outbox was opened in this process.

    ``committed``: events written to the outbox file. ``sent``/``duplicates``: Polar's
    ``inserted``/``duplicates`` totals. ``batches``: successful requests. ``retries``: failed
    requests that will be tried again. ``rate_limited``: 429 answers. ``auth_failures``: 401/403
    answers. ``dead_lettered``: events moved to the dead-letter table. ``commit_lag_*``: seconds from
    ``enqueue`` returning to the group commit that made its event durable (recent commits).
    """

    committed: int
    sent: int
    duplicates: int
    batches: int
    retries: int
    rate_limited: int
    auth_failures: int
    dead_lettered: int
    last_error: str | None
    commit_lag_p50: float | None
    commit_lag_p99: float | None
    commit_lag_max: float | None

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict of the fields (timestamps as ISO-8601 strings)."""
        return as_dict(self)


class Counters:
    """Mutable counters, each object written by one thread only (the writer or one sender); the
    snapshot adds them up."""

    __slots__ = (
        "auth_failures",
        "batches",
        "committed",
        "dead_lettered",
        "duplicates",
        "last_error",
        "last_error_at",
        "rate_limited",
        "retries",
        "sent",
    )

    def __init__(self) -> None:
        self.committed = self.sent = self.duplicates = self.batches = 0
        self.retries = self.rate_limited = self.auth_failures = self.dead_lettered = 0
        self.last_error: str | None = None
        self.last_error_at = -math.inf

    def error(self, text: str) -> None:
        self.last_error, self.last_error_at = text, time.monotonic()

    def snapshot(self, lags: list[float], others: list[Counters]) -> DeliveryMetrics:
        lags = sorted(lags)
        parts = [self, *others]
        latest = max(parts, key=lambda part: part.last_error_at)

        def total(name: str) -> int:
            return sum(int(getattr(part, name)) for part in parts)

        def pick(q: float) -> float | None:
            return lags[min(len(lags) - 1, math.ceil(q * len(lags)) - 1)] if lags else None

        return DeliveryMetrics(
            total("committed"),
            total("sent"),
            total("duplicates"),
            total("batches"),
            total("retries"),
            total("rate_limited"),
            total("auth_failures"),
            total("dead_lettered"),
            latest.last_error,
            pick(0.5),
            pick(0.99),
            pick(1.0),
        )


class Sender:
    """Delivers one outbox's events through a :class:`Transport`. See the module docstring."""

    def __init__(
        self,
        config: DeliveryConfig,
        transport: Transport,
        *,
        owner: str,
        clock: Clock,
        rand: Callable[[], float],
        counters: Counters,
        on_progress: Callable[[Store], None],
        pace: Pace | None = None,
    ) -> None:
        self._cfg = config
        self._transport = transport
        self._timeouts = accepts_timeout(transport)
        self._encoded = sends_encoded(transport)
        self._pace = pace or Pace(
            max_in_flight=config.max_in_flight,
            max_batch=config.batch_max_events,
            request_timeout=config.timeout_seconds,
            lease_seconds=config.lease_seconds,
            adaptive=config.adaptive,
        )
        self._owner = owner
        self._clock = clock
        self._rand = rand
        self._counters = counters
        self._on_progress = on_progress
        self._store: Store | None = None
        self._failures = 0  # consecutive failed requests: the backoff exponent
        self._auth_reported = False
        self._split: int | None = None  # batch size cap while isolating a 413/unattributed 422
        self._resend_now = False  # rows were released after a rejection: send them without waiting
        self._flushers = 0
        self._flush_lock = threading.Lock()
        self._idle = True
        self._pending = 0  # events committed since the last claim, for waking on a full batch
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._reaped_at = -math.inf  # perf_counter of the last look for dead senders' leases

    # -- one round ------------------------------------------------------------------------------------
    def step(self) -> float:
        """Claim, send and settle one batch if one is due; return seconds until the next round."""
        store = self._open()
        cfg = self._cfg
        # A slot first: adaptive delivery may allow fewer requests in flight than there are senders.
        concurrent = self._pace.acquire(_SLOT_WAIT)
        if concurrent is None:
            return _SLOT_WAIT
        try:
            return self._round(store, cfg, concurrent)
        finally:
            self._pace.release()

    def _round(self, store: Store, cfg: DeliveryConfig, concurrent: int) -> float:
        now = self._clock.now().timestamp()
        force = self._resend_now or self._flushers > 0
        self._pending = 0
        claim = store.claim(
            self._owner,
            now,
            max_events=min(self._split or cfg.batch_max_events, self._pace.batch),
            max_bytes=cfg.batch_max_bytes,
            max_age=cfg.batch_max_age,
            force=force,
            lease_seconds=cfg.lease_seconds,
            rate=cfg.requests_per_second,
            burst=cfg.rate_limit_burst,
            decode=not self._encoded,
        )
        # Idle means nothing to send at all: then a commit is worth waking up for. Waiting out a
        # backoff or a batch's age is not idle; commits then only wake us for a full batch.
        self._idle = claim.empty
        if not claim.rows:
            if claim.wait > 0 and self._reap(store, now):
                return 0.0
            return claim.wait
        self._resend_now = False
        self._deliver(store, claim.rows, now, concurrent, claim.body)
        self._on_progress(store)
        return 0.0

    def _reap(self, store: Store, now: float) -> bool:
        """Now and then, while nothing is claimable, free leases whose sender died on this host (a
        restarted worker then sends what its killed predecessor held, without waiting out the lease).
        True when rows were freed."""
        mono = time.perf_counter()
        if mono - self._reaped_at < _REAP_INTERVAL:
            return False
        self._reaped_at = mono
        freed = store.reclaim_dead(now)
        if freed:
            log.info("took over %d outbox events leased by a sender that is no longer running", freed)
        return freed > 0

    def _deliver(
        self, store: Store, rows: list[Row], now: float, concurrent: int, body: bytes | None
    ) -> None:
        count = len(rows)
        timeout = self._pace.timeout_for(count)
        started = time.monotonic()
        try:
            if body is not None:
                ids = [row.external_id for row in rows]
                result = self._transport.send_encoded(body, ids, timeout=timeout)  # type: ignore[attr-defined]
            else:
                events = [row.event for row in rows if row.event is not None]
                if self._timeouts:
                    result = self._transport.send(events, timeout=timeout)  # type: ignore[call-arg]
                else:
                    result = self._transport.send(events)
        except Exception as exc:
            elapsed = time.monotonic() - started
            if self._timeouts and isinstance(exc, BackendUnavailable) and elapsed >= 0.95 * timeout:
                # We gave up on it; the server may still be working on it. Wait longer next time.
                self._pace.observe(count, elapsed, concurrent, answered=False, timed_out=True)
            self._failed(store, rows, now, exc)
            return
        self._pace.observe(count, time.monotonic() - started, concurrent, answered=True, timed_out=False)
        store.settle(self._owner, now, ack=[row.id for row in rows])
        counters = self._counters
        counters.batches += 1
        counters.sent += int(getattr(result, "inserted", 0))
        counters.duplicates += int(getattr(result, "duplicates", 0))
        if self._failures:
            log.info("delivery to Polar recovered after %d failed request(s)", self._failures)
        self._failures = 0
        self._split = None
        self._auth_reported = False

    def _failed(self, store: Store, rows: list[Row], now: float, exc: Exception) -> None:
        cfg = self._cfg
        kind = classify(exc)
        error = redact(f"{type(exc).__name__}: {exc}")
        self._counters.error(error)
        strikes = [row.strikes for row in rows]
        if kind is Failure.REJECTED:
            assert isinstance(exc, RemoteValidationError)
            delays = [
                backoff_delay(s + 1, base=cfg.backoff_base, cap=cfg.max_backoff, rand=self._rand())
                for s in strikes
            ]
            plan = settle_rejection(
                exc.detail, strikes, max_rejections=cfg.max_rejections, skew_delays=delays
            )
            self._settle(store, rows, now, plan, error)
            return
        if kind is Failure.TOO_LARGE:
            self._settle(store, rows, now, settle_too_large(len(rows)), error)
            return
        self._failures += 1
        delay = backoff_delay(
            self._failures,
            base=cfg.backoff_base,
            cap=cfg.max_backoff,
            rand=self._rand(),
            retry_after=exc.retry_after if isinstance(exc, RateLimited) else None,
            max_retry_after=cfg.max_retry_after,
        )
        if kind is Failure.AUTH:
            # A rejected token does not heal by itself: pause every sender for the longest backoff, keep
            # every event, and probe again afterwards in case the token was fixed.
            delay = cfg.max_backoff
            self._counters.auth_failures += 1
            if not self._auth_reported:
                self._auth_reported = True
                log.error(
                    "Polar refused the access token (%s); events stay in the outbox and delivery is paused. "
                    "Check POLAR_ACCESS_TOKEN and its events:write scope.",
                    error,
                )
        elif self._failures == 1:
            log.warning(
                "delivery of %d events failed (%s); retrying with backoff",
                len(rows),
                error,
                exc_info=kind is Failure.REFUSED and not hasattr(exc, "status_code"),
            )
        if kind is Failure.RATE_LIMITED:
            self._counters.rate_limited += 1
        if kind is Failure.REFUSED:
            plan = settle_refused(strikes, error, max_rejections=cfg.max_rejections, delay=delay)
        else:  # network, 5xx, 429, auth: not the events' fault, so no strike; they retry forever
            plan = Settlement(retry=[(i, delay) for i in range(len(rows))])
        self._settle(store, rows, now, plan, error, not_before=now + delay, strike=kind is Failure.REFUSED)

    def _settle(
        self,
        store: Store,
        rows: list[Row],
        now: float,
        plan: Settlement,
        error: str,
        *,
        not_before: float | None = None,
        strike: bool = True,
    ) -> None:
        store.settle(
            self._owner,
            now,
            release=[rows[i].id for i in plan.release],
            retry=[(rows[i].id, now + delay, int(strike)) for i, delay in plan.retry],
            dead=[(rows[i].id, reason, errors) for i, reason, errors in plan.dead],
            error=error,
            not_before=not_before,
        )
        if plan.split is not None:
            self._split = max(1, plan.split)
        if plan.release:
            self._resend_now = True
        if plan.release or plan.retry:
            self._counters.retries += 1
        self._counters.dead_lettered += len(plan.dead)
        for i, reason, _ in plan.dead:
            log.warning("event %s dead-lettered: %s", rows[i].external_id, reason)

    # -- the thread -----------------------------------------------------------------------------------
    def _open(self) -> Store:
        if self._store is None:
            self._store = Store(
                self._cfg.file, busy_timeout=self._cfg.busy_timeout, synchronous=self._cfg.synchronous
            )
        return self._store

    @property
    def counters(self) -> Counters:
        return self._counters

    def notify_committed(self, count: int) -> None:
        """Called by the writer after a commit: wake the sender when a batch may now be due."""
        self._pending += count
        if self._idle or self._pending >= self._cfg.batch_max_events:
            self._wake.set()

    def request_flush(self) -> None:
        """Send partial batches now (until ``end_flush``), without waiting for ``batch_max_age``."""
        with self._flush_lock:
            self._flushers += 1
        self._wake.set()

    def end_flush(self) -> None:
        with self._flush_lock:
            self._flushers -= 1

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the sender thread (a daemon) unless it runs already."""
        if self.running:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="polar-metering-sender", daemon=True)
        self._thread.start()

    def request_stop(self) -> None:
        """Ask the thread to stop after the current round, without waiting for it."""
        self._stop.set()
        self._wake.set()

    def stop(self, timeout: float | None) -> bool:
        """Stop after the current round; True when the thread ended within ``timeout``."""
        self.request_stop()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def close_store(self) -> None:
        """Close the connection (for a sender driven by ``step`` without a thread)."""
        if self._store is not None and not self.running:
            self._store.close()
            self._store = None

    def abandon(self) -> Store | None:
        """Forget the thread and connection without touching them (a forked child's copy)."""
        store, self._store, self._thread = self._store, None, None
        return store

    def _run(self) -> None:
        errors = 0
        try:
            while not self._stop.is_set():
                self._wake.clear()
                try:
                    delay = self.step()
                    errors = 0
                except Exception as exc:  # a locked or broken file: keep the thread, back off
                    errors += 1
                    if errors in (1, 10, 100) or errors % 1000 == 0:
                        log.warning(
                            "outbox sender error (%d in a row): %s",
                            errors,
                            redact(str(exc)),
                            exc_info=errors == 1,
                        )
                    delay = min(self._cfg.max_backoff, 0.05 * 2.0 ** min(errors, 20))
                if delay > 0:
                    self._wake.wait(min(delay, self._cfg.poll_interval))
        finally:
            store, self._store = self._store, None
            if store is not None:
                store.close()
