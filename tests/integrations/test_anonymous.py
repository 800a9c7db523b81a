"""Anonymous requests (the resolver returned None) in FastAPI and Flask (Django's are in
test_django.py, which owns the process's Django settings): ``anonymous="allow"`` lets
them past the gates unmetered, ``"deny"`` answers 401 with a JSON body, a gate's own ``anonymous=``
overrides the app's policy, and a library call needing the current customer answers 401, not 500."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from flask import Flask

import polar_metering as metering
from polar_metering import ManualClock, Plan
from polar_metering.integrations import fastapi as fastapi_integration
from polar_metering.integrations import flask as flask_integration

FREE = Plan("free", credits={"api_requests": 5, "ai_tokens": 100})
ORG = {"X-Org-Id": "org_1"}


def resolver(request: Any) -> str | None:
    return request.headers.get("X-Org-Id")


@pytest.fixture(autouse=True)
def default_client(sqlite_url: str, clock: ManualClock) -> Iterator[metering.Metering]:
    client = metering.init(sqlite_url, plans=[FREE], clock=clock)
    client.subscribe("org_1", "free")
    yield client
    metering.shutdown()


def untracked() -> float:
    metering.flush()
    return metering.check_limit("org_1", "api_requests").current


# -- FastAPI -------------------------------------------------------------------------------------
HOLD = fastapi_integration.usage_reservation("ai_tokens", 10)


def fastapi_app(policy: str, gate: str | None = None) -> FastAPI:
    app = FastAPI()
    fastapi_integration.install(app, resolver=resolver, anonymous=policy)  # type: ignore[arg-type]

    @app.post(
        "/limited", dependencies=[Depends(fastapi_integration.usage_limit("api_requests", anonymous=gate))]
    )  # type: ignore[arg-type]
    async def limited() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/reserved")
    async def reserved(
        held: Any = Depends(HOLD),  # noqa: B008 - FastAPI's own idiom
    ) -> dict[str, bool]:
        return {"held": held is not None}

    @app.post("/inside")
    async def inside() -> dict[str, Any]:
        # No customer_id: reads the current customer, which an anonymous request does not have.
        return {"tokens": await metering.aio.with_usage_limit("ai_tokens", lambda: 3)}

    return app


def call(app: FastAPI, route: str, headers: dict[str, str] | None = None) -> httpx.Response:
    async def main() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return await client.post(route, headers=headers or {})

    return asyncio.run(main())


def test_fastapi_allow_lets_anonymous_requests_through_unmetered() -> None:
    app = fastapi_app("allow")
    assert call(app, "/limited").status_code == 200
    assert call(app, "/reserved").json() == {"held": False}
    assert untracked() == 0


def test_fastapi_deny_answers_401_with_a_json_body() -> None:
    app = fastapi_app("deny")
    for route in ("/limited", "/reserved"):
        response = call(app, route)
        assert response.status_code == 401
        body = response.json()
        assert body["error"] == "Authentication required"
        assert "has no customer" in body["detail"]
    assert call(app, "/limited", ORG).status_code == 200
    assert call(app, "/reserved", ORG).json() == {"held": True}


def test_fastapi_a_gate_overrides_the_app_policy() -> None:
    assert call(fastapi_app("allow", gate="deny"), "/limited").status_code == 401
    assert call(fastapi_app("deny", gate="allow"), "/limited").status_code == 200


@pytest.mark.parametrize("policy", ["allow", "deny"])
def test_fastapi_a_call_needing_the_customer_answers_401_not_500(policy: str) -> None:
    response = call(fastapi_app(policy), "/inside")
    assert response.status_code == 401
    assert response.json()["error"] == "Authentication required"
    assert call(fastapi_app(policy), "/inside", ORG).json() == {"tokens": 3}


def test_fastapi_policy_is_validated() -> None:
    with pytest.raises(metering.ValidationError, match="anonymous"):
        fastapi_integration.install(FastAPI(), resolver=resolver, anonymous="maybe")  # type: ignore[arg-type]
    with pytest.raises(metering.ValidationError, match="anonymous"):
        fastapi_integration.usage_limit("api_requests", anonymous="no")  # type: ignore[arg-type]


# -- Flask ---------------------------------------------------------------------------------------
def flask_app(policy: str, gate: str | None = None) -> Flask:
    app = Flask(__name__)
    flask_integration.Metering(app, resolver=resolver, anonymous=policy)  # type: ignore[arg-type]

    @app.post("/limited")
    @flask_integration.usage_limit("api_requests", anonymous=gate)  # type: ignore[arg-type]
    def limited() -> dict[str, bool]:
        return {"ok": True}

    @app.post("/inside")
    def inside() -> dict[str, Any]:
        return {"tokens": metering.with_usage_limit("ai_tokens", lambda: 3)}

    return app


def test_flask_policies() -> None:
    assert flask_app("allow").test_client().post("/limited").status_code == 200
    assert untracked() == 0
    denied = flask_app("deny").test_client().post("/limited")
    assert denied.status_code == 401
    assert denied.get_json()["error"] == "Authentication required"
    assert flask_app("deny").test_client().post("/limited", headers=ORG).status_code == 200
    assert flask_app("allow", gate="deny").test_client().post("/limited").status_code == 401
    assert flask_app("deny", gate="allow").test_client().post("/limited").status_code == 200


def test_flask_a_call_needing_the_customer_answers_401_not_500() -> None:
    client = flask_app("allow").test_client()
    response = client.post("/inside")
    assert response.status_code == 401
    assert "current customer" in response.get_json()["detail"]
    assert client.post("/inside", headers=ORG).get_json() == {"tokens": 3}
