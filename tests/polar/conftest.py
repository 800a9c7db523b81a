"""Fixtures for the Polar backend: a real emulator process on loopback and the unmodified ``polar-sdk``."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from polar.v2026_10 import Polar

from polar_metering import Metering
from polar_metering.emulator import AdminClient, EmulatorHandle, running_emulator


@pytest.fixture(scope="module")
def emulator() -> Iterator[EmulatorHandle]:
    """One emulator process per test module; it starts with the four default meters."""
    with running_emulator() as handle:
        yield handle


@pytest.fixture
def admin(emulator: EmulatorHandle) -> AdminClient:
    return AdminClient(emulator.base_url, emulator.token)


@pytest.fixture
def sdk(emulator: EmulatorHandle) -> Iterator[Polar]:
    with Polar(emulator.token, base_url=emulator.base_url) as polar:
        yield polar


@pytest.fixture
def customer() -> str:
    """A customer id no other test uses (the emulator is shared by the module)."""
    return f"cust_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def make_client(emulator: EmulatorHandle, tmp_path: Path) -> Iterator[Callable[..., Metering]]:
    """Build ``polar://`` clients on the emulator, each with its own outbox file; closed afterwards."""
    clients: list[Metering] = []

    def make(**options: Any) -> Metering:
        options.setdefault("access_token", emulator.token)
        options.setdefault("outbox_path", str(tmp_path / f"outbox-{len(clients)}.db"))
        options.setdefault("cache_ttl", 0)
        options.setdefault("fail_open", False)
        url = options.pop("url", f"polar://?base_url={emulator.base_url}")
        client = Metering(url, **options)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close(timeout=2)
