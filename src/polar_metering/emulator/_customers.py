"""The ``/v1`` customers, customer meters and customer state routes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from starlette.requests import Request
from starlette.responses import Response

from polar_metering._exceptions import ValidationError
from polar_metering.emulator import _schemas as s
from polar_metering.emulator import _serialize as out
from polar_metering.emulator._context import Emulator, read_body
from polar_metering.emulator._errors import PolarJSON, RequestRejected, error_item
from polar_metering.emulator._params import Params
from polar_metering.emulator._routes import (
    metadata_query,
    not_found,
    org_filter_excludes,
    org_token_error,
    sort_by,
    unsupported,
)

if TYPE_CHECKING:
    from polar_metering.backends._engine.records import CustomerMeterRecord, CustomerRecord

__all__ = ["CustomerRoutes"]

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
_CUSTOMER_SORT_KEYS = ("created_at", "email", "name")


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


def _customer_matches(customer: CustomerRecord, query: str) -> bool:
    needle = query.lower()
    return any(needle in (v or "").lower() for v in (customer.email, customer.name, customer.external_id))


class CustomerRoutes:
    def __init__(self, emu: Emulator) -> None:
        self.emu = emu
        self.engine = emu.engine
        self.org_id = emu.org_id

    # --- customer meters -------------------------------------------------------------------------

    async def list_customer_meters(self, request: Request) -> Response:
        p = Params(request)
        page, limit = p.page()
        sorting = p.sorting(_CM_SORT_KEYS, ["-modified_at"])
        orgs = p.uuids("organization_id")
        customer_ids = p.uuids("customer_id")
        meter_ids = p.uuids("meter_id")
        p.check()
        external_ids = request.query_params.getlist("external_customer_id")
        if org_filter_excludes(orgs, self.org_id):
            return PolarJSON(out.list_json([], 0, limit))
        rows = await self.emu.run(
            lambda: self.emu.settled.rows(
                customer_ids=customer_ids, external_customer_ids=external_ids, meter_ids=meter_ids
            )
        )
        rows = sort_by(list(rows), sorting, _cm_sort_key)
        window = rows[(page - 1) * limit : page * limit]
        return PolarJSON(
            out.list_json([out.customer_meter_json(r, self.org_id) for r in window], len(rows), limit)
        )

    async def get_customer_meter(self, request: Request) -> Response:
        p = Params(request)
        record_id = p.path_id()
        p.check()
        record = await self.emu.run(self.emu.settled.row, record_id)
        return PolarJSON(out.customer_meter_json(record, self.org_id)) if record else not_found()

    # --- customers -------------------------------------------------------------------------------

    async def create_customer(self, request: Request) -> Response:
        body = s.parse_body(s.CUSTOMER_CREATE, await read_body(request))
        if body.organization_id is not None:
            raise org_token_error(str(body.organization_id))
        customer = await self.emu.run(
            self._create_customer, body.external_id, body.email, body.name, dict(body.metadata)
        )
        return PolarJSON(out.customer_json(customer, self.org_id), 201)

    def _create_customer(
        self, external_id: str | None, email: str | None, name: str | None, metadata: dict[str, Any]
    ) -> CustomerRecord:
        if email is not None:
            matches, _ = self.engine.polar_customers(page=1, limit=100, query=email)
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
            message = (
                "A customer with this external ID already exists." if exc.field == "external_id" else exc.rule
            )
            raise RequestRejected(
                [error_item("value_error", ["body", exc.field], message, external_id)],
                error="PolarRequestValidationError",
            ) from None
        customer_created(self.emu, customer)
        return customer

    async def list_customers(self, request: Request) -> Response:
        p = Params(request)
        page, limit = p.page()
        sorting = p.sorting(_CUSTOMER_SORT_KEYS, ["-created_at"])
        orgs = p.uuids("organization_id")
        p.check()
        active = p.boolean("active")
        p.check()
        q = request.query_params
        if metadata_query(request):
            raise unsupported(
                "metadata", None, "The emulator does not support metadata filters on customers."
            )
        if org_filter_excludes(orgs, self.org_id):
            return PolarJSON(out.list_json([], 0, limit))
        picked = await self.emu.run(self._customers, q.get("query"), q.get("email"))
        if active is not None:
            # Polar: an active customer has a trialing, active or past_due subscription
            # (customer/repository.py ``get_active_clause``).
            billable = await self.emu.run(
                lambda: {c.id for c in picked if self.emu.commerce.has_billable_subscription(c.id)}
            )
            picked = [c for c in picked if (c.id in billable) == active]
        sort_by(picked, sorting, lambda c, name: getattr(c, name))
        window = picked[(page - 1) * limit : page * limit]
        return PolarJSON(
            out.list_json([out.customer_json(c, self.org_id) for c in window], len(picked), limit)
        )

    def _customers(self, query: str | None, email: str | None) -> list[CustomerRecord]:
        # The engine pages by creation order only; Polar sorts (newest first by default) and filters
        # by exact email, so the emulator takes every match and orders them itself.
        _, total = self.engine.polar_customers(page=1, limit=1, query=email or query)
        found, _ = self.engine.polar_customers(page=1, limit=max(total, 1), query=email or query)
        if email is not None:
            found = [c for c in found if (c.email or "").lower() == email.lower()]
            if query:
                found = [c for c in found if _customer_matches(c, query)]
        return found

    async def get_customer(self, request: Request) -> Response:
        p = Params(request)
        customer_id = p.path_id()
        p.check()
        customer = await self.emu.run(self.engine.get_customer, customer_id)
        return PolarJSON(out.customer_json(customer, self.org_id)) if customer else not_found()

    async def customer_state(self, request: Request) -> Response:
        p = Params(request)
        customer_id = p.path_id()
        p.check()
        customer = await self.emu.run(self.engine.get_customer, customer_id)
        return await self._state(customer)

    async def external(self, request: Request) -> Response:
        """``/v1/customers/external/{external_id}[/state]``, the id percent-decoded from the raw path
        so that ids holding ``/``, ``?`` or ``#`` work when the caller encodes them. Bytes that are
        not UTF-8 decode to U+FFFD, as the server decodes paths, and so name no customer."""
        raw_path = request.scope.get("raw_path") or request.url.path.encode()
        tail = raw_path.decode("latin-1").split("/v1/customers/external/", 1)[-1]
        parts = tail.split("/")
        if len(parts) == 2 and parts[1] == "state":
            want_state = True
        elif len(parts) == 1:
            want_state = False
        else:
            return not_found()
        external_id = unquote(parts[0], encoding="utf-8", errors="replace") if parts[0] else ""
        if not external_id:
            return not_found()
        customer = await self.emu.run(self.engine.get_customer_by_external_id, external_id)
        if want_state:
            return await self._state(customer)
        return PolarJSON(out.customer_json(customer, self.org_id)) if customer else not_found()

    async def _state(self, customer: CustomerRecord | None) -> Response:
        if customer is None:
            return not_found()

        def rows() -> list[CustomerMeterRecord]:
            # The state lists every customer-meter row, archived meters included.
            meter_ids = [m.id for m in self.engine.list_meters(include_archived=True)]
            return self.emu.settled.rows(customer_ids=[customer.id], meter_ids=meter_ids)

        def state() -> dict[str, object]:
            return self.emu.notifier.state_json(customer, rows())

        return PolarJSON(await self.emu.run(state))


def customer_created(emu: Emulator, customer: CustomerRecord) -> None:
    """Polar queues a balance recompute when a customer is created, and says so by webhook."""
    if customer.external_id is not None:
        emu.settled.customer_created(customer.id)
    emu.notifier.customer_created(customer)
