"""``polar-metering usage``: a customer's usage, every customer's, or a customer's history.

::

    polar-metering usage user_123                 # a table; --json for a JSON list
    polar-metering usage --all --format csv       # one row per customer and meter
    polar-metering usage user_123 --history --interval day --format json

Reading never creates a database: pointed at a SQLite file that does not exist, it says so.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from polar_metering._client import Metering
    from polar_metering._status import UsageStatus

__all__ = ["open_client", "usage"]

_FORMATS = ("table", "csv", "json")
_HISTORY_SPAN = {
    "hour": timedelta(hours=48),
    "day": timedelta(days=31),
    "week": timedelta(weeks=16),
    "month": timedelta(days=365),
    "year": timedelta(days=5 * 365),
}


def _sqlite_file(url: str) -> str | None:
    """The file a ``sqlite://`` URL names, or ``None`` (memory, or not SQLite)."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:
        return None
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database or ""
    if database in ("", ":memory:") or database.startswith("file:"):
        return None
    return database


def open_client(url: str | None, catalog: str | None) -> Metering:
    """A client for a report or the dashboard, refusing to create a SQLite file that is not there."""
    from polar_metering._client import Metering
    from polar_metering._config import DEFAULT_URL
    from polar_metering._exceptions import ConfigurationError

    target = url or os.environ.get("METERING_URL") or DEFAULT_URL
    path = _sqlite_file(target)
    if path is not None and not os.path.exists(path):
        raise ConfigurationError(
            f"url: there is no database at {os.path.abspath(path)}: nothing was tracked there yet, or "
            "--url / METERING_URL points elsewhere"
        )
    return Metering(target, catalog=catalog)


def _number(value: float | None) -> float | int | None:
    # History buckets carry no aggregation: a whole quantity reads as one.
    from polar_metering._status import whole

    return whole(value)


_ROW_FIELDS = ("meter", "current", "limit", "remaining", "period_start", "period_end", "allowed")


def _row(customer: str | None, status: UsageStatus) -> dict[str, Any]:
    # The same numbers as every other JSON view of a status (the integrations' 429 body, jsonable()).
    data = status.to_dict()
    row: dict[str, Any] = {} if customer is None else {"customer": customer}
    row.update((key, data[key]) for key in _ROW_FIELDS)
    return row


def _emit(rows: list[dict[str, Any]], fmt: str, title: str) -> None:
    if fmt == "json":
        typer.echo(json.dumps(rows, indent=2))
        return
    columns = list(rows[0]) if rows else ["customer", "meter", "current", "limit", "remaining"]
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: "" if v is None else v for k, v in r.items()})
        typer.echo(out.getvalue(), nl=False)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="right" if column in ("current", "limit", "remaining") else "left")
    for r in rows:
        table.add_row(*("-" if v is None else str(v) for v in r.values()))
    Console().print(table)


def _all_customers(client: Metering) -> Iterable[tuple[str, dict[str, UsageStatus]]]:
    from polar_metering.backends._engine.backend import LocalEngine

    backend = client.backend
    if isinstance(backend, LocalEngine):
        from polar_metering.backends._engine import reports
        from polar_metering.backends._engine.backend import to_us

        meters = [backend._meter_id(m) for m in client.catalog.meters]
        customers = sorted(
            c for c, _ in reports.ranking(backend, meters, now_us=to_us(client.config.clock.now()))
        )
        for customer in customers:
            yield customer, client.get_all_usage(customer)
        return
    from polar_metering.dashboard._polar_source import PolarSource

    source = PolarSource(client, background=False)
    try:
        source.copy.sweep()
        view = source.overview(per_page=10**9)
        for row in sorted(view.rows, key=lambda r: r.customer):
            yield row.customer, {u.slug: u.status for u in row.uses}
    finally:
        source.close()


def usage(
    customer: Annotated[str | None, typer.Argument(help="The customer (external id) to show.")] = None,
    all_customers: Annotated[bool, typer.Option("--all", help="Every customer, one row per meter.")] = False,
    history: Annotated[
        bool, typer.Option("--history", help="Usage over time instead of this period.")
    ] = False,
    interval: Annotated[str, typer.Option(help="With --history: hour, day, week, month or year.")] = "day",
    start: Annotated[
        str | None,
        typer.Option(help="With --history: ISO-8601 start (default: a span that suits the interval)."),
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="table, csv or json.")] = "table",
    as_json: Annotated[bool, typer.Option("--json", help="Same as --format json.")] = False,
    url: Annotated[
        str | None, typer.Option(envvar="METERING_URL", help="Backend URL (default sqlite:///metering.db).")
    ] = None,
    catalog: Annotated[
        str | None,
        typer.Option(
            help="metering.toml or module:attribute (default: METERING_CATALOG, else ./metering.toml, "
            "else the default meters)."
        ),
    ] = None,
) -> None:
    """Show usage: a customer's this period, every customer's (--all), or over time (--history)."""
    from polar_metering._exceptions import MeteringError

    fmt = "json" if as_json else fmt.lower()
    problem = None
    if fmt not in _FORMATS:
        problem = f"--format must be one of {', '.join(_FORMATS)}"
    elif all_customers and customer is not None:
        problem = "give a customer or --all, not both"
    elif not all_customers and customer is None:
        problem = "give a customer id, or --all"
    elif history and all_customers:
        problem = "--history shows one customer; drop --all"
    elif history and interval not in _HISTORY_SPAN:
        problem = f"--interval must be one of {', '.join(_HISTORY_SPAN)}"
    if problem:
        typer.echo(f"error: {problem}", err=True)
        raise typer.Exit(2)
    try:
        with open_client(url, catalog) as client:
            # On stderr, so --json and --format csv stay parseable.
            typer.echo(f"catalog: {client.catalog_source} ({client.catalog.describe()})", err=True)
            if all_customers:
                rows = [_row(c, s) for c, statuses in _all_customers(client) for s in statuses.values()]
                _emit(rows, fmt, "Usage this billing period, every customer")
            elif history:
                assert customer is not None
                _emit(
                    _history_rows(client, customer, interval, start),
                    fmt,
                    f"Usage of {customer} per {interval}",
                )
            else:
                assert customer is not None
                statuses = client.get_all_usage(customer)
                _emit([_row(None, s) for s in statuses.values()], fmt, f"Usage of {customer}")
    except MeteringError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(4) from None


def _history_rows(client: Metering, customer: str, interval: str, start: str | None) -> list[dict[str, Any]]:
    from polar_metering._events import parse_timestamp

    now = client.config.clock.now()
    first: datetime = parse_timestamp(start, "start") if start else now - _HISTORY_SPAN[interval]
    rows: dict[datetime, dict[str, Any]] = {}
    for meter in client.catalog.meters:
        points = client.usage_history(customer, meter.slug, start=first, end=now, interval=interval)  # type: ignore[arg-type]
        for when, quantity in points:
            rows.setdefault(when, {"start": when.isoformat()})[meter.slug] = _number(quantity)
    return [rows[k] for k in sorted(rows)]
