"""Configuration of ``polar://`` and the mapping of every SDK error, on real loopback servers."""

from __future__ import annotations

import http.server
import logging
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from polar.v2026_10 import Polar

from polar_metering import (
    AuthenticationError,
    BackendError,
    BackendUnavailable,
    ConfigurationError,
    Metering,
    NotFound,
    RateLimited,
    RemoteValidationError,
)
from polar_metering.backends._polar import PolarSettings, polar_errors, resolve_settings
from polar_metering.backends._polar._transport import SdkTransport
from polar_metering.delivery._policy import Failure, classify
from polar_metering.emulator import EmulatorHandle, running_emulator

MakeClient = Callable[..., Metering]


def _settings(emulator: EmulatorHandle, token: str | None = None) -> PolarSettings:
    return resolve_settings(access_token=token or emulator.token, base_url=emulator.base_url)


def _event(**overrides: object) -> dict[str, object]:
    event: dict[str, object] = {
        "name": "api.request",
        "external_customer_id": "cust_err",
        "external_id": uuid.uuid4().hex,
        "timestamp": datetime.now(UTC).isoformat(),
        "metadata": {},
    }
    event.update(overrides)
    return event


def _messages(exc: BaseException) -> str:
    """Every message in the exception chain, as a log line with its traceback would show it."""
    parts: list[str] = []
    seen: BaseException | None = exc
    while seen is not None:
        parts.append(f"{type(seen).__name__}: {seen} {seen!r}")
        seen = seen.__cause__ or seen.__context__
    return "\n".join(parts)


# -- configuration --------------------------------------------------------------------------------


def test_missing_token_names_the_environment_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="POLAR_ACCESS_TOKEN"):
        Metering("polar://sandbox", outbox_path=str(tmp_path / "o.db"))


def test_token_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("POLAR_ACCESS_TOKEN", "polar_oat_fromenv123")
    monkeypatch.setenv("POLAR_BASE_URL", "http://127.0.0.1:9")
    with Metering("polar://", outbox_path=str(tmp_path / "o.db")) as client:
        settings = client.backend.settings  # type: ignore[attr-defined]
        assert settings.access_token == "polar_oat_fromenv123"
        assert settings.server == "http://127.0.0.1:9"
        assert "polar_oat_fromenv123" not in repr(client) + repr(settings)


@pytest.mark.parametrize(
    ("url", "environment", "server"),
    [
        ("polar://", "production", "https://api.polar.sh"),
        ("polar://sandbox", "sandbox", "https://sandbox-api.polar.sh"),
        ("polar://production", "production", "https://api.polar.sh"),
        ("polar://sandbox?base_url=http://127.0.0.1:8765", "sandbox", "http://127.0.0.1:8765"),
    ],
)
def test_url_forms(url: str, environment: str, server: str, tmp_path: Path) -> None:
    """The URL host picks the environment and ?base_url= the server; nothing is contacted at startup."""
    with Metering(url, access_token="polar_oat_x", outbox_path=str(tmp_path / "o.db")) as client:
        settings = client.backend.settings  # type: ignore[attr-defined]
        assert (settings.environment, settings.server) == (environment, server)


def test_environment_option_applies_to_bare_url(tmp_path: Path) -> None:
    with Metering(
        "polar://", access_token="t", environment="sandbox", outbox_path=str(tmp_path / "o.db")
    ) as c:
        assert c.backend.settings.environment == "sandbox"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("polar://staging", "not an environment"),
        ("polar://?base_url=ftp://host", "base_url"),
        ("polar://?colour=red", "unknown polar:// options"),
        ("polar://?no_credits=maybe", "no_credits"),
    ],
)
def test_bad_urls_are_configuration_errors(url: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Metering(url, access_token="t", outbox_path=str(tmp_path / "o.db"))


def test_token_in_url_is_refused_without_echoing_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as info:
        Metering(
            "polar://?access_token=polar_oat_leaky", access_token="t", outbox_path=str(tmp_path / "o.db")
        )
    assert "POLAR_ACCESS_TOKEN" in str(info.value)
    assert "polar_oat_leaky" not in _messages(info.value)


def test_unknown_backend_option_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="colour"):
        Metering(
            "polar://", access_token="t", outbox_path=str(tmp_path / "o.db"), backend_options={"colour": 1}
        )


# -- error mapping on the real emulator -----------------------------------------------------------


def test_rejected_token_is_authentication_error(emulator: EmulatorHandle, make_client: MakeClient) -> None:
    """401 from Polar: AuthenticationError naming POLAR_ACCESS_TOKEN, for readings and for delivery."""
    bad = "polar_oat_" + "wrong" * 6
    client = make_client(access_token=bad)
    with pytest.raises(AuthenticationError, match="POLAR_ACCESS_TOKEN") as info:
        client.check_limit("cust_401", "api_requests")
    assert info.value.status_code == 401
    assert bad not in _messages(info.value)
    with pytest.raises(AuthenticationError) as sent:
        SdkTransport(_settings(emulator, bad)).send([_event()])
    assert classify(sent.value) is Failure.AUTH


def test_rejected_batch_is_remote_validation_error_with_detail(emulator: EmulatorHandle) -> None:
    """422: RemoteValidationError whose detail locates each bad event as Polar does
    (``ingest`` in server/polar/event/service.py, errors at ``["body", "events", i, ...]``)."""
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    transport = SdkTransport(_settings(emulator))
    try:
        with pytest.raises(RemoteValidationError) as info:
            transport.send([_event(), _event(timestamp=future)])
    finally:
        transport.close()
    detail = info.value.detail
    assert detail
    assert all(set(d) == {"loc", "msg", "type"} for d in detail)
    assert any(d["loc"][:3] == ["body", "events", 1] and "past" in d["msg"] for d in detail)
    assert "Timestamp must be in the past" in str(info.value)
    assert classify(info.value) is Failure.REJECTED


def test_meter_create_422_and_missing_meter_404(emulator: EmulatorHandle) -> None:
    settings = _settings(emulator)
    with Polar(emulator.token, base_url=emulator.base_url) as polar:
        with pytest.raises(RemoteValidationError) as info, polar_errors("create meter", settings):
            polar.meters.create(
                name="ab", filter={"conjunction": "and", "clauses": []}, aggregation={"func": "count"}
            )
        assert info.value.detail[0]["loc"] == ["body", "name"]
        with pytest.raises(NotFound), polar_errors("get meter", settings):
            polar.meters.get(str(uuid.uuid4()))


def test_oversized_batch_is_413(emulator: EmulatorHandle) -> None:
    """Over Polar's 10 MiB body limit (``MaxBodySizeMiddleware`` in server/polar/middlewares.py):
    BackendError 413, which delivery splits."""
    filler = "x" * 500
    events = [_event(metadata={f"k{i}": filler for i in range(50)}) for _ in range(450)]
    transport = SdkTransport(_settings(emulator))
    try:
        with pytest.raises(BackendError) as info:
            transport.send(events)
    finally:
        transport.close()
    assert info.value.status_code == 413
    assert classify(info.value) is Failure.TOO_LARGE


def test_rate_limit_is_rate_limited_with_retry_after(tmp_path: Path) -> None:
    """429 with Retry-After: RateLimited(retry_after=60); fail-open turns it into a stale 'allowed'."""
    with running_emulator(rate_limit_per_minute=3) as emu:
        common: dict[str, Any] = {
            "access_token": emu.token,
            "cache_ttl": 0,
            "outbox_path": str(tmp_path / "o.db"),
        }
        url = f"polar://?base_url={emu.base_url}"
        with Metering(url, fail_open=False, **common) as client:
            client.check_limit("cust_429", "api_requests")  # list meters + customer meters: 2 requests
            client.check_limit("cust_429", "api_requests")  # 3rd request, the last one allowed
            with pytest.raises(RateLimited) as info:
                # A customer with no earlier reading: nothing cached to serve while Polar says 429.
                client.check_limit("cust_429_new", "api_requests")
        assert info.value.retry_after == 60
        assert classify(info.value) is Failure.RATE_LIMITED
        with Metering(url, fail_open=True, **common) as client:
            status = client.check_limit("cust_429", "api_requests")
        assert status.allowed
        assert status.stale


class _Scripted(http.server.BaseHTTPRequestHandler):
    """Answers every GET with the server's ``reply``: (status, headers, body)."""

    def do_GET(self) -> None:
        status, headers, body = self.server.reply  # type: ignore[attr-defined]
        self.send_response(status)
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def scripted_server() -> Iterator[http.server.ThreadingHTTPServer]:
    """A real loopback HTTP server whose answer each test sets (``server.reply``)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("reply", "status_code", "message"),
    [
        ((500, {}, b"boom!"), 500, "server error"),
        ((503, {"Content-Type": "text/html"}, b"<html>maintenance</html>"), 503, "server error"),
        # polar-sdk's polar/base.py int()s Retry-After, so an HTTP date fails there; still a clean
        # BackendUnavailable.
        ((429, {"Retry-After": "Wed, 21 Oct 2026 07:28:00 GMT"}, b""), None, "unreadable response"),
    ],
)
def test_server_trouble_is_unavailable(
    scripted_server: http.server.ThreadingHTTPServer,
    reply: tuple[int, dict[str, str], bytes],
    status_code: int | None,
    message: str,
    tmp_path: Path,
) -> None:
    scripted_server.reply = reply  # type: ignore[attr-defined]
    url = f"polar://?base_url=http://127.0.0.1:{scripted_server.server_address[1]}"
    with (
        Metering(
            url, access_token="polar_oat_test_token_x", fail_open=False, outbox_path=str(tmp_path / "a.db")
        ) as client,
        pytest.raises(BackendUnavailable, match=message) as info,
    ):
        client.check_limit("c", "api_requests")
    assert info.value.status_code == status_code
    assert info.value.retryable


def test_unreachable_server_is_unavailable(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with (
        Metering(
            f"polar://?base_url=http://127.0.0.1:{port}",
            access_token="polar_oat_test_token_x",
            fail_open=False,
            outbox_path=str(tmp_path / "b.db"),
        ) as client,
        pytest.raises(BackendUnavailable, match="cannot reach"),
    ):
        client.check_limit("c", "api_requests")


# -- the token never leaks ------------------------------------------------------------------------


def test_token_never_in_logs_reprs_or_errors(
    emulator: EmulatorHandle, make_client: MakeClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Good and bad tokens through tracking, delivery failures, readings and errors: no log line, repr
    or exception message contains either."""
    caplog.set_level(logging.DEBUG)
    bad = "polar_oat_" + uuid.uuid4().hex
    good_client = make_client()
    bad_client = make_client(access_token=bad, fail_open=True)
    texts: list[str] = []
    for client in (good_client, bad_client):
        client.track_api_request("cust_tok", "/x")
        client.flush(timeout=1)
        texts.append(repr(client.check_limit("cust_tok", "api_requests")))
        texts += [repr(client), repr(client.backend), repr(client.config), repr(client.backend.settings)]  # type: ignore[attr-defined]
        texts.append(repr(client.backend.outbox.metrics()))  # type: ignore[attr-defined]
    strict = make_client(access_token=bad)
    with pytest.raises(AuthenticationError) as info:
        strict.check_limit("cust_tok", "api_requests")
    texts.append(_messages(info.value))
    logged = caplog.text + "\n".join(texts)
    assert "401" in logged  # the failures did happen and were reported
    assert emulator.token not in logged
    assert bad not in logged
