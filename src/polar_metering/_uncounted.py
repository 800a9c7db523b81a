"""Events that count for nothing, made visible.

An event whose name no meter's filter takes (a typo: ``api.requst``), or that a meter takes but
without the property the meter aggregates (``ai.tokens`` without a number in ``tokens``), is stored
and sent to Polar like any other, and never moves a meter. The first such event of each
``(name, property)`` logs one warning naming the nearest meter and its filter; with ``strict=True``
it is a :class:`ValidationError` instead, for every such event.

The check costs one set lookup per event: an event name is evaluated against the catalog once, and
from then on only looked up (names that count, and names already warned about). With ``strict=True``
every event is evaluated (a few microseconds), so each one that counts for nothing is refused.
What counts follows the engine's reading of Polar's rules (``_evaluate``, ``_meter_checks``): a
``sum``/``max``/``min``/``avg`` meter takes events whose property is a number, ``unique`` events
where the property has a value, ``count`` every event its filter matches.
"""

from __future__ import annotations

import difflib
import json
import logging
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from polar_metering._evaluate import Matcher, compile_filter, lookup, unique_key
from polar_metering._exceptions import ValidationError
from polar_metering._meter_checks import aggregation_takes

if TYPE_CHECKING:
    from polar_metering._catalog import Catalog, Meter
    from polar_metering._events import Event

__all__ = ["UncountedEvents"]

logger = logging.getLogger("polar_metering")
_VERBS = {
    "sum": "sums",
    "max": "takes the peak of",
    "min": "takes the least of",
    "avg": "averages",
    "unique": "counts distinct values of",
}


def _takes(meter: Meter, metadata: Mapping[str, Any]) -> bool:
    agg = meter.aggregation
    if agg.func == "unique":
        # COUNT(DISTINCT ...) skips a missing or null value.
        return unique_key(lookup(metadata, agg.property or "")) is not None
    return aggregation_takes(agg, metadata)


def _filter_text(meter: Meter) -> str:
    return json.dumps(meter.filter.to_polar(), separators=(",", ":"), ensure_ascii=False)


class UncountedEvents:
    """Per client: which event names were found to count, and which problems were reported."""

    def __init__(self, catalog: Catalog, *, strict: bool) -> None:
        self._catalog = catalog
        self._strict = strict
        #: names not to evaluate again: they count, or were reported (always empty when strict)
        self.skip: set[str] = set()
        self._compiled: list[tuple[Meter, Matcher]] | None = None
        self._warned: set[tuple[str, str | None]] = set()
        self._lock = threading.Lock()

    def _meters(self) -> list[tuple[Meter, Matcher]]:
        if self._compiled is None:
            self._compiled = [(m, compile_filter(m.filter)) for m in self._catalog.meters]
        return self._compiled

    def check(self, event: Event) -> None:
        """Warn about (or, strict, refuse) an event that counts on no meter."""
        if event.name in self.skip:
            return
        problem = self._problem(event)
        if problem is None:
            if not self._strict:
                self.skip.add(event.name)
            return
        key, field, rule = problem
        if self._strict:
            raise ValidationError(field, rule, event.name if field == "name" else None)
        with self._lock:
            first = key not in self._warned
            self._warned.add(key)
            self.skip.add(event.name)
        if first:
            logger.warning("polar_metering: event %r counts for nothing: %s", event.name, rule)

    def _problem(self, event: Event) -> tuple[tuple[str, str | None], str, str] | None:
        """``None`` when the event counts on some meter; else the key, field and rule to report."""
        meters = self._meters()
        if not meters:
            return None  # a catalog without meters: nothing is expected to count
        ts = int(event.timestamp.timestamp())
        matched = [m for m, match in meters if match(event.name, "user", ts, event.metadata)]
        for meter in matched:
            if _takes(meter, event.metadata):
                return None
        if matched:
            meter = matched[0]
            prop = meter.aggregation.property or ""
            func = meter.aggregation.func
            wants = "a value" if func == "unique" else "a number"
            doing = _VERBS.get(func, "aggregates")
            rule = (
                f"meter {meter.slug!r} takes it but needs {wants} in metadata {prop!r}, which it {doing}; "
                f"the meter's filter is {_filter_text(meter)}"
            )
            return (event.name, prop), f"metadata.{prop}", rule
        nearest = self._nearest(event.name)
        rule = (
            f"no meter's filter matches it; the nearest meter, {nearest.slug!r}, counts events with the "
            f"filter {_filter_text(nearest)}"
        )
        return (event.name, None), "name", rule

    def _nearest(self, name: str) -> Meter:
        """The meter whose event name is most like ``name`` (else the catalog's first meter)."""
        named = {m.event_name: m for m, _ in self._meters() if m.event_name}
        close = difflib.get_close_matches(name, list(named), n=1, cutoff=0.0)
        return named[close[0]] if close else self._meters()[0][0]
