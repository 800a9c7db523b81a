"""``polar-metering demo``: a small SaaS metered end to end on the embedded engine, in a few seconds.

Three customers on two plans make API calls, use AI tokens, store files and add team members; one
hits its limit and is refused; a reservation guards an expensive call; then the month turns over and
usage resets. Everything runs on a real SQLite file, with a manual clock so the month passes at once.
"""

from __future__ import annotations

import random
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from polar_metering._catalog import Plan
from polar_metering._client import Metering
from polar_metering._clock import ManualClock
from polar_metering._context import current_customer
from polar_metering._exceptions import UsageLimitExceeded
from polar_metering._status import UsageStatus

__all__ = ["DEMO_PLANS", "DemoReport", "run_demo"]

DEMO_PLANS = (
    Plan("free", credits={"api_requests": 100, "ai_tokens": 5_000, "storage_gb": 1, "team_seats": 3}),
    Plan("pro", credits={"api_requests": 10_000, "ai_tokens": 250_000, "storage_gb": 50, "team_seats": 25}),
)
CUSTOMERS = {"org_acme": "pro", "org_globex": "free", "user_alice": "free"}


@dataclass
class DemoReport:
    """What the demo did, for printing and for tests."""

    url: str
    usage: dict[str, dict[str, UsageStatus]]
    events: int
    blocked: list[str]
    after_reset: dict[str, UsageStatus]


def run_demo(url: str | None = None, *, seed: int = 7, say: Callable[[str], None] = print) -> DemoReport:
    """Run the simulation on ``url`` (by default a fresh SQLite file in a temporary directory, which
    is removed when the demo ends)."""
    rng = random.Random(seed)
    scratch: Path | None = None
    if url is None:
        scratch = Path(tempfile.mkdtemp(prefix="polar-metering-demo-"))
        url = f"sqlite:///{scratch / 'demo.db'}"
    where = "a temporary SQLite file (removed afterwards)" if scratch is not None else url
    clock = ManualClock("2026-11-01T09:00:00+00:00")
    client = Metering(url, plans=DEMO_PLANS, clock=clock)
    events = 0
    blocked: list[str] = []
    try:
        for customer, plan in CUSTOMERS.items():
            client.subscribe(customer, plan)
        who = ", ".join(f"{c} ({p})" for c, p in CUSTOMERS.items())
        say(f"Embedded engine on {where}; customers: {who}")

        # A day of traffic: API calls in batches, as a busy app would send them.
        for customer, calls in (("org_acme", 1_500), ("org_globex", 60), ("user_alice", 40)):
            batch = [
                {
                    "customer_id": customer,
                    "event_name": "api.request",
                    "metadata": {
                        "endpoint": rng.choice(["/api/generate", "/api/search", "/api/files"]),
                        "method": rng.choice(["GET", "POST"]),
                        "status_code": 200,
                        "duration_ms": rng.randint(5, 400),
                    },
                }
                for _ in range(calls)
            ]
            events += client.track_usage_batch(batch).inserted
            clock.advance(minutes=30)

        for customer, seats in (("org_acme", 12), ("org_globex", 2), ("user_alice", 1)):
            for i in range(seats):
                for _ in range(2):  # logging in twice takes one seat
                    events += client.track_seat_activity(
                        customer, f"{customer}_member_{i}", action="login"
                    ).inserted

        for customer, sizes in (
            ("org_acme", [12.0, 18.5, 15.0]),
            ("org_globex", [0.4, 0.7]),
            ("user_alice", [0.2]),
        ):
            for size in sizes:
                events += client.track_storage_update(customer, size, operation="upload").inserted

        # AI generations gated by the token limit, as the seed's server-action example does; the
        # estimate is held while the call runs, so the limit is never overshot.
        def generate(customer: str, prompt: str) -> int:
            tokens = 800 + len(prompt) * 20
            client.track_ai_tokens(customer, tokens, model="gpt-4", type="total")
            return tokens

        for customer in CUSTOMERS:
            with current_customer(customer):
                for n in range(8):
                    prompt = "summarise " * (n + 3)
                    try:
                        client.with_usage_limit(
                            "ai_tokens", generate, customer, prompt, amount=800 + len(prompt) * 20
                        )
                        events += 1
                    except UsageLimitExceeded as exc:
                        blocked.append(f"{customer}: AI generation refused ({exc.status.reason})")
                        break

        # An expensive action reserved up front: two parallel jobs cannot both take the last units.
        with client.reserve("org_acme", "ai_tokens", 20_000) as reservation:
            reservation.commit(17_250)
            events += 1
        try:
            client.reserve("user_alice", "ai_tokens", 20_000)
        except UsageLimitExceeded as exc:
            blocked.append(f"user_alice: reservation of 20000 tokens refused ({exc.status.reason})")

        # One more API call than the free plan allows.
        for _ in range(100):
            status = client.check_limit("org_globex", "api_requests")
            if not status.allowed:
                blocked.append(f"org_globex: API request refused with 429 ({status.reason})")
                break
            events += client.track_api_request(
                "org_globex", "/api/generate", method="POST", status_code=200
            ).inserted

        usage = {customer: client.get_all_usage(customer) for customer in CUSTOMERS}
        for line in blocked:
            say("  blocked: " + line)

        clock.advance(days=31)  # the billing month turns over; usage resets, credits renew
        after = client.get_all_usage("org_globex")
        return DemoReport(url, usage, events, blocked, after)
    finally:
        client.close()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
