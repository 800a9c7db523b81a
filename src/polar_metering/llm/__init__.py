"""Metering AI calls where they happen: OpenAI, Anthropic and LiteLLM clients that record their own usage.

::

    from openai import OpenAI
    from polar_metering.llm import metered

    client = metered(OpenAI(), customer="user_123")            # still an openai.OpenAI
    client.chat.completions.create(model="gpt-4o-mini", messages=[...])
    # -> one ai.tokens event: tokens=<total>, model, type="total", and Polar's _llm metadata

    gated = metered(OpenAI(), limit="ai_tokens")               # customer from the current context
    gated.chat.completions.create(..., max_tokens=500)         # reserves 500 first, or raises
                                                               # UsageLimitExceeded before any request

Every call records one event once the vendor reports usage, streams included (the usage that arrives
at the end; OpenAI's ``include_usage`` is set for you). A call that fails records nothing. The vendor
SDKs are imported only by the code that uses them (extras ``openai``, ``anthropic``, ``litellm``).
See ``docs/llm.md``.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import Any, TypeVar, overload

from polar_metering._events import MetadataValue
from polar_metering._exceptions import ConfigurationError
from polar_metering.llm._common import Estimate, Price, PriceTable, Settings, Usage, cost_cents
from polar_metering.llm._litellm import MeteredLiteLLM

__all__ = ["Estimate", "MeteredLiteLLM", "Price", "PriceTable", "Usage", "cost_cents", "metered"]

C = TypeVar("C")


@overload
def metered(
    client: types.ModuleType,
    customer: str | None = None,
    *,
    metering: Any = None,
    limit: str | None = None,
    reserve: Estimate = None,
    prices: PriceTable | None = None,
    metadata: Mapping[str, MetadataValue] | None = None,
    vendor: str | None = None,
) -> MeteredLiteLLM: ...


@overload
def metered(
    client: C,
    customer: str | None = None,
    *,
    metering: Any = None,
    limit: str | None = None,
    reserve: Estimate = None,
    prices: PriceTable | None = None,
    metadata: Mapping[str, MetadataValue] | None = None,
    vendor: str | None = None,
) -> C: ...


def metered(
    client: Any,
    customer: str | None = None,
    *,
    metering: Any = None,
    limit: str | None = None,
    reserve: Estimate = None,
    prices: PriceTable | None = None,
    metadata: Mapping[str, MetadataValue] | None = None,
    vendor: str | None = None,
) -> Any:
    """A metered copy of ``client`` that records every model call for ``customer``.

    - ``client``: an ``openai.OpenAI`` / ``AsyncOpenAI`` (or ``AzureOpenAI``, or a subclass), an
      ``anthropic.Anthropic`` / ``AsyncAnthropic``, or the ``litellm`` module. The result has the same
      type and methods (LiteLLM: an object with ``completion`` and ``acompletion``); ``client`` itself
      is left unmetered.
    - ``customer``: who pays; ``None`` reads the current customer (``polar_metering.current_customer``
      or a framework integration) at each call.
    - ``metering``: a ``Metering`` or ``AsyncMetering``; default: the client ``polar_metering.init()``
      installed, looked up at each call.
    - ``limit``: a meter slug to gate on. Before each call, ``reserve`` units are held (a number, or a
      function of the request's parameters; default: the request's ``max_tokens`` /
      ``max_completion_tokens`` / ``max_output_tokens``), or, with nothing to reserve, the limit is
      checked; ``UsageLimitExceeded`` is raised before any request when the customer is out. The hold
      is committed with the actual usage, or released if the call fails.
    - ``prices``: ``{model: Price(input=, output=, cached_input=)}`` in dollars per million tokens;
      fills Polar's ``_cost`` (cents). None are shipped.
    - ``metadata``: extra metadata on every event; ``vendor`` overrides ``_llm.vendor``.
    """
    if customer is not None and (not isinstance(customer, str) or not customer):
        from polar_metering._exceptions import ValidationError

        raise ValidationError(
            "customer", "must be a non-empty string or None (the current customer)", customer
        )
    if limit is not None and (not isinstance(limit, str) or not limit):
        from polar_metering._exceptions import ValidationError

        raise ValidationError("limit", "must be a meter slug such as 'ai_tokens'", limit)
    if not (reserve is None or callable(reserve)) and (
        isinstance(reserve, bool) or not isinstance(reserve, int | float) or not reserve >= 0
    ):
        from polar_metering._exceptions import ValidationError

        raise ValidationError("reserve", "must be a number >= 0 or a function of the request", reserve)
    if prices is not None and (
        not isinstance(prices, Mapping) or not all(isinstance(p, Price) for p in prices.values())
    ):
        from polar_metering._exceptions import ValidationError

        raise ValidationError("prices", "must map model names to polar_metering.llm.Price", prices)
    settings = Settings(
        customer=customer,
        metering=metering,
        limit=limit,
        reserve=reserve,
        prices=prices,
        metadata=dict(metadata or {}),
        vendor=vendor,
    )
    if isinstance(client, types.ModuleType):
        if client.__name__ == "litellm":
            return MeteredLiteLLM(client, settings)
        raise ConfigurationError(f"metered: module {client.__name__!r} is not litellm")
    if isinstance(client, MeteredLiteLLM):
        return MeteredLiteLLM(client.litellm, settings)
    package = type(client).__module__.split(".", 1)[0]
    if package == "polar_metering":  # already metered: wrap the vendor class underneath
        package = type(client).__mro__[1].__module__.split(".", 1)[0]
    from polar_metering.llm import _stainless

    if package == "openai":
        from polar_metering.llm._openai import ENDPOINTS
    elif package == "anthropic":
        from polar_metering.llm._anthropic import ENDPOINTS
    else:
        raise ConfigurationError(
            f"metered: {type(client).__name__} is not an OpenAI or Anthropic client, nor the litellm module"
        )
    return _stainless.wrap(client, settings, ENDPOINTS)
