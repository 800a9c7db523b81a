"""The seed's ``await``-style calls in asyncio code: ``polar_metering.aio`` and ``AsyncMetering``.

The seed's TypeScript functions are all async. In Python the same names exist twice: plain
functions for sync code, and coroutines in ``polar_metering.aio`` (acting on the client ``init()``
made) or on an ``AsyncMetering`` client. Actions given to ``with_usage_limit`` may be coroutine
functions or plain callables.

Run it: ``python examples/seed/async_twins.py``
"""

from __future__ import annotations

import asyncio
from typing import Any

import polar_metering as metering
from polar_metering import AsyncMetering, Plan, SafeResult, UsageLimitExceeded

PLAN = Plan("team", credits={"api_requests": 1000, "storage_gb": 10, "ai_tokens": 800, "team_seats": 5})
AI_CALLS: list[str] = []


async def call_ai(prompt: str) -> int:
    """A fake model call that takes a moment and uses 400 tokens."""
    await asyncio.sleep(0)
    AI_CALLS.append(prompt)
    return 400


async def module_level() -> dict[str, Any]:
    """The seed's examples with ``await metering.aio.<name>(...)``."""
    aio = metering.aio
    await aio.subscribe("org_456", "team")
    out: dict[str, Any] = {
        "core": await aio.track_usage(
            "org_456", "api.request", {"endpoint": "/api/v1/generate", "method": "POST"}
        ),
        "helpers": [
            await aio.track_api_request(
                "org_456", "/api/generate", method="POST", status_code=200, duration_ms=150
            ),
            await aio.track_storage_update("org_456", 2.5, operation="upload"),
            await aio.track_seat_activity("org_456", "user_789", action="login"),
        ],
        "batch": await aio.track_usage_batch(
            [
                {"customer_id": "org_456", "event_name": "api.request", "metadata": {"endpoint": "/a"}},
                {"customer_id": "org_456", "event_name": "api.request", "metadata": {"endpoint": "/b"}},
            ]
        ),
    }

    async def generate(prompt: str) -> int:
        tokens = await call_ai(prompt)  # only runs if the limit check passes
        await aio.track_ai_tokens("org_456", tokens)  # track after success
        return tokens

    with metering.current_customer("org_456"):
        out["current"] = await aio.check_current_limit("api_requests")
        out["generated"] = [
            await aio.with_usage_limit("ai_tokens", generate, "first"),
            await aio.with_usage_limit("ai_tokens", generate, "second"),
        ]
        try:  # 800 of 800 tokens used: refused, and call_ai never runs
            out["third"] = await aio.with_usage_limit("ai_tokens", generate, "third")
        except UsageLimitExceeded as e:
            out["refused"] = e.status.reason
        out["safe"] = await aio.with_usage_limit_safe("ai_tokens", generate, "fourth")
        out["all"] = await aio.get_all_usage()
    out["specific"] = await aio.check_limit("org_456", "storage_gb", amount=11)
    return out


async def own_client(url: str) -> dict[str, Any]:
    """An ``AsyncMetering`` of its own: the same methods, plus ``async with`` reservations."""
    async with AsyncMetering(url, plans=[PLAN]) as client:
        await client.subscribe("user_123", "team")
        async with await client.reserve("user_123", "ai_tokens", 600) as hold:
            during = await client.check_limit("user_123", "ai_tokens", amount=500)  # 600 held
            tokens = await call_ai("reserved")
            await hold.commit(tokens)  # records 400 and ends the hold
        after = await client.check_limit("user_123", "ai_tokens")
        refused: SafeResult[int] = await client.with_usage_limit_safe(
            "ai_tokens", call_ai, "too big", amount=700, customer_id="user_123"
        )

        # Five concurrent requests for 400 tokens each on an 800 token plan: with amount= each one
        # holds its tokens while it runs, so exactly two go ahead whatever the interleaving.
        await client.subscribe("org_race", "team")

        async def work(i: int) -> int:
            tokens = await call_ai(f"race {i}")
            await client.track_ai_tokens("org_race", tokens)
            return tokens

        async def request(i: int) -> SafeResult[int]:
            return await client.with_usage_limit_safe(
                "ai_tokens", work, i, customer_id="org_race", amount=400
            )

        race = await asyncio.gather(*(request(i) for i in range(5)))
        race_usage = await client.check_limit("org_race", "ai_tokens")
    return {
        "during": during,
        "after": after,
        "reserve_refused": refused,
        "race": race,
        "race_usage": race_usage,
    }


def main(url: str = "sqlite:///:memory:") -> dict[str, Any]:
    AI_CALLS.clear()
    metering.init(url, plans=[PLAN])
    try:
        out = asyncio.run(module_level())
    finally:
        metering.shutdown()
    out.update(asyncio.run(own_client(url)))
    out["ai_calls"] = list(AI_CALLS)
    print("check_current_limit:", out["current"].current, "/", out["current"].limit)
    print("with_usage_limit (coroutine action):", out["generated"])
    print("refused:", out["refused"])
    print("with_usage_limit_safe:", out["safe"].success, out["safe"].error)
    print("get_all_usage:", {slug: s.current for slug, s in out["all"].items()})
    print("check_limit(amount=11 GB):", out["specific"].reason)
    print("reservation: during", out["during"].reason, "| after", out["after"].current)
    print("reserve 700 with 400 left:", out["reserve_refused"].error)
    print(
        "five concurrent 400-token requests:",
        sum(r.success for r in out["race"]),
        "ran; usage",
        out["race_usage"].current,
    )
    print("AI calls that ran:", out["ai_calls"])
    return out


if __name__ == "__main__":
    main()
