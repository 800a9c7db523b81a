"""The emulator's own admin surface under ``/__emulator__/`` (same bearer token as ``/v1``).

Polar grants credits through products and benefits, which the emulator does not model; these routes
do the equivalent directly: create customers, grant credits, define plans and subscribe customers to
them, reset meters, and flush the balance debounce. ``GET /__emulator__/health`` needs no token.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import AwareDatetime, BaseModel, Field, model_validator
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from polar_metering._catalog import Plan
from polar_metering._exceptions import ConfigurationError, NotFound, ValidationError
from polar_metering.emulator import _schemas as s
from polar_metering.emulator import _serialize as out
from polar_metering.emulator._schemas import RequestRejected, error_item

if TYPE_CHECKING:
    from polar_metering.backends._engine.backend import LocalEngine
    from polar_metering.backends._engine.records import CustomerRecord, MeterRecord
    from polar_metering.emulator._settle import SettledBalances

__all__ = ["ADMIN_PREFIX", "admin_routes"]

ADMIN_PREFIX = "/__emulator__"
_INT32 = 2**31 - 1


class _CustomerRef(BaseModel):
    customer_id: str | None = None
    external_customer_id: str | None = None

    @model_validator(mode="after")
    def _one_of(self) -> _CustomerRef:
        if (self.customer_id is None) == (self.external_customer_id is None):
            raise ValueError("give exactly one of customer_id and external_customer_id")
        return self


class AdminCustomer(BaseModel):
    external_id: str | None = None
    email: s.Email | None = None
    name: str | None = None
    metadata: s.MetadataField = Field(default_factory=dict)


class AdminCredit(_CustomerRef):
    meter_id: str = Field(min_length=1)
    # Polar's meter-credit units are int32 (§4.2); negative units revoke, as Polar's revoke does.
    units: int = Field(ge=-_INT32, le=_INT32)
    rollover: bool = False


class AdminPlan(BaseModel):
    name: str = Field(min_length=1)
    credits: dict[str, float] = Field(default_factory=dict)
    interval: Literal["month", "year"] = "month"
    rollover: bool = False


class AdminSubscription(_CustomerRef):
    plan: str = Field(min_length=1)
    started_at: AwareDatetime | None = None


class AdminReset(_CustomerRef):
    meter_id: str | None = None


class AdminSettle(BaseModel):
    customer_id: str | None = None
    external_customer_id: str | None = None


class _Admin:
    def __init__(self, engine: LocalEngine, settled: SettledBalances, org_id: str) -> None:
        self.engine = engine
        self.settled = settled
        self.org_id = org_id

    async def health(self, request: Request) -> Response:
        return JSONResponse(
            {"status": "ok", "organization_id": self.org_id, "settle_delay": self.settled.delay}
        )

    async def create_customer(self, request: Request) -> Response:
        body: AdminCustomer = s.parse_body(AdminCustomer, s.decode_json_body(await request.body()))

        def create() -> CustomerRecord:
            customer = self.engine.create_customer(
                external_id=body.external_id, email=body.email, name=body.name, metadata=dict(body.metadata)
            )
            if customer.external_id is not None:
                self.settled.customer_created(customer.id)
            return customer

        customer = await run_in_threadpool(_engine_call, create)
        return JSONResponse(out.customer_json(customer, self.org_id), 201)

    def _customer(self, ref: _CustomerRef) -> CustomerRecord:
        if ref.customer_id is not None:
            customer = self.engine.get_customer(ref.customer_id)
        else:
            assert ref.external_customer_id is not None
            customer = self.engine.get_customer_by_external_id(ref.external_customer_id)
        if customer is None:
            raise NotFound("customer not found")
        return customer

    def _meter(self, key: str) -> MeterRecord:
        meter = self.engine.get_meter(key)
        if meter is None:  # a catalog slug is accepted too
            meter = next((m for m in self.engine.list_meters(include_archived=True) if m.slug == key), None)
        if meter is None:
            raise RequestRejected(
                [error_item("value_error", ["body", "meter_id"], "This meter does not exist.", key)],
                error="PolarRequestValidationError",
            )
        return meter

    async def grant(self, request: Request) -> Response:
        body: AdminCredit = s.parse_body(AdminCredit, s.decode_json_body(await request.body()))

        def grant() -> dict[str, Any]:
            customer = self._customer(body)
            meter = self._meter(body.meter_id)
            self.engine.grant_credits(customer.id, meter.id, body.units, rollover=body.rollover)
            # §3.3: a credit grant recomputes the customer's meter synchronously.
            self.settled.settle(customer.id)
            return {
                "customer_id": customer.id,
                "meter_id": meter.id,
                "units": body.units,
                "rollover": body.rollover,
            }

        return JSONResponse(await run_in_threadpool(_engine_call, grant))

    async def create_plan(self, request: Request) -> Response:
        body: AdminPlan = s.parse_body(AdminPlan, s.decode_json_body(await request.body()))

        def create() -> dict[str, Any]:
            plan = Plan(body.name, credits=body.credits, interval=body.interval, rollover=body.rollover)
            self.engine.create_plan(plan)
            return {
                "name": plan.name,
                "credits": dict(plan.credits),
                "interval": plan.interval,
                "rollover": plan.rollover,
            }

        return JSONResponse(await run_in_threadpool(_engine_call, create), 201)

    async def subscribe(self, request: Request) -> Response:
        body: AdminSubscription = s.parse_body(AdminSubscription, s.decode_json_body(await request.body()))

        def subscribe() -> dict[str, Any]:
            customer: CustomerRecord | None = None
            if body.customer_id is not None:
                customer = self._customer(body)
                key = customer.external_id or customer.id
            else:
                assert body.external_customer_id is not None
                key = body.external_customer_id
                customer = self.engine.get_customer_by_external_id(key)
            self.engine.subscribe(key, body.plan, body.started_at)
            if customer is not None:
                self.settled.settle(customer.id)
            return {"customer": key, "plan": body.plan, "started_at": out.iso(body.started_at)}

        return JSONResponse(await run_in_threadpool(_engine_call, subscribe), 201)

    async def reset(self, request: Request) -> Response:
        body: AdminReset = s.parse_body(AdminReset, s.decode_json_body(await request.body()))

        def reset() -> dict[str, Any]:
            customer = self._customer(body)
            meter_id = self._meter(body.meter_id).id if body.meter_id is not None else None
            self.engine.reset_meters(customer.id, meter_id)
            self.settled.settle(customer.id)
            return {"customer_id": customer.id, "meter_id": meter_id}

        return JSONResponse(await run_in_threadpool(_engine_call, reset))

    async def settle(self, request: Request) -> Response:
        raw = await request.body()
        body = s.parse_body(AdminSettle, s.decode_json_body(raw)) if raw.strip() else AdminSettle()

        def settle() -> int:
            if body.customer_id is None and body.external_customer_id is None:
                return self.settled.settle()
            return self.settled.settle(self._customer(_CustomerRef.model_validate(body.model_dump())).id)

        return JSONResponse({"settled": await run_in_threadpool(_engine_call, settle)})


def _engine_call(fn: Any) -> Any:
    """Run an engine action, turning its refusals into Polar-shaped 422s."""
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


def admin_routes(engine: LocalEngine, settled: SettledBalances, org_id: str) -> list[Route]:
    """The ``/__emulator__/`` routes for one engine."""
    admin = _Admin(engine, settled, org_id)
    p = ADMIN_PREFIX
    return [
        Route(f"{p}/health", admin.health, methods=["GET"]),
        Route(f"{p}/customers", admin.create_customer, methods=["POST"]),
        Route(f"{p}/credits", admin.grant, methods=["POST"]),
        Route(f"{p}/plans", admin.create_plan, methods=["POST"]),
        Route(f"{p}/subscriptions", admin.subscribe, methods=["POST"]),
        Route(f"{p}/reset", admin.reset, methods=["POST"]),
        Route(f"{p}/settle", admin.settle, methods=["POST"]),
    ]
