"""Polar webhooks: verify the signature, drop repeats, and refresh limits when a customer changes.

Polar has no meter webhooks; ``customer.state_changed`` is the push signal that balances changed (it
follows every customer-meter recompute, about 15 s after ingest), and subscription and benefit-grant
events change credits. On any of them the client's cached readings for that customer are made
stale, so the next limit check asks Polar instead of waiting out the cache TTL.

Three ways in, all framework-neutral:

- :func:`handle_webhook` takes the raw body and headers and returns a :class:`WebhookResult` with the
  HTTP status to answer (wire it into any framework's route);
- :func:`asgi_app` and :func:`wsgi_app` are complete endpoints to mount, e.g. ``app.mount("/polar/webhooks",
  asgi_app(secret))`` in Starlette/FastAPI or a ``DispatcherMiddleware`` entry in Flask.

**Schema drift.** The signature is checked by ``polar-sdk`` (Standard Webhooks, HMAC-SHA256); the
payload is then read as plain JSON, never through the SDK's typed models. Those lag the server:
Polar's server at c6c3645 sends no ``api_version``, subscription statuses and product fields the
SDK's ``v2026_10`` models do not accept, so a typed parse refuses every real delivery. Only the
event ``type`` and the customer (``data.external_id`` for ``customer.*`` events, the embedded
``customer`` object otherwise) are needed, and both have been stable across versions.

Statuses: 200 acted on (or a repeat of a ``webhook-id`` already seen); 202 a validly signed event
of a type this library does not act on; 403 a missing or wrong signature or a timestamp outside
Polar's 5-minute tolerance; 400 a signed body that is not a JSON event at all; 405/413 for the
endpoints. The ``webhook-id`` is remembered as soon as the signature verifies, so a replay is a
repeat whatever its body says. The secret never appears in logs, results or errors.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from polar_metering._exceptions import ConfigurationError, ValidationError, redact
from polar_metering._status import as_dict

try:
    from polar.webhooks import (
        PolarWebhookError,
        PolarWebhookUnknownTypeError,
        PolarWebhookVerificationError,
        validate_event,
    )
except ImportError as _exc:  # pragma: no cover - exercised only without the extra installed
    raise ConfigurationError(
        "polar_metering.webhooks needs the Polar SDK: pip install 'polar-metering[polar]'"
    ) from _exc

__all__ = [
    "MAX_BODY_BYTES",
    "SeenWebhooks",
    "WebhookResult",
    "asgi_app",
    "handle_webhook",
    "invalidates",
    "warm_up",
    "wsgi_app",
]

log = logging.getLogger("polar_metering")

#: Larger bodies are refused with 413 by the endpoints. A customer state with every meter, benefit
#: and subscription is a few kilobytes; this leaves room for large organisations.
MAX_BODY_BYTES = 1024 * 1024
_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")
_INVALIDATING_PREFIXES = ("subscription.", "benefit_grant.")


def invalidates(event_type: str) -> bool:
    """Whether an event of ``event_type`` may change a customer's balances or credits."""
    return event_type == "customer.state_changed" or event_type.startswith(_INVALIDATING_PREFIXES)


@runtime_checkable
class _Invalidates(Protocol):
    def invalidate(self, customer: str | None = None, meter: str | None = None) -> int: ...


@dataclass(frozen=True, slots=True)
class WebhookResult:
    """What :func:`handle_webhook` did and the HTTP ``status`` to answer Polar with.

    ``customer`` is the external customer id the event was about (when it carries one);
    ``invalidated`` counts the cached readings made stale; ``duplicate`` is true for a ``webhook-id``
    already handled; ``detail`` says why in a few words (never the secret).
    """

    status: int
    detail: str
    event_type: str | None = None
    webhook_id: str | None = None
    customer: str | None = None
    invalidated: int = 0
    duplicate: bool = False

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict of the fields (timestamps as ISO-8601 strings)."""
        return as_dict(self)

    @property
    def ok(self) -> bool:
        """True for a 2xx status: Polar will not retry."""
        return 200 <= self.status < 300

    def body(self) -> bytes:
        """A small JSON body for the response."""
        payload = {
            "status": self.status,
            "detail": self.detail,
            "type": self.event_type,
            "duplicate": self.duplicate,
        }
        return json.dumps(payload).encode()


class SeenWebhooks:
    """The last ``size`` ``webhook-id`` values handled: Polar retries a delivery until it gets a 2xx
    (up to 10 attempts, ``server/polar/webhook/tasks.py``), and the same event must not be acted on twice."""

    def __init__(self, size: int = 10_000) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValidationError("size", "must be an integer >= 1", size)
        self.size = size
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def __contains__(self, webhook_id: object) -> bool:
        return webhook_id in self._ids

    def add(self, webhook_id: str) -> bool:
        """Remember ``webhook_id``; False if it was already known."""
        with self._lock:
            if webhook_id in self._ids:
                self._ids.move_to_end(webhook_id)
                return False
            self._ids[webhook_id] = None
            while len(self._ids) > self.size:
                self._ids.popitem(last=False)
            return True


_DEFAULT_SEEN = SeenWebhooks()


def warm_up(*, background: bool = False) -> None:
    """Kept for compatibility: deliveries no longer go through ``polar-sdk``'s typed payload
    parser (see "Schema drift" above), so there is nothing to build ahead of the first one."""


class _AnyType(frozenset[str]):
    """Every event type counts as known to the SDK's verifier: which types to act on is decided
    here, after the signature is checked."""

    def __contains__(self, item: object) -> bool:
        return isinstance(item, str)


_ANY_TYPE = _AnyType()


def _raw(data: dict[str, Any]) -> dict[str, Any]:
    return data


def _header_map(headers: object) -> dict[str, str]:
    """Header names lower-cased; accepts a mapping or ASGI-style ``(name, value)`` byte pairs."""
    if isinstance(headers, Mapping):
        items: Iterable[Any] = headers.items()
    elif isinstance(headers, Iterable) and not isinstance(headers, str | bytes):
        items = headers
    else:
        raise ValidationError(
            "headers", "must be a mapping of header names to values", type(headers).__name__
        )
    out: dict[str, str] = {}
    for item in items:
        try:
            name, value = item
        except (TypeError, ValueError):
            raise ValidationError("headers", "must hold (name, value) pairs", None) from None
        name = name.decode("latin-1") if isinstance(name, bytes) else str(name)
        value = value.decode("latin-1") if isinstance(value, bytes) else str(value)
        out[name.lower()] = value
    return out


def _check_secret(secret: object) -> str:
    if not isinstance(secret, str) or not secret.strip():
        raise ValidationError("secret", "must be the endpoint's webhook secret (a non-empty string)")
    return secret


def _target(client: object | None) -> _Invalidates | None:
    """Whatever holds the cache: the client's backend, or ``client`` itself; the default client when
    ``client`` is None (and none when ``init()`` was never called)."""
    if client is None:
        from polar_metering._api import get_client

        try:
            client = get_client()
        except ConfigurationError:
            return None
    backend = getattr(client, "backend", client)
    if isinstance(backend, _Invalidates):
        return backend
    if hasattr(client, "backend"):
        return None  # a backend without a cache (the local engine): nothing to refresh
    raise ValidationError(
        "client", "must be a Metering/AsyncMetering client or a backend", type(client).__name__
    )


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _customer_of(event_type: str, data: Any) -> tuple[bool, str | None]:
    """Who an event is about: ``(known, external_id)``. ``customer.*`` events carry the customer
    (or its state) as ``data``; subscriptions, benefit grants and orders embed a ``customer``
    object. A customer without an external id is not one the library tracks (nothing to refresh);
    an event naming only a Polar ``customer_id`` is ``(False, None)``: it could be anyone."""
    if not isinstance(data, dict):
        return False, None
    if event_type.startswith("customer."):
        return True, _text(data.get("external_id"))
    owner = data.get("customer")
    if isinstance(owner, dict):
        return True, _text(owner.get("external_id"))
    return False, None


def handle_webhook(
    body: bytes | str,
    headers: Mapping[str, str] | Iterable[tuple[bytes | str, bytes | str]],
    secret: str,
    client: object | None = None,
    *,
    seen: SeenWebhooks | None = None,
) -> WebhookResult:
    """Verify one Polar webhook delivery and act on it; returns the status to answer with.

    ``body`` must be the raw request body (the signature covers its exact bytes). ``client`` is the
    :class:`~polar_metering.Metering` (or async) client whose cached readings to refresh; by default
    the one ``init()`` made. ``seen`` remembers handled ``webhook-id`` values (a process-wide default).
    Raises :class:`ValidationError` only for wrong arguments, never for a bad request.
    """
    if not isinstance(body, bytes | str):
        raise ValidationError("body", "must be the raw request body as bytes or str", type(body).__name__)
    secret = _check_secret(secret)
    hmap = _header_map(headers)
    target = _target(client)
    seen = _DEFAULT_SEEN if seen is None else seen
    webhook_id = hmap.get("webhook-id") or None
    if isinstance(body, bytes):
        # Decoded here: the SDK reports undecodable bytes before it checks the signature, and an
        # unverified delivery must not reach the "already seen" memory.
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError:
            return WebhookResult(400, "invalid payload: not UTF-8", None, webhook_id)
    data: Any = None
    try:
        data = validate_event(body, {k: hmap[k] for k in _HEADERS if k in hmap}, secret, _ANY_TYPE, _raw)
    except PolarWebhookVerificationError as exc:
        reason = redact(str(exc), secret)
        log.warning(
            "polar_metering: rejected a webhook (webhook-id=%s): %s", redact(str(webhook_id), secret), reason
        )
        return WebhookResult(403, f"invalid signature: {reason}", None, webhook_id)
    except PolarWebhookUnknownTypeError:
        pass  # signed JSON without a string ``type``: refused below, after the id is remembered
    except PolarWebhookError:
        pass  # signed, but not JSON
    assert webhook_id is not None  # the signature check requires the header
    if not seen.add(webhook_id):
        event_type = data.get("type") if isinstance(data, dict) else None
        return WebhookResult(200, "already handled", event_type, webhook_id, duplicate=True)
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        log.warning("polar_metering: a signed webhook is not a JSON event (webhook-id=%s)", webhook_id)
        return WebhookResult(400, "invalid payload: not a JSON object with a type", None, webhook_id)
    event_type = data["type"]
    if not invalidates(event_type):
        return WebhookResult(202, "event type not acted on", event_type, webhook_id)
    known, customer = _customer_of(event_type, data.get("data"))
    count = 0
    if target is not None and (customer is not None or not known):
        # Only a Polar customer id: every cached reading may be that customer's.
        count = target.invalidate(customer)
    log.debug("polar_metering: webhook %s for customer %s refreshed %d readings", event_type, customer, count)
    return WebhookResult(200, "refreshed", event_type, webhook_id, customer, count)


# -- endpoints ---------------------------------------------------------------------------------------------
_Scope = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
_Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


def _plain(status: int, detail: str) -> WebhookResult:
    return WebhookResult(status, detail)


def asgi_app(
    secret: str,
    client: object | None = None,
    *,
    seen: SeenWebhooks | None = None,
) -> Callable[[_Scope, _Receive, _Send], Awaitable[None]]:
    """An ASGI 3 endpoint answering Polar's ``POST`` deliveries (see :func:`handle_webhook`).

    Verification and parsing (about a millisecond) run in the loop's default thread pool under
    asyncio, so the event loop never waits on them; under another loop they run inline.
    """
    secret = _check_secret(secret)
    own_seen = seen or SeenWebhooks()

    async def handle(body: bytes, headers: Any) -> WebhookResult:
        call = functools.partial(handle_webhook, body, headers, secret, client, seen=own_seen)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return call()
        return await loop.run_in_executor(None, call)

    async def app(scope: _Scope, receive: _Receive, send: _Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        result: WebhookResult
        if scope.get("method") != "POST":
            result = _plain(405, "use POST")
        else:
            chunks: list[bytes] = []
            size = 0
            more = True
            while more:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > MAX_BODY_BYTES:
                    break
                chunks.append(chunk)
                more = bool(message.get("more_body", False))
            if size > MAX_BODY_BYTES:
                result = _plain(413, "body too large")
            else:
                result = await handle(b"".join(chunks), scope.get("headers", []))
        body = result.body()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if result.status == 405:
            headers.append((b"allow", b"POST"))
        await send({"type": "http.response.start", "status": result.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


_REASONS = {
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    403: "Forbidden",
    405: "Method Not Allowed",
    413: "Payload Too Large",
}


def wsgi_app(
    secret: str,
    client: object | None = None,
    *,
    seen: SeenWebhooks | None = None,
) -> Callable[[dict[str, Any], Callable[..., Any]], list[bytes]]:
    """A WSGI endpoint answering Polar's ``POST`` deliveries (see :func:`handle_webhook`)."""
    secret = _check_secret(secret)
    own_seen = seen or SeenWebhooks()

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        if environ.get("REQUEST_METHOD") != "POST":
            result = _plain(405, "use POST")
        else:
            try:
                length = int(environ.get("CONTENT_LENGTH") or 0)
            except ValueError:
                length = -1
            if length < 0:
                result = _plain(400, "bad Content-Length")
            elif length > MAX_BODY_BYTES:
                result = _plain(413, "body too large")
            else:
                body = environ["wsgi.input"].read(length) if length else b""
                headers = {
                    name: environ.get("HTTP_" + name.upper().replace("-", "_"), "") for name in _HEADERS
                }
                result = handle_webhook(
                    body, {k: v for k, v in headers.items() if v}, secret, client, seen=own_seen
                )
        payload = result.body()
        headers_out = [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))]
        if result.status == 405:
            headers_out.append(("Allow", "POST"))
        start_response(f"{result.status} {_REASONS.get(result.status, 'Error')}", headers_out)
        return [payload]

    return app
