"""The emulator's own admin surface under ``/__emulator__/`` (same bearer token as ``/v1``).

Polar grants credits through products and benefits, which the emulator does not model; these routes
do the equivalent directly: create customers, grant credits, define plans and subscribe customers to
them, reset meters, flush the balance debounce, and run Polar's billing pass.
``GET /__emulator__/health`` needs no token.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, AwareDatetime, Field, model_validator
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from polar_metering._catalog import Plan
from polar_metering._exceptions import ConfigurationError, NotFound, ValidationError
from polar_metering.emulator import _schemas as s
from polar_metering.emulator import _serialize as out
from polar_metering.emulator._context import Emulator, read_body
from polar_metering.emulator._customers import customer_created
from polar_metering.emulator._errors import PolarJSON, RequestRejected, error_item

if TYPE_CHECKING:
    from polar_metering.backends._engine.records import CustomerRecord, MeterRecord

__all__ = ["ADMIN_PREFIX", "admin_routes"]

ADMIN_PREFIX = "/__emulator__"
_INT32 = 2**31 - 1


def _utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except (OverflowError, ValueError):
        raise ValueError("Timestamp must be between 0001-01-01 and 9999-12-31 in UTC.") from None


class _CustomerRef(s.PolarSchema):
    customer_id: str | None = None
    external_customer_id: str | None = None

    @model_validator(mode="after")
    def _one_of(self) -> _CustomerRef:
        if (self.customer_id is None) == (self.external_customer_id is None):
            raise ValueError("give exactly one of customer_id and external_customer_id")
        return self


class AdminCustomer(s.PolarSchema):
    external_id: str | None = None
    email: s.Email | None = None
    name: str | None = None
    metadata: s.MetadataField = Field(default_factory=dict)


class AdminCredit(_CustomerRef):
    meter_id: str = Field(min_length=1)
    # Polar's meter-credit units are int32; negative units revoke, as Polar's revoke does.
    units: int = Field(ge=-_INT32, le=_INT32)
    rollover: bool = False


class AdminPlan(s.PolarSchema):
    name: str = Field(min_length=1)
    # Keyed by catalog slug or meter id; at most int32 units, like a meter-credit benefit.
    credits: dict[str, Annotated[float, Field(ge=0, le=_INT32)]] = Field(default_factory=dict)
    interval: Literal["month", "year"] = "month"
    rollover: bool = False


class AdminSubscription(_CustomerRef):
    plan: str = Field(min_length=1)
    started_at: Annotated[AwareDatetime, AfterValidator(_utc)] | None = None


class AdminReset(_CustomerRef):
    meter_id: str | None = None


class AdminSettle(s.PolarSchema):
    customer_id: str | None = None
    external_customer_id: str | None = None


def _engine_call(fn: Any) -> Any:
    """Run an engine action, turning its refusals into Polar-shaped 422s and 404s."""
    try:
        return fn()
    except ValidationError as exc:
        raise RequestRejected(
            [error_item("value_error", ["body", exc.field], exc.rule, None)],
            error="PolarRequestValidationError",
        ) from None
    except ConfigurationError as exc:
        raise RequestRejected(
            [error_item("value_error", ["body"], str(exc), None)], error="PolarRequestValidationError"
        ) from None


class _Admin:
    def __init__(self, emu: Emulator) -> None:
        self.emu = emu
        self.engine = emu.engine
        self.org_id = emu.org_id

    async def _run(self, fn: Any) -> Any:
        return await self.emu.run(_engine_call, fn)

    async def health(self, request: Request) -> Response:
        sender = self.emu.notifier.sender
        return PolarJSON(
            {
                "status": "ok",
                "organization_id": self.org_id,
                "settle_delay": self.emu.settled.delay,
                "polar_quirks": self.emu.quirks.enabled,
                "billing_interval": self.emu.billing.interval,
                "webhooks": sender is not None,
            }
        )

    async def create_customer(self, request: Request) -> Response:
        body: AdminCustomer = s.parse_body(AdminCustomer, await read_body(request, lenient=True))

        def create() -> CustomerRecord:
            customer = self.engine.create_customer(
                external_id=body.external_id, email=body.email, name=body.name, metadata=dict(body.metadata)
            )
            customer_created(self.emu, customer)
            return customer

        return PolarJSON(out.customer_json(await self._run(create), self.org_id), 201)

    def _customer(self, ref: _CustomerRef) -> CustomerRecord:
        if ref.customer_id is not None:
            customer = self.engine.get_customer(ref.customer_id)
        else:
            assert ref.external_customer_id is not None
            customer = self.engine.get_customer_by_external_id(ref.external_customer_id)
        if customer is None:
            raise NotFound("customer not found")
        return customer

    def _meter(self, key: str, field: str = "meter_id") -> MeterRecord:
        meter = self.engine.get_meter(key)
        if meter is None:  # a catalog slug is accepted too
            meter = next((m for m in self.engine.list_meters(include_archived=True) if m.slug == key), None)
        if meter is None:
            # The words of Polar's meter-credit benefit for an unknown meter.
            raise RequestRejected(
                [error_item("value_error", ["body", field], "This meter does not exist.", key)],
                error="PolarRequestValidationError",
            )
        return meter

    async def grant(self, request: Request) -> Response:
        body: AdminCredit = s.parse_body(AdminCredit, await read_body(request, lenient=True))

        def grant() -> dict[str, Any]:
            customer = self._customer(body)
            meter = self._meter(body.meter_id)
            self.engine.grant_credits(customer.id, meter.id, body.units, rollover=body.rollover)
            self.emu.notifier.granted(customer, meter, body.units, body.rollover)
            # A credit grant recomputes the customer's meter synchronously.
            self.emu.settled.settle(customer.id)
            return {
                "customer_id": customer.id,
                "meter_id": meter.id,
                "units": body.units,
                "rollover": body.rollover,
            }

        return PolarJSON(await self._run(grant))

    async def create_plan(self, request: Request) -> Response:
        body: AdminPlan = s.parse_body(AdminPlan, await read_body(request, lenient=True))

        def create() -> dict[str, Any]:
            for key in body.credits:
                self._meter(key, "credits")  # a slug or the id of any meter, API-created ones too
            plan = Plan(body.name, credits=body.credits, interval=body.interval, rollover=body.rollover)
            self.engine.create_plan(plan)
            return {
                "name": plan.name,
                "credits": dict(plan.credits),
                "interval": plan.interval,
                "rollover": plan.rollover,
            }

        return PolarJSON(await self._run(create), 201)

    async def subscribe(self, request: Request) -> Response:
        body: AdminSubscription = s.parse_body(AdminSubscription, await read_body(request, lenient=True))

        def subscribe() -> dict[str, Any]:
            customer: CustomerRecord | None = None
            if body.customer_id is not None:
                customer = self._customer(body)
                key = customer.external_id or customer.id
            else:
                assert body.external_customer_id is not None
                key = body.external_customer_id
                customer = self.engine.get_customer_by_external_id(key)
            started = body.started_at or self.engine.clock.now()
            self.engine.subscribe(key, body.plan, started)
            if customer is not None:
                plan = self.engine.get_plan(body.plan)
                if plan is not None:
                    self.emu.notifier.subscribed(customer, plan, started)
                self.emu.settled.settle(customer.id)
            return {"customer": key, "plan": body.plan, "started_at": out.iso(started)}

        return PolarJSON(await self._run(subscribe), 201)

    async def reset(self, request: Request) -> Response:
        body: AdminReset = s.parse_body(AdminReset, await read_body(request, lenient=True))

        def reset() -> dict[str, Any]:
            customer = self._customer(body)
            meter_id = self._meter(body.meter_id).id if body.meter_id is not None else None
            self.engine.reset_meters(customer.id, meter_id)
            self.emu.settled.settle(customer.id)
            return {"customer_id": customer.id, "meter_id": meter_id}

        return PolarJSON(await self._run(reset))

    async def settle(self, request: Request) -> Response:
        data = await read_body(request, lenient=True)
        body = s.parse_body(AdminSettle, data) if data is not None else AdminSettle()

        def settle() -> int:
            if body.customer_id is None and body.external_customer_id is None:
                return self.emu.settled.settle()
            ref = _CustomerRef.model_validate(body.model_dump())
            return self.emu.settled.settle(self._customer(ref).id)

        return PolarJSON({"settled": await self._run(settle)})

    async def billing(self, request: Request) -> Response:
        """Polar's billing pass, now: meters with billed events freeze filter and aggregation."""
        frozen = await self._run(self.emu.billing.run)
        return PolarJSON({"frozen": frozen, "passes": self.emu.billing.passes})

    async def webhooks(self, request: Request) -> Response:
        sender = self.emu.notifier.sender
        if sender is None:
            return PolarJSON({"url": None, "deliveries": []})
        return PolarJSON({"url": sender.url, "deliveries": sender.deliveries()})


def admin_routes(emu: Emulator) -> list[Route]:
    """The ``/__emulator__/`` routes for one emulator."""
    admin = _Admin(emu)
    p = ADMIN_PREFIX
    return [
        Route(f"{p}/health", admin.health, methods=["GET"]),
        Route(f"{p}/customers", admin.create_customer, methods=["POST"]),
        Route(f"{p}/credits", admin.grant, methods=["POST"]),
        Route(f"{p}/plans", admin.create_plan, methods=["POST"]),
        Route(f"{p}/subscriptions", admin.subscribe, methods=["POST"]),
        Route(f"{p}/reset", admin.reset, methods=["POST"]),
        Route(f"{p}/settle", admin.settle, methods=["POST"]),
        Route(f"{p}/billing", admin.billing, methods=["POST"]),
        Route(f"{p}/webhooks", admin.webhooks, methods=["GET"]),
    ]
