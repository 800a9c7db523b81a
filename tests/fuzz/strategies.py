"""Adversarial values for fuzzing the public API, and batches whose bad items are known by construction.

Huge integers and deeply nested values are built inside ``map`` callbacks: hypothesis keeps the repr
of its strategies, and ``repr()`` of such values fails (CPython's 4300-digit limit) or recurses.
"""

from __future__ import annotations

import enum
import itertools
import math
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import strategies as st

from polar_metering import Event

DBL_INT = int(sys.float_info.max)
_ids = itertools.count()


def fresh(prefix: str = "fz") -> str:
    """An id no other example in this process uses."""
    return f"{prefix}{next(_ids)}"


class Colour(enum.StrEnum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


class Odd(str):
    """A str subclass whose str() lies: the library must send the value, not str(value)."""

    def __str__(self) -> str:
        return "not-the-value"


class _Short:
    """Printed briefly by hypothesis (its pretty-printer would recurse through the nesting)."""

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(f"<{type(self).__name__}>")


class DeepDict(_Short, dict):  # type: ignore[type-arg]
    pass


class DeepList(_Short, list):  # type: ignore[type-arg]
    pass


class DeepTuple(_Short, tuple):  # type: ignore[type-arg]
    pass


def _deep(kind: str, depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value} if kind == "dict" else [value]
    return DeepDict(value) if kind == "dict" else DeepList(value)


def _key_nest(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = (value,)
    return DeepTuple(value)


# -- scalars ----------------------------------------------------------------------------------------

SURROGATES = st.sampled_from(["\udcff", "\ud800", "\udfff", "a\ud83d", "\ud83d\ude00", "caf\udce9"])
bad_text = st.one_of(
    SURROGATES,
    st.text(max_size=6).map(lambda t: t + "\udcff"),
    st.text(max_size=6).map(lambda t: "\x00" + t),
    st.just(""),
)
valid_text = st.one_of(
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=12),
    st.sampled_from(["café ☕", "😀", "日本語", "x" * 500, Colour.RED]),
)
any_text = st.one_of(
    st.text(max_size=12),  # includes surrogates and NUL
    bad_text,
    valid_text,
    st.text(min_size=495, max_size=505),
    st.sampled_from([100_000, 1_000_000]).map(lambda n: "y" * n),
    st.builds(Odd, st.text(max_size=5)),
)
huge_ints = st.sampled_from([309, 400, 4300, 5000]).map(lambda d: 10**d) | st.just(DBL_INT + 1)
any_int = st.one_of(
    st.integers(),
    st.integers(min_value=-(2**64), max_value=2**64),
    huge_ints,
    huge_ints.map(lambda n: -n),
    st.just(DBL_INT),
    st.just(Level.HIGH),
)
any_float = st.one_of(st.floats(), st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1e308, 5e-324]))
offsets = st.builds(
    timezone,
    st.timedeltas(min_value=timedelta(hours=-23, minutes=-59), max_value=timedelta(hours=23, minutes=59)),
)
any_datetime = st.one_of(
    st.datetimes(),  # naive
    st.datetimes(timezones=offsets),
    st.datetimes(timezones=offsets).map(lambda d: d.isoformat()),
    st.datetimes().map(lambda d: d.isoformat()),
    st.sampled_from(
        [
            datetime.min.replace(tzinfo=UTC),
            datetime.max.replace(tzinfo=UTC),
            "0001-01-01T00:00:00+05:00",
            "9999-12-31T23:59:59-05:00",
            "2026-01-01T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "yesterday",
            "",
        ]
    ),
)
hashable_keys = st.one_of(
    st.text(max_size=6),
    bad_text,
    st.integers(),
    st.none(),
    st.tuples(st.integers()),
    st.floats(allow_nan=False),
)
deep_values = st.sampled_from(["dict", "list"]).map(lambda kind: _deep(kind, 5_000))
scalars = st.one_of(
    st.none(),
    st.booleans(),
    any_int,
    any_float,
    any_text,
    st.binary(max_size=4),
    st.decimals(allow_nan=True),
    any_datetime,
    st.dates(),
)
anything = st.one_of(
    st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=3),
            st.dictionaries(hashable_keys, inner, max_size=3),
        ),
        max_leaves=6,
    ),
    deep_values,
)
amounts = st.one_of(
    st.integers(min_value=0, max_value=50),
    st.floats(min_value=0, max_value=50),
    any_int,
    any_float,
    st.booleans(),
    st.none(),
    any_text,
)
timeouts = st.one_of(
    st.none(), st.floats(min_value=0, max_value=0.05), any_float, any_int, any_text, st.booleans()
)


# -- batches with known bad items ----------------------------------------------------------------------


@dataclass
class Item:
    """One batch item and, when it is bad by construction, the field its error must name."""

    value: Any
    field: str | None  # None: a good item, which must be stored exactly once
    tokens: int = 0


def _good(customer: str, tokens: int) -> dict[str, Any]:
    return {
        "customer_id": customer,
        "event_name": "ai.tokens",
        "metadata": {"tokens": tokens},
        "external_id": fresh("good-"),
    }


@st.composite
def good_items(draw: st.DrawFn, customer: str) -> Item:
    """Valid items in every accepted spelling, with valid but unusual text and numbers."""
    tokens = draw(st.integers(min_value=1, max_value=1000))
    base = _good(customer, tokens)
    extra = draw(
        st.dictionaries(
            st.one_of(valid_text, st.sampled_from(["_other", "k"])).filter(
                lambda k: k not in ("tokens", "_cost", "_llm")
            ),
            st.one_of(
                valid_text,
                st.integers(min_value=-DBL_INT, max_value=DBL_INT),
                st.floats(allow_nan=False, allow_infinity=False),
                st.booleans(),
                st.just(Level.HIGH),
            ),
            max_size=3,
        )
    )
    base["metadata"] = {**extra, "tokens": tokens}
    form = draw(st.sampled_from(["dict", "camel", "event", "cost", "timestamp"]))
    if form == "camel":
        value: Any = {
            "externalCustomerId": customer,
            "eventName": "ai.tokens",
            "properties": base["metadata"],
            "externalId": base["external_id"],
        }
    elif form == "event":
        when = datetime.now(UTC) - timedelta(days=1)
        value = Event(customer, "ai.tokens", base["metadata"], when, base["external_id"])
    elif form == "cost":
        amount = draw(st.sampled_from(["1.25", 3, 0.5, "-2", "99999.999999999999"]))
        base["metadata"]["_cost"] = {"amount": amount, "currency": "usd"}
        value = base
    elif form == "timestamp":
        base["timestamp"] = draw(
            st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2025, 12, 31), timezones=offsets)
        )
        value = base
    else:
        value = base
    return Item(value, None, tokens)


def _printable(key: str) -> str:
    return key.encode("utf-8", "backslashreplace").decode("utf-8")


@st.composite
def bad_items(draw: st.DrawFn, customer: str) -> Item:
    """An item broken in exactly one place, with the field its rejection must name."""
    item = _good(customer, 1)
    where = draw(
        st.sampled_from(
            [
                "customer",
                "name",
                "long_name",
                "value",
                "key",
                "str_key",
                "timestamp",
                "external_id",
                "cost",
                "llm",
                "item",
                "item_key",
                "metadata",
            ]
        )
    )
    if where == "customer":
        item["customer_id"] = draw(
            st.one_of(bad_text, any_int, st.none(), st.lists(st.integers(), max_size=2))
        )
        return Item(item, "customer_id")
    if where == "name":
        item["event_name"] = draw(st.one_of(bad_text, any_int, st.none(), st.binary(max_size=3)))
        return Item(item, "name")
    if where == "long_name":
        item["event_name"] = "n" * draw(st.integers(min_value=129, max_value=5000))
        return Item(item, "name")
    if where == "value":
        item["metadata"]["k"] = draw(
            st.one_of(
                bad_text,
                huge_ints,
                huge_ints.map(lambda n: -n),
                st.sampled_from([math.nan, math.inf, -math.inf]),
                st.none(),
                st.lists(st.integers(), max_size=2),
                st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
                deep_values,
                st.binary(max_size=3),
                st.decimals(),
                st.datetimes(),
                st.text(min_size=501, max_size=600),
            )
        )
        return Item(item, "metadata.k")
    if where == "key":
        key = draw(
            st.one_of(
                st.integers(),
                st.none(),
                st.floats(allow_nan=False),
                st.tuples(st.integers()),
                st.integers(min_value=10, max_value=5000).map(_key_nest),
            )
        )
        item["metadata"][key] = "v"
        return Item(item, "metadata")
    if where == "str_key":
        key = draw(bad_text.filter(bool))
        item["metadata"][key] = "v"
        return Item(item, f"metadata.{_printable(key)}")
    if where == "timestamp":
        item["timestamp"] = draw(
            st.one_of(
                st.datetimes(),  # naive
                st.datetimes(min_value=datetime(2100, 1, 1), timezones=offsets),  # future
                st.sampled_from(["yesterday", "", "2026-02-30T00:00:00Z", "2026-01-01T00:00:00"]),
                any_int,
                bad_text,
            )
        )
        return Item(item, "timestamp")
    if where == "external_id":
        item["external_id"] = draw(
            st.one_of(bad_text, any_int.filter(lambda n: n != 0), st.lists(st.integers()))
        )
        return Item(item, "external_id")
    if where == "cost":
        amount = draw(
            st.one_of(
                st.sampled_from(["abc", "1e16", "0.0000000000001", "nan", "\udcff", "", True]),
                huge_ints,
                st.sampled_from([math.nan, math.inf, 100_000, 1e5]),
                st.none(),
                deep_values,
            )
        )
        item["metadata"]["_cost"] = {"amount": amount, "currency": "usd"}
        return Item(item, "metadata._cost.amount")
    if where == "llm":
        llm: dict[str, Any] = {
            "vendor": "v",
            "model": "m",
            "input_tokens": 1,
            "output_tokens": 1,
            "total_tokens": 2,
        }
        key = draw(st.sampled_from(["vendor", "model", "input_tokens", "total_tokens", "prompt"]))
        llm[key] = draw(
            st.one_of(bad_text.filter(bool), huge_ints)
            if key in ("vendor", "model", "prompt")
            else st.one_of(huge_ints, st.just(1.5), st.just(True), st.just("5"))
        )
        if key == "prompt" and isinstance(llm[key], int):
            llm[key] = "\ud800"
        item["metadata"]["_llm"] = llm
        return Item(item, f"metadata._llm.{key}")
    if where == "item":
        return Item(
            draw(st.one_of(any_int, any_text, st.none(), st.lists(st.integers(), max_size=2))), "event"
        )
    if where == "item_key":
        item[draw(st.one_of(st.integers(), st.tuples(st.integers()), st.none()))] = "x"
        return Item(item, "event")
    item["metadata"] = draw(st.one_of(any_text, any_int, st.lists(st.integers(), min_size=1, max_size=2)))
    return Item(item, "metadata")


@st.composite
def mixed_batches(draw: st.DrawFn, customer: str, max_size: int = 12) -> list[Item]:
    return draw(st.lists(st.one_of(good_items(customer), bad_items(customer)), min_size=1, max_size=max_size))
