"""Every Python twin of the seed guide's examples (``examples/seed/``) runs and does what the seed says.

Each example is imported from its file and its ``main()`` run on a fresh embedded engine; the
assertions check the numbers and texts the seed shows, and that refused actions did not run.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import polar_metering as metering
from polar_metering import Metering, SafeResult, UsageLimitExceeded, ValidationError

SEED_DIR = Path(__file__).resolve().parents[2] / "examples" / "seed"
EXAMPLES = (
    "quick_start",
    "setting_up_meters",
    "tracking_usage",
    "checking_limits",
    "protecting_actions",
    "api_reference_types",
    "best_practices",
    "async_twins",
    "troubleshooting",
)


def load(name: str) -> ModuleType:
    path = SEED_DIR / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"seed_example_{name}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through sys.modules
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(spec.name, None)
        raise
    return module


def run(name: str, capsys: pytest.CaptureFixture[str], **kwargs: Any) -> tuple[Any, str]:
    """Run an example's ``main()`` (conftest leaves no default client behind between tests)."""
    out = load(name).main(**kwargs)
    # Each example closes the default client it made.
    with pytest.raises(metering.ConfigurationError):
        metering.get_client()
    return out, capsys.readouterr().out


def test_every_example_file_is_tested() -> None:
    assert sorted(p.stem for p in SEED_DIR.glob("*.py")) == sorted(EXAMPLES)


def test_quick_start(capsys: pytest.CaptureFixture[str]) -> None:
    out, printed = run("quick_start", capsys)
    assert out["url"].startswith("sqlite:///")
    assert out["db_file_existed"]
    assert out["before"] == ({"success": True}, 200)
    assert out["calls"] == [({"success": True}, 200)] * 3
    assert out["after"] == ({"error": "Usage limit reached: 3/3 units used"}, 429)
    assert out["anonymous"] == ({"error": "sign in first"}, 401)
    assert out["current"] == 3
    assert "429 {'error': 'Usage limit reached: 3/3 units used'}" in printed


def test_setting_up_meters(capsys: pytest.CaptureFixture[str]) -> None:
    out, printed = run("setting_up_meters", capsys)
    assert out["toml_catalog"].meters == out["code_catalog"].meters == metering.DEFAULT_METERS
    assert [p.name for p in out["toml_catalog"].plans] == ["free"]
    assert out["toml_catalog"].plan("free").credits["ai_tokens"] == 10_000
    assert out["bodies"]["storage_gb"]["aggregation"] == {"func": "max", "property": "size_gb"}
    assert out["bodies"]["team_seats"]["aggregation"] == {"func": "unique", "property": "user_id"}
    assert out["bodies"]["api_requests"]["filter"]["clauses"] == [
        {"property": "name", "operator": "eq", "value": "api.request"}
    ]
    assert all("organization_id" not in body for body in out["bodies"].values())
    assert out["checklist"][1] == "Storage (GB): filter name = 'storage.update'; aggregation Max of `size_gb`"
    assert sorted(out["engine_usage"]) == ["ai_tokens", "api_requests", "storage_gb", "team_seats"]
    assert out["engine_usage"]["ai_tokens"].limit == 10_000  # the toml's plan reached the engine
    dry, first, second = out["reports"]
    assert dry.dry_run
    assert len(dry.created) == 4
    assert dry.existing == []
    assert first.created == ["api_requests", "storage_gb", "ai_tokens", "team_seats"]
    assert all(r.polar_id for r in first.results)
    assert second.created == []
    assert len(second.existing) == 4
    assert second.drift == []
    assert second.ok
    assert [r.polar_id for r in second.results] == [r.polar_id for r in first.results]
    assert first.server.startswith("http://127.0.0.1:")
    assert "0 created, 4 existing, 0 drifted, 0 failed" in printed


def test_tracking_usage(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tracking.db'}"
    out, _ = run("tracking_usage", capsys, url=url)
    singles = [out["core"], *out["api_requests"], *out["storage"], *out["ai_tokens"], *out["seats"]]
    assert all(r.success and r.inserted == 1 and r.error is None for r in singles)
    assert [(r.success, r.inserted) for r in out["batch"]] == [(True, 3), (True, 1)]
    user, org = out["usage"]["user_123"], out["usage"]["org_456"]
    assert user["api_requests"].current == 6  # core + 2 helpers + 3 in batches
    assert user["ai_tokens"].current == 3500  # 1500 + 1500 + 500
    assert org["storage_gb"].current == 3.0  # the peak of 2.5 and 3.0
    assert org["team_seats"].current == 1  # user_789 twice is one seat
    assert user["storage_gb"].current == 0
    assert org["api_requests"].current == 0

    # The metadata each helper stored, read back from the same SQLite file.
    with Metering(url) as client:
        events, total = client.backend.list_events(external_customer_id="user_123", limit=100)  # type: ignore[attr-defined]
        org_events, _ = client.backend.list_events(external_customer_id="org_456", limit=100)  # type: ignore[attr-defined]
    assert total == 9  # core, 2 request helpers, 2 token helpers, 3 + 1 in batches
    metadata = [e.metadata for e in events]
    assert {"endpoint": "/api/v1/generate", "method": "POST"} in metadata
    assert {"endpoint": "/api/generate", "method": "GET"} in metadata
    assert {"endpoint": "/api/generate", "method": "POST", "status_code": 200, "duration_ms": 150} in metadata
    assert {"tokens": 1500, "model": "gpt-4", "type": "total"} in metadata
    assert {"endpoint": "/api/c"} in metadata  # the seed's camelCase batch spelling
    org_metadata = [e.metadata for e in org_events]
    assert {"size_gb": 3.0, "operation": "upload"} in org_metadata
    assert {"user_id": "user_789", "action": "login"} in org_metadata


def test_checking_limits(capsys: pytest.CaptureFixture[str]) -> None:
    out, printed = run("checking_limits", capsys)
    assert out["views"] == {
        "api_requests": {"allowed": True, "current": 150, "limit": 1000, "remaining": 850},
        "storage_gb": {"allowed": True, "current": 2.5, "limit": 10, "remaining": 7.5},
        "ai_tokens": {"allowed": False, "current": 10000, "limit": 10000, "remaining": 0},
        "team_seats": {"allowed": True, "current": 3, "limit": 5, "remaining": 2},
    }
    current = out["current"]
    assert (current.allowed, current.current, current.limit, current.remaining) == (True, 150, 1000, 850)
    assert current.customer == "org_456"
    specific = out["specific"]
    assert not specific.allowed
    assert specific.customer == "user_123"
    assert specific.reason == "Usage limit reached: 10/10 units used"
    assert out["usage"]["ai_tokens"].reason == "Usage limit reached: 10000/10000 units used"
    lines = printed.splitlines()
    assert lines[0] == "{'allowed': True, 'current': 150, 'limit': 1000, 'remaining': 850}"
    assert lines[-1] == "Usage limit reached: 10/10 units used"


def test_protecting_actions(capsys: pytest.CaptureFixture[str]) -> None:
    example = load("protecting_actions")
    out = example.main()
    printed = capsys.readouterr().out
    assert out["generated"] == [400, 300]
    assert out["summary"] == "answer to 'summarize: usage-based billing'"
    refused = out["refused"]
    assert isinstance(refused, UsageLimitExceeded)
    assert refused.status.reason == "Usage limit reached: 1000/1000 units used"
    assert refused.meter == "ai_tokens"
    assert refused.customer == "org_456"
    assert out["summary_refused"] == "Usage limit reached: 1000/1000 units used"
    # Neither refused action reached the AI.
    assert out["ai_calls_at_limit"] == out["ai_calls_after"] == 3

    ok1, too_big, ok2, full = out["uploads"]
    assert isinstance(ok1, SafeResult)
    assert (ok1.success, ok1.data, ok1.error) == (True, "report.pdf (4 GB)", None)
    assert not too_big.success
    assert too_big.data is None
    assert too_big.error == "Usage limit would be exceeded: 11/10 units after this action"
    assert (ok2.success, ok2.data) == (True, "backup.zip (6 GB)")
    assert not full.success
    assert full.error == "Usage limit reached: 10/10 units used"
    assert full.status is not None
    assert full.status.current == 10
    assert out["modals"] == [too_big.error, full.error]  # the upgrade-modal branch, twice
    assert out["stored_gb"] == {"org_456": 10.0}  # the refused uploads stored nothing

    (b1, c1), (b2, c2), (b3, c3) = out["routes"]
    assert (c1, c2, c3) == (200, 200, 429)
    assert b1 == b2 == {"success": True}
    assert b3["error"] == "Rate limit exceeded"
    assert b3["allowed"] is False
    assert (b3["current"], b3["limit"], b3["remaining"]) == (2.0, 2.0, 0.0)
    assert b3["reason"] == "Usage limit reached: 2/2 units used"
    json.dumps(b3)  # the 429 body is JSON-ready

    usage = out["usage"]
    assert (usage["ai_tokens"].current, usage["storage_gb"].current, usage["api_requests"].current) == (
        1000,
        10,
        2,
    )
    assert all(s.current == 0 for s in out["user_usage"].values())  # billed to the org, not the user
    assert "Upgrade modal: Usage limit reached: 10/10 units used" in printed
    with pytest.raises(PermissionError):
        example.get_current_customer()  # outside a request there is no session


def test_api_reference_types(capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = run("api_reference_types", capsys)
    assert (out["ok"].success, out["ok"].inserted, out["ok"].error) == (True, 1, None)
    assert (out["first"].inserted, out["first"].duplicates, out["first"].external_ids) == (1, 0, ("req-42",))
    assert (out["retry"].success, out["retry"].inserted, out["retry"].duplicates) == (True, 0, 1)
    assert not out["null_value"].success
    assert out["null_value"].error.startswith("metadata.endpoint: values must be str, int, float or bool")
    assert out["empty_string"].error == "metadata.endpoint: strings must be 1 to 500 characters, got 0"
    mixed = out["mixed_batch"]
    assert (mixed.success, mixed.inserted) == (False, 1)
    assert [i for i, _ in mixed.rejected] == [1]
    assert "events[1].metadata.tags" in mixed.rejected[0][1]

    under, over = out["under"], out["over"]
    assert (under.allowed, under.current, under.limit, under.remaining, under.balance) == (True, 3, 10, 7, 7)
    assert (over.allowed, over.current, over.limit, over.remaining, over.balance) == (False, 12, 10, 0, -2)
    assert over.reason == "Usage limit reached: 12/10 units used"
    as_json = json.loads(out["json"])
    assert as_json["period_start"] == "2026-03-10T09:00:00+00:00"
    assert as_json["period_end"] == "2026-04-10T09:00:00+00:00"
    assert as_json["remaining"] == 0
    assert as_json["reason"] == over.reason

    assert sorted(out["catalog_slugs"]) == sorted(out["literal_slugs"])
    assert out["events"] == ("api.request", "storage.update", "ai.tokens", "seat.active")
    assert isinstance(out["unknown_slug"], ValidationError)
    assert out["unknown_slug"].field == "meter"


def test_best_practices(capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = run("best_practices", capsys)
    # 1. A failure and a success each: tracking first billed the failure too.
    assert out["operations"] == {"cust_good": 1, "cust_bad": 2}
    # 2. Same usage batched or not.
    assert out["batched"] == out["one_by_one"] == 2
    assert out["batch_usage"] == {"cust_batch": 2, "cust_single": 2}
    # 3. A refused event is reported, and the request is still served.
    assert out["graceful"] == {
        "success": True,
        "tracked": False,
        "error": "metadata.endpoint: strings must be 1 to 500 characters, got 0",
    }
    # 4. Storage and requests land on the organization when there is one, else on the user.
    assert out["entities"] == {
        "org_456": {"api_requests": 1, "storage_gb": 2.5},
        "user_123": {},
        "user_999": {"api_requests": 1, "storage_gb": 1.0},
    }
    # 5. Refused before the expensive work ran: the estimate that would not fit, then the full plan.
    assert out["refusals"] == [
        "Usage limit would be exceeded: 900/800 units after this action",
        "Usage limit reached: 800/800 units used",
    ]
    assert out["expensive_runs"] == ["draft", "revise"]
    assert out["ai_tokens"].current == 800


def test_async_twins(capsys: pytest.CaptureFixture[str]) -> None:
    out, printed = run("async_twins", capsys)
    assert out["core"].success
    assert out["core"].inserted == 1
    assert all(r.success for r in out["helpers"])
    assert out["batch"].inserted == 2
    assert (out["current"].current, out["current"].limit) == (4, 1000)
    assert out["generated"] == [400, 400]
    assert out["refused"] == "Usage limit reached: 800/800 units used"
    safe = out["safe"]
    assert (safe.success, safe.data, safe.error) == (False, None, "Usage limit reached: 800/800 units used")
    assert {s: u.current for s, u in out["all"].items()} == {
        "api_requests": 4,
        "storage_gb": 2.5,
        "ai_tokens": 800,
        "team_seats": 1,
    }
    assert out["specific"].reason == "Usage limit would be exceeded: 11/10 units after this action"
    assert out["during"].reserved == 600
    assert not out["during"].allowed
    assert out["during"].reason == "Usage limit would be exceeded: 1100/800 units after this action"
    assert (out["after"].current, out["after"].reserved) == (400, 0)  # commit recorded 400, hold gone
    assert not out["reserve_refused"].success
    assert [r.success for r in out["race"]].count(True) == 2
    # Refused while holds were out (1200 would be used), in the moment between a request recording
    # its 400 tokens and releasing its hold (both count until the release: 1600), or after both
    # finished (800 used). Never more than two ran.
    assert {r.error for r in out["race"] if not r.success} <= {
        "Usage limit would be exceeded: 1200/800 units after this action",
        "Usage limit would be exceeded: 1600/800 units after this action",
        "Usage limit reached: 800/800 units used",
    }
    assert out["race_usage"].current == 800
    assert out["race_usage"].reserved == 0
    # Refused coroutine actions never ran: 2 + 1 reserved + 2 of the race.
    assert out["ai_calls"][:3] == ["first", "second", "reserved"]
    assert len(out["ai_calls"]) == 5
    assert "five concurrent 400-token requests: 2 ran; usage 800.0" in printed


def test_troubleshooting(capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = run("troubleshooting", capsys)
    mismatch = out["mismatch"]
    assert mismatch["expected"] == "api.request"
    assert all(r.success and r.inserted == 1 for r in mismatch["results"].values())
    assert mismatch["usage"] == 0
    assert mismatch["after"] == 1
    nosub = out["no_subscription"]
    assert nosub["without"].limit is None
    assert nosub["without"].allowed
    assert nosub["without"].remaining is None
    assert nosub["with_plan"].limit == 100
    assert (out["customer"]["wrong"], out["customer"]["right"]) == (0, 1)
    setup = out["setup"]
    assert setup["missing_token"] is not None
    assert "POLAR_ACCESS_TOKEN" in str(setup["missing_token"])
    assert setup["org_id_sent"] is False


def test_examples_run_as_scripts(tmp_path: Path) -> None:
    import subprocess

    result = subprocess.run(
        [sys.executable, str(SEED_DIR / "quick_start.py")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "limited() -> 429 {'error': 'Usage limit reached: 3/3 units used'}" in result.stdout
    assert list(tmp_path.iterdir()) == []  # the example's database lived in its own temporary directory


def test_mapping_doc_names_real_twins() -> None:
    import re

    doc = (SEED_DIR.parents[1] / "docs" / "seed-to-python.md").read_text(encoding="utf-8")
    references = re.findall(r"`(\w+)\.py: (\w+)`", doc)
    assert len(references) > 30
    for file, name in references:
        assert hasattr(load(file), name), (
            f"docs/seed-to-python.md names {file}.py: {name}, which does not exist"
        )
    # Every function and type of the seed guide has a row.
    for seed_name in (
        "trackUsage(",
        "trackUsageBatch(",
        "trackApiRequest(",
        "trackStorageUpdate(",
        "trackAiTokens(",
        "trackSeatActivity(",
        "checkLimit(",
        "checkCurrentLimit(",
        "getAllUsage(",
        "withUsageLimit(",
        "withUsageLimitSafe(",
        "getCurrentCustomer(",
        "`UsageStatus {",
        "`TrackingResult {",
        "`MetadataValue",
        "`MeterSlug",
        "`EventName",
        "`CustomerMeter`",
        "`EventsIngestResponse`",
    ):
        assert seed_name in doc, seed_name


def test_setup_command_as_documented(tmp_path: Path) -> None:
    """The setup command line `setting_up_meters.py` prints works, run as a real process against the
    emulator (one run: the dry run and idempotency are covered in-process above)."""
    import os
    import subprocess

    from polar_metering.emulator import emulator_thread

    example = load("setting_up_meters")
    (tmp_path / "metering.toml").write_text(example.METERING_TOML, encoding="utf-8")
    documented = [
        line.split("#")[0].split() for line in example.SETUP_COMMANDS if line.startswith("polar-metering")
    ]
    assert documented == [
        ["polar-metering", "setup", "--catalog", "metering.toml", "--dry-run"],
        ["polar-metering", "setup", "--catalog", "metering.toml"],
    ]
    with Metering("sqlite:///:memory:", meters=[]) as org, emulator_thread(org.backend) as emu:  # type: ignore[arg-type]
        env = {**os.environ, "POLAR_ACCESS_TOKEN": emu.token, "POLAR_BASE_URL": emu.base_url}
        result = subprocess.run(
            [sys.executable, "-m", "polar_metering._cli", *documented[1][1:]],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
            check=False,
        )
        created = sorted(m.name for m in org.backend.list_meters())  # type: ignore[attr-defined]
    assert result.returncode == 0, result.stdout + result.stderr
    assert emu.token not in result.stdout + result.stderr
    assert "4 created, 0 existing, 0 drifted, 0 failed" in " ".join(result.stdout.split())
    assert created == sorted(m.name for m in metering.DEFAULT_METERS)
