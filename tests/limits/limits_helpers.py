"""Helpers for the limits tests: a stand-in Polar for the sans-I/O core, and Polar-style webhook signing."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from polar_metering import Catalog, Meter, MeterReading
from polar_metering._events import Event, validate_event
from polar_metering._exceptions import BackendError

CATALOG = Catalog()
METERS = {m.slug: m for m in CATALOG.meters}


class ScriptedPolar:
    """What Polar would answer for customer meters, set by the test; ``error`` makes the next fetches
    fail. Stands in for the network in tests of the sans-I/O core, which takes ``fetch`` as a function."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], tuple[float, float | None, float | None]] = {}
        self.error: BackendError | None = None
        self.calls = 0

    def set(
        self, customer: str, slug: str, consumed: float, credited: float | None, modified_at: float | None
    ) -> None:
        self.rows[(customer, slug)] = (consumed, credited, modified_at)

    def fetch(
        self, customer: str, meters: Sequence[Meter]
    ) -> Mapping[str, tuple[MeterReading, float | None]]:
        self.calls += 1
        if self.error is not None:
            raise self.error
        out = {}
        for m in meters:
            consumed, credited, modified = self.rows.get((customer, m.slug), (0.0, None, None))
            out[m.slug] = (MeterReading(m.slug, customer, consumed, credited), modified)
        return out


def event(
    customer: str, name: str, metadata: Mapping[str, Any] | None = None, *, external_id: str | None = None
) -> Event:
    return validate_event(
        customer, name, dict(metadata or {}), external_id=external_id, now=datetime.now(UTC)
    )


# -- webhooks -----------------------------------------------------------------------------------------
def sign(
    body: str,
    secret: str,
    *,
    webhook_id: str | None = None,
    timestamp: int | None = None,
    key: bytes | None = None,
) -> dict[str, str]:
    """Headers Polar sends (``_webhook_event_send`` in server/polar/webhook/tasks.py): Standard
    Webhooks, HMAC-SHA256 over ``"{id}.{ts}.{body}"`` keyed by the secret's bytes (or ``key``), as
    ``v1,<base64>``."""
    webhook_id = webhook_id or str(uuid.uuid4())
    timestamp = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(
        key or secret.encode(), f"{webhook_id}.{timestamp}.{body}".encode(), hashlib.sha256
    ).digest()
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": "v1," + base64.b64encode(digest).decode(),
        "content-type": "application/json",
        "user-agent": "polar.sh webhooks",
    }


def _customer_fields(external_id: str | None) -> dict[str, Any]:
    now = datetime.now(UTC).isoformat()
    return {
        "id": str(uuid.uuid4()),
        "created_at": now,
        "modified_at": now,
        "metadata": {},
        "external_id": external_id,
        "email": "buyer@example.com",
        "email_verified": False,
        "type": "individual",
        "name": "Buyer",
        "billing_name": None,
        "billing_address": None,
        "tax_id": None,
        "locale": None,
        "organization_id": str(uuid.uuid4()),
        "default_payment_method_id": None,
        "deleted_at": None,
        "first_user_event_at": None,
        "avatar_url": None,
    }


def state_changed(external_id: str | None, consumed: float = 3.0, credited: int = 10) -> str:
    """A ``customer.state_changed`` body shaped like Polar's ``CustomerState``
    (server/polar/customer/schemas/state.py)."""
    now = datetime.now(UTC).isoformat()
    data = _customer_fields(external_id) | {
        "active_subscriptions": [],
        "granted_benefits": [],
        "active_meters": [
            {
                "id": str(uuid.uuid4()),
                "created_at": now,
                "modified_at": now,
                "meter_id": str(uuid.uuid4()),
                "consumed_units": consumed,
                "credited_units": credited,
                "balance": credited - consumed,
            }
        ],
    }
    return json.dumps(
        {"type": "customer.state_changed", "timestamp": now, "api_version": "2026-10", "data": data}
    )


def subscription_updated(external_id: str | None) -> str:
    """A ``subscription.updated`` body with the fields Polar's ``Subscription`` requires."""
    now = datetime.now(UTC).isoformat()
    customer = _customer_fields(external_id)
    product = {
        "id": str(uuid.uuid4()),
        "created_at": now,
        "modified_at": now,
        "trial_interval": None,
        "trial_interval_count": None,
        "name": "Pro",
        "description": None,
        "visibility": "public",
        "recurring_interval": "month",
        "recurring_interval_count": 1,
        "meter_interval": None,
        "meter_interval_count": None,
        "is_recurring": True,
        "is_archived": False,
        "organization_id": customer["organization_id"],
        "metadata": {},
        "is_deletable": False,
        "prices": [],
        "benefits": [],
        "medias": [],
        "attached_custom_fields": [],
    }
    data = {
        "created_at": now,
        "modified_at": now,
        "id": str(uuid.uuid4()),
        "amount": 1000,
        "currency": "usd",
        "recurring_interval": "month",
        "recurring_interval_count": 1,
        "status": "active",
        "current_period_start": now,
        "current_period_end": now,
        "current_meter_period_start": None,
        "current_meter_period_end": None,
        "trial_start": None,
        "trial_end": None,
        "cancel_at_period_end": False,
        "canceled_at": None,
        "started_at": now,
        "ends_at": None,
        "ended_at": None,
        "pause_at_period_end": False,
        "paused_at": None,
        "resumes_at": None,
        "customer_id": customer["id"],
        "product_id": product["id"],
        "discount_id": None,
        "checkout_id": None,
        "units": None,
        "customer_cancellation_reason": None,
        "customer_cancellation_comment": None,
        "metadata": {},
        "customer": customer,
        "product": product,
        "discount": None,
        "prices": [],
        "meters": [],
        "pending_update": None,
    }
    return json.dumps(
        {"type": "subscription.updated", "timestamp": now, "api_version": "2026-10", "data": data}
    )
