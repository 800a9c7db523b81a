"""A single-file Django app metered end to end on the embedded engine (SQLite).

Run it (``pip install 'polar-metering[django]'``)::

    python examples/django_app/app.py runserver
    curl -X POST localhost:8000/signup -H 'X-Org-Id: org_1'                    # free plan: 5 requests
    for i in 1 2 3 4 5 6; do curl -i -X POST localhost:8000/api/process -H 'X-Org-Id: org_1'; done
    # the sixth answers 429 with the usage status and RateLimit-* / Retry-After headers
    curl -X POST localhost:8000/api/summarize -H 'X-User-Id: u_1' -d 'some text to summarize'
    python examples/django_app/app.py polar_metering_setup

The billing entity is the organization when the caller names one (``X-Org-Id``), else the user
(``X-User-Id``); requests with neither are anonymous and not metered.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path

import polar_metering as metering
from polar_metering import Plan
from polar_metering.integrations.django import usage_limit

FREE = Plan("free", credits={"api_requests": 5, "ai_tokens": 2000})


def billing_entity(request: HttpRequest) -> str | None:
    """The organization when there is one, else the user; ``None`` for an anonymous caller."""
    entity: str | None = request.headers.get("X-Org-Id") or request.headers.get("X-User-Id")
    return entity


SETTINGS: dict[str, Any] = {
    "DEBUG": True,
    "SECRET_KEY": "example-only-not-secret",
    "ALLOWED_HOSTS": ["127.0.0.1", "localhost", "testserver"],
    "INSTALLED_APPS": ["polar_metering.integrations.django"],
    "MIDDLEWARE": ["polar_metering.integrations.django.MeteringMiddleware"],
    "POLAR_METERING": {
        "URL": os.environ.get("METERING_URL", "sqlite:///metering.db"),
        "PLANS": [FREE],
        "RESOLVER": billing_entity,  # or a dotted path: "myproject.billing.billing_entity"
        "EXCLUDE_PATHS": ["/signup"],  # signing up is not a billable API call
    },
}


def _unknown_caller() -> HttpResponse:
    return JsonResponse({"error": "send X-Org-Id or X-User-Id"}, status=401)


def signup(request: HttpRequest) -> HttpResponse:
    customer = metering.get_current_customer()
    if customer is None:
        return _unknown_caller()
    metering.subscribe(customer, FREE.name)
    return JsonResponse({"customer": customer, "plan": FREE.name})


@usage_limit("api_requests")
def process(request: HttpRequest) -> HttpResponse:
    # The middleware tracks this request as api.request after the view has answered.
    return JsonResponse({"success": True, "customer": metering.get_current_customer()})


@usage_limit("ai_tokens", amount=100)
async def summarize(request: HttpRequest) -> HttpResponse:
    customer = metering.get_current_customer()
    if customer is None:
        return _unknown_caller()
    text = request.body.decode()
    tokens = 10 * len(text.split())  # stands in for the model's reported token count
    await metering.aio.track_ai_tokens(customer, tokens, model="example")
    return JsonResponse({"summary": text[:40], "tokens": tokens})


urlpatterns = [
    path("signup", signup),
    path("api/process", process),
    path("api/summarize", summarize),
]


def main() -> None:
    from django.conf import settings
    from django.core.management import execute_from_command_line

    settings.configure(ROOT_URLCONF=__name__, **SETTINGS)
    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
