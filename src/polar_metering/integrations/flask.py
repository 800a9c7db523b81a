"""Flask: an extension that sets the current customer per request and meters requests, and a view decorator.

::

    metering.init(plans=[free])
    ext = Metering(app, resolver=lambda request: request.headers.get("X-Org-Id"))

    @app.post("/api/generate")
    @usage_limit("ai_tokens", amount=500)
    def generate(): ...

The customer is set in ``before_request`` and reset in ``teardown_request``, which runs even when the
view fails. Anonymous requests (the resolver returned ``None``): ``anonymous="allow"`` (the default)
lets them past ``@usage_limit`` unchecked and untracked; ``"deny"`` answers 401 ``{"error":
"Authentication required", "detail": ...}``; a library call that needs the current customer answers
401 for them in both cases, not a 500.

Events are flushed when the process exits (``atexit``) or by :meth:`Metering.flush`;
``teardown_appcontext`` runs after every request, far too often to flush there.
"""

from __future__ import annotations

import atexit
import functools
import inspect
import logging
import time
import weakref
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, cast

try:
    from flask import Flask, Request, Response, current_app, jsonify, request
except ImportError as exc:  # pragma: no cover - exercised in a subprocess without Flask
    raise ImportError("polar_metering.integrations.flask needs Flask: install polar-metering[flask]") from exc

import polar_metering as metering
from polar_metering._exceptions import (
    ConfigurationError,
    MeteringError,
    NoCurrentCustomer,
    UsageLimitExceeded,
)
from polar_metering.integrations._common import (
    Anonymous,
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
    from polar_metering._client import Metering as Client
    from polar_metering._status import UsageStatus

__all__ = ["Metering", "usage_limit"]

logger = logging.getLogger("polar_metering.integrations")

ViewT = TypeVar("ViewT", bound=Callable[..., Any])

_EXTENSION_KEY = "polar_metering"
_ENVIRON_KEY = "polar_metering.request"


@dataclass(slots=True)
class _FlaskRequest:
    state: RequestState
    started: float
    scope: ExitStack = field(default_factory=ExitStack)


class Metering:
    """The Flask extension: ``Metering(app, resolver=...)`` or ``Metering(resolver=...).init_app(app)``.

    - ``resolver(request)`` returns the billing entity (organization, else user) or ``None``; when not
      given, ``app.config["POLAR_METERING_RESOLVER"]`` (a callable or a dotted path) is used.
    - ``client``: a ``polar_metering.Metering``; the default client (``metering.init()``) when ``None``.
    - ``track_requests``: track ``api.request`` for each request of a known customer, except those
      under ``exclude_paths`` and those refused for a usage limit.
    - ``flush_on_exit``: flush the client when the process exits.
    - ``anonymous``: ``"allow"`` (default) or ``"deny"``, what ``@usage_limit`` does with a request
      whose resolver returned ``None`` (``"deny"``: 401 with a JSON body).
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        resolver: Callable[[Request], str | None] | None = None,
        client: Client | None = None,
        track_requests: bool = True,
        exclude_paths: Iterable[str] = (),
        flush_on_exit: bool = True,
        anonymous: Anonymous = "allow",
    ) -> None:
        self.resolver = None if resolver is None else check_resolver(resolver)
        if client is not None and inspect.iscoroutinefunction(getattr(client, "check_limit", None)):
            raise TypeError(
                "client: Flask views are sync, so the extension needs a sync polar_metering.Metering; "
                "pass the AsyncMetering's .sync client (or use aio in async views yourself)"
            )
        self._client = client
        self.track_requests = bool(track_requests)
        self.exclude_paths = check_paths(exclude_paths)
        self.flush_on_exit = bool(flush_on_exit)
        self.anonymous = check_anonymous(anonymous)
        self._exit_hook = False
        if app is not None:
            self.init_app(app)

    @property
    def client(self) -> Client:
        """The client this extension uses."""
        return self._client if self._client is not None else metering.get_client()

    def init_app(self, app: Flask) -> None:
        if self.resolver is None:
            configured = app.config.get("POLAR_METERING_RESOLVER")
            if configured is None:
                raise ConfigurationError(
                    "resolver: required; pass Metering(resolver=...) "
                    "or set app.config['POLAR_METERING_RESOLVER']"
                )
            if isinstance(configured, str):
                configured = import_object(configured, "app.config['POLAR_METERING_RESOLVER']")
            self.resolver = check_resolver(configured)
        app.extensions[_EXTENSION_KEY] = self
        app.before_request(self._begin)
        app.after_request(self._track)
        app.teardown_request(self._end)
        app.register_error_handler(UsageLimitExceeded, self._limit_exceeded)
        app.register_error_handler(NoCurrentCustomer, self._no_customer)
        if self.flush_on_exit and not self._exit_hook:
            # A weak reference: an app and its extension may come and go (tests, factories) before exit.
            atexit.register(_flush_at_exit, weakref.ref(self))
            self._exit_hook = True

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything tracked so far is stored or delivered; ``False`` on timeout."""
        return self.client.flush(timeout)

    def _begin(self) -> None:
        assert self.resolver is not None  # init_app guarantees it
        state = RequestState(
            resolved_customer(self.resolver(request)), client=self._client, anonymous=self.anonymous
        )
        current = _FlaskRequest(state, time.perf_counter())
        current.scope.enter_context(customer_scope(state.customer))
        request.environ[_ENVIRON_KEY] = current

    def _track(self, response: Response) -> Response:
        current = request.environ.get(_ENVIRON_KEY)
        if not isinstance(current, _FlaskRequest) or not self.track_requests:
            return response
        customer = current.state.customer
        if customer is None or current.state.refused or is_excluded(request.path, self.exclude_paths):
            return response
        # The rule ("/items/<int:id>") rather than the path keeps the property low-cardinality.
        endpoint = request.url_rule.rule if request.url_rule is not None else request.path
        duration_ms = round((time.perf_counter() - current.started) * 1000, 3)
        method, status_code = request.method, response.status_code
        track_quietly(
            lambda: self.client.track_api_request(
                customer, endpoint, method=method, status_code=status_code, duration_ms=duration_ms
            )
        )
        return response

    def _end(self, error: BaseException | None) -> None:
        current = request.environ.pop(_ENVIRON_KEY, None)
        if isinstance(current, _FlaskRequest):
            current.scope.close()

    def _limit_exceeded(self, error: UsageLimitExceeded) -> Response:
        return self._refusal(error.status)

    def _no_customer(self, error: NoCurrentCustomer) -> Response:
        current = request.environ.get(_ENVIRON_KEY)
        if not isinstance(current, _FlaskRequest) or current.state.customer is not None:
            raise error  # not an anonymous request: a bug in the app, and a server error
        return _unauthorized(str(error))

    def _refusal(self, status: UsageStatus) -> Response:
        current = request.environ.get(_ENVIRON_KEY)
        if isinstance(current, _FlaskRequest):
            current.state.refused = True
        response = jsonify(limit_body(status))
        response.status_code = 429
        response.headers.update(limit_headers(status, now_for(self._client)))
        return response


def _flush_at_exit(ref: weakref.ref[Metering]) -> None:
    extension = ref()
    if extension is None:
        return
    try:
        extension.flush(timeout=5.0)
    except MeteringError as exc:
        # At exit the default client may already be shut down; there is nothing left to flush then.
        logger.debug("polar-metering: flush at exit skipped: %s", exc)


def _extension() -> Metering:
    extension = current_app.extensions.get(_EXTENSION_KEY)
    if not isinstance(extension, Metering):
        raise ConfigurationError(
            "usage_limit: the polar_metering Flask extension is not set up on this app; "
            "call polar_metering.integrations.flask.Metering(app, resolver=...)"
        )
    return extension


def _unauthorized(detail: str) -> Response:
    response = jsonify(anonymous_body(detail))
    response.status_code = 401
    return response


def _refusal_or_none(meter: str, amount: float | None, own: Anonymous | None) -> Response | None:
    extension = _extension()
    current = request.environ.get(_ENVIRON_KEY)
    state = current.state if isinstance(current, _FlaskRequest) else None
    customer = state.customer if state is not None else None
    if customer is None:
        policy = gate_policy(own, state) if state is not None else (own or extension.anonymous)
        if policy == "deny":
            return _unauthorized(
                f"usage_limit({meter!r}): this view is metered and the request has no customer"
            )
        return None
    status = extension.client.check_limit(customer, meter, amount=amount)
    return None if status.allowed else extension._refusal(status)


def usage_limit(
    meter: str, *, amount: float | None = None, anonymous: Anonymous | None = None
) -> Callable[[ViewT], ViewT]:
    """Answer 429 instead of running the view once the current customer has reached ``meter``'s limit.

    With ``amount``, refuse unless that many more units fit. Anonymous requests are let through
    (policy ``"allow"``) or answered 401 (``"deny"``); ``anonymous=`` overrides the extension's policy.
    """
    meter = check_meter(meter)
    wanted = check_optional_amount(amount)
    own = check_optional_anonymous(anonymous)

    def decorate(view: ViewT) -> ViewT:
        if inspect.iscoroutinefunction(view):
            # Flask runs an async view on an event loop of its own for this one request, so the sync
            # check blocks nothing else.
            @functools.wraps(view)
            async def limited_async_view(*args: Any, **kwargs: Any) -> Any:
                refusal = _refusal_or_none(meter, wanted, own)
                return refusal if refusal is not None else await view(*args, **kwargs)

            return cast(ViewT, limited_async_view)

        @functools.wraps(view)
        def limited_view(*args: Any, **kwargs: Any) -> Any:
            refusal = _refusal_or_none(meter, wanted, own)
            return refusal if refusal is not None else view(*args, **kwargs)

        return cast(ViewT, limited_view)

    return decorate
