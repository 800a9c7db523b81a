"""A Polar-compatible HTTP emulator on the local engine, so the unmodified ``polar-sdk`` runs offline.

::

    from polar.v2026_10 import Polar
    from polar_metering.emulator import running_emulator

    with running_emulator() as emu:
        polar = Polar(emu.token, base_url=emu.base_url)
        polar.events.ingest(events=[{"name": "api.request", "external_customer_id": "user_1"}])

It serves Polar's events, meters, customer meters and customer-state routes under ``/v1`` with
Polar's validation and error bodies, Polar's quirks included (``polar_quirks=False`` turns off the
two bug-like ones), runs Polar's billing pass, sends signed webhooks with ``webhook_url``, and has
admin routes under ``/__emulator__/``. See ``docs/emulator.md``. Needs the ``emulator`` extra
(starlette, uvicorn, pydantic).
"""

from polar_metering.emulator._app import DEFAULT_ORGANIZATION_ID, create_app
from polar_metering.emulator._cli import AdminClient, emulator_command, resolve_token
from polar_metering.emulator._server import EmulatorHandle, emulator_thread, running_emulator, serve

__all__ = [
    "DEFAULT_ORGANIZATION_ID",
    "AdminClient",
    "EmulatorHandle",
    "create_app",
    "emulator_command",
    "emulator_thread",
    "resolve_token",
    "running_emulator",
    "serve",
]
