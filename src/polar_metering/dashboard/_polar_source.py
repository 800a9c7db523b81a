"""The dashboard on ``polar://``: customer meters, meter quantities and the delivery outbox.

Polar keeps the numbers (``server/polar/customer_meter/endpoints.py`` of polarsource/polar at
c6c3645), so the overview holds a local copy of every customer-meter row: a background refresher
lists them all once (100 a request, sorted by customer so pages stay stable), then keeps asking
for the most recently modified page. Every request spends from the same read budget as ``usage_history``
(``backends/_polar/_history.py``): a dashboard takes a small, fixed share of the token's rate limit
and never competes with event delivery. While the first listing runs the overview says how much it
has loaded.

A row becomes a status the way a limit check makes one (``to_reading`` then ``decide``), so the
overview shows what ``check_limit`` answers from the same row.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from polar_metering._exceptions import MeteringError
from polar_metering._projection import decide
from polar_metering._status import UsageStatus
from polar_metering.backends._polar._history import RequestBudget
from polar_metering.backends._polar._readings import to_reading
from polar_metering.backends._polar._sdk import polar_errors
from polar_metering.dashboard._source import PER_PAGE, Source
from polar_metering.dashboard._views import (
    DeliveryPage,
    EventView,
    HoldView,
    MeterTotals,
    OverviewPage,
    aggregation_words,
    filter_words,
    meter_use,
)

if TYPE_CHECKING:
    from polar_metering._client import Metering
    from polar_metering.backends._polar._backend import PolarBackend

__all__ = ["CustomerMeterCopy", "PolarSource"]

log = logging.getLogger("polar_metering.dashboard")

_PAGE = 100
_EVENTS_TTL = 10.0
_TOTALS_TTL = 60.0


class CustomerMeterCopy:
    """Every customer-meter row of the catalog's meters, kept fresh by a background thread.

    ``generation`` grows whenever a row changes, which is what open pages poll for.
    """

    def __init__(
        self,
        backend: PolarBackend,
        budget: RequestBudget,
        *,
        poll_every: float,
        full_every: float = 900.0,
    ) -> None:
        self._backend = backend
        self._budget = budget
        self.poll_every = poll_every
        self.full_every = full_every
        self.rows: dict[tuple[str, str], Any] = {}
        self.generation = 0
        self.loaded = 0
        self.total: int | None = None
        self.complete = False
        self.error: str | None = None
        self._last_full = -float("inf")
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="polar-metering-dashboard", daemon=True
                )
                self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)

    def refresh_soon(self) -> None:
        self._wake.set()

    def snapshot(self) -> dict[tuple[str, str], Any]:
        with self._lock:
            return dict(self.rows)

    def _spend(self) -> bool:
        """Wait for the budget (or the stop signal); True when a request may go."""
        while not self._stop.is_set():
            if self._budget.take():
                return True
            self._stop.wait(min(5.0, max(0.05, self._budget.wait_s())))
        return False

    def _list(self, meter_ids: list[str], page: int, sorting: list[str]) -> Any:
        client = self._backend._client
        with polar_errors("list customer meters", self._backend.settings):
            return client.customer_meters.list(
                meter_id=meter_ids,
                page=page,
                limit=_PAGE,
                sorting=sorting,  # type: ignore[arg-type]
            )

    def _meter_ids(self) -> list[str]:
        return list(dict.fromkeys(self._backend._directory.ids(self._backend.catalog.meters).values()))

    def _merge(self, items: Sequence[Any]) -> None:
        changed = False
        with self._lock:
            for row in items:
                customer = getattr(row.customer, "external_id", None) or row.customer_id
                key = (str(customer), str(row.meter_id))
                old = self.rows.get(key)
                if (
                    old is None
                    or old.modified_at != row.modified_at
                    or old.consumed_units != row.consumed_units
                ):
                    self.rows[key] = row
                    changed = True
            if changed:
                self.generation += 1

    def sweep(self, meter_ids: list[str] | None = None) -> None:
        """List every row once, within the budget (the refresher's first task; the CLI's only one)."""
        if meter_ids is None:
            meter_ids = self._meter_ids()
        page = 1
        while not self._stop.is_set():
            if not self._spend():
                return
            answer = self._list(meter_ids, page, ["customer_id", "meter_id"])
            self._merge(answer.items)
            with self._lock:
                self.total = answer.pagination.total_count
                self.loaded = min(self.total, page * _PAGE)
            if page >= answer.pagination.max_page:
                break
            page += 1
        with self._lock:
            self.complete = True
            self.loaded = self.total or 0
        self._last_full = time.monotonic()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                meter_ids = self._meter_ids()
                if time.monotonic() - self._last_full >= self.full_every:
                    self.sweep(meter_ids)
                elif self._spend():
                    self._merge(self._list(meter_ids, 1, ["-modified_at"]).items)
                self.error = None
            except MeteringError as exc:
                self.error = str(exc)
                log.warning("polar_metering: dashboard refresh failed: %s", exc)
                self._stop.wait(min(30.0, self.poll_every * 5))
            except Exception as exc:  # a refresher that dies would freeze every page
                self.error = f"{type(exc).__name__}: {exc}"
                log.exception("polar_metering: dashboard refresh failed")
                self._stop.wait(30.0)
            self._wake.wait(self.poll_every)
            self._wake.clear()


class PolarSource(Source):
    """``polar://``: Polar's customer meters and quantities, and this process's outbox."""

    kind = "polar"
    has_delivery = True

    def __init__(self, client: Metering, *, background: bool = True, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        self.background = background
        self.backend: PolarBackend = client.backend  # type: ignore[assignment]
        # Pages, history and listings share one budget: the history reader's.
        self.budget = self.backend._history.budget
        local = self.backend.settings.is_local
        self.copy = CustomerMeterCopy(self.backend, self.budget, poll_every=1.0 if local else 5.0)
        self._events: dict[str, tuple[float, list[EventView]]] = {}
        self._totals: tuple[float, list[MeterTotals]] | None = None
        self._rate: list[tuple[float, int]] = []

    def _start(self) -> None:
        if self.background:
            self.copy.start()

    def marker(self) -> str:
        self._start()
        return f"{self.copy.generation}.{self._actions}.{int(self._clock() // 15)}"

    def _status(self, customer: str, slug: str, row: Any | None) -> UsageStatus:
        meter = self.client.catalog.meter(slug)
        reading = to_reading(meter, customer, row, self.backend._no_credits)
        return decide(meter.aggregation.func, reading)

    def overview(self, *, search: str = "", page: int = 1, per_page: int = PER_PAGE) -> OverviewPage:
        self._start()
        ids = self.backend._directory.ids(self.meters)
        slug_of = {v: k for k, v in ids.items()}
        by_customer: dict[str, dict[str, Any]] = {}
        for (customer, meter_id), row in self.copy.snapshot().items():
            slug = slug_of.get(meter_id)
            if slug is not None:
                by_customer.setdefault(customer, {})[slug] = row
        ranked: list[tuple[str, float | None, list[Any]]] = []
        for customer, rows in by_customer.items():
            uses = [meter_use(m, self._status(customer, m.slug, rows.get(m.slug))) for m in self.meters]
            ratios = [u.ratio for u in uses if u.ratio is not None]
            ranked.append((customer, max(ratios) if ratios else None, uses))
        ranked.sort(key=lambda r: (r[1] is None, -(r[1] or 0.0), r[0]))
        needle = search.strip().lower()
        matching = [r for r in ranked if needle in r[0].lower()] if needle else ranked
        page, pages, offset = self.paged(len(matching), page, per_page)
        from polar_metering.dashboard._views import CustomerRow

        notice = None
        if self.copy.error:
            notice = f"Polar could not be read: {self.copy.error}"
        elif not self.copy.complete:
            total = "…" if self.copy.total is None else f"{self.copy.total:,}"
            notice = f"Loading customer meters from Polar: {self.copy.loaded:,} of {total}"
        return OverviewPage(
            rows=[CustomerRow(c, uses) for c, _, uses in matching[offset : offset + per_page]],
            total=len(matching),
            page=page,
            pages=pages,
            per_page=per_page,
            search=search,
            over=sum(1 for _, w, _ in ranked if w is not None and w >= 1.0),
            near=sum(1 for _, w, _ in ranked if w is not None and 0.8 <= w < 1.0),
            customers=len(ranked),
            meters=self.meters,
            notice=notice,
        )

    def extras(self, customer: str) -> tuple[list[EventView] | None, list[HoldView] | None, list[str]]:
        notes = [
            "Reservations on polar:// are held by the process that made them, so they are not listed here "
            "(docs/limits.md)."
        ]
        now = self._clock()
        cached = self._events.get(customer)
        if cached is not None and now - cached[0] < _EVENTS_TTL:
            return cached[1], None, notes
        if not self.budget.take():
            return (cached[1] if cached else None), None, [*notes, "Recent events wait for the read budget."]
        try:
            with polar_errors("list events", self.backend.settings):
                answer = self.backend._client.events.list(
                    external_customer_id=customer, limit=20, sorting=["-timestamp"], source="user"
                )
        except MeteringError as exc:
            return (cached[1] if cached else None), None, [*notes, f"Recent events: {exc}"]
        events = [
            EventView(
                e.name,
                datetime.fromisoformat(str(e.timestamp).replace("Z", "+00:00")),
                getattr(e, "id", None),
                dict(getattr(e, "metadata", None) or {}),
            )
            for e in answer.items
        ]
        self._events[customer] = (now, events)
        return events, None, notes

    def meter_totals(self) -> list[MeterTotals]:
        now = self._clock()
        if self._totals is not None and now - self._totals[0] < _TOTALS_TTL:
            return self._totals[1]
        ids = self.backend._directory.ids(self.meters)
        end = self.now()
        start = (end - timedelta(days=29)).replace(hour=0, minute=0, second=0, microsecond=0)
        out = []
        for meter in self.meters:
            series: list[tuple[str, float, float]] = []
            error = None
            if self.budget.take():
                try:
                    with polar_errors("read meter quantities", self.backend.settings):
                        answer = self.backend._client.meters.quantities(
                            id=ids[meter.slug],
                            start_timestamp=start.isoformat(),
                            end_timestamp=end.isoformat(),
                            interval="day",
                        )
                    for q in answer.quantities:
                        when = datetime.fromisoformat(str(q.timestamp).replace("Z", "+00:00"))
                        series.append((when.strftime("%d %b"), when.timestamp(), float(q.quantity)))
                except MeteringError as exc:
                    error = str(exc)
            else:
                error = "waiting for the read budget"
            out.append(
                MeterTotals(
                    slug=meter.slug,
                    name=meter.name,
                    filter_words=filter_words(meter.filter),
                    aggregation_words=aggregation_words(meter.aggregation),
                    definition={
                        "filter": meter.filter.to_polar(),
                        "aggregation": meter.aggregation.to_polar(),
                    },
                    unit=meter.unit,
                    totals=series,
                    totals_label="Usage per day over all customers (Polar's meter quantities)",
                    current_total=sum(v for _, _, v in series) if series else None,
                    error=error,
                )
            )
        if all(m.error is None for m in out):
            self._totals = (now, out)
        return out

    def delivery(self) -> DeliveryPage:
        outbox = self.backend.outbox
        status = outbox.status()
        metrics = outbox.metrics()
        now = self._clock()
        self._rate = [(t, s) for t, s in self._rate if now - t <= 60.0] + [(now, metrics.sent)]
        first_t, first_sent = self._rate[0]
        rate = (metrics.sent - first_sent) * 60.0 / (now - first_t) if now - first_t >= 1.0 else None
        return DeliveryPage(
            path=status.path,
            pending=status.pending,
            leased=status.leased,
            dead=status.dead,
            buffered=status.buffered,
            oldest_age_s=status.oldest_age_s,
            bytes_used=status.bytes,
            max_bytes=status.max_bytes,
            paused_until=status.paused_until,
            accepting=status.accepting,
            send_rate_per_min=rate,
            sent=metrics.sent,
            retries=metrics.retries,
            rate_limited=metrics.rate_limited,
            dead_lettered=metrics.dead_lettered,
            last_error=metrics.last_error,
            dead_letters=outbox.dead_letters(100),
            server=self.backend.settings.server,
        )

    def retry_dead_letters(self, ids: Sequence[int] | None) -> int:
        moved = self.backend.outbox.retry_dead_letters(list(ids) if ids is not None else None)
        self.acted()
        return moved

    def close(self) -> None:
        self.copy.stop()
