"""Every Python code block of the README and of ``docs/`` runs, as a reader would paste it.

A block runs in a fresh namespace, in a temporary working directory, with no metering environment
variables. An HTML comment right above a block may say what it needs (invisible on GitHub and on
the site)::

    <!-- doc-test: context=emulator -->        run against a real emulator on 127.0.0.1
    <!-- doc-test: skip (a settings.py fragment of a Django project) -->

Contexts: ``names`` (``metering`` and the public names of ``polar_metering`` already imported),
``emulator`` (``POLAR_BASE_URL`` and ``POLAR_ACCESS_TOKEN`` point at an emulator process, and the
block's ``http://127.0.0.1:8765`` / ``"dev-token"`` are that emulator's), ``llm`` (``OPENAI_*`` and
``ANTHROPIC_*`` point at a fake LLM server on loopback), ``postgresql`` (the block's
``postgresql://...@db/app`` URLs are a fresh test database), ``helpers`` (``call_model``,
``call_ai``, ``prompt``, ``client``, ``show_upgrade_modal`` stand in for the app's own). A skip must
give its reason, and blocks included from tested files (``--8<--``) are run by those files' tests.
"""

from __future__ import annotations

import ast
import asyncio
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import polar_metering as metering

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(
    r"(?:<!--\s*doc-test:\s*(?P<directive>[^\n]*?)\s*-->\s*\n)?^```python\n(?P<code>.*?)^```",
    re.S | re.M,
)
CONTEXTS = {"names", "emulator", "llm", "postgresql", "helpers"}


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
    def skip_reason(self) -> str | None:
        m = re.fullmatch(r"skip\s*\((.+)\)", self.directive)
        return m.group(1).strip() if m else None

    @property
    def contexts(self) -> set[str]:
        m = re.fullmatch(r"context=([\w,]+)", self.directive)
        return set(m.group(1).split(",")) if m else set()


def _blocks() -> list[Block]:
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for m in FENCE.finditer(text):
            line = text.count("\n", 0, m.start("code")) + 1
            found.append(Block(page, line, m.group("code"), (m.group("directive") or "").strip()))
    return found


BLOCKS = _blocks()


def test_directives_are_well_formed() -> None:
    for block in BLOCKS:
        if not block.directive:
            continue
        assert block.skip_reason or block.contexts, f"{block.id}: unreadable directive {block.directive!r}"
        assert block.contexts <= CONTEXTS, f"{block.id}: unknown context {block.contexts - CONTEXTS}"
    assert len(BLOCKS) > 30


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


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_code_block_runs(
    block: Block, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if block.skip_reason:
        pytest.skip(f"marked in the page: {block.skip_reason}")
    included = re.fullmatch(r'--8<-- "([^"]+)"', block.code.strip())
    if included:
        # The page shows a file verbatim; the file's own test runs it (the sample project's suite).
        assert (ROOT / included.group(1)).is_file(), f"{block.id}: {included.group(1)} does not exist"
        pytest.skip(f"included from {included.group(1)}, which its own tests run")
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
    compiled = compile(code, block.id, "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)
    try:
        result = eval(compiled, namespace)  # the documentation's own code
        if asyncio.iscoroutine(result):
            asyncio.run(result)
    finally:
        metering.shutdown()
        os.chdir(ROOT)
