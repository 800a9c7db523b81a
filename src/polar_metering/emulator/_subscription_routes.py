"""The ``/v1/subscriptions`` routes (``_commerce.py`` holds what they do), validated as Polar's
``server/polar/subscription/schemas.py`` at c6c3645 declares them; the service checks of
``server/polar/subscription/service.py`` follow in Polar's order. Updates the emulator does not
model (discounts, trials, seats, units, pauses, billing-period moves) answer 422
``emulator_unsupported``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import UUID4, Field, TypeAdapter
from starlette.requests import Request
from starlette.responses import Response

from polar_metering.emulator import _schemas as s
from polar_metering.emulator._commerce import ACTIVE, BILLABLE, Commerce, invalid, is_free
from polar_metering.emulator._context import Emulator, read_body
from polar_metering.emulator._errors import PolarJSON, RequestRejected, error_item
from polar_metering.emulator._params import Params
from polar_metering.emulator._routes import (
    metadata_matches,
    metadata_query,
    not_found,
    org_filter_excludes,
    sort_by,
    unsupported,
)
from polar_metering.emulator._serialize import list_json

__all__ = ["SubscriptionRoutes"]


class SubscriptionCreateCustomer(s.PolarSchema):
    metadata: s.MetadataField = Field(default_factory=dict)
    product_id: UUID4
    customer_id: UUID4


class SubscriptionCreateExternalCustomer(s.PolarSchema):
    metadata: s.MetadataField = Field(default_factory=dict)
    product_id: UUID4
    external_customer_id: str


_CREATE: TypeAdapter[SubscriptionCreateCustomer | SubscriptionCreateExternalCustomer] = TypeAdapter(
    SubscriptionCreateCustomer | SubscriptionCreateExternalCustomer
)

Reason = Literal[
    "customer_service",
    "low_quality",
    "missing_features",
    "switched_service",
    "too_complex",
    "too_expensive",
    "unused",
    "other",
]


class SubscriptionUpdate(s.PolarSchema):
    """The fields of Polar's ``SubscriptionUpdate`` union the emulator acts on; exactly one kind
    of change per request, as each union member carries one."""

    metadata: s.MetadataField | None = None
    product_id: UUID4 | None = None
    proration_behavior: Literal["invoice", "prorate", "next_period", "reset"] | None = None
    cancel_at_period_end: bool | None = None
    revoke: Literal[True] | None = None
    customer_cancellation_reason: Reason | None = None
    customer_cancellation_comment: str | None = None


_UNSUPPORTED_UPDATES = (
    "discount_id",
    "trial_end",
    "seats",
    "units",
    "current_billing_period_end",
    "pause_at_period_end",
    "resumes_at",
    "resume",
    "pending_update",
)


class SubscriptionRoutes:
    def __init__(self, emu: Emulator) -> None:
        self.emu = emu
        self.engine = emu.engine
        self.org_id = emu.org_id
        self.commerce: Commerce = emu.commerce

    # --- subscriptions -----------------------------------------------------------------------------
    async def list_subscriptions(self, request: Request) -> Response:
        p = Params(request)
        page, limit = p.page()
        sorting = p.sorting(
            (
                "customer",
                "status",
                "started_at",
                "current_period_end",
                "ended_at",
                "ends_at",
                "amount",
                "product",
                "discount",
            ),
            ["-started_at"],
        )
        orgs = p.uuids("organization_id")
        product_ids = p.uuids("product_id")
        customer_ids = p.uuids("customer_id")
        active = p.boolean("active")
        statuses = p.enums(
            "status",
            "SubscriptionStatus",
            [
                "incomplete",
                "incomplete_expired",
                "trialing",
                "active",
                "past_due",
                "canceled",
                "unpaid",
                "paused",
            ],
        )
        cancel_at_period_end = p.boolean("cancel_at_period_end")
        p.check()
        q = request.query_params
        for name in (
            "discount_id",
            "customer_cancellation_reason",
            "canceled_at_after",
            "canceled_at_before",
            "started_after",
            "started_before",
        ):
            if name in q:
                raise unsupported(name, q[name], f"The emulator does not support the '{name}' filter.")
        external_ids = q.getlist("external_customer_id")
        if org_filter_excludes(orgs, self.org_id):
            return PolarJSON(list_json([], 0, limit))
        metadata = metadata_query(request)

        def listing() -> dict[str, Any]:
            wanted_customers = set(customer_ids)
            for external in external_ids:
                found = self.engine.get_customer_by_external_id(external)
                if found is not None:
                    wanted_customers.add(found.id)
            picked = [
                sub
                for sub in self.commerce.subscriptions()
                if (not (customer_ids or external_ids) or sub["customer_id"] in wanted_customers)
                and (not product_ids or sub["product_id"] in product_ids)
                and (active is None or (sub["status"] in ACTIVE) == active)
                and (not statuses or sub["status"] in statuses)
                and (cancel_at_period_end is None or sub["cancel_at_period_end"] == cancel_at_period_end)
                and metadata_matches(sub["metadata"], metadata)
            ]
            sort_by(picked, sorting, lambda sub, name: self.commerce.listing_key(name)(sub))
            window = picked[(page - 1) * limit : page * limit]
            return list_json([self.commerce.subscription_json(sub) for sub in window], len(picked), limit)

        return PolarJSON(await self.emu.run(listing))

    async def create_subscription(self, request: Request) -> Response:
        data = await read_body(request)
        body = s.parse_body(_CREATE, data)

        def create() -> dict[str, Any]:
            product_id = str(body.product_id)
            product = self.commerce.product(product_id)
            msg = None
            if product is None:
                msg = "Product does not exist."
            elif product["recurring_interval"] is None:
                msg = "Product is not a recurring product."
            elif not is_free(product):
                msg = (
                    "Product is not free. "
                    "The customer should go through a checkout to create a paid subscription."
                )
            if msg is not None:
                raise invalid(["body", "product_id"], msg, product_id)
            assert product is not None
            if isinstance(body, SubscriptionCreateCustomer):
                field, value = "customer_id", str(body.customer_id)
                customer = self.engine.get_customer(value)
            else:
                field, value = "external_customer_id", body.external_customer_id
                customer = self.engine.get_customer_by_external_id(value)
            if customer is None:
                raise invalid(["body", field], "Customer does not exist.", value)
            sub = self.commerce.create_subscription(customer, product, dict(body.metadata))
            self.emu.settled.settle(customer.id)
            return self.commerce.subscription_json(sub)

        return PolarJSON(await self.emu.run(create), 201)

    async def get_subscription(self, request: Request) -> Response:
        p = Params(request)
        sub_id = p.path_id()
        p.check()

        def get() -> dict[str, Any] | None:
            sub = self.commerce.subscription(sub_id)
            return None if sub is None else self.commerce.subscription_json(sub)

        found = await self.emu.run(get)
        return PolarJSON(found) if found is not None else not_found()

    async def update_subscription(self, request: Request) -> Response:
        data = await read_body(request)
        p = Params(request)
        sub_id = p.path_id()
        body: SubscriptionUpdate | None = None
        try:
            body = s.parse_body(SubscriptionUpdate, data)
        except RequestRejected as exc:
            p.errors.extend(exc.detail)
        p.check()
        assert body is not None
        present = [k for k in _UNSUPPORTED_UPDATES if isinstance(data, dict) and k in data]
        if present:
            raise RequestRejected(
                [
                    error_item(
                        "emulator_unsupported",
                        ["body", present[0]],
                        f"The emulator does not support '{present[0]}'.",
                        data[present[0]],
                    )
                ]
            )
        kinds = [k for k in ("product_id", "cancel_at_period_end", "revoke") if getattr(body, k) is not None]
        if len(kinds) > 1:
            raise RequestRejected(
                [
                    error_item(
                        "emulator_unsupported",
                        ["body", kinds[1]],
                        "Give one change per request, as Polar's SubscriptionUpdate does.",
                        None,
                    )
                ]
            )

        def update() -> dict[str, Any] | None:
            sub = self.commerce.subscription(sub_id)
            if sub is None:
                return None
            if body.product_id is not None:
                new_id = str(body.product_id)
                product = self.commerce.product(new_id)
                if product is None:
                    raise invalid(["body", "product_id"], "Product does not exist.", new_id)
                if product["is_archived"]:
                    raise invalid(["body", "product_id"], "Product is archived.", new_id)
                if product["recurring_interval"] is None:
                    raise invalid(["body", "product_id"], "Product is not recurring.", new_id)
                if body.proration_behavior == "reset":
                    raise invalid(
                        ["body", "proration_behavior"],
                        "The 'reset' proration behavior is not enabled for this organization.",
                        "reset",
                    )
                self.commerce.change_product(sub, product)
            elif body.cancel_at_period_end is not None:
                self.commerce.cancel(
                    sub,
                    at_period_end=body.cancel_at_period_end,
                    reason=body.customer_cancellation_reason,
                    comment=body.customer_cancellation_comment,
                )
            elif body.revoke:
                self.commerce.revoke(
                    sub, reason=body.customer_cancellation_reason, comment=body.customer_cancellation_comment
                )
            if body.metadata is not None and sub["status"] in BILLABLE | {"canceled"}:
                sub["metadata"] = dict(body.metadata)
                self.commerce.objects.put("subscription", sub["id"], sub, customer_id=sub["customer_id"])
            self.emu.settled.settle(sub["customer_id"])
            return self.commerce.subscription_json(sub)

        found = await self.emu.run(update)
        return PolarJSON(found) if found is not None else not_found()

    async def revoke_subscription(self, request: Request) -> Response:
        p = Params(request)
        sub_id = p.path_id()
        p.check()

        def revoke() -> dict[str, Any] | None:
            sub = self.commerce.subscription(sub_id)
            if sub is None:
                return None
            self.commerce.revoke(sub)
            self.emu.settled.settle(sub["customer_id"])
            return self.commerce.subscription_json(sub)

        found = await self.emu.run(revoke)
        return PolarJSON(found) if found is not None else not_found()
