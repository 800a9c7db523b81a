"""The dashboard in real headless Chromium: login, 401, numbers equal to check_limit, charts drawn,
live updates from another process, and the delivery page on the emulator. Each test saves
screenshots of the pages it visits under its tmp dir."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from polar_metering import Metering
from polar_metering.dashboard import create_app
from polar_metering.dashboard._auth import COOKIE

from .conftest import PLANS, TOKEN, screenshot, serve

pytestmark = pytest.mark.slow


def _overview_cells(page: Any) -> dict[str, dict[str, tuple[float, float | None]]]:
    """``{customer: {meter: (current, limit)}}`` as the overview table shows them."""
    rows = page.eval_on_selector_all(
        "#overview-table tbody tr[data-customer]",
        """rows => rows.map(r => [r.dataset.customer, [...r.querySelectorAll('td.meter')].map(
            td => [td.dataset.meter, td.dataset.current, td.dataset.limit])])""",
    )
    return {
        c: {m: (float(cur), float(lim) if lim != "" else None) for m, cur, lim in cells} for c, cells in rows
    }


def test_login_sets_a_strict_httponly_cookie_and_drops_the_token(
    engine_client: Metering, page_factory: Callable[[], Any], tmp_path: Path
) -> None:
    """``/?token=T`` logs in once: the address loses the token, the cookie is HttpOnly and
    SameSite=Strict, and later pages need nothing else."""
    with serve(create_app(engine_client, token=TOKEN)) as url:
        page = page_factory()
        response = page.goto(f"{url}/?token={TOKEN}&q=org")
        assert response is not None and response.status == 200
        assert page.url == f"{url}/?q=org"
        assert TOKEN not in page.url and TOKEN not in page.content()
        (cookie,) = [c for c in page.context.cookies() if c["name"] == COOKIE]
        assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
        assert cookie["value"] != TOKEN and TOKEN not in cookie["value"]
        assert page.evaluate("document.cookie") == ""  # HttpOnly: scripts cannot read it
        assert page.locator("h1").inner_text() == "Customers"
        assert page.goto(f"{url}/meters").status == 200  # type: ignore[union-attr]
        screenshot(page, tmp_path, "after-login-meters")


def test_without_token_or_cookie_every_page_is_401_and_shows_no_customer(
    engine_client: Metering, page_factory: Callable[[], Any], tmp_path: Path
) -> None:
    with serve(create_app(engine_client, token=TOKEN)) as url:
        page = page_factory()
        for path in ("/", "/customers/org_001", "/meters", "/delivery", "/?token=wrong-token-xxxxxxxxxxxx"):
            response = page.goto(url + path)
            assert response is not None and response.status == 401, path
            body = page.content()
            assert "org_001" not in body and "walk_in" not in body
            assert "wrong-token" not in body  # a rejected token is never echoed
        assert page.context.cookies() == []
        screenshot(page, tmp_path, "401")


def test_overview_and_customer_page_numbers_equal_check_limit(
    engine_client: Metering, page_factory: Callable[[], Any], tmp_path: Path
) -> None:
    """Every number the overview and a customer page show is what check_limit answers; customers
    at or over a limit come first, then those near it."""
    with serve(create_app(engine_client, token=TOKEN)) as url:
        page = page_factory()
        page.goto(f"{url}/?token={TOKEN}")
        shown = _overview_cells(page)
        screenshot(page, tmp_path, "overview")
        assert len(shown) == 13  # 12 subscribed customers and one without a plan, on one page
        for customer, cells in shown.items():
            for meter, (current, limit) in cells.items():
                status = engine_client.check_limit(customer, meter)
                assert (current, limit) == (status.current, status.limit), (customer, meter)
        order = list(shown)
        levels = [page.get_attribute(f"tr[data-customer='{c}']", "class") for c in order]
        rank = {"level-over": 0, "level-near": 1, "level-ok": 2, "level-none": 3}
        assert [rank[lv or ""] for lv in levels] == sorted(rank[lv or ""] for lv in levels)
        assert levels[0] == "level-over" and "level-near" in levels
        assert order[-1] == "walk_in"  # no limit: last

        page.click("a[href$='/customers/org_010']")
        page.wait_for_selector("article.meter-card")
        screenshot(page, tmp_path, "customer")
        statuses = engine_client.get_all_usage("org_010")
        for meter, status in statuses.items():
            card = page.locator(f"article.meter-card[data-meter='{meter}']")
            assert card.locator("[data-field=current]").inner_text().replace(",", "") == _fmt(status.current)
            assert card.locator("[data-field=limit]").inner_text().replace(",", "") == _fmt(status.limit)
            assert card.locator("[data-field=remaining]").inner_text().replace(",", "") == _fmt(
                status.remaining
            )
            assert status.period_start is not None and status.period_end is not None
            period = card.locator(".period").inner_text()
            assert status.period_start.strftime("%d %b %Y %H:%M") in period
            assert status.period_end.strftime("%d %b %Y %H:%M") in period
        events = page.locator("#events-table tbody tr")
        assert events.count() > 0 and "ai.tokens" in page.locator("#events-table").inner_text()
        assert "gpt-4o" in page.locator("#events-table").inner_text()  # metadata shown


def _fmt(value: float | None) -> str:
    assert value is not None
    return str(int(value)) if value == int(value) else f"{value:.2f}"


def test_customer_chart_is_drawn_with_limit_and_period_for_each_interval(
    engine_client: Metering, page_factory: Callable[[], Any], tmp_path: Path
) -> None:
    """Each meter card gets a uPlot canvas with pixels on it, for every interval; a reservation
    shows under active reservations."""
    hold = engine_client.reserve("org_005", "ai_tokens", 250)
    try:
        with serve(create_app(engine_client, token=TOKEN)) as url:
            page = page_factory()
            page.goto(f"{url}/?token={TOKEN}")
            for interval in ("hour", "day", "week", "month"):
                page.goto(f"{url}/customers/org_005?interval={interval}")
                page.wait_for_selector(".chart canvas")
                drawn = page.evaluate(
                    """() => [...document.querySelectorAll('.chart canvas')].map(c => {
                        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
                        let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n; })"""
                )
                assert len(drawn) == 4 and all(n > 500 for n in drawn), (interval, drawn)
                data = json.loads(page.locator("#chart-data").inner_text())
                api = next(c for c in data if c["slug"] == "api_requests")
                status = engine_client.check_limit("org_005", "api_requests")
                assert status.limit == 100 and status.period_start is not None
                assert api["limit"] == status.limit
                assert api["periodStart"] == status.period_start.timestamp()
                assert "period boundary" in page.locator(".chart-legend").first.inner_text()
                screenshot(page, tmp_path, f"customer-{interval}")
            assert "ai_tokens" in page.locator("#holds-table").inner_text()
            assert "250" in page.locator("#holds-table").inner_text()
            assert page.js_errors == []
    finally:
        hold.release()


def test_pages_update_by_themselves_after_a_track_from_another_process(
    engine_client: Metering, sqlite_url: str, page_factory: Callable[[], Any], tmp_path: Path
) -> None:
    """Another process tracks into the same SQLite file; the open overview and customer page show
    the new numbers without reloading (the page's own JavaScript state survives)."""
    with serve(create_app(engine_client, token=TOKEN)) as url:
        overview = page_factory()
        overview.goto(f"{url}/?token={TOKEN}&q=org_003")
        customer = page_factory()
        customer.context.add_cookies(overview.context.cookies())
        customer.goto(f"{url}/customers/org_003")
        before = engine_client.check_limit("org_003", "api_requests").current
        for p in (overview, customer):
            p.evaluate("window.__notReloaded = true")
        code = textwrap.dedent(
            f"""
            from polar_metering import Metering
            with Metering({sqlite_url!r}) as c:
                r = c.track_usage_batch([{{"customer_id": "org_003", "event_name": "api.request",
                                           "metadata": {{"endpoint": "/from-elsewhere"}}}}] * 7)
                assert r.success and r.inserted == 7
            """
        )
        subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
        after = before + 7
        overview.wait_for_function(
            "v => document.querySelector(\"td.meter[data-meter='api_requests']\").dataset.current == v",
            arg=str(after),
            timeout=10_000,
        )
        customer.wait_for_function(
            "v => document.querySelector(\"article[data-meter='api_requests'] [data-field=current]\")"
            ".innerText.replace(/,/g, '') == v",
            arg=str(int(after)),
            timeout=10_000,
        )
        assert "/from-elsewhere" in customer.locator("#events-table").inner_text()
        for p in (overview, customer):
            assert p.evaluate("window.__notReloaded") is True
        assert engine_client.check_limit("org_003", "api_requests").current == after
        screenshot(overview, tmp_path, "overview-live")
        screenshot(customer, tmp_path, "customer-live")


def test_grant_credits_needs_allow_actions_and_csrf(
    engine_client: Metering, page_factory: Callable[[], Any], tmp_path: Path
) -> None:
    """With --allow-actions the customer page grants credits on the engine through a CSRF-protected
    form; the new limit is what check_limit then answers. Read-only apps show no form."""
    with serve(create_app(engine_client, token=TOKEN)) as url:
        page = page_factory()
        page.goto(f"{url}/?token={TOKEN}")
        page.goto(f"{url}/customers/org_001")
        assert page.locator("form.grant").count() == 0
    before = engine_client.check_limit("org_001", "ai_tokens").limit
    assert before is not None
    with serve(create_app(engine_client, token=TOKEN, allow_actions=True)) as url:
        page = page_factory()
        page.goto(f"{url}/?token={TOKEN}")
        page.goto(f"{url}/customers/org_001")
        page.select_option("form.grant select[name=meter]", "ai_tokens")
        page.fill("form.grant input[name=units]", "500")
        page.click("form.grant button")
        page.wait_for_selector(".notice.ok")
        screenshot(page, tmp_path, "granted")
        assert engine_client.check_limit("org_001", "ai_tokens").limit == before + 500
        limit_text = page.locator("article[data-meter='ai_tokens'] [data-field=limit]").inner_text()
        assert limit_text.replace(",", "") == str(int(before + 500))
        # The same form without its CSRF token is refused.
        status = page.evaluate(
            """async url => (await fetch(url + '/actions/grant', {method: 'POST',
                headers: {'Content-Type': 'application/x-www-form-urlencoded'},
                body: 'customer=org_001&meter=ai_tokens&units=5'})).status""",
            url,
        )
        assert status == 403
        assert engine_client.check_limit("org_001", "ai_tokens").limit == before + 500


def test_delivery_page_on_the_emulator_with_a_dead_letter_retried(
    page_factory: Callable[[], Any], tmp_path: Path
) -> None:
    """On polar:// (the emulator, through polar-sdk) the overview lists Polar's customer meters and
    the delivery page shows the outbox and a dead letter with Polar's reason; retrying it sends it."""
    from tests.delivery.delivery_helpers import ScriptedTransport, fast_config, make_events

    from polar_metering import RemoteValidationError
    from polar_metering.delivery import Outbox
    from polar_metering.emulator import AdminClient, running_emulator

    outbox_path = tmp_path / "outbox.db"
    refusal = RemoteValidationError(
        "refused",
        detail=[{"loc": ["body", "events", 0, "name"], "msg": "Event name is not allowed here", "type": "x"}],
    )
    seeded = Outbox(fast_config(outbox_path), ScriptedTransport([refusal]))
    seeded.enqueue(make_events(1, prefix="refused"))
    assert seeded.flush(10)
    seeded.close(timeout=1)

    with running_emulator() as emu:
        admin = AdminClient(emu.base_url, emu.token)
        admin.create_customer(external_id="acme", email="ops@acme.test")
        admin.grant("acme", "api_requests", 10)
        client = Metering(
            f"polar://?base_url={emu.base_url}",
            access_token=emu.token,
            outbox_path=str(outbox_path),
            cache_ttl=0,
        )
        try:
            client.track_usage_batch(
                [{"customer_id": "acme", "event_name": "api.request", "metadata": {"endpoint": "/e"}}] * 9
            )
            assert client.flush(20)
            with serve(create_app(client, token=TOKEN, allow_actions=True)) as url:
                page = page_factory()
                page.goto(f"{url}/delivery?token={TOKEN}")
                screenshot(page, tmp_path, "delivery")
                assert page.locator("[data-stat=dead]").inner_text() == "1"
                table = page.locator("#dead-table").inner_text()
                assert "refused-0" in table and "Event name is not allowed here" in table
                page.click("#dead-table form button")
                page.wait_for_selector(".notice.ok")
                assert client.flush(20)
                page.wait_for_function(
                    "() => document.querySelector('[data-stat=dead]').innerText == '0'", timeout=10_000
                )
                screenshot(page, tmp_path, "delivery-retried")
                assert client.backend.outbox.status().dead == 0

                page.goto(f"{url}/")
                page.wait_for_selector("tr[data-customer='acme']", timeout=15_000)
                cells = _overview_cells(page)
                status = client.check_limit("acme", "api_requests")
                assert cells["acme"]["api_requests"] == (status.current, status.limit) == (9.0, 10.0)
                screenshot(page, tmp_path, "polar-overview")
                page.goto(f"{url}/customers/acme")
                page.wait_for_selector(".chart canvas")
                assert (
                    page.locator("article[data-meter='api_requests'] [data-field=current]").inner_text()
                    == "9"
                )
                screenshot(page, tmp_path, "polar-customer")
                page.goto(f"{url}/meters")
                page.wait_for_selector(".chart canvas")
                screenshot(page, tmp_path, "polar-meters")
                assert page.js_errors == []
        finally:
            client.close(timeout=5)


def test_engine_pages_screenshots(
    engine_client: Metering, page_factory: Callable[[], Any], tmp_path: Path
) -> None:
    """Every page renders without script errors (screenshots kept for a look)."""
    with serve(create_app(engine_client, token=TOKEN)) as url:
        page = page_factory()
        page.goto(f"{url}/?token={TOKEN}")
        for name, path in (("overview", "/"), ("meters", "/meters"), ("delivery-engine", "/delivery")):
            page.goto(url + path)
            page.wait_for_load_state("networkidle")
            screenshot(page, tmp_path, f"page-{name}")
        assert page.locator(".chart canvas").count() == 0  # delivery page on the engine: no charts
        page.goto(url + "/meters")
        page.wait_for_selector(".chart canvas")
        assert page.locator(".chart canvas").count() == len(PLANS[0].credits)
        assert page.js_errors == []
