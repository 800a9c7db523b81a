"""Schema creation and upgrades for the engine's database.

A user's existing database is upgraded in place and never dropped. The schema version lives in
``pm_info``; each step below moves it forward by one.
"""

from __future__ import annotations

from sqlalchemy import insert, inspect, select, update

from polar_metering.backends._engine import schema as t
from polar_metering.backends._engine.dialect import Database

__all__ = ["current_version", "upgrade_schema"]


def current_version(db: Database) -> int:
    with db.engine.connect() as conn:
        if not inspect(conn).has_table("pm_info"):
            return 0
        row = conn.execute(select(t.info.c.value).where(t.info.c.key == "schema_version")).first()
        return int(row[0]) if row else 0


def upgrade_schema(db: Database) -> None:
    """Bring the database to :data:`schema.SCHEMA_VERSION`."""
    with db.write() as conn:
        version = 0
        if inspect(conn).has_table("pm_info"):
            row = conn.execute(select(t.info.c.value).where(t.info.c.key == "schema_version")).first()
            version = int(row[0]) if row else 0
        if version >= t.SCHEMA_VERSION:
            return
        t.metadata.create_all(conn, checkfirst=True)
        if version == 0:
            conn.execute(insert(t.info).values(key="schema_version", value=str(t.SCHEMA_VERSION)))
        else:
            conn.execute(update(t.info).where(t.info.c.key == "schema_version").values(value=str(t.SCHEMA_VERSION)))
