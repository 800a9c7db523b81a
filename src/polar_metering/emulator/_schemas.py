"""Polar's request shapes, validated the way Polar's server validates them (pydantic, as Polar uses).

Polar answers a malformed request with 422 and a list of pydantic errors, each located with a path
such as ``["body", "events", 0, "EventCreateExternalCustomer", "timestamp"]`` (§1.2, §1.5). The
models below restate Polar's schemas so pydantic produces the same ``type``/``loc``/``msg`` triples;
the helpers turn them into the JSON body Polar sends.

Two error families exist (§1.5): ``RequestValidationError`` for schema failures and
``PolarRequestValidationError`` for checks the service runs afterwards (unknown customer,
``organization_id`` with an organization token, a locked meter, ...).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Literal, NotRequired, TypeAlias
from uuid import UUID

from annotated_types import Ge, Le, MaxLen
from pydantic import (
    UUID4,
    AfterValidator,
    AwareDatetime,
    BaseModel,
    Discriminator,
    Field,
    StringConstraints,
    Tag,
    TypeAdapter,
    ValidationInfo,
    model_validator,
)
from pydantic import ValidationError as PydanticValidationError
from typing_extensions import TypedDict

__all__ = [
    "ORGANIZATION_TOKEN_MSG",
    "AggregationIn",
    "CUSTOMER_CREATE",
    "CustomerCreateIn",
    "EventCreateCustomer",
    "EventCreateExternalCustomer",
    "EventsIngest",
    "Filter",
    "MeterCreate",
    "MeterUpdate",
    "RequestRejected",
    "decode_json_body",
    "detail_from_pydantic",
    "error_item",
    "parse_body",
    "query_bool",
    "query_enum",
    "query_int",
    "query_timestamp",
    "query_uuid",
    "path_uuid",
]

ORGANIZATION_TOKEN_MSG = "Setting organization_id is disallowed when using an organization token."
NUL_MSG = "Value error, This value contains invalid characters."  # §1.2
_METADATA_MAX_KEYS = 50  # §1.6, MetadataField (meters, customers)
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1


class RequestRejected(Exception):
    """A request Polar would answer with a 422 (or another status): carries Polar's JSON body."""

    def __init__(
        self, detail: list[dict[str, Any]], *, error: str = "RequestValidationError", status_code: int = 422
    ) -> None:
        self.detail = detail
        self.error = error
        self.status_code = status_code
        super().__init__(f"{error}: {len(detail)} error(s)")

    def body(self) -> dict[str, Any]:
        return {"error": self.error, "detail": self.detail}


def error_item(type_: str, loc: Sequence[str | int], msg: str, input_: Any = None) -> dict[str, Any]:
    """One entry of Polar's 422 ``detail`` list."""
    return {"type": type_, "loc": list(loc), "msg": msg, "input": input_}


def _json_safe(value: Any) -> Any:
    # FastAPI runs errors through jsonable_encoder: exceptions in ``ctx`` become ``{}``.
    if isinstance(value, BaseException):
        return {}
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def detail_from_pydantic(exc: PydanticValidationError, prefix: Sequence[str | int]) -> list[dict[str, Any]]:
    """Polar's ``detail`` entries for a pydantic failure, each ``loc`` prefixed (``"body"``, ``"query"``)."""
    out: list[dict[str, Any]] = []
    for err in exc.errors(include_url=False):
        item = error_item(err["type"], [*prefix, *err["loc"]], err["msg"], _json_safe(err.get("input")))
        if "ctx" in err:
            item["ctx"] = _json_safe(err["ctx"])
        out.append(item)
    return out


def _nul_errors(value: Any, loc: list[str | int], out: list[dict[str, Any]]) -> None:
    # §1.2: a NUL character anywhere, keys included, is refused (Postgres cannot store it).
    if isinstance(value, str):
        if "\x00" in value:
            out.append(error_item("value_error", loc, NUL_MSG, value))
    elif isinstance(value, dict):
        for key, item in value.items():
            if "\x00" in key:
                out.append(error_item("value_error", [*loc, key], NUL_MSG, key))
            _nul_errors(item, [*loc, key], out)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _nul_errors(item, [*loc, i], out)


def decode_json_body(raw: bytes) -> Any:
    """The decoded body, or the 422 FastAPI gives for a missing or malformed JSON body."""
    if not raw.strip():
        raise RequestRejected([error_item("missing", ["body"], "Field required", None)])
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        pos = exc.pos if isinstance(exc, json.JSONDecodeError) else exc.start
        item = error_item("json_invalid", ["body", pos], "JSON decode error", {})
        item["ctx"] = {"error": str(exc.msg) if isinstance(exc, json.JSONDecodeError) else "Invalid UTF-8"}
        raise RequestRejected([item]) from None


def parse_body(
    model: type[BaseModel] | TypeAdapter[Any], data: Any, *, context: dict[str, Any] | None = None
) -> Any:
    """Validate ``data`` against ``model``; every failure, NUL checks included, in one 422."""
    nul: list[dict[str, Any]] = []
    _nul_errors(data, ["body"], nul)
    try:
        if isinstance(model, TypeAdapter):
            result = model.validate_python(data, context=context)
        else:
            result = model.model_validate(data, context=context)
    except PydanticValidationError as exc:
        raise RequestRejected(nul + detail_from_pydantic(exc, ["body"])) from None
    if nul:
        raise RequestRejected(nul)
    return result


# --- events (§1.2, §1.6) -------------------------------------------------------------------------


def _not_in_future(value: datetime, info: ValidationInfo) -> datetime:
    value = value.astimezone(UTC)
    now = (info.context or {}).get("now") or datetime.now(UTC)
    if value > now:
        raise ValueError("Timestamp must be in the past.")
    return value


MetadataString = Annotated[str, StringConstraints(min_length=1, max_length=500)]
MetadataValue: TypeAlias = MetadataString | int | float | bool


class CostMetadata(TypedDict):
    """``_cost``: an amount in cents (Decimal(17, 12)) and a currency matching ``usd`` (§1.6)."""

    amount: Annotated[Decimal, Field(max_digits=17, decimal_places=12)]
    currency: Annotated[str, StringConstraints(pattern="usd")]


class LLMMetadata(TypedDict):
    """``_llm``: token counts of one model call; unknown keys are dropped (§1.6)."""

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


class _EventCreateBase(BaseModel):
    # A ``None`` default (not validated) stands for "server now"; an explicit null still fails.
    timestamp: Annotated[AwareDatetime, AfterValidator(_not_in_future)] = Field(default=None)  # type: ignore[assignment]
    name: str = Field(max_length=128)
    organization_id: UUID4 | None = None
    external_id: str | None = None
    parent_id: str | None = None
    metadata: EventMetadataInput = Field(default_factory=lambda: EventMetadataInput())


class EventCreateCustomer(_EventCreateBase):
    """An event for a Polar customer UUID, which must exist (§1.5)."""

    customer_id: UUID4
    member_id: UUID4 | None = None


class EventCreateExternalCustomer(_EventCreateBase):
    """An event for your own customer id; any string, never checked (§1.2, §1.7)."""

    external_customer_id: str
    external_member_id: str | None = None


class EventsIngest(BaseModel):
    """``POST /v1/events/ingest`` body. Unknown top-level fields are ignored, as Polar does."""

    events: list[EventCreateCustomer | EventCreateExternalCustomer]


# --- meters (§2.2) -------------------------------------------------------------------------------


def _strip_metadata_prefix(value: str) -> str:
    return value[len("metadata.") :] if value.startswith("metadata.") else value


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


class FilterClause(BaseModel):
    property: Annotated[str, AfterValidator(_strip_metadata_prefix)]
    operator: FilterOperator
    # §2.2: at most 1000 characters, a signed 32-bit integer, or a boolean.
    value: Annotated[str, MaxLen(1000)] | Annotated[int, Ge(_INT32_MIN), Le(_INT32_MAX)] | bool


class Filter(BaseModel):
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


class CountAggregationIn(BaseModel):
    func: Literal["count"] = "count"


class PropertyAggregationIn(BaseModel):
    func: Literal["sum", "max", "min", "avg"]
    property: Annotated[str, AfterValidator(_strip_metadata_prefix)]


class UniqueAggregationIn(BaseModel):
    func: Literal["unique"] = "unique"
    property: Annotated[str, AfterValidator(_strip_metadata_prefix)]


# §2.2: a union discriminated on ``func``, so a missing func is ``union_tag_not_found``.
AggregationIn = Annotated[
    CountAggregationIn | PropertyAggregationIn | UniqueAggregationIn, Discriminator("func")
]

MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=40)]
MetadataField = Annotated[dict[MetadataKey, MetadataValue], Field(max_length=_METADATA_MAX_KEYS)]


def _check_custom_unit(unit: MeterUnit | None, label: str | None) -> None:
    if unit is MeterUnit.custom and not label:
        raise ValueError("custom_label is required when unit is 'custom'.")
    if unit is not None and unit is not MeterUnit.custom and label:
        raise ValueError("custom_label can only be set when unit is 'custom'.")


class MeterCreate(BaseModel):
    """``POST /v1/meters/`` body."""

    metadata: MetadataField = Field(default_factory=dict)
    name: str = Field(min_length=3)
    unit: MeterUnit = MeterUnit.scalar
    custom_label: str | None = None
    custom_multiplier: Annotated[int, Field(gt=0)] | None = None
    filter: Filter
    aggregation: AggregationIn
    organization_id: UUID4 | None = None

    @model_validator(mode="after")
    def _custom_unit(self) -> MeterCreate:
        _check_custom_unit(self.unit, self.custom_label)
        return self


class MeterUpdate(BaseModel):
    """``PATCH /v1/meters/{id}`` body: every field optional."""

    metadata: MetadataField | None = None
    name: str | None = Field(default=None, min_length=3)
    unit: MeterUnit | None = None
    custom_label: str | None = None
    custom_multiplier: Annotated[int, Field(gt=0)] | None = None
    filter: Filter | None = None
    aggregation: AggregationIn | None = None
    is_archived: bool | None = None

    @model_validator(mode="after")
    def _custom_unit(self) -> MeterUpdate:
        _check_custom_unit(self.unit, self.custom_label)
        return self


# --- customers -----------------------------------------------------------------------------------

_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def _email(value: str) -> str:
    if not _EMAIL.match(value):
        raise ValueError("value is not a valid email address: The email address is not valid.")
    return value


Email = Annotated[str, AfterValidator(_email)]


class _CustomerCreateBase(BaseModel):
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


# --- query and path parameters -------------------------------------------------------------------

_INT = TypeAdapter(int)
_BOOL = TypeAdapter(bool)
_AWARE = TypeAdapter(AwareDatetime)
# Path and filter ids: Polar's are UUID4, but the engine derives some (customer meters) as UUID5.
_UUID = TypeAdapter(UUID)


def _adapt(adapter: TypeAdapter[Any], value: Any, loc: list[str | int]) -> Any:
    try:
        return adapter.validate_python(value)
    except PydanticValidationError as exc:
        raise RequestRejected(detail_from_pydantic(exc, loc)) from None


def query_int(params: Mapping[str, str], name: str, default: int, *, minimum: int = 1) -> int:
    """An integer query parameter greater than ``minimum - 1`` (Polar's ``gt=0`` on page/limit)."""
    raw = params.get(name)
    if raw is None:
        return default
    value: int = _adapt(_INT, raw, ["query", name])
    if value < minimum:
        item = error_item("greater_than", ["query", name], f"Input should be greater than {minimum - 1}", raw)
        item["ctx"] = {"gt": minimum - 1}
        raise RequestRejected([item])
    return value


def query_bool(raw: str, name: str) -> bool:
    """A boolean query parameter (``true``/``false``, ``1``/``0``...), as FastAPI parses it."""
    value: bool = _adapt(_BOOL, raw, ["query", name])
    return value


def query_timestamp(params: Mapping[str, str], name: str, *, required: bool) -> datetime | None:
    raw = params.get(name)
    if raw is None:
        if required:
            raise RequestRejected([error_item("missing", ["query", name], "Field required", None)])
        return None
    value: datetime = _adapt(_AWARE, raw, ["query", name])
    return value.astimezone(UTC)


def query_enum(values: Sequence[str], name: str, allowed: Sequence[str], *, index: bool = False) -> list[str]:
    """Check each value is one of ``allowed``; the error reads like pydantic's enum error."""
    expected = (
        ", ".join(repr(a) for a in allowed[:-1]) + f" or {allowed[-1]!r}"
        if len(allowed) > 1
        else repr(allowed[0])
    )
    errors = []
    for i, value in enumerate(values):
        if value not in allowed:
            loc: list[str | int] = ["query", name, i] if index else ["query", name]
            item = error_item("enum", loc, f"Input should be {expected}", value)
            item["ctx"] = {"expected": expected}
            errors.append(item)
    if errors:
        raise RequestRejected(errors)
    return list(values)


def query_uuid(values: Sequence[str], name: str) -> list[str]:
    """Repeatable UUID filters (``customer_id``, ``meter_id``...), canonical lowercase strings."""
    out = []
    for i, value in enumerate(values):
        loc: list[str | int] = ["query", name, i] if len(values) > 1 else ["query", name]
        out.append(str(_adapt(_UUID, value, loc)))
    return out


def path_uuid(value: str, name: str = "id") -> str:
    """A UUID path parameter (``/v1/meters/{id}``); Polar answers 422 at ``["path", name]`` otherwise."""
    return str(_adapt(_UUID, value, ["path", name]))
