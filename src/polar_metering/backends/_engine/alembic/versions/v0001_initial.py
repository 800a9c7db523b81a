"""Schema version 1: events, meters, customers, accounts, plans, rollups, unique values, holds.

Revision ID: 0001
Revises: (none)

Frozen: later schema changes go in new migrations, never here. ``test_migrations`` checks that a
database built by the migrations matches ``schema.py``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels = None
depends_on = None

SCHEMA_VERSION = 1


def upgrade() -> None:
    op.create_table(
        "pm_events",
        # INTEGER on SQLite makes the key the rowid (autoincrementing); BIGSERIAL on PostgreSQL.
        sa.Column(
            "seq", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True
        ),
        sa.Column("external_id", sa.Text(), nullable=True, unique=True),
        sa.Column("customer", sa.Text(), nullable=False),
        sa.Column("external_customer_id", sa.Text(), nullable=True),
        sa.Column("customer_id", sa.String(36), nullable=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("ts_us", sa.BigInteger(), nullable=False),
        sa.Column("ingested_us", sa.BigInteger(), nullable=False),
        sa.Column("metadata", sa.Text(), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
    )
    op.create_index("ix_pm_events_customer_ts", "pm_events", ["customer", "ts_us"])
    op.create_table(
        "pm_meters",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("slug", sa.String(64), nullable=True, unique=True),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("filter", sa.Text(), nullable=False),
        sa.Column("aggregation", sa.Text(), nullable=False),
        sa.Column("unit", sa.String(16), nullable=False),
        sa.Column("custom_label", sa.Text(), nullable=True),
        sa.Column("custom_multiplier", sa.Integer(), nullable=True),
        sa.Column("metadata", sa.Text(), nullable=False),
        sa.Column("created_us", sa.BigInteger(), nullable=False),
        sa.Column("modified_us", sa.BigInteger(), nullable=True),
        sa.Column("archived_us", sa.BigInteger(), nullable=True),
        sa.Column("locked", sa.Boolean(), nullable=False),
    )
    op.create_table(
        "pm_customers",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("external_id", sa.Text(), nullable=True, unique=True),
        sa.Column("email", sa.Text(), nullable=True),
        sa.Column("name", sa.Text(), nullable=True),
        sa.Column("metadata", sa.Text(), nullable=False),
        sa.Column("created_us", sa.BigInteger(), nullable=False),
        sa.Column("modified_us", sa.BigInteger(), nullable=True),
    )
    op.create_table(
        "pm_accounts",
        sa.Column("customer", sa.Text(), primary_key=True),
        sa.Column("plan", sa.Text(), nullable=True),
        sa.Column("anchor_us", sa.BigInteger(), nullable=True),
        sa.Column("reset_us", sa.BigInteger(), nullable=True),
    )
    op.create_table(
        "pm_plans",
        sa.Column("name", sa.Text(), primary_key=True),
        sa.Column("credits", sa.Text(), nullable=False),
        sa.Column("interval", sa.String(8), nullable=False),
        sa.Column("rollover", sa.Boolean(), nullable=False),
    )
    op.create_table(
        "pm_usage",
        sa.Column("customer", sa.Text(), primary_key=True),
        sa.Column("meter_id", sa.String(36), primary_key=True),
        sa.Column("window_us", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("window_end_us", sa.BigInteger(), nullable=True),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.Column("total", sa.Float(), nullable=False),
        sa.Column("vmax", sa.Float(), nullable=True),
        sa.Column("vmin", sa.Float(), nullable=True),
        sa.Column("credited", sa.Float(), nullable=True),
        sa.Column("created_us", sa.BigInteger(), nullable=False),
        sa.Column("modified_us", sa.BigInteger(), nullable=True),
    )
    op.create_table(
        "pm_usage_values",
        sa.Column("customer", sa.Text(), primary_key=True),
        sa.Column("meter_id", sa.String(36), primary_key=True),
        sa.Column("window_us", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("value_key", sa.Text(), primary_key=True),
    )
    op.create_table(
        "pm_holds",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("customer", sa.Text(), nullable=False),
        sa.Column("meter_id", sa.String(36), nullable=False),
        sa.Column("amount", sa.Float(), nullable=False),
        sa.Column("expires_us", sa.BigInteger(), nullable=False),
        sa.Column("created_us", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_pm_holds_customer_meter", "pm_holds", ["customer", "meter_id"])
    info = op.create_table(
        "pm_info",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text(), nullable=False),
    )
    op.bulk_insert(info, [{"key": "schema_version", "value": str(SCHEMA_VERSION)}])


def downgrade() -> None:
    raise NotImplementedError("polar-metering never downgrades a database")
