"""``polar-metering outbox``: status, dead letters, retry and drain on a real outbox file, draining to
a real emulator process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from polar.v2026_10 import Polar

from polar_metering import Metering
from polar_metering.emulator import running_emulator


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "polar_metering._cli", "outbox", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
        check=False,
    )


def test_status_then_drain_delivers_what_was_left(tmp_path: Path) -> None:
    """Events left in the outbox while Polar was unreachable show in status and go out on drain."""
    outbox = str(tmp_path / "outbox.db")
    with running_emulator() as emulator:
        dead_end = "http://127.0.0.1:9"  # nothing listens there: delivery fails, events stay queued
        client = Metering(f"polar://?base_url={dead_end}", access_token=emulator.token, outbox_path=outbox)
        for i in range(7):
            assert client.track_usage("cli_cust", "api.request", {"i": i}).success
        client.close(timeout=0.5)
        env = {"POLAR_ACCESS_TOKEN": emulator.token}
        status = _cli("status", "--path", outbox, "--base-url", dead_end, env=env)
        assert status.returncode == 0, status.stderr
        assert "pending" in status.stdout and " 7 " in status.stdout.replace("│", " ")
        assert emulator.token not in status.stdout + status.stderr
        drained = _cli("drain", "--path", outbox, "--base-url", emulator.base_url, "--timeout", "30", env=env)
        assert drained.returncode == 0, drained.stdout + drained.stderr
        assert "drained" in drained.stdout
        with Polar(emulator.token, base_url=emulator.base_url) as sdk:
            assert sdk.events.list(external_customer_id="cli_cust", limit=100).pagination.total_count == 7
        again = _cli("status", "--path", outbox, "--base-url", emulator.base_url, env=env)
        assert " 0 " in again.stdout.split("being sent")[0].replace("│", " ")


def test_missing_file_and_missing_token_fail_clearly(tmp_path: Path) -> None:
    """A wrong path exits 4 naming the file; drain without a token names POLAR_ACCESS_TOKEN."""
    missing = _cli("status", "--path", str(tmp_path / "nope.db"), env={})
    assert missing.returncode == 4 and "no outbox file" in missing.stdout
    (tmp_path / "o.db").write_bytes(b"")
    env = {k: v for k, v in os.environ.items() if k != "POLAR_ACCESS_TOKEN"}
    result = subprocess.run(
        [sys.executable, "-m", "polar_metering._cli", "outbox", "drain", "--path", str(tmp_path / "o.db")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert result.returncode == 4 and "POLAR_ACCESS_TOKEN" in result.stdout


def test_dead_letters_listed_and_retried(tmp_path: Path) -> None:
    """An event Polar refused (422) is listed with its reason, and ``retry`` queues it again."""
    import json

    from tests.delivery.delivery_helpers import ScriptedTransport, fast_config, make_events

    from polar_metering import RemoteValidationError
    from polar_metering.delivery import Outbox

    path = tmp_path / "polar-metering-outbox-production.db"
    refusal = RemoteValidationError(
        "refused",
        detail=[{"loc": ["body", "events", 0, "name"], "msg": "meter not found for this event", "type": "x"}],
    )
    outbox = Outbox(fast_config(path), ScriptedTransport([refusal]))
    outbox.enqueue(make_events(1, prefix="bad"))
    assert outbox.flush(10)
    outbox.close(timeout=1)
    env = {"POLAR_ACCESS_TOKEN": "polar_oat_not_used_for_reading"}
    listed = _cli("dead-letters", "--path", str(path), "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    (row,) = [json.loads(line) for line in listed.stdout.splitlines()]
    assert row["external_id"] == "bad-0" and "meter not found" in row["reason"]
    retried = _cli("retry", "--path", str(path), env=env)
    assert retried.returncode == 0 and "1 event(s) queued again" in retried.stdout
    status = _cli("status", "--path", str(path), env=env)
    cells = status.stdout.replace("│", " ")
    assert "dead letters" in cells and " 1 " in cells.split("being sent")[0]
