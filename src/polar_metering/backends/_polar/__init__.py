"""The ``polar://`` backend: Polar through the official ``polar-sdk``.

- ``_sdk``: the API-version pin, connection settings, and the one SDK-error translation;
- ``_transport``: the delivery transport (``events.ingest``);
- ``_readings``: meter ids by name, customer-meter rows, readings, a TTL cache;
- ``_backend``: :class:`PolarBackend`, which ties them together.
"""

from polar_metering.backends._polar._backend import PolarBackend
from polar_metering.backends._polar._sdk import API_VERSION, PolarSettings, polar_errors, resolve_settings

__all__ = ["API_VERSION", "PolarBackend", "PolarSettings", "polar_errors", "resolve_settings"]
