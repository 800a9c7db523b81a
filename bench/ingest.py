"""Events/s of ``track_usage_batch`` into the engine beside raw driver inserts of the same rows.

SQLite (default): the floor is ``sqlite3.executemany`` into a table with the same columns and indexes
as the engine's event table, in the same batch size, with the same pragmas. PostgreSQL
(``--url postgresql://...``): the floor is ``COPY`` of the same rows.

    python bench/ingest.py [--events 100000] [--batch 1000] [--url sqlite:///path.db]

With ``--url postgresql://user@host/db`` each run uses a new database on that server (the user needs
CREATEDB) for both the floor and the engine, and drops it afterwards.

Targets: ratio >= 0.5 on SQLite, >= 0.3 of COPY on PostgreSQL.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import now
from _pg import fresh_database, plain

import polar_metering as metering
from polar_metering._events import new_external_id

CUSTOMERS = 100


def make_batches(events: int, batch: int) -> list[list[dict[str, object]]]:
    """Realistic traffic: API calls and token events over 100 customers."""
    out: list[list[dict[str, object]]] = []
    for start in range(0, events, batch):
        rows: list[dict[str, object]] = []
        for i in range(start, min(events, start + batch)):
            if i % 4 == 3:
                rows.append(
                    {
                        "customer_id": f"cust_{i % CUSTOMERS}",
                        "event_name": "ai.tokens",
                        "metadata": {"tokens": 100 + i % 900, "model": "gpt-4"},
                    }
                )
            else:
                rows.append(
                    {
                        "customer_id": f"cust_{i % CUSTOMERS}",
                        "event_name": "api.request",
                        "metadata": {"endpoint": "/api/generate", "method": "POST", "status_code": 200},
                    }
                )
        out.append(rows)
    return out


def ours(url: str, batches: list[list[dict[str, object]]]) -> float:
    client = metering.Metering(url)
    n = sum(len(b) for b in batches)
    t0 = now()
    for b in batches:
        result = client.track_usage_batch(b)
        assert result.success, result.error
    elapsed = now() - t0
    client.close()
    return n / elapsed


SQLITE_DDL = """
CREATE TABLE ev (seq INTEGER PRIMARY KEY AUTOINCREMENT, external_id TEXT UNIQUE, customer TEXT NOT NULL,
  external_customer_id TEXT, customer_id VARCHAR(36), name VARCHAR(128) NOT NULL, ts_us BIGINT NOT NULL,
  ingested_us BIGINT NOT NULL, metadata TEXT NOT NULL, source VARCHAR(16) NOT NULL);
CREATE INDEX ix_ev ON ev (customer, ts_us);
"""


def floor_rows(batches: list[list[dict[str, object]]]) -> list[list[tuple[object, ...]]]:
    ts = int(datetime.now(UTC).timestamp() * 1_000_000)
    return [
        [
            (
                new_external_id(),
                e["customer_id"],
                e["customer_id"],
                None,
                e["event_name"],
                ts,
                ts,
                json.dumps(e["metadata"]),
                "user",
            )
            for e in b
        ]
        for b in batches
    ]


def sqlite_floor(path: Path, rows: list[list[tuple[object, ...]]]) -> float:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(SQLITE_DDL)
    n = sum(len(b) for b in rows)
    t0 = now()
    for b in rows:
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO ev (external_id, customer, external_customer_id, customer_id, name, ts_us, "
            "ingested_us, metadata, source) VALUES (?,?,?,?,?,?,?,?,?)",
            b,
        )
        conn.execute("COMMIT")
    elapsed = now() - t0
    conn.close()
    return n / elapsed


def pg_floor(url: str, rows: list[list[tuple[object, ...]]]) -> float:
    import psycopg

    with psycopg.connect(plain(url), autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS bench_ev")
        conn.execute(
            "CREATE TABLE bench_ev (seq BIGSERIAL PRIMARY KEY, external_id TEXT UNIQUE, customer TEXT NOT "
            "NULL, external_customer_id TEXT, customer_id VARCHAR(36), name VARCHAR(128) NOT NULL, ts_us "
            "BIGINT NOT NULL, ingested_us BIGINT NOT NULL, metadata TEXT NOT NULL, source VARCHAR(16))"
        )
        conn.execute("CREATE INDEX ix_bench_ev ON bench_ev (customer, ts_us)")
        n = sum(len(b) for b in rows)
        t0 = now()
        for b in rows:
            with (
                conn.transaction(),
                conn.cursor() as cur,
                cur.copy(
                    "COPY bench_ev (external_id, customer, external_customer_id, customer_id, name, ts_us, "
                    "ingested_us, metadata, source) FROM STDIN"
                ) as copy,
            ):
                for r in b:
                    copy.write_row(r)
        elapsed = now() - t0
        conn.execute("DROP TABLE bench_ev")
    return n / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--url", default=None, help="engine URL (default: a SQLite file in a temp dir)")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    batches = make_batches(args.events, args.batch)
    results: list[tuple[float, float]] = []
    for run in range(args.runs):
        rows = floor_rows(batches)
        if args.url and args.url.startswith("postgres"):
            # A fresh database per run on the given server: the floor and the engine write to it alike.
            with fresh_database(args.url) as url:
                floor = pg_floor(url, rows)
                mine = ours(url, batches)
        else:
            with tempfile.TemporaryDirectory() as tmp:
                floor = sqlite_floor(Path(tmp) / "floor.db", rows)
                url = args.url or f"sqlite:///{Path(tmp) / f'engine{run}.db'}"
                if args.url and os.path.exists(args.url.removeprefix("sqlite:///")):
                    os.remove(args.url.removeprefix("sqlite:///"))
                mine = ours(url, batches)
        results.append((mine, floor))
        print(
            f"run {run + 1}: track_usage_batch {mine:,.0f} events/s; floor {floor:,.0f} rows/s; "
            f"ratio {mine / floor:.2f}"
        )
    best_ratio = max(m / f for m, f in results)
    kind = "COPY" if args.url and args.url.startswith("postgres") else "sqlite3.executemany"
    target = 0.3 if kind == "COPY" else 0.5
    print(
        f"best ratio vs {kind}: {best_ratio:.2f} (target >= {target}) "
        f"[{args.events} events, batches of {args.batch}]"
    )


if __name__ == "__main__":
    main()
