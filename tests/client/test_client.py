"""The client shells: module-level API, async twins, configuration, tracking that never raises."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import polar_metering as metering
from polar_metering import (
    AsyncMetering,
    ConfigurationError,
    ManualClock,
    Metering,
    Plan,
    ReservationError,
    UsageLimitExceeded,
    ValidationError,
)
from polar_metering._config import build_config

PLANS = [Plan("free", credits={"api_requests": 3, "ai_tokens": 100, "team_seats": 2})]


def test_module_functions_need_init() -> None:
    """Before init() module functions explain what to do instead of failing obscurely."""
    with pytest.raises(ConfigurationError, match="init"):
        metering.track_usage("u", "api.request")


def test_module_api_end_to_end(sqlite_url: str) -> None:
    """init, subscribe, track, check, current customer and get_all_usage work as the seed describes."""
    metering.init(sqlite_url, plans=PLANS)
    metering.subscribe("user_1", "free")
    for _ in range(3):
        assert metering.track_api_request(
            "user_1", "/api/x", method="post", status_code=201, duration_ms=12.5
        ).success
    with metering.current_customer("user_1"):
        status = metering.check_current_limit("api_requests")
        usage = metering.get_all_usage()
    assert status.reason == "Usage limit reached: 3/3 units used"
    assert usage["api_requests"] == status
    assert metering.flush(5)


def test_init_replaces_and_closes_the_previous_client(tmp_path: Any) -> None:
    """A second init() closes the first client; shutdown() leaves no default client."""
    first = metering.init(f"sqlite:///{tmp_path / 'a.db'}")
    second = metering.init(f"sqlite:///{tmp_path / 'b.db'}")
    assert metering.get_client() is second and first is not second
    metering.shutdown()
    with pytest.raises(ConfigurationError):
        metering.get_client()


def test_environment_fallbacks_and_unknown_options(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """METERING_URL is read only when no URL is given; unknown options are refused by name."""
    monkeypatch.setenv("METERING_URL", f"sqlite:///{tmp_path / 'env.db'}")
    assert build_config().url.endswith("env.db")
    assert build_config("sqlite:///:memory:").url == "sqlite:///:memory:"
    with pytest.raises(ConfigurationError, match="cache_tll"):
        Metering("sqlite:///:memory:", cache_tll=5)
    with pytest.raises(ConfigurationError, match="reservation_ttl"):
        Metering("sqlite:///:memory:", reservation_ttl=-1)
    with pytest.raises(ConfigurationError, match="no backend for scheme 'mysql'"):
        Metering("mysql://localhost/db")


def test_token_never_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    """The access token is kept out of the config's repr."""
    config = build_config("sqlite:///:memory:", access_token="polar_oat_SECRET123")
    assert "SECRET123" not in repr(config)


def test_check_limit_validates_its_arguments() -> None:
    """Bad arguments to check_limit raise ValidationError naming the field and rule."""
    client = Metering("sqlite:///:memory:")
    with pytest.raises(ValidationError) as info:
        client.check_limit("", "api_requests")
    assert info.value.field == "customer_id"
    with pytest.raises(ValidationError) as info:
        client.check_limit("u", "no_such_meter")
    assert info.value.field == "meter" and "api_requests" in info.value.rule
    with pytest.raises(ValidationError) as info:
        client.check_limit("u", "api_requests", amount=float("nan"))
    assert (info.value.field, info.value.rule) == ("amount", "must be finite")
    with pytest.raises(ConfigurationError, match="current customer"):
        client.check_current_limit("api_requests")
    client.close()


def test_strict_mode_raises_instead_of_reporting() -> None:
    """With strict=True a bad event raises; by default it is reported in the result."""
    lenient = Metering("sqlite:///:memory:")
    result = lenient.track_ai_tokens("u", 1.5)
    assert not result.success and result.error == "tokens: must be a whole number"
    strict = Metering("sqlite:///:memory:", strict=True)
    with pytest.raises(ValidationError, match="tokens"):
        strict.track_ai_tokens("u", -1)
    lenient.close()
    strict.close()


def _break_database(client: Metering, directory: Any) -> None:
    """Remove the database's directory under a running client: the next connection cannot open it."""
    import shutil

    client.backend.db.engine.dispose()  # type: ignore[attr-defined]
    shutil.rmtree(directory)


def test_tracking_survives_a_broken_backend(tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    """A backend failure becomes success=False with the reason, never an exception in the caller."""
    (tmp_path / "gone").mkdir()
    client = Metering(f"sqlite:///{tmp_path / 'gone' / 'm.db'}")
    _break_database(client, tmp_path / "gone")
    with caplog.at_level(logging.WARNING, logger="polar_metering"):
        result = client.track_usage("u", "api.request")
    assert not result.success and "unable to open database file" in (result.error or "")
    assert "tracking failed" in caplog.text
    status = client.check_limit("u", "api_requests")  # fail-open by default
    assert status.allowed and status.stale and status.limit is None

    (tmp_path / "gone2").mkdir()
    closed = Metering(f"sqlite:///{tmp_path / 'gone2' / 'm.db'}", fail_open=False)
    _break_database(closed, tmp_path / "gone2")
    with pytest.raises(metering.BackendUnavailable, match="unable to open database file"):
        closed.check_limit("u", "api_requests")


def test_reservation_lifecycle(sqlite_url: str, clock: ManualClock) -> None:
    """A reservation ends once; commits after commit or release are refused; expired holds stop counting."""
    client = Metering(sqlite_url, plans=PLANS, clock=clock)
    client.subscribe("u", "free")
    r = client.reserve("u", "ai_tokens", 60, ttl=30)
    r.commit(40)
    with pytest.raises(ReservationError):
        r.commit(1)
    with pytest.raises(ReservationError):
        r.release()
    client.reserve("u", "ai_tokens", 60, ttl=30)  # never ended: expires
    assert not client.check_limit("u", "ai_tokens", amount=1).allowed
    clock.advance(seconds=31)
    assert client.check_limit("u", "ai_tokens", amount=60).allowed
    with pytest.raises(UsageLimitExceeded):
        client.reserve("u", "ai_tokens", 61)
    with client.reserve("u", "team_seats", 1) as seat:
        seat.commit(value="alice")
    assert client.check_limit("u", "team_seats").current == 1
    with pytest.raises(RuntimeError), client.reserve("u", "ai_tokens", 10):
        raise RuntimeError("action failed")
    assert client.check_limit("u", "ai_tokens").reserved == 0  # released on the exception
    client.close()


def test_async_twins(sqlite_url: str) -> None:
    """AsyncMetering mirrors the sync API, takes coroutine actions, and reserves with async with."""

    async def scenario() -> None:
        client = AsyncMetering(sqlite_url, plans=PLANS)
        await client.subscribe("a", "free")
        assert (await client.track_api_request("a", "/x")).success
        assert (
            await client.track_usage_batch([{"customer_id": "a", "event_name": "api.request"}])
        ).inserted == 1
        assert (await client.track_ai_tokens("a", 30, model="m", type="input")).success
        assert (await client.track_storage_update("a", 1.5)).success
        assert (await client.track_seat_activity("a", "u1")).success

        async def generate(prompt: str) -> str:
            await asyncio.sleep(0)
            await client.track_ai_tokens("a", 20)
            return prompt.upper()

        assert await client.with_usage_limit("ai_tokens", generate, "hi", customer_id="a", amount=20) == "HI"
        async with await client.reserve("a", "ai_tokens", 40) as r:
            await r.commit(40)
        status = await client.check_limit("a", "ai_tokens")
        assert (status.current, status.remaining) == (90, 10)
        safe = await client.with_usage_limit_safe("ai_tokens", generate, "x", customer_id="a", amount=50)
        assert not safe.success and safe.status is not None
        await client.track_api_request("a", "/x")
        with metering.current_customer("a"):
            assert not (await client.check_current_limit("api_requests")).allowed
            assert set(await client.get_all_usage()) == {
                "api_requests",
                "storage_gb",
                "ai_tokens",
                "team_seats",
            }
        assert await client.flush(5)
        await client.close()

    asyncio.run(scenario())


def test_current_customer_is_per_task() -> None:
    """Concurrent tasks each see their own current customer."""

    async def one(customer: str) -> str:
        with metering.current_customer(customer):
            await asyncio.sleep(0.001)
            return metering.get_current_customer() or ""

    async def many() -> list[str]:
        return await asyncio.gather(*(one(f"c{i}") for i in range(50)))

    assert asyncio.run(many()) == [f"c{i}" for i in range(50)]
    assert metering.get_current_customer() is None


junk = st.one_of(
    st.none(),
    st.integers(),
    st.floats(),
    st.text(max_size=3),
    st.binary(max_size=3),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=2),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.sampled_from(
        ["track_usage", "track_api_request", "track_storage_update", "track_ai_tokens", "track_seat_activity"]
    ),
    junk,
    junk,
    junk,
)
def test_trackers_never_raise_and_name_the_field(
    fuzz_client: Metering, method: str, a: Any, b: Any, c: Any
) -> None:
    """Any input to any tracker gives a TrackingResult; a rejection names a field and a rule."""
    fn = getattr(fuzz_client, method)
    third = {
        "track_usage": "metadata",
        "track_api_request": "method",
        "track_storage_update": "operation",
        "track_ai_tokens": "model",
        "track_seat_activity": "action",
    }[method]
    result = fn(a, b, **{third: c}) if method != "track_usage" else fn(a, b, c)
    assert isinstance(result, metering.TrackingResult)
    if not result.success:
        assert result.rejected and ": " in result.rejected[0][1]
        field = result.rejected[0][1].split(":")[0]
        assert field.split(".")[0] in {
            "customer_id",
            "name",
            "metadata",
            "endpoint",
            "method",
            "size_gb",
            "operation",
            "tokens",
            "model",
            "type",
            "user_id",
            "action",
            "status_code",
            "duration_ms",
        }


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.one_of(
            junk,
            st.fixed_dictionaries(
                {
                    "customer_id": st.sampled_from(["c", ""]),
                    "event_name": st.sampled_from(["ai.tokens", ""]),
                    "metadata": st.dictionaries(st.sampled_from(["tokens"]), junk),
                }
            ),
        ),
        max_size=8,
    )
)
def test_batch_keeps_every_valid_event(fuzz_client: Metering, items: list[Any]) -> None:
    """Whatever a batch holds, each valid event is stored and each invalid one is reported by index."""
    result = fuzz_client.track_usage_batch(items)
    assert result.inserted + len(result.rejected) == len(items)
    for index, message in result.rejected:
        assert message.startswith(f"events[{index}].")


@pytest.fixture(scope="module")
def fuzz_client() -> Any:
    client = Metering("sqlite:///:memory:")
    yield client
    client.close()
