"""The ``polar://`` backend against a real emulator process, read back through the unmodified SDK."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from polar.v2026_10 import Polar

from polar_metering import AsyncMetering, Metering
from polar_metering.backends._polar import PolarBackend
from polar_metering.emulator import AdminClient, EmulatorHandle

MakeClient = Callable[..., Metering]


def _events(sdk: Polar, customer: str) -> list[Any]:
    page = sdk.events.list(external_customer_id=customer, limit=100)
    return list(page.items)


def _backend(client: Metering) -> PolarBackend:
    assert isinstance(client.backend, PolarBackend)
    return client.backend


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_tracked_events_reach_polar_after_flush(make_client: MakeClient, sdk: Polar, customer: str) -> None:
    """Tracked events are delivered by flush() and listed by the SDK with their names and metadata."""
    client = make_client()
    first = client.track_api_request(customer, "/v1/generate", method="POST", status_code=200)
    second = client.track_ai_tokens(customer, 1500, model="gpt-4")
    assert first.success
    assert second.success
    assert first.inserted == 1
    assert client.flush(timeout=10)
    events = _events(sdk, customer)
    assert sorted(e.name for e in events) == ["ai.tokens", "api.request"]
    assert {e.external_customer_id for e in events} == {customer}
    tokens = next(e for e in events if e.name == "ai.tokens")
    assert tokens.metadata["tokens"] == 1500


def test_tracking_succeeds_while_polar_is_down_and_delivers_later(
    emulator: EmulatorHandle, make_client: MakeClient, sdk: Polar, customer: str, tmp_path: Path
) -> None:
    """With nothing listening, tracking still succeeds (no network on the caller's thread); the events
    wait in the outbox file and the next client on that file delivers them."""
    outbox = str(tmp_path / "shared-outbox.db")
    down = make_client(url=f"polar://?base_url=http://127.0.0.1:{_free_port()}", outbox_path=outbox)
    result = down.track_usage(customer, "api.request", {"endpoint": "/x"})
    assert result.success
    assert result.inserted == 1
    assert down.flush(timeout=0.3) is False
    down.close(timeout=0)
    assert _events(sdk, customer) == []
    up = make_client(outbox_path=outbox)
    assert _backend(up).outbox.drain(timeout=15)
    assert [e.metadata for e in _events(sdk, customer)] == [{"endpoint": "/x"}]


def test_duplicates_are_counted_once(
    make_client: MakeClient, sdk: Polar, admin: AdminClient, customer: str
) -> None:
    """Two events with one external_id are both accepted into the outbox; Polar stores one and reports
    the other as a duplicate (``insert_batch`` in server/polar/event/repository.py); a later resend is a
    duplicate too."""
    client = make_client()
    admin.create_customer(external_id=customer)
    batch = [
        {
            "customer_id": customer,
            "event_name": "ai.tokens",
            "metadata": {"tokens": 5},
            "external_id": "req-1",
        },
        {
            "customer_id": customer,
            "event_name": "ai.tokens",
            "metadata": {"tokens": 9},
            "external_id": "req-1",
        },
    ]
    assert client.track_usage_batch(batch).inserted == 2
    assert client.flush(timeout=10)
    client.track_usage(customer, "ai.tokens", {"tokens": 7}, external_id="req-1")
    assert client.flush(timeout=10)
    metrics = _backend(client).outbox.metrics()
    assert (metrics.sent, metrics.duplicates) == (1, 2)
    events = _events(sdk, customer)
    assert len(events) == 1
    assert events[0].metadata["tokens"] == 5
    assert client.check_limit(customer, "ai_tokens").current == 5


def test_readings_map_consumed_credited_and_balance(
    make_client: MakeClient, admin: AdminClient, customer: str
) -> None:
    """consumed_units -> current, credited_units -> limit, balance = credited - consumed (may go negative)."""
    client = make_client()
    admin.create_customer(external_id=customer)
    admin.grant(customer, "ai_tokens", 100)
    client.track_ai_tokens(customer, 30)
    client.track_ai_tokens(customer, 12)
    assert client.flush(timeout=10)
    status = client.check_limit(customer, "ai_tokens")
    assert (status.current, status.limit, status.remaining, status.balance, status.allowed) == (
        42,
        100,
        58,
        58,
        True,
    )
    assert client.check_limit(customer, "ai_tokens", amount=59).allowed is False
    client.track_ai_tokens(customer, 70)
    assert client.flush(timeout=10)
    over = client.check_limit(customer, "ai_tokens")
    assert (over.current, over.limit, over.remaining, over.balance, over.allowed) == (112, 100, 0, -12, False)
    assert over.reason == "Usage limit reached: 112/100 units used"


def test_get_all_usage_reads_every_meter(make_client: MakeClient, admin: AdminClient, customer: str) -> None:
    """One call reports each catalog meter with its own consumed and credited units."""
    client = make_client()
    admin.create_customer(external_id=customer)
    admin.grant(customer, "api_requests", 10)
    client.track_api_request(customer, "/a")
    client.track_storage_update(customer, 2.5)
    client.track_storage_update(customer, 1.0)
    client.track_seat_activity(customer, "u1")
    client.track_seat_activity(customer, "u1")
    client.track_seat_activity(customer, "u2")
    assert client.flush(timeout=10)
    usage = client.get_all_usage(customer)
    assert {slug: (s.current, s.limit) for slug, s in usage.items()} == {
        "api_requests": (1, 10),
        "storage_gb": (2.5, None),
        "ai_tokens": (0, None),
        "team_seats": (2, None),
    }


def test_customer_without_credits_follows_no_credits_option(make_client: MakeClient, customer: str) -> None:
    """Unknown to Polar: no limit by default; refused under no_credits="deny"."""
    open_client = make_client()
    status = open_client.check_limit(customer, "api_requests")
    assert (status.allowed, status.current, status.limit) == (True, 0, None)
    strict = make_client(backend_options={"no_credits": "deny"})
    denied = strict.check_limit(customer, "api_requests")
    assert (denied.allowed, denied.limit) == (False, 0)


@pytest.mark.parametrize("external_id", ["user/1", "a?b=c&d=e", "team#7", "50%off", "a b/../c"])
def test_external_ids_with_url_characters(
    make_client: MakeClient, admin: AdminClient, sdk: Polar, external_id: str
) -> None:
    """Customer ids with / ? # % and spaces travel as encoded query values, so each reads its own usage."""
    customer = f"{external_id}-{id(sdk)}"
    client = make_client()
    admin.create_customer(external_id=customer)
    admin.grant(customer, "api_requests", 5)
    for _ in range(3):
        client.track_api_request(customer, "/x")
    client.track_api_request(customer.split("/")[0] + "-other", "/x")
    assert client.flush(timeout=10)
    assert len(_events(sdk, customer)) == 3
    status = client.check_limit(customer, "api_requests")
    assert (status.current, status.limit, status.remaining) == (3, 5, 2)


def test_readings_are_cached_for_cache_ttl(
    make_client: MakeClient, admin: AdminClient, customer: str
) -> None:
    """Within cache_ttl a reading is served from memory (peek sees it); this process's own usage shows
    at once through the overlay, and once Polar's reading includes it, it is not counted twice."""
    from polar_metering import ManualClock

    clock = ManualClock()
    admin.create_customer(external_id=customer)
    client = make_client(cache_ttl=5, clock=clock)
    assert client.check_limit(customer, "api_requests").current == 0
    meter = client.catalog.meter("api_requests")
    assert client.backend.peek(customer, meter) is not None
    client.track_api_request(customer, "/x")
    assert client.flush(timeout=10)
    assert client.check_limit(customer, "api_requests").current == 1  # overlay on the cached 0
    clock.advance(seconds=6)
    assert client.backend.peek(customer, meter) is None
    assert client.check_limit(customer, "api_requests").current == 1


def test_async_client_tracks_and_reads(make_client: MakeClient, admin: AdminClient, customer: str) -> None:
    """The async twin commits to the durable outbox from a worker thread (never on the event loop) and
    reads through a thread."""
    sync = make_client()
    admin.create_customer(external_id=customer)
    assert not sync.backend.nonblocking_ingest

    async def run() -> float:
        client: AsyncMetering = sync.aio
        assert (await client.track_api_request(customer, "/a")).success
        assert await client.flush(timeout=10)
        return (await client.check_limit(customer, "api_requests")).current

    assert asyncio.run(run()) == 1


def test_group_commit_opt_in_queues_on_the_event_loop(
    make_client: MakeClient, admin: AdminClient, customer: str
) -> None:
    """``durable=False`` (a backend option) makes ingest an in-memory append, so the async client
    queues on the event loop; the event still arrives."""
    sync = make_client(backend_options={"durable": False})
    admin.create_customer(external_id=customer)
    assert sync.backend.nonblocking_ingest
    assert sync.backend.outbox.config.durable is False

    async def run() -> float:
        client: AsyncMetering = sync.aio
        assert (await client.track_api_request(customer, "/a")).success
        assert await client.flush(timeout=10)
        return (await client.check_limit(customer, "api_requests")).current

    assert asyncio.run(run()) == 1


def test_unknown_meter_name_points_to_setup(make_client: MakeClient, customer: str) -> None:
    """A catalog meter Polar lacks fails with NotFound telling the user to run setup."""
    from polar_metering import Aggregation, Filter, Meter, NotFound

    meter = Meter("gpu_minutes", "GPU Minutes", Filter.event("gpu.run"), Aggregation.sum("minutes"))
    client = make_client(meters=[meter])
    with pytest.raises(NotFound, match="polar-metering setup"):
        client.check_limit(customer, "gpu_minutes")
    fail_open = make_client(meters=[meter], fail_open=True)
    status = fail_open.check_limit(customer, "gpu_minutes")
    assert status.allowed
    assert status.stale


def test_backend_repr_names_server_not_token(make_client: MakeClient, emulator: EmulatorHandle) -> None:
    client = make_client()
    assert isinstance(client.backend, PolarBackend)
    assert emulator.base_url in repr(client.backend)
    for text in (repr(client), repr(client.backend), repr(client.backend.settings), repr(client.config)):
        assert emulator.token not in text


def test_stored_payloads_go_out_as_they_are(make_client: MakeClient, sdk: Any, customer: str) -> None:
    """The sender sends the outbox's payloads verbatim as the request body (no decode and re-encode):
    integers past 64 bits, floats with all their digits, and text outside ASCII arrive exactly."""
    client = make_client()
    metadata = {"big": 10**30, "exact": 0.1 + 0.2, "text": "naïve — 数据 ✓"}
    assert client.track_usage(customer, "exact.values", metadata, external_id=f"{customer}-x").success
    assert client.flush(timeout=10)
    events = sdk.events.list(external_customer_id=customer, limit=10).items
    assert len(events) == 1
    assert dict(events[0].metadata) == metadata
