"""Path and query parameters, validated as Polar's FastAPI endpoints declare them.

FastAPI validates every parameter of a request before the endpoint runs and reports all failures
in one 422, dependencies (pagination, sorting) first, then path, then query parameters in the order
of the endpoint's signature. :class:`Params` does the same: each accessor records its failures and
returns a placeholder, and :meth:`Params.check` raises them together.

Repeatable filters are Polar's ``MultipleQueryFilter`` (``server/polar/kit/schemas.py`` at c6c3645):
a union of one value and a list of values, so a bad value is reported twice, once per branch, with
pydantic's branch names in ``loc``.
"""

from __future__ import annotations

import zoneinfo
from collections.abc import Sequence
from datetime import UTC, datetime
from functools import cache
from typing import Any
from uuid import UUID

from pydantic import UUID4, AwareDatetime, TypeAdapter
from pydantic import ValidationError as PydanticValidationError
from starlette.requests import Request

from polar_metering.emulator._errors import RequestRejected, detail_from_pydantic, error_item

__all__ = ["MAX_OFFSET", "Params", "enum_message", "timestamp_range_error"]

#: PostgreSQL's OFFSET is a bigint; Polar's ``paginate`` computes ``limit * (page - 1)``.
MAX_OFFSET = 2**63 - 1
_MAX_LIMIT = 100  # API_PAGINATION_MAX_LIMIT: a larger limit is clamped, not refused
_INT: TypeAdapter[int] = TypeAdapter(int)
_BOOL: TypeAdapter[bool] = TypeAdapter(bool)
_AWARE: TypeAdapter[datetime] = TypeAdapter(AwareDatetime)
_UUID4: TypeAdapter[UUID] = TypeAdapter(UUID4)
_UUID: TypeAdapter[UUID] = TypeAdapter(UUID)
_RANGE_MSG = "Value error, Timestamp must be between 0001-01-01 and 9999-12-31 in UTC."


def _sequence_tag(item: str) -> str:
    # pydantic's name for the list branch of MultipleQueryFilter's union (pydantic 2.13).
    return (
        f"json-or-python[json=list[{item}],"
        "python=chain[is-instance[Sequence],function-wrap[sequence_validator()]]]"
    )


def enum_message(allowed: Sequence[str]) -> str:
    """pydantic's enum wording: ``'a', 'b' or 'c'``."""
    quoted = [repr(a) for a in allowed]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + f" or {quoted[-1]}"


def timestamp_range_error(loc: Sequence[str | int], raw: Any) -> dict[str, Any]:
    """A valid aware timestamp whose UTC time falls outside what ``datetime`` holds (0001-9999).
    Polar's server fails on these when it converts them; the emulator refuses them instead."""
    return error_item("value_error", loc, _RANGE_MSG, raw)


@cache
def _timezones() -> frozenset[str]:
    # pydantic-extra-types' TimeZoneName, as Polar's quantities endpoint declares its timezone:
    # exactly the names zoneinfo lists (case-sensitive; "utc" is refused).
    return frozenset(zoneinfo.available_timezones())


class Params:
    """One request's parameters; failures accumulate until :meth:`check`."""

    def __init__(self, request: Request) -> None:
        self.query = request.query_params
        self.path = request.path_params
        self.errors: list[dict[str, Any]] = []
        #: timestamps as sent, offsets kept (Polar's range check reads their local dates)
        self.as_sent: dict[str, datetime] = {}

    def check(self) -> None:
        if self.errors:
            raise RequestRejected(self.errors)

    def _adapt(self, adapter: TypeAdapter[Any], value: Any, loc: list[str | int]) -> Any:
        try:
            return adapter.validate_python(value)
        except PydanticValidationError as exc:
            self.errors.extend(detail_from_pydantic(exc, loc))
            return None

    # -- path ----------------------------------------------------------------------------------
    def path_id(self, name: str = "id", *, any_version: bool = False) -> str:
        """A UUID4 path parameter (``MeterID``, ``CustomerID``...); ``""`` when invalid."""
        value = self._adapt(_UUID if any_version else _UUID4, self.path[name], ["path", name])
        return "" if value is None else str(value)

    # -- pagination and sorting (Polar's dependencies, validated first) -------------------------
    def page(self) -> tuple[int, int]:
        """``page`` and ``limit`` (both ``gt=0``; limit clamped to 100). An offset past PostgreSQL's
        bigint, which Polar's database would fail on, is refused at ``page``."""
        page = self._int("page", 1)
        limit = self._int("limit", 10)
        limit = min(limit, _MAX_LIMIT) if limit else 10
        if page and page > 1 and limit * (page - 1) > MAX_OFFSET:
            top = MAX_OFFSET // limit + 1
            item = error_item(
                "less_than_equal",
                ["query", "page"],
                f"Input should be less than or equal to {top}",
                self.query["page"],
            )
            item["ctx"] = {"le": top}
            self.errors.append(item)
        return page or 1, limit

    def _int(self, name: str, default: int) -> int:
        raw = self.query.get(name)
        if raw is None:
            return default
        value = self._adapt(_INT, raw, ["query", name])
        if value is None:
            return 0
        if value <= 0:
            item = error_item("greater_than", ["query", name], "Input should be greater than 0", raw)
            item["ctx"] = {"gt": 0}
            self.errors.append(item)
            return 0
        return int(value)

    def sorting(self, allowed_keys: Sequence[str], default: Sequence[str]) -> list[str]:
        """Polar's sorting dependency: ``list[Enum]`` of each key and its ``-`` form."""
        allowed = [v for k in allowed_keys for v in (k, f"-{k}")]
        values = self.query.getlist("sorting") or list(default)
        expected = enum_message(allowed)
        bad = False
        for i, value in enumerate(values):
            if value not in allowed:
                item = error_item("enum", ["query", "sorting", i], f"Input should be {expected}", value)
                item["ctx"] = {"expected": expected}
                self.errors.append(item)
                bad = True
        return list(default) if bad else values

    # -- query ---------------------------------------------------------------------------------
    def uuids(self, name: str) -> list[str]:
        """``MultipleQueryFilter[UUID4]``: every value a UUID4, or both union branches fail."""
        values = self.query.getlist(name)
        if not values:
            return []
        problems: list[dict[str, Any]] = []
        out: list[str] = []
        for i, value in enumerate(values):
            try:
                out.append(str(_UUID4.validate_python(value)))
            except PydanticValidationError as exc:
                problems.extend(detail_from_pydantic(exc, ["query", name, _sequence_tag("uuid"), i]))
        if problems:
            self.errors.append(
                error_item(
                    "uuid_type",
                    ["query", name, "uuid"],
                    "UUID input should be a string, bytes or UUID object",
                    values,
                )
            )
            self.errors.extend(problems)
            return []
        return out

    def enums(self, name: str, enum_name: str, allowed: Sequence[str]) -> list[str]:
        """``MultipleQueryFilter[SomeStrEnum]``."""
        values = self.query.getlist(name)
        expected = enum_message(allowed)
        bad = [(i, v) for i, v in enumerate(values) if v not in allowed]
        if bad:
            tag = f"str-enum[{enum_name}]"
            first = error_item("enum", ["query", name, tag], f"Input should be {expected}", values)
            first["ctx"] = {"expected": expected}
            self.errors.append(first)
            for i, value in bad:
                item = error_item(
                    "enum", ["query", name, _sequence_tag(tag), i], f"Input should be {expected}", value
                )
                item["ctx"] = {"expected": expected}
                self.errors.append(item)
            return []
        return list(values)

    def enum(self, name: str, allowed: Sequence[str], *, required: bool = False) -> str | None:
        """A single enum parameter (the last value wins, as in Starlette)."""
        raw = self.query.get(name)
        if raw is None:
            if required:
                self.errors.append(error_item("missing", ["query", name], "Field required", None))
            return None
        if raw not in allowed:
            expected = enum_message(allowed)
            item = error_item("enum", ["query", name], f"Input should be {expected}", raw)
            item["ctx"] = {"expected": expected}
            self.errors.append(item)
            return None
        return raw

    def boolean(self, name: str) -> bool | None:
        raw = self.query.get(name)
        if raw is None:
            return None
        value = self._adapt(_BOOL, raw, ["query", name])
        return None if value is None else bool(value)

    def timestamp(self, name: str, *, required: bool = False, ge: datetime | None = None) -> datetime | None:
        """An ``AwareDatetime`` parameter, in UTC."""
        raw = self.query.get(name)
        if raw is None:
            if required:
                self.errors.append(error_item("missing", ["query", name], "Field required", None))
            return None
        value: datetime | None = self._adapt(_AWARE, raw, ["query", name])
        if value is None:
            return None
        self.as_sent[name] = value
        try:
            utc = value.astimezone(UTC)
        except (OverflowError, ValueError):
            self.errors.append(timestamp_range_error(["query", name], raw))
            return None
        if ge is not None and utc < ge:
            shown = ge.isoformat().replace("+00:00", "Z")
            item = error_item(
                "greater_than_equal",
                ["query", name],
                f"Input should be greater than or equal to {shown}",
                raw,
            )
            item["ctx"] = {"ge": shown}
            self.errors.append(item)
            return None
        return utc

    def timezone(self, name: str = "timezone", default: str = "UTC") -> str:
        raw = self.query.get(name)
        if raw is None:
            return default
        if not raw:
            item = error_item(
                "string_too_short", ["query", name], "String should have at least 1 character", raw
            )
            item["ctx"] = {"min_length": 1}
            self.errors.append(item)
            return default
        if raw not in _timezones():
            self.errors.append(error_item("TimeZoneName", ["query", name], "Invalid timezone name.", raw))
            return default
        return raw
