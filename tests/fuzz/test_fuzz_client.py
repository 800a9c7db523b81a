"""Hypothesis over the client API on the embedded engine (a SQLite file), sync and async, with the
module-level functions too. See ``scenarios.py`` for what each run asserts."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.fuzz import scenarios
from tests.fuzz.helpers import CATALOG, examples

import polar_metering as metering
from polar_metering import ConfigurationError, Metering

FUZZ = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)


@pytest.fixture(scope="module")
def db_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('fuzz') / 'fuzz.db'}"


@pytest.fixture(scope="module")
def client(db_url: str) -> Iterator[Metering]:
    c = Metering(db_url, catalog=CATALOG)
    yield c
    c.close()


@pytest.fixture(scope="module")
def strict(db_url: str) -> Iterator[Metering]:
    c = Metering(db_url, catalog=CATALOG, strict=True)
    yield c
    c.close()


@settings(FUZZ, max_examples=examples(180))
@given(data=st.data())
def test_batches_keep_good_items_once_and_name_bad_ones(
    client: Metering, strict: Metering, data: st.DataObject
) -> None:
    scenarios.batch_keeps_good_and_names_bad(client, strict, data)


@settings(FUZZ, max_examples=examples(300))
@given(data=st.data())
def test_trackers_report_and_never_raise(client: Metering, strict: Metering, data: st.DataObject) -> None:
    scenarios.trackers_never_raise(client, strict, data)


@settings(FUZZ, max_examples=examples(350))
@given(data=st.data())
def test_limit_calls_raise_only_library_errors(client: Metering, data: st.DataObject) -> None:
    scenarios.limit_calls_raise_only_ours(client, data)


@settings(FUZZ, max_examples=examples(150))
@given(data=st.data())
def test_async_client_and_aio_functions_raise_only_library_errors(
    client: Metering, db_url: str, data: st.DataObject
) -> None:
    try:
        metering.get_client()
    except ConfigurationError:
        metering.init(db_url, catalog=CATALOG)
    scenarios.async_calls_raise_only_ours(client.aio, data)
