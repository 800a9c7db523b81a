"""Polar's JSON for the emulator's products, benefits, subscriptions and grants (``_commerce.py``
stores them): the shapes of ``server/polar/product/schemas.py``, ``server/polar/benefit/schemas.py``,
``server/polar/subscription/schemas.py`` and ``server/polar/customer/schemas/state.py`` at c6c3645,
plus what the SDK's models require."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from polar_metering.backends._engine.timekeeping import from_us
from polar_metering.emulator._serialize import customer_json, iso

if TYPE_CHECKING:
    from polar_metering.backends._engine.backend import LocalEngine
    from polar_metering.backends._engine.objects import PolarObjects

__all__ = ["CommerceJSON"]


class CommerceJSON:
    """Mixed into :class:`~polar_metering.emulator._commerce.Commerce`."""

    if TYPE_CHECKING:  # provided by Commerce
        engine: LocalEngine
        org_id: str
        objects: PolarObjects

        def product(self, product_id: str) -> dict[str, Any] | None: ...

        def benefit(self, benefit_id: str) -> dict[str, Any] | None: ...

        def _product_benefits(self, product: dict[str, Any]) -> list[dict[str, Any]]: ...

    def benefit_json(self, benefit: dict[str, Any]) -> dict[str, Any]:
        """A ``BenefitMeterCredit`` (``server/polar/benefit/strategies/meter_credit/schemas.py``)."""
        return {
            "id": benefit["id"],
            "created_at": benefit["created_at"],
            "modified_at": benefit["modified_at"],
            "type": benefit["type"],
            "description": benefit["description"],
            "selectable": True,
            "deletable": True,
            "is_deleted": False,
            "organization_id": self.org_id,
            "metadata": dict(benefit["metadata"]),
            "visibility": benefit["visibility"],
            "visibility_configurable": False,
            "properties": dict(benefit["properties"]),
        }

    def price_json(self, product: dict[str, Any], price: dict[str, Any]) -> dict[str, Any]:
        body = {
            "id": price["id"],
            "created_at": price["created_at"],
            "modified_at": price["modified_at"],
            "source": "catalog",
            "amount_type": price["amount_type"],
            "price_currency": price.get("price_currency", "usd"),
            "tax_behavior": price.get("tax_behavior"),
            "is_archived": price["is_archived"],
            "product_id": product["id"],
            # Deprecated fields Polar still sends on every price (product/schemas.py ProductPriceBase).
            "type": "recurring" if product["recurring_interval"] else "one_time",
            "recurring_interval": product["recurring_interval"],
        }
        if price["amount_type"] == "fixed":
            body["price_amount"] = price["price_amount"]
        else:
            body["minimum_amount"] = price.get("minimum_amount", 50)
            body["maximum_amount"] = price.get("maximum_amount")
            body["preset_amount"] = price.get("preset_amount")
        return body

    def product_json(self, product: dict[str, Any]) -> dict[str, Any]:
        """A ``Product`` (``server/polar/product/schemas.py``). ``is_deletable`` is what the SDK's
        model requires; Polar at c6c3645 does not send it."""
        in_use = any(s["product_id"] == product["id"] for s in self.objects.all("subscription"))
        return {
            "id": product["id"],
            "created_at": product["created_at"],
            "modified_at": product["modified_at"],
            "trial_interval": None,
            "trial_interval_count": None,
            "name": product["name"],
            "description": product["description"],
            "visibility": product["visibility"],
            "recurring_interval": product["recurring_interval"],
            "recurring_interval_count": product["recurring_interval_count"],
            "meter_interval": None,
            "meter_interval_count": None,
            "is_recurring": product["recurring_interval"] is not None,
            "is_archived": product["is_archived"],
            "organization_id": self.org_id,
            "metadata": dict(product["metadata"]),
            "is_deletable": not in_use,
            "prices": [self.price_json(product, p) for p in product["prices"]],
            "benefits": [self.benefit_json(b) for b in self._product_benefits(product)],
            "medias": [],
            "attached_custom_fields": [],
        }

    def subscription_json(self, sub: dict[str, Any]) -> dict[str, Any]:
        """A ``Subscription`` (``server/polar/subscription/schemas.py``) with its customer and product."""
        customer = self.engine.get_customer(sub["customer_id"])
        product = self.product(sub["product_id"])
        assert customer is not None and product is not None
        product_body = self.product_json(product)
        prices = [p for p in product_body["prices"] if not p["is_archived"]]
        return {
            "created_at": sub["created_at"],
            "modified_at": sub["modified_at"],
            "id": sub["id"],
            "amount": sub["amount"],
            "currency": "usd",
            "recurring_interval": sub["recurring_interval"],
            "recurring_interval_count": 1,
            "status": sub["status"],
            "current_period_start": iso(from_us(sub["period_start_us"])),
            "current_period_end": iso(from_us(sub["period_end_us"])),
            "current_meter_period_start": None,
            "current_meter_period_end": None,
            "trial_start": None,
            "trial_end": None,
            "cancel_at_period_end": sub["cancel_at_period_end"],
            "canceled_at": sub["canceled_at"],
            "started_at": iso(from_us(sub["started_us"])),
            "ends_at": sub["ends_at"],
            "ended_at": sub["ended_at"],
            "past_due_at": None,
            "pause_at_period_end": False,
            "paused_at": None,
            "resumes_at": None,
            "customer_id": sub["customer_id"],
            "product_id": sub["product_id"],
            "discount_id": None,
            "checkout_id": None,
            "seats": None,
            "units": None,
            "customer_cancellation_reason": sub.get("customer_cancellation_reason"),
            "customer_cancellation_comment": sub.get("customer_cancellation_comment"),
            "price_id": prices[0]["id"] if prices else None,
            "metadata": dict(sub["metadata"]),
            "custom_field_data": {},
            "customer": customer_json(customer, self.org_id),
            "user_id": sub["customer_id"],
            "product": product_body,
            "discount": None,
            "prices": prices,
            "meters": [],
            "pending_update": None,
        }

    def state_subscription_json(self, sub: dict[str, Any]) -> dict[str, Any]:
        """A ``CustomerStateSubscription`` (``server/polar/customer/schemas/state.py``)."""
        full = self.subscription_json(sub)
        keys = (
            "id",
            "created_at",
            "modified_at",
            "metadata",
            "custom_field_data",
            "status",
            "amount",
            "currency",
            "recurring_interval",
            "current_period_start",
            "current_period_end",
            "trial_start",
            "trial_end",
            "cancel_at_period_end",
            "canceled_at",
            "started_at",
            "ends_at",
            "product_id",
            "discount_id",
            "price_id",
            "seats",
            "units",
            "meters",
        )
        return {k: full[k] for k in keys}

    def state_grant_json(self, grant: dict[str, Any]) -> dict[str, Any]:
        """A ``CustomerStateBenefitGrant``."""
        benefit = self.benefit(grant["benefit_id"]) or {"metadata": {}}
        return {
            "id": grant["id"],
            "created_at": grant["created_at"],
            "modified_at": grant["modified_at"],
            "granted_at": grant["granted_at"],
            "benefit_id": grant["benefit_id"],
            "benefit_type": "meter_credit",
            "benefit_metadata": dict(benefit["metadata"]),
            "properties": dict(grant["properties"]),
        }

    def grant_json(self, grant: dict[str, Any]) -> dict[str, Any]:
        """A ``BenefitGrantMeterCreditWebhook`` (``server/polar/benefit/grant/schemas.py``)."""
        customer = self.engine.get_customer(grant["customer_id"])
        benefit = self.benefit(grant["benefit_id"])
        assert customer is not None and benefit is not None
        return {
            "created_at": grant["created_at"],
            "modified_at": grant["modified_at"],
            "id": grant["id"],
            "granted_at": grant["granted_at"],
            "is_granted": grant["revoked_at"] is None,
            "revoked_at": grant["revoked_at"],
            "is_revoked": grant["revoked_at"] is not None,
            "subscription_id": grant["subscription_id"],
            "order_id": None,
            "customer_id": grant["customer_id"],
            "member_id": None,
            "benefit_id": grant["benefit_id"],
            "error": None,
            "customer": customer_json(customer, self.org_id),
            "member": None,
            "benefit": self.benefit_json(benefit),
            "properties": dict(grant["properties"]),
            "previous_properties": None,
        }
