"""The backend contract, the URL registry, and the one place driver errors become ours.

A backend stores events and answers readings. Two ship with the library:

- the local engine (``sqlite:///path.db``, ``sqlite:///:memory:``, ``postgresql://...``), which
  evaluates meters itself with Polar's semantics;
- the Polar backend (``polar://``), which delivers events to Polar through a durable outbox and reads
  customer meters back.

Third parties add one by subclassing :class:`Backend` with ``schemes = ("myscheme",)``.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import parse_qsl, urlsplit

from polar_metering._exceptions import ConfigurationError

if TYPE_CHECKING:
    from polar_metering._catalog import Catalog, Meter, Plan
    from polar_metering._clock import Clock
    from polar_metering._events import Event
    from polar_metering._status import MeterReading
    from polar_metering._subscriptions import Customer, Page, Subscription

__all__ = [
    "Backend",
    "BackendURL",
    "Hold",
    "IngestResult",
    "backend_class_for",
    "parse_backend_url",
    "register_backend",
]


@dataclass(frozen=True, slots=True)
class BackendURL:
    """A parsed backend URL. ``raw`` keeps the text (with any password masked in ``repr``)."""

    raw: str = field(repr=False)
    scheme: str
    driver: str | None
    host: str | None
    port: int | None
    path: str
    query: Mapping[str, str]

    def __repr__(self) -> str:
        return f"BackendURL({self.masked!r})"

    @property
    def masked(self) -> str:
        parts = urlsplit(self.raw)
        if parts.password:
            return self.raw.replace(f":{parts.password}@", ":***@")
        return self.raw


def parse_backend_url(url: str) -> BackendURL:
    if not isinstance(url, str) or "://" not in url:
        from polar_metering._events import describe

        raise ConfigurationError(
            "url: must look like 'sqlite:///metering.db', 'postgresql://host/db' or 'polar://', "
            f"got {describe(url, 60)}"
        )
    if "\x00" in url:
        raise ConfigurationError("url: must not contain NUL characters")
    try:
        parts = urlsplit(url)
    except ValueError as exc:  # e.g. an unclosed IPv6 bracket
        raise ConfigurationError(f"url: cannot be parsed ({exc})") from None
    scheme, _, driver = parts.scheme.partition("+")
    try:
        port = parts.port
    except ValueError:
        raise ConfigurationError("url: the port is not a number") from None
    return BackendURL(
        raw=url,
        scheme=scheme.lower(),
        driver=driver or None,
        host=parts.hostname,
        port=port,
        path=parts.path,
        query=dict(parse_qsl(parts.query)),
    )


@dataclass(frozen=True, slots=True)
class IngestResult:
    """How many events were newly stored and how many were duplicates of a known ``external_id``."""

    inserted: int
    duplicates: int = 0


@dataclass(frozen=True, slots=True)
class Hold:
    """A granted reservation: ``amount`` units of ``meter`` held for ``customer`` until ``expires_at``."""

    id: str
    customer: str
    meter: str
    amount: float
    expires_at: datetime


_REGISTRY: dict[str, type[Backend]] = {}
_BUILTIN: dict[str, str] = {
    "sqlite": "polar_metering.backends._engine.backend",
    "postgresql": "polar_metering.backends._engine.backend",
    "postgres": "polar_metering.backends._engine.backend",
    "polar": "polar_metering.backends._polar",
}
_lock = threading.Lock()


def register_backend(cls: type[Backend]) -> type[Backend]:
    """Register ``cls`` for each of its ``schemes`` (done automatically for subclasses)."""
    with _lock:
        for scheme in cls.schemes:
            _REGISTRY[scheme] = cls
    return cls


def backend_class_for(url: BackendURL) -> type[Backend]:
    cls = _REGISTRY.get(url.scheme)
    if cls is None and url.scheme in _BUILTIN:
        import importlib

        importlib.import_module(_BUILTIN[url.scheme])  # registers on import
        cls = _REGISTRY.get(url.scheme)
    if cls is None:
        known = sorted(set(_REGISTRY) | set(_BUILTIN))
        raise ConfigurationError(f"url: no backend for scheme {url.scheme!r}; known schemes are {known}")
    return cls


class Backend(ABC):
    """Stores events and answers readings. Methods are synchronous and thread-safe; the async client
    runs them in a worker thread. Errors leave a backend as :class:`MeteringError` subclasses only.

    Optional capabilities (``supports_plans``, ``supports_holds``) are flags the client checks.
    """

    schemes: ClassVar[tuple[str, ...]] = ()
    supports_plans: ClassVar[bool] = False
    supports_holds: ClassVar[bool] = False
    #: True when ``reading`` reflects every ingested event at once (the local engine); False when the
    #: backend lags (Polar's ~15 s debounce), so the client overlays its own unsettled usage.
    settles_immediately: ClassVar[bool] = True
    #: True when ``ingest`` never waits on I/O (an in-memory hand-off to an outbox writer thread), so
    #: the async client may call it on the event loop instead of hopping to a thread. An instance
    #: may set it from its configuration.
    nonblocking_ingest: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.schemes:
            register_backend(cls)

    def __init__(self, url: BackendURL, *, catalog: Catalog, clock: Clock, **options: Any) -> None:
        self.url = url
        self.catalog = catalog
        self.clock = clock

    @abstractmethod
    def ingest(self, events: Sequence[Event]) -> IngestResult:
        """Store (or durably queue) validated events; duplicates of a known ``external_id`` are skipped."""

    @abstractmethod
    def reading(self, customer: str, meter: Meter) -> MeterReading:
        """The customer's consumed and credited units on ``meter`` for the current billing period."""

    def readings(self, customer: str) -> dict[str, MeterReading]:
        """Readings on every catalog meter."""
        return {m.slug: self.reading(customer, m) for m in self.catalog.meters}

    def peek(self, customer: str, meter: Meter) -> MeterReading | None:
        """A reading available without I/O (a fresh cache entry), or ``None``. The async client uses it
        to answer on the event loop."""
        return None

    def invalidate(self, customer: str | None = None, meter: str | None = None) -> int:
        """Drop cached readings (all, one customer's, or one meter's); returns how many. Webhooks call
        it when Polar says a customer's state changed. Backends without a cache have nothing to drop."""
        return 0

    def is_counted(self, customer: str, meter: Meter, value: Any) -> bool:
        """For ``unique`` meters: whether ``value`` is already counted this period."""
        return False

    def history(
        self, customer: str, meter: Meter, *, start: datetime, end: datetime, interval: str
    ) -> list[tuple[datetime, float]]:
        """Usage per hour/day/week/month bucket by event time (Polar's meter quantities,
        server/polar/kit/time_queries.py)."""
        raise ConfigurationError(f"usage_history: the {self.url.scheme}:// backend has no usage history")

    # -- plans and the customer lifecycle -------------------------------------------------------------
    def _no_plans(self, action: str) -> ConfigurationError:
        return ConfigurationError(f"{action}: the {self.url.scheme}:// backend has no plans or subscriptions")

    def subscribe(
        self,
        customer: str,
        plan: Plan | str,
        started_at: datetime | None = None,
        *,
        email: str | None = None,
    ) -> Subscription | None:
        """Put ``customer`` on ``plan``: idempotent, another plan is a plan change (``docs/semantics.md``)."""
        raise self._no_plans("subscribe")

    def get_subscription(self, customer: str) -> Subscription | None:
        """The customer's current plan and billing period, or ``None`` without a subscription."""
        raise self._no_plans("get_subscription")

    def cancel(self, customer: str) -> Subscription | None:
        """Cancel at the end of the current period; ``None`` when there is nothing to cancel."""
        raise self._no_plans("cancel")

    def list_customers(self, *, page: int, limit: int) -> Page[Customer]:
        raise self._no_plans("list_customers")

    def list_plans(self, *, page: int, limit: int) -> Page[Plan]:
        raise self._no_plans("list_plans")

    # -- reservations -----------------------------------------------------------------------------
    def hold(
        self, customer: str, meter: Meter, amount: float, *, ttl: float
    ) -> tuple[Hold | None, MeterReading]:
        """Atomically hold ``amount`` units if the reading plus active holds leaves room for them.

        Returns the hold (``None`` when refused) and the reading the decision was made on.
        """
        raise ConfigurationError(f"reserve: the {self.url.scheme}:// backend does not support reservations")

    def settle(self, hold: Hold, events: Sequence[Event]) -> IngestResult:
        """End ``hold`` and ingest ``events`` (the usage actually incurred) in one step."""
        raise ConfigurationError(f"reserve: the {self.url.scheme}:// backend does not support reservations")

    def release(self, hold: Hold) -> None:
        """End ``hold`` without recording usage."""
        raise ConfigurationError(f"reserve: the {self.url.scheme}:// backend does not support reservations")

    # -- lifecycle ----------------------------------------------------------------------------------
    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything ingested so far is stored or delivered; False if ``timeout`` ran out."""
        return True

    def close(self, timeout: float | None = None) -> None:  # noqa: B027 - a no-op default, as flush
        """Flush (within ``timeout``) and release resources. Safe to call twice."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url.masked!r})"
