"""The ``/v1`` products and benefits routes (``_commerce.py`` holds what they do).

Bodies are validated as Polar's schemas at c6c3645 declare them (``server/polar/product/schemas.py``,
``server/polar/benefit/strategies/meter_credit/schemas.py``), then the service checks run in Polar's
order. What the emulator does not model (other benefit types, seat-based, unit-based and metered
prices, day and week intervals) is refused with a 422 of type ``emulator_unsupported`` naming the
field, never accepted and ignored.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import UUID4, Field, StringConstraints, TypeAdapter, model_validator
from starlette.requests import Request
from starlette.responses import Response

from polar_metering.emulator import _schemas as s
from polar_metering.emulator._commerce import Commerce, invalid
from polar_metering.emulator._context import Emulator, read_body
from polar_metering.emulator._errors import PolarJSON, RequestRejected, error_item
from polar_metering.emulator._params import Params
from polar_metering.emulator._routes import (
    metadata_matches,
    metadata_query,
    not_found,
    org_filter_excludes,
    org_token_error,
    sort_by,
)
from polar_metering.emulator._serialize import list_json

__all__ = ["ProductRoutes"]

_INT32 = 2**31 - 1


class Visibility(StrEnum):
    draft = "draft"
    private = "private"
    public = "public"


class Interval(StrEnum):
    # SubscriptionRecurringInterval; the emulator's periods are months and years (checked below).
    day = "day"
    week = "week"
    month = "month"
    year = "year"


ProductName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=3, max_length=64)]


class FixedPrice(s.PolarSchema):
    amount_type: Literal["fixed"]
    price_currency: Literal["usd"] = "usd"
    tax_behavior: Literal["location", "inclusive", "exclusive"] | None = None
    # Polar: 0 (free) or at least the currency's minimum, 50 cents for usd (product/schemas.py).
    price_amount: Annotated[int, Field(ge=0, le=99_999_999)]

    @model_validator(mode="after")
    def _minimum(self) -> FixedPrice:
        if 0 < self.price_amount < 50:
            raise ValueError("Amount must be at least $0.50 or 0 for free pricing")
        return self


class CustomPrice(s.PolarSchema):
    amount_type: Literal["custom"]
    price_currency: Literal["usd"] = "usd"
    tax_behavior: Literal["location", "inclusive", "exclusive"] | None = None
    minimum_amount: Annotated[int, Field(ge=0)] = 50
    maximum_amount: Annotated[int, Field(ge=1)] | None = None
    preset_amount: Annotated[int, Field(ge=0)] | None = None


_SUPPORTED_PRICES = ("fixed", "custom")
_PRICE: TypeAdapter[FixedPrice | CustomPrice] = TypeAdapter(
    Annotated[FixedPrice | CustomPrice, Field(discriminator="amount_type")]
)


class ProductCreate(s.PolarSchema):
    metadata: s.MetadataField = Field(default_factory=dict)
    name: ProductName
    description: str | None = None
    visibility: Visibility = Visibility.public
    prices: list[Any] = Field(min_length=1)
    medias: list[UUID4] | None = None
    attached_custom_fields: list[dict[str, Any]] = Field(default_factory=list)
    organization_id: UUID4 | None = None
    recurring_interval: Interval | None = None
    recurring_interval_count: Annotated[int, Field(ge=1, le=999)] | None = None
    trial_interval: str | None = None
    trial_interval_count: int | None = None
    meter_interval: str | None = None
    meter_interval_count: int | None = None


class ProductUpdate(s.PolarSchema):
    metadata: s.MetadataField | None = None
    name: ProductName | None = None
    description: str | None = None
    is_archived: bool | None = None
    visibility: Visibility | None = None
    prices: list[Any] | None = None
    medias: list[UUID4] | None = None


class ProductBenefitsUpdate(s.PolarSchema):
    benefits: list[UUID4]


class MeterCreditProperties(s.PolarSchema):
    units: Annotated[int, Field(gt=0, le=_INT32)]
    rollover: bool
    meter_id: UUID4


class BenefitCreate(s.PolarSchema):
    metadata: s.MetadataField = Field(default_factory=dict)
    type: str
    description: Annotated[str, StringConstraints(min_length=3, max_length=42)]
    organization_id: UUID4 | None = None
    visibility: Visibility | None = None
    properties: dict[str, Any]


class BenefitUpdate(s.PolarSchema):
    metadata: s.MetadataField | None = None
    description: Annotated[str, StringConstraints(min_length=3, max_length=42)] | None = None
    visibility: Visibility | None = None
    type: str
    properties: MeterCreditProperties | None = None


class ProductRoutes:
    def __init__(self, emu: Emulator) -> None:
        self.emu = emu
        self.engine = emu.engine
        self.org_id = emu.org_id
        self.commerce: Commerce = emu.commerce

    # --- products ----------------------------------------------------------------------------------
    async def list_products(self, request: Request) -> Response:
        p = Params(request)
        page, limit = p.page()
        sorting = p.sorting(("created_at", "name", "price_amount_type", "price_amount"), ["-created_at"])
        ids = p.uuids("id")
        orgs = p.uuids("organization_id")
        archived = p.boolean("is_archived")
        recurring = p.boolean("is_recurring")
        benefit_ids = p.uuids("benefit_id")
        visibility = p.enums("visibility", "ProductVisibility", [v.value for v in Visibility])
        p.check()
        if org_filter_excludes(orgs, self.org_id):
            return PolarJSON(list_json([], 0, limit))
        query = (request.query_params.get("query") or "").lower()
        metadata = metadata_query(request)

        def listing() -> dict[str, Any]:
            picked = [
                prod
                for prod in self.commerce.products()
                if (not ids or prod["id"] in ids)
                and query in prod["name"].lower()
                and (archived is None or prod["is_archived"] == archived)
                and (recurring is None or (prod["recurring_interval"] is not None) == recurring)
                and (not benefit_ids or set(prod.get("benefit_ids", [])) & set(benefit_ids))
                and (not visibility or prod["visibility"] in visibility)
                and metadata_matches(prod["metadata"], metadata)
            ]

            def key(prod: dict[str, Any], name: str) -> Any:
                first = prod["prices"][0] if prod["prices"] else {}
                return {
                    "created_at": prod["created_at"],
                    "name": prod["name"],
                    "price_amount_type": first.get("amount_type"),
                    "price_amount": first.get("price_amount"),
                }[name]

            sort_by(picked, sorting, key)
            window = picked[(page - 1) * limit : page * limit]
            return list_json([self.commerce.product_json(prod) for prod in window], len(picked), limit)

        return PolarJSON(await self.emu.run(listing))

    def _prices(self, raw: list[Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for i, price in enumerate(raw):
            if not isinstance(price, dict):
                errors.append(
                    error_item(
                        "model_attributes_type",
                        ["body", "prices", i],
                        "Input should be a valid dictionary or object to extract fields from",
                        price,
                    )
                )
                continue
            if price.get("amount_type") == "free":
                # Polar still takes the removed ``free`` type, as a fixed price of 0
                # (product/schemas.py ``_coerce_legacy_free_price``).
                price = {
                    "amount_type": "fixed",
                    "price_amount": 0,
                    **{k: price[k] for k in ("price_currency", "tax_behavior") if k in price},
                }
            kind = price.get("amount_type")
            if kind not in _SUPPORTED_PRICES:
                errors.append(
                    error_item(
                        "emulator_unsupported",
                        ["body", "prices", i, "amount_type"],
                        "The emulator supports fixed (0 for free) and custom prices only.",
                        kind,
                    )
                )
                continue
            try:
                model = s.parse_body(_PRICE, price)
            except RequestRejected as exc:
                for item in exc.detail:
                    item["loc"] = ["body", "prices", i, *item["loc"][1:]]
                errors.extend(exc.detail)
                continue
            out.append(model.model_dump(mode="json"))
        if errors:
            raise RequestRejected(errors)
        return out

    async def create_product(self, request: Request) -> Response:
        data = await read_body(request)
        body: ProductCreate = s.parse_body(ProductCreate, data)
        recurring = body.recurring_interval is not None
        prices = self._prices(body.prices)
        if body.organization_id is not None:
            raise org_token_error(str(body.organization_id))
        if body.recurring_interval is not None and body.recurring_interval not in (
            Interval.month,
            Interval.year,
        ):
            raise RequestRejected(
                [
                    error_item(
                        "emulator_unsupported",
                        ["body", "recurring_interval"],
                        "The emulator's billing periods are months and years.",
                        body.recurring_interval.value,
                    )
                ]
            )
        for name in ("recurring_interval_count",):
            value = getattr(body, name)
            if value not in (None, 1):
                raise RequestRejected(
                    [
                        error_item(
                            "emulator_unsupported",
                            ["body", name],
                            "The emulator bills every period (a count of 1).",
                            value,
                        )
                    ]
                )
        for name in ("trial_interval", "meter_interval", "medias"):
            if getattr(body, name):
                raise RequestRejected(
                    [
                        error_item(
                            "emulator_unsupported",
                            ["body", name],
                            f"The emulator does not support '{name}'.",
                            getattr(body, name),
                        )
                    ]
                )
        if body.attached_custom_fields:
            raise RequestRejected(
                [
                    error_item(
                        "emulator_unsupported",
                        ["body", "attached_custom_fields"],
                        "The emulator does not support custom fields.",
                        None,
                    )
                ]
            )

        def create() -> dict[str, Any]:
            product = self.commerce.create_product(
                name=body.name,
                description=body.description or None,
                visibility=body.visibility.value,
                recurring_interval=body.recurring_interval.value if body.recurring_interval else None,
                recurring_interval_count=1 if recurring else None,
                prices=prices,
                metadata=dict(body.metadata),
            )
            return self.commerce.product_json(product)

        return PolarJSON(await self.emu.run(create), 201)

    async def _product(self, request: Request) -> dict[str, Any] | None:
        p = Params(request)
        product_id = p.path_id()
        p.check()
        return await self.emu.run(self.commerce.product, product_id)

    async def get_product(self, request: Request) -> Response:
        product = await self._product(request)
        if product is None:
            return not_found()
        return PolarJSON(await self.emu.run(self.commerce.product_json, product))

    async def update_product(self, request: Request) -> Response:
        data = await read_body(request)
        p = Params(request)
        product_id = p.path_id()
        try:
            body: ProductUpdate | None = s.parse_body(ProductUpdate, data)
        except RequestRejected as exc:
            p.errors.extend(exc.detail)
            body = None
        p.check()
        assert body is not None
        if body.prices is not None or body.medias:
            field = "prices" if body.prices is not None else "medias"
            raise RequestRejected(
                [
                    error_item(
                        "emulator_unsupported",
                        ["body", field],
                        f"The emulator does not update a product's {field}.",
                        None,
                    )
                ]
            )
        product = await self.emu.run(self.commerce.product, product_id)
        if product is None:
            return not_found()
        changes: dict[str, Any] = {}
        for name in ("name", "description", "is_archived"):
            if getattr(body, name) is not None:
                changes[name] = getattr(body, name)
        if body.visibility is not None:
            changes["visibility"] = body.visibility.value
        if body.metadata is not None:
            changes["metadata"] = dict(body.metadata)

        def update() -> dict[str, Any]:
            return self.commerce.product_json(self.commerce.update_product(product, changes))

        return PolarJSON(await self.emu.run(update))

    async def update_product_benefits(self, request: Request) -> Response:
        data = await read_body(request)
        p = Params(request)
        product_id = p.path_id()
        try:
            body: ProductBenefitsUpdate | None = s.parse_body(ProductBenefitsUpdate, data)
        except RequestRejected as exc:
            p.errors.extend(exc.detail)
            body = None
        p.check()
        assert body is not None
        ids = [str(b) for b in body.benefits]

        def update() -> dict[str, Any] | None:
            product = self.commerce.product(product_id)
            if product is None:
                return None
            for order, benefit_id in enumerate(ids):
                if self.commerce.benefit(benefit_id) is None:
                    raise RequestRejected(
                        [
                            error_item(
                                "value_error",
                                ["body", "benefits", order],
                                "Benefit does not exist.",
                                benefit_id,
                            )
                        ],
                        error="PolarRequestValidationError",
                    )
            return self.commerce.product_json(self.commerce.set_benefits(product, ids))

        result = await self.emu.run(update)
        return not_found() if result is None else PolarJSON(result)

    # --- benefits ----------------------------------------------------------------------------------
    async def list_benefits(self, request: Request) -> Response:
        p = Params(request)
        page, limit = p.page()
        sorting = p.sorting(("created_at", "description", "type", "user_order"), ["-created_at"])
        orgs = p.uuids("organization_id")
        ids = p.uuids("id")
        exclude = p.uuids("exclude_id")
        types = p.enums(
            "type",
            "BenefitType",
            [
                "custom",
                "discord",
                "github_repository",
                "downloadables",
                "license_keys",
                "meter_credit",
                "feature_flag",
                "slack_shared_channel",
            ],
        )
        p.check()
        if org_filter_excludes(orgs, self.org_id):
            return PolarJSON(list_json([], 0, limit))
        query = (request.query_params.get("query") or "").lower()
        metadata = metadata_query(request)

        def listing() -> dict[str, Any]:
            picked = [
                b
                for b in self.commerce.benefits()
                if (not ids or b["id"] in ids)
                and b["id"] not in exclude
                and (not types or b["type"] in types)
                and query in b["description"].lower()
                and metadata_matches(b["metadata"], metadata)
            ]
            sort_by(picked, sorting, lambda b, name: b.get(name if name != "user_order" else "created_at"))
            window = picked[(page - 1) * limit : page * limit]
            return list_json([self.commerce.benefit_json(b) for b in window], len(picked), limit)

        return PolarJSON(await self.emu.run(listing))

    async def create_benefit(self, request: Request) -> Response:
        data = await read_body(request)
        body: BenefitCreate = s.parse_body(BenefitCreate, data)
        if body.type != "meter_credit":
            raise RequestRejected(
                [
                    error_item(
                        "emulator_unsupported",
                        ["body", "type"],
                        "The emulator supports meter_credit benefits only.",
                        body.type,
                    )
                ]
            )
        props: MeterCreditProperties = s.parse_body(MeterCreditProperties, body.properties)
        if body.organization_id is not None:
            raise org_token_error(str(body.organization_id))

        def create() -> dict[str, Any]:
            meter_id = str(props.meter_id)
            if self.engine.get_meter(meter_id) is None:
                # BenefitPropertiesValidationError puts the property under ``properties``.
                raise invalid(["body", "properties", "meter_id"], "This meter does not exist.", meter_id)
            benefit = self.commerce.create_benefit(
                description=body.description,
                metadata=dict(body.metadata),
                visibility=body.visibility.value if body.visibility else None,
                properties={"units": props.units, "rollover": props.rollover, "meter_id": meter_id},
            )
            return self.commerce.benefit_json(benefit)

        return PolarJSON(await self.emu.run(create), 201)

    async def _benefit(self, request: Request) -> dict[str, Any] | None:
        p = Params(request)
        benefit_id = p.path_id()
        p.check()
        return await self.emu.run(self.commerce.benefit, benefit_id)

    async def get_benefit(self, request: Request) -> Response:
        benefit = await self._benefit(request)
        return PolarJSON(self.commerce.benefit_json(benefit)) if benefit else not_found()

    async def update_benefit(self, request: Request) -> Response:
        data = await read_body(request)
        p = Params(request)
        benefit_id = p.path_id()
        try:
            body: BenefitUpdate | None = s.parse_body(BenefitUpdate, data)
        except RequestRejected as exc:
            p.errors.extend(exc.detail)
            body = None
        p.check()
        assert body is not None
        benefit = await self.emu.run(self.commerce.benefit, benefit_id)
        if benefit is None:
            return not_found()
        if body.type != benefit["type"]:
            raise RequestRejected(
                [
                    error_item(
                        "value_error", ["body", "type"], "The benefit type can't be changed.", body.type
                    )
                ],
                error="PolarRequestValidationError",
            )
        changes: dict[str, Any] = {}
        if body.description is not None:
            changes["description"] = body.description
        if body.visibility is not None:
            changes["visibility"] = body.visibility.value
        if body.metadata is not None:
            changes["metadata"] = dict(body.metadata)

        def update() -> dict[str, Any]:
            if body.properties is not None:
                meter_id = str(body.properties.meter_id)
                if self.engine.get_meter(meter_id) is None:
                    raise invalid(["body", "properties", "meter_id"], "This meter does not exist.", meter_id)
                changes["properties"] = {
                    "units": body.properties.units,
                    "rollover": body.properties.rollover,
                    "meter_id": meter_id,
                }
            return self.commerce.benefit_json(self.commerce.update_benefit(benefit, changes))

        return PolarJSON(await self.emu.run(update))
