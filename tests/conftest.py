"""Shared fixtures: a clean environment per test, a manual clock, and engine URLs on real databases."""

from __future__ import annotations

import atexit
import os
import subprocess
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


_CLUSTER: dict[str, str] = {}
_ROOT = Path(__file__).resolve().parent.parent


def _start_local_cluster() -> str | None:
    """Start a throwaway cluster with .ci/postgres.sh when PostgreSQL's binaries are on this machine,
    so the README's plain ``python -m pytest`` runs the PostgreSQL tests too (stopped at exit)."""
    script = _ROOT / ".ci" / "postgres.sh"
    probe = subprocess.run(
        ["bash", "-c", f". {script}; pg_bindir"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        return None
    started = subprocess.run(["bash", str(script), "start"], capture_output=True, text=True, check=False)
    if started.returncode != 0:
        return None
    exports = dict(
        line.removeprefix("export ").split("=", 1)
        for line in started.stdout.splitlines()
        if line.startswith("export ")
    )
    _CLUSTER.update(exports)
    atexit.register(lambda: subprocess.run(["bash", str(script), "stop", _CLUSTER["PM_PG_DIR"]], check=False))
    return exports.get("METERING_TEST_POSTGRESQL_URL")


def postgresql_base_url() -> str | None:
    """The PostgreSQL server for tests: METERING_TEST_POSTGRESQL_URL, else a local throwaway cluster.
    CI always provides one; a missing server fails there rather than skipping."""
    url = os.environ.get("METERING_TEST_POSTGRESQL_URL") or _CLUSTER.get("METERING_TEST_POSTGRESQL_URL")
    if not url and "tried" not in _CLUSTER:
        _CLUSTER["tried"] = "1"
        url = _start_local_cluster()
    if not url and os.environ.get("CI"):
        raise RuntimeError("CI must provide METERING_TEST_POSTGRESQL_URL (see .ci/postgres.sh)")
    return url or None


@pytest.fixture
def postgresql_url() -> Iterator[str]:
    """A fresh, empty database on the test PostgreSQL server, dropped afterwards."""
    base = postgresql_base_url()
    if base is None:
        pytest.skip(
            "no PostgreSQL server: install PostgreSQL or set METERING_TEST_POSTGRESQL_URL (CI always has one)"
        )
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
