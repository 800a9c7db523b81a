"""The ``data`` of the webhooks the emulator sends, in the shape of Polar's schemas at c6c3645:
``Subscription`` (``server/polar/subscription/schemas.py``), ``Product`` (``product/schemas.py``),
``BenefitGrantMeterCreditWebhook`` and ``BenefitMeterCredit`` (``benefit/schemas.py``,
``benefit/strategies/meter_credit/``) and ``CustomerState`` (``_serialize.customer_state_json``).

The emulator has no products: a plan stands for a free recurring product whose meter-credit
benefits are the plan's credits. Ids are derived from names so the same plan always carries the
same product and benefit ids.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from polar_metering._catalog import Plan
from polar_metering._periods import period_containing
from polar_metering.backends._engine.records import CustomerRecord, MeterRecord
from polar_metering.emulator._serialize import customer_json, iso

__all__ = ["benefit_grant_json", "derived_id", "product_json", "subscription_json"]

_NS = uuid.UUID("a8d5c0e2-5b1f-4e0b-9d6a-2f3c4b5a6e7d")


def derived_id(*parts: str) -> str:
    """A stable UUID4-shaped id for an object the emulator does not store."""
    return str(uuid.UUID(bytes=uuid.uuid5(_NS, "|".join(parts)).bytes, version=4))


def benefit_json(
    plan: Plan, meter: MeterRecord, units: float, org_id: str, created: datetime
) -> dict[str, Any]:
    return {
        "id": derived_id("benefit", plan.name, meter.id),
        "created_at": iso(created),
        "modified_at": None,
        "type": "meter_credit",
        "description": f"{int(units)} {meter.name}",
        "selectable": True,
        "deletable": True,
        "organization_id": org_id,
        "metadata": {},
        "visibility": "public",
        "visibility_configurable": False,
        "properties": {"meter_id": meter.id, "units": int(units), "rollover": plan.rollover},
    }


def product_json(
    plan: Plan, meters: dict[str, MeterRecord], org_id: str, created: datetime
) -> dict[str, Any]:
    benefits = [
        benefit_json(plan, meters[k], u, org_id, created) for k, u in plan.credits.items() if k in meters
    ]
    return {
        "id": derived_id("product", plan.name),
        "created_at": iso(created),
        "modified_at": None,
        "trial_interval": None,
        "trial_interval_count": None,
        "name": plan.name,
        "description": None,
        "visibility": "public",
        "recurring_interval": plan.interval,
        "recurring_interval_count": 1,
        "meter_interval": None,
        "meter_interval_count": None,
        "is_recurring": True,
        "is_archived": False,
        "organization_id": org_id,
        "metadata": {},
        "prices": [
            {
                "id": derived_id("price", plan.name),
                "created_at": iso(created),
                "modified_at": None,
                "source": "catalog",
                "amount_type": "free",
                "price_currency": "usd",
                "tax_behavior": None,
                "is_archived": False,
                "product_id": derived_id("product", plan.name),
                "type": "recurring",
                "recurring_interval": plan.interval,
            }
        ],
        "benefits": benefits,
        "medias": [],
        "attached_custom_fields": [],
    }


def subscription_json(
    customer: CustomerRecord,
    plan: Plan,
    meters: dict[str, MeterRecord],
    org_id: str,
    started_at: datetime,
    now: datetime,
) -> dict[str, Any]:
    """A free, active ``Subscription`` to the plan's product."""
    start, end = period_containing(started_at, plan.interval, now)
    product = product_json(plan, meters, org_id, started_at)
    price = product["prices"][0]
    return {
        "created_at": iso(started_at),
        "modified_at": iso(now),
        "id": derived_id("subscription", customer.id, plan.name, iso(started_at) or ""),
        "amount": 0,
        "currency": "usd",
        "recurring_interval": plan.interval,
        "recurring_interval_count": 1,
        "status": "active",
        "current_period_start": iso(start),
        "current_period_end": iso(end),
        "current_meter_period_start": None,
        "current_meter_period_end": None,
        "trial_start": None,
        "trial_end": None,
        "cancel_at_period_end": False,
        "canceled_at": None,
        "started_at": iso(started_at),
        "ends_at": None,
        "ended_at": None,
        "past_due_at": None,
        "pause_at_period_end": False,
        "paused_at": None,
        "resumes_at": None,
        "customer_id": customer.id,
        "product_id": product["id"],
        "discount_id": None,
        "checkout_id": None,
        "seats": None,
        "units": None,
        "customer_cancellation_reason": None,
        "customer_cancellation_comment": None,
        "price_id": price["id"],
        "metadata": {},
        "custom_field_data": {},
        "customer": customer_json(customer, org_id),
        "user_id": customer.id,
        "user": {
            "id": customer.id,
            "email": customer.email,
            "public_name": customer.name or customer.email or customer.id,
            "avatar_url": None,
            "github_username": None,
        },
        "product": product,
        "discount": None,
        "price": price,
        "prices": [price],
        "meters": [],
        "pending_update": None,
    }


def benefit_grant_json(
    customer: CustomerRecord,
    plan: Plan | None,
    meter: MeterRecord,
    units: float,
    org_id: str,
    now: datetime,
    *,
    subscription_id: str | None = None,
    rollover: bool = False,
) -> dict[str, Any]:
    """A ``BenefitGrantMeterCreditWebhook``: ``units`` of ``meter`` credited to the customer."""
    benefit_plan = plan or Plan(f"grant:{meter.id}", credits={meter.id: abs(units)}, rollover=rollover)
    revoked = units < 0
    return {
        "created_at": iso(now),
        "modified_at": iso(now),
        "id": derived_id("grant", customer.id, benefit_plan.name, meter.id, iso(now) or ""),
        "granted_at": None if revoked else iso(now),
        "is_granted": not revoked,
        "revoked_at": iso(now) if revoked else None,
        "is_revoked": revoked,
        "subscription_id": subscription_id,
        "order_id": None,
        "customer_id": customer.id,
        "member_id": None,
        "benefit_id": derived_id("benefit", benefit_plan.name, meter.id),
        "error": None,
        "customer": customer_json(customer, org_id),
        "member": None,
        "benefit": benefit_json(benefit_plan, meter, abs(units), org_id, now),
        "properties": {
            "last_credited_meter_id": meter.id,
            "last_credited_units": int(units),
            "last_credited_at": iso(now),
        },
        "previous_properties": None,
    }
