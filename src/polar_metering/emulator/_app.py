"""The emulator's Starlette application: Polar's ``/v1`` routes plus the ``/__emulator__`` admin routes."""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from polar_metering._exceptions import ConfigurationError, NotFound
from polar_metering.emulator._admin import admin_routes
from polar_metering.emulator._gate import Gate, RateLimiter, Secret
from polar_metering.emulator._routes import NOT_FOUND, PolarRoutes
from polar_metering.emulator._schemas import RequestRejected
from polar_metering.emulator._settle import SettledBalances

if TYPE_CHECKING:
    from polar_metering.backends._engine.backend import LocalEngine

__all__ = ["DEFAULT_ORGANIZATION_ID", "create_app"]

logger = logging.getLogger("polar_metering.emulator")

#: The organization every emulated object belongs to unless another is given; fixed so that ids
#: stay stable across restarts of an emulator over the same database.
DEFAULT_ORGANIZATION_ID = str(uuid.uuid5(uuid.NAMESPACE_URL, "https://polar-metering.invalid/emulator"))


async def _rejected(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestRejected)
    return JSONResponse(exc.body(), exc.status_code)


async def _not_found(request: Request, exc: Exception) -> Response:
    return JSONResponse(NOT_FOUND, 404)


async def _http_error(request: Request, exc: Exception) -> Response:
    # Unknown paths and methods get FastAPI's plain bodies, as Polar's server answers them.
    assert isinstance(exc, HTTPException)
    return JSONResponse({"detail": exc.detail}, exc.status_code, headers=exc.headers)


async def _internal_error(request: Request, exc: Exception) -> Response:
    logger.exception("emulator: unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse({"error": "InternalServerError", "detail": "Internal server error"}, 500)


def _polar_routes(routes: PolarRoutes) -> list[Route]:
    r = routes
    return [
        Route("/v1/events/ingest", r.ingest, methods=["POST"]),
        Route("/v1/events/", r.list_events, methods=["GET"]),
        Route("/v1/meters/", r.list_meters, methods=["GET"]),
        Route("/v1/meters/", r.create_meter, methods=["POST"]),
        Route("/v1/meters/{id}", r.get_meter, methods=["GET"]),
        Route("/v1/meters/{id}", r.update_meter, methods=["PATCH"]),
        Route("/v1/meters/{id}/quantities", r.quantities, methods=["GET"]),
        Route("/v1/customer-meters/", r.list_customer_meters, methods=["GET"]),
        Route("/v1/customer-meters/{id}", r.get_customer_meter, methods=["GET"]),
        # Before the ``{id}`` routes, which would otherwise catch ``/external/state``.
        Route("/v1/customers/external/{rest:path}", r.external, methods=["GET"]),
        Route("/v1/customers/", r.list_customers, methods=["GET"]),
        Route("/v1/customers/", r.create_customer, methods=["POST"]),
        Route("/v1/customers/{id}", r.get_customer, methods=["GET"]),
        Route("/v1/customers/{id}/state", r.customer_state, methods=["GET"]),
    ]


def create_app(
    engine: LocalEngine,
    *,
    token: str,
    rate_limit_per_minute: int | None = None,
    settle_delay: float = 0.0,
    organization_id: str | None = None,
) -> Starlette:
    """A Polar-compatible ASGI app over ``engine``.

    ``token`` is the one bearer token accepted (an organization token, §1.5). With
    ``rate_limit_per_minute`` each token gets that many ``/v1`` requests per fixed 60 s window, then
    429 with ``Retry-After: 60`` (§5.1). With ``settle_delay`` > 0, customer-meter balances lag like
    Polar's debounce (§3.3); 0 settles every event at once.
    """
    if not isinstance(token, str) or not token.strip():
        raise ConfigurationError("token: a non-empty access token is required")
    if rate_limit_per_minute is not None and (
        isinstance(rate_limit_per_minute, bool)
        or not isinstance(rate_limit_per_minute, int)
        or rate_limit_per_minute < 1
    ):
        raise ConfigurationError("rate_limit_per_minute: must be a whole number >= 1, or None for no limit")
    if isinstance(settle_delay, bool) or not isinstance(settle_delay, int | float) or not settle_delay >= 0:
        raise ConfigurationError("settle_delay: must be a number of seconds >= 0")
    if organization_id is None:
        organization_id = DEFAULT_ORGANIZATION_ID
    else:
        try:
            organization_id = str(uuid.UUID(organization_id))
        except (ValueError, TypeError, AttributeError):
            raise ConfigurationError("organization_id: must be a UUID") from None
    settled = SettledBalances(engine, float(settle_delay))
    routes = _polar_routes(PolarRoutes(engine, settled, organization_id))
    routes += admin_routes(engine, settled, organization_id)
    limiter = RateLimiter(rate_limit_per_minute) if rate_limit_per_minute is not None else None
    app = Starlette(
        routes=routes,
        middleware=[Middleware(Gate, token=Secret(token), rate_limiter=limiter)],
        exception_handlers={
            RequestRejected: _rejected,
            NotFound: _not_found,
            HTTPException: _http_error,
            Exception: _internal_error,
        },
    )
    app.state.engine = engine
    app.state.organization_id = organization_id
    app.state.settled = settled
    return app
