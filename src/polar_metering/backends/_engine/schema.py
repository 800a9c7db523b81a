"""The engine's tables (SQLAlchemy Core), shared by SQLite and PostgreSQL.

Times are integer microseconds since the Unix epoch: exact, cheap to compare, and the same on both
databases. Limit checks read ``pm_usage`` (one row per customer, meter and billing window, kept up to
date in the same transaction as the events), never ``pm_events``, so a check costs the same at ten
events or ten million.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

__all__ = ["SCHEMA_VERSION", "metadata"]

SCHEMA_VERSION = 5

metadata = MetaData()

# Events: append-only. The unique external_id is Polar's permanent dedup key
# (server/polar/event/repository.py); NULLs never clash,
# so events sent without one are never deduplicated, as in Polar.
events = Table(
    "pm_events",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("external_id", Text, nullable=True, unique=True),
    Column("customer", Text, nullable=False),  # the customer key: external id, or Polar customer id
    Column("external_customer_id", Text, nullable=True),
    Column("customer_id", String(36), nullable=True),
    Column("name", String(128), nullable=False),
    Column("ts_us", BigInteger, nullable=False),
    Column("ingested_us", BigInteger, nullable=False),
    Column("metadata", Text, nullable=False),
    Column("source", String(16), nullable=False, default="user"),
)
Index("ix_pm_events_customer_ts", events.c.customer, events.c.ts_us)

meters = Table(
    "pm_meters",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("slug", String(64), nullable=True, unique=True),
    Column("name", Text, nullable=False),
    Column("filter", Text, nullable=False),
    Column("aggregation", Text, nullable=False),
    Column("unit", String(16), nullable=False, default="scalar"),
    Column("custom_label", Text, nullable=True),
    Column("custom_multiplier", Integer, nullable=True),
    Column("metadata", Text, nullable=False, default="{}"),
    Column("created_us", BigInteger, nullable=False),
    Column("modified_us", BigInteger, nullable=True),
    Column("archived_us", BigInteger, nullable=True),
    Column("locked", Boolean, nullable=False, default=False),
)

# Polar customer records (the emulator's /v1/customers). The library itself needs none: it keys usage
# by the external customer id it tracks with.
customers = Table(
    "pm_customers",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("external_id", Text, nullable=True, unique=True),
    Column("email", Text, nullable=True),
    Column("name", Text, nullable=True),
    Column("metadata", Text, nullable=False, default="{}"),
    Column("created_us", BigInteger, nullable=False),
    Column("modified_us", BigInteger, nullable=True),
)

# Billing state per customer key: the plan, its period anchor, the last manual reset, and (schema
# 4) when a plan canceled at period end stops applying.
accounts = Table(
    "pm_accounts",
    metadata,
    Column("customer", Text, primary_key=True),
    Column("plan", Text, nullable=True),
    Column("anchor_us", BigInteger, nullable=True),
    Column("reset_us", BigInteger, nullable=True),
    Column("ends_us", BigInteger, nullable=True),
)

plans = Table(
    "pm_plans",
    metadata,
    Column("name", Text, primary_key=True),
    Column("credits", Text, nullable=False),
    Column("interval", String(8), nullable=False),
    Column("rollover", Boolean, nullable=False, default=False),
)

# Rollups: one row per (customer, meter, window). ``n`` counts contributing values (events for count,
# numeric values for sum/max/min/avg, distinct values for unique); ``credited`` NULL means no limit.
usage = Table(
    "pm_usage",
    metadata,
    Column("customer", Text, primary_key=True),
    Column("meter_id", String(36), primary_key=True),
    Column("window_us", BigInteger, primary_key=True),
    Column("window_end_us", BigInteger, nullable=True),
    Column("n", BigInteger, nullable=False, default=0),
    Column("total", Float, nullable=False, default=0.0),
    Column("vmax", Float, nullable=True),
    Column("vmin", Float, nullable=True),
    Column("credited", Float, nullable=True),
    # The rollover-flagged part of ``credited`` (Polar's R, server/polar/customer_meter/service.py), clamped
    # at 0; NULL on rows written
    # before schema 2, read as "all of it on a rollover plan, none otherwise" (what those rows meant).
    Column("credited_rollover", Float, nullable=True),
    Column("created_us", BigInteger, nullable=False),
    Column("modified_us", BigInteger, nullable=True),
)

# Distinct values seen by unique meters, per window: exact COUNT(DISTINCT) without reading events.
usage_values = Table(
    "pm_usage_values",
    metadata,
    Column("customer", Text, primary_key=True),
    Column("meter_id", String(36), primary_key=True),
    Column("window_us", BigInteger, primary_key=True),
    Column("value_key", Text, primary_key=True),
)

holds = Table(
    "pm_holds",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("customer", Text, nullable=False),
    Column("meter_id", String(36), nullable=False),
    Column("amount", Float, nullable=False),
    Column("expires_us", BigInteger, nullable=False),
    Column("created_us", BigInteger, nullable=False),
)
Index("ix_pm_holds_customer_meter", holds.c.customer, holds.c.meter_id)

# Polar objects the emulator serves and the engine itself never reads (products, benefits,
# subscriptions, benefit grants), each one JSON document in Polar's shape (schema 4).
polar_objects = Table(
    "pm_polar_objects",
    metadata,
    Column("kind", String(32), primary_key=True),
    Column("id", String(36), primary_key=True),
    Column("customer_id", String(36), nullable=True),
    Column("body", Text, nullable=False),
    Column("created_us", BigInteger, nullable=False),
)
Index("ix_pm_polar_objects_customer", polar_objects.c.kind, polar_objects.c.customer_id)

# The ledger's relay queue (schema 5): events a ``polar://`` ledger stored and has not yet handed to
# the delivery outbox. Written in the same transaction as the events themselves (a transactional
# outbox), emptied by the relay once the outbox has the events (``backends/_polar/_ledger.py``).
# Unused by the plain engine.
relay_queue = Table(
    "pm_relay_queue",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False),
)

info = Table(
    "pm_info",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)
