"""The metered rewrite of the seed's "Protecting Actions" AI examples runs and gates as documented."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "llm_protecting_actions.py"


def test_llm_protecting_actions(capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("llm_protecting_actions_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        out = module.main()
    finally:
        sys.modules.pop(spec.name, None)
    assert out["generated"] == ["word word word word word"] * 2
    assert out["summary"] == "word word word word word"
    # 3 calls of 17 tokens = 51; the next reserves 20 (71 <= 75) and records 17; the last would need 88.
    assert out["more"][0] == "word word word word word" and out["more"][1] is None
    assert out["requests_after"] == out["requests_at_limit"] + 1
    assert out["usage"].current == 68 and out["usage"].reserved == 0
    assert out["modals"] == ["Usage limit would be exceeded: 88/75 units after this action"]
    assert "Upgrade modal:" in capsys.readouterr().out
