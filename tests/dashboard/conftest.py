"""Fixtures for the dashboard: real servers on 127.0.0.1 (uvicorn in a thread), and real headless
Chromium driven by Playwright (Debian's ``/usr/bin/chromium``; ``.ci/run`` installs it)."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from polar_metering import Metering, Plan

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOKEN = "test-dashboard-token-0123456789"
PLANS = [
    Plan("free", credits={"api_requests": 100, "ai_tokens": 10_000, "storage_gb": 5, "team_seats": 3}),
    Plan("pro", credits={"api_requests": 1000, "ai_tokens": 200_000, "storage_gb": 100, "team_seats": 20}),
]


@dataclass
class Served:
    url: str
    app: Any


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """Serve an ASGI app with uvicorn on a free 127.0.0.1 port in a thread; yields the base URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_config=None, access_log=False, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the dashboard server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()


def seed(client: Metering, customers: int = 12) -> None:
    """Customers at every level: over, at, near and under their limits, one without a plan."""
    for i in range(customers):
        customer = f"org_{i:03d}"
        client.subscribe(customer, "free" if i % 4 else "pro")
        requests = [
            {"customer_id": customer, "event_name": "api.request", "metadata": {"endpoint": "/v1/x"}}
            for _ in range((i * 9) % 112)
        ]
        if requests:
            client.track_usage_batch(requests)
        client.track_ai_tokens(customer, (i * 977) % 11_000 + 1, model="gpt-4o", type="total")
        client.track_storage_update(customer, float(i % 6) + 0.5)
        for seat in range(i % 4):
            client.track_seat_activity(customer, f"user_{seat}")
    client.track_api_request("walk_in", "/v1/free")  # no plan: no limit


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    # Module scope: Playwright's sync API keeps an event loop running on the main thread while it is
    # open, which would break asyncio.run() in later test modules.
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page_factory(browser: Any) -> Iterator[Callable[[], Any]]:
    contexts: list[Any] = []

    def make() -> Any:
        context = browser.new_context(viewport={"width": 1360, "height": 900})
        contexts.append(context)
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.js_errors = errors
        return page

    yield make
    for context in contexts:
        context.close()


@pytest.fixture
def engine_client(sqlite_url: str) -> Iterator[Metering]:
    client = Metering(sqlite_url, plans=PLANS)
    seed(client)
    yield client
    client.close()


def screenshot(page: Any, tmp_path: Path, name: str) -> Path:
    """Save a full-page screenshot under the test's tmp dir (and, with METERING_SCREENSHOTS set,
    a copy there, to look at)."""
    import os

    path = tmp_path / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    keep = os.environ.get("METERING_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(keep) / path.name)
    return path
