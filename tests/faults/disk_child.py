"""Child process for the failing-store tests: runs inside its own mount namespace, where it mounts a
small tmpfs, tracks into a store on it until the store fails, and prints what happened as JSON.

    python disk_child.py SCENARIO DIR

Scenarios: ``outbox-full`` (``polar://``, default settings, a 2 MiB tmpfs), ``outbox-readonly``
(the tmpfs remounted read-only mid-run), ``outbox-full-group`` (``durable=False``),
``engine-full`` (the embedded SQLite engine on a 2 MiB tmpfs).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

CLOSED_PORT = "http://127.0.0.1:9"  # nothing listens: the outbox never drains


def _mount(where: Path, size: str = "2m") -> None:
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)


def _remount(where: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(where)], check=True)


def _rows(db: Path, table: str) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
    finally:
        conn.close()


class _Logs(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _track(client: Any, start: int, count: int, customer: str = "c") -> tuple[list[str], list[str]]:
    """Track ``count`` events; returns (acknowledged external ids, distinct failure reasons)."""
    acked: list[str] = []
    errors: list[str] = []
    for i in range(start, start + count):
        eid = f"e-{i}"
        result = client.track_usage(
            customer, "api.request", {"endpoint": "/x", "pad": "y" * 200}, external_id=eid
        )
        if result.success:
            acked.append(eid)
        elif result.error not in errors:
            errors.append(result.error or "")
    return acked, errors


def _polar_client(outbox: Path, **backend: Any) -> Any:
    from polar_metering import Metering

    return Metering(
        f"polar://?base_url={CLOSED_PORT}",
        access_token="t-disk",
        outbox_path=str(outbox),
        backend_options=backend,
    )


def main() -> None:
    scenario, base = sys.argv[1], Path(sys.argv[2])
    logs = _Logs()
    logging.getLogger("polar_metering").addHandler(logs)
    disk = base / "disk"
    _mount(disk, "4m")
    filler = disk / "filler"
    filler.write_bytes(b"\0" * (1536 * 1024))  # deleted later: "space returns"
    out: dict[str, Any] = {"scenario": scenario}
    if scenario == "outbox-full":
        outbox = disk / "outbox.db"
        client = _polar_client(outbox)
        acked, errors = _track(client, 0, 20_000)
        out.update(acked=len(acked), errors=errors, stored=_rows(outbox, "outbox"))
        filler.unlink()
        time.sleep(1.1)  # the store is probed again at most once a second
        again, errors_after = _track(client, 100_000, 50)
        out.update(acked_after=len(again), errors_after=errors_after, stored_after=_rows(outbox, "outbox"))
        client.close(timeout=0.5)
    elif scenario == "outbox-full-group":
        # durable=False: acknowledged before the commit. Close while the disk is still full: what the
        # writer could not write must be reported lost, in so many words.
        outbox = disk / "outbox.db"
        client = _polar_client(outbox, durable=False)
        acked, errors = [], []
        for start in range(0, 200_000, 100):  # paced like requests, so the writer keeps up until full
            more, errs = _track(client, start, 100)
            acked += more
            errors += [e for e in errs if e not in errors]
            if errors:
                break
            time.sleep(0.001)
        time.sleep(0.5)
        out.update(acked=len(acked), errors=errors)
        client.close(timeout=0.5)
        out["stored"] = _rows(outbox, "outbox")
    elif scenario == "outbox-readonly":
        # The outbox's directory is on a file system mounted read-only when the app starts (as a
        # container with a read-only root would have it): the client starts, every call refuses
        # with the reason, and once the file system is writable again calls succeed.
        outbox = disk / "outbox.db"
        filler.unlink()
        _remount(disk, "ro")
        client = _polar_client(outbox)
        acked, errors = _track(client, 0, 200)
        out.update(
            acked=len(acked), errors=errors, stored=0 if not outbox.exists() else _rows(outbox, "outbox")
        )
        _remount(disk, "rw")
        time.sleep(1.1)
        again, errors_after = _track(client, 100_000, 50)
        out.update(acked_after=len(again), errors_after=errors_after, stored_after=_rows(outbox, "outbox"))
        client.close(timeout=0.5)
    elif scenario == "engine-full":
        from polar_metering import Metering

        db = disk / "metering.db"
        client = Metering(f"sqlite:///{db}")
        acked, errors = _track(client, 0, 20_000)
        out.update(acked=len(acked), errors=errors, stored=_rows(db, "pm_events"))
        out["current"] = client.check_limit("c", "api_requests").current
        filler.unlink()
        again, errors_after = _track(client, 100_000, 50)
        out.update(acked_after=len(again), errors_after=errors_after, stored_after=_rows(db, "pm_events"))
        client.close()
    else:
        raise SystemExit(f"unknown scenario {scenario!r}")
    # Every distinct message once (a failing store must not log once per call: count them too).
    out["log_count"] = len(logs.messages)
    out["logs"] = list(dict.fromkeys(logs.messages))[:50]
    print("RESULT " + json.dumps(out))


if __name__ == "__main__":
    main()
