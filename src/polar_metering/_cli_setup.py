"""``polar-metering setup``: create the catalog's missing meters in Polar and report drift.

Exit codes (stable, for scripts and CI):

====  ==========================================================================================
0     done: every catalog meter exists in Polar (drift is reported as a warning)
1     drift found and ``--strict`` given
2     authentication failed: token missing a scope or rejected (401/403)
3     Polar refused to create a meter (422); its detail is printed
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

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from polar_metering._catalog import Catalog, load_catalog
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
    if source is not None:
        return load_catalog(source), source
    if Path("metering.toml").is_file():
        return load_catalog("metering.toml"), "metering.toml"
    return load_catalog(None), "the four default meters"


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


def _print_report(console: Console, report: SetupReport) -> None:
    console.print(_table(report))
    for note in report.notes:
        console.print(escape(note), highlight=False)
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
        help="metering.toml path or module:attribute (default: ./metering.toml, else the default meters).",
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
    """Create the catalog's missing meters in Polar (by name) and report drift. Safe to run again.

    Reads the token from POLAR_ACCESS_TOKEN.
    """
    console = Console(highlight=False, soft_wrap=True)
    try:
        cat, source = _catalog(catalog)
        console.print(f"catalog: {escape(source)} ({len(cat.meters)} meters)")
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
    if report.drift and strict:
        raise typer.Exit(EXIT_DRIFT)
