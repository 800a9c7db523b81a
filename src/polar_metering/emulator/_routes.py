"""The ``/v1`` events and meters routes, served from the engine (customers: ``_customers.py``).

Each handler validates like Polar's endpoint (``_params``, ``_schemas``), runs the engine call in a
worker thread (the engine is synchronous), and answers with Polar's JSON (``_serialize``). The
order of checks is Polar's: every parameter error first, then a missing object (404), then the
checks the service runs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar
from zoneinfo import ZoneInfo

from starlette.requests import Request
from starlette.responses import Response

from polar_metering._catalog import Aggregation, Filter
from polar_metering._evaluate import json_text
from polar_metering._exceptions import ConfigurationError, ValidationError
from polar_metering.backends._engine.polar_surface import bucket_start, step
from polar_metering.backends._engine.records import PolarEventIn
from polar_metering.emulator import _schemas as s
from polar_metering.emulator import _serialize as out
from polar_metering.emulator._context import Emulator, read_body
from polar_metering.emulator._errors import PolarJSON, RequestRejected, error_item, json_safe
from polar_metering.emulator._params import Params, timestamp_range_error

if TYPE_CHECKING:
    from polar_metering.backends._engine.records import CustomerRecord, MeterRecord

__all__ = [
    "NOT_FOUND",
    "PolarRoutes",
    "metadata_matches",
    "metadata_query",
    "not_found",
    "org_filter_excludes",
    "org_token_error",
    "sort_by",
    "unsupported",
]

_T = TypeVar("_T")
NOT_FOUND = {"error": "ResourceNotFound", "detail": "Not found"}
_METADATA_QUERY = re.compile(r"metadata\[([^\]]+)\]")
_QUANTITIES_EARLIEST = datetime(2023, 1, 1, tzinfo=UTC)  # MIN_DATETIME, kit/time_queries.py
# MAX_INTERVAL_DAYS (kit/time_queries.py): the longest range, in days, each interval may cover.
_MAX_RANGE_DAYS = {"hour": 7, "day": 366, "week": 371, "month": 1460, "year": 3650}
_RANGE_MSG = (
    "The interval is too small for the given date range. Use a larger interval or reduce the date range."
)
_LOCKED_MSG = "This field can't be updated because the meter is already aggregating events."
_AGGREGATIONS = tuple(f.value for f in s.AggregationFunction)
_INTERVALS = tuple(i.value for i in s.TimeInterval)


def _definition(build: Callable[[Any], _T], data: Any, field: str) -> _T:
    """A meter's filter or aggregation that passed the request schema but breaks a catalog rule the
    engine needs (text it can store, filters at most 100 levels deep): a 422, never a 500."""
    try:
        return build(data)
    except ConfigurationError as exc:
        raise RequestRejected([error_item("value_error", ["body", field], f"Value error, {exc}")]) from None


def not_found() -> PolarJSON:
    return PolarJSON(NOT_FOUND, 404)


def unsupported(name: str, value: Any, why: str) -> RequestRejected:
    return RequestRejected([error_item("emulator_unsupported", ["query", name], why, value)])


def metadata_query(request: Request) -> dict[str, list[str]]:
    """``metadata[key]=value`` filters, as Polar's ``_get_metadata_query`` reads them."""
    found: dict[str, list[str]] = {}
    for key, value in request.query_params.multi_items():
        match = _METADATA_QUERY.match(key)
        if match:
            found.setdefault(match.group(1), []).append(value)
    return found


def metadata_matches(metadata: dict[str, Any], query: dict[str, list[str]]) -> bool:
    # Polar: ``user_metadata->>key = value``; values of one key OR'ed, keys AND'ed.
    return all(k in metadata and json_text(metadata[k]) in values for k, values in query.items())


def sort_by(items: list[_T], criteria: Sequence[str], key: Callable[[_T, str], Any]) -> list[_T]:
    """Stable sorts applied last criterion first; NULLs last ascending and first descending, as
    PostgreSQL orders them."""
    for criterion in reversed(criteria):
        desc = criterion.startswith("-")
        name = criterion.lstrip("-")
        items.sort(key=lambda item: _null_last(key(item, name)), reverse=desc)
    return items


def _null_last(value: Any) -> tuple[bool, Any]:
    return (value is None, value if value is not None else 0)


def org_filter_excludes(wanted: Sequence[str], org_id: str) -> bool:
    return bool(wanted) and org_id not in wanted


def org_token_error(value: str) -> RequestRejected:
    # An organization token implies the organization; naming one is refused.
    return RequestRejected(
        [error_item("organization_token", ["body", "organization_id"], s.ORGANIZATION_TOKEN_MSG, value)],
        error="PolarRequestValidationError",
    )


def _stored_metadata(raw: dict[str, Any], validated: Any) -> dict[str, Any]:
    """The metadata to store: what the caller sent, with ``_llm`` normalised as Polar does (unknown
    keys dropped, prompt/response null-filled) and ``_cost.amount`` kept as a JSON number."""
    stored = dict(raw)
    if "_llm" in validated:
        llm = dict(validated["_llm"])
        llm.setdefault("prompt", None)
        llm.setdefault("response", None)
        stored["_llm"] = llm
    if "_cost" in validated:
        amount = validated["_cost"]["amount"]
        number: int | float = int(amount) if amount == amount.to_integral_value() else float(amount)
        stored["_cost"] = {"amount": number, "currency": validated["_cost"]["currency"]}
    return stored


class PolarRoutes:
    """Events, meters and quantities for one emulated organization."""

    def __init__(self, emu: Emulator) -> None:
        self.emu = emu
        self.engine = emu.engine
        self.org_id = emu.org_id

    # --- events ----------------------------------------------------------------------------------

    async def ingest(self, request: Request) -> Response:
        data = await read_body(request)
        body: s.EventsIngest = s.parse_body(s.EventsIngest, data, context={"now": self.engine.clock.now()})
        result = await self.emu.run(self._ingest, body, data["events"])
        return PolarJSON({"inserted": result.inserted, "duplicates": result.duplicates})

    def _ingest(self, body: s.EventsIngest, raw_events: list[dict[str, Any]]) -> Any:
        now = self.engine.clock.now()
        errors: list[dict[str, Any]] = []
        known: dict[str, bool] = {}
        events: list[PolarEventIn] = []
        for i, (event, raw) in enumerate(zip(body.events, raw_events, strict=True)):
            if isinstance(event, s.EventCreateCustomer) and isinstance(raw.get("external_customer_id"), str):
                # With both ids present Polar resolves the external-customer variant.
                event = s.EventCreateExternalCustomer.model_validate(raw, context={"now": now})
            if event.organization_id is not None:
                errors.append(
                    error_item(
                        "organization_token",
                        ["body", "events", i, "organization_id"],
                        s.ORGANIZATION_TOKEN_MSG,
                        str(event.organization_id),
                    )
                )
            customer_id: str | None = None
            if isinstance(event, s.EventCreateCustomer):
                customer_id = str(event.customer_id)
                if customer_id not in known:
                    known[customer_id] = self.engine.get_customer(customer_id) is not None
                if not known[customer_id]:
                    errors.append(
                        error_item(
                            "customer_id",
                            ["body", "events", i, "customer_id"],
                            "Customer not found.",
                            customer_id,
                        )
                    )
                if event.member_id is not None:
                    # The emulator has no members, so every member id is unknown.
                    errors.append(
                        error_item(
                            "member_id",
                            ["body", "events", i, "member_id"],
                            "Member not found.",
                            str(event.member_id),
                        )
                    )
            events.append(
                PolarEventIn(
                    name=event.name,
                    timestamp=event.timestamp or now,
                    metadata=_stored_metadata(raw.get("metadata") or {}, event.metadata),
                    external_id=event.external_id,
                    external_customer_id=getattr(event, "external_customer_id", None),
                    customer_id=customer_id,
                )
            )
        if errors:  # the batch is atomic: nothing is stored
            raise RequestRejected(errors, error="PolarRequestValidationError")
        # Who the batch touches matters only to the debounce and to webhooks: skip the lookups else.
        watched = self.emu.settled.enabled or self.emu.notifier.enabled
        affected = self._affected_customers(events) if watched else []
        return self.emu.settled.ingest(affected, lambda: self.engine.ingest_polar(events))

    def _affected_customers(self, events: Sequence[PolarEventIn]) -> list[str]:
        ids = {e.customer_id for e in events if e.customer_id}
        for external in {e.external_customer_id for e in events if e.external_customer_id is not None}:
            customer = self.engine.get_customer_by_external_id(external)
            if customer is not None:
                ids.add(customer.id)
        return sorted(ids)

    async def list_events(self, request: Request) -> Response:
        p = Params(request)
        page, limit = p.page()
        sorting = p.sorting(("timestamp",), ["-timestamp"])
        start = p.timestamp("start_timestamp")
        end = p.timestamp("end_timestamp")
        orgs = p.uuids("organization_id")
        customer_ids = p.uuids("customer_id")
        sources = p.enums("source", "EventSource", ("system", "user"))
        p.check()
        q = request.query_params
        for name in ("filter", "meter_id", "query", "parent_id", "depth"):
            if name in q:
                raise unsupported(name, q[name], f"The emulator does not support the '{name}' filter.")
        if metadata_query(request):
            raise unsupported("metadata", None, "The emulator does not support metadata filters on events.")
        single: dict[str, str | None] = {}
        for name, values in (
            ("customer_id", customer_ids),
            ("external_customer_id", q.getlist("external_customer_id")),
            ("name", q.getlist("name")),
            ("source", sources),
        ):
            if len(values) > 1:
                raise unsupported(name, values, f"The emulator takes at most one '{name}' value.")
            single[name] = values[0] if values else None
        if org_filter_excludes(orgs, self.org_id):
            return PolarJSON(out.list_json([], 0, limit))
        items = await self.emu.run(self._events_page, single, start, end, page, limit, sorting[0])
        return PolarJSON(items)

    def _events_page(
        self,
        f: dict[str, str | None],
        start: datetime | None,
        end: datetime | None,
        page: int,
        limit: int,
        order: str,
    ) -> dict[str, Any]:
        def fetch(p: int, n: int) -> tuple[list[Any], int]:
            return self.engine.list_events(
                customer_id=f["customer_id"],
                external_customer_id=f["external_customer_id"],
                name=f["name"],
                start=start,
                end=end,
                page=p,
                limit=n,
                source=f["source"],
            )

        _, total = fetch(1, 1)
        if (page - 1) * limit >= total:
            events: list[Any] = []
        elif order == "timestamp":  # the engine pages newest first; oldest first is that list reversed
            everything, total = fetch(1, max(total, 1))
            everything.reverse()
            events = everything[(page - 1) * limit : page * limit]
        else:
            events, total = fetch(page, limit)
        cache: dict[tuple[str, str], CustomerRecord | None] = {}
        items = [out.event_json(e, self.org_id, self._event_customer(e, cache)) for e in events]
        return out.list_json(items, total, limit)

    def _event_customer(self, event: Any, cache: dict[tuple[str, str], CustomerRecord | None]) -> Any:
        if event.customer_id:
            key = ("id", event.customer_id)
            if key not in cache:
                cache[key] = self.engine.get_customer(event.customer_id)
        elif event.external_customer_id is not None:
            key = ("external", event.external_customer_id)
            if key not in cache:
                cache[key] = self.engine.get_customer_by_external_id(event.external_customer_id)
        else:
            return None
        return cache[key]

    # --- meters ----------------------------------------------------------------------------------

    async def list_meters(self, request: Request) -> Response:
        p = Params(request)
        page, limit = p.page()
        sorting = p.sorting(("created_at", "name"), ["name"])
        orgs = p.uuids("organization_id")
        archived = p.boolean("is_archived")
        p.check()
        if org_filter_excludes(orgs, self.org_id):
            return PolarJSON(out.list_json([], 0, limit))
        meters = await self.emu.run(lambda: self.engine.list_meters(include_archived=True))
        query = (request.query_params.get("query") or "").lower()
        metadata = metadata_query(request)
        picked = [
            m
            for m in meters
            if query in m.name.lower()
            and (archived is None or (m.archived_at is not None) == archived)
            and metadata_matches(m.metadata, metadata)
        ]
        sort_by(picked, sorting, lambda m, name: getattr(m, name))
        window = picked[(page - 1) * limit : page * limit]
        return PolarJSON(out.list_json([out.meter_json(m, self.org_id) for m in window], len(picked), limit))

    async def create_meter(self, request: Request) -> Response:
        body: s.MeterCreate = s.parse_body(s.MeterCreate, await read_body(request))
        if body.organization_id is not None:
            raise org_token_error(str(body.organization_id))
        meter = await self.emu.run(
            lambda: self.engine.create_meter(
                name=body.name,
                filter=_definition(Filter.from_polar, body.filter.to_polar(), "filter"),
                aggregation=_definition(
                    Aggregation.from_polar, s.aggregation_json(body.aggregation), "aggregation"
                ),
                unit=body.unit.value,
                custom_label=body.custom_label,
                custom_multiplier=body.custom_multiplier,
                metadata=dict(body.metadata),
            )
        )
        return PolarJSON(out.meter_json(meter, self.org_id), 201)

    async def _meter(self, request: Request) -> MeterRecord | None:
        p = Params(request)
        meter_id = p.path_id()
        p.check()
        return await self.emu.run(self.engine.get_meter, meter_id)

    async def get_meter(self, request: Request) -> Response:
        meter = await self._meter(request)
        return PolarJSON(out.meter_json(meter, self.org_id)) if meter else not_found()

    async def update_meter(self, request: Request) -> Response:
        data = await read_body(request)  # FastAPI decodes the body before it validates anything
        p = Params(request)
        meter_id = p.path_id()
        try:
            body: s.MeterUpdate | None = s.parse_body(s.MeterUpdate, data)
        except RequestRejected as exc:
            if exc.status_code != 422:
                raise
            p.errors.extend(exc.detail)  # path and body errors come together
            body = None
        p.check()
        assert body is not None
        meter = await self.emu.run(self.engine.get_meter, meter_id)
        if meter is None:
            return not_found()
        frozen = [f for f in ("filter", "aggregation") if f in body.model_fields_set] if meter.locked else []
        if frozen:
            # MeterService.update: once the meter has a last billed event, setting either field is
            # refused, whatever the value.
            raise RequestRejected(
                [
                    error_item("forbidden", ["body", f], _LOCKED_MSG, json_safe(getattr(body, f)))
                    for f in frozen
                ],
                error="PolarRequestValidationError",
            )
        changes: dict[str, Any] = {}
        for name in body.model_fields_set:
            value = getattr(body, name)
            if name == "filter" and value is not None:
                value = _definition(Filter.from_polar, value.to_polar(), "filter")
            elif name == "aggregation" and value is not None:
                value = _definition(Aggregation.from_polar, s.aggregation_json(value), "aggregation")
            elif name == "unit" and value is not None:
                value = value.value
            elif name == "metadata" and value is not None:
                value = dict(value)
            if value is not None or name in ("custom_label", "custom_multiplier"):
                changes[name] = value
        try:
            updated = await self.emu.run(lambda: self.engine.update_meter(meter_id, **changes))
        except ValidationError as exc:  # billed between the check and the update
            raise RequestRejected(
                [error_item("forbidden", ["body", exc.field], exc.rule, None)],
                error="PolarRequestValidationError",
            ) from None
        return PolarJSON(out.meter_json(updated, self.org_id))

    async def quantities(self, request: Request) -> Response:
        p = Params(request)
        meter_id = p.path_id()
        start = p.timestamp("start_timestamp", required=True, ge=_QUANTITIES_EARLIEST)
        end = p.timestamp("end_timestamp", required=True)
        interval = p.enum("interval", _INTERVALS, required=True)
        timezone = p.timezone()
        customer_ids = p.uuids("customer_id")
        func = p.enum("customer_aggregation_function", _AGGREGATIONS)
        p.check()
        assert start is not None and end is not None and interval is not None
        external_ids = request.query_params.getlist("external_customer_id")
        if await self.emu.run(self.engine.get_meter, meter_id) is None:
            return not_found()
        sent_start, sent_end = p.as_sent["start_timestamp"], p.as_sent["end_timestamp"]
        # is_under_limits compares the dates as sent, in their own offsets.
        if sent_start > sent_end or sent_end.toordinal() - sent_start.toordinal() > _MAX_RANGE_DAYS[interval]:
            raise RequestRejected(
                [error_item("value_error", ["query"], _RANGE_MSG, [sent_start, sent_end, interval])],
                error="PolarRequestValidationError",
            )
        tz = ZoneInfo(timezone)
        try:
            last = bucket_start(end, interval, tz)
        except (OverflowError, ValueError):
            last = None
        if last is None or step(last, interval) is None:
            # The last bucket would end past year 9999 in this time zone: nothing to count there.
            raise RequestRejected(
                [timestamp_range_error(["query", "end_timestamp"], request.query_params["end_timestamp"])]
            )
        metadata = metadata_query(request) or None
        try:
            points, total = await self.emu.run(
                lambda: self.engine.quantities(
                    meter_id,
                    start=start,
                    end=end,
                    interval=interval,
                    timezone=timezone,
                    customer_ids=customer_ids or None,
                    external_customer_ids=external_ids or None,
                    metadata=metadata,
                    customer_aggregation=func,
                )
            )
        except ValidationError as exc:
            raise RequestRejected(
                [error_item("value_error", ["query", exc.field], exc.rule, exc.value)]
            ) from None
        return PolarJSON(out.quantities_json(points, total))
