"""The seed guide's "Protecting Actions" AI examples, with a metered OpenAI client instead of
``with_usage_limit`` plus a hand-written ``track_ai_tokens``.

The seed wraps each AI call in ``withUsageLimit("ai_tokens", ...)`` and tracks ``result.tokensUsed``
after it. Here one metered client does both on every call: it reserves the request's ``max_tokens``
before sending (``UsageLimitExceeded`` before any request when the customer is out), and records what
OpenAI reports, streams included. The customer is the request's billing entity, read from the context
that ``handle_request`` (a framework integration, in a real app) sets.

Run it: ``python examples/llm_protecting_actions.py`` (offline: it starts the fake LLM server; point
``base_url`` elsewhere to use a real endpoint).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import openai

import polar_metering as metering
from polar_metering import Plan, UsageLimitExceeded
from polar_metering.llm import Price, metered
from polar_metering.llm.testing import FakeLLMServer

TEAM = Plan("team", credits={"ai_tokens": 75})
# Your own prices, in dollars per million tokens (none ship with the library).
PRICES = {"gpt-4o-mini": Price(input=0.15, output=0.60, cached_input=0.075)}


@contextmanager
def handle_request(organization_id: str) -> Iterator[None]:
    """One request: a framework integration makes the billing entity the current customer."""
    with metering.current_customer(organization_id):
        yield


# -- Using withUsageLimit: the metered client gates and tracks ----------------------------------------
def generate_content(ai: openai.OpenAI, prompt: str) -> str:
    result = ai.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": prompt}],
        max_tokens=20,  # reserved before the call, settled to the reported usage after it
    )
    return result.choices[0].message.content or ""


# -- Using withUsageLimitSafe: catch the refusal, show the upgrade modal -------------------------------
MODALS: list[str | None] = []


def generate_content_safe(ai: openai.OpenAI, prompt: str) -> str | None:
    try:
        return generate_content(ai, prompt)
    except UsageLimitExceeded as e:
        MODALS.append(e.status.reason)
        print("Upgrade modal:", e.status.reason)
        return None


# -- In Server Actions (async, streamed): usage arrives at the end of the stream ----------------------
async def summarize_text(ai: openai.AsyncOpenAI, text: str) -> str:
    stream = await ai.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": f"summarize: {text}"}],
        max_tokens=20,
        stream=True,  # include_usage is set for you; the usage chunk never reaches this loop
    )
    return "".join([chunk.choices[0].delta.content or "" async for chunk in stream])


def main(base_url: str | None = None) -> dict[str, Any]:
    MODALS.clear()
    out: dict[str, Any] = {}
    with FakeLLMServer(input_tokens=12, output_tokens=5) as fake:
        url = base_url or fake.openai_url
        # Built once at startup; the customer is read from the context at each call.
        ai = metered(openai.OpenAI(base_url=url, api_key="sk-example"), limit="ai_tokens", prices=PRICES)
        aio = metered(openai.AsyncOpenAI(base_url=url, api_key="sk-example"), limit="ai_tokens")
        metering.init("sqlite:///:memory:", plans=[TEAM])
        try:
            metering.subscribe("org_456", "team")
            with handle_request("org_456"):
                out["generated"] = [generate_content(ai, "one"), generate_content(ai, "two")]  # 2 x 17
                out["summary"] = asyncio.run(summarize_text(aio, "usage-based billing"))  # 17: 51 used
                out["requests_at_limit"] = len(fake.requests)
                out["more"] = [generate_content_safe(ai, "three"), generate_content_safe(ai, "four")]
                out["requests_after"] = len(fake.requests)  # the refused call sent nothing
            out["usage"] = metering.check_limit("org_456", "ai_tokens")
            out["modals"] = list(MODALS)
            print("ai_tokens used:", out["usage"].current, "of", out["usage"].limit)
        finally:
            metering.shutdown()
    return out


if __name__ == "__main__":
    main()
