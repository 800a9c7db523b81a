"""``polar-metering outbox status | dead-letters | retry | drain``: look into and empty an outbox file.

The file is the one the Polar backend writes (``--path``, ``METERING_OUTBOX``, or the default for
the destination: ``polar-metering-outbox-<environment>.db``). ``drain`` sends through polar-sdk with
``POLAR_ACCESS_TOKEN``; the other commands never contact Polar.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from polar_metering._exceptions import MeteringError
from polar_metering.delivery._outbox import Outbox

if TYPE_CHECKING:
    from polar_metering.backends._polar._sdk import PolarSettings

__all__ = ["app"]

app = typer.Typer(no_args_is_help=True, add_completion=False)
_console = Console()

PathOption = Annotated[
    str | None,
    typer.Option(
        "--path",
        help="Outbox file (default: METERING_OUTBOX or the "
        "destination's default file in the working directory).",
    ),
]
EnvOption = Annotated[
    str | None,
    typer.Option(
        "--environment", envvar="POLAR_ENVIRONMENT", help="sandbox or production (picks the default file)."
    ),
]
BaseUrlOption = Annotated[
    str | None,
    typer.Option(
        "--base-url", envvar="POLAR_BASE_URL", help="Another Polar-compatible server (the emulator)."
    ),
]


def _settings(environment: str | None, base_url: str | None, *, need_token: bool) -> PolarSettings:
    from polar_metering.backends._polar._sdk import resolve_settings

    token = os.environ.get("POLAR_ACCESS_TOKEN")
    # Reading a file needs no token; a placeholder only picks the default path and never leaves here.
    return resolve_settings(
        access_token=token if need_token else (token or "unused"), environment=environment, base_url=base_url
    )


def _open(path: str | None, environment: str | None, base_url: str | None, *, send: bool) -> Outbox:
    from polar_metering.backends._polar._backend import delivery_config

    try:
        settings = _settings(environment, base_url, need_token=send)
        config = delivery_config(settings, path or os.environ.get("METERING_OUTBOX"))
        if not os.path.exists(config.path):
            raise MeteringError(f"outbox: no outbox file at {config.path}")
        if not send:
            return Outbox(config, None)
        from polar_metering.backends._polar._transport import SdkTransport

        return Outbox(config, SdkTransport(settings))
    except MeteringError as exc:
        _console.print(f"[red]error:[/] {exc}")
        raise typer.Exit(4) from None


@app.command()
def status(path: PathOption = None, environment: EnvOption = None, base_url: BaseUrlOption = None) -> None:
    """How many events wait, are being sent, or were refused; the oldest one's age; disk use."""
    outbox = _open(path, environment, base_url, send=False)
    try:
        s = outbox.status()
    finally:
        outbox.close(timeout=0)
    table = Table(title=f"Outbox {s.path}", show_header=False)
    age = "-" if s.oldest_age_s is None else f"{s.oldest_age_s:.1f} s"
    for label, value in (
        ("pending", s.pending),
        ("being sent", s.leased),
        ("dead letters", s.dead),
        ("oldest pending", age),
        ("disk", f"{s.bytes:,} of {s.max_bytes:,} bytes"),
        ("paused until", s.paused_until.isoformat() if s.paused_until else "-"),
    ):
        table.add_row(label, str(value))
    _console.print(table)


@app.command("dead-letters")
def dead_letters(
    path: PathOption = None,
    environment: EnvOption = None,
    base_url: BaseUrlOption = None,
    limit: Annotated[int, typer.Option(min=1, help="How many to show.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """Events Polar refused (422), with Polar's reason."""
    outbox = _open(path, environment, base_url, send=False)
    try:
        letters = outbox.dead_letters(limit)
    finally:
        outbox.close(timeout=0)
    if as_json:
        for d in letters:
            typer.echo(json.dumps(d.to_dict()))
        return
    table = Table(title=f"{len(letters)} dead letters")
    for column in ("id", "external_id", "event", "reason"):
        table.add_column(column)
    for d in letters:
        table.add_row(str(d.id), d.external_id, str(d.event.get("name")), d.reason)
    _console.print(table)


@app.command()
def retry(
    path: PathOption = None,
    environment: EnvOption = None,
    base_url: BaseUrlOption = None,
    ids: Annotated[list[int] | None, typer.Argument(help="Dead-letter ids (default: all).")] = None,
) -> None:
    """Put dead letters back in the queue (after fixing what Polar refused, e.g. a missing meter)."""
    outbox = _open(path, environment, base_url, send=False)
    try:
        count = outbox.retry_dead_letters(ids or None)
    finally:
        outbox.close(timeout=0)
    _console.print(f"{count} event(s) queued again")


@app.command()
def drain(
    path: PathOption = None,
    environment: EnvOption = None,
    base_url: BaseUrlOption = None,
    timeout: Annotated[float, typer.Option(min=0, help="Seconds to keep sending.")] = 60.0,
) -> None:
    """Send everything in the outbox now; exit 1 if something is still there when time runs out."""
    outbox = _open(path, environment, base_url, send=True)
    try:
        delivered = outbox.drain(timeout)
        left = outbox.status()
    finally:
        outbox.close(timeout=0)
    if delivered:
        _console.print(
            f"outbox drained: everything was delivered or dead-lettered ({left.dead} dead letters)"
        )
        return
    _console.print(f"[yellow]not drained:[/] {left.pending + left.leased} event(s) still pending")
    raise typer.Exit(1)
