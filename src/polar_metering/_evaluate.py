"""Meter evaluation with Polar's SQL semantics (``server/polar/meter/filter.py``,
``aggregation.py`` in polarsource/polar), in pure Python.

Polar evaluates filters two ways: in SQL for balances and quantities, in Python for billing. Where
they differ, this module follows the SQL path, because balances are what limits are checked against:

- a metadata *string* compares as text against the clause value rendered as text (``True`` → ``"t"``,
  ``5`` → ``"5"``), so ``eq 5`` matches ``"5"``;
- a metadata *number* compares as a number, and only against int/bool clause values (``True`` → 1);
- a metadata *boolean* compares only against bool clause values;
- a missing key or an object matches nothing, not even ``ne`` or ``not_like``;
- ``like`` / ``not_like`` are case-sensitive substring tests on the JSON text (``%`` and ``_`` are
  literal characters).

Filters are compiled once into closures; evaluating one is a few dict lookups per clause.
"""

from __future__ import annotations

import json
import math
import operator
from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any, TypeAlias

from polar_metering._catalog import Aggregation, Filter, FilterClause

__all__ = [
    "Matcher",
    "ValueReader",
    "compile_filter",
    "compile_value_reader",
    "json_text",
    "lookup",
    "unique_key",
]

# (name, source, timestamp in epoch seconds, metadata) -> bool
Matcher: TypeAlias = Callable[[str, str, int, Mapping[str, Any]], bool]
# (name, source, timestamp, metadata) -> the number an aggregation takes from the event, or None
ValueReader: TypeAlias = Callable[[str, str, int, Mapping[str, Any]], float | None]

_MISSING = object()
_COLUMNS = ("name", "source", "timestamp")
_COMPARE: dict[str, Callable[[Any, Any], bool]] = {
    "eq": operator.eq,
    "ne": operator.ne,
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
}


def lookup(metadata: Mapping[str, Any], path: str) -> Any:
    """Follow a dotted path through nested objects (``_llm.total_tokens``); ``_MISSING`` if absent."""
    if path in metadata:
        return metadata[path]
    if "." not in path:
        return _MISSING
    value: Any = metadata
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _pg_number(value: float) -> str:
    # The SDK sends a float as Python's JSON text (repr); jsonb keeps it as a numeric with that scale
    # and prints it positionally: 2.0 stays "2.0", 1e16 prints as "10000000000000000", and numeric has
    # no negative zero.
    if value == 0:
        return "0.0"
    return format(Decimal(repr(value)), "f")


def _pg_json(value: Any) -> str:
    # jsonb's text form: ", " and ": " separators, raw UTF-8, and object keys ordered shortest first,
    # then bytewise (jsonb does not keep the order they were sent in).
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, Mapping):
        keys = sorted(value, key=lambda k: (len(str(k).encode()), str(k).encode()))
        return "{" + ", ".join(f"{_pg_json(str(k))}: {_pg_json(value[k])}" for k in keys) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_pg_json(v) for v in value) + "]"
    if value is None:
        return "null"
    return json_text(value)


def json_text(value: Any) -> str:
    """What PostgreSQL's ``->>`` gives for a JSON value: strings raw, the rest as jsonb prints them."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _pg_number(value)
    return _pg_json(value)


def _clause_text(value: str | int | bool) -> str:
    # A clause value rendered for a text comparison, as PostgreSQL renders a bound parameter.
    if isinstance(value, bool):
        return "t" if value else "f"
    return str(value)


def _is_number(value: Any) -> bool:
    return type(value) in (int, float)


def _compile_clause(clause: FilterClause) -> Matcher:
    prop, op, expected = clause.property, clause.operator, clause.value
    if op in ("like", "not_like"):
        needle = _clause_text(expected)
        negate = op == "not_like"
        if prop in _COLUMNS:
            idx = _COLUMNS.index(prop)
            # server/polar/meter/filter.py: a clause value of the wrong type for the column (not str for
            # name/source, not int
            # for timestamp) makes the clause false, like included. Polar's check is isinstance(v, int),
            # which lets a bool through: timestamp like True searches "t" in the epoch text.
            if not isinstance(expected, int if prop == "timestamp" else str):
                return lambda n, s, t, m: False

            def column_like(n: str, s: str, t: int, m: Mapping[str, Any]) -> bool:
                text = (n, s, str(t))[idx]
                return (needle in text) != negate

            return column_like

        def meta_like(n: str, s: str, t: int, m: Mapping[str, Any]) -> bool:
            value = lookup(m, prop)
            if value is _MISSING or value is None:
                return False
            return (needle in json_text(value)) != negate

        return meta_like

    compare = _COMPARE[op]
    if prop == "name" or prop == "source":
        if not isinstance(expected, str):
            return lambda n, s, t, m: False
        if prop == "name":
            return lambda n, s, t, m: compare(n, expected)
        return lambda n, s, t, m: compare(s, expected)
    if prop == "timestamp":
        if isinstance(expected, bool) or not isinstance(expected, int):
            return lambda n, s, t, m: False
        return lambda n, s, t, m: compare(t, expected)

    as_text = _clause_text(expected)
    as_number: float | None = None if isinstance(expected, str) else float(expected)
    as_bool: bool | None = expected if isinstance(expected, bool) else None

    def meta_compare(n: str, s: str, t: int, m: Mapping[str, Any]) -> bool:
        value = lookup(m, prop)
        kind = type(value)
        if kind is str:
            return compare(value, as_text)
        if kind is bool:
            return as_bool is not None and compare(value, as_bool)
        if kind is int or kind is float:
            return as_number is not None and compare(value, as_number)
        return False  # missing, null or object: the SQL CASE yields NULL, which never matches

    return meta_compare


def compile_filter(flt: Filter) -> Matcher:
    """Compile ``flt`` into a function of (name, source, timestamp_seconds, metadata)."""
    parts = [compile_filter(c) if isinstance(c, Filter) else _compile_clause(c) for c in flt.clauses]
    if not parts:
        # server/polar/meter/filter.py: zero clauses match everything, for and and or alike
        return lambda n, s, t, m: True
    if len(parts) == 1:
        return parts[0]
    if flt.conjunction == "and":
        return lambda n, s, t, m: all(p(n, s, t, m) for p in parts)
    return lambda n, s, t, m: any(p(n, s, t, m) for p in parts)


def compile_value_reader(agg: Aggregation) -> ValueReader:
    """The number an aggregation reads from a matching event (server/polar/meter/aggregation.py): only JSON
    numbers count;
    strings, booleans and missing keys are skipped, never read as 0. ``timestamp`` reads the epoch
    seconds; ``name`` and ``source`` never give a number."""
    prop = agg.property
    if prop is None:
        return lambda n, s, t, m: 1.0
    if prop == "timestamp":
        return lambda n, s, t, m: float(t)
    if prop in ("name", "source"):
        return lambda n, s, t, m: None

    def read(n: str, s: str, t: int, m: Mapping[str, Any]) -> float | None:
        value = m.get(prop, _MISSING) if "." not in prop else lookup(m, prop)
        kind = type(value)
        if kind is int or kind is float:
            return float(value)
        return None

    return read


def unique_key(value: Any) -> str | None:
    """A key for ``COUNT(DISTINCT jsonb)``: ``"1"`` and ``1`` differ, ``1`` and ``1.0`` are one value,
    and null or missing values are not counted (server/polar/meter/aggregation.py)."""
    if value is _MISSING or value is None:
        return None
    kind = type(value)
    if kind is str:
        return f"s:{value}"
    if kind is bool:
        return "b:1" if value else "b:0"
    if kind is int:
        return "n:" + str(value)
    if kind is float:
        if math.isfinite(value) and value == int(value):
            return "n:" + str(int(value))
        return "n:" + repr(value)
    # jsonb equality ignores key order and compares nested numbers numerically.
    return "o:" + json.dumps(_unique_canonical(value), sort_keys=True, separators=(",", ":"))


def _unique_canonical(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _unique_canonical(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_unique_canonical(v) for v in value]
    if type(value) is float and math.isfinite(value) and value == int(value):
        return int(value)
    return value


def unique_reader(agg: Aggregation) -> Callable[[Mapping[str, Any]], str | None]:
    """The distinct-value key a ``unique`` meter takes from an event. ``unique`` always reads
    metadata, even for ``name`` (server/polar/meter/filter.py)."""
    prop = agg.property or ""
    return lambda m: unique_key(lookup(m, prop))
