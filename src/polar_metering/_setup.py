"""``setup``: make Polar's meters and plans match the catalog, safely and repeatably.

- Lists every non-archived meter of the organization (all pages).
- Creates each catalog meter Polar lacks, matched by name, with the body of ``Meter.to_polar()``:
  name, unit, filter, aggregation, and never ``organization_id`` (an organization token forbids it,
  server/polar/event/service.py).
- Reports drift — a meter with the catalog's name but another filter or aggregation — without
  touching it: Polar locks both once the meter has aggregated events (server/polar/meter/service.py), and
  changing what a
  live meter counts is a billing decision for a person, not a script.

- Provisions each catalog plan as a free recurring product with one meter-credit benefit per meter,
  or checks the paid product a plan names (``_setup_plans.py``); plan drift is reported the same way.

Running it twice creates nothing the second time.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from polar_metering._catalog import Catalog, Meter, load_catalog
from polar_metering._exceptions import ConfigurationError, RemoteValidationError
from polar_metering._meter_checks import MeterFinding, check_meters
from polar_metering._setup_plans import PlanResult, provision_plans
from polar_metering._status import as_dict

if TYPE_CHECKING:
    from polar_metering._client import Metering
    from polar_metering.backends._polar._sdk import PolarSettings

__all__ = ["MeterResult", "PlanResult", "SetupReport", "run_setup"]

Status = Literal["created", "would_create", "exists", "drift", "error"]
#: ``SetupReport.server`` of a dry run made without a token (Polar was not contacted)
OFFLINE = "offline"


@dataclass(frozen=True, slots=True)
class MeterResult:
    """What ``setup`` did, or would do, for one catalog meter.

    ``diff`` (drift only) is a unified diff from the catalog's definition to Polar's; ``error``
    (error only) is Polar's reason, with its 422 detail.
    """

    slug: str
    name: str
    status: Status
    polar_id: str | None = None
    diff: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict of the fields (timestamps as ISO-8601 strings)."""
        return as_dict(self)


@dataclass(frozen=True, slots=True)
class SetupReport:
    """The outcome of :func:`run_setup`; ``str(report)`` is a readable summary."""

    results: tuple[MeterResult, ...]
    server: str
    dry_run: bool = False
    notes: tuple[str, ...] = field(default=())
    #: meters that will behave surprisingly on Polar (``polar-metering check-meters``)
    warnings: tuple[MeterFinding, ...] = field(default=())
    #: one result per catalog plan
    plans: tuple[PlanResult, ...] = field(default=())

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict of the fields (timestamps as ISO-8601 strings)."""
        return as_dict(self)

    @property
    def created(self) -> list[str]:
        """Slugs created (or, in a dry run, that would be)."""
        return [r.slug for r in self.results if r.status in ("created", "would_create")]

    @property
    def existing(self) -> list[str]:
        """Slugs Polar already has with the catalog's definition."""
        return [r.slug for r in self.results if r.status == "exists"]

    @property
    def drift(self) -> list[MeterResult]:
        """Meters Polar has under the catalog's name with another filter or aggregation."""
        return [r for r in self.results if r.status == "drift"]

    @property
    def plans_created(self) -> list[str]:
        """Plans whose product was created (or, in a dry run, would be)."""
        return [p.name for p in self.plans if p.status in ("created", "would_create")]

    @property
    def plan_drift(self) -> list[PlanResult]:
        """Plans whose Polar product grants other credits than the plan says."""
        return [p for p in self.plans if p.status == "drift"]

    @property
    def benefits_created(self) -> int:
        """Meter-credit benefits created (or, in a dry run, that would be)."""
        return sum(len(p.benefits) for p in self.plans)

    @property
    def errors(self) -> list[str]:
        """One line per meter Polar refused to create and per plan that could not be provisioned."""
        meters = [f"{r.slug}: {r.error}" for r in self.results if r.status == "error"]
        return meters + [f"plan {p.name}: {p.error}" for p in self.plans if p.status == "error"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def __str__(self) -> str:
        head = f"setup against {self.server}" + (" (dry run: nothing changed)" if self.dry_run else "")
        lines = [head, *self.notes]
        words = {
            "created": "created",
            "would_create": "would create",
            "exists": "exists",
            "drift": "DRIFT",
            "error": "ERROR",
        }
        for r in self.results:
            line = f"  {words[r.status]:<12} {r.slug} ({r.name})"
            if r.polar_id:
                line += f" id={r.polar_id}"
            lines.append(line)
            if r.error:
                lines.append(f"      {r.error}")
            if r.diff:
                lines.extend(f"      {d}" for d in r.diff.splitlines())
        for p in self.plans:
            line = f"  {words[p.status]:<12} plan {p.name}"
            if p.product_id:
                line += f" product={p.product_id}"
            if p.benefits:
                made = "would create" if self.dry_run else "created"
                line += f" ({made} benefits: {', '.join(p.benefits)})"
            lines.append(line)
            lines.extend(f"      {d}" for d in p.drift)
            if p.error:
                lines.append(f"      {p.error}")
        lines.extend(f"  warning: {w}" for w in self.warnings)
        verb = "to create" if self.dry_run else "created"
        summary = (
            f"{len(self.created)} {verb}, {len(self.existing)} existing, "
            f"{len(self.drift)} drifted, {len(self.errors)} failed"
        )
        if self.plans:
            summary += (
                f"; plans: {len(self.plans_created)} {verb}, {len(self.plan_drift)} drifted, "
                f"{self.benefits_created} benefits {verb}"
            )
        lines.append(summary)
        return "\n".join(lines)


def _pretty(definition: Mapping[str, Any] | None, raw: Mapping[str, Any]) -> list[str]:
    return json.dumps(definition if definition is not None else raw, indent=2, sort_keys=True).splitlines()


def drift_diff(meter: Meter, polar_filter: Any, polar_aggregation: Any) -> str | None:
    """A unified diff catalog -> Polar of the normalised definitions, or ``None`` when they agree."""
    from dataclasses import asdict

    from polar_metering.backends._polar._readings import catalog_definition, normalized_definition

    ours = catalog_definition(meter)
    theirs = normalized_definition(polar_filter, polar_aggregation)
    if theirs == ours:
        return None
    raw = {"filter": asdict(polar_filter), "aggregation": asdict(polar_aggregation)}
    lines = difflib.unified_diff(
        _pretty(ours, ours),
        _pretty(theirs, raw),
        fromfile=f"catalog:{meter.slug}",
        tofile="polar",
        lineterm="",
        n=2,
    )
    return "\n".join(lines)


def _settings_from(
    client: Metering | None,
    access_token: str | None,
    environment: str | None,
    base_url: str | None,
    env: Mapping[str, str],
) -> PolarSettings:
    from polar_metering.backends._polar._sdk import resolve_settings

    if client is not None:
        settings = getattr(client.backend, "settings", None)
        if settings is None:
            raise ConfigurationError("setup: the client's backend is not polar://")
        return settings  # type: ignore[no-any-return]
    return resolve_settings(
        access_token=access_token or env.get("POLAR_ACCESS_TOKEN") or None,
        environment=environment or env.get("POLAR_ENVIRONMENT") or None,
        base_url=base_url or env.get("POLAR_BASE_URL") or None,
    )


def run_setup(
    catalog: Catalog | str | None = None,
    *,
    access_token: str | None = None,
    environment: str | None = None,
    base_url: str | None = None,
    dry_run: bool = False,
    client: Metering | None = None,
    env: Mapping[str, str] | None = None,
) -> SetupReport:
    """Create the catalog's missing meters and plans in Polar and report drift; idempotent.

    ``catalog`` is a :class:`Catalog`, a ``metering.toml`` path, ``module:attribute``, or ``None``
    for the four default meters. Settings missing here fall back to ``POLAR_ACCESS_TOKEN``,
    ``POLAR_ENVIRONMENT`` and ``POLAR_BASE_URL``. Alternatively pass ``client=`` (a ``Metering``) to
    use its catalog and Polar settings; on the embedded engine there is nothing to do, since the
    engine keeps its meters in step with the catalog when it opens.

    A dry run with no token at all works offline: it lists every catalog meter as one it would
    create, without contacting Polar.

    Raises :class:`ConfigurationError` (no token, bad catalog), :class:`AuthenticationError` (token
    rejected) or :class:`BackendUnavailable` (Polar unreachable). A meter Polar refuses (422) is
    reported in ``errors`` and the other meters still go ahead; so is a plan.

    Each plan becomes a free recurring product with one meter-credit benefit per meter
    (``report.plans``); a plan with ``product_id`` has that product checked instead.
    """
    from polar_metering._client import Metering as _Metering

    if not isinstance(dry_run, bool):
        raise ConfigurationError("dry_run: must be True or False")
    if env is not None and not isinstance(env, Mapping):
        raise ConfigurationError("env: must be a mapping of environment variable names to values")
    if client is not None:
        if not isinstance(client, _Metering):
            raise ConfigurationError("client: must be a Metering client")
        if catalog is not None:
            raise ConfigurationError("setup: give either catalog= or client=, not both")
        cat = client.catalog
        if client.backend.url.scheme != "polar":
            return SetupReport(
                tuple(MeterResult(m.slug, m.name, "exists") for m in cat.meters),
                server=client.backend.url.masked,
                dry_run=dry_run,
                notes=("the embedded engine creates the catalog's meters when it opens; nothing to do",),
            )
    else:
        cat = load_catalog(catalog)
    environ = os.environ if env is None else env
    if dry_run and client is None and not (access_token or environ.get("POLAR_ACCESS_TOKEN")):
        return _offline_plan(cat)
    settings = _settings_from(client, access_token, environment, base_url, environ)
    return _run(cat, settings, dry_run)


def _offline_plan(catalog: Catalog) -> SetupReport:
    """A dry run with no token: what the catalog defines, every meter as it would be created.

    Nothing is sent anywhere (and ``polar-sdk`` is not needed), so a catalog can be reviewed before
    any Polar account exists; with a token, the dry run asks Polar what it already has.
    """
    return SetupReport(
        tuple(MeterResult(m.slug, m.name, "would_create") for m in catalog.meters),
        server=OFFLINE,
        dry_run=True,
        notes=(
            "offline: without POLAR_ACCESS_TOKEN Polar was not asked which meters exist; "
            "this is every meter the catalog would create",
        ),
        warnings=tuple(check_meters(catalog)),
    )


def _run(catalog: Catalog, settings: PolarSettings, dry_run: bool) -> SetupReport:
    from polar_metering.backends._polar._sdk import open_client, polar_errors

    with open_client(settings) as polar:
        by_name: dict[str, list[Any]] = {}
        with polar_errors("setup: list meters", settings):
            for existing in polar.meters.iter_list(is_archived=False, limit=100):
                by_name.setdefault(existing.name, []).append(existing)
        results: list[MeterResult] = []
        for meter in catalog.meters:
            candidates = sorted(by_name.get(meter.name, []), key=lambda m: m.created_at)
            if candidates:
                results.append(_compare(meter, candidates))
                continue
            if dry_run:
                results.append(MeterResult(meter.slug, meter.name, "would_create"))
                continue
            try:
                with polar_errors(f"setup: create meter {meter.slug!r}", settings):
                    created = polar.meters.create(**meter.to_polar())
            except RemoteValidationError as exc:
                results.append(MeterResult(meter.slug, meter.name, "error", error=str(exc)))
                continue
            results.append(MeterResult(meter.slug, meter.name, "created", polar_id=str(created.id)))
        # Benefits credit the meters Polar has under the catalog's names (drifted ones included: a
        # plan credits the meter its name finds, as readings do).
        meter_ids = {r.slug: r.polar_id for r in results if r.polar_id is not None}
        plans = provision_plans(polar, settings, catalog, meter_ids, dry_run=dry_run) if catalog.plans else []
    return SetupReport(
        tuple(results),
        server=settings.server,
        dry_run=dry_run,
        warnings=tuple(check_meters(catalog)),
        plans=tuple(plans),
    )


def _compare(meter: Meter, candidates: list[Any]) -> MeterResult:
    diffs: list[tuple[Any, str]] = []
    for candidate in candidates:
        diff = drift_diff(meter, candidate.filter, candidate.aggregation)
        if diff is None:
            return MeterResult(meter.slug, meter.name, "exists", polar_id=str(candidate.id))
        diffs.append((candidate, diff))
    oldest, diff = diffs[0]
    return MeterResult(meter.slug, meter.name, "drift", polar_id=str(oldest.id), diff=diff)
