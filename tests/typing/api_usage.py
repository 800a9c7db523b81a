"""Code written against the public API, type-checked with mypy --strict in the test suite: it guards
the types users see (coroutine actions, results, statuses), not only the internals."""

from __future__ import annotations

import polar_metering as metering
from polar_metering import AsyncMetering, SafeResult, UsageStatus


async def summarise(client: AsyncMetering, text: str) -> str:
    async def call_model(prompt: str) -> str:
        return prompt.upper()

    def sync_model(prompt: str) -> int:
        return len(prompt)

    summary: str = await client.with_usage_limit("ai_tokens", call_model, text, amount=500)
    length: int = await client.with_usage_limit("ai_tokens", sync_model, text)
    safe: SafeResult[str] = await client.with_usage_limit_safe("ai_tokens", call_model, text)
    via_module: str = await metering.aio.with_usage_limit("ai_tokens", call_model, text)
    status: UsageStatus = await client.check_limit("user_1", "ai_tokens", amount=10)
    return f"{summary} {length} {safe.data} {via_module} {status.allowed}"


def sync_usage(client: metering.Metering) -> float | None:
    result = client.with_usage_limit("api_requests", lambda: 3, customer_id="u")
    total: int = result + 1
    status = client.check_limit("u", "api_requests")
    return status.remaining if total else None
