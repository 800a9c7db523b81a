"""The one seam between this library and ``polar-sdk``: the API version, connection settings, and the
translation of SDK errors into ours.

Every other module of the Polar backend (and ``setup``) reaches Polar through :func:`open_client` and
:func:`polar_errors`, so the version pin and the error mapping each live in one place.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn
from urllib.parse import urlsplit

from polar_metering._events import describe, text_error
from polar_metering._exceptions import (
    AuthenticationError,
    BackendError,
    BackendUnavailable,
    ConfigurationError,
    MeteringError,
    NotFound,
    RateLimited,
    RemoteValidationError,
    redact,
)

try:
    from polar.base import (
        PolarClientError,
        PolarDeserializationError,
        PolarError,
        PolarNetworkError,
        PolarRateLimitError,
        PolarServerError,
        parse_response_json,
    )

    # The Polar API version this library speaks. Change it here and nowhere else: the event, meter
    # and customer-meter shapes are identical across the SDK's version modules (polar-sdk polar/base.py).
    from polar.v2026_10 import Polar
    from polar.v2026_10.errors import HTTPValidationError
    from polar.v2026_10.outputs import EventsIngestResponse
except ImportError as _exc:  # pragma: no cover - exercised only without the extra installed
    raise ConfigurationError("polar:// needs the Polar SDK: pip install 'polar-metering[polar]'") from _exc

__all__ = [
    "API_VERSION",
    "DEFAULT_TIMEOUT",
    "ENV_TOKEN",
    "EventsIngestResponse",
    "HTTPValidationError",
    "Polar",
    "PolarSettings",
    "is_loopback",
    "open_client",
    "parse_response_json",
    "polar_errors",
    "resolve_settings",
]

#: the ``Polar-Version`` header value the pinned SDK module sends
API_VERSION: str = Polar.version
ENV_TOKEN = "POLAR_ACCESS_TOKEN"
#: the SDK's own default (polar-sdk polar/base.py); a limit check must not hang longer than this
DEFAULT_TIMEOUT = 5.0
_SERVERS = {"production": "https://api.polar.sh", "sandbox": "https://sandbox-api.polar.sh"}
_URL_OPTIONS = frozenset({"base_url", "timeout", "no_credits"})

Environment = Literal["sandbox", "production"]


@dataclass(frozen=True, slots=True)
class PolarSettings:
    """Where and how to reach Polar. The token never appears in ``repr``."""

    access_token: str = field(repr=False)
    environment: Environment = "production"
    base_url: str | None = None
    timeout: float = DEFAULT_TIMEOUT

    @property
    def server(self) -> str:
        """The base URL requests go to."""
        return self.base_url or _SERVERS[self.environment]

    @property
    def is_local(self) -> bool:
        """True when requests go to this machine (the emulator), not to Polar."""
        return self.base_url is not None and is_loopback(self.base_url)


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_base_url(value: str, source: str) -> str:
    bad = ConfigurationError(
        f"base_url: must be an http(s) URL such as http://127.0.0.1:8765 (from {source}), "
        f"got {describe(value, 80)}"
    )
    if not isinstance(value, str) or text_error(value) is not None:
        raise bad
    try:
        parts = urlsplit(value)
        hostname = parts.hostname
    except ValueError:  # an unclosed IPv6 bracket, a bad port
        raise bad from None
    if parts.scheme not in ("http", "https") or not hostname:
        raise bad
    return value.rstrip("/")


def _timeout(value: object) -> float:
    if isinstance(value, bool):
        raise ConfigurationError("timeout: must be a number of seconds, got a bool")
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        raise ConfigurationError(f"timeout: must be a number of seconds, got {describe(value, 40)}") from None
    if not 0 < seconds <= 300:
        raise ConfigurationError(f"timeout: must be > 0 and <= 300 seconds, got {describe(value, 40)}")
    return seconds


def resolve_settings(
    *,
    access_token: str | None,
    environment: str | None = None,
    base_url: str | None = None,
    url_host: str | None = None,
    url_query: Mapping[str, str] | None = None,
    timeout: float | None = None,
) -> PolarSettings:
    """Merge a ``polar://`` URL (host = environment, ``?base_url=``) with explicit settings.

    The URL wins over ``environment``/``base_url`` (which carry the ``POLAR_*`` fallbacks already).
    A missing token is a :class:`ConfigurationError` naming ``POLAR_ACCESS_TOKEN``.
    """
    query = dict(url_query or {})
    unknown = set(query) - _URL_OPTIONS
    if "access_token" in unknown or "token" in unknown:
        raise ConfigurationError(
            f"url: never put the access token in the URL; set {ENV_TOKEN} or pass access_token="
        )
    if unknown:
        raise ConfigurationError(
            f"url: unknown polar:// options {sorted(unknown)}; known: {sorted(_URL_OPTIONS)}"
        )
    env = environment or "production"
    if url_host:
        if url_host not in _SERVERS:
            raise ConfigurationError(
                f"url: polar://{url_host} is not an environment; use polar://, polar://sandbox or "
                "polar://production (and ?base_url=http://127.0.0.1:8765 for the emulator)"
            )
        env = url_host
    if not isinstance(env, str) or env not in _SERVERS:
        raise ConfigurationError(f"environment: must be 'sandbox' or 'production', got {describe(env, 40)}")
    base: str | None = None
    if "base_url" in query:
        base = _check_base_url(query["base_url"], "the polar:// URL")
    elif base_url:
        base = _check_base_url(base_url, "base_url / POLAR_BASE_URL")
    if not isinstance(access_token, str) or not access_token.strip():
        if base is not None:
            raise ConfigurationError(
                f"access_token: the server at {base} (base_url / POLAR_BASE_URL) needs a token; set "
                f"{ENV_TOKEN} to the one it accepts (for the emulator, its --token)"
            )
        raise ConfigurationError(
            f"access_token: a Polar organization access token is required; set {ENV_TOKEN} "
            f"(create one in the Polar dashboard under Settings > Developers, {env} environment)"
        )
    if not access_token.isascii() or "\x00" in access_token:
        # It travels in an HTTP header; Polar's tokens are ASCII. (The value is never shown.)
        raise ConfigurationError("access_token: must be ASCII text, as Polar's tokens are")
    seconds = _timeout(query["timeout"]) if "timeout" in query else DEFAULT_TIMEOUT
    if timeout is not None:
        seconds = _timeout(timeout)
    return PolarSettings(access_token.strip(), env, base, seconds)  # type: ignore[arg-type]


def open_client(settings: PolarSettings) -> Polar:
    """A new SDK client for ``settings`` (one httpx connection pool; close it with ``__exit__``)."""
    return Polar(
        settings.access_token,
        environment=settings.environment,
        base_url=settings.base_url,
        timeout=settings.timeout,
    )


def _detail(error: HTTPValidationError) -> list[dict[str, Any]]:
    items = getattr(error.error, "detail", None) or []
    return [{"loc": list(item.loc), "msg": item.msg, "type": item.type} for item in items]


def _summary(detail: list[dict[str, Any]], limit: int = 3) -> str:
    parts = [f"{'.'.join(str(p) for p in d['loc'])}: {d['msg']}" for d in detail[:limit]]
    more = f" (and {len(detail) - limit} more)" if len(detail) > limit else ""
    return "; ".join(parts) + more if parts else "no detail given"


def _raise_mapped(exc: PolarError, action: str, settings: PolarSettings | None) -> NoReturn:
    secret = settings.access_token if settings else None
    where = f"Polar {settings.environment}" if settings and not settings.base_url else "Polar"
    if settings and settings.base_url:
        where = f"Polar at {settings.base_url}"
    # The server the token was actually sent to: production, the sandbox, or POLAR_BASE_URL's.
    if settings is None:
        token_for = "the Polar environment you meant"
    elif settings.base_url:
        token_for = f"the server at {settings.base_url} (base_url / POLAR_BASE_URL)"
    else:
        token_for = f"Polar {settings.environment} ({settings.server})"
    # PolarRateLimitError subclasses PolarClientError, so it is matched first (polar-sdk polar/base.py).
    if isinstance(exc, PolarRateLimitError):
        wait = f"; retry after {exc.retry_after} s" if exc.retry_after is not None else ""
        raise RateLimited(
            f"{action}: {where} rate limit reached (429){wait}", retry_after=exc.retry_after
        ) from exc
    if isinstance(exc, HTTPValidationError):
        detail = _detail(exc)
        raise RemoteValidationError(
            redact(f"{action}: {where} rejected the request (422): {_summary(detail)}", secret),
            detail=detail,
            status_code=exc.status_code,
        ) from exc
    if isinstance(exc, PolarClientError):
        status = exc.status_code
        if status in (401, 403):
            problem = "rejected the access token" if status == 401 else "refused: the token lacks a scope"
            raise AuthenticationError(
                f"{action}: {where} {problem} ({status}); check {ENV_TOKEN} is an organization token "
                f"for {token_for}",
                status_code=status,
            ) from exc
        if status == 404:
            raise NotFound(f"{action}: not found on {where} (404)", status_code=404) from exc
        body = redact(str(exc.error)[:300], secret)
        raise BackendError(
            f"{action}: {where} answered {status}: {body}", status_code=status, retryable=status == 408
        ) from exc
    if isinstance(exc, PolarServerError):
        raise BackendUnavailable(
            f"{action}: {where} had a server error ({exc.status_code})", status_code=exc.status_code
        ) from exc
    if isinstance(exc, PolarNetworkError):
        raise BackendUnavailable(redact(f"{action}: cannot reach {where}: {exc.message}", secret)) from exc
    if isinstance(exc, PolarDeserializationError):
        raise BackendError(
            f"{action}: {where} sent a response this SDK cannot read (API version {API_VERSION})"
        ) from exc
    raise BackendError(redact(f"{action}: {where} failed: {exc}", secret)) from exc


@contextmanager
def polar_errors(action: str, settings: PolarSettings | None = None) -> Iterator[None]:
    """Turn any ``polar-sdk`` error raised inside the block into this library's exception tree.

    =======================================  ==========================================
    SDK error                                raised here
    =======================================  ==========================================
    ``PolarRateLimitError`` (429)            :class:`RateLimited` with ``retry_after``
    ``HTTPValidationError`` (422)            :class:`RemoteValidationError` (``detail``)
    ``PolarClientError`` 401 / 403           :class:`AuthenticationError`
    ``PolarClientError`` 404                 :class:`NotFound`
    other ``PolarClientError`` (413, ...)    :class:`BackendError` with ``status_code``
    ``PolarServerError``, ``PolarNetworkError``  :class:`BackendUnavailable`
    =======================================  ==========================================

    Messages are redacted: the token never appears in them. A ``ValueError`` the SDK lets escape
    while reading a response becomes :class:`BackendUnavailable`.
    """
    try:
        yield
    except PolarError as exc:
        _raise_mapped(exc, action, settings)
    except ValueError as exc:
        if isinstance(exc, MeteringError):
            raise
        # polar-sdk polar/base.py: the SDK lets two response problems out unwrapped: int() of a date-form
        # Retry-After,
        # and a non-JSON body on an error status it maps. Both mean an answer we cannot read.
        secret = settings.access_token if settings else None
        raise BackendUnavailable(redact(f"{action}: unreadable response from Polar: {exc}", secret)) from exc
