"""``examples/sample_project``: a FastAPI service whose own tests use only polar-metering's pytest plugin
(entry point ``pytest11``), run here as its developers would run them: ``python -m pytest`` in the
project's directory, in a fresh interpreter."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[2] / "examples" / "sample_project"


def test_the_sample_projects_tests_pass_with_only_the_plugin() -> None:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("POLAR_", "METERING_", "PYTEST_"))}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
        cwd=PROJECT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"\b6 passed\b", result.stdout), result.stdout
    # The plugin came from the entry point, not from a conftest or an import in the tests.
    assert not (PROJECT / "conftest.py").exists() and not (PROJECT / "tests" / "conftest.py").exists()
    assert "polar_metering.testing" not in (PROJECT / "tests" / "test_app.py").read_text()
    assert not list(PROJECT.glob("*.db")), "the tests must not create a database file"
