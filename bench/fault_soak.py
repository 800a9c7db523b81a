"""Delivery under faults: a producer tracks events to Polar's API through a fault-injecting proxy in
front of the emulator, and is killed with SIGKILL mid-stream and restarted; after a final drain the
emulator must hold exactly the events that were tracked, none lost and none twice.

    python bench/fault_soak.py [--events 100000] [--faults 0.3] [--kills 3] [--batch 200]

The producer uses the default delivery settings (durable commits, 1000-event requests, default
leases and backoff); only the request timeout is shortened, so that stalls outlast it.

The producer writes ``start <i>`` before and ``done <i>`` after each ``track_usage_batch`` call, with
external ids it chooses (``ev-<i>-<k>``). Batches marked done must all arrive (they were in the
durable outbox when the call returned); a batch started but not done when the kill came may or may
not have been stored. Nothing outside the started batches may arrive, and nothing may arrive twice.
Faults (shares of ingest requests): 429 with Retry-After, 500, a stall past the client timeout, and
"forward then drop the connection" (stored upstream, the client never hears).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from polar_metering.emulator import running_emulator
from polar_metering.emulator._faults import FaultPlan, running_fault_proxy

# The producer runs with the default delivery settings (durable commits, default leases, backoff
# and batching) for a server on this machine; the request timeout alone is shortened, so that the
# proxy's stalls run past it and the client gives up on requests the server did store.
PRODUCER = r"""
import os, sys
from polar_metering import Metering
base, token, outbox, log, start, end, batch = sys.argv[1:8]
start, end, batch = int(start), int(end), int(batch)
client = Metering(f"polar://?base_url={base}", access_token=token, outbox_path=outbox,
                  backend_options={"timeout": 1.0})
assert client.backend.outbox.config.durable
fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
for i in range(start, end, batch):
    n = min(batch, end - i)
    os.write(fd, f"start {i} {n}\n".encode())
    result = client.track_usage_batch([{"customer_id": f"cust_{(i + k) % 7}", "event_name": "api.request",
                                        "metadata": {"n": i + k}, "external_id": f"ev-{i + k}"}
                                       for k in range(n)])
    assert result.success, result.error
    os.write(fd, f"done {i} {n}\n".encode())
client.close(timeout=60)
os.write(fd, b"finished\n")
"""


@dataclass
class SoakResult:
    started: set[str]
    done: set[str]
    stored: list[str]
    kills: int
    seconds: float
    faults: dict[str, int]

    @property
    def lost(self) -> set[str]:
        return self.done - set(self.stored)

    @property
    def duplicated(self) -> int:
        return len(self.stored) - len(set(self.stored))

    @property
    def unexpected(self) -> set[str]:
        return set(self.stored) - self.started


def _read_log(log: Path) -> tuple[set[str], set[str], int]:
    started: set[str] = set()
    done: set[str] = set()
    next_index = 0
    for line in log.read_text().splitlines():
        parts = line.split()
        if parts[0] in ("start", "done"):
            i, n = int(parts[1]), int(parts[2])
            ids = {f"ev-{i + k}" for k in range(n)}
            (started if parts[0] == "start" else done).update(ids)
            if parts[0] == "done":
                next_index = max(next_index, i + n)
    return started, done, next_index


def _stored_ids(db_file: Path, base: str, token: str) -> list[str]:
    """Every stored event's index, read from the emulator's database (paging 100k events through the
    API would take minutes); the API's own count must agree."""
    import json
    import sqlite3

    from polar.v2026_10 import Polar

    with sqlite3.connect(db_file) as conn:
        ids = [f"ev-{json.loads(md)['n']}" for (md,) in conn.execute("SELECT metadata FROM pm_events")]
    with Polar(token, base_url=base, timeout=30) as sdk:
        assert sdk.events.list(limit=1).pagination.total_count == len(ids)
    return ids


def _drain(outbox: Path, base: str, token: str) -> None:
    """``polar-metering outbox drain`` through the faulty proxy: what the last producer could not
    deliver before exiting goes now."""
    env = {**os.environ, "POLAR_ACCESS_TOKEN": token}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "polar_metering._cli",
            "outbox",
            "drain",
            "--path",
            str(outbox),
            "--base-url",
            base,
            "--timeout",
            "1200",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"drain failed: {result.stdout}{result.stderr[-2000:]}")


def run_soak(
    events: int, faults: float, kills: int, batch: int = 200, seed: int = 1
) -> SoakResult:
    share = faults / 4
    plan = FaultPlan(
        rate_limited=share,
        server_error=share,
        slow=share,
        dropped_after_forward=share,
        slow_seconds=1.5,
        retry_after=1,
        seed=seed,
    )
    t0 = time.perf_counter()
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_emulator(db=f"sqlite:///{tmp}/emulator.db") as emulator,
        running_fault_proxy(emulator.base_url, plan) as proxy,
    ):
        outbox, log = Path(tmp) / "outbox.db", Path(tmp) / "producer.log"
        log.touch()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        done_kills = 0
        next_index = 0
        while True:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    PRODUCER,
                    proxy.base_url,
                    emulator.token,
                    str(outbox),
                    str(log),
                    str(next_index),
                    str(events),
                    str(batch),
                ],
                env=env,
            )
            if done_kills < kills:
                # Kill mid-stream, once a further share of the events is done (or after two minutes).
                target = (done_kills + 1) * events // (kills + 1)
                give_up = time.monotonic() + 120
                while proc.poll() is None and time.monotonic() < give_up and len(_read_log(log)[1]) < target:
                    time.sleep(0.02)
                if proc.poll() is None:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    done_kills += 1
                    _, _, next_index = _read_log(log)
                    continue
            if proc.wait(timeout=900) != 0:
                raise RuntimeError(f"producer exited with {proc.returncode}")
            break
        _drain(outbox, proxy.base_url, emulator.token)
        started, done, _ = _read_log(log)
        stored = _stored_ids(Path(tmp) / "emulator.db", emulator.base_url, emulator.token)
        counts = proxy.counts
        return SoakResult(
            started,
            done,
            stored,
            done_kills,
            time.perf_counter() - t0,
            {
                "passed": counts.passed,
                "rate_limited": counts.rate_limited,
                "server_error": counts.server_error,
                "slow": counts.slow,
                "dropped_after_forward": counts.dropped_after_forward,
            },
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--faults", type=float, default=0.3)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--batch", type=int, default=200, help="events per track_usage_batch call")
    args = parser.parse_args()
    r = run_soak(args.events, args.faults, args.kills, args.batch)
    total = sum(r.faults.values())
    faulted = total - r.faults["passed"]
    print(
        f"{args.events:,} events, {r.kills} SIGKILLs, {total:,} ingest requests of which "
        f"{faulted:,} faulted ({faulted / max(1, total):.0%}): {r.faults}"
    )
    print(
        f"stored {len(set(r.stored)):,} distinct; lost {len(r.lost)}; duplicated {r.duplicated}; "
        f"unexpected {len(r.unexpected)}; in-flight at kills and not stored "
        f"{len(r.started - set(r.stored))}; {r.seconds:.1f}s"
    )
    ok = not r.lost and not r.duplicated and not r.unexpected
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
