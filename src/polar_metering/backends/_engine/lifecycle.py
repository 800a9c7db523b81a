"""The engine's customer lifecycle: subscribing (idempotent, with plan changes), cancelling at the
end of the period, reading a customer's subscription, and listing customers and plans.

A plan stands for a Polar product carrying one meter-credit benefit per meter, and the rules follow
what Polar does with one (``docs/semantics.md``, "Plans and subscriptions"; files of
``polarsource/polar`` at c6c3645):

- **Subscribing** adds the plan's units to the credit of the window the customer is in and keeps
  its usage: Polar resets only meters with a metered price (``server/polar/subscription/service.py``
  ``reset_meters``), and a benefit grant adds a ``meter.credited`` event
  (``server/polar/benefit/strategies/meter_credit/service.py``).
- **The same plan again** changes nothing. Polar would create a second subscription and credit the
  units twice; making the call safe to repeat (a signup route hit twice) is this library's choice.
- **Another plan** is a plan change: the old plan's units are taken back and the new plan's granted,
  as Polar revokes the benefits the new product lacks and grants the ones it adds
  (``server/polar/benefit/grant/service.py`` ``enqueue_benefits_grants``); usage is kept. The period
  continues when both plans renew at the same interval and a new one starts now when they differ
  (``server/polar/subscription/update.py``, ``is_interval_changed``).
- **Cancelling** keeps the plan until the end of the current period, as Polar keeps a subscription
  with ``cancel_at_period_end`` active until its cycle ends it (``subscription/service.py``
  ``cycle``); after that the customer has no plan (the default plan, if the catalog names one).
  Subscribing to the same plan before then undoes the cancellation.

The rest of the engine (windows, credits, rollups) lives in ``backend.py``; this mixin only uses it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, func, select, union, update
from sqlalchemy.engine import Connection

from polar_metering._catalog import Plan
from polar_metering._exceptions import ConfigurationError
from polar_metering._periods import period_containing
from polar_metering._subscriptions import Customer, Page, Subscription
from polar_metering.backends._engine import schema as t
from polar_metering.backends._engine.dialect import insert_ignore
from polar_metering.backends._engine.timekeeping import from_us, to_us

if TYPE_CHECKING:
    from polar_metering._catalog import Catalog
    from polar_metering.backends._engine.backend import Credit, Window
    from polar_metering.backends._engine.dialect import Database
    from polar_metering.backends._engine.rollups import CompiledMeter
    from polar_metering.backends._engine.timekeeping import EngineTime

__all__ = ["EMULATOR_PLAN_PREFIX", "Lifecycle"]

#: plans the emulator keeps for itself (a billing period, no credits); never listed as the app's plans
EMULATOR_PLAN_PREFIX = "emulator:"


class Lifecycle:
    """Mixed into :class:`~polar_metering.backends._engine.backend.LocalEngine`."""

    if TYPE_CHECKING:  # provided by LocalEngine
        db: Database
        time: EngineTime
        catalog: Catalog
        _meters: dict[str, CompiledMeter]

        def _plan(self, conn: Connection, name: str | None) -> Plan | None: ...

        def _store_plan(self, conn: Connection, plan: Plan) -> None: ...

        def _window(self, conn: Connection, customer: str, now: datetime) -> Window: ...

        def _window_of(self, conn: Connection, acct: Any, now: datetime) -> Window: ...

        def _usage_row(
            self, conn: Connection, customer: str, meter: CompiledMeter, window: Window, *, lock: bool
        ) -> Any: ...

        def _initial_credit(
            self, conn: Connection, customer: str, meter: CompiledMeter, window: Window
        ) -> Credit | None: ...

        def _rebuild_customer(self, conn: Connection, customer: str, meter_id: str | None = None) -> None: ...

        def _customer_key(self, conn: Connection, customer_id: str) -> str: ...

    # -- the account -----------------------------------------------------------------------------
    @staticmethod
    def _account(conn: Connection, customer: str, *, lock: bool = False) -> Any:
        query = select(t.accounts).where(t.accounts.c.customer == customer)
        return conn.execute(query.with_for_update() if lock else query).first()

    def _locked_account(self, conn: Connection, customer: str) -> Any:
        """The account row, created empty if missing and locked (PostgreSQL), so that concurrent
        subscribe and cancel calls for one customer take turns. An empty row means what no row
        means: no plan, calendar-month windows."""
        conn.execute(
            insert_ignore(self.db.engine, t.accounts).values(
                customer=customer, plan=None, anchor_us=None, reset_us=None, ends_us=None
            )
        )
        return self._account(conn, customer, lock=True)

    def _current_plan(self, conn: Connection, acct: Any, now_us: int) -> Plan | None:
        """The plan the customer is subscribed to now: not canceled past its end."""
        if acct is None or acct.plan is None or acct.anchor_us is None:
            return None
        if acct.ends_us is not None and now_us >= acct.ends_us:
            return None
        return self._plan(conn, acct.plan)

    def _subscription_of(
        self, conn: Connection, customer: str, acct: Any, now: datetime
    ) -> Subscription | None:
        plan = self._current_plan(conn, acct, to_us(now))
        if plan is None or plan.name.startswith(EMULATOR_PLAN_PREFIX):
            return None
        anchor = from_us(acct.anchor_us)
        start, end = period_containing(anchor, plan.interval, now)
        return Subscription(
            customer=customer,
            plan=plan.name,
            status="active",
            period_start=start,
            period_end=end,
            cancel_at_period_end=acct.ends_us is not None,
            started_at=anchor,
        )

    # -- subscribe ---------------------------------------------------------------------------------
    def subscribe(
        self,
        customer: str,
        plan: Plan | str,
        started_at: datetime | None = None,
        *,
        email: str | None = None,
    ) -> Subscription | None:
        """Put ``customer`` on ``plan`` (rules in the module docstring); returns the subscription.

        ``started_at`` (timezone-aware, not in the future) anchors the billing periods of a new
        subscription or a plan change; with it before the current period (a subscription renewed
        since), the usage window is the current period, as a renewal reset it. Calling again with
        the plan the customer is on changes nothing, ``started_at`` included. ``email`` is for
        Polar's customer record; the engine keeps none.
        """
        plan_name = plan.name if isinstance(plan, Plan) else plan
        now = self.time.now()
        anchor_given = None if started_at is None else started_at.astimezone(UTC)
        if anchor_given is not None and anchor_given > now:
            raise ConfigurationError("started_at: must not be in the future")
        with self.db.write() as conn:
            if isinstance(plan, Plan):
                self._store_plan(conn, plan)
            elif self._plan(conn, plan_name) is None:
                raise ConfigurationError(f"plan: unknown plan {plan_name!r}; pass plans=[...] to init()")
            stored = self._plan(conn, plan_name)
            assert stored is not None
            acct = self._locked_account(conn, customer)
            current = self._current_plan(conn, acct, to_us(now))
            if current is not None and current.name == stored.name:
                if acct.ends_us is not None:  # subscribing again undoes a cancellation
                    self._set_ends(conn, customer, None)
                    acct = self._account(conn, customer)
                return self._subscription_of(conn, customer, acct, now)
            if anchor_given is not None:
                anchor = anchor_given
            elif current is not None and current.interval == stored.interval:
                anchor = from_us(acct.anchor_us)  # Polar keeps the cycle on a same-interval change
            else:
                anchor = now
            self._switch(conn, customer, acct, stored, anchor, now, grant=True)
            return self._subscription_of(conn, customer, self._account(conn, customer), now)

    def _switch(
        self,
        conn: Connection,
        customer: str,
        acct: Any,
        plan: Plan,
        anchor: datetime,
        now: datetime,
        *,
        grant: bool,
    ) -> None:
        """Move the account to ``plan`` anchored at ``anchor``, keeping the usage of the window the
        customer is in. With ``grant`` the old window's plan units are taken back and ``plan``'s
        granted; without, the credit stays as it is (the emulator grants through benefits)."""
        from polar_metering.backends._engine.backend import usage_since

        old_window = self._window_of(conn, acct, now)
        since = usage_since(acct, old_window)
        carried = self._window_credits(conn, customer, old_window)
        period_start_us = to_us(period_containing(anchor, plan.interval, now)[0])
        # The usage window continues unless a renewal came in between (a backdated anchor whose
        # first period is over); a reset inside the current period is kept either way.
        continues = period_start_us == to_us(anchor) or since >= period_start_us
        values = {
            "plan": plan.name,
            "anchor_us": to_us(anchor),
            "reset_us": since if continues else None,
            "ends_us": None,
        }
        conn.execute(update(t.accounts).where(t.accounts.c.customer == customer).values(**values))
        self._rebuild_customer(conn, customer)
        if continues:
            self._carry_credits(
                conn,
                customer,
                plan if grant else None,
                carried,
                to_us(now),
                taken_back=old_window.plan if grant else None,
            )

    def _window_credits(self, conn: Connection, customer: str, window: Window) -> dict[str, Credit]:
        """The credit of each meter in ``window``: its rollup row's, or for a meter without a row
        yet, what the row would start with (plan units and rollover)."""
        from polar_metering.backends._engine.backend import Credit, flagged_credit

        where = and_(t.usage.c.customer == customer, t.usage.c.window_us == window.start_us)
        rows = {r.meter_id: r for r in conn.execute(select(t.usage).where(where)).all()}
        credits: dict[str, Credit] = {}
        for m in self._meters.values():
            if m.archived:
                continue
            row = rows.get(m.id)
            if row is not None:
                if row.credited is not None:
                    credits[m.id] = Credit(float(row.credited), flagged_credit(row, window.plan))
                continue
            initial = self._initial_credit(conn, customer, m, window)
            if initial is not None:
                credits[m.id] = initial
        return credits

    def _carry_credits(
        self,
        conn: Connection,
        customer: str,
        plan: Plan | None,
        carried: Mapping[str, Credit],
        now_us: int,
        *,
        taken_back: Plan | None,
    ) -> None:
        """Set the current window's credit to what the customer had, minus ``taken_back``'s units,
        plus ``plan``'s: Polar's benefit revoke and grant each add a ``meter.credited`` event to the
        running sum, they reset nothing. A meter the new plan does not name and of whose credit
        nothing is left has no limit again (on Polar: no credits, the ``no_credits`` rule)."""
        from polar_metering.backends._engine.backend import Credit, _credit_columns, plan_units

        window = self._window(conn, customer, from_us(now_us))
        for m in sorted(self._meters.values(), key=lambda m: m.id):
            if m.archived:
                continue
            base = plan_units(plan, m)
            back = plan_units(taken_back, m) or 0.0
            kept = carried.get(m.id)
            remaining = (kept.units if kept else 0.0) - back
            credit: Credit | None
            if base is None and (kept is None or remaining <= 0):
                credit = None
            else:
                units = max(0.0, remaining + (base or 0.0))
                fresh = (base or 0.0) if plan is not None and plan.rollover else 0.0
                back_flagged = back if taken_back is not None and taken_back.rollover else 0.0
                flagged = (kept.rollover if kept else 0.0) - back_flagged + fresh
                credit = Credit(units, max(0.0, min(flagged, units)))
            self._usage_row(conn, customer, m, window, lock=True)
            conn.execute(
                update(t.usage)
                .where(
                    and_(
                        t.usage.c.customer == customer,
                        t.usage.c.meter_id == m.id,
                        t.usage.c.window_us == window.start_us,
                    )
                )
                .values(**_credit_columns(credit), modified_us=now_us)
            )

    # -- cancel and read -------------------------------------------------------------------------------
    def _set_ends(self, conn: Connection, customer: str, ends_us: int | None) -> None:
        conn.execute(update(t.accounts).where(t.accounts.c.customer == customer).values(ends_us=ends_us))

    def cancel(self, customer: str) -> Subscription | None:
        """Cancel at the end of the current period; ``None`` when there is no plan to cancel. Safe to
        call again."""
        now = self.time.now()
        with self.db.write() as conn:
            acct = self._locked_account(conn, customer)
            plan = self._current_plan(conn, acct, to_us(now))
            if plan is None:
                return None
            if acct.ends_us is None:
                end = period_containing(from_us(acct.anchor_us), plan.interval, now)[1]
                self._set_ends(conn, customer, to_us(end))
            return self._subscription_of(conn, customer, self._account(conn, customer), now)

    def get_subscription(self, customer: str) -> Subscription | None:
        now = self.time.now()
        with self.db.read() as conn:
            return self._subscription_of(conn, customer, self._account(conn, customer), now)

    def list_customers(self, *, page: int, limit: int) -> Page[Customer]:
        """Every customer the engine knows (an account, usage, or a customer record), by id."""
        a, u, c = t.accounts.c, t.usage.c, t.customers.c
        everyone = union(
            select(a.customer.label("customer")),
            select(u.customer.label("customer")),
            select(func.coalesce(c.external_id, c.id).label("customer")),
        ).subquery()
        with self.db.read() as conn:
            total = int(conn.execute(select(func.count()).select_from(everyone)).scalar_one())
            keys = [
                str(k)
                for k in conn.execute(
                    select(everyone.c.customer)
                    .order_by(everyone.c.customer)
                    .offset((page - 1) * limit)
                    .limit(limit)
                ).scalars()
            ]
            records: dict[str, Any] = {}
            if keys:
                for rec in conn.execute(
                    select(t.customers).where(
                        t.customers.c.external_id.in_(keys) | t.customers.c.id.in_(keys)
                    )
                ):
                    records[rec.external_id or rec.id] = rec
        items = []
        for key in keys:
            r = records.get(key)
            items.append(
                Customer(key)
                if r is None
                else Customer(
                    key, polar_id=r.id, email=r.email, name=r.name, created_at=from_us(r.created_us)
                )
            )
        return Page(tuple(items), page, limit, total)

    def list_plans(self, *, page: int, limit: int) -> Page[Plan]:
        """The plans customers can be put on: every plan stored by this or another process, by name."""
        p = t.plans.c
        where = ~p.name.startswith(EMULATOR_PLAN_PREFIX, autoescape=True)
        with self.db.read() as conn:
            total = int(conn.execute(select(func.count()).select_from(t.plans).where(where)).scalar_one())
            rows = conn.execute(
                select(t.plans).where(where).order_by(p.name).offset((page - 1) * limit).limit(limit)
            ).all()
        plans = []
        for r in rows:
            stored = Plan(r.name, credits=json.loads(r.credits), interval=r.interval, rollover=r.rollover)
            code = next((pl for pl in self.catalog.plans if pl.name == r.name), None)
            plans.append(replace(stored, product_id=code.product_id) if code is not None else stored)
        return Page(tuple(plans), page, limit, total)

    # -- primitives the emulator builds Polar's subscriptions from --------------------------------------
    def follow_period(self, customer_id: str, plan: Plan, anchor: datetime) -> None:
        """Make a customer's windows follow ``plan``'s periods from ``anchor``, keeping the usage and
        credit of the window it is in. The emulator calls it for a customer's subscription, whose
        credit comes from benefit grants, with a plan that credits nothing."""
        with self.db.write() as conn:
            self._store_plan(conn, plan)
            customer = self._customer_key(conn, customer_id)
            acct = self._locked_account(conn, customer)
            self._switch(conn, customer, acct, plan, anchor.astimezone(UTC), self.time.now(), grant=False)

    def end_period(self, customer_id: str, at: datetime | None) -> None:
        """The customer's plan stops applying at ``at`` (``None``: it renews again)."""
        with self.db.write() as conn:
            customer = self._customer_key(conn, customer_id)
            self._locked_account(conn, customer)
            self._set_ends(conn, customer, None if at is None else to_us(at))

    def cycle_credit(self, customer_id: str, meter_id: str, units: float, *, rollover: bool) -> None:
        """A meter-credit benefit's renewal in the window that just began: what rolls over from the
        window before, then ``units`` (``benefit/strategies/meter_credit/service.py`` ``cycle``).
        A second benefit on the same meter renewing in the same window only adds its units, since
        the meter was already reset and its rollover counted."""
        from polar_metering.backends._engine.backend import Credit, flagged_credit

        with self.db.write() as conn:
            customer = self._customer_key(conn, customer_id)
            meter = self._meters[meter_id]
            window = self._window(conn, customer, self.time.now())
            row = self._usage_row(conn, customer, meter, window, lock=True)
            if row.credited is None:
                grant = Plan(f"{EMULATOR_PLAN_PREFIX}cycle", credits={meter.id: units}, rollover=rollover)
                renewed = self._initial_credit(conn, customer, meter, replace(window, plan=grant))
                assert renewed is not None
                credit = renewed
            else:
                flagged = flagged_credit(row, window.plan) + (units if rollover else 0.0)
                credit = Credit(float(row.credited) + units, flagged)
            conn.execute(
                update(t.usage)
                .where(
                    and_(
                        t.usage.c.customer == customer,
                        t.usage.c.meter_id == meter.id,
                        t.usage.c.window_us == window.start_us,
                    )
                )
                .values(
                    credited=max(0.0, credit.units),
                    credited_rollover=max(0.0, credit.rollover),
                    modified_us=to_us(self.time.now()),
                )
            )
