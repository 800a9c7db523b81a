"""Typer wiring for ``polar-metering emulator`` (imported only when the ``cli`` extra is installed).

No ``from __future__ import annotations`` here: Typer reads these annotations at runtime.
"""

import json
from collections.abc import Callable
from typing import Annotated, Any

import typer

from polar_metering._exceptions import MeteringError, redact
from polar_metering.emulator._cli import DEFAULT_DB, DEFAULT_URL, AdminClient, emulator_command

__all__ = ["build"]

Url = Annotated[
    str, typer.Option("--url", envvar="POLAR_BASE_URL", help="Emulator base URL (or POLAR_BASE_URL).")
]
Token = Annotated[str | None, typer.Option("--token", help="Bearer token (default: POLAR_EMULATOR_TOKEN).")]
ById = Annotated[bool, typer.Option("--by-id", help="CUSTOMER is a Polar customer UUID, not an external id.")]


def _run(call: Callable[[], Any]) -> None:
    try:
        typer.echo(json.dumps(call(), indent=2))
    except MeteringError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def _serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0 picks a free one).")] = 8765,
    token: Token = None,
    db: Annotated[str, typer.Option(help="Engine URL.")] = DEFAULT_DB,
    rate_limit: Annotated[int | None, typer.Option(help="Requests per minute per token.")] = None,
    settle_delay: Annotated[float, typer.Option(help="Seconds of quiet before balances update.")] = 0.0,
    catalog: Annotated[str | None, typer.Option(help="metering.toml path or module:attribute.")] = None,
    polar_quirks: Annotated[
        bool,
        typer.Option(
            help="Play Polar's customer-meter quirks (credits in catch-all meters, dotted properties)."
        ),
    ] = True,
    billing_interval: Annotated[
        float | None,
        typer.Option(help="Seconds between Polar's billing passes (default 900; 0: on demand only)."),
    ] = None,
    webhook_url: Annotated[str | None, typer.Option(help="Send Polar's webhooks to this URL.")] = None,
    webhook_secret: Annotated[
        str | None, typer.Option(help="Webhook signing secret (default: POLAR_EMULATOR_WEBHOOK_SECRET).")
    ] = None,
    webhook_backoff: Annotated[float, typer.Option(help="First webhook retry delay in seconds.")] = 2.0,
) -> None:
    """Serve a Polar-compatible API on the local engine (binds 127.0.0.1 by default)."""
    if ctx.invoked_subcommand is not None:
        return
    try:
        emulator_command(
            host,
            port,
            token,
            db,
            rate_limit,
            settle_delay,
            catalog=catalog,
            polar_quirks=polar_quirks,
            billing_interval=billing_interval,
            webhook_url=webhook_url,
            webhook_secret=webhook_secret,
            webhook_backoff=webhook_backoff,
        )
    except MeteringError as exc:
        message = redact(str(exc), token)
        if webhook_secret:
            message = redact(message, webhook_secret)
        typer.echo(f"error: {message}", err=True)
        raise typer.Exit(2) from None


def _billing(url: Url = DEFAULT_URL, token: Token = None) -> None:
    """Run Polar's billing pass now: meters with billed events freeze filter and aggregation."""
    _run(lambda: AdminClient(url, token).billing())


def _customer(
    external_id: Annotated[str | None, typer.Option(help="Your id for the customer.")] = None,
    email: Annotated[str | None, typer.Option(help="Email (without one it is a team customer).")] = None,
    name: Annotated[str | None, typer.Option(help="Display name.")] = None,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Create a customer."""
    _run(lambda: AdminClient(url, token).create_customer(external_id=external_id, email=email, name=name))


def _grant(
    customer: str,
    meter: Annotated[str, typer.Argument(help="Meter id or catalog slug.")],
    units: Annotated[int, typer.Argument(help="Units to credit (negative revokes).")],
    rollover: Annotated[bool, typer.Option(help="Mark the credit as rollover credit.")] = False,
    by_id: ById = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Grant UNITS credits of METER to CUSTOMER."""
    _run(
        lambda: AdminClient(url, token).grant(
            customer, meter, units, rollover=rollover, by_external_id=not by_id
        )
    )


def _plan(
    name: str,
    credit: Annotated[list[str] | None, typer.Option(help="SLUG=UNITS, repeatable.")] = None,
    interval: Annotated[str, typer.Option(help="month or year.")] = "month",
    rollover: Annotated[bool, typer.Option(help="Carry unused credit into the next period.")] = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Create a plan: credits per meter for each billing period."""
    credits: dict[str, float] = {}
    for item in credit or []:
        slug, _, units = item.partition("=")
        try:
            credits[slug] = float(units)
        except ValueError:
            typer.echo(f"error: --credit {item!r}: expected SLUG=UNITS", err=True)
            raise typer.Exit(2) from None
    _run(lambda: AdminClient(url, token).create_plan(name, credits, interval=interval, rollover=rollover))


def _subscribe(
    customer: str,
    plan: str,
    started_at: Annotated[str | None, typer.Option(help="ISO-8601 period anchor (default now).")] = None,
    by_id: ById = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Subscribe CUSTOMER to PLAN."""
    _run(
        lambda: AdminClient(url, token).subscribe(
            customer, plan, started_at=started_at, by_external_id=not by_id
        )
    )


def _reset(
    customer: str,
    meter: Annotated[str | None, typer.Option(help="Meter id or slug.")] = None,
    by_id: ById = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Reset CUSTOMER's meters: a new usage window from now."""
    _run(lambda: AdminClient(url, token).reset(customer, meter, by_external_id=not by_id))


def _settle(
    customer: Annotated[str | None, typer.Argument(help="Only this customer (default: everyone).")] = None,
    by_id: ById = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
) -> None:
    """Update balances now instead of waiting for the settle delay."""
    _run(lambda: AdminClient(url, token).settle(customer, by_external_id=not by_id))


def build() -> typer.Typer:
    """The ``emulator`` command with its ``admin`` group."""
    app = typer.Typer(help="Polar-compatible emulator on the local engine.", invoke_without_command=True)
    app.callback()(_serve)
    admin = typer.Typer(help="Admin commands against a running emulator (same token).")
    for name, command in (
        ("customer", _customer),
        ("grant", _grant),
        ("plan", _plan),
        ("subscribe", _subscribe),
        ("reset", _reset),
        ("settle", _settle),
        ("billing", _billing),
    ):
        admin.command(name)(command)
    app.add_typer(admin, name="admin")
    return app
