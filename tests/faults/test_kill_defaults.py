"""SIGKILL in a tight tracking loop with the **default** settings on ``polar://``: every event that
``track_usage`` acknowledged reaches the emulator, exactly once, after a restart.

The producer is a real process running ``Metering("polar://?base_url=...")`` with nothing but the
outbox path chosen. After each successful call it appends the call's index to a log with one
``write`` (a syscall: nothing sits in a Python buffer), so the log lists a subset of the acknowledged
events — a kill between the acknowledgement and the write only leaves an event out of the check.
"""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from polar_metering.emulator import running_emulator

PRODUCER = r"""
import os, sys
from polar_metering import Metering
base, token, outbox, log, run = sys.argv[1:6]
client = Metering(f"polar://?base_url={base}", access_token=token, outbox_path=outbox)
fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
os.write(fd, b"ready\n")
i = 0
while True:
    result = client.track_usage("cust_kill", "api.request", {"endpoint": "/x", "i": i},
                                external_id=f"{run}-{i}")
    if result.success:
        os.write(fd, f"{run}-{i}\n".encode())
    i += 1
"""

RESTART = r"""
import sys
from polar_metering import Metering
base, token, outbox = sys.argv[1:4]
client = Metering(f"polar://?base_url={base}", access_token=token, outbox_path=outbox)
ok = client.flush(timeout=120)  # nothing of its own; the close below drains the whole file
client.close(timeout=120)
print("closed", ok)
"""


def _wait_ready(log: Path, proc: subprocess.Popen[bytes], run: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = log.read_text() if log.exists() else ""
        if f"{run}-" in text:  # tracking has started, not just the import
            return
        if proc.poll() is not None:
            raise AssertionError(f"producer exited early with {proc.returncode}")
        time.sleep(0.01)
    raise AssertionError("producer never started tracking")


def _stored(db_file: Path) -> Counter[str]:
    with sqlite3.connect(db_file) as conn:
        return Counter(row[0] for row in conn.execute("SELECT external_id FROM pm_events"))


def test_sigkill_with_default_settings_loses_nothing_acknowledged(tmp_path: Path) -> None:
    rng = random.Random(11)
    outbox = tmp_path / "outbox.db"
    with running_emulator(db=f"sqlite:///{tmp_path / 'emulator.db'}") as emulator:
        kills = 0
        for run in range(5):
            log = tmp_path / f"acks-{run}.log"
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    PRODUCER,
                    emulator.base_url,
                    emulator.token,
                    str(outbox),
                    str(log),
                    f"r{run}",
                ],
                stderr=subprocess.DEVNULL,
            )
            _wait_ready(log, proc, f"r{run}")
            time.sleep(rng.uniform(0.3, 1.0))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            assert proc.returncode == -signal.SIGKILL
            kills += 1
        # A restart on the same outbox file delivers what the killed processes left behind, leased
        # batches included (their senders are gone, so the leases are taken over at once).
        done = subprocess.run(
            [sys.executable, "-c", RESTART, emulator.base_url, emulator.token, str(outbox)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        acknowledged: set[str] = set()
        for run in range(kills):
            lines = (tmp_path / f"acks-{run}.log").read_text().splitlines()
            acknowledged.update(line for line in lines if line != "ready")
        stored = _stored(tmp_path / "emulator.db")
    assert kills == 5
    assert len(acknowledged) > 500, "the producers acknowledged events before each kill"
    missing = acknowledged - set(stored)
    assert not missing, f"{len(missing)} of {len(acknowledged)} acknowledged events never arrived"
    assert max(stored.values()) == 1, "an event was stored twice"
    # Nothing the producers did not send arrives (an event in flight at a kill may or may not have
    # been acknowledged in the log, but it was tracked).
    assert all(eid.startswith("r") for eid in stored)
    with sqlite3.connect(outbox) as conn:
        assert conn.execute("SELECT count(*) FROM outbox").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM dead_letters").fetchone()[0] == 0
    assert os.path.exists(outbox)
