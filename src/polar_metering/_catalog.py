"""Meters, their filters and aggregations, plans, and the catalog that both engines and ``setup`` read.

The filter and aggregation model is Polar's (``server/polar/meter/filter.py`` and ``aggregation.py`` in
polarsource/polar): nested and/or
clauses with eight operators, and six aggregation functions. Everything here is validated when it is
built, so a malformed meter fails at load with a message naming the meter and the field.
"""

from __future__ import annotations

import importlib
import math
import os
import re
import tomllib
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeAlias, cast, get_args

from polar_metering._events import INT_MAX, describe, printable, text_error
from polar_metering._exceptions import ConfigurationError

__all__ = [
    "DEFAULT_METERS",
    "Aggregation",
    "AggregationFunc",
    "Catalog",
    "Filter",
    "FilterClause",
    "FilterOperator",
    "Interval",
    "Meter",
    "Plan",
    "load_catalog",
    "normalize_property",
    "resolve_catalog",
]

FilterOperator: TypeAlias = Literal["eq", "ne", "gt", "gte", "lt", "lte", "like", "not_like"]
Conjunction: TypeAlias = Literal["and", "or"]
AggregationFunc: TypeAlias = Literal["count", "sum", "max", "min", "avg", "unique"]
Interval: TypeAlias = Literal["month", "year"]
MeterUnit: TypeAlias = Literal["scalar", "token", "custom"]
ClauseValue: TypeAlias = str | int | bool

_OPERATORS: frozenset[str] = frozenset(get_args(FilterOperator))
_FUNCS: frozenset[str] = frozenset(get_args(AggregationFunc))
_SLUG = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_INT32 = (-(2**31), 2**31 - 1)
# Polar: a clause's string value is at most 1000 characters (server/polar/meter/schemas.py)
_MAX_FILTER_STRING = 1000
_MIN_METER_NAME = 3  # Polar: MeterCreate.name has min length 3 (server/polar/meter/schemas.py)
# Filters nest far less than this in practice; a bound keeps every walk over a filter (encoding,
# compiling, comparing) well inside Python's recursion limit.
MAX_FILTER_DEPTH = 100


def _text(value: object, where: str) -> None:
    """Catalog text is stored and sent to Polar: no NUL, no surrogates."""
    if isinstance(value, str):
        rule = text_error(value)
        if rule is not None:
            raise ConfigurationError(f"{where}: {rule}")


def normalize_property(prop: str) -> str:
    """Strip Polar's optional ``metadata.`` prefix: ``metadata.size_gb`` and ``size_gb`` are one key
    (server/polar/meter/filter.py)."""
    return prop[len("metadata.") :] if prop.startswith("metadata.") else prop


def _clause_value(value: object, where: str) -> ClauseValue:
    # server/polar/meter/schemas.py: string (<= 1000 chars), signed 32-bit int, or bool. 2.0 is coerced to 2;
    # 2.5 is rejected.
    if isinstance(value, bool):
        return value
    if isinstance(value, float):
        if not math.isfinite(value) or value != int(value):
            raise ConfigurationError(
                f"{where}.value: must be a string, a whole number or a boolean, got {describe(value, 40)}"
            )
        value = int(value)
    if isinstance(value, int):
        if not _INT32[0] <= value <= _INT32[1]:
            raise ConfigurationError(
                f"{where}.value: integers must fit in 32 bits (Polar's rule), got {describe(value, 40)}"
            )
        return int(value)
    if isinstance(value, str):
        if len(value) > _MAX_FILTER_STRING:
            raise ConfigurationError(
                f"{where}.value: strings must be at most {_MAX_FILTER_STRING} characters, got {len(value)}"
            )
        _text(value, f"{where}.value")
        return value if type(value) is str else str.__str__(value)
    raise ConfigurationError(
        f"{where}.value: must be a string, a whole number or a boolean, got {describe(value, 40)}"
    )


@dataclass(frozen=True, slots=True)
class FilterClause:
    """One comparison: ``property operator value``. ``property`` may be ``name``, ``source``,
    ``timestamp`` (event columns) or a metadata key, dotted for nested values."""

    property: str
    operator: FilterOperator
    value: ClauseValue

    def __post_init__(self) -> None:
        if not isinstance(self.property, str) or not normalize_property(self.property):
            raise ConfigurationError("filter.clauses.property: must be a non-empty string")
        _text(self.property, "filter.clauses.property")
        if not isinstance(self.operator, str) or self.operator not in _OPERATORS:
            raise ConfigurationError(
                f"filter.clauses.operator: must be one of {sorted(_OPERATORS)}, "
                f"got {describe(self.operator, 40)}"
            )
        object.__setattr__(self, "property", normalize_property(self.property))
        object.__setattr__(self, "value", _clause_value(self.value, "filter.clauses"))

    def to_polar(self) -> dict[str, Any]:
        return {"property": self.property, "operator": self.operator, "value": self.value}


@dataclass(frozen=True, slots=True)
class Filter:
    """Clauses joined by ``and`` or ``or``; clauses may be filters themselves. No clauses matches all."""

    conjunction: Conjunction = "and"
    clauses: tuple[FilterClause | Filter, ...] = ()

    def __post_init__(self) -> None:
        if self.conjunction not in ("and", "or"):
            raise ConfigurationError(
                f"filter.conjunction: must be 'and' or 'or', got {describe(self.conjunction, 40)}"
            )
        if isinstance(self.clauses, str | bytes | Mapping) or not isinstance(self.clauses, Iterable):
            raise ConfigurationError(
                f"filter.clauses: must be a list of clauses, got {describe(self.clauses, 40)}"
            )
        clauses = tuple(self.clauses)
        for clause in clauses:
            if not isinstance(clause, FilterClause | Filter):
                raise ConfigurationError(
                    "filter.clauses: each clause must be a FilterClause or Filter, "
                    f"got {describe(clause, 40)}"
                )
        object.__setattr__(self, "clauses", clauses)
        # Children were checked when they were built, so only this level can go past the bound.
        stack = [(c, 2) for c in clauses if isinstance(c, Filter)]
        while stack:
            child, depth = stack.pop()
            if depth > MAX_FILTER_DEPTH:
                raise ConfigurationError(f"filter: filters nest at most {MAX_FILTER_DEPTH} levels deep")
            stack.extend((c, depth + 1) for c in child.clauses if isinstance(c, Filter))

    @classmethod
    def event(cls, name: str, **metadata_equals: ClauseValue) -> Filter:
        """The common case: events called ``name`` (and, optionally, metadata keys equal to values)."""
        clauses: list[FilterClause | Filter] = [FilterClause("name", "eq", name)]
        clauses += [FilterClause(key, "eq", value) for key, value in metadata_equals.items()]
        return cls("and", tuple(clauses))

    def to_polar(self) -> dict[str, Any]:
        return {"conjunction": self.conjunction, "clauses": [c.to_polar() for c in self.clauses]}

    @classmethod
    def from_polar(cls, data: Mapping[str, Any], where: str = "filter", _depth: int = 1) -> Filter:
        """Build from Polar's JSON shape ``{conjunction, clauses: [...]}``."""
        if _depth > MAX_FILTER_DEPTH:
            raise ConfigurationError(f"filter: filters nest at most {MAX_FILTER_DEPTH} levels deep")
        if not isinstance(data, Mapping):
            raise ConfigurationError(f"{where}: must be a table/object with 'conjunction' and 'clauses'")
        unknown = [k for k in data if k not in ("conjunction", "clauses")]
        if unknown:
            raise ConfigurationError(f"{where}: unknown keys {sorted(map(_key_text, unknown))}")
        raw_clauses = data.get("clauses", [])
        if not isinstance(raw_clauses, list | tuple):
            raise ConfigurationError(f"{where}.clauses: must be a list")
        clauses: list[FilterClause | Filter] = []
        for i, raw in enumerate(raw_clauses):
            here = f"{where}.clauses[{i}]"
            if not isinstance(raw, Mapping):
                raise ConfigurationError(f"{here}: must be a table/object")
            if "clauses" in raw:
                clauses.append(cls.from_polar(raw, here, _depth + 1))
                continue
            missing = [k for k in ("operator", "property", "value") if k not in raw]
            if missing:
                raise ConfigurationError(f"{here}: missing {sorted(missing)}")
            try:
                clauses.append(FilterClause(raw["property"], raw["operator"], raw["value"]))
            except ConfigurationError as exc:
                raise ConfigurationError(f"{here}: {exc}".replace("filter.clauses.", "")) from None
        return cls(cast(Conjunction, data.get("conjunction", "and")), tuple(clauses))

    def event_template(self) -> tuple[str | None, dict[str, ClauseValue]]:
        """The event name and metadata an event must carry to match, read from top-level ``eq`` clauses
        of an ``and`` filter. Reservations use it to record usage on the meter's behalf."""
        name: str | None = None
        metadata: dict[str, ClauseValue] = {}
        if self.conjunction != "and":
            return None, {}
        for clause in self.clauses:
            if isinstance(clause, FilterClause) and clause.operator == "eq":
                if clause.property == "name" and isinstance(clause.value, str):
                    name = clause.value
                elif clause.property not in ("name", "source", "timestamp"):
                    metadata[clause.property] = clause.value
        return name, metadata


@dataclass(frozen=True, slots=True)
class Aggregation:
    """How matching events become one number: count, or sum/max/min/avg/unique of a property."""

    func: AggregationFunc
    property: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.func, str) or self.func not in _FUNCS:
            raise ConfigurationError(
                f"aggregation.func: must be one of {sorted(_FUNCS)}, got {describe(self.func, 40)}"
            )
        if self.func == "count":
            if self.property is not None:
                raise ConfigurationError("aggregation.property: count takes no property")
            return
        if not isinstance(self.property, str) or not normalize_property(self.property):
            raise ConfigurationError(f"aggregation.property: {self.func} needs the property to aggregate")
        _text(self.property, "aggregation.property")
        object.__setattr__(self, "property", normalize_property(self.property))

    @classmethod
    def count(cls) -> Aggregation:
        return cls("count")

    @classmethod
    def sum(cls, prop: str) -> Aggregation:
        return cls("sum", prop)

    @classmethod
    def max(cls, prop: str) -> Aggregation:
        return cls("max", prop)

    @classmethod
    def min(cls, prop: str) -> Aggregation:
        return cls("min", prop)

    @classmethod
    def avg(cls, prop: str) -> Aggregation:
        return cls("avg", prop)

    @classmethod
    def unique(cls, prop: str) -> Aggregation:
        return cls("unique", prop)

    def to_polar(self) -> dict[str, Any]:
        # server/polar/meter/schemas.py: always send func, even where the SDK marks it optional.
        if self.func == "count":
            return {"func": "count"}
        return {"func": self.func, "property": self.property}

    @classmethod
    def from_polar(cls, data: Mapping[str, Any], where: str = "aggregation") -> Aggregation:
        if not isinstance(data, Mapping) or "func" not in data:
            raise ConfigurationError(f"{where}.func: required (one of {sorted(_FUNCS)})")
        unknown = [k for k in data if k not in ("func", "property")]
        if unknown:
            raise ConfigurationError(f"{where}: unknown keys {sorted(map(_key_text, unknown))}")
        try:
            return cls(data["func"], data.get("property"))
        except ConfigurationError as exc:
            raise ConfigurationError(str(exc).replace("aggregation", where, 1)) from None


@dataclass(frozen=True, slots=True)
class Meter:
    """A meter: which events count (``filter``) and how they add up (``aggregation``).

    ``slug`` is the code-facing key (``"api_requests"``); ``name`` is the display name Polar shows
    and the key ``setup`` matches on.
    """

    slug: str
    name: str
    filter: Filter
    aggregation: Aggregation
    unit: MeterUnit = "scalar"

    def __post_init__(self) -> None:
        # fullmatch: with match, "$" would let a trailing newline through.
        if not isinstance(self.slug, str) or not _SLUG.fullmatch(self.slug):
            raise ConfigurationError(
                f"meter {describe(self.slug, 40)}: slug must be lowercase letters, digits and underscores, "
                "starting with a letter, at most 64 characters"
            )
        if not isinstance(self.name, str) or len(self.name) < _MIN_METER_NAME:
            got = f"got {len(self.name)}" if isinstance(self.name, str) else f"got {describe(self.name, 40)}"
            raise ConfigurationError(
                f"meter {self.slug!r}: name must be at least {_MIN_METER_NAME} characters, {got}"
            )
        _text(self.name, f"meter {self.slug!r}: name")
        if not isinstance(self.filter, Filter):
            raise ConfigurationError(f"meter {self.slug!r}: filter must be a Filter")
        if not isinstance(self.aggregation, Aggregation):
            raise ConfigurationError(f"meter {self.slug!r}: aggregation must be an Aggregation")
        if self.unit not in ("scalar", "token", "custom"):
            raise ConfigurationError(f"meter {self.slug!r}: unit must be scalar, token or custom")

    @classmethod
    def for_event(
        cls,
        slug: str,
        event: str,
        aggregation: Aggregation | None = None,
        *,
        name: str | None = None,
        unit: MeterUnit = "scalar",
    ) -> Meter:
        """A meter over one event name: ``Meter.for_event("api_requests", "api.request")`` counts them."""
        return cls(
            slug=slug,
            name=name or slug.replace("_", " ").title(),
            filter=Filter.event(event),
            aggregation=aggregation or Aggregation.count(),
            unit=unit,
        )

    @property
    def event_name(self) -> str | None:
        """The event name this meter listens to, when its filter names exactly one."""
        return self.filter.event_template()[0]

    def to_polar(self) -> dict[str, Any]:
        """The body of Polar's ``MeterCreate`` (never with ``organization_id``)."""
        return {
            "name": self.name,
            "unit": self.unit,
            "filter": self.filter.to_polar(),
            "aggregation": self.aggregation.to_polar(),
        }

    @classmethod
    def from_mapping(cls, slug: str, data: Mapping[str, Any]) -> Meter:
        """Build from a ``metering.toml`` table. Either ``event = "..."`` or a full ``filter`` table."""
        where = f"meter {describe(slug, 40)}"
        if not isinstance(data, Mapping):
            raise ConfigurationError(f"{where}: must be a table")
        known = ("name", "event", "filter", "aggregation", "func", "property", "unit")
        unknown = [k for k in data if k not in known]
        if unknown:
            raise ConfigurationError(f"{where}: unknown keys {sorted(map(_key_text, unknown))}")
        try:
            if "filter" in data and "event" in data:
                raise ConfigurationError("give either 'event' or 'filter', not both")
            if "filter" in data:
                flt = Filter.from_polar(data["filter"])
            elif "event" in data:
                if not isinstance(data["event"], str):
                    raise ConfigurationError("event: must be a string")
                flt = Filter.event(data["event"])
            else:
                raise ConfigurationError("needs 'event' (an event name) or 'filter'")
            if "aggregation" in data:
                agg = Aggregation.from_polar(data["aggregation"])
            else:
                agg = Aggregation.from_polar(
                    {
                        "func": data.get("func", "count"),
                        **({"property": data["property"]} if "property" in data else {}),
                    }
                )
            return cls(
                slug=slug,
                name=data.get("name", slug.replace("_", " ").title()),
                filter=flt,
                aggregation=agg,
                unit=data.get("unit", "scalar"),
            )
        except ConfigurationError as exc:
            msg = str(exc)
            raise ConfigurationError(msg if msg.startswith(where) else f"{where}: {msg}") from None


@dataclass(frozen=True, slots=True)
class Plan:
    """Credits per meter for each billing period. On the embedded engine a plan is applied directly;
    on Polar ``setup`` provisions it as a free recurring product with one meter-credit benefit per
    meter (``docs/polar.md``). Meters a plan does not name have no limit.

    With ``rollover`` the unused credit of a period carries into the next (Polar's rollover formula:
    ``max(0, min(credited - used, credited))``, ``server/polar/customer_meter/service.py`` at c6c3645).

    ``product_id`` names an existing Polar product instead (a paid plan, sold through Polar's
    checkout): ``setup`` then only checks that product's benefits against ``credits``, and
    ``subscribe`` on ``polar://`` refuses the plan, pointing to the checkout.
    """

    name: str
    credits: Mapping[str, float] = field(default_factory=dict)
    interval: Interval = "month"
    rollover: bool = False
    product_id: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise ConfigurationError("plan.name: must be a non-empty string")
        _text(self.name, "plan.name")
        who = f"plan {describe(self.name, 60)}"
        if self.interval not in ("month", "year"):
            raise ConfigurationError(
                f"{who}: interval must be 'month' or 'year', got {describe(self.interval, 40)}"
            )
        if not isinstance(self.rollover, bool):
            raise ConfigurationError(f"{who}: rollover must be true or false")
        if not isinstance(self.credits, Mapping):
            raise ConfigurationError(f"{who}: credits must map meter slugs to numbers")
        if self.product_id is not None:
            try:
                product = str(uuid.UUID(self.product_id)) if isinstance(self.product_id, str) else None
            except ValueError:
                product = None
            if product is None:
                raise ConfigurationError(
                    f"{who}: product_id must be a Polar product id (a UUID), "
                    f"got {describe(self.product_id, 60)}"
                )
            object.__setattr__(self, "product_id", product)
        clean: dict[str, float] = {}
        for slug, units in self.credits.items():
            if not isinstance(slug, str) or text_error(slug) is not None:
                raise ConfigurationError(f"{who}: credits keys must be meter slugs, got {describe(slug, 40)}")
            if (
                isinstance(units, bool)
                or not isinstance(units, int | float)
                or (isinstance(units, int) and not 0 <= units <= INT_MAX)  # before isfinite, which overflows
                or not math.isfinite(units)
                or units < 0
            ):
                raise ConfigurationError(f"{who}: credits[{describe(slug, 60)}] must be a finite number >= 0")
            clean[slug] = units
        object.__setattr__(self, "credits", clean)

    @property
    def is_paid(self) -> bool:
        """True for a plan that names an existing (paid) Polar product."""
        return self.product_id is not None


def _default_meters() -> tuple[Meter, ...]:
    return (
        Meter("api_requests", "API Requests", Filter.event("api.request"), Aggregation.count()),
        Meter("storage_gb", "Storage (GB)", Filter.event("storage.update"), Aggregation.max("size_gb")),
        Meter("ai_tokens", "AI Tokens", Filter.event("ai.tokens"), Aggregation.sum("tokens"), unit="token"),
        Meter("team_seats", "Team Seats", Filter.event("seat.active"), Aggregation.unique("user_id")),
    )


DEFAULT_METERS: tuple[Meter, ...] = _default_meters()


@dataclass(frozen=True)
class Catalog:
    """The meters and plans an app uses: the single source of truth for engines and ``setup``.

    ``default_plan`` names the plan that limits a customer with no subscription (``None``: such a
    customer has no limit, see ``docs/semantics.md``).
    """

    meters: tuple[Meter, ...] = DEFAULT_METERS
    plans: tuple[Plan, ...] = ()
    default_plan: str | None = None

    def __post_init__(self) -> None:
        for name in ("meters", "plans"):
            items = getattr(self, name)
            if isinstance(items, str | bytes | Mapping) or not isinstance(items, Iterable):
                raise ConfigurationError(f"{name}: must be a list, got {describe(items, 40)}")
        meters = tuple(self.meters)
        plans = tuple(self.plans)
        seen: set[str] = set()
        names: set[str] = set()
        for meter in meters:
            if not isinstance(meter, Meter):
                raise ConfigurationError(f"meters: expected Meter objects, got {describe(meter, 40)}")
            if meter.slug in seen:
                raise ConfigurationError(f"meter {meter.slug!r}: slug is defined twice")
            if meter.name in names:
                raise ConfigurationError(
                    f"meter {meter.slug!r}: name {meter.name!r} is used by another meter"
                )
            seen.add(meter.slug)
            names.add(meter.name)
        plan_names: set[str] = set()
        for plan in plans:
            if not isinstance(plan, Plan):
                raise ConfigurationError(f"plans: expected Plan objects, got {describe(plan, 40)}")
            if plan.name in plan_names:
                raise ConfigurationError(f"plan {plan.name!r}: defined twice")
            plan_names.add(plan.name)
            for slug in plan.credits:
                if slug not in seen:
                    raise ConfigurationError(f"plan {plan.name!r}: credits name unknown meter {slug!r}")
        if self.default_plan is not None and (
            not isinstance(self.default_plan, str) or self.default_plan not in plan_names
        ):
            raise ConfigurationError(
                f"default_plan: must name one of the catalog's plans {sorted(plan_names)}, "
                f"got {describe(self.default_plan, 60)}"
            )
        object.__setattr__(self, "meters", meters)
        object.__setattr__(self, "plans", plans)
        object.__setattr__(self, "_by_slug", {m.slug: m for m in meters})
        object.__setattr__(self, "_plans", {p.name: p for p in plans})

    def meter(self, slug: str) -> Meter:
        """The meter called ``slug``; ``ConfigurationError`` naming the known slugs otherwise."""
        try:
            return self._by_slug[slug]  # type: ignore[attr-defined,no-any-return]
        except KeyError:
            raise ConfigurationError(
                f"meter: unknown meter {describe(slug, 60)}; known meters are {sorted(self._by_slug)}"  # type: ignore[attr-defined]
            ) from None

    def plan(self, name: str) -> Plan:
        try:
            return self._plans[name]  # type: ignore[attr-defined,no-any-return]
        except KeyError:
            raise ConfigurationError(
                f"plan: unknown plan {describe(name, 60)}; known plans are {sorted(self._plans)}"  # type: ignore[attr-defined]
            ) from None

    @property
    def slugs(self) -> tuple[str, ...]:
        return tuple(m.slug for m in self.meters)

    def has_plan(self, name: str) -> bool:
        return name in self._plans  # type: ignore[attr-defined]

    @property
    def default(self) -> Plan | None:
        """The plan of customers without a subscription, if the catalog names one."""
        return None if self.default_plan is None else self.plan(self.default_plan)

    def with_meters(self, meters: Iterable[Meter]) -> Catalog:
        return Catalog(tuple(meters), self.plans, self.default_plan)

    def describe(self) -> str:
        """``4 meters, 2 plans (default: free)``: how CLIs and ``init()`` say what they loaded."""
        text = f"{len(self.meters)} meters, {len(self.plans)} plan{'s' if len(self.plans) != 1 else ''}"
        return text + (f" (default: {self.default_plan})" if self.default_plan else "")


def _key_text(key: object) -> str:
    return printable(key) if isinstance(key, str) else describe(key, 40)


def _catalog_from_toml(path: Path) -> Catalog:
    shown = describe(str(path), 200)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigurationError(f"catalog: file {shown} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"catalog: {shown} is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigurationError(f"catalog: {shown} is not UTF-8 text") from None
    except RecursionError:
        raise ConfigurationError(f"catalog: {shown} nests too deeply") from None
    except (OSError, ValueError) as exc:  # a directory, no permission, a NUL in the path
        raise ConfigurationError(f"catalog: cannot read {shown}: {type(exc).__name__}") from None
    unknown = set(data) - {"meters", "plans", "defaults"}
    if unknown:
        raise ConfigurationError(f"catalog: {path}: unknown top-level keys {sorted(unknown)}")
    meters: list[Meter] = []
    defaults = data.get("defaults", True)
    default_plan: Any = None
    if isinstance(defaults, Mapping):
        # [defaults] meters = true|false (the four default meters), plan = "free" (the default plan)
        extra = [k for k in defaults if k not in ("meters", "plan")]
        if extra:
            raise ConfigurationError(
                f"catalog: {path}: [defaults] has unknown keys {sorted(map(_key_text, extra))}"
            )
        default_plan = defaults.get("plan")
        if default_plan is not None and not isinstance(default_plan, str):
            raise ConfigurationError(f"catalog: {path}: [defaults] plan must be a plan name")
        defaults = defaults.get("meters", True)
    if not isinstance(defaults, bool):
        raise ConfigurationError(
            f"catalog: {path}: defaults must be true or false, or a [defaults] table (meters, plan)"
        )
    if defaults:
        meters.extend(DEFAULT_METERS)
    raw_meters = data.get("meters", {})
    if not isinstance(raw_meters, Mapping):
        raise ConfigurationError(f"catalog: {path}: [meters.<slug>] tables expected")
    # A meter named like a default one replaces it (docs/polar.md, "One catalog").
    default_slugs = {m.slug for m in meters}
    for slug, table in raw_meters.items():
        _text(slug, "meters")
        meter = Meter.from_mapping(slug, table)
        if slug in default_slugs:
            meters = [meter if m.slug == slug else m for m in meters]
        else:
            meters.append(meter)
    plans: list[Plan] = []
    raw_plans = data.get("plans", {})
    if not isinstance(raw_plans, Mapping):
        raise ConfigurationError(f"catalog: {path}: [plans.<name>] tables expected")
    for name, table in raw_plans.items():
        _text(name, "plans")
        if not isinstance(table, Mapping):
            raise ConfigurationError(f"plan {name!r}: must be a table")
        extra = [k for k in table if k not in ("credits", "interval", "rollover", "product_id")]
        if extra:
            raise ConfigurationError(f"plan {name!r}: unknown keys {sorted(map(_key_text, extra))}")
        plans.append(
            Plan(
                name,
                credits=table.get("credits", {}),
                interval=table.get("interval", "month"),
                rollover=table.get("rollover", False),
                product_id=table.get("product_id"),
            )
        )
    return Catalog(tuple(meters), tuple(plans), default_plan)


def load_catalog(source: str | Path | Catalog | Iterable[Meter] | None = None) -> Catalog:
    """Load a catalog from ``None`` (the four default meters), a ``metering.toml`` path, a
    ``package.module:attribute`` naming a Catalog or a list of meters, or the objects themselves."""
    if source is None:
        return Catalog()
    if isinstance(source, Catalog):
        return source
    if isinstance(source, Path) or (
        isinstance(source, str) and (source.endswith(".toml") or ":" not in source)
    ):
        return _catalog_from_toml(Path(source))
    if isinstance(source, str):
        module_name, _, attr = source.partition(":")
        try:
            obj: Any = importlib.import_module(module_name)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except Exception as exc:  # ImportError, a relative name (TypeError), an empty one (ValueError), ...
            raise ConfigurationError(
                f"catalog: cannot load {describe(source, 200)}: "
                f"{type(exc).__name__}: {describe(str(exc), 200)}"
            ) from None
        if isinstance(obj, str | Path):
            raise ConfigurationError(
                f"catalog: {describe(source, 200)} names a string, not a Catalog or meters"
            )
        return load_catalog(obj)
    if isinstance(source, bytes | Mapping) or not isinstance(source, Iterable):
        raise ConfigurationError(f"catalog: cannot build a catalog from {describe(source, 40)}")
    return Catalog(tuple(source))


#: the environment variable naming the catalog when ``init()`` and the CLIs are given none
ENV_CATALOG = "METERING_CATALOG"
#: the catalog file read from the working directory when nothing else names one
CATALOG_FILE = "metering.toml"
DEFAULT_SOURCE = "the four default meters"


def resolve_catalog(
    source: str | Path | Catalog | Iterable[Meter] | None = None, env: Mapping[str, str] | None = None
) -> tuple[Catalog, str]:
    """The catalog to use and where it came from, the same way everywhere (``init()``, ``usage``,
    ``dashboard``, ``setup``): ``source`` when given, else ``METERING_CATALOG``, else
    ``./metering.toml`` when that file exists, else the four default meters."""
    if source is not None:
        shown = str(source) if isinstance(source, str | Path) else "the catalog given in code"
        return load_catalog(source), shown
    named = (os.environ if env is None else env).get(ENV_CATALOG)
    if named:
        return load_catalog(named), f"{named} (from {ENV_CATALOG})"
    if Path(CATALOG_FILE).is_file():
        return load_catalog(CATALOG_FILE), f"./{CATALOG_FILE}"
    return Catalog(), DEFAULT_SOURCE
