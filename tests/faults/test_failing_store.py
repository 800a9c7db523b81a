"""A store that fails refuses; it does not pretend. The outbox (and the engine's file) on a real
2 MiB tmpfs that fills up, and on one remounted read-only: every acknowledged event is stored,
later calls return ``success=False`` with the reason, and calls succeed again once the store can be
written.

Each scenario runs in a child process with a private mount namespace (``unshare``), so the tmpfs
exists only for it and disappears with it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

CHILD = Path(__file__).with_name("disk_child.py")


def run_in_namespace(scenario: str, tmp_path: Path) -> dict[str, Any]:
    unshare = shutil.which("unshare")
    assert unshare, "these tests need util-linux's unshare to mount a private tmpfs"
    # As root a new mount namespace is enough; otherwise a user namespace grants the mount.
    prefix = [unshare, "-m", "--propagation", "private"] if os.geteuid() == 0 else [unshare, "-rm"]
    result = subprocess.run(
        [*prefix, sys.executable, str(CHILD), scenario, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert result.returncode == 0 and lines, result.stderr[-4000:]
    return json.loads(lines[-1].removeprefix("RESULT "))  # type: ignore[no-any-return]


def test_full_disk_durable_default_acknowledges_only_what_is_stored(tmp_path: Path) -> None:
    r = run_in_namespace("outbox-full", tmp_path)
    assert 0 < r["acked"] < 20_000, "the disk filled up part way"
    assert r["acked"] == r["stored"], "acknowledged == stored: nothing reported kept that is not"
    assert r["errors"], "later calls said why they failed"
    assert any("full" in e for e in r["errors"]), r["errors"]
    # Space returned: tracking works again, and still every acknowledged event is on disk.
    assert r["acked_after"] > 0, r["errors_after"]
    assert r["stored_after"] == r["acked"] + r["acked_after"]
    assert any("new events are refused" in m for m in r["logs"]), r["logs"]
    assert r["log_count"] < 50, "one report per failure spell, not one per call"


def test_read_only_filesystem_refuses_and_recovers(tmp_path: Path) -> None:
    r = run_in_namespace("outbox-readonly", tmp_path)
    assert r["acked"] == 0, "nothing acknowledged while the file cannot be written"
    assert r["stored"] == 0
    assert r["errors"] and all("outbox" in e for e in r["errors"]), r["errors"]
    assert any("read-only" in e or "cannot" in e for e in r["errors"]), r["errors"]
    assert r["acked_after"] == 50, r["errors_after"]
    assert r["stored_after"] == 50
    assert r["log_count"] < 20, "one report per failure spell, not one per call"


def test_group_commit_opt_in_tells_the_truth_at_close(tmp_path: Path) -> None:
    """durable=False acknowledges before the commit; on a full disk later calls refuse, and what could
    not be written is reported lost at close, never as 'the next process sends them'."""
    r = run_in_namespace("outbox-full-group", tmp_path)
    assert 0 < r["acked"] < 20_000
    lost = [m for m in r["logs"] if "could not be written and are lost" in m]
    if r["acked"] > r["stored"]:
        assert lost, r["logs"]
        count = int(re.search(r": (\d+) tracked events", lost[-1]).group(1))  # type: ignore[union-attr]
        assert r["stored"] + count == r["acked"]
    assert not any("the next process to open it sends them" in m for m in r["logs"] if "lost" in m)
    assert any("full" in e for e in r["errors"]), r["errors"]


def test_engine_on_a_full_disk_acknowledges_only_what_is_stored(tmp_path: Path) -> None:
    r = run_in_namespace("engine-full", tmp_path)
    assert 0 < r["acked"] < 20_000
    assert r["acked"] == r["stored"] == r["current"]
    assert r["errors"]
    assert r["acked_after"] == 50, r["errors_after"]
    assert r["stored_after"] == r["acked"] + 50
