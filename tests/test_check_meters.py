"""``polar-metering check-meters`` and ``setup``'s warnings: every surprising meter kind is found,
with its reason and fix, and clean meters are not; the surprises are real on the emulator."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from polar.v2026_10 import Polar
from typer.testing import CliRunner

from polar_metering import Aggregation, Catalog, Filter, Meter
from polar_metering._catalog import DEFAULT_METERS, FilterClause
from polar_metering._cli import _build_app
from polar_metering._meter_checks import check_meter, check_meters
from polar_metering._setup import run_setup
from polar_metering.emulator import AdminClient, running_emulator

CATALOG_TOML = """
defaults = false

[meters.clean]
event = "api.request"
func = "count"

[meters.peak_tokens]
name = "Peak tokens"
event = "llm.call"
func = "max"
property = "_llm.total_tokens"

[meters.everything]
name = "Everything"
aggregation = { func = "count" }
filter = { conjunction = "and", clauses = [] }

[meters.big_jobs]
name = "Big jobs"
aggregation = { func = "sum", property = "minutes" }
[meters.big_jobs.filter]
conjunction = "and"
clauses = [
  { property = "name", operator = "eq", value = "job" },
  { property = "minutes", operator = "gt", value = "10" },
]

[meters.numbered]
name = "Numbered"
aggregation = { func = "count" }
filter = { conjunction = "and", clauses = [{ property = "name", operator = "eq", value = 5 }] }

[meters.recent]
name = "Recent"
aggregation = { func = "count" }
[meters.recent.filter]
conjunction = "and"
clauses = [
  { property = "name", operator = "eq", value = "job" },
  { property = "timestamp", operator = "gt", value = "2026-01-01" },
]

[meters.digits]
name = "Digits"
aggregation = { func = "sum", property = "minutes" }
[meters.digits.filter]
conjunction = "and"
clauses = [
  { property = "name", operator = "eq", value = "job" },
  { property = "minutes", operator = "like", value = 5 },
]

[meters.nested_twice]
name = "Nested twice"
event = "job"
func = "sum"
property = "metadata.metadata.minutes"
"""


@pytest.fixture
def catalog_path(tmp_path: Path) -> Path:
    path = tmp_path / "metering.toml"
    path.write_text(textwrap.dedent(CATALOG_TOML), encoding="utf-8")
    return path


def test_each_surprising_meter_is_found_with_reason_and_fix(catalog_path: Path) -> None:
    from polar_metering._catalog import load_catalog

    findings = check_meters(load_catalog(str(catalog_path)))
    kinds = {(f.meter, f.kind) for f in findings}
    assert kinds == {
        ("peak_tokens", "dotted-property"),
        ("everything", "absorbs-credits"),
        ("big_jobs", "never-matches"),
        ("numbered", "never-matches"),
        ("recent", "never-matches"),
        ("digits", "like-on-number"),
        ("nested_twice", "double-metadata-prefix"),
    }
    by_meter = {f.meter: f for f in findings}
    assert "_get_raw_aggregation_column" in by_meter["peak_tokens"].reason
    assert "`total_tokens`" in by_meter["peak_tokens"].fix
    assert (
        "meter.credited" in by_meter["everything"].reason and "source eq 'user'" in by_meter["everything"].fix
    )
    assert "minutes gt 10" in by_meter["big_jobs"].fix
    assert "'5'" in by_meter["numbered"].fix
    assert "`minutes`" in by_meter["nested_twice"].fix
    assert all(f.reason and f.fix for f in findings)


def test_the_default_meters_and_ordinary_meters_are_clean() -> None:
    assert check_meters(Catalog()) == []
    ordinary = [
        Meter(
            "tokens", "Tokens", Filter.event("llm.call"), Aggregation.sum("_llm.total_tokens")
        ),  # sum follows dots
        Meter("uniq", "Users", Filter.event("seen"), Aggregation.unique("user_id")),
        Meter("gpu", "GPU", Filter.event("gpu.run", tier="pro"), Aggregation.max("minutes")),
        Meter(
            "t", "Late", Filter("and", (FilterClause("timestamp", "gt", 1_700_000_000),)), Aggregation.count()
        ),
        Meter(
            "users",
            "User events",
            Filter("and", (FilterClause("source", "eq", "user"),)),
            Aggregation.count(),
        ),
    ]
    assert [check_meter(m) for m in ordinary] == [[]] * len(ordinary)
    assert DEFAULT_METERS  # the catalog above really held the defaults


def test_sum_over_units_absorbs_credits_too() -> None:
    """A sum meter whose property is ``units`` takes the credit events' units; one over another
    property does not (the aggregation's clause needs the property to be a number)."""
    open_filter = Filter("or", ())
    assert [f.kind for f in check_meter(Meter("u", "Units", open_filter, Aggregation.sum("units")))] == [
        "absorbs-credits"
    ]
    assert check_meter(Meter("m", "Minutes", open_filter, Aggregation.sum("minutes"))) == []


def test_the_command_prints_reason_and_fix_and_exits_1(catalog_path: Path) -> None:
    result = CliRunner().invoke(_build_app(), ["check-meters", "--catalog", str(catalog_path)])
    assert result.exit_code == 1, result.output
    assert "peak_tokens dotted-property" in result.output
    assert result.output.count("why:") == result.output.count("fix:") == 7
    assert "7 finding(s) in 7 meter(s)" in result.output


def test_the_command_on_a_clean_catalog_exits_0_and_on_a_bad_one_4(tmp_path: Path) -> None:
    app = _build_app()
    clean = CliRunner().invoke(app, ["check-meters"])
    assert (clean.exit_code, "no surprises" in clean.output) == (0, True)
    missing = CliRunner().invoke(app, ["check-meters", "--catalog", str(tmp_path / "nope.toml")])
    assert missing.exit_code == 4 and "configuration error" in missing.output


def test_setup_warns_and_the_surprises_are_real_on_the_emulator(catalog_path: Path) -> None:
    """setup reports the findings; on the emulator (Polar's quirks on) the dotted max reads 0 and the
    catch-all meter shows the other meters' credits; the never-matching filter counts nothing."""
    with running_emulator(catalog=None) as emu:
        report = run_setup(str(catalog_path), access_token=emu.token, base_url=emu.base_url)
        assert report.ok, str(report)
        assert {w.meter for w in report.warnings} == {
            "peak_tokens", "everything", "big_jobs", "numbered", "recent", "digits", "nested_twice"
        }  # fmt: skip
        assert "warning: everything:" in str(report)
        admin = AdminClient(emu.base_url, emu.token)
        admin.create_customer(external_id="cm1", email="cm1@example.com")
        with Polar(emu.token, base_url=emu.base_url) as polar:
            ids = {m.name: m.id for m in polar.meters.list(limit=100).items}
            admin.grant("cm1", ids["Big jobs"], 40)
            llm = {"vendor": "v", "model": "m", "input_tokens": 1, "output_tokens": 1, "total_tokens": 300}
            polar.events.ingest(
                events=[
                    {"name": "llm.call", "external_customer_id": "cm1", "metadata": {"_llm": llm}},
                    {"name": "job", "external_customer_id": "cm1", "metadata": {"minutes": 30}},
                ]
            )
            rows = {
                r.meter.name: r
                for r in polar.customer_meters.list(external_customer_id="cm1", limit=100).items
            }
            now = datetime.now(UTC)
            peak = polar.meters.quantities(
                id=ids["Peak tokens"],
                start_timestamp=now - timedelta(days=1),
                end_timestamp=now,
                interval="day",
            )
    assert (rows["Peak tokens"].consumed_units, peak.total) == (0.0, 300.0)
    assert rows["Everything"].credited_units == 40
    assert rows["Big jobs"].consumed_units == 0.0  # minutes gt "10" never matches the number 30
