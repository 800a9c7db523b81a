"""Schema version 4: plans canceled at period end, and the emulator's Polar objects.

Revision ID: 0004
Revises: 0002 (on the ``plans`` branch; 0003 once the rollups migration is merged before it)

- ``pm_accounts.ends_us``: when a plan canceled at the end of its period stops applying (NULL: it
  renews). Existing accounts keep NULL: nothing was canceled before this version.
- ``pm_polar_objects``: products, benefits, subscriptions and benefit grants the emulator serves,
  one JSON document each; the engine's own readings never touch it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0002"
branch_labels = None
depends_on = None

SCHEMA_VERSION = 4


def upgrade() -> None:
    # A nullable column without a default: metadata only on SQLite and PostgreSQL alike.
    op.add_column("pm_accounts", sa.Column("ends_us", sa.BigInteger(), nullable=True))
    op.create_table(
        "pm_polar_objects",
        sa.Column("kind", sa.String(32), primary_key=True),
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("customer_id", sa.String(36), nullable=True),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_us", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_pm_polar_objects_customer", "pm_polar_objects", ["kind", "customer_id"])
    op.execute(f"UPDATE pm_info SET value = '{SCHEMA_VERSION}' WHERE key = 'schema_version'")


def downgrade() -> None:
    raise NotImplementedError("polar-metering never downgrades a database")
