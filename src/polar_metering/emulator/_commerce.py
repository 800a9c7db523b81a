"""Products, meter-credit benefits and subscriptions, with the credits Polar grants for them.

What the emulator stores (``pm_polar_objects``, one JSON document each) and how credits move, after
Polar's server at c6c3645:

- A subscription can only be created on a free recurring product (``server/polar/subscription/
  service.py`` ``create``). Each of the product's ``meter_credit`` benefits is granted: a
  ``meter.credited`` event of its units (``server/polar/benefit/strategies/meter_credit/service.py``
  ``grant``); usage is not reset (``reset_meters`` resets only meters with a metered price).
- A second subscription of the same customer to the same product is a second subscription, and its
  benefits are granted again: the credit doubles, as on Polar.
- A product change keeps the grants of benefits both products carry, revokes the others (minus the
  units last credited, ``revoke``) and grants the new product's (``benefit/grant/service.py``
  ``enqueue_benefits_grants``). The period is kept unless the interval changes
  (``subscription/update.py``).
- ``cancel_at_period_end`` keeps everything until the period ends; then the subscription is
  canceled and its benefits revoked (``subscription/service.py`` ``cycle``). Revoking (``DELETE``, or
  ``revoke: true``) does that at once.
- At each period end an active subscription renews: every meter-credit grant cycles, the credit
  of the period before rolling over where the benefit says so, plus the units again (``cycle``).

Billing periods reach the engine through ``follow_period``: a customer's usage windows follow the
periods of its oldest active subscription. Credits reach it as grants. Where several subscriptions
with different periods overlap, the customer's meter follows the oldest one's (see
``docs/emulator.md``).
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from polar_metering._catalog import Plan
from polar_metering._periods import period_containing
from polar_metering.backends._engine.lifecycle import EMULATOR_PLAN_PREFIX
from polar_metering.backends._engine.objects import PolarObjects
from polar_metering.backends._engine.timekeeping import from_us, to_us
from polar_metering.emulator._commerce_json import CommerceJSON
from polar_metering.emulator._errors import RequestRejected, error_item
from polar_metering.emulator._serialize import iso

if TYPE_CHECKING:
    from polar_metering.backends._engine.backend import LocalEngine
    from polar_metering.backends._engine.records import CustomerRecord
    from polar_metering.emulator._notify import Notifier

__all__ = ["ACTIVE", "BILLABLE", "Commerce", "is_free"]

#: Polar's active and billable statuses (``server/polar/models/subscription.py``)
ACTIVE = frozenset({"active", "trialing"})
BILLABLE = ACTIVE | {"past_due"}
_CANCELED_MSG = "This subscription is already canceled or will be at the end of the period."


def polar_error(status: int, error: str, detail: str) -> RequestRejected:
    """One of Polar's ``PolarError`` bodies: ``{"error": <class name>, "detail": <message>}``."""
    return RequestRejected([], status_code=status, body={"error": error, "detail": detail})


def invalid(loc: list[str | int], msg: str, value: Any) -> RequestRejected:
    """A check Polar's service runs after the schema: ``PolarRequestValidationError``."""
    return RequestRejected([error_item("value_error", loc, msg, value)], error="PolarRequestValidationError")


def is_free(product: dict[str, Any]) -> bool:
    """Polar's rule: the default price (the first static one) is free, i.e. a fixed price of 0
    (``product/price_set.py`` ``get_default_price``, ``models/product_price.py`` ``is_free``)."""
    prices = [p for p in product["prices"] if not p.get("is_archived")]
    static = [p for p in prices if p["amount_type"] in ("fixed", "custom", "seat_based")]
    default = static[0] if static else (prices[0] if prices else None)
    return default is not None and default["amount_type"] == "fixed" and default.get("price_amount") == 0


class Commerce(CommerceJSON):
    """The emulated organization's products, benefits and subscriptions over one engine."""

    def __init__(
        self,
        engine: LocalEngine,
        org_id: str,
        notifier: Notifier,
        *,
        on_credit: Callable[[str], object] | None = None,
    ) -> None:
        self.engine = engine
        self.org_id = org_id
        self.notifier = notifier
        #: called with a customer's id after its credit changed (the emulator settles its balances,
        #: as Polar recomputes a customer meter right after a credit event)
        self.on_credit = on_credit
        self.objects = PolarObjects(engine.db, lambda: to_us(engine.clock.now()))
        # Subscription changes and renewals read, decide and write several documents: one at a time.
        self._lock = threading.RLock()
        # The earliest period end among active subscriptions, so that the tick before every request
        # costs no query until one is due (None: not known yet, read on the next tick).
        self._next_due_us: int | None = None

    def _now(self) -> datetime:
        return self.engine.clock.now()

    # -- products and benefits ---------------------------------------------------------------------
    def product(self, product_id: str) -> dict[str, Any] | None:
        return self.objects.get("product", product_id)

    def products(self) -> list[dict[str, Any]]:
        return self.objects.all("product")

    def benefit(self, benefit_id: str) -> dict[str, Any] | None:
        return self.objects.get("benefit", benefit_id)

    def benefits(self) -> list[dict[str, Any]]:
        return self.objects.all("benefit")

    def create_product(
        self,
        *,
        name: str,
        description: str | None,
        visibility: str,
        recurring_interval: str | None,
        recurring_interval_count: int | None,
        prices: list[dict[str, Any]],
        metadata: dict[str, Any],
    ) -> dict[str, Any]:
        now = iso(self._now())
        product_id = str(uuid.uuid4())
        stored_prices = [
            {**price, "id": str(uuid.uuid4()), "created_at": now, "modified_at": None, "is_archived": False}
            for price in prices
        ]
        product = {
            "id": product_id,
            "created_at": now,
            "modified_at": None,
            "name": name,
            "description": description,
            "visibility": visibility,
            "recurring_interval": recurring_interval,
            "recurring_interval_count": recurring_interval_count,
            "is_archived": False,
            "metadata": metadata,
            "prices": stored_prices,
            "benefit_ids": [],
        }
        self.objects.put("product", product_id, product)
        return product

    def update_product(self, product: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
        updated = {**product, **changes, "modified_at": iso(self._now())}
        self.objects.put("product", product["id"], updated)
        return updated

    def set_benefits(self, product: dict[str, Any], benefit_ids: list[str]) -> dict[str, Any]:
        """``POST /v1/products/{id}/benefits``: the product now carries exactly these benefits.
        Active subscriptions gain the new ones and lose the dropped ones, as Polar re-syncs them
        (``subscription/service.py`` ``update_product_benefits_grants``)."""
        with self._lock:
            updated = self.update_product(product, {"benefit_ids": list(dict.fromkeys(benefit_ids))})
            for sub in self.objects.all("subscription"):
                if sub["product_id"] == product["id"] and sub["status"] in ACTIVE:
                    self._sync_grants(sub, updated)
            return updated

    def create_benefit(
        self,
        *,
        description: str,
        metadata: dict[str, Any],
        visibility: str | None,
        properties: dict[str, Any],
    ) -> dict[str, Any]:
        benefit_id = str(uuid.uuid4())
        benefit = {
            "id": benefit_id,
            "created_at": iso(self._now()),
            "modified_at": None,
            "type": "meter_credit",
            "description": description,
            "metadata": metadata,
            "visibility": visibility or "public",
            "properties": properties,
        }
        self.objects.put("benefit", benefit_id, benefit)
        return benefit

    def update_benefit(self, benefit: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
        """A benefit's new properties apply to grants made from now on: Polar's meter-credit strategy
        never updates existing grants (``requires_update`` is false)."""
        updated = {**benefit, **changes, "modified_at": iso(self._now())}
        self.objects.put("benefit", benefit["id"], updated)
        return updated

    def _product_benefits(self, product: dict[str, Any]) -> list[dict[str, Any]]:
        found = (self.benefit(bid) for bid in product.get("benefit_ids", []))
        return [b for b in found if b is not None]

    # -- subscriptions --------------------------------------------------------------------------------
    def subscription(self, subscription_id: str) -> dict[str, Any] | None:
        return self.objects.get("subscription", subscription_id)

    def subscriptions(self, customer_id: str | None = None) -> list[dict[str, Any]]:
        return self.objects.all("subscription", customer_id=customer_id)

    def active_subscriptions(self, customer_id: str) -> list[dict[str, Any]]:
        subs = [s for s in self.subscriptions(customer_id) if s["status"] in ACTIVE]
        return sorted(subs, key=lambda s: (s["started_us"], s["id"]))

    def active_grants(self, customer_id: str) -> list[dict[str, Any]]:
        return [
            g
            for g in self.objects.all("grant", customer_id=customer_id)
            if g["revoked_at"] is None and g["subscription_id"] is not None
        ]

    def _save(self, sub: dict[str, Any]) -> None:
        sub["modified_at"] = iso(self._now())
        self.objects.put("subscription", sub["id"], sub, customer_id=sub["customer_id"])
        if sub["status"] in ACTIVE and self._next_due_us is not None:
            self._next_due_us = min(self._next_due_us, sub["period_end_us"])

    def _period_plan(self, interval: str) -> Plan:
        # A plan that credits nothing: the customer's windows follow the subscription's periods,
        # and credit comes from the benefit grants alone.
        return Plan(f"{EMULATOR_PLAN_PREFIX}{interval}", credits={}, interval=interval)  # type: ignore[arg-type]

    def create_subscription(
        self, customer: CustomerRecord, product: dict[str, Any], metadata: dict[str, Any]
    ) -> dict[str, Any]:
        with self._lock:
            now = self._now()
            interval = product["recurring_interval"]
            start, end = period_containing(now, interval, now)
            first = not self.active_subscriptions(customer.id)
            sub = {
                "id": str(uuid.uuid4()),
                "created_at": iso(now),
                "modified_at": None,
                "customer_id": customer.id,
                "product_id": product["id"],
                "status": "active",
                "amount": 0,
                "recurring_interval": interval,
                "started_us": to_us(now),
                "period_start_us": to_us(start),
                "period_end_us": to_us(end),
                "cancel_at_period_end": False,
                "canceled_at": None,
                "ends_at": None,
                "ended_at": None,
                "metadata": metadata,
            }
            self._save(sub)
            if first:
                self.engine.follow_period(customer.id, self._period_plan(interval), now)
            self._sync_grants(sub, product)
            self._notify_subscription(sub, ("created", "active", "updated"))
            return sub

    def _sync_grants(self, sub: dict[str, Any], product: dict[str, Any] | None) -> None:
        """Grant the product's meter-credit benefits the subscription lacks and revoke the grants of
        benefits the product no longer carries (all of them when ``product`` is ``None``)."""
        wanted = {b["id"]: b for b in (self._product_benefits(product) if product is not None else [])}
        held = {
            g["benefit_id"]: g
            for g in self.objects.all("grant", customer_id=sub["customer_id"])
            if g["subscription_id"] == sub["id"] and g["revoked_at"] is None
        }
        for benefit_id, grant in held.items():
            if benefit_id not in wanted:
                self._revoke_grant(grant)
        for benefit_id, benefit in wanted.items():
            if benefit_id not in held:
                self._grant(sub, benefit)

    def _grant(self, sub: dict[str, Any], benefit: dict[str, Any]) -> None:
        props = benefit["properties"]
        now = iso(self._now())
        if self.engine.get_meter(props["meter_id"]) is None:
            return  # a benefit on a meter deleted since: nothing to credit
        self.engine.grant_credits(
            sub["customer_id"], props["meter_id"], props["units"], rollover=props["rollover"]
        )
        grant = {
            "id": str(uuid.uuid4()),
            "created_at": now,
            "modified_at": now,
            "subscription_id": sub["id"],
            "customer_id": sub["customer_id"],
            "benefit_id": benefit["id"],
            "granted_at": now,
            "revoked_at": None,
            "rollover": props["rollover"],
            "properties": {
                "last_credited_meter_id": props["meter_id"],
                "last_credited_units": props["units"],
                "last_credited_at": now,
            },
        }
        self.objects.put("grant", grant["id"], grant, customer_id=sub["customer_id"])
        self.notifier.commerce_event("benefit_grant.created", self.grant_json(grant))

    def _revoke_grant(self, grant: dict[str, Any]) -> None:
        props = grant["properties"]
        # Polar's revoke credits minus the units last credited (meter_credit/service.py revoke).
        self.engine.grant_credits(
            grant["customer_id"],
            props["last_credited_meter_id"],
            -props["last_credited_units"],
            rollover=grant["rollover"],
        )
        now = iso(self._now())
        grant.update(revoked_at=now, modified_at=now)
        self.objects.put("grant", grant["id"], grant, customer_id=grant["customer_id"])
        self.notifier.commerce_event("benefit_grant.revoked", self.grant_json(grant))

    def change_product(self, sub: dict[str, Any], product: dict[str, Any]) -> dict[str, Any]:
        """``PATCH {product_id}``: Polar refuses it on a canceled subscription (403)."""
        with self._lock:
            if sub["status"] not in ACTIVE or sub["cancel_at_period_end"]:
                raise polar_error(403, "AlreadyCanceledSubscription", _CANCELED_MSG)
            now = self._now()
            if product["recurring_interval"] != sub["recurring_interval"]:
                start, end = period_containing(now, product["recurring_interval"], now)
                sub.update(
                    recurring_interval=product["recurring_interval"],
                    period_start_us=to_us(start),
                    period_end_us=to_us(end),
                    started_us=to_us(now),
                )
                if self._is_primary(sub):
                    self.engine.follow_period(
                        sub["customer_id"], self._period_plan(sub["recurring_interval"]), now
                    )
            sub["product_id"] = product["id"]
            self._save(sub)
            self._sync_grants(sub, product)
            self._notify_subscription(sub, ("updated",))
            return sub

    def _is_primary(self, sub: dict[str, Any]) -> bool:
        active = self.active_subscriptions(sub["customer_id"])
        return bool(active) and active[0]["id"] == sub["id"]

    def cancel(
        self, sub: dict[str, Any], *, at_period_end: bool, reason: str | None, comment: str | None
    ) -> dict[str, Any]:
        """``cancel_at_period_end: true|false`` (``_perform_cancellation`` / ``uncancel``)."""
        with self._lock:
            if at_period_end:
                if sub["status"] not in BILLABLE or sub["cancel_at_period_end"]:
                    raise polar_error(403, "AlreadyCanceledSubscription", _CANCELED_MSG)
                sub.update(
                    cancel_at_period_end=True,
                    canceled_at=iso(self._now()),
                    ends_at=iso(from_us(sub["period_end_us"])),
                    customer_cancellation_reason=reason,
                    customer_cancellation_comment=comment,
                )
                if self._is_primary(sub):
                    self.engine.end_period(sub["customer_id"], from_us(sub["period_end_us"]))
            else:
                if sub["ended_at"] is not None:
                    raise polar_error(410, "ResourceUnavailable", "Unavailable")
                if not sub["cancel_at_period_end"]:
                    raise polar_error(400, "BadRequest", "Bad request")
                sub.update(
                    cancel_at_period_end=False,
                    canceled_at=None,
                    ends_at=None,
                    customer_cancellation_reason=None,
                    customer_cancellation_comment=None,
                )
                if self._is_primary(sub):
                    self.engine.end_period(sub["customer_id"], None)
            self._save(sub)
            self._notify_subscription(sub, ("updated",) if not at_period_end else ("updated", "canceled"))
            return sub

    def revoke(
        self, sub: dict[str, Any], *, reason: str | None = None, comment: str | None = None
    ) -> dict[str, Any]:
        """Cancel now and revoke the benefits; usage is kept."""
        with self._lock:
            if sub["status"] not in BILLABLE:
                raise polar_error(403, "AlreadyCanceledSubscription", _CANCELED_MSG)
            primary = self._is_primary(sub)
            now = iso(self._now())
            sub.update(
                status="canceled",
                canceled_at=now,
                ends_at=now,
                ended_at=now,
                customer_cancellation_reason=reason or sub.get("customer_cancellation_reason"),
                customer_cancellation_comment=comment or sub.get("customer_cancellation_comment"),
            )
            self._save(sub)
            self._sync_grants(sub, None)
            if primary:
                self._follow_next(sub, from_us(sub["period_end_us"]))
            self._notify_subscription(sub, ("updated", "canceled", "revoked"))
            return sub

    def _follow_next(self, ended: dict[str, Any], until: datetime) -> None:
        """After the customer's oldest active subscription ended: its windows follow the next one,
        or, with none left, keep the ended one's period until ``until`` (usage is not reset)."""
        rest = self.active_subscriptions(ended["customer_id"])
        if rest:
            nxt = rest[0]
            self.engine.follow_period(
                ended["customer_id"], self._period_plan(nxt["recurring_interval"]), from_us(nxt["started_us"])
            )
        else:
            self.engine.end_period(ended["customer_id"], until)

    # -- renewals ------------------------------------------------------------------------------------------
    def tick(self) -> int:
        """Renew or end every active subscription whose period is over; returns how many moved."""
        now_us = to_us(self._now())
        if self._next_due_us is not None and now_us < self._next_due_us:
            return 0
        with self._lock:
            active = [s for s in self.objects.all("subscription") if s["status"] in ACTIVE]
            due = sorted(
                (s for s in active if s["period_end_us"] <= now_us),
                key=lambda s: (s["period_end_us"], s["id"]),
            )
            for sub in due:
                self._cycle(sub, now_us)
            ends = [s["period_end_us"] for s in self.objects.all("subscription") if s["status"] in ACTIVE]
            self._next_due_us = min(ends, default=2**62)
        for customer_id in sorted({s["customer_id"] for s in due}):
            self._credited(customer_id)
        return len(due)

    def _credited(self, customer_id: str) -> None:
        if self.on_credit is not None:
            self.on_credit(customer_id)

    def _cycle(self, sub: dict[str, Any], now_us: int) -> None:
        if sub["cancel_at_period_end"]:
            primary = self._is_primary(sub)
            end = iso(from_us(sub["period_end_us"]))
            sub.update(status="canceled", ended_at=end)
            self._save(sub)
            self._sync_grants(sub, None)
            if primary:
                self._follow_next(sub, from_us(sub["period_end_us"]))
            self._notify_subscription(sub, ("updated", "canceled", "revoked"))
            return
        # Several periods may have gone by (a clock moved by hand): the credit renews once, into the
        # window the customer is in now.
        anchor, interval = from_us(sub["started_us"]), sub["recurring_interval"]
        start, stop = period_containing(anchor, interval, from_us(now_us))
        sub.update(period_start_us=to_us(start), period_end_us=to_us(stop))
        self._save(sub)
        for grant in self.active_grants(sub["customer_id"]):
            if grant["subscription_id"] != sub["id"]:
                continue
            benefit = self.benefit(grant["benefit_id"])
            if benefit is None:
                continue
            props = benefit["properties"]
            if self.engine.get_meter(props["meter_id"]) is None:
                continue
            self.engine.cycle_credit(
                sub["customer_id"], props["meter_id"], props["units"], rollover=props["rollover"]
            )
            now = iso(from_us(now_us))
            grant.update(
                modified_at=now,
                rollover=props["rollover"],
                properties={
                    "last_credited_meter_id": props["meter_id"],
                    "last_credited_units": props["units"],
                    "last_credited_at": now,
                },
            )
            self.objects.put("grant", grant["id"], grant, customer_id=grant["customer_id"])
            self.notifier.commerce_event("benefit_grant.cycled", self.grant_json(grant))
        self._notify_subscription(sub, ("updated", "cycled"))

    def _notify_subscription(self, sub: dict[str, Any], kinds: Iterable[str]) -> None:
        if not self.notifier.enabled:
            return
        body = self.subscription_json(sub)
        for kind in kinds:
            self.notifier.commerce_event(f"subscription.{kind}", body, customer_id=sub["customer_id"])

    # -- customers ---------------------------------------------------------------------------------------
    def has_billable_subscription(self, customer_id: str) -> bool:
        return any(s["status"] in BILLABLE for s in self.subscriptions(customer_id))

    def listing_key(self, name: str) -> Callable[[dict[str, Any]], Any]:
        """Sort keys for ``GET /v1/subscriptions/``' ``sorting``."""
        keys: dict[str, Callable[[dict[str, Any]], Any]] = {
            "started_at": lambda s: s["started_us"],
            "current_period_end": lambda s: s["period_end_us"],
            "ended_at": lambda s: s["ended_at"],
            "ends_at": lambda s: s["ends_at"],
            "amount": lambda s: s["amount"],
            "status": lambda s: s["status"],
            "customer": lambda s: s["customer_id"],
            "product": lambda s: s["product_id"],
            "discount": lambda s: None,
        }
        return keys[name]
