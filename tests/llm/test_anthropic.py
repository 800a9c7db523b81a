"""The real ``anthropic`` SDK, metered, against the fake server: ``messages.create`` (plain and
``stream=True``), the ``messages.stream()`` helper, sync and async, errors and the gate."""

from __future__ import annotations

import asyncio
from typing import Any

import anthropic
import pytest

from polar_metering import Metering, UsageLimitExceeded
from polar_metering.llm import metered
from polar_metering.llm.testing import FakeLLMServer
from polar_metering.testing import capture_events

from .conftest import MESSAGE


def _client(fake: FakeLLMServer, **options: Any) -> anthropic.Anthropic:
    options.setdefault("max_retries", 0)
    return anthropic.Anthropic(base_url=fake.anthropic_url, api_key="sk-ant-test", **options)


def _aclient(fake: FakeLLMServer) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=fake.anthropic_url, api_key="sk-ant-test", max_retries=0)


def test_messages_create_stream_and_helper(fake: FakeLLMServer, meter_client: Metering) -> None:
    fake.cached_tokens = 3
    client = metered(_client(fake), customer="user_1", metering=meter_client)
    assert isinstance(client, anthropic.Anthropic)
    with capture_events(meter_client) as events:
        message = client.messages.create(model="claude-sonnet-4-5", max_tokens=4, messages=MESSAGE)
        # Anthropic reports cache reads beside input_tokens: 9 uncached + 3 read.
        assert (message.usage.input_tokens, message.usage.cache_read_input_tokens) == (9, 3)
        kinds = [
            e.type
            for e in client.messages.create(
                model="claude-sonnet-4-5", max_tokens=100, messages=MESSAGE, stream=True
            )
        ]
        with client.messages.stream(model="claude-sonnet-4-5", max_tokens=100, messages=MESSAGE) as stream:
            text = stream.get_final_text()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert text == "word word word word word"
    llm = [dict(e.metadata["_llm"]) for e in events]
    assert [(m["input_tokens"], m["cached_input_tokens"], m["output_tokens"]) for m in llm] == [
        (12, 3, 4),
        (12, 3, 5),
        (12, 3, 5),
    ]
    assert {m["vendor"] for m in llm} == {"anthropic"}
    assert [e.metadata["tokens"] for e in events] == [16, 17, 17]
    assert meter_client.check_limit("user_1", "llm_tokens").current == 50


def test_async_messages(fake: FakeLLMServer, meter_client: Metering) -> None:
    client = metered(_aclient(fake), customer="user_1", metering=meter_client)

    async def main() -> None:
        await client.messages.create(model="claude-haiku-4-5", max_tokens=100, messages=MESSAGE)
        async for _ in await client.messages.create(
            model="claude-haiku-4-5", max_tokens=100, messages=MESSAGE, stream=True
        ):
            pass
        async with client.messages.stream(model="claude-haiku-4-5", max_tokens=100, messages=MESSAGE) as s:
            await s.get_final_message()
        raw = await client.messages.with_raw_response.create(
            model="claude-haiku-4-5", max_tokens=100, messages=MESSAGE
        )
        await raw.parse()

    with capture_events(meter_client) as events:
        asyncio.run(main())
    assert [e.metadata["tokens"] for e in events] == [17] * 4
    assert len(fake.requests) == 4


def test_errors_record_nothing_and_release(fake: FakeLLMServer, meter_client: Metering) -> None:
    client = metered(
        _client(fake, max_retries=1), customer="user_1", metering=meter_client, limit="ai_tokens"
    )
    fake.fail(529, times=2)  # Anthropic's "overloaded", retried once by the SDK
    with capture_events(meter_client) as events, pytest.raises(anthropic.APIStatusError):
        client.messages.create(model="claude-sonnet-4-5", max_tokens=30, messages=MESSAGE)
    assert events == [] and len(fake.requests) == 2
    status = meter_client.check_limit("user_1", "ai_tokens")
    assert status.current == 0 and status.reserved == 0


def test_gate_reserves_max_tokens_and_commits_the_reported_usage(
    fake: FakeLLMServer, meter_client: Metering
) -> None:
    client = metered(_client(fake), customer="user_1", metering=meter_client, limit="ai_tokens")
    with client.messages.stream(model="claude-sonnet-4-5", max_tokens=30, messages=MESSAGE) as stream:
        assert meter_client.check_limit("user_1", "ai_tokens").reserved == 30
        stream.until_done()
    status = meter_client.check_limit("user_1", "ai_tokens")
    assert status.current == 17 and status.reserved == 0
    with pytest.raises(UsageLimitExceeded):
        client.messages.create(model="claude-sonnet-4-5", max_tokens=30, messages=MESSAGE)
    assert len(fake.requests) == 1


def test_stream_closed_early_records_what_was_reported(fake: FakeLLMServer, meter_client: Metering) -> None:
    client = metered(_client(fake), customer="user_1", metering=meter_client, limit="ai_tokens")
    with capture_events(meter_client) as events:
        stream = client.messages.create(
            model="claude-sonnet-4-5", max_tokens=30, messages=MESSAGE, stream=True
        )
        first = next(iter(stream))
        assert first.type == "message_start"
        stream.close()
    status = meter_client.check_limit("user_1", "ai_tokens")
    # message_start had reported the whole prompt and one output token; the hold is over.
    assert status.current == 13 and status.reserved == 0
    assert events == []  # committed through the reservation
