"""``run_setup`` and ``polar-metering setup`` against a real emulator that starts with no meters."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
from polar.v2026_10 import Polar
from typer.testing import CliRunner

from polar_metering import (
    DEFAULT_METERS,
    Aggregation,
    AuthenticationError,
    Catalog,
    ConfigurationError,
    Filter,
    FilterClause,
    Meter,
    Metering,
)
from polar_metering._cli_setup import setup as setup_command
from polar_metering._setup import run_setup
from polar_metering.emulator import EmulatorHandle, running_emulator


@pytest.fixture(scope="module")
def empty_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorHandle]:
    """An emulator whose engine catalog has no meters, so Polar starts empty."""
    toml = tmp_path_factory.mktemp("catalog") / "empty.toml"
    toml.write_text("defaults = false\n", encoding="utf-8")
    with running_emulator(catalog=str(toml)) as handle:
        yield handle


@pytest.fixture
def polar(empty_emulator: EmulatorHandle) -> Iterator[Polar]:
    with Polar(empty_emulator.token, base_url=empty_emulator.base_url) as client:
        yield client


def _names(polar: Polar) -> list[str]:
    return sorted(m.name for m in polar.meters.iter_list(limit=100))


def _unique_catalog(*meters: Meter) -> Catalog:
    return Catalog(meters)


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.command()(setup_command)
    return app


def test_first_run_creates_the_four_meters_and_second_creates_none(
    empty_emulator: EmulatorHandle, polar: Polar
) -> None:
    """Dry run changes nothing; the first run creates the defaults exactly as the catalog defines
    them; the second run finds them all."""
    common: dict[str, Any] = {"access_token": empty_emulator.token, "base_url": empty_emulator.base_url}
    dry = run_setup(None, dry_run=True, **common)
    assert dry.created == [m.slug for m in DEFAULT_METERS]
    assert dry.dry_run
    assert not any(name in _names(polar) for name in (m.name for m in DEFAULT_METERS))
    first = run_setup(None, **common)
    assert first.created == [m.slug for m in DEFAULT_METERS]
    assert first.existing == []
    assert first.drift == []
    assert first.errors == []
    by_name = {m.name: m for m in polar.meters.iter_list(limit=100)}
    for meter in DEFAULT_METERS:
        created = by_name[meter.name]
        assert created.unit == meter.unit
        assert created.aggregation.func == meter.aggregation.func
        assert created.filter.clauses[0].value == meter.event_name  # type: ignore[union-attr]
    second = run_setup(None, **common)
    assert second.created == []
    assert second.existing == [m.slug for m in DEFAULT_METERS]
    assert "0 created, 4 existing" in str(second)
    assert _names(polar).count("API Requests") == 1


def test_drift_is_reported_with_a_diff_and_left_alone(empty_emulator: EmulatorHandle, polar: Polar) -> None:
    """Same name, other filter or aggregation: reported as drift with a readable diff; Polar keeps its
    meter. A definition that differs only in spelling Polar ignores (metadata. prefix) is not drift."""
    tag = uuid.uuid4().hex[:6]
    polar_filter: Any = {
        "conjunction": "and",
        "clauses": [{"property": "name", "operator": "eq", "value": "search"}],
    }
    existing = polar.meters.create(name=f"Searches {tag}", filter=polar_filter, aggregation={"func": "count"})
    polar.meters.create(
        name=f"Tokens {tag}",
        filter={
            "conjunction": "and",
            "clauses": [{"property": "name", "operator": "eq", "value": "ai.tokens"}],
        },
        aggregation={"func": "sum", "property": "metadata.tokens"},
    )
    catalog = _unique_catalog(
        Meter("searches", f"Searches {tag}", Filter.event("search.query"), Aggregation.sum("hits")),
        Meter(
            "tokens",
            f"Tokens {tag}",
            Filter("and", (FilterClause("name", "eq", "ai.tokens"),)),
            Aggregation.sum("tokens"),
        ),
    )
    report = run_setup(catalog, access_token=empty_emulator.token, base_url=empty_emulator.base_url)
    assert [r.slug for r in report.drift] == ["searches"]
    assert report.existing == ["tokens"]
    diff = report.drift[0].diff or ""
    assert '-        "value": "search.query"' in diff
    assert '+        "value": "search"' in diff
    assert '-    "func": "sum"' in diff
    assert '+    "func": "count"' in diff
    assert report.drift[0].polar_id == existing.id
    assert "DRIFT" in str(report)
    assert report.created == []
    unchanged = polar.meters.get(existing.id)
    assert unchanged.filter.clauses[0].value == "search"  # type: ignore[union-attr]
    assert unchanged.aggregation.func == "count"


def test_meter_polar_refuses_is_an_error_and_others_still_go(
    empty_emulator: EmulatorHandle, polar: Polar
) -> None:
    """A 422 on one meter is reported with Polar's detail; the rest of the catalog is still created."""
    tag = uuid.uuid4().hex[:6]
    catalog = _unique_catalog(
        Meter(
            "credits_used", f"Credits {tag}", Filter.event("credit.use"), Aggregation.count(), unit="custom"
        ),
        Meter("pages", f"Pages {tag}", Filter.event("page.view"), Aggregation.count()),
    )
    report = run_setup(catalog, access_token=empty_emulator.token, base_url=empty_emulator.base_url)
    assert report.created == ["pages"]
    assert not report.ok
    assert len(report.errors) == 1
    assert report.errors[0].startswith("credits_used:")
    assert "422" in report.errors[0]
    assert "custom_label" in report.errors[0]
    assert f"Pages {tag}" in _names(polar)
    assert f"Credits {tag}" not in _names(polar)


def test_bad_and_missing_tokens(empty_emulator: EmulatorHandle) -> None:
    bad = "polar_oat_" + uuid.uuid4().hex
    with pytest.raises(AuthenticationError, match="POLAR_ACCESS_TOKEN") as info:
        run_setup(None, access_token=bad, base_url=empty_emulator.base_url)
    assert bad not in str(info.value)
    with pytest.raises(ConfigurationError, match="POLAR_ACCESS_TOKEN"):
        run_setup(None, base_url=empty_emulator.base_url, env={})


def test_run_setup_with_a_client(empty_emulator: EmulatorHandle, tmp_path: Path) -> None:
    """``client=`` (the Django command's form) uses the client's catalog and Polar settings; on the
    embedded engine there is nothing to create."""
    tag = uuid.uuid4().hex[:6]
    meter = Meter("exports", f"Exports {tag}", Filter.event("export.done"), Aggregation.count())
    url = f"polar://?base_url={empty_emulator.base_url}"
    with Metering(
        url, access_token=empty_emulator.token, meters=[meter], outbox_path=str(tmp_path / "o.db")
    ) as c:
        assert run_setup(client=c).created == ["exports"]
        assert run_setup(client=c).existing == ["exports"]
    with Metering(f"sqlite:///{tmp_path / 'local.db'}") as local:
        report = run_setup(client=local)
    assert report.created == []
    assert "embedded engine" in str(report)


# -- the command ----------------------------------------------------------------------------------


def _squashed(text: str) -> str:
    """The output without any whitespace: a token split by line wrapping would still be found."""
    return "".join(text.split())


def _toml(tmp_path: Path, body: str) -> str:
    path = tmp_path / "metering.toml"
    path.write_text(body, encoding="utf-8")
    return str(path)


def test_cli_creates_then_reports_existing(empty_emulator: EmulatorHandle, tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:6]
    catalog = _toml(
        tmp_path, f'defaults = false\n[meters.uploads]\nname = "Uploads {tag}"\nevent = "file.upload"\n'
    )
    env = {"POLAR_ACCESS_TOKEN": empty_emulator.token, "POLAR_BASE_URL": empty_emulator.base_url}
    runner = CliRunner()
    first = runner.invoke(_cli(), ["--catalog", catalog], env=env)
    assert first.exit_code == 0, first.output
    assert "created" in first.output
    assert "1 created, 0 existing" in first.output
    second = runner.invoke(_cli(), ["--catalog", catalog], env=env)
    assert second.exit_code == 0
    assert "0 created, 1 existing" in second.output
    assert empty_emulator.token not in _squashed(first.output + second.output)


def test_cli_drift_exits_1_only_with_strict(
    empty_emulator: EmulatorHandle, polar: Polar, tmp_path: Path
) -> None:
    tag = uuid.uuid4().hex[:6]
    polar.meters.create(
        name=f"Renders {tag}",
        filter={"conjunction": "and", "clauses": [{"property": "name", "operator": "eq", "value": "render"}]},
        aggregation={"func": "count"},
    )
    catalog = _toml(
        tmp_path, f'defaults = false\n[meters.renders]\nname = "Renders {tag}"\nevent = "render.done"\n'
    )
    env = {"POLAR_ACCESS_TOKEN": empty_emulator.token, "POLAR_BASE_URL": empty_emulator.base_url}
    runner = CliRunner()
    lenient = runner.invoke(_cli(), ["--catalog", catalog], env=env)
    assert lenient.exit_code == 0
    assert "drift" in lenient.output
    assert "render.done" in lenient.output
    strict = runner.invoke(_cli(), ["--catalog", catalog, "--strict"], env=env)
    assert strict.exit_code == 1


def test_cli_exit_codes_for_failures(empty_emulator: EmulatorHandle, tmp_path: Path) -> None:
    """Bad token 2, Polar refusing a meter 3, no token or bad catalog 4, unreachable Polar 5."""
    runner = CliRunner()
    base = {"POLAR_BASE_URL": empty_emulator.base_url}
    bad = "polar_oat_" + uuid.uuid4().hex
    denied = runner.invoke(_cli(), [], env={**base, "POLAR_ACCESS_TOKEN": bad})
    assert denied.exit_code == 2
    assert "authentication failed" in denied.output
    assert bad not in _squashed(denied.output)
    missing = runner.invoke(_cli(), [], env={**base, "POLAR_ACCESS_TOKEN": ""})
    assert missing.exit_code == 4
    assert "POLAR_ACCESS_TOKEN" in missing.output
    no_file = runner.invoke(
        _cli(), ["--catalog", str(tmp_path / "nope.toml")], env={**base, "POLAR_ACCESS_TOKEN": bad}
    )
    assert no_file.exit_code == 4
    assert "does not exist" in no_file.output
    tag = uuid.uuid4().hex[:6]
    refused = _toml(
        tmp_path, f'defaults = false\n[meters.c]\nname = "C {tag}"\nevent = "c"\nunit = "custom"\n'
    )
    rejected = runner.invoke(
        _cli(), ["--catalog", refused], env={**base, "POLAR_ACCESS_TOKEN": empty_emulator.token}
    )
    assert rejected.exit_code == 3
    assert "custom_label" in rejected.output
    down = runner.invoke(_cli(), [], env={"POLAR_BASE_URL": "http://127.0.0.1:9", "POLAR_ACCESS_TOKEN": bad})
    assert down.exit_code == 5
    assert "unavailable" in down.output
