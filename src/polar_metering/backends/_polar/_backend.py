"""``PolarBackend``: events go to Polar through the durable outbox; readings come from customer meters.

URL forms::

    polar://                          production (or POLAR_ENVIRONMENT)
    polar://sandbox                   Polar's sandbox
    polar://production
    polar://?base_url=http://127.0.0.1:8765   another server speaking Polar's API (the emulator)

The token comes from ``access_token=`` or ``POLAR_ACCESS_TOKEN`` and never from the URL.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar

from polar_metering._exceptions import ConfigurationError
from polar_metering._limits import Limits, MarkingTransport
from polar_metering._status import MeterReading
from polar_metering.backends._base import Backend, BackendURL, Hold, IngestResult
from polar_metering.backends._polar._history import HistoryReader
from polar_metering.backends._polar._ledger import Ledger
from polar_metering.backends._polar._lifecycle import Lifecycle, PlanDirectory, apply_plans
from polar_metering.backends._polar._readings import (
    MeterDirectory,
    NoCredits,
    check_no_credits,
    fetch_rows,
    to_reading,
)
from polar_metering.backends._polar._sdk import PolarSettings, open_client, resolve_settings
from polar_metering.backends._polar._transport import SdkTransport
from polar_metering.delivery import DeliveryConfig, Outbox

if TYPE_CHECKING:
    from polar_metering._catalog import Catalog, Meter, Plan
    from polar_metering._clock import Clock
    from polar_metering._config import MeteringConfig
    from polar_metering._events import Event
    from polar_metering._subscriptions import Customer, Page, Subscription

__all__ = ["PolarBackend", "default_outbox_path", "delivery_config"]

log = logging.getLogger("polar_metering")

# Requests/min towards a server on this machine (the emulator): Polar's limits (server/polar/rate_limit.py)
# do not apply,
# but a ceiling still keeps a runaway loop from pinning a core.
_LOCAL_RATE_PER_MINUTE = 60_000.0


def default_outbox_path(settings: PolarSettings) -> str:
    """One outbox file per destination, in the working directory, so events queued for the sandbox
    are never sent to production after a configuration change (or the other way round)."""
    if settings.base_url:
        where = re.sub(r"[^A-Za-z0-9]+", "-", settings.base_url.split("://", 1)[-1]).strip("-")
        return f"polar-metering-outbox-{where}.db"
    return f"polar-metering-outbox-{settings.environment}.db"


def delivery_config(settings: PolarSettings, outbox_path: str | None) -> DeliveryConfig:
    """Delivery settings for a destination: Polar's rate limit for its environment, none locally."""
    path = outbox_path or default_outbox_path(settings)
    if settings.is_local:
        return DeliveryConfig(
            path=path,
            environment=None,
            rate_limit_per_minute=_LOCAL_RATE_PER_MINUTE,
            rate_limit_burst=100,
            request_timeout=settings.timeout,
        )
    return DeliveryConfig(path=path, environment=settings.environment, request_timeout=settings.timeout)


class PolarBackend(Backend):
    """The ``polar://`` backend.

    - ``ingest`` commits events to the outbox file (durable by default; with ``durable=False`` an
      in-memory append that a writer thread commits) and sender threads deliver them with
      ``events.ingest``, so tracking never waits on the network. ``IngestResult.inserted`` counts
      events accepted into the outbox; Polar's own duplicate count arrives later, at delivery (see
      ``outbox.metrics()``).
    - ``reading`` returns the customer's Polar customer meter for the catalog meter (matched by
      name), cached for ``cache_ttl`` seconds, plus the usage this process tracked that Polar has not
      counted yet and this process's holds (``polar_metering._limits``): Polar updates balances
      ~15 s after ingest (server/polar/customer_meter/tasks.py), so ``settles_immediately`` is false.
    - ``hold``/``settle``/``release`` reserve within this process (atomic across its threads, not
      across processes: see ``docs/limits.md``).

    Options (keyword, from ``backend_options`` or the constructor): ``no_credits`` —
    ``"unlimited"`` (default) or ``"deny"``, what a customer without credits on a meter may do (see
    :func:`~polar_metering.backends._polar._readings.to_reading`); ``delivery`` — a
    :class:`DeliveryConfig` replacing the derived one; ``durable`` — ``False`` to opt into group
    commit (faster, but a crash loses the last few milliseconds of events: ``docs/delivery.md``);
    ``timeout`` — seconds per request;
    ``overlay`` — ``{"settle_horizon": s, "unconfirmed_horizon": s, "settle_margin": s}`` to tune
    when tracked usage leaves the overlay (``docs/limits.md``); ``background`` — ``False`` for a
    client that only reads (``polar-metering reconcile``): no delivery threads, so opening it never
    sends what other processes left in the outbox.
    """

    schemes: ClassVar[tuple[str, ...]] = ("polar",)
    settles_immediately: ClassVar[bool] = False
    supports_holds: ClassVar[bool] = True
    supports_plans: ClassVar[bool] = True

    def __init__(
        self,
        url: BackendURL,
        *,
        catalog: Catalog,
        clock: Clock,
        config: MeteringConfig | None = None,
        no_credits: NoCredits | None = None,
        delivery: DeliveryConfig | None = None,
        durable: bool | None = None,
        timeout: float | None = None,
        overlay: Mapping[str, float] | None = None,
        background: bool = True,
        **options: Any,
    ) -> None:
        super().__init__(url, catalog=catalog, clock=clock)
        if options:
            raise ConfigurationError(
                f"polar://: unknown options {sorted(options)}; "
                "known: config, no_credits, delivery, durable, timeout, overlay, background"
            )
        if config is None:
            from polar_metering._config import build_config

            config = build_config(url.raw)
        self.settings = resolve_settings(
            access_token=config.access_token,
            environment=config.environment,
            base_url=config.base_url,
            url_host=url.host,
            url_query=url.query,
            timeout=timeout,
        )
        self._no_credits = check_no_credits(no_credits or url.query.get("no_credits", "unlimited"))
        if delivery is not None and not isinstance(delivery, DeliveryConfig):
            raise ConfigurationError(f"delivery: must be a DeliveryConfig, got {type(delivery).__name__}")
        if durable is not None and not isinstance(durable, bool):
            raise ConfigurationError(f"durable: must be True or False, got {durable!r}")
        if not isinstance(background, bool):
            raise ConfigurationError(f"background: must be True or False, got {background!r}")
        self.limits = _limits(catalog, clock, config, overlay)
        self._transport = SdkTransport(self.settings)
        # Delivery reports feed the overlay's settle rule. The send time is compared with Polar's
        # modified_at, stamped by Polar's clock, so it is real wall time, not the injectable clock.
        marking = MarkingTransport(self._transport, self.limits.delivered, time.time)
        settings = delivery or delivery_config(self.settings, config.outbox_path)
        if durable is not None:
            settings = dataclasses.replace(settings, durable=durable)
        self.outbox = Outbox(settings, marking, background=background)
        # A durable outbox (the default) commits before ingest returns: the async client must not
        # wait for that on the event loop. With durable=False ingest is an in-memory append.
        self.nonblocking_ingest = not self.outbox.config.durable
        self._client = open_client(self.settings)
        self._directory = MeterDirectory(self._client, self.settings, clock.monotonic)
        self._history = HistoryReader(self._client, self.settings, clock.monotonic)
        self._default_plan = catalog.default
        self._unknown_customer = config.unknown_customer
        self._lifecycle = Lifecycle(
            self._client,
            self.settings,
            catalog,
            PlanDirectory(self._client, self.settings, catalog, clock.monotonic),
            self._directory,
            monotonic=clock.monotonic,
            wall=clock.now,
            ttl=config.subscription_ttl,
        )
        self.ledger: Ledger | None = None
        if config.ledger is not None:
            self.ledger = Ledger(config.ledger, catalog=catalog, clock=clock, outbox=self.outbox)
        self._closed = False

    # -- events -------------------------------------------------------------------------------------
    def ingest(self, events: Sequence[Event]) -> IngestResult:
        """Queue ``events`` for delivery (no network I/O) and overlay them on this process's readings;
        raises ``OutboxError`` if the outbox is full. With a ledger: stored in the ledger, from which
        the relay moves them to the outbox (``_ledger.py``)."""
        if self.ledger is not None:
            return self.ledger.ingest(events)
        return self.limits.track(events, self._enqueue)

    def _enqueue(self, events: Sequence[Event]) -> IngestResult:
        return IngestResult(inserted=self.outbox.enqueue(list(events)))

    # -- readings -----------------------------------------------------------------------------------
    def _fetch(self, customer: str, meters: Sequence[Meter]) -> dict[str, tuple[MeterReading, float | None]]:
        """Polar's rows as readings, each with the row's ``modified_at`` (epoch seconds) for the overlay."""
        ids = self._directory.ids(meters)
        rows = fetch_rows(self._client, self.settings, customer, list(dict.fromkeys(ids.values())))
        # The customer's subscription gives the period; without one (or for a customer Polar does
        # not know) the default plan and the unknown_customer policy give the limit (_lifecycle.py).
        state = self._lifecycle.state(customer, need_known=self._unknown_customer in ("allow", "deny"))
        out: dict[str, tuple[MeterReading, float | None]] = {}
        for m in meters:
            row = rows.get(ids[m.slug])
            reading = apply_plans(
                to_reading(m, customer, row, self._no_credits),
                m,
                row is not None and float(row.credited_units) > 0,
                state,
                default_plan=self._default_plan,
                unknown_customer=self._unknown_customer,
                no_credits=self._no_credits,
            )
            out[m.slug] = (reading, _epoch(getattr(row, "modified_at", None)))
        return out

    def reading(self, customer: str, meter: Meter) -> MeterReading:
        """The customer's effective reading on ``meter``; no request while cached."""
        polar = self.limits.reading(customer, meter, self._fetch)
        if self.ledger is None:
            return polar
        self._mirror(customer)
        return self.ledger.reading(customer, meter, polar)

    def readings(self, customer: str) -> dict[str, MeterReading]:
        """Every catalog meter's reading; one request (``meter_id`` repeats) for all not cached."""
        polar = self.limits.readings(customer, self.catalog.meters, self._fetch)
        if self.ledger is None:
            return polar
        self._mirror(customer)
        ledger = self.ledger
        return {m.slug: ledger.reading(customer, m, polar[m.slug]) for m in self.catalog.meters}

    def _mirror(self, customer: str) -> None:
        """The ledger's window for ``customer``: Polar's current period (the subscription is cached)."""
        assert self.ledger is not None
        self.ledger.mirror(customer, self._lifecycle.state(customer, need_known=False).subscription)

    def peek(self, customer: str, meter: Meter) -> MeterReading | None:
        polar = self.limits.peek(customer, meter)
        if polar is None or self.ledger is None:
            return polar
        return self.ledger.peek(customer, meter, polar)

    def is_counted(self, customer: str, meter: Meter, value: Any) -> bool:
        if self.ledger is not None:
            return self.ledger.is_counted(customer, meter, value)
        return self.limits.is_counted(customer, meter, value)

    def history(
        self, customer: str, meter: Meter, *, start: datetime, end: datetime, interval: str
    ) -> list[tuple[datetime, float]]:
        """Polar's meter quantities for the customer, cached and within a share of the rate limit
        (``_history.py``); usage not yet counted by Polar is not in it."""
        meter_id = self._directory.ids([meter])[meter.slug]
        return self._history.quantities(meter_id, customer, start=start, end=end, interval=interval)

    def invalidate(self, customer: str | None = None, meter: str | None = None) -> int:
        """Make cached readings stale (``polar_metering.webhooks`` calls this on state changes);
        the customer's subscription is read again too."""
        if meter is None:
            self._lifecycle.invalidate(customer)
        return self.limits.invalidate(customer, meter)

    # -- plans and subscriptions ----------------------------------------------------------------------
    def subscribe(
        self,
        customer: str,
        plan: Plan | str,
        started_at: datetime | None = None,
        *,
        email: str | None = None,
    ) -> Subscription | None:
        """Polar's subscription to the plan's free product (``_lifecycle.Lifecycle.subscribe``).
        Polar's periods start when Polar creates the subscription: ``started_at`` is refused."""
        if started_at is not None:
            raise ConfigurationError(
                "started_at: on polar:// a subscription's periods start when Polar creates it; "
                "drop started_at (it anchors periods on the embedded engine only)"
            )
        try:
            return self._lifecycle.subscribe(customer, plan, email=email)
        finally:
            self.limits.invalidate(customer)

    def get_subscription(self, customer: str) -> Subscription | None:
        return self._lifecycle.get_subscription(customer)

    def cancel(self, customer: str) -> Subscription | None:
        try:
            return self._lifecycle.cancel(customer)
        finally:
            self.limits.invalidate(customer)

    def list_customers(self, *, page: int, limit: int) -> Page[Customer]:
        return self._lifecycle.list_customers(page=page, limit=limit)

    def list_plans(self, *, page: int, limit: int) -> Page[Plan]:
        return self._lifecycle.list_plans(page=page, limit=limit)

    def unprovisioned_plans(self) -> list[str]:
        """The catalog's plans Polar has no product for (``setup`` provisions them)."""
        return self._lifecycle.plans.missing()

    # -- reservations (this process only) -----------------------------------------------------------
    def hold(
        self, customer: str, meter: Meter, amount: float, *, ttl: float
    ) -> tuple[Hold | None, MeterReading]:
        if self.ledger is None:
            return self.limits.hold(customer, meter, amount, ttl, self._fetch)
        polar = self.limits.reading(customer, meter, self._fetch)
        self._mirror(customer)
        return self.ledger.hold(customer, meter, amount, ttl, polar)

    def settle(self, hold: Hold, events: Sequence[Event]) -> IngestResult:
        if self.ledger is not None:
            return self.ledger.settle(hold, events)
        return self.limits.settle(hold, events, self._enqueue)

    def release(self, hold: Hold) -> None:
        if self.ledger is not None:
            self.ledger.release(hold)
            return
        self.limits.release(hold)

    # -- lifecycle ----------------------------------------------------------------------------------
    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event queued by this process has been delivered (or dead-lettered); with
        a ledger, every event in its relay queue (any process's) first."""
        if self.ledger is not None:
            deadline = None if timeout is None else time.monotonic() + timeout
            if not self.ledger.drain(math.inf if deadline is None else deadline, time.monotonic):
                return False
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
        return self.outbox.flush(timeout)

    def close(self, timeout: float | None = None) -> None:
        """Deliver what is queued within ``timeout`` (default: the outbox's ``exit_timeout``); events
        still undelivered stay in the outbox file for the next process."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.ledger is not None:
                # A process that tracked hands what the ledger queued to the outbox first (within the
                # same budget); what is left stays queued in the ledger for the next process. One
                # that only read (a report, ``reconcile``) changes nothing.
                budget = self.outbox.config.exit_timeout if timeout is None else timeout
                start = time.monotonic()
                try:
                    if self.ledger.relaying:
                        self.ledger.drain(start + budget, time.monotonic)
                except Exception as exc:
                    log.warning("polar_metering: ledger relay at close failed: %s", exc)
                finally:
                    self.ledger.close()
                timeout = max(0.0, budget - (time.monotonic() - start))
            self.outbox.close(timeout)
        finally:
            self._transport.close()
            self._client.__exit__()

    def __repr__(self) -> str:
        ledger = "" if self.ledger is None else f", ledger={self.ledger.url.masked!r}"
        return f"PolarBackend({self.url.masked!r}, server={self.settings.server!r}{ledger})"


_OVERLAY_OPTIONS = frozenset({"settle_horizon", "unconfirmed_horizon", "settle_margin"})


def _limits(
    catalog: Catalog, clock: Clock, config: MeteringConfig, overlay: Mapping[str, float] | None
) -> Limits:
    """The cache, overlay and holds, from the client's config and the ``overlay`` option."""
    extra = dict(overlay or {})
    unknown = set(extra) - _OVERLAY_OPTIONS
    if unknown:
        raise ConfigurationError(
            f"overlay: unknown keys {sorted(unknown)}; known: {sorted(_OVERLAY_OPTIONS)}"
        )
    try:
        return Limits(
            catalog,
            clock,
            ttl=config.cache_ttl,
            stale_after=config.stale_after,
            size=config.cache_size,
            fail_open=config.fail_open,
            **extra,
        )
    except ValueError as exc:
        raise ConfigurationError(f"overlay: {exc}") from None


def _epoch(value: object) -> float | None:
    """Polar's ``modified_at`` (the SDK keeps datetimes as ISO strings, polar-sdk polar/base.py) as epoch
    seconds."""
    if isinstance(value, datetime):
        return value.timestamp()
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
