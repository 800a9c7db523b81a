"""Two customer-meter behaviours of Polar's server that contradict its own documentation, played
by the emulator so an app sees on it what it will see on Polar (``--no-polar-quirks`` turns them off;
the embedded engine never has them, see ``docs/semantics.md``).

Both come from ``server/polar/customer_meter/service.py`` at c6c3645:

- **Credits leak into catch-all meters.** A customer meter's credit is the running sum of the
  ``meter.credited`` events in its window that either name the meter or match the meter's *own
  filter* (``_get_credit_events`` uses the meter clause next to the system clause). A filter that
  matches system events, such as an empty one, so takes in every other meter's credits.
- **Dotted properties read as missing.** For a customer with an external id, max/min/avg/unique
  are computed over ``user_metadata[property]`` taken as one key (``_get_raw_aggregation_column``),
  so ``_llm.total_tokens`` reads the key ``"_llm.total_tokens"``, which events do not have: the
  meter shows 0. Count and sum, and ``GET /v1/meters/{id}/quantities``, follow the dots.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from polar_metering._evaluate import unique_key
from polar_metering._meter_checks import aggregation_takes, credit_event, reads_dotted_as_missing
from polar_metering.backends._engine.polar_surface import aggregate_values

if TYPE_CHECKING:
    from polar_metering.backends._engine.backend import LocalEngine
    from polar_metering.backends._engine.records import CustomerMeterRecord
    from polar_metering.backends._engine.rollups import CompiledMeter

__all__ = ["PolarQuirks"]


def _absorbs(meter: CompiledMeter, other_meter_id: str, units: float = 1.0) -> bool:
    # ``_meter_checks.absorbs_credits`` with the meter's compiled filter.
    metadata = credit_event(other_meter_id, units)
    return meter.matcher("meter.credited", "system", 0, metadata) and aggregation_takes(
        meter.aggregation, metadata
    )


class PolarQuirks:
    """Rewrites the engine's customer-meter rows into what Polar's server reports."""

    def __init__(self, engine: LocalEngine, *, enabled: bool = True) -> None:
        self.engine = engine
        self.enabled = enabled
        self._cache: tuple[dict[str, CompiledMeter], frozenset[str], frozenset[str]] | None = None

    def apply(self, records: Sequence[CustomerMeterRecord]) -> list[CustomerMeterRecord]:
        if not self.enabled or not records:
            return list(records)
        compiled = self.engine.compiled_meters()
        dotted, catch_all = self._affected(compiled)
        if not dotted and not catch_all:
            return list(records)
        events_of: dict[str, list[tuple[str, str, int, dict[str, Any]]]] = {}
        credits_of: dict[str, dict[str, float]] = {}
        out = []
        for record in records:
            customer, meter_id = record.customer, record.meter.id
            consumed, credited = record.consumed_units, record.credited_units
            if meter_id in dotted and customer.external_id is not None:
                key = customer.external_id
                if key not in events_of:
                    events_of[key] = self.engine.window_events(key)
                consumed = self._literal_consumed(compiled[meter_id], events_of[key])
            if meter_id in catch_all:
                if customer.id not in credits_of:
                    credits_of[customer.id] = self._credits(customer.id)
                m = compiled[meter_id]
                for other, units in credits_of[customer.id].items():
                    if other != meter_id and units and _absorbs(m, other, units):
                        credited += units
            if (consumed, credited) != (record.consumed_units, record.credited_units):
                record = dataclasses.replace(
                    record, consumed_units=consumed, credited_units=credited, balance=credited - consumed
                )
            out.append(record)
        return out

    def _affected(self, compiled: dict[str, CompiledMeter]) -> tuple[frozenset[str], frozenset[str]]:
        """The meters each quirk touches; worked out again only when the engine reloads its meters."""
        cached = self._cache
        if cached is not None and cached[0] is compiled:
            return cached[1], cached[2]
        dotted = frozenset(m.id for m in compiled.values() if reads_dotted_as_missing(m.aggregation))
        catch_all = frozenset(
            m.id
            for m in compiled.values()
            if not m.archived and any(_absorbs(m, other) for other in compiled if other != m.id)
        )
        self._cache = (compiled, dotted, catch_all)
        return dotted, catch_all

    def _credits(self, customer_id: str) -> dict[str, float]:
        # Every meter's own credit in the current window, archived meters included: their credit
        # events are still in the window.
        rows = self.engine.customer_meters(
            customer_ids=[customer_id], meter_ids=list(self.engine.compiled_meters())
        )
        return {r.meter.id: r.credited_units for r in rows if r.credited_units}

    @staticmethod
    def _literal_consumed(
        meter: CompiledMeter, events: Sequence[tuple[str, str, int, dict[str, Any]]]
    ) -> float:
        prop = meter.aggregation.property or ""
        values: list[Any] = []
        for name, source, ts, metadata in events:
            if source != "user" or not meter.matcher(name, source, ts, metadata):
                continue
            if not aggregation_takes(meter.aggregation, metadata):
                continue
            raw = metadata.get(prop)  # one key, dots and all
            if meter.func == "unique":
                values.append(unique_key(raw))
            elif isinstance(raw, int | float) and not isinstance(raw, bool):
                values.append(float(raw))
        return aggregate_values(meter.func, values)
