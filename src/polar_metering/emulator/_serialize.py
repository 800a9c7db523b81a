"""Engine records as Polar's JSON, shaped so ``polar-sdk``'s output dataclasses load them exactly.

Polar's timestamps are ISO-8601 in UTC with a ``Z``; ids are canonical lowercase UUID strings; list
endpoints wrap items in ``{items, pagination: {total_count, max_page}}`` (``server/polar/kit/pagination.py``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from polar_metering._catalog import Aggregation, Filter, FilterClause

if TYPE_CHECKING:
    from polar_metering.backends._engine.records import (
        CustomerMeterRecord,
        CustomerRecord,
        MeterRecord,
        StoredEvent,
    )

__all__ = [
    "customer_json",
    "customer_meter_json",
    "customer_state_json",
    "event_json",
    "iso",
    "list_json",
    "meter_json",
    "quantities_json",
    "state_meter_json",
]

# The labels Polar gives its own metering events (server/polar/event/system.py).
_SYSTEM_LABELS = {"meter.credited": "Meter Credited", "meter.reset": "Meter Reset"}


def iso(when: datetime | None) -> str | None:
    """``2026-01-02T03:04:05.123456Z``: UTC with the ``Z`` suffix pydantic gives Polar's output."""
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _number(value: float) -> float:
    # JSON has no NaN or infinity; the engine never produces them, but a bad row must not break JSON.
    return float(value) if math.isfinite(value) else 0.0


def _whole(value: float) -> int:
    # Polar's credited_units and credit-event units are integers (int32 in the meter-credit benefit).
    return round(value) if math.isfinite(value) else 0


def list_json(items: list[dict[str, Any]], total: int, limit: int) -> dict[str, Any]:
    """Polar's list envelope; ``max_page`` is ``ceil(total / limit)``, 0 when empty."""
    return {"items": items, "pagination": {"total_count": total, "max_page": math.ceil(total / limit)}}


def customer_json(customer: CustomerRecord, org_id: str) -> dict[str, Any]:
    """A ``Customer``. Without an email it is a team customer: Polar's individual customers always
    carry one, and only the team variant may omit it."""
    return {
        "id": customer.id,
        "created_at": iso(customer.created_at),
        "modified_at": iso(customer.modified_at),
        "metadata": dict(customer.metadata),
        "external_id": customer.external_id,
        "email": customer.email,
        "email_verified": False,
        "type": "individual" if customer.email else "team",
        "name": customer.name,
        "billing_name": customer.name,
        "billing_address": None,
        "tax_id": None,
        "locale": None,
        "organization_id": org_id,
        "default_payment_method_id": None,
        "deleted_at": None,
        "first_user_event_at": None,
        "avatar_url": None,
    }


def _clause_json(clause: Filter | FilterClause) -> dict[str, Any]:
    if isinstance(clause, Filter):
        return _filter_json(clause)
    return {"property": clause.property, "operator": clause.operator, "value": clause.value}


def _filter_json(flt: Filter) -> dict[str, Any]:
    return {"conjunction": flt.conjunction, "clauses": [_clause_json(c) for c in flt.clauses]}


def _aggregation_json(agg: Aggregation) -> dict[str, Any]:
    if agg.func == "count":
        return {"func": "count"}
    return {"func": agg.func, "property": agg.property}


def meter_json(meter: MeterRecord, org_id: str) -> dict[str, Any]:
    """A ``Meter`` (``meter/schemas.py``); property names are returned without the ``metadata.`` prefix."""
    return {
        "metadata": dict(meter.metadata),
        "created_at": iso(meter.created_at),
        "modified_at": iso(meter.modified_at),
        "id": meter.id,
        "name": meter.name,
        "unit": meter.unit,
        "custom_label": meter.custom_label,
        "custom_multiplier": meter.custom_multiplier,
        "filter": _filter_json(meter.filter),
        "aggregation": _aggregation_json(meter.aggregation),
        "organization_id": org_id,
        "archived_at": iso(meter.archived_at),
    }


def _user_meta(name: str, metadata: dict[str, Any]) -> dict[str, Any]:
    out = dict(metadata)
    cost = out.get("_cost")
    if isinstance(cost, dict) and "amount" in cost:
        # The SDK's CostMetadataOutput types the amount as a string (a Decimal on Polar's side).
        out["_cost"] = {**cost, "amount": str(cost["amount"])}
    return out


def _system_metadata(name: str, metadata: dict[str, Any]) -> dict[str, Any]:
    if name == "meter.credited":
        return {
            "meter_id": str(metadata.get("meter_id", "")),
            "units": _whole(float(metadata.get("units", 0))),
            "rollover": bool(metadata.get("rollover", False)),
        }
    if name == "meter.reset":
        return {"meter_id": str(metadata.get("meter_id", ""))}
    return dict(metadata)


def event_json(event: StoredEvent, org_id: str, customer: CustomerRecord | None) -> dict[str, Any]:
    """A ``UserEvent`` or a metering ``SystemEvent``.

    ``customer`` is resolved at read time: an external-customer event shows its customer once one
    with that ``external_id`` exists, while ``customer_id`` stays null.
    """
    system = event.source == "system"
    return {
        "id": event.id,
        "timestamp": iso(event.timestamp),
        "organization_id": org_id,
        "customer_id": event.customer_id,
        "customer": customer_json(customer, org_id) if customer is not None else None,
        "external_customer_id": event.external_customer_id,
        "member_id": None,
        "external_member_id": None,
        "child_count": 0,
        "parent_id": None,
        "label": _SYSTEM_LABELS.get(event.name, event.name) if system else event.name,
        "name": event.name,
        "source": "system" if system else "user",
        "metadata": (_system_metadata if system else _user_meta)(event.name, event.metadata),
    }


def customer_meter_json(record: CustomerMeterRecord, org_id: str) -> dict[str, Any]:
    """A ``CustomerMeter`` with its full customer and meter (``server/polar/customer_meter/schemas.py``)."""
    return {
        "id": record.id,
        "created_at": iso(record.created_at),
        "modified_at": iso(record.modified_at),
        "customer_id": record.customer.id,
        "meter_id": record.meter.id,
        "consumed_units": _number(record.consumed_units),
        "credited_units": _whole(record.credited_units),
        "balance": _number(record.balance),
        "customer": customer_json(record.customer, org_id),
        "meter": meter_json(record.meter, org_id),
    }


def state_meter_json(record: CustomerMeterRecord) -> dict[str, Any]:
    """A ``CustomerStateMeter`` (``server/polar/customer/schemas/state.py``)."""
    return {
        "id": record.id,
        "created_at": iso(record.created_at),
        "modified_at": iso(record.modified_at),
        "meter_id": record.meter.id,
        "consumed_units": _number(record.consumed_units),
        "credited_units": _whole(record.credited_units),
        "balance": _number(record.balance),
    }


def customer_state_json(
    customer: CustomerRecord,
    meters: Iterable[CustomerMeterRecord],
    org_id: str,
    *,
    subscriptions: Sequence[dict[str, Any]] = (),
    grants: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    """A ``CustomerState``: the customer plus ``active_subscriptions``, ``granted_benefits`` and
    ``active_meters``, ordered by ``created_at`` (``server/polar/customer/schemas/state.py``)."""
    rows = sorted(meters, key=lambda r: (r.created_at, r.id))
    return {
        **customer_json(customer, org_id),
        "active_subscriptions": list(subscriptions),
        "granted_benefits": list(grants),
        "active_meters": [state_meter_json(r) for r in rows],
    }


def quantities_json(points: Sequence[tuple[datetime, float]], total: float) -> dict[str, Any]:
    """``MeterQuantities`` (``server/polar/meter/schemas.py``)."""
    return {
        "quantities": [{"timestamp": iso(ts), "quantity": _number(q)} for ts, q in points],
        "total": _number(total),
    }
