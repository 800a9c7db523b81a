"""Module-level coroutines on the default client's async twin: ``await metering.aio.check_limit(...)``."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, Literal, TypeVar, overload

from polar_metering._api import get_client
from polar_metering._catalog import Plan
from polar_metering._client import AsyncMetering, AsyncReservation
from polar_metering._events import Event, MetadataValue
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
    "list_customers",
    "list_plans",
    "reserve",
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


def _client() -> AsyncMetering:
    return get_client().aio


async def track_usage(
    customer_id: str,
    event_name: str,
    metadata: Mapping[str, MetadataValue] | None = None,
    *,
    timestamp: datetime | str | None = None,
    external_id: str | None = None,
) -> TrackingResult:
    return await _client().track_usage(
        customer_id, event_name, metadata, timestamp=timestamp, external_id=external_id
    )


async def track_usage_batch(events: Iterable[Mapping[str, Any] | Event]) -> TrackingResult:
    return await _client().track_usage_batch(events)


async def track_api_request(
    customer_id: str,
    endpoint: str,
    options: Mapping[str, Any] | None = None,
    *,
    method: str | None = None,
    status_code: int | None = None,
    duration_ms: float | None = None,
) -> TrackingResult:
    return await _client().track_api_request(
        customer_id, endpoint, options, method=method, status_code=status_code, duration_ms=duration_ms
    )


async def track_storage_update(
    customer_id: str, size_gb: float, operation: str | None = None
) -> TrackingResult:
    return await _client().track_storage_update(customer_id, size_gb, operation)


async def track_ai_tokens(
    customer_id: str,
    tokens: int,
    options: Mapping[str, Any] | None = None,
    *,
    model: str | None = None,
    type: Literal["input", "output", "total"] | None = None,
) -> TrackingResult:
    return await _client().track_ai_tokens(customer_id, tokens, options, model=model, type=type)


async def track_llm_usage(
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
    return await _client().track_llm_usage(
        customer_id,
        vendor=vendor,
        model=model,
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cached_input_tokens=cached_input_tokens,
        cost=cost,
        metadata=metadata,
    )


async def track_seat_activity(customer_id: str, user_id: str, action: str | None = None) -> TrackingResult:
    return await _client().track_seat_activity(customer_id, user_id, action)


async def check_limit(
    customer_id: str, meter: str, *, amount: float | None = None, value: MetadataValue | None = None
) -> UsageStatus:
    return await _client().check_limit(customer_id, meter, amount=amount, value=value)


async def check_current_limit(
    meter: str, *, amount: float | None = None, value: MetadataValue | None = None
) -> UsageStatus:
    return await _client().check_current_limit(meter, amount=amount, value=value)


async def get_all_usage(customer_id: str | None = None) -> dict[str, UsageStatus]:
    return await _client().get_all_usage(customer_id)


async def usage_history(
    customer_id: str,
    meter: str,
    *,
    start: datetime,
    end: datetime | None = None,
    interval: Literal["hour", "day", "week", "month", "year"] = "day",
) -> list[tuple[datetime, float]]:
    return await _client().usage_history(customer_id, meter, start=start, end=end, interval=interval)


@overload
async def with_usage_limit(
    meter: str,
    action: Callable[..., Awaitable[T]],
    *args: Any,
    customer_id: str | None = None,
    amount: float | None = None,
    **kwargs: Any,
) -> T: ...


@overload
async def with_usage_limit(
    meter: str,
    action: Callable[..., T],
    *args: Any,
    customer_id: str | None = None,
    amount: float | None = None,
    **kwargs: Any,
) -> T: ...


async def with_usage_limit(
    meter: str,
    action: Callable[..., Any],
    *args: Any,
    customer_id: str | None = None,
    amount: float | None = None,
    **kwargs: Any,
) -> Any:
    return await _client().with_usage_limit(
        meter, action, *args, customer_id=customer_id, amount=amount, **kwargs
    )


@overload
async def with_usage_limit_safe(
    meter: str,
    action: Callable[..., Awaitable[T]],
    *args: Any,
    customer_id: str | None = None,
    amount: float | None = None,
    **kwargs: Any,
) -> SafeResult[T]: ...


@overload
async def with_usage_limit_safe(
    meter: str,
    action: Callable[..., T],
    *args: Any,
    customer_id: str | None = None,
    amount: float | None = None,
    **kwargs: Any,
) -> SafeResult[T]: ...


async def with_usage_limit_safe(
    meter: str,
    action: Callable[..., Any],
    *args: Any,
    customer_id: str | None = None,
    amount: float | None = None,
    **kwargs: Any,
) -> SafeResult[Any]:
    return await _client().with_usage_limit_safe(
        meter, action, *args, customer_id=customer_id, amount=amount, **kwargs
    )


async def reserve(
    customer_id: str, meter: str, amount: float, *, ttl: float | None = None
) -> AsyncReservation:
    return await _client().reserve(customer_id, meter, amount, ttl=ttl)


async def subscribe(
    customer_id: str, plan: str | Plan, *, started_at: datetime | None = None, email: str | None = None
) -> Subscription:
    return await _client().subscribe(customer_id, plan, started_at=started_at, email=email)


async def get_subscription(customer_id: str) -> Subscription | None:
    return await _client().get_subscription(customer_id)


async def cancel(customer_id: str) -> Subscription | None:
    return await _client().cancel(customer_id)


async def list_customers(*, page: int = 1, limit: int = 100) -> Page[Customer]:
    return await _client().list_customers(page=page, limit=limit)


async def list_plans(*, page: int = 1, limit: int = 100) -> Page[Plan]:
    return await _client().list_plans(page=page, limit=limit)


async def flush(timeout: float | None = None) -> bool:
    return await _client().flush(timeout)
