"""Event validation by Polar's ingest rules (server/polar/event/schemas.py, server/polar/kit/metadata.py,
server/polar/kit/schemas.py; see docs/semantics.md) and external ids."""

from __future__ import annotations

import enum
import itertools
import json
import math
import re
import sys
import time
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Annotated, Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from polar_metering._events import (
    Event,
    new_external_id,
    parse_timestamp,
    validate_event,
    validate_metadata,
)
from polar_metering._exceptions import ValidationError

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
LLM = {"vendor": "openai", "model": "gpt-4", "input_tokens": 10, "output_tokens": 5, "total_tokens": 15}


def event(**kwargs: Any) -> Event:
    args: dict[str, Any] = {"customer_id": "user_123", "name": "api.request", "metadata": None}
    args.update(kwargs)
    return validate_event(args.pop("customer_id"), args.pop("name"), args.pop("metadata"), now=NOW, **args)


def rejects(field: str, **kwargs: Any) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        event(**kwargs)
    assert info.value.field == field
    assert info.value.rule
    assert str(info.value).startswith(f"{field}: ")
    return info.value


# --- name and customer ----------------------------------------------------------------------------------


def test_valid_event_is_stamped_with_now_and_a_fresh_id() -> None:
    """What the caller leaves out is filled in: timestamp = now, a new external id."""
    ev = event(metadata={"endpoint": "/api", "n": 3})
    assert ev.customer_id == "user_123"
    assert ev.name == "api.request"
    assert ev.metadata == {"endpoint": "/api", "n": 3}
    assert ev.timestamp == NOW
    assert re.fullmatch(r"[0-9a-f]{32}", ev.external_id)


def test_name_length_limits() -> None:
    """Names are 1 to 128 characters (String(128) column)."""
    assert event(name="x" * 128).name == "x" * 128
    rejects("name", name="x" * 129)
    rejects("name", name="")


@pytest.mark.parametrize("bad", [None, 5, b"api", ["a"]])
def test_name_must_be_a_string(bad: object) -> None:
    """A non-string name names the field."""
    rejects("name", name=bad)


@pytest.mark.parametrize("bad", [None, "", 7])
def test_customer_id_must_be_a_non_empty_string(bad: object) -> None:
    """The customer id is required text."""
    rejects("customer_id", customer_id=bad)


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("name", {"name": "api\x00request"}),
        ("customer_id", {"customer_id": "u\x00"}),
        ("external_id", {"external_id": "\x00id"}),
        ("metadata.k", {"metadata": {"k": "a\x00b"}}),
        ("metadata.k\x00", {"metadata": {"k\x00": "v"}}),
        ("metadata._cost.currency", {"metadata": {"_cost": {"amount": 1, "currency": "usd\x00"}}}),
        ("metadata._llm.vendor", {"metadata": {"_llm": {**LLM, "vendor": "open\x00ai"}}}),
        ("metadata._llm.prompt", {"metadata": {"_llm": {**LLM, "prompt": "\x00"}}}),
    ],
)
def test_nul_characters_are_rejected_anywhere(field: str, kwargs: dict[str, Any]) -> None:
    """Any string at any depth containing NUL is rejected (``Schema._reject_nul_characters`` in
    server/polar/kit/schemas.py)."""
    rejects(field, **kwargs)


# --- metadata values (MetadataValue, server/polar/kit/metadata.py) -------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "x",
        "x" * 500,
        "5",
        "true",
        "café ☕ 😀",
        0,
        -1,
        10**30,
        -(10**308),
        int(sys.float_info.max),
        1.5,
        -0.0,
        1e300,
        True,
        False,
    ],
)
def test_allowed_metadata_values_are_kept_as_given(value: object) -> None:
    """str 1..500, int within the double range, finite float, bool; "5" and "true" stay strings."""
    clean = validate_metadata({"k": value})
    assert clean == {"k": value}
    assert type(clean["k"]) is type(value)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "x" * 501,
        math.nan,
        math.inf,
        -math.inf,
        None,
        [],
        [1],
        {},
        {"a": 1},
        (1,),
        b"x",
        Decimal(1),
        date.today(),
    ],
)
def test_rejected_metadata_values_name_the_key(value: object) -> None:
    """Empty or long strings, non-finite floats, null, lists, objects and other types are refused."""
    err = rejects("metadata.k", metadata={"k": value})
    assert err.value is value or (isinstance(value, float) and math.isnan(value))


def test_integers_past_the_double_range_are_rejected() -> None:
    """Polar casts metadata numbers to double precision to filter and aggregate them (and the engine
    reads them as floats), so an integer beyond the double range fails at track time, not later."""
    for value in (10**4300, -(10**4300), 10**309, -(10**309), int(sys.float_info.max) + 1):
        assert "double" in rejects("metadata.k", metadata={"k": value}).rule
    rejects("metadata._llm.total_tokens", metadata={"_llm": {**LLM, "total_tokens": 10**5000}})
    rejects("metadata._llm.total_tokens", metadata={"_llm": {**LLM, "total_tokens": 10**400}})


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("name", {"name": "api\ud800"}),
        ("customer_id", {"customer_id": "\udcff"}),
        ("external_id", {"external_id": "id\udcff"}),
        ("metadata.k", {"metadata": {"k": "caf\udce9"}}),
        ("metadata.\\udcff", {"metadata": {"\udcff": "v"}}),
        ("metadata._cost.currency", {"metadata": {"_cost": {"amount": 1, "currency": "usd\ud800"}}}),
        ("metadata._llm.model", {"metadata": {"_llm": {**LLM, "model": "\udfff"}}}),
        ("metadata._llm.response", {"metadata": {"_llm": {**LLM, "response": "ok\ud83d"}}}),
    ],
)
def test_surrogates_are_rejected_anywhere(field: str, kwargs: dict[str, Any]) -> None:
    """A surrogate code point cannot be encoded by any driver or JSON encoder: rejected by name."""
    err = rejects(field, **kwargs)
    assert err.rule == "must be valid Unicode text (no lone surrogates)"


@pytest.mark.parametrize("bad", ["not a mapping", 5, ["k", "v"]])
def test_metadata_must_be_a_mapping(bad: object) -> None:
    """metadata is an object; None means empty."""
    rejects("metadata", metadata=bad)
    assert event(metadata=None).metadata == {}


def test_metadata_keys_must_be_strings() -> None:
    """Keys are strings; the error names the metadata field."""
    rejects("metadata", metadata={1: "x"})


def test_metadata_keys_have_no_length_or_count_limit() -> None:
    """The 40-char key and 50-pair limits are documented (``METADATA_DESCRIPTION``) but not enforced for
    events: ``EventMetadataInput`` in server/polar/event/schemas.py constrains values only."""
    meta = {("k" * 41) + str(i): i for i in range(60)}
    assert validate_metadata(meta) == meta


def test_metadata_is_copied() -> None:
    """The event keeps its own copy: later changes to the caller's dict do not leak in."""
    source = {"k": 1}
    ev = event(metadata=source)
    source["k"] = 2
    assert ev.metadata == {"k": 1}


class Colour(str, enum.Enum):  # noqa: UP042 - the str-mixin form is the case under test
    RED = "red"


class Size(enum.IntEnum):
    LARGE = 3


class Plain(enum.StrEnum):
    NAME = "api.request"


class Ratio(float):
    pass


def test_enum_subclasses_travel_as_plain_values() -> None:
    """str/int/float subclasses (Enum mixins, StrEnum, IntEnum) become plain str/int/float."""
    clean = validate_metadata({"colour": Colour.RED, "size": Size.LARGE, "n": Plain.NAME, "r": Ratio(0.5)})
    assert clean == {"colour": "red", "size": 3, "n": "api.request", "r": 0.5}
    assert [type(v) for v in clean.values()] == [str, int, str, float]
    ev = event(name=Plain.NAME, customer_id=Colour.RED, external_id=Colour.RED, metadata={Colour.RED: 1})
    assert (type(ev.name), type(ev.customer_id), type(ev.external_id)) == (str, str, str)
    assert (ev.name, ev.customer_id, ev.external_id) == ("api.request", "red", "red")
    assert list(ev.metadata) == ["red"]
    assert type(next(iter(ev.metadata))) is str


def test_enum_values_still_obey_the_rules() -> None:
    """A subclass value is checked after conversion: an empty str subclass is still empty."""

    class Empty(str, enum.Enum):  # noqa: UP042 - the str-mixin form is the case under test
        NONE = ""

    rejects("metadata.k", metadata={"k": Empty.NONE})
    rejects("metadata.k", metadata={"k": Ratio(math.nan)})


# --- reserved keys: _cost and _llm ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "amount",
    [150, 0, -5, 12.5, "12.5", "99999.999999999999", "1.0000000000000", "1E+3", "0E+10", 99999],
)
def test_cost_amounts_polar_accepts(amount: object) -> None:
    """At most 12 decimal places and 5 whole digits, counted after dropping trailing zeros. The
    amount is kept as Polar stores it: parsed as a decimal, written as a JSON number (a float)."""
    clean = validate_metadata({"_cost": {"amount": amount, "currency": "usd"}})
    number = clean["_cost"]["amount"]
    assert type(number) is float
    expected = float(Decimal(str(amount)))
    if abs(expected) < 1e5:
        assert clean == {"_cost": {"amount": expected, "currency": "usd"}}
    else:  # 99999.999999999999 rounds up to 1e5: sent as the double just below, which Polar accepts
        assert number == math.nextafter(expected, 0.0) and abs(number) < 1e5


@pytest.mark.parametrize(
    ("amount", "rule"),
    [
        (100000, "5 digits"),
        ("100000", "5 digits"),
        (1e5, "5 digits"),
        ("1e16", "5 digits"),
        (1e16, "5 digits"),
        pytest.param(10**5000, "5 digits", id="10**5000"),
        ("0.0000000000001", "12 decimal"),
        ("99999.9999999999999", "12 decimal"),
        ("nan", "finite"),
        (math.inf, "finite"),
        ("abc", "decimal"),
        (True, "required"),
        (None, "required"),
        ([1], "required"),
    ],
)
def test_cost_amounts_polar_rejects(amount: object, rule: str) -> None:
    """Whole digits (also via an exponent), decimal places, non-finite and non-numeric amounts fail."""
    err = rejects("metadata._cost.amount", metadata={"_cost": {"amount": amount, "currency": "usd"}})
    assert rule in err.rule


def test_cost_amount_is_required() -> None:
    """Missing amount names the nested field."""
    rejects("metadata._cost.amount", metadata={"_cost": {"currency": "usd"}})


@pytest.mark.parametrize(("currency", "ok"), [("usd", True), ("xusdx", True), ("USD", False), ("eur", False)])
def test_cost_currency_is_an_unanchored_usd_match(currency: str, ok: bool) -> None:
    """The regex ``usd`` (``CostMetadata`` in server/polar/event/schemas.py) is unanchored and
    case-sensitive."""
    meta = {"_cost": {"amount": 1, "currency": currency}}
    if ok:
        assert validate_metadata(meta) == meta
    else:
        rejects("metadata._cost.currency", metadata=meta)


@pytest.mark.parametrize("key", ["_cost", "_llm"])
@pytest.mark.parametrize("value", ["x", 5, 1.5, True, None, [1]])
def test_reserved_keys_only_take_their_structure(key: str, value: object) -> None:
    """A primitive under ``_cost`` or ``_llm`` is not a cost or an LLM record: rejected."""
    rejects(f"metadata.{key}", metadata={key: value})


def test_other_underscore_keys_are_plain() -> None:
    """Only _cost and _llm may hold objects; other underscore keys take primitives."""
    assert validate_metadata({"_other": "x"}) == {"_other": "x"}
    rejects("metadata._other", metadata={"_other": {"a": 1}})


def test_llm_structure() -> None:
    """Unknown keys are dropped, prompt/response default to null, the rest is kept."""
    clean = validate_metadata({"_llm": {**LLM, "cached_input_tokens": 2, "extra": "dropped"}})
    assert clean["_llm"] == {**LLM, "cached_input_tokens": 2, "prompt": None, "response": None}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"total_tokens": None}, "metadata._llm.total_tokens"),
        ({"input_tokens": True}, "metadata._llm.input_tokens"),
        ({"output_tokens": 1.5}, "metadata._llm.output_tokens"),
        ({"vendor": None}, "metadata._llm.vendor"),
        ({"model": 4}, "metadata._llm.model"),
        ({"cached_input_tokens": "2"}, "metadata._llm.cached_input_tokens"),
        ({"response": 5}, "metadata._llm.response"),
    ],
)
def test_llm_field_rules(change: dict[str, Any], field: str) -> None:
    """Each broken _llm field is named by its dotted path."""
    llm = {**LLM, **change}
    llm = {k: v for k, v in llm.items() if v is not None}
    rejects(field, metadata={"_llm": llm})


# --- timestamps (AwareDatetime and is_past_timestamp, server/polar/event/schemas.py) ------------------


def test_timestamp_must_be_aware() -> None:
    """Naive datetimes and naive ISO strings are refused."""
    rejects("timestamp", timestamp=datetime(2026, 1, 1))
    rejects("timestamp", timestamp="2026-01-01T00:00:00")
    rejects("timestamp", timestamp="2026-01-01")


def test_timestamp_must_not_be_in_the_future() -> None:
    """Polar refuses any instant after its now; now itself is fine."""
    rejects("timestamp", timestamp=NOW + timedelta(microseconds=1))
    rejects("timestamp", timestamp=(NOW + timedelta(hours=1)).isoformat())
    assert event(timestamp=NOW).timestamp == NOW


def test_timestamp_has_no_lower_bound() -> None:
    """The probe accepted 2001; year 1 UTC works too."""
    assert event(timestamp=datetime(2001, 1, 1, tzinfo=UTC)).timestamp.year == 2001
    assert event(timestamp="0001-01-01T00:00:00Z").timestamp == datetime(1, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-02-01T10:00:00Z", datetime(2026, 2, 1, 10, tzinfo=UTC)),
        ("2026-02-01T10:00:00+00:00", datetime(2026, 2, 1, 10, tzinfo=UTC)),
        ("2026-02-01T12:30:00+02:30", datetime(2026, 2, 1, 10, tzinfo=UTC)),
        ("2026-02-01T05:00:00.250-05:00", datetime(2026, 2, 1, 10, 0, 0, 250000, tzinfo=UTC)),
    ],
)
def test_iso_strings_with_offset_are_converted_to_utc(text: str, expected: datetime) -> None:
    """ISO-8601 with Z or an offset is accepted and stored in UTC."""
    ts = event(timestamp=text).timestamp
    assert ts == expected
    assert ts.utcoffset() == timedelta(0)


def test_aware_datetime_in_another_zone_is_converted() -> None:
    """An aware datetime keeps its instant and is stored in UTC."""
    tz = timezone(timedelta(hours=-7))
    ts = event(timestamp=datetime(2026, 2, 1, 3, tzinfo=tz)).timestamp
    assert ts == datetime(2026, 2, 1, 10, tzinfo=UTC)
    assert ts.tzinfo == UTC


@pytest.mark.parametrize(
    "bad",
    ["yesterday", "", "2026-13-01T00:00:00Z", 1_700_000_000, 1.5, date(2026, 1, 1), b"2026-01-01T00:00:00Z"],
)
def test_unparseable_timestamps(bad: object) -> None:
    """Anything but an aware datetime or an ISO string with an offset names the timestamp field."""
    rejects("timestamp", timestamp=bad)


@pytest.mark.parametrize("text", ["0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00"])
def test_instants_outside_datetime_range_are_a_validation_error(text: str) -> None:
    """Converting to UTC may leave datetime's range; that is the caller's error, not an OverflowError."""
    with pytest.raises(ValidationError) as info:
        parse_timestamp(text)
    assert info.value.field == "timestamp"


def test_parse_timestamp_uses_the_field_name_it_is_given() -> None:
    """Batch callers pass their own field path."""
    with pytest.raises(ValidationError) as info:
        parse_timestamp("nope", "events[2].timestamp")
    assert info.value.field == "events[2].timestamp"


# --- external ids ---------------------------------------------------------------------------------------


def test_caller_external_id_is_kept() -> None:
    """An explicit external_id is the caller's idempotency key and is not changed."""
    assert event(external_id="req-42").external_id == "req-42"
    rejects("external_id", external_id="")
    rejects("external_id", external_id=42)


def test_generated_ids_are_unique_hex_and_url_safe() -> None:
    """32 lowercase hex characters, never / ? #, and no repeats."""
    ids = [new_external_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    for eid in ids[:2000]:
        assert re.fullmatch(r"[0-9a-f]{32}", eid)
        assert not set("/?#") & set(eid)


def test_generated_ids_carry_their_creation_millisecond() -> None:
    """The first 12 hex digits are the creation time in milliseconds."""
    before = time.time_ns() // 1_000_000
    eid = new_external_id()
    after = time.time_ns() // 1_000_000
    assert before <= int(eid[:12], 16) <= after


def test_generated_ids_sort_by_creation_time_across_milliseconds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ids made in later milliseconds sort after earlier ones, whatever their random part."""
    clock = iter(range(1_700_000_000_000, 1_700_000_000_000 + 500))
    monkeypatch.setattr(time, "time_ns", lambda: next(clock) * 1_000_000)
    ids = [new_external_id() for _ in range(500)]
    assert sorted(ids) == ids


def test_generated_ids_sort_in_real_time() -> None:
    """Across real milliseconds, ordering by id never puts a later id first."""
    ids = [new_external_id()]
    while len({i[:12] for i in ids}) < 3:
        ids.append(new_external_id())
    for earlier, later in itertools.pairwise(ids):
        assert earlier[:12] <= later[:12]
        if earlier[:12] < later[:12]:
            assert earlier < later


def test_to_polar_body() -> None:
    """The EventCreateExternalCustomer body: ISO timestamp with offset, metadata copied."""
    ev = event(metadata={"a": 1}, external_id="e1", timestamp="2026-02-01T10:00:00Z")
    body = ev.to_polar()
    assert body == {
        "name": "api.request",
        "external_customer_id": "user_123",
        "external_id": "e1",
        "timestamp": "2026-02-01T10:00:00+00:00",
        "metadata": {"a": 1},
    }
    assert datetime.fromisoformat(body["timestamp"]) == ev.timestamp


# --- fuzzing: only ValidationError, always naming the field ---------------------------------------------

offsets = st.builds(
    timezone,
    st.timedeltas(min_value=timedelta(hours=-23, minutes=-59), max_value=timedelta(hours=23, minutes=59)),
)
weird_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    # huge integers are built lazily: hypothesis reprs its strategies, and repr() of them would fail
    st.sampled_from([4300, -5000, 19]).map(lambda d: 10 ** abs(d) * (1 if d > 0 else -1)),
    st.floats(),
    st.text(max_size=8),
    st.text(min_size=495, max_size=505),
    st.sampled_from(["", "\x00", "a\x00", "5", Colour.RED, Size.LARGE, Plain.NAME]),
    st.binary(max_size=4),
    st.decimals(allow_nan=True),
    st.datetimes(),
    st.datetimes(timezones=offsets),
    st.dates(),
)
anything = st.recursive(
    weird_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.one_of(st.text(max_size=6), st.integers()), inner, max_size=3),
    ),
    max_leaves=8,
)
cost_like = st.fixed_dictionaries(
    {"amount": anything, "currency": st.sampled_from(["usd", "USD", "xusdx", "usd\x00"])}
)
llm_like = st.fixed_dictionaries(
    {
        "vendor": st.one_of(st.text(max_size=4), anything),
        "model": st.text(max_size=4),
        "input_tokens": st.one_of(st.integers(), anything),
        "output_tokens": st.integers(),
        "total_tokens": st.one_of(st.integers(), st.just(4300).map(lambda d: 10**d)),
    },
    optional={"prompt": anything, "cached_input_tokens": anything, "junk": anything},
)
metadata_like = st.one_of(
    anything,
    st.dictionaries(
        st.one_of(st.sampled_from(["_cost", "_llm", "k", "k\x00", Colour.RED]), st.text(max_size=5)),
        st.one_of(anything, cost_like, llm_like),
        max_size=4,
    ),
)
timestamps = st.one_of(
    st.none(),
    st.datetimes(timezones=offsets),
    st.datetimes(timezones=offsets).map(lambda d: d.isoformat()),
    st.sampled_from(["0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00", "2026-01-01T00:00:00Z"]),
    anything,
)
names = st.one_of(st.text(max_size=130), st.text(min_size=127, max_size=130), anything)

GOOD: dict[str, Any] = {
    "customer_id": "user_1",
    "name": "api.request",
    "metadata": None,
    "timestamp": None,
    "external_id": None,
}
ARGS = tuple(GOOD)


def call(args: dict[str, Any]) -> Event:
    return validate_event(
        args["customer_id"],
        args["name"],
        args["metadata"],
        timestamp=args["timestamp"],
        external_id=args["external_id"],
        now=NOW,
    )


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    customer_id=st.one_of(st.text(max_size=6), anything),
    name=names,
    metadata=metadata_like,
    timestamp=timestamps,
    external_id=st.one_of(st.none(), st.text(max_size=6), anything),
)
def test_fuzz_validate_event_returns_event_or_names_the_field(
    customer_id: Any, name: Any, metadata: Any, timestamp: Any, external_id: Any
) -> None:
    """Arbitrary input gives an Event or a ValidationError whose field is the culprit, nothing else."""
    args = {
        "customer_id": customer_id,
        "name": name,
        "metadata": metadata,
        "timestamp": timestamp,
        "external_id": external_id,
    }
    error: ValidationError | None = None
    try:
        ev = call(args)
    except ValidationError as exc:
        error = exc
    if error is not None:
        assert error.rule
        culprit = error.field.split(".", 1)[0]
        assert culprit in ARGS, error.field
        # Only the named argument, with every other argument valid, fails the same way.
        with pytest.raises(ValidationError) as again:
            call({**GOOD, culprit: args[culprit]})
        assert again.value.field == error.field
    else:
        assert isinstance(ev, Event)
        assert type(ev.name) is str
        assert 0 < len(ev.name) <= 128
        assert ev.timestamp.utcoffset() == timedelta(0)
        assert ev.timestamp <= NOW
        assert all(type(k) is str for k in ev.metadata)


@settings(max_examples=300)
@given(
    amount=st.one_of(
        st.decimals(allow_nan=False, allow_infinity=False).map(str),
        st.floats(allow_nan=False, allow_infinity=False),
        st.integers(min_value=-(10**8), max_value=10**8),
        st.from_regex(r"-?[0-9]{1,7}(\.[0-9]{0,15})?(E[+-]?[0-9]{1,2})?", fullmatch=True),
    )
)
def test_cost_amount_matches_pydantics_decimal_rule(amount: object) -> None:
    """Polar's server checks ``_cost.amount`` with pydantic (17 digits, 12 places); so do we, identically."""
    pydantic = pytest.importorskip("pydantic")
    adapter = pydantic.TypeAdapter(Annotated[Decimal, pydantic.Field(max_digits=17, decimal_places=12)])
    try:
        adapter.validate_python(amount)
        polar_ok = True
    except pydantic.ValidationError:
        polar_ok = False
    meta = {"_cost": {"amount": amount, "currency": "usd"}}
    error: ValidationError | None = None
    try:
        clean = validate_metadata(meta)
    except ValidationError as exc:
        error = exc
    assert (error is None) is polar_ok
    if error is not None:
        assert error.field == "metadata._cost.amount"
    else:
        # What we keep (and deliver) is a number Polar accepts too, through its JSON body.
        adapter.validate_json(json.dumps(clean["_cost"]["amount"]))


def test_external_ids_differ_between_parent_and_forked_child() -> None:
    """A forked child reseeds the id generator: its ids never repeat the parent's."""
    import os

    from polar_metering._events import new_external_id

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.write(write, ",".join(new_external_id() for _ in range(50)).encode())
        os._exit(0)
    os.close(write)
    parent_ids = {new_external_id() for _ in range(50)}
    data = b""
    while chunk := os.read(read, 65536):
        data += chunk
    os.waitpid(pid, 0)
    child_ids = set(data.decode().split(","))
    assert len(child_ids) == 50 and not (parent_ids & child_ids)
    assert {i[12:] for i in parent_ids}.isdisjoint({i[12:] for i in child_ids})
