"""Fixtures for the LLM tests: one fake vendor server per module (reset per test) and a metering client
on an in-memory engine with a small plan, so limits can be reached."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from polar_metering import Aggregation, Filter, Meter, Metering, Plan
from polar_metering._catalog import DEFAULT_METERS
from polar_metering.llm.testing import FakeLLMServer
from polar_metering.testing import metering_for_tests

# LiteLLM would otherwise fetch its model price list from the internet on import.
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

LLM_TOKENS = Meter(
    "llm_tokens", "LLM tokens", Filter.event("ai.tokens"), Aggregation.sum("_llm.total_tokens")
)
AI_COST = Meter("ai_cost", "AI cost", Filter.event("ai.tokens"), Aggregation.sum("_cost.amount"))
MESSAGE = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def _server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as fake:
        yield fake


@pytest.fixture
def fake(_server: FakeLLMServer) -> FakeLLMServer:
    _server.requests.clear()
    _server._failures.clear()
    _server.input_tokens, _server.output_tokens, _server.cached_tokens = 12, 5, 0
    return _server


@pytest.fixture
def meter_client() -> Iterator[Metering]:
    client, _clock = metering_for_tests(
        meters=[*DEFAULT_METERS, LLM_TOKENS, AI_COST],
        plans=[Plan("small", credits={"ai_tokens": 40, "llm_tokens": 40})],
    )
    client.subscribe("user_1", "small")
    yield client
    client.close()
