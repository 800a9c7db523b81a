"""Limits on the ``polar://`` backend against a real emulator process, through the unmodified polar-sdk:
reservations under thread races, the overlay before and after Polar's balance debounce
(server/polar/customer_meter/tasks.py), the cache staying warm while usage is tracked, and webhooks
refreshing it."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from limits_helpers import sign, state_changed
from polar.v2026_10 import Polar

from polar_metering import Metering, UsageLimitExceeded
from polar_metering.backends._polar import PolarBackend
from polar_metering.emulator import AdminClient, EmulatorHandle, running_emulator
from polar_metering.webhooks import SeenWebhooks, handle_webhook

MakeClient = Callable[..., Metering]
SECRET = "polar_whs_limits_test_secret"


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorHandle]:
    with running_emulator() as handle:
        yield handle


@pytest.fixture(scope="module")
def debounced() -> Iterator[EmulatorHandle]:
    """Balances lag 4 s behind ingest, as Polar's 15 s debounce does (server/polar/customer_meter/tasks.py),
    shortened for tests."""
    with running_emulator(settle_delay=4.0) as handle:
        yield handle


@pytest.fixture
def customer() -> str:
    return f"cust_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def make_client(tmp_path: Path) -> Iterator[Callable[..., Metering]]:
    clients: list[Metering] = []

    def make(emu: EmulatorHandle, **options: Any) -> Metering:
        options.setdefault("outbox_path", str(tmp_path / f"outbox-{len(clients)}.db"))
        options.setdefault("fail_open", False)
        client = Metering(f"polar://?base_url={emu.base_url}", access_token=emu.token, **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close(timeout=5)


def _backend(client: Metering) -> PolarBackend:
    assert isinstance(client.backend, PolarBackend)
    return client.backend


def _polar_consumed(emu: EmulatorHandle, customer: str, meter_name: str) -> float:
    """What Polar itself reports right now (no library in between)."""
    with Polar(emu.token, base_url=emu.base_url) as polar:
        rows = polar.customer_meters.list(external_customer_id=customer, limit=100).items
    return next((r.consumed_units for r in rows if r.meter.name == meter_name), 0.0)


def _wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_sixteen_threads_never_commit_past_the_limit(
    emulator: EmulatorHandle, make_client: MakeClient, customer: str
) -> None:
    """16 threads reserve and commit 1 request at a time against a limit of 40: exactly 40 go ahead,
    never more, and after delivery Polar counts every one of them once."""
    limit = 40
    admin = AdminClient(emulator.base_url, emulator.token)
    admin.create_customer(external_id=customer)
    admin.grant(customer, "api_requests", limit)
    client = make_client(emulator, cache_ttl=30)
    committed: list[int] = []
    start = threading.Barrier(16)

    def worker() -> None:
        start.wait()
        mine = 0
        while True:
            try:
                with client.reserve(customer, "api_requests", 1) as reservation:
                    assert reservation.commit().success
                    mine += 1
            except UsageLimitExceeded:
                break
        committed.append(mine)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(committed) == 16
    assert sum(committed) == limit
    assert client.flush(timeout=30)
    admin.settle(customer)
    assert _polar_consumed(emulator, customer, "API Requests") == limit
    _backend(client).invalidate(customer)
    status = client.check_limit(customer, "api_requests")
    assert (status.current, status.allowed, status.reserved) == (limit, False, 0)


def test_with_usage_limit_reserves_on_polar(
    emulator: EmulatorHandle, make_client: MakeClient, customer: str
) -> None:
    """with_usage_limit(_safe) with an amount holds it while the action runs (which tracks its own
    usage); racing threads never push the total past the limit, and Polar counts what ran."""
    admin = AdminClient(emulator.base_url, emulator.token)
    admin.create_customer(external_id=customer)
    admin.grant(customer, "ai_tokens", 1000)
    client = make_client(emulator, cache_ttl=30)
    ran: list[int] = []
    lock = threading.Lock()

    def call_model() -> int:
        client.track_ai_tokens(customer, 100, model="m")
        with lock:
            ran.append(100)
        return 100

    start = threading.Barrier(16)

    def worker() -> None:
        start.wait()
        for _ in range(4):
            client.with_usage_limit_safe("ai_tokens", call_model, customer_id=customer, amount=100)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert 0 < sum(ran) <= 1000
    with pytest.raises(UsageLimitExceeded):
        client.with_usage_limit("ai_tokens", call_model, customer_id=customer, amount=1000 - sum(ran) + 1)
    assert client.flush(timeout=30)
    admin.settle(customer)
    assert _polar_consumed(emulator, customer, "AI Tokens") == sum(ran)


def test_overlay_refuses_before_polar_catches_up_and_never_double_counts(
    debounced: EmulatorHandle, make_client: MakeClient, customer: str
) -> None:
    """A burst of tracked usage is refused at the limit while Polar's balance still shows none of it;
    once Polar has counted it (and a webhook says so), the reading equals Polar's, not twice it."""
    admin = AdminClient(debounced.base_url, debounced.token)
    admin.create_customer(external_id=customer)
    admin.grant(customer, "api_requests", 10)
    client = make_client(debounced, cache_ttl=60)
    assert client.check_limit(customer, "api_requests").remaining == 10
    for _ in range(10):
        assert client.track_api_request(customer, "/burst").success
    refused = client.check_limit(customer, "api_requests")
    assert (refused.allowed, refused.current) == (False, 10)
    assert refused.reason == "Usage limit reached: 10/10 units used"
    assert client.flush(timeout=10)
    assert _polar_consumed(debounced, customer, "API Requests") == 0, "Polar has not recomputed yet"
    # A fresh read from Polar (not the cache) still shows nothing: the overlay keeps the count.
    _backend(client).invalidate(customer)
    assert client.check_limit(customer, "api_requests", amount=1).allowed is False
    assert client.check_limit(customer, "api_requests").current == 10
    assert _wait_for(lambda: _polar_consumed(debounced, customer, "API Requests") == 10)
    body = state_changed(customer, consumed=10)
    result = handle_webhook(body, sign(body, SECRET), SECRET, client, seen=SeenWebhooks())
    assert (result.status, result.customer) == (200, customer)
    assert result.invalidated >= 1
    settled = client.check_limit(customer, "api_requests")
    assert (settled.current, settled.limit, settled.allowed) == (10, 10, False)
    assert _backend(client).limits.overlay.extra(customer, "api_requests") is None
    admin.grant(customer, "api_requests", 5)
    _backend(client).invalidate(customer)
    more = client.check_limit(customer, "api_requests", amount=5)
    assert (more.current, more.limit, more.allowed) == (10, 15, True)


def test_tracking_keeps_the_cache_warm(
    emulator: EmulatorHandle, make_client: MakeClient, customer: str
) -> None:
    """Tracking does not invalidate the cache: checks between tracked events are hits that already
    include the new usage, and the async client answers them on the event loop (peek)."""
    admin = AdminClient(emulator.base_url, emulator.token)
    admin.create_customer(external_id=customer)
    admin.grant(customer, "ai_tokens", 10_000)
    client = make_client(emulator, cache_ttl=60)
    limits = _backend(client).limits
    for i in range(1, 201):
        client.track_ai_tokens(customer, 10)
        assert client.check_limit(customer, "ai_tokens").current == 10 * i
    stats = limits.cache.stats()
    assert (stats.misses, stats.hits) == (1, 199)

    async def check() -> float:
        return (await client.aio.check_limit(customer, "ai_tokens")).current

    assert asyncio.run(check()) == 2000
    assert limits.cache.stats().misses == 1


def test_overlay_horizons_are_backend_options(emulator: EmulatorHandle, make_client: MakeClient) -> None:
    """The settle rule's horizons can be tuned per client; unknown keys and bad values are refused."""
    from polar_metering import ConfigurationError

    client = make_client(
        emulator, backend_options={"overlay": {"unconfirmed_horizon": 5, "settle_margin": 1}}
    )
    overlay = _backend(client).limits.overlay
    assert (overlay.unconfirmed_horizon, overlay.settle_margin) == (5, 1)
    with pytest.raises(ConfigurationError, match="overlay: unknown keys"):
        make_client(emulator, backend_options={"overlay": {"horizon": 5}})
    with pytest.raises(ConfigurationError, match="settle_margin"):
        make_client(emulator, backend_options={"overlay": {"settle_margin": -1}})
