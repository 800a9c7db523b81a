"""A FastAPI app metered end to end on the embedded engine (SQLite).

Run it (``pip install 'polar-metering[fastapi]' uvicorn``)::

    cd examples && uvicorn fastapi_app:create_app --factory
    curl -X POST localhost:8000/signup -H 'X-Org-Id: org_1'                    # free plan: 5 requests
    for i in 1 2 3 4 5 6; do curl -i -X POST localhost:8000/api/process -H 'X-Org-Id: org_1'; done
    # the sixth answers 429 with the usage status and RateLimit-* / Retry-After headers
    curl localhost:8000/usage -H 'X-Org-Id: org_1'

The billing entity is the organization when the caller names one (``X-Org-Id``), else the user
(``X-User-Id``); requests with neither are anonymous and not metered.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from pydantic import BaseModel

import polar_metering as metering
from polar_metering import AsyncReservation, Plan
from polar_metering.integrations.fastapi import install, metering_lifespan, usage_limit, usage_reservation

FREE = Plan("free", credits={"api_requests": 5, "ai_tokens": 2000})
# 500 tokens held for each generation; the endpoint commits what the model really used.
HeldTokens = Annotated[AsyncReservation | None, Depends(usage_reservation("ai_tokens", 500))]


def billing_entity(request: Request) -> str | None:
    """The organization when there is one, else the user; ``None`` for an anonymous caller."""
    return request.headers.get("x-org-id") or request.headers.get("x-user-id")


class Prompt(BaseModel):
    prompt: str


def _customer() -> str:
    customer = metering.get_current_customer()
    if customer is None:
        raise HTTPException(401, "send X-Org-Id or X-User-Id")
    return customer


def create_app(url: str | None = None, **options: Any) -> FastAPI:
    """Build the app on ``url`` (default: ``METERING_URL``, else ``sqlite:///metering.db``)."""
    metering.init(url, plans=[FREE], **options)
    app = FastAPI(title="polar-metering FastAPI example", lifespan=metering_lifespan())
    # Signing up and reading usage are not billable API calls.
    install(app, resolver=billing_entity, exclude_paths=["/signup", "/usage"])

    @app.post("/signup")
    async def signup() -> dict[str, str]:
        customer = _customer()
        await metering.aio.subscribe(customer, FREE.name)
        return {"customer": customer, "plan": FREE.name}

    @app.post("/api/process", dependencies=[Depends(usage_limit("api_requests"))])
    async def process() -> dict[str, Any]:
        # The middleware tracks this request as api.request once the response has gone out.
        return {"success": True, "customer": metering.get_current_customer()}

    @app.post("/api/generate")
    async def generate(body: Prompt, held: HeldTokens) -> dict[str, Any]:
        if held is None:
            raise HTTPException(401, "send X-Org-Id or X-User-Id")
        tokens = 10 * len(body.prompt.split())  # stands in for the model's reported token count
        await held.commit(tokens)
        return {"summary": body.prompt[:40], "tokens": tokens}

    @app.get("/usage")
    async def usage() -> dict[str, Any]:
        _customer()
        readings = await metering.aio.get_all_usage()
        return {slug: status.to_dict() for slug, status in readings.items()}

    return app
