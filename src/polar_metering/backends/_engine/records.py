"""Plain records the local engine hands out: the shapes the emulator serves as Polar JSON."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from polar_metering._catalog import Aggregation, Filter

__all__ = ["CustomerMeterRecord", "CustomerRecord", "MeterRecord", "PolarEventIn", "StoredEvent"]


@dataclass(frozen=True, slots=True)
class MeterRecord:
    """A meter as stored by the engine. ``slug`` is set for meters that came from the code catalog."""

    id: str
    name: str
    filter: Filter
    aggregation: Aggregation
    unit: str
    created_at: datetime
    modified_at: datetime | None
    archived_at: datetime | None = None
    slug: str | None = None
    custom_label: str | None = None
    custom_multiplier: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    #: set once a matching event exists; Polar then refuses filter/aggregation changes
    #: (server/polar/meter/service.py)
    locked: bool = False


@dataclass(frozen=True, slots=True)
class CustomerRecord:
    id: str
    external_id: str | None
    email: str | None
    name: str | None
    created_at: datetime
    modified_at: datetime | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CustomerMeterRecord:
    """Polar's CustomerMeter: consumed and credited units in the current window, and the balance."""

    id: str
    customer: CustomerRecord
    meter: MeterRecord
    consumed_units: float
    credited_units: float
    balance: float
    created_at: datetime
    modified_at: datetime | None


@dataclass(frozen=True, slots=True)
class PolarEventIn:
    """An event as Polar's ingest endpoint takes it, already validated by the caller.

    Exactly one of ``customer_id`` (a Polar customer UUID) and ``external_customer_id`` is set.
    ``external_id`` ``None`` means the event is never deduplicated (server/polar/event/repository.py).
    """

    name: str
    timestamp: datetime
    metadata: dict[str, Any]
    external_id: str | None = None
    external_customer_id: str | None = None
    customer_id: str | None = None
    source: str = "user"


@dataclass(frozen=True, slots=True)
class StoredEvent:
    id: str
    name: str
    timestamp: datetime
    ingested_at: datetime
    metadata: dict[str, Any]
    external_id: str | None
    external_customer_id: str | None
    customer_id: str | None
    source: str
