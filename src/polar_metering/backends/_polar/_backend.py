"""``PolarBackend``: events go to Polar through the durable outbox; readings come from customer meters.

URL forms::

    polar://                          production (or POLAR_ENVIRONMENT)
    polar://sandbox                   Polar's sandbox
    polar://production
    polar://?base_url=http://127.0.0.1:8765   another server speaking Polar's API (the emulator)

The token comes from ``access_token=`` or ``POLAR_ACCESS_TOKEN`` and never from the URL.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from polar_metering._exceptions import ConfigurationError
from polar_metering._status import MeterReading
from polar_metering.backends._base import Backend, BackendURL, IngestResult
from polar_metering.backends._polar._readings import (
    MeterDirectory,
    NoCredits,
    ReadingCache,
    check_no_credits,
    fetch_rows,
    to_reading,
)
from polar_metering.backends._polar._sdk import PolarSettings, open_client, resolve_settings
from polar_metering.backends._polar._transport import SdkTransport
from polar_metering.delivery import DeliveryConfig, Outbox

if TYPE_CHECKING:
    from polar_metering._catalog import Catalog, Meter
    from polar_metering._clock import Clock
    from polar_metering._config import MeteringConfig
    from polar_metering._events import Event

__all__ = ["PolarBackend", "default_outbox_path", "delivery_config"]

# Requests/min towards a server on this machine (the emulator): Polar's limits (§5.1) do not apply,
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
            path=path, environment=None, rate_limit_per_minute=_LOCAL_RATE_PER_MINUTE, rate_limit_burst=100
        )
    return DeliveryConfig(path=path, environment=settings.environment)


class PolarBackend(Backend):
    """The ``polar://`` backend.

    - ``ingest`` hands events to the outbox (an in-memory append; a writer thread commits them to the
      outbox file and a sender thread delivers them with ``events.ingest``), so tracking never waits
      on the network. ``IngestResult.inserted`` counts events accepted into the outbox; Polar's own
      duplicate count arrives later, at delivery (see ``outbox.metrics()``).
    - ``reading`` returns the customer's Polar customer meter for the catalog meter (matched by
      name), cached for ``cache_ttl`` seconds. Polar updates balances ~15 s after ingest (§3.3), so
      ``settles_immediately`` is false.

    Options (keyword, from ``backend_options`` or the constructor): ``no_credits`` —
    ``"unlimited"`` (default) or ``"deny"``, what a customer without credits on a meter may do (see
    :func:`~polar_metering.backends._polar._readings.to_reading`); ``delivery`` — a
    :class:`DeliveryConfig` replacing the derived one; ``timeout`` — seconds per request.
    """

    schemes: ClassVar[tuple[str, ...]] = ("polar",)
    settles_immediately: ClassVar[bool] = False
    nonblocking_ingest: ClassVar[bool] = True

    def __init__(
        self,
        url: BackendURL,
        *,
        catalog: Catalog,
        clock: Clock,
        config: MeteringConfig | None = None,
        no_credits: NoCredits | None = None,
        delivery: DeliveryConfig | None = None,
        timeout: float | None = None,
        **options: Any,
    ) -> None:
        super().__init__(url, catalog=catalog, clock=clock)
        if options:
            raise ConfigurationError(
                f"polar://: unknown options {sorted(options)}; known: config, no_credits, delivery, timeout"
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
        self._transport = SdkTransport(self.settings)
        self.outbox = Outbox(delivery or delivery_config(self.settings, config.outbox_path), self._transport)
        self._client = open_client(self.settings)
        self._directory = MeterDirectory(self._client, self.settings, clock.monotonic)
        self._cache = ReadingCache(config.cache_ttl, config.cache_size, clock.monotonic)
        self._closed = False

    # -- events -------------------------------------------------------------------------------------
    def ingest(self, events: Sequence[Event]) -> IngestResult:
        """Queue ``events`` for delivery (no network I/O); raises ``OutboxError`` if the outbox is full."""
        return IngestResult(inserted=self.outbox.enqueue(list(events)))

    # -- readings -----------------------------------------------------------------------------------
    def _fetch(self, customer: str, meters: Sequence[Meter]) -> dict[str, MeterReading]:
        ids = self._directory.ids(meters)
        rows = fetch_rows(self._client, self.settings, customer, list(dict.fromkeys(ids.values())))
        readings = {m.slug: to_reading(m, customer, rows.get(ids[m.slug]), self._no_credits) for m in meters}
        for reading in readings.values():
            self._cache.put(reading)
        return readings

    def reading(self, customer: str, meter: Meter) -> MeterReading:
        """The customer's Polar customer meter on ``meter``; one request unless cached."""
        cached = self._cache.get(customer, meter.slug)
        if cached is not None:
            return cached
        return self._fetch(customer, [meter])[meter.slug]

    def readings(self, customer: str) -> dict[str, MeterReading]:
        """Every catalog meter's reading in one request (``meter_id`` repeats in the query)."""
        out: dict[str, MeterReading] = {}
        missing: list[Meter] = []
        for meter in self.catalog.meters:
            cached = self._cache.get(customer, meter.slug)
            if cached is None:
                missing.append(meter)
            else:
                out[meter.slug] = cached
        if missing:
            out.update(self._fetch(customer, missing))
        return {m.slug: out[m.slug] for m in self.catalog.meters}

    def peek(self, customer: str, meter: Meter) -> MeterReading | None:
        return self._cache.get(customer, meter.slug)

    # -- lifecycle ----------------------------------------------------------------------------------
    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every event queued by this process has been delivered (or dead-lettered)."""
        return self.outbox.flush(timeout)

    def close(self, timeout: float | None = None) -> None:
        """Deliver what is queued within ``timeout`` (default: the outbox's ``exit_timeout``); events
        still undelivered stay in the outbox file for the next process."""
        if self._closed:
            return
        self._closed = True
        try:
            self.outbox.close(timeout)
        finally:
            self._transport.close()
            self._client.__exit__()

    def __repr__(self) -> str:
        return f"PolarBackend({self.url.masked!r}, server={self.settings.server!r})"
