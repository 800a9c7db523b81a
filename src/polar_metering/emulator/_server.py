"""Running the emulator: ``serve`` (blocking, uvicorn), and two context managers for tests and
scripts: :func:`running_emulator` (a real ``python -m polar_metering.emulator`` process) and
:func:`emulator_thread` (uvicorn in a background thread over an engine you hold, e.g. one on a
``ManualClock``).

Both bind ``127.0.0.1`` on a free port chosen by the OS and return once the server answers.
"""

from __future__ import annotations

import contextlib
import os
import queue
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from polar_metering._exceptions import BackendUnavailable, ConfigurationError, redact

if TYPE_CHECKING:
    from polar_metering._catalog import Catalog
    from polar_metering.backends._engine.backend import LocalEngine

__all__ = [
    "READY_PREFIX",
    "WEBHOOK_SECRET_ENV",
    "EmulatorHandle",
    "emulator_thread",
    "running_emulator",
    "serve",
]

#: The line ``python -m polar_metering.emulator`` prints once its socket listens.
READY_PREFIX = "polar-metering emulator listening on "
TOKEN_ENV = "POLAR_EMULATOR_TOKEN"
WEBHOOK_SECRET_ENV = "POLAR_EMULATOR_WEBHOOK_SECRET"


@dataclass(frozen=True)
class EmulatorHandle:
    """A running emulator: point ``Polar(token, base_url=handle.base_url)`` at it.

    ``engine`` is set only for :func:`emulator_thread`; ``db_url`` and ``pid`` only for
    :func:`running_emulator`.
    """

    base_url: str
    token: str = field(repr=False)
    db_url: str | None = None
    engine: LocalEngine | None = field(default=None, repr=False)
    pid: int | None = None

    @property
    def headers(self) -> dict[str, str]:
        """The ``Authorization`` header for raw HTTP calls."""
        return {"Authorization": f"Bearer {self.token}"}


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigurationError(f"port: cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _open_engine(url_or_engine: str | LocalEngine, catalog: Catalog | None) -> tuple[LocalEngine, bool]:
    if not isinstance(url_or_engine, str):
        return url_or_engine, False
    from polar_metering.backends._engine.backend import LocalEngine

    return LocalEngine.open(url_or_engine, catalog=catalog), True


def _uvicorn_server(app: Any, log_level: str) -> Any:
    import uvicorn

    # The lifespan starts and stops the emulator's background work (debounce, billing, webhooks).
    config = uvicorn.Config(
        app, log_level=log_level, lifespan="on", access_log=log_level in ("info", "debug", "trace")
    )
    return uvicorn.Server(config)


def serve(
    url_or_engine: str | LocalEngine = "sqlite:///emulator.db",
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    token: str,
    rate_limit_per_minute: int | None = None,
    settle_delay: float = 0.0,
    organization_id: str | None = None,
    catalog: Catalog | None = None,
    log_level: str = "warning",
    announce: bool = False,
    **options: Any,
) -> None:
    """Serve the emulator until interrupted. ``port=0`` picks a free port; with ``announce`` the
    chosen URL is printed on stdout (``READY_PREFIX`` + URL) once the socket listens. ``options``
    go to :func:`create_app` (``polar_quirks``, ``billing_interval``, ``webhook_url``...)."""
    from polar_metering.emulator._app import create_app

    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise ConfigurationError(f"port: must be 0..65535, got {port!r}")
    engine, owned = _open_engine(url_or_engine, catalog)
    try:
        app = create_app(
            engine,
            token=token,
            rate_limit_per_minute=rate_limit_per_minute,
            settle_delay=settle_delay,
            organization_id=organization_id,
            **options,
        )
        sock = _listen(host, port)
        if announce:
            print(READY_PREFIX + _url(sock), flush=True)
        _uvicorn_server(app, log_level).run(sockets=[sock])
    finally:
        if owned:
            engine.close()


@contextlib.contextmanager
def emulator_thread(
    engine: LocalEngine,
    *,
    token: str | None = None,
    rate_limit_per_minute: int | None = None,
    settle_delay: float = 0.0,
    organization_id: str | None = None,
    startup_timeout: float = 10.0,
    **options: Any,
) -> Iterator[EmulatorHandle]:
    """Serve ``engine`` from a background thread on a free loopback port, for the ``with`` block.
    ``options`` go to :func:`create_app`."""
    from polar_metering.emulator._app import create_app

    token = token or secrets.token_urlsafe(24)
    app = create_app(
        engine,
        token=token,
        rate_limit_per_minute=rate_limit_per_minute,
        settle_delay=settle_delay,
        organization_id=organization_id,
        **options,
    )
    sock = _listen("127.0.0.1", 0)
    server = _uvicorn_server(app, "warning")
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="polar-emulator", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + startup_timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise BackendUnavailable("emulator: the server thread did not start")
            time.sleep(0.01)
        yield EmulatorHandle(base_url=_url(sock), token=token, engine=engine)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def _read_lines(stream: Any, lines: queue.Queue[str | None]) -> None:
    for line in iter(stream.readline, ""):
        lines.put(line)
    lines.put(None)


def _wait_ready(base_url: str, deadline: float, proc: subprocess.Popen[str]) -> None:
    import httpx

    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return
        try:
            if httpx.get(f"{base_url}/__emulator__/health", timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)


@contextlib.contextmanager
def running_emulator(
    db: str | None = None,
    *,
    token: str | None = None,
    rate_limit_per_minute: int | None = None,
    settle_delay: float = 0.0,
    organization_id: str | None = None,
    catalog: str | None = None,
    startup_timeout: float = 60.0,
    polar_quirks: bool = True,
    billing_interval: float | None = None,
    webhook_url: str | None = None,
    webhook_secret: str | None = None,
    webhook_backoff: float | None = None,
) -> Iterator[EmulatorHandle]:
    """Run ``python -m polar_metering.emulator`` on a free ``127.0.0.1`` port until the block ends.

    ``db`` defaults to a SQLite file in a temporary directory removed afterwards; ``token`` to a
    random one. The token reaches the child through its environment, never its command line.
    ``catalog`` is a ``metering.toml`` path or ``module:attribute`` for the engine's catalog.
    ``polar_quirks``, ``billing_interval`` (None: Polar's 15 minutes), ``webhook_url``,
    ``webhook_secret`` (passed through the environment) and ``webhook_backoff`` are the server's
    options of the same names.
    """
    token = token or secrets.token_urlsafe(24)
    with contextlib.ExitStack() as stack:
        if db is None:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="polar-emulator-"))
            db = f"sqlite:///{Path(tmp) / 'emulator.db'}"
        cmd = [
            sys.executable,
            "-m",
            "polar_metering.emulator",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--db",
            db,
            "--settle-delay",
            repr(float(settle_delay)),
        ]
        if rate_limit_per_minute is not None:
            cmd += ["--rate-limit", str(rate_limit_per_minute)]
        if organization_id is not None:
            cmd += ["--organization-id", organization_id]
        if catalog is not None:
            cmd += ["--catalog", catalog]
        if not polar_quirks:
            cmd += ["--no-polar-quirks"]
        if billing_interval is not None:
            cmd += ["--billing-interval", repr(float(billing_interval))]
        if webhook_backoff is not None:
            cmd += ["--webhook-backoff", repr(float(webhook_backoff))]
        env = {**os.environ, TOKEN_ENV: token}
        if webhook_url is not None:
            cmd += ["--webhook-url", webhook_url]
        if webhook_secret is not None:
            env[WEBHOOK_SECRET_ENV] = webhook_secret
        stderr = stack.enter_context(tempfile.TemporaryFile(mode="w+", encoding="utf-8"))
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
        lines: queue.Queue[str | None] = queue.Queue()
        reader = threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True)
        reader.start()
        stack.callback(_stop, proc, reader)
        deadline = time.monotonic() + startup_timeout
        base_url = _await_announce(lines, deadline)
        if base_url is not None:
            _wait_ready(base_url, deadline, proc)
        if base_url is None or proc.poll() is not None:
            _stop(proc, reader)
            stderr.seek(0)
            raise BackendUnavailable(
                "emulator: the process did not start: " + redact(stderr.read()[-2000:], token)
            )
        yield EmulatorHandle(base_url=base_url, token=token, db_url=db, pid=proc.pid)


def _await_announce(lines: queue.Queue[str | None], deadline: float) -> str | None:
    while True:
        try:
            line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return None
        if line is None:
            return None
        if line.startswith(READY_PREFIX):
            return line[len(READY_PREFIX) :].strip()


def _stop(proc: subprocess.Popen[str], reader: threading.Thread) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    # The reader sees end-of-file once the process is gone; close the pipe only after it has.
    reader.join(timeout=5)
    if proc.stdout is not None and not reader.is_alive():
        proc.stdout.close()
