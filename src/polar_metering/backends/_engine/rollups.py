"""Pure rollup arithmetic: what a batch of events adds to each (customer, meter) total.

Kept apart from the SQL so that the same code feeds ingest, rebuilds and the reference checks in
tests (a rollup must always equal a fresh aggregation of the raw events).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from polar_metering._catalog import Aggregation, Filter
from polar_metering._evaluate import Matcher, ValueReader, compile_filter, compile_value_reader, unique_reader

__all__ = ["CompiledMeter", "Delta", "RowState", "accumulate", "consumed_of", "merge"]


@dataclass(frozen=True, slots=True)
class CompiledMeter:
    id: str
    slug: str | None
    name: str
    func: str
    filter: Filter
    aggregation: Aggregation
    matcher: Matcher
    reader: ValueReader
    unique: Any
    archived: bool = False

    @classmethod
    def build(
        cls, meter_id: str, slug: str | None, name: str, flt: Filter, agg: Aggregation, archived: bool = False
    ) -> CompiledMeter:
        return cls(
            meter_id,
            slug,
            name,
            agg.func,
            flt,
            agg,
            compile_filter(flt),
            compile_value_reader(agg),
            unique_reader(agg) if agg.func == "unique" else None,
            archived,
        )


@dataclass(slots=True)
class Delta:
    """What new events add to one rollup row."""

    n: int = 0
    total: float = 0.0
    vmax: float | None = None
    vmin: float | None = None
    keys: set[str] = field(default_factory=set)
    matched: int = 0


@dataclass(slots=True)
class RowState:
    n: int = 0
    total: float = 0.0
    vmax: float | None = None
    vmin: float | None = None


class MeterIndex:
    """Meters grouped by the event name their filter requires, so each event is only tested against
    meters that could match it (most filters start with ``name eq ...``)."""

    __slots__ = ("any_name", "by_name")

    def __init__(self, meters: Iterable[CompiledMeter]) -> None:
        self.by_name: dict[str, list[CompiledMeter]] = {}
        self.any_name: list[CompiledMeter] = []
        for m in meters:
            if m.archived:
                continue
            name = m.filter.event_template()[0]
            if name is None:
                self.any_name.append(m)
            else:
                self.by_name.setdefault(name, []).append(m)

    def candidates(self, name: str) -> list[CompiledMeter]:
        named = self.by_name.get(name)
        if named is None:
            return self.any_name
        return named + self.any_name if self.any_name else named


def accumulate(
    deltas: dict[tuple[str, str], Delta],
    meters: Iterable[CompiledMeter],
    customer: str,
    name: str,
    source: str,
    ts_seconds: int,
    metadata: Mapping[str, Any],
) -> None:
    """Add one event to ``deltas`` for every meter it matches (server/polar/meter/aggregation.py rules for
    what counts)."""
    if source != "user":
        return  # customer meters aggregate user events only (server/polar/customer_meter/service.py)
    for m in meters:
        if m.archived or not m.matcher(name, source, ts_seconds, metadata):
            continue
        d = deltas.get((customer, m.id))
        if d is None:
            d = deltas[(customer, m.id)] = Delta()
        d.matched += 1
        func = m.func
        if func == "count":
            d.n += 1
        elif func == "unique":
            key = m.unique(metadata)
            if key is not None:
                d.keys.add(key)
        else:
            v = m.reader(name, source, ts_seconds, metadata)
            if v is None:
                continue
            d.n += 1
            d.total += v
            if d.vmax is None or v > d.vmax:
                d.vmax = v
            if d.vmin is None or v < d.vmin:
                d.vmin = v


def merge(state: RowState, delta: Delta, new_unique: int) -> RowState:
    """The row after ``delta``; ``new_unique`` is how many of ``delta.keys`` were not yet counted."""
    vmax = (
        state.vmax
        if delta.vmax is None
        else delta.vmax
        if state.vmax is None
        else max(state.vmax, delta.vmax)
    )
    vmin = (
        state.vmin
        if delta.vmin is None
        else delta.vmin
        if state.vmin is None
        else min(state.vmin, delta.vmin)
    )
    n = state.n + (new_unique if delta.keys else delta.n)
    return RowState(n, state.total + delta.total, vmax, vmin)


def consumed_of(func: str, state: RowState) -> float:
    """Polar's ``consumed_units`` from a rollup row; an empty set gives 0 (``COALESCE``,
    server/polar/customer_meter/service.py)."""
    if func in ("count", "unique"):
        return float(state.n)
    if func == "sum":
        return state.total
    if func == "max":
        return state.vmax if state.vmax is not None else 0.0
    if func == "min":
        return state.vmin if state.vmin is not None else 0.0
    if func == "avg":
        return state.total / state.n if state.n else 0.0
    raise ValueError(f"unknown aggregation {func!r}")


try:  # orjson is ~10x faster than json for the small objects stored per event
    import orjson

    def dumps(value: Any) -> str:
        try:
            return orjson.dumps(value).decode()
        except TypeError:  # integers beyond 64 bits, which Polar accepts (server/polar/kit/metadata.py)
            return json.dumps(value, separators=(",", ":"), ensure_ascii=False)

except ImportError:  # pragma: no cover - orjson is a dependency; this keeps source checkouts working

    def dumps(value: Any) -> str:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
