"""A Flask app metered end to end on the embedded engine (SQLite).

Run it (``pip install 'polar-metering[flask]'``)::

    cd examples && flask --app flask_app run
    curl -X POST localhost:5000/signup -H 'X-Org-Id: org_1'                    # free plan: 5 requests
    for i in 1 2 3 4 5 6; do curl -i -X POST localhost:5000/api/process -H 'X-Org-Id: org_1'; done
    # the sixth answers 429 with the usage status and RateLimit-* / Retry-After headers
    curl localhost:5000/usage -H 'X-Org-Id: org_1'

The billing entity is the organization when the caller names one (``X-Org-Id``), else the user
(``X-User-Id``); requests with neither are anonymous and not metered.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, Request, abort, request

import polar_metering as metering
from polar_metering import Plan
from polar_metering.integrations.flask import Metering, usage_limit

FREE = Plan("free", credits={"api_requests": 5, "ai_tokens": 2000})


def billing_entity(req: Request) -> str | None:
    """The organization when there is one, else the user; ``None`` for an anonymous caller."""
    return req.headers.get("X-Org-Id") or req.headers.get("X-User-Id")


def _customer() -> str:
    customer = metering.get_current_customer()
    if customer is None:
        abort(401, "send X-Org-Id or X-User-Id")
    return customer


def create_app(url: str | None = None, **options: Any) -> Flask:
    """Build the app on ``url`` (default: ``METERING_URL``, else ``sqlite:///metering.db``)."""
    metering.init(url, plans=[FREE], **options)
    app = Flask(__name__)
    # Signing up and reading usage are not billable API calls.
    Metering(app, resolver=billing_entity, exclude_paths=["/signup", "/usage"])

    @app.post("/signup")
    def signup() -> dict[str, Any]:
        customer = _customer()
        metering.subscribe(customer, FREE.name)
        return {"customer": customer, "plan": FREE.name}

    @app.post("/api/process")
    @usage_limit("api_requests")
    def process() -> dict[str, Any]:
        # The extension tracks this request as api.request after the view has answered.
        return {"success": True, "customer": metering.get_current_customer()}

    @app.post("/api/generate")
    def generate() -> dict[str, Any]:
        prompt = str((request.get_json(silent=True) or {}).get("prompt", ""))
        # No room for 500 tokens raises UsageLimitExceeded, which the extension answers with 429.
        with metering.reserve(_customer(), "ai_tokens", 500) as held:
            tokens = 10 * len(prompt.split())  # stands in for the model's reported token count
            held.commit(tokens)
        return {"summary": prompt[:40], "tokens": tokens}

    @app.get("/usage")
    def usage() -> dict[str, Any]:
        _customer()
        return {slug: status.to_dict() for slug, status in metering.get_all_usage().items()}

    return app
