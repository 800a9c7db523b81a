"""Webhooks from the emulator to your endpoint, signed and retried as Polar's server does.

Polar refuses ``http://`` and loopback endpoint URLs and sends nothing from a development server,
so an app cannot receive a real Polar webhook locally. With ``--webhook-url`` and
``--webhook-secret`` the emulator sends them instead, following ``server/polar/webhook/tasks.py``
at c6c3645:

- **Signing**: Standard Webhooks. ``webhook-id`` (the event id), ``webhook-timestamp`` (Unix seconds)
  and ``webhook-signature`` ``v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`` keyed by the
  secret's UTF-8 bytes (Polar base64-encodes the secret for the ``standardwebhooks`` library, which
  decodes it again); ``user-agent: polar.sh webhooks``; a 10 s timeout.
- **Body**: ``{"type", "timestamp", "data"}`` as Polar's ``BaseWebhookPayload`` dumps it (no
  ``api_version``: this server version sends none), compact JSON.
- **Retries**: any answer that is not 2xx, or no answer, is retried with dramatiq's exponential
  backoff (``WORKER_MIN_BACKOFF_MILLISECONDS`` 2 s doubled per attempt, halved and jittered, at most
  20 minutes) until ``WEBHOOK_MAX_RETRIES`` (10) attempts; then the delivery is failed.
- **Order**: an event waits while an earlier one to the same endpoint is still pending, for at most
  ``WEBHOOK_FIFO_GUARD_MAX_AGE`` (one minute), as Polar's FIFO guard does.

Deliveries run on the emulator's background thread; ``GET /__emulator__/webhooks`` lists them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from polar_metering._exceptions import ConfigurationError, redact

__all__ = ["MAX_ATTEMPTS", "Delivery", "WebhookSender", "sign"]

MAX_ATTEMPTS = 10  # WEBHOOK_MAX_RETRIES
_BACKOFF_BASE = 2.0  # WORKER_MIN_BACKOFF_MILLISECONDS, in seconds
_MAX_BACKOFF = 20 * 60.0
_FIFO_MAX_AGE = 60.0  # WEBHOOK_FIFO_GUARD_MAX_AGE
_TIMEOUT = 10.0
_KEEP = 1000  # finished deliveries kept for the admin listing


def sign(secret: str, webhook_id: str, timestamp: int, body: str) -> str:
    """The ``webhook-signature`` header value for one delivery."""
    digest = hmac.new(secret.encode("utf-8"), f"{webhook_id}.{timestamp}.{body}".encode(), hashlib.sha256)
    return "v1," + base64.b64encode(digest.digest()).decode("ascii")


@dataclass(slots=True)
class Delivery:
    """One webhook event and its delivery attempts."""

    id: str
    type: str
    body: str
    created: float
    next_at: float
    attempts: int = 0
    status: str = "pending"  # pending | succeeded | failed
    last_status_code: int | None = None
    last_error: str | None = None
    history: list[int | str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "status": self.status,
            "attempts": self.attempts,
            "last_status_code": self.last_status_code,
            "last_error": self.last_error,
            "responses": list(self.history),
        }


class WebhookSender:
    """A queue of signed deliveries to one endpoint, worked through by :meth:`deliver_due`."""

    def __init__(
        self,
        url: str,
        secret: str,
        *,
        backoff_base: float = _BACKOFF_BASE,
        max_attempts: int = MAX_ATTEMPTS,
        timeout: float = _TIMEOUT,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError("webhook_url: must be an http:// or https:// URL")
        if not isinstance(secret, str) or not secret.strip():
            raise ConfigurationError("webhook_secret: a non-empty secret is required with webhook_url")
        if (
            isinstance(backoff_base, bool)
            or not isinstance(backoff_base, int | float)
            or not backoff_base > 0
        ):
            raise ConfigurationError("webhook_backoff: must be a number of seconds > 0")
        self.url = url
        self._secret = secret
        self.backoff_base = float(backoff_base)
        self.max_attempts = max_attempts
        self.timeout = timeout
        self._now = monotonic
        self._queue: list[Delivery] = []
        self._done: list[Delivery] = []
        self._lock = threading.Lock()
        self._sending = threading.Lock()
        self._client: Any = None

    def __repr__(self) -> str:
        return f"WebhookSender(url={self.url!r})"

    def send(self, event_type: str, timestamp: str, data: Mapping[str, Any]) -> str:
        """Queue one event; returns its ``webhook-id``."""
        body = json.dumps({"type": event_type, "timestamp": timestamp, "data": data}, separators=(",", ":"))
        now = self._now()
        delivery = Delivery(str(uuid.uuid4()), event_type, body, now, now)
        with self._lock:
            self._queue.append(delivery)
        return delivery.id

    def deliveries(self) -> list[dict[str, Any]]:
        with self._lock:
            return [d.summary() for d in (*self._done, *self._queue)]

    def pending(self) -> int:
        with self._lock:
            return len(self._queue)

    def _backoff(self, attempts: int) -> float:
        # dramatiq.compute_backoff: factor * 2**attempts, capped, then half of it plus a random half.
        delay = float(min(self.backoff_base * 2.0**attempts, _MAX_BACKOFF))
        return delay / 2 + random.uniform(0, delay / 2)

    def _next(self, now: float) -> Delivery | None:
        """The first delivery that is due and not held back by an earlier one still pending
        (Polar's FIFO guard holds a later event back for a minute at most)."""
        for d in self._queue:
            if d.next_at <= now:
                return d
            if now - d.created < _FIFO_MAX_AGE:
                return None
        return None

    def deliver_due(self, limit: int = 1000) -> int:
        """Attempt the deliveries that are due, in order, one after another (at most ``limit``);
        returns how many were attempted."""
        if not self._sending.acquire(blocking=False):
            return 0  # another thread is delivering
        try:
            attempted = 0
            while attempted < limit:
                with self._lock:
                    delivery = self._next(self._now())
                if delivery is None:
                    break
                self._attempt(delivery)
                attempted += 1
            return attempted
        finally:
            self._sending.release()

    def _attempt(self, delivery: Delivery) -> None:
        import httpx

        if self._client is None:
            self._client = httpx.Client(timeout=self.timeout)
        timestamp = int(time.time())  # the receiver checks it against its own clock
        headers = {
            "user-agent": "polar.sh webhooks",
            "content-type": "application/json",
            "webhook-id": delivery.id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(self._secret, delivery.id, timestamp, delivery.body),
        }
        delivery.attempts += 1
        try:
            response = self._client.post(self.url, content=delivery.body.encode(), headers=headers)
        except httpx.HTTPError as exc:
            delivery.last_status_code = None
            delivery.last_error = redact(f"{type(exc).__name__}: {exc}", self._secret)
            delivery.history.append(type(exc).__name__)
            ok = False
        else:
            delivery.last_status_code = response.status_code
            delivery.last_error = None
            delivery.history.append(response.status_code)
            ok = response.is_success
        with self._lock:
            if ok:
                delivery.status = "succeeded"
            elif delivery.attempts >= self.max_attempts:
                delivery.status = "failed"
            else:
                delivery.next_at = self._now() + self._backoff(delivery.attempts)
                return
            self._queue.remove(delivery)
            self._done.append(delivery)
            del self._done[:-_KEEP]

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
