"""Shared checks for the fuzz suite: only the library's own exceptions, always printable."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from polar_metering import (
    Aggregation,
    BatchValidationError,
    Catalog,
    Filter,
    Meter,
    MeteringError,
    Plan,
    TrackingResult,
    ValidationError,
)
from polar_metering._catalog import DEFAULT_METERS

T = TypeVar("T")

# The suite is bounded for CI (about half a minute); PM_FUZZ_SCALE=20 runs twenty times the examples.
SCALE = max(1, int(os.environ.get("PM_FUZZ_SCALE", "1")))


def examples(n: int) -> int:
    return n * SCALE


CATALOG = Catalog(
    (
        *DEFAULT_METERS,
        Meter("llm_cost", "LLM Cost", Filter.event("llm.call"), Aggregation.sum("_cost.amount")),
        Meter("latency", "Latency", Filter.event("api.request"), Aggregation.avg("duration_ms")),
        Meter("llm_tokens", "LLM Tokens", Filter.event("llm.call"), Aggregation.sum("_llm.total_tokens")),
    ),
    (
        Plan("free", credits={"api_requests": 50, "ai_tokens": 10_000, "team_seats": 5, "storage_gb": 100}),
        Plan("pro", credits={"api_requests": 500}, rollover=True),
    ),
)


def check_error(error: MeteringError) -> MeteringError:
    """An error from the library: its message is text any log or JSON encoder takes."""
    str(error).encode("utf-8")
    if isinstance(error, ValidationError):
        assert isinstance(error.field, str) and isinstance(error.rule, str) and error.rule
        error.field.encode("utf-8")
    if isinstance(error, BatchValidationError):
        for index, item in error.errors:
            assert isinstance(index, int)
            str(item).encode("utf-8")
    return error


def only_ours(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T | MeteringError:
    """Call ``fn``; the only exceptions allowed out are the library's own (returned, not raised)."""
    try:
        return fn(*args, **kwargs)
    except MeteringError as error:
        return check_error(error)


async def only_ours_async(fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T | MeteringError:
    try:
        return await fn(*args, **kwargs)
    except MeteringError as error:
        return check_error(error)


def check_tracking(result: object) -> TrackingResult:
    """``track_*`` never raises without ``strict``: it reports, in printable text."""
    assert isinstance(result, TrackingResult), result
    if result.error is not None:
        result.error.encode("utf-8")
    for index, message in result.rejected:
        assert isinstance(index, int)
        message.encode("utf-8")
    if result.success:
        assert result.error is None and not result.rejected
    else:
        assert result.error
    return result


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())
