"""Helpers for testing code that uses polar-metering.

::

    from polar_metering.testing import metering_for_tests, capture_events

    def test_generate_tracks_tokens():
        client, clock = metering_for_tests(plans=[Plan("free", credits={"ai_tokens": 100})])
        client.subscribe("user_1", "free")
        with capture_events(client) as events:
            my_app.generate(client, "user_1", "hello")
        assert [e.name for e in events] == ["ai.tokens"]
        clock.advance(days=31)                     # cross into the next billing period

The embedded engine runs in memory with a manual clock, so tests are fast and deterministic. For
code that talks to Polar through ``polar-sdk``, run the emulator (``polar_metering.emulator``).

Code that uses the module-level functions (``metering.track_usage``, ``metering.aio``) or a framework
integration reads the *default* client. :func:`use` installs a test client as that default for the
length of a test; with pytest the plugin's ``metering`` and ``metering_clock`` fixtures do it for you::

    def test_generate(metering, metering_clock):      # pytest: no import needed
        metering.subscribe("user_1", Plan("free", credits={"ai_tokens": 100}))
        my_app.generate("user_1", "hello")           # calls metering.track_ai_tokens(...)
        assert metering.check_limit("user_1", "ai_tokens").current == 5

    class GenerateTest(unittest.TestCase):           # any other runner
        def setUp(self):
            self.client, self.clock = metering_for_tests()
            self.addCleanup(self.client.close)
            self.addCleanup(use(self.client).restore)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

from polar_metering._catalog import Catalog, Meter, Plan, load_catalog
from polar_metering._client import AsyncMetering, Metering
from polar_metering._clock import ManualClock
from polar_metering._events import Event
from polar_metering._exceptions import ValidationError

__all__ = ["Installed", "ManualClock", "capture_events", "metering_for_tests", "use"]


def metering_for_tests(
    *,
    meters: Sequence[Meter] | None = None,
    plans: Sequence[Plan] = (),
    catalog: Catalog | str | Path | None = None,
    start: str = "2026-01-01T00:00:00+00:00",
    url: str = "sqlite:///:memory:",
    **options: Any,
) -> tuple[Metering, ManualClock]:
    """A client on an in-memory engine with a manual clock starting at ``start``; strict by default,
    so a test's bad event raises instead of being reported.

    ``catalog`` is a :class:`Catalog`, a ``metering.toml`` path or ``module:attribute`` (your app's
    meters and plans); ``meters``/``plans`` build one in code instead; the four default meters
    otherwise. Other keywords are :class:`~polar_metering.MeteringConfig` options.
    """
    clock = ManualClock(start)
    options.setdefault("strict", True)
    if catalog is not None and meters is not None:
        raise ValidationError("catalog", "give either catalog= or meters=, not both", None)
    if catalog is not None:
        cat = load_catalog(str(catalog) if isinstance(catalog, Path) else catalog)
    else:
        cat = Catalog(meters) if meters is not None else Catalog()  # type: ignore[arg-type]
    return Metering(url, catalog=cat, plans=plans, clock=clock, **options), clock


class Installed:
    """A client installed as the default by :func:`use`; ``restore()`` (or leaving the ``with``
    block) puts back whatever was the default before. The client is not closed: its owner closes it."""

    def __init__(self, client: Metering) -> None:
        from polar_metering import _api

        self.client = client
        self._previous = _api._install(client)
        self._restored = False

    def restore(self) -> None:
        """Put the previous default client back. Safe to call twice."""
        from polar_metering import _api

        if not self._restored:
            self._restored = True
            _api._restore(self._previous)

    def __enter__(self) -> Metering:
        return self.client

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.restore()


def use(client: Metering | AsyncMetering) -> Installed:
    """Make ``client`` the default client, the one ``polar_metering.track_*``, ``polar_metering.aio``
    and the framework integrations use, until ``restore()`` or the end of a ``with use(client):``
    block. Meanwhile ``metering.init()`` returns this client instead of replacing it (an app that
    configures metering at startup runs on the test's client) and ``metering.shutdown()`` only
    flushes it. An ``AsyncMetering`` installs the sync client it wraps (its ``aio`` twin is then the
    one ``polar_metering.aio`` uses)."""
    if isinstance(client, AsyncMetering):
        client = client.sync
    if not isinstance(client, Metering):
        raise ValidationError("client", "must be a Metering or AsyncMetering client", client)
    return Installed(client)


@contextmanager
def capture_events(client: Metering) -> Iterator[list[Event]]:
    """Collect every event the client stores while the block runs (they are still stored)."""
    if not isinstance(client, Metering | AsyncMetering):
        raise ValidationError("client", "must be a Metering or AsyncMetering client", client)
    captured: list[Event] = []
    backend = client.backend
    original = backend.ingest

    def ingest(events: Sequence[Event]) -> Any:
        result = original(events)
        captured.extend(events)
        return result

    backend.ingest = ingest  # type: ignore[method-assign]
    try:
        yield captured
    finally:
        backend.ingest = original  # type: ignore[method-assign]
