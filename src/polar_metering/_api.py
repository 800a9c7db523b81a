"""Module-level functions acting on the default client that :func:`init` installs.

There is one default client per process, created only by ``init()`` (never implicitly), replaced by
a later ``init()`` and closed by ``shutdown()``. Apps that want several clients build
:class:`Metering` objects themselves.
"""

from __future__ import annotations

import atexit
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, Literal, TypeVar

from polar_metering._catalog import Catalog, Meter, Plan
from polar_metering._client import Metering, Reservation, check_timeout
from polar_metering._events import Event, MetadataValue
from polar_metering._exceptions import ConfigurationError
from polar_metering._status import SafeResult, TrackingResult, UsageStatus
from polar_metering._subscriptions import Customer, Page, Subscription

__all__ = [
    "cancel",
    "check_current_limit",
    "check_limit",
    "flush",
    "get_all_usage",
    "get_client",
    "get_subscription",
    "init",
    "list_customers",
    "list_plans",
    "reserve",
    "shutdown",
    "subscribe",
    "track_ai_tokens",
    "track_api_request",
    "track_llm_usage",
    "track_seat_activity",
    "track_storage_update",
    "track_usage",
    "track_usage_batch",
    "usage_history",
    "with_usage_limit",
    "with_usage_limit_safe",
]

T = TypeVar("T")
logger = logging.getLogger("polar_metering")
_default: Metering | None = None
# A client installed by ``polar_metering.testing.use``: while it is set, ``init()`` returns it and
# ``shutdown()`` only flushes it, so an app that configures metering at startup (in a lifespan, an
# app factory) runs on the test's client instead of replacing it.
_pinned: Metering | None = None
_lock = threading.Lock()
_atexit_registered = False


def init(
    url: str | None = None,
    *,
    meters: Iterable[Meter] | None = None,
    plans: Iterable[Plan] | None = None,
    catalog: Catalog | str | None = None,
    default_plan: str | None = None,
    **options: Any,
) -> Metering:
    """Create the default client (closing any previous one) and return it.

    ``url`` selects the backend (``sqlite:///metering.db`` by default, or ``METERING_URL``);
    ``meters``/``catalog`` define the meters, else ``METERING_CATALOG``, else ``./metering.toml``
    when it exists, else the four default meters (``client.catalog_source`` says which, and it is
    logged); ``plans`` adds plans (on ``polar://``: the plans ``setup`` provisioned);
    ``default_plan="free"`` limits customers without a subscription by that plan. Other keyword
    options are those of :class:`MeteringConfig`.

    While a test has installed a client with ``polar_metering.testing.use`` (or the pytest plugin's
    ``metering`` fixture), ``init()`` changes nothing and returns that client.
    """
    global _default, _atexit_registered
    pinned = _pinned
    if pinned is not None:
        return pinned
    client = Metering(url, meters=meters, plans=plans, catalog=catalog, default_plan=default_plan, **options)
    logger.info("polar_metering: catalog: %s (%s)", client.catalog_source, client.catalog.describe())
    with _lock:
        previous, _default = _default, client
        if not _atexit_registered:
            atexit.register(_close_at_exit)
            _atexit_registered = True
    if previous is not None:
        previous.close()
    return client


def _close_at_exit() -> None:
    # Deliver what is pending, within a deadline, so a process exit never hangs on a dead backend.
    client = _default
    if client is not None:
        client.close(timeout=5.0)


def get_client() -> Metering:
    """The default client; ``ConfigurationError`` if ``init()`` has not been called."""
    client = _default
    if client is None:
        raise ConfigurationError(
            "polar_metering: call polar_metering.init() before using module-level functions"
        )
    return client


def shutdown(timeout: float | None = None) -> None:
    """Flush and close the default client, if any (a client installed by ``testing.use`` is only
    flushed: the test that installed it closes it)."""
    global _default
    timeout = check_timeout(timeout)  # before the client is let go, so a bad value closes nothing
    pinned = _pinned
    if pinned is not None:
        pinned.flush(timeout)
        return
    with _lock:
        client, _default = _default, None
    if client is not None:
        client.close(timeout)


def _install(client: Metering | None) -> tuple[Metering | None, Metering | None]:
    """Make ``client`` the default and pin it (``None``: unpin); returns the previous (default, pinned)."""
    global _default, _pinned
    with _lock:
        previous = (_default, _pinned)
        _default = _pinned = client
    return previous


def _restore(previous: tuple[Metering | None, Metering | None]) -> None:
    global _default, _pinned
    with _lock:
        _default, _pinned = previous


def track_usage(
    customer_id: str,
    event_name: str,
    metadata: Mapping[str, MetadataValue] | None = None,
    *,
    timestamp: datetime | str | None = None,
    external_id: str | None = None,
) -> TrackingResult:
    return get_client().track_usage(
        customer_id, event_name, metadata, timestamp=timestamp, external_id=external_id
    )


def track_usage_batch(events: Iterable[Mapping[str, Any] | Event]) -> TrackingResult:
    return get_client().track_usage_batch(events)


def track_api_request(
    customer_id: str,
    endpoint: str,
    options: Mapping[str, Any] | None = None,
    *,
    method: str | None = None,
    status_code: int | None = None,
    duration_ms: float | None = None,
) -> TrackingResult:
    return get_client().track_api_request(
        customer_id, endpoint, options, method=method, status_code=status_code, duration_ms=duration_ms
    )


def track_storage_update(customer_id: str, size_gb: float, operation: str | None = None) -> TrackingResult:
    return get_client().track_storage_update(customer_id, size_gb, operation)


def track_ai_tokens(
    customer_id: str,
    tokens: int,
    options: Mapping[str, Any] | None = None,
    *,
    model: str | None = None,
    type: Literal["input", "output", "total"] | None = None,
) -> TrackingResult:
    return get_client().track_ai_tokens(customer_id, tokens, options, model=model, type=type)


def track_llm_usage(
    customer_id: str,
    *,
    vendor: str,
    model: str,
    input_tokens: int,
    output_tokens: int,
    cached_input_tokens: int | None = None,
    cost: float | Mapping[str, Any] | None = None,
    metadata: Mapping[str, MetadataValue] | None = None,
) -> TrackingResult:
    return get_client().track_llm_usage(
        customer_id,
        vendor=vendor,
        model=model,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cached_input_tokens=cached_input_tokens,
        cost=cost,
        metadata=metadata,
    )


def track_seat_activity(customer_id: str, user_id: str, action: str | None = None) -> TrackingResult:
    return get_client().track_seat_activity(customer_id, user_id, action)


def check_limit(
    customer_id: str, meter: str, *, amount: float | None = None, value: MetadataValue | None = None
) -> UsageStatus:
    return get_client().check_limit(customer_id, meter, amount=amount, value=value)


def check_current_limit(
    meter: str, *, amount: float | None = None, value: MetadataValue | None = None
) -> UsageStatus:
    return get_client().check_current_limit(meter, amount=amount, value=value)


def get_all_usage(customer_id: str | None = None) -> dict[str, UsageStatus]:
    return get_client().get_all_usage(customer_id)


def usage_history(
    customer_id: str,
    meter: str,
    *,
    start: datetime,
    end: datetime | None = None,
    interval: Literal["hour", "day", "week", "month", "year"] = "day",
) -> list[tuple[datetime, float]]:
    """Usage per time bucket, by event time: ``[(bucket_start, quantity), ...]`` (see
    :meth:`Metering.usage_history`)."""
    return get_client().usage_history(customer_id, meter, start=start, end=end, interval=interval)


def with_usage_limit(
    meter: str,
    action: Callable[..., T],
    *args: Any,
    customer_id: str | None = None,
    amount: float | None = None,
    **kwargs: Any,
) -> T:
    return get_client().with_usage_limit(
        meter, action, *args, customer_id=customer_id, amount=amount, **kwargs
    )


def with_usage_limit_safe(
    meter: str,
    action: Callable[..., T],
    *args: Any,
    customer_id: str | None = None,
    amount: float | None = None,
    **kwargs: Any,
) -> SafeResult[T]:
    return get_client().with_usage_limit_safe(
        meter, action, *args, customer_id=customer_id, amount=amount, **kwargs
    )


def reserve(customer_id: str, meter: str, amount: float, *, ttl: float | None = None) -> Reservation:
    return get_client().reserve(customer_id, meter, amount, ttl=ttl)


def subscribe(
    customer_id: str, plan: str | Plan, *, started_at: datetime | None = None, email: str | None = None
) -> Subscription:
    """Put a customer on a plan, safely repeatable (see :meth:`Metering.subscribe`)."""
    return get_client().subscribe(customer_id, plan, started_at=started_at, email=email)


def get_subscription(customer_id: str) -> Subscription | None:
    """The customer's plan and billing period, or ``None`` (see :meth:`Metering.get_subscription`)."""
    return get_client().get_subscription(customer_id)


def cancel(customer_id: str) -> Subscription | None:
    """Cancel the customer's subscription at the end of its period (see :meth:`Metering.cancel`)."""
    return get_client().cancel(customer_id)


def list_customers(*, page: int = 1, limit: int = 100) -> Page[Customer]:
    return get_client().list_customers(page=page, limit=limit)


def list_plans(*, page: int = 1, limit: int = 100) -> Page[Plan]:
    return get_client().list_plans(page=page, limit=limit)


def flush(timeout: float | None = None) -> bool:
    return get_client().flush(timeout)
