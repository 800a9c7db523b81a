"""Bad input over every backend: the same bad batch keeps its good events and rejects the bad ones
at track time, on the engine (SQLite file and memory, PostgreSQL) and through ``polar://`` to the
emulator, where nothing bad ever reaches the outbox. And ``_cost.amount`` given as a decimal string
sums as a number, as Polar stores it."""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from tests.conformance.harness import factories, open_harness

from polar_metering import Aggregation, Filter, Meter
from polar_metering._catalog import DEFAULT_METERS

_polar = Path(__file__).with_name("polar_harness.py")
if _polar.exists():
    spec = importlib.util.spec_from_file_location("tests.conformance.polar_harness", _polar)
    assert spec is not None and spec.loader is not None
    spec.loader.exec_module(importlib.util.module_from_spec(spec))

METERS = (
    *DEFAULT_METERS,
    Meter("llm_cost", "LLM Cost", Filter.event("llm.call"), Aggregation.sum("_cost.amount")),
)


@pytest.fixture(params=sorted(factories()))
def h(request: pytest.FixtureRequest) -> Iterator[Any]:
    with open_harness(request, request.param, METERS) as harness:
        yield harness


def _deep(depth: int = 20_000) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


LLM = {"vendor": "openai", "model": "gpt-4", "input_tokens": 1, "output_tokens": 1, "total_tokens": 2}


def _bad_items(customer: str) -> list[tuple[dict[Any, Any], str]]:
    tokens = {"customer_id": customer, "event_name": "ai.tokens"}
    return [
        ({**tokens, "metadata": {"tokens": 10**400}}, "metadata.tokens"),
        ({**tokens, "metadata": {"tokens": 10**309}}, "metadata.tokens"),
        ({**tokens, "metadata": {"tokens": 1, "note": "\udcff"}}, "metadata.note"),
        ({**tokens, "metadata": {"tokens": 1, "\ud800": "x"}}, "metadata.\\ud800"),
        ({**tokens, "customer_id": f"{customer}\ud800"}, "customer_id"),
        ({**tokens, "event_name": "ai.tokens\udcff"}, "name"),
        ({**tokens, "metadata": {"tokens": 1}, "external_id": "\udcff"}, "external_id"),
        ({**tokens, "metadata": {1: "x", "tokens": 1}}, "metadata"),
        ({1: "x", "a": "y", **tokens}, "event"),
        ({**tokens, "metadata": {"tokens": math.nan}}, "metadata.tokens"),
        ({**tokens, "metadata": {"tokens": -math.inf}}, "metadata.tokens"),
        ({**tokens, "metadata": {"tokens": _deep()}}, "metadata.tokens"),
        ({**tokens, "metadata": {"tokens": 1, "_llm": {**LLM, "vendor": "\ud800"}}}, "metadata._llm.vendor"),
        (
            {**tokens, "metadata": {"tokens": 1, "_llm": {**LLM, "total_tokens": 10**400}}},
            "metadata._llm.total_tokens",
        ),
        ({**tokens, "metadata": {"tokens": 1}, "timestamp": datetime(2026, 1, 1)}, "timestamp"),
        ({**tokens, "metadata": {"tokens": 1, "k": "v\x00"}}, "metadata.k"),
    ]


def test_bad_items_are_rejected_and_good_ones_kept_exactly_once(h: Any) -> None:
    """Good and bad events interleaved in one batch: every good one counts once, every bad one is
    listed with ``events[i].field``, and (on ``polar://``) only the good ones reach the outbox."""
    customer = "cust_bad_batch"
    batch: list[Any] = []
    bad_at: dict[int, str] = {}
    good_tokens = 0
    for n, (item, field) in enumerate(_bad_items(customer), start=1):
        batch.append(
            {
                "customer_id": customer,
                "event_name": "ai.tokens",
                "metadata": {"tokens": n},
                "external_id": f"bad-batch-good-{n}",
            }
        )
        good_tokens += n
        bad_at[len(batch)] = field
        batch.append(item)
    result = h.client.track_usage_batch(batch)
    assert not result.success
    assert result.inserted == len(batch) - len(bad_at)
    assert len(result.external_ids) == len(batch) - len(bad_at)
    assert [i for i, _ in result.rejected] == sorted(bad_at)
    for i, message in result.rejected:
        assert message.startswith(f"events[{i}].{bad_at[i]}: "), message
        message.encode("utf-8")
    h.settle()
    assert h.client.check_limit(customer, "ai_tokens").current == good_tokens
    outbox = getattr(h.client.backend, "outbox", None)
    if outbox is not None:  # polar://: the outbox took the good events only, and delivered them all
        metrics = outbox.metrics()
        assert metrics.dead_lettered == 0, metrics.last_error
        assert metrics.committed == len(batch) - len(bad_at)
        delivered = [e for e in _emulator_events(h) if e.external_customer_id == customer]
        assert sorted(e.metadata["tokens"] for e in delivered) == list(range(1, len(bad_at) + 1))
    # The same batch again: the bad items are refused again, the good ones are duplicates of known
    # external ids, so nothing counts twice.
    again = h.client.track_usage_batch(batch)
    assert [i for i, _ in again.rejected] == sorted(bad_at)
    h.settle()
    assert h.client.check_limit(customer, "ai_tokens").current == good_tokens


def _emulator_events(h: Any) -> list[Any]:
    events: list[Any] = []
    page = 1
    while True:
        listing = h.sdk.events.list(page=page, limit=100)
        events.extend(listing.items)
        if page >= listing.pagination.max_page:
            return events
        page += 1


def test_single_bad_calls_never_reach_the_backend(h: Any) -> None:
    """A bad single track reports the rule; the next good one goes through."""
    c = h.client
    assert c.track_ai_tokens("cust_single", 10**400).error.startswith("tokens: ")
    assert c.track_usage("cust_single", "ai.tokens", {"tokens": "\udcff"}).error.startswith(
        "metadata.tokens: "
    )
    assert c.track_usage("cust\udcff", "ai.tokens", {"tokens": 1}).error.startswith("customer_id: ")
    assert c.track_ai_tokens("cust_single", 7).success
    h.settle()
    assert c.check_limit("cust_single", "ai_tokens").current == 7


def test_cost_amount_strings_sum_as_numbers(h: Any) -> None:
    """Polar parses ``_cost.amount`` as a decimal and stores it as a JSON number, so a sum meter over
    it adds "1.25" + "1.25" + 2 = 4.5 (the engine used to keep the strings and read 2)."""
    c = h.client
    for amount in ("1.25", "1.25", 2):
        assert c.track_usage(
            "cust_cost", "llm.call", {"_cost": {"amount": amount, "currency": "usd"}}
        ).success
    assert c.track_usage_batch(
        [
            {
                "customer_id": "cust_cost",
                "event_name": "llm.call",
                "metadata": {"_cost": {"amount": "0.5", "currency": "usd"}},
            }
        ]
    ).success
    h.settle()
    assert c.check_limit("cust_cost", "llm_cost").current == pytest.approx(5.0)
