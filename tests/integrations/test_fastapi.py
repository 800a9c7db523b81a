"""The FastAPI integration, driven through examples/fastapi_app.py with httpx on the ASGI app."""

from __future__ import annotations

import asyncio
import math
import runpy
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from fastapi import Depends, FastAPI

import polar_metering as metering
from polar_metering import (
    DEFAULT_METERS,
    Aggregation,
    AsyncMetering,
    ConfigurationError,
    Filter,
    ManualClock,
    Meter,
    Metering,
    Plan,
    ValidationError,
)
from polar_metering.integrations.fastapi import install, metering_lifespan, usage_limit, usage_reservation

from .conftest import import_error_without, load_example

T = TypeVar("T")
ORG = {"X-Org-Id": "org_1"}
example = load_example("fastapi_app.py", "fastapi_example_app")


def run(make: Callable[[httpx.AsyncClient], Awaitable[T]], app: FastAPI) -> T:
    async def main() -> T:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return await make(client)

    return asyncio.run(main())


@pytest.fixture
def app(sqlite_url: str, clock: ManualClock) -> FastAPI:
    built: FastAPI = example.create_app(sqlite_url, clock=clock)
    return built


def used(customer: str, meter: str = "api_requests") -> float:
    metering.flush()
    return metering.check_limit(customer, meter).current


def test_allowed_requests_pass_and_are_tracked_until_the_limit_answers_429(
    app: FastAPI, clock: ManualClock
) -> None:
    async def scenario(client: httpx.AsyncClient) -> list[httpx.Response]:
        assert (await client.post("/signup", headers=ORG)).status_code == 200
        return [await client.post("/api/process", headers=ORG) for _ in range(6)]

    responses = run(scenario, app)

    assert [r.status_code for r in responses] == [200] * 5 + [429]
    assert all(r.json() == {"success": True, "customer": "org_1"} for r in responses[:5])
    # The five served requests were tracked; the refusal was not (signup is excluded).
    assert used("org_1") == 5
    refused = responses[5]
    status = metering.check_limit("org_1", "api_requests")
    assert refused.json() == {"error": "Usage limit exceeded", **status.to_dict()}
    assert refused.json()["reason"] == "Usage limit reached: 5/5 units used"
    assert refused.headers["RateLimit-Limit"] == "5"
    assert refused.headers["RateLimit-Remaining"] == "0"
    assert status.period_end is not None
    assert status.period_end > clock.now()
    assert refused.headers["Retry-After"] == str(math.ceil((status.period_end - clock.now()).total_seconds()))


def test_retry_after_counts_whole_seconds_to_the_period_end_on_the_client_clock(
    app: FastAPI, clock: ManualClock
) -> None:
    metering.subscribe("org_1", "free", started_at=datetime.fromisoformat("2026-01-01T00:00:00+00:00"))
    metering.track_usage_batch([{"customer_id": "org_1", "event_name": "api.request"}] * 5)
    clock.set(datetime.fromisoformat("2026-01-31T23:59:58.250+00:00"))

    refused = run(lambda client: client.post("/api/process", headers=ORG), app)

    assert refused.status_code == 429
    assert refused.json()["period_end"] == "2026-02-01T00:00:00+00:00"
    assert refused.headers["Retry-After"] == "2"  # 1.75 s rounded up: a client is never early


def test_the_customer_comes_from_the_resolver_and_anonymous_requests_are_not_metered(app: FastAPI) -> None:
    async def scenario(client: httpx.AsyncClient) -> list[Any]:
        return [
            (await client.post("/api/process", headers={"X-Org-Id": "org_9", "X-User-Id": "u_1"})).json(),
            (await client.post("/api/process", headers={"X-User-Id": "u_1"})).json(),
            (await client.post("/api/process")).json(),
        ]

    bodies = run(scenario, app)

    assert [b["customer"] for b in bodies] == ["org_9", "u_1", None]
    assert used("org_9") == 1
    assert used("u_1") == 1


def test_tracked_requests_carry_route_template_method_status_and_duration(
    sqlite_url: str, clock: ManualClock
) -> None:
    # Meters over the event's metadata read back exactly what the middleware recorded (Polar filter
    # semantics, server/polar/meter/filter.py), so the check goes through the library rather than around it.
    probes = [
        Meter(
            "item_reads",
            "Item reads",
            Filter.event("api.request", endpoint="/items/{item_id}", method="GET"),
            Aggregation.count(),
        ),
        Meter(
            "item_misses", "Item misses", Filter.event("api.request", status_code=404), Aggregation.count()
        ),
        Meter("slowest_call", "Slowest call", Filter.event("api.request"), Aggregation.max("duration_ms")),
    ]
    app: FastAPI = example.create_app(sqlite_url, clock=clock, meters=[*DEFAULT_METERS, *probes])

    @app.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        if item_id > 100:
            from fastapi import HTTPException

            raise HTTPException(404)
        return {"id": item_id}

    async def scenario(client: httpx.AsyncClient) -> None:
        for item_id in (1, 2, 3, 404):
            await client.get(f"/items/{item_id}", headers=ORG)

    run(scenario, app)

    assert used("org_1", "item_reads") == 4
    assert used("org_1", "item_misses") == 1
    assert used("org_1", "slowest_call") >= 0
    assert used("org_1", "api_requests") == 4


def test_concurrent_requests_for_different_customers_never_mix(app: FastAPI) -> None:
    arrived = asyncio.Barrier(20)

    @app.get("/whoami")
    async def whoami() -> dict[str, Any]:
        before = metering.get_current_customer()
        # Every request waits here until all twenty are in flight, so their contexts overlap.
        async with asyncio.timeout(10):
            await arrived.wait()
        status = await metering.aio.check_current_limit("api_requests")
        return {
            "before": before,
            "after": metering.get_current_customer(),
            "status_customer": status.customer,
        }

    @app.get("/whoami-sync")
    def whoami_sync() -> dict[str, Any]:
        return {"after": metering.get_current_customer()}

    async def scenario(client: httpx.AsyncClient) -> list[httpx.Response]:
        return await asyncio.gather(
            *(client.get("/whoami", headers={"X-Org-Id": f"org_{i}"}) for i in range(20)),
        )

    responses = run(scenario, app)

    for i, response in enumerate(responses):
        assert response.json() == {"before": f"org_{i}", "after": f"org_{i}", "status_customer": f"org_{i}"}
    assert all(used(f"org_{i}") == 1 for i in range(20))
    # A sync endpoint runs on a worker thread and still sees its own request's customer.
    sync_bodies = run(
        lambda client: asyncio.gather(
            *(client.get("/whoami-sync", headers={"X-User-Id": f"u_{i}"}) for i in range(8))
        ),
        app,
    )
    assert [r.json()["after"] for r in sync_bodies] == [f"u_{i}" for i in range(8)]
    assert metering.get_current_customer() is None


def test_reservation_dependency_commits_actual_usage_and_refuses_when_no_room(app: FastAPI) -> None:
    prompt = {"prompt": "word " * 30}  # 300 tokens per call against 2000 credits, 500 held each time

    async def scenario(client: httpx.AsyncClient) -> list[httpx.Response]:
        await client.post("/signup", headers={"X-User-Id": "u_1"})
        return [
            await client.post("/api/generate", json=prompt, headers={"X-User-Id": "u_1"}) for _ in range(7)
        ]

    responses = run(scenario, app)

    assert [r.status_code for r in responses] == [200] * 6 + [429]
    assert used("u_1", "ai_tokens") == 1800
    refused = responses[6].json()
    assert refused["error"] == "Usage limit exceeded"
    assert refused["meter"] == "ai_tokens"
    assert refused["remaining"] == 200
    # Nothing stays held once the requests are over.
    assert metering.check_limit("u_1", "ai_tokens").reserved == 0


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_dependency_and_middleware_work_with_an_explicit_sync_or_async_client(
    tmp_path: Path, kind: str
) -> None:
    url = f"sqlite:///{tmp_path / 'own.db'}"
    plans = [Plan("tiny", credits={"api_requests": 2})]
    client: Metering | AsyncMetering = (
        Metering(url, plans=plans) if kind == "sync" else AsyncMetering(url, plans=plans)
    )
    sync = client if isinstance(client, Metering) else client.sync
    sync.subscribe("org_1", "tiny")
    app = FastAPI(lifespan=metering_lifespan(client))
    install(app, resolver=lambda request: request.headers.get("x-org-id"), client=client)

    @app.get("/limited", dependencies=[Depends(usage_limit("api_requests", client=client))])
    async def limited() -> dict[str, bool]:
        return {"ok": True}

    async def scenario(http: httpx.AsyncClient) -> list[int]:
        async with app.router.lifespan_context(app):
            return [(await http.get("/limited", headers=ORG)).status_code for _ in range(3)]

    assert run(scenario, app) == [200, 200, 429]
    # The lifespan closed the client; its events are in the file for the next one to read.
    with pytest.raises(ConfigurationError):
        metering.get_client()
    with Metering(url, plans=plans) as reopened:
        assert reopened.check_limit("org_1", "api_requests").current == 2


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_reservation_with_an_explicit_sync_or_async_client(tmp_path: Path, kind: str) -> None:
    url = f"sqlite:///{tmp_path / 'own.db'}"
    plans = [Plan("tiny", credits={"ai_tokens": 1000})]
    client: Metering | AsyncMetering = (
        Metering(url, plans=plans) if kind == "sync" else AsyncMetering(url, plans=plans)
    )
    sync = client if isinstance(client, Metering) else client.sync
    sync.subscribe("u_1", "tiny")
    app = FastAPI()
    install(app, resolver=lambda request: request.headers.get("x-user-id"), client=client)
    # A local alias would not resolve under `from __future__ import annotations`, hence the default.
    hold = Depends(usage_reservation("ai_tokens", 400, client=client))

    if kind == "sync":

        @app.post("/generate")
        def generate_sync(held: Any = hold) -> dict[str, float]:
            held.commit(300)
            return {"held": held.amount}

    else:

        @app.post("/generate")
        async def generate(held: Any = hold) -> dict[str, float]:
            await held.commit(300)
            return {"held": held.amount}

    async def scenario(http: httpx.AsyncClient) -> list[int]:
        return [(await http.post("/generate", headers={"X-User-Id": "u_1"})).status_code for _ in range(4)]

    # 300 used per call with 400 held: after three calls 100 are left, too few to hold 400.
    assert run(scenario, app) == [200, 200, 200, 429]
    status = sync.check_limit("u_1", "ai_tokens")
    assert status.current == 900
    assert status.reserved == 0
    sync.close()


def test_lifespan_closes_the_default_client_and_keeps_what_was_tracked(
    app: FastAPI, sqlite_url: str, clock: ManualClock
) -> None:
    async def scenario(client: httpx.AsyncClient) -> int:
        async with app.router.lifespan_context(app):
            await client.post("/signup", headers=ORG)
            return (await client.post("/api/process", headers=ORG)).status_code

    assert run(scenario, app) == 200
    with pytest.raises(ConfigurationError):
        metering.get_client()
    with Metering(sqlite_url, clock=clock) as reopened:
        assert reopened.check_limit("org_1", "api_requests").current == 1


def test_lifespan_runs_the_apps_own_lifespan_inside(sqlite_url: str) -> None:
    metering.init(sqlite_url)
    seen: list[str] = []

    @asynccontextmanager
    async def own(app: FastAPI) -> AsyncIterator[dict[str, str]]:
        seen.append("start")
        yield {"greeting": "hello"}
        seen.append("stop")

    app = FastAPI(lifespan=metering_lifespan(lifespan=own))

    async def scenario(client: httpx.AsyncClient) -> None:
        async with app.router.lifespan_context(app) as state:
            assert state == {"greeting": "hello"}

    run(scenario, app)
    assert seen == ["start", "stop"]
    with pytest.raises(ConfigurationError):
        metering.get_client()


def test_limit_exceeded_raised_inside_an_endpoint_becomes_429(app: FastAPI) -> None:
    @app.post("/api/summarize")
    async def summarize() -> dict[str, int]:
        return await metering.aio.with_usage_limit("ai_tokens", lambda: {"tokens": 1}, amount=5000)

    async def scenario(client: httpx.AsyncClient) -> httpx.Response:
        await client.post("/signup", headers=ORG)
        return await client.post("/api/summarize", headers=ORG)

    refused = run(scenario, app)

    assert refused.status_code == 429
    assert refused.json()["meter"] == "ai_tokens"
    assert refused.headers["RateLimit-Limit"] == "2000"
    assert used("org_1") == 0  # a refused request is not metered


def test_the_dependency_without_a_resolver_on_the_app_is_a_configuration_error(sqlite_url: str) -> None:
    metering.init(sqlite_url)
    app = FastAPI()

    @app.get("/", dependencies=[Depends(usage_limit("api_requests"))])
    async def index() -> dict[str, bool]:
        return {"ok": True}

    with pytest.raises(ConfigurationError, match="install"):
        run(lambda client: client.get("/"), app)


def test_inputs_are_validated_with_the_field_named(sqlite_url: str) -> None:
    with pytest.raises(ValidationError) as meter_error:
        usage_limit("")
    assert meter_error.value.field == "meter"
    with pytest.raises(ValidationError) as amount_error:
        usage_reservation("ai_tokens", 0)
    assert amount_error.value.field == "amount"
    with pytest.raises(ValidationError) as paths_error:
        install(FastAPI(), resolver=lambda request: None, exclude_paths="/health")
    assert paths_error.value.field == "exclude_paths"

    metering.init(sqlite_url)
    app = FastAPI()
    install(app, resolver=lambda request: 42)  # type: ignore[arg-type, return-value]
    with pytest.raises(ValidationError) as resolver_error:
        run(lambda client: client.get("/"), app)
    assert resolver_error.value.field == "resolver"


def test_async_resolvers_are_awaited(sqlite_url: str) -> None:
    metering.init(sqlite_url)
    app = FastAPI()

    async def resolver(request: Any) -> str | None:
        await asyncio.sleep(0)
        return str(request.query_params.get("org"))

    install(app, resolver=resolver)

    @app.get("/")
    async def index() -> dict[str, Any]:
        return {"customer": metering.get_current_customer()}

    assert run(lambda client: client.get("/?org=org_5"), app).json() == {"customer": "org_5"}
    assert used("org_5") == 1


def test_readme_snippet_runs_and_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    snippet = Path(__file__).resolve().parents[2] / "docs" / "readme_fastapi_snippet.py"
    assert len(snippet.read_text().splitlines()) < 15
    monkeypatch.setenv("METERING_URL", f"sqlite:///{tmp_path / 'readme.db'}")
    app = runpy.run_path(str(snippet))["app"]
    metering.subscribe("org_1", "free")
    metering.track_usage_batch([{"customer_id": "org_1", "event_name": "api.request"}] * 999)

    async def scenario(client: httpx.AsyncClient) -> list[httpx.Response]:
        return [await client.post("/api/process", headers=ORG) for _ in range(2)]

    allowed, refused = run(scenario, app)

    assert allowed.json() == {"success": True}
    assert refused.status_code == 429
    assert refused.json()["reason"] == "Usage limit reached: 1000/1000 units used"


def test_import_without_fastapi_names_the_extra() -> None:
    message = import_error_without("starlette", "polar_metering.integrations.fastapi")
    assert "install polar-metering[fastapi]" in message
