"""LiteLLM (the real package) routed to the fake server as OpenAI and as Anthropic: ``completion`` and
``acompletion``, plain and streamed, errors and the gate."""

from __future__ import annotations

import asyncio
from typing import Any

import litellm
import pytest

from polar_metering import Metering, UsageLimitExceeded
from polar_metering.llm import MeteredLiteLLM, metered
from polar_metering.llm.testing import FakeLLMServer
from polar_metering.testing import capture_events

from .conftest import MESSAGE


def _openai(fake: FakeLLMServer) -> dict[str, Any]:
    return {
        "model": "openai/gpt-4o-mini",
        "api_base": fake.openai_url,
        "api_key": "sk-test",
        "max_retries": 0,
    }


def _anthropic(fake: FakeLLMServer) -> dict[str, Any]:
    return {"model": "anthropic/claude-haiku-4-5", "api_base": fake.anthropic_url, "api_key": "sk-ant-test"}


def test_completion_plain_and_streamed_on_two_providers(fake: FakeLLMServer, meter_client: Metering) -> None:
    llm = metered(litellm, customer="user_1", metering=meter_client)
    assert isinstance(llm, MeteredLiteLLM)
    with capture_events(meter_client) as events:
        response = llm.completion(messages=MESSAGE, **_openai(fake))
        assert response.choices[0].message.content == "word word word word word"
        stream = llm.completion(messages=MESSAGE, stream=True, **_openai(fake))
        assert isinstance(stream, litellm.CustomStreamWrapper)
        text = "".join(chunk.choices[0].delta.content or "" for chunk in stream)
        assert text == "word word word word word"
        llm.completion(messages=MESSAGE, max_tokens=50, **_anthropic(fake))
        list(llm.completion(messages=MESSAGE, max_tokens=50, stream=True, **_anthropic(fake)))
    assert fake.requests[1].body["stream_options"] == {"include_usage": True}
    vendors = [e.metadata["_llm"]["vendor"] for e in events]
    assert vendors == ["openai", "openai", "anthropic", "anthropic"]
    assert [e.metadata["tokens"] for e in events] == [17] * 4
    assert [r.path for r in fake.requests] == ["/v1/chat/completions"] * 2 + ["/v1/messages"] * 2


def test_acompletion(fake: FakeLLMServer, meter_client: Metering) -> None:
    llm = metered(litellm, customer="user_1", metering=meter_client.aio)

    async def main() -> None:
        await llm.acompletion(messages=MESSAGE, **_openai(fake))
        stream = await llm.acompletion(messages=MESSAGE, stream=True, **_openai(fake))
        async for _ in stream:
            pass

    with capture_events(meter_client) as events:
        asyncio.run(main())
    assert [e.metadata["tokens"] for e in events] == [17, 17]


def test_errors_record_nothing_and_the_gate_refuses_first(
    fake: FakeLLMServer, meter_client: Metering
) -> None:
    llm = metered(litellm, customer="user_1", metering=meter_client, limit="ai_tokens")
    fake.fail(500)
    with capture_events(meter_client) as events, pytest.raises(litellm.exceptions.InternalServerError):
        llm.completion(messages=MESSAGE, max_tokens=30, **_openai(fake))
    assert events == []
    assert meter_client.check_limit("user_1", "ai_tokens").reserved == 0
    llm.completion(messages=MESSAGE, max_tokens=30, **_openai(fake))
    status = meter_client.check_limit("user_1", "ai_tokens")
    assert status.current == 17 and status.reserved == 0
    sent = len(fake.requests)
    with pytest.raises(UsageLimitExceeded):
        llm.completion(messages=MESSAGE, max_tokens=30, **_openai(fake))
    assert len(fake.requests) == sent
