"""The dashboard as an ASGI app: :func:`create_app`.

Pages are rendered on the server (Jinja2 templates in ``templates/``). Each page has a *live*
region; the browser asks for it again every second with the marker it has (``X-Dashboard-Live``),
and gets ``204`` while nothing changed, or the region's new HTML. So a page follows usage tracked by
any process on the same database within about a second, without a reload, and an idle page costs
one cheap query a second.
"""

from __future__ import annotations

import logging
import math
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from polar_metering._exceptions import ConfigurationError, MeteringError, ValidationError
from polar_metering.dashboard._auth import AccessLog, AuthCheck, Gate, TokenLogin
from polar_metering.dashboard._source import Source, open_source
from polar_metering.dashboard._views import INTERVALS

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from polar_metering._client import AsyncMetering, Metering

__all__ = ["DashboardSettings", "create_app"]

log = logging.getLogger("polar_metering.dashboard")
_HERE = Path(__file__).parent
_LIVE_HEADER = "x-dashboard-live"


@dataclass(frozen=True, kw_only=True)
class DashboardSettings:
    """How the app behaves. ``allow_actions`` turns on the forms that change data."""

    title: str = "Usage"
    allow_actions: bool = False
    poll_ms: int = 1000


def _templates() -> Any:
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(
        loader=PackageLoader("polar_metering.dashboard", "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = _num
    env.filters["when"] = _when
    env.filters["ago"] = _ago
    env.filters["pct"] = _pct
    env.filters["day"] = _day
    env.filters["path"] = lambda value: quote(str(value), safe="")
    return env


def _num(value: float | int | None) -> str:
    if value is None:
        return "—"
    if isinstance(value, float) and not math.isfinite(value):
        return "∞"
    if float(value) == int(value) and abs(value) < 1e15:
        return f"{int(value):,}"
    return f"{value:,.2f}"


def _pct(ratio: float | None) -> str:
    if ratio is None:
        return ""
    if not math.isfinite(ratio):
        return "over"
    return f"{ratio * 100:.0f}%"


def _when(value: datetime | None) -> str:
    if value is None:
        return "—"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _day(value: datetime | None) -> str:
    if value is None:
        return "—"
    return value.astimezone(UTC).strftime("%d %b %Y %H:%M UTC")


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _sync(client: Metering | AsyncMetering) -> Metering:
    from polar_metering._client import AsyncMetering, Metering

    if isinstance(client, AsyncMetering):
        return client.sync
    if isinstance(client, Metering):
        return client
    raise ConfigurationError(
        f"client: must be a Metering or AsyncMetering client, got {type(client).__name__}"
    )


def _int_param(request: Request, name: str, default: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValidationError(name, "must be a whole number", raw) from None
    if not 1 <= value <= 10_000_000:
        raise ValidationError(name, "must be between 1 and 10000000", raw)
    return value


class _Pages:
    """The route handlers, over one source."""

    def __init__(self, source: Source, settings: DashboardSettings) -> None:
        self.source = source
        self.settings = settings
        self.env = _templates()

    def _render(self, request: Request, name: str, status: int = 200, **context: Any) -> Response:
        live = request.headers.get(_LIVE_HEADER)
        marker = context.get("marker", "")
        if live is not None:
            if live == marker:
                return Response(status_code=204, headers={"cache-control": "no-store"})
            name = name.replace(".html", "_live.html")
        html = self.env.get_template(name).render(
            request=request,
            base=request.scope.get("root_path", "").rstrip("/"),
            settings=self.settings,
            kind=self.source.kind,
            has_delivery=self.source.has_delivery,
            csrf=request.scope.get("state", {}).get("csrf", ""),
            **context,
        )
        return HTMLResponse(
            html,
            status_code=status,
            headers={
                "x-dashboard-marker": marker,
                "cache-control": "no-store",
                "referrer-policy": "same-origin",
                "x-content-type-options": "nosniff",
                "x-frame-options": "DENY",
            },
        )

    async def _marker(self) -> str:
        return await run_in_threadpool(self.source.marker)

    async def overview(self, request: Request) -> Response:
        search = request.query_params.get("q", "")[:200]
        page = _int_param(request, "page", 1)
        marker = await self._marker()
        if request.headers.get(_LIVE_HEADER) == marker:
            return Response(status_code=204)
        data = await run_in_threadpool(lambda: self.source.overview(search=search, page=page))
        return self._render(request, "overview.html", view=data, marker=marker, active="overview")

    async def customer(self, request: Request) -> Response:
        customer = request.path_params["customer"]
        interval = request.query_params.get("interval", "day")
        if interval not in INTERVALS:
            raise ValidationError("interval", f"must be one of {list(INTERVALS)}", interval)
        marker = await self._marker()
        if request.headers.get(_LIVE_HEADER) == marker:
            return Response(status_code=204)
        page = await run_in_threadpool(self.source.customer, customer, interval)
        if page is None:
            return self._render(
                request, "missing.html", status=404, customer=customer, marker="", active="overview"
            )
        return self._render(
            request,
            "customer.html",
            view=page,
            marker=marker,
            active="overview",
            intervals=list(INTERVALS),
            charts=[c.as_json() for c in page.charts],
            flash=request.query_params.get("done"),
        )

    async def meters(self, request: Request) -> Response:
        marker = await self._marker()
        if request.headers.get(_LIVE_HEADER) == marker:
            return Response(status_code=204)
        totals = await run_in_threadpool(self.source.meter_totals)
        return self._render(request, "meters.html", meters=totals, marker=marker, active="meters")

    async def delivery(self, request: Request) -> Response:
        if not self.source.has_delivery:
            return self._render(request, "no_delivery.html", marker="", active="delivery")
        view = await run_in_threadpool(self.source.delivery)
        # The outbox changes without a marker of its own: every poll gets the fresh numbers.
        marker = f"delivery.{datetime.now(UTC).timestamp()}"
        return self._render(
            request,
            "delivery.html",
            view=view,
            marker=marker,
            active="delivery",
            flash=request.query_params.get("done"),
        )

    async def _form(self, request: Request) -> dict[str, str]:
        if not self.settings.allow_actions:
            raise _Refused(403, "Actions are off. Start the dashboard with --allow-actions to enable them.")
        origin = request.headers.get("origin")
        if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
            raise _Refused(403, "Cross-origin form refused.")
        form = await request.form()
        expected = request.scope.get("state", {}).get("csrf", "")
        got = form.get("csrf")
        import hmac

        if not isinstance(got, str) or not expected or not hmac.compare_digest(got, expected):
            raise _Refused(403, "The form's CSRF token is missing or wrong; reload the page and try again.")
        return {k: v for k, v in form.items() if isinstance(v, str)}

    async def grant(self, request: Request) -> Response:
        form = await self._form(request)
        customer = form.get("customer", "")
        try:
            units = float(form.get("units", ""))
        except ValueError:
            raise ValidationError("units", "must be a number", form.get("units")) from None
        await run_in_threadpool(self.source.grant, customer, form.get("meter", ""), units)
        base = request.scope.get("root_path", "").rstrip("/")
        return RedirectResponse(f"{base}/customers/{quote(customer, safe='')}?done=granted", status_code=303)

    async def retry(self, request: Request) -> Response:
        form = await self._form(request)
        ids: list[int] | None = None
        if form.get("id"):
            try:
                ids = [int(form["id"])]
            except ValueError:
                raise ValidationError("id", "must be a dead-letter id", form["id"]) from None
        moved = await run_in_threadpool(self.source.retry_dead_letters, ids)
        base = request.scope.get("root_path", "").rstrip("/")
        return RedirectResponse(f"{base}/delivery?done=retried-{moved}", status_code=303)


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def create_app(
    client: Metering | AsyncMetering,
    *,
    token: str | None = None,
    auth: AuthCheck | None = None,
    allow_actions: bool = False,
    title: str = "Usage",
    close_client: bool = False,
) -> Starlette:
    """The dashboard for ``client`` as an ASGI app (Starlette), to serve or mount.

    Exactly one of:

    - ``token``: Jupyter-style login. Open ``/?token=...`` once; the browser keeps an HttpOnly,
      SameSite=Strict cookie. What ``polar-metering dashboard`` does.
    - ``auth``: the host application's own check, ``auth(request) -> bool`` (or a coroutine), for
      a dashboard mounted behind the app's login. Return ``True`` to let the request through.

    ``allow_actions`` enables the forms that change data (retrying dead letters, granting credits
    on the embedded engine), each protected by a CSRF token. ``close_client`` closes the client
    when the app shuts down (the command does; a mounted app leaves the host's client alone).
    """
    if (token is None) == (auth is None):
        raise ConfigurationError(
            "create_app: pass token= (the dashboard's own login) or auth= (your app's check), exactly one"
        )
    if auth is not None and not callable(auth):
        raise ConfigurationError("auth: must be a callable taking the request and returning a bool")
    login = TokenLogin(token) if token is not None else None
    sync = _sync(client)
    source = open_source(sync)
    settings = DashboardSettings(title=title, allow_actions=bool(allow_actions))
    pages = _Pages(source, settings)

    async def unauthorized(scope: Scope) -> Response:
        html = pages.env.get_template("login.html").render(
            base=scope.get("root_path", "").rstrip("/"), settings=settings, token_mode=login is not None
        )
        return HTMLResponse(html, status_code=401, headers={"cache-control": "no-store"})

    async def on_error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, _Refused):
            return PlainTextResponse(exc.message, status_code=exc.status)
        if isinstance(exc, ValidationError):
            return PlainTextResponse(f"Bad request: {exc}", status_code=400)
        if isinstance(exc, MeteringError):
            log.warning("polar_metering: dashboard request failed: %s", exc)
            return PlainTextResponse(f"The backend could not answer: {exc}", status_code=503)
        raise exc

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        source.close()
        if close_client:
            await run_in_threadpool(sync.close)

    routes = [
        Route("/", pages.overview, name="overview"),
        Route("/meters", pages.meters, name="meters"),
        Route("/delivery", pages.delivery, name="delivery"),
        Route("/actions/retry", pages.retry, methods=["POST"], name="retry"),
        Route("/actions/grant", pages.grant, methods=["POST"], name="grant"),
        Route("/customers/{customer:path}", pages.customer, name="customer"),
        Mount("/static", app=StaticFiles(directory=_HERE / "static"), name="static"),
    ]
    from starlette.middleware import Middleware

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={_Refused: on_error, MeteringError: on_error},
        middleware=[
            Middleware(AccessLog),  # outermost: sees every answer, the gate's 401s and redirects too
            Middleware(Gate, login=login, check=auth, unauthorized=unauthorized),
        ],
    )
    app.state.source = source
    return app
