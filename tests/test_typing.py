"""The public API's types as users see them: ``tests/typing/api_usage.py`` passes mypy --strict."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_public_api_type_checks_for_users() -> None:
    """Coroutine and sync actions, results and statuses keep their types through the public API."""
    target = Path(__file__).parent / "typing" / "api_usage.py"
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", str(target)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
