"""Polar's balance debounce (``server/polar/customer_meter/tasks.py``), played by the emulator
over an engine that settles at once.

Polar recomputes a customer's meters in a task that waits 15 s after the customer's latest event
and is pushed back by every new one (forced after 180 min). Until it runs, ``/v1/customer-meters``
and the customer state show the figures of the previous recompute. :class:`SettledBalances` keeps,
for each customer with unsettled events, the rows as they were before those events, and serves them
until the customer has been quiet for ``delay`` seconds. With ``delay == 0`` it is a pass-through.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from polar_metering.backends._engine.backend import LocalEngine
    from polar_metering.backends._engine.records import CustomerMeterRecord
    from polar_metering.emulator._quirks import PolarQuirks

__all__ = ["MAX_WAIT_SECONDS", "SettledBalances"]

MAX_WAIT_SECONDS = 180 * 60.0  # CUSTOMER_METER_UPDATE_DEBOUNCE_MAX_THRESHOLD (server/polar/config.py)
_T = TypeVar("_T")


@dataclass(slots=True)
class _Pending:
    snapshot: list[CustomerMeterRecord]
    first: float
    last: float


class SettledBalances:
    """Customer-meter rows as Polar would serve them, given the time each customer last had events.

    ``monotonic`` is the engine clock's, so a ``ManualClock`` drives the debounce in tests.
    """

    def __init__(
        self,
        engine: LocalEngine,
        delay: float,
        *,
        max_wait: float = MAX_WAIT_SECONDS,
        quirks: PolarQuirks | None = None,
        on_settled: Callable[[Sequence[str]], None] | None = None,
    ) -> None:
        if delay < 0:
            raise ValueError("settle_delay: must be >= 0 seconds")
        self._engine = engine
        self.delay = float(delay)
        self._max_wait = max_wait
        self._quirks = quirks
        #: called with the customers whose balances were just recomputed (the emulator sends
        #: ``customer.state_changed`` for them, as Polar does after each recompute)
        self.on_settled = on_settled
        self._now: Callable[[], float] = engine.clock.monotonic
        self._pending: dict[str, _Pending] = {}
        self._lock = threading.Lock()

    def _live(
        self,
        customer_ids: Sequence[str] | None = None,
        external_customer_ids: Sequence[str] | None = None,
        meter_ids: Sequence[str] | None = None,
    ) -> list[CustomerMeterRecord]:
        rows = self._engine.customer_meters(
            customer_ids=list(customer_ids) if customer_ids else None,
            external_customer_ids=list(external_customer_ids) if external_customer_ids else None,
            meter_ids=list(meter_ids) if meter_ids else None,
        )
        return self._quirks.apply(rows) if self._quirks is not None else rows

    def _notify(self, customer_ids: Sequence[str]) -> None:
        if customer_ids and self.on_settled is not None:
            self.on_settled(list(customer_ids))

    @property
    def enabled(self) -> bool:
        return self.delay > 0

    def ingest(self, customer_ids: Iterable[str], action: Callable[[], _T]) -> _T:
        """Run ``action`` (the insert), first freezing the rows of customers not already waiting."""
        ids = sorted(set(customer_ids))
        if not self.enabled:
            result = action()
            self._notify(ids)
            return result
        with self._lock:
            now = self._now()
            fresh = [cid for cid in ids if cid not in self._pending or self._due(self._pending[cid], now)]
            before = self._live(customer_ids=fresh) if fresh else []
            for cid in fresh:
                self._pending[cid] = _Pending([r for r in before if r.customer.id == cid], now, now)
            result = action()
            now = self._now()
            for cid in ids:
                self._pending[cid].last = now
            return result

    def customer_created(self, customer_id: str) -> None:
        """Polar queues a recompute when a customer is created; until it runs there are no rows."""
        if self.enabled:
            with self._lock:
                now = self._now()
                self._pending[customer_id] = _Pending([], now, now)

    def settle(self, customer_id: str | None = None) -> int:
        """Recompute now (one customer, or everyone): the admin "settle now" and credit grants.
        Returns how many customers had updates waiting."""
        with self._lock:
            if customer_id is None:
                done = list(self._pending)
                self._pending.clear()
            else:
                done = [customer_id] if self._pending.pop(customer_id, None) is not None else []
        self._notify(done if customer_id is None else [customer_id])
        return len(done)

    def sweep(self) -> int:
        """Let the customers whose quiet period is over settle (the background tick)."""
        if not self.enabled:
            return 0
        with self._lock:
            due = self._expire()
        self._notify(due)
        return len(due)

    def _expire(self) -> list[str]:
        now = self._now()
        due = [cid for cid, p in self._pending.items() if self._due(p, now)]
        for cid in due:
            del self._pending[cid]
        return due

    def _due(self, pending: _Pending, now: float) -> bool:
        return now - pending.last >= self.delay or now - pending.first >= self._max_wait

    def _held(self) -> tuple[dict[str, list[CustomerMeterRecord]], list[str]]:
        due = self._expire()
        return {cid: p.snapshot for cid, p in self._pending.items()}, due

    def rows(
        self,
        *,
        customer_ids: Sequence[str] | None = None,
        external_customer_ids: Sequence[str] | None = None,
        meter_ids: Sequence[str] | None = None,
    ) -> list[CustomerMeterRecord]:
        """The engine's rows, with waiting customers' rows replaced by their frozen ones."""
        live = self._live(customer_ids, external_customer_ids, meter_ids)
        if not self.enabled:
            return live
        with self._lock:
            held, due = self._held()
        self._notify(due)
        if not held:
            return live
        out = [r for r in live if r.customer.id not in held]
        for frozen in held.values():
            out.extend(r for r in frozen if _matches(r, customer_ids, external_customer_ids, meter_ids))
        return out

    def row(self, customer_meter_id: str) -> CustomerMeterRecord | None:
        """One row by id; a row created by unsettled events does not exist yet."""
        record = self._engine.get_customer_meter(customer_meter_id)
        if record is not None and self._quirks is not None:
            record = self._quirks.apply([record])[0]
        if record is None or not self.enabled:
            return record
        with self._lock:
            held, due = self._held()
        self._notify(due)
        frozen = held.get(record.customer.id)
        if frozen is None:
            return record
        return next((r for r in frozen if r.id == customer_meter_id), None)


def _matches(
    record: CustomerMeterRecord,
    customer_ids: Sequence[str] | None,
    external_customer_ids: Sequence[str] | None,
    meter_ids: Sequence[str] | None,
) -> bool:
    # Either id filter selects the customer, as the engine's customer_meters does.
    if (customer_ids or external_customer_ids) and not (
        record.customer.id in (customer_ids or ())
        or record.customer.external_id in (external_customer_ids or ())
    ):
        return False
    if meter_ids:
        return record.meter.id in meter_ids
    # Archived meters are listed only when asked for by id (customer_meter/service.py).
    return record.meter.archived_at is None
