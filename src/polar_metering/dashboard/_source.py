"""Where the dashboard's numbers come from: :class:`Source`, and the embedded engine's
:class:`EngineSource`. ``_polar_source.py`` has the ``polar://`` one.

Every number a page shows for a customer is a :class:`UsageStatus` from the client's own
``get_all_usage``, so the dashboard and ``check_limit`` can never disagree. Rankings and totals read
the engine's rollups (``backends/_engine/reports.py``), never the event table.

Methods are synchronous (the app runs them in a worker thread) and safe to call from several
threads at once.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

from polar_metering._catalog import Meter
from polar_metering._exceptions import MeteringError, ValidationError
from polar_metering._status import UsageStatus
from polar_metering.dashboard._views import (
    INTERVALS,
    ChartSeries,
    CustomerPage,
    CustomerRow,
    DeliveryPage,
    EventView,
    HoldView,
    MeterTotals,
    OverviewPage,
    aggregation_words,
    chart_range,
    filter_words,
    period_to_date,
    uses_for,
)

if TYPE_CHECKING:
    from polar_metering._client import Metering
    from polar_metering.backends._engine.backend import LocalEngine

__all__ = ["EngineSource", "Source", "open_source"]

T = TypeVar("T")

#: customers per overview page
PER_PAGE = 25
#: a ranking is recomputed at most this often while usage keeps changing
_MIN_REFRESH_S = 0.5
#: and at least this often (credits granted elsewhere change no marker)
_MAX_AGE_S = 15.0


class Source:
    """The pages' data for one client. Subclasses fill in what differs between backends."""

    kind = "base"
    can_grant = False
    has_delivery = False

    def __init__(self, client: Metering, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.meters: list[Meter] = list(client.catalog.meters)
        self._clock = clock
        self._actions = 0
        self._lock = threading.Lock()

    # -- what subclasses provide ------------------------------------------------------------------
    def marker(self) -> str:
        """A value that changes when what the pages show may have changed."""
        raise NotImplementedError

    def overview(self, *, search: str = "", page: int = 1, per_page: int = PER_PAGE) -> OverviewPage:
        raise NotImplementedError

    def known_customer(self, customer: str) -> bool:
        return True

    def extras(self, customer: str) -> tuple[list[EventView] | None, list[HoldView] | None, list[str]]:
        """Recent events and active reservations (``None`` where the backend has none to show)."""
        return None, None, []

    def meter_totals(self) -> list[MeterTotals]:
        raise NotImplementedError

    def delivery(self) -> DeliveryPage | None:
        return None

    def retry_dead_letters(self, ids: Sequence[int] | None) -> int:
        raise MeteringError("retry: this backend has no delivery outbox")

    def grant(self, customer: str, meter: str, units: float) -> None:
        raise MeteringError("grant: credits are granted in Polar on this backend (a meter-credit benefit)")

    def close(self) -> None:
        """Stop background work (the Polar source's refresher)."""

    # -- shared -------------------------------------------------------------------------------------
    def now(self) -> datetime:
        return self.client.config.clock.now()

    def acted(self) -> None:
        """Note a change made through the dashboard, so open pages refresh at once."""
        with self._lock:
            self._actions += 1

    def statuses(self, customer: str) -> dict[str, UsageStatus]:
        return self.client.get_all_usage(customer)

    def customer(self, customer: str, interval: str = "day") -> CustomerPage | None:
        """The customer page, or ``None`` when the backend knows nothing of ``customer``."""
        if interval not in INTERVALS:
            raise ValidationError("interval", f"must be one of {list(INTERVALS)}", interval)
        if not self.known_customer(customer):
            return None
        statuses = self.statuses(customer)
        uses = uses_for(self.meters, statuses)
        now = self.now()
        charts = [self._chart(customer, m, statuses.get(m.slug), interval, now) for m in self.meters]
        events, holds, notes = self.extras(customer)
        return CustomerPage(
            customer=customer,
            uses=uses,
            charts=charts,
            interval=interval,
            events=events,
            holds=holds,
            notes=notes,
            can_grant=self.can_grant,
        )

    def _chart(
        self, customer: str, meter: Meter, status: UsageStatus | None, interval: str, now: datetime
    ) -> ChartSeries:
        start = chart_range(interval, now)
        period_start = status.period_start.timestamp() if status and status.period_start else None
        period_end = status.period_end.timestamp() if status and status.period_end else None
        limit = status.limit if status else None
        try:
            points = self.client.usage_history(
                customer,
                meter.slug,
                start=start,
                end=now,
                interval=interval,  # type: ignore[arg-type]
            )
        except MeteringError as exc:
            return ChartSeries(
                meter.slug,
                meter.name,
                meter.aggregation.func,
                [],
                [],
                None,
                limit,
                period_start,
                period_end,
                error=str(exc),
            )
        x = [p.timestamp() for p, _ in points]
        y = [float(q) for _, q in points]
        return ChartSeries(
            meter.slug,
            meter.name,
            meter.aggregation.func,
            x,
            y,
            period_to_date(meter.aggregation.func, x, y, period_start),
            limit,
            period_start,
            period_end,
        )

    def page_rows(self, customers: Sequence[str]) -> list[CustomerRow]:
        return [CustomerRow(c, uses_for(self.meters, self.statuses(c))) for c in customers]

    @staticmethod
    def paged(total: int, page: int, per_page: int) -> tuple[int, int, int]:
        """``(page, pages, offset)`` with ``page`` clamped into range."""
        pages = max(1, math.ceil(total / per_page))
        page = min(max(1, page), pages)
        return page, pages, (page - 1) * per_page


class EngineSource(Source):
    """The embedded engine (SQLite or PostgreSQL)."""

    kind = "engine"
    can_grant = True

    def __init__(self, client: Metering, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        self.engine: LocalEngine = client.backend  # type: ignore[assignment]
        self._ranking: tuple[str, float, list[tuple[str, float | None]]] | None = None

    def marker(self) -> str:
        from polar_metering.backends._engine import reports

        # The time term refreshes open pages now and then for changes no marker sees (a grant
        # made by another process).
        slot = int(self._clock() // _MAX_AGE_S)
        return f"{reports.change_marker(self.engine)}.{self._actions}.{slot}"

    def ranking(self) -> list[tuple[str, float | None]]:
        """Every customer with its highest use of a limit, most used first (cached per marker)."""
        from polar_metering.backends._engine import reports
        from polar_metering.backends._engine.backend import to_us

        marker = self.marker()
        now = self._clock()
        with self._lock:
            cached = self._ranking
        if cached is not None and (cached[0] == marker or now - cached[1] < _MIN_REFRESH_S):
            return cached[2]
        compiled = [self.engine._meter_id(m) for m in self.meters]
        ranked = reports.ranking(self.engine, compiled, now_us=to_us(self.now()))
        with self._lock:
            self._ranking = (marker, now, ranked)
        return ranked

    def overview(self, *, search: str = "", page: int = 1, per_page: int = PER_PAGE) -> OverviewPage:
        ranked = self.ranking()
        needle = search.strip().lower()
        matching = [r for r in ranked if needle in r[0].lower()] if needle else ranked
        page, pages, offset = self.paged(len(matching), page, per_page)
        rows = self.page_rows([c for c, _ in matching[offset : offset + per_page]])
        return OverviewPage(
            rows=rows,
            total=len(matching),
            page=page,
            pages=pages,
            per_page=per_page,
            search=search,
            over=sum(1 for _, w in ranked if w is not None and w >= 1.0),
            near=sum(1 for _, w in ranked if w is not None and 0.8 <= w < 1.0),
            customers=len(ranked),
            meters=self.meters,
        )

    def known_customer(self, customer: str) -> bool:
        from polar_metering.backends._engine import reports

        return reports.customer_exists(self.engine, customer)

    def extras(self, customer: str) -> tuple[list[EventView] | None, list[HoldView] | None, list[str]]:
        from polar_metering.backends._engine import reports

        events = [
            EventView(e.name, e.timestamp, e.external_id, e.metadata)
            for e in reports.recent_events(self.engine, customer, limit=20)
        ]
        holds = [
            HoldView(h.id, h.meter, h.amount, h.created_at, h.expires_at)
            for h in reports.active_holds(self.engine, customer)
        ]
        return events, holds, []

    def meter_totals(self) -> list[MeterTotals]:
        from polar_metering._periods import add_months
        from polar_metering.backends._engine import reports
        from polar_metering.backends._engine.backend import to_us

        now = self.now()
        first = add_months(now.replace(day=1, hour=0, minute=0, second=0, microsecond=0), -11)
        compiled = [self.engine._meter_id(m) for m in self.meters]
        totals = reports.period_totals(self.engine, compiled, since_us=to_us(first))
        current = reports.current_totals(self.engine, compiled, now_us=to_us(now))
        out = []
        for meter in self.meters:
            mine = {p.month: p for p in totals if p.meter == meter.slug}
            months = [add_months(first, k) for k in range(12)]
            series = [
                (m.strftime("%b %Y"), m.timestamp(), mine[m].total if m in mine else 0.0) for m in months
            ]
            this_period = current.get(meter.slug, (0.0, 0))
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
                    totals_label="Usage summed over customers, by the month each billing period began",
                    current_total=this_period[0],
                    customers_with_usage=this_period[1],
                )
            )
        return out

    def grant(self, customer: str, meter: str, units: float) -> None:
        slugs = {m.slug for m in self.meters}
        if meter not in slugs:
            raise ValidationError("meter", f"must be one of {sorted(slugs)}", meter)
        if isinstance(units, bool) or not isinstance(units, int | float) or not math.isfinite(units):
            raise ValidationError("units", "must be a finite number", units)
        if units == 0 or abs(units) > 1e12:
            raise ValidationError("units", "must be non-zero and at most 10^12 in size", units)
        if not self.known_customer(customer):
            raise ValidationError("customer", "is not known to the engine", customer)
        self.engine.grant_credits(customer, self.engine._meter_id(meter).id, float(units))
        self.acted()


def open_source(client: Metering) -> Source:
    """The source for ``client``'s backend: the engine's, or Polar's."""
    from polar_metering.backends._engine.backend import LocalEngine

    if isinstance(client.backend, LocalEngine):
        return EngineSource(client)
    from polar_metering.backends._polar import PolarBackend

    if isinstance(client.backend, PolarBackend):
        from polar_metering.dashboard._polar_source import PolarSource

        return PolarSource(client)
    raise MeteringError(f"dashboard: no dashboard source for {client.backend!r}")
