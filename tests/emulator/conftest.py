"""One real emulator process for the module suite, reached through the unmodified ``polar-sdk``."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from polar.v2026_10 import Polar

from polar_metering.emulator import EmulatorHandle, running_emulator


@pytest.fixture(scope="session")
def emulator() -> Iterator[EmulatorHandle]:
    """A real ``python -m polar_metering.emulator`` on a free loopback port, shared by the session."""
    with running_emulator() as handle:
        yield handle


@pytest.fixture
def polar(emulator: EmulatorHandle) -> Iterator[Polar]:
    with Polar(emulator.token, base_url=emulator.base_url) as client:
        yield client


@pytest.fixture
def uid() -> str:
    """A prefix unique to the test, so tests sharing the emulator never see each other's data."""
    return uuid.uuid4().hex[:12]
