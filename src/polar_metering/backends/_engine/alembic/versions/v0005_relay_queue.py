"""Schema version 5: the ledger's relay queue.

Revision ID: 0005
Revises: 0004

- ``pm_relay_queue``: the ``seq`` of every event a ``polar://`` ledger stored and has not yet handed
  to the delivery outbox, written in the same transaction as the event (``docs/limits.md``, "Exact
  limits across workers"). Empty, and never read, on a plain engine database.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels = None
depends_on = None

SCHEMA_VERSION = 5


def upgrade() -> None:
    op.create_table(
        "pm_relay_queue",
        sa.Column(
            "seq",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=False,
        ),
    )
    op.execute(f"UPDATE pm_info SET value = '{SCHEMA_VERSION}' WHERE key = 'schema_version'")


def downgrade() -> None:
    raise NotImplementedError("polar-metering never downgrades a database")
