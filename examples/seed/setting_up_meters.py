"""Seed guide, "Setting Up Meters": the four meters in code and in ``metering.toml``, and setup.

- Option 1 of the seed (the setup script) is ``polar-metering setup``: it reads the catalog, creates
  the meters Polar lacks (matched by name), never sends ``organization_id`` (an organization token
  forbids it), and is safe to run again. Here it runs against the Polar-compatible emulator on
  127.0.0.1, so nothing reaches Polar.
- Option 2 (the Polar dashboard) needs the same four definitions; ``dashboard_checklist`` prints them.
- The embedded engine needs no setup at all: it creates the catalog's meters when it opens.

Run it: ``python examples/seed/setting_up_meters.py``
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import polar_metering as metering
from polar_metering import Aggregation, Catalog, Filter, Meter, load_catalog

# The seed's "Manual Setup" table, as code.
METERS = (
    Meter("api_requests", "API Requests", Filter.event("api.request"), Aggregation.count()),
    Meter("storage_gb", "Storage (GB)", Filter.event("storage.update"), Aggregation.max("size_gb")),
    Meter("ai_tokens", "AI Tokens", Filter.event("ai.tokens"), Aggregation.sum("tokens"), unit="token"),
    Meter("team_seats", "Team Seats", Filter.event("seat.active"), Aggregation.unique("user_id")),
)

# The same meters in a metering.toml (``defaults = false``: only what the file lists), plus a plan:
# the embedded engine's stand-in for a Polar product with meter credits.
METERING_TOML = """\
defaults = false

[meters.api_requests]
name = "API Requests"
event = "api.request"
func = "count"

[meters.storage_gb]
name = "Storage (GB)"
event = "storage.update"
func = "max"
property = "size_gb"

[meters.ai_tokens]
name = "AI Tokens"
event = "ai.tokens"
func = "sum"
property = "tokens"
unit = "token"

[meters.team_seats]
name = "Team Seats"
event = "seat.active"
func = "unique"
property = "user_id"

[plans.free]
credits = { api_requests = 1000, storage_gb = 10, ai_tokens = 10000, team_seats = 5 }
interval = "month"
"""

# What a deploy step runs (the token is an organization token, read from the environment only).
SETUP_COMMANDS = (
    "export POLAR_ACCESS_TOKEN=...            # organization token; never passed on the command line",
    "polar-metering setup --catalog metering.toml --dry-run   # show what would be created",
    "polar-metering setup --catalog metering.toml             # create missing meters; safe to re-run",
    "POLAR_ENVIRONMENT=sandbox polar-metering setup           # the same against the sandbox",
)


def dashboard_checklist(catalog: Catalog) -> list[str]:
    """Option 2: what to type into Polar's dashboard for each meter."""
    lines = []
    for m in catalog.meters:
        agg = m.aggregation
        how = "Count" if agg.func == "count" else f"{agg.func.capitalize()} of `{agg.property}`"
        lines.append(f"{m.name}: filter name = {m.event_name!r}; aggregation {how}")
    return lines


def run_setup_against_emulator(catalog: Catalog) -> list[Any]:
    """Run setup three times against an emulated Polar organization with no meters yet:
    a dry run, a real run, and a second real run that finds everything in place."""
    from polar_metering._setup import run_setup  # the function behind `polar-metering setup`
    from polar_metering.emulator import emulator_thread

    # An emulated organization: its own embedded engine, starting with no meters at all.
    with (
        metering.Metering("sqlite:///:memory:", meters=[]) as polar_org,
        emulator_thread(polar_org.backend) as emu,  # type: ignore[arg-type]  # the backend is a LocalEngine
    ):
        # env={}: never fall back to a real POLAR_* setting of the machine running the example.
        options: dict[str, Any] = {"access_token": emu.token, "base_url": emu.base_url, "env": {}}
        return [
            run_setup(catalog, dry_run=True, **options),
            run_setup(catalog, **options),
            run_setup(catalog, **options),
        ]


def main(url: str = "sqlite:///:memory:", *, emulator: bool = True) -> dict[str, Any]:
    code_catalog = Catalog(METERS)
    with tempfile.TemporaryDirectory(prefix="seed-setup-") as tmp:
        toml_path = Path(tmp) / "metering.toml"
        toml_path.write_text(METERING_TOML, encoding="utf-8")
        toml_catalog = load_catalog(toml_path)

    print("Meters defined in code match metering.toml:", toml_catalog.meters == code_catalog.meters)
    print("They are the library's defaults:", code_catalog.meters == metering.DEFAULT_METERS)
    bodies = {m.slug: m.to_polar() for m in code_catalog.meters}
    print("MeterCreate body for ai_tokens:", bodies["ai_tokens"])
    print("Option 2, Polar dashboard:")
    checklist = dashboard_checklist(code_catalog)
    for line in checklist:
        print("  " + line)

    # The embedded engine: meters exist as soon as the client opens; plans come from the toml.
    client = metering.init(url, catalog=toml_catalog)
    try:
        metering.subscribe("org_456", "free")
        engine_usage = metering.get_all_usage("org_456")
    finally:
        metering.shutdown()
    print("Embedded engine meters:", sorted(engine_usage), "(no setup needed)")

    print("Option 1, the setup command:")
    for line in SETUP_COMMANDS:
        print("  $ " + line)
    reports: list[Any] = []
    if emulator:
        try:
            reports = run_setup_against_emulator(code_catalog)
        except ImportError as e:  # the emulator extra is not installed
            print(
                f"  (skipping the emulator run: {e.name} is missing; pip install 'polar-metering[emulator]')"
            )
        for report in reports:
            print("  " + str(report).replace("\n", "\n  "))
    return {
        "code_catalog": code_catalog,
        "toml_catalog": toml_catalog,
        "bodies": bodies,
        "checklist": checklist,
        "engine_usage": engine_usage,
        "engine_backend": repr(client.backend),
        "reports": reports,
    }


if __name__ == "__main__":
    main()
