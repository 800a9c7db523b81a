"""${message}

Revision ID: ${up_revision}
Revises: ${down_revision | comma,n}
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = ${repr(up_revision)}
down_revision: str | None = ${repr(down_revision)}
branch_labels = None
depends_on = None

#: the ``pm_info.schema_version`` this migration leaves behind
SCHEMA_VERSION = 0  # set to int(revision)


def upgrade() -> None:
    ${upgrades if upgrades else "pass"}
    op.execute(sa.text("UPDATE pm_info SET value = :v WHERE key = 'schema_version'").bindparams(v=str(SCHEMA_VERSION)))


def downgrade() -> None:
    raise NotImplementedError("polar-metering never downgrades a database")
