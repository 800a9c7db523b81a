"""Events and their validation by Polar's ingest rules (``reference/polar-api.md`` §1.2, §1.6).

Validation is pure and cheap: it runs on the caller's thread for every tracked event, so the hot path
is a handful of type checks. Each failure is a :class:`ValidationError` naming the field and the rule.
"""

from __future__ import annotations

import math
import os
import random
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
    "MetadataValue",
    "MeterSlug",
    "new_external_id",
    "parse_timestamp",
    "validate_event",
    "validate_metadata",
]

MetadataValue: TypeAlias = str | int | float | bool
"""A metadata value Polar accepts (``EventMetadataInput``): str (1 to 500 chars), int, float or bool."""
MeterSlug: TypeAlias = str
EventName: TypeAlias = str

MAX_NAME = 128  # §1.2: String(128) column
MAX_METADATA_STRING = 500  # §1.6
# Polar parses request bodies with Python's json module, which refuses integers longer than 4300 digits
# (CPython's int/str conversion limit); our own JSON encoding hits the same wall. So such an integer
# could never be delivered: reject it at track time instead of poisoning the outbox.
_INT_LIMIT = 10**4300
_COST_MAX_PLACES = 12  # §1.6: Decimal(max_digits=17, decimal_places=12) -> at most 5 whole digits
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
    if "\x00" in value:
        raise ValidationError(field, "must not contain NUL characters", value)


def _check_nested_str(value: object, field: str) -> None:
    # §1.2: a NUL character in any string, at any depth, is rejected ("invalid characters").
    if isinstance(value, str):
        _check_str(value, field)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if isinstance(key, str):
                _check_str(key, field)
            _check_nested_str(item, f"{field}.{key}")


def _check_int(value: int, field: str) -> None:
    if not -_INT_LIMIT < value < _INT_LIMIT:
        raise ValidationError(
            field, "integers must have at most 4300 digits (Polar's JSON parser limit)", value
        )


def _validate_cost(value: object, field: str) -> None:
    if not isinstance(value, Mapping):
        raise ValidationError(field, "must be an object {amount, currency}", value)
    unknown = set(value) - {"amount", "currency"}
    if unknown:
        raise ValidationError(field, f"unknown keys {sorted(map(repr, unknown))}", value)
    amount = value.get("amount")
    if amount is None or isinstance(amount, bool) or not isinstance(amount, int | float | str):
        raise ValidationError(f"{field}.amount", "is required: a number of cents", amount)
    try:
        # Decimal(int) is exact at any size; str() of a huge int would hit CPython's digit limit.
        dec = Decimal(amount) if isinstance(amount, int) else Decimal(str(amount))
    except InvalidOperation:
        raise ValidationError(f"{field}.amount", "must be a decimal number", amount) from None
    if not dec.is_finite():
        raise ValidationError(f"{field}.amount", "must be finite", amount)
    # §1.6 counts digits as pydantic does: on the normalized value, so trailing zeros are free
    # ("1.0000000000000" passes) and an exponent adds whole digits ("1e16" has 17).
    _, digits, exponent = dec.normalize().as_tuple()
    assert isinstance(exponent, int)  # finite, checked above
    places = -exponent if exponent < 0 else 0
    whole = (len(digits) + exponent if exponent >= 0 else max(len(digits), places)) - places
    if places > _COST_MAX_PLACES:
        raise ValidationError(
            f"{field}.amount", f"must have at most {_COST_MAX_PLACES} decimal places", amount
        )
    if whole > _COST_MAX_WHOLE:
        raise ValidationError(
            f"{field}.amount", f"must have at most {_COST_MAX_WHOLE} digits before the decimal point", amount
        )
    currency = value.get("currency")
    if not isinstance(currency, str) or "usd" not in currency:
        raise ValidationError(f"{field}.currency", "must be 'usd'", currency)


def _validate_llm(value: object, field: str) -> None:
    if not isinstance(value, Mapping):
        raise ValidationError(
            field, "must be an object {vendor, model, input_tokens, output_tokens, total_tokens}", value
        )
    for key in ("vendor", "model"):
        if not isinstance(value.get(key), str):
            raise ValidationError(f"{field}.{key}", "is required: a string", value.get(key))
    for key in _LLM_INT_KEYS:
        item = value.get(key)
        if isinstance(item, bool) or not isinstance(item, int):
            raise ValidationError(f"{field}.{key}", "is required: an integer", item)
        _check_int(item, f"{field}.{key}")
    cached = value.get("cached_input_tokens")
    if cached is not None and (isinstance(cached, bool) or not isinstance(cached, int)):
        raise ValidationError(f"{field}.cached_input_tokens", "must be an integer", cached)
    if cached is not None:
        _check_int(cached, f"{field}.cached_input_tokens")
    for key in ("prompt", "response"):
        item = value.get(key)
        if item is not None and not isinstance(item, str):
            raise ValidationError(f"{field}.{key}", "must be a string or null", item)


def validate_metadata(metadata: object, field: str = "metadata") -> dict[str, Any]:
    """Check metadata by Polar's event rules and return a plain dict copy."""
    if metadata is None:
        return {}
    if type(metadata) is not dict and not isinstance(metadata, Mapping):
        raise ValidationError(field, "must be a mapping of string keys to str, int, float or bool", metadata)
    out: dict[str, Any] = {}
    for key, value in metadata.items():
        cls = type(value)
        # Fast path for the common case (plain str key, plain scalar value): no per-key allocations.
        if type(key) is str and "\x00" not in key and key[:1] != "_":
            if cls is str:
                if 0 < len(value) <= MAX_METADATA_STRING and "\x00" not in value:
                    out[key] = value
                    continue
            elif cls is int:
                if -_INT_LIMIT < value < _INT_LIMIT:
                    out[key] = value
                    continue
            elif cls is bool or (cls is float and math.isfinite(value)):
                out[key] = value
                continue
        if not isinstance(key, str):
            raise ValidationError(field, f"keys must be strings, got {key!r}", key)
        key = _plain_str(key)
        where = f"{field}.{key}"
        _check_str(key, where)
        cls = type(value)
        if cls not in (str, int, bool, float) and isinstance(value, str | int | float):
            # str/int/float subclasses (StrEnum, IntEnum, str-mixin Enum) travel as their plain value;
            # bool cannot be subclassed, so int subclasses are never booleans.
            value = (
                str.__str__(value)
                if isinstance(value, str)
                else int(value)
                if isinstance(value, int)
                else float(value)
            )
            cls = type(value)
        if key == "_cost":
            # §1.6: the reserved keys hold their structure or nothing; a primitive there is rejected.
            _validate_cost(value, where)
            _check_nested_str(value, where)
            value = dict(value)
        elif key == "_llm":
            _validate_llm(value, where)
            _check_nested_str(value, where)
            value = {k: value.get(k) for k in _LLM_KEYS if k in value or k in ("prompt", "response")}
        elif cls is str:
            n = len(value)
            if n == 0 or n > MAX_METADATA_STRING:
                raise ValidationError(where, f"strings must be 1 to {MAX_METADATA_STRING} characters", value)
            _check_str(value, where)
        elif cls is int:
            _check_int(value, where)
        elif cls is bool:
            pass
        elif cls is float:
            if not math.isfinite(value):
                raise ValidationError(where, "numbers must be finite", value)
        else:
            raise ValidationError(
                where, "values must be str, int, float or bool (no null, lists or objects)", value
            )
        out[key] = value
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
    if type(customer_id) is not str or not customer_id or "\x00" in customer_id:
        if not isinstance(customer_id, str) or not customer_id:
            raise ValidationError("customer_id", "must be a non-empty string", customer_id)
        customer_id = _plain_str(customer_id)
        _check_str(customer_id, "customer_id")
    if type(name) is not str or not 0 < len(name) <= MAX_NAME or "\x00" in name:
        if not isinstance(name, str) or not name:
            raise ValidationError("name", "must be a non-empty string", name)
        if len(name) > MAX_NAME:
            raise ValidationError("name", f"must be at most {MAX_NAME} characters", name)
        name = _plain_str(name)
        _check_str(name, "name")
    clean = validate_metadata(metadata)
    ts = now if timestamp is None else parse_timestamp(timestamp, now=now)
    if external_id is None:
        eid = new_external_id()
    else:
        if not isinstance(external_id, str) or not external_id:
            raise ValidationError("external_id", "must be a non-empty string", external_id)
        eid = _plain_str(external_id)
        _check_str(eid, "external_id")
    return Event(customer_id, name, clean, ts, eid)
