"""Hypothesis over the constructors and loaders: Meter, Filter, FilterClause, Aggregation, Plan,
Catalog, load_catalog (TOML files and ``module:attribute`` paths), Event, MeteringConfig, Metering and
init() options, and the testing helpers. Bad input gives ConfigurationError or ValidationError (the
library's own tree), never TypeError, ValueError, OverflowError or RecursionError."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.fuzz import strategies as s
from tests.fuzz.helpers import CATALOG, check_error, check_tracking, examples, only_ours

import polar_metering as metering
from polar_metering import (
    Aggregation,
    Catalog,
    ConfigurationError,
    Event,
    Filter,
    FilterClause,
    ManualClock,
    Meter,
    Metering,
    MeteringConfig,
    MeteringError,
    Plan,
    ValidationError,
    load_catalog,
)
from polar_metering.testing import capture_events, metering_for_tests

FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
_n = itertools.count()

names = st.one_of(s.any_text, s.anything)
clause_values = st.one_of(
    st.text(max_size=6), st.integers(), st.booleans(), s.any_float, s.huge_ints, s.anything
)
clauses = st.builds(
    FilterClause,
    st.one_of(
        st.sampled_from(["name", "tokens", "metadata.size_gb", "_llm.total_tokens", "metadata."]), names
    ),
    st.one_of(st.sampled_from(["eq", "ne", "gt", "like", "not_like"]), names),
    clause_values,
)


def _polar_json(depth: int) -> st.SearchStrategy[Any]:
    leaf = st.fixed_dictionaries(
        {
            "property": st.one_of(st.just("tokens"), names),
            "operator": st.one_of(st.just("eq"), names),
            "value": clause_values,
        },
        optional={"extra": s.scalars},
    )
    return st.recursive(
        st.one_of(leaf, s.anything),
        lambda inner: st.fixed_dictionaries(
            {
                "conjunction": st.one_of(st.sampled_from(["and", "or"]), names),
                "clauses": st.one_of(st.lists(inner, max_size=3), s.anything),
            }
        ),
        max_leaves=depth,
    )


def _deep_filter_json(depth: int) -> dict[str, Any]:
    node: dict[str, Any] = {"conjunction": "and", "clauses": []}
    for _ in range(depth):
        node = {"conjunction": "and", "clauses": [node]}
    return node


def _clause(d: st.DataObject) -> Any:
    return FilterClause(d.draw(names), d.draw(names), d.draw(clause_values))


def _filter(d: st.DataObject) -> Any:
    return Filter(
        d.draw(names), d.draw(st.one_of(st.lists(st.one_of(clauses, s.anything), max_size=3), s.anything))
    )


def _from_polar(d: st.DataObject) -> Any:
    return Filter.from_polar(d.draw(st.one_of(_polar_json(8), st.integers(30, 3000).map(_deep_filter_json))))


def _aggregation(d: st.DataObject) -> Any:
    func = d.draw(st.one_of(st.sampled_from(["sum", "count", "unique"]), names))
    return Aggregation(func, d.draw(st.one_of(st.none(), names)))


def _meter(d: st.DataObject) -> Any:
    return Meter(
        d.draw(st.one_of(st.just("my_meter"), names)),
        d.draw(st.one_of(st.just("My Meter"), names)),
        d.draw(st.one_of(st.just(Filter.event("e")), s.anything)),
        d.draw(st.one_of(st.just(Aggregation.count()), s.anything)),
        d.draw(st.one_of(st.just("scalar"), names)),
    )


def _mapping(d: st.DataObject) -> Any:
    keys = st.sampled_from(["name", "event", "func", "property", "unit", "filter", "bogus"])
    table = d.draw(st.one_of(st.dictionaries(keys, s.anything, max_size=4), s.anything))
    return Meter.from_mapping(d.draw(st.one_of(st.just("m_x"), names)), table)


def _plan(d: st.DataObject) -> Any:
    credits = st.dictionaries(
        st.one_of(st.just("api_requests"), s.hashable_keys),
        st.one_of(st.integers(0, 10), s.amounts),
        max_size=3,
    )
    return Plan(
        d.draw(st.one_of(st.just("p"), names)),
        credits=d.draw(st.one_of(credits, s.anything)),
        interval=d.draw(st.one_of(st.just("month"), names)),
        rollover=d.draw(st.one_of(st.booleans(), s.anything)),
    )


def _catalog(d: st.DataObject) -> Any:
    return Catalog(
        d.draw(st.one_of(st.just(CATALOG.meters), st.lists(s.anything, max_size=2), s.anything)),
        d.draw(st.one_of(st.just(()), st.lists(s.anything, max_size=2), s.anything)),
    )


BUILDERS = {
    "clause": _clause,
    "filter": _filter,
    "from_polar": _from_polar,
    "aggregation": _aggregation,
    "meter": _meter,
    "mapping": _mapping,
    "plan": _plan,
    "catalog": _catalog,
}


@settings(FUZZ, max_examples=examples(200))
@given(data=st.data(), kind=st.sampled_from(sorted(BUILDERS)))
def test_catalog_constructors_raise_only_configuration_errors(data: st.DataObject, kind: str) -> None:
    outcome = only_ours(BUILDERS[kind], data)
    if isinstance(outcome, MeteringError):
        assert isinstance(outcome, ConfigurationError), outcome
        assert len(str(outcome)) < 2000
    elif hasattr(outcome, "to_polar"):
        # What was accepted encodes as the JSON Polar and the engine store.
        json.dumps(outcome.to_polar(), ensure_ascii=False).encode("utf-8")


toml_scalars = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(),
    st.booleans(),
    st.text(max_size=8),
    st.sampled_from(['"\\u0000"', '"\\ud800"']).map(lambda raw: json.loads(raw)),
)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return {"nan": "nan", "inf": "inf", "-inf": "-inf"}.get(repr(value), repr(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)  # TOML basic strings accept JSON's escapes, bar surrogates
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml_value(v)}" for k, v in value.items()) + "}"


toml_values = st.recursive(
    toml_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
toml_docs = st.one_of(
    st.text(max_size=200),
    st.builds(
        lambda meters, plans, extra: "\n".join(
            [
                f"[meters.{json.dumps(k)}]\n"
                + "\n".join(f"{json.dumps(a)} = {_toml_value(b)}" for a, b in v.items())
                for k, v in meters.items()
            ]
            + [
                f"[plans.{json.dumps(k)}]\n"
                + "\n".join(f"{json.dumps(a)} = {_toml_value(b)}" for a, b in v.items())
                for k, v in plans.items()
            ]
            + [extra]
        ),
        st.dictionaries(
            st.one_of(st.just("cost_x"), st.text(max_size=5)),
            st.dictionaries(
                st.sampled_from(
                    ["name", "event", "func", "property", "unit", "filter", "aggregation", "junk"]
                ),
                toml_values,
                max_size=4,
            ),
            max_size=2,
        ),
        st.dictionaries(
            st.one_of(st.just("free"), st.text(max_size=5)),
            st.dictionaries(
                st.sampled_from(["credits", "interval", "rollover", "junk"]), toml_values, max_size=3
            ),
            max_size=2,
        ),
        st.sampled_from(
            ["", "defaults = false", "defaults = 3", "junk = 1", "a = " + "[" * 3000 + "]" * 3000]
        ),
    ),
)
module_paths = st.sampled_from(
    [
        "...:x",
        ":x",
        "os:",
        "polar_metering:DEFAULT_METERS",
        "polar_metering:DEFAULT_METERS.nope",
        "polar_metering._catalog:Catalog",
        "polar_metering:__version__",
        "json:loads",
        "no_such_module_for_fuzz:x",
        "tests.fuzz.helpers:CATALOG",
        "a\x00b:c",
        "\udcff:x",
    ]
)


@settings(FUZZ, max_examples=examples(150))
@given(doc=toml_docs, source=st.one_of(st.none(), module_paths, s.anything))
def test_load_catalog_raises_only_configuration_errors(tmp_path_factory: Any, doc: str, source: Any) -> None:
    path = tmp_path_factory.mktemp("cat") / "metering.toml"
    try:
        path.write_text(doc, encoding="utf-8")
    except UnicodeEncodeError:
        path.write_bytes(doc.encode("utf-8", "surrogateescape"))
    for target in (path, str(path), source):
        outcome = only_ours(load_catalog, target)
        if isinstance(outcome, MeteringError):
            assert isinstance(outcome, ConfigurationError), outcome
        else:
            assert isinstance(outcome, Catalog)


@pytest.fixture(scope="module")
def events_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Metering]:
    client = Metering(f"sqlite:///{tmp_path_factory.mktemp('ev') / 'events.db'}")
    yield client
    client.close()


@settings(FUZZ, max_examples=examples(150))
@given(
    customer=names,
    name=names,
    metadata=st.one_of(
        st.dictionaries(st.one_of(st.text(max_size=4), st.integers()), s.scalars, max_size=3), s.anything
    ),
    timestamp=st.one_of(s.any_datetime, s.anything),
    external_id=names,
)
def test_event_objects_with_any_fields_are_validated_in_batches(
    events_client: Metering, customer: Any, name: Any, metadata: Any, timestamp: Any, external_id: Any
) -> None:
    """``Event`` is a plain value; a batch revalidates it, so a bad one is rejected by field."""
    event = Event(customer, name, metadata, timestamp, external_id)
    result = check_tracking(events_client.track_usage_batch([event]))
    if result.success:
        assert result.inserted + result.duplicates == 1
    else:
        assert result.rejected and result.rejected[0][1].startswith("events[0].")


OPTIONS = st.fixed_dictionaries(
    {},
    optional={
        "access_token": s.anything,
        "environment": st.one_of(st.sampled_from(["sandbox", "production"]), s.anything),
        "base_url": s.anything,
        "fail_open": s.anything,
        "strict": s.anything,
        "reservation_ttl": s.amounts,
        "cache_ttl": s.amounts,
        "stale_after": s.amounts,
        "cache_size": st.one_of(st.integers(1, 10), s.anything),
        "outbox_path": s.anything,
        "backend_options": st.one_of(
            st.fixed_dictionaries(
                {},
                optional={"busy_timeout_ms": st.one_of(st.integers(0, 100), s.anything), "echo": s.anything},
            ),
            s.anything,
        ),
        "meters": st.one_of(st.just(list(CATALOG.meters)), st.lists(s.anything, max_size=2), s.anything),
        "plans": st.one_of(st.just(list(CATALOG.plans)), st.lists(s.anything, max_size=2), s.anything),
        "bogus_option": s.anything,
    },
)


@settings(FUZZ, max_examples=examples(60))
@given(
    options=OPTIONS,
    url_kind=st.sampled_from(["file", "memory", "weird"]),
    weird=st.one_of(s.any_text, s.anything),
)
def test_client_options_raise_only_configuration_errors(
    tmp_path_factory: Any, options: dict[str, Any], url_kind: str, weird: Any
) -> None:
    """Metering(...), MeteringConfig(...) and init(...) with any options: a client or ConfigurationError.
    URLs stay on this machine: a SQLite file, memory, or text that is no URL of a reachable server."""
    if url_kind == "file":
        url: Any = f"sqlite:///{tmp_path_factory.mktemp('opt') / f'{next(_n)}.db'}"
    elif url_kind == "memory":
        url = "sqlite:///:memory:"
    else:
        # Never a falsy value (which falls back to the default file in the working directory) nor a
        # real URL (which could name a server).
        url = "nothing" if not weird or (isinstance(weird, str) and "://" in weird) else weird
    for build in (
        lambda: Metering(url, **options),
        lambda: metering.init(url, **options),
        lambda: MeteringConfig(
            url=url, **{k: v for k, v in options.items() if k not in ("meters", "plans", "bogus_option")}
        ),
    ):
        outcome = only_ours(build)
        if isinstance(outcome, MeteringError):
            assert isinstance(outcome, ConfigurationError), outcome
            token = options.get("access_token")
            if isinstance(token, str) and len(token) > 3:
                assert token not in str(outcome)
        elif isinstance(outcome, Metering):
            outcome.close()
    metering.shutdown()


@settings(FUZZ, max_examples=examples(200))
@given(
    start=st.one_of(st.none(), s.any_datetime, s.anything),
    steps=st.lists(
        st.one_of(
            st.tuples(
                st.just("advance"),
                s.amounts,
                st.dictionaries(
                    st.one_of(st.sampled_from(["days", "hours", "weeks"]), st.text(max_size=4)),
                    s.amounts,
                    max_size=2,
                ),
            ),
            st.tuples(st.just("set"), st.one_of(s.any_datetime, s.anything), st.just({})),
        ),
        max_size=4,
    ),
)
def test_manual_clock_raises_only_validation_errors(start: Any, steps: list[Any]) -> None:
    clock = only_ours(ManualClock, start)
    if isinstance(clock, MeteringError):
        assert isinstance(clock, ValidationError) and clock.field == "start"
        return
    for op, value, kwargs in steps:
        before = clock.now()
        outcome = (
            only_ours(clock.advance, value, **kwargs) if op == "advance" else only_ours(clock.set, value)
        )
        if isinstance(outcome, MeteringError):
            assert isinstance(outcome, ValidationError)
            assert clock.now() == before  # a refused step leaves the clock where it was
        else:
            assert clock.now() >= before


@settings(FUZZ, max_examples=examples(60))
@given(
    start=st.one_of(st.just("2026-01-01T00:00:00+00:00"), s.any_datetime, s.anything),
    meters=st.one_of(st.none(), st.just(list(CATALOG.meters)), s.anything),
    plans=st.one_of(st.just(()), st.just(list(CATALOG.plans)), s.anything),
    target=st.one_of(st.just("client"), st.just("async"), s.anything),
)
def test_testing_helpers_raise_only_library_errors(start: Any, meters: Any, plans: Any, target: Any) -> None:
    made = only_ours(metering_for_tests, start=start, meters=meters, plans=plans)
    if isinstance(made, MeteringError):
        check_error(made)
        return
    client, _ = made
    try:
        subject = client if target == "client" else client.aio if target == "async" else target
        cm = only_ours(capture_events, subject)
        assert not isinstance(cm, MeteringError)
        entered = only_ours(cm.__enter__)
        if isinstance(entered, MeteringError):
            assert isinstance(entered, ValidationError) and entered.field == "client"
            return
        assert client.track_api_request("u", "/x").success
        if "api_requests" in client.catalog.slugs:
            assert client.check_limit("u", "api_requests").current == 1
        cm.__exit__(None, None, None)
        assert [e.name for e in entered] == ["api.request"]
    finally:
        client.close()


@settings(FUZZ, max_examples=examples(40))
@given(
    catalog=st.one_of(st.none(), st.just(CATALOG), module_paths, s.anything),
    token=st.one_of(st.just("polar_oat_fuzz_only"), s.any_text, s.anything),
    environment=st.one_of(st.none(), st.sampled_from(["sandbox", "production"]), s.anything),
    base_url=st.one_of(st.just("http://127.0.0.1:9"), s.any_text, s.anything),
    dry_run=st.one_of(st.booleans(), s.anything),
    client=st.one_of(st.none(), s.anything),
)
def test_run_setup_raises_only_library_errors(
    catalog: Any, token: Any, environment: Any, base_url: Any, dry_run: Any, client: Any
) -> None:
    """setup's arguments are checked before any request; a valid set goes to a closed port on this
    machine (nothing listens there), which is BackendUnavailable, never a driver exception."""
    if isinstance(base_url, str) and "://" in base_url and base_url != "http://127.0.0.1:9":
        base_url = "http://127.0.0.1:9"
    outcome = only_ours(
        metering.run_setup,
        catalog,
        access_token=token,
        environment=environment,
        base_url=base_url,
        dry_run=dry_run,
        client=client,
        env={},
    )
    if isinstance(outcome, MeteringError) and isinstance(token, str) and len(token) > 3:
        assert token not in str(outcome)
