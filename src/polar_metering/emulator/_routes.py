"""The ``/v1`` routes: Polar's events, meters, customer meters and customers, served from the engine.

Each handler validates like Polar (``_schemas``), runs the engine call in a worker thread (the engine
is synchronous), and answers with Polar's JSON (``_serialize``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from polar_metering._catalog import Aggregation, Filter
from polar_metering._evaluate import json_text
from polar_metering._exceptions import ConfigurationError, ValidationError
from polar_metering.backends._engine.records import PolarEventIn
from polar_metering.emulator import _schemas as s
from polar_metering.emulator import _serialize as out
from polar_metering.emulator._schemas import RequestRejected, error_item

if TYPE_CHECKING:
    from polar_metering.backends._engine.backend import LocalEngine
    from polar_metering.backends._engine.records import CustomerMeterRecord, CustomerRecord, MeterRecord
    from polar_metering.emulator._settle import SettledBalances

__all__ = ["NOT_FOUND", "PolarRoutes", "not_found"]

_T = TypeVar("_T")
NOT_FOUND = {"error": "ResourceNotFound", "detail": "Not found"}
_MAX_LIMIT = 100  # §3.1: a larger limit is clamped, not refused
_METADATA_QUERY = re.compile(r"^metadata\[([^\]]+)\]$")
_QUANTITIES_EARLIEST = datetime(2023, 1, 1, tzinfo=UTC)
# §2.6: the longest range, in days, each interval may cover.
_MAX_RANGE_DAYS = {"hour": 7, "day": 366, "week": 371, "month": 1460, "year": 3650}
_RANGE_MSG = (
    "The interval is too small for the given date range. Use a larger interval or reduce the date range."
)
_AGGREGATIONS = ("count", "sum", "max", "min", "avg", "unique")
_METER_SORT = ("created_at", "-created_at", "name", "-name")
_EVENT_SORT = ("timestamp", "-timestamp")
_CM_SORT_KEYS = (
    "created_at",
    "modified_at",
    "customer_id",
    "customer_name",
    "meter_id",
    "meter_name",
    "consumed_units",
    "credited_units",
    "balance",
)
_CM_SORT = tuple(p for k in _CM_SORT_KEYS for p in (k, f"-{k}"))
_CUSTOMER_SORT = ("created_at", "-created_at", "email", "-email", "name", "-name")


def _definition(build: Callable[[Any], _T], data: Any, field: str) -> _T:
    """A meter's filter or aggregation that passed the request schema but breaks a catalog rule the
    engine needs (text it can store, filters at most 100 levels deep): a 422, never a 500."""
    try:
        return build(data)
    except ConfigurationError as exc:
        raise RequestRejected([error_item("value_error", ["body", field], f"Value error, {exc}")]) from None


def not_found() -> JSONResponse:
    return JSONResponse(NOT_FOUND, 404)


def _unsupported(name: str, value: Any, why: str) -> RequestRejected:
    return RequestRejected([error_item("emulator_unsupported", ["query", name], why, value)])


def _paging(request: Request) -> tuple[int, int]:
    page = s.query_int(request.query_params, "page", 1)
    limit = s.query_int(request.query_params, "limit", 10)
    return page, min(limit, _MAX_LIMIT)


def _metadata_query(request: Request) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for key, value in request.query_params.multi_items():
        match = _METADATA_QUERY.match(key)
        if match:
            found.setdefault(match.group(1), []).append(value)
    return found


def _metadata_matches(metadata: dict[str, Any], query: dict[str, list[str]]) -> bool:
    # Polar: ``user_metadata->>key = value``; values of one key OR'ed, keys AND'ed.
    return all(k in metadata and json_text(metadata[k]) in values for k, values in query.items())


def _sort_by(items: list[_T], criteria: Sequence[str], key: Callable[[_T, str], Any]) -> list[_T]:
    # Stable sorts applied last criterion first; NULLs sort last ascending and first descending,
    # as PostgreSQL orders them.
    for criterion in reversed(criteria):
        desc = criterion.startswith("-")
        name = criterion.lstrip("-")
        items.sort(key=lambda item: _null_last(key(item, name)), reverse=desc)
    return items


def _null_last(value: Any) -> tuple[bool, Any]:
    return (value is None, value if value is not None else 0)


def _cm_sort_key(record: CustomerMeterRecord, name: str) -> Any:
    return {
        "created_at": record.created_at,
        "modified_at": record.modified_at,
        "customer_id": record.customer.id,
        "customer_name": record.customer.name,
        "meter_id": record.meter.id,
        "meter_name": record.meter.name,
        "consumed_units": record.consumed_units,
        "credited_units": record.credited_units,
        "balance": record.balance,
    }[name]


def _org_filter_excludes(request: Request, org_id: str) -> bool:
    wanted = request.query_params.getlist("organization_id")
    return bool(wanted) and org_id not in [w.lower() for w in wanted]


class PolarRoutes:
    """Handlers for one engine. ``org_id`` is the organization every object reports as its owner."""

    def __init__(self, engine: LocalEngine, settled: SettledBalances, org_id: str) -> None:
        self.engine = engine
        self.settled = settled
        self.org_id = org_id

    @staticmethod
    async def _json(request: Request) -> Any:
        return s.decode_json_body(await request.body())

    # --- events ----------------------------------------------------------------------------------

    async def ingest(self, request: Request) -> Response:
        data = await self._json(request)
        body: s.EventsIngest = s.parse_body(s.EventsIngest, data, context={"now": self.engine.clock.now()})
        raw_events = data["events"]
        result = await run_in_threadpool(self._ingest, body, raw_events)
        return JSONResponse({"inserted": result.inserted, "duplicates": result.duplicates})

    def _ingest(self, body: s.EventsIngest, raw_events: list[dict[str, Any]]) -> Any:
        now = self.engine.clock.now()
        errors: list[dict[str, Any]] = []
        known: dict[str, bool] = {}
        events: list[PolarEventIn] = []
        for i, (event, raw) in enumerate(zip(body.events, raw_events, strict=True)):
            if isinstance(event, s.EventCreateCustomer) and isinstance(raw.get("external_customer_id"), str):
                # §1.2: with both ids present Polar resolved the external-customer variant.
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
                    # The emulator has no members, so every member id is unknown (§1.5).
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
        if errors:  # §1.5: the batch is atomic, nothing is stored
            raise RequestRejected(errors, error="PolarRequestValidationError")
        affected = self._affected_customers(events) if self.settled.enabled else []
        return self.settled.ingest(affected, lambda: self.engine.ingest_polar(events))

    def _affected_customers(self, events: Sequence[PolarEventIn]) -> list[str]:
        ids = {e.customer_id for e in events if e.customer_id}
        for external in {e.external_customer_id for e in events if e.external_customer_id is not None}:
            customer = self.engine.get_customer_by_external_id(external)
            if customer is not None:
                ids.add(customer.id)
        return sorted(ids)

    async def list_events(self, request: Request) -> Response:
        q = request.query_params
        for name in ("filter", "meter_id", "query", "parent_id", "depth"):
            if name in q:
                raise _unsupported(name, q[name], f"The emulator does not support the '{name}' filter.")
        if _metadata_query(request):
            raise _unsupported("metadata", None, "The emulator does not support metadata filters on events.")
        single: dict[str, str | None] = {}
        for name in ("customer_id", "external_customer_id", "name", "source"):
            values = q.getlist(name)
            if len(values) > 1:
                raise _unsupported(name, values, f"The emulator takes at most one '{name}' value.")
            single[name] = values[0] if values else None
        if single["customer_id"] is not None:
            single["customer_id"] = s.query_uuid([single["customer_id"]], "customer_id")[0]
        if single["source"] is not None:
            s.query_enum([single["source"]], "source", ("system", "user"))
        start = s.query_timestamp(q, "start_timestamp", required=False)
        end = s.query_timestamp(q, "end_timestamp", required=False)
        page, limit = _paging(request)
        sorting = s.query_enum(q.getlist("sorting") or ["-timestamp"], "sorting", _EVENT_SORT, index=True)
        if _org_filter_excludes(request, self.org_id):
            return JSONResponse(out.list_json([], 0, limit))
        items = await run_in_threadpool(self._events_page, single, start, end, page, limit, sorting[0])
        return JSONResponse(items)

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

        events, total = fetch(page, limit)
        if order == "timestamp":  # the engine pages newest first; oldest first is that list reversed
            everything, total = fetch(1, max(total, 1))
            everything.reverse()
            events = everything[(page - 1) * limit : page * limit]
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
        q = request.query_params
        page, limit = _paging(request)
        sorting = s.query_enum(q.getlist("sorting") or ["name"], "sorting", _METER_SORT, index=True)
        archived: bool | None = None
        if "is_archived" in q:
            archived = s.query_bool(q["is_archived"], "is_archived")
        if _org_filter_excludes(request, self.org_id):
            return JSONResponse(out.list_json([], 0, limit))
        meters = await run_in_threadpool(self.engine.list_meters, include_archived=True)
        query = (q.get("query") or "").lower()
        metadata = _metadata_query(request)
        picked = [
            m
            for m in meters
            if query in m.name.lower()
            and (archived is None or (m.archived_at is not None) == archived)
            and _metadata_matches(m.metadata, metadata)
        ]
        _sort_by(picked, sorting, lambda m, name: getattr(m, name))
        window = picked[(page - 1) * limit : page * limit]
        return JSONResponse(
            out.list_json([out.meter_json(m, self.org_id) for m in window], len(picked), limit)
        )

    async def create_meter(self, request: Request) -> Response:
        body: s.MeterCreate = s.parse_body(s.MeterCreate, await self._json(request))
        if body.organization_id is not None:
            raise _org_token_error(str(body.organization_id))
        meter = await run_in_threadpool(
            lambda: self.engine.create_meter(
                name=body.name,
                filter=_definition(Filter.from_polar, body.filter.to_polar(), "filter"),
                aggregation=_definition(Aggregation.from_polar, body.aggregation.model_dump(), "aggregation"),
                unit=body.unit.value,
                custom_label=body.custom_label,
                custom_multiplier=body.custom_multiplier,
                metadata=dict(body.metadata),
            )
        )
        return JSONResponse(out.meter_json(meter, self.org_id), 201)

    async def get_meter(self, request: Request) -> Response:
        meter = await self._meter(request)
        return JSONResponse(out.meter_json(meter, self.org_id)) if meter else not_found()

    async def _meter(self, request: Request) -> MeterRecord | None:
        meter_id = s.path_uuid(request.path_params["id"])
        return await run_in_threadpool(self.engine.get_meter, meter_id)

    async def update_meter(self, request: Request) -> Response:
        meter_id = s.path_uuid(request.path_params["id"])
        data = await self._json(request)
        body: s.MeterUpdate = s.parse_body(s.MeterUpdate, data)
        if await run_in_threadpool(self.engine.get_meter, meter_id) is None:
            return not_found()
        changes: dict[str, Any] = {}
        for name in body.model_fields_set:
            value = getattr(body, name)
            if name == "filter" and value is not None:
                value = _definition(Filter.from_polar, value.to_polar(), "filter")
            elif name == "aggregation" and value is not None:
                value = _definition(Aggregation.from_polar, value.model_dump(), "aggregation")
            elif name == "unit" and value is not None:
                value = value.value
            elif name == "metadata" and value is not None:
                value = dict(value)
            if value is not None or name in ("custom_label", "custom_multiplier"):
                changes[name] = value
        try:
            meter = await run_in_threadpool(lambda: self.engine.update_meter(meter_id, **changes))
        except ValidationError as exc:
            # §2.4: filter/aggregation are frozen once the meter aggregates events.
            raise RequestRejected(
                [error_item("forbidden", ["body", exc.field], exc.rule, data.get(exc.field))],
                error="PolarRequestValidationError",
            ) from None
        return JSONResponse(out.meter_json(meter, self.org_id))

    async def quantities(self, request: Request) -> Response:
        meter_id = s.path_uuid(request.path_params["id"])
        q = request.query_params
        start = s.query_timestamp(q, "start_timestamp", required=True)
        end = s.query_timestamp(q, "end_timestamp", required=True)
        assert start is not None
        assert end is not None
        if start < _QUANTITIES_EARLIEST:
            item = error_item(
                "greater_than_equal",
                ["query", "start_timestamp"],
                "Input should be greater than or equal to 2023-01-01T00:00:00Z",
                q["start_timestamp"],
            )
            raise RequestRejected([item])
        interval_values = q.getlist("interval")
        if not interval_values:
            raise RequestRejected([error_item("missing", ["query", "interval"], "Field required", None)])
        interval = s.query_enum(interval_values[:1], "interval", tuple(_MAX_RANGE_DAYS))[0]
        timezone = q.get("timezone", "UTC")
        try:
            ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise RequestRejected(
                [error_item("value_error", ["query", "timezone"], "Value error, Invalid timezone.", timezone)]
            ) from None
        func = None
        if "customer_aggregation_function" in q:
            func = s.query_enum(
                [q["customer_aggregation_function"]], "customer_aggregation_function", _AGGREGATIONS
            )[0]
        customer_ids = s.query_uuid(q.getlist("customer_id"), "customer_id")
        external_ids = q.getlist("external_customer_id")
        if start > end or (end - start).days > _MAX_RANGE_DAYS[interval]:
            raise RequestRejected(
                [error_item("value_error", ["query"], _RANGE_MSG, None)], error="PolarRequestValidationError"
            )
        if await run_in_threadpool(self.engine.get_meter, meter_id) is None:
            return not_found()
        points, total = await run_in_threadpool(
            lambda: self.engine.quantities(
                meter_id,
                start=start,
                end=end,
                interval=interval,
                timezone=timezone,
                customer_ids=customer_ids or None,
                external_customer_ids=external_ids or None,
                metadata=_metadata_query(request) or None,
                customer_aggregation=func,
            )
        )
        return JSONResponse(out.quantities_json(points, total))

    # --- customer meters -------------------------------------------------------------------------

    async def list_customer_meters(self, request: Request) -> Response:
        q = request.query_params
        page, limit = _paging(request)
        sorting = s.query_enum(q.getlist("sorting") or ["-modified_at"], "sorting", _CM_SORT, index=True)
        customer_ids = s.query_uuid(q.getlist("customer_id"), "customer_id")
        meter_ids = s.query_uuid(q.getlist("meter_id"), "meter_id")
        external_ids = q.getlist("external_customer_id")
        if _org_filter_excludes(request, self.org_id):
            return JSONResponse(out.list_json([], 0, limit))
        rows = await run_in_threadpool(
            lambda: self.settled.rows(
                customer_ids=customer_ids, external_customer_ids=external_ids, meter_ids=meter_ids
            )
        )
        rows = _sort_by(list(rows), sorting, _cm_sort_key)
        window = rows[(page - 1) * limit : page * limit]
        items = [out.customer_meter_json(r, self.org_id) for r in window]
        return JSONResponse(out.list_json(items, len(rows), limit))

    async def get_customer_meter(self, request: Request) -> Response:
        record_id = s.path_uuid(request.path_params["id"])
        record = await run_in_threadpool(self.settled.row, record_id)
        return JSONResponse(out.customer_meter_json(record, self.org_id)) if record else not_found()

    # --- customers -------------------------------------------------------------------------------

    async def create_customer(self, request: Request) -> Response:
        body = s.parse_body(s.CUSTOMER_CREATE, await self._json(request))
        if body.organization_id is not None:
            raise _org_token_error(str(body.organization_id))
        customer = await run_in_threadpool(
            self._create_customer, body.external_id, body.email, body.name, dict(body.metadata)
        )
        return JSONResponse(out.customer_json(customer, self.org_id), 201)

    def _create_customer(
        self, external_id: str | None, email: str | None, name: str | None, metadata: dict[str, Any]
    ) -> CustomerRecord:
        if email is not None:
            matches, _ = self.engine.list_customers(page=1, limit=100, query=email)
            if any((c.email or "").lower() == email.lower() for c in matches):
                raise RequestRejected(
                    [
                        error_item(
                            "value_error",
                            ["body", "email"],
                            "A customer with this email address already exists.",
                            email,
                        )
                    ],
                    error="PolarRequestValidationError",
                )
        try:
            customer = self.engine.create_customer(
                external_id=external_id, email=email, name=name, metadata=metadata
            )
        except ValidationError as exc:
            raise RequestRejected(
                [
                    error_item(
                        "value_error",
                        ["body", exc.field],
                        "A customer with this external ID already exists."
                        if exc.field == "external_id"
                        else exc.rule,
                        external_id,
                    )
                ],
                error="PolarRequestValidationError",
            ) from None
        if customer.external_id is not None:
            self.settled.customer_created(customer.id)
        return customer

    async def list_customers(self, request: Request) -> Response:
        q = request.query_params
        page, limit = _paging(request)
        if "active" in q:
            raise _unsupported("active", q["active"], "The emulator has no subscriptions to filter on.")
        if _metadata_query(request):
            raise _unsupported(
                "metadata", None, "The emulator does not support metadata filters on customers."
            )
        if _org_filter_excludes(request, self.org_id):
            return JSONResponse(out.list_json([], 0, limit))
        sorting = s.query_enum(q.getlist("sorting") or ["-created_at"], "sorting", _CUSTOMER_SORT, index=True)
        picked = await run_in_threadpool(self._customers, q.get("query"), q.get("email"))
        _sort_by(picked, sorting, lambda c, name: getattr(c, name))
        window = picked[(page - 1) * limit : page * limit]
        return JSONResponse(
            out.list_json([out.customer_json(c, self.org_id) for c in window], len(picked), limit)
        )

    def _customers(self, query: str | None, email: str | None) -> list[CustomerRecord]:
        # The engine pages by creation order only; Polar sorts (newest first by default) and filters
        # by exact email, so the emulator takes every match and orders them itself.
        _, total = self.engine.list_customers(page=1, limit=1, query=email or query)
        found, _ = self.engine.list_customers(page=1, limit=max(total, 1), query=email or query)
        if email is not None:
            found = [c for c in found if (c.email or "").lower() == email.lower()]
            if query:
                found = [c for c in found if _customer_matches(c, query)]
        return found

    async def get_customer(self, request: Request) -> Response:
        customer_id = s.path_uuid(request.path_params["id"])
        customer = await run_in_threadpool(self.engine.get_customer, customer_id)
        return JSONResponse(out.customer_json(customer, self.org_id)) if customer else not_found()

    async def customer_state(self, request: Request) -> Response:
        customer_id = s.path_uuid(request.path_params["id"])
        customer = await run_in_threadpool(self.engine.get_customer, customer_id)
        return await self._state(customer)

    async def external(self, request: Request) -> Response:
        """``/v1/customers/external/{external_id}[/state]``, with the id percent-decoded from the raw
        path so ids holding ``/``, ``?`` or ``#`` work when the caller encodes them (§3.4)."""
        raw_path = request.scope.get("raw_path") or request.url.path.encode()
        tail = raw_path.decode("latin-1").split("/v1/customers/external/", 1)[-1]
        parts = tail.split("/")
        if len(parts) == 2 and parts[1] == "state":
            want_state = True
        elif len(parts) == 1:
            want_state = False
        else:
            return not_found()
        external_id = unquote(parts[0], encoding="utf-8", errors="strict") if parts[0] else ""
        if not external_id:
            return not_found()
        customer = await run_in_threadpool(self.engine.get_customer_by_external_id, external_id)
        if want_state:
            return await self._state(customer)
        return JSONResponse(out.customer_json(customer, self.org_id)) if customer else not_found()

    async def _state(self, customer: CustomerRecord | None) -> Response:
        if customer is None:
            return not_found()

        def rows() -> list[CustomerMeterRecord]:
            # §3.4: the state lists every customer-meter row, archived meters included.
            meter_ids = [m.id for m in self.engine.list_meters(include_archived=True)]
            return self.settled.rows(customer_ids=[customer.id], meter_ids=meter_ids)

        meters = await run_in_threadpool(rows)
        return JSONResponse(out.customer_state_json(customer, meters, self.org_id))


def _customer_matches(customer: CustomerRecord, query: str) -> bool:
    needle = query.lower()
    return any(needle in (v or "").lower() for v in (customer.email, customer.name, customer.external_id))


def _org_token_error(value: str) -> RequestRejected:
    # §1.5: an organization token implies the organization; naming one is refused.
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
