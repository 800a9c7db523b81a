"""``polar-metering setup``: create the catalog's missing meters and plans in Polar and report drift.

Exit codes (stable, for scripts and CI):

====  ==========================================================================================
0     done: every catalog meter and plan exists in Polar (drift is reported as a warning)
1     drift found (a meter's definition, a plan's credits, interval or rollover) and ``--strict`` given
2     authentication failed: token missing a scope or rejected (401/403)
3     Polar refused to create a meter or plan (422), or a plan cannot be provisioned; details printed
4     configuration error: no ``POLAR_ACCESS_TOKEN``, bad catalog, bad ``--base-url``
5     Polar unreachable or failing (network, 5xx, 429)
====  ==========================================================================================

Drift does not fail the command by default: Polar locks a meter's filter and aggregation once it
has aggregated events (server/polar/meter/service.py), so some drift cannot be fixed, and a deploy step that
runs ``setup``
must not break forever on it. ``--strict`` makes it fail for pipelines that want it to.

The token is read from ``POLAR_ACCESS_TOKEN`` only: a ``--token`` option would leave it in shell
history and in the process list.
"""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from polar_metering._catalog import Catalog, resolve_catalog
from polar_metering._exceptions import (
    AuthenticationError,
    BackendError,
    ConfigurationError,
    RemoteValidationError,
)
from polar_metering._setup import OFFLINE, SetupReport, run_setup

__all__ = [
    "EXIT_AUTH",
    "EXIT_CONFIG",
    "EXIT_DRIFT",
    "EXIT_OK",
    "EXIT_UNAVAILABLE",
    "EXIT_VALIDATION",
    "setup",
]

EXIT_OK, EXIT_DRIFT, EXIT_AUTH, EXIT_VALIDATION, EXIT_CONFIG, EXIT_UNAVAILABLE = 0, 1, 2, 3, 4, 5

_STYLE = {
    "created": "[green]created[/]",
    "would_create": "[cyan]would create[/]",
    "exists": "exists",
    "drift": "[yellow]drift[/]",
    "error": "[red]error[/]",
}


def _catalog(source: str | None) -> tuple[Catalog, str]:
    """``--catalog``, else ``METERING_CATALOG``, else ``./metering.toml``, else the default meters:
    the catalog ``init()`` reads too."""
    return resolve_catalog(source)


def _table(report: SetupReport) -> Table:
    if report.server == OFFLINE:
        title = "Catalog meters (dry run offline: Polar not asked)"
    else:
        title = f"Polar meters at {report.server}" + (" (dry run)" if report.dry_run else "")
    table = Table(title=escape(title))
    for column in ("meter", "name", "status", "polar id"):
        table.add_column(column)
    for r in report.results:
        table.add_row(escape(r.slug), escape(r.name), _STYLE[r.status], escape(r.polar_id or "-"))
    return table


def _plan_table(report: SetupReport) -> Table:
    title = f"Polar products for plans at {report.server}" + (" (dry run)" if report.dry_run else "")
    table = Table(title=escape(title))
    for column in ("plan", "status", "polar product", "benefits created"):
        table.add_column(column)
    for p in report.plans:
        kind = " (paid)" if p.paid else ""
        benefits = ", ".join(p.benefits) or "-"
        table.add_row(escape(p.name + kind), _STYLE[p.status], escape(p.product_id or "-"), escape(benefits))
    return table


def _print_report(console: Console, report: SetupReport) -> None:
    console.print(_table(report))
    for note in report.notes:
        console.print(escape(note), highlight=False)
    if report.plans:
        console.print(_plan_table(report))
    for p in report.plan_drift:
        console.print(
            f"[yellow]drift:[/] plan {escape(repr(p.name))}: Polar's product {escape(p.product_id or '')} "
            "grants other credits than the plan; setup leaves it unchanged:"
        )
        for line in p.drift:
            console.print(f"      {escape(line)}", highlight=False)
    for r in report.drift:
        console.print(
            f"[yellow]drift:[/] Polar's meter {escape(repr(r.name))} counts differently from the catalog's "
            f"{escape(repr(r.slug))}; setup leaves it unchanged. Catalog (-) vs Polar (+):"
        )
        console.print(escape(r.diff or ""), highlight=False)
    for line in report.errors:
        console.print(f"[red]error:[/] {escape(line)}", highlight=False)
    for finding in report.warnings:
        console.print(f"[yellow]warning:[/] {escape(str(finding))}", highlight=False)
    if report.warnings:
        console.print("Run `polar-metering check-meters` for the same list without contacting Polar.")
    console.print(escape(str(report).splitlines()[-1]), highlight=False)


def setup(
    catalog: str | None = typer.Option(
        None,
        help="metering.toml path or module:attribute (default: METERING_CATALOG, else ./metering.toml, "
        "else the default meters).",
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Show what would be created; change nothing."),
    environment: str | None = typer.Option(
        None, envvar="POLAR_ENVIRONMENT", help="sandbox or production (default production)."
    ),
    base_url: str | None = typer.Option(
        None, envvar="POLAR_BASE_URL", help="Another server speaking Polar's API, e.g. the emulator."
    ),
    strict: bool = typer.Option(False, "--strict", help="Exit with 1 when a meter has drifted."),
) -> None:
    """Create the catalog's missing meters (by name) and plans (free products with meter-credit
    benefits) in Polar and report drift. Safe to run again.

    Reads the token from POLAR_ACCESS_TOKEN.
    """
    console = Console(highlight=False, soft_wrap=True)
    try:
        cat, source = _catalog(catalog)
        console.print(f"catalog: {escape(source)} ({escape(cat.describe())})")
        report = run_setup(cat, environment=environment, base_url=base_url, dry_run=dry_run)
    except ConfigurationError as exc:
        console.print(f"[red]configuration error:[/] {escape(str(exc))}")
        raise typer.Exit(EXIT_CONFIG) from None
    except AuthenticationError as exc:
        console.print(f"[red]authentication failed:[/] {escape(str(exc))}")
        raise typer.Exit(EXIT_AUTH) from None
    except RemoteValidationError as exc:
        console.print(f"[red]Polar rejected the request:[/] {escape(str(exc))}")
        raise typer.Exit(EXIT_VALIDATION) from None
    except BackendError as exc:
        console.print(f"[red]Polar unavailable:[/] {escape(str(exc))}")
        raise typer.Exit(EXIT_UNAVAILABLE) from None
    _print_report(console, report)
    if report.errors:
        raise typer.Exit(EXIT_VALIDATION)
    if (report.drift or report.plan_drift) and strict:
        raise typer.Exit(EXIT_DRIFT)
