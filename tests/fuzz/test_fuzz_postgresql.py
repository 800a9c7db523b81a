"""The fuzz scenarios on the engine over PostgreSQL, for a representative subset: batches of good
and bad items, the trackers, and the limit calls (fewer examples than on SQLite; the rules are the
same code, this run is about what the PostgreSQL driver and its JSON path accept)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.conftest import postgresql_base_url
from tests.fuzz import scenarios
from tests.fuzz.helpers import CATALOG, examples

from polar_metering import Metering

pytestmark = pytest.mark.postgresql

FUZZ = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    """One fresh database for the module (hypothesis runs many examples per test function)."""
    base = postgresql_base_url()
    if base is None:
        pytest.skip("no PostgreSQL server: install PostgreSQL or set METERING_TEST_POSTGRESQL_URL")
    import psycopg

    name = f"pm_fuzz_{uuid.uuid4().hex[:12]}"
    plain = base.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    head, _, _ = plain.rpartition("/")
    try:
        yield f"{head}/{name}"
    finally:
        with psycopg.connect(plain, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def client(pg_url: str) -> Iterator[Metering]:
    c = Metering(pg_url, catalog=CATALOG)
    yield c
    c.close()


@pytest.fixture(scope="module")
def strict(pg_url: str) -> Iterator[Metering]:
    c = Metering(pg_url, catalog=CATALOG, strict=True)
    yield c
    c.close()


@settings(FUZZ, max_examples=examples(80))
@given(data=st.data())
def test_pg_batches_keep_good_items_once_and_name_bad_ones(
    client: Metering, strict: Metering, data: st.DataObject
) -> None:
    scenarios.batch_keeps_good_and_names_bad(client, strict, data)


@settings(FUZZ, max_examples=examples(100))
@given(data=st.data())
def test_pg_trackers_report_and_never_raise(client: Metering, strict: Metering, data: st.DataObject) -> None:
    scenarios.trackers_never_raise(client, strict, data)


@settings(FUZZ, max_examples=examples(100))
@given(data=st.data())
def test_pg_limit_calls_raise_only_library_errors(client: Metering, data: st.DataObject) -> None:
    scenarios.limit_calls_raise_only_ours(client, data)
