"""Fixtures for the PostgreSQL engine tests.

``postgresql_url`` (a fresh database per test on ``METERING_TEST_POSTGRESQL_URL``; skipped when no
server is configured, an error under ``CI``) lives in ``tests/conftest.py``. ``engine_url`` runs a test
on a SQLite file and on PostgreSQL, so both engines are held to the same behaviour.
"""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)])
def engine_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'engine.db'}"
    url: str = request.getfixturevalue("postgresql_url")
    return url
