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
from sqlalchemy import inspect, select

from polar_metering import Catalog, ConfigurationError, ManualClock, Plan
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

NEXT = t.SCHEMA_VERSION + 1
FUTURE = f'''
"""Test-only schema version {NEXT}: a nullable note on events and an index on it."""

import sqlalchemy as sa
from alembic import op

revision = "{revision_id(NEXT)}"
down_revision = "{revision_id(t.SCHEMA_VERSION)}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("pm_events") as batch:
        batch.add_column(sa.Column("note", sa.Text(), nullable=True))
    op.create_index("ix_pm_events_note", "pm_events", ["note"])
    op.execute("UPDATE pm_info SET value = '{NEXT}' WHERE key = 'schema_version'")
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


def _scripts_with_next(tmp_path: Path) -> Path:
    scripts = tmp_path / "scripts"
    shutil.copytree(SCRIPTS, scripts, ignore=shutil.ignore_patterns("__pycache__"))
    (scripts / "versions" / f"v{revision_id(NEXT)}_note.py").write_text(textwrap.dedent(FUTURE))
    return scripts


def _columns(db: Database, table: str) -> set[str]:
    return {c["name"] for c in inspect(db.engine).get_columns(table)}


def _as_version_1(url: str, *, stamped: bool) -> None:
    """Turn a current database into what version 1 of the engine left behind, data included: the
    columns later versions added are dropped, and the version (and Alembic's stamp, or with
    ``stamped=False`` its whole table, as before migrations existed) says 1."""
    db = Database(url)
    with db.write() as conn:
        conn.exec_driver_sql("ALTER TABLE pm_usage DROP COLUMN credited_rollover")
        # schema 4 (v0004_lifecycle)
        conn.exec_driver_sql("ALTER TABLE pm_accounts DROP COLUMN ends_us")
        conn.exec_driver_sql("DROP INDEX ix_pm_polar_objects_customer")
        conn.exec_driver_sql("DROP TABLE pm_polar_objects")
        # schema 5 (v0005_relay_queue)
        conn.exec_driver_sql("DROP TABLE pm_relay_queue")
        conn.exec_driver_sql("UPDATE pm_info SET value = '1' WHERE key = 'schema_version'")
        if stamped:
            conn.exec_driver_sql(f"UPDATE {VERSION_TABLE} SET version_num = '0001'")
        else:
            conn.exec_driver_sql(f"DROP TABLE {VERSION_TABLE}")
    db.dispose()


def _track(engine: LocalEngine, n: int) -> None:
    now = datetime.now(UTC)
    engine.ingest([Event("acme", "api.request", {"endpoint": "/x"}, now, f"ev-{i}") for i in range(n)])
    engine.ingest(
        [Event("acme", "seat.active", {"user_id": f"u{i % 3}"}, now, f"seat-{i}") for i in range(6)]
    )


def _create_pre_alembic_v1(url: str) -> None:
    """A version-1 database as the engine built them before migrations: tables and ``pm_info`` only."""
    LocalEngine.open(url).close()
    _as_version_1(url, stamped=False)


def test_version_1_as_these_tests_build_it_is_what_migration_0001_builds(tmp_path: Path) -> None:
    """The helper above really yields the version-1 schema: the same columns as the 0001 migration."""
    reference = Database(f"sqlite:///{tmp_path / 'v1.db'}")
    Migrations(head=1).upgrade(reference)
    built = f"sqlite:///{tmp_path / 'built.db'}"
    _create_pre_alembic_v1(built)
    db = Database(built)
    try:
        assert current_version(reference) == current_version(db) == 1
        for table in inspect(reference.engine).get_table_names():
            if table != VERSION_TABLE:
                assert _columns(db, table) == _columns(reference, table), table
    finally:
        db.dispose()
        reference.dispose()


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
        assert Migrations(scripts=scripts).upgrade(db) == t.SCHEMA_VERSION
        assert _stamp(db) == [revision_id(t.SCHEMA_VERSION)]
        assert current_version(db) == t.SCHEMA_VERSION
        assert _diffs(db) == []
    finally:
        db.dispose()


def test_a_version_1_database_from_before_migrations_is_upgraded_and_keeps_its_data(engine_url: str) -> None:
    """A version-1 database with data and no Alembic table is stamped at 0001 and upgraded to the
    head: events and rollups untouched, the new column in place and empty, the result exactly
    ``schema.py``."""
    engine = LocalEngine.open(engine_url)
    _track(engine, 25)
    engine.close()
    _as_version_1(engine_url, stamped=False)
    db = Database(engine_url)
    assert not inspect(db.engine).has_table(VERSION_TABLE)
    assert "credited_rollover" not in _columns(db, "pm_usage")
    db.dispose()

    engine = LocalEngine.open(engine_url)
    try:
        assert _stamp(engine.db) == [revision_id(t.SCHEMA_VERSION)]
        assert current_version(engine.db) == t.SCHEMA_VERSION
        assert _diffs(engine.db) == []
        assert engine.reading("acme", API).consumed == 25
        assert engine.reading("acme", SEATS).consumed == 3
        with engine.db.read() as conn:
            assert set(conn.execute(select(t.usage.c.credited_rollover)).scalars()) == {None}
    finally:
        engine.close()


def test_version_1_credits_keep_their_meaning_after_the_upgrade(engine_url: str) -> None:
    """Rows written by version 1 record no flagged part; read as version 1 meant them, a rollover
    plan's credit carries over whole and a plain plan's not at all. New windows then record it."""
    clock = ManualClock("2026-01-15T12:00:00+00:00")
    plans = [
        Plan("roll", credits={"ai_tokens": 100}, rollover=True),
        Plan("plain", credits={"ai_tokens": 100}),
    ]
    engine = LocalEngine.open(engine_url, clock=clock)
    now = clock.now()
    for customer, plan in (("rolls", plans[0]), ("stays", plans[1])):
        engine.subscribe(customer, plan)
        engine.ingest([Event(customer, "ai.tokens", {"tokens": 30}, now, f"{customer}-1")])
    engine.close()
    _as_version_1(engine_url, stamped=True)

    clock.advance(days=31)
    engine = LocalEngine.open(engine_url, clock=clock)
    try:
        tokens = engine.catalog.meter("ai_tokens")
        assert engine.reading("rolls", tokens).credited == 170  # 100 new + 70 carried
        assert engine.reading("stays", tokens).credited == 100
        engine.ingest([Event("rolls", "ai.tokens", {"tokens": 1}, clock.now(), "rolls-2")])
        with engine.db.read() as conn:
            credited_rows = select(t.usage.c.credited_rollover).where(
                t.usage.c.customer == "rolls", t.usage.c.credited.is_not(None)
            )
            flagged = conn.execute(credited_rows.order_by(t.usage.c.window_us)).scalars().all()
        assert flagged == [None, 170]
    finally:
        engine.close()


def test_an_older_database_is_upgraded_in_place(engine_url: str, tmp_path: Path) -> None:
    """With a next-version migration available, a current database holding data is upgraded: the new
    column and index exist, every event and rollup is kept, and upgrading again changes nothing."""
    engine = LocalEngine.open(engine_url)
    _track(engine, 40)
    engine.close()
    scripts = _scripts_with_next(tmp_path)
    db = Database(engine_url)
    try:
        assert Migrations(scripts=scripts, head=NEXT).upgrade(db) == NEXT
        assert current_version(db) == NEXT
        assert _stamp(db) == [revision_id(NEXT)]
        insp = inspect(db.engine)
        assert "note" in {c["name"] for c in insp.get_columns("pm_events")}
        assert "ix_pm_events_note" in {i["name"] for i in insp.get_indexes("pm_events")}
        with db.read() as conn:
            ids = set(conn.execute(select(t.events.c.external_id)).scalars())
        assert ids == {f"ev-{i}" for i in range(40)} | {f"seat-{i}" for i in range(6)}

        assert Migrations(scripts=scripts, head=NEXT).upgrade(db) == NEXT
        assert _stamp(db) == [revision_id(NEXT)]
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
    Migrations(scripts=_scripts_with_next(tmp_path), head=NEXT).upgrade(db)
    db.dispose()

    with pytest.raises(ConfigurationError, match=rf"schema version {NEXT}, newer .* upgrade polar-metering"):
        LocalEngine.open(engine_url)
    db = Database(engine_url)
    try:
        assert current_version(db) == NEXT
        assert _stamp(db) == [revision_id(NEXT)]
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
        assert _stamp(engine.db) == [revision_id(t.SCHEMA_VERSION)]
        assert _diffs(engine.db) == []
    finally:
        engine.close()


def test_sqlite_needs_no_alembic_until_a_migration_runs(tmp_path: Path) -> None:
    """Without Alembic importable, SQLite files are created, reopened, and stamped when current but
    unstamped; Alembic is not even imported. Only a real upgrade asks for it, by name."""
    fresh = f"sqlite:///{tmp_path / 'fresh.db'}"
    unstamped = f"sqlite:///{tmp_path / 'unstamped.db'}"
    old = f"sqlite:///{tmp_path / 'old.db'}"
    LocalEngine.open(unstamped).close()
    db = Database(unstamped)
    with db.write() as conn:
        conn.exec_driver_sql(f"DROP TABLE {VERSION_TABLE}")
    db.dispose()
    _create_pre_alembic_v1(old)
    code = textwrap.dedent(
        f"""
        import sys
        sys.modules["alembic"] = None  # importing it now fails, as when it is not installed
        from polar_metering import ConfigurationError
        from polar_metering.backends._engine.backend import LocalEngine
        LocalEngine.open({fresh!r}).close()
        LocalEngine.open({fresh!r}).close()
        LocalEngine.open({unstamped!r}).close()
        print("ok")
        try:
            LocalEngine.open({old!r})
        except ConfigurationError as e:
            print(e)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    first, _, rest = out.stdout.partition("\n")
    assert first == "ok", out.stderr
    assert "at schema version 1 and needs migrating" in rest, out.stderr
    assert "takes Alembic: pip install alembic" in rest, out.stderr
    for url in (fresh, unstamped):
        db = Database(url)
        assert _stamp(db) == [revision_id(t.SCHEMA_VERSION)]
        db.dispose()
    db = Database(old)
    assert current_version(db) == 1  # the refusal changed nothing
    db.dispose()
