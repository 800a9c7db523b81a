"""polar-metering: usage-based billing on Polar meters for Python web apps.

Define meters in code, track usage without slowing requests, check limits in microseconds, gate
actions, and run everything offline on an embedded engine that behaves like Polar::

    import polar_metering as metering

    metering.init()                                   # embedded SQLite by default
    metering.track_api_request("user_123", "/api/generate", method="POST")
    status = metering.check_limit("user_123", "api_requests")
"""

from polar_metering import aio, testing
from polar_metering._api import (
    cancel,
    check_current_limit,
    check_limit,
    flush,
    get_all_usage,
    get_client,
    get_subscription,
    init,
    list_customers,
    list_plans,
    reserve,
    shutdown,
    subscribe,
    track_ai_tokens,
    track_api_request,
    track_llm_usage,
    track_seat_activity,
    track_storage_update,
    track_usage,
    track_usage_batch,
    usage_history,
    with_usage_limit,
    with_usage_limit_safe,
)
from polar_metering._catalog import (
    DEFAULT_METERS,
    Aggregation,
    Catalog,
    Filter,
    FilterClause,
    Meter,
    Plan,
    load_catalog,
)
from polar_metering._client import AsyncMetering, AsyncReservation, Metering, Reservation
from polar_metering._clock import Clock, ManualClock, SystemClock
from polar_metering._config import MeteringConfig
from polar_metering._context import (
    current_customer,
    get_current_customer,
    reset_current_customer,
    set_current_customer,
)
from polar_metering._events import Event, EventName, MetadataValue, MeterSlug
from polar_metering._exceptions import (
    AuthenticationError,
    BackendError,
    BackendUnavailable,
    BatchValidationError,
    CheckoutRequired,
    ConfigurationError,
    MeteringError,
    NoCurrentCustomer,
    NotFound,
    OutboxError,
    RateLimited,
    RemoteValidationError,
    ReservationError,
    UsageLimitExceeded,
    ValidationError,
)
from polar_metering._setup import MeterResult, SetupReport, run_setup
from polar_metering._status import MeterReading, SafeResult, TrackingResult, UsageStatus, jsonable
from polar_metering._subscriptions import Customer, Page, Subscription
from polar_metering._version import __version__

__all__ = [
    "Aggregation",
    "AsyncMetering",
    "AsyncReservation",
    "AuthenticationError",
    "BackendError",
    "BackendUnavailable",
    "BatchValidationError",
    "Catalog",
    "CheckoutRequired",
    "Clock",
    "ConfigurationError",
    "Customer",
    "DEFAULT_METERS",
    "Event",
    "EventName",
    "Filter",
    "FilterClause",
    "ManualClock",
    "MetadataValue",
    "Meter",
    "MeterReading",
    "MeterResult",
    "MeterSlug",
    "Metering",
    "MeteringConfig",
    "MeteringError",
    "NoCurrentCustomer",
    "NotFound",
    "OutboxError",
    "Page",
    "Plan",
    "RateLimited",
    "RemoteValidationError",
    "Reservation",
    "ReservationError",
    "SafeResult",
    "SetupReport",
    "Subscription",
    "SystemClock",
    "TrackingResult",
    "UsageLimitExceeded",
    "UsageStatus",
    "ValidationError",
    "__version__",
    "aio",
    "cancel",
    "check_current_limit",
    "check_limit",
    "current_customer",
    "flush",
    "get_all_usage",
    "get_client",
    "get_current_customer",
    "get_subscription",
    "init",
    "jsonable",
    "list_customers",
    "list_plans",
    "load_catalog",
    "reserve",
    "reset_current_customer",
    "run_setup",
    "set_current_customer",
    "shutdown",
    "subscribe",
    "testing",
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
