"""The Alembic environment: migrate the connection ``migrations.py`` hands over, inside its transaction.

The version table is ``pm_alembic_version``, not Alembic's default, so an application that keeps its
own Alembic history in the same database is never confused with ours.
"""

from __future__ import annotations

from alembic import context

from polar_metering.backends._engine import schema
from polar_metering.backends._engine.migrations import VERSION_TABLE, owned_name

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "polar-metering migrations run from the library (LocalEngine.open or "
        "polar_metering.backends._engine.migrations.upgrade_schema), which supplies the connection"
    )

context.configure(
    connection=connection,
    target_metadata=schema.metadata,
    version_table=VERSION_TABLE,
    # SQLite alters most things by copying the table; batch mode does that for later migrations.
    render_as_batch=connection.dialect.name == "sqlite",
    include_name=owned_name,
)
with context.begin_transaction():
    context.run_migrations()
