"""Seed guide, "Protecting Actions": ``with_usage_limit``, ``with_usage_limit_safe``, and the
"In API Routes" and "In Server Actions" patterns.

``get_current_customer()`` below stands in for the seed's ``getCurrentCustomer()`` from the app's
payments module: it returns the signed-in user, their organization, and the billing entity (the
organization when there is one, else the user). ``handle_request`` plays the framework integration,
which makes the billing entity the library's current customer for the request.

Run it: ``python examples/seed/protecting_actions.py``
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import polar_metering as metering
from polar_metering import Plan, SafeResult, UsageLimitExceeded

TEAM = Plan("team", credits={"ai_tokens": 1000, "storage_gb": 10, "api_requests": 2})


# -- the app around the library ---------------------------------------------------------------------
@dataclass(frozen=True)
class CurrentCustomer:
    """What the app's ``get_current_customer()`` returns."""

    user_id: str
    organization_id: str | None = None

    @property
    def billing_entity_id(self) -> str:
        return self.organization_id or self.user_id


_session: ContextVar[CurrentCustomer | None] = ContextVar("session", default=None)


def get_current_customer() -> CurrentCustomer:
    customer = _session.get()
    if customer is None:
        raise PermissionError("not signed in")
    return customer


@contextmanager
def handle_request(user_id: str, organization_id: str | None = None) -> Iterator[CurrentCustomer]:
    """One request: the session, and the billing entity as the metering context."""
    customer = CurrentCustomer(user_id, organization_id)
    token = _session.set(customer)
    try:
        with metering.current_customer(customer.billing_entity_id):
            yield customer
    finally:
        _session.reset(token)


@dataclass
class AIResult:
    text: str
    tokens_used: int


@dataclass
class Services:
    """Fake AI and file storage that record every call, so refusals can be seen not to run them."""

    ai_calls: list[str] = field(default_factory=list)
    stored_gb: dict[str, float] = field(default_factory=dict)

    def call_ai(self, prompt: str) -> AIResult:
        self.ai_calls.append(prompt)
        return AIResult(f"answer to {prompt!r}", tokens_used=100 * len(prompt.split()))

    def upload_file(self, customer: str, name: str, size_gb: float) -> str:
        self.stored_gb[customer] = self.stored_gb.get(customer, 0.0) + size_gb
        # Track after success: the customer's storage is now this large.
        metering.track_storage_update(customer, self.stored_gb[customer], operation="upload")
        return f"{name} ({size_gb:g} GB)"


SERVICES = Services()


# -- Using withUsageLimit -----------------------------------------------------------------------------
def generate_content(prompt: str) -> AIResult:
    customer_id = get_current_customer().billing_entity_id

    def action() -> AIResult:
        result = SERVICES.call_ai(prompt)  # only runs if the limit check passes
        metering.track_ai_tokens(customer_id, result.tokens_used)  # track after success
        return result

    return metering.with_usage_limit("ai_tokens", action)


# -- Using withUsageLimitSafe ---------------------------------------------------------------------------
def upload(name: str, size_gb: float, *, check_size: bool = False) -> SafeResult[str]:
    """Upload unless storage is full. With ``check_size`` the check also asks whether the new total
    fits (``amount=``), so a 7 GB file is refused at 4 of 10 GB before it is stored."""
    customer_id = get_current_customer().billing_entity_id
    new_total = SERVICES.stored_gb.get(customer_id, 0.0) + size_gb
    result = metering.with_usage_limit_safe(
        "storage_gb",
        SERVICES.upload_file,
        customer_id,
        name,
        size_gb,
        amount=new_total if check_size else None,
    )
    if not result.success:
        show_upgrade_modal(result.error)
    else:
        print("Uploaded:", result.data)
    return result


MODALS: list[str | None] = []


def show_upgrade_modal(message: str | None) -> None:
    MODALS.append(message)
    print("Upgrade modal:", message)


# -- In API Routes ---------------------------------------------------------------------------------------
def process_route() -> tuple[dict[str, Any], int]:
    """The seed's ``POST /api/process``: check before processing, 429 with the status when over."""
    billing_entity_id = get_current_customer().billing_entity_id
    status = metering.check_current_limit("api_requests")
    if not status.allowed:
        return {"error": "Rate limit exceeded", **status.to_dict()}, 429
    metering.track_api_request(billing_entity_id, "/api/process")
    # Process the request...
    return {"success": True}, 200


# -- In Server Actions -----------------------------------------------------------------------------------
def summarize_text(text: str) -> str:
    billing_entity_id = get_current_customer().billing_entity_id

    def action() -> str:
        result = SERVICES.call_ai(f"summarize: {text}")
        metering.track_ai_tokens(billing_entity_id, result.tokens_used)
        return result.text

    return metering.with_usage_limit("ai_tokens", action)


def main(url: str = "sqlite:///:memory:") -> dict[str, Any]:
    SERVICES.ai_calls.clear()
    SERVICES.stored_gb.clear()
    MODALS.clear()
    metering.init(url, plans=[TEAM])
    out: dict[str, Any] = {}
    try:
        metering.subscribe("org_456", "team")
        with handle_request("user_789", organization_id="org_456"):
            # 400 + 300 + 300 tokens: exactly the plan's 1000.
            out["generated"] = [
                generate_content("one two three four").tokens_used,
                generate_content("five six seven").tokens_used,
            ]
            out["summary"] = summarize_text("usage-based billing")
            calls_at_limit = len(SERVICES.ai_calls)
            try:
                generate_content("one more please")
            except UsageLimitExceeded as e:
                print("Refused:", e.status.reason)
                out["refused"] = e
            try:
                summarize_text("the rest of the report")
            except UsageLimitExceeded as e:
                out["summary_refused"] = e.status.reason
            out["ai_calls_at_limit"], out["ai_calls_after"] = calls_at_limit, len(SERVICES.ai_calls)

            out["uploads"] = [
                upload("report.pdf", 4),
                upload("video.mp4", 7, check_size=True),
                upload("backup.zip", 6),
                upload("photo.jpg", 1),
            ]
            out["routes"] = [process_route() for _ in range(3)]
            for body, code in out["routes"]:
                print("POST /api/process ->", code, body.get("error") or body)
        out["modals"] = list(MODALS)
        out["stored_gb"] = dict(SERVICES.stored_gb)
        out["usage"] = metering.get_all_usage("org_456")
        out["user_usage"] = metering.get_all_usage("user_789")
    finally:
        metering.shutdown()
    return out


if __name__ == "__main__":
    main()
