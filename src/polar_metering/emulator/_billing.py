"""Polar's billing pass on a schedule: what freezes a meter's filter and aggregation.

Polar's scheduler runs ``meter.enqueue_billing`` on the cron ``*/15 * * * *``
(``server/polar/meter/tasks.py`` at c6c3645); each pass moves every meter's ``last_billed_event`` to
the latest event billed on it, and from then on ``PATCH /v1/meters/{id}`` refuses ``filter`` and
``aggregation``. :class:`BillingSchedule` runs the engine's ``billing_pass`` at the same wall-clock
boundaries (multiples of ``interval`` since the epoch, UTC: every quarter hour by default), from the
emulator's background tick and before each request, so a ``ManualClock`` drives it in tests.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from polar_metering._exceptions import ConfigurationError

if TYPE_CHECKING:
    from polar_metering.backends._engine.backend import LocalEngine

__all__ = ["DEFAULT_BILLING_INTERVAL", "BillingSchedule"]

#: Polar's cron: every 15 minutes.
DEFAULT_BILLING_INTERVAL = 900.0


def _slot(epoch_seconds: float, interval: float) -> int:
    return int(epoch_seconds // interval)


class BillingSchedule:
    """Billing passes every ``interval`` seconds of the engine clock; ``interval`` 0 or None: only
    when asked (``POST /__emulator__/billing``)."""

    def __init__(self, engine: LocalEngine, interval: float | None = DEFAULT_BILLING_INTERVAL) -> None:
        if interval is not None and (
            isinstance(interval, bool) or not isinstance(interval, int | float) or not interval >= 0
        ):
            raise ConfigurationError("billing_interval: must be a number of seconds >= 0, or None")
        self.engine = engine
        self.interval = float(interval) if interval else None
        self.passes = 0
        self._lock = threading.Lock()
        self._slot = self._current_slot()

    def _current_slot(self) -> int | None:
        if self.interval is None:
            return None
        return _slot(self.engine.clock.now().timestamp(), self.interval)

    def run(self) -> list[str]:
        """One billing pass now; returns the meters it froze."""
        with self._lock:
            self.passes += 1
            return self.engine.billing_pass()

    def tick(self) -> bool:
        """Run the pass if a boundary went by since the last one (several missed boundaries make
        one pass, as a late cron job would). True if it ran."""
        if self.interval is None:
            return False
        slot = self._current_slot()
        with self._lock:
            if slot is None or self._slot is None or slot <= self._slot:
                return False
            self._slot = slot
        self.run()
        return True
