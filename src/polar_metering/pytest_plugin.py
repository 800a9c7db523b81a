"""The pytest plugin: ``metering`` and ``metering_clock`` fixtures for testing apps that meter usage.

Installed with the package (entry point ``pytest11``), so a test only names the fixtures::

    def test_generate_is_metered(metering, metering_clock):
        metering.subscribe("org_1", Plan("pro", credits={"ai_tokens": 1000}))
        client.post("/api/generate", headers={"X-Org-Id": "org_1"})   # your app, your test client
        assert metering.check_limit("org_1", "ai_tokens").current == 42
        metering_clock.advance(days=31)                                 # the next billing period

- ``metering``: a :class:`~polar_metering.Metering` on an in-memory engine with a manual clock,
  strict (a bad event raises), installed as the default client for the test and removed after it
  (:func:`polar_metering.testing.use`). Module-level calls (``metering.track_usage``,
  ``metering.aio``) and the framework integrations with no ``client=`` use it, and an app that calls
  ``metering.init()`` at startup gets it back instead of a new client.
- ``metering_clock``: that client's :class:`~polar_metering.ManualClock` (starts 2026-01-01 UTC).
- ``@pytest.mark.metering(**options)`` passes options to
  :func:`~polar_metering.testing.metering_for_tests` (``catalog="metering.toml"``, ``plans=[...]``,
  ``start="2026-03-01T00:00:00+00:00"``, ...); the ini option ``metering_catalog`` sets a catalog for
  every test.

With plugin autoloading off (``PYTEST_DISABLE_PLUGIN_AUTOLOAD``), add
``-p polar_metering.pytest_plugin`` or ``pytest_plugins = ["polar_metering.pytest_plugin"]``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from polar_metering._client import Metering
from polar_metering._clock import ManualClock
from polar_metering.testing import metering_for_tests, use

__all__ = ["metering", "metering_clock", "pytest_addoption", "pytest_configure"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "metering_catalog",
        "metering.toml path or module:attribute for the `metering` fixture's meters and plans",
        default=None,
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "metering(**options): options for the `metering` fixture (those of "
        "polar_metering.testing.metering_for_tests: catalog, meters, plans, start, ...)",
    )


def _options(request: pytest.FixtureRequest) -> dict[str, Any]:
    options: dict[str, Any] = {}
    catalog = request.config.getini("metering_catalog")
    if catalog:
        # A path is relative to the ini file, like every path pytest reads from it.
        root = request.config.inipath.parent if request.config.inipath else Path.cwd()
        options["catalog"] = str(root / catalog) if ":" not in str(catalog) else catalog
    for marker in reversed(list(request.node.iter_markers("metering"))):
        options.update(marker.kwargs)  # the closest marker wins
    return options


@pytest.fixture
def metering(request: pytest.FixtureRequest) -> Iterator[Metering]:
    """An in-memory client installed as the default for this test, closed after it."""
    client, _ = metering_for_tests(**_options(request))
    try:
        with use(client):
            yield client
    finally:
        client.close()


@pytest.fixture
def metering_clock(metering: Metering) -> ManualClock:
    """The manual clock of the ``metering`` fixture's client: ``advance(days=31)``, ``step(...)``."""
    clock = metering.config.clock
    assert isinstance(clock, ManualClock)  # metering_for_tests always builds one
    return clock
