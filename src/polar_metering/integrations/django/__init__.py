"""Django: the current customer per request, a limit decorator for views, request metering.

Configure in ``settings.py``; nothing is read until the first request::

    INSTALLED_APPS = [..., "polar_metering.integrations.django"]   # for `manage.py polar_metering_setup`
    MIDDLEWARE = [..., "polar_metering.integrations.django.MeteringMiddleware"]
    POLAR_METERING = {
        "URL": "sqlite:///metering.db",          # passed to metering.init() with METERS, PLANS, ...
        "RESOLVER": "myapp.billing.billing_entity",   # request -> customer id or None
        "TRACK_REQUESTS": True,
    }

and gate views with ``@usage_limit("ai_tokens")`` (sync or async views). The middleware is sync- and
async-capable, so it adds no thread hop under ASGI.

Anonymous requests (the resolver returned ``None``): ``"ANONYMOUS": "allow"`` (the default) lets them
past ``@usage_limit`` unchecked and untracked; ``"deny"`` answers 401 ``{"error": "Authentication
required", "detail": ...}``. A library call that needs the current customer in an anonymous request
answers 401 too (through the middleware) instead of a 500.
"""

from __future__ import annotations

import functools
import inspect
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast

try:
    from asgiref.sync import async_to_sync, iscoroutinefunction, markcoroutinefunction, sync_to_async
    from django.conf import settings
    from django.core.signals import setting_changed
    from django.http import JsonResponse
except ImportError as exc:  # pragma: no cover - exercised in a subprocess without Django
    raise ImportError(
        "polar_metering.integrations.django needs Django: install polar-metering[django]"
    ) from exc

import polar_metering as metering
from polar_metering._exceptions import ConfigurationError, NoCurrentCustomer, UsageLimitExceeded
from polar_metering.integrations._common import (
    Anonymous,
    AsyncCalls,
    RequestState,
    anonymous_body,
    check_anonymous,
    check_meter,
    check_optional_amount,
    check_optional_anonymous,
    check_paths,
    check_resolver,
    customer_scope,
    gate_policy,
    import_object,
    is_excluded,
    limit_body,
    limit_headers,
    now_for,
    resolved_customer,
    track_quietly,
)

if TYPE_CHECKING:
    from polar_metering._client import Metering
    from polar_metering._status import UsageStatus

__all__ = ["MeteringMiddleware", "get_client", "usage_limit"]

ViewT = TypeVar("ViewT", bound=Callable[..., Any])

# Keys of POLAR_METERING passed to metering.init(); OPTIONS carries any other init keyword.
_INIT_KEYS = {
    "URL": "url",
    "METERS": "meters",
    "PLANS": "plans",
    "CATALOG": "catalog",
    "CLOCK": "clock",
    "ACCESS_TOKEN": "access_token",
    "ENVIRONMENT": "environment",
    "BASE_URL": "base_url",
    "FAIL_OPEN": "fail_open",
}
_KEYS = {*_INIT_KEYS, "RESOLVER", "TRACK_REQUESTS", "EXCLUDE_PATHS", "OPTIONS", "ANONYMOUS"}
_REQUEST_ATTR = "_polar_metering"


@dataclass(frozen=True, slots=True)
class _Config:
    resolver: Callable[[Any], Any]
    track_requests: bool
    exclude_paths: tuple[str, ...]
    init_kwargs: Mapping[str, Any]
    anonymous: Anonymous = "allow"


_lock = threading.Lock()
_config: _Config | None = None


def _load_config() -> _Config:
    raw = getattr(settings, "POLAR_METERING", None)
    if not isinstance(raw, Mapping):
        raise ConfigurationError("settings.POLAR_METERING: must be a dict with at least 'RESOLVER'")
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise ConfigurationError(
            f"settings.POLAR_METERING[{unknown[0]!r}]: unknown key; known keys are {', '.join(sorted(_KEYS))}"
        )
    if "RESOLVER" not in raw:
        raise ConfigurationError(
            "settings.POLAR_METERING['RESOLVER']: required, a dotted path to request -> customer id or None"
        )
    resolver = raw["RESOLVER"]
    if isinstance(resolver, str):
        resolver = import_object(resolver, "settings.POLAR_METERING['RESOLVER']")
    options = raw.get("OPTIONS", {})
    if not isinstance(options, Mapping):
        raise ConfigurationError(
            "settings.POLAR_METERING['OPTIONS']: must be a dict of metering.init() keywords"
        )
    init_kwargs = {**options, **{_INIT_KEYS[key]: value for key, value in raw.items() if key in _INIT_KEYS}}
    return _Config(
        resolver=check_resolver(resolver),
        track_requests=bool(raw.get("TRACK_REQUESTS", True)),
        exclude_paths=check_paths(raw.get("EXCLUDE_PATHS", ())),
        init_kwargs=init_kwargs,
        anonymous=_anonymous_setting(raw.get("ANONYMOUS", "allow")),
    )


def _anonymous_setting(value: object) -> Anonymous:
    try:
        return check_anonymous(value)
    except ValueError:
        raise ConfigurationError(
            f"settings.POLAR_METERING['ANONYMOUS']: must be 'allow' or 'deny', got {value!r}"
        ) from None


def _settings() -> _Config:
    global _config
    config = _config
    if config is None:
        with _lock:
            config = _config = _config or _load_config()
    return config


def _forget_settings(*, setting: str, **_: Any) -> None:
    global _config
    if setting == "POLAR_METERING":
        _config = None


setting_changed.connect(_forget_settings, dispatch_uid="polar_metering.integrations.django")


def get_client() -> Metering:
    """The default client, made once from ``settings.POLAR_METERING`` unless the app already called init()."""
    try:
        return metering.get_client()
    except ConfigurationError:
        pass
    kwargs = _settings().init_kwargs
    with _lock:
        try:
            return metering.get_client()
        except ConfigurationError:
            return metering.init(**kwargs)


def _run_sync(fn: Callable[[], Any]) -> Awaitable[Any]:
    return sync_to_async(fn, thread_sensitive=False)()


_calls = AsyncCalls(None, _run_sync)


async def _aget_client() -> None:
    try:
        metering.get_client()
    except ConfigurationError:
        # init() opens the database: keep that first-request work off the event loop.
        await _run_sync(get_client)


def _state(request: Any) -> RequestState:
    state = getattr(request, _REQUEST_ATTR, None)
    if state is None:
        resolver = _settings().resolver
        customer = async_to_sync(resolver)(request) if iscoroutinefunction(resolver) else resolver(request)
        state = RequestState(resolved_customer(customer), anonymous=_settings().anonymous)
        setattr(request, _REQUEST_ATTR, state)
    return cast(RequestState, state)


async def _astate(request: Any) -> RequestState:
    state = getattr(request, _REQUEST_ATTR, None)
    if state is None:
        customer = _settings().resolver(request)
        if inspect.isawaitable(customer):
            customer = await customer
        state = RequestState(resolved_customer(customer), anonymous=_settings().anonymous)
        setattr(request, _REQUEST_ATTR, state)
    return cast(RequestState, state)


def _unauthorized(detail: str) -> Any:
    return JsonResponse(anonymous_body(detail), status=401)


def _refusal(request: Any, status: UsageStatus) -> Any:
    state = getattr(request, _REQUEST_ATTR, None)
    if isinstance(state, RequestState):
        state.refused = True
    return JsonResponse(limit_body(status), status=429, headers=limit_headers(status, now_for(None)))


def _endpoint(request: Any) -> str:
    # The URL pattern ("api/items/<int:pk>") rather than the path keeps the property low-cardinality.
    route = getattr(getattr(request, "resolver_match", None), "route", None)
    return f"/{route}" if route else str(request.path)


def _tracking(
    request: Any, state: RequestState, response: Any, started: float
) -> tuple[str, str, dict[str, Any]] | None:
    """``(customer, endpoint, keywords)`` for ``track_api_request``, or ``None`` when not to track."""
    config = _settings()
    if not config.track_requests or state.customer is None or state.refused:
        return None
    if is_excluded(request.path, config.exclude_paths):
        return None
    return (
        state.customer,
        _endpoint(request),
        {
            "method": request.method,
            "status_code": response.status_code,
            "duration_ms": round((time.perf_counter() - started) * 1000, 3),
        },
    )


class MeteringMiddleware:
    """Sets the current customer for each request and tracks ``api.request`` once the view has answered.

    Anonymous requests, requests refused for a usage limit and ``EXCLUDE_PATHS`` are not tracked.
    ``UsageLimitExceeded`` raised by a view (``with_usage_limit``, ``reserve``) becomes a 429.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: Any) -> Any:
        if self.is_async:
            return self.__acall__(request)
        get_client()
        state = _state(request)
        started = time.perf_counter()
        with customer_scope(state.customer):
            response = self.get_response(request)
        tracking = _tracking(request, state, response, started)
        if tracking is not None:
            customer, endpoint, details = tracking
            track_quietly(lambda: get_client().track_api_request(customer, endpoint, **details))
        return response

    async def __acall__(self, request: Any) -> Any:
        await _aget_client()
        state = await _astate(request)
        started = time.perf_counter()
        with customer_scope(state.customer):
            response = await self.get_response(request)
        tracking = _tracking(request, state, response, started)
        if tracking is not None:
            customer, endpoint, details = tracking
            await _calls.track_api_request(customer, endpoint, **details)
        return response

    def process_exception(self, request: Any, exception: Exception) -> Any:
        if isinstance(exception, UsageLimitExceeded):
            return _refusal(request, exception.status)
        state = getattr(request, _REQUEST_ATTR, None)
        anonymous = isinstance(state, RequestState) and state.customer is None
        if isinstance(exception, NoCurrentCustomer) and anonymous:
            return _unauthorized(str(exception))  # anonymous: a 401, not a server error
        return None


def usage_limit(
    meter: str, *, amount: float | None = None, anonymous: Anonymous | None = None
) -> Callable[[ViewT], ViewT]:
    """Answer 429 instead of running the view once the current customer has reached ``meter``'s limit.

    With ``amount``, refuse unless that many more units fit. Works on sync and async views, with or
    without the middleware (without it, the decorator resolves the customer itself). Anonymous
    requests are let through (policy ``"allow"``) or answered 401 (``"deny"``); ``anonymous=``
    overrides ``POLAR_METERING["ANONYMOUS"]`` for this view.
    """
    meter = check_meter(meter)
    wanted = check_optional_amount(amount)
    own = check_optional_anonymous(anonymous)
    gate = f"usage_limit({meter!r})"
    denied = f"{gate}: this view is metered and the request has no customer"

    def decorate(view: ViewT) -> ViewT:
        if iscoroutinefunction(view):

            @functools.wraps(view)
            async def limited_async_view(request: Any, *args: Any, **kwargs: Any) -> Any:
                await _aget_client()
                state = await _astate(request)
                if state.customer is None and gate_policy(own, state) == "deny":
                    return _unauthorized(denied)
                if state.customer is not None:
                    status = await _calls.check_limit(state.customer, meter, wanted)
                    if not status.allowed:
                        return _refusal(request, status)
                with customer_scope(state.customer):
                    return await view(request, *args, **kwargs)

            return cast(ViewT, limited_async_view)

        @functools.wraps(view)
        def limited_view(request: Any, *args: Any, **kwargs: Any) -> Any:
            state = _state(request)
            if state.customer is None and gate_policy(own, state) == "deny":
                return _unauthorized(denied)
            if state.customer is not None:
                status = get_client().check_limit(state.customer, meter, amount=wanted)
                if not status.allowed:
                    return _refusal(request, status)
            with customer_scope(state.customer):
                return view(request, *args, **kwargs)

        return cast(ViewT, limited_view)

    return decorate
