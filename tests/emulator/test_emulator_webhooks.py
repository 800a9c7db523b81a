"""Webhooks sent by the emulator: Standard-Webhooks-signed, in Polar's payload shape, retried on
non-2xx as Polar's server retries; and end to end into ``polar_metering.webhooks.asgi_app``."""

from __future__ import annotations

import contextlib
import json
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from polar.v2026_10 import Polar
from polar.v2026_10.webhooks import PolarWebhookError
from polar.v2026_10.webhooks import validate_event as typed_validate_event
from polar.webhooks import validate_event

from polar_metering import Metering
from polar_metering._catalog import Catalog
from polar_metering._setup import run_setup
from polar_metering.backends._engine.backend import LocalEngine
from polar_metering.emulator import AdminClient, emulator_thread, running_emulator
from polar_metering.webhooks import asgi_app

SECRET = "polar_whs_emulator_test_0123456789"


class _Receiver:
    """A real HTTP endpoint on loopback that verifies each delivery with polar-sdk and answers with
    the statuses it is told to (then 200)."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.received: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    async def __call__(self, scope: Any, receive: Callable[..., Any], send: Callable[..., Any]) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        headers = {k.decode(): v.decode() for k, v in scope["headers"]}
        payload = validate_event(body, headers, SECRET, frozenset({json.loads(body)["type"]}), lambda d: d)
        with self.lock:
            status = self.statuses.pop(0) if self.statuses else 200
            self.received.append({"headers": headers, "payload": payload, "body": body, "answered": status})
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    def types(self) -> list[str]:
        with self.lock:
            return [r["payload"]["type"] for r in self.received]


def _listening() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


@contextlib.contextmanager
def _serve(app: Any, sock: socket.socket) -> Iterator[str]:
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "receiver did not start"
        time.sleep(0.01)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}/hooks"
    server.should_exit = True
    thread.join(10)
    sock.close()


def _wait(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.fixture
def receiver() -> _Receiver:
    return _Receiver()


@pytest.fixture
def receiver_url(receiver: _Receiver) -> Iterator[str]:
    with _serve(receiver, _listening()) as url:
        yield url


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[LocalEngine]:
    engine = LocalEngine.open(f"sqlite:///{tmp_path / 'emu.db'}")
    yield engine
    engine.close()


def test_subscription_grant_and_state_webhooks_in_polar_shape(
    engine: LocalEngine, receiver: _Receiver, receiver_url: str
) -> None:
    """A subscription sends subscription.created/active/updated, a benefit_grant.created per
    credited meter and customer.state_changed; each verifies with polar-sdk and has Polar's shape
    (no api_version: the server sends none)."""
    options: dict[str, Any] = {"webhook_url": receiver_url, "webhook_secret": SECRET, "webhook_backoff": 0.01}
    with emulator_thread(engine, **options) as emu:
        admin = AdminClient(emu.base_url, emu.token)
        customer = admin.create_customer(external_id="w1", email="w1@example.com")
        admin.create_plan("pro", {"api_requests": 10, "ai_tokens": 500})
        admin.subscribe("w1", "pro")
        _wait(lambda: receiver.types().count("customer.state_changed") >= 1 and len(receiver.types()) >= 7)
    types = receiver.types()
    assert types[0] == "customer.created"
    subscription_events = [t for t in types if t.startswith("subscription.")]
    assert subscription_events == ["subscription.created", "subscription.active", "subscription.updated"]
    assert types.count("benefit_grant.created") == 2
    assert types[-1] == "customer.state_changed"
    for record in receiver.received:
        payload = record["payload"]
        assert set(payload) == {"type", "timestamp", "data"}
        assert record["headers"]["user-agent"] == "polar.sh webhooks"
        assert record["headers"]["webhook-id"]
    by_type = {r["payload"]["type"]: r["payload"]["data"] for r in receiver.received}
    sub = by_type["subscription.created"]
    assert (sub["status"], sub["customer"]["external_id"]) == ("active", "w1")
    assert sub["customer_id"] == customer["id"]
    assert sub["product"]["name"] == "pro"
    assert sorted(b["properties"]["units"] for b in sub["product"]["benefits"]) == [10, 500]
    grant = by_type["benefit_grant.created"]
    assert grant["benefit"]["type"] == "meter_credit"
    assert grant["customer"]["external_id"] == "w1"
    state = by_type["customer.state_changed"]
    credited = sorted(m["credited_units"] for m in state["active_meters"] if m["credited_units"])
    assert (state["external_id"], credited) == ("w1", [10, 500])
    body = next(r for r in receiver.received if r["payload"]["type"] == "subscription.created")
    with pytest.raises(PolarWebhookError):  # the SDK's typed model wants api_version: drift, as from Polar
        typed_validate_event(body["body"], body["headers"], SECRET)


def test_failed_deliveries_are_retried_with_backoff_until_2xx(engine: LocalEngine) -> None:
    """Non-2xx answers are retried (Polar: exponential backoff, at most 10 attempts); the same
    webhook-id and body every time, so the endpoint can tell a retry from a new event."""
    receiver = _Receiver([500, 503, 404])
    with (
        _serve(receiver, _listening()) as url,
        emulator_thread(engine, webhook_url=url, webhook_secret=SECRET, webhook_backoff=0.01) as emu,
    ):
        AdminClient(emu.base_url, emu.token).create_customer(external_id="r1")
        _wait(lambda: any(r["answered"] == 200 for r in receiver.received))
        first = [r for r in receiver.received if r["payload"]["type"] == "customer.created"]
        assert [r["answered"] for r in first] == [500, 503, 404, 200]
        assert len({r["headers"]["webhook-id"] for r in first}) == 1
        assert len({r["body"] for r in first}) == 1
        deliveries = AdminClient(emu.base_url, emu.token).webhooks()
        created = next(d for d in deliveries if d["type"] == "customer.created")
        assert (created["status"], created["attempts"], created["responses"]) == (
            "succeeded",
            4,
            [500, 503, 404, 200],
        )


def test_a_delivery_is_failed_after_ten_attempts(engine: LocalEngine) -> None:
    receiver = _Receiver([500] * 50)
    with (
        _serve(receiver, _listening()) as url,
        emulator_thread(engine, webhook_url=url, webhook_secret=SECRET, webhook_backoff=0.001) as emu,
    ):
        admin = AdminClient(emu.base_url, emu.token)
        admin.create_customer(external_id="f1")
        _wait(lambda: any(d["status"] == "failed" for d in admin.webhooks()))
        failed = next(d for d in admin.webhooks() if d["type"] == "customer.created")
        assert (failed["status"], failed["attempts"]) == ("failed", 10)
        assert [r["payload"]["type"] for r in receiver.received].count("customer.created") == 10


def test_an_unreachable_endpoint_is_retried_too(engine: LocalEngine) -> None:
    sock = _listening()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/hooks"
    sock.close()  # nothing listens there
    with emulator_thread(engine, webhook_url=url, webhook_secret=SECRET, webhook_backoff=0.001) as emu:
        admin = AdminClient(emu.base_url, emu.token)
        admin.create_customer(external_id="down")
        _wait(lambda: any(d["status"] == "failed" for d in admin.webhooks()))
        (delivery,) = [d for d in admin.webhooks() if d["type"] == "customer.created"]
        assert delivery["attempts"] == 10 and delivery["last_status_code"] is None
        assert SECRET not in json.dumps(admin.webhooks())


def test_end_to_end_emulator_to_the_library_endpoint_invalidates_a_cached_reading(tmp_path: Path) -> None:
    """emulator → signed customer.state_changed → ``polar_metering.webhooks.asgi_app`` → the Polar
    backend's cached reading is made stale, so a check sees usage the cache TTL would hide."""
    holder: dict[str, Metering] = {}

    class _Late:
        # The endpoint is created before the client exists (the emulator needs its URL first).
        @property
        def backend(self) -> Any:
            return holder["client"].backend

    endpoint = asgi_app(SECRET, _Late())
    sock = _listening()
    hook_url = f"http://127.0.0.1:{sock.getsockname()[1]}/polar/webhooks"
    with (
        running_emulator(webhook_url=hook_url, webhook_secret=SECRET, webhook_backoff=0.05) as emu,
        tempfile.TemporaryDirectory() as tmp,
    ):
        report = run_setup(Catalog(), access_token=emu.token, base_url=emu.base_url)
        assert report.ok, str(report)
        client = Metering(
            f"polar://?base_url={emu.base_url}",
            access_token=emu.token,
            outbox_path=str(Path(tmp) / "outbox.db"),
            cache_ttl=3600,
            fail_open=False,
        )
        holder["client"] = client
        try:
            with _serve(endpoint, sock):
                admin = AdminClient(emu.base_url, emu.token)
                admin.create_customer(external_id="e2e", email="e2e@example.com")
                admin.grant("e2e", "api_requests", 10)
                _wait(lambda: any(d["status"] == "succeeded" for d in admin.webhooks()))
                assert client.check_limit("e2e", "api_requests").current == 0  # now cached for an hour
                with Polar(emu.token, base_url=emu.base_url) as polar:
                    polar.events.ingest(events=[{"name": "api.request", "external_customer_id": "e2e"}] * 3)
                # Only the webhook can tell the client: the events did not go through it.
                _wait(lambda: client.check_limit("e2e", "api_requests").current == 3)
                _wait(lambda: all(d["status"] == "succeeded" for d in admin.webhooks()))
                assert any(d["type"] == "customer.state_changed" for d in admin.webhooks())
                assert client.backend.limits.cache.stats().invalidations > 0
        finally:
            client.close(timeout=5)


def test_webhook_options_are_validated(engine: LocalEngine) -> None:
    from polar_metering._exceptions import ConfigurationError
    from polar_metering.emulator import create_app

    with pytest.raises(ConfigurationError, match="webhook_url and webhook_secret"):
        create_app(engine, token="t", webhook_url="http://127.0.0.1:1/x")
    with pytest.raises(ConfigurationError, match="webhook_url"):
        create_app(engine, token="t", webhook_url="ftp://example.com/x", webhook_secret="s")
    with pytest.raises(ConfigurationError, match="webhook_secret"):
        create_app(engine, token="t", webhook_url="http://127.0.0.1:1/x", webhook_secret=" ")


def test_the_cli_takes_webhook_options_without_printing_the_secret(tmp_path: Path) -> None:
    import subprocess
    import sys

    proc = subprocess.run(
        [
            *(sys.executable, "-m", "polar_metering.emulator", "--port", "0"),
            *("--db", f"sqlite:///{tmp_path}/x.db", "--token", "tok"),
            *("--webhook-url", "nope://x", "--webhook-secret", "s3cr3t-value"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "webhook_url" in proc.stderr and "s3cr3t-value" not in proc.stderr + proc.stdout


def test_backoff_and_the_fifo_guard(receiver: _Receiver, receiver_url: str) -> None:
    """dramatiq's backoff as Polar configures it (2 s doubled per attempt, half of it plus a random
    half, at most 20 minutes), and a later event held back while an earlier one is pending, for a
    minute at most."""
    from polar_metering.emulator._webhooks import WebhookSender

    now = [1000.0]
    sender = WebhookSender(receiver_url, SECRET, monotonic=lambda: now[0])
    for attempts, full in ((1, 4.0), (2, 8.0), (5, 64.0), (12, 1200.0)):
        delays = [sender._backoff(attempts) for _ in range(200)]
        assert all(full / 2 <= d <= full for d in delays) and max(delays) - min(delays) > full / 10
    receiver.statuses = [500]
    sender.send("customer.created", "2026-01-01T00:00:00Z", {"id": "a"})
    sender.send("customer.updated", "2026-01-01T00:00:00Z", {"id": "b"})
    assert sender.deliver_due() == 1  # the first failed; the second waits behind it
    assert receiver.types() == ["customer.created"]
    now[0] += 1.0
    assert sender.deliver_due() == 0  # the retry is due after 2-4 s; the second still waits
    now[0] += 3.0
    assert sender.deliver_due() == 2  # the retry succeeds, then the second goes
    assert receiver.types() == ["customer.created", "customer.created", "customer.updated"]
    receiver.statuses = [500] * 20
    sender.send("customer.created", "2026-01-01T00:00:00Z", {"id": "c"})
    sender.send("customer.updated", "2026-01-01T00:00:00Z", {"id": "d"})
    assert sender.deliver_due() == 1
    now[0] += 61.0  # past the guard's minute: the second goes although the first is still pending
    sender.deliver_due()
    assert receiver.types()[3:] == ["customer.created", "customer.created", "customer.updated"]
    assert [d["status"] for d in sender.deliveries()][-2:] == ["pending", "pending"]
    sender.close()
