"""Polar's request bodies, restated so pydantic reports failures exactly as Polar's server does.

The class names, field order, unions and enums follow Polar's own schemas at c6c3645
(``server/polar/event/schemas.py``, ``server/polar/meter/schemas.py``, ``meter/aggregation.py``,
``meter/filter.py``, ``customer/schemas/customer.py``): pydantic names union branches after the
classes (``["body", "events", 0, "EventCreateExternalCustomer", "timestamp"]``) and lists a bad
aggregation's expected tags as the enum members (``<AggregationFunction.cnt: 'count'>, ...``).

Polar's ``Schema`` base (``server/polar/kit/schemas.py``) refuses a NUL character anywhere in a
field's value with one error at that field, ``Value error, This value contains invalid
characters``. :class:`PolarSchema` does the same and, so that nothing unstorable reaches the
database, also refuses lone surrogates (``string_unicode``) and non-finite numbers
(``finite_number``), which Polar's server accepts and then fails to store.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal, NotRequired, TypeAlias

from annotated_types import Ge, Le, MaxLen
from pydantic import (
    UUID4,
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    TypeAdapter,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic import ValidationError as PydanticValidationError
from pydantic_core import PydanticCustomError
from typing_extensions import TypedDict

from polar_metering._catalog import MAX_FILTER_DEPTH
from polar_metering.emulator._errors import RequestRejected, detail_from_pydantic, error_item

__all__ = [
    "CUSTOMER_CREATE",
    "ORGANIZATION_TOKEN_MSG",
    "AggregationFunction",
    "EventCreateCustomer",
    "EventCreateExternalCustomer",
    "EventsIngest",
    "Filter",
    "MeterCreate",
    "MeterUpdate",
    "MetadataField",
    "PolarSchema",
    "TimeInterval",
    "aggregation_json",
    "parse_body",
]

ORGANIZATION_TOKEN_MSG = "Setting organization_id is disallowed when using an organization token."
_NUL_MSG = "This value contains invalid characters"
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
#: Bodies nesting deeper than this are refused before validation. Polar sets no bound; every body
#: it defines is at most a few levels deep except a meter filter, whose every level is an object and
#: a ``clauses`` list: the bound leaves room for the catalog's ``MAX_FILTER_DEPTH`` levels, and error
#: reports echo nested inputs at every level.
MAX_BODY_DEPTH = 2 * MAX_FILTER_DEPTH + 8
_DEPTH_MSG = f"Value error, The body nests deeper than {MAX_BODY_DEPTH} levels."
Int32 = Annotated[int, Ge(_INT32_MIN), Le(_INT32_MAX)]


def _unstorable(value: Any) -> str | None:
    """What in ``value`` cannot be stored, worst first: ``"nul"``, ``"surrogate"`` or ``"nonfinite"``."""
    found: set[str] = set()
    pending = [value]
    seen: set[int] = set()
    while pending:
        current = pending.pop()
        if isinstance(current, str):
            if "\x00" in current:
                return "nul"
            if "surrogate" not in found:
                try:
                    current.encode("utf-8")
                except UnicodeEncodeError:
                    found.add("surrogate")
        elif isinstance(current, float):
            if not math.isfinite(current):
                found.add("nonfinite")
        elif isinstance(current, BaseModel):
            continue  # a nested model checks its own fields
        elif id(current) in seen:
            continue
        elif isinstance(current, Mapping):
            seen.add(id(current))
            pending.extend(current.keys())
            pending.extend(current.values())
        elif isinstance(current, Collection) and not isinstance(current, bytes | bytearray):
            seen.add(id(current))
            pending.extend(current)
    for kind in ("surrogate", "nonfinite"):
        if kind in found:
            return kind
    return None


class PolarSchema(BaseModel):
    """Polar's ``Schema``: attributes readable (so a non-object body is ``model_attributes_type``)
    and every field refused whole if it holds a NUL character."""

    model_config = ConfigDict(from_attributes=True)

    @field_validator("*", mode="after")
    @classmethod
    def _storable(cls, value: Any) -> Any:
        problem = _unstorable(value)
        if problem == "nul":
            raise ValueError(_NUL_MSG)
        if problem == "surrogate":
            raise PydanticCustomError(
                "string_unicode",
                "Input should be a valid string, unable to parse raw data as a unicode string",
            )
        if problem == "nonfinite":
            raise PydanticCustomError("finite_number", "Input should be a finite number")
        return value


def parse_body(
    model: type[BaseModel] | TypeAdapter[Any], data: Any, *, context: dict[str, Any] | None = None
) -> Any:
    """Validate a decoded body (``_errors.decode_body``); a failure is Polar's 422."""
    if data is None:  # no body, or JSON null: FastAPI reports the required body missing
        raise RequestRejected([error_item("missing", ["body"], "Field required", None)])
    if _depth(data) > MAX_BODY_DEPTH:
        raise RequestRejected([error_item("value_error", ["body"], _DEPTH_MSG, None)])
    try:
        if isinstance(model, TypeAdapter):
            return model.validate_python(data, context=context)
        return model.model_validate(data, context=context)
    except PydanticValidationError as exc:
        raise RequestRejected(detail_from_pydantic(exc, ["body"])) from None


def _depth(value: Any) -> int:
    """How deeply ``value`` (decoded JSON) nests, counted without recursion."""
    deepest = 0
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        current, level = pending.pop()
        if isinstance(current, dict):
            children: Any = current.values()
        elif isinstance(current, list):
            children = current
        else:
            continue
        deepest = max(deepest, level)
        if deepest > MAX_BODY_DEPTH:
            return deepest
        pending.extend((child, level + 1) for child in children)
    return deepest


# --- events (server/polar/event/schemas.py) ---------------------------------------------------


def _not_in_future(value: datetime, info: ValidationInfo) -> datetime:
    try:
        value = value.astimezone(UTC)
    except (OverflowError, ValueError):
        raise ValueError("Timestamp must be between 0001-01-01 and 9999-12-31 in UTC.") from None
    now = (info.context or {}).get("now") or datetime.now(UTC)
    if value > now:
        raise ValueError("Timestamp must be in the past.")
    return value


# server/polar/kit/metadata.py: keys of 1-40 characters, strings of 1-500, at most 50 keys.
MetadataString = Annotated[str, StringConstraints(min_length=1, max_length=500)]
MetadataValue: TypeAlias = MetadataString | int | float | bool
MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=40)]
MetadataField = Annotated[dict[MetadataKey, MetadataValue], Field(max_length=50)]


class CostMetadata(TypedDict):
    """``_cost``: an amount in cents (a Decimal of 17 digits, 12 after the point) in ``usd``."""

    amount: Annotated[Decimal, Field(max_digits=17, decimal_places=12)]
    currency: Annotated[str, Field(pattern="usd")]


class LLMMetadata(TypedDict):
    """``_llm``: token counts of one model call; unknown keys are dropped."""

    vendor: str
    model: str
    prompt: NotRequired[str | None]
    response: NotRequired[str | None]
    input_tokens: int
    cached_input_tokens: NotRequired[int]
    output_tokens: int
    total_tokens: int


class EventMetadataInput(TypedDict, total=False, extra_items=MetadataValue):  # type: ignore[call-arg]
    _cost: CostMetadata
    _llm: LLMMetadata


class EventCreateBase(PolarSchema):
    # A ``None`` default (not validated) stands for "server now", read from the engine's clock.
    timestamp: Annotated[AwareDatetime, AfterValidator(_not_in_future)] = Field(default=None)  # type: ignore[assignment]
    name: str = Field(max_length=128)
    organization_id: UUID4 | None = None
    external_id: str | None = None
    parent_id: str | None = None
    metadata: EventMetadataInput = Field(default_factory=lambda: EventMetadataInput())


class EventCreateCustomer(EventCreateBase):
    """An event for a Polar customer UUID, which must exist."""

    customer_id: UUID4
    member_id: UUID4 | None = None


class EventCreateExternalCustomer(EventCreateBase):
    """An event for your own customer id; any string, never checked."""

    external_customer_id: str
    external_member_id: str | None = None


class EventsIngest(PolarSchema):
    """``POST /v1/events/ingest``. Unknown top-level fields are ignored, as Polar does."""

    events: list[EventCreateCustomer | EventCreateExternalCustomer]


# --- meters (server/polar/meter/) ---------------------------------------------------------------


def _strip_metadata_prefix(value: str) -> str:
    return value.removeprefix("metadata.")


class AggregationFunction(StrEnum):
    # Polar's member names: ``count`` is taken, so it is ``cnt`` (it shows in error messages).
    cnt = "count"
    sum = "sum"
    max = "max"
    min = "min"
    avg = "avg"
    unique = "unique"


class TimeInterval(StrEnum):
    year = "year"
    month = "month"
    week = "week"
    day = "day"
    hour = "hour"


class FilterOperator(StrEnum):
    eq = "eq"
    ne = "ne"
    gt = "gt"
    gte = "gte"
    lt = "lt"
    lte = "lte"
    like = "like"
    not_like = "not_like"


class FilterConjunction(StrEnum):
    and_ = "and"
    or_ = "or"


class MeterUnit(StrEnum):
    scalar = "scalar"
    token = "token"
    custom = "custom"


class FilterClause(PolarSchema):
    property: Annotated[str, AfterValidator(_strip_metadata_prefix)]
    operator: FilterOperator
    # At most 1000 characters, a signed 32-bit integer, or a boolean.
    value: Annotated[str, MaxLen(1000)] | Int32 | bool


# Filters nest; past the catalog's MAX_FILTER_DEPTH the emulator refuses them, as the engine's own
# catalog does (Polar sets no bound, but the engine evaluates filters recursively).


class Filter(PolarSchema):
    conjunction: FilterConjunction
    clauses: list[FilterClause | Filter]

    def to_polar(self) -> dict[str, Any]:
        return {
            "conjunction": self.conjunction.value,
            "clauses": [
                c.to_polar()
                if isinstance(c, Filter)
                else {"property": c.property, "operator": c.operator.value, "value": c.value}
                for c in self.clauses
            ],
        }

    def depth(self) -> int:
        return 1 + max((c.depth() for c in self.clauses if isinstance(c, Filter)), default=0)


class CountAggregation(BaseModel):
    func: Literal[AggregationFunction.cnt] = AggregationFunction.cnt


class PropertyAggregation(BaseModel):
    func: Literal[
        AggregationFunction.sum, AggregationFunction.max, AggregationFunction.min, AggregationFunction.avg
    ]
    property: Annotated[str, AfterValidator(_strip_metadata_prefix)]


class UniqueAggregation(BaseModel):
    func: Literal[AggregationFunction.unique] = AggregationFunction.unique
    property: Annotated[str, AfterValidator(_strip_metadata_prefix)]


# A union discriminated on ``func``: a missing func is ``union_tag_not_found``, an unknown one
# ``union_tag_invalid`` listing the enum members.
Aggregation = Annotated[CountAggregation | PropertyAggregation | UniqueAggregation, Discriminator("func")]


def aggregation_json(agg: CountAggregation | PropertyAggregation | UniqueAggregation) -> dict[str, Any]:
    return agg.model_dump(mode="json")


def _check_filter(value: Filter | None) -> Filter | None:
    if value is not None and value.depth() > MAX_FILTER_DEPTH:
        raise ValueError(f"Filters may nest at most {MAX_FILTER_DEPTH} levels deep.")
    return value


class MeterCreate(PolarSchema):
    """``POST /v1/meters/`` body."""

    metadata: MetadataField = Field(default_factory=dict)
    name: str = Field(min_length=3)
    unit: MeterUnit = MeterUnit.scalar
    custom_label: str | None = None
    # Polar stores an int32; larger values fail in its database.
    custom_multiplier: Annotated[int, Field(gt=0, le=_INT32_MAX)] | None = None
    filter: Annotated[Filter, AfterValidator(_check_filter)]
    aggregation: Aggregation
    organization_id: UUID4 | None = None

    @model_validator(mode="after")
    def _custom_unit(self) -> MeterCreate:
        if self.unit == MeterUnit.custom:
            if self.custom_label is None:
                raise ValueError("custom_label is required when unit is 'custom'.")
        elif self.custom_label is not None:
            raise ValueError("custom_label and custom_multiplier are only allowed when unit is 'custom'.")
        return self


class MeterUpdate(PolarSchema):
    """``PATCH /v1/meters/{id}`` body: every field optional (Polar checks no unit rule here);
    ``metadata`` comes from Polar's ``MetadataInputMixin``, so ``null`` is refused."""

    metadata: MetadataField = Field(default_factory=dict)
    name: str | None = Field(default=None, min_length=3)
    unit: MeterUnit | None = None
    custom_label: str | None = None
    custom_multiplier: Annotated[int, Field(gt=0, le=_INT32_MAX)] | None = None
    filter: Annotated[Filter, AfterValidator(_check_filter)] | None = None
    aggregation: Aggregation | None = None
    is_archived: bool | None = None


# --- customers ---------------------------------------------------------------------------------

_EMAIL_MSG = "value is not a valid email address: The email address is not valid."


_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def _email(value: str) -> str:
    if not _EMAIL.match(value):
        raise ValueError(_EMAIL_MSG)
    return value


Email = Annotated[str, AfterValidator(_email)]


class _CustomerCreateBase(PolarSchema):
    metadata: MetadataField = Field(default_factory=dict)
    external_id: str | None = None
    name: str | None = None
    billing_address: dict[str, Any] | None = None
    tax_id: str | None = None
    locale: str | None = None
    organization_id: UUID4 | None = None
    owner: dict[str, Any] | None = None


class CustomerIndividualCreate(_CustomerCreateBase):
    type: Literal["individual"] = "individual"
    email: Email


class CustomerTeamCreate(_CustomerCreateBase):
    type: Literal["team"]
    email: Email | None = None


def _customer_tag(data: Any) -> str:
    kind = data.get("type", "individual") if isinstance(data, dict) else "individual"
    return kind if kind in ("individual", "team") else "individual"


CustomerCreateIn = Annotated[
    Annotated[CustomerIndividualCreate, Tag("individual")] | Annotated[CustomerTeamCreate, Tag("team")],
    Discriminator(_customer_tag),
]
CUSTOMER_CREATE: TypeAdapter[CustomerIndividualCreate | CustomerTeamCreate] = TypeAdapter(CustomerCreateIn)
