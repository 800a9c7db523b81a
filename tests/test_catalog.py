"""Meters, filters, aggregations, plans and catalog loading (the default meters: docs/index.md; Polar's
rules: server/polar/meter/schemas.py, filter.py, aggregation.py)."""

from __future__ import annotations

import json
import math
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from polar_metering._catalog import (
    DEFAULT_METERS,
    Aggregation,
    Catalog,
    Filter,
    FilterClause,
    Meter,
    Plan,
    load_catalog,
    normalize_property,
)
from polar_metering._exceptions import ConfigurationError

# --- the four default meters (docs/index.md, "Meters") -----------------------------------------------


def test_default_meters_are_exactly_the_four_from_the_design() -> None:
    """api_requests counts api.request; storage_gb is max size_gb; ai_tokens sums tokens; team_seats is
    unique user_id."""
    got = [(m.slug, m.event_name, m.aggregation.func, m.aggregation.property) for m in DEFAULT_METERS]
    assert got == [
        ("api_requests", "api.request", "count", None),
        ("storage_gb", "storage.update", "max", "size_gb"),
        ("ai_tokens", "ai.tokens", "sum", "tokens"),
        ("team_seats", "seat.active", "unique", "user_id"),
    ]


@pytest.mark.parametrize("meter", DEFAULT_METERS, ids=lambda m: m.slug)
def test_default_meter_filters_select_only_their_event(meter: Meter) -> None:
    """Each default filter is exactly ``name eq <event>`` and nothing else."""
    assert meter.filter.to_polar() == {
        "conjunction": "and",
        "clauses": [{"property": "name", "operator": "eq", "value": meter.event_name}],
    }


def test_default_catalog() -> None:
    """No source means the default meters and no plans; their names are distinct."""
    catalog = load_catalog()
    assert catalog.meters == DEFAULT_METERS
    assert catalog.plans == ()
    assert catalog.slugs == ("api_requests", "storage_gb", "ai_tokens", "team_seats")
    assert len({m.name for m in DEFAULT_METERS}) == 4


# --- clauses and the metadata. prefix -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given_prop", "stored"),
    [
        ("metadata.size_gb", "size_gb"),
        ("size_gb", "size_gb"),
        ("metadata._llm.total_tokens", "_llm.total_tokens"),
    ],
)
def test_metadata_prefix_is_stripped(given_prop: str, stored: str) -> None:
    """A leading ``metadata.`` is dropped in clauses and aggregations alike (``_strip_metadata_prefix``
    in server/polar/meter/filter.py and aggregation.py)."""
    assert normalize_property(given_prop) == stored
    assert FilterClause(given_prop, "eq", 1).property == stored
    assert Aggregation.sum(given_prop).property == stored
    assert Aggregation.unique(given_prop).property == stored


@pytest.mark.parametrize("prop", ["", "metadata.", None, 5])
def test_clause_property_must_name_something(prop: Any) -> None:
    """An empty property (also once the prefix is stripped) is refused."""
    with pytest.raises(ConfigurationError, match="property"):
        FilterClause(prop, "eq", 1)


@pytest.mark.parametrize(
    ("value", "stored"),
    [
        (2**31 - 1, 2**31 - 1),
        (-(2**31), -(2**31)),
        (0, 0),
        (2.0, 2),
        (-7.0, -7),
        ("x" * 1000, "x" * 1000),
        ("", ""),
        ("5", "5"),
        (True, True),
        (False, False),
    ],
)
def test_clause_values_polar_accepts(value: Any, stored: Any) -> None:
    """Strings up to 1000 chars, signed 32-bit ints, bools; 2.0 becomes 2 and "5" stays a string."""
    clause = FilterClause("k", "eq", value)
    assert clause.value == stored
    assert type(clause.value) is type(stored)


@pytest.mark.parametrize(
    "value",
    [2**31, -(2**31) - 1, 2.5, -0.1, math.inf, math.nan, "x" * 1001, None, [1], {"a": 1}, b"x"],
)
def test_clause_values_polar_rejects(value: Any) -> None:
    """Out-of-range ints, fractional or non-finite floats, long strings and other types fail on value."""
    with pytest.raises(ConfigurationError, match="value"):
        FilterClause("k", "eq", value)


@pytest.mark.parametrize("op", ["EQ", "equals", "", None, 1, ["eq"]])
def test_unknown_operators_are_rejected(op: Any) -> None:
    """Only the eight operators exist; even an unhashable one is a ConfigurationError."""
    with pytest.raises(ConfigurationError, match="operator"):
        FilterClause("k", op, 1)


@pytest.mark.parametrize("conjunction", ["AND", "xor", None, ["and"]])
def test_unknown_conjunctions_are_rejected(conjunction: Any) -> None:
    """A filter joins with and or or."""
    with pytest.raises(ConfigurationError, match="conjunction"):
        Filter(conjunction, ())


def test_filter_clauses_must_be_clauses_or_filters() -> None:
    """A stray dict in a filter's clauses is refused (use from_polar for JSON shapes)."""
    with pytest.raises(ConfigurationError, match="clauses"):
        Filter("and", ({"property": "k"},))  # type: ignore[arg-type]


def test_filter_event_shorthand_and_template() -> None:
    """Filter.event builds name = event plus metadata equalities; event_template reads them back."""
    flt = Filter.event("ai.tokens", model="gpt-4", tier=2)
    assert flt.event_template() == ("ai.tokens", {"model": "gpt-4", "tier": 2})
    assert Filter("or", flt.clauses).event_template() == (None, {})


# --- aggregations ---------------------------------------------------------------------------------------


def test_count_takes_no_property() -> None:
    """count counts events; giving it a property is a mistake."""
    assert Aggregation.count().to_polar() == {"func": "count"}
    with pytest.raises(ConfigurationError, match="property"):
        Aggregation("count", "x")


@pytest.mark.parametrize("func", ["sum", "max", "min", "avg", "unique"])
def test_property_aggregations_need_a_property(func: Any) -> None:
    """sum/max/min/avg/unique aggregate a property and refuse to be built without one."""
    assert Aggregation(func, "x").to_polar() == {"func": func, "property": "x"}
    for missing in (None, "", "metadata."):
        with pytest.raises(ConfigurationError, match="property"):
            Aggregation(func, missing)


@pytest.mark.parametrize("func", ["total", "COUNT", "", None, ["sum"]])
def test_unknown_aggregation_funcs_are_rejected(func: Any) -> None:
    """Only Polar's six functions exist."""
    with pytest.raises(ConfigurationError, match="func"):
        Aggregation(func, "x")


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({}, "func"),
        ({"property": "x"}, "func"),
        ({"func": "median", "property": "x"}, "func"),
        ({"func": "sum"}, "property"),
        ({"func": "sum", "property": "x", "extra": 1}, "unknown keys"),
        ("sum", "func"),
    ],
)
def test_aggregation_from_polar_errors(data: Any, field: str) -> None:
    """func is required on input (``Discriminator("func")`` on ``Aggregation`` in
    server/polar/meter/aggregation.py); property aggregations need property."""
    with pytest.raises(ConfigurationError, match=field):
        Aggregation.from_polar(data)


# --- meters ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("slug", ["a", "api_requests", "x1_2", "a" * 64])
def test_valid_slugs(slug: str) -> None:
    """Lowercase letters, digits and underscores, starting with a letter, up to 64 characters."""
    assert Meter(slug, "Some meter", Filter(), Aggregation.count()).slug == slug


@pytest.mark.parametrize("slug", ["", "Api", "1abc", "_x", "api-requests", "a b", "a" * 65, "abc\n", None, 5])
def test_invalid_slugs(slug: Any) -> None:
    """Anything else names the slug rule, trailing newlines included."""
    with pytest.raises(ConfigurationError, match="slug"):
        Meter(slug, "Some meter", Filter(), Aggregation.count())


@pytest.mark.parametrize("name", ["", "ab", None, 12])
def test_meter_names_need_three_characters(name: Any) -> None:
    """Polar's MeterCreate.name has a minimum length of 3."""
    with pytest.raises(ConfigurationError, match="name"):
        Meter("m", name, Filter(), Aggregation.count())


def test_meter_parts_are_checked() -> None:
    """Filter, aggregation and unit must be the right kinds."""
    with pytest.raises(ConfigurationError, match="filter"):
        Meter("m", "Meter", {"conjunction": "and"}, Aggregation.count())  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="aggregation"):
        Meter("m", "Meter", Filter(), {"func": "count"})  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="unit"):
        Meter("m", "Meter", Filter(), Aggregation.count(), unit="bytes")  # type: ignore[arg-type]


def test_meter_for_event_and_to_polar() -> None:
    """for_event derives a display name; to_polar is a MeterCreate body without organization_id."""
    meter = Meter.for_event("image_renders", "image.render", Aggregation.sum("metadata.pixels"), unit="token")
    assert meter.name == "Image Renders"
    assert meter.event_name == "image.render"
    assert meter.to_polar() == {
        "name": "Image Renders",
        "unit": "token",
        "filter": {
            "conjunction": "and",
            "clauses": [{"property": "name", "operator": "eq", "value": "image.render"}],
        },
        "aggregation": {"func": "sum", "property": "pixels"},
    }


# --- plans and the catalog ------------------------------------------------------------------------------


@pytest.mark.parametrize("interval", ["month", "year"])
def test_plan_intervals(interval: Any) -> None:
    """Plans renew monthly or yearly."""
    plan = Plan("pro", credits={"api_requests": 0, "ai_tokens": 2.5}, interval=interval)
    assert plan.interval == interval
    assert plan.credits == {"api_requests": 0, "ai_tokens": 2.5}


@pytest.mark.parametrize("interval", ["week", "monthly", "", None])
def test_plan_rejects_other_intervals(interval: Any) -> None:
    """Any other interval names the plan and the field."""
    with pytest.raises(ConfigurationError, match=r"plan 'pro': interval"):
        Plan("pro", interval=interval)


@pytest.mark.parametrize("units", [-1, -0.5, math.inf, math.nan, True, "100", None])
def test_plan_credits_are_finite_and_non_negative(units: Any) -> None:
    """Credits are numbers >= 0 (bools and strings are not numbers)."""
    with pytest.raises(ConfigurationError, match=r"credits\['api_requests'\]"):
        Plan("pro", credits={"api_requests": units})


def test_plan_other_rules() -> None:
    """A plan needs a name, a credits mapping and a boolean rollover."""
    with pytest.raises(ConfigurationError, match="name"):
        Plan("  ")
    with pytest.raises(ConfigurationError, match="credits"):
        Plan("pro", credits=[("api_requests", 1)])  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="rollover"):
        Plan("pro", rollover="false")  # type: ignore[arg-type]


def test_catalog_rejects_duplicates_and_unknown_meters() -> None:
    """Slugs and display names are unique; plans may only credit known meters; plan names are unique."""
    api = DEFAULT_METERS[0]
    with pytest.raises(ConfigurationError, match="'api_requests': slug is defined twice"):
        Catalog((api, Meter("api_requests", "Other name", Filter(), Aggregation.count())))
    with pytest.raises(ConfigurationError, match="'second': name 'API Requests'"):
        Catalog((api, Meter("second", "API Requests", Filter(), Aggregation.count())))
    with pytest.raises(ConfigurationError, match="plan 'free': credits name unknown meter 'nope'"):
        Catalog(plans=(Plan("free", credits={"nope": 1}),))
    with pytest.raises(ConfigurationError, match="plan 'free': defined twice"):
        Catalog(plans=(Plan("free"), Plan("free")))
    with pytest.raises(ConfigurationError, match="Meter"):
        Catalog(("api_requests",))  # type: ignore[arg-type]


def test_catalog_lookups() -> None:
    """meter() and plan() find by key; unknown keys list the known ones."""
    catalog = Catalog(plans=(Plan("free", credits={"api_requests": 1000}),))
    assert catalog.meter("storage_gb") is DEFAULT_METERS[1]
    assert catalog.plan("free").credits == {"api_requests": 1000}
    with pytest.raises(ConfigurationError, match="known meters are"):
        catalog.meter("nope")
    with pytest.raises(ConfigurationError, match=r"known plans are \['free'\]"):
        catalog.plan("pro")
    extra = Meter.for_event("renders", "render")
    assert catalog.with_meters((*catalog.meters, extra)).meter("renders") is extra


# --- Polar JSON round trip ------------------------------------------------------------------------------

# Catalog text: NUL and surrogates are refused (test_catalog_text_refuses_nul_and_surrogates).
catalog_text = st.characters(exclude_categories=["Cs"], exclude_characters="\x00")
properties = st.one_of(
    st.sampled_from(["name", "source", "timestamp", "size_gb", "metadata.size_gb", "_llm.total_tokens"]),
    # "metadata." is stripped once, like Polar does; a property that still starts with it after
    # stripping would be stripped again on the way back, as it would be by Polar.
    st.text(catalog_text, min_size=1, max_size=12).filter(
        lambda p: normalize_property(p) and not p.startswith("metadata.")
    ),
)
clause_values = st.one_of(
    st.text(catalog_text, max_size=30),
    st.integers(min_value=-(2**31), max_value=2**31 - 1),
    st.booleans(),
    st.integers(min_value=-1000, max_value=1000).map(float),
)
clauses = st.builds(
    FilterClause,
    property=properties,
    operator=st.sampled_from(["eq", "ne", "gt", "gte", "lt", "lte", "like", "not_like"]),
    value=clause_values,
)
conjunctions = st.sampled_from(["and", "or"])
filters = st.recursive(
    st.builds(Filter, conjunctions, st.lists(clauses, max_size=3).map(tuple)),
    lambda inner: st.builds(Filter, conjunctions, st.lists(st.one_of(clauses, inner), max_size=4).map(tuple)),
    max_leaves=12,
)
aggregations = st.one_of(
    st.just(Aggregation.count()),
    st.builds(Aggregation, st.sampled_from(["sum", "max", "min", "avg", "unique"]), properties),
)


@given(flt=filters)
def test_filter_round_trips_through_polar_json(flt: Filter) -> None:
    """from_polar(to_polar(f)) == f, also through real JSON text."""
    body = flt.to_polar()
    assert Filter.from_polar(body) == flt
    assert Filter.from_polar(json.loads(json.dumps(body))) == flt


@given(
    text=st.text(min_size=1, max_size=12).filter(lambda t: "\x00" in t or not t.isascii()),
    where=st.sampled_from(["property", "value", "aggregation", "name", "plan"]),
)
def test_catalog_text_refuses_nul_and_surrogates(text: str, where: str) -> None:
    """Catalog text is stored by the engine and sent to Polar, where NUL (PostgreSQL text and jsonb
    refuse it) and surrogates (no encoder takes them) would fail later: refused when built."""
    bad = "\x00" in text or any("\ud800" <= c <= "\udfff" for c in text)
    build = {
        "property": lambda: FilterClause(f"p{text}", "eq", 1),
        "value": lambda: FilterClause("p", "eq", text),
        "aggregation": lambda: Aggregation.sum(f"p{text}"),
        "name": lambda: Meter("m", f"Meter {text}", Filter(), Aggregation.count()),
        "plan": lambda: Plan(f"plan {text}"),
    }[where]
    if bad:
        with pytest.raises(ConfigurationError, match=r"NUL|Unicode"):
            build()
    else:
        build()


@given(agg=aggregations)
def test_aggregation_round_trips_through_polar_json(agg: Aggregation) -> None:
    """Aggregations survive to_polar/from_polar, with func always present."""
    body = json.loads(json.dumps(agg.to_polar()))
    assert "func" in body
    assert Aggregation.from_polar(body) == agg


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("nope", "filter: must be a table"),
        ({"conjunction": "and", "clauses": [], "x": 1}, "unknown keys"),
        ({"conjunction": "and", "clauses": "abc"}, "filter.clauses: must be a list"),
        ({"conjunction": "and", "clauses": [5]}, r"filter.clauses\[0\]: must be a table"),
        ({"conjunction": "and", "clauses": [{"property": "k", "operator": "eq"}]}, r"missing \['value'\]"),
        (
            {
                "conjunction": "or",
                "clauses": [
                    {"conjunction": "and", "clauses": [{"property": "k", "operator": "eq", "value": 2.5}]}
                ],
            },
            r"filter.clauses\[0\].clauses\[0\]: value",
        ),
        (
            {"conjunction": "and", "clauses": [{"property": "k", "operator": "~", "value": 1}]},
            r"\[0\]: operator",
        ),
    ],
)
def test_filter_from_polar_errors_name_the_path(data: Any, message: str) -> None:
    """A malformed filter names the clause path and the field."""
    with pytest.raises(ConfigurationError, match=message):
        Filter.from_polar(data)


# --- load_catalog ---------------------------------------------------------------------------------------


def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "metering.toml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_load_catalog_from_toml_with_custom_meters_overrides_and_plans(tmp_path: Path) -> None:
    """Custom meters (shorthand and full tables), an overridden default and plans, from a real file."""
    path = write_toml(
        tmp_path,
        """
        [meters.renders]
        event = "image.render"
        func = "sum"
        property = "metadata.pixels"
        name = "Image renders"

        [meters.premium_calls]
        name = "Premium calls"
        unit = "custom"
        aggregation = { func = "count" }
        [meters.premium_calls.filter]
        conjunction = "and"
        clauses = [
          { property = "name", operator = "eq", value = "api.request" },
          { conjunction = "or", clauses = [
              { property = "tier", operator = "eq", value = "pro" },
              { property = "cost", operator = "gte", value = 10.0 },
          ] },
        ]

        [meters.storage_gb]
        event = "storage.update"
        func = "sum"
        property = "delta_gb"
        name = "Storage (GB)"

        [plans.free]
        credits = { api_requests = 1000, ai_tokens = 10000 }

        [plans.pro]
        credits = { renders = 2.5e6, storage_gb = 50 }
        interval = "year"
        rollover = true
        """,
    )
    catalog = load_catalog(path)
    assert catalog.slugs == (
        "api_requests",
        "storage_gb",
        "ai_tokens",
        "team_seats",
        "renders",
        "premium_calls",
    )
    renders = catalog.meter("renders")
    assert (renders.name, renders.event_name) == ("Image renders", "image.render")
    assert renders.aggregation == Aggregation.sum("pixels")
    premium = catalog.meter("premium_calls")
    assert premium.unit == "custom"
    inner = premium.filter.clauses[1]
    assert isinstance(inner, Filter)
    assert inner.conjunction == "or"
    assert inner.clauses[1] == FilterClause("cost", "gte", 10)
    storage = catalog.meter("storage_gb")
    assert storage.aggregation == Aggregation.sum("delta_gb")
    assert catalog.plan("free").credits == {"api_requests": 1000, "ai_tokens": 10000}
    pro = catalog.plan("pro")
    assert (pro.interval, pro.rollover, pro.credits["renders"]) == ("year", True, 2.5e6)
    assert catalog.plan("free").interval == "month"
    assert load_catalog(str(path)) == catalog


def test_load_catalog_without_defaults(tmp_path: Path) -> None:
    """``defaults = false`` keeps only the file's meters; plans can then only name those."""
    path = write_toml(
        tmp_path,
        """
        defaults = false
        [meters.jobs]
        event = "job.run"
        """,
    )
    catalog = load_catalog(path)
    assert catalog.slugs == ("jobs",)
    assert catalog.meter("jobs").aggregation == Aggregation.count()
    bad = write_toml(tmp_path, "defaults = false\n[plans.free]\ncredits = { api_requests = 1 }\n")
    with pytest.raises(ConfigurationError, match="unknown meter 'api_requests'"):
        load_catalog(bad)


@pytest.mark.parametrize(
    ("table", "field"),
    [
        ('name = "Jobs"', "needs 'event'"),
        ('event = "job.run"\nfunc = "median"', "func"),
        ('event = "job.run"\nfunc = "sum"', "property"),
        ('event = "job.run"\nfunc = "count"\nproperty = "x"', "property"),
        ("event = 5", "event"),
        ('event = "job.run"\nname = "J"', "name"),
        ('event = "job.run"\nunit = "bytes"', "unit"),
        ('event = "job.run"\ncolour = "red"', "unknown keys"),
        ('event = "job.run"\nfilter = { conjunction = "and", clauses = [] }', "either 'event' or 'filter'"),
        (
            'filter = { conjunction = "and", clauses = [{ property = "k", operator = "eq", value = 2.5 }] }',
            "value",
        ),
        (
            'filter = { conjunction = "and", clauses = [{ property = "k", operator = "is", value = 1 }] }',
            "operator",
        ),
        ('filter = { conjunction = "xor", clauses = [] }', "conjunction"),
        ('event = "job.run"\naggregation = { property = "x" }', "func"),
    ],
)
def test_malformed_meters_name_the_meter_and_the_field(tmp_path: Path, table: str, field: str) -> None:
    """Every malformed meter fails at load with a message naming the meter and what is wrong."""
    path = write_toml(tmp_path, f"[meters.jobs]\n{table}\n")
    with pytest.raises(ConfigurationError) as info:
        load_catalog(path)
    message = str(info.value)
    assert message.startswith("meter 'jobs': "), message
    assert field in message


def test_malformed_slug_in_toml(tmp_path: Path) -> None:
    """A bad slug is named too."""
    path = write_toml(tmp_path, '[meters.Bad-Slug]\nevent = "x"\n')
    with pytest.raises(ConfigurationError, match="meter 'Bad-Slug': slug"):
        load_catalog(path)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("this is = = not toml", "not valid TOML"),
        ("colour = 1", "unknown top-level keys"),
        ('defaults = "no"', "defaults must be true or false"),
        ("meters = 5", r"\[meters.<slug>\]"),
        ('[plans.free]\ninterval = "week"', "plan 'free': interval"),
        ('[plans.free]\nrollover = "false"', "plan 'free': rollover"),
        ("[plans.free]\nseats = 1", "plan 'free': unknown keys"),
        ("[plans.free]\ncredits = { api_requests = -1 }", r"plan 'free': credits\['api_requests'\]"),
        ("plans = 1", r"\[plans.<name>\]"),
    ],
)
def test_malformed_catalog_files(tmp_path: Path, text: str, message: str) -> None:
    """File-level mistakes are ConfigurationErrors that say what is wrong."""
    with pytest.raises(ConfigurationError, match=message):
        load_catalog(write_toml(tmp_path, text))


def test_missing_catalog_file(tmp_path: Path) -> None:
    """A path that does not exist is reported, not a FileNotFoundError."""
    with pytest.raises(ConfigurationError, match="does not exist"):
        load_catalog(tmp_path / "nope.toml")


@pytest.fixture
def module_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, str]]:
    """A real importable module with a unique name, removed from sys.modules afterwards."""
    name = f"catalog_mod_{uuid.uuid4().hex}"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            """
            from polar_metering._catalog import Aggregation, Catalog, Meter, Plan

            JOBS = Meter.for_event("jobs", "job.run", Aggregation.sum("seconds"))
            CATALOG = Catalog(meters=(JOBS,), plans=(Plan("free", credits={"jobs": 60}),))
            METERS = [JOBS]

            class Settings:
                catalog = CATALOG
            """
        ),
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path, name
    sys.modules.pop(name, None)


def test_load_catalog_from_module_attribute(module_dir: tuple[Path, str]) -> None:
    """``module:attribute`` names a Catalog, a list of meters, or a dotted attribute path."""
    _, name = module_dir
    catalog = load_catalog(f"{name}:CATALOG")
    assert catalog.slugs == ("jobs",)
    assert catalog.plan("free").credits == {"jobs": 60}
    assert load_catalog(f"{name}:METERS").slugs == ("jobs",)
    assert load_catalog(f"{name}:Settings.catalog") is catalog
    with pytest.raises(ConfigurationError, match="cannot load"):
        load_catalog(f"{name}:MISSING")
    with pytest.raises(ConfigurationError, match="cannot load"):
        load_catalog("no_such_module_xyz:CATALOG")


def test_load_catalog_from_objects() -> None:
    """A Catalog is used as is; an iterable of meters becomes a catalog; other objects fail."""
    catalog = Catalog()
    assert load_catalog(catalog) is catalog
    assert load_catalog([DEFAULT_METERS[0]]).slugs == ("api_requests",)
    with pytest.raises(ConfigurationError):
        load_catalog(42)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="Meter"):
        load_catalog(["api_requests"])  # type: ignore[list-item]
