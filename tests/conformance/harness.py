"""Backends under test, each behind one small harness so the same tests run over all of them.

A harness builds a client on its backend, can give a customer credits the way that backend does it
(a plan on the local engine, a credit grant in Polar), and can wait until tracked usage shows in
readings (at once on the local engine; after delivery and settling with Polar).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import pytest

from polar_metering import Catalog, Metering
from polar_metering._catalog import DEFAULT_METERS, Meter
from polar_metering.backends._engine.backend import LocalEngine


class Harness(Protocol):
    name: str
    client: Metering

    def give_credits(self, customer: str, meter: str, units: float) -> None: ...

    def settle(self) -> None: ...


class EngineHarness:
    """The local engine at a URL: credits through grants, as a meter-credit benefit gives them in
    Polar (each grant adds to the running sum; plans have their own tests, ``test_lifecycle``)."""

    def __init__(self, name: str, url: str, catalog: Catalog) -> None:
        self.name = name
        self.client = Metering(url, catalog=catalog)
        assert isinstance(self.client.backend, LocalEngine)
        self.engine: LocalEngine = self.client.backend

    def give_credits(self, customer: str, meter: str, units: float) -> None:
        self.engine.grant_credits(customer, self.engine._meter_id(meter).id, units)

    def settle(self) -> None:
        assert self.client.flush(10)

    def close(self) -> None:
        self.client.close()


Factory = Callable[[pytest.FixtureRequest, Catalog], Any]
_FACTORIES: dict[str, Factory] = {}


def register(name: str) -> Callable[[Factory], Factory]:
    """Add a backend to the conformance matrix."""

    def deco(fn: Factory) -> Factory:
        _FACTORIES[name] = fn
        return fn

    return deco


@register("sqlite-file")
def _sqlite_file(request: pytest.FixtureRequest, catalog: Catalog) -> EngineHarness:
    tmp = request.getfixturevalue("tmp_path")
    return EngineHarness("sqlite-file", f"sqlite:///{tmp / 'conformance.db'}", catalog)


@register("sqlite-memory")
def _sqlite_memory(request: pytest.FixtureRequest, catalog: Catalog) -> EngineHarness:
    return EngineHarness("sqlite-memory", "sqlite:///:memory:", catalog)


@register("postgresql")
def _postgresql(request: pytest.FixtureRequest, catalog: Catalog) -> EngineHarness:
    url = request.getfixturevalue("postgresql_url")
    return EngineHarness("postgresql", url, catalog)


def factories() -> dict[str, Factory]:
    return _FACTORIES


@contextmanager
def open_harness(
    request: pytest.FixtureRequest,
    name: str,
    meters: tuple[Meter, ...] = DEFAULT_METERS,
    *,
    catalog: Catalog | None = None,
) -> Iterator[Any]:
    """A harness on backend ``name`` with ``catalog`` (or just ``meters``); closed afterwards."""
    harness = _FACTORIES[name](request, catalog if catalog is not None else Catalog(meters))
    try:
        yield harness
    finally:
        harness.close()
