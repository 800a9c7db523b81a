"""Every Python code block of the README and of ``docs/`` runs, as a reader would paste it.

A block runs in a fresh namespace, in a temporary working directory, with no metering environment
variables. An HTML comment right above a block may say what it needs (invisible on GitHub and on
the site)::

    <!-- doc-test: context=emulator -->        run against a real emulator on 127.0.0.1

Contexts: ``names`` (``metering`` and the public names of ``polar_metering`` already imported),
``emulator`` (``POLAR_BASE_URL`` and ``POLAR_ACCESS_TOKEN`` point at an emulator process, and the
block's ``http://127.0.0.1:8765`` / ``"dev-token"`` are that emulator's), ``llm`` (``OPENAI_*`` and
``ANTHROPIC_*`` point at a fake LLM server on loopback), ``postgresql`` (the block's
``postgresql://...@db/app`` URLs are a fresh test database), ``helpers`` (``call_model``,
``call_ai``, ``prompt``, ``client``, ``show_upgrade_modal`` stand in for the app's own), ``webhook``
(``POLAR_WEBHOOK_SECRET`` is set; afterwards the block's ``app`` is served on 127.0.0.1, or its
``polar_webhook(body, headers)`` called, with a signed, a replayed and a forged delivery).

Two contexts do not run the block here but make it a file of a small project, served by uvicorn in
its own process on 127.0.0.1 (a web framework's settings are process-wide, so they cannot share this
one): ``django-project`` (the block is ``mysite/asgi.py``, beside a minimal ``mysite/settings.py``
and ``mysite/urls.py``) and ``flask-project`` (the block is ``serve.py``, beside a ``myapp.py``
holding ``flask_app``). Django or Flask must answer at ``/`` and the dashboard at ``/admin/usage/``,
refusing a request without ``METERING_DASHBOARD_TOKEN``.

There are no skips: every block is collected and runs, except blocks that include a file verbatim
(``--8<-- "path"``), which get no test item at all (see ``_blocks``).
"""

from __future__ import annotations

import ast
import asyncio
import base64
import hashlib
import hmac
import json
import os
import re
import selectors
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

import polar_metering as metering

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(
    r"(?:<!--\s*doc-test:\s*(?P<directive>[^\n]*?)\s*-->\s*\n)?^```python\n(?P<code>.*?)^```",
    re.S | re.M,
)
INCLUDE = re.compile(r'^--8<-- "([^"]+)"$', re.M)
CONTEXTS = {"names", "emulator", "llm", "postgresql", "helpers", "webhook"}
PROJECTS = {"django-project", "flask-project"}


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    code: str
    directive: str

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def contexts(self) -> set[str]:
        m = re.fullmatch(r"context=([\w,-]+)", self.directive)
        return set(m.group(1).split(",")) if m else set()


def _blocks() -> list[Block]:
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for m in FENCE.finditer(text):
            if INCLUDE.fullmatch(m.group("code").strip()):
                # The page shows a file verbatim (the sample project's app and its tests), and the
                # suite already runs that file (tests/examples/test_sample_project.py): an item here
                # would run nothing of its own, so there is none. test_included_files_exist keeps
                # the page pointing at real files.
                continue
            line = text.count("\n", 0, m.start("code")) + 1
            found.append(Block(page, line, m.group("code"), (m.group("directive") or "").strip()))
    return found


BLOCKS = _blocks()
RUN = [b for b in BLOCKS if not b.contexts & PROJECTS]
SERVED = [b for b in BLOCKS if b.contexts & PROJECTS]


def test_directives_are_well_formed() -> None:
    for block in BLOCKS:
        if not block.directive:
            continue
        assert block.contexts, f"{block.id}: unreadable directive {block.directive!r}"
        unknown = block.contexts - CONTEXTS - PROJECTS
        assert not unknown, f"{block.id}: unknown context {unknown}"
        if block.contexts & PROJECTS:
            assert len(block.contexts) == 1, f"{block.id}: a project context stands alone"
    assert len(RUN) > 30
    assert {b.directive.removeprefix("context=") for b in SERVED} == PROJECTS


def test_included_files_exist() -> None:
    included = [(page, path) for page in PAGES for path in INCLUDE.findall(page.read_text(encoding="utf-8"))]
    assert included, "the testing guide includes the sample project's files"
    for page, path in included:
        assert (ROOT / path).is_file(), f"{page.relative_to(ROOT)}: {path} does not exist"


@pytest.fixture(scope="module")
def emulator() -> Iterator[Any]:
    from polar_metering.emulator import running_emulator

    with running_emulator() as handle:
        yield handle


@pytest.fixture(scope="module")
def fake_llm() -> Iterator[Any]:
    from polar_metering.llm.testing import FakeLLMServer

    with FakeLLMServer(input_tokens=12, output_tokens=5) as fake:
        yield fake


def _helpers(namespace: dict[str, Any]) -> None:
    class Result(int):
        """What a model call returned: its token count, also as ``.tokens``."""

        @property
        def tokens(self) -> int:
            return int(self)

        summary = "a summary"

    namespace.update(
        call_model=lambda *a, **k: Result(1830),
        call_ai=lambda *a, **k: 1830,
        prompt="Summarize this text",
        show_upgrade_modal=lambda reason: None,
        client=metering.init("sqlite:///:memory:"),
    )


@pytest.mark.parametrize("block", RUN, ids=[b.id for b in RUN])
def test_code_block_runs(
    block: Block, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code = block.code
    namespace: dict[str, Any] = {"__name__": "__doc_block__"}
    contexts = block.contexts
    if "names" in contexts:
        exec("import os\nimport polar_metering as metering\nfrom polar_metering import *", namespace)
    if "emulator" in contexts:
        emu = request.getfixturevalue("emulator")
        monkeypatch.setenv("POLAR_BASE_URL", emu.base_url)
        monkeypatch.setenv("POLAR_ACCESS_TOKEN", emu.token)
        code = code.replace("http://127.0.0.1:8765", emu.base_url).replace('"dev-token"', repr(emu.token))
    if "llm" in contexts:
        fake = request.getfixturevalue("fake_llm")
        monkeypatch.setenv("OPENAI_BASE_URL", fake.openai_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test-key")
        monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.anthropic_url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    if "postgresql" in contexts:
        url = request.getfixturevalue("postgresql_url")
        code = re.sub(r"postgresql://\w+@db/app", url, code)
    if "helpers" in contexts:
        _helpers(namespace)
    if "webhook" in contexts:
        monkeypatch.setenv("POLAR_WEBHOOK_SECRET", WEBHOOK_SECRET)
    compiled = compile(code, block.id, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    try:
        result = eval(compiled, namespace)  # the documentation's own code
        if asyncio.iscoroutine(result):
            asyncio.run(result)
        if "webhook" in contexts:
            _check_webhook_endpoint(block, namespace)
    finally:
        metering.shutdown()
        os.chdir(ROOT)


# -- the webhook context ----------------------------------------------------------------------------------
WEBHOOK_SECRET = "doc-test-webhook-secret"


def _delivery(secret: str) -> tuple[bytes, dict[str, str]]:
    """A ``customer.state_changed`` delivery signed as Polar signs it (Standard Webhooks: HMAC-SHA256
    over ``"{id}.{timestamp}.{body}"``, keyed by the secret's bytes)."""
    body = json.dumps(
        {
            "type": "customer.state_changed",
            "timestamp": "2026-03-01T12:00:00Z",
            "data": {"external_id": "org_1"},
        }
    )
    webhook_id, stamp = str(uuid.uuid4()), str(int(time.time()))
    digest = hmac.new(secret.encode(), f"{webhook_id}.{stamp}.{body}".encode(), hashlib.sha256).digest()
    headers = {
        "content-type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": stamp,
        "webhook-signature": "v1," + base64.b64encode(digest).decode(),
    }
    return body.encode(), headers


@contextmanager
def _serve_asgi(app: Any) -> Iterator[str]:
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    config = uvicorn.Config(app, log_config=None, access_log=False, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()


@contextmanager
def _serve_wsgi(app: Any) -> Iterator[str]:
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=20)
        server.server_close()


def _check_webhook_endpoint(block: Block, namespace: dict[str, Any]) -> None:
    """The block's endpoint verifies with the secret from the environment: a signed delivery is acted
    on, its replay is a repeat, and a forged signature is refused."""
    body, headers = _delivery(WEBHOOK_SECRET)
    forged = {**_delivery("not-the-secret")[1], "webhook-id": str(uuid.uuid4())}
    answers: list[tuple[int, dict[str, Any]]] = []
    if "polar_webhook" in namespace:  # wired by hand: a function of the raw body and the headers
        for h in (headers, headers, forged):
            status, payload = namespace["polar_webhook"](body, h)
            answers.append((status, json.loads(payload)))
    else:
        app = namespace["app"]
        wsgi = hasattr(app, "wsgi_app")  # a Flask app; anything else here is ASGI
        serve: Callable[[Any], AbstractContextManager[str]] = _serve_wsgi if wsgi else _serve_asgi
        # The URLs the page tells readers to give Polar: Starlette's mount needs the trailing slash.
        path = "/polar/webhooks" if wsgi else "/polar/webhooks/"
        with serve(app) as base:
            for h in (headers, headers, forged):
                response = httpx.post(base + path, content=body, headers=h, timeout=10)
                answers.append((response.status_code, response.json()))
    details = [(status, answer["detail"]) for status, answer in answers]
    assert details[:2] == [(200, "refreshed"), (200, "already handled")], block.id
    assert details[2][0] == 403 and details[2][1].startswith("invalid signature"), block.id


# -- the project contexts: a block as a file of a small project, served in its own process ---------------
DASHBOARD_TOKEN = "doc-test-dashboard-token-0123456789"
SCAFFOLDS = {
    "django-project": (
        "mysite/asgi.py",
        "mysite.asgi:application",
        "hello from django",
        {
            "mysite/__init__.py": "",
            "mysite/settings.py": """
                SECRET_KEY = "doc-test"
                DEBUG = False
                ALLOWED_HOSTS = ["127.0.0.1"]
                ROOT_URLCONF = "mysite.urls"
                INSTALLED_APPS: list[str] = []
                MIDDLEWARE: list[str] = []
                USE_TZ = True
                """,
            "mysite/urls.py": """
                from django.http import HttpResponse
                from django.urls import path

                urlpatterns = [path("", lambda request: HttpResponse("hello from django"))]
                """,
        },
    ),
    "flask-project": (
        "serve.py",
        "serve:app",
        "hello from flask",
        {
            "myapp.py": """
                from flask import Flask

                flask_app = Flask(__name__)


                @flask_app.get("/")
                def home() -> str:
                    return "hello from flask"
                """,
        },
    ),
}
# What ``uvicorn module:attr`` does, on a port the system picks, printed once the app is imported.
SERVE = """
import importlib, socket, sys
import uvicorn
module, _, attr = sys.argv[1].partition(":")
app = getattr(importlib.import_module(module), attr)
sock = socket.socket()
sock.bind(("127.0.0.1", 0))
sock.listen(64)
print(sock.getsockname()[1], flush=True)
config = uvicorn.Config(app, log_config=None, access_log=False, log_level="warning")
uvicorn.Server(config).run(sockets=[sock])
"""


@contextmanager
def _served_project(cwd: Path, target: str, env: dict[str, str]) -> Iterator[str]:
    log = cwd / "server.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", SERVE, target],
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    assert proc.stdout is not None
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(proc.stdout, selectors.EVENT_READ)
            ready = sel.select(timeout=60)
        port = proc.stdout.readline().strip() if ready else ""
        assert port.isdigit(), f"{target} did not start:\n{log.read_text()}"
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


@pytest.mark.parametrize("block", SERVED, ids=[b.id for b in SERVED])
def test_project_block_serves(block: Block, tmp_path: Path) -> None:
    (kind,) = block.contexts
    filename, target, greeting, scaffold = SCAFFOLDS[kind]
    for name, text in {**scaffold, filename: block.code}.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    env["METERING_DASHBOARD_TOKEN"] = DASHBOARD_TOKEN
    with _served_project(tmp_path, target, env) as base:
        home = httpx.get(base + "/", timeout=10)
        refused = httpx.get(base + "/admin/usage/", timeout=10)
        dashboard = httpx.get(
            base + "/admin/usage/", headers={"Authorization": f"Bearer {DASHBOARD_TOKEN}"}, timeout=10
        )
    assert (home.status_code, home.text) == (200, greeting)
    assert refused.status_code == 401
    assert dashboard.status_code == 200
    assert "<title>" in dashboard.text and "Usage" in dashboard.text
    assert DASHBOARD_TOKEN not in dashboard.text
