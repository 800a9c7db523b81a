"""FastAPI and Starlette: the current customer per request, limits as dependencies, request metering.

::

    app = FastAPI(lifespan=metering_lifespan())
    install(app, resolver=lambda request: request.headers.get("x-org-id") or request.headers.get("x-user-id"))

    @app.post("/api/process", dependencies=[Depends(usage_limit("api_requests"))])
    async def process() -> dict[str, bool]:
        return {"success": True}

- :class:`MeteringMiddleware` (pure ASGI) sets the current customer from the resolver for the whole
  request and, once the response has gone out, tracks ``api.request`` with the route template, method,
  status code and duration.
- :func:`usage_limit` and :func:`usage_reservation` are dependencies; a refusal raises
  ``UsageLimitExceeded``, which :func:`usage_limit_exceeded_handler` answers with a 429.
- :func:`install` adds both to an app; :func:`metering_lifespan` closes the client at shutdown.
- Anonymous requests (the resolver returned ``None``): with ``anonymous="allow"`` (the default)
  the gates let them through unchecked and untracked; with ``"deny"`` they answer 401
  ``{"error": "Authentication required", "detail": ...}``. Either way, a call inside the endpoint
  that needs the current customer (``aio.with_usage_limit`` without ``customer_id``) answers 401 for
  an anonymous request instead of failing with a 500.

Async code never blocks the event loop: with no ``client`` the default client's async twin is used, an
``AsyncMetering`` is awaited, and a sync ``Metering`` runs on anyio's worker threads.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any, cast

try:
    import anyio.to_thread
    from starlette.requests import Request
    from starlette.responses import JSONResponse
except ImportError as exc:  # pragma: no cover - exercised in a subprocess without starlette
    raise ImportError(
        "polar_metering.integrations.fastapi needs FastAPI/Starlette: install polar-metering[fastapi]"
    ) from exc

from polar_metering._exceptions import ConfigurationError, NoCurrentCustomer, UsageLimitExceeded
from polar_metering.integrations._common import (
    Anonymous,
    AsyncCalls,
    RequestState,
    Resolver,
    anonymous_body,
    check_amount,
    check_anonymous,
    check_meter,
    check_optional_amount,
    check_optional_anonymous,
    check_paths,
    check_resolver,
    customer_scope,
    gate_policy,
    is_excluded,
    limit_body,
    limit_headers,
    now_for,
    resolved_customer,
)

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

    from polar_metering._client import AsyncMetering, Metering
    from polar_metering._status import UsageStatus

__all__ = [
    "MeteringMiddleware",
    "install",
    "no_current_customer_handler",
    "metering_lifespan",
    "usage_limit",
    "usage_limit_exceeded_handler",
    "usage_reservation",
]

_STATE_KEY = "polar_metering"


class MeteringMiddleware:
    """Pure ASGI middleware: current customer per request, then ``api.request`` after the response.

    ``resolver(request)`` (sync or async) returns the billing entity or ``None`` for an anonymous
    request; anonymous requests and requests refused for a usage limit are not tracked, nor are paths
    under ``exclude_paths``. Pure ASGI rather than ``BaseHTTPMiddleware`` so that the customer set here
    is the one the endpoint's task sees, and streaming responses are not buffered.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        resolver: Resolver[Request],
        client: Metering | AsyncMetering | None = None,
        track_requests: bool = True,
        exclude_paths: Iterable[str] = (),
        anonymous: Anonymous = "allow",
    ) -> None:
        self.app = app
        self.resolver = check_resolver(resolver)
        self.anonymous = check_anonymous(anonymous)
        self.track_requests = bool(track_requests)
        self.exclude_paths = check_paths(exclude_paths)
        self._calls = AsyncCalls(client, anyio.to_thread.run_sync)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        customer = self.resolver(Request(scope))
        if inspect.isawaitable(customer):
            customer = await customer
        state = RequestState(resolved_customer(customer), client=self._calls.client, anonymous=self.anonymous)
        scope[_STATE_KEY] = state
        status_code = 500

        async def send_and_watch(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
            await send(message)

        started = time.perf_counter()
        try:
            with customer_scope(state.customer):
                await self.app(scope, receive, send_and_watch)
        finally:
            if self.track_requests and state.customer is not None and not state.refused:
                await self._track(scope, state.customer, status_code, started)

    async def _track(self, scope: Scope, customer: str, status_code: int, started: float) -> None:
        if is_excluded(scope["path"], self.exclude_paths):
            return
        # FastAPI leaves the matched route in the scope; its template ("/items/{id}") keeps the
        # endpoint property low-cardinality, where the raw path would make one value per item.
        endpoint = getattr(scope.get("route"), "path", None) or scope["path"]
        await self._calls.track_api_request(
            customer,
            endpoint,
            method=scope["method"],
            status_code=status_code,
            duration_ms=round((time.perf_counter() - started) * 1000, 3),
        )


def _request_state(request: Request, who: str) -> RequestState:
    state = request.scope.get(_STATE_KEY)
    if not isinstance(state, RequestState):
        raise ConfigurationError(
            f"{who}: no customer resolver on this app; call "
            "polar_metering.integrations.fastapi.install(app, resolver=...) or add MeteringMiddleware"
        )
    return state


def _anonymous(state: RequestState, own: Anonymous | None, gate: str) -> None:
    """Let an anonymous request past a gate, or refuse it (401) under the ``deny`` policy."""
    if gate_policy(own, state) == "deny":
        raise NoCurrentCustomer(f"{gate}: this endpoint is metered and the request has no customer")


def usage_limit(
    meter: str,
    *,
    amount: float | None = None,
    client: Metering | AsyncMetering | None = None,
    anonymous: Anonymous | None = None,
) -> Callable[[Request], Any]:
    """A dependency that lets the request through only while the current customer is under the limit.

    With ``amount`` it asks whether that many more units fit. It returns the ``UsageStatus`` and
    raises ``UsageLimitExceeded`` on refusal. An anonymous request gets ``None`` (policy ``"allow"``)
    or a 401 (``"deny"``); ``anonymous=`` overrides the policy given to :func:`install`.
    """
    meter = check_meter(meter)
    wanted = check_optional_amount(amount)
    own = check_optional_anonymous(anonymous)
    calls = AsyncCalls(client, anyio.to_thread.run_sync)

    async def check_usage_limit(request: Request) -> UsageStatus | None:
        state = _request_state(request, "usage_limit")
        customer = state.customer
        if customer is None:
            _anonymous(state, own, f"usage_limit({meter!r})")
            return None
        status = await calls.check_limit(customer, meter, wanted)
        if not status.allowed:
            raise UsageLimitExceeded(status, meter=meter, customer=customer)
        return status

    return check_usage_limit


def usage_reservation(
    meter: str,
    amount: float,
    *,
    client: Metering | AsyncMetering | None = None,
    ttl: float | None = None,
    anonymous: Anonymous | None = None,
) -> Callable[[Request], Any]:
    """A dependency that holds ``amount`` units for the request and hands the endpoint the reservation.

    The endpoint calls ``commit(actual)`` (awaited with an async client); whatever is not committed is
    released when the request ends. No room raises ``UsageLimitExceeded``. With a sync ``Metering`` the
    dependency is a sync generator, which FastAPI runs on its thread pool: use it from ``def`` endpoints.
    An anonymous request gets ``None`` or a 401, as for :func:`usage_limit`.
    """
    meter = check_meter(meter)
    held = check_amount(amount)
    own = check_optional_anonymous(anonymous)
    calls = AsyncCalls(client, anyio.to_thread.run_sync)

    if calls.is_sync:
        sync_client = cast("Metering", client)

        def hold_usage_sync(request: Request) -> Iterator[Any]:
            state = _request_state(request, "usage_reservation")
            customer = state.customer
            if customer is None:
                _anonymous(state, own, f"usage_reservation({meter!r})")
                yield None
                return
            with sync_client.reserve(customer, meter, held, ttl=ttl) as reservation:
                yield reservation

        return hold_usage_sync

    async def hold_usage(request: Request) -> AsyncIterator[Any]:
        state = _request_state(request, "usage_reservation")
        customer = state.customer
        if customer is None:
            _anonymous(state, own, f"usage_reservation({meter!r})")
            yield None
            return
        if client is None:
            import polar_metering.aio as aio

            reservation = await aio.reserve(customer, meter, held, ttl=ttl)
        else:
            reservation = await cast("AsyncMetering", client).reserve(customer, meter, held, ttl=ttl)
        async with reservation:
            yield reservation

    return hold_usage


async def usage_limit_exceeded_handler(request: Request, exc: Exception) -> JSONResponse:
    """Answer ``UsageLimitExceeded`` with 429, the status as JSON, and rate-limit headers."""
    if not isinstance(exc, UsageLimitExceeded):  # pragma: no cover - registered for that class only
        raise exc
    state = request.scope.get(_STATE_KEY)
    if isinstance(state, RequestState):
        state.refused = True
    client = state.client if isinstance(state, RequestState) else None
    return JSONResponse(
        limit_body(exc.status), status_code=429, headers=limit_headers(exc.status, now_for(client))
    )


async def no_current_customer_handler(request: Request, exc: Exception) -> JSONResponse:
    """Answer ``NoCurrentCustomer`` with 401 when the request is anonymous (its resolver returned
    ``None``); anywhere else it is a bug in the app, and stays a server error."""
    state = request.scope.get(_STATE_KEY)
    if not isinstance(exc, NoCurrentCustomer) or not isinstance(state, RequestState) or state.customer:
        raise exc
    return JSONResponse(anonymous_body(str(exc)), status_code=401)


def install(
    app: Starlette,
    *,
    resolver: Resolver[Request],
    client: Metering | AsyncMetering | None = None,
    track_requests: bool = True,
    exclude_paths: Iterable[str] = (),
    anonymous: Anonymous = "allow",
) -> None:
    """Add :class:`MeteringMiddleware` and the 429 handler for ``UsageLimitExceeded`` to ``app``.

    The handler also answers refusals raised by ``with_usage_limit`` or ``reserve`` inside endpoints.
    ``anonymous`` is the app's policy for requests with no customer at the gates (``usage_limit``,
    ``usage_reservation``): ``"allow"`` lets them through, ``"deny"`` answers 401; a library call
    that needs the current customer answers 401 for them in both cases.
    """
    # Starlette builds middleware at the first request; check the arguments now, where the mistake is.
    app.add_middleware(
        MeteringMiddleware,
        resolver=check_resolver(resolver),
        client=client,
        track_requests=track_requests,
        exclude_paths=check_paths(exclude_paths),
        anonymous=check_anonymous(anonymous),
    )
    app.add_exception_handler(UsageLimitExceeded, usage_limit_exceeded_handler)
    app.add_exception_handler(NoCurrentCustomer, no_current_customer_handler)


def metering_lifespan(
    client: Metering | AsyncMetering | None = None,
    *,
    lifespan: Callable[[Any], AbstractAsyncContextManager[Any]] | None = None,
) -> Callable[[Any], AbstractAsyncContextManager[Any]]:
    """A lifespan that flushes and closes ``client`` (the default client when ``None``) at shutdown.

    Pass the app's own lifespan as ``lifespan`` to run it inside; its state is passed through.
    """
    calls = AsyncCalls(client, anyio.to_thread.run_sync)

    @asynccontextmanager
    async def metering_app_lifespan(app: Any) -> AsyncIterator[Any]:
        try:
            if lifespan is None:
                yield None
            else:
                async with lifespan(app) as state:
                    yield state
        finally:
            await calls.close()

    return metering_app_lifespan
