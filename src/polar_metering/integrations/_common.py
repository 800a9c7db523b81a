"""What every framework integration shares, with no web framework imported.

- the resolver contract: a callable taking the framework's request and returning the billing entity
  (the organization when there is one, else the user), or ``None`` for an anonymous request;
- :func:`customer_scope`, which sets the current customer for exactly one request and always resets it;
- the refusal a limited request gets: :func:`limit_body` (the 429 JSON) and :func:`limit_headers`;
- :class:`AsyncCalls`, which lets async code use any client without blocking its event loop.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, TypeVar

from polar_metering._context import reset_current_customer, set_current_customer
from polar_metering._exceptions import ConfigurationError, MeteringError, ValidationError
from polar_metering._status import _fmt

if TYPE_CHECKING:
    from polar_metering._client import AsyncMetering, Metering
    from polar_metering._status import TrackingResult, UsageStatus

__all__ = [
    "ANONYMOUS_ERROR",
    "LIMIT_ERROR",
    "Anonymous",
    "AsyncCalls",
    "RequestState",
    "Resolver",
    "anonymous_body",
    "check_amount",
    "check_anonymous",
    "check_optional_anonymous",
    "check_meter",
    "check_optional_amount",
    "check_paths",
    "check_resolver",
    "customer_scope",
    "import_object",
    "is_excluded",
    "limit_body",
    "limit_headers",
    "gate_policy",
    "now_for",
    "report_tracking",
    "resolved_customer",
    "track_quietly",
]

logger = logging.getLogger("polar_metering.integrations")

RequestT = TypeVar("RequestT", contravariant=True)
T = TypeVar("T")

#: ``request -> billing entity id or None``. FastAPI and Django also accept a coroutine function.
Resolver: TypeAlias = Callable[[RequestT], "str | Awaitable[str | None] | None"]

#: Runs a blocking callable on a worker thread: ``anyio.to_thread.run_sync``, asgiref's ``sync_to_async``.
RunSync: TypeAlias = Callable[[Callable[[], T]], Awaitable[T]]

LIMIT_ERROR = "Usage limit exceeded"
ANONYMOUS_ERROR = "Authentication required"

#: What a metered endpoint does with a request whose resolver returned ``None``:
#: ``"allow"`` lets it through unchecked and untracked; ``"deny"`` answers 401 before the view runs.
Anonymous: TypeAlias = Literal["allow", "deny"]
_POLICIES = ("allow", "deny")


@dataclass(slots=True)
class RequestState:
    """What an integration remembers about one request: whom it bills, and whether a limit refused it.

    A request refused for a usage limit is not metered as ``api.request``: counting refusals would push
    a customer who keeps retrying further past a limit they were never served under.
    """

    customer: str | None
    refused: bool = False
    client: Metering | AsyncMetering | None = None
    #: the app's anonymous policy, which a gate's own ``anonymous=`` overrides
    anonymous: Anonymous = "allow"


def check_resolver(resolver: object) -> Callable[[Any], Any]:
    if not callable(resolver):
        raise ValidationError(
            "resolver", "must be a callable taking the request and returning a customer id or None", resolver
        )
    return resolver


def check_anonymous(value: object) -> Anonymous:
    """``"allow"`` or ``"deny"``."""
    if value not in _POLICIES:
        raise ValidationError("anonymous", "must be 'allow' or 'deny'", value)
    return value  # type: ignore[return-value]


def check_optional_anonymous(value: object) -> Anonymous | None:
    """A gate's own policy: ``None`` (the app's applies), ``"allow"`` or ``"deny"``."""
    return None if value is None else check_anonymous(value)


def gate_policy(own: Anonymous | None, state: RequestState | None) -> Anonymous:
    """A gate's policy for an anonymous request: its own ``anonymous=``, else the app's."""
    if own is not None:
        return own
    return state.anonymous if state is not None else "allow"


def anonymous_body(detail: str) -> dict[str, object]:
    """The JSON body of a 401 for a request with no customer."""
    return {"error": ANONYMOUS_ERROR, "detail": detail}


def resolved_customer(value: object) -> str | None:
    """Validate what a resolver returned; the error names the resolver, the usual culprit."""
    if value is None or (isinstance(value, str) and value):
        return value
    raise ValidationError(
        "resolver", f"must return a non-empty string or None, got {type(value).__name__}", value
    )


def check_meter(meter: object) -> str:
    if not isinstance(meter, str) or not meter:
        raise ValidationError("meter", "must be a non-empty meter slug", meter)
    return meter


def check_amount(amount: object) -> float:
    if (
        isinstance(amount, bool)
        or not isinstance(amount, int | float)
        or not math.isfinite(amount)
        or amount <= 0
    ):
        raise ValidationError("amount", "must be a finite number > 0", amount)
    return amount


def check_optional_amount(amount: object) -> float | None:
    return None if amount is None else check_amount(amount)


def check_paths(paths: Iterable[str]) -> tuple[str, ...]:
    if isinstance(paths, str):
        raise ValidationError("exclude_paths", "must be a list of path prefixes, not one string", paths)
    cleaned = tuple(paths)
    for path in cleaned:
        if not isinstance(path, str) or not path.startswith("/"):
            raise ValidationError("exclude_paths", "each entry must be a path prefix starting with '/'", path)
    return cleaned


def is_excluded(path: str, prefixes: tuple[str, ...]) -> bool:
    return any(path == prefix or path.startswith(prefix.rstrip("/") + "/") for prefix in prefixes)


def import_object(dotted: object, where: str) -> Any:
    """Import ``"package.module.name"``; ``where`` names the setting in the error."""
    if not isinstance(dotted, str) or "." not in dotted:
        raise ConfigurationError(
            f"{where}: must be a dotted path like 'myapp.billing.resolve', got {dotted!r}"
        )
    module_name, _, attr = dotted.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(f"{where}: cannot import {dotted!r} ({exc})") from exc


@contextmanager
def customer_scope(customer: str | None) -> Iterator[str | None]:
    """Make ``customer`` the current customer for the enclosed work, ``None`` included.

    Setting ``None`` for an anonymous request matters on threaded servers: a worker thread keeps its
    context between requests, so an unset variable could show the previous request's customer.
    """
    token = set_current_customer(customer)
    try:
        yield customer
    finally:
        reset_current_customer(token)


def limit_body(status: UsageStatus) -> dict[str, object]:
    """The JSON body of a 429: the error, then every field of the refusing UsageStatus."""
    return {"error": LIMIT_ERROR, **status.to_dict()}


def limit_headers(status: UsageStatus, now: datetime) -> dict[str, str]:
    """``RateLimit-Limit`` and ``RateLimit-Remaining`` when the meter has a limit, and ``Retry-After``.

    Credits reset when the billing period ends (Polar resets meters at each billing cycle,
    ``server/polar/subscription/service.py`` ``reset_meters`` at c6c3645), so that is the earliest
    moment a retry can succeed: ``Retry-After`` is the whole seconds until ``period_end``, rounded up
    so a client that waits exactly that long is never early.
    """
    headers: dict[str, str] = {}
    if status.limit is not None:
        headers["RateLimit-Limit"] = _fmt(status.limit)
        headers["RateLimit-Remaining"] = _fmt(status.remaining if status.remaining is not None else 0.0)
    if status.period_end is not None:
        headers["Retry-After"] = str(max(0, math.ceil((status.period_end - now).total_seconds())))
    return headers


def now_for(client: Metering | AsyncMetering | None) -> datetime:
    """The time on the client's clock (a ManualClock in tests), so Retry-After agrees with period_end."""
    if client is None:
        import polar_metering as metering

        try:
            client = metering.get_client()
        except MeteringError:
            return datetime.now(UTC)
    return client.config.clock.now()


def track_quietly(track: Callable[[], TrackingResult]) -> None:
    """Record a request without ever failing it: metering problems are logged, not raised."""
    try:
        report_tracking(track())
    except MeteringError as exc:
        report_tracking(exc)


def report_tracking(outcome: TrackingResult | MeteringError) -> None:
    if isinstance(outcome, MeteringError):
        logger.warning("polar-metering: could not track api.request: %s", outcome)
    elif not outcome.success:
        logger.warning("polar-metering: api.request not tracked: %s", outcome.error)


class AsyncCalls:
    """Calls on whichever client an async app configured, never blocking its event loop.

    An ``AsyncMetering`` is awaited; a sync ``Metering`` runs on a worker thread through ``run_sync``;
    ``None`` means the default client's async twin (``polar_metering.aio``).
    """

    def __init__(self, client: Metering | AsyncMetering | None, run_sync: RunSync[Any]) -> None:
        self.client = client
        self._run_sync = run_sync

    @property
    def is_sync(self) -> bool:
        return self.client is not None and not inspect.iscoroutinefunction(self.client.check_limit)

    async def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if self.client is None:
            import polar_metering.aio as target

            return await getattr(target, name)(*args, **kwargs)
        method = getattr(self.client, name)
        if inspect.iscoroutinefunction(method):
            return await method(*args, **kwargs)
        return await self._run_sync(functools.partial(method, *args, **kwargs))

    async def check_limit(self, customer: str, meter: str, amount: float | None) -> UsageStatus:
        status: UsageStatus = await self._call("check_limit", customer, meter, amount=amount)
        return status

    async def track_api_request(
        self, customer: str, endpoint: str, *, method: str, status_code: int, duration_ms: float
    ) -> None:
        try:
            report_tracking(
                await self._call(
                    "track_api_request",
                    customer,
                    endpoint,
                    method=method,
                    status_code=status_code,
                    duration_ms=duration_ms,
                )
            )
        except MeteringError as exc:
            report_tracking(exc)

    async def close(self) -> None:
        """Flush and close the client; with no client, shut the default client down."""
        if self.client is None:
            import polar_metering as metering

            await self._run_sync(metering.shutdown)
        else:
            await self._call("close")
