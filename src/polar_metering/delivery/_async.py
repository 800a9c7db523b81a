"""``AsyncOutbox``: the asyncio face of :class:`Outbox`.

The sender is a thread either way, so this is a thin shell: ``enqueue`` stays on the event loop
(an in-memory append, no I/O) unless it must commit, and everything that waits or reads the file
runs in a worker thread so the loop never blocks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

from polar_metering._events import Event
from polar_metering.delivery._outbox import DeadLetter, Outbox, OutboxStatus
from polar_metering.delivery._sender import DeliveryMetrics

__all__ = ["AsyncOutbox"]


class AsyncOutbox:
    """Wraps an :class:`Outbox` (``AsyncOutbox(Outbox(config, transport))``); same methods, awaitable.

    A cancelled ``flush``/``drain``/``close`` stops waiting at once; the worker thread finishes its
    wait in the background (bounded by the timeout given).
    """

    def __init__(self, outbox: Outbox) -> None:
        if not isinstance(outbox, Outbox):
            raise TypeError(f"outbox: must be an Outbox, got {type(outbox).__name__}")
        self.outbox = outbox

    async def enqueue(
        self, events: Sequence[Event | Mapping[str, Any]], *, durable: bool | None = None
    ) -> int:
        """Queue events; commits in a worker thread only when ``durable`` asks for it."""
        if durable if durable is not None else self.outbox.config.durable:
            return await asyncio.to_thread(self.outbox.enqueue, events, durable=True)
        return self.outbox.enqueue(events, durable=False)

    async def flush(self, timeout: float | None = None) -> bool:
        return await asyncio.to_thread(self.outbox.flush, timeout)

    async def drain(self, timeout: float | None = None) -> bool:
        return await asyncio.to_thread(self.outbox.drain, timeout)

    async def close(self, timeout: float | None = None) -> bool:
        return await asyncio.to_thread(self.outbox.close, timeout)

    async def status(self) -> OutboxStatus:
        return await asyncio.to_thread(self.outbox.status)

    async def dead_letters(self, limit: int = 100, *, offset: int = 0) -> list[DeadLetter]:
        return await asyncio.to_thread(self.outbox.dead_letters, limit, offset=offset)

    async def retry_dead_letters(self, ids: Sequence[int] | None = None) -> int:
        return await asyncio.to_thread(self.outbox.retry_dead_letters, ids)

    def metrics(self) -> DeliveryMetrics:
        return self.outbox.metrics()

    async def __aenter__(self) -> AsyncOutbox:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"Async{self.outbox!r}"
