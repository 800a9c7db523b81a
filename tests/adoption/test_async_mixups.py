"""Async code handed to the sync API raises a TypeError that says to use ``aio``, never silently
skips the action (the sync ``with_usage_limit`` used to return an unawaited coroutine)."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any

import pytest

import polar_metering as metering
from polar_metering import Plan
from polar_metering.testing import metering_for_tests, use

ran: list[str] = []


async def call_model() -> str:
    ran.append("model")
    return "summary"


class AsyncCallable:
    async def __call__(self) -> str:
        ran.append("callable")
        return "summary"


ACTIONS: dict[str, Callable[[], Any]] = {
    "coroutine function": call_model,
    "partial": functools.partial(call_model),
    "async __call__": AsyncCallable(),
    "lambda returning a coroutine": lambda: call_model(),
}


@pytest.fixture
def client() -> Any:
    ran.clear()
    c, _ = metering_for_tests(plans=[Plan("free", credits={"ai_tokens": 1000})])
    c.subscribe("u", "free")
    with use(c):
        yield c
    c.close()


@pytest.mark.parametrize("action", list(ACTIONS.values()), ids=list(ACTIONS))
@pytest.mark.parametrize("amount", [None, 100])
@pytest.mark.parametrize("surface", ["module", "client"])
@pytest.mark.parametrize("function", ["with_usage_limit", "with_usage_limit_safe"])
def test_sync_with_usage_limit_refuses_async_actions(
    client: metering.Metering, action: Callable[[], Any], amount: float | None, surface: str, function: str
) -> None:
    target = getattr(metering if surface == "module" else client, function)
    with pytest.raises(TypeError, match=r"aio\." + function):
        target("ai_tokens", action, customer_id="u", amount=amount)
    assert ran == []  # the action never ran
    status = client.check_limit("u", "ai_tokens")
    assert (status.current, status.reserved) == (0, 0)  # and no hold was left behind


def test_async_with_on_a_sync_reservation(client: metering.Metering) -> None:
    async def main() -> None:
        async with metering.reserve("u", "ai_tokens", 300):  # type: ignore[attr-defined]
            pass

    with pytest.raises(TypeError, match=r"async with await metering\.aio\.reserve"):
        asyncio.run(main())
    assert client.check_limit("u", "ai_tokens").reserved == 0


def test_plain_with_on_an_async_reservation(client: metering.Metering) -> None:
    async def main() -> None:
        with await metering.aio.reserve("u", "ai_tokens", 300):  # type: ignore[attr-defined]
            pass

    with pytest.raises(TypeError, match=r"async with await"):
        asyncio.run(main())
    assert client.check_limit("u", "ai_tokens").reserved == 0


def test_aio_still_takes_sync_and_async_actions(client: metering.Metering) -> None:
    async def main() -> tuple[Any, Any]:
        return (
            await metering.aio.with_usage_limit("ai_tokens", call_model, customer_id="u", amount=5),
            await metering.aio.with_usage_limit("ai_tokens", lambda: "sync", customer_id="u"),
        )

    assert asyncio.run(main()) == ("summary", "sync")


def test_flask_extension_refuses_an_async_client() -> None:
    pytest.importorskip("flask")
    from polar_metering.integrations.flask import Metering as FlaskMetering

    c, _ = metering_for_tests()
    with pytest.raises(TypeError, match=r"sync polar_metering\.Metering"):
        FlaskMetering(resolver=lambda r: None, client=c.aio)  # type: ignore[arg-type]
    c.close()
