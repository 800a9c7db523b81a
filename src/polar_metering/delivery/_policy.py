"""The sans-I/O core of delivery: batch planning, failure classification, backoff, rate limiting and
the plan for a batch that Polar rejected. Pure functions of their arguments; no clock, no I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from polar_metering._exceptions import (
    AuthenticationError,
    BackendError,
    RateLimited,
    RemoteValidationError,
)

__all__ = [
    "ENVELOPE_BYTES",
    "Failure",
    "Settlement",
    "backoff_delay",
    "body_bytes",
    "classify",
    "describe_errors",
    "errors_by_index",
    "is_clock_skew",
    "plan_batch",
    "settle_refused",
    "settle_rejection",
    "settle_too_large",
    "take_token",
]

#: ``{"events":[]}``: the ingest body around the events (server/polar/event/endpoints.py).
ENVELOPE_BYTES: Final = len(b'{"events":[]}')

# server/polar/event/schemas.py: a timestamp later than the server's clock fails with this message. When
# every error of an
# event says so, our clock is ahead of Polar's: the event becomes valid once Polar's clock catches up.
SKEW_MESSAGE: Final = "Timestamp must be in the past"
# Retrying a skewed event sooner than this is pointless: skew under a second would not have tripped.
MIN_SKEW_DELAY: Final = 1.0


def body_bytes(sizes: Sequence[int]) -> int:
    """Bytes of the compact JSON body ``{"events":[e1,e2,...]}`` for events of these encoded sizes."""
    return ENVELOPE_BYTES + sum(sizes) + max(0, len(sizes) - 1)


def plan_batch(sizes: Sequence[int], *, max_events: int, max_bytes: int) -> int:
    """How many leading events (of these encoded sizes) fit one request. At least one when any exist:
    ``enqueue`` refuses events too big to travel alone, so a lone event always fits."""
    total = ENVELOPE_BYTES - 1
    count = 0
    for size in sizes[:max_events]:
        total += size + 1
        if total > max_bytes and count:
            break
        count += 1
    return count


def backoff_delay(
    failures: int,
    *,
    base: float,
    cap: float,
    rand: float,
    retry_after: float | None = None,
    max_retry_after: float = 900.0,
) -> float:
    """Seconds to wait after ``failures`` consecutive failures (1 for the first).

    Full jitter: uniform in ``[0, min(cap, base * 2**(failures-1))]`` (``rand`` in ``[0, 1)``), so
    many clients that failed together do not retry together. ``retry_after`` is a floor: Polar's
    429 says how long its window lasts (server/polar/rate_limit.py, 60 s for minute rules) and asking sooner
    only earns
    another 429. It is not clamped by ``cap``, only by ``max_retry_after``.
    """
    exponent = min(max(failures, 1) - 1, 60)
    delay = rand * min(cap, base * 2.0**exponent)
    if retry_after is not None and retry_after > 0:
        delay = max(delay, min(retry_after, max_retry_after))
    return delay


def take_token(
    tokens: float, stamp: float, now: float, *, rate: float, burst: int
) -> tuple[float, float, float]:
    """One step of a token bucket: refill at ``rate``/s up to ``burst`` since ``stamp``, take a token.

    Returns ``(tokens, stamp, wait)``: ``wait`` is 0 when a token was taken, else the seconds until
    one is available (nothing taken). In any window of ``T`` seconds at most ``burst + rate*T``
    requests pass, so ``rate*60 + burst`` under Polar's per-minute limit keeps every fixed or sliding
    minute under it (server/polar/rate_limit.py). A clock that went back is treated as no time passing.
    """
    elapsed = max(0.0, now - stamp)
    tokens = min(float(burst), tokens + elapsed * rate)
    if tokens >= 1.0 or (1.0 - tokens) / rate <= 1e-6:  # within a clock tick of a whole token
        return max(0.0, tokens - 1.0), now, 0.0
    return tokens, now, (1.0 - tokens) / rate


class Failure(enum.Enum):
    """What a failed send means for the batch."""

    AUTH = "auth"  # 401/403: stop sending, keep every event, tell the operator once
    RATE_LIMITED = "rate_limited"  # 429: wait at least Retry-After
    RETRY = "retry"  # network, timeout, 5xx: back off and send the same batch again
    REJECTED = "rejected"  # 422: split good from bad by index
    TOO_LARGE = "too_large"  # 413: send smaller batches
    REFUSED = "refused"  # any other error: counts toward dead-lettering


def classify(exc: BaseException) -> Failure:
    """Map a transport's exception to what the sender does about it."""
    if isinstance(exc, AuthenticationError):
        return Failure.AUTH
    if isinstance(exc, RateLimited):
        return Failure.RATE_LIMITED
    if isinstance(exc, RemoteValidationError):
        return Failure.REJECTED
    if isinstance(exc, BackendError):
        if exc.status_code == 413:
            return Failure.TOO_LARGE
        if exc.status_code in (401, 403):
            return Failure.AUTH
        if exc.retryable or exc.status_code == 408 or (exc.status_code or 0) >= 500:
            return Failure.RETRY
    return Failure.REFUSED


def errors_by_index(detail: Sequence[Any], count: int) -> tuple[dict[int, list[dict[str, Any]]], list[Any]]:
    """Group a 422 ``detail`` by event index.

    Polar locates each error at ``["body", "events", i, ...]`` (server/polar/event/service.py). Returns the
    errors per
    index in ``range(count)`` and the errors that point at no event of this batch.
    """
    per_index: dict[int, list[dict[str, Any]]] = {}
    stray: list[Any] = []
    for entry in detail:
        loc = entry.get("loc") if isinstance(entry, dict) else None
        if (
            isinstance(loc, list | tuple)
            and len(loc) >= 3
            and loc[0] == "body"
            and loc[1] == "events"
            and isinstance(loc[2], int)
            and not isinstance(loc[2], bool)
            and 0 <= loc[2] < count
        ):
            per_index.setdefault(loc[2], []).append(entry)
        else:
            stray.append(entry)
    return per_index, stray


def _relevant(errors: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    # server/polar/event/schemas.py: pydantic reports both union branches. We send
    # EventCreateExternalCustomer, so the
    # EventCreateCustomer branch's complaints (a missing customer_id, say) are noise.
    kept = [e for e in errors if not (len(e.get("loc") or ()) > 3 and e["loc"][3] == "EventCreateCustomer")]
    return kept or list(errors)


def is_clock_skew(errors: Sequence[dict[str, Any]]) -> bool:
    """True when every relevant error of one event is Polar's "Timestamp must be in the past."
    (server/polar/event/schemas.py)."""
    relevant = _relevant(errors)
    return bool(relevant) and all(SKEW_MESSAGE in str(e.get("msg", "")) for e in relevant)


def describe_errors(errors: Sequence[Any]) -> str:
    """A one-line reason from Polar's errors: ``"timestamp: Value error, Timestamp must be in the past."``."""
    parts = []
    for entry in _relevant([e for e in errors if isinstance(e, dict)]) if errors else []:
        loc = [str(p) for p in (entry.get("loc") or ())]
        # Drop "body", "events", the index and the union-branch name: they say nothing about the event.
        if len(loc) >= 3 and loc[:2] == ["body", "events"]:
            loc = loc[3:]
        if loc and loc[0] in ("EventCreateExternalCustomer", "EventCreateCustomer"):
            loc = loc[1:]
        where = ".".join(loc)
        msg = str(entry.get("msg", "invalid"))
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts) or "rejected by the server (422) without a reason"


@dataclass(slots=True)
class Settlement:
    """What to do with each position of a batch after a failed send.

    ``release``: give back at once, untouched (they were fine). ``retry``: ``(position, delay)``,
    one more strike each. ``dead``: ``(position, reason, errors)`` for the dead-letter table.
    ``split``: send at most this many events per request until one succeeds.
    """

    release: list[int] = field(default_factory=list)
    retry: list[tuple[int, float]] = field(default_factory=list)
    dead: list[tuple[int, str, list[Any]]] = field(default_factory=list)
    split: int | None = None


def _skew_or_dead(
    plan: Settlement, position: int, errors: list[Any], strikes: int, *, max_rejections: int, delay: float
) -> None:
    reason = describe_errors(errors)
    if is_clock_skew(errors) and strikes + 1 < max_rejections:
        plan.retry.append((position, max(MIN_SKEW_DELAY, delay)))
    else:
        if is_clock_skew(errors):
            reason = f"{reason} (still in the future for Polar after {strikes + 1} attempts: check the clock)"
        plan.dead.append((position, reason, errors))


def settle_rejection(
    detail: Sequence[Any], strikes: Sequence[int], *, max_rejections: int, skew_delays: Sequence[float]
) -> Settlement:
    """Plan a 422 (Polar validates the whole batch and inserts nothing, server/polar/event/service.py).

    Events named by an error are dead-lettered with Polar's reason, except clock skew, which is
    retried after ``skew_delays[i]`` until ``max_rejections`` strikes. Events no error names are
    released to be sent again at once. Errors that name no event make us halve the batch until the
    culprit travels alone.
    """
    count = len(strikes)
    per_index, _ = errors_by_index(detail, count)
    plan = Settlement()
    if not per_index:
        if count == 1:
            _skew_or_dead(
                plan, 0, list(detail), strikes[0], max_rejections=max_rejections, delay=skew_delays[0]
            )
        else:
            plan.release = list(range(count))
            plan.split = count // 2
        return plan
    for position in range(count):
        errors = per_index.get(position)
        if errors is None:
            plan.release.append(position)
        else:
            _skew_or_dead(
                plan,
                position,
                errors,
                strikes[position],
                max_rejections=max_rejections,
                delay=skew_delays[position],
            )
    return plan


def settle_too_large(count: int) -> Settlement:
    """Plan a 413: halve the batch; a lone event that is still too large is dead-lettered
    (server/polar/middlewares.py)."""
    if count == 1:
        return Settlement(dead=[(0, "event too large for Polar's 10 MiB request limit (413)", [])])
    return Settlement(release=list(range(count)), split=count // 2)


def settle_refused(strikes: Sequence[int], reason: str, *, max_rejections: int, delay: float) -> Settlement:
    """Plan an error that is neither retryable nor a rejection: retry with a strike each time, and
    dead-letter with ``reason`` once ``max_rejections`` strikes are reached."""
    plan = Settlement()
    for position, strike in enumerate(strikes):
        if strike + 1 >= max_rejections:
            plan.dead.append((position, f"{reason} (after {strike + 1} attempts)", []))
        else:
            plan.retry.append((position, delay))
    return plan
