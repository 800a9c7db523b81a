"""PostgreSQL helpers for the benchmarks: a fresh database per run on the server a URL names."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager


def plain(url: str) -> str:
    """The URL as libpq takes it (no SQLAlchemy driver suffix)."""
    scheme, _, rest = url.partition("://")
    return f"postgresql://{rest}" if scheme.startswith("postgres") else url


@contextmanager
def fresh_database(url: str) -> Iterator[str]:
    """A new, empty database on the server of ``url`` (whose user may create databases), dropped after."""
    import psycopg

    name = f"pm_bench_{uuid.uuid4().hex[:12]}"
    base = plain(url).split("?", 1)[0]
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    head, _, _ = base.rpartition("/")
    try:
        yield f"{head}/{name}"
    finally:
        with psycopg.connect(base, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
