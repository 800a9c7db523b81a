"""Configuration: keyword-only options in one frozen object, environment variables only as fallbacks.

Environment variables (read only when the matching option is not given):

========================  =====================================================================
``METERING_URL``          backend URL; default ``sqlite:///metering.db`` (a file in the working dir)
``POLAR_ACCESS_TOKEN``    token for ``polar://`` (an organization token)
``POLAR_ENVIRONMENT``     ``sandbox`` or ``production`` (default ``production``)
``POLAR_BASE_URL``        send Polar requests to another server, e.g. the emulator
``METERING_OUTBOX``       path of the durable outbox file for ``polar://``
``METERING_CATALOG``      the catalog (``metering.toml`` path or ``module:attribute``) when
                          ``init()`` gets no ``meters=``/``catalog=``; else ``./metering.toml``
                          when it exists, else the four default meters
========================  =====================================================================
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from polar_metering._catalog import DEFAULT_SOURCE, Catalog, Meter, Plan, resolve_catalog
from polar_metering._clock import Clock, SystemClock
from polar_metering._events import SURROGATE_RULE, describe, text_error
from polar_metering._exceptions import ConfigurationError

__all__ = ["DEFAULT_URL", "MAX_TTL", "MeteringConfig", "UnknownCustomer", "build_config"]

#: what ``polar://`` does for a customer Polar does not know (``docs/polar.md``)
UnknownCustomer = Literal["allow", "deny", "default_plan"]

DEFAULT_URL = "sqlite:///metering.db"
# The longest reservation hold, in seconds: it outlives no sensible action, and the bound keeps
# ``now + ttl`` inside datetime's range.
MAX_TTL = 7 * 86_400.0
_MAX_SECONDS = 10**18


@dataclass(frozen=True, kw_only=True)
class MeteringConfig:
    """Everything a client needs, validated. ``access_token`` never appears in ``repr``."""

    url: str = DEFAULT_URL
    catalog: Catalog = field(default_factory=Catalog)
    clock: Clock = field(default_factory=SystemClock)
    access_token: str | None = field(default=None, repr=False)
    environment: Literal["sandbox", "production"] = "production"
    base_url: str | None = None
    #: on a backend failure during a limit check: True allows (and marks the status stale),
    #: False raises the BackendError
    fail_open: bool = True
    #: raise ValidationError from track_* instead of reporting it in TrackingResult
    strict: bool = False
    reservation_ttl: float = 300.0
    cache_ttl: float = 5.0
    stale_after: float = 300.0
    cache_size: int = 10_000
    outbox_path: str | None = None
    backend_options: Mapping[str, Any] = field(default_factory=dict)
    #: where ``catalog`` came from, as ``init()`` and the CLIs report it
    catalog_source: str = DEFAULT_SOURCE
    #: polar:// only: what a customer Polar does not know may do. ``None``: the default plan's
    #: limits when the catalog has a default plan, else no limit (the ``no_credits`` rule)
    unknown_customer: UnknownCustomer | None = None
    #: polar:// only: seconds a customer's subscription (plan and period) is kept before it is read
    #: again; it is also read again at the period's end and after subscribe/cancel in this process
    subscription_ttl: float = 60.0
    #: polar:// only: the database that makes limits exact across processes and machines
    #: (``sqlite:///path.db`` or ``postgresql://...``; ``docs/limits.md``). ``None``: no ledger, limits
    #: hold per process. Not in ``repr``: a PostgreSQL URL may carry a password.
    ledger: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for name in ("reservation_ttl", "cache_ttl", "stale_after", "subscription_ttl"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not -_MAX_SECONDS <= value <= _MAX_SECONDS  # before isfinite: a huge int overflows it
                or not math.isfinite(value)
                or value < 0
            ):
                raise ConfigurationError(
                    f"{name}: must be a finite number of seconds >= 0, got {describe(value, 40)}"
                )
        if self.reservation_ttl <= 0:
            raise ConfigurationError("reservation_ttl: must be > 0 seconds")
        if self.reservation_ttl > MAX_TTL:
            raise ConfigurationError(f"reservation_ttl: must be at most {MAX_TTL:g} seconds (7 days)")
        if isinstance(self.cache_size, bool) or not isinstance(self.cache_size, int) or self.cache_size < 1:
            raise ConfigurationError(
                f"cache_size: must be an integer >= 1, got {describe(self.cache_size, 40)}"
            )
        for name in ("fail_open", "strict"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigurationError(
                    f"{name}: must be True or False, got {describe(getattr(self, name), 40)}"
                )
        for name in ("url", "access_token", "base_url", "outbox_path"):
            value = getattr(self, name)
            if value is None and name != "url":
                continue
            if name == "outbox_path" and isinstance(value, os.PathLike):
                value = os.fspath(value)
            if not isinstance(value, str) or not value:
                # Never echo what was given for the token: it may be the token in another type.
                shown = type(value).__name__ if name == "access_token" else describe(value, 40)
                raise ConfigurationError(f"{name}: must be a non-empty string, got {shown}")
            rule = text_error(value)
            # A file path may hold surrogate escapes (undecodable bytes in a file name); nothing else may.
            if rule is not None and not (name == "outbox_path" and rule == SURROGATE_RULE):
                raise ConfigurationError(f"{name}: {rule}")
        if not isinstance(self.catalog, Catalog):
            raise ConfigurationError("catalog: must be a Catalog")
        if not isinstance(self.backend_options, Mapping) or not all(
            isinstance(k, str) for k in self.backend_options
        ):
            raise ConfigurationError(
                f"backend_options: must be a mapping of option names to values, got "
                f"{describe(self.backend_options, 40)}"
            )
        if self.unknown_customer not in (None, "allow", "deny", "default_plan"):
            raise ConfigurationError(
                "unknown_customer: must be 'allow', 'deny' or 'default_plan', "
                f"got {describe(self.unknown_customer, 40)}"
            )
        if self.unknown_customer == "default_plan" and self.catalog.default_plan is None:
            raise ConfigurationError(
                "unknown_customer: 'default_plan' needs a default plan: pass default_plan= to init() "
                "or set [defaults] plan in metering.toml"
            )
        if self.ledger is not None:
            from polar_metering.backends._polar._ledger import check_ledger_url

            check_ledger_url(self.ledger)
            if not self.url.startswith("polar://"):
                raise ConfigurationError(
                    "ledger: only polar:// takes a ledger (the embedded engine is exact on its own)"
                )
        if not isinstance(self.catalog_source, str):
            raise ConfigurationError("catalog_source: must be a string")
        if self.environment not in ("sandbox", "production"):
            raise ConfigurationError(
                f"environment: must be 'sandbox' or 'production', got {describe(self.environment, 40)}"
            )
        if not isinstance(self.clock, Clock):
            raise ConfigurationError("clock: must have now() and monotonic() methods")


def _sequence(items: object, name: str) -> tuple[Any, ...]:
    if isinstance(items, str | bytes | Mapping) or not isinstance(items, Iterable):
        raise ConfigurationError(f"{name}: must be a list, got {describe(items, 40)}")
    return tuple(items)


def build_config(
    url: str | None = None,
    *,
    meters: Iterable[Meter] | None = None,
    plans: Iterable[Plan] | None = None,
    catalog: Catalog | str | None = None,
    default_plan: str | None = None,
    env: Mapping[str, str] | None = None,
    **options: Any,
) -> MeteringConfig:
    """Merge explicit options, the catalog pieces and environment fallbacks into one config.

    Without ``meters``/``catalog`` the catalog is ``METERING_CATALOG``, else ``./metering.toml`` when
    it exists, else the four default meters (``resolve_catalog``). ``plans`` are added to it (one
    named like a catalog plan replaces it) and ``default_plan`` replaces its default plan. Unknown
    options raise ``ConfigurationError`` naming them.
    """
    env = os.environ if env is None else env
    allowed = set(MeteringConfig.__dataclass_fields__) - {"url", "catalog", "catalog_source"}
    unknown = set(options) - allowed
    if unknown:
        raise ConfigurationError(
            f"init: unknown options {sorted(unknown)}; known options are {sorted(allowed | {'default_plan'})}"
        )
    if catalog is not None and meters is not None:
        raise ConfigurationError("init: give either catalog= or meters=, not both")
    if catalog is not None:
        cat, source = resolve_catalog(catalog, env)
    elif meters is not None:
        cat, source = Catalog(_sequence(meters, "meters")), "the meters given in code"
    else:
        cat, source = resolve_catalog(None, env)
    if plans is not None:
        # A plan given in code replaces the catalog's plan of that name, as a toml meter of a
        # default slug replaces the default one.
        added = _sequence(plans, "plans")
        names = {getattr(p, "name", None) for p in added}
        kept = tuple(p for p in cat.plans if p.name not in names)
        cat = Catalog(cat.meters, kept + added, cat.default_plan)
    if default_plan is not None:
        if not isinstance(default_plan, str) or not default_plan:
            raise ConfigurationError(f"default_plan: must be a plan name, got {describe(default_plan, 40)}")
        cat = Catalog(cat.meters, cat.plans, default_plan)
    url = url or env.get("METERING_URL") or DEFAULT_URL
    fallbacks = {
        "access_token": env.get("POLAR_ACCESS_TOKEN") or None,
        "environment": env.get("POLAR_ENVIRONMENT") or None,
        "base_url": env.get("POLAR_BASE_URL") or None,
        "outbox_path": env.get("METERING_OUTBOX") or None,
        "ledger": env.get("METERING_LEDGER") or None,
    }
    for key, value in fallbacks.items():
        if options.get(key) is None and value is not None:
            options[key] = value
    options = {k: v for k, v in options.items() if v is not None}
    return MeteringConfig(url=url, catalog=cat, catalog_source=source, **options)
