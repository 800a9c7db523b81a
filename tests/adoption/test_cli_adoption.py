"""The CLI as a new user meets it: missing extras, an offline dry run, the emulator's admin commands,
the demo's temp files, error messages that name the real server and keep their words."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import polar_metering as metering
from polar_metering._exceptions import redact

# Runs the CLI with some top-level packages made unimportable, as in an install without their extra.
_BLOCKED_RUN = """
import importlib.abc, sys
BLOCKED = set(sys.argv[1].split(","))
class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Blocker())
from polar_metering._cli import main
main(sys.argv[2:])
"""


def _cli(
    *args: str, blocked: tuple[str, ...] = (), env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("POLAR_", "METERING_"))}
    environ.update(env or {})
    command = [sys.executable, "-c", _BLOCKED_RUN, ",".join(blocked) or "-", *args]
    return subprocess.run(
        command, capture_output=True, text=True, env=environ, cwd=cwd, timeout=120, check=False
    )


# (typer itself needs pydantic, so pydantic is there with the cli extra alone)
CLI_ONLY = ("starlette", "uvicorn", "jinja2", "polar", "httpx", "fastapi")


@pytest.mark.parametrize(
    ("args", "extra"),
    [
        (["emulator", "--help"], "emulator"),
        (["emulator", "--token", "dev-token"], "emulator"),
        (["emulator", "admin", "settle"], "emulator"),
        (["outbox", "status"], "polar"),
        (["outbox", "--help"], "polar"),
        (["dashboard", "--port", "0"], "dashboard"),
    ],
)
def test_a_command_without_its_extra_says_which_in_one_line(args: list[str], extra: str) -> None:
    result = _cli(*args, blocked=CLI_ONLY)
    assert result.returncode == 4, result.stderr
    assert result.stderr.strip() == (
        f"polar-metering {args[0]} needs the {extra} extra: pip install 'polar-metering[{extra}]'"
    )
    assert "Traceback" not in result.stdout + result.stderr


def test_help_lists_the_extra_each_command_needs() -> None:
    result = _cli("--help", blocked=CLI_ONLY, env={"COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    assert "(needs the emulator extra)" in result.stdout
    assert "(needs the polar extra)" in result.stdout
    assert "(needs the dashboard extra)" in result.stdout


def test_setup_dry_run_works_offline_without_a_token_or_the_sdk(tmp_path: Path) -> None:
    (tmp_path / "metering.toml").write_text(
        '[meters.gpu_minutes]\nname = "GPU Minutes"\nevent = "gpu.run"\nfunc = "sum"\nproperty = "minutes"\n'
    )
    result = _cli("setup", "--dry-run", blocked=("polar", "httpx"), cwd=tmp_path, env={"COLUMNS": "200"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "offline" in result.stdout
    assert "gpu_minutes" in result.stdout and "would create" in result.stdout
    assert "5 to create, 0 existing" in result.stdout  # the four defaults and gpu_minutes


def test_run_setup_dry_run_offline_report() -> None:
    report = metering.run_setup(dry_run=True, env={})
    assert report.created == ["api_requests", "storage_gb", "ai_tokens", "team_seats"]
    assert report.server == "offline" and report.dry_run
    with pytest.raises(metering.ConfigurationError, match="POLAR_ACCESS_TOKEN"):
        metering.run_setup(env={})  # a real run still needs the token


def test_demo_leaves_no_temporary_directory(tmp_path: Path) -> None:
    result = _cli("demo", env={"TMPDIR": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    assert "actions refused at their limit" in result.stdout
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def emulator() -> Iterator[metering.emulator.EmulatorHandle]:  # type: ignore[name-defined]
    pytest.importorskip("polar")
    from polar_metering.emulator import running_emulator

    with running_emulator() as handle:
        yield handle


def test_emulator_admin_reads_polar_base_url(emulator: object) -> None:
    base_url, token = emulator.base_url, emulator.token  # type: ignore[attr-defined]
    result = _cli(
        "emulator",
        "admin",
        "customer",
        "--external-id",
        "org_admin_env",
        env={"POLAR_BASE_URL": base_url, "POLAR_EMULATOR_TOKEN": token},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert '"external_id": "org_admin_env"' in result.stdout


def test_a_rejected_token_names_the_server_it_was_sent_to(emulator: object) -> None:
    base_url = emulator.base_url  # type: ignore[attr-defined]
    result = _cli(
        "setup", env={"POLAR_BASE_URL": base_url, "POLAR_ACCESS_TOKEN": "wrong-token-0123", "COLUMNS": "300"}
    )
    assert result.returncode == 2, result.stdout + result.stderr
    out = " ".join(result.stdout.split())
    assert f"check POLAR_ACCESS_TOKEN is an organization token for the server at {base_url}" in out
    assert "production" not in out and "***" not in out and "wrong-token-0123" not in out


def test_redaction_masks_values_not_words() -> None:
    hint = "check POLAR_ACCESS_TOKEN is an organization token for Polar production (https://api.polar.sh)"
    assert redact(hint) == hint
    missing = "access_token: a Polar organization access token is required; set POLAR_ACCESS_TOKEN"
    assert redact(missing) == missing
    assert redact("access_token: t0ken-value") == "access_token: ***"
    assert redact("POLAR_ACCESS_TOKEN=dev") == "POLAR_ACCESS_TOKEN=***"


def test_a_long_metadata_string_error_says_its_length() -> None:
    from polar_metering.testing import metering_for_tests

    client, _ = metering_for_tests(strict=False)
    result = client.track_usage("u", "api.request", {"endpoint": "x" * 600})
    assert result.error == "metadata.endpoint: strings must be 1 to 500 characters, got 600"
    assert client.track_usage("u", "n" * 200).error == "name: must be at most 128 characters, got 200"
