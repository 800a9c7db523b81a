"""The library's one exception tree.

::

    MeteringError
     ├── ConfigurationError            bad option, unknown backend URL, malformed meter or plan
     │    ├── NoCurrentCustomer        a call needed the current customer and none is set
     │    └── CheckoutRequired         subscribe to a paid plan on polar://: send the customer to checkout
     ├── ValidationError               one input broke a rule; ``.field`` and ``.rule`` say which
     │    └── BatchValidationError     several events broke rules; ``.errors`` lists (index, ValidationError)
     ├── UsageLimitExceeded            an action would go past a customer's limit; ``.status`` explains
     ├── ReservationError              a reservation was used after commit/release/expiry
     ├── BackendError                  the backend failed; ``.retryable`` says whether trying again may help
     │    ├── BackendUnavailable       network, timeout, 5xx, database locked or gone
     │    ├── RateLimited              Polar answered 429; ``.retry_after`` in seconds when known
     │    ├── AuthenticationError      token missing, rejected or lacking a scope (401/403)
     │    ├── NotFound                 customer, meter or resource unknown to the backend (404)
     │    └── RemoteValidationError    Polar rejected a request (422); ``.detail`` holds its per-field errors
     └── OutboxError                   the durable outbox cannot accept or store events

Tracking calls never raise ``BackendError`` into the caller: they report trouble in a
``TrackingResult``. Limit checks raise ``BackendError`` only under the fail-closed policy.

Messages never contain access tokens: ``redact`` strips them from any text taken from a driver.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from polar_metering._status import UsageStatus

__all__ = [
    "AuthenticationError",
    "BackendError",
    "BackendUnavailable",
    "BatchValidationError",
    "CheckoutRequired",
    "ConfigurationError",
    "MeteringError",
    "NoCurrentCustomer",
    "NotFound",
    "OutboxError",
    "RateLimited",
    "RemoteValidationError",
    "ReservationError",
    "UsageLimitExceeded",
    "ValidationError",
    "redact",
]

# Polar tokens start with polar_oat_/polar_pat_/polar_at_ and similar prefixes; bearer headers and
# access_token pairs carry any token. Those values are masked wherever driver text reaches our
# messages or logs. Prose is not: "POLAR_ACCESS_TOKEN is an organization token" and "access_token: a
# token is required" keep their words. So after ``access_token`` a value counts when it follows "="
# or a quoted key's ":" (query strings, forms, JSON, reprs), and after a bare "access_token:" only
# when it looks like a credential (a digit in it, or 16+ token characters).
_TOKEN_CHARS = r"[A-Za-z0-9._\-~+/=]"
_TOKEN_PATTERNS = (
    re.compile(r"polar_[a-z]{2,4}_[A-Za-z0-9_\-]+"),
    re.compile(rf"(?i)(bearer\s+){_TOKEN_CHARS}+"),
    re.compile(rf"(?i)(access_token[\"']?\s*=\s*[\"']?){_TOKEN_CHARS}+"),
    re.compile(rf"(?i)(access_token[\"']\s*:\s*[\"']?){_TOKEN_CHARS}+"),
    re.compile(rf"(?i)(access_token:\s*)(?:(?={_TOKEN_CHARS}*\d){_TOKEN_CHARS}+|{_TOKEN_CHARS}{{16,}})"),
)


def redact(text: str, *secrets: str | None) -> str:
    """Return ``text`` with every token-shaped string and every given secret masked."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    for pattern in _TOKEN_PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + "***", text)
    return text


class MeteringError(Exception):
    """Root of every error this library raises on purpose."""


class ConfigurationError(MeteringError):
    """An option, URL, meter or plan is wrong. The message names it and the rule it breaks."""


class NoCurrentCustomer(ConfigurationError):
    """A call that reads the current customer (``check_current_limit``, ``with_usage_limit`` without
    ``customer_id``...) ran where none is set: outside ``current_customer(...)``, or in an anonymous
    request. The framework integrations answer it with 401 when the request had no customer."""


class ValidationError(MeteringError, ValueError):
    """One input value broke a rule.

    ``field`` is a dotted path to the value (``"metadata.tokens"``, ``"events[3].name"``) and ``rule``
    is the rule in words (``"must be <= 128 characters"``).
    """

    def __init__(self, field: str, rule: str, value: Any = None) -> None:
        self.field = field
        self.rule = rule
        self.value = value
        super().__init__(f"{field}: {rule}")


class BatchValidationError(ValidationError):
    """Several events in one batch broke rules; ``errors`` pairs each index with its error."""

    def __init__(self, errors: list[tuple[int, ValidationError]]) -> None:
        self.errors = errors
        first_index, first = errors[0]
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        # The batch's own errors already name the item ("events[1].customer_id"); others do not.
        where = first.field if first.field.startswith("events[") else f"events[{first_index}].{first.field}"
        super().__init__(where, first.rule + more)


class UsageLimitExceeded(MeteringError):
    """An action was refused because it would take a customer past a meter's limit.

    ``status`` is the :class:`UsageStatus` that refused it: ``status.reason`` reads like
    ``"Usage limit reached: 10/10 units used"``.
    """

    def __init__(self, status: UsageStatus, *, meter: str | None = None, customer: str | None = None) -> None:
        self.status = status
        self.meter = meter
        self.customer = customer
        super().__init__(status.reason or "Usage limit reached")


class ReservationError(MeteringError):
    """A reservation was committed or released after it had ended (committed, released or expired)."""


class BackendError(MeteringError):
    """The backend failed to do what was asked.

    ``retryable`` tells whether the same request may succeed later; ``status_code`` is the HTTP status
    when the backend is remote.
    """

    retryable: bool = False

    def __init__(
        self, message: str, *, status_code: int | None = None, retryable: bool | None = None
    ) -> None:
        self.status_code = status_code
        if retryable is not None:
            self.retryable = retryable
        super().__init__(redact(message))


class BackendUnavailable(BackendError):
    """The backend could not be reached or answered with a server error; worth retrying."""

    retryable = True


class RateLimited(BackendError):
    """Polar's rate limit was hit (HTTP 429). ``retry_after`` is the wait in seconds when known."""

    retryable = True

    def __init__(
        self, message: str, *, retry_after: float | None = None, status_code: int | None = 429
    ) -> None:
        self.retry_after = retry_after
        super().__init__(message, status_code=status_code)


class AuthenticationError(BackendError):
    """The access token is missing, rejected or lacks a scope. The token itself is never shown."""


class NotFound(BackendError):
    """The backend has no such customer, meter or resource."""


class RemoteValidationError(BackendError):
    """Polar (or the emulator) rejected a request with 422. ``detail`` is its list of errors."""

    def __init__(
        self, message: str, *, detail: list[dict[str, Any]] | None = None, status_code: int = 422
    ) -> None:
        self.detail = detail or []
        super().__init__(message, status_code=status_code)


class OutboxError(MeteringError):
    """The durable outbox could not store events (disk full, over its size bound, file unusable)."""


class CheckoutRequired(ConfigurationError):
    """``subscribe`` was asked for a paid plan on ``polar://``: Polar creates subscriptions to paid
    products only through its checkout (``server/polar/subscription/service.py`` ``create`` at
    c6c3645). ``product_id`` is the Polar product to send the customer to checkout for."""

    def __init__(self, message: str, *, plan: str, product_id: str) -> None:
        self.plan = plan
        self.product_id = product_id
        super().__init__(message)
