"""A small FastAPI service metered with polar-metering: summaries cost API requests and AI tokens.

Run it: ``pip install 'polar-metering[fastapi]' uvicorn`` then ``uvicorn app:app``. In production set
``METERING_URL`` (``polar://`` and ``POLAR_ACCESS_TOKEN``); locally it meters into ``metering.db``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from pydantic import BaseModel

import polar_metering as metering
from polar_metering.integrations.fastapi import install, metering_lifespan, usage_limit, usage_reservation

CATALOG = Path(__file__).with_name("metering.toml")


@asynccontextmanager
async def configure_metering(app: FastAPI) -> AsyncIterator[None]:
    metering.init(catalog=str(CATALOG))  # under the pytest plugin this returns the test's client
    yield


def billing_entity(request: Request) -> str | None:
    """The organization when the caller names one, else the user; None for an anonymous caller."""
    return request.headers.get("x-org-id") or request.headers.get("x-user-id")


app = FastAPI(lifespan=metering_lifespan(lifespan=configure_metering))
install(app, resolver=billing_entity, anonymous="deny")  # metered routes answer 401 to strangers


class Document(BaseModel):
    text: str


def summarize_text(text: str) -> tuple[str, int]:
    """Stands in for a model call: the summary and the tokens it used."""
    words = text.split()
    return " ".join(words[:5]), 2 * len(words)


# Up to 50 tokens are held while the model runs, so concurrent requests cannot overspend.
HeldTokens = Annotated[Any, Depends(usage_reservation("ai_tokens", 50))]


@app.post("/api/summarize", dependencies=[Depends(usage_limit("api_requests"))])
async def summarize(document: Document, held: HeldTokens) -> dict[str, Any]:
    summary, tokens = summarize_text(document.text)
    await held.commit(tokens)  # records what was used; the rest of the 50 held goes back
    return {"summary": summary, "tokens": tokens}


@app.get("/api/usage")
async def usage() -> dict[str, Any]:
    """The caller's usage on every meter (the current customer is set by the middleware)."""
    return metering.jsonable(await metering.aio.get_all_usage())  # type: ignore[no-any-return]


@app.get("/health")
async def health() -> dict[str, bool]:
    return {"ok": True}
