"""What every vendor shares, with no I/O: settings, usage, prices, estimates, and how a reservation's
commit reproduces the call's one event.

A vendor module describes its endpoints (:class:`Endpoint`): how to read usage from a response body or
from the items of a stream, and what to change in a request (OpenAI's ``include_usage``). The shells in
``_record.py`` do the metering I/O, sync or async, around those descriptions.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, TypeAlias

from polar_metering._catalog import Meter, normalize_property
from polar_metering._events import Event, MetadataValue
from polar_metering._exceptions import ConfigurationError, ValidationError

__all__ = [
    "Endpoint",
    "Estimate",
    "Price",
    "PriceTable",
    "Settings",
    "StreamReader",
    "Usage",
    "commit_amount",
    "cost_cents",
    "get",
    "logger",
    "to_int",
]

logger = logging.getLogger("polar_metering.llm")

Estimate: TypeAlias = "float | Callable[[Mapping[str, Any]], float | None] | None"
"""A reservation size: a number of units, or a function of the request's parameters (``None`` = none)."""

# Request parameters that bound a call's output, by vendor API (chat, responses, messages, completions).
_MAX_OUTPUT_KEYS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
# Polar's _cost.amount: Decimal(max_digits=17, decimal_places=12), i.e. at most 5 digits before the point
# (server/polar/event/schemas.py, CostMetadata). We keep 10 places so a float carries them exactly.
_COST_PLACES = 10
_COST_MAX = Decimal(100_000)


@dataclass(frozen=True, slots=True)
class Price:
    """A model's list price in US dollars per million tokens, as vendors publish it.

    ``cached_input`` prices cache reads (default: the ``input`` price). The library ships no prices:
    they change, and yours (discounts, batch, regions) are the ones that count.
    """

    input: float
    output: float
    cached_input: float | None = None

    def __post_init__(self) -> None:
        for name in ("input", "output", "cached_input"):
            value = getattr(self, name)
            if value is None and name == "cached_input":
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise ConfigurationError(f"Price.{name}: must be a finite number of dollars per 1M tokens")
            if value < 0:
                raise ConfigurationError(f"Price.{name}: must be >= 0")


PriceTable: TypeAlias = Mapping[str, Price]
"""Prices by model name, matched exactly against the model you asked for, then the one that answered."""


@dataclass(slots=True)
class Usage:
    """Token counts of one call as Polar's ``_llm`` wants them: ``input_tokens`` include cached ones."""

    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int | None = None
    model: str | None = None  # the model the response names (e.g. a dated snapshot)


def get(obj: Any, key: str) -> Any:
    """``obj[key]`` for JSON objects, ``obj.key`` for SDK models; ``None`` when absent."""
    if isinstance(obj, Mapping):
        return obj.get(key)
    return getattr(obj, key, None)


def to_int(value: Any) -> int | None:
    """A token count from a vendor payload: a non-negative int, or ``None`` for anything else."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def cost_cents(price: Price, usage: Usage) -> float | None:
    """The call's cost in cents (Polar's ``_cost.amount``), or ``None`` when it cannot be carried."""
    cached = usage.cached_input_tokens or 0
    cached_price = price.input if price.cached_input is None else price.cached_input
    dollars = (
        Decimal(repr(price.input)) * (usage.input_tokens - cached)
        + Decimal(repr(cached_price)) * cached
        + Decimal(repr(price.output)) * usage.output_tokens
    ) / 1_000_000
    cents = (dollars * 100).quantize(Decimal(1).scaleb(-_COST_PLACES))
    if cents >= _COST_MAX:
        logger.warning("polar_metering.llm: cost %s cents is beyond Polar's _cost limit; not sent", cents)
        return None
    return float(cents)


@dataclass(frozen=True, slots=True)
class Settings:
    """How one metered client records: for whom, on which meter it gates, with what prices."""

    customer: str | None = None
    metering: Any = None  # a Metering / AsyncMetering, or None for the default client at call time
    limit: str | None = None
    reserve: Any = None  # Estimate
    prices: PriceTable | None = None
    metadata: Mapping[str, MetadataValue] = field(default_factory=dict)
    vendor: str | None = None  # overrides the vendor name recorded in _llm.vendor

    def estimate(self, params: Mapping[str, Any]) -> float | None:
        """The units to reserve before a call: ``reserve`` if given, else the request's output bound."""
        reserve = self.reserve
        if reserve is None:
            for key in _MAX_OUTPUT_KEYS:
                value = params.get(key)
                if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                    return float(value)
            return None
        value = reserve(params) if callable(reserve) else reserve
        if value is None:
            return None
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value < 0
        ):
            raise ValidationError(
                "reserve", "must be a finite number >= 0 (or a function returning one)", value
            )
        return float(value) if value > 0 else None

    def price_for(self, *models: str | None) -> Price | None:
        if not self.prices:
            return None
        for model in models:
            if model is not None and model in self.prices:
                return self.prices[model]
        return None


class StreamReader:
    """Follows a stream's items and keeps the last usage the vendor reported (vendors override
    :meth:`item`). ``keep`` says whether the caller should see the item."""

    __slots__ = ("usage",)

    def __init__(self) -> None:
        self.usage: Usage | None = None

    def item(self, item: Any) -> bool:  # pragma: no cover - every vendor overrides it
        return True


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One metered API route of a vendor."""

    vendor: str
    path: str
    read: Callable[[Any], Usage | None]  # a response body (SDK model or JSON object) -> usage
    reader: Callable[[bool], StreamReader]  # (we asked for usage on the user's behalf) -> a reader
    prepare: Callable[[dict[str, Any]], bool] | None = None  # edits the body; True if it asked for usage


def commit_amount(meter: Meter, event: Event) -> float | None:
    """The ``actual`` for which ``Reservation.commit`` records exactly ``event`` on ``meter``, or ``None``.

    A reservation records its usage through the meter's own event template (``Filter.event_template``):
    when that template is this call's event (the default ``ai_tokens`` meter: ``ai.tokens``, sum of
    ``tokens``), committing records the call's one event atomically with the end of the hold. Any other
    meter (``_llm.total_tokens``, a cost meter) gets the event tracked as is and the hold released.
    """
    name, fixed = meter.filter.event_template()
    if name != event.name or any(event.metadata.get(k) != v for k, v in fixed.items()):
        return None
    func, prop = meter.aggregation.func, meter.aggregation.property
    if func == "count":
        return 1.0
    if func == "unique" or prop is None:
        return None
    value = event.metadata.get(normalize_property(prop))
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)
