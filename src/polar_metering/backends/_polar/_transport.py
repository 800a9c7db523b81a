"""The delivery transport for Polar: one ``events.ingest`` call of the official SDK per batch
(server/polar/event/endpoints.py)."""

from __future__ import annotations

import threading
from typing import Any

import httpx

from polar_metering.backends._polar._sdk import (
    EventsIngestResponse,
    HTTPValidationError,
    Polar,
    PolarSettings,
    open_client,
    parse_response_json,
    polar_errors,
)
from polar_metering.delivery import SendResult

__all__ = ["SdkTransport"]


class SdkTransport:
    """Sends batches with ``polar-sdk``; SDK errors leave as the library's (see ``polar_errors``).

    The SDK client (and its connection pool) is created on first use and shared by every sender
    thread after; httpx's client is thread-safe, as the transport contract requires.
    """

    def __init__(self, settings: PolarSettings) -> None:
        self._settings = settings
        self._client: Polar | None = None
        self._lock = threading.Lock()

    def send(self, events: list[dict[str, Any]], *, timeout: float | None = None) -> SendResult:
        """Send one batch; ``timeout`` (seconds) replaces the client's for this request."""
        client = self._client
        if client is None:
            with self._lock:
                client = self._client = self._client or open_client(self._settings)
        with polar_errors("ingest events", self._settings):
            # The SDK sends the events as they are: ISO-8601 timestamps with an offset, never
            # organization_id (an organization token forbids it, server/polar/event/service.py).
            response = client.events.ingest(
                events=events,  # type: ignore[arg-type]
                request_timeout=timeout,
            )
        return SendResult(inserted=response.inserted, duplicates=response.duplicates)

    def send_encoded(
        self, body: bytes, external_ids: list[str], *, timeout: float | None = None
    ) -> SendResult:
        """Send a ready ``{"events":[...]}`` body (the outbox's payloads as stored) through the SDK's
        own request pipeline: its base URL, headers, token, timeout and response and error models,
        without decoding and re-encoding a thousand events per request (a tenth of a sender's time
        went to httpx's JSON encoding of the SDK's dicts)."""
        client = self._client
        if client is None:
            with self._lock:
                client = self._client = self._client or open_client(self._settings)
        with polar_errors("ingest events", self._settings):
            pipeline = client.events.client
            request = pipeline.build_request(
                method="POST",
                url="/v1/events/ingest",
                path_params={},
                query_params={},
                request_timeout=timeout,
            )
            headers = {k: v for k, v in request.headers.items() if k.lower() != "content-length"}
            headers["Content-Type"] = "application/json"
            request = httpx.Request(
                request.method, request.url, headers=headers, content=body, extensions=request.extensions
            )
            response = parse_response_json(
                pipeline.send_request(request), EventsIngestResponse, {422: HTTPValidationError}
            )
        return SendResult(inserted=response.inserted, duplicates=response.duplicates)

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.__exit__()

    def __repr__(self) -> str:
        return f"SdkTransport(server={self._settings.server!r})"
