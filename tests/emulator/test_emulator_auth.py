"""Bearer auth, transport errors and the rate limit of a real emulator process, after Polar's
``server/polar/exceptions.py`` (``Unauthorized``), ``server/polar/auth/dependencies.py`` and
``server/polar/rate_limit.py``."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from polar.base import PolarClientError, PolarRateLimitError
from polar.v2026_10 import Polar

from polar_metering.emulator import EmulatorHandle, running_emulator
from polar_metering.emulator._gate import RateLimiter


def test_missing_token_is_401_unauthorized(emulator: EmulatorHandle) -> None:
    response = httpx.get(f"{emulator.base_url}/v1/meters/")
    assert response.status_code == 401
    assert response.json() == {"error": "Unauthorized", "detail": "Unauthorized"}
    assert response.headers["www-authenticate"] == 'Bearer realm="polar"'
    basic = httpx.get(f"{emulator.base_url}/v1/meters/", headers={"Authorization": "Basic eDp5"})
    assert basic.status_code == 401


def test_wrong_token_is_401_invalid_token_through_the_sdk(emulator: EmulatorHandle) -> None:
    with (
        Polar("polar_oat_not-the-token", base_url=emulator.base_url) as polar,
        pytest.raises(PolarClientError) as exc,
    ):
        polar.meters.list()
    assert exc.value.status_code == 401
    assert '"error":"invalid_token"' in exc.value.error
    assert emulator.token not in exc.value.error


def test_admin_routes_need_the_token_but_health_does_not(emulator: EmulatorHandle) -> None:
    assert httpx.post(f"{emulator.base_url}/__emulator__/settle", json={}).status_code == 401
    health = httpx.get(f"{emulator.base_url}/__emulator__/health")
    assert health.status_code == 200
    assert health.json()["status"] == "ok"


def test_polar_version_header_is_ignored_and_unknown_paths_are_plain_404(emulator: EmulatorHandle) -> None:
    headers = {**emulator.headers, "Polar-Version": "1999-01"}
    assert httpx.get(f"{emulator.base_url}/v1/meters/", headers=headers).status_code == 200
    missing = httpx.get(f"{emulator.base_url}/v1/nothing-here", headers=emulator.headers)
    assert (missing.status_code, missing.json()) == (404, {"detail": "Not Found"})


@pytest.fixture(scope="module")
def limited() -> Iterator[EmulatorHandle]:
    with running_emulator(rate_limit_per_minute=3) as handle:
        yield handle


def test_rate_limit_is_per_token_with_retry_after_60(limited: EmulatorHandle) -> None:
    """A fixed 60 s window per token, then 429 with an empty body and ``Retry-After: 60``: the minute
    rules of server/polar/rate_limit.py (an unknown token counts under ``pending_auth``, keyed by its
    hash) on asgi-ratelimit's Redis backend; https://docs.polar.sh/api-reference/introduction."""
    url = f"{limited.base_url}/v1/meters/"
    stranger = {"Authorization": "Bearer someone-else"}
    assert [httpx.get(url, headers=stranger).status_code for _ in range(4)] == [401, 401, 401, 429]
    with Polar(limited.token, base_url=limited.base_url) as polar:
        for _ in range(3):  # the stranger's requests did not use this token's budget
            polar.meters.list()
        with pytest.raises(PolarRateLimitError) as exc:
            polar.meters.list()
    assert (exc.value.status_code, exc.value.retry_after) == (429, 60)
    raw = httpx.get(url, headers=limited.headers)
    assert (raw.status_code, raw.content, raw.headers["retry-after"]) == (429, b"", "60")
    # The admin surface is outside Polar's /v1 zone, so it stays usable.
    assert httpx.post(f"{limited.base_url}/__emulator__/settle", json={}, headers=limited.headers).is_success


def test_rate_limiter_window_restarts_after_60_seconds() -> None:
    now = [100.0]
    limiter = RateLimiter(2, clock=lambda: now[0])
    assert [limiter.allow("k") for _ in range(3)] == [True, True, False]
    assert limiter.allow("other")
    now[0] += 59.9
    assert not limiter.allow("k")
    now[0] += 0.1
    assert [limiter.allow("k") for _ in range(3)] == [True, True, False]
