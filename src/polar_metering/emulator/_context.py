"""Everything the emulator's routes share: the engine and the layers Polar's server has around it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from polar_metering.emulator._errors import decode_body

if TYPE_CHECKING:
    from polar_metering.backends._engine.backend import LocalEngine
    from polar_metering.emulator._billing import BillingSchedule
    from polar_metering.emulator._commerce import Commerce
    from polar_metering.emulator._notify import Notifier
    from polar_metering.emulator._quirks import PolarQuirks
    from polar_metering.emulator._settle import SettledBalances

__all__ = ["Emulator", "read_body"]

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Emulator:
    """One emulated organization over one engine."""

    engine: LocalEngine
    settled: SettledBalances
    org_id: str
    quirks: PolarQuirks
    billing: BillingSchedule
    notifier: Notifier
    commerce: Commerce

    async def run(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run a (synchronous) engine call in a worker thread, after any billing pass and
        subscription renewal now due."""
        return await run_in_threadpool(self._call, fn, *args)

    def _call(self, fn: Callable[..., _T], *args: Any) -> _T:
        self.billing.tick()
        self.commerce.tick()  # subscriptions whose period ended renew (or end) first
        return fn(*args)


async def read_body(request: Request, *, lenient: bool = False) -> Any:
    """The request body decoded as Polar's FastAPI decodes it (``_errors.decode_body``). The admin
    routes are ``lenient``: a body without a content type is read as JSON there."""
    content_type = request.headers.get("content-type")
    if lenient and not content_type:
        content_type = "application/json"
    return decode_body(await request.body(), content_type)
