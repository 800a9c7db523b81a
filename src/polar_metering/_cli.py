"""The ``polar-metering`` command: demo, usage, dashboard, setup, emulator, outbox.

It needs the ``cli`` extra (Typer and Rich); without it, ``main`` prints how to install it.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["main"]

_HINT = "The polar-metering command needs its extra: pip install 'polar-metering[cli]'"


def _build_app() -> Any:
    import typer
    from rich.console import Console
    from rich.table import Table

    from polar_metering._status import UsageStatus

    app = typer.Typer(
        name="polar-metering",
        help="Usage-based billing on Polar meters: demo, setup, emulator, usage, dashboard, outbox.",
        no_args_is_help=True,
        add_completion=False,
    )
    console = Console()

    def fmt(value: float | None) -> str:
        from polar_metering._status import _fmt

        if value is None:
            return "-"
        if value != value or abs(value) >= 1e15 or value == int(value):  # NaN, huge, or whole
            return _fmt(value)
        return f"{value:.2f}"

    def usage_table(title: str, rows: dict[str, dict[str, UsageStatus]]) -> Table:
        table = Table(title=title)
        for column in ("customer", "meter", "current", "limit", "remaining", "allowed"):
            table.add_column(
                column, justify="right" if column in ("current", "limit", "remaining") else "left"
            )
        for customer, statuses in rows.items():
            for slug, s in statuses.items():
                table.add_row(
                    customer,
                    slug,
                    fmt(s.current),
                    fmt(s.limit),
                    fmt(s.remaining),
                    "[green]yes[/]" if s.allowed else "[red]no[/]",
                )
        return table

    @app.command()
    def demo(
        url: str = typer.Option(None, help="Backend URL; default: a fresh SQLite file in a temp directory."),
    ) -> None:
        """Simulate a small SaaS on the embedded engine and print its usage."""
        from polar_metering._demo import run_demo

        report = run_demo(url, say=lambda line: console.print(line, markup=False, highlight=False))
        console.print(usage_table("Usage this billing period", report.usage))
        console.print(
            f"{report.events} events tracked; {len(report.blocked)} actions refused at their limit."
        )
        console.print(
            usage_table("org_globex after the month turned over", {"org_globex": report.after_reset})
        )

    def version(value: bool) -> None:
        if value:
            from polar_metering._version import __version__

            typer.echo(f"polar-metering {__version__}")
            raise typer.Exit()

    @app.callback()
    def root(
        show_version: bool = typer.Option(
            False, "--version", callback=version, is_eager=True, help="Print the version and exit."
        ),
    ) -> None:
        """Usage-based billing on Polar meters: demo, setup, emulator, usage, dashboard, outbox."""

    _add_optional(app, "polar_metering._cli_usage", "usage", "Show usage: one customer, --all, or --history.")
    _add_optional(
        app, "polar_metering.dashboard._cli", "dashboard", "Serve the real-time usage dashboard."
    )
    _add_optional(
        app, "polar_metering._cli_setup", "setup", "Create missing meters in Polar and report drift."
    )
    _add_optional(app, "polar_metering._cli_check", "check-meters", "Flag meters that surprise on Polar.")
    _add_optional(app, "polar_metering.emulator._cli", "emulator", "Run the Polar-compatible emulator.")
    _add_optional(app, "polar_metering.delivery._cli", "outbox", "Inspect and drain the delivery outbox.")
    return app


def _add_optional(app: Any, module: str, name: str, help_text: str) -> None:
    """Mount a sub-command from ``module`` (a Typer app named ``app`` or a command function ``name``)."""
    import importlib

    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        missing = e.name or module

        @app.command(name=name, help=help_text)  # type: ignore[untyped-decorator, unused-ignore]
        def _missing() -> None:
            import typer

            typer.echo(
                f"'{name}' is unavailable: {missing} could not be imported; "
                "pip install 'polar-metering[all]'",
                err=True,
            )
            raise typer.Exit(4)

        return
    sub = getattr(mod, "app", None)
    if sub is not None:
        app.add_typer(sub, name=name, help=help_text)
    else:
        app.command(name=name, help=help_text)(getattr(mod, name))


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``polar-metering`` console script."""
    try:
        app = _build_app()
    except ImportError:
        print(_HINT, file=sys.stderr)
        raise SystemExit(4) from None
    app(args=argv, prog_name="polar-metering")


if __name__ == "__main__":  # pragma: no cover
    main()
