"""Schema creation and upgrades for the engine's database, through Alembic run in code.

A user's existing database is upgraded in place and never dropped. Each migration in
``alembic/versions`` moves ``pm_info.schema_version`` forward by one; Alembic records the same step
in ``pm_alembic_version`` (its own name, so an application's Alembic history in the same database is
left alone). Downgrades are not offered.

Opening a database costs one short transaction when its schema is current. A fresh SQLite file is
built from ``schema.py`` and stamped at the head revision, Alembic's recommended way to start a new
database, which keeps opening a throwaway ``sqlite:///:memory:`` engine cheap and needs no Alembic
installed; creating a PostgreSQL database and every actual upgrade go through the migrations.
Processes opening one PostgreSQL database at once take turns (an advisory lock).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Column, MetaData, PrimaryKeyConstraint, String, Table, inspect, select
from sqlalchemy.engine import Connection

from polar_metering._exceptions import ConfigurationError
from polar_metering.backends._engine import schema as t
from polar_metering.backends._engine.dialect import Database

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = [
    "SCRIPTS",
    "VERSION_TABLE",
    "Migrations",
    "current_version",
    "owned_name",
    "revision_id",
    "upgrade_schema",
]

VERSION_TABLE = "pm_alembic_version"
SCRIPTS = Path(__file__).with_name("alembic")

# The shape Alembic gives its version table (``DefaultImpl.version_table_impl``), for stamping a fresh
# SQLite database without loading Alembic.
_version_table = Table(
    VERSION_TABLE,
    MetaData(),
    Column("version_num", String(32), nullable=False),
    PrimaryKeyConstraint("version_num", name=f"{VERSION_TABLE}_pkc"),
)


def revision_id(version: int) -> str:
    """The Alembic revision of schema ``version`` (``1`` -> ``"0001"``)."""
    return f"{version:04d}"


def owned_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """Alembic's ``include_name`` filter: only the engine's ``pm_*`` tables, since the database may be
    shared with the application's own tables."""
    return type_ != "table" or (name or "").startswith("pm_")


@dataclass(frozen=True, slots=True)
class _State:
    version: int  # pm_info.schema_version, 0 when absent
    stamped: str | None  # the revision in pm_alembic_version, None without one
    foreign: bool  # pm_* tables exist but no schema version: not ours to touch


def _state(conn: Connection) -> _State:
    tables = set(inspect(conn).get_table_names())
    version = 0
    if t.info.name in tables:
        row = conn.execute(select(t.info.c.value).where(t.info.c.key == "schema_version")).first()
        version = int(row[0]) if row else 0
    stamped = None
    if VERSION_TABLE in tables:
        stamped = conn.execute(select(_version_table.c.version_num)).scalar()
    ours = {name for name in tables if name.startswith("pm_") and name != VERSION_TABLE}
    return _State(version, stamped, foreign=version == 0 and bool(ours))


@dataclass(frozen=True, slots=True)
class Migrations:
    """A migration script directory and the schema version its head revision produces."""

    scripts: Path = SCRIPTS
    head: int = t.SCHEMA_VERSION

    def config(self, conn: Connection) -> Config:
        """An Alembic ``Config`` built in code, bound to ``conn`` (``env.py`` migrates that connection)."""
        from alembic.config import Config

        cfg = Config()
        # ConfigParser interpolation would read a '%' in the path as a placeholder.
        cfg.set_main_option("script_location", str(self.scripts).replace("%", "%%"))
        cfg.set_main_option("path_separator", "os")
        cfg.attributes["connection"] = conn
        return cfg

    def upgrade(self, db: Database) -> int:
        """Bring the database to :attr:`head`, creating it when empty; returns the version reached."""
        with db.write() as conn:
            db.serialize_setup(conn)
            state = _state(conn)
            if state.version > self.head:
                raise ConfigurationError(
                    f"url: the database has schema version {state.version}, newer than this polar-metering "
                    f"understands ({self.head}); upgrade polar-metering"
                )
            if state.foreign:
                raise ConfigurationError(
                    "url: the database has pm_* tables without a polar-metering schema version; "
                    "refusing to change them"
                )
            head = revision_id(self.head)
            if state.version == self.head and state.stamped == head:
                return self.head
            if (
                state.version == 0
                and db.is_sqlite
                and self.scripts == SCRIPTS
                and self.head == t.SCHEMA_VERSION
            ):
                _create_fresh(conn, self.head)
                return self.head
            if state.version == self.head:
                # Current, but created before migrations existed: record the revision it is at.
                _stamp(conn, self.head)
                return self.head
            try:
                from alembic import command
            except ImportError:
                raise ConfigurationError(
                    f"url: this database is at schema version {state.version or 'none'} and needs "
                    f"migrating to {self.head}, which takes Alembic: pip install alembic"
                ) from None

            cfg = self.config(conn)
            if state.version and state.stamped is None:
                # Created before migrations existed: record where it stands, then move on from there.
                command.stamp(cfg, revision_id(state.version))
            command.upgrade(cfg, head)
            return self.head


def _create_fresh(conn: Connection, version: int) -> None:
    t.metadata.create_all(conn)
    conn.execute(t.info.insert().values(key="schema_version", value=str(version)))
    _stamp(conn, version)


def _stamp(conn: Connection, version: int) -> None:
    """What ``alembic stamp`` writes, without loading Alembic (a core install of the library on SQLite
    has no Alembic until a migration is actually needed)."""
    _version_table.create(conn, checkfirst=True)
    conn.execute(_version_table.delete())
    conn.execute(_version_table.insert().values(version_num=revision_id(version)))


def upgrade_schema(db: Database) -> None:
    """Bring the database to :data:`schema.SCHEMA_VERSION`: create it when empty, upgrade it when older."""
    Migrations().upgrade(db)


def current_version(db: Database) -> int:
    """The schema version stored in the database (0 for an empty one)."""
    with db.read() as conn:
        return _state(conn).version
