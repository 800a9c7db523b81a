"""The ``polar://`` ledger (``backends/_polar/_ledger.py``) against a real emulator process, through
the unmodified polar-sdk: exact limits across worker processes while Polar's balances lag (the
emulator's ``settle_delay``, as Polar's ~15 s debounce), events kept through a SIGKILL and counted
once, and ``polar-metering reconcile`` explaining every difference it finds."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from polar.v2026_10 import Polar

from polar_metering import ConfigurationError, Metering, UsageLimitExceeded
from polar_metering.backends._engine.backend import LocalEngine
from polar_metering.backends._polar import PolarBackend
from polar_metering.emulator import AdminClient, EmulatorHandle, running_emulator

LIMIT = 100
PROCESSES = 4
THREADS = 16


@pytest.fixture(scope="module")
def lagging() -> Iterator[EmulatorHandle]:
    """Polar's balances lag 15 s behind ingest (server/polar/customer_meter/tasks.py's debounce)."""
    with running_emulator(settle_delay=15.0) as handle:
        yield handle


@pytest.fixture
def customer() -> str:
    return f"cust_{uuid.uuid4().hex[:12]}"


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    return str(request.getfixturevalue("postgresql_url"))


def _client(emu: EmulatorHandle, ledger: str, outbox: str, **options: Any) -> Metering:
    return Metering(
        f"polar://?base_url={emu.base_url}",
        access_token=emu.token,
        outbox_path=outbox,
        ledger=ledger,
        fail_open=False,
        **options,
    )


def _polar_consumed(emu: EmulatorHandle, customer: str, meter_name: str = "API Requests") -> float:
    with Polar(emu.token, base_url=emu.base_url) as polar:
        rows = polar.customer_meters.list(external_customer_id=customer, limit=100).items
    return next((r.consumed_units for r in rows if r.meter.name == meter_name), 0.0)


def _racer(
    base_url: str, token: str, ledger: str, outbox: str, customer: str, go: Any, out: Any
) -> None:
    """One worker process: 16 threads reserve and commit 1 request at a time until refused."""
    client = Metering(
        f"polar://?base_url={base_url}", access_token=token, outbox_path=outbox, ledger=ledger, cache_ttl=60
    )
    granted: list[int] = []
    client.check_limit(customer, "api_requests")  # warm: Polar's credit and the subscription read once
    go.wait(60)

    def run() -> None:
        mine = 0
        while True:
            try:
                with client.reserve(customer, "api_requests", 1) as reservation:
                    assert reservation.commit().success
                    mine += 1
            except UsageLimitExceeded:
                break
        granted.append(mine)

    threads = [threading.Thread(target=run) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    client.close(timeout=30)
    out.put(sum(granted) if len(granted) == THREADS else -1)


def test_four_processes_of_sixteen_threads_grant_exactly_the_limit(
    lagging: EmulatorHandle, ledger_url: str, tmp_path: Path, customer: str
) -> None:
    """4 processes x 16 threads against a limit of 100 while Polar counts nothing for 15 s: exactly
    100 reservations go ahead (without the ledger each process would allow up to 100 on its own), and
    once delivered and settled Polar counts exactly 100."""
    admin = AdminClient(lagging.base_url, lagging.token)
    admin.create_customer(external_id=customer)
    admin.grant(customer, "api_requests", LIMIT)
    outbox = str(tmp_path / "outbox.db")
    ctx = multiprocessing.get_context("spawn")
    go, out = ctx.Event(), ctx.Queue()
    procs = [
        ctx.Process(
            target=_racer, args=(lagging.base_url, lagging.token, ledger_url, outbox, customer, go, out)
        )
        for _ in range(PROCESSES)
    ]
    for p in procs:
        p.start()
    time.sleep(1.0)
    go.set()
    granted = [out.get(timeout=240) for _ in procs]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert -1 not in granted, "a worker thread did not finish"
    assert sum(granted) == LIMIT, granted
    assert _polar_consumed(lagging, customer) == 0, "Polar had not counted anything yet: the ledger decided"
    admin.settle(customer)
    assert _polar_consumed(lagging, customer) == LIMIT
    checker = _client(lagging, ledger_url, outbox)
    try:
        status = checker.check_limit(customer, "api_requests")
        assert (status.current, status.limit, status.allowed, status.reserved) == (LIMIT, LIMIT, False, 0)
        assert checker.backend.ledger.queued() == 0  # type: ignore[attr-defined]
    finally:
        checker.close(timeout=5)


def test_without_a_ledger_the_same_race_is_only_exact_per_process(
    lagging: EmulatorHandle, tmp_path: Path, customer: str
) -> None:
    """The contrast the ledger exists for: two clients (as two workers) each let the customer use
    the whole limit while Polar has not counted anything yet."""
    admin = AdminClient(lagging.base_url, lagging.token)
    admin.create_customer(external_id=customer)
    admin.grant(customer, "api_requests", 10)
    clients = [
        Metering(
            f"polar://?base_url={lagging.base_url}",
            access_token=lagging.token,
            outbox_path=str(tmp_path / f"o{i}.db"),
            cache_ttl=60,
        )
        for i in range(2)
    ]
    granted = 0
    for client in clients:
        while True:
            try:
                with client.reserve(customer, "api_requests", 1) as r:
                    r.commit()
                    granted += 1
            except UsageLimitExceeded:
                break
    for client in clients:
        client.close(timeout=10)
    assert granted == 20


_TRACKER = """
import sys
from polar_metering import Metering
base_url, token, ledger, outbox, customer, acks = sys.argv[1:7]
client = Metering(f"polar://?base_url={base_url}", access_token=token, outbox_path=outbox, ledger=ledger)
with open(acks, "a", buffering=1) as out:
    i = 0
    while True:
        result = client.track_api_request(customer, f"/k/{i}")
        if result.success:
            out.write(result.external_ids[0] + "\\n")
        i += 1
"""


def test_a_sigkill_between_tracking_and_delivery_loses_nothing_and_counts_nothing_twice(
    lagging: EmulatorHandle, ledger_url: str, tmp_path: Path, customer: str
) -> None:
    """A tracking process is killed mid-stream, several times. Every event it was told was tracked
    is in the ledger; after a new process delivers what is left, Polar has exactly the ledger's
    events (relay queue and outbox empty), each once."""
    admin = AdminClient(lagging.base_url, lagging.token)
    admin.create_customer(external_id=customer)
    outbox, acks = str(tmp_path / "outbox.db"), tmp_path / "acks.txt"
    env = {k: v for k, v in os.environ.items() if k != "POLAR_ACCESS_TOKEN"}
    for round_ in range(3):
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _TRACKER,
                lagging.base_url,
                lagging.token,
                ledger_url,
                outbox,
                customer,
                str(acks),
            ],
            env=env,
        )
        deadline = time.monotonic() + 60
        target = 150 * (round_ + 1)
        while time.monotonic() < deadline:
            if acks.exists() and len(acks.read_text().splitlines()) >= target:
                break
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    acknowledged = {line for line in acks.read_text().splitlines() if len(line) == 32}
    assert len(acknowledged) >= 450

    survivor = _client(lagging, ledger_url, outbox)
    try:
        backend = survivor.backend
        assert isinstance(backend, PolarBackend) and backend.ledger is not None
        engine = backend.ledger.engine
        with engine.db.read() as conn:
            stored = set(
                conn.exec_driver_sql(
                    engine._sql("SELECT external_id FROM pm_events WHERE customer = ?"), (customer,)
                ).scalars()
            )
        assert acknowledged <= stored, "an acknowledged event is missing from the ledger"
        assert survivor.flush(timeout=60)
        assert backend.ledger.queued() == 0
        assert backend.outbox.drain(timeout=60)  # what the killed processes had already handed over
        assert backend.outbox.queued_external_ids() == []
        admin.settle(customer)
        assert _polar_consumed(lagging, customer) == len(stored), "Polar and the ledger disagree"
    finally:
        survivor.close(timeout=5)


def _reconcile(emu: EmulatorHandle, ledger: str, outbox: str, customer: str) -> tuple[int, list[Any]]:
    env = {**os.environ, "POLAR_ACCESS_TOKEN": emu.token}
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "polar_metering._cli",
            "reconcile",
            "--url",
            f"polar://?base_url={emu.base_url}",
            "--ledger",
            ledger,
            "--outbox",
            outbox,
            "--customer",
            customer,
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert emu.token not in run.stdout + run.stderr
    return run.returncode, json.loads(run.stdout or "[]")


def test_reconcile_explains_queued_pending_and_dead_lettered_events(tmp_path: Path, customer: str) -> None:
    """Ledger 9 against Polar 5: one event still in the relay queue, two in the outbox, one
    dead-lettered; reconcile lists each and exits 0. An event that reached Polar by another path
    leaves a difference nothing explains: exit 1."""
    from tests.delivery.delivery_helpers import ScriptedTransport, fast_config

    from polar_metering import RemoteValidationError
    from polar_metering._events import validate_event
    from polar_metering.delivery import Outbox

    ledger = f"sqlite:///{tmp_path / 'ledger.db'}"
    outbox = str(tmp_path / "outbox.db")
    with running_emulator() as emu:
        admin = AdminClient(emu.base_url, emu.token)
        admin.create_customer(external_id=customer)
        admin.grant(customer, "api_requests", 1000)
        delivered = _client(emu, ledger, outbox)
        for i in range(5):
            assert delivered.track_api_request(customer, f"/d/{i}").success
        assert delivered.flush(timeout=30)
        delivered.close(timeout=5)
        admin.settle(customer)

        # One event Polar refuses: tracked, relayed, then dead-lettered by the outbox.
        stuck = Metering(
            "polar://?base_url=http://127.0.0.1:9", access_token="tok", outbox_path=outbox, ledger=ledger
        )
        assert stuck.track_api_request(customer, "/refused").success
        stuck.backend.ledger.drain(time.monotonic() + 10, time.monotonic)  # type: ignore[attr-defined]
        stuck.close(timeout=0)
        refusal = RemoteValidationError(
            "refused", detail=[{"loc": ["body", "events", 0, "name"], "msg": "not allowed", "type": "x"}]
        )
        refuser = Outbox(fast_config(Path(outbox)), ScriptedTransport([refusal]))
        assert refuser.drain(10)
        assert len(refuser.dead_letters()) == 1
        refuser.close(timeout=1)

        # Two events in the outbox, not delivered yet (the server they were meant for is down).
        stuck = Metering(
            "polar://?base_url=http://127.0.0.1:9", access_token="tok", outbox_path=outbox, ledger=ledger
        )
        for i in range(2):
            assert stuck.track_api_request(customer, f"/p/{i}").success
        stuck.backend.ledger.drain(time.monotonic() + 10, time.monotonic)  # type: ignore[attr-defined]
        stuck.close(timeout=0)

        # One event stored in the ledger by a process that died before its relay ran.
        engine = LocalEngine.open(ledger)
        engine.relay = True
        now = engine.time.now()
        engine.ingest([validate_event(customer, "api.request", {"endpoint": "/q"}, now=now)])
        engine.close()

        code, rows = _reconcile(emu, ledger, outbox, customer)
        row = next(r for r in rows if r["meter"] == "api_requests")
        assert (row["ledger"], row["polar"], row["queued"], row["pending"], row["dead"]) == (9, 5, 1, 2, 1)
        assert row["unexplained"] == 0
        assert code == 0

        with Polar(emu.token, base_url=emu.base_url) as polar:  # usage sent around the ledger
            polar.events.ingest(
                events=[{"name": "api.request", "external_customer_id": customer, "metadata": {}}]
            )
        admin.settle(customer)
        code, rows = _reconcile(emu, ledger, outbox, customer)
        row = next(r for r in rows if r["meter"] == "api_requests")
        # reconcile only reads: the two pending events are still in the outbox, not sent by it
        assert (row["ledger"], row["polar"], row["queued"], row["pending"], row["dead"]) == (9, 6, 1, 2, 1)
        assert row["unexplained"] == -1
        assert code == 1


def test_a_ledger_is_for_polar_only_and_never_in_memory(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="ledger: only polar://"):
        Metering(f"sqlite:///{tmp_path / 'x.db'}", ledger=f"sqlite:///{tmp_path / 'l.db'}")
    with pytest.raises(ConfigurationError, match="in-memory"):
        Metering("polar://?base_url=http://127.0.0.1:9", access_token="t", ledger="sqlite:///:memory:")
    with pytest.raises(ConfigurationError, match="ledger: must be"):
        Metering("polar://?base_url=http://127.0.0.1:9", access_token="t", ledger="redis://x")


def test_the_ledger_url_password_stays_out_of_reprs_and_errors(tmp_path: Path) -> None:
    client = Metering(
        "polar://?base_url=http://127.0.0.1:9",
        access_token="t",
        outbox_path=str(tmp_path / "o.db"),
        ledger=f"sqlite:///{tmp_path / 'l.db'}",
    )
    try:
        assert "ledger=" in repr(client.backend)
        assert "l.db" not in repr(client.config)
    finally:
        client.close(timeout=0)
    with pytest.raises(ConfigurationError) as info:
        Metering("polar://?base_url=http://127.0.0.1:9", access_token="t", ledger="mysql://u:s3cret@h/db")
    assert "s3cret" not in str(info.value)
