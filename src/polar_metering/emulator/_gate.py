"""What Polar checks before any route runs: body size, rate limit, bearer token
(``server/polar/middlewares.py``, ``server/polar/app.py`` at c6c3645).

One ASGI middleware, so every route (admin ones included) shares the same rules. Tokens are compared
in constant time and never logged; rate-limit buckets are keyed by a hash of the token.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections.abc import Callable

from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

__all__ = ["HEALTH_PATH", "MAX_BODY_BYTES", "Gate", "RateLimiter", "Secret"]

MAX_BODY_BYTES = 10 * 1024 * 1024  # API_MAX_REQUEST_BODY_SIZE (server/polar/config.py)
HEALTH_PATH = "/__emulator__/health"
_WINDOW_SECONDS = 60  # a minute rule: Retry-After is the whole window, not the time left
_INVALID_TOKEN = "The access token provided is expired, revoked, malformed, or invalid for other reasons."


class Secret:
    """A token that never shows itself in a repr (Starlette prints middleware options in its repr)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"


class RateLimiter:
    """Fixed windows of 60 s per key, each starting at the key's first request."""

    def __init__(self, per_minute: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        if per_minute < 1:
            raise ValueError("rate_limit_per_minute: must be >= 1")
        self.per_minute = per_minute
        self._clock = clock
        self._windows: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    def allow(self, key: str) -> bool:
        now = self._clock()
        with self._lock:
            start, count = self._windows.get(key, (now, 0))
            if now - start >= _WINDOW_SECONDS:
                start, count = now, 0
            count += 1
            self._windows[key] = (start, count)
            return count <= self.per_minute


async def _drain(receive: Receive) -> None:
    # Past a bound, stop and let the server close the connection.
    seen = 0
    while seen <= 4 * MAX_BODY_BYTES:
        message = await receive()
        if message["type"] != "http.request":
            return
        seen += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


class Gate:
    """411/413, then the rate limit (``/v1`` only, like Polar's catch-all zone), then the bearer token."""

    def __init__(self, app: ASGIApp, *, token: Secret, rate_limiter: RateLimiter | None = None) -> None:
        self.app = app
        self._token = token.reveal().encode()
        self._limiter = rate_limiter

    def __repr__(self) -> str:
        return f"Gate(rate_limit={self._limiter.per_minute if self._limiter else None})"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == HEALTH_PATH:
            await self.app(scope, receive, send)
            return
        response = self._check(scope)
        if response is None:
            await self.app(scope, receive, send)
            return
        await response(scope, receive, send)
        if response.status_code == 413:
            # Answered at once, as Polar does; then the rest of the body is read and dropped, so a
            # client still sending it reads the 413 instead of a reset connection.
            await _drain(receive)

    def _check(self, scope: Scope) -> Response | None:
        headers = Headers(scope=scope)
        authorization = headers.get("authorization", "")
        # Polar's MaxBodySizeMiddleware sits outside its rate limiter (server/polar/app.py,
        # server/polar/middlewares.py at c6c3645), so 411/413 come first.
        if scope["method"] in ("POST", "PUT", "PATCH"):
            length = headers.get("content-length")
            if length is None:
                return JSONResponse(
                    {"error": "LengthRequired", "detail": "A Content-Length header is required."}, 411
                )
            if not length.isdigit():
                return JSONResponse({"error": "BadRequest", "detail": "Invalid Content-Length header."}, 400)
            if int(length) > MAX_BODY_BYTES:
                return JSONResponse(
                    {
                        "error": "RequestBodyTooLarge",
                        "detail": (
                            f"Request body exceeded the maximum allowed size of {MAX_BODY_BYTES} bytes."
                        ),
                    },
                    413,
                )
        if self._limiter is not None and scope["path"].startswith("/v1"):
            key = hashlib.sha256(authorization.encode()).hexdigest()
            if not self._limiter.allow(key):
                return Response(status_code=429, headers={"Retry-After": str(_WINDOW_SECONDS)})
        scheme, _, presented = authorization.partition(" ")
        if scheme.lower() != "bearer" or not presented.strip():
            return JSONResponse(
                {"error": "Unauthorized", "detail": "Unauthorized"},
                401,
                headers={"WWW-Authenticate": 'Bearer realm="polar"'},
            )
        if not hmac.compare_digest(presented.strip().encode(), self._token):
            return JSONResponse(
                {"error": "invalid_token", "error_description": _INVALID_TOKEN},
                401,
                headers={
                    "WWW-Authenticate": f'Bearer error="invalid_token", error_description="{_INVALID_TOKEN}"'
                },
            )
        return None
