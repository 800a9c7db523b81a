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
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from polar_metering._catalog import Catalog, Meter, Plan
from polar_metering._client import AsyncMetering, Metering
from polar_metering._clock import ManualClock
from polar_metering._events import Event
from polar_metering._exceptions import ValidationError

__all__ = ["ManualClock", "capture_events", "metering_for_tests"]


def metering_for_tests(
    *,
    meters: Sequence[Meter] | None = None,
    plans: Sequence[Plan] = (),
    start: str = "2026-01-01T00:00:00+00:00",
    url: str = "sqlite:///:memory:",
    **options: Any,
) -> tuple[Metering, ManualClock]:
    """A client on an in-memory engine with a manual clock starting at ``start``; strict by default,
    so a test's bad event raises instead of being reported."""
    clock = ManualClock(start)
    options.setdefault("strict", True)
    catalog = Catalog(meters) if meters is not None else Catalog()  # type: ignore[arg-type]
    return Metering(url, catalog=catalog, plans=plans, clock=clock, **options), clock


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
