"""The dashboard's HTTP contract without a browser: login, 401, CSRF, actions off by default, the
host's own auth, mounting under a path, live polling, tokens kept out of logs and reprs, and the
rankings read from the rollups on SQLite and PostgreSQL."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from polar_metering import ConfigurationError, Metering
from polar_metering.dashboard import create_app
from polar_metering.dashboard._auth import COOKIE, TokenLogin
from polar_metering.dashboard._source import EngineSource

from .conftest import PLANS, TOKEN, seed, serve


@pytest.fixture
def served(engine_client: Metering) -> Iterator[str]:
    with serve(create_app(engine_client, token=TOKEN, allow_actions=True)) as url:
        yield url


def _login(url: str) -> httpx.Client:
    http = httpx.Client(base_url=url, follow_redirects=False, timeout=30)
    answer = http.get(f"/?token={TOKEN}")
    assert answer.status_code == 303
    return http


def test_token_redirect_keeps_other_parameters_and_sets_the_cookie(served: str) -> None:
    with httpx.Client(base_url=served, timeout=30) as http:
        answer = http.get(f"/customers/org_002?interval=week&token={TOKEN}", follow_redirects=False)
        assert answer.status_code == 303
        assert answer.headers["location"] == "/customers/org_002?interval=week"
        cookie = answer.headers["set-cookie"]
        assert cookie.startswith(f"{COOKIE}=") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert TOKEN not in cookie
        page = http.get("/customers/org_002?interval=week")
        assert page.status_code == 200 and "org_002" in page.text
        assert TOKEN not in page.text


def test_401_without_credentials_and_never_echoes_a_token(served: str) -> None:
    with httpx.Client(base_url=served, timeout=30) as http:
        for path in ("/", "/meters", "/customers/org_001", "/delivery"):
            answer = http.get(path)
            assert answer.status_code == 401 and "org_001" not in answer.text
        bad = http.get("/?token=not-the-token-but-long-enough")
        assert bad.status_code == 401 and "not-the-token" not in bad.text
        forged = http.get("/", headers={"Cookie": f"{COOKIE}={'0' * 64}"})
        assert forged.status_code == 401
        assert http.get("/", headers={"Authorization": f"token {TOKEN}"}).status_code == 200
        assert http.get("/", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert http.get("/static/app.css").status_code == 200  # the login page's own assets


def test_actions_need_allow_actions_and_a_csrf_token(engine_client: Metering, served: str) -> None:
    http = _login(served)
    page = http.get("/customers/org_001").text
    csrf = re.search(r'name="csrf" value="([^"]+)"', page)
    assert csrf is not None
    form = {"customer": "org_001", "meter": "api_requests", "units": "50"}
    before = engine_client.check_limit("org_001", "api_requests").limit
    assert http.post("/actions/grant", data=form).status_code == 403  # no token
    assert http.post("/actions/grant", data={**form, "csrf": "x" * 64}).status_code == 403
    cross = http.post(
        "/actions/grant", data={**form, "csrf": csrf.group(1)}, headers={"Origin": "http://evil.test"}
    )
    assert cross.status_code == 403
    assert engine_client.check_limit("org_001", "api_requests").limit == before
    done = http.post("/actions/grant", data={**form, "csrf": csrf.group(1)})
    assert done.status_code == 303
    assert engine_client.check_limit("org_001", "api_requests").limit == (before or 0) + 50
    bad = http.post("/actions/grant", data={**form, "units": "nan", "csrf": csrf.group(1)})
    assert bad.status_code == 400 and "units" in bad.text
    unknown = http.post("/actions/grant", data={**form, "meter": "nope", "csrf": csrf.group(1)})
    assert unknown.status_code == 400 and "meter" in unknown.text
    http.close()


def test_read_only_by_default(engine_client: Metering) -> None:
    with serve(create_app(engine_client, token=TOKEN)) as url:
        http = _login(url)
        page = http.get("/customers/org_001").text
        assert "actions/grant" not in page
        csrf = re.search(r'name="csrf" value="([^"]+)"', page)
        assert csrf is None
        refused = http.post(
            "/actions/grant", data={"customer": "org_001", "meter": "api_requests", "units": "5"}
        )
        assert refused.status_code == 403 and "--allow-actions" in refused.text
        assert http.post("/actions/retry", data={}).status_code == 403
        http.close()


def test_live_poll_answers_204_until_usage_changes(engine_client: Metering, served: str) -> None:
    http = _login(served)
    # The marker also carries a 15 s time slot (pages refresh now and then on their own); a slow
    # machine can cross a slot boundary between two requests, so take a fresh marker then.
    for _ in range(3):
        marker = http.get("/customers/org_004").headers["x-dashboard-marker"]
        assert marker
        unchanged = http.get("/customers/org_004", headers={"X-Dashboard-Live": marker}).status_code
        if unchanged == 204:
            break
    assert unchanged == 204
    engine_client.track_api_request("org_004", "/new")
    fresh = http.get("/customers/org_004", headers={"X-Dashboard-Live": marker})
    assert fresh.status_code == 200 and fresh.headers["x-dashboard-marker"] != marker
    assert "<html" not in fresh.text and "meter-card" in fresh.text  # the live region only
    http.close()


def test_host_auth_mounted_under_a_path(engine_client: Metering) -> None:
    """``auth=`` lets the host decide; mounted at /admin/usage, links and assets stay under it."""
    calls: list[str] = []

    async def staff_only(request: Any) -> bool:
        calls.append(request.url.path)
        return request.headers.get("x-staff") == "yes"

    host = Starlette(routes=[Mount("/admin/usage", app=create_app(engine_client, auth=staff_only))])
    with serve(host) as url, httpx.Client(base_url=url, timeout=30) as http:
        assert http.get("/admin/usage/").status_code == 401
        page = http.get("/admin/usage/", headers={"x-staff": "yes"})
        assert page.status_code == 200
        assert 'href="/admin/usage/customers/org_001"' in page.text
        assert 'src="/admin/usage/static/app.js"' in page.text
        assert http.get("/admin/usage/static/app.js").status_code == 200
        assert (
            http.get("/admin/usage/?token=whatever-token-value", headers={"x-staff": "no"}).status_code == 401
        )
        assert "/admin/usage/" in calls


def test_create_app_arguments_are_checked(engine_client: Metering) -> None:
    with pytest.raises(ConfigurationError, match="exactly one"):
        create_app(engine_client)
    with pytest.raises(ConfigurationError, match="exactly one"):
        create_app(engine_client, token=TOKEN, auth=lambda r: True)
    with pytest.raises(ConfigurationError, match="at least 16"):
        create_app(engine_client, token="short")
    with pytest.raises(ConfigurationError, match="callable"):
        create_app(engine_client, auth="yes")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="client"):
        create_app(object(), token=TOKEN)  # type: ignore[arg-type]
    assert TOKEN not in repr(TokenLogin(TOKEN))


def test_access_log_has_paths_without_query_strings(served: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="polar_metering.dashboard.access"):
        http = _login(served)
        http.get("/?q=org_00&page=1")
        http.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "polar_metering.dashboard.access"]
    assert any('"GET /" 303' in line for line in lines) and any('"GET /" 200' in line for line in lines)
    assert all(TOKEN not in line and "?" not in line for line in lines)


def test_bad_query_parameters_are_400(served: str) -> None:
    http = _login(served)
    assert http.get("/?page=abc").status_code == 400
    assert http.get("/?page=0").status_code == 400
    assert http.get("/customers/org_001?interval=minute").status_code == 400
    assert http.get("/customers/nobody-here").status_code == 404
    http.close()


def _ranking_matches_readings(client: Metering) -> None:
    source = EngineSource(client)
    view = source.overview(per_page=100)
    assert view.customers == 13 and view.total == 13
    for row in view.rows:
        for use in row.uses:
            status = client.check_limit(row.customer, use.slug)
            assert (use.status.current, use.status.limit, use.status.remaining) == (
                status.current,
                status.limit,
                status.remaining,
            )
    worst = [max((u.ratio for u in r.uses if u.ratio is not None), default=-1.0) for r in view.rows]
    assert worst == sorted(worst, reverse=True)
    searched = source.overview(search="ORG_01")
    assert [r.customer for r in searched.rows] == sorted(
        [r.customer for r in searched.rows],
        key=lambda c: (
            -max(
                (u.ratio for u in next(x for x in view.rows if x.customer == c).uses if u.ratio is not None),
                default=-1.0,
            )
        ),
    )
    assert {r.customer for r in searched.rows} == {"org_010", "org_011"}
    paged = source.overview(page=2, per_page=5)
    assert paged.page == 2 and paged.pages == 3
    assert [r.customer for r in paged.rows] == [r.customer for r in view.rows[5:10]]
    totals = {t.slug: t for t in source.meter_totals()}
    expected = sum(client.check_limit(r.customer, "api_requests").current for r in view.rows)
    assert totals["api_requests"].current_total == expected


def test_rankings_and_totals_on_sqlite(engine_client: Metering) -> None:
    _ranking_matches_readings(engine_client)


@pytest.mark.postgresql
def test_rankings_and_totals_on_postgresql(postgresql_url: str) -> None:
    with Metering(postgresql_url, plans=PLANS) as client:
        seed(client)
        _ranking_matches_readings(client)
