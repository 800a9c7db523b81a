"""``setup`` for plans: each catalog :class:`Plan` as a free recurring Polar product carrying one
``meter_credit`` benefit per meter, created once and checked on every later run.

- A plan's product is found by the product metadata key ``polar_metering_plan`` (the plan's name),
  which ``setup`` writes and owns; a product without it is never touched.
- A plan that names ``product_id`` (a paid product sold through Polar's checkout) is only checked.
- Drift (units, interval, rollover, or credits the plan does not name) is reported and never
  changed: Polar applies a changed benefit only to grants made after it (the meter-credit strategy's
  ``requires_update`` is false, ``server/polar/benefit/strategies/meter_credit/service.py`` at
  c6c3645), so editing one silently would give customers different credits by signup date. A
  benefit missing from a product ``setup`` owns is created and attached: that is finishing an
  earlier run, and Polar grants it to the product's subscribers (``update_product_benefits_grants``).

Polar's rules for the bodies (``server/polar/product/schemas.py``, ``server/polar/benefit/
strategies/base/schemas.py``): product names of 3 to 64 characters, benefit descriptions of 3 to
42, meter-credit units a whole int32 number above 0; a free price is a fixed price of 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from polar_metering._catalog import Catalog, Meter, Plan
from polar_metering._events import describe
from polar_metering._exceptions import NotFound, RemoteValidationError

if TYPE_CHECKING:
    from polar_metering.backends._polar._sdk import Polar, PolarSettings

__all__ = ["METER_KEY", "PLAN_KEY", "PlanResult", "is_free_product", "provision_plans"]

PlanStatus = Literal["created", "would_create", "exists", "drift", "error"]
_INT32 = 2**31 - 1

#: the product metadata key ``setup`` writes and reads: its value is the catalog plan's name
PLAN_KEY = "polar_metering_plan"
#: the benefit metadata key ``setup`` writes: the catalog meter's slug
METER_KEY = "polar_metering_meter"


def is_free_product(product: Any) -> bool:
    """Polar creates subscriptions without a checkout only to free products: the default price, the
    first static one, is a fixed price of 0 (``server/polar/product/price_set.py``,
    ``server/polar/models/product_price.py`` ``is_free``)."""
    prices = [p for p in product.prices if not getattr(p, "is_archived", False)]
    static = [p for p in prices if p.amount_type in ("fixed", "custom", "seat_based")]
    default = static[0] if static else (prices[0] if prices else None)
    return (
        default is not None and default.amount_type == "fixed" and getattr(default, "price_amount", None) == 0
    )


@dataclass(frozen=True, slots=True)
class PlanResult:
    """What ``setup`` did, or would do, for one catalog plan.

    ``benefits`` lists the meters whose benefit this run created (or would create); ``drift`` says
    in words how Polar's product differs from the plan; ``error`` is why the plan could not be
    provisioned.
    """

    name: str
    status: PlanStatus
    product_id: str | None = None
    benefits: tuple[str, ...] = field(default=())
    drift: tuple[str, ...] = field(default=())
    error: str | None = None
    paid: bool = False


def _units(plan: Plan, slug: str) -> int | str:
    """The whole units a benefit grants, or why the plan's number cannot be one."""
    units = plan.credits[slug]
    if not math.isfinite(units) or units != int(units) or not 0 < units <= _INT32:
        return (
            f"credits[{slug!r}] = {describe(units, 30)}: Polar's meter-credit benefits grant a whole "
            f"number of units from 1 to {_INT32} (leave the meter out of the plan for no limit)"
        )
    return int(units)


def _description(units: int, meter: Meter) -> str:
    text = f"{units:,} {meter.name}"
    return text if len(text) <= 42 else text[:41] + "…"


def _credit_benefits(product: Any) -> list[Any]:
    return [b for b in product.benefits if getattr(b, "type", None) == "meter_credit"]


class _Provisioner:
    def __init__(
        self,
        polar: Polar,
        settings: PolarSettings,
        catalog: Catalog,
        meter_ids: Mapping[str, str],
        dry_run: bool,
    ) -> None:
        self.polar = polar
        self.settings = settings
        self.catalog = catalog
        self.meter_ids = dict(meter_ids)  # slug -> Polar meter id, for the meters Polar has
        self.slugs = {v: k for k, v in self.meter_ids.items()}
        self.dry_run = dry_run

    def _errors(self, action: str) -> Any:
        from polar_metering.backends._polar._sdk import polar_errors

        return polar_errors(f"setup: {action}", self.settings)

    def owned_products(self) -> dict[str, Any]:
        found: dict[str, Any] = {}
        with self._errors("list products"):
            for product in self.polar.products.iter_list(
                is_archived=False, limit=100, sorting=["created_at"]
            ):
                name = (product.metadata or {}).get(PLAN_KEY)
                if isinstance(name, str) and name not in found:
                    found[name] = product
        return found

    def run(self) -> list[PlanResult]:
        owned = self.owned_products() if any(not p.product_id for p in self.catalog.plans) else {}
        results = []
        for plan in self.catalog.plans:
            try:
                if plan.product_id:
                    results.append(self.check_paid(plan))
                elif plan.name in owned:
                    results.append(self.check_owned(plan, owned[plan.name]))
                else:
                    results.append(self.create(plan))
            except RemoteValidationError as exc:
                results.append(PlanResult(plan.name, "error", error=str(exc)))
        return results

    # -- comparing -------------------------------------------------------------------------------------
    def _compare(self, plan: Plan, product: Any) -> tuple[list[str], list[str]]:
        """How Polar's product differs from ``plan``, and the plan's meters it has no benefit for."""
        drift: list[str] = []
        if product.recurring_interval != plan.interval:
            drift.append(
                f"interval: the plan renews every {plan.interval}, Polar's product every "
                f"{product.recurring_interval}"
            )
        by_meter: dict[str, list[Any]] = {}
        for benefit in _credit_benefits(product):
            by_meter.setdefault(str(benefit.properties.meter_id), []).append(benefit)
        missing: list[str] = []
        for slug in plan.credits:
            meter_id = self.meter_ids.get(slug)
            benefits = by_meter.pop(meter_id, []) if meter_id is not None else []
            if not benefits:
                missing.append(slug)
                continue
            units = _units(plan, slug)
            total = sum(int(b.properties.units) for b in benefits)
            if total != units:
                drift.append(
                    f"{slug}: the plan credits {describe(plan.credits[slug], 30)} units, Polar {total}"
                )
            rollovers = {bool(b.properties.rollover) for b in benefits}
            if rollovers != {plan.rollover}:
                shown = "true" if True in rollovers else "false"
                drift.append(
                    f"{slug}: rollover is {str(plan.rollover).lower()} in the plan, {shown} on Polar"
                )
        for meter_id in by_meter:
            name = self.slugs.get(meter_id, f"meter {meter_id}")
            drift.append(f"{name}: Polar's product credits it, the plan does not")
        return drift, missing

    def check_paid(self, plan: Plan) -> PlanResult:
        """A plan on an existing product: check it, change nothing."""
        assert plan.product_id is not None
        try:
            with self._errors(f"get product for plan {plan.name!r}"):
                product = self.polar.products.get(plan.product_id)
        except NotFound:
            return PlanResult(
                plan.name,
                "error",
                plan.product_id,
                error=f"Polar has no product {plan.product_id}",
                paid=True,
            )
        drift, missing = self._compare(plan, product)
        drift.extend(f"{slug}: Polar's product has no meter-credit benefit for it" for slug in missing)
        paid = not is_free_product(product)
        return PlanResult(
            plan.name, "drift" if drift else "exists", str(product.id), drift=tuple(drift), paid=paid
        )

    def check_owned(self, plan: Plan, product: Any) -> PlanResult:
        drift, missing = self._compare(plan, product)
        created: list[str] = []
        problems = [p for p in (self._benefit_problem(plan, slug) for slug in missing) if p]
        if problems:
            return PlanResult(
                plan.name, "error", str(product.id), drift=tuple(drift), error="; ".join(problems)
            )
        if missing and not self.dry_run:
            new_ids = [self._create_benefit(plan, slug) for slug in missing]
            keep = [str(b.id) for b in product.benefits]
            with self._errors(f"attach benefits to plan {plan.name!r}"):
                self.polar.products.update_benefits(str(product.id), benefits=keep + new_ids)
        created = list(missing)
        status: PlanStatus = "drift" if drift else "exists"
        return PlanResult(plan.name, status, str(product.id), benefits=tuple(created), drift=tuple(drift))

    # -- creating --------------------------------------------------------------------------------------
    def _benefit_problem(self, plan: Plan, slug: str) -> str | None:
        units = _units(plan, slug)
        if isinstance(units, str):
            return units
        if slug not in self.meter_ids and not self.dry_run:
            return f"{slug}: Polar has no meter for it (see the meter errors above)"
        return None

    def _create_benefit(self, plan: Plan, slug: str) -> str:
        units = _units(plan, slug)
        assert isinstance(units, int)
        meter = self.catalog.meter(slug)
        with self._errors(f"create the {slug!r} benefit of plan {plan.name!r}"):
            benefit = self.polar.benefits.create(
                type="meter_credit",
                description=_description(units, meter),
                properties={"meter_id": self.meter_ids[slug], "units": units, "rollover": plan.rollover},
                metadata={PLAN_KEY: plan.name, METER_KEY: slug},
            )
        return str(benefit.id)

    def create(self, plan: Plan) -> PlanResult:
        problems = [p for p in (self._benefit_problem(plan, slug) for slug in plan.credits) if p]
        if not 3 <= len(plan.name.strip()) <= 64:
            problems.insert(0, "Polar's product names are 3 to 64 characters: rename the plan")
        if problems:
            return PlanResult(plan.name, "error", error="; ".join(problems))
        slugs = tuple(plan.credits)
        if self.dry_run:
            return PlanResult(plan.name, "would_create", benefits=slugs)
        with self._errors(f"create the product of plan {plan.name!r}"):
            product = self.polar.products.create(
                name=plan.name.strip(),
                description=f"polar-metering plan {plan.name!r}",
                recurring_interval=plan.interval,
                prices=[{"amount_type": "fixed", "price_amount": 0}],
                metadata={PLAN_KEY: plan.name},
            )
        benefit_ids = [self._create_benefit(plan, slug) for slug in slugs]
        if benefit_ids:
            with self._errors(f"attach benefits to plan {plan.name!r}"):
                self.polar.products.update_benefits(str(product.id), benefits=benefit_ids)
        return PlanResult(plan.name, "created", str(product.id), benefits=slugs)


def provision_plans(
    polar: Polar, settings: PolarSettings, catalog: Catalog, meter_ids: Mapping[str, str], *, dry_run: bool
) -> list[PlanResult]:
    """Create or check every catalog plan's product; ``meter_ids`` maps the catalog's slugs to the
    Polar meters they are (meters Polar lacks are absent)."""
    return _Provisioner(polar, settings, catalog, meter_ids, dry_run).run()
