"""Command-line side of the emulator: ``polar-metering emulator`` and ``polar-metering emulator admin``.

The plain functions here carry the behaviour; :func:`typer_app` wraps them for the main CLI and
:func:`main` (``python -m polar_metering.emulator``) uses only the standard library. The token comes
from ``--token``, else ``POLAR_EMULATOR_TOKEN``, else ``POLAR_ACCESS_TOKEN``; it is never printed.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from polar_metering._exceptions import (
    AuthenticationError,
    BackendUnavailable,
    ConfigurationError,
    MeteringError,
    NotFound,
    RemoteValidationError,
    redact,
)

__all__ = [
    "DEFAULT_DB",
    "DEFAULT_URL",
    "AdminClient",
    "emulator_command",
    "main",
    "resolve_token",
    "typer_app",
]

DEFAULT_DB = "sqlite:///emulator.db"
DEFAULT_URL = "http://127.0.0.1:8765"
_TOKEN_VARS = ("POLAR_EMULATOR_TOKEN", "POLAR_ACCESS_TOKEN")


def resolve_token(token: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """``token``, else the first of ``POLAR_EMULATOR_TOKEN`` / ``POLAR_ACCESS_TOKEN`` that is set."""
    env = os.environ if environ is None else environ
    for candidate in (token, *(env.get(name) for name in _TOKEN_VARS)):
        if candidate and candidate.strip():
            return candidate.strip()
    raise ConfigurationError(
        "token: the emulator needs an access token to accept; pass --token or set POLAR_EMULATOR_TOKEN "
        "(or POLAR_ACCESS_TOKEN)"
    )


def emulator_command(
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str | None = None,
    db: str = DEFAULT_DB,
    rate_limit: int | None = None,
    settle_delay: float = 0.0,
    *,
    catalog: str | None = None,
    organization_id: str | None = None,
    announce: bool = True,
    log_level: str = "warning",
    polar_quirks: bool = True,
    billing_interval: float | None = None,
    webhook_url: str | None = None,
    webhook_secret: str | None = None,
    webhook_backoff: float = 2.0,
) -> None:
    """Serve the emulator until interrupted (``polar-metering emulator``). ``webhook_secret``
    defaults to ``POLAR_EMULATOR_WEBHOOK_SECRET``; ``billing_interval`` None is Polar's 15 minutes."""
    from polar_metering._catalog import load_catalog
    from polar_metering.emulator._billing import DEFAULT_BILLING_INTERVAL
    from polar_metering.emulator._server import WEBHOOK_SECRET_ENV, serve

    resolved = resolve_token(token)
    if webhook_secret is None and webhook_url is not None:
        webhook_secret = os.environ.get(WEBHOOK_SECRET_ENV) or None
    serve(
        db,
        host=host,
        port=port,
        token=resolved,
        rate_limit_per_minute=rate_limit,
        settle_delay=settle_delay,
        organization_id=organization_id,
        catalog=load_catalog(catalog) if catalog is not None else None,
        log_level=log_level,
        announce=announce,
        polar_quirks=polar_quirks,
        billing_interval=DEFAULT_BILLING_INTERVAL if billing_interval is None else billing_interval,
        webhook_url=webhook_url,
        webhook_secret=webhook_secret,
        webhook_backoff=webhook_backoff,
    )


class AdminClient:
    """Calls the ``/__emulator__/`` admin routes of a running emulator."""

    def __init__(self, url: str = DEFAULT_URL, token: str | None = None, *, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self._token = resolve_token(token)
        self._timeout = timeout

    def __repr__(self) -> str:
        return f"AdminClient(url={self.url!r})"

    def _post(self, path: str, body: Mapping[str, Any] | None = None) -> Any:
        import httpx

        try:
            response = httpx.post(
                f"{self.url}/__emulator__/{path}",
                json=dict(body or {}),
                headers={"Authorization": f"Bearer {self._token}"},
                timeout=self._timeout,
            )
        except httpx.HTTPError as exc:
            raise BackendUnavailable(
                redact(f"emulator at {self.url} unreachable: {exc}", self._token)
            ) from None
        if response.status_code in (401, 403):
            raise AuthenticationError("emulator rejected the token", status_code=response.status_code)
        if response.status_code == 404:
            raise NotFound(f"emulator: not found: {redact(response.text, self._token)}", status_code=404)
        if response.status_code == 422:
            detail = response.json().get("detail", [])
            msgs = "; ".join(f"{'.'.join(map(str, d.get('loc', [])))}: {d.get('msg')}" for d in detail)
            raise RemoteValidationError(f"emulator refused the request: {msgs}", detail=detail)
        if response.status_code >= 400:
            raise BackendUnavailable(
                f"emulator answered {response.status_code}", status_code=response.status_code
            )
        return response.json()

    def create_customer(
        self, *, external_id: str | None = None, email: str | None = None, name: str | None = None
    ) -> dict[str, Any]:
        body = {k: v for k, v in {"external_id": external_id, "email": email, "name": name}.items() if v}
        return dict(self._post("customers", body))

    def grant(
        self, customer: str, meter: str, units: int, *, rollover: bool = False, by_external_id: bool = True
    ) -> dict[str, Any]:
        """Grant ``units`` of ``meter`` (id or catalog slug) to a customer (external id by default)."""
        key = "external_customer_id" if by_external_id else "customer_id"
        return dict(
            self._post("credits", {key: customer, "meter_id": meter, "units": units, "rollover": rollover})
        )

    def create_plan(
        self, name: str, credits: Mapping[str, float], *, interval: str = "month", rollover: bool = False
    ) -> dict[str, Any]:
        return dict(
            self._post(
                "plans", {"name": name, "credits": dict(credits), "interval": interval, "rollover": rollover}
            )
        )

    def subscribe(
        self, customer: str, plan: str, *, started_at: str | None = None, by_external_id: bool = True
    ) -> dict[str, Any]:
        key = "external_customer_id" if by_external_id else "customer_id"
        body: dict[str, Any] = {key: customer, "plan": plan}
        if started_at is not None:
            body["started_at"] = started_at
        return dict(self._post("subscriptions", body))

    def reset(
        self, customer: str, meter: str | None = None, *, by_external_id: bool = True
    ) -> dict[str, Any]:
        key = "external_customer_id" if by_external_id else "customer_id"
        body: dict[str, Any] = {key: customer}
        if meter is not None:
            body["meter_id"] = meter
        return dict(self._post("reset", body))

    def settle(self, customer: str | None = None, *, by_external_id: bool = True) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if customer is not None:
            body["external_customer_id" if by_external_id else "customer_id"] = customer
        return dict(self._post("settle", body))

    def billing(self) -> dict[str, Any]:
        """Run Polar's billing pass now (``last_billed_event`` moves; billed meters freeze)."""
        return dict(self._post("billing"))

    def webhooks(self) -> list[dict[str, Any]]:
        """The webhook deliveries the emulator made or still tries."""
        import httpx

        try:
            response = httpx.get(
                f"{self.url}/__emulator__/webhooks",
                headers={"Authorization": f"Bearer {self._token}"},
                timeout=self._timeout,
            )
        except httpx.HTTPError as exc:
            raise BackendUnavailable(
                redact(f"emulator at {self.url} unreachable: {exc}", self._token)
            ) from None
        if response.status_code in (401, 403):
            raise AuthenticationError("emulator rejected the token", status_code=response.status_code)
        return list(response.json()["deliveries"])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m polar_metering.emulator",
        description="Serve a Polar-compatible API on the local engine. Token: --token, "
        "POLAR_EMULATOR_TOKEN or POLAR_ACCESS_TOKEN.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="port (0 picks a free one; default 8765)")
    parser.add_argument("--db", default=DEFAULT_DB, help=f"engine URL (default {DEFAULT_DB})")
    parser.add_argument("--token", default=None, help="bearer token to accept (prefer the environment)")
    parser.add_argument("--rate-limit", type=int, default=None, help="requests per minute per token")
    parser.add_argument(
        "--settle-delay",
        type=float,
        default=0.0,
        help="seconds of quiet before balances update, like Polar's 15 s debounce",
    )
    parser.add_argument("--catalog", default=None, help="metering.toml path or module:attribute")
    parser.add_argument("--organization-id", default=None, help="organization UUID objects report")
    parser.add_argument("--log-level", default="warning", help="uvicorn log level (default warning)")
    parser.add_argument(
        "--no-polar-quirks",
        dest="polar_quirks",
        action="store_false",
        help="do not play Polar's two customer-meter quirks (credits in catch-all meters, dotted properties)",
    )
    parser.add_argument(
        "--billing-interval",
        type=float,
        default=None,
        help="seconds between Polar's billing passes, which freeze billed meters "
        "(default 900; 0: only on demand)",
    )
    parser.add_argument("--webhook-url", default=None, help="send Polar's webhooks to this URL")
    parser.add_argument(
        "--webhook-secret",
        default=None,
        help="secret to sign webhooks with (prefer POLAR_EMULATOR_WEBHOOK_SECRET)",
    )
    parser.add_argument(
        "--webhook-backoff",
        type=float,
        default=2.0,
        help="first retry delay in seconds, doubled per attempt as Polar does (default 2)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m polar_metering.emulator``: serve until interrupted; 2 on a configuration error."""
    args = _parser().parse_args(argv)
    try:
        emulator_command(
            args.host,
            args.port,
            args.token,
            args.db,
            args.rate_limit,
            args.settle_delay,
            catalog=args.catalog,
            organization_id=args.organization_id,
            log_level=args.log_level,
            polar_quirks=args.polar_quirks,
            billing_interval=args.billing_interval,
            webhook_url=args.webhook_url,
            webhook_secret=args.webhook_secret,
            webhook_backoff=args.webhook_backoff,
        )
    except MeteringError as exc:
        message = redact(str(exc), args.token)
        if args.webhook_secret:
            message = redact(message, args.webhook_secret)
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0


def typer_app() -> Any:
    """A Typer sub-app: ``emulator`` serves, ``emulator admin <command>`` calls the admin routes.

    Wire it with ``app.add_typer(typer_app(), name="emulator")``. Needs the ``cli`` extra (typer).
    """
    from polar_metering.emulator._typer_app import build

    return build()


def __getattr__(name: str) -> Any:
    # ``polar-metering`` mounts a module's ``app`` attribute as a sub-command; build it on demand
    # so importing this module (``python -m polar_metering.emulator``) never needs typer.
    if name == "app":
        return typer_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
