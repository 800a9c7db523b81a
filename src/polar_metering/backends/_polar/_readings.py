"""Readings from Polar: which Polar meter is which catalog meter, and a customer's customer-meter rows.

Small pieces, each replaceable: :class:`MeterDirectory` maps catalog meters to Polar meter ids,
:func:`fetch_rows` asks Polar for one customer's rows, :func:`to_reading` turns a row (or its absence)
into a :class:`MeterReading`. The cache and the overlay of unsettled usage (``_limits.py``) wrap these.

Customer ids only ever travel as query parameters (``external_customer_id=...``), which httpx encodes,
never in a path: the SDK does not escape path parameters, so ``user/1`` or ``a?b`` would break a
path-based call such as ``customers.get_state_external`` (polar-sdk polar/base.py).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict
from typing import Any, Literal

from polar_metering._catalog import Aggregation, Filter, Meter
from polar_metering._events import describe
from polar_metering._exceptions import ConfigurationError, NotFound
from polar_metering._status import MeterReading
from polar_metering.backends._polar._sdk import Polar, PolarSettings, polar_errors

__all__ = [
    "NoCredits",
    "MeterDirectory",
    "catalog_definition",
    "check_no_credits",
    "fetch_rows",
    "normalized_definition",
    "to_reading",
]

log = logging.getLogger("polar_metering")

NoCredits = Literal["unlimited", "deny"]
_PAGE = 100  # Polar clamps list limits to 100 (server/polar/kit/pagination.py)


def check_no_credits(value: object) -> NoCredits:
    if value == "unlimited" or value == "deny":
        return value
    raise ConfigurationError(f"no_credits: must be 'unlimited' or 'deny', got {describe(value, 40)}")


def normalized_definition(filter_: Any, aggregation: Any) -> dict[str, Any] | None:
    """A Polar meter's filter and aggregation in our canonical JSON form, or ``None`` when they do not
    parse as a catalog filter (then they differ from anything the catalog defines).

    Polar strips ``metadata.`` from properties and coerces ``2.0`` to ``2`` (server/polar/meter/filter.py);
    our
    ``Filter``/``Aggregation`` do the same, so two definitions that Polar treats alike compare equal.
    """
    raw_filter = asdict(filter_) if not isinstance(filter_, dict) else filter_
    raw_agg = asdict(aggregation) if not isinstance(aggregation, dict) else aggregation
    try:
        return {
            "filter": Filter.from_polar(raw_filter).to_polar(),
            "aggregation": Aggregation.from_polar(raw_agg).to_polar(),
        }
    except ConfigurationError:
        return None


def catalog_definition(meter: Meter) -> dict[str, Any]:
    return {"filter": meter.filter.to_polar(), "aggregation": meter.aggregation.to_polar()}


class MeterDirectory:
    """Polar meter ids for catalog meters, matched by name (``setup`` creates them by name).

    Polar's meter list is read once and kept. A name that is missing triggers a fresh listing at most
    every ``refresh_after`` seconds, so running ``setup`` later is picked up without a restart.
    Names are not unique in Polar (server/polar/meter/schemas.py): among several non-archived meters with one
    name, the one
    whose definition equals the catalog's wins, else the oldest.
    """

    def __init__(
        self,
        client: Polar,
        settings: PolarSettings,
        monotonic: Callable[[], float],
        *,
        refresh_after: float = 60.0,
    ) -> None:
        self._client = client
        self._settings = settings
        self._monotonic = monotonic
        self._refresh_after = refresh_after
        self._by_name: dict[str, list[Any]] | None = None
        self._listed_at = 0.0
        self._ids: dict[str, str] = {}
        self._lock = threading.Lock()

    def _list(self) -> dict[str, list[Any]]:
        by_name: dict[str, list[Any]] = {}
        with polar_errors("list meters", self._settings):
            for meter in self._client.meters.iter_list(is_archived=False, limit=_PAGE):
                by_name.setdefault(meter.name, []).append(meter)
        for metas in by_name.values():
            metas.sort(key=lambda m: m.created_at)
        return by_name

    def _pick(self, meter: Meter, candidates: Sequence[Any]) -> str:
        wanted = catalog_definition(meter)
        for candidate in candidates:
            if normalized_definition(candidate.filter, candidate.aggregation) == wanted:
                return str(candidate.id)
        log.warning(
            "polar_metering: Polar meter %r differs from the catalog's %r; readings use it anyway "
            "(run `polar-metering setup` to see the drift)",
            meter.name,
            meter.slug,
        )
        return str(candidates[0].id)

    def ids(self, meters: Iterable[Meter]) -> dict[str, str]:
        """Polar meter id by catalog slug; :class:`NotFound` naming the first meter Polar lacks."""
        meters = list(meters)
        with self._lock:
            missing = [m for m in meters if m.slug not in self._ids]
            if not missing:
                return {m.slug: self._ids[m.slug] for m in meters}
            now = self._monotonic()
            if self._by_name is None or now - self._listed_at >= self._refresh_after:
                self._by_name = self._list()
                self._listed_at = now
            for meter in missing:
                candidates = self._by_name.get(meter.name)
                if not candidates:
                    raise NotFound(
                        f"meter {meter.slug!r}: Polar has no meter named {meter.name!r}; "
                        "run `polar-metering setup` to create the catalog's meters"
                    )
                self._ids[meter.slug] = self._pick(meter, candidates)
            return {m.slug: self._ids[m.slug] for m in meters}


def fetch_rows(
    client: Polar, settings: PolarSettings, customer: str, meter_ids: Sequence[str]
) -> dict[str, Any]:
    """The customer's customer-meter rows on these Polar meters, keyed by meter id
    (server/polar/kit/pagination.py).

    One request for any number of meters: ``meter_id`` repeats in the query. An external id Polar has
    never seen simply yields no rows.
    """
    rows: dict[str, Any] = {}
    with polar_errors("read customer meters", settings):
        for row in client.customer_meters.iter_list(
            external_customer_id=customer, meter_id=list(meter_ids), limit=_PAGE
        ):
            rows[row.meter_id] = row
    return rows


def to_reading(meter: Meter, customer: str, row: Any | None, no_credits: NoCredits) -> MeterReading:
    """A :class:`MeterReading` from Polar's customer meter (server/polar/customer_meter/service.py).

    ``consumed`` is ``consumed_units``. ``credited`` is ``credited_units`` when positive. A customer
    without credits on the meter (no row: unknown to Polar or no activity yet; or a row with 0
    credited units: pay-as-you-go, revoked, or between a reset and the new grant,
    server/polar/subscription/service.py) gets
    ``credited=None`` (no limit) under ``no_credits="unlimited"`` and ``credited=0`` (every use
    refused) under ``no_credits="deny"``.
    """
    consumed = float(row.consumed_units) if row is not None else 0.0
    credited_units = float(row.credited_units) if row is not None else 0.0
    if credited_units > 0:
        credited: float | None = credited_units
    else:
        credited = None if no_credits == "unlimited" else 0.0
    return MeterReading(meter=meter.slug, customer=customer, consumed=consumed, credited=credited)
