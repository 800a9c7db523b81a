"""``track_llm_usage`` on every surface (module, ``aio``, ``Metering``, ``AsyncMetering``): one event in
both shapes, validated by the library's own errors; and ``polar_metering.llm`` imports no vendor SDK."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from typing import Any

import pytest

import polar_metering as metering
from polar_metering import Metering, ValidationError
from polar_metering.testing import capture_events


def test_all_four_surfaces_record_the_same_event(meter_client: Metering) -> None:
    metering.init("sqlite:///:memory:", strict=True)
    kwargs: dict[str, Any] = {
        "vendor": "mistral",
        "model": "mistral-large",
        "input_tokens": 10,
        "output_tokens": 4,
    }
    results = [
        metering.track_llm_usage("user_1", **kwargs),
        asyncio.run(metering.aio.track_llm_usage("user_1", **kwargs)),
    ]
    with capture_events(meter_client) as events:
        results.append(meter_client.track_llm_usage("user_1", cached_input_tokens=6, cost=1.5, **kwargs))
        results.append(
            asyncio.run(meter_client.aio.track_llm_usage("user_1", metadata={"feature": "chat"}, **kwargs))
        )
    assert all(r.success and r.inserted == 1 for r in results)
    assert metering.check_limit("user_1", "ai_tokens").current == 28
    first, second = (dict(e.metadata) for e in events)
    assert first["tokens"] == 14 and first["type"] == "total" and first["model"] == "mistral-large"
    assert first["_llm"]["cached_input_tokens"] == 6 and first["_llm"]["total_tokens"] == 14
    assert first["_cost"] == {"amount": 1.5, "currency": "usd"}
    assert second["feature"] == "chat" and "cached_input_tokens" not in second["_llm"]
    assert meter_client.check_limit("user_1", "llm_tokens").current == 28
    assert meter_client.check_limit("user_1", "ai_cost").current == 1.5


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"vendor": ""}, "vendor"),
        ({"model": 3}, "model"),
        ({"input_tokens": -1}, "input_tokens"),
        ({"output_tokens": 2.5}, "output_tokens"),
        ({"input_tokens": True}, "input_tokens"),
        ({"cached_input_tokens": 11}, "cached_input_tokens"),
        ({"cost": float("nan")}, "cost"),
        ({"cost": {"amount": 1, "currency": "eur"}}, "metadata._cost.currency"),
        ({"cost": 123456.0}, "metadata._cost.amount"),
        ({"metadata": ["x"]}, "metadata"),
    ],
)
def test_bad_input_names_the_field(meter_client: Metering, changes: dict[str, object], field: str) -> None:
    kwargs: dict[str, object] = {
        "vendor": "openai",
        "model": "gpt-4o",
        "input_tokens": 10,
        "output_tokens": 4,
    }
    kwargs.update(changes)
    with pytest.raises(ValidationError) as e:
        meter_client.track_llm_usage("user_1", **kwargs)
    assert e.value.field == field


def test_importing_llm_loads_no_vendor_sdk() -> None:
    code = (
        "import sys, polar_metering.llm, polar_metering.llm.testing; "
        "heavy = ('openai', 'anthropic', 'litellm', 'httpx2', 'starlette'); "
        "print(' '.join(m for m in heavy if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert loaded.stdout.split() == []
