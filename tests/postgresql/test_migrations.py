"""Schema creation and upgrades: Alembic builds the same schema as ``schema.py``, an existing database
is upgraded in place with its data kept, and nothing the engine does not own is touched."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import insert, inspect, select

from polar_metering import Catalog, ConfigurationError
from polar_metering._events import Event
from polar_metering.backends._engine import schema as t
from polar_metering.backends._engine.backend import LocalEngine
from polar_metering.backends._engine.dialect import Database
from polar_metering.backends._engine.migrations import (
    SCRIPTS,
    VERSION_TABLE,
    Migrations,
    current_version,
    owned_name,
    revision_id,
)

API = Catalog().meter("api_requests")
SEATS = Catalog().meter("team_seats")

V2 = '''
"""Test-only schema version 2: a nullable note on events and an index on it."""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("pm_events") as batch:
        batch.add_column(sa.Column("note", sa.Text(), nullable=True))
    op.create_index("ix_pm_events_note", "pm_events", ["note"])
    op.execute("UPDATE pm_info SET value = '2' WHERE key = 'schema_version'")
'''


def _diffs(db: Database) -> list[object]:
    with db.engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"include_name": owned_name, "version_table": VERSION_TABLE}
        )
        return list(compare_metadata(context, t.metadata))


def _stamp(db: Database) -> list[str]:
    with db.engine.connect() as conn:
        return list(conn.exec_driver_sql(f"SELECT version_num FROM {VERSION_TABLE}").scalars())


def _scripts_with_v2(tmp_path: Path) -> Path:
    scripts = tmp_path / "scripts"
    shutil.copytree(SCRIPTS, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    (scripts / "versions" / "v0002_note.py").write_text(textwrap.dedent(V2))
    return scripts


def _track(engine: LocalEngine, n: int) -> None:
    now = datetime.now(UTC)
    engine.ingest([Event("acme", "api.request", {"endpoint": "/x"}, now, f"ev-{i}") for i in range(n)])
    engine.ingest(
        [Event("acme", "seat.active", {"user_id": f"u{i % 3}"}, now, f"seat-{i}") for i in range(6)]
    )


def _create_pre_alembic_v1(url: str) -> None:
    """A version-1 database as the engine built them before migrations: tables and ``pm_info`` only."""
    db = Database(url)
    with db.write() as conn:
        t.metadata.create_all(conn)
        conn.execute(insert(t.info).values(key="schema_version", value="1"))
    db.dispose()


def test_the_head_revision_is_the_schema_version() -> None:
    """The shipped scripts end at the revision of ``schema.SCHEMA_VERSION``, in one line of history."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPTS))
    cfg.set_main_option("path_separator", "os")
    script = ScriptDirectory.from_config(cfg)
    assert script.get_heads() == [revision_id(t.SCHEMA_VERSION)]
    assert [r.revision for r in script.walk_revisions()][-1] == "0001"


def test_a_fresh_database_matches_schema_py(engine_url: str) -> None:
    """Opening an empty database builds exactly the tables, columns and indexes of ``schema.py``
    (through the migrations on PostgreSQL; from ``schema.py`` plus a stamp for a fresh SQLite file)."""
    engine = LocalEngine.open(engine_url)
    try:
        assert current_version(engine.db) == t.SCHEMA_VERSION
        assert _stamp(engine.db) == [revision_id(t.SCHEMA_VERSION)]
        assert _diffs(engine.db) == []
    finally:
        engine.close()


def test_the_migrations_build_schema_py_on_sqlite_too(tmp_path: Path) -> None:
    """The Alembic path on SQLite (used for every upgrade there) also yields exactly ``schema.py``."""
    db = Database(f"sqlite:///{tmp_path / 'alembic.db'}")
    try:
        scripts = tmp_path / "copy"
        shutil.copytree(SCRIPTS, scripts, ignore=shutil.ignore_patterns("__pycache__"))
        assert Migrations(scripts=scripts).upgrade(db) == 1
        assert _stamp(db) == ["0001"]
        assert current_version(db) == 1
        assert _diffs(db) == []
    finally:
        db.dispose()


def test_a_database_from_before_migrations_is_stamped_and_keeps_its_data(engine_url: str) -> None:
    """A version-1 database without Alembic's table opens as it is: stamped at 0001, events and rollups
    untouched."""
    _create_pre_alembic_v1(engine_url)
    engine = LocalEngine.open(engine_url, create_schema=False)
    _track(engine, 25)
    engine.close()
    db = Database(engine_url)
    assert not inspect(db.engine).has_table(VERSION_TABLE)
    db.dispose()

    engine = LocalEngine.open(engine_url)
    try:
        assert _stamp(engine.db) == ["0001"]
        assert engine.reading("acme", API).consumed == 25
        assert engine.reading("acme", SEATS).consumed == 3
    finally:
        engine.close()


def test_an_older_database_is_upgraded_in_place(engine_url: str, tmp_path: Path) -> None:
    """With a version-2 migration available, a version-1 database holding data is upgraded: the new
    column and index exist, every event and rollup is kept, and upgrading again changes nothing."""
    engine = LocalEngine.open(engine_url)
    _track(engine, 40)
    engine.close()
    scripts = _scripts_with_v2(tmp_path)
    db = Database(engine_url)
    try:
        assert Migrations(scripts=scripts, head=2).upgrade(db) == 2
        assert current_version(db) == 2
        assert _stamp(db) == ["0002"]
        insp = inspect(db.engine)
        assert "note" in {c["name"] for c in insp.get_columns("pm_events")}
        assert "ix_pm_events_note" in {i["name"] for i in insp.get_indexes("pm_events")}
        with db.read() as conn:
            ids = set(conn.execute(select(t.events.c.external_id)).scalars())
        assert ids == {f"ev-{i}" for i in range(40)} | {f"seat-{i}" for i in range(6)}

        assert Migrations(scripts=scripts, head=2).upgrade(db) == 2
        assert _stamp(db) == ["0002"]
    finally:
        db.dispose()

    # The engine reads its data through the upgraded schema (the extra column is ignored).
    engine = LocalEngine.open(engine_url, create_schema=False)
    try:
        assert engine.reading("acme", API).consumed == 40
        assert engine.reading("acme", SEATS).consumed == 3
    finally:
        engine.close()


def test_a_newer_database_is_refused_and_left_alone(engine_url: str, tmp_path: Path) -> None:
    """A database already at a version this library does not know is not touched: opening it fails
    with a ConfigurationError that says to upgrade the library."""
    engine = LocalEngine.open(engine_url)
    engine.close()
    db = Database(engine_url)
    Migrations(scripts=_scripts_with_v2(tmp_path), head=2).upgrade(db)
    db.dispose()

    with pytest.raises(ConfigurationError, match=r"schema version 2, newer .* upgrade polar-metering"):
        LocalEngine.open(engine_url)
    db = Database(engine_url)
    try:
        assert current_version(db) == 2
        assert _stamp(db) == ["0002"]
    finally:
        db.dispose()


def test_unversioned_engine_tables_are_refused(engine_url: str) -> None:
    """``pm_*`` tables without a schema version are not ours to guess about: opening fails, nothing
    is created or dropped."""
    db = Database(engine_url)
    with db.write() as conn:
        conn.exec_driver_sql("CREATE TABLE pm_events (seq INTEGER PRIMARY KEY, note TEXT)")
    db.dispose()
    with pytest.raises(ConfigurationError, match="without a polar-metering schema version"):
        LocalEngine.open(engine_url)
    db = Database(engine_url)
    try:
        assert set(inspect(db.engine).get_table_names()) == {"pm_events"}
    finally:
        db.dispose()


def test_the_applications_own_tables_and_alembic_history_are_untouched(engine_url: str) -> None:
    """The engine shares a database with the app: the app's ``alembic_version`` and tables survive
    schema creation, and the engine keeps its own version table."""
    db = Database(engine_url)
    with db.write() as conn:
        conn.exec_driver_sql("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)")
        conn.exec_driver_sql("INSERT INTO alembic_version VALUES ('app_head_123')")
        conn.exec_driver_sql("CREATE TABLE orders (id INTEGER PRIMARY KEY, total INTEGER)")
        conn.exec_driver_sql("INSERT INTO orders VALUES (1, 99)")
    db.dispose()

    engine = LocalEngine.open(engine_url)
    try:
        with engine.db.read() as conn:
            assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalars().all() == [
                "app_head_123"
            ]
            assert conn.exec_driver_sql("SELECT total FROM orders").scalars().all() == [99]
        assert _stamp(engine.db) == ["0001"]
        assert _diffs(engine.db) == []
    finally:
        engine.close()


def test_sqlite_needs_no_alembic_until_a_migration_runs(tmp_path: Path) -> None:
    """A core install (no Alembic) creates, reopens and stamps SQLite files; Alembic is not even
    imported. Only a real upgrade asks for it, by name."""
    fresh = f"sqlite:///{tmp_path / 'fresh.db'}"
    old = f"sqlite:///{tmp_path / 'old.db'}"
    _create_pre_alembic_v1(old)
    code = textwrap.dedent(
        f"""
        import sys
        sys.modules["alembic"] = None  # importing it now fails, as when it is not installed
        from polar_metering.backends._engine.backend import LocalEngine
        LocalEngine.open({fresh!r}).close()
        LocalEngine.open({fresh!r}).close()
        LocalEngine.open({old!r}).close()
        print("ok")
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.stdout.strip() == "ok", out.stderr
    for url in (fresh, old):
        db = Database(url)
        assert _stamp(db) == ["0001"]
        db.dispose()

    scripts = _scripts_with_v2(tmp_path)
    code = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        sys.modules["alembic"] = None
        from polar_metering import ConfigurationError
        from polar_metering.backends._engine.dialect import Database
        from polar_metering.backends._engine.migrations import Migrations
        try:
            Migrations(scripts=Path({str(scripts)!r}), head=2).upgrade(Database({old!r}))
        except ConfigurationError as e:
            print(e)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "takes Alembic: pip install alembic" in out.stdout, out.stderr
