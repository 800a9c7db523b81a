"""What the emulator does in the background: billing passes, the end of balance debounces, and
webhook deliveries, from one thread that ticks while the app runs (Starlette lifespan).

:class:`Notifier` turns emulator actions into the webhook events Polar sends for them: a settled
recompute is ``customer.state_changed`` (``server/polar/customer_meter/service.py`` enqueues it
after each update that changed a meter); a subscription is ``subscription.created``, ``.active``
and ``.updated`` followed by a ``benefit_grant.created`` per credited meter; a credit grant is a
``benefit_grant.created`` (``.revoked`` for negative units); a customer is ``customer.created``.
``customer.state_changed`` events for one customer that pile up within one tick go out as one.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from polar_metering.emulator import _payloads as hooks
from polar_metering.emulator import _serialize as out

if TYPE_CHECKING:
    from datetime import datetime

    from polar_metering._catalog import Plan
    from polar_metering.backends._engine.backend import LocalEngine
    from polar_metering.backends._engine.records import CustomerMeterRecord, CustomerRecord, MeterRecord
    from polar_metering.emulator._billing import BillingSchedule
    from polar_metering.emulator._commerce import Commerce
    from polar_metering.emulator._settle import SettledBalances
    from polar_metering.emulator._webhooks import WebhookSender

__all__ = ["Notifier", "Ticker"]

logger = logging.getLogger("polar_metering.emulator")


class Notifier:
    """Builds and queues webhook events; without a sender every method does nothing."""

    def __init__(
        self, engine: LocalEngine, settled: SettledBalances, org_id: str, sender: WebhookSender | None
    ) -> None:
        self.engine = engine
        self.settled = settled
        self.org_id = org_id
        self.sender = sender
        self._changed: set[str] = set()
        self._lock = threading.Lock()
        #: products and subscriptions, set once the emulator has built them (they send through this)
        self.commerce: Commerce | None = None
        if sender is not None:
            settled.on_settled = self.balances_changed

    @property
    def enabled(self) -> bool:
        return self.sender is not None

    def state_json(self, customer: CustomerRecord, rows: Sequence[CustomerMeterRecord]) -> dict[str, Any]:
        """The customer's ``CustomerState``, subscriptions and benefit grants included."""
        commerce = self.commerce
        subs = [] if commerce is None else commerce.active_subscriptions(customer.id)
        grants = [] if commerce is None else commerce.active_grants(customer.id)
        return out.customer_state_json(
            customer,
            rows,
            self.org_id,
            subscriptions=[commerce.state_subscription_json(s) for s in subs] if commerce else [],
            grants=[commerce.state_grant_json(g) for g in grants] if commerce else [],
        )

    def _now(self) -> datetime:
        return self.engine.clock.now()

    def _send(self, event_type: str, data: dict[str, object]) -> None:
        assert self.sender is not None
        self.sender.send(event_type, out.iso(self._now()) or "", data)

    def balances_changed(self, customer_ids: Sequence[str]) -> None:
        """Called by the debounce when customers' balances were recomputed."""
        if self.sender is not None:
            with self._lock:
                self._changed.update(customer_ids)

    def flush_state_changes(self) -> int:
        """Send one ``customer.state_changed`` per customer whose balances changed since the last call."""
        with self._lock:
            changed, self._changed = sorted(self._changed), set()
        sent = 0
        for customer_id in changed:
            customer = self.engine.get_customer(customer_id)
            if customer is None:
                continue  # a customer key without a Polar customer: Polar has no state for it
            meter_ids = [m.id for m in self.engine.list_meters(include_archived=True)]
            rows = self.settled.rows(customer_ids=[customer.id], meter_ids=meter_ids)
            self._send("customer.state_changed", self.state_json(customer, rows))
            sent += 1
        return sent

    def commerce_event(
        self, event_type: str, data: dict[str, Any], *, customer_id: str | None = None
    ) -> None:
        """A ``subscription.*`` or ``benefit_grant.*`` event of ``/v1/subscriptions`` and products:
        ``data`` is already in Polar's shape (``_commerce``)."""
        if self.sender is None:
            return
        self._send(event_type, data)
        affected = customer_id or data.get("customer_id")
        if isinstance(affected, str):
            self.balances_changed([affected])

    def customer_created(self, customer: CustomerRecord) -> None:
        if self.sender is not None:
            self._send("customer.created", out.customer_json(customer, self.org_id))
            self.balances_changed([customer.id])

    def _meters(self) -> dict[str, MeterRecord]:
        found: dict[str, MeterRecord] = {}
        for m in self.engine.list_meters(include_archived=True):
            found[m.id] = m
            if m.slug:
                found[m.slug] = m
        return found

    def subscribed(self, customer: CustomerRecord, plan: Plan, started_at: datetime) -> None:
        if self.sender is None:
            return
        now = self._now()
        meters = self._meters()
        subscription = hooks.subscription_json(customer, plan, meters, self.org_id, started_at, now)
        for kind in ("created", "active", "updated"):
            self._send(f"subscription.{kind}", subscription)
        for key, units in plan.credits.items():
            if key in meters:
                grant = hooks.benefit_grant_json(
                    customer, plan, meters[key], units, self.org_id, now, subscription_id=subscription["id"]
                )
                self._send("benefit_grant.created", grant)
        self.balances_changed([customer.id])

    def granted(self, customer: CustomerRecord, meter: MeterRecord, units: float, rollover: bool) -> None:
        if self.sender is None:
            return
        grant = hooks.benefit_grant_json(
            customer, None, meter, units, self.org_id, self._now(), rollover=rollover
        )
        self._send("benefit_grant.revoked" if units < 0 else "benefit_grant.created", grant)
        self.balances_changed([customer.id])


class Ticker:
    """A daemon thread doing the background work every ``period`` seconds until :meth:`stop`."""

    def __init__(
        self,
        notifier: Notifier,
        billing: BillingSchedule,
        settled: SettledBalances,
        *,
        period: float = 0.05,
    ) -> None:
        self.notifier = notifier
        self.billing = billing
        self.settled = settled
        self.period = period
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self) -> None:
        """One round of background work (also called directly by tests)."""
        self.billing.tick()
        if self.notifier.commerce is not None:
            self.notifier.commerce.tick()
        self.settled.sweep()
        if self.notifier.sender is not None:
            self.notifier.flush_state_changes()
            self.notifier.sender.deliver_due()

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            try:
                self.tick()
            except Exception:  # the emulator keeps serving whatever one round hit
                logger.exception("emulator: background work failed")

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="polar-emulator-tick", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
            self._thread = None
        if self.notifier.sender is not None:
            self.notifier.sender.close()
