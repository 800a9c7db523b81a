"""``polar-metering check-meters``: flag catalog meters that will behave surprisingly on Polar.

Reads the catalog only (no token, no network). Exit codes: 0 nothing found, 1 findings printed,
4 the catalog could not be loaded.
"""

from __future__ import annotations

import typer
from rich.console import Console
from rich.markup import escape

from polar_metering._exceptions import ConfigurationError
from polar_metering._meter_checks import check_meters

__all__ = ["EXIT_CONFIG", "EXIT_FINDINGS", "EXIT_OK", "app"]

EXIT_OK, EXIT_FINDINGS, EXIT_CONFIG = 0, 1, 4

app = typer.Typer(invoke_without_command=True, add_completion=False)


@app.callback()
def check_meters_command(
    catalog: str | None = typer.Option(
        None,
        help="metering.toml path or module:attribute (default: ./metering.toml, else the default meters).",
    ),
) -> None:
    """Flag meters that will behave surprisingly on Polar, with the reason and the fix."""
    from polar_metering._cli_setup import _catalog

    console = Console(highlight=False, soft_wrap=True)
    try:
        cat, source = _catalog(catalog)
    except ConfigurationError as exc:
        console.print(f"[red]configuration error:[/] {escape(str(exc))}")
        raise typer.Exit(EXIT_CONFIG) from None
    findings = check_meters(cat)
    console.print(f"catalog: {escape(source)} ({len(cat.meters)} meters)")
    for finding in findings:
        console.print(f"[yellow]{escape(finding.meter)}[/] [bold]{finding.kind}[/]")
        console.print(f"  why: {escape(finding.reason)}")
        console.print(f"  fix: {escape(finding.fix)}")
    if not findings:
        console.print("no surprises: every meter reads on Polar as it reads here")
        return
    console.print(f"{len(findings)} finding(s) in {len({f.meter for f in findings})} meter(s)")
    raise typer.Exit(EXIT_FINDINGS)
