"""The metering I/O around one model call: gate before it, record after it. One :class:`Call` keeps
the state; :func:`begin` / :func:`finish` and their async twins are thin shells over it.

Gate: with ``limit``, an estimate is reserved (``Metering.reserve``) before the request leaves, so
``UsageLimitExceeded`` is raised with no network call; with no estimate to reserve, the limit is
checked instead. Record: once the vendor reports usage, one ``ai.tokens`` event (``track_llm_usage``);
under a reservation that event is the commit when the meter's template reproduces it, else it is
tracked and the hold released. A call that fails records nothing and releases its hold.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from polar_metering._client import AsyncMetering, AsyncReservation, Metering, Reservation
from polar_metering._context import get_current_customer
from polar_metering._exceptions import ConfigurationError, UsageLimitExceeded, ValidationError
from polar_metering.llm._common import Endpoint, Settings, Usage, commit_amount, cost_cents, logger

__all__ = ["Call", "abort", "abort_async", "begin", "begin_async", "finish", "finish_async"]


class Call:
    """One metered call in flight: who pays, what was asked, the hold (if any), whether it is done."""

    __slots__ = ("customer", "done", "endpoint", "hold", "model", "settings")

    def __init__(self, settings: Settings, endpoint: Endpoint, customer: str, model: str | None) -> None:
        self.settings, self.endpoint, self.customer, self.model = settings, endpoint, customer, model
        self.hold: Reservation | AsyncReservation | None = None
        self.done = False

    def claim(self) -> bool:
        """True the first time only: a call records (or releases) once, however its end is reached."""
        if self.done:
            return False
        self.done = True
        return True

    def usage_args(self, usage: Usage) -> dict[str, Any]:
        """``track_llm_usage`` keyword arguments for the reported usage."""
        model = self.model or usage.model or "unknown"
        price = self.settings.price_for(self.model, usage.model)
        return {
            "vendor": self.settings.vendor or self.endpoint.vendor,
            "model": model,
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cached_input_tokens": usage.cached_input_tokens,
            "cost": None if price is None else cost_cents(price, usage),
            "metadata": self.settings.metadata or None,
        }


def _customer(settings: Settings) -> str:
    customer = settings.customer if settings.customer is not None else get_current_customer()
    if customer is None:
        raise ConfigurationError(
            "metered: no customer; pass customer= or set the current customer "
            "(`with metering.current_customer(id):` or a framework integration)"
        )
    return customer


def _model(params: Mapping[str, Any]) -> str | None:
    model = params.get("model")
    return model if isinstance(model, str) and model else None


def _sync_client(settings: Settings) -> Metering:
    m = settings.metering
    if m is None:
        from polar_metering._api import get_client

        return get_client()
    return m.sync if isinstance(m, AsyncMetering) else m


def _async_client(settings: Settings) -> AsyncMetering:
    m = settings.metering
    if m is None:
        from polar_metering._api import get_client

        return get_client().aio
    return m if isinstance(m, AsyncMetering) else m.aio


# -- sync ---------------------------------------------------------------------------------------------
def begin(settings: Settings, endpoint: Endpoint, params: Mapping[str, Any]) -> Call:
    """Resolve the customer and pass the gate; raises before any request is sent."""
    call = Call(settings, endpoint, _customer(settings), _model(params))
    if settings.limit is not None:
        client = _sync_client(settings)
        amount = settings.estimate(params)
        if amount is None:
            status = client.check_limit(call.customer, settings.limit)
            if not status.allowed:
                raise UsageLimitExceeded(status, meter=settings.limit, customer=call.customer)
        else:
            call.hold = client.reserve(call.customer, settings.limit, amount)
    return call


def finish(call: Call, usage: Usage | None) -> None:
    """Record the call's usage (``None``: the vendor reported none) and end its hold."""
    if not call.claim():
        return
    client = _sync_client(call.settings)
    hold = call.hold
    assert hold is None or isinstance(hold, Reservation)
    if usage is None:
        logger.warning(
            "polar_metering.llm: %s %s ended without reporting usage; nothing recorded",
            call.endpoint.vendor,
            call.endpoint.path,
        )
        if hold is not None:
            hold.release()
        return
    args = call.usage_args(usage)
    if hold is None:
        client.track_llm_usage(call.customer, **args)
        return
    try:
        event = client._core.llm_usage(call.customer, **args)
    except ValidationError as e:
        hold.release()
        client._core.invalid(e)
        return
    actual = commit_amount(hold.meter, event)
    if actual is not None:
        hold.commit(actual, metadata=event.metadata)
        return
    try:
        client.track_llm_usage(call.customer, **args)
    finally:
        hold.release()


def abort(call: Call) -> None:
    """The call failed: record nothing, give the held units back."""
    if call.claim() and call.hold is not None:
        assert isinstance(call.hold, Reservation)
        call.hold.release()


# -- async --------------------------------------------------------------------------------------------
async def begin_async(settings: Settings, endpoint: Endpoint, params: Mapping[str, Any]) -> Call:
    call = Call(settings, endpoint, _customer(settings), _model(params))
    if settings.limit is not None:
        client = _async_client(settings)
        amount = settings.estimate(params)
        if amount is None:
            status = await client.check_limit(call.customer, settings.limit)
            if not status.allowed:
                raise UsageLimitExceeded(status, meter=settings.limit, customer=call.customer)
        else:
            call.hold = await client.reserve(call.customer, settings.limit, amount)
    return call


async def finish_async(call: Call, usage: Usage | None) -> None:
    if not call.claim():
        return
    client = _async_client(call.settings)
    hold = call.hold
    assert hold is None or isinstance(hold, AsyncReservation)
    if usage is None:
        logger.warning(
            "polar_metering.llm: %s %s ended without reporting usage; nothing recorded",
            call.endpoint.vendor,
            call.endpoint.path,
        )
        if hold is not None:
            await hold.release()
        return
    args = call.usage_args(usage)
    if hold is None:
        await client.track_llm_usage(call.customer, **args)
        return
    try:
        event = client._core.llm_usage(call.customer, **args)
    except ValidationError as e:
        await hold.release()
        client._core.invalid(e)
        return
    meter = client.catalog.meter(hold.hold.meter)
    actual = commit_amount(meter, event)
    if actual is not None:
        await hold.commit(actual, metadata=event.metadata)
        return
    try:
        await client.track_llm_usage(call.customer, **args)
    finally:
        await hold.release()


async def abort_async(call: Call) -> None:
    if call.claim() and call.hold is not None:
        assert isinstance(call.hold, AsyncReservation)
        await call.hold.release()
