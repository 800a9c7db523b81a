"""One catalog source: ``init()``, ``polar-metering usage``, ``dashboard`` and ``setup`` all read
``METERING_CATALOG``, else ``./metering.toml``, else the four default meters, and say which."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

import polar_metering as metering
from polar_metering import DEFAULT_METERS, Catalog, ConfigurationError, Metering, load_catalog
from polar_metering._catalog import resolve_catalog

TOML = """
[defaults]
plan = "free"

[meters.api_requests]
name = "API Calls"
event = "api.call"

[meters.exports]
event = "export.done"

[plans.free]
credits = { api_requests = 3, exports = 1 }

[plans.pro]
credits = { api_requests = 300 }
product_id = "9a5b6a58-7a43-4f62-9d0a-2c6b8b5f3e11"
"""


def test_a_toml_meter_of_a_default_slug_replaces_the_default(tmp_path: Path) -> None:
    path = tmp_path / "metering.toml"
    path.write_text(TOML, encoding="utf-8")
    cat = load_catalog(path)
    assert [m.slug for m in cat.meters] == [m.slug for m in DEFAULT_METERS] + ["exports"]
    assert cat.meter("api_requests").event_name == "api.call"
    assert cat.meter("api_requests").name == "API Calls"
    assert cat.default_plan == "free"
    assert cat.plan("pro").product_id == "9a5b6a58-7a43-4f62-9d0a-2c6b8b5f3e11"
    assert cat.describe() == "5 meters, 2 plans (default: free)"


def test_init_reads_metering_toml_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "metering.toml").write_text(TOML, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("METERING_CATALOG", raising=False)
    with caplog.at_level(logging.INFO, logger="polar_metering"):
        client = metering.init("sqlite:///:memory:")
    try:
        assert client.catalog_source == "./metering.toml"
        assert "catalog: ./metering.toml (5 meters, 2 plans (default: free))" in caplog.text
        # The default plan limits a customer without a subscription.
        assert metering.check_limit("someone", "api_requests").limit == 3
        assert metering.track_usage("someone", "api.call").success
        assert metering.check_limit("someone", "api_requests").current == 1
    finally:
        metering.shutdown()


def test_metering_catalog_wins_and_code_wins_over_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "metering.toml").write_text(TOML, encoding="utf-8")
    other = tmp_path / "other.toml"
    other.write_text('defaults = false\n[meters.jobs]\nevent = "job.run"\n', encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    cat, source = resolve_catalog(None, {"METERING_CATALOG": str(other)})
    assert [m.slug for m in cat.meters] == ["jobs"]
    assert source == f"{other} (from METERING_CATALOG)"
    monkeypatch.setenv("METERING_CATALOG", str(other))
    with Metering("sqlite:///:memory:") as c:
        assert c.catalog.slugs == ("jobs",)
    with Metering("sqlite:///:memory:", meters=list(DEFAULT_METERS)) as c:
        assert c.catalog_source == "the meters given in code"
    with Metering("sqlite:///:memory:", catalog=Catalog()) as c:
        assert c.catalog_source == "the catalog given in code"
    monkeypatch.delenv("METERING_CATALOG")
    os.remove(tmp_path / "metering.toml")
    assert resolve_catalog(None, {})[1] == "the four default meters"


def test_toml_defaults_table_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    for body, needle in (
        ('[defaults]\nplan = "gold"\n', "default_plan"),
        ("[defaults]\nplan = 3\n", "plan must be a plan name"),
        ("[defaults]\ncolour = 1\n", "unknown keys"),
        ('defaults = "yes"\n', "defaults must be"),
        ('[plans.p]\nproduct_id = "not-a-uuid"\n', "product_id"),
    ):
        path.write_text(body, encoding="utf-8")
        with pytest.raises(ConfigurationError, match=needle):
            load_catalog(path)


def test_the_usage_command_says_which_catalog(tmp_path: Path) -> None:
    (tmp_path / "metering.toml").write_text(TOML, encoding="utf-8")
    db = tmp_path / "m.db"
    with Metering(f"sqlite:///{db}", catalog=str(tmp_path / "metering.toml")) as c:
        c.track_usage("u1", "export.done")
    env = {k: v for k, v in os.environ.items() if k != "METERING_CATALOG"}
    done = subprocess.run(
        [sys.executable, "-m", "polar_metering._cli", "usage", "u1", "--json", "--url", f"sqlite:///{db}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "catalog: ./metering.toml (5 meters, 2 plans (default: free))" in done.stderr
    assert '"meter": "exports"' in done.stdout


def test_plans_given_in_code_replace_the_catalogs_of_the_same_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from polar_metering import Plan

    (tmp_path / "metering.toml").write_text(TOML, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    with Metering("sqlite:///:memory:", plans=[Plan("free", credits={"api_requests": 7})]) as c:
        assert [p.name for p in c.catalog.plans] == ["pro", "free"]
        assert c.catalog.plan("free").credits == {"api_requests": 7}
        assert c.check_limit("anyone", "api_requests").limit == 7  # still the default plan
