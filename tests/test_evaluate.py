"""Polar's SQL-path filter and aggregation semantics (``get_sql_clause`` and ``get_sql_column`` in
server/polar/meter/filter.py and server/polar/meter/aggregation.py; see docs/semantics.md)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from polar_metering._catalog import Aggregation, Filter, FilterClause
from polar_metering._evaluate import (
    compile_filter,
    compile_value_reader,
    json_text,
    lookup,
    unique_key,
    unique_reader,
)

EPOCH = 1_234_567_890
OPERATORS = ("eq", "ne", "gt", "gte", "lt", "lte", "like", "not_like")
COMPARISONS = ("eq", "ne", "gt", "gte", "lt", "lte")


def matches(
    prop: str,
    op: str,
    value: str | int | bool,
    metadata: Mapping[str, Any] | None = None,
    *,
    name: str = "api.request",
    source: str = "user",
    ts: int = EPOCH,
) -> bool:
    clause = FilterClause(prop, op, value)  # type: ignore[arg-type]
    return compile_filter(Filter("and", (clause,)))(name, source, ts, metadata or {})


# --- column properties: name, source, timestamp (Event._filterable_fields, server/polar/models/event.py) --


@pytest.mark.parametrize(
    ("op", "value", "expected"),
    [
        ("eq", "api.request", True),
        ("eq", "api.requests", False),
        ("ne", "api.request", False),
        ("ne", "other", True),
        ("gt", "api.reques", True),
        ("gt", "api.request", False),
        ("gte", "api.request", True),
        ("lt", "b", True),
        ("lt", "api.request", False),
        ("lte", "api.request", True),
        ("like", "i.re", True),
        ("like", "API", False),  # case-sensitive
        ("not_like", "i.re", False),
        ("not_like", "xyz", True),
    ],
)
def test_name_column_operators(op: str, value: str, expected: bool) -> None:
    """Every operator on the event name compares it as text."""
    assert matches("name", op, value) is expected


@pytest.mark.parametrize("op", OPERATORS)
@pytest.mark.parametrize("value", [5, True, False])
def test_name_and_source_with_non_string_value_never_match(op: str, value: int | bool) -> None:
    """A clause value of the wrong type for name/source makes the clause false, ne and not_like too."""
    assert matches("name", op, value, name="5") is False
    assert matches("source", op, value, source="5") is False


def test_source_column() -> None:
    """``source`` is the event column, user or system."""
    assert matches("source", "eq", "user") is True
    assert matches("source", "eq", "system") is False
    assert matches("source", "ne", "system") is True
    assert matches("source", "eq", "system", source="system") is True


@pytest.mark.parametrize(
    ("op", "value", "expected"),
    [
        ("eq", EPOCH, True),
        ("eq", EPOCH + 1, False),
        ("ne", EPOCH, False),
        ("ne", EPOCH + 1, True),
        ("gt", EPOCH - 1, True),
        ("gt", EPOCH, False),
        ("gte", EPOCH, True),
        ("gte", EPOCH + 1, False),
        ("lt", EPOCH + 1, True),
        ("lt", EPOCH, False),
        ("lte", EPOCH, True),
        ("lte", EPOCH - 1, False),
    ],
)
def test_timestamp_column_compares_epoch_seconds(op: str, value: int, expected: bool) -> None:
    """``timestamp`` is the event time as integer epoch seconds."""
    assert matches("timestamp", op, value) is expected


def test_timestamp_like_casts_epoch_to_text() -> None:
    """``like`` on ``timestamp`` casts the epoch to text (``FilterClause.get_sql_clause``):
    ``not_like 345`` excludes epoch 1234567890; ``like`` finds it."""
    assert matches("timestamp", "like", 345) is True
    assert matches("timestamp", "not_like", 345) is False
    assert matches("timestamp", "like", 999) is False
    assert matches("timestamp", "not_like", 999) is True


@pytest.mark.parametrize("op", OPERATORS)
def test_timestamp_with_string_value_never_matches(op: str) -> None:
    """A string clause value is the wrong type for timestamp, so every operator is false, like too."""
    assert matches("timestamp", op, "345") is False
    assert matches("timestamp", op, str(EPOCH)) is False


@pytest.mark.parametrize("op", COMPARISONS)
def test_timestamp_with_bool_value_never_compares(op: str) -> None:
    """An epoch is never compared with a boolean (PostgreSQL has no integer = boolean)."""
    assert matches("timestamp", op, True, ts=1) is False


def test_timestamp_like_bool_searches_its_text() -> None:
    """Polar lets a bool through its int check; like then looks for "t" in the digits, which fails."""
    assert matches("timestamp", "like", True) is False
    assert matches("timestamp", "not_like", True) is True


def test_metadata_keys_named_like_columns_cannot_be_filtered() -> None:
    """``name``/``metadata.name`` address the event column, never a metadata key (the prefix is
    stripped, then ``Event._filterable_fields`` wins)."""
    meta = {"name": "from-metadata"}
    assert matches("name", "eq", "from-metadata", meta) is False
    assert matches("metadata.name", "eq", "from-metadata", meta) is False
    assert matches("metadata.name", "eq", "api.request", meta) is True


# --- metadata typing rules (the jsonb_typeof CASE of FilterClause.get_sql_clause) -----------------------


@pytest.mark.parametrize(
    ("stored", "op", "value", "expected"),
    [
        # strings compare as text against the clause value rendered as text
        ("5", "eq", 5, True),
        ("5", "eq", "5", True),
        ("5", "ne", 5, False),
        ("6", "ne", 5, True),
        ("t", "eq", True, True),
        ("f", "eq", False, True),
        ("true", "eq", True, False),
        ("b", "gt", "a", True),
        ("10", "gt", 9, False),  # text order: "10" < "9"
        ("10", "lt", 9, True),
        ("abc", "gte", "abc", True),
        ("abc", "lte", "abb", False),
        # numbers compare as numbers against int/bool values only
        (5, "eq", 5, True),
        (5.0, "eq", 5, True),
        (5.5, "gt", 5, True),
        (5.5, "lt", 6, True),
        (5, "eq", "5", False),
        (5, "ne", "5", False),
        (1, "eq", True, True),
        (0, "eq", False, True),
        (2, "gt", True, True),
        (-3, "lte", -3, True),
        (10**30, "gt", 2**31 - 1, True),
        # booleans compare only against bool values
        (True, "eq", True, True),
        (True, "ne", False, True),
        (True, "gt", False, True),
        (False, "lt", True, True),
        (True, "eq", 1, False),
        (True, "ne", 0, False),
        (True, "eq", "true", False),
        (True, "ne", "true", False),
    ],
)
def test_metadata_comparison_typing(stored: Any, op: str, value: str | int | bool, expected: bool) -> None:
    """String vs number vs bool: each JSON type compares only with the clause values its CASE branch
    allows."""
    assert matches("k", op, value, {"k": stored}) is expected


@pytest.mark.parametrize("op", OPERATORS)
@pytest.mark.parametrize("value", ["x", 5, True])
def test_missing_key_never_matches(op: str, value: str | int | bool) -> None:
    """A missing key yields SQL NULL: no operator matches, not even ne or not_like."""
    assert matches("k", op, value, {"other": "x"}) is False
    assert matches("k", op, value, {}) is False


@pytest.mark.parametrize("op", OPERATORS)
def test_json_null_never_matches(op: str) -> None:
    """A stored null behaves like a missing key."""
    assert matches("k", op, "x", {"k": None}) is False


@pytest.mark.parametrize("op", COMPARISONS)
@pytest.mark.parametrize("value", ["usd", 150, True])
def test_object_never_compares(op: str, value: str | int | bool) -> None:
    """An object has no CASE branch (``FilterClause.get_sql_clause``): eq, ne and the orderings are all
    false."""
    assert matches("_cost", op, value, {"_cost": {"amount": 150, "currency": "usd"}}) is False


def test_like_on_object_reads_its_jsonb_text() -> None:
    """like is a text test on ``->>``; for an object that is jsonb's text (short keys first)."""
    meta = {"_cost": {"currency": "usd", "amount": 150}}
    assert json_text(meta["_cost"]) == '{"amount": 150, "currency": "usd"}'
    assert matches("_cost", "like", '"currency": "usd"', meta) is True
    assert matches("_cost", "not_like", '"currency": "usd"', meta) is False
    assert matches("_cost", "not_like", "eur", meta) is True


@pytest.mark.parametrize(
    ("stored", "needle", "expected"),
    [
        ("Hello World", "lo Wo", True),
        ("Hello World", "hello", False),  # case-sensitive
        ("100% done", "%", True),  # % is a literal, not a wildcard
        ("abc", "%", False),
        ("a_c", "_", True),  # _ is a literal, not "any character"
        ("abc", "a_c", False),
        ("abc", "", True),
        (12345, 234, True),
        (12345, "234", True),
        (2.0, "2.0", True),  # jsonb keeps the number's scale
        (1e16, "10000000000000000", True),  # and prints it without an exponent
        (1e16, "e+", False),
        (True, True, True),  # "t" in "true"
        (False, False, True),  # "f" in "false"
        (True, "rue", True),
        (False, True, False),  # "t" is not in "false"
        ("flag t", True, True),
    ],
)
def test_like_is_case_sensitive_literal_substring(
    stored: Any, needle: str | int | bool, expected: bool
) -> None:
    """like/not_like test a literal substring of the value's text; not_like is its exact negation."""
    meta = {"k": stored}
    assert matches("k", "like", needle, meta) is expected
    assert matches("k", "not_like", needle, meta) is (not expected)


def test_nested_dotted_paths() -> None:
    """Dots traverse nested objects (``get_nested_metadata_attr`` in server/polar/kit/metadata.py); the
    ``metadata.`` prefix is stripped first."""
    meta = {"_llm": {"vendor": "openai", "model": "gpt-4", "total_tokens": 1500}}
    assert matches("_llm.total_tokens", "gt", 1000, meta) is True
    assert matches("metadata._llm.total_tokens", "gte", 1500, meta) is True
    assert matches("_llm.total_tokens", "lt", 1000, meta) is False
    assert matches("_llm.vendor", "eq", "openai", meta) is True
    assert matches("_llm.missing", "ne", 1, meta) is False
    assert matches("_llm.total_tokens.deeper", "ne", 1, meta) is False
    assert matches("flat.key", "ne", 1, {"flat": 5}) is False


def test_metadata_prefix_is_stripped() -> None:
    """``metadata.size_gb`` and ``size_gb`` are one key."""
    meta = {"size_gb": 2.5}
    for prop in ("size_gb", "metadata.size_gb"):
        assert matches(prop, "gt", 2, meta) is True
        assert matches(prop, "lt", 2, meta) is False


def test_lookup_reports_missing_and_present() -> None:
    """lookup returns the stored value, including falsy ones, and a sentinel for absence."""
    meta = {"a": 0, "b": {"c": False}}
    assert lookup(meta, "a") == 0
    assert lookup(meta, "b.c") is False
    assert lookup(meta, "b.d") is lookup(meta, "zzz")
    assert lookup(meta, "b.d") not in (None, 0, False)


# --- conjunctions ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("conjunction", ["and", "or"])
def test_empty_filter_matches_everything(conjunction: str) -> None:
    """Zero clauses match every event, for and and or alike (``Filter.get_sql_clause``)."""
    match = compile_filter(Filter(conjunction, ()))  # type: ignore[arg-type]
    assert match("anything", "system", 0, {}) is True
    assert match("x", "user", EPOCH, {"k": None}) is True


def test_nested_and_or() -> None:
    """Filters nest: (name = a.b) and ((tier = pro) or (tokens >= 100))."""
    flt = Filter(
        "and",
        (
            FilterClause("name", "eq", "a.b"),
            Filter("or", (FilterClause("tier", "eq", "pro"), FilterClause("tokens", "gte", 100))),
        ),
    )
    match = compile_filter(flt)
    assert match("a.b", "user", 0, {"tier": "pro"}) is True
    assert match("a.b", "user", 0, {"tier": "free", "tokens": 100}) is True
    assert match("a.b", "user", 0, {"tier": "free", "tokens": 99}) is False
    assert match("other", "user", 0, {"tier": "pro"}) is False
    empty_inside = compile_filter(Filter("and", (FilterClause("name", "eq", "a.b"), Filter("or", ()))))
    assert empty_inside("a.b", "user", 0, {}) is True


# --- properties (hypothesis) ----------------------------------------------------------------------------

meta_values = st.one_of(
    st.text(max_size=12),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
)
# Clause values are catalog text: no NUL, no surrogates (the catalog refuses both; see test_catalog).
clause_values = st.one_of(
    st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"), max_size=12),
    st.integers(min_value=-(2**31), max_value=2**31 - 1),
    st.booleans(),
)


def comparable(stored: Any, value: str | int | bool) -> bool:
    if type(stored) is str:
        return True
    if type(stored) in (int, float):
        return isinstance(value, int)
    return isinstance(value, bool) and type(stored) is bool


def as_text(value: str | int | bool) -> str:
    if isinstance(value, bool):
        return "t" if value else "f"
    return str(value)


@given(stored=meta_values, value=clause_values)
def test_ne_negates_eq_when_comparable_and_nothing_matches_otherwise(
    stored: Any, value: str | int | bool
) -> None:
    """With a comparable type, ne/gte/lte are the negations of eq/lt/gt; otherwise all six are false."""
    meta = {"k": stored}
    result = {op: matches("k", op, value, meta) for op in COMPARISONS}
    if comparable(stored, value):
        assert result["ne"] is (not result["eq"])
        assert result["gte"] is (not result["lt"])
        assert result["lte"] is (not result["gt"])
    else:
        assert not any(result.values()), result


@given(stored=meta_values, value=clause_values)
def test_eq_follows_the_typing_rules(stored: Any, value: str | int | bool) -> None:
    """eq on a string compares text, on a number compares numerically (True→1), on a bool compares bools."""
    got = matches("k", "eq", value, {"k": stored})
    if type(stored) is str:
        assert got is (stored == as_text(value))
    elif type(stored) is bool:
        assert got is (isinstance(value, bool) and stored is value)
    elif isinstance(value, str):
        assert got is False
    else:
        assert got is (float(stored) == float(int(value)))


@given(stored=meta_values, value=clause_values)
def test_not_like_negates_like_when_present(stored: Any, value: str | int | bool) -> None:
    """For a present, non-null value like and not_like are exact opposites."""
    meta = {"k": stored}
    assert matches("k", "not_like", value, meta) is (not matches("k", "like", value, meta))


clause_strategy = st.builds(
    FilterClause,
    property=st.sampled_from(["k", "j", "name", "timestamp", "metadata.k", "absent"]),
    operator=st.sampled_from(OPERATORS),
    value=clause_values,
)
event_strategy = st.tuples(
    st.sampled_from(["api.request", "k", ""]),
    st.sampled_from(["user", "system"]),
    st.integers(min_value=0, max_value=2**40),
    st.dictionaries(st.sampled_from(["k", "j", "name"]), meta_values, max_size=3),
)


@given(clauses=st.lists(clause_strategy, max_size=5), event=event_strategy)
def test_and_is_all_and_or_is_any(clauses: list[FilterClause], event: tuple[Any, ...]) -> None:
    """A conjunction of clauses behaves as all() over the clauses, a disjunction as any()."""
    singles = [compile_filter(Filter("and", (c,)))(*event) for c in clauses]
    assert compile_filter(Filter("and", tuple(clauses)))(*event) is all(singles)
    assert compile_filter(Filter("or", tuple(clauses)))(*event) is (any(singles) if clauses else True)


@given(
    left=st.lists(clause_strategy, min_size=1, max_size=3),
    right=st.lists(clause_strategy, min_size=1, max_size=3),
    event=event_strategy,
)
def test_nested_filters_compose(
    left: list[FilterClause], right: list[FilterClause], event: tuple[Any, ...]
) -> None:
    """A nested filter counts as one clause whose truth is the inner filter's."""
    inner_l, inner_r = Filter("or", tuple(left)), Filter("and", tuple(right))
    lv, rv = compile_filter(inner_l)(*event), compile_filter(inner_r)(*event)
    assert compile_filter(Filter("and", (inner_l, inner_r)))(*event) is (lv and rv)
    assert compile_filter(Filter("or", (inner_l, inner_r)))(*event) is (lv or rv)


# --- aggregation readers (server/polar/meter/aggregation.py) --------------------------------------------

EVENTS: list[dict[str, Any]] = [
    {"size_gb": 1},
    {"size_gb": 2.5},
    {"size_gb": "3"},  # a string is not a number, not even a numeric one
    {"size_gb": True},  # a bool is not a number
    {"size_gb": None},
    {},
    {"size_gb": {"nested": 9}},
    {"size_gb": -0.5},
]


def read_all(agg: Aggregation, events: list[dict[str, Any]], ts: int = EPOCH) -> list[float]:
    reader = compile_value_reader(agg)
    values = [reader("e", "user", ts, m) for m in events]
    return [v for v in values if v is not None]


@pytest.mark.parametrize("func", ["sum", "max", "min", "avg"])
def test_only_json_numbers_feed_property_aggregations(func: str) -> None:
    """Strings, booleans, nulls, objects and missing keys are skipped, never read as 0."""
    values = read_all(Aggregation(func, "size_gb"), EVENTS)  # type: ignore[arg-type]
    assert values == [1.0, 2.5, -0.5]
    assert all(type(v) is float for v in values)


def test_aggregate_over_mixed_events() -> None:
    """sum/max/min/avg over the numeric values only: 1, 2.5 and -0.5."""
    values = read_all(Aggregation.sum("metadata.size_gb"), EVENTS)
    assert sum(values) == 3.0
    assert max(values) == 2.5
    assert min(values) == -0.5
    assert sum(values) / len(values) == 1.0


def test_count_reads_one_per_event_even_without_the_property() -> None:
    """Every matching event counts, including ones without any metadata."""
    assert read_all(Aggregation.count(), EVENTS) == [1.0] * len(EVENTS)


def test_timestamp_aggregates_epoch_seconds_and_name_source_give_nothing() -> None:
    """sum/max on timestamp read epoch seconds; on name or source they read nothing
    (``PropertyAggregation.get_sql_clause``)."""
    assert read_all(Aggregation.max("timestamp"), [{}, {"timestamp": 5}], ts=EPOCH) == [float(EPOCH)] * 2
    assert read_all(Aggregation.sum("name"), [{"name": 5}]) == []
    assert read_all(Aggregation.sum("source"), [{"source": 5}]) == []


def test_nested_aggregation_path() -> None:
    """``_llm.total_tokens`` reads the nested number."""
    events: list[dict[str, Any]] = [
        {"_llm": {"total_tokens": 1500}},
        {"_llm": {"total_tokens": "9"}},
        {"_llm": 3},
        {},
    ]
    assert read_all(Aggregation.sum("_llm.total_tokens"), events) == [1500.0]


def test_unique_key_follows_jsonb_equality() -> None:
    """The string "1" and 1 differ, 1 and 1.0 are one value, True is neither, null is not counted."""
    assert unique_key("1") != unique_key(1)
    assert unique_key(1) == unique_key(1.0)
    assert unique_key(-0.0) == unique_key(0)
    assert unique_key(True) != unique_key(1)
    assert unique_key(True) != unique_key("true")
    assert unique_key(1.5) != unique_key(1)
    assert unique_key(2**53 + 1) != unique_key(float(2**53))
    assert unique_key(None) is None
    assert unique_key({"a": 1, "b": 2}) == unique_key({"b": 2.0, "a": 1})
    assert unique_key({"a": 1}) != unique_key({"a": "1"})


def test_unique_reader_counts_distinct_values_and_reads_metadata_even_for_name() -> None:
    """unique always reads metadata (``UniqueAggregation.get_sql_column``): on ``name`` it means
    ``metadata.name``."""
    users: list[dict[str, Any]] = [
        {"user_id": "u1"},
        {"user_id": "u2"},
        {"user_id": "u1"},
        {"user_id": 1},
        {"user_id": 1.0},
        {},
    ]
    read = unique_reader(Aggregation.unique("metadata.user_id"))
    keys = {read(m) for m in users} - {None}
    assert len(keys) == 3  # "u1", "u2", 1
    by_name = unique_reader(Aggregation.unique("name"))
    assert by_name({}) is None
    assert by_name({"name": "alice"}) == unique_key("alice")


@given(st.integers(min_value=-(2**53), max_value=2**53))
def test_unique_key_int_and_integral_float_agree(n: int) -> None:
    """Any integer and the float with the same value count once."""
    assert unique_key(n) == unique_key(float(n))
    assert unique_key(n) != unique_key(str(n))


def test_json_text_renders_like_postgres() -> None:
    """``->>`` text: strings raw, booleans true/false, numbers positional with their scale."""
    assert json_text("abc") == "abc"
    assert json_text(True) == "true"
    assert json_text(False) == "false"
    assert json_text(12) == "12"
    assert json_text(2.0) == "2.0"
    assert json_text(2.5) == "2.5"
    assert json_text(1.5e-7) == "0.00000015"
    assert json_text(-0.0) == "0.0"
    assert json_text({"é": [1, None]}) == '{"é": [1, null]}'
