"""``polar-metering usage`` reports, ``--version``, and the ``dashboard`` command as a real process:
token printed once when generated, never echoed when given, 127.0.0.1 by default, no token in the
access log."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx

from polar_metering import Metering, __version__

from .conftest import PLANS, TOKEN, seed


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "polar_metering._cli", *args],
        capture_output=True,
        text=True,
        env=full,
        timeout=120,
        check=False,
    )


def _seeded(sqlite_url: str) -> Metering:
    client = Metering(sqlite_url, plans=PLANS)
    seed(client)
    return client


def test_version() -> None:
    answer = _cli("--version")
    assert answer.returncode == 0 and answer.stdout.strip() == f"polar-metering {__version__}"


def test_usage_of_one_customer_as_json_and_table(sqlite_url: str) -> None:
    with _seeded(sqlite_url) as client:
        expected = client.get_all_usage("org_005")
    answer = _cli("usage", "org_005", "--json", "--url", sqlite_url)
    assert answer.returncode == 0, answer.stderr
    rows = json.loads(answer.stdout)
    assert [r["meter"] for r in rows] == list(expected)
    for row in rows:
        status = expected[row["meter"]]
        assert (row["current"], row["limit"], row["remaining"]) == (
            status.current,
            status.limit,
            status.remaining,
        )
        assert status.period_start is not None and status.period_end is not None
        assert row["period_start"] == status.period_start.isoformat()
        assert row["period_end"] == status.period_end.isoformat()
    table = _cli("usage", "org_005", "--url", sqlite_url)
    assert table.returncode == 0 and "api_requests" in table.stdout and "Usage of org_005" in table.stdout


def test_usage_all_in_every_format(sqlite_url: str) -> None:
    with _seeded(sqlite_url) as client:
        customers = [f"org_{i:03d}" for i in range(12)] + ["walk_in"]
        expected = {(c, m): s for c in customers for m, s in client.get_all_usage(c).items()}
    as_csv = _cli("usage", "--all", "--format", "csv", "--url", sqlite_url)
    assert as_csv.returncode == 0, as_csv.stderr
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert len(rows) == len(expected) == 13 * 4
    for row in rows:
        status = expected[(row["customer"], row["meter"])]
        assert float(row["current"]) == status.current
        assert (float(row["limit"]) if row["limit"] else None) == status.limit
    as_json = json.loads(_cli("usage", "--all", "--format", "json", "--url", sqlite_url).stdout)
    assert {(r["customer"], r["meter"]) for r in as_json} == set(expected)
    table = _cli("usage", "--all", "--url", sqlite_url)
    assert table.returncode == 0 and "walk_in" in table.stdout


def test_usage_history_per_day(sqlite_url: str) -> None:
    with _seeded(sqlite_url) as client:
        client.track_api_request("org_001", "/extra")
    answer = _cli(
        "usage", "org_001", "--history", "--interval", "day", "--format", "json", "--url", sqlite_url
    )
    assert answer.returncode == 0, answer.stderr
    rows = json.loads(answer.stdout)
    assert len(rows) >= 31 and set(rows[0]) == {
        "start",
        "api_requests",
        "storage_gb",
        "ai_tokens",
        "team_seats",
    }
    with Metering(sqlite_url) as client:
        today = client.check_limit("org_001", "api_requests").current
    assert rows[-1]["api_requests"] == today  # all of today's usage is in today's bucket
    assert sum(r["api_requests"] for r in rows) == today
    as_csv = _cli(
        "usage", "org_001", "--history", "--interval", "hour", "--format", "csv", "--url", sqlite_url
    )
    header = as_csv.stdout.splitlines()[0]
    assert header == "start,api_requests,storage_gb,ai_tokens,team_seats"
    bad = _cli("usage", "org_001", "--history", "--interval", "minute", "--url", sqlite_url)
    assert bad.returncode == 2 and "--interval" in bad.stderr


def test_usage_never_creates_a_database(tmp_path: Path) -> None:
    missing = tmp_path / "nothing-here.db"
    for args in (("usage", "u1"), ("usage", "--all"), ("usage", "u1", "--history")):
        answer = _cli(*args, "--url", f"sqlite:///{missing}")
        assert answer.returncode == 4
        assert "no database at" in answer.stderr and str(missing) in answer.stderr
    assert not missing.exists()
    here = subprocess.run(
        [sys.executable, "-m", "polar_metering._cli", "usage", "--all"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "METERING_URL"},
        timeout=120,
        check=False,
    )
    assert here.returncode == 4 and not (tmp_path / "metering.db").exists()
    assert _cli("dashboard", "--url", f"sqlite:///{missing}", "--port", "0").returncode == 4
    assert not missing.exists()


def test_usage_argument_errors(sqlite_url: str) -> None:
    _seeded(sqlite_url).close()
    assert _cli("usage", "--url", sqlite_url).returncode == 2
    assert _cli("usage", "u", "--all", "--url", sqlite_url).returncode == 2
    assert _cli("usage", "u", "--format", "xml", "--url", sqlite_url).returncode == 2


def _start_dashboard(*args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "polar_metering._cli", "dashboard", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    return proc, line


def _stop(proc: subprocess.Popen[str]) -> tuple[str, str]:
    proc.terminate()
    out, err = proc.communicate(timeout=30)
    return out, err


def test_dashboard_command_generates_a_token_and_prints_the_login_url_once(sqlite_url: str) -> None:
    _seeded(sqlite_url).close()
    proc, line = _start_dashboard("--url", sqlite_url)
    try:
        match = re.fullmatch(
            r"polar-metering dashboard: open (http://127\.0\.0\.1:\d+/)\?token=(\S+)\n", line
        )
        assert match, line
        base, token = match.groups()
        with httpx.Client(timeout=30, follow_redirects=True) as http:
            assert http.get(base).status_code == 401
            logged_in = http.get(f"{base}?token={token}&q=org")
            assert logged_in.status_code == 200 and "org_001" in logged_in.text
            assert str(logged_in.url) == f"{base}?q=org"
        time.sleep(0.3)
    finally:
        out, err = _stop(proc)
    assert token not in out and token not in err  # printed once, in the first line only
    assert '"GET /" 303' in err and '"GET /" 200' in err


def test_dashboard_command_never_echoes_a_given_token(sqlite_url: str) -> None:
    _seeded(sqlite_url).close()
    secret = "given-token-" + TOKEN
    proc, line = _start_dashboard("--url", sqlite_url, env={"METERING_DASHBOARD_TOKEN": secret})
    try:
        assert secret not in line and "?token=<your token>" in line
        base = re.search(r"(http://127\.0\.0\.1:\d+/)", line)
        assert base is not None
        with httpx.Client(timeout=30, follow_redirects=True) as http:
            assert http.get(f"{base.group(1)}?token={secret}").status_code == 200
            assert http.get(f"{base.group(1)}?token=wrong-{secret}").status_code == 401
        time.sleep(0.3)
    finally:
        out, err = _stop(proc)
    assert secret not in out and secret not in err and "token=" not in err
