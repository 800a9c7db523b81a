"""``Metering`` and ``AsyncMetering``: thin sync and async shells over one sans-I/O core.

The core (:class:`_Core`) validates input, builds events, and turns readings into decisions. The
shells only differ in how they reach the backend: directly, or from a worker thread (with the
caller's context copied) so the event loop never waits on a database.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Literal, TypeVar, overload

from polar_metering._catalog import Catalog, Meter, Plan
from polar_metering._config import MAX_TTL, MeteringConfig, build_config
from polar_metering._context import current_customer as _current_customer_cm
from polar_metering._context import require_current_customer
from polar_metering._events import (
    Event,
    MetadataValue,
    check_number,
    check_text,
    describe,
    parse_timestamp,
    printable,
    validate_event,
    validate_value,
)
from polar_metering._exceptions import (
    BackendError,
    ConfigurationError,
    ReservationError,
    UsageLimitExceeded,
    ValidationError,
)
from polar_metering._projection import decide
from polar_metering._status import MeterReading, SafeResult, TrackingResult, UsageStatus
from polar_metering._subscriptions import Customer, Page, Subscription, check_page
from polar_metering._uncounted import UncountedEvents
from polar_metering.backends._base import Backend, Hold, IngestResult, backend_class_for, parse_backend_url

__all__ = ["AsyncMetering", "AsyncReservation", "Metering", "Reservation"]

logger = logging.getLogger("polar_metering")
T = TypeVar("T")

_TOKEN_TYPES = ("input", "output", "total")
_INTERVALS = ("hour", "day", "week", "month", "year")
_MAX_RANGE_DAYS = {"hour": 7, "day": 366, "week": 371, "month": 1460, "year": 3650}
# Batch items may use the seed guide's camelCase names too.
_ALIASES = (
    ("customer_id", "external_customer_id", "externalCustomerId"),
    ("event_name", "name", "eventName"),
    ("metadata", "properties"),
)
# A count meter records one event per unit committed.
MAX_COUNT_COMMIT = 100_000
_LAST_HISTORY_INSTANT = datetime(9999, 1, 1, tzinfo=UTC)
_BATCH_KEYS = frozenset({"customer_id", "event_name", "metadata", "timestamp", "external_id"})
_ALL_KEYS = frozenset({n for names in _ALIASES for n in names} | {"timestamp", "external_id", "externalId"})


def _require_str(value: object, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValidationError(field, "must be a non-empty string", value)
    check_text(value, field)
    return value


def _require_number(value: object, field: str, *, integral: bool = False) -> float | int:
    return check_number(value, field, integral=integral)


# The seed guide's options objects, ``trackApiRequest(id, endpoint, {method, statusCode, duration})``
# and ``trackAiTokens(id, tokens, {model, type})``, ported as a mapping in the third position: each
# spelling maps to the keyword argument it stands for.
_API_OPTIONS = {
    "method": "method",
    "status_code": "status_code",
    "statusCode": "status_code",
    "duration_ms": "duration_ms",
    "duration": "duration_ms",
}
_AI_OPTIONS = {"model": "model", "type": "type"}


def _merge_options(
    options: object, spellings: Mapping[str, str], given: dict[str, object], function: str
) -> dict[str, object]:
    """Fold a seed-style options mapping into the keyword arguments ``given`` (None = not given)."""
    if options is None:
        return given
    if not isinstance(options, Mapping):
        known = ", ".join(dict.fromkeys(spellings.values()))
        raise ValidationError("options", f"must be a mapping of {function}'s options ({known})", options)
    merged = dict(given)
    for key, value in options.items():
        name = spellings.get(key) if isinstance(key, str) else None
        if name is None:
            raise ValidationError(
                f"options.{printable(key) if isinstance(key, str) else describe(key, 40)}",
                f"is not an option of {function} (known: {', '.join(spellings)})",
                None,
            )
        if given.get(name) is not None or (merged.get(name) is not None and merged[name] != value):
            raise ValidationError(f"options.{key}", f"is given twice (as {name}= too)", value)
        merged[name] = value
    return merged


def check_timeout(timeout: object) -> float | None:
    """``None`` (wait as long as it takes) or a finite number of seconds >= 0."""
    if timeout is None:
        return None
    return float(check_number(timeout, "timeout"))


class _AsyncMixup(TypeError):
    """Async code handed to the sync API (or the other way round); ``with_usage_limit_safe`` lets it
    through rather than reporting it as a failed action."""


def _async_mixup(what: str, fix: str) -> TypeError:
    return _AsyncMixup(f"{what} is a coroutine function, and this is the sync API: {fix}")


def check_sync_action(action: object, function: str) -> None:
    """Refuse a coroutine function before a sync ``with_usage_limit`` runs it: the call would only
    make a coroutine nobody awaits, so the action would silently never run."""
    call = type(action).__call__ if not inspect.isroutine(action) else None  # a callable object
    if inspect.iscoroutinefunction(action) or inspect.iscoroutinefunction(call):
        raise _async_mixup(
            f"{function}: the action {_name_of(action)}",
            f"use `await metering.aio.{function}(...)` (or `await client.aio.{function}(...)`)",
        )


def _sync_result(result: T, action: object, function: str) -> T:
    """What a sync action returned, unless it was a coroutine (an async callable not caught above)."""
    if inspect.iscoroutine(result):
        result.close()  # never started: the action did not run
        raise _async_mixup(
            f"{function}: the action {_name_of(action)} returned a coroutine: it",
            f"use `await metering.aio.{function}(...)` (or `await client.aio.{function}(...)`)",
        )
    return result


def _name_of(action: object) -> str:
    name = getattr(action, "__qualname__", None) or type(action).__qualname__
    return printable(str(name))[:80]


class _Throttle:
    """Lets a repeating message through at most once per ``interval`` seconds, counting the rest."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._next = -math.inf
        self._held = 0
        self._lock = threading.Lock()

    def ready(self) -> int | None:
        """``None`` to stay quiet; otherwise how many were held back since the last time."""
        now = time.monotonic()
        with self._lock:
            if now < self._next:
                self._held += 1
                return None
            self._next = now + self._interval
            held, self._held = self._held, 0
            return held


class _Core:
    """Everything that needs no I/O: validation, event building, decisions."""

    def __init__(self, config: MeteringConfig) -> None:
        self.config = config
        self.catalog = config.catalog
        self.clock = config.clock
        self._failure_log = _Throttle(10.0)
        self._uncounted = UncountedEvents(config.catalog, strict=config.strict)
        self._counted = self._uncounted.skip  # the hot path's one set lookup (_uncounted.py)

    # -- events -----------------------------------------------------------------------------------
    def event(
        self,
        customer_id: object,
        name: object,
        metadata: object = None,
        *,
        timestamp: object = None,
        external_id: object = None,
    ) -> Event:
        event = validate_event(
            customer_id, name, metadata, timestamp=timestamp, external_id=external_id, now=self.clock.now()
        )
        if event.name not in self._counted:
            self._uncounted.check(event)
        return event

    def batch(self, items: object) -> tuple[list[Event], list[tuple[int, ValidationError]]]:
        """Validate each item on its own: valid events go ahead even when others are rejected."""
        if isinstance(items, Mapping | str | bytes) or not isinstance(items, Iterable):
            raise ValidationError("events", "must be a list of events (dicts or Event objects)", items)
        good: list[Event] = []
        bad: list[tuple[int, ValidationError]] = []
        now = self.clock.now()
        for i, item in enumerate(items):
            try:
                good.append(self._batch_item(item, now))
            except ValidationError as e:
                bad.append((i, ValidationError(f"events[{i}].{e.field}", e.rule, e.value)))
        return good, bad

    def checked_batch(
        self, items: object
    ) -> tuple[list[Event], list[tuple[int, ValidationError]]] | TrackingResult:
        """``batch`` as ``track_usage_batch`` reports it: a result when nothing can be ingested."""
        try:
            good, bad = self.batch(items)
        except ValidationError as e:
            return self.invalid(e)
        if bad and self.config.strict:
            from polar_metering._exceptions import BatchValidationError

            raise BatchValidationError(bad)
        for index, error in bad:
            logger.warning("polar_metering: event %d rejected: %s", index, error)
        return good, bad

    def _batch_item(self, item: object, now: datetime) -> Event:
        event = self._batch_event(item, now)
        if event.name not in self._counted:
            self._uncounted.check(event)
        return event

    def _batch_event(self, item: object, now: datetime) -> Event:
        if type(item) is not dict:
            if isinstance(item, Event):
                return validate_event(
                    item.customer_id,
                    item.name,
                    item.metadata,
                    timestamp=item.timestamp,
                    external_id=item.external_id,
                    now=now,
                )
            if not isinstance(item, Mapping):
                raise ValidationError("event", "must be a dict or an Event", item)
        if item.keys() <= _BATCH_KEYS:  # the documented spelling: no aliases to resolve
            customer, name, metadata = item.get("customer_id"), item.get("event_name"), item.get("metadata")
        else:
            for key in item:
                if not isinstance(key, str):
                    raise ValidationError(
                        "event",
                        "keys must be strings (customer_id, event_name, metadata, timestamp, external_id), "
                        f"got {describe(key, 40)}",
                        key,
                    )
            customer, name, metadata = (self._alias(item, names) for names in _ALIASES)
            unknown = item.keys() - _ALL_KEYS
            if unknown:
                raise ValidationError(
                    printable(sorted(unknown)[0]),
                    "is not an event field (customer_id, event_name, metadata, timestamp, external_id)",
                    None,
                )
        external_id = item.get("external_id")
        if external_id is None:
            external_id = item.get("externalId")
        return validate_event(
            customer, name, metadata, timestamp=item.get("timestamp"), external_id=external_id, now=now
        )

    @staticmethod
    def _alias(item: Mapping[str, Any], names: tuple[str, ...]) -> Any:
        present = [n for n in names if n in item]
        if len(present) > 1:
            raise ValidationError(names[0], f"give only one of {present}", None)
        return item[present[0]] if present else None

    def api_request(
        self,
        customer_id: object,
        endpoint: object,
        options: object,
        method: object,
        status_code: object,
        duration_ms: object,
    ) -> Event:
        if options is not None:  # the seed's options object; the common keyword call skips this
            given = {"method": method, "status_code": status_code, "duration_ms": duration_ms}
            given = _merge_options(options, _API_OPTIONS, given, "track_api_request")
            method, status_code, duration_ms = given["method"], given["status_code"], given["duration_ms"]
        md: dict[str, MetadataValue] = {
            "endpoint": _require_str(endpoint, "endpoint"),
            "method": "GET" if method is None else _require_str(method, "method").upper(),
        }
        if status_code is not None:
            if (
                isinstance(status_code, bool)
                or not isinstance(status_code, int)
                or not 100 <= status_code <= 599
            ):
                raise ValidationError(
                    "status_code", "must be an HTTP status code from 100 to 599", status_code
                )
            md["status_code"] = status_code
        if duration_ms is not None:
            md["duration_ms"] = _require_number(duration_ms, "duration_ms")
        return self.event(customer_id, "api.request", md)

    def storage_update(self, customer_id: object, size_gb: object, operation: object) -> Event:
        md: dict[str, MetadataValue] = {"size_gb": _require_number(size_gb, "size_gb")}
        if operation is not None:
            md["operation"] = _require_str(operation, "operation")
        return self.event(customer_id, "storage.update", md)

    def ai_tokens(
        self, customer_id: object, tokens: object, options: object, model: object, type_: object
    ) -> Event:
        if options is not None:
            given = _merge_options(options, _AI_OPTIONS, {"model": model, "type": type_}, "track_ai_tokens")
            model, type_ = given["model"], given["type"]
        md: dict[str, MetadataValue] = {"tokens": _require_number(tokens, "tokens", integral=True)}
        if model is not None:
            md["model"] = _require_str(model, "model")
        if type_ is not None:
            if type_ not in _TOKEN_TYPES:
                raise ValidationError("type", f"must be one of {list(_TOKEN_TYPES)}", type_)
            md["type"] = type_
        return self.event(customer_id, "ai.tokens", md)

    def llm_usage(
        self,
        customer_id: object,
        vendor: object,
        model: object,
        input_tokens: object,
        output_tokens: object,
        cached_input_tokens: object,
        cost: object,
        metadata: object,
    ) -> Event:
        """One ``ai.tokens`` event carrying Polar's ``_llm`` object (and ``_cost`` when priced).

        ``tokens`` is the call's total, so the default ``ai_tokens`` meter and a meter summing
        ``_llm.total_tokens`` count the same number. ``input_tokens`` includes cached ones, as OpenAI
        reports them; see ``docs/llm.md``.
        """
        vendor_s = _require_str(vendor, "vendor")
        model_s = _require_str(model, "model")
        inp = int(_require_number(input_tokens, "input_tokens", integral=True))
        out = int(_require_number(output_tokens, "output_tokens", integral=True))
        llm: dict[str, Any] = {
            "vendor": vendor_s,
            "model": model_s,
            "input_tokens": inp,
            "output_tokens": out,
            "total_tokens": inp + out,
        }
        if cached_input_tokens is not None:
            cached = int(_require_number(cached_input_tokens, "cached_input_tokens", integral=True))
            if cached > inp:
                raise ValidationError(
                    "cached_input_tokens", "must not exceed input_tokens (which include cached ones)", cached
                )
            llm["cached_input_tokens"] = cached
        if metadata is not None and not isinstance(metadata, Mapping):
            raise ValidationError(
                "metadata", "must be a mapping of string keys to str, int, float or bool", metadata
            )
        md: dict[str, Any] = dict(metadata or {})
        md.update(tokens=inp + out, model=model_s, type="total", _llm=llm)
        if cost is not None:
            # Polar's _cost.amount is a number of cents (server/polar/event/schemas.py, CostMetadata).
            if isinstance(cost, Mapping):
                md["_cost"] = dict(cost)
            else:
                md["_cost"] = {"amount": _require_number(cost, "cost"), "currency": "usd"}
        return self.event(customer_id, "ai.tokens", md)

    def seat_activity(self, customer_id: object, user_id: object, action: object) -> Event:
        md: dict[str, MetadataValue] = {"user_id": _require_str(user_id, "user_id")}
        if action is not None:
            md["action"] = _require_str(action, "action")
        return self.event(customer_id, "seat.active", md)

    # -- results ----------------------------------------------------------------------------------
    def invalid(self, error: ValidationError, index: int = 0) -> TrackingResult:
        if self.config.strict:
            raise error
        logger.warning("polar_metering: event rejected: %s", error)
        return TrackingResult(False, 0, 0, str(error), ((index, str(error)),))

    def tracked(
        self, events: list[Event], result: IngestResult, rejected: Sequence[tuple[int, ValidationError]] = ()
    ) -> TrackingResult:
        return TrackingResult(
            success=not rejected,
            inserted=result.inserted,
            duplicates=result.duplicates,
            error=f"{len(rejected)} event(s) rejected: {rejected[0][1]}" if rejected else None,
            rejected=tuple((i, str(e)) for i, e in rejected),
            external_ids=tuple(e.external_id for e in events),
        )

    def failed(self, exc: BaseException, events: list[Event]) -> TrackingResult:
        # Never raise into the caller for backend trouble (docs/delivery.md); say what happened instead.
        # A failing store fails every call: one log line per interval, not one per request.
        held = self._failure_log.ready()
        if held is not None:
            more = f" ({held} more failed calls since the last report)" if held else ""
            logger.warning("polar_metering: tracking failed: %s%s", exc, more)
        return TrackingResult(
            False, 0, 0, f"{type(exc).__name__}: {exc}", external_ids=tuple(e.external_id for e in events)
        )

    # -- limits -----------------------------------------------------------------------------------
    def limit_args(
        self, customer_id: object, meter: object, amount: object
    ) -> tuple[str, Meter, float | None]:
        customer = _require_str(customer_id, "customer_id")
        if not isinstance(meter, str):
            raise ValidationError("meter", "must be a meter slug such as 'api_requests'", meter)
        try:
            m = self.catalog.meter(meter)
        except ConfigurationError as e:
            raise ValidationError("meter", str(e).removeprefix("meter: "), meter) from None
        amt = None if amount is None else float(_require_number(amount, "amount"))
        return customer, m, amt

    def hold_args(
        self, customer_id: object, meter: object, amount: object, ttl: object
    ) -> tuple[str, Meter, float, float]:
        """``reserve``'s arguments: an amount is required; ttl is seconds in (0, 7 days]."""
        if amount is None:
            raise ValidationError("amount", "is required: the number of units to hold", amount)
        customer, m, _ = self.limit_args(customer_id, meter, None)
        amt = float(_require_number(amount, "amount"))
        if ttl is None:
            return customer, m, amt, self.config.reservation_ttl
        seconds = float(_require_number(ttl, "ttl"))
        if not 0 < seconds <= MAX_TTL:
            raise ValidationError("ttl", f"must be > 0 and at most {MAX_TTL:g} seconds (7 days)", ttl)
        return customer, m, amt, seconds

    @staticmethod
    def value(value: object) -> MetadataValue | None:
        """A unique meter's candidate value: a metadata value by the event rules, or None."""
        return None if value is None else validate_value(value, "value")

    @staticmethod
    def customer(customer_id: object) -> str:
        return _require_str(customer_id, "customer_id")

    @staticmethod
    def page(page: object, limit: object) -> tuple[int, int]:
        return check_page(page, limit)

    @staticmethod
    def email(email: object) -> str | None:
        if email is None:
            return None
        text = _require_str(email, "email")
        if "@" not in text or len(text) > 320:
            raise ValidationError("email", "must be an email address", email)
        return text

    @staticmethod
    def subscribed(customer: str, subscription: Subscription | None) -> Subscription:
        if subscription is None:  # pragma: no cover - every backend answers with the subscription
            raise BackendError(f"subscribe: the backend did not report {customer!r}'s subscription")
        return subscription

    def subscription(
        self, customer_id: object, plan: object, started_at: object
    ) -> tuple[str, str | Plan, datetime | None]:
        customer = _require_str(customer_id, "customer_id")
        if isinstance(plan, str):
            if not plan:
                raise ValidationError("plan", "must be a plan name or a Plan", plan)
            check_text(plan, "plan")
            try:
                plan = self.catalog.plan(plan)
            except ConfigurationError:
                pass  # the engine may know plans stored by another process
        elif not isinstance(plan, Plan):
            raise ValidationError("plan", "must be a plan name or a Plan", plan)
        # Periods are anchored at an instant: a naive datetime has none (as for event timestamps).
        anchor = (
            None if started_at is None else parse_timestamp(started_at, "started_at", now=self.clock.now())
        )
        return customer, plan, anchor

    def history_range(self, start: object, end: object, interval: object) -> tuple[datetime, datetime]:
        if interval not in _INTERVALS:
            raise ValidationError("interval", f"must be one of {list(_INTERVALS)}", interval)
        now = self.clock.now()
        first = parse_timestamp(start, "start")
        last = now if end is None else parse_timestamp(end, "end")
        # Buckets are laid out up to the one after ``end``; past 9998 that one would leave datetime's range.
        if last >= _LAST_HISTORY_INSTANT:
            raise ValidationError("end", "must be before 9999-01-01T00:00:00Z", end)
        if first > last:
            raise ValidationError("start", "must not be after end", start)
        # Align to the bucket so each point is a whole hour/day/week/month/year (UTC).
        from zoneinfo import ZoneInfo

        from polar_metering.backends._engine.polar_surface import bucket_start

        first = bucket_start(first, str(interval), ZoneInfo("UTC"))
        # Polar's range limits per interval (server/polar/kit/time_queries.py), so a dashboard query here
        # also works against Polar.
        if (last - first).days > _MAX_RANGE_DAYS[str(interval)]:
            raise ValidationError(
                "start",
                f"a {interval} interval covers at most {_MAX_RANGE_DAYS[str(interval)]} "
                "days; use a larger interval or a shorter range",
                start,
            )
        return first, last

    def status(
        self,
        meter: Meter,
        reading: MeterReading,
        amount: float | None,
        already_counted: bool = False,
        stale: bool = False,
    ) -> UsageStatus:
        return decide(
            meter.aggregation.func,
            reading,
            amount,
            already_counted=already_counted,
            stale=stale or reading.stale,
        )

    def unavailable(self, meter: Meter, customer: str, exc: BackendError) -> UsageStatus:
        if not self.config.fail_open:
            raise exc
        logger.warning("polar_metering: limit check for %s failed, allowing (fail-open): %s", meter.slug, exc)
        return UsageStatus(
            True,
            0.0,
            None,
            None,
            f"usage unknown: {exc}",
            meter=meter.slug,
            customer=customer,
            stale=True,
            aggregation=meter.aggregation.func,
        )

    def usage_events(
        self,
        hold: Hold,
        meter: Meter,
        actual: float | None,
        value: object,
        metadata: Mapping[str, Any] | None,
    ) -> list[Event]:
        """The events that record a reservation's actual usage on its meter's behalf."""
        name, fixed = meter.filter.event_template()
        if name is None:
            raise ConfigurationError(
                f"reserve: meter {meter.slug!r} has no top-level `name eq ...` clause, so the library cannot "
                "record usage for it; track the usage yourself and call release()"
            )
        func, prop = meter.aggregation.func, meter.aggregation.property
        if metadata is not None and not isinstance(metadata, Mapping):
            raise ValidationError(
                "metadata", "must be a mapping of string keys to str, int, float or bool", metadata
            )
        extra = dict(metadata or {})
        amount = hold.amount if actual is None else float(_require_number(actual, "actual"))
        if func == "count":
            if amount != int(amount):
                raise ValidationError("actual", "must be a whole number of events for a count meter", actual)
            if amount > MAX_COUNT_COMMIT:
                raise ValidationError(
                    "actual",
                    f"a count meter records one event per unit: at most {MAX_COUNT_COMMIT} per commit",
                    actual,
                )
            return [self.event(hold.customer, name, {**extra, **fixed}) for _ in range(int(amount))]
        if prop is None:  # pragma: no cover - Aggregation requires a property for every func but count
            raise ConfigurationError(f"reserve: meter {meter.slug!r} aggregates no property")
        if func == "unique":
            if value is None:
                raise ValidationError(
                    "value", f"the distinct {prop!r} value is required for unique meters", value
                )
            return [self.event(hold.customer, name, {**extra, **fixed, prop: self.value(value)})]
        number: MetadataValue = int(amount) if amount == int(amount) else amount
        return [self.event(hold.customer, name, {**extra, **fixed, prop: number})]


def _make_backend(config: MeteringConfig) -> Backend:
    url = parse_backend_url(config.url)
    cls = backend_class_for(url)
    options = dict(config.backend_options)
    if url.scheme == "polar":
        options.setdefault("config", config)
    return cls(url, catalog=config.catalog, clock=config.clock, **options)


class _Base:
    _core: _Core
    backend: Backend

    @property
    def catalog(self) -> Catalog:
        return self._core.catalog

    @property
    def config(self) -> MeteringConfig:
        return self._core.config

    @property
    def catalog_source(self) -> str:
        """Where the catalog came from: ``./metering.toml``, ``METERING_CATALOG``, code, or the
        four default meters."""
        return self._core.config.catalog_source

    def current_customer(self, customer_id: str) -> Any:
        """``with client.current_customer("org_456"):`` sets the customer ``check_current_limit`` reads."""
        return _current_customer_cm(customer_id)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.backend!r})"


class Metering(_Base):
    """The synchronous client. ``Metering()`` uses ``METERING_URL`` or an embedded SQLite file.

    Keyword options are those of :class:`MeteringConfig`; unknown ones raise ``ConfigurationError``.
    """

    def __init__(
        self, url: str | None = None, *, config: MeteringConfig | None = None, **options: Any
    ) -> None:
        if config is not None and (url is not None or options):
            raise ConfigurationError("Metering: give either config= or url/options, not both")
        if config is not None and not isinstance(config, MeteringConfig):
            raise ConfigurationError(f"config: must be a MeteringConfig, got {describe(config, 40)}")
        self._core = _Core(config or build_config(url, **options))
        self.backend = _make_backend(self._core.config)
        self._closed = False
        self._aio: AsyncMetering | None = None
        self._lock = threading.Lock()

    @property
    def aio(self) -> AsyncMetering:
        """An async twin sharing this client's backend."""
        if self._aio is None:
            self._aio = AsyncMetering._sharing(self)
        return self._aio

    # -- tracking ---------------------------------------------------------------------------------
    def _ingest(
        self, events: list[Event], rejected: Sequence[tuple[int, ValidationError]] = ()
    ) -> TrackingResult:
        try:
            result = self.backend.ingest(events) if events else IngestResult(0, 0)
        except Exception as e:
            return self._core.failed(e, events)
        return self._core.tracked(events, result, rejected)

    def track_usage(
        self,
        customer_id: str,
        event_name: str,
        metadata: Mapping[str, MetadataValue] | None = None,
        *,
        timestamp: datetime | str | None = None,
        external_id: str | None = None,
    ) -> TrackingResult:
        """Record one event. Returns a :class:`TrackingResult`; never raises for backend trouble."""
        try:
            event = self._core.event(
                customer_id, event_name, metadata, timestamp=timestamp, external_id=external_id
            )
        except ValidationError as e:
            return self._core.invalid(e)
        return self._ingest([event])

    def track_usage_batch(self, events: Iterable[Mapping[str, Any] | Event]) -> TrackingResult:
        """Record many events at once; invalid ones are listed in ``rejected`` and the rest are kept."""
        checked = self._core.checked_batch(events)
        if isinstance(checked, TrackingResult):
            return checked
        return self._ingest(*checked)

    def _track_one(self, build: Callable[[], Event]) -> TrackingResult:
        try:
            event = build()
        except ValidationError as e:
            return self._core.invalid(e)
        return self._ingest([event])

    def track_api_request(
        self,
        customer_id: str,
        endpoint: str,
        options: Mapping[str, Any] | None = None,
        *,
        method: str | None = None,
        status_code: int | None = None,
        duration_ms: float | None = None,
    ) -> TrackingResult:
        """Record an ``api.request`` event (counted by the ``api_requests`` meter).

        ``method`` defaults to ``GET``. The seed guide's options object works too, as a mapping in
        third place: ``track_api_request(id, "/x", {"method": "POST", "statusCode": 200,
        "duration": 150})`` is ``track_api_request(id, "/x", method="POST", status_code=200,
        duration_ms=150)``.
        """
        return self._track_one(
            lambda: self._core.api_request(customer_id, endpoint, options, method, status_code, duration_ms)
        )

    def track_storage_update(
        self, customer_id: str, size_gb: float, operation: str | None = None
    ) -> TrackingResult:
        """Record the customer's current storage in GB (``storage_gb`` bills the period's peak);
        ``operation`` (third, as in the seed guide, or by keyword) says what changed it."""
        return self._track_one(lambda: self._core.storage_update(customer_id, size_gb, operation))

    def track_ai_tokens(
        self,
        customer_id: str,
        tokens: int,
        options: Mapping[str, Any] | None = None,
        *,
        model: str | None = None,
        type: Literal["input", "output", "total"] | None = None,
    ) -> TrackingResult:
        """Record AI tokens used (``ai_tokens`` sums them). ``type`` is ``"input"``, ``"output"`` or
        ``"total"``; the seed's ``{model, type}`` options object may be passed third instead."""
        return self._track_one(lambda: self._core.ai_tokens(customer_id, tokens, options, model, type))

    def track_llm_usage(
        self,
        customer_id: str,
        *,
        vendor: str,
        model: str,
        input_tokens: int,
        output_tokens: int,
        cached_input_tokens: int | None = None,
        cost: float | Mapping[str, Any] | None = None,
        metadata: Mapping[str, MetadataValue] | None = None,
    ) -> TrackingResult:
        """Record one model call: an ``ai.tokens`` event with Polar's ``_llm`` metadata (``cost`` in
        cents fills ``_cost``). ``polar_metering.llm.metered`` calls this for you."""
        return self._track_one(
            lambda: self._core.llm_usage(
                customer_id, vendor, model, input_tokens, output_tokens, cached_input_tokens, cost, metadata
            )
        )

    def track_seat_activity(
        self, customer_id: str, user_id: str, action: str | None = None
    ) -> TrackingResult:
        """Record that ``user_id`` was active (``team_seats`` counts distinct users); ``action`` (third,
        or by keyword) says what they did."""
        return self._track_one(lambda: self._core.seat_activity(customer_id, user_id, action))

    # -- limits -----------------------------------------------------------------------------------
    def check_limit(
        self, customer_id: str, meter: str, *, amount: float | None = None, value: MetadataValue | None = None
    ) -> UsageStatus:
        """May ``customer_id`` go ahead on ``meter`` (with an action of ``amount`` units, if given)?"""
        customer, m, amt = self._core.limit_args(customer_id, meter, amount)
        value = self._core.value(value)
        try:
            reading = self.backend.reading(customer, m)
            counted = (
                value is not None
                and m.aggregation.func == "unique"
                and self.backend.is_counted(customer, m, value)
            )
        except BackendError as e:
            return self._core.unavailable(m, customer, e)
        if value is not None and amt is None and m.aggregation.func == "unique":
            amt = 1.0
        return self._core.status(m, reading, amt, counted)

    def check_current_limit(
        self, meter: str, *, amount: float | None = None, value: MetadataValue | None = None
    ) -> UsageStatus:
        """``check_limit`` for the current customer (set by ``current_customer`` or an integration)."""
        return self.check_limit(require_current_customer(), meter, amount=amount, value=value)

    def get_all_usage(self, customer_id: str | None = None) -> dict[str, UsageStatus]:
        """A status for every meter of the catalog, keyed by slug."""
        customer = _require_str(
            customer_id if customer_id is not None else require_current_customer(), "customer_id"
        )
        try:
            readings = self.backend.readings(customer)
        except BackendError as e:
            return {m.slug: self._core.unavailable(m, customer, e) for m in self.catalog.meters}
        return {m.slug: self._core.status(m, readings[m.slug], None) for m in self.catalog.meters}

    def usage_history(
        self,
        customer_id: str,
        meter: str,
        *,
        start: datetime,
        end: datetime | None = None,
        interval: Literal["hour", "day", "week", "month", "year"] = "day",
    ) -> list[tuple[datetime, float]]:
        """Usage per time bucket (by event timestamp) from ``start`` to ``end`` (default now), for
        dashboards: ``[(bucket_start, quantity), ...]``."""
        customer, m, _ = self._core.limit_args(customer_id, meter, None)
        start, end = self._core.history_range(start, end, interval)
        return self.backend.history(customer, m, start=start, end=end, interval=interval)

    def with_usage_limit(
        self,
        meter: str,
        action: Callable[..., T],
        *args: Any,
        customer_id: str | None = None,
        amount: float | None = None,
        **kwargs: Any,
    ) -> T:
        """Run ``action(*args, **kwargs)`` if the limit allows it, else raise :class:`UsageLimitExceeded`.

        With ``amount``, the units are reserved while the action runs, so concurrent callers cannot both
        take the last units; the action records its own usage (as in the seed guide) and the hold is
        then released.
        """
        return self._guarded("with_usage_limit", meter, action, args, kwargs, customer_id, amount)

    def _guarded(
        self,
        function: str,
        meter: str,
        action: Callable[..., T],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        customer_id: str | None,
        amount: float | None,
    ) -> T:
        if not callable(action):
            raise ValidationError("action", "must be callable", action)
        check_sync_action(action, function)
        customer = customer_id if customer_id is not None else require_current_customer()
        if amount is None:
            status = self.check_limit(customer, meter)
            if not status.allowed:
                raise UsageLimitExceeded(status, meter=meter, customer=customer)
            return _sync_result(action(*args, **kwargs), action, function)
        with self.reserve(customer, meter, amount):
            return _sync_result(action(*args, **kwargs), action, function)

    def with_usage_limit_safe(
        self,
        meter: str,
        action: Callable[..., T],
        *args: Any,
        customer_id: str | None = None,
        amount: float | None = None,
        **kwargs: Any,
    ) -> SafeResult[T]:
        """Like ``with_usage_limit`` but returns a :class:`SafeResult` instead of raising (a coroutine
        function as ``action`` still raises ``TypeError``: that is a bug to fix, not a refusal)."""
        if callable(action):
            check_sync_action(action, "with_usage_limit_safe")
        try:
            data = self._guarded("with_usage_limit_safe", meter, action, args, kwargs, customer_id, amount)
        except UsageLimitExceeded as e:
            return SafeResult(False, None, e.status.reason, e.status)
        except _AsyncMixup:
            raise
        except Exception as e:
            return SafeResult(False, None, f"{type(e).__name__}: {e}")
        return SafeResult(True, data)

    def reserve(
        self, customer_id: str, meter: str, amount: float, *, ttl: float | None = None
    ) -> Reservation:
        """Hold ``amount`` units now or raise :class:`UsageLimitExceeded`; use as a context manager."""
        customer, m, amt, seconds = self._core.hold_args(customer_id, meter, amount, ttl)
        hold, reading = self.backend.hold(customer, m, amt, ttl=seconds)
        if hold is None:
            raise UsageLimitExceeded(self._core.status(m, reading, amt), meter=m.slug, customer=customer)
        return Reservation(self, hold, m)

    # -- plans and lifecycle ----------------------------------------------------------------------
    def subscribe(
        self,
        customer_id: str,
        plan: str | Plan,
        *,
        started_at: datetime | None = None,
        email: str | None = None,
    ) -> Subscription:
        """Put a customer on a plan; returns the subscription. Safe to repeat: the plan the customer
        is on again changes nothing, another plan is a plan change (``docs/semantics.md``).

        On the engine the billing periods are anchored at ``started_at`` (timezone-aware, not in the
        future; default now). On ``polar://`` this creates the Polar customer if missing (with
        ``email`` when given) and a subscription to the plan's free product; a paid plan raises
        :class:`CheckoutRequired`.
        """
        customer, chosen, anchor = self._core.subscription(customer_id, plan, started_at)
        mail = self._core.email(email)
        return self._core.subscribed(customer, self.backend.subscribe(customer, chosen, anchor, email=mail))

    def get_subscription(self, customer_id: str) -> Subscription | None:
        """The customer's plan, status and current billing period; ``None`` without a subscription
        (a default plan, if any, applies then)."""
        return self.backend.get_subscription(self._core.customer(customer_id))

    def cancel(self, customer_id: str) -> Subscription | None:
        """Cancel the customer's subscription at the end of its current period (credits and limits
        hold until then); ``None`` when there is none. Safe to repeat."""
        return self.backend.cancel(self._core.customer(customer_id))

    def list_customers(self, *, page: int = 1, limit: int = 100) -> Page[Customer]:
        """The customers the backend knows, ``limit`` (at most 100) per page."""
        return self.backend.list_customers(page=self._core.page(page, limit)[0], limit=limit)

    def list_plans(self, *, page: int = 1, limit: int = 100) -> Page[Plan]:
        """The plans customers can be subscribed to: on the engine every stored plan, on ``polar://``
        the catalog's plans ``setup`` provisioned, as Polar has them (``product_id`` set)."""
        return self.backend.list_plans(page=self._core.page(page, limit)[0], limit=limit)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything tracked so far is stored or delivered; False if ``timeout`` ran out."""
        return self.backend.flush(check_timeout(timeout))

    def close(self, timeout: float | None = None) -> None:
        """Flush within ``timeout`` and release the backend. Safe to call twice."""
        timeout = check_timeout(timeout)
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.backend.close(timeout)

    def __enter__(self) -> Metering:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Reservation:
    """Units held for one action. ``commit(actual)`` records the usage; leaving the ``with`` block
    without committing, or with an exception, releases the hold."""

    def __init__(self, client: Metering, hold: Hold, meter: Meter) -> None:
        self._client, self.hold, self.meter = client, hold, meter
        self._done: str | None = None
        self._lock = threading.Lock()

    @property
    def amount(self) -> float:
        return self.hold.amount

    def _finish(self, how: str) -> None:
        with self._lock:
            if self._done is not None:
                raise ReservationError(f"reservation {self.hold.id}: already {self._done}")
            self._done = how

    def commit(
        self,
        actual: float | None = None,
        *,
        value: MetadataValue | None = None,
        metadata: Mapping[str, MetadataValue] | None = None,
    ) -> TrackingResult:
        """Record ``actual`` units (default: the amount held) and end the hold, atomically."""
        events = self._client._core.usage_events(self.hold, self.meter, actual, value, metadata)
        self._finish("committed")
        result = self._client.backend.settle(self.hold, events)
        return self._client._core.tracked(events, result)

    def release(self) -> None:
        """End the hold without recording usage."""
        self._finish("released")
        self._client.backend.release(self.hold)

    def __enter__(self) -> Reservation:
        return self

    async def __aenter__(self) -> Reservation:
        if self._done is None:
            self.release()  # the units were held by reserve(); give them back before refusing
        raise _AsyncMixup(
            "reserve: `async with` on a sync Reservation; in async code use "
            "`async with await metering.aio.reserve(...)` (or `await client.aio.reserve(...)`)"
        )

    async def __aexit__(self, *exc: object) -> None:  # pragma: no cover - __aenter__ always raises
        return None

    def __exit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._done is None:
            self.release()


class AsyncMetering(_Base):
    """The asyncio client: the same methods as :class:`Metering`, as coroutines.

    Backend calls run in a worker thread with the caller's context, unless the backend can answer
    without I/O (a cached reading, an in-memory hand-off to the outbox).
    """

    def __init__(
        self, url: str | None = None, *, config: MeteringConfig | None = None, **options: Any
    ) -> None:
        self._sync = Metering(url, config=config, **options)
        self._core, self.backend = self._sync._core, self._sync.backend

    @classmethod
    def _sharing(cls, sync: Metering) -> AsyncMetering:
        self = cls.__new__(cls)
        self._sync, self._core, self.backend = sync, sync._core, sync.backend
        return self

    @property
    def sync(self) -> Metering:
        """The synchronous client over the same backend."""
        return self._sync

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.to_thread(fn, *args, **kwargs)

    async def track_usage(
        self,
        customer_id: str,
        event_name: str,
        metadata: Mapping[str, MetadataValue] | None = None,
        *,
        timestamp: datetime | str | None = None,
        external_id: str | None = None,
    ) -> TrackingResult:
        try:
            event = self._core.event(
                customer_id, event_name, metadata, timestamp=timestamp, external_id=external_id
            )
        except ValidationError as e:
            return self._core.invalid(e)
        return await self._ingest([event])

    async def _ingest(
        self, events: list[Event], rejected: Sequence[tuple[int, ValidationError]] = ()
    ) -> TrackingResult:
        if self.backend.nonblocking_ingest:
            return self._sync._ingest(events, rejected)
        return await self._run(self._sync._ingest, events, rejected)

    async def track_usage_batch(self, events: Iterable[Mapping[str, Any] | Event]) -> TrackingResult:
        if self.backend.nonblocking_ingest:
            return self._sync.track_usage_batch(events)
        if isinstance(events, Iterable) and not isinstance(events, list | Mapping | str | bytes):
            events = list(events)  # drawn here, on the caller's side, not in the worker thread
        # Anything else (not a list of events at all) is reported by the sync method's validation.
        return await self._run(self._sync.track_usage_batch, events)

    async def _track_one(self, build: Callable[[], Event]) -> TrackingResult:
        try:
            event = build()
        except ValidationError as e:
            return self._core.invalid(e)
        return await self._ingest([event])

    async def track_api_request(
        self,
        customer_id: str,
        endpoint: str,
        options: Mapping[str, Any] | None = None,
        *,
        method: str | None = None,
        status_code: int | None = None,
        duration_ms: float | None = None,
    ) -> TrackingResult:
        return await self._track_one(
            lambda: self._core.api_request(customer_id, endpoint, options, method, status_code, duration_ms)
        )

    async def track_storage_update(
        self, customer_id: str, size_gb: float, operation: str | None = None
    ) -> TrackingResult:
        return await self._track_one(lambda: self._core.storage_update(customer_id, size_gb, operation))

    async def track_ai_tokens(
        self,
        customer_id: str,
        tokens: int,
        options: Mapping[str, Any] | None = None,
        *,
        model: str | None = None,
        type: Literal["input", "output", "total"] | None = None,
    ) -> TrackingResult:
        return await self._track_one(lambda: self._core.ai_tokens(customer_id, tokens, options, model, type))

    async def track_llm_usage(
        self,
        customer_id: str,
        *,
        vendor: str,
        model: str,
        input_tokens: int,
        output_tokens: int,
        cached_input_tokens: int | None = None,
        cost: float | Mapping[str, Any] | None = None,
        metadata: Mapping[str, MetadataValue] | None = None,
    ) -> TrackingResult:
        return await self._track_one(
            lambda: self._core.llm_usage(
                customer_id, vendor, model, input_tokens, output_tokens, cached_input_tokens, cost, metadata
            )
        )

    async def track_seat_activity(
        self, customer_id: str, user_id: str, action: str | None = None
    ) -> TrackingResult:
        return await self._track_one(lambda: self._core.seat_activity(customer_id, user_id, action))

    async def check_limit(
        self, customer_id: str, meter: str, *, amount: float | None = None, value: MetadataValue | None = None
    ) -> UsageStatus:
        customer, m, amt = self._core.limit_args(customer_id, meter, amount)
        value = self._core.value(value)
        if value is None:
            reading = self.backend.peek(customer, m)
            if reading is not None:
                return self._core.status(m, reading, amt)
        return await self._run(self._sync.check_limit, customer, meter, amount=amount, value=value)

    async def check_current_limit(
        self, meter: str, *, amount: float | None = None, value: MetadataValue | None = None
    ) -> UsageStatus:
        return await self.check_limit(require_current_customer(), meter, amount=amount, value=value)

    async def get_all_usage(self, customer_id: str | None = None) -> dict[str, UsageStatus]:
        customer = customer_id if customer_id is not None else require_current_customer()
        return await self._run(self._sync.get_all_usage, customer)

    async def usage_history(
        self,
        customer_id: str,
        meter: str,
        *,
        start: datetime,
        end: datetime | None = None,
        interval: Literal["hour", "day", "week", "month", "year"] = "day",
    ) -> list[tuple[datetime, float]]:
        return await self._run(
            self._sync.usage_history, customer_id, meter, start=start, end=end, interval=interval
        )

    @overload
    async def with_usage_limit(
        self,
        meter: str,
        action: Callable[..., Awaitable[T]],
        *args: Any,
        customer_id: str | None = None,
        amount: float | None = None,
        **kwargs: Any,
    ) -> T: ...

    @overload
    async def with_usage_limit(
        self,
        meter: str,
        action: Callable[..., T],
        *args: Any,
        customer_id: str | None = None,
        amount: float | None = None,
        **kwargs: Any,
    ) -> T: ...

    async def with_usage_limit(
        self,
        meter: str,
        action: Callable[..., Any],
        *args: Any,
        customer_id: str | None = None,
        amount: float | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run a sync callable or coroutine function if the limit allows; raise UsageLimitExceeded if not."""
        if not callable(action):
            raise ValidationError("action", "must be callable", action)
        customer = customer_id if customer_id is not None else require_current_customer()
        if amount is None:
            status = await self.check_limit(customer, meter)
            if not status.allowed:
                raise UsageLimitExceeded(status, meter=meter, customer=customer)
            return await _call(action, *args, **kwargs)
        async with await self.reserve(customer, meter, amount):
            return await _call(action, *args, **kwargs)

    @overload
    async def with_usage_limit_safe(
        self,
        meter: str,
        action: Callable[..., Awaitable[T]],
        *args: Any,
        customer_id: str | None = None,
        amount: float | None = None,
        **kwargs: Any,
    ) -> SafeResult[T]: ...

    @overload
    async def with_usage_limit_safe(
        self,
        meter: str,
        action: Callable[..., T],
        *args: Any,
        customer_id: str | None = None,
        amount: float | None = None,
        **kwargs: Any,
    ) -> SafeResult[T]: ...

    async def with_usage_limit_safe(
        self,
        meter: str,
        action: Callable[..., Any],
        *args: Any,
        customer_id: str | None = None,
        amount: float | None = None,
        **kwargs: Any,
    ) -> SafeResult[Any]:
        try:
            data = await self.with_usage_limit(
                meter, action, *args, customer_id=customer_id, amount=amount, **kwargs
            )
        except UsageLimitExceeded as e:
            return SafeResult(False, None, e.status.reason, e.status)
        except Exception as e:
            return SafeResult(False, None, f"{type(e).__name__}: {e}")
        return SafeResult(True, data)

    async def reserve(
        self, customer_id: str, meter: str, amount: float, *, ttl: float | None = None
    ) -> AsyncReservation:
        """``async with await client.reserve(...) as r:`` or ``r = await client.reserve(...)``."""
        sync_res = await self._run(self._sync.reserve, customer_id, meter, amount, ttl=ttl)
        return AsyncReservation(self, sync_res)

    async def subscribe(
        self,
        customer_id: str,
        plan: str | Plan,
        *,
        started_at: datetime | None = None,
        email: str | None = None,
    ) -> Subscription:
        return await self._run(self._sync.subscribe, customer_id, plan, started_at=started_at, email=email)

    async def get_subscription(self, customer_id: str) -> Subscription | None:
        return await self._run(self._sync.get_subscription, customer_id)

    async def cancel(self, customer_id: str) -> Subscription | None:
        return await self._run(self._sync.cancel, customer_id)

    async def list_customers(self, *, page: int = 1, limit: int = 100) -> Page[Customer]:
        return await self._run(self._sync.list_customers, page=page, limit=limit)

    async def list_plans(self, *, page: int = 1, limit: int = 100) -> Page[Plan]:
        return await self._run(self._sync.list_plans, page=page, limit=limit)

    async def flush(self, timeout: float | None = None) -> bool:
        return await self._run(self._sync.flush, timeout)

    async def close(self, timeout: float | None = None) -> None:
        await self._run(self._sync.close, timeout)

    async def __aenter__(self) -> AsyncMetering:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncReservation:
    """The async twin of :class:`Reservation`."""

    def __init__(self, client: AsyncMetering, inner: Reservation) -> None:
        self._client, self._inner = client, inner

    @property
    def hold(self) -> Hold:
        return self._inner.hold

    @property
    def amount(self) -> float:
        return self._inner.amount

    async def commit(
        self,
        actual: float | None = None,
        *,
        value: MetadataValue | None = None,
        metadata: Mapping[str, MetadataValue] | None = None,
    ) -> TrackingResult:
        return await self._client._run(self._inner.commit, actual, value=value, metadata=metadata)

    async def release(self) -> None:
        await self._client._run(self._inner.release)

    async def __aenter__(self) -> AsyncReservation:
        return self

    def __enter__(self) -> AsyncReservation:
        if self._inner._done is None:
            self._inner.release()  # the units were held by reserve(); give them back before refusing
        raise _AsyncMixup(
            "reserve: plain `with` on an AsyncReservation; use `async with await "
            "metering.aio.reserve(...)`, or the sync `with metering.reserve(...)` in sync code"
        )

    def __exit__(self, *exc: object) -> None:  # pragma: no cover - __enter__ always raises
        return None

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._inner._done is None:
            await self.release()


async def _call(action: Callable[..., T | Awaitable[T]], *args: Any, **kwargs: Any) -> T:
    result = action(*args, **kwargs)
    if inspect.isawaitable(result):
        return await result  # type: ignore[no-any-return, unused-ignore]
    return result
