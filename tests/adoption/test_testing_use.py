"""``polar_metering.testing.use`` and the pytest plugin's fixtures: a test client installed as the
default client for one test, which the app's own ``init()``/``shutdown()`` leave in place."""

from __future__ import annotations

import pytest

import polar_metering as metering_module
from polar_metering import ConfigurationError, ManualClock, Metering, Plan
from polar_metering.testing import metering_for_tests, use


def test_use_installs_the_default_and_restores_the_previous_one() -> None:
    outer = metering_module.init("sqlite:///:memory:")
    client, _ = metering_for_tests()
    with use(client) as installed:
        assert installed is client
        assert metering_module.get_client() is client
        metering_module.track_usage("u", "api.request")
        assert client.check_limit("u", "api_requests").current == 1
        # An app configuring metering at startup gets the test client back, and shutting down only
        # flushes it.
        assert metering_module.init("postgresql://nowhere/db") is client
        metering_module.shutdown()
        assert metering_module.get_client() is client
        assert client.check_limit("u", "api_requests").current == 1
    assert metering_module.get_client() is outer
    assert outer.check_limit("u", "api_requests").current == 0
    client.close()


def test_use_without_a_previous_default() -> None:
    client, _ = metering_for_tests()
    handle = use(client.aio)  # the async twin installs the sync client it wraps
    assert metering_module.get_client() is client
    handle.restore()
    handle.restore()  # twice is harmless
    with pytest.raises(ConfigurationError):
        metering_module.get_client()
    client.close()


def test_use_refuses_what_is_not_a_client() -> None:
    with pytest.raises(metering_module.ValidationError):
        use("sqlite:///:memory:")  # type: ignore[arg-type]


def test_metering_for_tests_takes_a_catalog_file(tmp_path: pytest.TempPathFactory) -> None:
    path = tmp_path / "metering.toml"  # type: ignore[operator]
    path.write_text('[meters.gpu]\nname = "GPU minutes"\nevent = "gpu.run"\nfunc = "sum"\nproperty = "m"\n')
    client, _ = metering_for_tests(catalog=path)
    assert "gpu" in [m.slug for m in client.catalog.meters]
    client.close()


def test_plugin_fixtures(metering: Metering, metering_clock: ManualClock) -> None:
    assert metering_module.get_client() is metering
    metering.subscribe("org_1", Plan("free", credits={"api_requests": 2}))
    metering_module.track_api_request("org_1", "/x")
    assert metering.check_limit("org_1", "api_requests").remaining == 1
    metering_clock.advance(days=31)
    assert metering.check_limit("org_1", "api_requests").remaining == 2
    with pytest.raises(metering_module.ValidationError):
        metering_module.track_usage("org_1", "")  # strict: a bad event raises in tests


@pytest.mark.metering(plans=[Plan("pro", credits={"ai_tokens": 50})], start="2026-05-01T00:00:00+00:00")
def test_plugin_marker_passes_options(metering: Metering, metering_clock: ManualClock) -> None:
    metering.subscribe("org_1", "pro")
    assert metering.check_limit("org_1", "ai_tokens").limit == 50
    assert metering_clock.now().month == 5


def test_plugin_removes_the_client_after_the_test(metering: Metering) -> None:
    # The previous test's client is gone: this one is new and empty.
    assert metering.check_limit("org_1", "ai_tokens").limit is None
