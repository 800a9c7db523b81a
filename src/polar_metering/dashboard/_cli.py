"""``polar-metering dashboard``: serve the dashboard on 127.0.0.1 with a login token.

Without ``--token`` a token is generated and the login address is printed once; a token given with
``--token`` (or ``METERING_DASHBOARD_TOKEN``) is never printed. Access lines go to stderr with the
path only, never the query string, so the token stays out of logs.
"""

from __future__ import annotations

import logging
import socket
import sys
from typing import Annotated

import typer

__all__ = ["dashboard"]

TOKEN_ENV = "METERING_DASHBOARD_TOKEN"


def _listen(host: str, port: int) -> socket.socket:
    from polar_metering._exceptions import ConfigurationError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigurationError(f"port: cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(128)
    return sock


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def dashboard(
    url: Annotated[
        str | None,
        typer.Option(envvar="METERING_URL", help="Backend URL (default sqlite:///metering.db)."),
    ] = None,
    host: Annotated[
        str, typer.Option(help="Interface to listen on; keep 127.0.0.1 unless you must.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0 picks a free one).", min=0, max=65535)] = 8766,
    token: Annotated[
        str | None,
        typer.Option(
            envvar=TOKEN_ENV,
            show_envvar=True,
            help="Login token (at least 16 characters); generated and printed once when omitted.",
        ),
    ] = None,
    catalog: Annotated[
        str | None,
        typer.Option(
            help="metering.toml or module:attribute (default: METERING_CATALOG, else ./metering.toml, "
            "else the default meters)."
        ),
    ] = None,
    allow_actions: Annotated[
        bool,
        typer.Option(
            "--allow-actions", help="Enable actions that change data (retry dead letters, grant credits)."
        ),
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No access log lines.")] = False,
) -> None:
    """Serve the real-time usage dashboard (read-only unless --allow-actions)."""
    import uvicorn

    from polar_metering._cli_usage import open_client
    from polar_metering._exceptions import MeteringError
    from polar_metering.dashboard._app import create_app
    from polar_metering.dashboard._auth import new_token

    err = typer.echo
    generated = token is None
    secret = token if token is not None else new_token()
    try:
        client = open_client(url, catalog)
        try:
            app = create_app(client, token=secret, allow_actions=allow_actions, close_client=True)
            sock = _listen(host, port)
        except BaseException:
            client.close()
            raise
    except MeteringError as exc:
        err(f"error: {exc}", err=True)
        raise typer.Exit(4) from None
    err(f"catalog: {client.catalog_source} ({client.catalog.describe()})", err=True)
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    address = f"http://{shown}:{bound_port}/"
    if generated:
        print(f"polar-metering dashboard: open {address}?token={secret}", flush=True)
    else:
        print(f"polar-metering dashboard: open {address}?token=<your token>", flush=True)
    if not _is_loopback(bound_host):
        err(
            f"warning: listening on {bound_host}, reachable from other machines; only the token guards it",
            err=True,
        )
    if allow_actions:
        err("actions are enabled: dead-letter retries and credit grants can be made from the pages", err=True)
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("polar_metering.dashboard.access").setLevel(logging.WARNING if quiet else logging.INFO)
    config = uvicorn.Config(app, log_config=None, access_log=False, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
