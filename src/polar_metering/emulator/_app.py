"""The emulator's Starlette application: Polar's ``/v1`` routes plus the ``/__emulator__`` admin routes."""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from polar_metering._exceptions import ConfigurationError, NotFound
from polar_metering.emulator._admin import admin_routes
from polar_metering.emulator._billing import DEFAULT_BILLING_INTERVAL, BillingSchedule
from polar_metering.emulator._commerce import Commerce
from polar_metering.emulator._context import Emulator
from polar_metering.emulator._customers import CustomerRoutes
from polar_metering.emulator._errors import PolarJSON, RequestRejected
from polar_metering.emulator._gate import Gate, RateLimiter, Secret
from polar_metering.emulator._notify import Notifier, Ticker
from polar_metering.emulator._product_routes import ProductRoutes
from polar_metering.emulator._quirks import PolarQuirks
from polar_metering.emulator._routes import NOT_FOUND, PolarRoutes
from polar_metering.emulator._settle import SettledBalances
from polar_metering.emulator._subscription_routes import SubscriptionRoutes
from polar_metering.emulator._webhooks import WebhookSender

if TYPE_CHECKING:
    from polar_metering.backends._engine.backend import LocalEngine

__all__ = ["DEFAULT_ORGANIZATION_ID", "create_app"]

logger = logging.getLogger("polar_metering.emulator")

#: The organization every emulated object belongs to unless another is given; fixed so that ids
#: stay stable across restarts of an emulator over the same database, and shaped as a version-4
#: UUID, which Polar's ``organization_id`` filters require.
DEFAULT_ORGANIZATION_ID = str(
    uuid.UUID(
        bytes=uuid.uuid5(uuid.NAMESPACE_URL, "https://polar-metering.invalid/emulator").bytes, version=4
    )
)


async def _rejected(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestRejected)
    return PolarJSON(exc.body(), exc.status_code)


async def _not_found(request: Request, exc: Exception) -> Response:
    return PolarJSON(NOT_FOUND, 404)


async def _http_error(request: Request, exc: Exception) -> Response:
    # Unknown paths and methods get FastAPI's plain bodies, as Polar's server answers them.
    assert isinstance(exc, HTTPException)
    return PolarJSON({"detail": exc.detail}, exc.status_code, headers=exc.headers)


async def _internal_error(request: Request, exc: Exception) -> Response:
    logger.exception("emulator: unhandled error on %s %s", request.method, request.url.path)
    return PolarJSON({"error": "InternalServerError", "detail": "Internal server error"}, 500)


def _polar_routes(emu: Emulator) -> list[Route]:
    r = PolarRoutes(emu)
    c = CustomerRoutes(emu)
    k = ProductRoutes(emu)
    sub = SubscriptionRoutes(emu)
    return [
        Route("/v1/products/", k.list_products, methods=["GET"]),
        Route("/v1/products/", k.create_product, methods=["POST"]),
        Route("/v1/products/{id}", k.get_product, methods=["GET"]),
        Route("/v1/products/{id}", k.update_product, methods=["PATCH"]),
        Route("/v1/products/{id}/benefits", k.update_product_benefits, methods=["POST"]),
        Route("/v1/benefits/", k.list_benefits, methods=["GET"]),
        Route("/v1/benefits/", k.create_benefit, methods=["POST"]),
        Route("/v1/benefits/{id}", k.get_benefit, methods=["GET"]),
        Route("/v1/benefits/{id}", k.update_benefit, methods=["PATCH"]),
        Route("/v1/subscriptions/", sub.list_subscriptions, methods=["GET"]),
        Route("/v1/subscriptions/", sub.create_subscription, methods=["POST"]),
        Route("/v1/subscriptions/{id}", sub.get_subscription, methods=["GET"]),
        Route("/v1/subscriptions/{id}", sub.update_subscription, methods=["PATCH"]),
        Route("/v1/subscriptions/{id}", sub.revoke_subscription, methods=["DELETE"]),
        Route("/v1/events/ingest", r.ingest, methods=["POST"]),
        Route("/v1/events/", r.list_events, methods=["GET"]),
        Route("/v1/meters/", r.list_meters, methods=["GET"]),
        Route("/v1/meters/", r.create_meter, methods=["POST"]),
        Route("/v1/meters/{id}", r.get_meter, methods=["GET"]),
        Route("/v1/meters/{id}", r.update_meter, methods=["PATCH"]),
        Route("/v1/meters/{id}/quantities", r.quantities, methods=["GET"]),
        Route("/v1/customer-meters/", c.list_customer_meters, methods=["GET"]),
        Route("/v1/customer-meters/{id}", c.get_customer_meter, methods=["GET"]),
        # Before the ``{id}`` routes, which would otherwise catch ``/external/state``.
        Route("/v1/customers/external/{rest:path}", c.external, methods=["GET"]),
        Route("/v1/customers/", c.list_customers, methods=["GET"]),
        Route("/v1/customers/", c.create_customer, methods=["POST"]),
        Route("/v1/customers/{id}", c.get_customer, methods=["GET"]),
        Route("/v1/customers/{id}/state", c.customer_state, methods=["GET"]),
    ]


def _number(name: str, value: object, *, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value >= minimum:
        raise ConfigurationError(f"{name}: must be a number of seconds >= {minimum:g}")
    return float(value)


def create_app(
    engine: LocalEngine,
    *,
    token: str,
    rate_limit_per_minute: int | None = None,
    settle_delay: float = 0.0,
    organization_id: str | None = None,
    polar_quirks: bool = True,
    billing_interval: float | None = DEFAULT_BILLING_INTERVAL,
    webhook_url: str | None = None,
    webhook_secret: str | None = None,
    webhook_backoff: float = 2.0,
    tick: float = 0.05,
) -> Starlette:
    """A Polar-compatible ASGI app over ``engine``.

    ``token`` is the one bearer token accepted (an organization token). With
    ``rate_limit_per_minute`` each token gets that many ``/v1`` requests per fixed 60 s window, then
    429 with ``Retry-After: 60``. With ``settle_delay`` > 0, customer-meter balances lag like Polar's
    debounce; 0 settles every event at once. ``polar_quirks`` plays Polar's two customer-meter
    quirks (``_quirks``); ``billing_interval`` is the period of Polar's billing pass (0 or None: only
    ``POST /__emulator__/billing``). With ``webhook_url`` and ``webhook_secret`` the emulator sends
    signed webhooks there, retrying failures with Polar's backoff scaled to ``webhook_backoff``
    seconds (Polar: 2). Background work (debounce ends, passes, deliveries) runs every ``tick``
    seconds while the app is served.
    """
    if not isinstance(token, str) or not token.strip():
        raise ConfigurationError("token: a non-empty access token is required")
    if rate_limit_per_minute is not None and (
        isinstance(rate_limit_per_minute, bool)
        or not isinstance(rate_limit_per_minute, int)
        or rate_limit_per_minute < 1
    ):
        raise ConfigurationError("rate_limit_per_minute: must be a whole number >= 1, or None for no limit")
    settle_delay = _number("settle_delay", settle_delay)
    tick = _number("tick", tick, minimum=0.001)
    if not isinstance(polar_quirks, bool):
        raise ConfigurationError("polar_quirks: must be true or false")
    if organization_id is None:
        organization_id = DEFAULT_ORGANIZATION_ID
    else:
        try:
            organization_id = str(uuid.UUID(organization_id))
        except (ValueError, TypeError, AttributeError):
            raise ConfigurationError("organization_id: must be a UUID") from None
    if (webhook_url is None) != (webhook_secret is None):
        raise ConfigurationError("webhook_url and webhook_secret: give both or neither")
    sender = (
        WebhookSender(
            webhook_url, webhook_secret, backoff_base=webhook_backoff, monotonic=engine.clock.monotonic
        )
        if webhook_url is not None and webhook_secret is not None
        else None
    )
    quirks = PolarQuirks(engine, enabled=polar_quirks)
    settled = SettledBalances(engine, settle_delay, quirks=quirks)
    billing = BillingSchedule(engine, billing_interval)
    notifier = Notifier(engine, settled, organization_id, sender)
    commerce = Commerce(engine, organization_id, notifier, on_credit=settled.settle)
    notifier.commerce = commerce
    emu = Emulator(engine, settled, organization_id, quirks, billing, notifier, commerce)
    ticker = Ticker(notifier, billing, settled, period=tick)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        ticker.start()
        try:
            yield
        finally:
            ticker.stop()

    limiter = RateLimiter(rate_limit_per_minute) if rate_limit_per_minute is not None else None
    app = Starlette(
        routes=_polar_routes(emu) + admin_routes(emu),
        middleware=[Middleware(Gate, token=Secret(token), rate_limiter=limiter)],
        exception_handlers={
            RequestRejected: _rejected,
            NotFound: _not_found,
            HTTPException: _http_error,
            Exception: _internal_error,
        },
        lifespan=lifespan,
    )
    app.state.engine = engine
    app.state.organization_id = organization_id
    app.state.settled = settled
    app.state.emulator = emu
    app.state.ticker = ticker
    return app
