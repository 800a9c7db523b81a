"""Shared fixtures: a clean environment per test, a manual clock, and engine URLs on real databases."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import polar_metering as metering
from polar_metering import ManualClock

_ENV = ("METERING_URL", "POLAR_ACCESS_TOKEN", "POLAR_ENVIRONMENT", "POLAR_BASE_URL", "METERING_OUTBOX")


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test starts with no metering environment variables and no default client."""
    for name in _ENV:
        monkeypatch.delenv(name, raising=False)
    yield
    metering.shutdown()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock("2026-01-15T12:00:00+00:00")


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'metering.db'}"


def postgresql_base_url() -> str | None:
    """The PostgreSQL server for tests; CI always provides one (a missing server fails there)."""
    url = os.environ.get("METERING_TEST_POSTGRESQL_URL")
    if not url and os.environ.get("CI"):
        raise RuntimeError("CI must provide METERING_TEST_POSTGRESQL_URL (see .ci/postgres.sh)")
    return url or None


@pytest.fixture
def postgresql_url() -> Iterator[str]:
    """A fresh, empty database on the test PostgreSQL server, dropped afterwards."""
    base = postgresql_base_url()
    if base is None:
        pytest.skip("no PostgreSQL server: set METERING_TEST_POSTGRESQL_URL (CI always sets it)")
    import uuid

    import psycopg

    name = f"pm_test_{uuid.uuid4().hex[:12]}"
    plain = base.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    head, _, _ = plain.rpartition("/")
    try:
        yield f"{head}/{name}"
    finally:
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
