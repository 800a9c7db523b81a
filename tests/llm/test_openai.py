"""The real ``openai`` SDK, metered, against the fake server on 127.0.0.1: every call path records one
event with Polar's ``_llm`` metadata, streams included; failures record nothing; the gate refuses before
any request and commits what the vendor reported."""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest

import polar_metering as metering
from polar_metering import Metering, UsageLimitExceeded
from polar_metering.llm import Price, metered
from polar_metering.llm.testing import FakeLLMServer
from polar_metering.testing import capture_events

from .conftest import MESSAGE


def _client(fake: FakeLLMServer, **options: Any) -> openai.OpenAI:
    options.setdefault("max_retries", 0)
    return openai.OpenAI(base_url=fake.openai_url, api_key="sk-test", **options)


def _aclient(fake: FakeLLMServer, **options: Any) -> openai.AsyncOpenAI:
    options.setdefault("max_retries", 0)
    return openai.AsyncOpenAI(base_url=fake.openai_url, api_key="sk-test", **options)


def _llm(event: Any) -> dict[str, Any]:
    return dict(event.metadata["_llm"])


def _used(client: Metering, meter: str = "ai_tokens", customer: str = "user_1") -> float:
    return client.check_limit(customer, meter).current


def test_metered_client_is_the_vendors_type_and_the_original_stays_unmetered(
    fake: FakeLLMServer, meter_client: Metering
) -> None:
    bare = _client(fake)
    client = metered(bare, customer="user_1", metering=meter_client)
    assert isinstance(client, openai.OpenAI)
    assert client.base_url == bare.base_url
    assert isinstance(client.with_options(timeout=5), openai.OpenAI)
    with capture_events(meter_client) as events:
        bare.chat.completions.create(model="gpt-4o-mini", messages=MESSAGE)
        client.with_options(timeout=5).chat.completions.create(model="gpt-4o-mini", messages=MESSAGE)
    assert len(fake.requests) == 2
    assert len(events) == 1  # the copy made by with_options is metered too; the original is not


def test_chat_completion_records_llm_and_ai_tokens_shapes(
    fake: FakeLLMServer, meter_client: Metering
) -> None:
    fake.cached_tokens = 4
    client = metered(_client(fake), customer="user_1", metering=meter_client)
    with capture_events(meter_client) as events:
        result = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGE)
    assert result.usage is not None and result.usage.total_tokens == 17
    [event] = events
    assert event.name == "ai.tokens" and event.customer_id == "user_1"
    assert event.metadata["tokens"] == 17
    assert event.metadata["model"] == "gpt-4o-mini"
    assert event.metadata["type"] == "total"
    assert _llm(event) == {
        "vendor": "openai",
        "model": "gpt-4o-mini",
        "input_tokens": 12,
        "output_tokens": 5,
        "cached_input_tokens": 4,
        "total_tokens": 17,
        "prompt": None,
        "response": None,
    }
    assert "_cost" not in event.metadata  # no price table, no cost
    # The default ai_tokens meter and a meter on _llm.total_tokens count the same call.
    assert _used(meter_client, "ai_tokens") == 17
    assert _used(meter_client, "llm_tokens") == 17


def test_stream_sets_include_usage_and_hides_the_usage_chunk(
    fake: FakeLLMServer, meter_client: Metering
) -> None:
    client = metered(_client(fake), customer="user_1", metering=meter_client)
    with capture_events(meter_client) as events:
        stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGE, stream=True)
        chunks = list(stream)
    assert fake.requests[-1].body["stream_options"] == {"include_usage": True}
    assert all(chunk.choices for chunk in chunks)  # the usage-only chunk never reaches the caller
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == "word word word word word"
    [event] = events
    assert _llm(event)["total_tokens"] == 17


def test_stream_where_the_caller_asked_for_usage_keeps_the_chunk(
    fake: FakeLLMServer, meter_client: Metering
) -> None:
    client = metered(_client(fake), customer="user_1", metering=meter_client)
    with capture_events(meter_client) as events:
        stream = client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGE, stream=True, stream_options={"include_usage": True}
        )
        chunks = list(stream)
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert len(events) == 1


def test_stream_is_recorded_only_once_it_is_consumed(fake: FakeLLMServer, meter_client: Metering) -> None:
    client = metered(_client(fake), customer="user_1", metering=meter_client)
    with capture_events(meter_client) as events:
        stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGE, stream=True)
        first = next(stream)
        assert first.choices and events == []
        for _ in stream:
            pass
    assert len(events) == 1


def test_stream_helper_and_completions_and_raw_responses(fake: FakeLLMServer, meter_client: Metering) -> None:
    client = metered(_client(fake), customer="user_1", metering=meter_client)
    with capture_events(meter_client) as events:
        with client.chat.completions.stream(model="gpt-4o-mini", messages=MESSAGE) as stream:
            final = stream.get_final_completion()
        assert final.choices[0].message.content == "word word word word word"
        client.completions.create(model="gpt-3.5-turbo-instruct", prompt="hello")
        list(client.completions.create(model="gpt-3.5-turbo-instruct", prompt="hello", stream=True))
        raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGE)
        assert raw.parse().usage is not None
        raw.parse()  # parsing twice records nothing more
        with client.chat.completions.with_streaming_response.create(
            model="gpt-4o-mini", messages=MESSAGE
        ) as response:
            response.parse()
        with client.chat.completions.with_streaming_response.create(
            model="gpt-4o-mini", messages=MESSAGE, stream=True
        ) as response:
            list(response.parse())
    assert len(fake.requests) == 6
    assert [_llm(e)["total_tokens"] for e in events] == [17] * 6
    models = [e.metadata["model"] for e in events]
    assert models == ["gpt-4o-mini", "gpt-3.5-turbo-instruct", "gpt-3.5-turbo-instruct"] + ["gpt-4o-mini"] * 3


def test_responses_api_sync_stream_and_helper(fake: FakeLLMServer, meter_client: Metering) -> None:
    fake.cached_tokens = 2
    client = metered(_client(fake), customer="user_1", metering=meter_client)
    with capture_events(meter_client) as events:
        response = client.responses.create(model="gpt-4.1", input="hello")
        assert response.output_text == "word word word word word"
        streamed = [e.type for e in client.responses.create(model="gpt-4.1", input="hello", stream=True)]
        with client.responses.stream(model="gpt-4.1", input="hello") as stream:
            final = stream.get_final_response()
    assert streamed[-1] == "response.completed"
    assert final.usage is not None and final.usage.total_tokens == 17
    assert "stream_options" not in fake.requests[-1].body  # Responses streams report usage unasked
    assert [(_llm(e)["input_tokens"], _llm(e)["cached_input_tokens"]) for e in events] == [(12, 2)] * 3


def test_async_client_create_stream_and_helpers(fake: FakeLLMServer, meter_client: Metering) -> None:
    client = metered(_aclient(fake), customer="user_1", metering=meter_client.aio)
    assert isinstance(client, openai.AsyncOpenAI)

    async def main() -> None:
        await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGE)
        stream = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGE, stream=True)
        assert all([chunk.choices async for chunk in stream])
        async with client.chat.completions.stream(model="gpt-4o-mini", messages=MESSAGE) as helper:
            await helper.get_final_completion()
        await client.responses.create(model="gpt-4.1", input="hello")
        async for _ in await client.responses.create(model="gpt-4.1", input="hello", stream=True):
            pass
        async with client.responses.stream(model="gpt-4.1", input="hello") as helper:
            await helper.get_final_response()
        raw = await client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGE)
        raw.parse()
        async with client.chat.completions.with_streaming_response.create(
            model="gpt-4o-mini", messages=MESSAGE, stream=True
        ) as response:
            async for _ in await response.parse():
                pass

    with capture_events(meter_client) as events:
        asyncio.run(main())
    assert len(fake.requests) == 8
    assert [e.metadata["tokens"] for e in events] == [17] * 8
    assert _used(meter_client) == 8 * 17


def test_a_failed_call_records_nothing(fake: FakeLLMServer, meter_client: Metering) -> None:
    client = metered(_client(fake, max_retries=2), customer="user_1", metering=meter_client)
    fake.fail(500, times=3)
    with capture_events(meter_client) as events, pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGE)
    assert len(fake.requests) == 3  # the SDK's own retries all failed
    assert events == []
    fake.fail(500, times=1)
    with capture_events(meter_client) as events:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGE)
    assert len(fake.requests) == 5  # a retry succeeded: one call, one event
    assert len(events) == 1


def test_a_failed_async_stream_records_nothing(fake: FakeLLMServer, meter_client: Metering) -> None:
    client = metered(_aclient(fake), customer="user_1", metering=meter_client)
    fake.fail(503)

    async def main() -> None:
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGE, stream=True)

    with capture_events(meter_client) as events:
        asyncio.run(main())
    assert events == [] and len(fake.requests) == 1


def test_customer_from_the_context_and_missing_customer(fake: FakeLLMServer, meter_client: Metering) -> None:
    client = metered(_client(fake), metering=meter_client)
    with capture_events(meter_client) as events, metering.current_customer("org_9"):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGE)
    assert [e.customer_id for e in events] == ["org_9"]
    with pytest.raises(metering.ConfigurationError, match="no customer"):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGE)
    assert len(fake.requests) == 1  # refused before sending


def test_default_client_from_init(fake: FakeLLMServer) -> None:
    metering.init("sqlite:///:memory:", strict=True)
    client = metered(_client(fake), customer="user_7")
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGE)
    assert metering.check_limit("user_7", "ai_tokens").current == 17


def test_gate_refuses_before_any_request(fake: FakeLLMServer, meter_client: Metering) -> None:
    client = metered(_client(fake), customer="user_1", metering=meter_client, limit="ai_tokens")
    with pytest.raises(UsageLimitExceeded) as refused:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGE, max_tokens=41)
    assert refused.value.status.limit == 40
    assert fake.requests == []  # the fake saw nothing
    assert meter_client.check_limit("user_1", "ai_tokens").reserved == 0


def test_gate_commits_the_reported_usage(fake: FakeLLMServer, meter_client: Metering) -> None:
    client = metered(_client(fake), customer="user_1", metering=meter_client, limit="ai_tokens")
    with capture_events(meter_client) as events:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGE, max_tokens=30)
    status = meter_client.check_limit("user_1", "ai_tokens")
    assert status.current == 17 and status.reserved == 0  # the hold of 30 became the reported 17
    assert len(events) == 0  # committed through the reservation, not a separate track
    assert _used(meter_client, "llm_tokens") == 17  # the one committed event carries _llm as well
    # 23 left: a call that could need 30 is refused, one bounded at 20 goes.
    with pytest.raises(UsageLimitExceeded):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGE, max_tokens=30)
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGE, max_tokens=20)
    assert _used(meter_client) == 34 and len(fake.requests) == 2


def test_gate_releases_on_error_and_on_streams(fake: FakeLLMServer, meter_client: Metering) -> None:
    client = metered(_client(fake), customer="user_1", metering=meter_client, limit="ai_tokens")
    fake.fail(500)
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGE, max_tokens=30)
    status = meter_client.check_limit("user_1", "ai_tokens")
    assert status.current == 0 and status.reserved == 0
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGE, max_tokens=30, stream=True)
    assert meter_client.check_limit("user_1", "ai_tokens").reserved == 30  # held while streaming
    list(stream)
    status = meter_client.check_limit("user_1", "ai_tokens")
    assert status.current == 17 and status.reserved == 0


def test_gate_on_another_meter_tracks_and_releases(fake: FakeLLMServer, meter_client: Metering) -> None:
    client = metered(
        _client(fake), customer="user_1", metering=meter_client, limit="llm_tokens", reserve=lambda p: 25
    )
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGE)
    status = meter_client.check_limit("user_1", "llm_tokens")
    assert status.current == 17 and status.reserved == 0
    with pytest.raises(UsageLimitExceeded):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGE)
    assert len(fake.requests) == 1


def test_gate_without_an_estimate_checks_the_limit(fake: FakeLLMServer, meter_client: Metering) -> None:
    fake.output_tokens = 30
    client = metered(_client(fake), customer="user_1", metering=meter_client, limit="ai_tokens")
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGE)  # 42 tokens: allowed, now over
    assert _used(meter_client) == 42
    with pytest.raises(UsageLimitExceeded):
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGE)
    assert len(fake.requests) == 1


def test_async_gate(fake: FakeLLMServer, meter_client: Metering) -> None:
    client = metered(_aclient(fake), customer="user_1", metering=meter_client, limit="ai_tokens")

    async def main() -> None:
        await client.responses.create(model="gpt-4.1", input="hello", max_output_tokens=30)
        with pytest.raises(UsageLimitExceeded):
            await client.responses.create(model="gpt-4.1", input="hello", max_output_tokens=30)

    asyncio.run(main())
    status = meter_client.check_limit("user_1", "ai_tokens")
    assert status.current == 17 and status.reserved == 0 and len(fake.requests) == 1


def test_price_table_fills_cost_in_cents(fake: FakeLLMServer, meter_client: Metering) -> None:
    fake.input_tokens, fake.output_tokens, fake.cached_tokens = 1000, 500, 200
    prices = {"gpt-4o": Price(input=2.5, output=10.0, cached_input=1.25)}
    client = metered(_client(fake), customer="user_1", metering=meter_client, prices=prices)
    with capture_events(meter_client) as events:
        client.chat.completions.create(model="gpt-4o", messages=MESSAGE)
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGE)  # not in the table
    # (800 * 2.5 + 200 * 1.25 + 500 * 10) / 1M dollars = 0.00725 dollars = 0.725 cents
    assert events[0].metadata["_cost"] == {"amount": 0.725, "currency": "usd"}
    assert "_cost" not in events[1].metadata
    assert _used(meter_client, "ai_cost") == pytest.approx(0.725)


def test_bad_arguments_fail_with_the_librarys_errors() -> None:
    bare = openai.OpenAI(base_url="http://127.0.0.1:9/v1", api_key="sk-test")
    with pytest.raises(metering.ValidationError, match="customer"):
        metered(bare, customer="")
    with pytest.raises(metering.ValidationError, match="prices"):
        metered(bare, prices={"gpt-4o": 2.5})  # type: ignore[dict-item]
    with pytest.raises(metering.ValidationError, match="reserve"):
        metered(bare, reserve="500")  # type: ignore[arg-type]
    with pytest.raises(metering.ConfigurationError, match="not an OpenAI or Anthropic"):
        metered(object())


def test_stream_closed_before_usage_records_nothing_and_releases(
    fake: FakeLLMServer, meter_client: Metering, caplog: pytest.LogCaptureFixture
) -> None:
    client = metered(_client(fake), customer="user_1", metering=meter_client, limit="ai_tokens")
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGE, max_tokens=30, stream=True)
    with capture_events(meter_client) as events, stream:
        next(stream)
        assert meter_client.check_limit("user_1", "ai_tokens").reserved == 30
    status = meter_client.check_limit("user_1", "ai_tokens")
    assert events == [] and status.current == 0 and status.reserved == 0
    assert "without reporting usage" in caplog.text
