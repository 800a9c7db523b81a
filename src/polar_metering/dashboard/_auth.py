"""Who may see the dashboard: a Jupyter-style login token, or the host application's own check.

Token login, as Jupyter does it: opening any page with ``?token=T`` once sets an ``HttpOnly``,
``SameSite=Strict`` cookie and redirects to the same address without the token, so it leaves the
address bar, the history and any later ``Referer``. The cookie holds a value derived from the token
(an HMAC), never the token itself. Scripts may send ``Authorization: token T`` (or ``Bearer T``)
instead. Without either, every page answers 401 and shows nothing about customers.

Actions (forms that change data) also need a CSRF token derived from the session, and a same-origin
``Origin`` when the browser sends one.

The token never appears in a log line, a ``repr`` or an error: access lines are written by
:class:`AccessLog` with the path only, no query string.
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qsl, urlencode

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["COOKIE", "AccessLog", "AuthCheck", "Gate", "TokenLogin", "new_token"]

COOKIE = "polar_metering_dashboard"
#: ``auth=`` for :func:`create_app`: decides from the request whether to let it through
AuthCheck = Callable[[Request], "bool | Awaitable[bool]"]

access_log = logging.getLogger("polar_metering.dashboard.access")


def new_token() -> str:
    """A fresh login token (256 random bits, URL-safe)."""
    return secrets.token_urlsafe(32)


def _mac(key: bytes, label: str) -> str:
    return hmac.new(key, label.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class TokenLogin:
    """The login token and what is derived from it. ``repr`` never shows the token."""

    token: str = field(repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.token, str) or len(self.token) < 16:
            from polar_metering._exceptions import ConfigurationError

            raise ConfigurationError("token: a dashboard token must be a string of at least 16 characters")

    @property
    def session(self) -> str:
        return _mac(self.token.encode(), "session")

    def valid_token(self, given: str) -> bool:
        return hmac.compare_digest(given.encode(), self.token.encode())

    def valid_session(self, given: str) -> bool:
        return hmac.compare_digest(given.encode(), self.session.encode())


class Gate:
    """ASGI middleware in front of the pages: login, 401, CSRF token for the templates.

    ``login`` (token mode) or ``check`` (the host's own auth) decides; static assets (CSS, JS, the
    chart library) are served to anyone, since the login page itself needs them.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        login: TokenLogin | None,
        check: AuthCheck | None,
        unauthorized: Callable[[Scope], Awaitable[Any]],
    ) -> None:
        self.app = app
        self.login = login
        self.check = check
        self.unauthorized = unauthorized
        self._secret = secrets.token_bytes(32)

    def csrf_for(self, session: str) -> str:
        return _mac(self._secret, f"csrf|{session}")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        root = scope.get("root_path", "")
        path = scope.get("path", "")
        if path.removeprefix(root).startswith("/static/"):
            await self.app(scope, receive, send)
            return
        session = await self._session(scope, receive, send)
        if session is None:
            return  # answered: redirect or 401
        scope.setdefault("state", {})["csrf"] = self.csrf_for(session)
        await self.app(scope, receive, send)

    async def _session(self, scope: Scope, receive: Receive, send: Send) -> str | None:
        """The session the request belongs to, or ``None`` after answering it (redirect, 401)."""
        if self.check is not None:
            verdict = self.check(Request(scope, receive))
            if inspect.isawaitable(verdict):
                verdict = await verdict
            if not verdict:
                await self._deny(scope, receive, send)
                return None
            return "host-auth"
        assert self.login is not None
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        given = [v for k, v in query if k == "token"]
        if given:
            if not self.login.valid_token(given[-1]):
                await self._deny(scope, receive, send)
                return None
            await self._set_cookie_and_redirect(scope, send, [(k, v) for k, v in query if k != "token"])
            return None
        if self._cookie(scope) is not None or self._header_token(scope):
            return self.login.session
        await self._deny(scope, receive, send)
        return None

    def _cookie(self, scope: Scope) -> str | None:
        assert self.login is not None
        for name, value in scope.get("headers", []):
            if name == b"cookie":
                jar: SimpleCookie = SimpleCookie()
                try:
                    jar.load(value.decode("latin-1"))
                except Exception:
                    continue
                morsel = jar.get(COOKIE)
                if morsel is not None and self.login.valid_session(morsel.value):
                    return morsel.value
        return None

    def _header_token(self, scope: Scope) -> bool:
        assert self.login is not None
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                scheme, _, credential = value.decode("latin-1").partition(" ")
                if scheme.lower() in ("token", "bearer") and self.login.valid_token(credential.strip()):
                    return True
        return False

    async def _set_cookie_and_redirect(self, scope: Scope, send: Send, rest: list[tuple[str, str]]) -> None:
        assert self.login is not None
        root = scope.get("root_path", "") or ""
        location = (root + scope.get("path", "").removeprefix(root)) or "/"
        if rest:
            location += "?" + urlencode(rest)
        secure = "; Secure" if scope.get("scheme") == "https" else ""
        cookie = f"{COOKIE}={self.login.session}; Path={root or '/'}; HttpOnly; SameSite=Strict{secure}"
        await send(
            {
                "type": "http.response.start",
                "status": 303,
                "headers": [
                    (b"location", location.encode("latin-1")),
                    (b"set-cookie", cookie.encode("latin-1")),
                    (b"cache-control", b"no-store"),
                    (b"referrer-policy", b"same-origin"),
                    (b"content-length", b"0"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": b""})

    async def _deny(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = await self.unauthorized(scope)
        await response(scope, receive, send)


class AccessLog:
    """One log line per request: method, path (never the query string), status and time."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def recording(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording)
        finally:
            client = scope.get("client") or ("-", 0)
            access_log.info(
                '%s "%s %s" %d %.1f ms',
                client[0],
                scope.get("method", "-"),
                scope.get("root_path", "") + scope.get("path", "").removeprefix(scope.get("root_path", "")),
                status[0],
                (time.perf_counter() - started) * 1000.0,
            )
