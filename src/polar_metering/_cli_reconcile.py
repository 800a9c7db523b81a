"""``polar-metering reconcile``: a ``polar://`` ledger against Polar, per customer and meter.

::

    polar-metering reconcile                          # every customer, the current period
    polar-metering reconcile --period previous --customer user_123 --format json

Exit status 0 when every difference is explained by events still queued, in the outbox or
dead-lettered; 1 when one is not (``_reconcile.py``).
"""

from __future__ import annotations

import json
from typing import Annotated

import typer

__all__ = ["reconcile"]


def reconcile(
    period: Annotated[str, typer.Option(help="current or previous billing period.")] = "current",
    customer: Annotated[
        list[str] | None, typer.Option("--customer", help="Only this customer (repeatable).")
    ] = None,
    url: Annotated[str | None, typer.Option(help="polar:// URL (default: METERING_URL).")] = None,
    ledger: Annotated[
        str | None, typer.Option(help="Ledger database URL (default: METERING_LEDGER).")
    ] = None,
    outbox: Annotated[str | None, typer.Option(help="Outbox file (default: METERING_OUTBOX).")] = None,
    catalog: Annotated[str | None, typer.Option(help="metering.toml path or module:attribute.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table or json.")] = "table",
) -> None:
    """Compare the ledger's usage with Polar's and explain the differences."""
    from polar_metering._client import Metering
    from polar_metering._exceptions import MeteringError
    from polar_metering._reconcile import reconcile as run

    if fmt not in ("table", "json"):
        typer.echo(f"--format: must be table or json, got {fmt!r}", err=True)
        raise typer.Exit(2)
    if period not in ("current", "previous"):
        typer.echo(f"--period: must be current or previous, got {period!r}", err=True)
        raise typer.Exit(2)
    # Read-only: no delivery threads, so what the outbox holds stays put while it is being counted.
    options: dict[str, object] = {"catalog": catalog, "backend_options": {"background": False}}
    if ledger is not None:
        options["ledger"] = ledger
    if outbox is not None:
        options["outbox_path"] = outbox
    try:
        client = Metering(url, **{k: v for k, v in options.items() if v is not None})  # type: ignore[arg-type]
        try:
            rows = run(client, period=period, customers=customer)  # type: ignore[arg-type]
        finally:
            client.close(timeout=0)
    except MeteringError as exc:
        typer.echo(f"reconcile: {exc}", err=True)
        raise typer.Exit(2) from None
    if fmt == "json":
        typer.echo(json.dumps([r.to_dict() for r in rows], indent=2))
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"Ledger vs Polar, {period} period")
        for column in ("customer", "meter", "ledger", "polar", "queued", "pending", "dead", "unexplained"):
            table.add_column(column, justify="left" if column in ("customer", "meter") else "right")
        for r in rows:
            unexplained = "?" if r.unexplained is None else f"{r.unexplained:g}"
            style = "" if r.ok else "[red]"
            table.add_row(
                r.customer,
                r.meter,
                f"{r.ledger:g}",
                f"{r.polar:g}",
                f"{r.queued:g}",
                f"{r.pending:g}",
                f"{r.dead:g}",
                f"{style}{unexplained}",
            )
        Console().print(table)
    if not all(r.ok for r in rows):
        raise typer.Exit(1)
