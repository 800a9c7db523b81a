"""The ``/__emulator__`` admin surface, its client, and the command line (token handling included)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest
from polar.v2026_10 import Polar
from polar.v2026_10.outputs import CustomerTeam
from typer.testing import CliRunner

from polar_metering._exceptions import (
    AuthenticationError,
    ConfigurationError,
    NotFound,
    RemoteValidationError,
)
from polar_metering.emulator import AdminClient, EmulatorHandle, resolve_token
from polar_metering.emulator._cli import typer_app


def _row(polar: Polar, external_id: str, meter_name: str = "API Requests") -> tuple[float, int, float]:
    (row,) = [
        r
        for r in polar.customer_meters.list(external_customer_id=external_id, limit=100).items
        if r.meter.name == meter_name
    ]
    return row.consumed_units, row.credited_units, row.balance


def test_admin_customer_grant_and_revoke(polar: Polar, emulator: EmulatorHandle, uid: str) -> None:
    admin = AdminClient(emulator.base_url, emulator.token)
    created = admin.create_customer(external_id=uid, name="No Email Inc")
    assert isinstance(polar.customers.get(created["id"]), CustomerTeam)  # no email: a team customer
    polar.events.ingest(events=[{"name": "api.request", "external_customer_id": uid}] * 2)
    meter = next(m for m in polar.meters.list(query="API Requests").items)
    granted = admin.grant(uid, "api_requests", 10)  # a catalog slug works as well as the meter id
    assert (granted["meter_id"], granted["units"]) == (meter.id, 10)
    assert _row(polar, uid) == (2.0, 10, 8.0)
    admin.grant(created["id"], meter.id, -25, by_external_id=False)
    # the running credit is clamped at zero (non_negative_running_sum in server/polar/kit/math.py)
    assert _row(polar, uid) == (2.0, 0, -2.0)


def test_admin_plan_subscribe_and_reset(polar: Polar, emulator: EmulatorHandle, uid: str) -> None:
    admin = AdminClient(emulator.base_url, emulator.token)
    admin.create_customer(external_id=uid, email=f"{uid}@example.com")
    polar.events.ingest(events=[{"name": "api.request", "external_customer_id": uid}])
    plan = admin.create_plan(f"{uid}-pro", {"api_requests": 100})
    assert plan["credits"] == {"api_requests": 100}
    admin.subscribe(uid, f"{uid}-pro")
    consumed, credited, _ = _row(polar, uid)
    # A plan of credits is a meter-credit benefit: it adds credit and resets nothing
    # (server/polar/subscription/service.py reset_meters at c6c3645).
    assert (consumed, credited) == (1.0, 100)
    polar.events.ingest(events=[{"name": "api.request", "external_customer_id": uid}] * 3)
    assert _row(polar, uid)[0] == 4.0
    admin.reset(uid)
    assert _row(polar, uid)[0] == 0.0


def test_admin_refusals(emulator: EmulatorHandle, uid: str) -> None:
    admin = AdminClient(emulator.base_url, emulator.token)
    admin.create_customer(external_id=uid)
    with pytest.raises(RemoteValidationError) as bad_meter:
        admin.grant(uid, "no_such_meter", 5)
    assert bad_meter.value.detail[0]["loc"] == ["body", "meter_id"]
    with pytest.raises(NotFound):
        admin.grant(f"{uid}-nobody", "api_requests", 5)
    with pytest.raises(RemoteValidationError):
        admin.subscribe(uid, f"{uid}-no-such-plan")
    with pytest.raises(RemoteValidationError):
        admin.create_customer(external_id=uid)  # external ids are unique
    with pytest.raises(AuthenticationError) as denied:
        AdminClient(emulator.base_url, "wrong-token").settle()
    assert "wrong-token" not in str(denied.value)
    both = httpx.post(
        f"{emulator.base_url}/__emulator__/credits",
        headers=emulator.headers,
        json={"customer_id": "x", "external_customer_id": "y", "meter_id": "m", "units": 1},
    )
    assert both.status_code == 422


def test_resolve_token_precedence() -> None:
    env = {"POLAR_EMULATOR_TOKEN": "from-emulator-env", "POLAR_ACCESS_TOKEN": "from-access-env"}
    assert resolve_token("explicit", env) == "explicit"
    assert resolve_token(None, env) == "from-emulator-env"
    assert resolve_token(None, {"POLAR_ACCESS_TOKEN": "from-access-env"}) == "from-access-env"
    with pytest.raises(ConfigurationError, match="token"):
        resolve_token(None, {"POLAR_ACCESS_TOKEN": "  "})


def _child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("POLAR_EMULATOR_TOKEN", "POLAR_ACCESS_TOKEN")}
    return {**env, **extra}


def test_command_refuses_to_start_without_a_token() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "polar_metering.emulator", "--port", "0"],
        env=_child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "POLAR_EMULATOR_TOKEN" in done.stderr
    assert "***" not in done.stderr  # the message itself must not look like a redacted secret


def test_command_never_prints_the_token() -> None:
    secret = "polar_oat_s3cr3t-value"
    done = subprocess.run(
        [sys.executable, "-m", "polar_metering.emulator", "--port", "0", "--db", "bogus://x"],
        env=_child_env(POLAR_EMULATOR_TOKEN=secret),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "bogus" in done.stderr
    assert secret not in done.stderr + done.stdout


def test_typer_admin_commands_against_the_emulator(emulator: EmulatorHandle, uid: str) -> None:
    runner = CliRunner()
    env = {"POLAR_EMULATOR_TOKEN": emulator.token}
    made = runner.invoke(
        typer_app(), ["admin", "customer", "--external-id", uid, "--url", emulator.base_url], env=env
    )
    assert made.exit_code == 0, made.output
    assert json.loads(made.output)["external_id"] == uid
    granted = runner.invoke(
        typer_app(), ["admin", "grant", uid, "api_requests", "7", "--url", emulator.base_url], env=env
    )
    assert granted.exit_code == 0, granted.output
    assert json.loads(granted.output)["units"] == 7
    assert emulator.token not in made.output + granted.output
    refused = runner.invoke(
        typer_app(), ["admin", "settle", "--url", emulator.base_url], env={"POLAR_EMULATOR_TOKEN": "nope"}
    )
    assert refused.exit_code == 1
    assert "nope" not in refused.output
