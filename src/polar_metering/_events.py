"""Events and their validation by Polar's ingest rules (``server/polar/event/schemas.py`` in
polarsource/polar).

Validation is pure and cheap: it runs on the caller's thread for every tracked event, so the hot path
is a handful of type checks. Each failure is a :class:`ValidationError` naming the field and the rule.
"""

from __future__ import annotations

import math
import os
import random
import reprlib
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, TypeAlias

from polar_metering._exceptions import ValidationError

__all__ = [
    "Event",
    "EventName",
    "INT_MAX",
    "MetadataValue",
    "MeterSlug",
    "SURROGATE_RULE",
    "check_number",
    "check_text",
    "describe",
    "new_external_id",
    "parse_timestamp",
    "printable",
    "text_error",
    "validate_event",
    "validate_metadata",
    "validate_value",
]

MetadataValue: TypeAlias = str | int | float | bool
"""A metadata value Polar accepts (``EventMetadataInput``): str (1 to 500 chars), int, float or bool."""
MeterSlug: TypeAlias = str
EventName: TypeAlias = str

MAX_NAME = 128  # server/polar/event/schemas.py: String(128) column
MAX_METADATA_STRING = 500  # server/polar/event/schemas.py
# Polar casts metadata numbers to double precision wherever a meter filters or aggregates them
# (``as_float()`` in server/polar/meter/filter.py and server/polar/meter/aggregation.py at c6c3645),
# and the engine reads them as Python floats. An integer beyond the double range would be accepted at
# ingest and then make every query over that key fail, so it is refused at track time. The bound also
# keeps integers far below the 4300-digit limit of int/str conversion that JSON encoding hits.
INT_MAX = int(sys.float_info.max)
SURROGATE_RULE = "must be valid Unicode text (no lone surrogates)"
NUL_RULE = "must not contain NUL characters"
INT_RULE = "integers must be within the range of a double (about ±1.8e308), which Polar aggregates"
# server/polar/event/schemas.py: Decimal(max_digits=17, decimal_places=12) -> at most 5 whole digits
_COST_MAX_PLACES = 12
_COST_MAX_WHOLE = 5
_LLM_INT_KEYS = ("input_tokens", "output_tokens", "total_tokens")
_LLM_KEYS = {
    "vendor",
    "model",
    "prompt",
    "response",
    "input_tokens",
    "cached_input_tokens",
    "output_tokens",
    "total_tokens",
}


# The random part comes from a generator seeded with 256 bits of OS entropy, reseeded in every
# forked child so parent and child never share a sequence. Calling os.urandom per event would make
# a syscall that gives up the GIL, and the caller then waits for background threads to hand it back
# (~10 µs measured beside the outbox writer, against ~0.1 µs for getrandbits).
_ids = random.Random(os.urandom(32))
os.register_at_fork(after_in_child=lambda: _ids.seed(os.urandom(32)))


def new_external_id() -> str:
    """A unique, time-ordered id: 48 bits of milliseconds then 80 random bits, as 32 hex characters.

    Time-ordered ids keep the outbox and the event table append-only (perf floors: a random key costs
    ~15x in SQLite). The id never contains ``/``, ``?`` or ``#``, which Polar's SDK would not escape.
    """
    return f"{time.time_ns() // 1_000_000:012x}{_ids.getrandbits(80):020x}"


def _plain_str(value: str) -> str:
    # A str subclass (StrEnum, or a str-mixin Enum whose str() is "Cls.MEMBER") travels as its value.
    return value if type(value) is str else str.__str__(value)


def text_error(value: str) -> str | None:
    """The rule ``value`` breaks as text to store and send, or ``None``.

    Every database driver and JSON encoder refuses a surrogate code point (``"\\udcff"``, what
    ``surrogateescape`` makes of an undecodable byte), so one in a value would fail the whole batch
    at write time. ``isascii()`` is O(1) in CPython, so only non-ASCII text pays for the real check.
    """
    if "\x00" in value:
        return NUL_RULE
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return SURROGATE_RULE
    return None


def _encodes(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_text(value: str, field: str) -> None:
    """Raise ``ValidationError`` if ``value`` holds NUL or a surrogate (see :func:`text_error`)."""
    rule = text_error(value)
    if rule is not None:
        raise ValidationError(field, rule, value)


def printable(text: str) -> str:
    """``text`` safe to print and log: surrogates become backslash escapes."""
    if text.isascii():
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, 60, 60


def describe(value: object, limit: int = 80) -> str:
    """A short, always printable description of any value for error messages.

    ``repr`` can recurse without bound (deeply nested containers), refuse (an int past 4300 digits),
    run user code or be huge; a message must never fail or flood a log.
    """
    if isinstance(value, int) and not isinstance(value, bool) and not -INT_MAX <= value <= INT_MAX:
        return f"<int of {value.bit_length()} bits>"
    try:
        text = _REPR.repr(value)
    except Exception:
        return f"<{type(value).__name__}>"
    text = printable(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_number(
    value: object, field: str, *, integral: bool = False, minimum: float | None = 0
) -> int | float:
    """A finite number within the double range (bools refused), as a plain int or float."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(field, "must be a number", value)
    if isinstance(value, int):
        if not -INT_MAX <= value <= INT_MAX:
            raise ValidationError(field, "must be within the range of a double (about ±1.8e308)", value)
        number: int | float = int(value)
    else:
        number = float(value)
        if not math.isfinite(number):
            raise ValidationError(field, "must be finite", value)
        if integral:
            if number != int(number):
                raise ValidationError(field, "must be a whole number", value)
            number = int(number)
    if minimum is not None and number < minimum:
        raise ValidationError(field, f"must be >= {minimum:g}", value)
    return number


def parse_timestamp(value: object, field: str = "timestamp", *, now: datetime | None = None) -> datetime:
    """An aware UTC datetime from a datetime or ISO-8601 string; never naive, never in the future."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
        except ValueError:
            raise ValidationError(field, "must be an ISO-8601 date-time with a UTC offset", value) from None
    if not isinstance(value, datetime):
        raise ValidationError(field, "must be a timezone-aware datetime or ISO-8601 string", value)
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValidationError(field, "must be timezone-aware (Polar rejects naive timestamps)", value)
    try:
        value = value.astimezone(UTC)
    except OverflowError:
        # e.g. 0001-01-01T00:00+05:00: the UTC instant falls outside datetime's range.
        raise ValidationError(
            field, "must be within the years 1..9999 once converted to UTC", value
        ) from None
    if now is not None and value > now:
        raise ValidationError(
            field, "must not be in the future (Polar: 'Timestamp must be in the past.')", value
        )
    return value


def _check_str(value: str, field: str) -> None:
    rule = text_error(value)
    if rule is not None:
        raise ValidationError(field, rule, value)


def _check_int(value: int, field: str) -> None:
    if not -INT_MAX <= value <= INT_MAX:
        raise ValidationError(field, INT_RULE, value)


def _cost_digits(dec: Decimal) -> tuple[int, int]:
    # server/polar/event/schemas.py counts digits as pydantic does: on the normalized value, so trailing
    # zeros are free
    # ("1.0000000000000" passes) and an exponent adds whole digits ("1e16" has 17).
    _, digits, exponent = dec.normalize().as_tuple()
    if not isinstance(exponent, int):  # pragma: no cover - callers pass finite values only
        return 0, 0
    places = -exponent if exponent < 0 else 0
    whole = (len(digits) + exponent if exponent >= 0 else max(len(digits), places)) - places
    return places, whole


def _validate_cost(value: object, field: str) -> dict[str, Any]:
    """The cost record as Polar stores it: ``amount`` parsed as a decimal, kept as a JSON number.

    Polar's ``CostMetadata`` (server/polar/event/schemas.py at c6c3645) parses the amount as a
    Decimal, and its database JSON serializer (server/polar/kit/db/postgres.py) writes a Decimal as
    ``float(value)``: ``"1.25"`` is stored as the number 1.25, which meters can sum.
    """
    if not isinstance(value, Mapping):
        raise ValidationError(field, "must be an object {amount, currency}", value)
    unknown = [k for k in value if k not in ("amount", "currency")]
    if unknown:
        names = sorted(printable(k) if isinstance(k, str) else describe(k, 40) for k in unknown[:5])
        raise ValidationError(field, f"unknown keys {names}", value)
    amount = value.get("amount")
    if amount is None or isinstance(amount, bool) or not isinstance(amount, int | float | str):
        raise ValidationError(f"{field}.amount", "is required: a number of cents", amount)
    try:
        # Decimal(int) is exact at any size; str() of a huge int would hit CPython's digit limit.
        if isinstance(amount, int):
            dec = Decimal(int(amount))
        else:
            dec = Decimal(_plain_str(amount) if isinstance(amount, str) else repr(float(amount)))
    except (InvalidOperation, ValueError):
        raise ValidationError(f"{field}.amount", "must be a decimal number", amount) from None
    if not dec.is_finite():
        raise ValidationError(f"{field}.amount", "must be finite", amount)
    places, whole = _cost_digits(dec)
    if places > _COST_MAX_PLACES:
        raise ValidationError(
            f"{field}.amount", f"must have at most {_COST_MAX_PLACES} decimal places", amount
        )
    if whole > _COST_MAX_WHOLE:
        raise ValidationError(
            f"{field}.amount", f"must have at most {_COST_MAX_WHOLE} digits before the decimal point", amount
        )
    number = float(dec)
    # The number is what Polar receives and checks again. A 17-digit amount next to the bound, such
    # as 99999.999999999999, rounds up to 100000.0 as a double, which that check would refuse for the
    # whole batch at delivery: the double one step nearer zero (99999.99999999999) passes it, and
    # differs from what Polar would store by one unit in the last place.
    if abs(number) >= 10.0**_COST_MAX_WHOLE:
        number = math.nextafter(number, 0.0)
    currency = value.get("currency")
    if not isinstance(currency, str) or "usd" not in currency:
        raise ValidationError(f"{field}.currency", "must be 'usd'", currency)
    currency = _plain_str(currency)
    _check_str(currency, f"{field}.currency")
    return {"amount": number, "currency": currency}


def _llm_str(value: Mapping[Any, Any], key: str, field: str, *, required: bool) -> str | None:
    item = value.get(key)
    if item is None and not required:
        return None
    if not isinstance(item, str):
        rule = "is required: a string" if required else "must be a string or null"
        raise ValidationError(f"{field}.{key}", rule, item)
    item = _plain_str(item)
    _check_str(item, f"{field}.{key}")
    return item


def _llm_int(value: Mapping[Any, Any], key: str, field: str, *, required: bool) -> int | None:
    item = value.get(key)
    if item is None and not required:
        return None
    if isinstance(item, bool) or not isinstance(item, int):
        raise ValidationError(
            f"{field}.{key}", "is required: an integer" if required else "must be an integer", item
        )
    _check_int(item, f"{field}.{key}")
    return int(item)


def _validate_llm(value: object, field: str) -> dict[str, Any]:
    """The ``_llm`` record with its known keys checked; unknown keys are dropped unread, as Polar's
    ``LLMMetadata`` TypedDict ignores them."""
    if not isinstance(value, Mapping):
        raise ValidationError(
            field, "must be an object {vendor, model, input_tokens, output_tokens, total_tokens}", value
        )
    out: dict[str, Any] = {
        "vendor": _llm_str(value, "vendor", field, required=True),
        "model": _llm_str(value, "model", field, required=True),
    }
    for key in _LLM_INT_KEYS:
        out[key] = _llm_int(value, key, field, required=True)
    cached = _llm_int(value, "cached_input_tokens", field, required=False)
    if "cached_input_tokens" in value:
        out["cached_input_tokens"] = cached
    out["prompt"] = _llm_str(value, "prompt", field, required=False)
    out["response"] = _llm_str(value, "response", field, required=False)
    return out


def validate_value(value: object, field: str) -> MetadataValue:
    """One metadata value by the event rules (a unique meter's ``value=``), as its plain type."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        value = _plain_str(value)
        if not 0 < len(value) <= MAX_METADATA_STRING:
            raise ValidationError(
                field, f"strings must be 1 to {MAX_METADATA_STRING} characters, got {len(value)}", value
            )
        _check_str(value, field)
        return value
    if isinstance(value, int):
        _check_int(value, field)
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValidationError(field, "numbers must be finite", value)
        return float(value)
    raise ValidationError(field, "values must be str, int, float or bool (no null, lists or objects)", value)


def validate_metadata(metadata: object, field: str = "metadata") -> dict[str, Any]:
    """Check metadata by Polar's event rules and return a plain dict copy."""
    if metadata is None:
        return {}
    if type(metadata) is not dict and not isinstance(metadata, Mapping):
        raise ValidationError(field, "must be a mapping of string keys to str, int, float or bool", metadata)
    out: dict[str, Any] = {}
    for key, value in metadata.items():
        cls = type(value)
        # Fast path for the common case (plain str key, plain scalar value): no per-key
        # allocations for ASCII text; only non-ASCII text is encoded to look for surrogates.
        if type(key) is str and "\x00" not in key and key[:1] != "_" and (key.isascii() or _encodes(key)):
            if cls is str:
                if (
                    0 < len(value) <= MAX_METADATA_STRING
                    and "\x00" not in value
                    and (value.isascii() or _encodes(value))
                ):
                    out[key] = value
                    continue
            elif cls is int:
                if -INT_MAX <= value <= INT_MAX:
                    out[key] = value
                    continue
            elif cls is bool or (cls is float and math.isfinite(value)):
                out[key] = value
                continue
        if not isinstance(key, str):
            raise ValidationError(field, f"keys must be strings, got {describe(key, 40)}", key)
        key = _plain_str(key)
        where = f"{field}.{printable(key)}"
        _check_str(key, where)
        if key == "_cost":
            # server/polar/event/schemas.py: the reserved keys hold their structure or nothing; a primitive
            # there is rejected.
            out[key] = _validate_cost(value, where)
        elif key == "_llm":
            out[key] = _validate_llm(value, where)
        else:
            out[key] = validate_value(value, where)
    return out


@dataclass(frozen=True, slots=True)
class Event:
    """One usage event, validated, with its id and timestamp fixed at track time.

    ``customer_id`` is Polar's ``external_customer_id``: your user or organization id.
    """

    customer_id: str
    name: str
    metadata: Mapping[str, Any]
    timestamp: datetime
    external_id: str

    def to_polar(self) -> dict[str, Any]:
        """The ``EventCreateExternalCustomer`` body Polar ingests (timestamp as ISO-8601 with offset)."""
        return {
            "name": self.name,
            "external_customer_id": self.customer_id,
            "external_id": self.external_id,
            "timestamp": self.timestamp.isoformat(),
            "metadata": dict(self.metadata),
        }


def validate_event(
    customer_id: object,
    name: object,
    metadata: object = None,
    *,
    timestamp: object = None,
    external_id: object = None,
    now: datetime,
) -> Event:
    """Validate one event and stamp what the caller left out (timestamp = ``now``, a fresh id)."""
    # Fast path: plain ASCII str without NUL. Anything else is normalised and checked in full.
    if type(customer_id) is not str or not customer_id.isascii() or not customer_id or "\x00" in customer_id:
        if not isinstance(customer_id, str):
            raise ValidationError("customer_id", "must be a non-empty string", customer_id)
        customer_id = _plain_str(customer_id)
        if not customer_id:
            raise ValidationError("customer_id", "must be a non-empty string", customer_id)
        _check_str(customer_id, "customer_id")
    if type(name) is not str or not name.isascii() or not 0 < len(name) <= MAX_NAME or "\x00" in name:
        if not isinstance(name, str):
            raise ValidationError("name", "must be a non-empty string", name)
        name = _plain_str(name)
        if not name:
            raise ValidationError("name", "must be a non-empty string", name)
        if len(name) > MAX_NAME:
            raise ValidationError("name", f"must be at most {MAX_NAME} characters, got {len(name)}", name)
        _check_str(name, "name")
    clean = validate_metadata(metadata)
    ts = now if timestamp is None else parse_timestamp(timestamp, now=now)
    if external_id is None:
        eid = new_external_id()
    else:
        if not isinstance(external_id, str):
            raise ValidationError("external_id", "must be a non-empty string", external_id)
        eid = _plain_str(external_id)
        if not eid:
            raise ValidationError("external_id", "must be a non-empty string", external_id)
        _check_str(eid, "external_id")
    return Event(customer_id, name, clean, ts, eid)
