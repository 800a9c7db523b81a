"""Plans and subscriptions on Polar: which Polar product is which catalog plan, a customer's
subscription (cached), subscribing, cancelling, and what a customer without credits may do.

- :class:`PlanDirectory` maps catalog plans to Polar products: the product ``setup`` created for a
  plan carries the metadata key :data:`PLAN_KEY` with the plan's name; a paid plan names its
  product (``Plan.product_id``). A catalog plan Polar lacks is reported once, with the fix.
- :class:`Lifecycle` reads a customer's active subscriptions with ``subscriptions.list`` (a query
  parameter, so any customer id is safe, and a model the SDK can read: its ``CustomerState`` model
  rejects the ``active`` status Polar sends for a state's subscriptions), keeps them for
  ``subscription_ttl`` seconds (and never past the period's end), and subscribes and cancels
  through Polar's own endpoints (``server/polar/subscription/endpoints.py`` at c6c3645).
- :func:`apply_plans` decides a reading's limit where Polar has no credits for it: the default plan
  for a customer without a subscription, the ``unknown_customer`` policy for one Polar does not know.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, cast

from polar_metering._catalog import Catalog, Plan
from polar_metering._exceptions import (
    AuthenticationError,
    CheckoutRequired,
    ConfigurationError,
    NotFound,
    RemoteValidationError,
)
from polar_metering._setup_plans import METER_KEY, PLAN_KEY, is_free_product
from polar_metering._status import MeterReading
from polar_metering._subscriptions import Customer, Page, Subscription
from polar_metering.backends._polar._sdk import Polar, PolarSettings, polar_errors

if TYPE_CHECKING:
    from polar.v2026_10.literals import SubscriptionStatus

    from polar_metering._catalog import Meter
    from polar_metering._config import UnknownCustomer
    from polar_metering.backends._polar._readings import MeterDirectory, NoCredits

__all__ = [
    "METER_KEY",
    "PLAN_KEY",
    "Lifecycle",
    "LifeState",
    "PlanDirectory",
    "apply_plans",
    "is_free_product",
    "parse_time",
    "scope_problem",
]

log = logging.getLogger("polar_metering")

_ACTIVE: list[SubscriptionStatus] = ["active", "trialing"]
_PAGE = 100
_EXISTS = "A customer with this external ID already exists."


def parse_time(value: object) -> datetime | None:
    """Polar's ISO-8601 timestamps (the SDK keeps them as strings) as aware datetimes."""
    if isinstance(value, datetime):
        return value.astimezone(UTC)
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)
    except ValueError:
        return None


class PlanDirectory:
    """Polar products for catalog plans, listed once and again when a plan is missing (at most every
    ``refresh_after`` seconds, so a later ``setup`` is picked up without a restart)."""

    def __init__(
        self,
        client: Polar,
        settings: PolarSettings,
        catalog: Catalog,
        monotonic: Callable[[], float],
        *,
        refresh_after: float = 60.0,
    ) -> None:
        self._client = client
        self._settings = settings
        self._catalog = catalog
        self._monotonic = monotonic
        self._refresh_after = refresh_after
        self._by_plan: dict[str, Any] | None = None
        self._listed_at = 0.0
        self._reported: set[str] = set()
        self._lock = threading.Lock()

    def _list(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        wanted_ids = {p.product_id: p.name for p in self._catalog.plans if p.product_id}
        with polar_errors("list products", self._settings):
            # Oldest first: with two products carrying one plan's key, setup and readings use the same.
            for product in self._client.products.iter_list(
                is_archived=False, limit=_PAGE, sorting=["created_at"]
            ):
                name = (product.metadata or {}).get(PLAN_KEY)
                if product.id in wanted_ids:
                    found[wanted_ids[product.id]] = product
                elif isinstance(name, str) and name not in found:
                    found[name] = product
        for product_id, plan in wanted_ids.items():
            if plan not in found:
                try:
                    with polar_errors("get product", self._settings):
                        found[plan] = self._client.products.get(product_id)
                except NotFound:
                    pass  # reported below
        return found

    def products(self, *, refresh: bool = False) -> dict[str, Any]:
        """Polar product by plan name, for the catalog plans Polar has (and any other plan ``setup``
        provisioned)."""
        with self._lock:
            now = self._monotonic()
            stale = now - self._listed_at >= self._refresh_after
            if self._by_plan is None or (refresh and stale):
                self._by_plan = self._list()
                self._listed_at = now
                self._report(self._by_plan)
            return dict(self._by_plan)

    def _report(self, found: dict[str, Any]) -> None:
        for plan in self._catalog.plans:
            if plan.name not in found and plan.name not in self._reported:
                self._reported.add(plan.name)
                where = f"product {plan.product_id}" if plan.product_id else "no product for it"
                log.warning(
                    "polar_metering: plan %r is not provisioned in Polar (%s); run `polar-metering setup`",
                    plan.name,
                    where,
                )

    def missing(self) -> list[str]:
        """Catalog plans Polar has no product for."""
        found = self.products()
        return [p.name for p in self._catalog.plans if p.name not in found]

    def product(self, plan: str) -> Any:
        found = self.products()
        if plan not in found:
            found = self.products(refresh=True)
        if plan not in found:
            raise NotFound(
                f"plan {plan!r}: Polar has no product for it; run `polar-metering setup` to provision "
                "the catalog's plans"
            )
        return found[plan]

    def plan_of(self, product_id: str) -> str | None:
        for name, product in self.products().items():
            if product.id == product_id:
                return name
        return None


@dataclass(frozen=True, slots=True)
class LifeState:
    """What Polar says about one customer, as far as limits need it."""

    subscription: Subscription | None
    #: whether Polar has the customer; ``None`` when it was not asked (not needed)
    known: bool | None
    expires: float


class Lifecycle:
    """Subscriptions of customers on Polar, through ``polar-sdk``."""

    def __init__(
        self,
        client: Polar,
        settings: PolarSettings,
        catalog: Catalog,
        plans: PlanDirectory,
        meters: MeterDirectory,
        *,
        monotonic: Callable[[], float],
        wall: Callable[[], datetime],
        ttl: float,
    ) -> None:
        self._client = client
        self._settings = settings
        self._catalog = catalog
        self.plans = plans
        self._meters = meters
        self._monotonic = monotonic
        self._wall = wall
        self._ttl = ttl
        self._states: dict[str, LifeState] = {}
        self._lock = threading.Lock()
        self._customer_locks: dict[str, threading.Lock] = {}

    # -- reading ------------------------------------------------------------------------------------
    def _subscriptions(self, customer: str) -> list[Any]:
        with polar_errors("list subscriptions", self._settings):
            return list(
                self._client.subscriptions.iter_list(
                    external_customer_id=customer, status=_ACTIVE, limit=_PAGE
                )
            )

    def _as_subscription(self, customer: str, sub: Any) -> Subscription:
        return Subscription(
            customer=customer,
            plan=self.plans.plan_of(str(sub.product_id)),
            status=str(sub.status),
            period_start=parse_time(sub.current_period_start),
            period_end=parse_time(sub.current_period_end),
            cancel_at_period_end=bool(sub.cancel_at_period_end),
            started_at=parse_time(sub.started_at),
            id=str(sub.id),
            product_id=str(sub.product_id),
        )

    def _pick(self, customer: str, subs: Sequence[Any]) -> tuple[Subscription | None, Any | None]:
        """The customer's current plan: its newest active subscription to one of the catalog's
        plans, else its newest active subscription to any product."""
        ours = [s for s in subs if self.plans.plan_of(str(s.product_id)) is not None]
        pool = ours or list(subs)
        if not pool:
            return None, None
        newest = max(pool, key=lambda s: (parse_time(s.started_at) or datetime.min.replace(tzinfo=UTC), s.id))
        return self._as_subscription(customer, newest), newest

    def _known(self, customer: str) -> bool:
        """Whether Polar has a customer with this external id. Searched with the ``query`` filter
        (name, email or external id, a query parameter the SDK encodes) and matched exactly: the
        path-based ``customers.get_external`` cannot carry an id holding ``/`` to Polar."""
        with polar_errors("find customer", self._settings):
            for found in self._client.customers.iter_list(query=customer, limit=_PAGE):
                if found.external_id == customer:
                    return True
        return False

    def state(self, customer: str, *, need_known: bool) -> LifeState:
        """The customer's subscription (cached), and whether Polar knows the customer when asked."""
        now = self._monotonic()
        with self._lock:
            cached = self._states.get(customer)
        if cached is not None and now < cached.expires and (cached.known is not None or not need_known):
            return cached
        try:
            subscription, _ = self._pick(customer, self._subscriptions(customer))
            known: bool | None = True if subscription is not None else None
            if known is None and need_known:
                known = self._known(customer)
        except AuthenticationError as exc:
            # A token made before plans existed lacks the subscriptions, products or customers
            # scopes: limits still work from customer meters alone, without periods or a default plan.
            scope_problem(exc)
            subscription, known = None, None
        expires = now + self._ttl
        if subscription is not None and subscription.period_end is not None:
            # A renewal or a cancellation takes effect at the period's end: read again then.
            left = (subscription.period_end - self._wall()).total_seconds()
            expires = min(expires, now + max(0.0, left))
        state = LifeState(subscription, known, expires)
        with self._lock:
            self._states[customer] = state
        return state

    def invalidate(self, customer: str | None = None) -> int:
        with self._lock:
            if customer is None:
                count = len(self._states)
                self._states.clear()
                return count
            return 1 if self._states.pop(customer, None) is not None else 0

    def get_subscription(self, customer: str) -> Subscription | None:
        return self._pick(customer, self._subscriptions(customer))[0]

    # -- changing -----------------------------------------------------------------------------------
    def _customer_lock(self, customer: str) -> threading.Lock:
        with self._lock:
            return self._customer_locks.setdefault(customer, threading.Lock())

    def _ensure_customer(self, customer: str, email: str | None) -> None:
        """Create the Polar customer with this external id unless Polar has it: a team customer
        without an email (Polar's individual customers need one), an individual one with it."""
        body: dict[str, Any] = (
            {"type": "individual", "email": email, "external_id": customer}
            if email
            else {"type": "team", "external_id": customer}
        )
        try:
            with polar_errors("create customer", self._settings):
                self._client.customers.create(**body)
        except RemoteValidationError as exc:
            if not any(item.get("msg") == _EXISTS for item in exc.detail):
                raise

    def subscribe(self, customer: str, plan: Plan | str, *, email: str | None) -> Subscription:
        """Polar's subscription to ``plan``'s free product, created once (``docs/polar.md``)."""
        name = plan.name if isinstance(plan, Plan) else plan
        if not self._catalog.has_plan(name) and not isinstance(plan, Plan):
            raise ConfigurationError(
                f"plan: unknown plan {name!r}; known plans are {[p.name for p in self._catalog.plans]}"
            )
        product = self.plans.product(name)
        with self._customer_lock(customer):
            try:
                subs = self._subscriptions(customer)
                current, raw = self._pick(customer, subs)
                if current is not None and current.id is not None and current.product_id == str(product.id):
                    if current.cancel_at_period_end:  # subscribing again undoes the cancellation
                        with polar_errors("resume subscription", self._settings):
                            raw = self._client.subscriptions.update(current.id, cancel_at_period_end=False)
                        return self._as_subscription(customer, raw)
                    return current
                if not is_free_product(product):
                    raise CheckoutRequired(
                        f"subscribe: plan {name!r} is a paid Polar product ({product.id}); Polar starts paid "
                        "subscriptions through its checkout: create a checkout for this product "
                        "(polar.checkouts.create(products=[...], external_customer_id=...)) and send the "
                        "customer to its URL",
                        plan=name,
                        product_id=str(product.id),
                    )
                if current is not None and current.id is not None and current.plan is not None:
                    # A plan change: Polar revokes the old product's benefits and grants the new
                    # one's. A subscription set to cancel cannot change product: resume it first.
                    with polar_errors("change subscription", self._settings):
                        if current.cancel_at_period_end:
                            self._client.subscriptions.update(current.id, cancel_at_period_end=False)
                        raw = self._client.subscriptions.update(current.id, product_id=str(product.id))
                    return self._as_subscription(customer, raw)
                self._ensure_customer(customer, email)
                with polar_errors("create subscription", self._settings):
                    raw = self._client.subscriptions.create(
                        product_id=str(product.id), external_customer_id=customer
                    )
                return self._as_subscription(customer, raw)
            finally:
                self.invalidate(customer)

    def cancel(self, customer: str) -> Subscription | None:
        with self._customer_lock(customer):
            try:
                current, _ = self._pick(customer, self._subscriptions(customer))
                if current is None or current.id is None:
                    return None
                if current.cancel_at_period_end:
                    return current
                with polar_errors("cancel subscription", self._settings):
                    raw = self._client.subscriptions.update(current.id, cancel_at_period_end=True)
                return self._as_subscription(customer, raw)
            finally:
                self.invalidate(customer)

    # -- listing ------------------------------------------------------------------------------------
    def list_customers(self, *, page: int, limit: int) -> Page[Customer]:
        with polar_errors("list customers", self._settings):
            listing = self._client.customers.list(page=page, limit=limit, sorting=["created_at"])
        items = tuple(
            Customer(
                id=str(c.external_id or c.id),
                polar_id=str(c.id),
                email=c.email,
                name=c.name,
                created_at=parse_time(c.created_at),
            )
            for c in listing.items
        )
        return Page(items, page, limit, int(listing.pagination.total_count))

    def list_plans(self, *, page: int, limit: int) -> Page[Plan]:
        """The catalog's plans Polar has, read back from their products (what setup provisioned)."""
        products = self.plans.products()
        slugs = self._slugs()
        plans: list[Plan] = []
        for plan in self._catalog.plans:
            product = products.get(plan.name)
            if product is not None:
                plans.append(_plan_from_product(plan.name, product, slugs))
        window = plans[(page - 1) * limit : page * limit]
        return Page(tuple(window), page, limit, len(plans))

    def _slugs(self) -> dict[str, str]:
        """Catalog slug by Polar meter id, for the meters Polar has."""
        slugs: dict[str, str] = {}
        for meter in self._catalog.meters:
            try:
                slugs[self._meters.ids([meter])[meter.slug]] = meter.slug
            except NotFound:
                continue
        return slugs


def _plan_from_product(name: str, product: Any, slugs: dict[str, str]) -> Plan:
    credits: dict[str, float] = {}
    rollover = False
    for benefit in product.benefits:
        if getattr(benefit, "type", None) != "meter_credit":
            continue
        props = benefit.properties
        key = slugs.get(str(props.meter_id), str(props.meter_id))
        credits[key] = credits.get(key, 0) + int(props.units)
        rollover = rollover or bool(props.rollover)
    interval = product.recurring_interval if product.recurring_interval in ("month", "year") else "month"
    return Plan(
        name,
        credits=credits,
        interval=cast(Literal["month", "year"], interval),
        rollover=rollover,
        product_id=str(product.id),
    )


def apply_plans(
    reading: MeterReading,
    meter: Meter,
    credited_by_polar: bool,
    state: LifeState,
    *,
    default_plan: Plan | None,
    unknown_customer: UnknownCustomer | None,
    no_credits: NoCredits,
) -> MeterReading:
    """``reading`` with the subscription's period and, when Polar credits nothing on the meter, the
    limit the library's rules give (``docs/polar.md``, "Customers without credits"):

    - a customer with a subscription: the ``no_credits`` rule (``to_reading`` applied it);
    - a customer Polar does not know, under an explicit ``unknown_customer``: ``allow`` (no
      limit), ``deny`` (limit 0) or ``default_plan``;
    - any other customer without a subscription: the default plan's credit for the meter when the
      catalog has one that names the meter, else the ``no_credits`` rule.
    """
    sub = state.subscription
    if sub is not None:
        reading = replace(reading, period_start=sub.period_start, period_end=sub.period_end)
    if credited_by_polar or sub is not None:
        return reading
    policy = unknown_customer
    if state.known is False and policy in ("allow", "deny"):
        return replace(reading, credited=None if policy == "allow" else 0.0)
    if default_plan is not None:
        units = default_plan.credits.get(meter.slug)
        if units is not None:
            return replace(reading, credited=float(units))
    return reading


_scope_warned = threading.Event()


def scope_problem(exc: AuthenticationError) -> None:
    """Say once per process that the token cannot read subscriptions, and what that costs."""
    if not _scope_warned.is_set():
        _scope_warned.set()
        log.warning(
            "polar_metering: reading subscriptions failed (%s); limits use customer meters only, without "
            "billing periods or the default plan. Give the token the subscriptions:read, products:read "
            "and customers:read scopes (docs/polar.md)",
            exc,
        )
