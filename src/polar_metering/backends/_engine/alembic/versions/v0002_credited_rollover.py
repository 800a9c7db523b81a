"""Schema version 2: the rollover-flagged part of each window's credit.

Revision ID: 0002
Revises: 0001

Polar carries over only rollover-flagged credit (server/polar/customer_meter/service.py), so a window must
know how much of its
credit is flagged. Existing rows keep NULL, which the engine reads as version 1 did: the whole
credit on a rollover plan, none on any other.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels = None
depends_on = None

SCHEMA_VERSION = 2


def upgrade() -> None:
    # A nullable column without a default: a metadata-only change on both SQLite and PostgreSQL,
    # however many rollup rows there are.
    op.add_column("pm_usage", sa.Column("credited_rollover", sa.Float(), nullable=True))
    op.execute(f"UPDATE pm_info SET value = '{SCHEMA_VERSION}' WHERE key = 'schema_version'")


def downgrade() -> None:
    raise NotImplementedError("polar-metering never downgrades a database")
