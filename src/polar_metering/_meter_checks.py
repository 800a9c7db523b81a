"""Meters that will behave surprisingly on Polar, found from their definition alone.

Each finding names the meter, what will happen on Polar's server, why (the Polar source that
decides it, at ``polarsource/polar`` c6c3645), and how to write the meter instead. ``polar-metering
check-meters`` prints them, and ``setup`` warns about them. The embedded engine does not share the
first two behaviours (see ``docs/semantics.md``, "Where Polar differs from its own documentation"),
which is exactly why they surprise: a meter that looks right locally reads differently on Polar.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from polar_metering._catalog import Aggregation, Catalog, Filter, FilterClause, Meter
from polar_metering._evaluate import compile_filter, lookup
from polar_metering._status import as_dict

__all__ = [
    "MeterFinding",
    "absorbs_credits",
    "aggregation_takes",
    "check_meter",
    "check_meters",
    "credit_event",
    "reads_dotted_as_missing",
]

Kind = Literal[
    "dotted-property", "absorbs-credits", "never-matches", "like-on-number", "double-metadata-prefix"
]
_COLUMNS = ("name", "source", "timestamp")
_RAW_FUNCS = ("max", "min", "avg", "unique")


@dataclass(frozen=True, slots=True)
class MeterFinding:
    """One surprise: ``kind`` (stable, for scripts), what happens and why (``reason``), and ``fix``."""

    meter: str
    kind: Kind
    reason: str
    fix: str

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict of the fields (timestamps as ISO-8601 strings)."""
        return as_dict(self)

    def __str__(self) -> str:
        return f"{self.meter}: {self.reason} Fix: {self.fix}"


def reads_dotted_as_missing(aggregation: Aggregation) -> bool:
    """Whether Polar's customer meters read this aggregation's property as one literal key:
    max/min/avg/unique over a dotted metadata path (``customer_meter/service.py``
    ``_get_raw_aggregation_column``, for customers with an external id)."""
    prop = aggregation.property or ""
    return aggregation.func in _RAW_FUNCS and "." in prop and prop not in _COLUMNS


def aggregation_takes(aggregation: Aggregation, metadata: Mapping[str, Any]) -> bool:
    """The aggregation's own SQL clause in Polar (``meter/aggregation.py`` ``get_sql_clause``):
    sum/max/min/avg take events whose property is a JSON number (``timestamp`` always, ``name``
    and ``source`` never); count and unique take every event."""
    if aggregation.func in ("count", "unique"):
        return True
    prop = aggregation.property or ""
    if prop in ("name", "source"):
        return False
    if prop == "timestamp":
        return True
    value = lookup(metadata, prop)
    return isinstance(value, int | float) and not isinstance(value, bool)


def credit_event(meter_id: str, units: float) -> dict[str, Any]:
    """The metadata of the ``meter.credited`` system event Polar writes for a credit grant."""
    return {"meter_id": meter_id, "units": units, "rollover": False}


def absorbs_credits(
    flt: Filter, aggregation: Aggregation, other_meter_id: str = "other", units: float = 1
) -> bool:
    """Whether a meter with this filter and aggregation takes in another meter's ``meter.credited``
    events: Polar sums the credit events that match a meter's own filter (``customer_meter/service.py``
    ``_get_credit_events``), where the aggregation's clause applies too."""
    metadata = credit_event(other_meter_id, units)
    return compile_filter(flt)("meter.credited", "system", 0, metadata) and aggregation_takes(
        aggregation, metadata
    )


def _clauses(flt: Filter) -> Iterator[FilterClause]:
    for clause in flt.clauses:
        if isinstance(clause, Filter):
            yield from _clauses(clause)
        else:
            yield clause


def _numeric_property(aggregation: Aggregation) -> str | None:
    if aggregation.func in ("sum", "max", "min", "avg") and aggregation.property not in _COLUMNS:
        return aggregation.property
    return None


def _clause_findings(meter: Meter) -> Iterator[MeterFinding]:
    numeric = _numeric_property(meter.aggregation)
    for c in _clauses(meter.filter):
        shown = f"{c.property} {c.operator} {c.value!r}"
        if c.property in ("name", "source") and not isinstance(c.value, str):
            yield MeterFinding(
                meter.slug,
                "never-matches",
                f"the clause `{shown}` compares the event's {c.property} (a string) with a "
                f"{type(c.value).__name__}, which Polar treats as false for every event "
                "(meter/filter.py: a column clause of the wrong type is false()).",
                f"write the value as a string: {c.property} {c.operator} {str(c.value)!r}.",
            )
        elif c.property == "timestamp" and (isinstance(c.value, bool) or not isinstance(c.value, int)):
            yield MeterFinding(
                meter.slug,
                "never-matches",
                f"the clause `{shown}` compares the timestamp (epoch seconds, an integer) with a "
                f"{type(c.value).__name__}, which Polar treats as false for every event.",
                "give the timestamp as an integer number of seconds since the epoch.",
            )
        elif c.property == numeric and c.operator in ("like", "not_like") and not isinstance(c.value, str):
            yield MeterFinding(
                meter.slug,
                "like-on-number",
                f"the clause `{shown}` runs a substring test on the JSON text of a number: "
                f"{c.property} like 5 matches 5, 15, 50 and 1.5 alike (meter/filter.py renders both sides "
                "as text for like).",
                f"compare numerically instead: {c.property} eq/gt/lt {c.value!r}.",
            )
        elif c.property == numeric and c.operator not in ("like", "not_like") and isinstance(c.value, str):
            yield MeterFinding(
                meter.slug,
                "never-matches",
                f"the clause `{shown}` compares {c.property!r}, which this meter aggregates as a number, "
                "with a string; Polar compares a JSON number only with an integer or boolean clause "
                "value, so the clause is false (ne included) for every event that counts.",
                f"write the value as a number: {c.property} {c.operator} {_as_number(c.value)}.",
            )
        if c.property.startswith("metadata."):
            yield _double_prefix(meter, c.property, f"the filter clause `{shown}`")
    prop = meter.aggregation.property
    if prop is not None and prop.startswith("metadata."):
        yield _double_prefix(meter, prop, f"the {meter.aggregation.func} aggregation")


def _as_number(value: str) -> str:
    try:
        number = float(value)
    except ValueError:
        return "<a number>"
    return str(int(number)) if number.is_integer() else str(number)


def _double_prefix(meter: Meter, prop: str, where: str) -> MeterFinding:
    key = prop.removeprefix("metadata.")
    return MeterFinding(
        meter.slug,
        "double-metadata-prefix",
        f"{where} names `metadata.{prop}`: Polar strips one `metadata.` prefix, so it reads the "
        f"nested path `{prop}`, i.e. a key `metadata` inside the event's metadata, which events do "
        "not have (meter/filter.py, meter/aggregation.py _strip_metadata_prefix).",
        f"name the key once: `{key}` (or `metadata.{key}`).",
    )


def check_meter(meter: Meter) -> list[MeterFinding]:
    """The findings for one meter."""
    found: list[MeterFinding] = []
    agg = meter.aggregation
    if reads_dotted_as_missing(agg):
        found.append(
            MeterFinding(
                meter.slug,
                "dotted-property",
                f"Polar's customer meters compute {agg.func} over `{agg.property}` by reading the single "
                f"key {agg.property!r}, dots and all, for customers with an external id, so the meter "
                f"shows 0 where quantities show the real {agg.func} (customer_meter/service.py "
                "_get_raw_aggregation_column). Limits on it never bite.",
                f"send the value under a flat key (e.g. `{agg.property.rsplit('.', 1)[-1]}`) and aggregate "  # type: ignore[union-attr]
                "that; sum and count follow dots correctly.",
            )
        )
    if absorbs_credits(meter.filter, agg):
        found.append(
            MeterFinding(
                meter.slug,
                "absorbs-credits",
                "its filter also matches Polar's own `meter.credited` events, and Polar counts every "
                "credit event a meter's filter matches as that meter's credit: this meter's "
                "credited_units will include the credits granted on all other meters "
                "(customer_meter/service.py _get_credit_events).",
                "add a clause that only your events pass, e.g. `name eq <event>` or `source eq 'user'`.",
            )
        )
    found.extend(_clause_findings(meter))
    return found


def check_meters(catalog: Catalog) -> list[MeterFinding]:
    """Every finding for every meter of ``catalog``, in catalog order."""
    return [finding for meter in catalog.meters for finding in check_meter(meter)]
