"""How hard one process's senders push: requests in flight, events per request and the request
timeout, adapted to the latency the server shows.

The emulator answers a 1000-event batch in ~90 ms; a real Polar server took 1.5-2.5 s with one API
worker, and with two batches in flight each waited for the other past the SDK's 5 s timeout. The
client then gave up on requests the server was still working on and sent them again: safe (Polar
drops repeats by ``external_id``) but wasted work, and with every resend queued behind the last the
stall fed itself. Fixed settings that suit one server are wrong for the other, so:

- **Timeout from observed latency.** Each request's timeout is ``3 x`` the latency this batch size
  has shown (per event, smoothed), plus a second, never below ``request_timeout`` and never above
  80% of the lease (past the lease another sender could take the batch over). A request that still
  times out doubles the margin for the next ones until one succeeds: a slow server is waited for,
  never abandoned merely for being slow.
- **Requests in flight, increased only when it pays (AIMD).** Senders start one request at a time
  and allow one more after a run of quick answers. With ``k`` in flight, throughput only grows if a
  request takes less than ``k`` times as long as a lone one; when it takes about that long (within
  10%), the server serves them one after another and more in flight only lengthens its queue: the
  window drops by one. A timeout drops it to one at once.
- **Batch size from a latency target.** A request that took longer than ``request_timeout``
  halves the batch (down to 50 events); quick answers grow it back by a quarter at a time, up to
  ``batch_max_events``. Shorter requests lose less on a failure and let ``close()`` finish within
  its deadline.

Pure bookkeeping under one lock; the sender threads call ``acquire``/``release`` around each request
and ``observe`` with its outcome.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

__all__ = ["Pace", "PaceState"]

_ALPHA = 0.3  # weight of the newest observation in the smoothed per-event latency
_MARGIN = 3.0  # timeout = margin x expected latency + _SLACK
_SLACK = 1.0
_QUEUED = 0.9  # k in flight taking over 0.9 x k times a lone request's latency: they only queue
_GROW_AFTER = 3  # quick answers in a row before one more request may be in flight
_MIN_BATCH = 50


@dataclass(frozen=True, slots=True)
class PaceState:
    """A snapshot for metrics: the current window, batch size and timeout for a full batch."""

    in_flight_limit: int
    batch_events: int
    timeout: float
    latency_per_event: float | None


class Pace:
    """The adaptive limits of one process's senders (module docstring). ``adaptive=False`` keeps
    ``max_in_flight``, ``max_batch`` and ``request_timeout`` fixed."""

    def __init__(
        self,
        *,
        max_in_flight: int,
        max_batch: int,
        request_timeout: float,
        lease_seconds: float,
        adaptive: bool,
    ) -> None:
        self.adaptive = adaptive
        self.max_in_flight = max_in_flight
        self.max_batch = max_batch
        self.floor = request_timeout
        self.ceiling = max(request_timeout, 0.8 * lease_seconds)
        self._cond = threading.Condition()
        self._window = 1 if adaptive else max_in_flight
        self._batch = max_batch
        self._busy = 0
        self._per_event: float | None = None  # smoothed seconds per event, as observed
        self._lone: float | None = None  # the same, for requests that were alone in flight
        self._boost = 1.0
        self._quick = 0

    # -- slots ---------------------------------------------------------------------------------------
    def acquire(self, timeout: float) -> int | None:
        """Wait up to ``timeout`` seconds for a slot; returns how many requests are then in flight
        (this one included), or ``None`` if none came free."""
        with self._cond:
            if self._busy >= self._window and not self._cond.wait_for(
                lambda: self._busy < self._window, timeout
            ):
                return None
            self._busy += 1
            return self._busy

    def release(self) -> None:
        with self._cond:
            self._busy -= 1
            self._cond.notify()

    # -- what to send --------------------------------------------------------------------------------
    @property
    def batch(self) -> int:
        return self._batch

    def timeout_for(self, events: int) -> float:
        """The timeout for a request of ``events`` events."""
        if not self.adaptive or self._per_event is None:
            return min(self.ceiling, self.floor * self._boost) if self.adaptive else self.floor
        expected = self._per_event * events
        return min(self.ceiling, max(self.floor, (_MARGIN * expected + _SLACK) * self._boost))

    # -- outcomes ------------------------------------------------------------------------------------
    def observe(
        self, events: int, seconds: float, concurrent: int, *, answered: bool, timed_out: bool
    ) -> None:
        """A request of ``events`` events, sent with ``concurrent`` in flight, took ``seconds``.
        ``answered``: the server replied (any status); ``timed_out``: we gave up waiting."""
        if not self.adaptive or events <= 0:
            return
        with self._cond:
            if timed_out:
                self._boost = min(self._boost * 2.0, 64.0)
                self._window = 1
                self._batch = max(_MIN_BATCH, self._batch // 2)
                self._quick = 0
                # What we saw is a lower bound on the real latency: never let the estimate shrink.
                per = seconds / events
                self._per_event = per if self._per_event is None else max(self._per_event, per)
                return
            if not answered:
                return  # a refused connection says nothing about how long the server takes
            per = seconds / events
            self._per_event = (
                per if self._per_event is None else (1 - _ALPHA) * self._per_event + _ALPHA * per
            )
            if concurrent <= 1:
                self._lone = per if self._lone is None else (1 - _ALPHA) * self._lone + _ALPHA * per
            self._boost = max(1.0, self._boost / 2.0)
            slow = seconds > self.floor
            if slow:
                self._batch = max(_MIN_BATCH, self._batch // 2)
            elif seconds < self.floor / 4 and self._batch < self.max_batch:
                self._batch = min(self.max_batch, self._batch + max(1, self._batch // 4))
            queued = concurrent > 1 and self._lone is not None and per > _QUEUED * concurrent * self._lone
            if queued or slow:
                self._window = max(1, self._window - 1)
                self._quick = 0
            else:
                self._quick += 1
                if self._quick >= _GROW_AFTER and self._window < self.max_in_flight:
                    self._window += 1
                    self._quick = 0
            self._cond.notify_all()

    def state(self) -> PaceState:
        with self._cond:
            return PaceState(self._window, self._batch, self.timeout_for(self._batch), self._per_event)
