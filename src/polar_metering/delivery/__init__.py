"""Durable delivery to Polar: a SQLite outbox, a background sender, and the transport contract.

The pipeline knows nothing about HTTP: a :class:`Transport` sends one batch and raises the library's
exceptions; everything else (batching, rate limiting, backoff, 422 splitting, dead letters, leases
shared across processes, flush/close/exit/fork handling) lives here. See ``docs/delivery.md``.
"""

from polar_metering.delivery._async import AsyncOutbox
from polar_metering.delivery._config import POLAR_RATE_LIMITS, DeliveryConfig
from polar_metering.delivery._outbox import DeadLetter, Outbox, OutboxStatus
from polar_metering.delivery._sender import DeliveryMetrics, Sender, SendResult, Transport

__all__ = [
    "POLAR_RATE_LIMITS",
    "AsyncOutbox",
    "DeadLetter",
    "DeliveryConfig",
    "DeliveryMetrics",
    "Outbox",
    "OutboxStatus",
    "SendResult",
    "Sender",
    "Transport",
]
