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
    _add_optional(
        app, "polar_metering._cli_reconcile", "reconcile", "Compare a polar:// ledger with Polar's usage."
    )
    return app


# The extra each command needs beyond ``cli``, and the modules that extra brings. A command whose
# extra is missing is still listed, and answers any arguments, --help included, with one line
# naming the extra (never a traceback, never "No such option").
_EXTRAS: dict[str, tuple[str, tuple[str, ...]]] = {
    "dashboard": ("dashboard", ("starlette", "uvicorn", "jinja2")),
    "emulator": ("emulator", ("starlette", "uvicorn", "pydantic", "polar", "httpx")),
    "outbox": ("polar", ("polar", "httpx")),
    "reconcile": ("polar", ("polar", "httpx")),
}


def _missing_extra(name: str) -> str | None:
    """The extra ``name`` needs and lacks, or ``None``."""
    import importlib.util

    extra, modules = _EXTRAS.get(name, (None, ()))
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            return extra
    return None


def needs_extra_line(name: str, extra: str) -> str:
    return f"polar-metering {name} needs the {extra} extra: pip install 'polar-metering[{extra}]'"


def _add_placeholder(app: Any, name: str, help_text: str, extra: str) -> None:
    import typer

    line = needs_extra_line(name, extra)

    @app.command(  # type: ignore[untyped-decorator, unused-ignore]
        name=name,
        help=f"{help_text} (needs the {extra} extra)",
        add_help_option=False,
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )
    def _missing() -> None:
        typer.echo(line, err=True)
        raise typer.Exit(4)


def _add_optional(app: Any, module: str, name: str, help_text: str) -> None:
    """Mount a sub-command from ``module`` (a Typer app named ``app`` or a command function ``name``)."""
    import importlib

    extra = _missing_extra(name)
    if extra is not None:
        _add_placeholder(app, name, help_text, extra)
        return
    try:
        mod = importlib.import_module(module)
    except ImportError:
        _add_placeholder(app, name, help_text, _EXTRAS.get(name, ("all", ()))[0])
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
